//! The shard runtime: one pinned glommio executor per configured core, each owning a fixed set
//! of partitions. Nothing is shared between cores; callers reach a partition through its
//! bounded queue, and a full queue pushes back on the caller.
//!
//! ```text
//!   caller ──(partition_of(account))──▶ queue[p] ──▶ core c: PartitionTask p
//!                                                    apply → append → fsync → reply
//! ```

pub mod cluster;
mod config;
mod coordinator;
mod node;
mod partition_task;
mod raft_task;
mod request;
pub mod result_counts;
mod router;
pub mod timing;
pub(crate) mod watchers;

pub use cluster::{ClusterHook, CoreCluster, SingleNode};
pub use config::{Clock, EngineConfig, Replication};
pub use node::{Node, StartError, SubmitError};
pub use request::{
    BatchReply, MembershipChange, NotLeader, PartitionStats, PartitionTotals, RaftMember, RaftRole,
    RaftStatus, ReadFrom, Request,
};
