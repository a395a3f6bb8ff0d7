//! Settings of the shard runtime, with the limits that bound every queue and buffer.

use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Root of the node's data: one `partition-NNNNN` directory per partition.
    pub data_dir: PathBuf,
    /// CPU ids to pin one executor each to. Partition `p` is owned by `cores[p % cores.len()]`.
    pub cores: Vec<usize>,
    /// Partition count, fixed when the data dir is created.
    pub partitions: u32,
    /// Size of each log segment file.
    pub segment_bytes: u64,
    /// Requests waiting per partition before senders get backpressure.
    pub queue_depth_max: usize,
    /// Most command items applied in one group commit (one fsync).
    pub group_items_max: usize,
    /// Log entries between snapshots (0 = only at shutdown).
    pub snapshot_interval_entries: u64,
    /// Locked memory glommio registers per executor for I/O buffers (counted against
    /// `ulimit -l`).
    pub io_memory_bytes: usize,
    /// Transfers to pre-size each partition's idempotency index for (avoids rehash pauses).
    pub transfers_capacity_per_partition: usize,
    /// Operator escape hatch (`walletd --repair`): before recovery, cut each partition's log
    /// at its first damaged record, losing everything after it. Never on by default.
    pub repair: bool,
    /// A cross-partition Try that gets no answer for this long is cancelled (refunded).
    pub tcc_try_timeout_ms: u64,
}

impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            data_dir: data_dir.into(),
            cores: vec![0],
            partitions: 1,
            segment_bytes: 256 << 20,
            queue_depth_max: 256,
            group_items_max: 64 * 1024,
            snapshot_interval_entries: 4096,
            io_memory_bytes: 2 << 20,
            transfers_capacity_per_partition: 0,
            repair: false,
            tcc_try_timeout_ms: 5_000,
        }
    }

    /// The core that owns `partition`.
    pub fn core_of(&self, partition: u32) -> usize {
        self.cores[partition as usize % self.cores.len()]
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.cores.is_empty() {
            return Err("at least one core is needed".into());
        }
        if self.partitions == 0 || self.partitions > 4096 {
            return Err(format!(
                "partitions must be 1..=4096, not {}",
                self.partitions
            ));
        }
        if self.segment_bytes < (4 << 20) || !self.segment_bytes.is_multiple_of(4096) {
            return Err("segment_bytes must be a multiple of 4096 and at least 4 MiB".into());
        }
        if self.queue_depth_max == 0 || self.group_items_max == 0 {
            return Err("queue_depth_max and group_items_max must be positive".into());
        }
        Ok(())
    }
}
