//! Settings of the shard runtime, with the limits that bound every queue and buffer.

use crate::log::FaultPlan;
use std::path::PathBuf;
use std::sync::Arc;

/// `EngineConfig::follower_apply_delay_us` by default: none. Nodes on machines of their own
/// gain nothing from a follower waiting; nodes sharing CPUs set it (`wallet-bench --spawn
/// --nodes N` gives its loopback nodes 3,000 µs: longer than a leader's apply of a full entry
/// and its answer, ~1.1-1.3 ms for 4,000 transfers on the reference VM).
pub const FOLLOWER_APPLY_DELAY_US_DEFAULT: u64 = 0;

/// The most `follower_apply_delay_us` may be.
pub const FOLLOWER_APPLY_DELAY_US_MAX: u64 = 100_000;

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
    /// Keep the newest snapshot of each of this many UTC days (by log time) besides the newest
    /// two, and take one when log time crosses midnight; 0 = neither.
    pub snapshot_daily_days: u32,
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
    /// Where partition tasks read the wall clock to propose log timestamps. The system clock
    /// unless a test injects one; timestamps stay strictly increasing whatever it answers.
    pub clock: Clock,
    /// History entries the read model keeps per account (`read_model`: history, balance as
    /// of a timestamp or position); 0 turns the read model off. Memory: 64 bytes per
    /// entry per account that moved money.
    pub read_model_history_per_account: usize,
    /// With a read model: at start, replay at least this many log entries into it (recovery
    /// starts from an older snapshot), so the history survives a clean restart. 0: start from
    /// the newest snapshot (fastest start, history begins there).
    pub read_model_rebuild_entries: u64,
    /// How a partition's log is written and committed: `Local` (default: the partition task's
    /// own group commit) or `Raft` (a one-voter openraft cluster per partition, RAFT_PLAN
    /// step 4). Fixed when the data dir is created (`Node::start` refuses to switch).
    pub replication: Replication,
    /// This node's id in every partition's Raft group (Raft mode).
    pub node_id: u64,
    /// Raft mode with peers (a cluster of several nodes): a fresh partition waits for
    /// `cluster init` (`Node::cluster_init`) instead of making itself a one-voter cluster, and
    /// elections use `election_timeout_ms`.
    pub multi_node: bool,
    /// With `multi_node`: a follower that hears no leader for a random time between this and
    /// twice this starts an election; leaders send heartbeats 5 times as often. Long enough
    /// that a loaded machine's scheduling delays do not depose a healthy leader.
    pub election_timeout_ms: u64,
    /// Raft mode: how long a follower waits before applying newly committed command entries
    /// (`raft::state_machine`, `pause_before_apply`). No client waits for a follower's apply,
    /// but the leader's apply does hold a client's answer, and when nodes share CPUs (a
    /// loopback cluster, containers on one host) the followers' applies would otherwise start
    /// the very moment the leader's does. 0 (the default): apply at once.
    pub follower_apply_delay_us: u64,
    /// **Test-only** fault injection into every partition's log writer (failed fsyncs, a full
    /// disk, slow writes). `None` in production, and then it costs nothing measurable.
    pub faults: Option<Arc<FaultPlan>>,
}

/// How partitions make their log durable (see `EngineConfig::replication`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Replication {
    /// The partition task appends and fsyncs its own log (group commit).
    #[default]
    Local,
    /// Every partition is a Raft group (openraft) of which this node is the only voter: one
    /// Raft entry per merged run of command batches, acknowledged once committed and applied.
    Raft,
}

impl Replication {
    /// The name used in configs, flags and the data dir's `replication` file.
    pub fn name(self) -> &'static str {
        match self {
            Replication::Local => "local",
            Replication::Raft => "raft",
        }
    }

    pub fn from_name(name: &str) -> Option<Replication> {
        match name {
            "local" => Some(Replication::Local),
            "raft" => Some(Replication::Raft),
            _ => None,
        }
    }
}

impl std::str::FromStr for Replication {
    type Err = String;
    fn from_str(s: &str) -> Result<Replication, String> {
        Replication::from_name(s)
            .ok_or_else(|| format!("replication must be \"local\" or \"raft\", not {s:?}"))
    }
}

/// A source of wall-clock time in nanoseconds since the Unix epoch.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system's real-time clock (`CLOCK_REALTIME`, which can jump both ways).
    pub fn system() -> Clock {
        Clock(Arc::new(system_now_ns))
    }

    /// A clock answering `now_ns()`; for tests that make time jump.
    pub fn from_fn(now_ns: impl Fn() -> u64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now_ns))
    }

    pub fn now_ns(&self) -> u64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

fn system_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
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
            snapshot_daily_days: 7,
            io_memory_bytes: 2 << 20,
            transfers_capacity_per_partition: 0,
            repair: false,
            tcc_try_timeout_ms: 5_000,
            clock: Clock::system(),
            read_model_history_per_account: 0,
            read_model_rebuild_entries: 1024,
            replication: Replication::Local,
            node_id: 1,
            multi_node: false,
            election_timeout_ms: 1_000,
            follower_apply_delay_us: FOLLOWER_APPLY_DELAY_US_DEFAULT,
            faults: None,
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
        if self.read_model_history_per_account > crate::read_model::HISTORY_PER_ACCOUNT_MAX {
            return Err(format!(
                "read_model_history_per_account must be at most {}",
                crate::read_model::HISTORY_PER_ACCOUNT_MAX
            ));
        }
        if self.replication == Replication::Raft {
            self.validate_raft()?;
        }
        Ok(())
    }

    /// What Raft mode does not do yet (RAFT_PLAN §10, step 4) is refused here rather than
    /// silently done differently.
    fn validate_raft(&self) -> Result<(), String> {
        let refuse = |what: &str| {
            Err(format!(
                "replication = \"raft\" does not support {what} yet (docs/RAFT_PLAN.md §10)"
            ))
        };
        if self.repair {
            return refuse("--repair");
        }
        if self.node_id == 0 {
            return Err("node_id must be at least 1".into());
        }
        if self.multi_node && self.election_timeout_ms < 50 {
            return Err("election_timeout_ms must be at least 50".into());
        }
        if self.follower_apply_delay_us > FOLLOWER_APPLY_DELAY_US_MAX {
            return Err(format!(
                "follower_apply_delay_us must be at most {FOLLOWER_APPLY_DELAY_US_MAX} (a follower's state should not lag its log by more)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_apply_delay_past_its_limit_is_refused_by_name() {
        let mut config = EngineConfig {
            replication: Replication::Raft,
            multi_node: true,
            ..EngineConfig::new("unused")
        };
        assert_eq!(config.validate(), Ok(()));
        config.follower_apply_delay_us = FOLLOWER_APPLY_DELAY_US_MAX;
        assert_eq!(config.validate(), Ok(()));
        config.follower_apply_delay_us = FOLLOWER_APPLY_DELAY_US_MAX + 1;
        let refused = config.validate().expect_err("past the limit");
        assert!(refused.contains("follower_apply_delay_us"), "{refused}");
    }
}
