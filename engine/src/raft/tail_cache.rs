//! The newest durable entries of a partition's Raft log, kept in memory (RAFT_PLAN §2.3).
//!
//! A leader sends every entry to every follower right after appending it, so almost every
//! replication read asks for the log's last few entries. Served from here, such a read maps no
//! segment, hops over no header and copies no body: an entry's body is `Bytes`, and a clone
//! shares it. Followers that fell behind the cache read the segments (`log::read_range`), and
//! those that fell behind the purge point get a snapshot.
//!
//! **Invariant:** every cached entry is exactly the durable record at its index. The store
//! keeps it by the same rule as its `LogView`: entries go in only after their append is
//! durable, and leave before a truncation or purge touches the disk.
//!
//! Bounded by entries and by body bytes (oldest evicted first), so a burst of big entries
//! cannot grow memory without limit.

use crate::raft::types::Entry;
use openraft::EntryPayload;
use std::collections::VecDeque;

/// Body bytes a partition's cache holds at most (the entries' bodies are shared with the
/// in-flight requests that proposed them, so this is mostly memory kept a little longer).
pub const TAIL_CACHE_BODY_BYTES_MAX: usize = 64 << 20;
/// Entries a partition's cache holds at most.
pub const TAIL_CACHE_ENTRIES_MAX: usize = 16 * 1024;

/// Bytes a membership entry is counted as (its config is small and not kept as bytes).
const MEMBERSHIP_ENTRY_BYTES: usize = 256;

#[derive(Debug)]
pub struct TailCache {
    /// Consecutive entries; `entries[i]` is at log index `first_index + i`.
    entries: VecDeque<Entry>,
    first_index: u64,
    body_bytes: usize,
    body_bytes_max: usize,
    entries_max: usize,
}

impl Default for TailCache {
    fn default() -> TailCache {
        TailCache::new(TAIL_CACHE_BODY_BYTES_MAX, TAIL_CACHE_ENTRIES_MAX)
    }
}

impl TailCache {
    pub fn new(body_bytes_max: usize, entries_max: usize) -> TailCache {
        assert!(entries_max > 0, "a cache of no entries caches nothing");
        TailCache {
            entries: VecDeque::new(),
            first_index: 0,
            body_bytes: 0,
            body_bytes_max,
            entries_max,
        }
    }

    /// Caches the durable `entry` at log index `index`. An entry that does not continue the
    /// cached run (the log restarted after a purge past its end) starts a new run.
    pub fn push(&mut self, index: u64, entry: Entry) {
        if self.entries.is_empty() || index != self.end_index() {
            self.entries.clear();
            self.body_bytes = 0;
            self.first_index = index;
        }
        self.body_bytes += bytes_of(&entry);
        self.entries.push_back(entry);
        while self.entries.len() > self.entries_max
            || (self.body_bytes > self.body_bytes_max && self.entries.len() > 1)
        {
            self.pop_front();
        }
        debug_assert_eq!(
            self.body_bytes,
            self.entries.iter().map(bytes_of).sum::<usize>()
        );
    }

    /// Forgets the entries at log index `index` and after (a truncation is coming).
    pub fn truncate_from(&mut self, index: u64) {
        while !self.entries.is_empty() && self.end_index() > index {
            let entry = self.entries.pop_back().expect("not empty");
            self.body_bytes -= bytes_of(&entry);
        }
    }

    /// Forgets the entries at log index `index` and before (a purge is coming).
    pub fn purge_through(&mut self, index: u64) {
        while !self.entries.is_empty() && self.first_index <= index {
            self.pop_front();
        }
    }

    /// The cached end of the range `from..until`: `(start, entries at start..until)` when the
    /// cache holds `until - 1` (the records `from..start` are older: read them from the
    /// segments), `None` when it holds none of the range's end.
    pub fn suffix(&self, from: u64, until: u64) -> Option<(u64, Vec<Entry>)> {
        if from >= until || until > self.end_index() || until <= self.first_index {
            return None;
        }
        let start = from.max(self.first_index);
        let skip = (start - self.first_index) as usize;
        let take = (until - start) as usize;
        Some((
            start,
            self.entries.iter().skip(skip).take(take).cloned().collect(),
        ))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The log index just past the last cached entry.
    fn end_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64
    }

    fn pop_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.body_bytes -= bytes_of(&entry);
            self.first_index += 1;
        }
    }
}

fn bytes_of(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Blank => 0,
        EntryPayload::Normal(data) => data.body().len(),
        EntryPayload::Membership(_) => MEMBERSHIP_ENTRY_BYTES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryData;
    use bytes::Bytes;
    use openraft::{CommittedLeaderId, LogId};

    /// The entry at log index `index` (raft index `index - 1`) with a body of `len` bytes.
    fn entry(index: u64, len: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index - 1),
            payload: EntryPayload::Normal(EntryData::new(2, index, Bytes::from(vec![7; len]))),
        }
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index + 1).collect()
    }

    /// What `get` answered before suffixes: the whole range, or nothing.
    impl TailCache {
        fn get(&self, from: u64, until: u64) -> Option<Vec<Entry>> {
            self.suffix(from, until)
                .and_then(|(start, entries)| (start == from).then_some(entries))
        }
    }

    #[test]
    fn serves_the_cached_end_of_a_range() {
        let mut cache = TailCache::new(1 << 20, 100);
        for i in 5..=9 {
            cache.push(i, entry(i, 10));
        }
        assert_eq!(indexes(&cache.get(5, 10).unwrap()), vec![5, 6, 7, 8, 9]);
        assert_eq!(indexes(&cache.get(7, 9).unwrap()), vec![7, 8]);
        let (start, tail) = cache.suffix(2, 8).unwrap();
        assert_eq!(
            (start, indexes(&tail)),
            (5, vec![5, 6, 7]),
            "2..5 from disk"
        );
        assert_eq!(cache.suffix(1, 5), None, "ends before the cache");
        assert_eq!(cache.suffix(8, 11), None, "ends past the cache");
        assert_eq!(cache.suffix(6, 6), None, "empty range");
    }

    #[test]
    fn evicts_the_oldest_by_count_and_by_bytes() {
        let mut cache = TailCache::new(1 << 20, 3);
        for i in 1..=5 {
            cache.push(i, entry(i, 1));
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(indexes(&cache.get(3, 6).unwrap()), vec![3, 4, 5]);

        let mut cache = TailCache::new(100, 1000);
        for i in 1..=10 {
            cache.push(i, entry(i, 30));
        }
        assert_eq!(indexes(&cache.get(8, 11).unwrap()), vec![8, 9, 10]);
        assert_eq!(cache.get(7, 11), None);
        // One entry bigger than the whole budget still stays (the newest is always kept).
        cache.push(11, entry(11, 1000));
        assert_eq!(indexes(&cache.get(11, 12).unwrap()), vec![11]);
    }

    #[test]
    fn truncation_and_purge_forget_exactly_their_side() {
        let mut cache = TailCache::new(1 << 20, 100);
        for i in 1..=10 {
            cache.push(i, entry(i, 4));
        }
        cache.truncate_from(8);
        assert_eq!(cache.get(7, 9), None, "8 is gone");
        assert_eq!(
            indexes(&cache.get(1, 8).unwrap()),
            (1..=7).collect::<Vec<_>>()
        );
        cache.purge_through(3);
        assert_eq!(cache.get(3, 5), None, "3 is gone");
        assert_eq!(indexes(&cache.get(4, 8).unwrap()), vec![4, 5, 6, 7]);
        // Appending after the truncation continues the run.
        cache.push(8, entry(8, 4));
        assert_eq!(indexes(&cache.get(4, 9).unwrap()), vec![4, 5, 6, 7, 8]);
        // A jump (the log restarted after a purge past its end) starts over.
        cache.push(20, entry(20, 4));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(8, 9), None);
        cache.truncate_from(1);
        assert!(cache.is_empty());
    }
}
