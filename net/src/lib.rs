//! # walletd-net
//!
//! The binary protocol (docs/PROTOCOL.md): `frame` (header, checksums, limits), `operation`
//! (operation and error codes), `codec` (bodies), the glommio `server`, and the `client`
//! library.

pub mod client;
pub mod codec;
pub mod frame;
pub mod operation;
pub mod server;

pub use client::{Client, ClientConfig, ClientError};
pub use operation::{Operation, ProtocolError};
pub use server::{Server, ServerConfig};
