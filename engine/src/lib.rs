//! # walletd engine
//!
//! The deterministic core of walletd. A node's accounts are split into partitions by a fixed
//! hash of the account id; each partition is a log of command batches plus the state machine
//! that those batches drive. Start reading at `runtime` (how requests flow), then
//! `state_machine` (what a command does) and `log` (how it is made durable).
//!
//! - `model`, `command`, `event`, `result_code`: the vocabulary.
//! - `state_machine`: `apply_entry` turns a logged batch into results and events.
//! - `log`: checksummed segment files, group commit through io_uring, torn-tail recovery.
//! - `snapshot`: whole-partition snapshots that bound replay.
//! - `read_model`: CQRS query views (history, balance as of, totals) fed with the events.
//! - `recovery`: snapshot + log tail -> state, at start.
//! - `runtime`: one pinned glommio executor per core, partitions owned by cores.

pub mod account_table;
pub mod audit;
pub mod background;
pub mod command;
pub mod digest;
pub mod event;
pub mod id_hash;
pub mod log;
pub mod mapped_transfers;
pub mod model;
pub mod partition;
pub mod prefault;
pub mod raft;
pub mod read_model;
pub mod recovery;
pub mod result_code;
pub mod runtime;
pub mod snapshot;
pub mod state_machine;
pub mod tcc;
pub mod transfer_index;
pub mod transfer_store;

pub use command::{CommandBatch, NewAccount, NewTransfer, BATCH_ITEMS_MAX};
pub use model::{Account, AccountId, Currency, Transfer, TransferId};
pub use result_code::ResultCode;
