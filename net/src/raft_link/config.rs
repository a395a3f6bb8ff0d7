//! `LinkConfig`: one node's settings for the node link.

use std::net::SocketAddr;

#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// This node's Raft id (what peers call `target`).
    pub node_id: u64,
    /// Where the link listens: a port of its own, never the client port (`raft_listen`,
    /// RAFT_PLAN §5). Port 0 picks a free one (`RaftLink::local_addr` tells which).
    pub listen: SocketAddr,
    /// The shared secret of the cluster's nodes: a peer must present it at handshake
    /// (compared in constant time), and this node presents it to its peers.
    pub peer_token: Vec<u8>,
    /// 0 accepts any; otherwise a peer of another cluster is refused (`cluster_mismatch`).
    pub cluster_id: u64,
    /// Budget for TCP connect plus handshake to a peer.
    pub connect_timeout_ms: u64,
    /// An accepted connection must complete its handshake this soon.
    pub handshake_timeout_ms: u64,
    /// After a failed connect, the next attempt waits this long, doubling per failure up to
    /// `reconnect_backoff_max_ms`; a success resets it. Meanwhile RPCs to that peer fail at
    /// once as unreachable (and openraft backs off on its side, `RaftNetwork::backoff`).
    pub reconnect_backoff_min_ms: u64,
    /// Also the ceiling of openraft's backoff (`LinkNetwork::backoff`): a healed peer is
    /// retried within this long. 500 ms is openraft's own (constant) default.
    pub reconnect_backoff_max_ms: u64,
    /// A connection whose frame cannot be written for this long is closed (the peer stopped
    /// reading; its requests fail as unreachable).
    pub write_stall_timeout_ms: u64,
    /// How long the last step of a snapshot transfer may take (the receiver loads and checks
    /// the whole snapshot, then installs it). Chunks use openraft's `RPCOption` timeout.
    pub snapshot_install_timeout_ms: u64,
    /// Bytes per snapshot chunk (at most `limits::SNAPSHOT_CHUNK_BYTES_MAX`).
    pub snapshot_chunk_bytes: usize,
    pub filter: super::LinkFilter,
    /// TLS on every connection of the link, both ways (`crate::tls::PeerTls`: mutual,
    /// against the cluster's CA); the peer-token handshake then runs inside it. `None`
    /// (the default): plain TCP.
    pub tls: Option<crate::tls::PeerTls>,
    /// What the links made from this config (and its clones: every core's) sent; the
    /// metrics read it (`RaftLink::stats`; walletd keeps a clone for `walletd_link_*`).
    pub counters: std::sync::Arc<super::LinkCounters>,
}

impl LinkConfig {
    pub fn new(node_id: u64, listen: SocketAddr, peer_token: Vec<u8>) -> LinkConfig {
        LinkConfig {
            node_id,
            listen,
            peer_token,
            cluster_id: 0,
            connect_timeout_ms: 1_000,
            handshake_timeout_ms: 5_000,
            reconnect_backoff_min_ms: 50,
            reconnect_backoff_max_ms: 500,
            write_stall_timeout_ms: 10_000,
            snapshot_install_timeout_ms: 30_000,
            snapshot_chunk_bytes: super::limits::SNAPSHOT_CHUNK_BYTES,
            filter: super::LinkFilter::new(),
            tls: None,
            counters: Default::default(),
        }
    }
}
