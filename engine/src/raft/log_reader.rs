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
//! A read of the newest entries (a follower keeping up) is served by the view's `TailCache`
//! without touching the disk; any other read goes through the mapped segments
//! (`log::read_range`, starting from the view's `OffsetHints`), mapping the segments it
//! touches and copying the bodies it returns.

use crate::log::{read_range, LogError, OffsetHints, SegmentInfo};
use crate::raft::entry_record::entry_of_record;
use crate::raft::tail_cache::TailCache;
use crate::raft::types::{Entry, StorageError, WalletRaft};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use std::cell::RefCell;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::rc::Rc;

/// What readers may read, in log indexes (`entry_record`): `first..=last` (empty when
/// `first > last`), held by `segments`, the newest of them also in `cache`.
#[derive(Debug, Default)]
pub struct LogView {
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) segments: Vec<SegmentInfo>,
    pub(crate) cache: TailCache,
    /// Where records start in `segments`, learned by reads (a `RefCell`: reads share the view).
    pub(crate) hints: RefCell<OffsetHints>,
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
    // The end of the range from memory, what lies before the cache from the segments.
    let (disk_until, cached) = view
        .cache
        .suffix(from, until)
        .unwrap_or((until, Vec::new()));
    let mut entries = Vec::with_capacity(until.saturating_sub(from).min(1024) as usize);
    let mut hints = view.hints.borrow_mut();
    read_range::<ReadError>(&view.segments, &mut hints, from, disk_until, |record| {
        entries.push(entry_of_record(&record).map_err(ReadError::Entry)?);
        Ok(())
    })
    .map_err(|e| match e {
        ReadError::Log(e) => StorageIOError::read_logs(&e).into(),
        ReadError::Entry(e) => e,
    })?;
    entries.extend(cached);
    Ok(entries)
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
