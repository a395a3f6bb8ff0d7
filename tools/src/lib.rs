//! The programs people run. Their logic lives here, as library modules, so the binaries in
//! `src/bin` and the cross-process tests (`tests/`) run exactly the same code.

pub mod metrics;
pub mod wallet;
pub mod wallet_audit;
pub mod wallet_audit_diff;
pub mod wallet_cluster;
pub mod wallet_read;
pub mod walletd;
