//! One Raft message of the node link, request or reply, and its hand encoding (the bytes of
//! one envelope in a batch, `batch.rs`).
//!
//! ## Entries travel as log records
//!
//! An AppendEntries carries its entries as **the segment log's own records** (`log::record`:
//! the 64-byte checksummed header with index, term, timestamp and kind, then the body, padded
//! to 16), built by the same code that writes them to disk (`entry_record::record_fields`,
//! `record::encode_record`) and read back by the same code that reads them from disk
//! (`record::decode_record`, `entry_record::entry_of_record`). Why this and not an explicit
//! encoding of `Entry<WalletRaft>`:
//!
//! - **One format, one decoder.** The body is already an rkyv archive and the header already
//!   has every field of an entry; a second encoding would be a second thing to keep in step
//!   with the log (blank and membership entries included: their kinds and the membership
//!   encoding come with the record).
//! - **End-to-end checks per entry.** The frame's CRC covers the trip; each record's header and
//!   body CRCs cover the entry itself, so a bug that mixes up bodies between entries, or a
//!   leader serving a damaged record, is caught by the follower before anything is appended.
//! - **A path to zero re-encoding.** A follower could write the received bytes into its
//!   segment as they are. Today it cannot: openraft hands `Entry` values to
//!   `RaftLogStore::append`, which encodes them again; that costs one copy and one CRC per
//!   entry, noise next to the fsync.
//!
//! The price is 64 header bytes and up to 15 padding bytes per entry.
//!
//! ## Layouts (little-endian; `Vote`, `LogId` as in `wire.rs`)
//!
//! ```text
//! requests
//!  1 Vote             Vote vote, LogId last_log_id
//!  2 AppendEntries    Vote vote, LogId prev_log_id, LogId leader_commit, u32 count,
//!                     zero padding to a multiple of 16 bytes from the message start,
//!                     count log records (indexes consecutive, following prev_log_id)
//!  3 SnapshotChunk    Vote vote, u64 offset, u16 len + snapshot id, u32 len + data
//!  4 SnapshotInstall  Vote vote, u64 total_bytes, u16 len + snapshot id,
//!                     u32 len + meta (`raft::snapshot_meta` record)
//!  5 TccForward       u32 count, count x TC/C message (`TCC_MESSAGE_BYTES` each: u8 kind,
//!                     u8 code, u32 source, u128 id, u128 from, u128 to, u64 amount,
//!                     u32 currency, u64 user_data)
//! replies
//!  1 Vote             Vote vote, u8 granted, LogId last_log_id
//!  2 AppendEntries    u8 outcome: 0 Success | 1 PartialSuccess + LogId | 2 Conflict
//!                                 | 3 HigherVote + Vote
//!  3 ChunkAck         u64 received_bytes (the file's length so far)
//!  4 Snapshot         Vote vote (the receiver's)
//!  5 TccAccepted      (empty: the messages are in the partition's queue)
//!  255 Failure        u8 code (`FailureCode`), u16 len + UTF-8 message
//! ```

use super::limits::{
    ENTRIES_PER_APPEND_MAX, ERROR_MESSAGE_BYTES_MAX, SNAPSHOT_CHUNK_BYTES_MAX,
    SNAPSHOT_ID_BYTES_MAX, SNAPSHOT_META_BYTES_MAX, TCC_MESSAGES_PER_FORWARD_MAX,
};
use super::wire::{
    put_len32, put_log_id, put_str16, put_u64, put_u8, put_vote, DecodeError, WireReader,
    LOG_ID_BYTES, VOTE_BYTES,
};
use bytes::Bytes;
use engine::log::record::{decode_record, encode_record, record_bytes};
use engine::log::record::{HEADER_BYTES as RECORD_HEADER_BYTES, RECORD_ALIGN};
use engine::log::RecordRef;
use engine::raft::entry_record::{entry_of_record, record_of};
use engine::raft::snapshot_meta::{decode_meta, encode_meta, RaftSnapshotMeta};
use engine::raft::types::Entry;
use engine::raft::WalletRaft;
use engine::tcc::TccMessage;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::Vote;

/// Message kinds (the envelope's `kind`), per direction.
pub mod kind {
    pub const VOTE: u8 = 1;
    pub const APPEND_ENTRIES: u8 = 2;
    pub const SNAPSHOT_CHUNK: u8 = 3;
    pub const SNAPSHOT_INSTALL: u8 = 4;
    pub const TCC_FORWARD: u8 = 5;
    /// Replies only.
    pub const FAILURE: u8 = 255;
}

/// One piece of a snapshot file, at `offset`. The first (offset 0) starts a transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub vote: Vote<u64>,
    pub snapshot_id: String,
    pub offset: u64,
    pub data: Bytes,
}

/// The end of a transfer: the file is `total_bytes` long; install it with `meta`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInstall {
    pub vote: Vote<u64>,
    pub total_bytes: u64,
    pub meta: RaftSnapshotMeta,
}

/// A request from one node's Raft to another's.
#[derive(Clone, Debug)]
pub enum LinkRequest {
    Vote(VoteRequest<u64>),
    AppendEntries(AppendEntriesRequest<WalletRaft>),
    SnapshotChunk(SnapshotChunk),
    SnapshotInstall(SnapshotInstall),
    /// TC/C messages that reached a follower of the partition, for its leader (not a Raft
    /// message: the cross-node hop of TC/C, `runtime::cluster`).
    TccForward(Vec<TccMessage>),
}

/// Bytes of one TC/C message on the link.
pub const TCC_MESSAGE_BYTES: usize = 1 + 1 + 4 + 16 * 3 + 8 + 4 + 8;

fn put_tcc(out: &mut Vec<u8>, m: &TccMessage) {
    out.push(m.kind);
    out.push(m.code);
    out.extend_from_slice(&m.source.to_le_bytes());
    out.extend_from_slice(&m.id.to_le_bytes());
    out.extend_from_slice(&m.from.to_le_bytes());
    out.extend_from_slice(&m.to.to_le_bytes());
    out.extend_from_slice(&m.amount.to_le_bytes());
    out.extend_from_slice(&m.currency.0.to_le_bytes());
    out.extend_from_slice(&m.user_data.to_le_bytes());
}

fn u128_of(bytes: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(bytes);
    u128::from_le_bytes(b)
}

/// One TC/C message. The values are checked by the state machine that applies it (unknown
/// kinds and accounts are refused there), as for messages between local partitions.
fn read_tcc(r: &mut WireReader<'_>) -> Result<TccMessage, DecodeError> {
    Ok(TccMessage {
        kind: r.u8()?,
        code: r.u8()?,
        source: r.u32()?,
        id: u128_of(r.take(16)?),
        from: u128_of(r.take(16)?),
        to: u128_of(r.take(16)?),
        amount: r.u64()?,
        currency: engine::model::Currency(r.u32()?),
        user_data: r.u64()?,
    })
}

/// Why the receiver could not answer a request with openraft's answer.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCode {
    /// No Raft of that partition is registered on the receiver (not started, or stopped).
    NoSuchPartition = 1,
    /// The partition's Raft has stopped (`Fatal::Stopped`).
    RaftStopped = 2,
    /// The partition's Raft panicked (`Fatal::Panicked`).
    RaftPanicked = 3,
    /// The partition's Raft failed on its storage (`Fatal::StorageError`).
    Storage = 4,
    /// The request broke the snapshot transfer's rules (an unknown transfer, a gap in the
    /// offsets, a length mismatch) or its file could not be written.
    SnapshotTransfer = 5,
    /// The partition's queue was full (a forwarded TC/C message was dropped).
    Busy = 6,
}

impl FailureCode {
    fn from_u8(v: u8) -> Option<FailureCode> {
        use FailureCode::*;
        Some(match v {
            1 => NoSuchPartition,
            2 => RaftStopped,
            3 => RaftPanicked,
            4 => Storage,
            5 => SnapshotTransfer,
            6 => Busy,
            _ => return None,
        })
    }
}

/// A failure answered instead of a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: FailureCode,
    pub message: String,
}

/// A reply to one request.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkReply {
    Vote(VoteResponse<u64>),
    AppendEntries(AppendEntriesResponse<u64>),
    ChunkAck { received_bytes: u64 },
    Snapshot(SnapshotResponse<u64>),
    TccAccepted,
    Failure(Failure),
}

impl LinkRequest {
    pub fn kind(&self) -> u8 {
        match self {
            LinkRequest::Vote(_) => kind::VOTE,
            LinkRequest::AppendEntries(_) => kind::APPEND_ENTRIES,
            LinkRequest::SnapshotChunk(_) => kind::SNAPSHOT_CHUNK,
            LinkRequest::SnapshotInstall(_) => kind::SNAPSHOT_INSTALL,
            LinkRequest::TccForward(_) => kind::TCC_FORWARD,
        }
    }

    /// The message's bytes (the envelope's body). Panics only on caller bugs (more entries
    /// or larger pieces than the limits allow), never on what a peer sent.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            LinkRequest::Vote(rpc) => {
                put_vote(out, &rpc.vote);
                put_log_id(out, rpc.last_log_id.as_ref());
            }
            LinkRequest::AppendEntries(rpc) => encode_append(out, rpc),
            LinkRequest::SnapshotChunk(c) => {
                assert!(c.data.len() <= SNAPSHOT_CHUNK_BYTES_MAX);
                put_vote(out, &c.vote);
                put_u64(out, c.offset);
                put_str16(out, &c.snapshot_id, SNAPSHOT_ID_BYTES_MAX);
                put_len32(out, c.data.len());
                out.extend_from_slice(&c.data);
            }
            LinkRequest::SnapshotInstall(i) => {
                put_vote(out, &i.vote);
                put_u64(out, i.total_bytes);
                put_str16(out, &i.meta.snapshot_id, SNAPSHOT_ID_BYTES_MAX);
                let meta = encode_meta(&i.meta);
                assert!(meta.len() <= SNAPSHOT_META_BYTES_MAX);
                put_len32(out, meta.len());
                out.extend_from_slice(&meta);
            }
            LinkRequest::TccForward(messages) => {
                assert!(messages.len() <= TCC_MESSAGES_PER_FORWARD_MAX);
                put_len32(out, messages.len());
                for m in messages {
                    put_tcc(out, m);
                }
            }
        }
    }

    /// Decodes a request of `kind` that fills `bytes` exactly.
    pub fn decode(kind: u8, bytes: &[u8]) -> Result<LinkRequest, DecodeError> {
        let mut r = WireReader::new(bytes);
        let request = match kind {
            kind::VOTE => LinkRequest::Vote(VoteRequest {
                vote: r.vote()?,
                last_log_id: r.log_id()?,
            }),
            kind::APPEND_ENTRIES => LinkRequest::AppendEntries(decode_append(&mut r)?),
            kind::SNAPSHOT_CHUNK => {
                let vote = r.vote()?;
                let offset = r.u64()?;
                let snapshot_id = r.str16("snapshot id bytes", SNAPSHOT_ID_BYTES_MAX)?;
                let data = r.bytes32("snapshot chunk bytes", SNAPSHOT_CHUNK_BYTES_MAX)?;
                LinkRequest::SnapshotChunk(SnapshotChunk {
                    vote,
                    snapshot_id,
                    offset,
                    data: Bytes::copy_from_slice(data),
                })
            }
            kind::SNAPSHOT_INSTALL => {
                let vote = r.vote()?;
                let total_bytes = r.u64()?;
                let snapshot_id = r.str16("snapshot id bytes", SNAPSHOT_ID_BYTES_MAX)?;
                let meta = r.bytes32("snapshot meta bytes", SNAPSHOT_META_BYTES_MAX)?;
                let meta = decode_meta(meta).map_err(DecodeError::Invalid)?;
                if meta.snapshot_id != snapshot_id {
                    return Err(DecodeError::Invalid(
                        "the snapshot id disagrees with its meta".into(),
                    ));
                }
                LinkRequest::SnapshotInstall(SnapshotInstall {
                    vote,
                    total_bytes,
                    meta,
                })
            }
            kind::TCC_FORWARD => {
                let count = r.count("tcc messages", TCC_MESSAGES_PER_FORWARD_MAX, 0)?;
                if count.saturating_mul(TCC_MESSAGE_BYTES) != r.remaining() {
                    return Err(DecodeError::Invalid(format!(
                        "{count} tcc messages in {} bytes",
                        r.remaining()
                    )));
                }
                let mut messages = Vec::with_capacity(count);
                for _ in 0..count {
                    messages.push(read_tcc(&mut r)?);
                }
                LinkRequest::TccForward(messages)
            }
            other => {
                return Err(DecodeError::Unknown {
                    what: "request kind",
                    value: other.into(),
                })
            }
        };
        r.finish()?;
        Ok(request)
    }
}

fn encode_append(out: &mut Vec<u8>, rpc: &AppendEntriesRequest<WalletRaft>) {
    assert!(rpc.entries.len() <= ENTRIES_PER_APPEND_MAX);
    let start = out.len();
    put_vote(out, &rpc.vote);
    put_log_id(out, rpc.prev_log_id.as_ref());
    put_log_id(out, rpc.leader_commit.as_ref());
    put_len32(out, rpc.entries.len());
    // Records start 16-aligned from the message start, as in a segment. `encode_record`
    // checks the alignment of the buffer it appends to, so encode into an aligned scratch.
    let pad = (out.len() - start).next_multiple_of(RECORD_ALIGN) - (out.len() - start);
    out.resize(out.len() + pad, 0);
    let mut record = Vec::new();
    let mut scratch = Vec::new();
    for entry in &rpc.entries {
        let (header, body) = record_of(entry, &mut scratch);
        record.clear();
        encode_record(&mut record, &header, body);
        out.extend_from_slice(&record);
    }
}

/// Fixed bytes of an AppendEntries before its records, padding included.
const APPEND_FIXED_BYTES: usize = (VOTE_BYTES + 2 * LOG_ID_BYTES + 4).next_multiple_of(16);

fn decode_append(r: &mut WireReader<'_>) -> Result<AppendEntriesRequest<WalletRaft>, DecodeError> {
    let vote = r.vote()?;
    let prev_log_id = r.log_id()?;
    let leader_commit = r.log_id()?;
    let count = r.count("entries", ENTRIES_PER_APPEND_MAX, 0)?;
    r.zeros(APPEND_FIXED_BYTES - r.consumed())?;
    // Each record is at least a header: check the count against the bytes before allocating.
    if count.saturating_mul(RECORD_HEADER_BYTES) > r.remaining() {
        return Err(DecodeError::Truncated {
            wanted: count.saturating_mul(RECORD_HEADER_BYTES),
            left: r.remaining(),
        });
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(count);
    // openraft sends the entries right after prev_log_id (index 0 when there is none).
    let mut next_index = prev_log_id.map_or(Some(0), |id| id.index.checked_add(1));
    for _ in 0..count {
        let (header, body) = match decode_record(r.rest()) {
            Ok(Some(record)) => record,
            Ok(None) => return Err(DecodeError::Invalid("an empty record".into())),
            Err(e) => return Err(DecodeError::Invalid(format!("entry record: {e}"))),
        };
        // `entry_of_record` maps log index `i` to raft index `i - 1`: 0 is no record.
        let raft_index = header
            .index
            .checked_sub(1)
            .ok_or_else(|| DecodeError::Invalid("an entry record at log index 0".into()))?;
        if Some(raft_index) != next_index {
            return Err(DecodeError::Invalid(format!(
                "entry at raft index {raft_index} does not follow {next_index:?}"
            )));
        }
        let record = RecordRef {
            offset: 0,
            header,
            body,
        };
        let entry = entry_of_record(&record).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        r.take(RECORD_HEADER_BYTES + body.len())?;
        r.zeros(record_bytes(body.len()) - RECORD_HEADER_BYTES - body.len())?;
        entries.push(entry);
        next_index = raft_index.checked_add(1);
    }
    Ok(AppendEntriesRequest {
        vote,
        prev_log_id,
        leader_commit,
        entries,
    })
}

impl LinkReply {
    pub fn kind(&self) -> u8 {
        match self {
            LinkReply::Vote(_) => kind::VOTE,
            LinkReply::AppendEntries(_) => kind::APPEND_ENTRIES,
            LinkReply::ChunkAck { .. } => kind::SNAPSHOT_CHUNK,
            LinkReply::Snapshot(_) => kind::SNAPSHOT_INSTALL,
            LinkReply::TccAccepted => kind::TCC_FORWARD,
            LinkReply::Failure(_) => kind::FAILURE,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            LinkReply::Vote(v) => {
                put_vote(out, &v.vote);
                put_u8(out, v.vote_granted as u8);
                put_log_id(out, v.last_log_id.as_ref());
            }
            LinkReply::AppendEntries(a) => match a {
                AppendEntriesResponse::Success => put_u8(out, 0),
                AppendEntriesResponse::PartialSuccess(id) => {
                    put_u8(out, 1);
                    put_log_id(out, id.as_ref());
                }
                AppendEntriesResponse::Conflict => put_u8(out, 2),
                AppendEntriesResponse::HigherVote(vote) => {
                    put_u8(out, 3);
                    put_vote(out, vote);
                }
            },
            LinkReply::ChunkAck { received_bytes } => put_u64(out, *received_bytes),
            LinkReply::Snapshot(s) => put_vote(out, &s.vote),
            LinkReply::TccAccepted => {}
            LinkReply::Failure(f) => {
                put_u8(out, f.code as u8);
                put_str16(
                    out,
                    cut(&f.message, ERROR_MESSAGE_BYTES_MAX),
                    ERROR_MESSAGE_BYTES_MAX,
                );
            }
        }
    }

    pub fn decode(kind: u8, bytes: &[u8]) -> Result<LinkReply, DecodeError> {
        let mut r = WireReader::new(bytes);
        let reply = match kind {
            kind::VOTE => LinkReply::Vote(VoteResponse {
                vote: r.vote()?,
                vote_granted: r.bool("vote granted")?,
                last_log_id: r.log_id()?,
            }),
            kind::APPEND_ENTRIES => LinkReply::AppendEntries(match r.u8()? {
                0 => AppendEntriesResponse::Success,
                1 => AppendEntriesResponse::PartialSuccess(r.log_id()?),
                2 => AppendEntriesResponse::Conflict,
                3 => AppendEntriesResponse::HigherVote(r.vote()?),
                other => {
                    return Err(DecodeError::Unknown {
                        what: "append outcome",
                        value: other.into(),
                    })
                }
            }),
            kind::SNAPSHOT_CHUNK => LinkReply::ChunkAck {
                received_bytes: r.u64()?,
            },
            kind::SNAPSHOT_INSTALL => LinkReply::Snapshot(SnapshotResponse { vote: r.vote()? }),
            kind::TCC_FORWARD => LinkReply::TccAccepted,
            kind::FAILURE => {
                let code = r.u8()?;
                let code = FailureCode::from_u8(code).ok_or(DecodeError::Unknown {
                    what: "failure code",
                    value: code.into(),
                })?;
                LinkReply::Failure(Failure {
                    code,
                    message: r.str16("failure message bytes", ERROR_MESSAGE_BYTES_MAX)?,
                })
            }
            other => {
                return Err(DecodeError::Unknown {
                    what: "reply kind",
                    value: other.into(),
                })
            }
        };
        r.finish()?;
        Ok(reply)
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcc_forwards_round_trip_and_refuse_a_wrong_count() {
        let m = TccMessage {
            kind: 3,
            code: 0,
            source: 7,
            id: u128::MAX - 1,
            from: 1 << 100,
            to: 42,
            amount: 12_345,
            currency: engine::model::Currency(0x445355),
            user_data: 9,
        };
        let request = LinkRequest::TccForward(vec![m, m]);
        let mut out = Vec::new();
        request.encode(&mut out);
        assert_eq!(out.len(), 4 + 2 * TCC_MESSAGE_BYTES);
        match LinkRequest::decode(kind::TCC_FORWARD, &out).unwrap() {
            LinkRequest::TccForward(back) => assert_eq!(back, vec![m, m]),
            other => panic!("{other:?}"),
        }
        out[0] = 3; // claims three messages, carries two
        assert!(LinkRequest::decode(kind::TCC_FORWARD, &out).is_err());
    }

    /// The per-core hop (see `mod.rs`) moves messages between executor threads.
    #[test]
    fn messages_can_cross_threads() {
        fn send<T: Send + 'static>() {}
        send::<LinkRequest>();
        send::<LinkReply>();
    }
}
