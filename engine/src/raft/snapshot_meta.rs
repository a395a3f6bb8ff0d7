//! openraft's meta of a snapshot (last log id, last membership, snapshot id), as the file
//! `<index>.wraft` beside the engine's snapshot file `<index>.wsnap` (`raft::snapshot_files`).
//!
//! Why a file of its own: the engine's snapshot format (`snapshot.rs`) knows the last index and
//! term, but not the membership, and openraft must get the membership back from a snapshot
//! (after a restart, or on a follower that installed one), or it would forget who the voters
//! are once the log before the snapshot is purged. Keeping it beside the file leaves the
//! engine's format and its readers (`wallet audit`, recovery) untouched.
//!
//! One record in the log's framing (`log::record`: magic, header and body checksums), kind
//! `KIND`, index 1. Body, integers little-endian:
//!
//! ```text
//! u8   version            1
//! u8   flags              bit 0: last_log_id present, bit 1: membership log id present
//! u64  last_log_id.term   (zero when absent)
//! u64  last_log_id.index  (Raft index; zero when absent)
//! u64  membership log id term, u64 index (zero when absent)
//! u16  snapshot id length, then the id (UTF-8)
//! ...  the membership (`raft::membership` encoding) up to the end of the body
//! ```

use crate::log::record::{decode_record, encode_record, RecordHeader};
use crate::raft::entry_record::log_id;
use crate::raft::membership::{decode_membership, encode_membership};
use crate::raft::types::{LogId, NodeAddr};
use openraft::{SnapshotMeta, StoredMembership};

/// openraft's snapshot meta in walletd's type configuration.
pub type RaftSnapshotMeta = SnapshotMeta<u64, NodeAddr>;

/// The record kind of the file's one record (beside the snapshot file's own 100-105).
pub const KIND: u16 = 110;
const VERSION: u8 = 1;
const HAS_LAST: u8 = 1;
const HAS_MEMBERSHIP_ID: u8 = 2;
const FIXED_BYTES: usize = 2 + 4 * 8 + 2;

/// The file's bytes for `meta`.
pub fn encode_meta(meta: &RaftSnapshotMeta) -> Vec<u8> {
    let membership_id = meta.last_membership.log_id();
    let mut body = Vec::with_capacity(128);
    body.push(VERSION);
    let flags = (meta.last_log_id.is_some() as u8 * HAS_LAST)
        | (membership_id.is_some() as u8 * HAS_MEMBERSHIP_ID);
    body.push(flags);
    for id in [&meta.last_log_id, membership_id] {
        let (term, index) = id.map_or((0, 0), |id| (id.leader_id.term, id.index));
        body.extend_from_slice(&term.to_le_bytes());
        body.extend_from_slice(&index.to_le_bytes());
    }
    let snapshot_id =
        u16::try_from(meta.snapshot_id.len()).expect("a snapshot id is shorter than 64 KiB");
    body.extend_from_slice(&snapshot_id.to_le_bytes());
    body.extend_from_slice(meta.snapshot_id.as_bytes());
    encode_membership(meta.last_membership.membership(), &mut body);
    let header = RecordHeader {
        body_checksum: 0,
        body_len: body.len() as u32,
        index: 1,
        term: meta.last_log_id.map_or(0, |id| id.leader_id.term),
        timestamp: 0,
        kind: KIND,
    };
    let mut out = Vec::new();
    encode_record(&mut out, &header, &body);
    out
}

/// The meta in `bytes` (a whole file). Anything but exactly one valid record of this kind,
/// followed by nothing but its zero padding, is an error.
pub fn decode_meta(bytes: &[u8]) -> Result<RaftSnapshotMeta, String> {
    let (header, body) = decode_record(bytes)
        .map_err(|e| e.to_string())?
        .ok_or("empty file")?;
    if header.kind != KIND || header.index != 1 {
        return Err(format!(
            "record kind {} index {}",
            header.kind, header.index
        ));
    }
    let padded = crate::log::record::record_bytes(body.len());
    if bytes.len() != padded
        || bytes[crate::log::record::HEADER_BYTES + body.len()..]
            .iter()
            .any(|b| *b != 0)
    {
        return Err(format!(
            "{} bytes where {padded} were expected",
            bytes.len()
        ));
    }
    if body.len() < FIXED_BYTES {
        return Err(format!("body of {} bytes is cut short", body.len()));
    }
    if body[0] != VERSION {
        return Err(format!("unsupported version {}", body[0]));
    }
    let flags = body[1];
    let word = |n: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[2 + 8 * n..10 + 8 * n]);
        u64::from_le_bytes(b)
    };
    let id = |present: u8, n: usize| -> Option<LogId> {
        (flags & present != 0).then(|| log_id(word(n), word(n + 1)))
    };
    let (last_log_id, membership_id) = (id(HAS_LAST, 0), id(HAS_MEMBERSHIP_ID, 2));
    let id_len = u16::from_le_bytes([body[FIXED_BYTES - 2], body[FIXED_BYTES - 1]]) as usize;
    let rest = &body[FIXED_BYTES..];
    if rest.len() < id_len {
        return Err("snapshot id cut short".into());
    }
    let snapshot_id = std::str::from_utf8(&rest[..id_len])
        .map_err(|_| "snapshot id is not UTF-8".to_string())?
        .to_string();
    let membership = decode_membership(&rest[id_len..]).map_err(|e| e.to_string())?;
    Ok(SnapshotMeta {
        last_log_id,
        last_membership: StoredMembership::new(membership_id, membership),
        snapshot_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::Membership;
    use std::collections::BTreeMap;

    fn sample(with_ids: bool) -> RaftSnapshotMeta {
        let nodes: BTreeMap<u64, NodeAddr> = [(
            3,
            NodeAddr {
                raft_addr: "n3:7001".into(),
                client_addr: "n3:7000".into(),
            },
        )]
        .into();
        SnapshotMeta {
            last_log_id: with_ids.then(|| log_id(4, 17)),
            last_membership: StoredMembership::new(
                with_ids.then(|| log_id(2, 9)),
                Membership::new(vec![[3].into()], nodes),
            ),
            snapshot_id: if with_ids {
                "4-17".into()
            } else {
                String::new()
            },
        }
    }

    #[test]
    fn round_trips_with_and_without_ids() {
        for with_ids in [true, false] {
            let meta = sample(with_ids);
            assert_eq!(decode_meta(&encode_meta(&meta)), Ok(meta));
        }
    }

    #[test]
    fn any_damage_cut_or_extra_byte_is_refused() {
        let bytes = encode_meta(&sample(true));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            // Flipping a padding byte is caught by the padding check, the rest by checksums.
            assert!(decode_meta(&damaged).is_err(), "flip at {at}");
        }
        for len in 0..bytes.len() {
            assert!(decode_meta(&bytes[..len]).is_err(), "cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 16]);
        assert!(decode_meta(&longer).is_err());
    }
}
