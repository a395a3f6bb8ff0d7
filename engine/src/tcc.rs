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

/// The first `items_max` messages of `queue` (all of them when fewer), in arrival order, as
/// the body of one log entry; the rest stay queued for the next. A busy group can receive
/// several peers' batches of messages, and an entry's events are numbered in
/// `read_model::position::ORDINAL_BITS` bits, so the messages are cut into entries rather
/// than logged as one.
pub fn take_entry(queue: &mut Vec<TccMessage>, items_max: usize) -> Vec<TccMessage> {
    assert!(items_max > 0, "an entry holds at least one message");
    let rest = queue.split_off(queue.len().min(items_max));
    std::mem::replace(queue, rest)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::BATCH_ITEMS_MAX;
    use crate::read_model::position::ORDINAL_MAX;

    fn message(n: u128) -> TccMessage {
        TccMessage {
            kind: kind::TRY,
            code: 0,
            source: 0,
            id: n,
            from: 1,
            to: 2,
            amount: 1,
            currency: Currency::parse("EUR").expect("a currency code"),
            user_data: 0,
        }
    }

    #[test]
    fn a_group_of_several_peers_batches_is_cut_into_entries_in_order() {
        // Nine peers' full batches in one group: one entry would number past the ordinal.
        let total = 9 * BATCH_ITEMS_MAX as u128 + 3;
        assert!(total > ORDINAL_MAX as u128);
        let mut queue: Vec<TccMessage> = (0..total).map(message).collect();
        let mut entries = Vec::new();
        while !queue.is_empty() {
            entries.push(take_entry(&mut queue, BATCH_ITEMS_MAX));
        }
        assert_eq!(entries.len(), 10);
        assert!(entries[..9].iter().all(|e| e.len() == BATCH_ITEMS_MAX));
        assert_eq!(entries[9].len(), 3);
        let ids: Vec<u128> = entries.iter().flatten().map(|m| m.id).collect();
        assert_eq!(ids, (0..total).collect::<Vec<_>>(), "arrival order is kept");
    }

    #[test]
    fn a_short_queue_is_one_entry() {
        let mut queue: Vec<TccMessage> = (0..5).map(message).collect();
        assert_eq!(take_entry(&mut queue, BATCH_ITEMS_MAX).len(), 5);
        assert!(queue.is_empty());
    }
}
