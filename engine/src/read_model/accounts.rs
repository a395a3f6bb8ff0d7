//! The read model's accounts, laid out so that a window of events can fetch them ahead.
//!
//! Each event changes one or two accounts picked at random from millions, so every lookup is
//! a cache miss. In a general hash map a lookup is two misses in series (the control bytes,
//! then the slot they point to) and cannot be started from outside; a profile of a three-node
//! run had three quarters of the read model's time waiting in those lookups, and the read
//! model was the largest user of the shards' CPU. Here an id's home slot is known from its
//! hash alone: `prefetch_slot` asks for it without waiting, then `prefetch_history` (the slot is
//! in cache by then) asks for the account's history, so the misses of a whole window overlap.
//!
//! Two arrays: small slots (id, index) in an open-addressing table with linear probing, and
//! the histories in insertion order. Accounts are never removed, so there are no tombstones;
//! id 0 (never a valid account id) marks an empty slot. The hash is seeded per process (ids
//! are client-chosen). Nothing observable depends on the slot order: queries go by id.

use super::history::AccountHistory;
use crate::id_hash::{mix, prefetch_lines, probe, process_seed};
use crate::model::AccountId;
use crate::prefault::{self, Prefaulted, ZeroIsValid};
use allocator_api2::vec::Vec as AllocVec;

/// Slots in the smallest table.
const SLOTS_MIN: usize = 1024;

/// Slots `prefetch_slot` brings in from the home slot on (at a load of at most 1/2, nearly
/// every id sits in its home slot or the next).
const PREFETCH_SLOTS: usize = 2;

/// One slot: an account id and where its history is.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct Slot {
    id: AccountId,
    history: u32,
}

// SAFETY: both fields are integers; all zero is the empty slot.
unsafe impl ZeroIsValid for Slot {}

#[derive(Clone)]
pub(crate) struct Accounts {
    /// A power-of-two number of slots, at most half full.
    slots: AllocVec<Slot, Prefaulted>,
    histories: AllocVec<AccountHistory, Prefaulted>,
    /// `64 - log2(slots)`: the home slot is the top bits of the hash.
    shift: u32,
    seed: u64,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts::with_slots(SLOTS_MIN, process_seed())
    }
}

impl Accounts {
    fn with_slots(slots: usize, seed: u64) -> Accounts {
        assert!(slots.is_power_of_two() && slots >= SLOTS_MIN);
        Accounts {
            slots: prefault::zeroed_vec(slots),
            histories: AllocVec::new_in(Prefaulted),
            shift: 64 - slots.trailing_zeros(),
            seed,
        }
    }

    pub fn get(&self, id: AccountId) -> Option<&AccountHistory> {
        let slot = self.find(id)?;
        Some(&self.histories[self.slots[slot].history as usize])
    }

    pub fn get_mut(&mut self, id: AccountId) -> Option<&mut AccountHistory> {
        let slot = self.find(id)?;
        Some(&mut self.histories[self.slots[slot].history as usize])
    }

    /// Adds `id`'s history, or replaces it when `id` is already there.
    pub fn insert(&mut self, id: AccountId, history: AccountHistory) {
        assert_ne!(id, 0, "account ids are valid in the read model");
        if let Some(slot) = self.find(id) {
            self.histories[self.slots[slot].history as usize] = history;
            return;
        }
        if (self.histories.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let index = u32::try_from(self.histories.len()).expect("fewer than 2^32 accounts");
        self.histories.push(history);
        self.place(Slot { id, history: index });
    }

    /// Asks the CPU for `id`'s home slot (and the next) without waiting. Changes nothing.
    #[inline]
    pub fn prefetch_slot(&self, id: AccountId) {
        let slot = &self.slots[self.home(id)] as *const Slot as *const u8;
        // Past the last slot the probe wraps to the first: a prefetch there is wasted, never
        // a fault (`prefetch_lines` only hints).
        prefetch_lines(slot, PREFETCH_SLOTS * std::mem::size_of::<Slot>());
    }

    /// Asks the CPU for `id`'s history (its slot should be in cache already, see
    /// `prefetch_slot`). Changes nothing.
    #[inline]
    pub fn prefetch_history(&self, id: AccountId) {
        if let Some(slot) = self.find(id) {
            let history = &self.histories[self.slots[slot].history as usize];
            prefetch_lines(
                history as *const AccountHistory as *const u8,
                std::mem::size_of::<AccountHistory>(),
            );
        }
    }

    fn find(&self, id: AccountId) -> Option<usize> {
        if id == 0 {
            return None;
        }
        self.probe(id).ok()
    }

    /// Puts `entry` in the first free slot from its home on (its id is not in the table).
    fn place(&mut self, entry: Slot) {
        let Err(empty) = self.probe(entry.id) else {
            panic!("an account is placed once");
        };
        self.slots[empty] = entry;
    }

    /// `id`'s slot, or the empty slot where it would go (`id_hash::probe`).
    #[inline]
    fn probe(&self, id: AccountId) -> Result<usize, usize> {
        probe(self.slots.len(), self.home(id), id, |slot| {
            self.slots[slot].id
        })
    }

    #[inline]
    fn home(&self, id: AccountId) -> usize {
        (mix(id, self.seed) >> self.shift) as usize
    }

    /// Doubles the slots; the histories stay where they are.
    fn grow(&mut self) {
        let slots = self.slots.len() * 2;
        let old = std::mem::replace(&mut self.slots, prefault::zeroed_vec(slots));
        self.shift = 64 - slots.trailing_zeros();
        for entry in old.iter().filter(|s| s.id != 0) {
            self.place(*entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Currency;
    use std::collections::HashMap;

    fn history(n: u64) -> AccountHistory {
        AccountHistory::created(Currency(0), n, n)
    }

    #[test]
    fn finds_what_was_inserted_across_growth_and_nothing_else() {
        let mut accounts = Accounts::default();
        let mut expected = HashMap::new();
        // Ids that differ in high bits only, and more than the smallest table holds.
        for n in 1..5_000u64 {
            let id = (u128::from(n) << 64) | u128::from(n % 7);
            accounts.insert(id, history(n));
            expected.insert(id, n);
        }
        for (id, n) in &expected {
            let found = accounts.get(*id).expect("inserted");
            assert_eq!(found.created_timestamp, *n);
            accounts.prefetch_slot(*id);
            accounts.prefetch_history(*id);
        }
        assert!(accounts.get(0).is_none());
        assert!(accounts.get(12345).is_none());
        assert!(accounts.slots.len() >= 2 * expected.len());
    }

    #[test]
    fn a_second_insert_replaces_and_get_mut_changes() {
        let mut accounts = Accounts::default();
        accounts.insert(9, history(1));
        accounts.insert(9, history(2));
        assert_eq!(accounts.histories.len(), 1);
        assert_eq!(accounts.get(9).map(|h| h.created_timestamp), Some(2));
        accounts.get_mut(9).expect("present").balance = 77;
        assert_eq!(accounts.get(9).map(|h| h.balance), Some(77));
    }
}
