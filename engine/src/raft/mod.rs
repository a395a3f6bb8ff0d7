//! Raft replication of each partition (openraft 0.9), built in the steps of
//! docs/RAFT_PLAN.md. Landed so far:
//!
//! - `runtime`: `GlommioRuntime`, openraft's `AsyncRuntime` on glommio, so that a partition's
//!   Raft (its core loop, replication tasks, timers) runs on the executor of the core that owns
//!   the partition, like everything else of that partition.
//!
//! Next (plan §10): the segment log as Raft log storage (explicit index/term appends,
//! truncation after a conflict, logical purge with a persisted `raft_meta`), the engine's state
//! machine and snapshots behind `RaftStateMachine`, the node-to-node transport, then the
//! partition task driving `client_write` with one Raft entry per group commit. Until then
//! walletd is a single node and nothing here is on its request path.

pub mod runtime;
