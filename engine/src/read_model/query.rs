//! What a read-model query asks and answers, and why it can fail.

use super::history::HistoryEntry;
use crate::model::{AccountId, Currency};

/// Most history entries one page may hold (a page is one reply frame).
pub const HISTORY_PAGE_MAX: usize = 1024;

/// A page of one account's history, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    pub account: AccountId,
    /// Only entries with a position strictly below this one (the cursor of the previous page:
    /// its `next_before`). `None`: start at the newest entry.
    pub before_position: Option<u64>,
    /// Only entries at or after this timestamp (ns). An earlier bound than the retained window
    /// is an error (the answer would be incomplete).
    pub from_timestamp: Option<u64>,
    /// Only entries at or before this timestamp (ns).
    pub to_timestamp: Option<u64>,
    /// At most this many entries (1..=`HISTORY_PAGE_MAX`; larger values are capped, 0 means
    /// the maximum).
    pub limit: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryPage {
    /// Newest first.
    pub entries: Vec<HistoryEntry>,
    /// Cursor for the next (older) page when the range has more retained entries.
    pub next_before: Option<u64>,
    /// Older entries of the account exist but are not retained: the oldest state the read
    /// model knows is as of this (position, timestamp). `None` when the history is complete.
    pub truncated_at: Option<(u64, u64)>,
    /// Position of the read model when it answered (everything up to it is included).
    pub read_position: u64,
}

/// A point in a partition's history: a timestamp (ns) or a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    Timestamp(u64),
    Position(u64),
}

/// An account's balance as of a point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalanceAsOf {
    pub account: AccountId,
    pub currency: Currency,
    pub balance: i64,
    pub held: i64,
    /// Position of the last event that changed the account at or before the point (or of the
    /// oldest state known, when no retained event precedes it).
    pub position: u64,
    /// Timestamp of that event.
    pub timestamp: u64,
    /// Position of the read model when it answered.
    pub read_position: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the read model is off on this node (read_model_history_per_account = 0)")]
    Disabled,
    #[error("account {0} not found")]
    AccountNotFound(AccountId),
    #[error("account {account} did not exist yet at that point (created at timestamp {created_timestamp}, position {created_position})")]
    NotCreatedYet {
        account: AccountId,
        created_timestamp: u64,
        created_position: u64,
    },
    #[error("that point is older than the retained history of account {account}: the oldest retained point is timestamp {oldest_timestamp} (position {oldest_position})")]
    BeforeRetained {
        account: AccountId,
        oldest_timestamp: u64,
        oldest_position: u64,
    },
    #[error("position {position} is ahead of the read model (at position {read_position})")]
    Ahead { position: u64, read_position: u64 },
}

impl QueryError {
    /// A stable number per variant (the wire protocol carries it).
    pub fn code(&self) -> u8 {
        match self {
            QueryError::Disabled => 1,
            QueryError::AccountNotFound(_) => 2,
            QueryError::NotCreatedYet { .. } => 3,
            QueryError::BeforeRetained { .. } => 4,
            QueryError::Ahead { .. } => 5,
        }
    }
}
