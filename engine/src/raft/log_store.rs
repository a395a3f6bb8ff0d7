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
//! | `save/read_committed` | `raft_meta.committed`, saved at most once a second (below)     |
//! | `try_get_log_entries`, readers | `log_reader` (mapped segments, no tail cache yet)     |
//!
//! Raft index `i` is log index `i + 1` (`entry_record`). Records and `raft_meta` stay in log
//! indexes; the shift happens only at this boundary.
//!
//! `append` flushes before it returns. openraft 0.9 awaits the callback of every append before
//! it goes on (RAFT_PLAN §6), so a background flusher would buy nothing; and because it
//! returns only when durable, the entries are readable when it returns, as openraft requires.
//!
//! The vote and `raft_meta` saves are blocking std::fs (temp file, fsync, rename, fsync) on the
//! executor thread: fine for rare votes and commits, a stall in an election storm over many
//! partitions (RAFT_PLAN §2.3 wants them asynchronous later).
//!
//! **Committed** is only a lower bound to openraft (at start it re-applies up to it; the
//! leader commits the rest again), and openraft tells it after every commit. Saving each one
//! cost two more fsyncs per entry on the executor thread, which stalled the partition (the
//! single-node Raft bench ran at a quarter of the local group commit; and each save is a
//! blocking temp file + fsync + rename + dir fsync, ~2-3 ms). So the store keeps the
//! newest value in memory and saves it when `COMMITTED_SAVE_INTERVAL` has passed since the
//! last save, and at `close` (RAFT_PLAN §2.3).
//!
//! All writes come through `&mut self`, one at a time, as openraft requires (vote and log I/O
//! serialized). Readers share only the `LogView`, which the store shrinks before a destructive
//! step and grows after a durable one (`log_reader`).

use crate::log::vote::{load_vote, save_vote, Vote as StoredVote};
use crate::log::{find_tail, LogError, LogWriter, WriterOptions};
use crate::raft::entry_record::{log_index, raft_index, record_fields, to_entry_id, to_log_id};
use crate::raft::log_reader::{read_entries, LogReader, LogView};
use crate::raft::types::{Entry, LogId, StorageError, WalletRaft};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LeaderId, OptionalSend, RaftLogReader, StorageIOError, Vote};
use std::cell::RefCell;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The most time between two saves of the committed id (see the module doc).
pub const COMMITTED_SAVE_INTERVAL: Duration = Duration::from_secs(1);

pub struct RaftLogStore {
    writer: LogWriter,
    view: Rc<RefCell<LogView>>,
    /// Reused buffer for membership bodies.
    scratch: Vec<u8>,
    /// Why an append failed with records buffered that never reached the disk. The log's
    /// end in memory is then past its end on disk, so every later write is refused (openraft
    /// stops this Raft on the first error anyway; a restart reopens the log from disk).
    failed: Option<String>,
    /// The newest committed id openraft told (saved or not).
    committed: Option<LogId>,
    /// When `committed` was last saved (`None`: not yet by this store), and whether it
    /// changed since.
    committed_saved_at: Option<Instant>,
    committed_unsaved: bool,
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
            committed: writer.read_committed().map(to_log_id),
            writer,
            view: Rc::default(),
            scratch: Vec::new(),
            failed: None,
            committed_saved_at: None,
            committed_unsaved: false,
        };
        store.grow_view();
        store
    }

    /// Closes the log (everything appended is already durable), saving the committed id
    /// first when a newer one is only in memory.
    pub async fn close(mut self) -> Result<(), LogError> {
        if self.committed_unsaved && self.failed.is_none() {
            self.save_committed_now()?;
        }
        self.writer.close().await
    }

    fn save_committed_now(&mut self) -> Result<(), LogError> {
        self.writer
            .save_committed(self.committed.as_ref().map(to_entry_id))?;
        self.committed_saved_at = Some(Instant::now());
        self.committed_unsaved = false;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.writer.dir()
    }

    /// openraft's `append` with the completion as a plain function: writes `entries` durably,
    /// then calls `done` (`Ok` only once every entry is on stable storage, `Err` if the write
    /// failed) and returns. The `RaftLogStorage::append` glue passes the `LogFlushed` callback
    /// here. A write error is returned too: openraft treats it as fatal and stops this Raft
    /// (also for a full disk, which the writer itself could retry; restarting the partition's
    /// Raft once space is back is left to the layer above).
    pub async fn append_then<I>(
        &mut self,
        entries: I,
        done: impl FnOnce(Result<(), std::io::Error>),
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        let mut appended = Vec::new();
        let result = self.append_durably(entries, &mut appended).await;
        if let Err(e) = &result {
            if self.writer.durable_index() != self.writer.last_index() {
                self.failed = Some(e.to_string());
            }
        }
        match &result {
            // Durable now: readers get them from memory (a clone shares the body).
            Ok(()) => self.view.borrow_mut().tail.push(appended),
            // Some may be durable, some not: readers go to the disk for all of them.
            Err(_) => self.view.borrow_mut().tail.clear(),
        }
        self.grow_view();
        done(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        });
        result
    }

    async fn append_durably<I>(
        &mut self,
        entries: I,
        appended: &mut Vec<Entry>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        self.refuse_if_failed()?;
        for entry in entries {
            appended.push(entry.clone());
            self.check_continues(&entry.log_id)?;
            let (kind, timestamp, body) = record_fields(&entry, &mut self.scratch);
            if !self.writer.has_room(body.len()) {
                self.writer.flush().await.map_err(write_error)?;
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
        }
        self.writer.flush().await.map_err(write_error)
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
        let (first, last) = (view.first, view.last);
        view.tail.keep(first, last);
        if view.segments != self.writer.segments() {
            view.segments = self.writer.segments().to_vec();
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
        save_vote(self.writer.dir(), &stored).map_err(|e| StorageIOError::write_vote(&e).into())
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

    /// Keeps `committed` and saves it unless the last save is less than
    /// `COMMITTED_SAVE_INTERVAL` old (see the module doc).
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.refuse_if_failed()?;
        self.committed = committed;
        self.committed_unsaved = true;
        if self
            .committed_saved_at
            .is_none_or(|at| at.elapsed() >= COMMITTED_SAVE_INTERVAL)
        {
            self.save_committed_now().map_err(write_error)?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.committed)
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
            let (first, last) = (view.first, view.last);
            view.tail.keep(first, last);
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
            let (first, last) = (view.first, view.last);
            view.tail.keep(first, last);
        }
        let result = self.writer.purge_through(through).await;
        self.grow_view();
        result.map_err(write_error)
    }
}

fn write_error(e: LogError) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

/// A request the log refuses because it would break its invariants (a caller's bug).
fn defensive(what: String) -> StorageError {
    StorageIOError::write_logs(openraft::AnyError::error(what)).into()
}
