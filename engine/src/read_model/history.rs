//! One account's history as the read model keeps it: the newest `history_per_account_max`
//! entries (oldest dropped first), plus the oldest state it still knows exactly (`base`), so
//! "balance as of" answers are exact inside the retained window and refused outside it.

use super::query::{At, BalanceAsOf, HistoryPage, HistoryQuery, QueryError, HISTORY_PAGE_MAX};
use crate::model::{AccountId, Currency};
use std::collections::VecDeque;

/// What moved an account's money.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum HistoryKind {
    /// A transfer inside the partition: `amount` < 0 for the debited account, > 0 for the
    /// credited one.
    Transfer = 1,
    /// Source of a cross-partition transfer: the amount left `balance` into `held`.
    TccHold = 2,
    /// Destination of a cross-partition transfer: credited.
    TccCredit = 3,
    /// Source: the transfer was cancelled, the hold went back to `balance`.
    TccRefund = 4,
    /// Source: the destination confirmed the credit, the hold is released (`balance`
    /// unchanged, `amount` 0, `held_after` lower).
    TccSettle = 5,
}

impl HistoryKind {
    pub fn name(self) -> &'static str {
        match self {
            HistoryKind::Transfer => "transfer",
            HistoryKind::TccHold => "tcc_hold",
            HistoryKind::TccCredit => "tcc_credit",
            HistoryKind::TccRefund => "tcc_refund",
            HistoryKind::TccSettle => "tcc_settle",
        }
    }

    pub fn from_u8(value: u8) -> Option<HistoryKind> {
        Some(match value {
            1 => HistoryKind::Transfer,
            2 => HistoryKind::TccHold,
            3 => HistoryKind::TccCredit,
            4 => HistoryKind::TccRefund,
            5 => HistoryKind::TccSettle,
            _ => return None,
        })
    }
}

/// One change of one account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Position of the event (see `position`); unique per account.
    pub position: u64,
    /// Time of the event (ns): the time of the item that caused it (a TC/C credit or refund:
    /// of the message that made it), or for a settle the latest time seen in its log entry;
    /// never decreasing along positions.
    pub timestamp: u64,
    pub transfer_id: u128,
    /// The other account of the transfer.
    pub counterparty: AccountId,
    /// Signed change of `balance` (minor units).
    pub amount: i64,
    pub balance_after: i64,
    pub held_after: i64,
    pub kind: HistoryKind,
}

/// An entry as stored: one 64-byte cache line. `amount` and `kind` are not stored; they follow
/// from the change of `balance`/`held` since the previous entry (or `base`) and from where the
/// counterparty lives (see `AccountHistory::expand`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
struct Stored {
    position: u64,
    timestamp: u64,
    transfer_id: u128,
    counterparty: AccountId,
    balance_after: i64,
    held_after: i64,
}

/// Asks the CPU to bring `value`'s cache line in, without waiting for it (a hint: no effect on
/// results).
#[inline(always)]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint; it never faults, even on an invalid address, and reads
    // nothing into the program's state.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (value as *const T).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::hint::black_box(value);
}

/// The kind of a change from its effect: `balance` and `held` deltas, and whether the
/// counterparty lives in this partition.
fn kind_of(balance_delta: i64, held_delta: i64, local_counterparty: bool) -> HistoryKind {
    if held_delta > 0 {
        HistoryKind::TccHold
    } else if held_delta < 0 {
        if balance_delta == 0 {
            HistoryKind::TccSettle
        } else {
            HistoryKind::TccRefund
        }
    } else if local_counterparty {
        HistoryKind::Transfer
    } else {
        HistoryKind::TccCredit
    }
}

/// The state of an account at one point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Point {
    pub position: u64,
    pub timestamp: u64,
    pub balance: i64,
    pub held: i64,
}

#[derive(Clone, Debug)]
pub(crate) struct AccountHistory {
    pub currency: Currency,
    pub balance: i64,
    pub held: i64,
    /// Timestamp of the command that created the account.
    pub created_timestamp: u64,
    /// The oldest state known exactly: the account's creation, the state it was seeded with
    /// (after a restart from a snapshot), or the state after the last dropped entry.
    base: Point,
    /// `base` is the account's creation: nothing older exists.
    complete: bool,
    /// Newest last; at most `max` entries.
    entries: VecDeque<Stored>,
}

impl AccountHistory {
    /// An account created by the event at `position`.
    pub fn created(currency: Currency, position: u64, timestamp: u64) -> AccountHistory {
        AccountHistory {
            currency,
            balance: 0,
            held: 0,
            created_timestamp: timestamp,
            base: Point {
                position,
                timestamp,
                balance: 0,
                held: 0,
            },
            complete: true,
            entries: VecDeque::new(),
        }
    }

    /// An account known only from its state at `at` (a snapshot), not from its creation.
    pub fn seeded(currency: Currency, created_timestamp: u64, at: Point) -> AccountHistory {
        AccountHistory {
            currency,
            balance: at.balance,
            held: at.held,
            created_timestamp,
            base: at,
            complete: false,
            entries: VecDeque::new(),
        }
    }

    /// Appends `entry` with the current `balance`/`held` (already updated by the caller) as
    /// its `*_after` fields, dropping the oldest entry when `max` are retained.
    /// `local`: the counterparty lives in this partition.
    pub fn record(&mut self, max: usize, entry: HistoryEntry, local: bool) {
        debug_assert!(max > 0);
        if self.entries.len() >= max {
            if let Some(oldest) = self.entries.pop_front() {
                self.base = Point {
                    position: oldest.position,
                    timestamp: oldest.timestamp,
                    balance: oldest.balance_after,
                    held: oldest.held_after,
                };
                self.complete = false;
            }
        } else if self.entries.capacity() == 0 {
            // One allocation per account, at its first change: the ring never grows again (no
            // copying while it fills, no allocation per transfer; growing by doubling cut a
            // benchmark's throughput by a third, docs/ARCHITECTURE.md).
            self.entries.reserve_exact(max);
        }
        let (before_balance, before_held) = match self.entries.back() {
            Some(last) => (last.balance_after, last.held_after),
            None => (self.base.balance, self.base.held),
        };
        debug_assert_eq!(
            kind_of(
                self.balance - before_balance,
                self.held - before_held,
                local
            ),
            entry.kind,
            "the kind follows from the effect"
        );
        debug_assert_eq!(self.balance - before_balance, entry.amount);
        self.entries.push_back(Stored {
            position: entry.position,
            timestamp: entry.timestamp,
            transfer_id: entry.transfer_id,
            counterparty: entry.counterparty,
            balance_after: self.balance,
            held_after: self.held,
        });
    }

    /// Loads the slot the next `record` writes (the oldest entry once full), so its cache
    /// miss overlaps with others'. Changes nothing.
    pub fn touch(&self) {
        let slot = if self.entries.len() == self.entries.capacity() {
            self.entries.front()
        } else {
            self.entries.back()
        };
        if let Some(e) = slot {
            prefetch(e);
        }
    }

    /// The oldest point retained, when older history exists but is gone.
    pub fn truncated_at(&self) -> Option<(u64, u64)> {
        (!self.complete).then_some((self.base.position, self.base.timestamp))
    }

    fn before_retained(&self, account: AccountId) -> QueryError {
        QueryError::BeforeRetained {
            account,
            oldest_timestamp: self.base.timestamp,
            oldest_position: self.base.position,
        }
    }

    /// Balance as of `at` (after every event at or before it).
    pub fn balance_at(
        &self,
        account: AccountId,
        at: At,
        read_position: u64,
    ) -> Result<BalanceAsOf, QueryError> {
        let (before_base, upto) = match at {
            At::Position(p) => {
                if p > read_position {
                    return Err(QueryError::Ahead {
                        position: p,
                        read_position,
                    });
                }
                (
                    p < self.base.position,
                    self.entries.partition_point(|e| e.position <= p),
                )
            }
            At::Timestamp(t) => (
                t < self.base.timestamp,
                self.entries.partition_point(|e| e.timestamp <= t),
            ),
        };
        if before_base {
            let not_yet = match at {
                At::Timestamp(t) => t < self.created_timestamp,
                At::Position(_) => self.complete,
            };
            return Err(if not_yet {
                QueryError::NotCreatedYet {
                    account,
                    created_timestamp: self.created_timestamp,
                    created_position: if self.complete { self.base.position } else { 0 },
                }
            } else {
                self.before_retained(account)
            });
        }
        let point = match upto.checked_sub(1).and_then(|i| self.entries.get(i)) {
            Some(e) => Point {
                position: e.position,
                timestamp: e.timestamp,
                balance: e.balance_after,
                held: e.held_after,
            },
            None => self.base,
        };
        Ok(BalanceAsOf {
            account,
            currency: self.currency,
            balance: point.balance,
            held: point.held,
            position: point.position,
            timestamp: point.timestamp,
            read_position,
        })
    }

    /// Entry `i` with its amount and kind (`local`: does an account live in this partition).
    fn expand(&self, i: usize, local: &dyn Fn(AccountId) -> bool) -> HistoryEntry {
        let e = self.entries[i];
        let (before_balance, before_held) = match i.checked_sub(1).map(|p| self.entries[p]) {
            Some(prev) => (prev.balance_after, prev.held_after),
            None => (self.base.balance, self.base.held),
        };
        let amount = e.balance_after - before_balance;
        HistoryEntry {
            position: e.position,
            timestamp: e.timestamp,
            transfer_id: e.transfer_id,
            counterparty: e.counterparty,
            amount,
            balance_after: e.balance_after,
            held_after: e.held_after,
            kind: kind_of(amount, e.held_after - before_held, local(e.counterparty)),
        }
    }

    /// A page of history, newest first (see `HistoryQuery`).
    pub fn page(
        &self,
        q: &HistoryQuery,
        read_position: u64,
        local: &dyn Fn(AccountId) -> bool,
    ) -> Result<HistoryPage, QueryError> {
        let limit = if q.limit == 0 {
            HISTORY_PAGE_MAX
        } else {
            q.limit.min(HISTORY_PAGE_MAX)
        };
        let truncated_at = self.truncated_at();
        if truncated_at.is_some() {
            // A range that reaches below the retained window would be answered incompletely
            // (an entry at `base` itself may be among the dropped ones). A range that only
            // starts below it (no lower bound) is answered with `truncated_at` set.
            let base = self.base;
            if q.from_timestamp.is_some_and(|from| from <= base.timestamp)
                || q.to_timestamp.is_some_and(|to| to < base.timestamp)
                || q.before_position
                    .is_some_and(|before| before <= base.position)
            {
                return Err(self.before_retained(q.account));
            }
        }
        let mut hi = self.entries.len();
        if let Some(before) = q.before_position {
            hi = hi.min(self.entries.partition_point(|e| e.position < before));
        }
        if let Some(to) = q.to_timestamp {
            hi = hi.min(self.entries.partition_point(|e| e.timestamp <= to));
        }
        let lo = match q.from_timestamp {
            Some(from) => self.entries.partition_point(|e| e.timestamp < from),
            None => 0,
        }
        .min(hi);
        let take = (hi - lo).min(limit);
        let entries: Vec<HistoryEntry> = (hi - take..hi)
            .rev()
            .map(|i| self.expand(i, local))
            .collect();
        let next_before = (take < hi - lo)
            .then(|| entries.last().map(|e| e.position))
            .flatten();
        Ok(HistoryPage {
            entries,
            next_before,
            truncated_at,
            read_position,
        })
    }
}
