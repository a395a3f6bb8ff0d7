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
/// Snapshots kept on disk (the newest ones); older ones are deleted after a new one is durable.
pub const SNAPSHOTS_KEPT: usize = 2;
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

/// Writes the capture as `dir/<index>.wsnap` atomically and deletes snapshots beyond the newest
/// `SNAPSHOTS_KEPT`. Blocking: run it off the shard's thread.
pub fn write_snapshot(dir: &Path, mut capture: SnapshotCapture) -> Result<PathBuf, LogError> {
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
    let mut existing = list_snapshots(dir)?;
    while existing.len() > SNAPSHOTS_KEPT {
        let (_, old) = existing.remove(0);
        std::fs::remove_file(&old).map_err(|e| LogError::io(&old, e))?;
    }
    Ok(path)
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
    for (_, path) in list_snapshots(dir)?.into_iter().rev() {
        match load_snapshot(&path) {
            Ok(loaded) => {
                if loaded.state.partition != partition
                    || loaded.state.partition_count != partition_count
                {
                    tracing::warn!(path = %path.display(), "snapshot belongs to another partition layout; skipped");
                    continue;
                }
                return Ok(Some(loaded));
            }
            Err(e) => tracing::warn!(error = %e, "snapshot unusable; falling back to an older one"),
        }
    }
    Ok(None)
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
                transfers = TransferStore::with_capacity(meta.map_or(0, |m| m.transfers as usize));
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
