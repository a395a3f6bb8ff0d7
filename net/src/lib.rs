//! # walletd-net
//!
//! The binary protocol (docs/PROTOCOL.md): `frame` (header, checksums, limits), `operation`
//! (operation and error codes), `codec` (bodies), `partition_map` (which node leads each
//! partition), the glommio `server`, the `client` library, `tls` (TLS settings for both
//! sides), and `raft_link` (the node-to-node transport of Raft messages, on a listener of its
//! own).

pub mod client;
pub mod cluster_admin;
pub mod codec;
pub mod frame;
pub mod operation;
pub mod partition_map;
pub mod raft_link;
pub mod raft_status;
pub mod server;
pub mod tls;
pub mod totals;

pub use client::{AnyClient, Client, ClientConfig, ClientError, ClusterClient};
pub use operation::{Operation, ProtocolError};
pub use server::{ClusterNode, ClusterSetup, Server, ServerConfig};
pub use tls::ClientTls;
