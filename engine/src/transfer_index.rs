//! The idempotency index of a partition: transfer id -> position in the transfer store.
//!
//! Every transfer asks it once ("was this id applied already?") and then inserts into it, at a
//! random place among millions of entries, so it is built like `account_table` to be
//! prefetched a window of items ahead. It is also the biggest table of a partition, so a slot
//! is one `u64`: the position (40 bits, a trillion transfers per partition) and a 24-bit tag
//! from the id's hash. The id itself stays in the store; a probe compares tags and reads the
//! store only when a tag matches (for a new id, one time in 16 million), so memory per
//! transfer is at most 21 bytes (at the lowest load after a doubling) instead of 48 in a
//! general map.
//!
//! Entries are never removed: linear probing, no tombstones, 0 = empty.

use crate::id_hash::{mix, prefetch_lines, process_seed};
use crate::prefault::{self, Prefaulted};
use allocator_api2::vec::Vec as AllocVec;

/// Positions this index can hold: 2^40 - 1 per partition.
pub const POSITIONS_MAX: u64 = (1 << POSITION_BITS) - 1;

const POSITION_BITS: u32 = 40;
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;
const TAG_MASK: u64 = (1 << (64 - POSITION_BITS)) - 1;

/// The index doubles before it is more than three quarters full. A slot is 8 bytes, so the
/// ~8 slots an insert probes on average at that load are one or two cache lines.
const LOAD_NUMERATOR: usize = 3;
const LOAD_DENOMINATOR: usize = 4;

/// Slots in the smallest index.
const SLOTS_MIN: usize = 1024;

#[derive(Clone)]
pub struct TransferIndex {
    /// A power-of-two number of slots: `tag << 40 | (position + 1)`, or 0 when empty.
    slots: AllocVec<u64, Prefaulted>,
    len: usize,
    /// `64 - log2(slots)`: the home slot is the top bits of the hash, the tag its low bits.
    shift: u32,
    seed: u64,
}

impl Default for TransferIndex {
    fn default() -> Self {
        TransferIndex::with_capacity(0)
    }
}

impl TransferIndex {
    /// An index that holds `transfers` entries without growing.
    pub fn with_capacity(transfers: usize) -> TransferIndex {
        TransferIndex::with_slots(slots_for(transfers), process_seed())
    }

    fn with_slots(slots: usize, seed: u64) -> TransferIndex {
        assert!(slots.is_power_of_two() && slots >= SLOTS_MIN);
        TransferIndex {
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

    /// The position of `id`; `id_at(position)` reads a stored id to confirm a tag match.
    pub fn find(&self, id: u128, id_at: impl Fn(u64) -> u128) -> Option<u64> {
        let (mut slot, tag) = self.home_and_tag(id);
        let mask = self.slots.len() - 1;
        loop {
            let entry = self.slots[slot];
            if entry == 0 {
                return None;
            }
            if entry >> POSITION_BITS == tag {
                let position = (entry & POSITION_MASK) - 1;
                if id_at(position) == id {
                    return Some(position);
                }
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Records `id` at `position`. The caller knows `id` is not in the index; `id_at` reads
    /// the id of any position already indexed (needed when the index grows).
    pub fn insert(&mut self, id: u128, position: u64, id_at: impl Fn(u64) -> u128) {
        assert!(
            position < POSITIONS_MAX,
            "a partition holds at most 2^40 transfers"
        );
        if (self.len + 1) * LOAD_DENOMINATOR > self.slots.len() * LOAD_NUMERATOR {
            self.grow(&id_at);
        }
        self.place(id, position);
    }

    /// Asks the CPU to bring `id`'s home slot into cache without waiting for it.
    #[inline]
    pub fn prefetch(&self, id: u128) {
        let (slot, _) = self.home_and_tag(id);
        prefetch_lines((&self.slots[slot] as *const u64).cast(), 8);
    }

    fn place(&mut self, id: u128, position: u64) {
        let (mut slot, tag) = self.home_and_tag(id);
        let mask = self.slots.len() - 1;
        while self.slots[slot] != 0 {
            slot = (slot + 1) & mask;
        }
        self.slots[slot] = tag << POSITION_BITS | (position + 1);
        self.len += 1;
    }

    #[inline]
    fn home_and_tag(&self, id: u128) -> (usize, u64) {
        let hash = mix(id, self.seed);
        ((hash >> self.shift) as usize, hash & TAG_MASK)
    }

    fn grow(&mut self, id_at: &impl Fn(u64) -> u128) {
        let mut bigger = TransferIndex::with_slots(self.slots.len() * 2, self.seed);
        for &entry in self.slots.iter().filter(|e| **e != 0) {
            let position = (entry & POSITION_MASK) - 1;
            bigger.place(id_at(position), position);
        }
        *self = bigger;
    }
}

/// Room for `transfers` without growing.
fn slots_for(transfers: usize) -> usize {
    (transfers * LOAD_DENOMINATOR / LOAD_NUMERATOR + 1)
        .next_power_of_two()
        .max(SLOTS_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_position_across_growth_and_nothing_else() {
        let ids: Vec<u128> = (1..20_000u128)
            .map(|i| if i % 2 == 0 { i } else { i << 64 | 3 })
            .collect();
        let mut index = TransferIndex::default();
        for (position, &id) in ids.iter().enumerate() {
            assert_eq!(index.find(id, |p| ids[p as usize]), None);
            index.insert(id, position as u64, |p| ids[p as usize]);
        }
        assert_eq!(index.len(), ids.len());
        assert!(index.slots.len() * 3 >= 4 * ids.len());
        for (position, &id) in ids.iter().enumerate() {
            index.prefetch(id);
            assert_eq!(index.find(id, |p| ids[p as usize]), Some(position as u64));
        }
        assert_eq!(index.find(u128::MAX - 1, |p| ids[p as usize]), None);
    }

    #[test]
    fn a_tag_match_is_confirmed_against_the_stored_id() {
        // Every stored id reads back as something else: nothing may be found.
        let mut index = TransferIndex::default();
        for position in 0..100u64 {
            index.insert(position as u128 + 1, position, |p| p as u128 + 1);
        }
        assert_eq!(index.find(5, |_| 0), None);
        assert_eq!(index.find(5, |p| p as u128 + 1), Some(4));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// Against a std map, with ids from a narrow range (repeats) or anywhere, across
        /// several doublings: the store is a plain Vec of ids, as the transfer store is.
        #[test]
        fn behaves_like_a_map(
            ids in proptest::collection::vec(
                proptest::prop_oneof![0u128..3000, 0u128..u128::MAX], 1..4000),
        ) {
            let mut index = TransferIndex::default();
            let mut store: Vec<u128> = Vec::new();
            let mut model = std::collections::HashMap::new();
            for &id in &ids {
                let found = index.find(id, |p| store[p as usize]);
                proptest::prop_assert_eq!(found, model.get(&id).copied());
                if found.is_none() {
                    let position = store.len() as u64;
                    store.push(id);
                    index.insert(id, position, |p| store[p as usize]);
                    model.insert(id, position);
                }
            }
            proptest::prop_assert_eq!(index.len(), model.len());
            for id in ids.iter().copied().chain(3000..3100) {
                proptest::prop_assert_eq!(index.find(id, |p| store[p as usize]), model.get(&id).copied());
            }
        }
    }
}
