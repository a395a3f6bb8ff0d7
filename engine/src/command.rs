//! Commands: what clients ask for. A log entry holds one homogeneous batch of them.
//!
//! Batches are rkyv archives. The live path serializes a batch into the log and then applies
//! the *archived* bytes, exactly as replay does, so live apply and replay share one code path.

use crate::model::{AccountId, Currency, Transfer, TransferId};
use rkyv::{Archive, Deserialize, Serialize};

/// Create one account.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct NewAccount {
    pub id: AccountId,
    pub currency: Currency,
    pub flags: u32,
    /// 0 for a wallet; negative for an issuer (how far it may go below zero).
    pub floor: i64,
    pub user_data: u64,
}

/// Move `amount` minor units from `from` to `to`, once per `id`.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct NewTransfer {
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: u64,
    pub currency: Currency,
    pub user_data: u64,
}

impl ArchivedNewTransfer {
    /// The transfer this item becomes when it applies at `timestamp`.
    pub fn applied_at(&self, timestamp: u64) -> Transfer {
        Transfer {
            id: self.id.to_native(),
            from: self.from.to_native(),
            to: self.to.to_native(),
            amount: self.amount.to_native(),
            currency: self.currency.to_native(),
            user_data: self.user_data.to_native(),
            timestamp,
        }
    }
}

/// Most items in one batch (one log entry). Sized so a batch fits a 1 MiB frame.
pub const BATCH_ITEMS_MAX: usize = 8190;

/// The log record kinds that carry command batches (see `log::record` for the header).
pub mod entry_kind {
    /// Body: archived `Vec<NewAccount>`.
    pub const CREATE_ACCOUNTS: u16 = 1;
    /// Body: archived `Vec<NewTransfer>`.
    pub const CREATE_TRANSFERS: u16 = 2;
    /// Body: archived `Vec<tcc::TccMessage>` (from other partitions, or the local coordinator).
    pub const TCC_MESSAGES: u16 = 3;
    /// Raft: an entry without a payload (openraft's `EntryPayload::Blank`, which a new leader
    /// appends first). Body: empty. Changes no state; it only takes up its index.
    pub const BLANK: u16 = 4;
    /// Raft: a membership change (openraft's `EntryPayload::Membership`). Body: the
    /// hand-written encoding of `raft::membership`. Changes no ledger state.
    pub const MEMBERSHIP: u16 = 5;

    /// True for the kinds of Raft's own entries (`BLANK`, `MEMBERSHIP`): they carry no
    /// commands and no log time (timestamp 0).
    pub fn is_raft(kind: u16) -> bool {
        kind == BLANK || kind == MEMBERSHIP
    }
}

/// One homogeneous batch of commands, as submitted to a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandBatch {
    CreateAccounts(Vec<NewAccount>),
    CreateTransfers(Vec<NewTransfer>),
    Tcc(Vec<crate::tcc::TccMessage>),
}

impl CommandBatch {
    pub fn len(&self) -> usize {
        match self {
            CommandBatch::CreateAccounts(items) => items.len(),
            CommandBatch::CreateTransfers(items) => items.len(),
            CommandBatch::Tcc(items) => items.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The log record kind for this batch.
    pub fn kind(&self) -> u16 {
        match self {
            CommandBatch::CreateAccounts(_) => entry_kind::CREATE_ACCOUNTS,
            CommandBatch::CreateTransfers(_) => entry_kind::CREATE_TRANSFERS,
            CommandBatch::Tcc(_) => entry_kind::TCC_MESSAGES,
        }
    }

    /// Serializes the batch into `out` (cleared first), reusing its allocation.
    pub fn encode_into(&self, out: &mut rkyv::util::AlignedVec<16>) {
        let buffer = std::mem::take(out);
        let mut buffer = match self {
            CommandBatch::CreateAccounts(items) => {
                rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(items, reset(buffer))
            }
            CommandBatch::CreateTransfers(items) => {
                rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(items, reset(buffer))
            }
            CommandBatch::Tcc(items) => {
                rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(items, reset(buffer))
            }
        }
        .expect("serializing plain structs into memory cannot fail");
        std::mem::swap(out, &mut buffer);
    }
}

fn reset(mut buffer: rkyv::util::AlignedVec<16>) -> rkyv::util::AlignedVec<16> {
    buffer.clear();
    buffer
}
