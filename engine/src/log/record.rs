//! The on-disk record: a 64-byte header followed by a body (an rkyv archive), padded to 16.
//!
//! ```text
//! offset size field
//!  0     4    magic            "WLOG" (0x474f4c57 little-endian)
//!  4     4    header_checksum  CRC32C of bytes 8..64
//!  8     4    body_checksum    CRC32C of the body
//! 12     4    body_len         bytes of body (padding not included)
//! 16     8    index            log index, +1 per record, first record of a log = 1
//! 24     8    term             Raft term (0 until replication)
//! 32     8    timestamp        ns since the Unix epoch, assigned by the writer/leader
//! 40     2    kind             what the body is (command::entry_kind, snapshot kinds...)
//! 42     2    format_version   1
//! 44    20    reserved         zero
//! ```
//! Records start at 16-byte aligned offsets so archives can be read in place (zero-copy). A
//! header of all zero bytes marks the end of a segment's written part.

/// Bytes in a record header.
pub const HEADER_BYTES: usize = 64;
/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 16;
/// `"WLOG"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"WLOG");
pub const FORMAT_VERSION: u16 = 1;
/// The largest body a record may carry (a batch of 8190 transfers is ~650 KiB).
pub const BODY_BYTES_MAX: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub body_checksum: u32,
    pub body_len: u32,
    pub index: u64,
    pub term: u64,
    pub timestamp: u64,
    pub kind: u16,
}

/// Why bytes at some offset are not a valid record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record header is cut short ({0} bytes left)")]
    ShortHeader(usize),
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("unsupported record format version {0}")]
    Version(u16),
    #[error("body length {0} exceeds the limit")]
    BodyTooLarge(u32),
    #[error("body is cut short (needs {needed} bytes, {left} left)")]
    ShortBody { needed: usize, left: usize },
    #[error("body checksum mismatch")]
    BodyChecksum,
}

/// Bytes a record with `body_len` occupies on disk, padding included.
pub fn record_bytes(body_len: usize) -> usize {
    (HEADER_BYTES + body_len).next_multiple_of(RECORD_ALIGN)
}

/// Appends one record (header, body, zero padding) to `out`.
pub fn encode_record(out: &mut Vec<u8>, header: &RecordHeader, body: &[u8]) {
    assert!(body.len() <= BODY_BYTES_MAX, "body of {} bytes", body.len());
    assert_eq!(out.len() % RECORD_ALIGN, 0, "records start aligned");
    let mut h = [0u8; HEADER_BYTES];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[8..12].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    h[12..16].copy_from_slice(&(body.len() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&header.index.to_le_bytes());
    h[24..32].copy_from_slice(&header.term.to_le_bytes());
    h[32..40].copy_from_slice(&header.timestamp.to_le_bytes());
    h[40..42].copy_from_slice(&header.kind.to_le_bytes());
    h[42..44].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let header_checksum = crc32c::crc32c(&h[8..]);
    h[4..8].copy_from_slice(&header_checksum.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
    out.resize(out.len().next_multiple_of(RECORD_ALIGN), 0);
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}
fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Validates only the header at the start of `bytes` (magic, checksum, version, length bound).
/// `Ok(None)` means an all-zero header: the end of the written part.
pub fn decode_header(bytes: &[u8]) -> Result<Option<RecordHeader>, RecordError> {
    if bytes.len() < HEADER_BYTES {
        if bytes.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        return Err(RecordError::ShortHeader(bytes.len()));
    }
    let h = &bytes[..HEADER_BYTES];
    let magic = le_u32(&h[0..4]);
    if magic != MAGIC {
        if h.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        return Err(RecordError::BadMagic(magic));
    }
    if le_u32(&h[4..8]) != crc32c::crc32c(&h[8..]) {
        return Err(RecordError::HeaderChecksum);
    }
    let version = u16::from_le_bytes([h[42], h[43]]);
    if version != FORMAT_VERSION {
        return Err(RecordError::Version(version));
    }
    let body_len = le_u32(&h[12..16]);
    if body_len as usize > BODY_BYTES_MAX {
        return Err(RecordError::BodyTooLarge(body_len));
    }
    Ok(Some(RecordHeader {
        body_checksum: le_u32(&h[8..12]),
        body_len,
        index: le_u64(&h[16..24]),
        term: le_u64(&h[24..32]),
        timestamp: le_u64(&h[32..40]),
        kind: u16::from_le_bytes([h[40], h[41]]),
    }))
}

/// Validates the record at the start of `bytes` and returns its header and body (borrowed, not
/// copied). `Ok(None)` at the end of the written part.
pub fn decode_record(bytes: &[u8]) -> Result<Option<(RecordHeader, &[u8])>, RecordError> {
    let Some(header) = decode_header(bytes)? else {
        return Ok(None);
    };
    let needed = HEADER_BYTES + header.body_len as usize;
    if bytes.len() < needed {
        return Err(RecordError::ShortBody {
            needed,
            left: bytes.len(),
        });
    }
    let body = &bytes[HEADER_BYTES..needed];
    if crc32c::crc32c(body) != header.body_checksum {
        return Err(RecordError::BodyChecksum);
    }
    Ok(Some((header, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(index: u64) -> RecordHeader {
        RecordHeader {
            body_checksum: 0,
            body_len: 0,
            index,
            term: 3,
            timestamp: 99,
            kind: 2,
        }
    }

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        encode_record(&mut out, &header(7), b"hello");
        assert_eq!(out.len(), record_bytes(5));
        let (h, body) = decode_record(&out).unwrap().unwrap();
        assert_eq!((h.index, h.term, h.timestamp, h.kind), (7, 3, 99, 2));
        assert_eq!(body, b"hello");
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut out = Vec::new();
        encode_record(&mut out, &header(1), b"some body bytes");
        let used = HEADER_BYTES + 15;
        for byte in 0..used {
            for bit in 0..8 {
                let mut bad = out.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    decode_record(&bad).is_err(),
                    "flip at {byte}:{bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn zeros_are_the_end_and_short_input_is_an_error() {
        assert_eq!(decode_record(&[0u8; 100]).unwrap(), None);
        let mut out = Vec::new();
        encode_record(&mut out, &header(1), b"abc");
        assert!(matches!(
            decode_record(&out[..HEADER_BYTES + 1]),
            Err(RecordError::ShortBody { .. })
        ));
        assert!(matches!(
            decode_record(&out[..10]),
            Err(RecordError::ShortHeader(10))
        ));
    }
}
