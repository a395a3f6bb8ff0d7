//! Raft replication of each partition (openraft 0.9), built in the steps of
//! docs/RAFT_PLAN.md. Landed so far:
//!
//! - `runtime`: `GlommioRuntime`, openraft's `AsyncRuntime` on glommio, so that a partition's
//!   Raft (its core loop, replication tasks, timers) runs on the executor of the core that owns
//!   the partition, like everything else of that partition.
//! - `types`: the type configuration `WalletRaft` (entry payload `EntryData`, `NodeAddr`,
//!   `GroupResult`, `SnapshotHandle`).
//! - `log_store`: `RaftLogStore`, openraft's `RaftLogStorage` over the segment log
//!   (`crate::log`), with `log_reader` (reads for replication), `tail_cache` (the newest
//!   durable entries in memory, so replication to followers that keep up reads no disk),
//!   `entry_record` (one entry = one record; raft index = log index - 1) and `membership`
//!   (membership record bodies).
//!
//! - `state_machine`: `RaftPartition`, openraft's `RaftStateMachine` over `PartitionState`,
//!   with `snapshot_files` (a snapshot = the engine's snapshot file + `snapshot_meta`, openraft's
//!   meta for it, in a file beside it), and `read_side` (the read model it feeds on every
//!   replica, shared with the partition's task).
//!
//! - `no_peers`: `NoPeers`, the network of a one-voter cluster.
//!
//! In Raft mode (`runtime::Replication::Raft`, plan step 4) every partition is a one-voter
//! cluster over these, driven by `runtime/raft_task.rs`. The node-to-node transport is
//! `net::raft_link` (step 5); wiring it into walletd for clusters of several nodes is next.

// openraft's storage traits return its `StorageError` (~200 bytes) by value; the helpers
// behind them return the same type, since boxing it there would only be undone at the trait.
#![allow(clippy::result_large_err)]

pub mod entry_record;
pub mod log_reader;
pub mod log_store;
pub mod membership;
pub mod no_peers;
pub mod read_side;
pub mod runtime;
pub mod snapshot_files;
pub mod snapshot_meta;
pub mod state_machine;
pub mod tail_cache;
pub mod types;

pub use log_store::RaftLogStore;
pub use no_peers::NoPeers;
pub use state_machine::RaftPartition;
pub use types::{EntryData, GroupResult, NodeAddr, SnapshotHandle, WalletRaft};
