//! The newest changes of a partition, in position order, for subscriptions: a client asks for
//! the changes from a position on (all of them, or one account's) and resumes from the
//! position after the last one it saw, without gap or duplicate, as long as that position is
//! still retained. Bounded: `EVENT_RING_MAX` changes; older positions are refused with the
//! oldest retained one.

use super::history::HistoryKind;
use super::query::QueryError;
use crate::model::{AccountId, Currency};
use std::collections::VecDeque;

/// Changes retained per partition for subscriptions.
pub const EVENT_RING_MAX: usize = 1 << 16;
/// Most changes one `since` answer holds.
pub const EVENTS_PAGE_MAX: usize = 4096;
/// `from` value meaning "from the next change on" (nothing already applied).
pub const FROM_NOW: u64 = u64::MAX;

/// One change of money, as subscribers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeEvent {
    pub position: u64,
    pub timestamp: u64,
    pub kind: HistoryKind,
    pub transfer_id: u128,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: u64,
    pub currency: Currency,
}

impl ChangeEvent {
    /// True when the change moves `account`'s money in this partition (the source of a
    /// hold/refund/settle, the destination of a credit, either side of a local transfer).
    pub fn touches(&self, account: AccountId) -> bool {
        match self.kind {
            HistoryKind::Transfer => self.from == account || self.to == account,
            HistoryKind::TccCredit => self.to == account,
            HistoryKind::TccHold | HistoryKind::TccRefund | HistoryKind::TccSettle => {
                self.from == account
            }
        }
    }
}

/// Changes from a position on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventsPage {
    pub events: Vec<ChangeEvent>,
    /// Where the next request starts (after every change this answer looked at).
    pub next_from: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct EventRing {
    events: VecDeque<ChangeEvent>,
    /// Every change at or above this position is retained (or has not happened yet).
    complete_from: u64,
}

impl EventRing {
    pub fn new(complete_from: u64) -> EventRing {
        EventRing {
            events: VecDeque::new(),
            complete_from,
        }
    }

    pub fn push(&mut self, event: ChangeEvent) {
        if self.events.len() >= EVENT_RING_MAX {
            if let Some(oldest) = self.events.pop_front() {
                self.complete_from = oldest.position + 1;
            }
        }
        self.events.push_back(event);
    }

    /// Changes at positions `from..below`, of `account` only when given, at most `limit`.
    pub fn since(
        &self,
        from: u64,
        below: u64,
        account: Option<AccountId>,
        limit: usize,
    ) -> Result<EventsPage, QueryError> {
        if from < self.complete_from {
            return Err(QueryError::BeforeRetained {
                account: account.unwrap_or(0),
                oldest_timestamp: self.events.front().map_or(0, |e| e.timestamp),
                oldest_position: self.complete_from,
            });
        }
        let limit = limit.clamp(1, EVENTS_PAGE_MAX);
        let start = self.events.partition_point(|e| e.position < from);
        let mut page = EventsPage {
            events: Vec::new(),
            next_from: from,
        };
        for e in self.events.range(start..) {
            if e.position >= below || page.events.len() == limit {
                break;
            }
            page.next_from = e.position + 1;
            if account.is_none_or(|a| e.touches(a)) {
                page.events.push(*e);
            }
        }
        Ok(page)
    }
}
