//! The body of a `RaftBatch` frame: the messages of all partitions that were queued for one
//! peer when the writer took its turn. Requests go one way in `RaftBatch` frames, replies the
//! other way in `RaftBatch` frames with the REPLY flag ("RaftBatchReply"); both have this body.
//!
//! ```text
//! u64 from        the sending node's id (the receiver checks it against its LinkFilter)
//! u64 to          the node the sender believes it talks to (a mismatch closes the link)
//! u32 count       1..=MESSAGES_PER_FRAME_MAX
//! u32 reserved    0
//! count × envelope:
//!     u32 partition
//!     u8  kind        `message::kind`
//!     3 × u8 reserved 0
//!     u64 msg_id      chosen by the requester, unique on its link; the reply carries it back
//!     u32 len         bytes of the message that follow
//!     len bytes       the message (`message.rs`)
//! ```
//!
//! Replies are matched by `msg_id` alone (the requester numbers messages per link, not per
//! partition); the partition is echoed so a reply for the wrong partition is caught.

use super::limits::{ENVELOPE_BYTES, MESSAGES_PER_FRAME_MAX, MESSAGE_BYTES_MAX};
use super::wire::{DecodeError, WireReader};
use bytes::{BufMut, BytesMut};

/// One message of a batch, borrowed from the frame body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub partition: u32,
    pub kind: u8,
    pub msg_id: u64,
    pub body: &'a [u8],
}

/// A decoded batch (messages still encoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch<'a> {
    pub from: u64,
    pub to: u64,
    pub messages: Vec<Envelope<'a>>,
}

/// Appends a batch body to `out` (a frame under construction). The caller keeps the count
/// and each message within the limits (asserted).
pub fn encode_batch(out: &mut BytesMut, from: u64, to: u64, messages: &[Envelope<'_>]) {
    assert!(!messages.is_empty() && messages.len() <= MESSAGES_PER_FRAME_MAX);
    out.put_u64_le(from);
    out.put_u64_le(to);
    out.put_u32_le(messages.len() as u32);
    out.put_u32_le(0);
    for m in messages {
        assert!(
            m.body.len() <= MESSAGE_BYTES_MAX,
            "message of {} bytes",
            m.body.len()
        );
        out.put_u32_le(m.partition);
        out.put_u8(m.kind);
        out.put_bytes(0, 3);
        out.put_u64_le(m.msg_id);
        out.put_u32_le(m.body.len() as u32);
        out.extend_from_slice(m.body);
    }
}

/// Splits a batch body into its messages (which are decoded one by one later, so one bad
/// message is still an error for the whole link but costs no work on the others first).
pub fn decode_batch(body: &[u8]) -> Result<Batch<'_>, DecodeError> {
    let mut r = WireReader::new(body);
    let from = r.u64()?;
    let to = r.u64()?;
    let count = r.count("messages per frame", MESSAGES_PER_FRAME_MAX, ENVELOPE_BYTES)?;
    if count == 0 {
        return Err(DecodeError::Invalid("an empty batch".into()));
    }
    r.zeros(4)?;
    let mut messages = Vec::with_capacity(count);
    for _ in 0..count {
        let partition = r.u32()?;
        let kind = r.u8()?;
        r.zeros(3)?;
        let msg_id = r.u64()?;
        let body = r.bytes32("message bytes", MESSAGE_BYTES_MAX)?;
        messages.push(Envelope {
            partition,
            kind,
            msg_id,
            body,
        });
    }
    r.finish()?;
    Ok(Batch { from, to, messages })
}
