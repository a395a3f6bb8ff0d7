//! Snapshots: the whole state of a partition at one log index, so a restart replays only the
//! log after it.
//!
//! A snapshot file uses the log's record framing (every part checksummed):
//! `Meta`, then `Accounts` chunks (id order), then `Transfers` chunks (log order), then `End`.
//! A file without its `End` record, or with any bad record, is not a snapshot: loading falls
//! back to the next older one, and finally to replaying the log from the start.
//!
//! Writing happens on a background thread from a capture: accounts copied, transfers shared by
//! chunk (see `transfer_store`). The file appears atomically: temp file, fsync, rename, fsync
//! of the directory.

use crate::log::record::{encode_record, RecordHeader};
use crate::log::scan::sync_dir;
use crate::log::segments::{MappedSegment, SegmentEnd, SegmentInfo};
use crate::log::LogError;
use crate::model::{Account, Transfer};
use crate::partition::PartitionId;
use crate::state_machine::PartitionState;
use crate::transfer_store::{TransferStore, TransferStoreView};
use rkyv::{Archive, Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const SNAPSHOT_SUFFIX: &str = ".wsnap";
/// Snapshots kept on disk (the newest ones) besides the daily ones; older ones are deleted
/// after a new one is durable.
pub const SNAPSHOTS_KEPT: usize = 2;
/// Nanoseconds in a UTC day of log time.
pub const DAY_NS: u64 = 86_400 * 1_000_000_000;

/// Which snapshots survive when a new one is written: the newest `newest`, plus the newest
/// snapshot of each of the last `daily_days` UTC days (by log time) that has one. The daily
/// ones are the starting points auditors and read models use for "as of" questions
/// (`wallet audit replay --until T` starts from the newest snapshot at or before T).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotRetention {
    pub newest: usize,
    pub daily_days: u32,
}

impl Default for SnapshotRetention {
    fn default() -> SnapshotRetention {
        SnapshotRetention {
            newest: SNAPSHOTS_KEPT,
            daily_days: 7,
        }
    }
}

impl SnapshotRetention {
    /// Of `snapshots` (last index, log timestamp if readable), oldest first, the indexes to
    /// keep. A snapshot whose timestamp cannot be read only survives as one of the newest.
    pub fn keep(&self, snapshots: &[(u64, Option<u64>)]) -> Vec<u64> {
        let mut keep: Vec<u64> = snapshots
            .iter()
            .rev()
            .take(self.newest)
            .map(|(index, _)| *index)
            .collect();
        let mut days_seen: Vec<u64> = Vec::new();
        for (index, timestamp) in snapshots.iter().rev() {
            let Some(day) = timestamp.map(|t| t / DAY_NS) else {
                continue;
            };
            if days_seen.contains(&day) {
                continue; // a newer snapshot already represents this day
            }
            if days_seen.len() == self.daily_days as usize {
                break;
            }
            days_seen.push(day);
            keep.push(*index);
        }
        keep.sort_unstable();
        keep.dedup();
        keep
    }
}
const ITEMS_PER_RECORD: usize = 16 * 1024;

mod kind {
    pub const META: u16 = 100;
    pub const ACCOUNTS: u16 = 101;
    pub const TRANSFERS: u16 = 102;
    pub const END: u16 = 103;
    pub const TCC: u16 = 104;
    pub const PARTICIPANTS: u16 = 105;
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SnapshotMeta {
    pub partition: u32,
    pub partition_count: u32,
    pub last_index: u64,
    pub last_term: u64,
    pub last_timestamp: u64,
    pub accounts: u64,
    pub transfers: u64,
    pub tcc_records: u64,
    pub participants: u64,
}

/// Everything a snapshot needs, taken from a live partition in a few milliseconds.
pub struct SnapshotCapture {
    pub meta: SnapshotMeta,
    pub accounts: Vec<Account>,
    pub transfers: TransferStoreView,
    pub tcc_records: Vec<crate::tcc::TccRecord>,
    pub participants: Vec<crate::tcc::TccParticipant>,
}

impl SnapshotCapture {
    pub fn take(state: &PartitionState, last_term: u64) -> SnapshotCapture {
        let accounts: Vec<Account> = state.accounts.values().copied().collect();
        let transfers = state.transfers.view();
        let tcc_records = state.tcc_records_sorted();
        let participants = state.participants_sorted();
        SnapshotCapture {
            meta: SnapshotMeta {
                partition: state.partition,
                partition_count: state.partition_count,
                last_index: state.last_index,
                last_term,
                last_timestamp: state.last_timestamp,
                accounts: accounts.len() as u64,
                transfers: transfers.len() as u64,
                tcc_records: tcc_records.len() as u64,
                participants: participants.len() as u64,
            },
            accounts,
            transfers,
            tcc_records,
            participants,
        }
    }
}

pub fn snapshot_path(dir: &Path, last_index: u64) -> PathBuf {
    dir.join(format!("{last_index:020}{SNAPSHOT_SUFFIX}"))
}

/// Writes the capture as `dir/<index>.wsnap` atomically and deletes the snapshots `retention`
/// does not keep. Blocking: run it off the shard's thread.
pub fn write_snapshot(
    dir: &Path,
    capture: &mut SnapshotCapture,
    retention: SnapshotRetention,
) -> Result<PathBuf, LogError> {
    std::fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
    capture.accounts.sort_unstable_by_key(|a| a.id);
    let path = snapshot_path(dir, capture.meta.last_index);
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| LogError::io(&tmp, e))?;
    let mut out = std::io::BufWriter::with_capacity(4 << 20, file);
    let mut sequence = 0u64;
    let mut record = Vec::with_capacity(2 << 20);
    let mut emit = |kind: u16, body: &[u8], out: &mut std::io::BufWriter<std::fs::File>| {
        sequence += 1;
        record.clear();
        let header = RecordHeader {
            body_checksum: 0,
            body_len: body.len() as u32,
            index: sequence,
            term: capture.meta.last_term,
            timestamp: capture.meta.last_timestamp,
            kind,
        };
        encode_record(&mut record, &header, body);
        out.write_all(&record).map_err(|e| LogError::io(&tmp, e))
    };
    let meta = to_bytes(&capture.meta);
    emit(kind::META, &meta, &mut out)?;
    for chunk in capture.accounts.chunks(ITEMS_PER_RECORD) {
        emit(kind::ACCOUNTS, &to_bytes(&chunk.to_vec()), &mut out)?;
    }
    let mut batch: Vec<Transfer> = Vec::with_capacity(ITEMS_PER_RECORD);
    for transfer in capture.transfers.iter() {
        batch.push(*transfer);
        if batch.len() == ITEMS_PER_RECORD {
            emit(kind::TRANSFERS, &to_bytes(&batch), &mut out)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        emit(kind::TRANSFERS, &to_bytes(&batch), &mut out)?;
    }
    for chunk in capture.tcc_records.chunks(ITEMS_PER_RECORD) {
        emit(kind::TCC, &to_bytes(&chunk.to_vec()), &mut out)?;
    }
    for chunk in capture.participants.chunks(ITEMS_PER_RECORD) {
        emit(kind::PARTICIPANTS, &to_bytes(&chunk.to_vec()), &mut out)?;
    }
    emit(kind::END, &[], &mut out)?;
    let file = out
        .into_inner()
        .map_err(|e| LogError::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| LogError::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(|e| LogError::io(&path, e))?;
    sync_dir(dir)?;
    prune_snapshots(dir, retention)?;
    Ok(path)
}

/// Deletes the snapshots of `dir` that `retention` does not keep.
fn prune_snapshots(dir: &Path, retention: SnapshotRetention) -> Result<(), LogError> {
    let existing = list_snapshots(dir)?;
    let described: Vec<(u64, Option<u64>)> = existing
        .iter()
        .map(|(index, path)| (*index, snapshot_timestamp(path)))
        .collect();
    let keep = retention.keep(&described);
    for (index, path) in existing {
        if keep.binary_search(&index).is_err() {
            match std::fs::remove_file(&path) {
                // Gone already (an operator, or a prune that raced this one): what it wanted.
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(LogError::io(&path, e))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The log timestamp a snapshot was taken at (its last applied item), read from its first
/// record header; `None` if the file is unreadable or damaged there.
pub fn snapshot_timestamp(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut header = [0u8; crate::log::record::HEADER_BYTES];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut header)
        .ok()?;
    match crate::log::record::decode_header(&header) {
        Ok(Some(h)) if h.kind == kind::META => Some(h.timestamp),
        _ => None,
    }
}

fn to_bytes<T>(value: &T) -> rkyv::util::AlignedVec
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    rkyv::to_bytes::<rkyv::rancor::Error>(value)
        .expect("serializing plain structs into memory cannot fail")
}

/// Snapshot files of `dir` as (last index, path), oldest first.
pub fn list_snapshots(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LogError::io(dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SNAPSHOT_SUFFIX)) else {
            continue;
        };
        if let Ok(index) = stem.parse::<u64>() {
            found.push((index, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Why one snapshot file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl SnapshotError {
    /// Out of disk space (or past the file size limit): worth trying again later.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, SnapshotError::Log(e) if e.is_disk_full())
    }
}

/// A state loaded from a snapshot, and the term of its last entry.
pub struct LoadedSnapshot {
    pub state: PartitionState,
    pub last_term: u64,
    pub path: PathBuf,
}

/// Loads the newest snapshot of `dir` that is complete and valid. Damaged ones are reported
/// (warn) and skipped, falling back to older ones; `None` means replay from the log's start.
pub fn load_latest(
    dir: &Path,
    partition: PartitionId,
    partition_count: u32,
) -> Result<Option<LoadedSnapshot>, LogError> {
    load_at_or_before(dir, partition, partition_count, u64::MAX)
}

/// Loads the newest valid snapshot of `dir` that covers at most `index`; when every valid one
/// is newer, the oldest valid one. (Recovery starts a little further back than the newest
/// snapshot so that the read model's history spans the entries in between.)
pub fn load_at_or_before(
    dir: &Path,
    partition: PartitionId,
    partition_count: u32,
    index: u64,
) -> Result<Option<LoadedSnapshot>, LogError> {
    let mut oldest_newer: Option<LoadedSnapshot> = None;
    for (last_index, path) in list_snapshots(dir)?.into_iter().rev() {
        match load_snapshot(&path) {
            Ok(loaded) => {
                if loaded.state.partition != partition
                    || loaded.state.partition_count != partition_count
                {
                    tracing::warn!(path = %path.display(), "snapshot belongs to another partition layout; skipped");
                    continue;
                }
                if last_index <= index {
                    return Ok(Some(loaded));
                }
                oldest_newer = Some(loaded);
            }
            Err(e) => tracing::warn!(error = %e, "snapshot unusable; falling back to an older one"),
        }
    }
    Ok(oldest_newer)
}

/// Loads and fully validates one snapshot file.
pub fn load_snapshot(path: &Path) -> Result<LoadedSnapshot, SnapshotError> {
    let invalid = |reason: String| SnapshotError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let segment = MappedSegment::open(SegmentInfo {
        first_index: 1,
        path: path.to_path_buf(),
    })?;
    let mut records = segment.records();
    let mut meta: Option<SnapshotMeta> = None;
    let mut accounts: Vec<Account> = Vec::new();
    let mut transfers = TransferStore::default();
    let mut tcc_records: Vec<crate::tcc::TccRecord> = Vec::new();
    let mut participants: Vec<crate::tcc::TccParticipant> = Vec::new();
    let mut ended = false;
    for (expected, record) in (1u64..).zip(records.by_ref()) {
        if record.header.index != expected || ended {
            return Err(invalid(format!(
                "record out of sequence at offset {}",
                record.offset
            )));
        }
        let bad = |e: rkyv::rancor::Error| {
            invalid(format!("bad archive at offset {}: {e}", record.offset))
        };
        match (record.header.kind, meta.is_some()) {
            (kind::META, false) => {
                meta = Some(
                    rkyv::from_bytes::<SnapshotMeta, rkyv::rancor::Error>(record.body)
                        .map_err(bad)?,
                );
                // The count is checked against the records at the end; until then it is only a
                // hint, and no larger than the file could hold (a damaged or hostile count
                // must not size an allocation).
                let could_hold = segment.bytes().len() / std::mem::size_of::<Transfer>();
                let hinted = meta.map_or(0, |m| m.transfers).min(could_hold as u64);
                transfers = TransferStore::with_capacity(hinted as usize);
            }
            (kind::ACCOUNTS, true) => {
                let chunk = rkyv::access::<
                    rkyv::vec::ArchivedVec<crate::model::ArchivedAccount>,
                    rkyv::rancor::Error,
                >(record.body)
                .map_err(bad)?;
                accounts.extend(chunk.iter().map(|a| Account {
                    id: a.id.to_native(),
                    currency: a.currency.to_native(),
                    flags: a.flags.to_native(),
                    balance: a.balance.to_native(),
                    held: a.held.to_native(),
                    incoming: a.incoming.to_native(),
                    floor: a.floor.to_native(),
                    user_data: a.user_data.to_native(),
                    timestamp: a.timestamp.to_native(),
                }));
            }
            (kind::TRANSFERS, true) => {
                let chunk = rkyv::access::<
                    rkyv::vec::ArchivedVec<crate::model::ArchivedTransfer>,
                    rkyv::rancor::Error,
                >(record.body)
                .map_err(bad)?;
                for t in chunk.iter() {
                    let id = t.id.to_native();
                    if transfers.get(id).is_some() {
                        return Err(invalid(format!("transfer {id} appears twice")));
                    }
                    transfers.push(Transfer {
                        id,
                        from: t.from.to_native(),
                        to: t.to.to_native(),
                        amount: t.amount.to_native(),
                        currency: t.currency.to_native(),
                        user_data: t.user_data.to_native(),
                        timestamp: t.timestamp.to_native(),
                    });
                }
            }
            (kind::TCC, true) => {
                let chunk = rkyv::from_bytes::<Vec<crate::tcc::TccRecord>, rkyv::rancor::Error>(
                    record.body,
                )
                .map_err(bad)?;
                tcc_records.extend(chunk);
            }
            (kind::PARTICIPANTS, true) => {
                let chunk =
                    rkyv::from_bytes::<Vec<crate::tcc::TccParticipant>, rkyv::rancor::Error>(
                        record.body,
                    )
                    .map_err(bad)?;
                participants.extend(chunk);
            }
            (kind::END, true) => ended = true,
            (other, _) => {
                return Err(invalid(format!(
                    "unexpected record kind {other} at offset {}",
                    record.offset
                )))
            }
        }
    }
    if let Some(SegmentEnd::Invalid { offset, reason }) = records.end() {
        return Err(invalid(format!("damaged at offset {offset}: {reason}")));
    }
    let Some(meta) = meta else {
        return Err(invalid("no meta record".into()));
    };
    if !ended {
        return Err(invalid("incomplete (no end record)".into()));
    }
    if accounts.len() as u64 != meta.accounts
        || transfers.len() as u64 != meta.transfers
        || tcc_records.len() as u64 != meta.tcc_records
        || participants.len() as u64 != meta.participants
    {
        return Err(invalid("item counts differ from the meta record".into()));
    }
    if meta.partition >= meta.partition_count {
        return Err(invalid("partition out of range".into()));
    }
    // Written sorted by id (see `write_snapshot`): anything else is damage the table must not see.
    let ordered = accounts.windows(2).all(|pair| pair[0].id < pair[1].id);
    if !ordered || !accounts.iter().all(|a| crate::model::is_valid_id(a.id)) {
        return Err(invalid(
            "account ids invalid, repeated or out of order".into(),
        ));
    }
    let parts = crate::state_machine::StateParts {
        accounts,
        transfers,
        tcc_records,
        participants,
    };
    let state = PartitionState::from_parts(&meta, parts);
    Ok(LoadedSnapshot {
        state,
        last_term: meta.last_term,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot cut at any length (a copy interrupted, a transfer broken off, a hostile
    /// peer) is refused with an error: never a panic, never a partial state.
    #[test]
    fn a_snapshot_cut_anywhere_is_refused_without_a_panic() {
        use crate::command::{CommandBatch, NewAccount, NewTransfer};
        use crate::model::Currency;
        use crate::state_machine::ApplyOutput;
        let mut state = PartitionState::new(0, 1);
        let eur = Currency::parse("EUR").unwrap();
        let mut apply = |batch: CommandBatch| {
            let mut out = ApplyOutput::default();
            state.apply_next(&batch, &mut out).expect("applies");
        };
        apply(CommandBatch::CreateAccounts(
            (1..=3)
                .map(|id| NewAccount {
                    id,
                    currency: eur,
                    flags: 0,
                    floor: if id == 1 { -1_000 } else { 0 },
                    user_data: 0,
                })
                .collect(),
        ));
        apply(CommandBatch::CreateTransfers(
            (1..=5)
                .map(|id| NewTransfer {
                    id,
                    from: 1,
                    to: 2 + id % 2,
                    amount: 7,
                    currency: eur,
                    user_data: 0,
                })
                .collect(),
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = write_snapshot(
            dir.path(),
            &mut SnapshotCapture::take(&state, 1),
            SnapshotRetention::default(),
        )
        .unwrap();
        let whole = std::fs::read(&path).unwrap();
        assert!(load_snapshot(&path).is_ok());
        let cut = dir.path().join("cut.bin");
        for len in 0..whole.len() {
            std::fs::write(&cut, &whole[..len]).unwrap();
            assert!(
                load_snapshot(&cut).is_err(),
                "cut at {len} of {}",
                whole.len()
            );
        }
    }

    #[test]
    fn retention_keeps_the_newest_and_one_per_recent_day() {
        let day = |d: u64, hour: u64| Some(d * DAY_NS + hour * 3_600_000_000_000);
        // (last index, timestamp), oldest first: days 10, 10, 11, 12, 12, 13, unreadable.
        let snapshots = [
            (1, day(10, 1)),
            (2, day(10, 5)),
            (3, day(11, 2)),
            (4, day(12, 1)),
            (5, day(12, 9)),
            (6, day(13, 0)),
            (7, None),
        ];
        let retention = SnapshotRetention {
            newest: 2,
            daily_days: 3,
        };
        // Newest two: 6 and 7; newest per day for days 13, 12, 11: 6, 5, 3.
        assert_eq!(retention.keep(&snapshots), vec![3, 5, 6, 7]);
        let no_daily = SnapshotRetention {
            newest: 2,
            daily_days: 0,
        };
        assert_eq!(no_daily.keep(&snapshots), vec![6, 7]);
    }
}
