//! The accounts of a partition: an insert-only open-addressing table built to be prefetched.
//!
//! A transfer reads and writes two accounts picked at random from millions, so each lookup is
//! a cache miss, and the apply pass would wait for them one after another. Batching hides that
//! only if the CPU can start the misses of many items before it needs the first result. A
//! general hash map cannot be prefetched from outside (its control bytes and its slots live in
//! two places, and the slot is known only after the control bytes arrived). Here the account
//! sits in its home slot (or the next few), so `prefetch` can request its lines for a whole
//! window of items without waiting for any of them; the apply pass then finds them in cache.
//!
//! Accounts are never removed, so probing is plain linear probing with no tombstones, and the
//! empty slot is the one whose id is 0 (never a valid account id). The hash is seeded per
//! process (ids are client-chosen; a fixed hash would let a client pile ids into one run).
//! Nothing observable depends on the slot order: every output sorts by id or sums.

use crate::id_hash::{mix, prefetch_lines, probe, process_seed};
use crate::model::{is_valid_id, Account, AccountId};
use crate::prefault::{self, Prefaulted, ZeroIsValid};
use allocator_api2::vec::Vec as AllocVec;

/// Slots in the smallest table.
const SLOTS_MIN: usize = 1024;

/// The table doubles before it is more than half full: linear probing then finds an account
/// within ~1.5 slots on average, and a miss (an unknown id) within ~2.5.
const LOAD_NUMERATOR: usize = 1;
const LOAD_DENOMINATOR: usize = 2;

/// Slots `prefetch` brings in from the home slot on.
const PREFETCH_SLOTS: usize = 2;

// SAFETY: every field of an account is an integer (the currency a `u32`); all zero is the
// empty slot.
unsafe impl ZeroIsValid for Account {}

#[derive(Clone)]
pub struct AccountTable {
    /// A power-of-two number of slots.
    slots: AllocVec<Account, Prefaulted>,
    len: usize,
    /// `64 - log2(slots)`: the home slot is the top bits of the hash.
    shift: u32,
    seed: u64,
}

impl Default for AccountTable {
    fn default() -> Self {
        AccountTable::with_capacity(0)
    }
}

impl std::fmt::Debug for AccountTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountTable")
            .field("len", &self.len)
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl AccountTable {
    /// A table that holds `accounts` accounts without growing.
    pub fn with_capacity(accounts: usize) -> AccountTable {
        AccountTable::with_slots(slots_for(accounts), process_seed())
    }

    fn with_slots(slots: usize, seed: u64) -> AccountTable {
        assert!(slots.is_power_of_two() && slots >= SLOTS_MIN);
        AccountTable {
            slots: prefault::zeroed_vec(slots),
            len: 0,
            shift: 64 - slots.trailing_zeros(),
            seed,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, id: AccountId) -> Option<&Account> {
        self.find(id).map(|slot| &self.slots[slot])
    }

    pub fn get_mut(&mut self, id: AccountId) -> Option<&mut Account> {
        self.find(id).map(|slot| &mut self.slots[slot])
    }

    /// Adds an account whose id is valid and not in the table yet (the state machine and the
    /// snapshot loader check both first).
    pub fn insert(&mut self, account: Account) {
        assert!(
            is_valid_id(account.id),
            "account ids are valid in the table"
        );
        if (self.len + 1) * LOAD_DENOMINATOR > self.slots.len() * LOAD_NUMERATOR {
            self.grow();
        }
        let Err(empty) = self.probe(account.id) else {
            panic!("an account is inserted once");
        };
        self.slots[empty] = account;
        self.len += 1;
    }

    /// `id`'s slot, or the empty slot where it would go (`id_hash::probe`).
    #[inline]
    fn probe(&self, id: AccountId) -> Result<usize, usize> {
        probe(self.slots.len(), self.home(id), id, |slot| {
            self.slots[slot].id
        })
    }

    /// Every account, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &Account> {
        self.slots.iter().filter(|a| a.id != 0)
    }

    /// Asks the CPU to bring `id`'s home slot and the one after it into cache without waiting
    /// for them. Changes nothing. At the table's load (up to 1/2), about a third of the
    /// accounts sit past their home slot, nearly all of them in the next one: fetching only
    /// the home slot left that many lookups to miss on the apply pass (69 % of a replay's
    /// time in `get` waited on the second probe).
    #[inline]
    pub fn prefetch(&self, id: AccountId) {
        let slot = &self.slots[self.home(id)] as *const Account as *const u8;
        // Past the last slot the probe wraps to the first: a prefetch there is wasted, never
        // a fault (`prefetch_lines` only hints).
        prefetch_lines(slot, PREFETCH_SLOTS * std::mem::size_of::<Account>());
    }

    fn find(&self, id: AccountId) -> Option<usize> {
        if id == 0 {
            return None;
        }
        self.probe(id).ok()
    }

    #[inline]
    fn home(&self, id: AccountId) -> usize {
        (mix(id, self.seed) >> self.shift) as usize
    }

    /// Makes room for `additional` more accounts at once, so inserting them never doubles the
    /// table (each doubling rehashes and faults in a new table).
    pub fn reserve(&mut self, additional: usize) {
        let slots = slots_for(self.len + additional);
        if slots > self.slots.len() {
            let mut bigger = AccountTable::with_slots(slots, self.seed);
            for account in self.values() {
                bigger.insert(*account);
            }
            *self = bigger;
        }
    }

    fn grow(&mut self) {
        let mut bigger = AccountTable::with_slots(self.slots.len() * 2, self.seed);
        for account in self.values() {
            bigger.insert(*account);
        }
        *self = bigger;
    }
}

fn slots_for(accounts: usize) -> usize {
    (accounts * LOAD_DENOMINATOR / LOAD_NUMERATOR + 1)
        .next_power_of_two()
        .max(SLOTS_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: Account = Account::ZERO;

    fn account(id: AccountId) -> Account {
        Account {
            id,
            balance: id as i64,
            ..EMPTY
        }
    }

    #[test]
    fn finds_what_was_inserted_across_growth_and_nothing_else() {
        let mut table = AccountTable::default();
        // Sequential ids, ids differing only in their high half, and scattered ones.
        let ids: Vec<u128> = (1..5000u128)
            .chain((1..5000u128).map(|i| i << 64))
            .chain((1..5000u128).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)))
            .collect();
        for &id in &ids {
            table.insert(account(id));
        }
        assert_eq!(table.len(), ids.len());
        assert!(table.slots.len() >= 2 * ids.len());
        for &id in &ids {
            assert_eq!(table.get(id).map(|a| a.balance), Some(id as i64));
            table.prefetch(id);
        }
        assert!(table.get(0).is_none());
        assert!(table.get(u128::MAX - 7).is_none());
        assert_eq!(table.values().count(), ids.len());
    }

    #[test]
    fn get_mut_changes_the_stored_account() {
        let mut table = AccountTable::with_capacity(10);
        table.insert(account(42));
        table.get_mut(42).expect("present").balance = -5;
        assert_eq!(table.get(42).map(|a| a.balance), Some(-5));
        assert!(table.get_mut(43).is_none());
    }

    #[test]
    #[should_panic(expected = "inserted once")]
    fn a_second_insert_of_an_id_is_a_bug() {
        let mut table = AccountTable::default();
        table.insert(account(7));
        table.insert(account(7));
    }

    #[test]
    fn clones_are_independent() {
        let mut table = AccountTable::default();
        table.insert(account(1));
        let copy = table.clone();
        table.get_mut(1).expect("present").balance = 99;
        assert_eq!(copy.get(1).map(|a| a.balance), Some(1));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// Against a std map: ids from a narrow range (many repeats) or anywhere, across
        /// several doublings; every id reads back as the model says, and so do absent ones.
        #[test]
        fn behaves_like_a_map(
            ids in proptest::collection::vec(
                proptest::prop_oneof![1u128..3000, 1u128..u128::MAX], 1..4000),
        ) {
            let mut table = AccountTable::default();
            let mut model = std::collections::HashMap::new();
            for (i, &id) in ids.iter().enumerate() {
                if let std::collections::hash_map::Entry::Vacant(slot) = model.entry(id) {
                    table.insert(Account { id, balance: i as i64, ..EMPTY });
                    slot.insert(i as i64);
                }
                proptest::prop_assert_eq!(table.len(), model.len());
            }
            for id in ids.iter().copied().chain(3000..3100) {
                proptest::prop_assert_eq!(table.get(id).map(|a| a.balance), model.get(&id).copied());
            }
            proptest::prop_assert_eq!(table.values().count(), model.len());
        }
    }
}
