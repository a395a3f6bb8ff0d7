//! Where records start inside segments, remembered from earlier reads, so that a read that
//! starts deep in a segment hops over at most `stride - 1` headers instead of every record
//! before it (`read_range`). A follower catching up, or openraft reading entries to apply,
//! asks for consecutive ranges of the same segment again and again; without hints each read
//! would walk the segment from its start.
//!
//! Hints are learned only from headers that passed their checksum at the index they claim,
//! and a record's offset never changes while the record lives. What can change is what lives
//! at an offset: a truncation cuts records and later appends put others (of other sizes) at
//! those indexes, and a purge or truncation deletes segments. The owner of the hints says so
//! first (`forget_from`, `retain_segments`). A hint that still turns out wrong (the header
//! there is not the record it names) is dropped and the read walks from the segment's start.

use super::segments::SegmentInfo;
use std::collections::HashMap;

/// Records between two remembered offsets: a read hops over at most this many minus one.
pub const HINT_STRIDE_RECORDS: u64 = 64;

#[derive(Debug)]
pub struct OffsetHints {
    stride: u64,
    /// By segment (its first index): the offsets of records `first + k * stride`, k = 0, 1,
    /// ... (a prefix: learned in order while hopping forward from the segment's start).
    segments: HashMap<u64, Vec<u64>>,
}

impl Default for OffsetHints {
    fn default() -> OffsetHints {
        OffsetHints::new(HINT_STRIDE_RECORDS)
    }
}

impl OffsetHints {
    pub fn new(stride: u64) -> OffsetHints {
        assert!(stride > 0, "a stride of at least one record");
        OffsetHints {
            stride,
            segments: HashMap::new(),
        }
    }

    /// The furthest known (index, offset) at or before `index` in the segment whose first
    /// record is `first`: (`first`, 0) when nothing closer is known.
    pub fn start_for(&self, first: u64, index: u64) -> (u64, usize) {
        assert!(
            index >= first,
            "index {index} lies before its segment's first {first}"
        );
        let Some(offsets) = self.segments.get(&first) else {
            return (first, 0);
        };
        let k = (((index - first) / self.stride) as usize).min(offsets.len().saturating_sub(1));
        match offsets.get(k) {
            Some(&offset) => (first + k as u64 * self.stride, offset as usize),
            None => (first, 0),
        }
    }

    /// Notes that record `index` starts at `offset` in the segment whose first record is
    /// `first`. Kept only if it is the next stride point after those known (hints are a
    /// prefix, so a lookup is one division).
    pub fn learn(&mut self, first: u64, index: u64, offset: usize) {
        if !(index - first).is_multiple_of(self.stride) {
            return;
        }
        let k = ((index - first) / self.stride) as usize;
        let offsets = self.segments.entry(first).or_default();
        if k == offsets.len() {
            offsets.push(offset as u64);
        }
    }

    /// Forgets every hint of records at `index` and after (a truncation is coming).
    pub fn forget_from(&mut self, index: u64) {
        let stride = self.stride;
        self.segments.retain(|&first, offsets| {
            if first >= index {
                return false;
            }
            let keep = (index - first).div_ceil(stride) as usize;
            offsets.truncate(keep);
            true
        });
    }

    /// Forgets the segments that are no longer among `segments` (deleted).
    pub fn retain_segments(&mut self, segments: &[SegmentInfo]) {
        self.segments
            .retain(|first, _| segments.iter().any(|s| s.first_index == *first));
    }

    /// Forgets what is known of the segment starting at `first` (a hint there was wrong).
    pub fn forget_segment(&mut self, first: u64) {
        self.segments.remove(&first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_is_the_furthest_known_stride_point_at_or_before_the_index() {
        let mut hints = OffsetHints::new(4);
        assert_eq!(hints.start_for(10, 25), (10, 0), "nothing known");
        for (index, offset) in [(10, 0), (14, 400), (18, 800)] {
            hints.learn(10, index, offset);
        }
        hints.learn(10, 19, 900); // not a stride point: ignored
        hints.learn(10, 26, 1600); // not the next stride point (22 is): ignored
        assert_eq!(hints.start_for(10, 10), (10, 0));
        assert_eq!(hints.start_for(10, 13), (10, 0));
        assert_eq!(hints.start_for(10, 14), (14, 400));
        assert_eq!(hints.start_for(10, 17), (14, 400));
        assert_eq!(hints.start_for(10, 50), (18, 800), "beyond what is known");
        assert_eq!(hints.start_for(99, 120), (99, 0), "another segment");
    }

    #[test]
    fn forgetting_keeps_only_what_lies_before_the_cut_and_live_segments() {
        let mut hints = OffsetHints::new(4);
        for (index, offset) in [(10, 0), (14, 400), (18, 800), (22, 1200)] {
            hints.learn(10, index, offset);
        }
        hints.learn(30, 30, 0);
        hints.learn(30, 34, 300);
        hints.forget_from(18); // 18 and after may be rewritten
        assert_eq!(hints.start_for(10, 25), (14, 400));
        assert_eq!(
            hints.start_for(30, 35),
            (30, 0),
            "the segment at 30 is past the cut"
        );
        hints.forget_from(15);
        assert_eq!(hints.start_for(10, 25), (14, 400), "14 lies before 15");
        hints.forget_from(14);
        assert_eq!(hints.start_for(10, 25), (10, 0));

        hints.learn(40, 40, 0);
        hints.learn(40, 44, 700);
        let live = SegmentInfo {
            path: "x".into(),
            first_index: 10,
        };
        hints.retain_segments(std::slice::from_ref(&live));
        assert_eq!(hints.start_for(40, 45), (40, 0));
        assert_eq!(hints.start_for(10, 12), (10, 0));
    }
}
