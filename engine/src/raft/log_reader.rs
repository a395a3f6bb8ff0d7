//! Reading Raft entries back from the segment log: openraft's `RaftLogReader`, for the log
//! store itself and for the readers it hands to replication tasks.
//!
//! A reader does not touch the `LogWriter` (the store holds it, and awaits disk I/O with it),
//! but a `LogView`: which log indexes are readable and which segments hold them. The store
//! updates the view around every write, by one rule: **shrink it before a destructive step,
//! grow it only after a durable one** (see `RaftLogStore`). A reader's read is synchronous (no
//! `.await`), so it always sees one consistent view, and never asks for a record that is being
//! cut, deleted or not yet durable.
//!
//! The newest entries are served from memory (`Tail`, RAFT_PLAN §2.3): the store keeps a
//! clone of each entry it appended (a clone shares the body, `Bytes`) up to `TAIL_BYTES_MAX`
//! of bodies. Older records are read through the mapped segments (`log::read_range`), which
//! maps the segments it touches and copies the bodies it returns. Without the tail, every
//! apply of a one-voter cluster read its entry back from disk (the writer bypasses the page
//! cache) and mapped and unmapped a whole segment to do so.

use crate::log::{read_range, LogError, SegmentInfo};
use crate::raft::entry_record::{entry_of_record, log_index};
use crate::raft::types::{Entry, StorageError, WalletRaft};
use openraft::{EntryPayload, OptionalSend, RaftLogReader, StorageIOError};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::rc::Rc;

/// What readers may read, in log indexes (`entry_record`): `first..=last` (empty when
/// `first > last`), held by `segments`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogView {
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) segments: Vec<SegmentInfo>,
    /// The newest readable entries, in memory.
    pub(crate) tail: Tail,
}

/// Most body bytes the tail keeps (per partition); the oldest entries leave first.
pub const TAIL_BYTES_MAX: usize = 64 << 20;
/// Most entries the tail keeps.
pub const TAIL_ENTRIES_MAX: usize = 16 * 1024;

/// The newest entries appended, contiguous, ending at the view's `last` (or empty).
#[derive(Clone, Debug, Default)]
pub struct Tail {
    entries: VecDeque<Entry>,
    body_bytes: usize,
}

/// Two tails are equal when they hold the same index range (the bodies at an index are the
/// log's, in both).
impl PartialEq for Tail {
    fn eq(&self, other: &Tail) -> bool {
        self.first() == other.first() && self.entries.len() == other.entries.len()
    }
}
impl Eq for Tail {}

fn body_bytes(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(data) => data.body().len(),
        _ => 0,
    }
}

impl Tail {
    /// The log index of its first entry (`None` when empty).
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| log_index(e.log_id.index))
    }

    /// Adds entries that were just made durable right after the newest one.
    pub(crate) fn push(&mut self, appended: Vec<Entry>) {
        for entry in appended {
            if let Some(last) = self.entries.back() {
                assert_eq!(
                    entry.log_id.index,
                    last.log_id.index + 1,
                    "the tail is contiguous"
                );
            }
            self.body_bytes += body_bytes(&entry);
            self.entries.push_back(entry);
        }
        while self.entries.len() > TAIL_ENTRIES_MAX
            || (self.body_bytes > TAIL_BYTES_MAX && self.entries.len() > 1)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.body_bytes -= body_bytes(&entry);
        }
    }

    /// Keeps only the entries with log indexes in `first..=last`.
    pub(crate) fn keep(&mut self, first: u64, last: u64) {
        while self
            .entries
            .back()
            .is_some_and(|e| log_index(e.log_id.index) > last)
        {
            if let Some(entry) = self.entries.pop_back() {
                self.body_bytes -= body_bytes(&entry);
            }
        }
        while self.first().is_some_and(|i| i < first) {
            self.pop_front();
        }
    }

    /// Forgets every entry (the log was reopened or cut in a way the tail cannot follow).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.body_bytes = 0;
    }
}

/// A `RaftLogReader` over the store's log: one per replication task, all sharing the store's
/// view (`Rc`: a partition's Raft lives on one core).
#[derive(Clone)]
pub struct LogReader {
    view: Rc<RefCell<LogView>>,
}

impl LogReader {
    pub(crate) fn new(view: Rc<RefCell<LogView>>) -> LogReader {
        LogReader { view }
    }
}

impl RaftLogReader<WalletRaft> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_entries(&self.view.borrow(), range)
    }
}

/// The entries of `view` whose Raft indexes lie in `range`; indexes outside what the view
/// holds (purged, or past the end) are left out, as openraft allows.
pub(crate) fn read_entries(
    view: &LogView,
    range: impl RangeBounds<u64>,
) -> Result<Vec<Entry>, StorageError> {
    let (from, until) = log_range(range);
    let from = from.max(view.first);
    let until = until.min(view.last.saturating_add(1));
    let mut entries = Vec::with_capacity(until.saturating_sub(from).min(1024) as usize);
    if from >= until {
        return Ok(entries);
    }
    // From disk below the tail, from memory within it.
    let tail_first = view.tail.first().unwrap_or(u64::MAX).max(from);
    if from < tail_first {
        read_from_segments(view, from, until.min(tail_first), &mut entries)?;
    }
    if tail_first < until {
        let skip = (tail_first - view.tail.first().unwrap_or(tail_first)) as usize;
        let take = (until - tail_first) as usize;
        entries.extend(view.tail.entries.iter().skip(skip).take(take).cloned());
    }
    assert_eq!(
        entries.len() as u64,
        until - from,
        "every readable entry is on disk or in the tail"
    );
    Ok(entries)
}

fn read_from_segments(
    view: &LogView,
    from: u64,
    until: u64,
    entries: &mut Vec<Entry>,
) -> Result<(), StorageError> {
    read_range::<ReadError>(&view.segments, from, until, |record| {
        entries.push(entry_of_record(&record).map_err(ReadError::Entry)?);
        Ok(())
    })
    .map_err(|e| match e {
        ReadError::Log(e) => StorageIOError::read_logs(&e).into(),
        ReadError::Entry(e) => e,
    })
}

/// A range of Raft indexes as the half-open range of log indexes `[from, until)`
/// (`log = raft + 1`, saturating: openraft may pass `u64::MAX` as an open end).
fn log_range(range: impl RangeBounds<u64>) -> (u64, u64) {
    let log = |raft: u64| raft.saturating_add(1);
    let from = match range.start_bound() {
        Bound::Included(&i) => log(i),
        Bound::Excluded(&i) => log(i).saturating_add(1),
        Bound::Unbounded => 1,
    };
    let until = match range.end_bound() {
        Bound::Included(&i) => log(i).saturating_add(1),
        Bound::Excluded(&i) => log(i),
        Bound::Unbounded => u64::MAX,
    };
    (from, until)
}

/// A failed read: the log's own error, or a record that is not a valid entry.
enum ReadError {
    Log(LogError),
    Entry(StorageError),
}

impl From<LogError> for ReadError {
    fn from(e: LogError) -> ReadError {
        ReadError::Log(e)
    }
}

#[cfg(test)]
mod tests {
    use super::log_range;

    #[test]
    fn raft_ranges_become_half_open_log_ranges() {
        assert_eq!(log_range(0..3), (1, 4));
        assert_eq!(log_range(0..=3), (1, 5));
        assert_eq!(log_range(5..), (6, u64::MAX));
        assert_eq!(log_range(..), (1, u64::MAX));
        assert_eq!(log_range(3..u64::MAX), (4, u64::MAX));
        assert_eq!(
            log_range((std::ops::Bound::Excluded(2), std::ops::Bound::Unbounded)),
            (4, u64::MAX)
        );
    }
}
