//! One Raft entry = one segment-log record, and how their indexes correspond.
//!
//! **Indexes.** openraft numbers entries from 0: `Raft::initialize` appends the first
//! membership at index 0, and its conformance suite starts there too. The segment log numbers
//! records from 1 (index 0 means "no record" throughout `log/`). So
//!
//! ```text
//! log index = raft index + 1
//! ```
//!
//! for every record and for the ids kept beside them (`raft_meta`'s `last_purged` and
//! `committed` are stored in log indexes, like everything under `log/`). The mapping is
//! applied only here, at the boundary; `LogId`s never reach `log/` and log indexes never reach
//! openraft. The term is the record's term unchanged. The state machine's applied index
//! (`PartitionState::last_index`, a log index like its snapshots') maps the same way
//! (`applied_log_index`, `applied_log_id`).
//!
//! **Payloads.** The header carries index, term, timestamp and kind; the kind tells the
//! payload: `entry_kind::BLANK` (empty body), `entry_kind::MEMBERSHIP` (`raft::membership`
//! encoding), any other kind a normal entry whose `EntryData` is (kind, timestamp, body) as is.
//! Blank and membership entries carry timestamp 0: they have no log time of their own.

use crate::command::entry_kind;
use crate::log::{EntryId, RecordHeader, RecordRef};
use crate::raft::membership::{decode_membership, encode_membership};
use crate::raft::types::{Entry, EntryData, LogId};
use bytes::Bytes;
use openraft::{CommittedLeaderId, EntryPayload, StorageError, StorageIOError};

/// The segment log's index of the entry at `raft_index`.
pub fn log_index(raft_index: u64) -> u64 {
    raft_index
        .checked_add(1)
        .expect("raft indexes stay far below u64::MAX")
}

/// The Raft index of the record at `log_index` (which is at least 1).
pub fn raft_index(log_index: u64) -> u64 {
    assert!(log_index >= 1, "log indexes start at 1");
    log_index - 1
}

/// The log index a state machine has applied through, given the Raft id of the last entry it
/// applied (`None`: nothing, log index 0). `PartitionState::last_index` is a log index.
pub fn applied_log_index(applied: Option<&LogId>) -> u64 {
    applied.map_or(0, |id| log_index(id.index))
}

/// The Raft id of the last entry applied by a state at log index `last_index` (0: none), whose
/// term is `term`: the inverse of `applied_log_index`.
pub fn applied_log_id(term: u64, last_index: u64) -> Option<LogId> {
    (last_index > 0).then(|| log_id(term, raft_index(last_index)))
}

/// `id` as the segment log stores it.
pub fn to_entry_id(id: &LogId) -> EntryId {
    EntryId {
        term: id.leader_id.term,
        index: log_index(id.index),
    }
}

/// The Raft log id of what the segment log stores as `id`.
pub fn to_log_id(id: EntryId) -> LogId {
    log_id(id.term, raft_index(id.index))
}

/// A Raft log id from its parts (with `single-term-leader`, a committed leader id is its
/// term alone; the node id argument is ignored).
pub fn log_id(term: u64, raft_index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 0), raft_index)
}

/// The record fields of `entry` besides index and term: (kind, timestamp, body). A
/// membership body is encoded into `scratch`; other bodies are borrowed from the entry.
pub fn record_fields<'a>(entry: &'a Entry, scratch: &'a mut Vec<u8>) -> (u16, u64, &'a [u8]) {
    match &entry.payload {
        EntryPayload::Blank => (entry_kind::BLANK, 0, &[]),
        EntryPayload::Normal(data) => (data.kind(), data.timestamp_ns(), data.body()),
        EntryPayload::Membership(membership) => {
            scratch.clear();
            encode_membership(membership, scratch);
            (entry_kind::MEMBERSHIP, 0, scratch)
        }
    }
}

/// The record of `entry` as the segment log writes it and the node link sends it: its header
/// (the body checksum left for `log::record::encode_record` to fill) and its body (a
/// membership body encoded into `scratch`).
pub fn record_of<'a>(entry: &'a Entry, scratch: &'a mut Vec<u8>) -> (RecordHeader, &'a [u8]) {
    let (kind, timestamp, body) = record_fields(entry, scratch);
    let header = RecordHeader {
        body_checksum: 0,
        body_len: body.len() as u32,
        index: log_index(entry.log_id.index),
        term: entry.log_id.leader_id.term,
        timestamp,
        kind,
    };
    (header, body)
}

/// The Raft entry a record holds. A blank record with a body, or a membership body that does
/// not decode, is an error naming the entry: the bytes passed their checksum, so they were
/// written that way by something else.
pub fn entry_of_record(record: &RecordRef<'_>) -> Result<Entry, StorageError<u64>> {
    let header = &record.header;
    let log_id = log_id(header.term, raft_index(header.index));
    let payload = match header.kind {
        entry_kind::BLANK if record.body.is_empty() => EntryPayload::Blank,
        entry_kind::BLANK => {
            return Err(unreadable(
                &log_id,
                format!("a blank entry with a {}-byte body", record.body.len()),
            ))
        }
        entry_kind::MEMBERSHIP => EntryPayload::Membership(
            decode_membership(record.body).map_err(|e| unreadable(&log_id, e.to_string()))?,
        ),
        kind => EntryPayload::Normal(EntryData::new(
            kind,
            header.timestamp,
            Bytes::copy_from_slice(record.body),
        )),
    };
    Ok(Entry { log_id, payload })
}

fn unreadable(log_id: &LogId, what: String) -> StorageError<u64> {
    StorageIOError::read_log_entry(*log_id, openraft::AnyError::error(what)).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{Membership, NodeAddr};
    use std::collections::BTreeMap;

    fn round_trip(entry: &Entry) -> Result<Entry, StorageError<u64>> {
        let mut scratch = Vec::new();
        let (header, body) = record_of(entry, &mut scratch);
        let record = RecordRef {
            offset: 0,
            header,
            body,
        };
        entry_of_record(&record)
    }

    #[test]
    fn indexes_shift_by_one_and_ids_keep_their_term() {
        assert_eq!((log_index(0), raft_index(1)), (1, 0));
        let id = log_id(7, 41);
        assert_eq!(to_entry_id(&id), EntryId { term: 7, index: 42 });
        assert_eq!(to_log_id(to_entry_id(&id)), id);
        assert_eq!(applied_log_index(None), 0);
        assert_eq!(applied_log_index(Some(&id)), 42);
        assert_eq!(applied_log_id(7, 42), Some(id));
        assert_eq!(applied_log_id(7, 0), None);
    }

    #[test]
    fn every_payload_round_trips_through_a_record() {
        let nodes: BTreeMap<u64, NodeAddr> = [(
            0,
            NodeAddr {
                raft_addr: "a:1".into(),
                client_addr: "a:2".into(),
            },
        )]
        .into();
        let payloads = [
            EntryPayload::Blank,
            EntryPayload::Normal(EntryData::new(
                entry_kind::CREATE_TRANSFERS,
                1_700_000_000_000_000_000,
                Bytes::from_static(b"archived batch"),
            )),
            EntryPayload::Membership(Membership::new(vec![[0].into()], nodes)),
        ];
        for (n, payload) in payloads.into_iter().enumerate() {
            let entry = Entry {
                log_id: log_id(3, n as u64),
                payload,
            };
            assert_eq!(round_trip(&entry).unwrap(), entry);
        }
    }

    #[test]
    #[should_panic(expected = "reserved")]
    fn a_normal_entry_cannot_take_a_raft_kind() {
        EntryData::new(entry_kind::MEMBERSHIP, 0, Bytes::new());
    }
}
