//! Frames: a fixed 32-byte header and a body. See docs/PROTOCOL.md for the full wire format.
//!
//! ```text
//! offset size field
//!  0     4    magic            "WALT" (0x544c4157 little-endian)
//!  4     1    version          1
//!  5     1    operation        see `Operation`
//!  6     2    flags            bit 0: reply, bit 1: error frame
//!  8     8    request_id       chosen by the client, echoed in the reply
//! 16     4    body_len         bytes after the header, at most BODY_BYTES_MAX
//! 20     4    body_checksum    CRC32C of the body
//! 24     4    reserved         zero
//! 28     4    header_checksum  CRC32C of bytes 0..28
//! ```

use bytes::{BufMut, BytesMut};

pub const HEADER_BYTES: usize = 32;
pub const MAGIC: u32 = u32::from_le_bytes(*b"WALT");
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest body accepted (8190 transfers of 72 bytes are ~576 KiB).
pub const BODY_BYTES_MAX: usize = 1 << 20;

pub mod flags {
    pub const REPLY: u16 = 1 << 0;
    pub const ERROR: u16 = 1 << 1;
    /// A frame the server sends on its own for an earlier request (subscription events).
    pub const PUSH: u16 = 1 << 2;
    /// On a lookup request: answer from this node's state even if it is a follower (a
    /// follower read: may lag the leader by its replication lag; see docs/PROTOCOL.md).
    pub const FOLLOWER_READ: u16 = 1 << 3;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub operation: u8,
    pub flags: u16,
    pub request_id: u64,
    pub body_len: u32,
    pub body_checksum: u32,
}

/// Framing errors: the byte stream cannot be trusted any more, so the connection is closed
/// after an error frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    /// Above the limit of the port it arrived on (`BODY_BYTES_MAX` for clients, the node
    /// link's own for peers).
    #[error("body length {0} exceeds the limit")]
    TooLarge(u32),
    #[error("body checksum mismatch")]
    BodyChecksum,
}

impl FrameHeader {
    /// Decodes and validates a header (not the body) of the client protocol.
    pub fn decode(bytes: &[u8; HEADER_BYTES]) -> Result<FrameHeader, FrameError> {
        FrameHeader::decode_limited(bytes, BODY_BYTES_MAX)
    }

    /// Decodes and validates a header whose body may hold up to `body_bytes_max` bytes: the
    /// node link (`raft_link`) shares the header but not the client port's limit.
    pub fn decode_limited(
        bytes: &[u8; HEADER_BYTES],
        body_bytes_max: usize,
    ) -> Result<FrameHeader, FrameError> {
        let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let checksum = u32::from_le_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]);
        if crc32c::crc32c(&bytes[..28]) != checksum {
            return Err(FrameError::HeaderChecksum);
        }
        if bytes[4] != PROTOCOL_VERSION {
            return Err(FrameError::BadVersion(bytes[4]));
        }
        let body_len = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        if body_len as usize > body_bytes_max {
            return Err(FrameError::TooLarge(body_len));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[8..16]);
        Ok(FrameHeader {
            operation: bytes[5],
            flags: u16::from_le_bytes([bytes[6], bytes[7]]),
            request_id: u64::from_le_bytes(id),
            body_len,
            body_checksum: u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]),
        })
    }

    /// Checks `body` against the header's checksum.
    pub fn check_body(&self, body: &[u8]) -> Result<(), FrameError> {
        if crc32c::crc32c(body) != self.body_checksum {
            return Err(FrameError::BodyChecksum);
        }
        Ok(())
    }
}

/// Appends a whole frame (header + body) to `out`.
pub fn encode_frame(out: &mut BytesMut, operation: u8, flags: u16, request_id: u64, body: &[u8]) {
    assert!(
        body.len() <= BODY_BYTES_MAX,
        "frame body of {} bytes",
        body.len()
    );
    let start = out.len();
    out.reserve(HEADER_BYTES + body.len());
    out.put_u32_le(MAGIC);
    out.put_u8(PROTOCOL_VERSION);
    out.put_u8(operation);
    out.put_u16_le(flags);
    out.put_u64_le(request_id);
    out.put_u32_le(body.len() as u32);
    out.put_u32_le(crc32c::crc32c(body));
    out.put_u32_le(0);
    let checksum = crc32c::crc32c(&out[start..start + 28]);
    out.put_u32_le(checksum);
    out.extend_from_slice(body);
}

/// Writes a frame whose body is built in place by `build` (avoids a body copy).
pub fn encode_frame_with(
    out: &mut BytesMut,
    operation: u8,
    flags: u16,
    request_id: u64,
    build: impl FnOnce(&mut BytesMut),
) {
    encode_frame_limited(out, operation, flags, request_id, BODY_BYTES_MAX, build)
}

/// `encode_frame_with` for a port whose bodies may hold up to `body_bytes_max` bytes (the
/// node link). A longer body is a bug of the caller, which must split its messages.
pub fn encode_frame_limited(
    out: &mut BytesMut,
    operation: u8,
    flags: u16,
    request_id: u64,
    body_bytes_max: usize,
    build: impl FnOnce(&mut BytesMut),
) {
    let start = out.len();
    out.put_bytes(0, HEADER_BYTES);
    build(out);
    let body_len = out.len() - start - HEADER_BYTES;
    assert!(body_len <= body_bytes_max, "frame body of {body_len} bytes");
    let body_checksum = crc32c::crc32c(&out[start + HEADER_BYTES..]);
    let h = &mut out[start..start + HEADER_BYTES];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4] = PROTOCOL_VERSION;
    h[5] = operation;
    h[6..8].copy_from_slice(&flags.to_le_bytes());
    h[8..16].copy_from_slice(&request_id.to_le_bytes());
    h[16..20].copy_from_slice(&(body_len as u32).to_le_bytes());
    h[20..24].copy_from_slice(&body_checksum.to_le_bytes());
    h[24..28].fill(0);
    let checksum = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&checksum.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_both_encoders_agree() {
        let mut a = BytesMut::new();
        encode_frame(&mut a, 7, flags::REPLY, 42, b"body");
        let mut b = BytesMut::new();
        encode_frame_with(&mut b, 7, flags::REPLY, 42, |out| {
            out.extend_from_slice(b"body")
        });
        assert_eq!(a, b);
        let header = FrameHeader::decode(a[..HEADER_BYTES].try_into().unwrap()).unwrap();
        assert_eq!(
            (
                header.operation,
                header.flags,
                header.request_id,
                header.body_len
            ),
            (7, 1, 42, 4)
        );
        header.check_body(&a[HEADER_BYTES..]).unwrap();
    }

    #[test]
    fn damaged_headers_are_refused() {
        let mut frame = BytesMut::new();
        encode_frame(&mut frame, 1, 0, 1, b"");
        for byte in 0..HEADER_BYTES {
            let mut bad = frame.clone();
            bad[byte] ^= 0x10;
            assert!(
                FrameHeader::decode(bad[..HEADER_BYTES].try_into().unwrap()).is_err(),
                "byte {byte}"
            );
        }
    }
}
