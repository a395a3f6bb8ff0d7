//! `RaftLogStore`: openraft's log storage (`RaftLogStorage`, storage-v2) over a partition's
//! segment log (RAFT_PLAN §2.3).
//!
//! | openraft            | here                                                             |
//! | ------------------- | ---------------------------------------------------------------- |
//! | `append`            | `LogWriter::append_at` per entry, one `flush` (O_DSYNC write) for  |
//! |                     | the batch, then the `LogFlushed` callback: only once durable     |
//! | `truncate`          | `LogWriter::truncate_from`                                       |
//! | `purge`             | `LogWriter::purge_through` (logical: `raft_meta.last_purged`)    |
//! | `get_log_state`     | the writer's last index/term and `raft_meta.last_purged`          |
//! | `save/read_vote`    | `log/vote.rs`                                                     |
//! | `save/read_committed` | `raft_meta.committed`                                          |
//! | `try_get_log_entries`, readers | `log_reader`: the newest entries from `tail_cache`, |
//! |                     | older ones through the mapped segments                           |
//!
//! Raft index `i` is log index `i + 1` (`entry_record`). Records and `raft_meta` stay in log
//! indexes; the shift happens only at this boundary.
//!
//! `append` flushes before it returns. openraft 0.9 awaits the callback of every append before
//! it goes on (RAFT_PLAN §6), so a background flusher would buy nothing; and because it
//! returns only when durable, the entries are readable when it returns, as openraft requires.
//!
//! The vote and `raft_meta` saves (temp file, fsync, rename, fsync of the directory) go through
//! glommio's io_uring, so an election storm over many partitions of a core does not stall it.
//! openraft saves `committed` on every commit, between commit and apply; the writer keeps it in
//! memory and writes it with the next purge or at close (`LogWriter::save_committed`), so no
//! file write sits on the commit path.
//!
//! **A full disk** (out of space, or the file size limit) does not fail an append: openraft
//! would take that as fatal and stop the partition's Raft for good. The entries stay buffered
//! in the writer and the append retries every `FULL_RETRY_MS` until space returns, with
//! `DiskSpace::full` set meanwhile, so that the `RaftTask` refuses new commands at once
//! (`storage_full`) instead of queueing them behind the stuck write. The waiting entries are
//! neither acknowledged nor refused: they may still become durable (and then be applied and
//! answered) once space returns; a client that gives up on them retries with the same transfer
//! ids. Only shutdown ends the wait early (`DiskSpace::give_up`), with a write error.
//!
//! All writes come through `&mut self`, one at a time, as openraft requires (vote and log I/O
//! serialized). Readers share only the `LogView`, which the store shrinks before a destructive
//! step and grows after a durable one (`log_reader`).

use crate::log::vote::{load_vote, save_vote_async, Vote as StoredVote};
use crate::log::{find_tail, LogError, LogWriter, WriterOptions};
use crate::raft::entry_record::{log_index, raft_index, record_fields, to_entry_id, to_log_id};
use crate::raft::log_reader::{read_entries, LogReader, LogView};
use crate::raft::snapshot_files::history_from_index;
use crate::raft::types::{Entry, LogId, StorageError, WalletRaft};
use crate::runtime::timing::{self, SharedTiming};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LeaderId, OptionalSend, RaftLogReader, StorageIOError, Vote};
use std::cell::{Cell, RefCell};
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a write waiting for disk space is tried again (the writer throttles its own
/// retries to the same pace).
const FULL_RETRY_MS: u64 = 100;

/// Whether the log waits for disk space, shared between the store (inside openraft) and the
/// partition's `RaftTask` (same core: plain cells).
#[derive(Debug, Default)]
pub struct DiskSpace {
    /// An append waits for disk space now.
    full: Cell<bool>,
    /// Set at shutdown: a waiting append (or snapshot, on its helper thread) stops waiting
    /// and fails.
    give_up: Arc<AtomicBool>,
}

impl DiskSpace {
    /// True while an append waits for disk space.
    pub fn is_full(&self) -> bool {
        self.full.get()
    }

    /// Makes a waiting append (and every later one that finds the disk full) fail at once, so
    /// that a shutdown does not wait for space that may never come.
    pub fn give_up(&self) {
        self.give_up.store(true, Ordering::Relaxed);
    }

    /// The flag `give_up` sets, for the snapshot builder (`RaftPartition::with_give_up`).
    pub fn give_up_flag(&self) -> Arc<AtomicBool> {
        self.give_up.clone()
    }

    /// The one waiting rule of every log write here, given the write's `outcome`: on a full
    /// disk (and no shutdown) report the wait, sleep `FULL_RETRY_MS` and answer true (write
    /// again); after a success the wait is over. False: return the outcome as it is.
    async fn retry_after<T>(&self, outcome: &Result<T, LogError>) -> bool {
        match outcome {
            Err(e) if e.is_disk_full() && !self.give_up.load(Ordering::Relaxed) => {
                self.full.set(true);
                glommio::timer::sleep(Duration::from_millis(FULL_RETRY_MS)).await;
                true
            }
            Err(_) => false,
            Ok(_) => {
                self.full.set(false);
                false
            }
        }
    }
}

pub struct RaftLogStore {
    writer: LogWriter,
    view: Rc<RefCell<LogView>>,
    space: Rc<DiskSpace>,
    /// Reused buffer for membership bodies.
    scratch: Vec<u8>,
    /// Why an append failed with records buffered that never reached the disk. The log's
    /// end in memory is then past its end on disk, so every later write is refused (openraft
    /// stops this Raft on the first error anyway; a restart reopens the log from disk).
    failed: Option<String>,
    /// The partition's snapshot dir when the log keeps the history behind its oldest snapshot
    /// for the audit tools (`open_keeping_history`); `None`: a purge deletes what it covers.
    history_of: Option<PathBuf>,
    /// Where each append's time until durable goes (`GroupTiming::append`).
    timing: SharedTiming,
}

impl RaftLogStore {
    /// Opens the log of `dir` (scanning its tail, cutting a torn one, finishing an interrupted
    /// purge: `LogWriter::open`).
    pub async fn open(dir: &Path, options: WriterOptions) -> Result<RaftLogStore, LogError> {
        let tail = find_tail(dir)?;
        Ok(RaftLogStore::new(
            LogWriter::open(dir, options, &tail).await?,
        ))
    }

    /// A store over `writer`, which must hold nothing unflushed.
    pub fn new(writer: LogWriter) -> RaftLogStore {
        assert_eq!(
            writer.durable_index(),
            writer.last_index(),
            "a Raft log store starts from a flushed writer"
        );
        let store = RaftLogStore {
            writer,
            view: Rc::default(),
            space: Rc::default(),
            scratch: Vec::new(),
            failed: None,
            history_of: None,
            timing: SharedTiming::default(),
        };
        store.grow_view();
        store
    }

    /// `open`, keeping on disk, through every purge (the open's included), the log from the
    /// oldest snapshot of `snapshot_dir` on (looked up again at each purge, as snapshots come
    /// and go), so that `wallet audit replay --until T` can start from any kept snapshot
    /// (daily ones reach days back).
    pub async fn open_keeping_history(
        dir: &Path,
        mut options: WriterOptions,
        snapshot_dir: &Path,
    ) -> Result<RaftLogStore, LogError> {
        options.history_from_index = history_from_index(snapshot_dir)?;
        let mut store = RaftLogStore::open(dir, options).await?;
        store.history_of = Some(snapshot_dir.to_path_buf());
        Ok(store)
    }

    /// Closes the log (everything appended is already durable).
    pub async fn close(self) -> Result<(), LogError> {
        self.writer.close().await
    }

    pub fn dir(&self) -> &Path {
        self.writer.dir()
    }

    /// Records each append's time until durable in `timing` (the partition's).
    pub fn with_timing(mut self, timing: SharedTiming) -> RaftLogStore {
        self.timing = timing;
        self
    }

    /// The disk-space state this store reports to (and takes `give_up` from).
    pub fn space(&self) -> Rc<DiskSpace> {
        self.space.clone()
    }

    /// openraft's `append` with the completion as a plain function: writes `entries` durably,
    /// then calls `done` (`Ok` only once every entry is on stable storage, `Err` if the write
    /// failed) and returns. The `RaftLogStorage::append` glue passes the `LogFlushed` callback
    /// here. A write error is returned too: openraft treats it as fatal and stops this Raft.
    /// A full disk is not an error: the append waits for space (module docs).
    pub async fn append_then<I>(
        &mut self,
        entries: I,
        done: impl FnOnce(Result<(), std::io::Error>),
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        let started = Instant::now();
        let result = self.append_durably(entries).await;
        timing::record(&self.timing, |t| &mut t.append, started.elapsed());
        if let Err(e) = &result {
            if self.writer.durable_index() != self.writer.last_index() {
                self.failed = Some(e.to_string());
            }
        }
        self.grow_view();
        done(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        });
        result
    }

    async fn append_durably<I>(&mut self, entries: I) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        self.refuse_if_failed()?;
        // Kept for the tail cache, which takes them only once they are durable.
        let mut appended = Vec::new();
        for entry in entries {
            self.check_continues(&entry.log_id)?;
            let (kind, timestamp, body) = record_fields(&entry, &mut self.scratch);
            if !self.writer.has_room(body.len()) {
                flush_when_space(&mut self.writer, &self.space).await?;
                if !self.writer.has_room(body.len()) {
                    return Err(defensive(format!(
                        "entry {} has a {}-byte body, more than a flush group holds",
                        entry.log_id,
                        body.len()
                    )));
                }
            }
            self.writer
                .append_at(
                    log_index(entry.log_id.index),
                    entry.log_id.leader_id.term,
                    timestamp,
                    kind,
                    body,
                )
                .map_err(write_error)?;
            appended.push(entry);
        }
        flush_when_space(&mut self.writer, &self.space).await?;
        let mut view = self.view.borrow_mut();
        for entry in appended {
            view.cache.push(log_index(entry.log_id.index), entry);
        }
        Ok(())
    }

    /// Refuses (instead of the writer's panic) an entry that would leave a hole or lower the
    /// term: that would be a bug in the caller, and openraft stops on a storage error.
    fn check_continues(&self, id: &LogId) -> Result<(), StorageError> {
        let next = self.writer.last_index() + 1;
        let index = log_index(id.index);
        if (index != next && !self.writer.is_pristine())
            || id.leader_id.term < self.writer.last_term()
        {
            return Err(defensive(format!(
                "entry {id} does not continue the log, which ends at index {} term {}",
                raft_index(next),
                self.writer.last_term()
            )));
        }
        Ok(())
    }

    fn refuse_if_failed(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(why) => Err(defensive(format!(
                "the log refuses writes after a failed append: {why}"
            ))),
            None => Ok(()),
        }
    }

    /// Lets readers see everything durable and not purged (after a write completed).
    fn grow_view(&self) {
        let mut view = self.view.borrow_mut();
        view.first = self.writer.first_live_index();
        view.last = self.writer.durable_index();
        if view.segments != self.writer.segments() {
            view.segments = self.writer.segments().to_vec();
            let view = &mut *view;
            view.hints.get_mut().retain_segments(&view.segments);
        }
    }
}

impl RaftLogReader<WalletRaft> for RaftLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_entries(&self.view.borrow(), range)
    }
}

impl RaftLogStorage<WalletRaft> for RaftLogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<WalletRaft>, StorageError> {
        let last_purged_log_id = self.writer.last_purged().map(to_log_id);
        // No live record (an empty log, or everything purged): the last id is the last purged
        // one, or none at all.
        let last_log_id = if self.writer.first_live_index() <= self.writer.last_index() {
            Some(to_log_id(crate::log::EntryId {
                term: self.writer.last_term(),
                index: self.writer.last_index(),
            }))
        } else {
            last_purged_log_id
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader::new(self.view.clone())
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.refuse_if_failed()?;
        let stored = StoredVote {
            term: vote.leader_id.term,
            voted_for: vote.leader_id.voted_for,
            committed: vote.committed,
        };
        // A vote must be durable before it is answered: on a full disk, wait for space as an
        // append does.
        loop {
            let outcome = save_vote_async(self.writer.dir(), &stored).await;
            if !self.space.retry_after(&outcome).await {
                return outcome.map_err(|e| StorageIOError::write_vote(&e).into());
            }
        }
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        let stored = load_vote(self.writer.dir()).map_err(|e| StorageIOError::read_vote(&e))?;
        Ok(stored.map(|v| Vote {
            leader_id: LeaderId {
                term: v.term,
                voted_for: v.voted_for,
            },
            committed: v.committed,
        }))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.refuse_if_failed()?;
        // Memory only: it reaches `raft_meta` with the next purge or at close.
        self.writer
            .save_committed(committed.as_ref().map(to_entry_id))
            .await
            .map_err(write_error)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.writer.read_committed().map(to_log_id))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<WalletRaft>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_then(entries, |result| callback.log_io_completed(result))
            .await
    }

    /// Deletes `[log_id.index, ..)`. Readers stop seeing those entries first.
    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.refuse_if_failed()?;
        let from = log_index(log_id.index);
        {
            let mut view = self.view.borrow_mut();
            view.last = view.last.min(from - 1);
            view.cache.truncate_from(from);
            view.hints.get_mut().forget_from(from);
        }
        let result = self.writer.truncate_from(from).await;
        self.grow_view();
        result.map_err(write_error)
    }

    /// Deletes `(.., log_id.index]`, logically at once and durably (`raft_meta`), whole
    /// segments as far as they lie below it. Readers stop seeing those entries first.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.refuse_if_failed()?;
        let through = to_entry_id(&log_id);
        {
            let mut view = self.view.borrow_mut();
            view.first = view.first.max(through.index + 1);
            view.cache.purge_through(through.index);
        }
        if let Some(dir) = &self.history_of {
            match history_from_index(dir) {
                Ok(from) => self.writer.set_history_from_index(from),
                // Keeping the previous start keeps at least as much: only a later purge than
                // it should have would follow.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the snapshots; the log history kept for audits stays where it was")
                }
            }
        }
        let result = self.writer.purge_through(through).await;
        self.grow_view();
        result.map_err(write_error)
    }
}

/// Flushes `writer`, waiting (and trying again every `FULL_RETRY_MS`) while the disk is full;
/// the buffered records stay in the writer meanwhile. Other errors fail at once.
async fn flush_when_space(writer: &mut LogWriter, space: &DiskSpace) -> Result<(), StorageError> {
    loop {
        let outcome = writer.flush().await;
        if !space.retry_after(&outcome).await {
            return outcome.map_err(write_error);
        }
    }
}

fn write_error(e: LogError) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

/// A request the log refuses because it would break its invariants (a caller's bug).
fn defensive(what: String) -> StorageError {
    StorageIOError::write_logs(openraft::AnyError::error(what)).into()
}
