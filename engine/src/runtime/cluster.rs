//! How the partitions of a node reach the other nodes of their Raft groups.
//!
//! `engine` knows Raft but not the network: the node-to-node link lives in `net`, which
//! depends on `engine`. So `Node::start_with` takes a `ClusterHook`, a factory that the shard
//! runtime calls once on each shard executor (`start_core`), before that core's partitions
//! open. What it returns (`CoreCluster`) stays on that executor, like the Rafts it serves:
//!
//! ```text
//!  Node::start_with(config, hook) ── per core ──▶ hook.start_core(slot) -> CoreCluster
//!      RaftTask::open(p): Raft::new(.., core.network(p), ..); core.register(p, raft, queue)
//!      RaftTask (follower): TC/C messages for p ──▶ core.forward_tcc(p, leader, ..)
//! ```
//!
//! A single node uses `SingleNode` (no peers, `NoPeers` as the network): the same code path,
//! a cluster of one.

use super::request::Request;
use crate::partition::PartitionId;
use crate::raft::{NoPeers, NodeAddr, WalletRaft};
use crate::tcc::TccMessage;
use openraft::network::RaftNetworkFactory;
use openraft::Raft;

/// Made once per node, called on every shard executor.
pub trait ClusterHook: Send + Sync + 'static {
    type Core: CoreCluster;
    /// Starts this executor's part of the cluster (its end of the node link). `slot` is the
    /// executor's index in `EngineConfig::cores`.
    fn start_core(&self, slot: usize) -> Result<Self::Core, String>;
}

/// One executor's end of the cluster (`!Send` is fine: it never leaves the executor).
pub trait CoreCluster: 'static {
    type Network: RaftNetworkFactory<WalletRaft>;
    /// The network factory for the Raft of `partition` (owned by this executor).
    fn network(&self, partition: PartitionId) -> Self::Network;
    /// Messages from peers for `partition` now go to `raft`; TC/C messages forwarded by
    /// peers go to `queue`.
    fn register(
        &self,
        partition: PartitionId,
        raft: Raft<WalletRaft>,
        queue: flume::Sender<Request>,
    );
    /// Hands TC/C messages that reached this node's copy of `partition` (a follower) to the
    /// partition's leader `leader` at `addr`. Best effort, never blocks: a message lost here
    /// is sent again by its source's periodic re-drive (messages are idempotent).
    fn forward_tcc(
        &self,
        partition: PartitionId,
        leader: u64,
        addr: &NodeAddr,
        messages: Vec<TccMessage>,
    );
    /// Stops the link (called when the executor's partitions have stopped).
    fn shutdown(&self);
}

/// The cluster of one: no peers.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleNode;

impl ClusterHook for SingleNode {
    type Core = SingleNode;
    fn start_core(&self, _slot: usize) -> Result<SingleNode, String> {
        Ok(SingleNode)
    }
}

impl CoreCluster for SingleNode {
    type Network = NoPeers;
    fn network(&self, _partition: PartitionId) -> NoPeers {
        NoPeers
    }
    fn register(&self, _: PartitionId, _: Raft<WalletRaft>, _: flume::Sender<Request>) {}
    fn forward_tcc(&self, _: PartitionId, _: u64, _: &NodeAddr, _: Vec<TccMessage>) {
        unreachable!("a cluster of one has no other leader to forward to")
    }
    fn shutdown(&self) {}
}
