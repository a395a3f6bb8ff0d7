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
}
