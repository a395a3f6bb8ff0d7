//! How long a partition's group commits take, as fixed-bucket histograms, both measured from
//! the group's start: until its entries are encoded, appended and applied (CPU on the shard),
//! and until its durable write completed (the disk; the apply runs while it is in flight). They are what an operator needs to tell a slow disk from a busy core, and what
//! explains a batch's latency. Fixed buckets: recording is a few comparisons, no allocation,
//! and histograms of different partitions and scrapes add up.

/// Upper bounds of the buckets, in microseconds (Prometheus `le`); one more bucket counts
/// everything above the last.
pub const BUCKET_BOUNDS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// Counts of durations per bucket (not cumulative) and their sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    pub counts: [u64; BUCKET_BOUNDS_US.len() + 1],
    pub sum_us: u64,
}

impl Histogram {
    pub fn record(&mut self, duration: std::time::Duration) {
        let us = duration.as_micros().min(u64::MAX as u128) as u64;
        let bucket = BUCKET_BOUNDS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(BUCKET_BOUNDS_US.len());
        self.counts[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The phases of a group commit, and the wait before it.
///
/// In Raft mode the same fields time an entry's path through openraft: `queue` as above;
/// `append` each log append, from its start until durable (on a leader and on a follower
/// alike: a follower's appends are its share of a commit); `apply` each apply of committed
/// entries (the state machine, on every node); `fsync` an entry this node proposed, from the
/// proposal until committed *and* applied. What `fsync` holds beyond `append` + `apply` is
/// replication: the round trip to a majority and the followers' appends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupTiming {
    /// From a command batch's arrival in the partition's queue until its group started (one
    /// sample per client batch): time spent behind the group before it.
    pub queue: Histogram,
    /// From the group's start until every batch is encoded, appended and applied.
    pub apply: Histogram,
    /// From the group's start until its durable (O_DSYNC) write completed.
    pub fsync: Histogram,
    /// Raft mode only: a log append, from its start until durable.
    pub append: Histogram,
}

/// One partition's timings, shared by the parts that record them (in Raft mode the task, the
/// log store and the state machine, all on the partition's core).
pub type SharedTiming = std::rc::Rc<std::cell::Cell<GroupTiming>>;

/// Adds one sample to the histogram `pick` chooses in `timing`.
pub fn record(
    timing: &SharedTiming,
    pick: fn(&mut GroupTiming) -> &mut Histogram,
    duration: std::time::Duration,
) {
    let mut all = timing.get();
    pick(&mut all).record(duration);
    timing.set(all);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        let mut h = Histogram::default();
        h.record(Duration::from_micros(50)); // bucket 0 (<= 50)
        h.record(Duration::from_micros(51)); // bucket 1 (<= 100)
        h.record(Duration::from_millis(7)); // <= 10,000
        h.record(Duration::from_secs(3)); // above every bound
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[7], 1);
        assert_eq!(h.counts[BUCKET_BOUNDS_US.len()], 1);
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum_us, 50 + 51 + 7_000 + 3_000_000);
    }
}
