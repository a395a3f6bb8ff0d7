//! Start-up recovery of one partition: newest valid snapshot, then replay of the log after it.
//! Replay runs the very same `apply_entry` as the live path, so the state comes back bit for
//! bit (tests compare digests).

use crate::log::{find_tail, scan_log, LogError, LogTail};
use crate::partition::PartitionId;
use crate::read_model::ReadModel;
use crate::snapshot::{load_at_or_before, load_latest};
use crate::state_machine::{ApplyError, ApplyOutput, PartitionState};
use std::path::{Path, PathBuf};

/// The log directory inside a partition directory.
pub fn log_dir(partition_dir: &Path) -> PathBuf {
    partition_dir.join("log")
}
/// The snapshot directory inside a partition directory.
pub fn snapshot_dir(partition_dir: &Path) -> PathBuf {
    partition_dir.join("snapshots")
}
/// `<data dir>/partition-<id>`.
pub fn partition_dir(data_dir: &Path, partition: PartitionId) -> PathBuf {
    data_dir.join(format!("partition-{partition:05}"))
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{path}: log entry {index} cannot be applied: {source}")]
    Apply {
        path: PathBuf,
        index: u64,
        #[source]
        source: ApplyError,
    },
    #[error(
        "{path}: the snapshot ends at index {snapshot_index} but the log continues at {log_index}; \
         entries in between are missing"
    )]
    Gap {
        path: PathBuf,
        snapshot_index: u64,
        log_index: u64,
    },
}

pub struct Recovered {
    pub state: PartitionState,
    pub tail: LogTail,
    /// Term of the last entry (from the log, or from the snapshot when the log is empty).
    pub last_term: u64,
    pub replayed_entries: u64,
    pub snapshot: Option<PathBuf>,
    /// Index the loaded snapshot covers (0 without one).
    pub snapshot_index: u64,
    /// The read model, rebuilt from the snapshot's state and the replayed tail (`None` when
    /// asked for none): its history starts at the snapshot.
    pub read_model: Option<ReadModel>,
}

/// Rebuilds partition `partition` from `partition_dir` (snapshots + log).
pub fn recover_partition(
    partition_dir: &Path,
    partition: PartitionId,
    partition_count: u32,
) -> Result<Recovered, RecoveryError> {
    recover_partition_with(partition_dir, partition, partition_count, 0, 0)
}

/// `recover_partition`, also rebuilding a read model keeping `history_per_account` entries
/// per account (0: none) from the snapshot's state and the events of the replayed log tail.
///
/// With a read model, recovery starts from a snapshot at least `history_rebuild_entries`
/// entries before the end of the log (the newest such one; the oldest kept snapshot when all
/// are newer), not from the newest: a clean shutdown writes a snapshot at the very end, and
/// starting there would leave the history empty. The price is replaying up to that many more
/// entries at start; the state comes out the same either way.
pub fn recover_partition_with(
    partition_dir: &Path,
    partition: PartitionId,
    partition_count: u32,
    history_per_account: usize,
    history_rebuild_entries: u64,
) -> Result<Recovered, RecoveryError> {
    let snapshots = snapshot_dir(partition_dir);
    let logs = log_dir(partition_dir);
    let earlier = if history_per_account > 0 && history_rebuild_entries > 0 {
        let log = find_tail(&logs)?;
        let wanted = log.last_index.saturating_sub(history_rebuild_entries);
        // Only a snapshot the log continues without a gap (a purged log starts later).
        load_at_or_before(&snapshots, partition, partition_count, wanted)?
            .filter(|l| log.first_index <= l.state.last_index() + 1)
    } else {
        None
    };
    let loaded = match earlier {
        Some(l) => Some(l),
        None => load_latest(&snapshots, partition, partition_count)?,
    };
    let (mut state, snapshot_term, snapshot) = match loaded {
        Some(l) => (l.state, l.last_term, Some(l.path)),
        None => (PartitionState::new(partition, partition_count), 0, None),
    };
    let snapshot_index = state.last_index();
    let from_index = snapshot_index + 1;
    let mut read_model =
        (history_per_account > 0).then(|| ReadModel::from_state(&state, history_per_account));
    let mut out = ApplyOutput::default();
    let mut replayed = 0u64;
    let mut tail = scan_log::<RecoveryError>(&logs, from_index, |record| {
        let index = record.header.index;
        if index != state.last_index() + 1 {
            return Err(RecoveryError::Gap {
                path: logs.clone(),
                snapshot_index: state.last_index(),
                log_index: index,
            });
        }
        out.clear();
        // The moment the entry is applied at (a Raft entry may carry an earlier one; see
        // `PartitionState::effective_timestamp`): what the read model must record.
        let applied_at = state.effective_timestamp(record.header.timestamp);
        state
            .apply_entry(
                index,
                record.header.kind,
                record.body,
                record.header.timestamp,
                &mut out,
            )
            .map_err(|source| RecoveryError::Apply {
                path: logs.clone(),
                index,
                source,
            })?;
        if let Some(model) = &mut read_model {
            model.apply(index, applied_at, &out.events);
        }
        replayed += 1;
        Ok(())
    })?;
    let mut last_term = tail.last_term;
    if tail.last_index < state.last_index() {
        if tail.last_index != 0 {
            return Err(RecoveryError::Gap {
                path: logs,
                snapshot_index: state.last_index(),
                log_index: tail.last_index + 1,
            });
        }
        // The log holds nothing after the snapshot (e.g. purged): continue right after it.
        tail.first_index = state.last_index() + 1;
        last_term = snapshot_term;
    }
    Ok(Recovered {
        state,
        tail,
        last_term,
        replayed_entries: replayed,
        snapshot,
        snapshot_index,
        read_model,
    })
}
