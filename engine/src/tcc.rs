//! TC/C (Try-Confirm/Cancel) for transfers whose accounts live in two partitions.
//!
//! For A (partition P) -> B (partition Q), every step is a command in one partition's log:
//!
//! ```text
//!  P: client transfer  check A, debit A into a hold, phase record Trying       ──TRY──────▶ Q
//!  Q: TRY              check B (exists, currency, not frozen, room), reserve    ──TRY_RESULT▶ P
//!  P: TRY_RESULT ok    decide Confirm                                           ──CONFIRM──▶ Q
//!     TRY_RESULT fail  decide Cancel: refund A, final = Q's code                ──CANCEL───▶ Q
//!  Q: CONFIRM          credit B                                                 ──CONFIRM_ACK▶ P
//!  P: CONFIRM_ACK      release the hold, the transfer is applied (final ok)
//!  Q: CANCEL           drop the reservation (or leave an out-of-order marker) ──CANCEL_ACK▶ P
//!  P: ABORT            (coordinator timeout while Trying) Cancel as above
//! ```
//! Debit first, always: the money leaves A before anything can depend on it, so a crash at
//! any point leaves a hold to confirm or refund, never money created from nothing.
//!
//! Messages are idempotent by transfer id and safe to duplicate, drop (the source re-drives
//! unfinished records after a restart) or reorder: a CANCEL that reaches Q before its TRY
//! leaves an out-of-order marker, and the late TRY then fails with `tcc_cancelled`.
//!
//! The state machine only *emits* messages (`ApplyOutput::outbox`); the runtime ships them
//! after the entry that emitted them is durable.

use crate::model::{AccountId, Currency, Transfer, TransferId};
use crate::partition::PartitionId;
use rkyv::{Archive, Deserialize, Serialize};

pub mod kind {
    /// P -> Q: validate the destination.
    pub const TRY: u8 = 1;
    /// Q -> P: the destination's verdict (`code`).
    pub const TRY_RESULT: u8 = 2;
    /// P -> Q: credit the destination.
    pub const CONFIRM: u8 = 3;
    /// Q -> P: the credit is done.
    pub const CONFIRM_ACK: u8 = 4;
    /// P -> Q: the transfer was cancelled (no credit will come).
    pub const CANCEL: u8 = 5;
    /// P -> P: the coordinator gave up waiting for TRY_RESULT.
    pub const ABORT: u8 = 6;
    /// Q -> P: the cancel is recorded (the source stops re-sending it).
    pub const CANCEL_ACK: u8 = 7;
}

/// One TC/C message. A flat record so batches archive as plain arrays.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TccMessage {
    pub kind: u8,
    /// The destination's verdict, for TRY_RESULT (a `ResultCode` value).
    pub code: u8,
    /// The source (coordinating) partition.
    pub source: PartitionId,
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: u64,
    pub currency: Currency,
    pub user_data: u64,
}

impl TccMessage {
    pub fn about(kind: u8, source: PartitionId, t: &Transfer) -> TccMessage {
        TccMessage {
            kind,
            code: 0,
            source,
            id: t.id,
            from: t.from,
            to: t.to,
            amount: t.amount,
            currency: t.currency,
            user_data: t.user_data,
        }
    }
}

/// Phases of the source side's phase-status record.
pub mod phase {
    /// A debited into its hold; waiting for the destination's Try.
    pub const TRYING: u8 = 1;
    /// Decided Confirm; waiting for the destination's credit.
    pub const CONFIRMING: u8 = 2;
    /// Decided Cancel; A refunded. Final.
    pub const CANCELLED: u8 = 3;
}

/// The source partition's phase-status record of one TC/C transfer. A confirmed transfer
/// leaves this table for the transfer store; a cancelled one stays, to answer retries with
/// the same outcome.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TccRecord {
    /// The transfer, with the timestamp of its Try.
    pub transfer: Transfer,
    pub destination: PartitionId,
    pub phase: u8,
    /// The destination's Try verdict (`ResultCode` value), `DEST_PENDING` until known.
    pub destination_try: u8,
    /// Final result once cancelled (`ResultCode` value).
    pub final_code: u8,
    /// Cancelled and the destination confirmed it recorded the cancel: nothing left to send.
    pub cancel_acked: bool,
}

/// `TccRecord::destination_try` before the destination answered.
pub const DEST_PENDING: u8 = u8::MAX;

/// States of the destination side's record.
pub mod participant {
    /// Try succeeded: the credit is reserved (`Account::incoming`).
    pub const TRIED: u8 = 1;
    /// Try failed (`code` says why).
    pub const FAILED: u8 = 2;
    /// Credited. Final.
    pub const CONFIRMED: u8 = 3;
    /// Cancelled (before or after its Try). Final.
    pub const CANCELLED: u8 = 4;
}

/// The destination partition's record of one TC/C transfer.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TccParticipant {
    pub id: TransferId,
    pub source: PartitionId,
    pub to: AccountId,
    pub amount: u64,
    pub state: u8,
    /// Why the Try failed (`ResultCode` value) when `state == FAILED`.
    pub code: u8,
    /// A CANCEL arrived before the TRY.
    pub out_of_order: bool,
}

impl ArchivedTccMessage {
    pub fn to_native(&self) -> TccMessage {
        TccMessage {
            kind: self.kind,
            code: self.code,
            source: self.source.to_native(),
            id: self.id.to_native(),
            from: self.from.to_native(),
            to: self.to.to_native(),
            amount: self.amount.to_native(),
            currency: self.currency.to_native(),
            user_data: self.user_data.to_native(),
        }
    }
}
