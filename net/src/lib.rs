//! # walletd-net
//!
//! The binary protocol (docs/PROTOCOL.md): `frame` (header, checksums, limits), `operation`
//! (operation and error codes), `codec` (bodies), the glommio `server`, the `client`
//! library, and `tls` (TLS settings for both sides).

pub mod client;
pub mod codec;
pub mod frame;
pub mod operation;
pub mod server;
pub mod tls;

pub use client::{Client, ClientConfig, ClientError};
pub use operation::{Operation, ProtocolError};
pub use server::{Server, ServerConfig};
pub use tls::ClientTls;
