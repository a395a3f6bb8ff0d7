//! CQRS read model of one partition: a read-only view that follows the partition's events in
//! log order and answers queries the state machine does not keep: account history (paged,
//! newest first or by time range), an account's balance as of a timestamp or a log position,
//! and per-currency totals.
//!
//! It is fed `apply(entry_index, entry_timestamp, events)` with the events `apply_entry`
//! derived from each log entry, in order (the partition task does it right after applying;
//! recovery does it for the replayed log tail). It never changes the partition's state.
//!
//! - `position`: the `u64` that orders events within a partition.
//! - `history`: one account's retained entries and exact balance-as-of answers.
//! - `totals`: money per currency.
//! - `query`: query and answer types, errors.
//!
//! Bounded: at most `history_per_account_max` entries per account (oldest dropped first; a
//! query that reaches below the retained window is refused with the oldest retained point, it
//! is never answered wrongly), one record per account of the partition, one total per
//! currency, `HISTORY_PAGE_MAX` entries per answer. Deterministic: answers never depend on
//! hash-map order.

mod accounts;
mod history;
pub mod position;
mod query;
mod ring;
mod totals;

pub use history::{HistoryEntry, HistoryKind};
pub use query::{At, BalanceAsOf, HistoryPage, HistoryQuery, QueryError, HISTORY_PAGE_MAX};
pub use ring::{ChangeEvent, EventsPage, EVENTS_PAGE_MAX, EVENT_RING_MAX, FROM_NOW};
pub use totals::Totals;

use crate::event::Event;
use crate::model::{AccountId, Currency};
use crate::partition::{partition_of, PartitionId};
use crate::state_machine::PartitionState;
use accounts::Accounts;
use history::{AccountHistory, Point};
use position::{end_of_entry, position};
use ring::EventRing;

/// Largest `history_per_account_max` a configuration may ask for.
pub const HISTORY_PER_ACCOUNT_MAX: usize = 1 << 20;

/// Events whose records are fetched ahead of their application (see `apply`).
const TOUCH_WINDOW: usize = 32;

/// A history entry before `record` fills in the balances after it.
fn entry(
    position: u64,
    timestamp: u64,
    transfer_id: u128,
    counterparty: AccountId,
    amount: i64,
    kind: HistoryKind,
) -> HistoryEntry {
    HistoryEntry {
        position,
        timestamp,
        transfer_id,
        counterparty,
        amount,
        balance_after: 0,
        held_after: 0,
        kind,
    }
}

/// A change for the subscription ring.
#[allow(clippy::too_many_arguments)]
fn change(
    position: u64,
    timestamp: u64,
    kind: HistoryKind,
    transfer_id: u128,
    from: AccountId,
    to: AccountId,
    amount: u64,
    currency: Currency,
) -> ChangeEvent {
    ChangeEvent {
        position,
        timestamp,
        kind,
        transfer_id,
        from,
        to,
        amount,
        currency,
    }
}

/// How far the read model is behind its partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    /// Log entries applied by the partition and not yet by the read model.
    pub entries: u64,
    /// Milliseconds between the partition's last timestamp and the read model's.
    pub ms: u64,
}

/// The accounts whose history an event changes (none, one or two).
fn accounts_changed(event: &Event) -> impl Iterator<Item = AccountId> {
    let (first, second) = match *event {
        Event::TransferApplied(t) => (t.from, t.to),
        Event::TccTried(t) => (t.from, 0),
        Event::TccCredited { to, .. } => (to, 0),
        Event::TccCancelled { from, .. } => (from, 0),
        _ => (0, 0),
    };
    [first, second].into_iter().filter(|id| *id != 0)
}

pub struct ReadModel {
    partition: PartitionId,
    partition_count: u32,
    history_max: usize,
    accounts: Accounts,
    totals: Totals,
    /// The newest changes, for subscriptions.
    ring: EventRing,
    /// Last log entry applied (0 = none) and its timestamp.
    last_index: u64,
    last_timestamp: u64,
    events: u64,
}

impl ReadModel {
    /// An empty read model of a partition whose log starts at entry 1.
    pub fn new(partition: PartitionId, partition_count: u32, history_max: usize) -> ReadModel {
        ReadModel {
            partition,
            partition_count,
            history_max: history_max.max(1),
            accounts: Accounts::default(),
            totals: Totals::default(),
            ring: EventRing::new(0),
            last_index: 0,
            last_timestamp: 0,
            events: 0,
        }
    }

    /// A read model that starts where `state` is (a snapshot): balances are known from that
    /// point on, older history is not.
    pub fn from_state(state: &PartitionState, history_max: usize) -> ReadModel {
        let mut model = ReadModel::new(state.partition(), state.partition_count(), history_max);
        let at = end_of_entry(state.last_index());
        for a in state.accounts_sorted() {
            let point = Point {
                position: at,
                timestamp: state.last_timestamp(),
                balance: a.balance,
                held: a.held,
            };
            model
                .accounts
                .insert(a.id, AccountHistory::seeded(a.currency, a.timestamp, point));
        }
        for (currency, total) in state.totals_by_currency() {
            model.totals.add(currency, total);
        }
        model.last_index = state.last_index();
        model.last_timestamp = state.last_timestamp();
        // Changes of the entries the state already holds are not known (none at genesis).
        let known_from = if state.last_index() == 0 { 0 } else { at + 1 };
        model.ring = EventRing::new(known_from);
        model
    }

    pub fn history_per_account_max(&self) -> usize {
        self.history_max
    }

    /// Applies the events of log entry `entry_index` (written at `entry_timestamp`), in the
    /// order `apply_entry` emitted them. Entries at or below the last applied one are ignored.
    pub fn apply(&mut self, entry_index: u64, entry_timestamp: u64, events: &[Event]) {
        if entry_index <= self.last_index {
            return;
        }
        debug_assert_eq!(entry_index, self.last_index + 1, "entries apply in order");
        // The time of an event: its item's timestamp when it carries one (credits and refunds
        // carry the time of the message that made them); the others (a settle carries its
        // transfer's older time) take the latest time seen in the entry.
        let mut clock = entry_timestamp;
        // A window at a time: first fetch what each event will write, in three passes whose
        // loads are independent across events (so their cache misses overlap): the accounts'
        // slots, their histories, the history entries the events will write. Then apply the
        // events in order, from cache.
        for (w, window) in events.chunks(TOUCH_WINDOW).enumerate() {
            for id in window.iter().flat_map(accounts_changed) {
                self.accounts.prefetch_slot(id);
            }
            for id in window.iter().flat_map(accounts_changed) {
                self.accounts.prefetch_history(id);
            }
            for id in window.iter().flat_map(accounts_changed) {
                if let Some(account) = self.accounts.get(id) {
                    account.touch();
                }
            }
            for (i, event) in window.iter().enumerate() {
                let at = position(entry_index, w * TOUCH_WINDOW + i);
                self.apply_event(at, &mut clock, event);
            }
        }
        self.events += events.len() as u64;
        self.last_index = entry_index;
        self.last_timestamp = entry_timestamp;
    }

    /// Moves past log entries up to `entry_index` that carry no events, without applying
    /// them: Raft's blank and membership entries, which a state machine may apply past a gap
    /// (`PartitionState::skip_to`). Never moves back.
    pub(crate) fn skip_to(&mut self, entry_index: u64) {
        self.last_index = self.last_index.max(entry_index);
    }

    fn apply_event(&mut self, at: u64, clock: &mut u64, event: &Event) {
        let max = self.history_max;
        match *event {
            Event::AccountCreated(a) => {
                // Not a change of money: no ring entry.
                *clock = (*clock).max(a.timestamp);
                self.accounts
                    .insert(a.id, AccountHistory::created(a.currency, at, *clock));
                self.totals.add(a.currency, 0);
            }
            Event::TransferApplied(t) => {
                *clock = (*clock).max(t.timestamp);
                let amount = t.amount as i64; // applied transfers fit i64
                let local = partition_of(t.to, self.partition_count) == self.partition;
                let kind = if local {
                    HistoryKind::Transfer
                } else {
                    HistoryKind::TccSettle
                };
                self.ring.push(change(
                    at, *clock, kind, t.id, t.from, t.to, t.amount, t.currency,
                ));
                if local {
                    if let Some(from) = self.accounts.get_mut(t.from) {
                        from.balance -= amount;
                        from.record(
                            max,
                            entry(at, *clock, t.id, t.to, -amount, HistoryKind::Transfer),
                            true,
                        );
                    }
                    if let Some(to) = self.accounts.get_mut(t.to) {
                        to.balance += amount;
                        to.record(
                            max,
                            entry(at, *clock, t.id, t.from, amount, HistoryKind::Transfer),
                            true,
                        );
                    }
                } else {
                    // The last step of a cross-partition transfer: the hold is released.
                    if let Some(from) = self.accounts.get_mut(t.from) {
                        from.held -= amount;
                        from.record(
                            max,
                            entry(at, *clock, t.id, t.to, 0, HistoryKind::TccSettle),
                            false,
                        );
                        self.totals.add(from.currency, -(amount as i128));
                    }
                }
            }
            Event::TccTried(t) => {
                *clock = (*clock).max(t.timestamp);
                let kind = HistoryKind::TccHold;
                self.ring.push(change(
                    at, *clock, kind, t.id, t.from, t.to, t.amount, t.currency,
                ));
                let amount = t.amount as i64;
                if let Some(from) = self.accounts.get_mut(t.from) {
                    from.balance -= amount;
                    from.held += amount;
                    from.record(
                        max,
                        entry(at, *clock, t.id, t.to, -amount, HistoryKind::TccHold),
                        false,
                    );
                }
            }
            Event::TccCredited {
                id,
                from,
                to,
                amount,
                timestamp,
            } => {
                *clock = (*clock).max(timestamp);
                let units = amount;
                let amount = amount as i64;
                if let Some(account) = self.accounts.get_mut(to) {
                    let kind = HistoryKind::TccCredit;
                    let c = change(at, *clock, kind, id, from, to, units, account.currency);
                    self.ring.push(c);
                    account.balance += amount;
                    account.record(
                        max,
                        entry(at, *clock, id, from, amount, HistoryKind::TccCredit),
                        false,
                    );
                    self.totals.add(account.currency, amount as i128);
                }
            }
            Event::TccCancelled {
                id,
                from,
                to,
                amount,
                timestamp,
                ..
            } => {
                *clock = (*clock).max(timestamp);
                let units = amount;
                let amount = amount as i64;
                if let Some(account) = self.accounts.get_mut(from) {
                    let kind = HistoryKind::TccRefund;
                    let c = change(at, *clock, kind, id, from, to, units, account.currency);
                    self.ring.push(c);
                    account.balance += amount;
                    account.held -= amount;
                    account.record(
                        max,
                        entry(at, *clock, id, to, amount, HistoryKind::TccRefund),
                        false,
                    );
                }
            }
            Event::TransferRejected { timestamp, .. } => *clock = (*clock).max(timestamp),
            Event::AccountRejected { .. }
            | Event::TccParticipantTried { .. }
            | Event::TccCancelledBeforeTry { .. }
            | Event::TccIgnored { .. } => {}
        }
    }

    /// Last log entry applied (0 = none).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Everything at or below this position is included in the answers.
    pub fn read_position(&self) -> u64 {
        end_of_entry(self.last_index)
    }

    /// Events applied since this read model was created.
    pub fn events_applied(&self) -> u64 {
        self.events
    }

    /// How far behind a partition that applied up to `last_index` (last item timestamp
    /// `last_timestamp`) this read model is.
    pub fn lag(&self, last_index: u64, last_timestamp: u64) -> Lag {
        let entries = last_index.saturating_sub(self.last_index);
        let ms = if entries == 0 {
            0
        } else {
            last_timestamp.saturating_sub(self.last_timestamp) / 1_000_000
        };
        Lag { entries, ms }
    }

    /// Changes at positions from `from` on (`FROM_NOW`: after everything applied), below
    /// `below` (callers pass the first position of the first non-durable entry), of `account`
    /// only when given; at most `limit` (capped at `EVENTS_PAGE_MAX`).
    pub fn events_since(
        &self,
        from: u64,
        below: u64,
        account: Option<AccountId>,
        limit: usize,
    ) -> Result<EventsPage, QueryError> {
        let from = if from == FROM_NOW {
            self.read_position() + 1
        } else {
            from
        };
        if let Some(id) = account {
            self.account(id)?;
        }
        self.ring.since(from, below, account, limit)
    }

    pub fn history(&self, q: &HistoryQuery) -> Result<HistoryPage, QueryError> {
        let (partition, count) = (self.partition, self.partition_count);
        let local = move |id: AccountId| partition_of(id, count) == partition;
        self.account(q.account)?
            .page(q, self.read_position(), &local)
    }

    pub fn balance_at(&self, account: AccountId, at: At) -> Result<BalanceAsOf, QueryError> {
        self.account(account)?
            .balance_at(account, at, self.read_position())
    }

    /// Current `(balance, held)` of an account, as the read model sees it.
    pub fn balance(&self, account: AccountId) -> Option<(i64, i64)> {
        self.accounts.get(account).map(|a| (a.balance, a.held))
    }

    /// `(currency, sum of balance + held)` in currency order.
    pub fn totals(&self) -> Vec<(Currency, i128)> {
        self.totals.to_vec()
    }

    fn account(&self, id: AccountId) -> Result<&AccountHistory, QueryError> {
        self.accounts.get(id).ok_or(QueryError::AccountNotFound(id))
    }
}
