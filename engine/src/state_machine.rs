//! The deterministic state machine of one partition.
//!
//! `apply_entry(kind, body, timestamp)` turns one logged command batch into per-item result
//! codes and events. It reads no clock, draws no randomness and never lets hash-map order reach
//! its output: the same log always yields the same state, bit for bit (see `digest`). The live
//! path and replay both call it on the archived bytes that are (or were) in the log.
//!
//! Item `i` of an entry with timestamp `T` gets timestamp `T + i`; the shard chooses `T` above
//! every timestamp already used, so timestamps are unique and increase within a partition.

use crate::command::{entry_kind, ArchivedNewAccount, ArchivedNewTransfer, NewAccount};
use crate::event::Event;
use crate::model::{account_flags, is_valid_id, Account, AccountId, Currency, Transfer};
use crate::partition::{partition_of, PartitionId};
use crate::result_code::ResultCode;
use crate::transfer_store::TransferStore;
use hashbrown::HashMap;
use rkyv::vec::ArchivedVec;

/// Why a log entry could not be applied at all (as opposed to an item being rejected).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("unknown log entry kind {0}")]
    UnknownKind(u16),
    #[error("log entry body is not a valid archive of its kind: {0}")]
    InvalidArchive(String),
    #[error("entry timestamp {entry} is not above the last applied timestamp {last}")]
    TimestampNotMonotonic { entry: u64, last: u64 },
}

/// The whole state of one partition.
#[derive(Clone)]
pub struct PartitionState {
    pub(crate) partition: PartitionId,
    pub(crate) partition_count: u32,
    pub(crate) accounts: HashMap<AccountId, Account>,
    pub(crate) transfers: TransferStore,
    /// Index of the last applied log entry (0 = none).
    pub(crate) last_index: u64,
    /// Highest item timestamp used so far (0 = none).
    pub(crate) last_timestamp: u64,
}

impl PartitionState {
    pub fn new(partition: PartitionId, partition_count: u32) -> PartitionState {
        assert!(partition < partition_count);
        PartitionState {
            partition,
            partition_count,
            accounts: HashMap::new(),
            transfers: TransferStore::default(),
            last_index: 0,
            last_timestamp: 0,
        }
    }

    /// Pre-sizes the idempotency index so the hot path does not rehash while it grows.
    pub fn reserve_transfers(&mut self, additional: usize) {
        let mut bigger = TransferStore::with_capacity(self.transfers.len() + additional);
        for transfer in self.transfers.iter() {
            bigger.push(*transfer);
        }
        self.transfers = bigger;
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
        self.accounts.get(&id)
    }
    pub fn transfer(&self, id: u128) -> Option<&Transfer> {
        self.transfers.get(id)
    }
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }
    pub fn transfer_count(&self) -> usize {
        self.transfers.len()
    }
    /// Accounts in id order (deterministic, for digests, snapshots and tests).
    pub fn accounts_sorted(&self) -> Vec<Account> {
        let mut accounts: Vec<Account> = self.accounts.values().copied().collect();
        accounts.sort_unstable_by_key(|a| a.id);
        accounts
    }
    pub fn transfers(&self) -> impl Iterator<Item = &Transfer> {
        self.transfers.iter()
    }

    /// The smallest timestamp the next entry may use: above every timestamp used so far.
    pub fn next_timestamp_floor(&self) -> u64 {
        self.last_timestamp + 1
    }

    /// Applies log entry `index` (kind + archived body) at `timestamp`, appending one result per
    /// item to `results` and the derived events to `events`.
    pub fn apply_entry(
        &mut self,
        index: u64,
        kind: u16,
        body: &[u8],
        timestamp: u64,
        results: &mut Vec<ResultCode>,
        events: &mut Vec<Event>,
    ) -> Result<(), ApplyError> {
        assert_eq!(index, self.last_index + 1, "entries apply in index order");
        if timestamp <= self.last_timestamp {
            return Err(ApplyError::TimestampNotMonotonic {
                entry: timestamp,
                last: self.last_timestamp,
            });
        }
        match kind {
            entry_kind::CREATE_ACCOUNTS => {
                let items =
                    rkyv::access::<ArchivedVec<ArchivedNewAccount>, rkyv::rancor::Error>(body)
                        .map_err(|e| ApplyError::InvalidArchive(e.to_string()))?;
                for (i, item) in items.iter().enumerate() {
                    let code = self.create_account(item, timestamp + i as u64, events);
                    results.push(code);
                }
                self.advance(index, timestamp, items.len());
            }
            entry_kind::CREATE_TRANSFERS => {
                let items =
                    rkyv::access::<ArchivedVec<ArchivedNewTransfer>, rkyv::rancor::Error>(body)
                        .map_err(|e| ApplyError::InvalidArchive(e.to_string()))?;
                for (i, item) in items.iter().enumerate() {
                    let code = self.create_transfer(item, timestamp + i as u64, events);
                    results.push(code);
                }
                self.advance(index, timestamp, items.len());
            }
            other => return Err(ApplyError::UnknownKind(other)),
        }
        Ok(())
    }

    fn advance(&mut self, index: u64, timestamp: u64, items: usize) {
        self.last_index = index;
        // An empty entry still consumes its timestamp so the next one is strictly above it.
        self.last_timestamp = timestamp + items.max(1) as u64 - 1;
    }

    fn create_account(
        &mut self,
        item: &ArchivedNewAccount,
        timestamp: u64,
        events: &mut Vec<Event>,
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
                floor: new.floor,
                user_data: new.user_data,
                timestamp,
            };
            self.accounts.insert(new.id, account);
            events.push(Event::AccountCreated(account));
        } else {
            events.push(Event::AccountRejected { id: new.id, code });
        }
        code
    }

    fn check_new_account(&self, new: &NewAccount) -> ResultCode {
        if !is_valid_id(new.id) {
            return ResultCode::IdInvalid;
        }
        if let Some(existing) = self.accounts.get(&new.id) {
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
        events: &mut Vec<Event>,
    ) -> ResultCode {
        let transfer = Transfer {
            id: item.id.to_native(),
            from: item.from.to_native(),
            to: item.to.to_native(),
            amount: item.amount.to_native(),
            currency: item.currency.to_native(),
            user_data: item.user_data.to_native(),
            timestamp,
        };
        let code = self.try_transfer(&transfer);
        if code == ResultCode::Ok {
            self.transfers.push(transfer);
            events.push(Event::TransferApplied(transfer));
        } else {
            events.push(Event::TransferRejected {
                id: transfer.id,
                code,
                timestamp,
            });
        }
        code
    }

    /// Validates and, when everything holds, moves the money. Check order is part of the
    /// contract (the first failing check names the result).
    fn try_transfer(&mut self, t: &Transfer) -> ResultCode {
        if !is_valid_id(t.id) {
            return ResultCode::IdInvalid;
        }
        if let Some(existing) = self.transfers.get(t.id) {
            let same = existing.from == t.from
                && existing.to == t.to
                && existing.amount == t.amount
                && existing.currency == t.currency
                && existing.user_data == t.user_data;
            return if same {
                ResultCode::Exists
            } else {
                ResultCode::ExistsWithDifferentFields
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
        let Some(from) = self.accounts.get(&t.from).copied() else {
            return ResultCode::FromAccountNotFound;
        };
        if partition_of(t.to, self.partition_count) != self.partition {
            return ResultCode::CrossPartitionUnsupported;
        }
        let Some(to) = self.accounts.get(&t.to).copied() else {
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
        let Some(to_balance) = to.balance.checked_add(amount) else {
            return ResultCode::Overflow;
        };
        // Both lookups succeeded above and ids differ, so these entries exist.
        if let Some(a) = self.accounts.get_mut(&t.from) {
            a.balance = from_balance;
        }
        if let Some(a) = self.accounts.get_mut(&t.to) {
            a.balance = to_balance;
        }
        ResultCode::Ok
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
        partition: PartitionId,
        partition_count: u32,
        accounts: Vec<Account>,
        transfers: TransferStore,
        last_index: u64,
        last_timestamp: u64,
    ) -> PartitionState {
        let mut map = HashMap::with_capacity(accounts.len());
        for a in accounts {
            map.insert(a.id, a);
        }
        PartitionState {
            partition,
            partition_count,
            accounts: map,
            transfers,
            last_index,
            last_timestamp,
        }
    }
}
