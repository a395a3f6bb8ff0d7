//! The deterministic state machine of one partition.
//!
//! `apply_entry(kind, body, timestamp)` turns one logged command batch into per-item result
//! codes and events. It reads no clock, draws no randomness and never lets hash-map order reach
//! its output: the same log always yields the same state, bit for bit (see `digest`). The live
//! path and replay both call it on the archived bytes that are (or were) in the log.
//!
//! Item `i` of an entry applied at timestamp `T` gets timestamp `T + i`. The shard chooses `T`
//! above every timestamp already used; an entry whose `T` is not (a Raft entry from a new leader
//! or a skewed clock) is applied at `T_eff = max(T, last_timestamp + 1)` instead
//! (`effective_timestamp`). Every replica computes the same `T_eff` from the same log, so
//! timestamps stay unique and increasing within a partition and a skewed leader cannot wedge
//! it. On a log the single-node path wrote, `T_eff = T` for every entry.
//!
//! Raft's own entries (`entry_kind::BLANK`, `entry_kind::MEMBERSHIP`) take up their index and
//! change nothing else: no balance, no timestamp (they carry 0), no output. They are handled
//! here rather than in the Raft state machine because recovery and `wallet audit replay` feed
//! every record of a log through `apply_entry`: one place that knows every kind keeps the
//! three in agreement on a replicated log.

use crate::account_table::AccountTable;
use crate::command::{entry_kind, ArchivedNewAccount, ArchivedNewTransfer, NewAccount};
use crate::event::Event;
use crate::model::{
    account_flags, is_valid_id, Account, AccountId, Currency, Transfer, TransferId,
};
use crate::partition::{partition_of, PartitionId};
use crate::prefault::{self, Table};
use crate::result_code::ResultCode;
use crate::tcc::{self, ArchivedTccMessage, TccMessage, TccParticipant, TccRecord, DEST_PENDING};
use crate::transfer_store::TransferStore;
use rkyv::vec::ArchivedVec;

/// How many items ahead of the one being applied the next item's memory is prefetched (see
/// `touch_transfer`). Measured on `wallet audit replay`: 8, 16 and 32 perform alike; a
/// touch-then-apply window of 16 (the earlier design) was a third slower.
const PREFETCH_DISTANCE: usize = 16;

/// Everything one `apply_entry` produces besides the new state. Buffers are reused: the caller
/// clears them between entries.
#[derive(Debug)]
pub struct ApplyOutput {
    /// One code per item of a command batch (`Pending` for a TC/C still running).
    pub results: Vec<ResultCode>,
    /// The derived events, when `keep_events` (see `counting_events`).
    pub events: Vec<Event>,
    /// Events derived since the last `clear`, kept or not.
    pub events_emitted: u64,
    keep_events: bool,
    /// TC/C messages to ship to other partitions once this entry is durable.
    pub outbox: Vec<(PartitionId, TccMessage)>,
    /// TC/C transfers of this partition that reached their final result in this entry.
    pub resolved: Vec<(TransferId, ResultCode)>,
}

impl Default for ApplyOutput {
    fn default() -> ApplyOutput {
        ApplyOutput {
            results: Vec::new(),
            events: Vec::new(),
            events_emitted: 0,
            keep_events: true,
            outbox: Vec::new(),
            resolved: Vec::new(),
        }
    }
}

impl ApplyOutput {
    /// An output that counts events without storing them, for replays that need the state
    /// and the count but not the events: writing a 96-byte event per transfer into a buffer
    /// that outgrows the caches was a fifth of a replay's CPU time. Events do not feed back
    /// into the state, so the state is the same either way.
    pub fn counting_events() -> ApplyOutput {
        ApplyOutput {
            keep_events: false,
            ..ApplyOutput::default()
        }
    }

    pub fn clear(&mut self) {
        self.results.clear();
        self.events.clear();
        self.events_emitted = 0;
        self.outbox.clear();
        self.resolved.clear();
    }

    fn emit(&mut self, event: Event) {
        self.events_emitted += 1;
        if self.keep_events {
            self.events.push(event);
        }
    }
}

/// Why a log entry could not be applied at all (as opposed to an item being rejected).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("unknown log entry kind {0}")]
    UnknownKind(u16),
    #[error("log entry body is not a valid archive of its kind: {0}")]
    InvalidArchive(String),
}

/// The whole state of one partition.
#[derive(Clone)]
pub struct PartitionState {
    pub(crate) partition: PartitionId,
    pub(crate) partition_count: u32,
    pub(crate) accounts: AccountTable,
    pub(crate) transfers: TransferStore,
    /// Source side of TC/C: phase-status records of transfers that started here and are not
    /// confirmed (in flight, or cancelled and kept to answer retries).
    pub(crate) tcc: Table<TransferId, TccRecord>,
    /// Destination side of TC/C.
    /// Keyed by source partition and id: transfer ids are unique per source partition only
    /// (its idempotency check), so two partitions may both send this one a transfer `X`.
    pub(crate) participants: Table<ParticipantKey, TccParticipant>,
    /// Index of the last applied log entry (0 = none).
    pub(crate) last_index: u64,
    /// Highest item timestamp used so far (0 = none).
    pub(crate) last_timestamp: u64,
}

/// The timestamp a command entry stamped `stamp` is applied at, when the last timestamp used
/// before it is `last_timestamp`: the stamp, or just above the last one if it is not above
/// it. Item `i` of the entry then happens at the result + `i`. (Also what `wallet log dump`
/// prints, so that it shows the times a replay applies items at.)
pub fn entry_timestamp(last_timestamp: u64, stamp: u64) -> u64 {
    stamp.max(last_timestamp + 1)
}

/// The last timestamp a command entry of `items` items applied at `applied_at` uses. An empty
/// entry still consumes its timestamp, so that the next one is strictly above it.
pub fn last_timestamp_of(applied_at: u64, items: usize) -> u64 {
    applied_at + items.max(1) as u64 - 1
}

impl PartitionState {
    pub fn new(partition: PartitionId, partition_count: u32) -> PartitionState {
        assert!(partition < partition_count);
        PartitionState {
            partition,
            partition_count,
            accounts: AccountTable::default(),
            transfers: TransferStore::default(),
            tcc: prefault::table(),
            participants: prefault::table(),
            last_index: 0,
            last_timestamp: 0,
        }
    }

    /// Pre-sizes the idempotency index so the hot path does not rehash while it grows.
    /// The TC/C tables are pre-sized too (the source's holds only running transfers; the
    /// destination's grows with every cross-partition transfer received).
    pub fn reserve_transfers(&mut self, additional: usize) {
        let mut bigger = TransferStore::with_capacity(self.transfers.len() + additional);
        for transfer in self.transfers.iter() {
            bigger.push(transfer);
        }
        self.transfers = bigger;
        self.tcc.reserve(additional.min(1 << 16));
        // Every cross-partition transfer into this partition leaves a participant record, and
        // growing a table of millions rehashes it on the shard (a stall of about a second was
        // measured with room for only a quarter of the transfers): room for all of them, up to
        // 4 Mi records (512 MiB, made resident in the background by `prefault`).
        self.participants.reserve(additional.min(4 << 20));
    }

    /// Pre-sizes the account table for `additional` more accounts (a replay that knows how
    /// many its log can create).
    pub fn reserve_accounts(&mut self, additional: usize) {
        self.accounts.reserve(additional);
    }

    /// From now on, transfers applied from log entries stay in the mapped log instead of being
    /// copied (`TransferStore::keep_in_log`): for an offline replay of up to `capacity` more
    /// transfers, which hands every segment over (`add_log_segment`) before its records apply.
    /// The idempotency index is sized for them once (growing by doubling would rehash and
    /// fault in about twice the memory).
    pub fn keep_transfers_in_log(&mut self, capacity: usize) {
        self.transfers.keep_in_log(capacity);
    }

    /// The log segment whose records apply next (after `keep_transfers_in_log`).
    pub fn add_log_segment(&mut self, map: std::sync::Arc<memmap2::Mmap>) {
        self.transfers.add_log_segment(map);
    }

    pub fn partition(&self) -> PartitionId {
        self.partition
    }
    pub fn partition_count(&self) -> u32 {
        self.partition_count
    }
    pub fn last_index(&self) -> u64 {
        self.last_index
    }
    pub fn last_timestamp(&self) -> u64 {
        self.last_timestamp
    }
    pub fn account(&self, id: AccountId) -> Option<&Account> {
        self.accounts.get(id)
    }
    pub fn transfer(&self, id: u128) -> Option<Transfer> {
        self.transfers.get(id)
    }

    /// An applied transfer, or a TC/C that started here (running or cancelled).
    pub fn lookup_transfer(&self, id: TransferId) -> Option<crate::model::TransferLookup> {
        use crate::model::TransferLookup;
        if let Some(t) = self.transfers.get(id) {
            return Some(TransferLookup {
                transfer: t,
                status: ResultCode::Ok,
            });
        }
        let record = self.tcc.get(&id)?;
        let status = match record.phase {
            tcc::phase::CANCELLED => {
                ResultCode::from_u8(record.final_code).unwrap_or(ResultCode::TccCancelled)
            }
            tcc::phase::CONFIRMING => ResultCode::Ok, // decided; the credit may lag one message
            _ => ResultCode::Pending,
        };
        Some(TransferLookup {
            transfer: record.transfer,
            status,
        })
    }
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }
    pub fn transfer_count(&self) -> usize {
        self.transfers.len()
    }
    /// Accounts in id order (deterministic, for digests, snapshots and tests).
    pub fn accounts_sorted(&self) -> Vec<Account> {
        // Sized up front: the table's iterator cannot tell its length, and growing a vector of
        // a million accounts by doubling copies it and faults in fresh memory each time.
        let mut accounts = Vec::with_capacity(self.accounts.len());
        accounts.extend(self.accounts.values().copied());
        accounts.sort_unstable_by_key(|a| a.id);
        accounts
    }
    pub fn transfers(&self) -> impl Iterator<Item = Transfer> + '_ {
        self.transfers.iter()
    }

    /// The smallest timestamp the next entry may use: above every timestamp used so far.
    pub fn next_timestamp_floor(&self) -> u64 {
        self.last_timestamp + 1
    }

    /// The timestamp an entry stamped `timestamp` is applied at: `timestamp`, or just above the
    /// last one used when it is not above it (see the module doc). A pure function of the
    /// state, so every replica picks the same one.
    pub fn effective_timestamp(&self, timestamp: u64) -> u64 {
        entry_timestamp(self.last_timestamp, timestamp)
    }

    /// Encodes `batch` and applies it as the next entry, at the smallest timestamp allowed:
    /// for tests and tools that drive a state without a log (one allocation per call).
    pub fn apply_next(
        &mut self,
        batch: &crate::command::CommandBatch,
        out: &mut ApplyOutput,
    ) -> Result<(), ApplyError> {
        let mut body = rkyv::util::AlignedVec::<16>::new();
        batch.encode_into(&mut body);
        let (index, timestamp) = (self.last_index + 1, self.next_timestamp_floor());
        self.apply_entry(index, batch.kind(), &body, timestamp, out)
    }

    /// Applies log entry `index` (kind + archived body) at `effective_timestamp(timestamp)`,
    /// appending one result per item to `out.results` and the derived events to `out.events`.
    /// A Raft blank or membership entry only takes up `index` (a blank's body must be empty;
    /// a membership body is the Raft layer's business, `raft::membership`).
    pub fn apply_entry(
        &mut self,
        index: u64,
        kind: u16,
        body: &[u8],
        timestamp: u64,
        out: &mut ApplyOutput,
    ) -> Result<(), ApplyError> {
        self.apply_entry_prefix(index, kind, body, timestamp, usize::MAX, out)
            .map(|_| ())
    }

    /// `apply_entry` of the entry's first `items_max` items only (an audit's replay "as of"
    /// a moment inside an entry: item `i` happened at `timestamp + i`). Returns how many
    /// items the entry holds. A state that applied a prefix is a view of that moment, not
    /// one to apply the next entry to.
    pub fn apply_entry_prefix(
        &mut self,
        index: u64,
        kind: u16,
        body: &[u8],
        timestamp: u64,
        items_max: usize,
        out: &mut ApplyOutput,
    ) -> Result<usize, ApplyError> {
        assert_eq!(index, self.last_index + 1, "entries apply in index order");
        match kind {
            entry_kind::BLANK if !body.is_empty() => {
                return Err(ApplyError::InvalidArchive(format!(
                    "a blank entry with a {}-byte body",
                    body.len()
                )))
            }
            entry_kind::BLANK | entry_kind::MEMBERSHIP => {
                self.last_index = index;
                return Ok(0);
            }
            _ => {}
        }
        let timestamp = self.effective_timestamp(timestamp);
        let items = match kind {
            entry_kind::CREATE_ACCOUNTS => {
                let items =
                    rkyv::access::<ArchivedVec<ArchivedNewAccount>, rkyv::rancor::Error>(body)
                        .map_err(|e| ApplyError::InvalidArchive(e.to_string()))?;
                let applied = items.len().min(items_max);
                for (i, item) in items[..applied].iter().enumerate() {
                    let code = self.create_account(item, timestamp + i as u64, out);
                    out.results.push(code);
                }
                self.advance(index, timestamp, applied);
                items.len()
            }
            entry_kind::CREATE_TRANSFERS => {
                let items =
                    rkyv::access::<ArchivedVec<ArchivedNewTransfer>, rkyv::rancor::Error>(body)
                        .map_err(|e| ApplyError::InvalidArchive(e.to_string()))?;
                let applied = items.len().min(items_max);
                self.apply_prefetching(
                    &items[..applied],
                    timestamp,
                    out,
                    |state, t| {
                        state.touch_transfer(t.id.to_native(), t.from.to_native(), t.to.to_native())
                    },
                    |state, t, at, out| {
                        let code = state.create_transfer(t, at, out);
                        out.results.push(code);
                    },
                );
                self.advance(index, timestamp, applied);
                items.len()
            }
            entry_kind::TCC_MESSAGES => {
                let items =
                    rkyv::access::<ArchivedVec<ArchivedTccMessage>, rkyv::rancor::Error>(body)
                        .map_err(|e| ApplyError::InvalidArchive(e.to_string()))?;
                let applied = items.len().min(items_max);
                self.apply_prefetching(
                    &items[..applied],
                    timestamp,
                    out,
                    |state, m| state.touch_tcc(m),
                    |state, m, at, out| state.apply_tcc(&m.to_native(), at, out),
                );
                self.advance(index, timestamp, applied);
                items.len()
            }
            other => return Err(ApplyError::UnknownKind(other)),
        };
        Ok(items)
    }

    /// Moves the applied index up to `index` without applying anything in between. Only for a
    /// Raft state machine asked to apply a blank or membership entry past a gap, which
    /// openraft's storage suite does and openraft itself never does (see
    /// `raft::state_machine`): the ledger state is the same either way.
    pub(crate) fn skip_to(&mut self, index: u64) {
        assert!(
            index >= self.last_index,
            "the applied index never goes back"
        );
        self.last_index = index;
    }

    /// Applies `items` in order (item `i` at `timestamp + i`), touching each item
    /// `PREFETCH_DISTANCE` items before it is applied, so its cache misses are in flight while
    /// the items before it run.
    fn apply_prefetching<T>(
        &mut self,
        items: &[T],
        timestamp: u64,
        out: &mut ApplyOutput,
        touch: impl Fn(&Self, &T),
        apply: impl Fn(&mut Self, &T, u64, &mut ApplyOutput),
    ) {
        for item in items.iter().take(PREFETCH_DISTANCE) {
            touch(self, item);
        }
        for (i, item) in items.iter().enumerate() {
            if let Some(ahead) = items.get(i + PREFETCH_DISTANCE) {
                touch(self, ahead);
            }
            apply(self, item, timestamp + i as u64, out);
        }
    }

    /// Starts the cache misses of a transfer that will be applied `PREFETCH_DISTANCE` items
    /// later: the slots of its id and its accounts are requested without waiting for them, so
    /// the misses of many items are in flight at once and the real pass finds the lines in
    /// cache. Changes nothing. Only what the real pass will read is fetched: a wasted miss
    /// costs memory bandwidth like a useful one.
    fn touch_transfer(&self, id: TransferId, from: AccountId, to: AccountId) {
        self.transfers.prefetch(id);
        // `try_transfer` asks whether a TC/C runs under this id; an empty table answers
        // without a probe, a busy one (cross-partition traffic) costs a miss worth overlapping.
        if !self.tcc.is_empty() {
            std::hint::black_box(self.tcc.get(&id));
        }
        self.accounts.prefetch(from);
        if partition_of(to, self.partition_count) == self.partition {
            self.accounts.prefetch(to);
        }
    }

    fn touch_tcc(&self, m: &ArchivedTccMessage) {
        let id = m.id.to_native();
        let key = (m.source.to_native(), id);
        match m.kind {
            tcc::kind::TRY | tcc::kind::CONFIRM => {
                std::hint::black_box(self.participants.get(&key));
                std::hint::black_box(self.accounts.get(m.to.to_native()));
            }
            tcc::kind::CONFIRM_ACK => {
                std::hint::black_box(self.tcc.get(&id));
                std::hint::black_box(self.accounts.get(m.from.to_native()));
                std::hint::black_box(self.transfers.get(id));
            }
            tcc::kind::CANCEL => {
                std::hint::black_box(self.participants.get(&key));
            }
            _ => {
                std::hint::black_box(self.tcc.get(&id));
            }
        }
    }

    fn advance(&mut self, index: u64, timestamp: u64, items: usize) {
        self.last_index = index;
        self.last_timestamp = last_timestamp_of(timestamp, items);
    }

    fn create_account(
        &mut self,
        item: &ArchivedNewAccount,
        timestamp: u64,
        out: &mut ApplyOutput,
    ) -> ResultCode {
        let new = NewAccount {
            id: item.id.to_native(),
            currency: item.currency.to_native(),
            flags: item.flags.to_native(),
            floor: item.floor.to_native(),
            user_data: item.user_data.to_native(),
        };
        let code = self.check_new_account(&new);
        if code == ResultCode::Ok {
            let account = Account {
                id: new.id,
                currency: new.currency,
                flags: new.flags,
                balance: 0,
                held: 0,
                incoming: 0,
                floor: new.floor,
                user_data: new.user_data,
                timestamp,
            };
            self.accounts.insert(account);
            out.emit(Event::AccountCreated(account));
        } else {
            out.emit(Event::AccountRejected { id: new.id, code });
        }
        code
    }

    fn check_new_account(&self, new: &NewAccount) -> ResultCode {
        if !is_valid_id(new.id) {
            return ResultCode::IdInvalid;
        }
        if let Some(existing) = self.accounts.get(new.id) {
            let same = existing.currency == new.currency
                && existing.flags == new.flags
                && existing.floor == new.floor
                && existing.user_data == new.user_data;
            return if same {
                ResultCode::Exists
            } else {
                ResultCode::ExistsWithDifferentFields
            };
        }
        if partition_of(new.id, self.partition_count) != self.partition {
            return ResultCode::WrongPartition;
        }
        if !new.currency.is_valid() {
            return ResultCode::CurrencyInvalid;
        }
        if new.floor > 0 {
            return ResultCode::FloorInvalid;
        }
        if new.flags & !account_flags::ALL != 0 {
            return ResultCode::FlagsInvalid;
        }
        ResultCode::Ok
    }

    fn create_transfer(
        &mut self,
        item: &ArchivedNewTransfer,
        timestamp: u64,
        out: &mut ApplyOutput,
    ) -> ResultCode {
        let transfer = item.applied_at(timestamp);
        let code = self.try_transfer(&transfer, out);
        if code == ResultCode::Ok {
            self.transfers.push_applied(transfer, Some(item));
            out.emit(Event::TransferApplied(transfer));
        } else if code == ResultCode::Pending {
            // A TC/C started (event emitted by start_tcc) or a retry of one still running.
        } else {
            out.emit(Event::TransferRejected {
                id: transfer.id,
                code,
                timestamp,
            });
        }
        code
    }

    /// Validates and, when everything holds, moves the money. Check order is part of the
    /// contract (the first failing check names the result).
    fn try_transfer(&mut self, t: &Transfer, out: &mut ApplyOutput) -> ResultCode {
        if !is_valid_id(t.id) {
            return ResultCode::IdInvalid;
        }
        if let Some(existing) = self.transfers.get(t.id) {
            return if same_fields(&existing, t) {
                ResultCode::Exists
            } else {
                ResultCode::ExistsWithDifferentFields
            };
        }
        if let Some(record) = self.tcc.get(&t.id) {
            // A TC/C under this id started here: same outcome, once.
            if !same_fields(&record.transfer, t) {
                return ResultCode::ExistsWithDifferentFields;
            }
            return match record.phase {
                tcc::phase::CANCELLED => {
                    ResultCode::from_u8(record.final_code).unwrap_or(ResultCode::TccCancelled)
                }
                // Decided: confirmed (the credit follows); a retry answers like one of an
                // applied transfer.
                tcc::phase::CONFIRMING => ResultCode::Exists,
                _ => ResultCode::Pending,
            };
        }
        if t.from == t.to {
            return ResultCode::SameAccount;
        }
        if t.amount == 0 {
            return ResultCode::ZeroAmount;
        }
        let Ok(amount) = i64::try_from(t.amount) else {
            return ResultCode::Overflow;
        };
        if partition_of(t.from, self.partition_count) != self.partition {
            return ResultCode::WrongPartition;
        }
        let Some(from) = self.accounts.get(t.from).copied() else {
            return ResultCode::FromAccountNotFound;
        };
        let destination = partition_of(t.to, self.partition_count);
        if destination != self.partition {
            return self.start_tcc(t, &from, amount, destination, out);
        }
        let Some(to) = self.accounts.get(t.to).copied() else {
            return ResultCode::ToAccountNotFound;
        };
        if from.currency != t.currency || to.currency != t.currency {
            return ResultCode::CurrencyMismatch;
        }
        if from.is_frozen() {
            return ResultCode::FromAccountFrozen;
        }
        if to.is_frozen() {
            return ResultCode::ToAccountFrozen;
        }
        let from_balance = match from.balance.checked_sub(amount) {
            Some(b) if b >= from.floor => b,
            _ => return ResultCode::InsufficientFunds,
        };
        if !to.has_room_for(amount) {
            return ResultCode::Overflow;
        }
        // `has_room_for` covers `balance + amount` (held and incoming are never negative).
        let to_balance = to.balance + amount;
        // Both lookups succeeded above and ids differ, so these entries exist.
        if let Some(a) = self.accounts.get_mut(t.from) {
            a.balance = from_balance;
        }
        if let Some(a) = self.accounts.get_mut(t.to) {
            a.balance = to_balance;
        }
        ResultCode::Ok
    }

    /// TC/C step 1 on the source: check the source side, debit it into a hold, record the
    /// phase status, and ask the destination to Try.
    fn start_tcc(
        &mut self,
        t: &Transfer,
        from: &Account,
        amount: i64,
        destination: PartitionId,
        out: &mut ApplyOutput,
    ) -> ResultCode {
        if from.currency != t.currency {
            return ResultCode::CurrencyMismatch;
        }
        if from.is_frozen() {
            return ResultCode::FromAccountFrozen;
        }
        let balance = match from.balance.checked_sub(amount) {
            Some(b) if b >= from.floor => b,
            _ => return ResultCode::InsufficientFunds,
        };
        let Some(held) = from.held.checked_add(amount) else {
            return ResultCode::Overflow;
        };
        if let Some(a) = self.accounts.get_mut(t.from) {
            a.balance = balance;
            a.held = held;
        }
        let record = TccRecord {
            transfer: *t,
            destination,
            phase: tcc::phase::TRYING,
            destination_try: DEST_PENDING,
            final_code: ResultCode::Pending as u8,
            cancel_acked: false,
        };
        self.tcc.insert(t.id, record);
        out.emit(Event::TccTried(*t));
        out.outbox.push((
            destination,
            TccMessage::about(tcc::kind::TRY, self.partition, t),
        ));
        ResultCode::Pending
    }

    /// Applies one TC/C message (either side).
    fn apply_tcc(&mut self, m: &TccMessage, timestamp: u64, out: &mut ApplyOutput) {
        // `source` came over the network (another node's link) and names where the answer
        // goes: a partition this cluster does not have is refused here, deterministically,
        // before anything is addressed to it.
        if m.source >= self.partition_count {
            out.emit(Event::TccIgnored {
                id: m.id,
                kind: m.kind,
            });
            return;
        }
        match m.kind {
            tcc::kind::TRY => self.tcc_try(m, out),
            tcc::kind::CONFIRM => self.tcc_confirm(m, timestamp, out),
            tcc::kind::CANCEL => self.tcc_cancel(m, out),
            tcc::kind::TRY_RESULT => self.tcc_try_result(m, timestamp, out),
            tcc::kind::ABORT => {
                if self
                    .tcc
                    .get(&m.id)
                    .is_some_and(|r| r.phase == tcc::phase::TRYING)
                {
                    self.tcc_decide_cancel(m.id, ResultCode::TccTimeout, timestamp, out);
                }
            }
            tcc::kind::CONFIRM_ACK => self.tcc_confirm_ack(m, timestamp, out),
            tcc::kind::CANCEL_ACK => {
                if let Some(r) = self.tcc.get_mut(&m.id) {
                    if r.phase == tcc::phase::CANCELLED {
                        r.cancel_acked = true;
                    }
                }
            }
            _ => out.emit(Event::TccIgnored {
                id: m.id,
                kind: m.kind,
            }),
        }
    }

    /// Destination, step 2: validate `to` and reserve room for the credit. Idempotent.
    fn tcc_try(&mut self, m: &TccMessage, out: &mut ApplyOutput) {
        let code = match self.participants.get(&(m.source, m.id)) {
            Some(p) => match p.state {
                tcc::participant::TRIED | tcc::participant::CONFIRMED => ResultCode::Ok,
                tcc::participant::FAILED => {
                    ResultCode::from_u8(p.code).unwrap_or(ResultCode::TccCancelled)
                }
                _ => ResultCode::TccCancelled, // cancelled before (or after) this Try arrived
            },
            None => {
                let code = self.check_destination(m);
                let amount = m.amount as i64; // the source checked it fits
                if code == ResultCode::Ok {
                    if let Some(a) = self.accounts.get_mut(m.to) {
                        a.incoming += amount;
                    }
                }
                let state = if code == ResultCode::Ok {
                    tcc::participant::TRIED
                } else {
                    tcc::participant::FAILED
                };
                self.participants.insert(
                    (m.source, m.id),
                    TccParticipant {
                        id: m.id,
                        source: m.source,
                        to: m.to,
                        amount: m.amount,
                        state,
                        code: code as u8,
                        out_of_order: false,
                    },
                );
                out.emit(Event::TccParticipantTried { id: m.id, code });
                code
            }
        };
        let mut reply = *m;
        reply.kind = tcc::kind::TRY_RESULT;
        reply.code = code as u8;
        out.outbox.push((m.source, reply));
    }

    fn check_destination(&self, m: &TccMessage) -> ResultCode {
        if partition_of(m.to, self.partition_count) != self.partition {
            return ResultCode::WrongPartition;
        }
        let Some(to) = self.accounts.get(m.to) else {
            return ResultCode::ToAccountNotFound;
        };
        if to.currency != m.currency {
            return ResultCode::CurrencyMismatch;
        }
        if to.is_frozen() {
            return ResultCode::ToAccountFrozen;
        }
        let room = i64::try_from(m.amount).is_ok_and(|amount| to.has_room_for(amount));
        if !room {
            return ResultCode::Overflow;
        }
        ResultCode::Ok
    }

    /// Destination, step 3 (confirm): credit `to`. Idempotent.
    fn tcc_confirm(&mut self, m: &TccMessage, timestamp: u64, out: &mut ApplyOutput) {
        let Some(p) = self.participants.get_mut(&(m.source, m.id)) else {
            out.emit(Event::TccIgnored {
                id: m.id,
                kind: m.kind,
            });
            return;
        };
        match p.state {
            tcc::participant::TRIED => {
                p.state = tcc::participant::CONFIRMED;
                let amount = p.amount as i64;
                if let Some(a) = self.accounts.get_mut(p.to) {
                    // Every credit since the Try left room for this one (`has_room_for`).
                    a.incoming -= amount;
                    a.balance += amount;
                }
                out.emit(Event::TccCredited {
                    id: m.id,
                    from: m.from,
                    to: m.to,
                    amount: m.amount,
                    timestamp,
                });
            }
            tcc::participant::CONFIRMED => {}
            _ => {
                // The source only confirms after this side's Try succeeded.
                out.emit(Event::TccIgnored {
                    id: m.id,
                    kind: m.kind,
                });
                return;
            }
        }
        let mut ack = *m;
        ack.kind = tcc::kind::CONFIRM_ACK;
        out.outbox.push((m.source, ack));
    }

    /// Destination, step 3 (cancel): forget the reservation; before the Try, leave a marker.
    /// Acknowledged, so the source stops re-sending it.
    fn tcc_cancel(&mut self, m: &TccMessage, out: &mut ApplyOutput) {
        if self
            .participants
            .get(&(m.source, m.id))
            .is_some_and(|p| p.state == tcc::participant::CONFIRMED)
        {
            // The source only cancels before a confirm; nothing to undo here.
            out.emit(Event::TccIgnored {
                id: m.id,
                kind: m.kind,
            });
            return;
        }
        let mut ack = *m;
        ack.kind = tcc::kind::CANCEL_ACK;
        out.outbox.push((m.source, ack));
        match self.participants.get_mut(&(m.source, m.id)) {
            Some(p) => match p.state {
                tcc::participant::TRIED => {
                    p.state = tcc::participant::CANCELLED;
                    let amount = p.amount as i64;
                    if let Some(a) = self.accounts.get_mut(p.to) {
                        a.incoming -= amount;
                    }
                }
                tcc::participant::FAILED => p.state = tcc::participant::CANCELLED,
                _ => {}
            },
            None => {
                self.participants.insert(
                    (m.source, m.id),
                    TccParticipant {
                        id: m.id,
                        source: m.source,
                        to: m.to,
                        amount: m.amount,
                        state: tcc::participant::CANCELLED,
                        code: ResultCode::TccCancelled as u8,
                        out_of_order: true,
                    },
                );
                out.emit(Event::TccCancelledBeforeTry { id: m.id });
            }
        }
    }

    /// Source: the destination's verdict decides Confirm or Cancel (once).
    fn tcc_try_result(&mut self, m: &TccMessage, timestamp: u64, out: &mut ApplyOutput) {
        let Some(record) = self.tcc.get_mut(&m.id) else {
            return; // already confirmed and filed: a duplicate
        };
        if record.phase != tcc::phase::TRYING {
            return; // decided already (duplicate, or aborted before the verdict came)
        }
        record.destination_try = m.code;
        if m.code == ResultCode::Ok as u8 {
            record.phase = tcc::phase::CONFIRMING;
            let t = record.transfer;
            // The decision is the outcome: the client hears `ok` once this entry is durable;
            // the destination's credit is guaranteed (re-driven until acknowledged).
            out.resolved.push((t.id, ResultCode::Ok));
            out.outbox.push((
                record.destination,
                TccMessage::about(tcc::kind::CONFIRM, self.partition, &t),
            ));
        } else {
            let code = ResultCode::from_u8(m.code).unwrap_or(ResultCode::TccCancelled);
            self.tcc_decide_cancel(m.id, code, timestamp, out);
        }
    }

    /// Source: refund the hold, file the final code, tell the destination.
    fn tcc_decide_cancel(
        &mut self,
        id: TransferId,
        code: ResultCode,
        timestamp: u64,
        out: &mut ApplyOutput,
    ) {
        let Some(record) = self.tcc.get_mut(&id) else {
            return;
        };
        record.phase = tcc::phase::CANCELLED;
        record.final_code = code as u8;
        let t = record.transfer;
        let destination = record.destination;
        let amount = t.amount as i64;
        if let Some(a) = self.accounts.get_mut(t.from) {
            a.held -= amount;
            a.balance += amount;
        }
        out.emit(Event::TccCancelled {
            id,
            from: t.from,
            to: t.to,
            amount: t.amount,
            code,
            timestamp,
        });
        out.outbox.push((
            destination,
            TccMessage::about(tcc::kind::CANCEL, self.partition, &t),
        ));
        out.resolved.push((id, code));
    }

    /// Source, last step: the credit is done; release the hold and file the transfer.
    fn tcc_confirm_ack(&mut self, m: &TccMessage, _timestamp: u64, out: &mut ApplyOutput) {
        if self.tcc.get(&m.id).map(|r| r.phase) != Some(tcc::phase::CONFIRMING) {
            return; // a duplicate ack
        }
        let Some(record) = self.tcc.remove(&m.id) else {
            return;
        };
        let t = record.transfer;
        if let Some(a) = self.accounts.get_mut(t.from) {
            a.held -= t.amount as i64;
        }
        self.transfers.push(t);
        out.emit(Event::TransferApplied(t));
    }

    /// Messages that move every unfinished TC/C of this partition forward: after a restart or
    /// a lost message. Safe to send any number of times.
    pub fn tcc_redrive(&self) -> Vec<(PartitionId, TccMessage)> {
        let mut records: Vec<&TccRecord> = self.tcc.values().filter(|r| !r.cancel_acked).collect();
        records.sort_unstable_by_key(|r| r.transfer.id);
        records
            .into_iter()
            .map(|r| {
                let kind = match r.phase {
                    tcc::phase::TRYING => tcc::kind::TRY,
                    tcc::phase::CONFIRMING => tcc::kind::CONFIRM,
                    _ => tcc::kind::CANCEL,
                };
                (
                    r.destination,
                    TccMessage::about(kind, self.partition, &r.transfer),
                )
            })
            .collect()
    }

    /// TC/C transfers started here with work left: Trying, Confirming, or cancelled without
    /// the destination's acknowledgement yet.
    pub fn tcc_in_flight(&self) -> usize {
        self.tcc.values().filter(|r| !r.cancel_acked).count()
    }

    /// The phase-status record of a TC/C that started here (in flight or cancelled).
    pub fn tcc_record(&self, id: TransferId) -> Option<&TccRecord> {
        self.tcc.get(&id)
    }

    /// Records in id order (digests, snapshots).
    pub fn tcc_records_sorted(&self) -> Vec<TccRecord> {
        let mut v: Vec<TccRecord> = self.tcc.values().copied().collect();
        v.sort_unstable_by_key(|r| r.transfer.id);
        v
    }

    pub fn participants_sorted(&self) -> Vec<TccParticipant> {
        let mut v: Vec<TccParticipant> = self.participants.values().copied().collect();
        // By id, then source: the order of the digest and of snapshots.
        v.sort_unstable_by_key(|p| (p.id, p.source));
        v
    }

    /// Sum of `balance + held` per currency, in currency order.
    pub fn totals_by_currency(&self) -> Vec<(Currency, i128)> {
        let mut totals: std::collections::BTreeMap<Currency, i128> = Default::default();
        for a in self.accounts.values() {
            *totals.entry(a.currency).or_default() += a.balance as i128 + a.held as i128;
        }
        totals.into_iter().collect()
    }

    /// Accounts whose balance is below their floor (must always be 0).
    pub fn accounts_below_floor(&self) -> usize {
        self.accounts
            .values()
            .filter(|a| a.balance < a.floor)
            .count()
    }

    /// Restores a partition from snapshot parts (used by `snapshot::load`).
    pub(crate) fn from_parts(
        meta: &crate::snapshot::SnapshotMeta,
        parts: StateParts,
    ) -> PartitionState {
        let StateParts {
            accounts,
            transfers,
            tcc_records,
            participants,
        } = parts;
        let (partition, partition_count) = (meta.partition, meta.partition_count);
        let (last_index, last_timestamp) = (meta.last_index, meta.last_timestamp);
        let mut map = AccountTable::with_capacity(accounts.len());
        for a in accounts {
            map.insert(a);
        }
        PartitionState {
            partition,
            partition_count,
            accounts: map,
            transfers,
            tcc: table_of(tcc_records, |r| r.transfer.id),
            participants: table_of(participants, |p| (p.source, p.id)),
            last_index,
            last_timestamp,
        }
    }
}

/// A destination's participant records are per (source partition, transfer id).
pub(crate) type ParticipantKey = (PartitionId, TransferId);

fn table_of<K: std::hash::Hash + Eq, V>(records: Vec<V>, key: impl Fn(&V) -> K) -> Table<K, V> {
    let mut table = prefault::table_with_capacity(records.len());
    for record in records {
        table.insert(key(&record), record);
    }
    table
}

/// The collections of a partition's state, as a snapshot stores them.
pub(crate) struct StateParts {
    pub accounts: Vec<Account>,
    pub transfers: TransferStore,
    pub tcc_records: Vec<TccRecord>,
    pub participants: Vec<TccParticipant>,
}

/// Same transfer content (everything but the timestamp).
fn same_fields(a: &Transfer, b: &Transfer) -> bool {
    a.from == b.from
        && a.to == b.to
        && a.amount == b.amount
        && a.currency == b.currency
        && a.user_data == b.user_data
}
