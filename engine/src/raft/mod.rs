//! Raft replication of each partition (openraft 0.9), built in the steps of
//! docs/RAFT_PLAN.md. Landed so far:
//!
//! - `runtime`: `GlommioRuntime`, openraft's `AsyncRuntime` on glommio, so that a partition's
//!   Raft (its core loop, replication tasks, timers) runs on the executor of the core that owns
//!   the partition, like everything else of that partition.
//!
//! In the segment log (`crate::log::LogWriter`): `append_at` (explicit index) and
//! `truncate_from` (conflict truncation).
//!
//! Next (plan §10): the rest of the segment log as Raft log storage (logical purge with a
//! persisted `raft_meta`, an offset index and tail cache for replication reads), the engine's state
//! machine and snapshots behind `RaftStateMachine`, the node-to-node transport, then the
//! partition task driving `client_write` with one Raft entry per group commit. Until then
//! walletd is a single node and nothing here is on its request path.

pub mod runtime;
