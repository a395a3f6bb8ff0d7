//! A partition's Raft snapshots on disk: pairs of the engine's snapshot file `<index>.wsnap`
//! (`snapshot.rs`, named by the last applied *log* index) and openraft's meta for it,
//! `<index>.wraft` (`raft::snapshot_meta`). A snapshot exists for Raft only when both files do
//! and agree on the last log id: each is written atomically (temp file, fsync, rename, fsync of
//! the directory), the meta first, so a crash between the two leaves a meta without a snapshot,
//! which is ignored and pruned, never a snapshot that would be served without its membership.
//!
//! Everything here is blocking file I/O: the state machine runs the writes and loads on a
//! helper thread (`raft::state_machine`); listing is a directory read plus small files.

use crate::log::scan::sync_dir;
use crate::log::LogError;
use crate::partition::PartitionId;
use crate::raft::entry_record::{applied_log_id, applied_log_index};
use crate::raft::snapshot_meta::{decode_meta, encode_meta, RaftSnapshotMeta};
use crate::raft::types::{SnapshotHandle, WalletRaft};
use crate::snapshot::{
    list_snapshots, load_snapshot, snapshot_path, write_snapshot, LoadedSnapshot, SnapshotCapture,
    SnapshotError, SnapshotRetention, SNAPSHOT_SUFFIX,
};
use openraft::storage::Snapshot;
use std::io::Write;
use std::path::{Path, PathBuf};

const META_SUFFIX: &str = "wraft";
/// Files being received (`begin_receiving_snapshot`); never listed as snapshots.
const RECEIVING_SUFFIX: &str = "receiving";

fn meta_path(dir: &Path, log_index: u64) -> PathBuf {
    snapshot_path(dir, log_index).with_extension(META_SUFFIX)
}

/// Writes `capture` with its Raft `meta` into `dir` (meta first, then the snapshot, which
/// prunes older snapshots by `retention`; then metas left without a snapshot are deleted).
pub fn write_pair(
    dir: &Path,
    capture: &mut SnapshotCapture,
    meta: &RaftSnapshotMeta,
    retention: SnapshotRetention,
) -> Result<SnapshotHandle, LogError> {
    let index = capture.meta.last_index;
    assert_eq!(
        applied_log_index(meta.last_log_id.as_ref()),
        index,
        "a snapshot's Raft meta names the entry it was captured at"
    );
    std::fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
    save_atomically(&meta_path(dir, index), &encode_meta(meta))?;
    let path = write_snapshot(dir, capture, retention)?;
    prune_orphan_metas(dir)?;
    Ok(SnapshotHandle { path })
}

/// The newest snapshot of `dir` whose meta reads back and agrees with the file's name, with
/// that meta; the snapshot file itself is not read (`load` validates it).
pub fn newest(dir: &Path) -> Result<Option<Snapshot<WalletRaft>>, LogError> {
    Ok(pairs(dir)?.into_iter().next())
}

/// Every snapshot of `dir` with a usable meta, newest first.
fn pairs(dir: &Path) -> Result<Vec<Snapshot<WalletRaft>>, LogError> {
    let mut found = Vec::new();
    for (index, path) in list_snapshots(dir)?.into_iter().rev() {
        let Some(meta) = read_meta(&meta_path(dir, index)) else {
            continue;
        };
        if applied_log_index(meta.last_log_id.as_ref()) == index {
            found.push(Snapshot {
                meta,
                snapshot: Box::new(SnapshotHandle { path }),
            });
        }
    }
    Ok(found)
}

/// The meta at `path`, or `None` when it is missing or damaged (that snapshot is then not one
/// Raft can use; the reason is logged).
fn read_meta(path: &Path) -> Option<RaftSnapshotMeta> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "snapshot meta unreadable");
            return None;
        }
    };
    decode_meta(&bytes)
        .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "snapshot meta damaged"))
        .ok()
}

/// Loads the newest snapshot of `dir` that has a usable meta and whose file loads and belongs
/// to `partition` of `partition_count`, falling back to older ones.
pub fn load_newest(
    dir: &Path,
    partition: PartitionId,
    partition_count: u32,
) -> Result<Option<(RaftSnapshotMeta, LoadedSnapshot)>, LogError> {
    for snapshot in pairs(dir)? {
        match load_checked(
            &snapshot.meta,
            &snapshot.snapshot.path,
            partition,
            partition_count,
        ) {
            Ok(loaded) => return Ok(Some((snapshot.meta, loaded))),
            Err(e) => tracing::warn!(error = %e, "snapshot unusable; trying an older one"),
        }
    }
    Ok(None)
}

/// Where a restart with a read model would like its state machine to start (all log indexes;
/// see `load_for_rebuild`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildWindow {
    /// The last purged log entry (0: none): a snapshot below it is not followed by the log.
    pub purged: u64,
    /// The last committed entry openraft will re-apply at start.
    pub committed: u64,
    /// The newest snapshot at or below this one leaves `read_model_rebuild_entries` to
    /// re-apply (`committed` minus them).
    pub wanted: u64,
}

/// The snapshot a restart with a read model starts from, so that openraft re-applies (and
/// the read model rebuilds the history of) the committed entries after it: the newest one at
/// or below `window.wanted`, else the oldest one newer than that, always one the retained log
/// continues (`purged` or later) and at most `committed`. `None` (start from the newest, as
/// without a read model) when no snapshot qualifies, and when the newest snapshot lies past
/// `committed`: starting below it would leave openraft's applied index behind its newest
/// snapshot.
pub fn load_for_rebuild(
    dir: &Path,
    partition: PartitionId,
    partition_count: u32,
    window: RebuildWindow,
) -> Result<Option<(RaftSnapshotMeta, LoadedSnapshot)>, LogError> {
    let all = pairs(dir)?;
    let index = |s: &Snapshot<WalletRaft>| applied_log_index(s.meta.last_log_id.as_ref());
    if all.first().is_some_and(|s| index(s) > window.committed) {
        return Ok(None);
    }
    let usable = |s: &&Snapshot<WalletRaft>| index(s) >= window.purged;
    // Newest first at or below `wanted`, then the newer ones oldest first.
    let (at_or_below, newer): (Vec<_>, Vec<_>) = all
        .iter()
        .filter(usable)
        .partition(|s| index(s) <= window.wanted);
    for snapshot in at_or_below.into_iter().chain(newer.into_iter().rev()) {
        match load_checked(
            &snapshot.meta,
            &snapshot.snapshot.path,
            partition,
            partition_count,
        ) {
            Ok(loaded) => return Ok(Some((snapshot.meta.clone(), loaded))),
            Err(e) => tracing::warn!(error = %e, "snapshot unusable; trying another"),
        }
    }
    Ok(None)
}

/// Loads the snapshot file at `path` and checks that it is what `meta` describes, for this
/// partition.
fn load_checked(
    meta: &RaftSnapshotMeta,
    path: &Path,
    partition: PartitionId,
    partition_count: u32,
) -> Result<LoadedSnapshot, SnapshotError> {
    let loaded = load_snapshot(path)?;
    let state = &loaded.state;
    let described = applied_log_id(loaded.last_term, state.last_index());
    let problem = if (state.partition(), state.partition_count()) != (partition, partition_count) {
        Some(format!(
            "it holds partition {} of {}, not {partition} of {partition_count}",
            state.partition(),
            state.partition_count()
        ))
    } else if described != meta.last_log_id {
        Some(format!(
            "it ends at {described:?}, its Raft meta at {:?}",
            meta.last_log_id
        ))
    } else {
        None
    };
    match problem {
        Some(reason) => Err(SnapshotError::Invalid {
            path: path.to_path_buf(),
            reason,
        }),
        None => Ok(loaded),
    }
}

/// The first log index of the history an audit needs behind the snapshots of `dir`: the one
/// right after its oldest snapshot, from which `wallet audit replay` reads on (1 when there is
/// none: everything is history). The log keeps it when it purges
/// (`WriterOptions::history_from_index`).
pub fn history_from_index(dir: &Path) -> Result<u64, LogError> {
    Ok(list_snapshots(dir)?
        .first()
        .map_or(1, |(index, _)| index.saturating_add(1)))
}

/// Where a snapshot being received into `dir` is written: a fresh name, never taken for a
/// finished snapshot.
pub fn receiving_path(dir: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    dir.join(format!("{nanos}.{RECEIVING_SUFFIX}"))
}

/// Deletes the files of `dir` that were being received when the node stopped: a transfer
/// that did not finish is never resumed (the leader sends the snapshot again), so they are
/// only dead weight. Returns how many were deleted; a missing `dir` has none.
pub fn remove_unfinished_receptions(dir: &Path) -> Result<usize, LogError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(LogError::io(dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry.map_err(|e| LogError::io(dir, e))?.path();
        if path.extension().and_then(|e| e.to_str()) == Some(RECEIVING_SUFFIX) {
            std::fs::remove_file(&path).map_err(|e| LogError::io(&path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Installs the snapshot at `handle` described by `meta` into `dir`: loads and checks it,
/// writes the meta, then writes the loaded state as this partition's snapshot under its index
/// (`write_snapshot`, which also prunes what `retention` does not keep). Rewriting rather than
/// renaming costs one more pass over the file, and buys one writer of snapshot files and one
/// pruning rule; the writer is deterministic, so the file is the one that was sent. A file
/// received into `dir` is deleted afterwards; one elsewhere is left alone. Returns the loaded
/// state and the handle of the installed file.
pub fn install(
    dir: &Path,
    meta: &RaftSnapshotMeta,
    handle: &SnapshotHandle,
    partition: PartitionId,
    partition_count: u32,
    retention: SnapshotRetention,
) -> Result<(LoadedSnapshot, SnapshotHandle), SnapshotError> {
    let loaded = load_checked(meta, &handle.path, partition, partition_count)?;
    std::fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
    let mut capture = SnapshotCapture::take(&loaded.state, loaded.last_term);
    save_atomically(&meta_path(dir, capture.meta.last_index), &encode_meta(meta))?;
    let path = write_snapshot(dir, &mut capture, retention)?;
    if handle.path.parent() == Some(dir) && handle.path != path {
        std::fs::remove_file(&handle.path).map_err(|e| LogError::io(&handle.path, e))?;
    }
    prune_orphan_metas(dir)?;
    let installed = SnapshotHandle { path: path.clone() };
    Ok((LoadedSnapshot { path, ..loaded }, installed))
}

/// Deletes every `.wraft` of `dir` whose snapshot file is gone.
fn prune_orphan_metas(dir: &Path) -> Result<(), LogError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LogError::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| LogError::io(dir, e))?.path();
        if path.extension().and_then(|e| e.to_str()) == Some(META_SUFFIX)
            && !path
                .with_extension(SNAPSHOT_SUFFIX.trim_start_matches('.'))
                .exists()
        {
            std::fs::remove_file(&path).map_err(|e| LogError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Replaces the meta file `path` with `bytes` durably: temp file, fsync, rename, fsync of the directory.
fn save_atomically(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let tmp = path.with_extension(format!("{META_SUFFIX}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(|e| LogError::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| LogError::io(&tmp, e))?;
    file.sync_all().map_err(|e| LogError::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| LogError::io(path, e))?;
    sync_dir(path.parent().expect("a snapshot path has a directory"))
}
