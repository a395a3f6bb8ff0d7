//! Events: the facts the state machine decided. Commands are what clients ask; events are what
//! happened. They are derived deterministically from the logged commands, so replaying the
//! log re-derives exactly the same events (read models and subscriptions consume them).

use crate::model::{Account, Transfer};
use crate::result_code::ResultCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    AccountCreated(Account),
    AccountRejected {
        id: u128,
        code: ResultCode,
    },
    TransferApplied(Transfer),
    /// A transfer that changed nothing: rejected, or a retry of an applied id (`exists`).
    TransferRejected {
        id: u128,
        code: ResultCode,
        timestamp: u64,
    },
    /// Source: the debit went into a hold; the destination is asked to Try.
    TccTried(Transfer),
    /// Destination: the Try's verdict.
    TccParticipantTried {
        id: u128,
        code: ResultCode,
    },
    /// Destination: credited (`from` is the source account, in another partition), at
    /// `timestamp` (the time of the Confirm that credited it).
    TccCredited {
        id: u128,
        from: u128,
        to: u128,
        amount: u64,
        timestamp: u64,
    },
    /// Source: cancelled, `amount` refunded from the hold to `from`, with the final code, at
    /// `timestamp` (the time of the message that decided it).
    TccCancelled {
        id: u128,
        from: u128,
        to: u128,
        amount: u64,
        code: ResultCode,
        timestamp: u64,
    },
    /// Destination: a Cancel came before its Try (the late Try will fail).
    TccCancelledBeforeTry {
        id: u128,
    },
    /// A TC/C message that did not fit the record's state (a protocol bug; nothing changed).
    TccIgnored {
        id: u128,
        kind: u8,
    },
}
