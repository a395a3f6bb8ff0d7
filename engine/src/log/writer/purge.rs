//! Raft's purge on the segment log, and the `committed` pointer kept beside it.
//!
//! To openraft a purge is logical: "entries up to `log_id` are gone, and `log_id` stays known
//! as the last purged one". Here it is recorded first (`raft_meta.last_purged`, durable), and
//! only then are whole segments deleted, front first. A crash between the two, or midway through
//! the deletions, leaves segments that are all purged and still on disk: `settle_purge` deletes
//! them at the next open. Records at or below `last_purged` that share a segment with later
//! ones stay on disk until that segment goes, and no reader serves them (`scan_log` skips them,
//! `first_live_index` starts after them). The active segment is kept even when a purge covers
//! all its records; if appends then move on to a new segment, the old one goes at the next
//! purge or open.
//!
//! **History for audits.** A segment holding a record at or above
//! `WriterOptions::history_from_index` is not deleted by a purge either: a Raft partition that
//! keeps daily snapshots sets it to just after its oldest kept snapshot, so `wallet audit
//! replay --until T` can start from that snapshot and read on (`scan_log_history`). A purge
//! past the end still deletes everything: the log continues after a gap.

use super::LogWriter;
use crate::log::error::LogError;
use crate::log::raft_meta::{save_raft_meta, save_raft_meta_async, EntryId, RAFT_META_FILE};
use crate::log::scan::{sync_dir, LogTail};
use crate::log::segments::SegmentInfo;
use std::path::Path;

impl LogWriter {
    /// The id of the last purged entry, as persisted in `raft_meta` (survives restarts).
    pub fn last_purged(&self) -> Option<EntryId> {
        self.meta.last_purged
    }

    /// The lowest index a reader may serve: right after `last_purged`, and never before the
    /// first record still on disk. Equals `last_index() + 1` when no live record is left.
    pub fn first_live_index(&self) -> u64 {
        let on_disk = self
            .segments
            .first()
            .map_or(self.durable_index + 1, |s| s.first_index);
        on_disk.max(self.meta.first_unpurged_index())
    }

    /// Raft's `purge(log_id)`: removes every entry at or below `purged.index`. Afterwards no
    /// reader serves those indexes and `last_purged()` is `purged`, also after a restart.
    ///
    /// `raft_meta` is saved first (durably); then the segments whose records all lie at or
    /// below `purged.index` are deleted, front first. The active segment and any segment that
    /// holds a later record stay, with their purged records hidden.
    ///
    /// **Past the end** (`purged.index > last_index()`) means everything: openraft purges
    /// through a snapshot's last log id after installing it on a follower whose whole log is
    /// older (`LogIdList::purge`: "it may need to purge across the last_log_id"; the
    /// conformance test `purge_logs_upto_20` expects `last_log_id == last_purged_log_id`).
    /// Then every segment is deleted (a segment cannot continue the log after a gap),
    /// `last_index()`/`last_term()` become `purged`'s, and the next append is at
    /// `purged.index + 1`. Appended records must be flushed before such a purge.
    ///
    /// At or below the current `last_purged` nothing happens (openraft never purges backwards).
    /// The save is blocking std::fs with two fsyncs, like the vote; purges are rare (one per
    /// snapshot).
    pub async fn purge_through(&mut self, purged: EntryId) -> Result<(), LogError> {
        self.refuse_if_poisoned()?;
        if let Some(old) = self.meta.last_purged {
            if purged.index <= old.index {
                return Ok(());
            }
            if purged.term < old.term {
                return Err(refused(
                    &self.dir,
                    format!("purge through {purged:?} lowers the term of the last purge {old:?}"),
                ));
            }
        }
        let past_end = purged.index > self.last_index;
        if past_end {
            assert_eq!(
                self.durable_index, self.last_index,
                "flush before purging past the end"
            );
        } else if purged.index == self.last_index && purged.term != self.last_term {
            return Err(refused(
                &self.dir,
                format!(
                    "purge through {purged:?}, but the last record there has term {}",
                    self.last_term
                ),
            ));
        }
        let before = self.meta;
        self.meta.last_purged = Some(purged);
        if let Err(e) = self.write_meta().await {
            self.meta = before;
            return Err(e);
        }
        if past_end {
            // `open` finishes a purge past the end (deletes every segment), as after a crash.
            self.reopen().await?;
            if (self.last_index, self.last_term) != (purged.index, purged.term) {
                let error = refused(
                    &self.dir,
                    format!(
                        "after purging past the end the log ends at {}/{}, not at {purged:?}",
                        self.last_index, self.last_term
                    ),
                );
                self.poisoned = Some(error.to_string());
                return Err(error);
            }
        } else {
            let deletable = deletable_through(purged.index, self.options.history_from_index);
            let count = purged_segment_count(&self.segments, deletable);
            delete_front_segments(&self.dir, &mut self.segments, count)?;
        }
        assert_eq!(self.first_live_index(), purged.index + 1);
        Ok(())
    }

    /// Moves the start of the history kept behind purges (`WriterOptions::history_from_index`);
    /// it applies from the next purge on (segments already deleted stay deleted).
    pub fn set_history_from_index(&mut self, index: u64) {
        self.options.history_from_index = index;
    }

    /// Openraft's `save_committed`, which it calls on **every** commit, in its core, between
    /// the commit and the apply: a lower bound of the commit index that openraft re-applies up
    /// to at start. It is taken in memory only (`read_committed` answers it) and reaches
    /// `raft_meta` with the next write of that file: a purge (after every snapshot) or `close`
    /// (and `Drop`). Writing it here cost a temp file, two fsyncs and a rename on the commit
    /// path: measured, 8-13 ms before every other apply at 100 ms intervals. A crash loses the
    /// progress since the last purge, which the contract allows (the bound may lag; openraft
    /// re-applies the rest once a leader commits it again).
    pub async fn save_committed(&mut self, committed: Option<EntryId>) -> Result<(), LogError> {
        self.refuse_if_poisoned()?;
        self.meta.committed = committed;
        Ok(())
    }

    /// Writes the in-memory `raft_meta` (its `committed` included) durably.
    pub(in crate::log) async fn write_meta(&mut self) -> Result<(), LogError> {
        save_raft_meta_async(&self.dir, &self.meta).await?;
        self.committed_on_disk = self.meta.committed;
        Ok(())
    }

    /// The last value given to `save_committed` (at open: the one in `raft_meta`).
    pub fn read_committed(&self) -> Option<EntryId> {
        self.meta.committed
    }
}

/// A writer dropped without `close` (openraft drops its log store at shutdown) still writes
/// a held-back `committed`, blocking, so a clean stop keeps the exact commit point. On a
/// failed log nothing is written.
impl Drop for LogWriter {
    fn drop(&mut self) {
        if self.poisoned.is_none() && self.meta.committed != self.committed_on_disk {
            if let Err(e) = save_raft_meta(&self.dir, &self.meta) {
                tracing::warn!(error = %e, "could not write the commit point at close; it lags (harmless: openraft re-applies)");
            }
        }
    }
}

/// Where the log continues when a writer opens it.
pub(super) struct LogStart {
    pub segments: Vec<SegmentInfo>,
    pub last_index: u64,
    pub last_term: u64,
}

/// The start of the log `tail` describes, after finishing a purge that a crash interrupted
/// (`raft_meta` saved, not all of its segments deleted yet). A `raft_meta` that contradicts the
/// segments (a hole after `last_purged`, another term for the same last entry) is an error.
pub(super) fn settle_purge(
    dir: &Path,
    tail: &LogTail,
    history_from_index: u64,
) -> Result<LogStart, LogError> {
    let mut segments = tail.segments.clone();
    // An empty log that starts later (after a purge, or recovery after a snapshot) ends right
    // before its first index.
    let mut last_index = if tail.last_index == 0 {
        tail.first_index.saturating_sub(1)
    } else {
        tail.last_index
    };
    let mut last_term = tail.last_term;
    let Some(purged) = tail.raft_meta.last_purged else {
        return Ok(LogStart {
            segments,
            last_index,
            last_term,
        });
    };
    let meta_path = dir.join(RAFT_META_FILE);
    if purged.index > last_index {
        // Everything is purged and the log goes on after `purged`: no segment left can
        // continue it without a gap.
        let count = segments.len();
        delete_front_segments(dir, &mut segments, count)?;
        last_index = purged.index;
        last_term = purged.term;
    } else {
        if let Some(first) = segments
            .first()
            .filter(|s| s.first_index > purged.index.saturating_add(1))
        {
            return Err(LogError::IndexGap {
                path: first.path.clone(),
                offset: 0,
                expected: purged.index.saturating_add(1),
                found: first.first_index,
            });
        }
        if purged.index == last_index {
            if tail.last_index == 0 {
                last_term = purged.term;
            } else if tail.last_term != purged.term {
                return Err(LogError::io(
                    &meta_path,
                    std::io::Error::other(format!(
                        "last purged entry {} has term {}, but the log's record {} has term {}",
                        purged.index, purged.term, last_index, tail.last_term
                    )),
                ));
            }
        }
        let deletable = deletable_through(purged.index, history_from_index);
        let count = purged_segment_count(&segments, deletable);
        delete_front_segments(dir, &mut segments, count)?;
    }
    Ok(LogStart {
        segments,
        last_index,
        last_term,
    })
}

/// The last index whose segment a purge through `purged` may delete: below the kept history.
fn deletable_through(purged: u64, history_from_index: u64) -> u64 {
    purged.min(history_from_index.saturating_sub(1))
}

/// How many leading segments hold only records at or below `through`: those whose successor
/// starts at or below `through + 1`. The last segment never counts (the next append goes
/// there, and nothing tells where it ends).
fn purged_segment_count(segments: &[SegmentInfo], through: u64) -> usize {
    segments
        .windows(2)
        .take_while(|pair| pair[1].first_index <= through.saturating_add(1))
        .count()
}

/// Deletes the first `count` segments, front first (a crash midway leaves a log without a
/// hole), then syncs the directory. `segments` always lists what is still on disk.
fn delete_front_segments(
    dir: &Path,
    segments: &mut Vec<SegmentInfo>,
    count: usize,
) -> Result<(), LogError> {
    assert!(count <= segments.len());
    for _ in 0..count {
        let path = &segments[0].path;
        std::fs::remove_file(path).map_err(|e| LogError::io(path, e))?;
        segments.remove(0);
    }
    if count > 0 {
        sync_dir(dir)?;
    }
    Ok(())
}

/// A purge the log refuses: it contradicts the log (a caller's bug, or a disk changed under
/// the log). An error, not a panic: openraft stops this partition's Raft, not the process.
fn refused(dir: &std::path::Path, what: String) -> LogError {
    LogError::io(dir, std::io::Error::other(what))
}

#[cfg(test)]
mod tests {
    use super::purged_segment_count;
    use crate::log::segments::SegmentInfo;

    #[test]
    fn only_segments_wholly_at_or_below_the_purge_count_and_never_the_last() {
        let segments: Vec<SegmentInfo> = [1, 11, 21]
            .into_iter()
            .map(|first_index| SegmentInfo {
                first_index,
                path: format!("{first_index}").into(),
            })
            .collect();
        let counts: Vec<usize> = [0, 9, 10, 11, 19, 20, 21, 100]
            .into_iter()
            .map(|through| purged_segment_count(&segments, through))
            .collect();
        assert_eq!(counts, [0, 0, 1, 1, 1, 2, 2, 2]);
        assert_eq!(purged_segment_count(&segments[..1], 100), 0);
        assert_eq!(purged_segment_count(&[], 100), 0);
    }
}
