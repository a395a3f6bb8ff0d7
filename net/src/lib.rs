//! # walletd-net
//!
//! The binary protocol (docs/PROTOCOL.md): `frame` (header, checksums, limits), `operation`
//! (operation and error codes), `codec` (bodies), `partition_map` (who leads what), the glommio `server`, the `client`
//! library, and `tls` (TLS settings for both sides).

pub mod client;
pub mod codec;
pub mod frame;
pub mod operation;
pub mod partition_map;
pub mod server;
pub mod tls;

pub use client::{Client, ClientConfig, ClientError, ClusterClient};
pub use operation::{Operation, ProtocolError};
pub use server::{Server, ServerConfig};
pub use tls::ClientTls;
