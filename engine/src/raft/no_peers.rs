//! The network of a one-voter cluster (RAFT_PLAN step 4): there is nobody to talk to, so every
//! RPC is `Unreachable`. openraft never calls it while this node is the only member; it is
//! here because `Raft::new` needs a network factory. The node-to-node transport
//! (`net::raft_link`, step 5) replaces it.

use crate::raft::types::{NodeAddr, WalletRaft};
use openraft::error::{Fatal, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use openraft::Vote;

/// A network factory (and network) with no peers.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPeers;

fn unreachable() -> Unreachable {
    Unreachable::new(&std::io::Error::other(
        "a one-voter cluster has no peers to talk to",
    ))
}

impl RaftNetworkFactory<WalletRaft> for NoPeers {
    type Network = NoPeers;
    async fn new_client(&mut self, _target: u64, _node: &NodeAddr) -> NoPeers {
        NoPeers
    }
}

impl RaftNetwork<WalletRaft> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<WalletRaft>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeAddr, RaftError<u64>>> {
        Err(RPCError::Unreachable(unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeAddr, RaftError<u64>>> {
        Err(RPCError::Unreachable(unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote<u64>,
        _snapshot: Snapshot<WalletRaft>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<WalletRaft, Fatal<u64>>> {
        Err(StreamingError::Unreachable(unreachable()))
    }
}
