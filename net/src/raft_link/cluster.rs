//! The node link as the engine's `ClusterHook`: what `walletd` passes to `Node::start_with`
//! when it has peers.
//!
//! One `RaftLink` per shard executor, listening on `peer_listen`'s port plus the executor's
//! slot (`mod.rs`: a link serves the Rafts of its own executor). Partition `p` lives on slot
//! `p % cores` on every node, so a cluster's nodes must run the same number of cores: the
//! membership of partition `p` names each node's `raft_addr` for that slot
//! (`raft_addr_for`). A node with another core count answers `NoSuchPartition`, which
//! openraft sees as an unreachable peer.

use super::limits::{TCC_FORWARDS_IN_FLIGHT_MAX, TCC_MESSAGES_PER_FORWARD_MAX};
use super::message::{kind, LinkRequest};
use super::{LinkConfig, LinkFilter, LinkNetworkFactory, RaftLink, RaftRegistry};
use engine::partition::PartitionId;
use engine::raft::{NodeAddr, WalletRaft};
use engine::runtime::{ClusterHook, CoreCluster, Request};
use engine::tcc::TccMessage;
use openraft::Raft;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// How long a forward of TC/C messages may take before it is given up (the source sends
/// them again).
const TCC_FORWARD_TIMEOUT_MS: u64 = 2_000;

/// Makes one `CoreLink` per shard executor.
pub struct LinkCluster {
    /// The settings of every core's link; `listen` is the base address (core slot 0).
    pub config: LinkConfig,
}

impl LinkCluster {
    pub fn new(config: LinkConfig) -> LinkCluster {
        LinkCluster { config }
    }

    /// The fault-injection switch shared by every core's link.
    pub fn filter(&self) -> LinkFilter {
        self.config.filter.clone()
    }
}

/// The node-link address of slot `slot` of a node whose base peer address is `base`
/// (`host:port`): the same host, port + slot.
pub fn raft_addr_for(base: &SocketAddr, slot: usize) -> Result<SocketAddr, String> {
    let port = usize::from(base.port()) + slot;
    let port = u16::try_from(port)
        .map_err(|_| format!("peer port {} + core slot {slot} is past 65535", base.port()))?;
    Ok(SocketAddr::new(base.ip(), port))
}

impl ClusterHook for LinkCluster {
    type Core = CoreLink;

    fn start_core(&self, slot: usize) -> Result<CoreLink, String> {
        let mut config = self.config.clone();
        config.listen = raft_addr_for(&self.config.listen, slot)?;
        let link = RaftLink::start(config, RaftRegistry::new()).map_err(|e| e.to_string())?;
        let tls = self.config.tls.is_some();
        tracing::info!(slot, addr = %link.local_addr(), tls, "node link listening");
        Ok(CoreLink {
            link,
            forwards_in_flight: Rc::new(Cell::new(0)),
        })
    }
}

/// One executor's link, as the engine's partitions use it.
pub struct CoreLink {
    link: RaftLink,
    forwards_in_flight: Rc<Cell<usize>>,
}

impl CoreCluster for CoreLink {
    type Network = LinkNetworkFactory;

    fn network(&self, partition: PartitionId) -> LinkNetworkFactory {
        self.link.network(partition)
    }

    fn register(
        &self,
        partition: PartitionId,
        raft: Raft<WalletRaft>,
        queue: flume::Sender<Request>,
    ) {
        self.link.registry().register(partition, raft);
        self.link.registry().register_queue(partition, queue);
    }

    fn forward_tcc(
        &self,
        partition: PartitionId,
        leader: u64,
        addr: &NodeAddr,
        mut messages: Vec<TccMessage>,
    ) {
        if self.forwards_in_flight.get() >= TCC_FORWARDS_IN_FLIGHT_MAX {
            tracing::debug!(
                partition,
                leader,
                "too many TC/C forwards in flight; dropped"
            );
            return;
        }
        messages.truncate(TCC_MESSAGES_PER_FORWARD_MAX);
        let mut body = Vec::new();
        LinkRequest::TccForward(messages).encode(&mut body);
        let peer = self.link.shared.peer(leader, &addr.raft_addr);
        let in_flight = self.forwards_in_flight.clone();
        in_flight.set(in_flight.get() + 1);
        glommio::spawn_local(async move {
            let timeout = Duration::from_millis(TCC_FORWARD_TIMEOUT_MS);
            if let Err(e) = peer.call(partition, kind::TCC_FORWARD, body, timeout).await {
                tracing::debug!(partition, leader, error = ?e, "a TC/C forward failed");
            }
            in_flight.set(in_flight.get() - 1);
        })
        .detach();
    }

    fn shutdown(&self) {
        self.link.shutdown();
    }
}
