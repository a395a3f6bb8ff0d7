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
//! An index sized once for a known number of transfers (`with_fixed_capacity`: an offline
//! replay) of at most 16 Mi slots uses `u32` slots instead: a position needs only
//! `log2(slots)` bits there (a position is below the count, and the count below the slots),
//! which leaves a tag of 8 bits or more. A tag matches by chance one probe in 256 or fewer,
//! and a match costs one read of the store; half the table costs far more on a VM, where
//! every fresh page is a host fault (64 MiB per 6.5M transfers).
//!
//! Entries are never removed: linear probing, no tombstones, 0 = empty. The index doubles a
//! few slots per insert (`MIGRATE_SLOTS_PER_INSERT`), never all at once.

use crate::id_hash::{mix, prefetch_lines, process_seed};
use crate::prefault::{self, Prefaulted, ZeroIsValid};
use allocator_api2::vec::Vec as AllocVec;

/// Positions this index can hold: 2^40 - 1 per partition.
pub const POSITIONS_MAX: u64 = (1 << WIDE_POSITION_BITS) - 1;

/// Position bits of a `u64` slot; the other 24 are the tag.
const WIDE_POSITION_BITS: u32 = 40;

/// Fewest tag bits a `u32` slot keeps (else the index uses `u64` slots).
const NARROW_TAG_BITS_MIN: u32 = 8;

/// The index doubles before it is more than three quarters full. A slot is 8 bytes, so the
/// ~8 slots an insert probes on average at that load are one or two cache lines.
const LOAD_NUMERATOR: usize = 3;
const LOAD_DENOMINATOR: usize = 4;

/// An index sized once for a known number of entries (`with_fixed_capacity`) may fill up to
/// seven eighths: probes get longer only near the end, and for a replay of millions of
/// transfers, the difference is a table of half the size (64 MiB less fresh memory per 6.5M
/// transfers), which costs the replay more than the probes.
const FIXED_LOAD_NUMERATOR: usize = 7;
const FIXED_LOAD_DENOMINATOR: usize = 8;

/// Bytes `prefetch` brings in from the home slot on (one or two cache lines): 8 wide slots,
/// what a probe for a new id reads on average at a growing index's highest load (3/4: linear
/// probing's `(1 + 1 / (1 - load)^2) / 2` = 8.5), or 16 narrow ones (a fixed-capacity index
/// of 6.5M transfers ends at 0.78: 11 slots). A replay measured 64 and 128 bytes alike.
const PREFETCH_BYTES: usize = 64;

/// Slots in the smallest index.
const SLOTS_MIN: usize = 1024;

/// Old slots moved into the new table per insert while the index doubles. The old table
/// holds at most 7/8 of its `S` slots; moving `S` slots at 4 per insert ends after `S / 4`
/// inserts, when the new table (`2S` slots) holds at most `9S / 8`: below its own 3/4
/// threshold (`3S / 2`), so a doubling never starts while one is running.
const MIGRATE_SLOTS_PER_INSERT: usize = 4;

#[derive(Clone)]
pub struct TransferIndex {
    /// Receives every insert.
    table: Table,
    /// While the index doubles: the previous table and the next of its slots to move. Every
    /// entry not moved yet is still there, so a lookup that misses `table` asks it too.
    /// Growing a step per insert instead of all at once keeps the partition answering: a
    /// one-go rehash of 12 Mi entries stalled it for about a second.
    old: Option<(Table, usize)>,
    /// The table of the next doubling, reserved at 5/8 load so that the prefault thread has
    /// made it resident by the time it is needed at 3/4: the inserts of a doubling land at
    /// random places all over it, and faulting its pages in on the shard (a huge page zeroed
    /// per fault) stalled the partition for 0.1-0.5 s.
    reserved: Option<Table>,
    len: usize,
    /// The length at which `table` doubles.
    grow_at: usize,
    /// The length at which the next table is reserved.
    reserve_at: usize,
}

/// One open-addressing table, of `u64` slots or (sized once, small enough) `u32` ones.
#[derive(Clone)]
enum Table {
    Wide(Slots<u64>),
    Narrow(Slots<u32>),
}

/// One open-addressing table of slots.
#[derive(Clone)]
struct Slots<W> {
    /// A power-of-two number of slots: `tag << position_bits | (position + 1)`, 0 when empty.
    slots: AllocVec<W, Prefaulted>,
    position_bits: u32,
    /// `64 - log2(slots)`: the home slot is the top bits of the hash, the tag its low bits.
    shift: u32,
    seed: u64,
}

/// The integer a slot is.
trait SlotWord: ZeroIsValid + Eq {
    const BITS: u32;
    fn to_u64(self) -> u64;
    /// `entry` fits (`Slots::place` built it for this width).
    fn from_u64(entry: u64) -> Self;
}

impl SlotWord for u64 {
    const BITS: u32 = 64;
    fn to_u64(self) -> u64 {
        self
    }
    fn from_u64(entry: u64) -> Self {
        entry
    }
}

impl SlotWord for u32 {
    const BITS: u32 = 32;
    fn to_u64(self) -> u64 {
        u64::from(self)
    }
    fn from_u64(entry: u64) -> Self {
        entry as u32
    }
}

impl Default for TransferIndex {
    fn default() -> Self {
        TransferIndex::with_capacity(0)
    }
}

impl TransferIndex {
    /// An index that holds `transfers` entries without growing.
    pub fn with_capacity(transfers: usize) -> TransferIndex {
        let slots = slots_for(transfers, LOAD_NUMERATOR, LOAD_DENOMINATOR);
        TransferIndex {
            table: Table::wide(slots, process_seed()),
            old: None,
            reserved: None,
            len: 0,
            grow_at: slots * LOAD_NUMERATOR / LOAD_DENOMINATOR,
            reserve_at: slots * 5 / 8,
        }
    }

    /// An index for at most `transfers` entries, packed denser than one that grows (see
    /// `FIXED_LOAD_NUMERATOR`). Past `transfers` it still grows as usual, only later.
    pub fn with_fixed_capacity(transfers: usize) -> TransferIndex {
        let slots = slots_for(transfers, FIXED_LOAD_NUMERATOR, FIXED_LOAD_DENOMINATOR);
        let grow_at = slots * FIXED_LOAD_NUMERATOR / FIXED_LOAD_DENOMINATOR;
        let position_bits = slots.trailing_zeros();
        let table = if position_bits + NARROW_TAG_BITS_MIN <= u32::BITS {
            Table::Narrow(Slots::new(slots, position_bits, process_seed()))
        } else {
            Table::wide(slots, process_seed())
        };
        TransferIndex {
            table,
            old: None,
            reserved: None,
            len: 0,
            grow_at,
            // Nothing is reserved while the promised capacity holds.
            reserve_at: transfers.min(grow_at),
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
        self.table.find(id, &id_at).or_else(|| {
            let (old, _) = self.old.as_ref()?;
            old.find(id, &id_at)
        })
    }

    /// Records `id` at `position`. The caller knows `id` is not in the index; `id_at` reads
    /// the id of any position already indexed (needed when the index grows).
    pub fn insert(&mut self, id: u128, position: u64, id_at: impl Fn(u64) -> u128) {
        assert!(
            position < POSITIONS_MAX,
            "a partition holds at most 2^40 transfers"
        );
        let slots = self.table.slots();
        if self.old.is_some() {
            self.migrate_step(&id_at);
        } else if self.len + 1 > self.grow_at {
            let bigger = self
                .reserved
                .take()
                .unwrap_or_else(|| Table::wide(slots * 2, self.table.seed()));
            self.old = Some((std::mem::replace(&mut self.table, bigger), 0));
            self.grow_at = slots * 2 * LOAD_NUMERATOR / LOAD_DENOMINATOR;
            self.reserve_at = slots * 2 * 5 / 8;
            self.migrate_step(&id_at);
        } else if self.reserved.is_none() && self.len + 1 > self.reserve_at {
            self.reserved = Some(Table::wide(slots * 2, self.table.seed()));
        }
        assert!(self.len < self.grow_at, "the index grows before it fills");
        self.table.place(id, position);
        self.len += 1;
    }

    /// Asks the CPU to bring the slots a probe for `id` reads first into cache (the first
    /// `PREFETCH_BYTES` from its home slot on) without waiting for them.
    #[inline]
    pub fn prefetch(&self, id: u128) {
        self.table.prefetch(id);
        if let Some((old, _)) = &self.old {
            old.prefetch(id);
        }
    }

    /// Moves the next `MIGRATE_SLOTS_PER_INSERT` slots of the old table into the new one, and
    /// drops the old table after its last slot.
    fn migrate_step(&mut self, id_at: &impl Fn(u64) -> u128) {
        let Some((old, next)) = &mut self.old else {
            return;
        };
        let end = (*next + MIGRATE_SLOTS_PER_INSERT).min(old.slots());
        for slot in *next..end {
            if let Some(position) = old.position_at(slot) {
                self.table.place(id_at(position), position);
            }
        }
        *next = end;
        if end == old.slots() {
            self.old = None;
        }
    }
}

impl Table {
    /// A table of `u64` slots (positions up to `POSITIONS_MAX`): every index that grows.
    fn wide(slots: usize, seed: u64) -> Table {
        Table::Wide(Slots::new(slots, WIDE_POSITION_BITS, seed))
    }

    fn slots(&self) -> usize {
        match self {
            Table::Wide(t) => t.slots.len(),
            Table::Narrow(t) => t.slots.len(),
        }
    }

    fn seed(&self) -> u64 {
        match self {
            Table::Wide(t) => t.seed,
            Table::Narrow(t) => t.seed,
        }
    }

    fn find(&self, id: u128, id_at: &impl Fn(u64) -> u128) -> Option<u64> {
        match self {
            Table::Wide(t) => t.find(id, id_at),
            Table::Narrow(t) => t.find(id, id_at),
        }
    }

    fn place(&mut self, id: u128, position: u64) {
        match self {
            Table::Wide(t) => t.place(id, position),
            Table::Narrow(t) => t.place(id, position),
        }
    }

    #[inline]
    fn prefetch(&self, id: u128) {
        match self {
            Table::Wide(t) => t.prefetch(id),
            Table::Narrow(t) => t.prefetch(id),
        }
    }

    /// The position filed in `slot`, if any.
    fn position_at(&self, slot: usize) -> Option<u64> {
        match self {
            Table::Wide(t) => t.position_at(slot),
            Table::Narrow(t) => t.position_at(slot),
        }
    }
}

impl<W: SlotWord> Slots<W> {
    fn new(slots: usize, position_bits: u32, seed: u64) -> Slots<W> {
        assert!(slots.is_power_of_two() && slots >= SLOTS_MIN);
        // Every position below the slot count fits (`position + 1` too: the count stays
        // below the slots), with a tag beside it.
        assert!(position_bits >= slots.trailing_zeros() && position_bits < W::BITS);
        Slots {
            slots: prefault::zeroed_vec(slots),
            position_bits,
            shift: 64 - slots.trailing_zeros(),
            seed,
        }
    }

    fn find(&self, id: u128, id_at: &impl Fn(u64) -> u128) -> Option<u64> {
        let (mut slot, tag) = self.home_and_tag(id);
        let mask = self.slots.len() - 1;
        loop {
            let entry = self.slots[slot].to_u64();
            if entry == 0 {
                return None;
            }
            if entry >> self.position_bits == tag {
                let position = self.position_of(entry);
                if id_at(position) == id {
                    return Some(position);
                }
            }
            slot = (slot + 1) & mask;
        }
    }

    fn place(&mut self, id: u128, position: u64) {
        assert!(
            position + 1 < 1 << self.position_bits,
            "a position fits its slot"
        );
        let (mut slot, tag) = self.home_and_tag(id);
        let mask = self.slots.len() - 1;
        while self.slots[slot].to_u64() != 0 {
            slot = (slot + 1) & mask;
        }
        self.slots[slot] = W::from_u64(tag << self.position_bits | (position + 1));
    }

    #[inline]
    fn prefetch(&self, id: u128) {
        let (slot, _) = self.home_and_tag(id);
        prefetch_lines((&self.slots[slot] as *const W).cast(), PREFETCH_BYTES);
    }

    fn position_at(&self, slot: usize) -> Option<u64> {
        let entry = self.slots[slot].to_u64();
        (entry != 0).then(|| self.position_of(entry))
    }

    fn position_of(&self, entry: u64) -> u64 {
        (entry & ((1 << self.position_bits) - 1)) - 1
    }

    #[inline]
    fn home_and_tag(&self, id: u128) -> (usize, u64) {
        let hash = mix(id, self.seed);
        let tag_mask = (1 << (W::BITS - self.position_bits)) - 1;
        ((hash >> self.shift) as usize, hash & tag_mask)
    }
}

/// Room for `transfers` at a load of at most `numerator / denominator`.
fn slots_for(transfers: usize, numerator: usize, denominator: usize) -> usize {
    (transfers.saturating_mul(denominator) / numerator + 1)
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
        assert!(index.table.slots() * 3 >= 4 * ids.len());
        for (position, &id) in ids.iter().enumerate() {
            index.prefetch(id);
            assert_eq!(index.find(id, |p| ids[p as usize]), Some(position as u64));
        }
        assert_eq!(index.find(u128::MAX - 1, |p| ids[p as usize]), None);
    }

    #[test]
    fn doubling_moves_a_few_slots_per_insert_and_ends_before_the_next() {
        let ids: Vec<u128> = (1..=5000u128).map(|i| i * 7919).collect();
        let mut index = TransferIndex::default();
        // Inserts made while each doubling ran, with the old table's slot count.
        let mut doublings: Vec<(usize, usize)> = Vec::new();
        for (position, &id) in ids.iter().enumerate() {
            let was_moving = index.old.is_some();
            index.insert(id, position as u64, |p| ids[p as usize]);
            match &index.old {
                Some((old, _)) if !was_moving => doublings.push((old.slots(), 1)),
                Some(_) => doublings.last_mut().expect("running").1 += 1,
                None => {}
            }
            // Mid-doubling too, every id inserted so far is found (old or new table).
            for p in (0..=position).step_by(97) {
                assert_eq!(index.find(ids[p], |q| ids[q as usize]), Some(p as u64));
            }
        }
        assert_eq!(
            index.old.as_ref().map(|_| ()),
            None,
            "the last doubling finished"
        );
        // 1024 -> 2048 -> 4096 -> 8192 slots.
        assert_eq!(
            doublings.iter().map(|d| d.0).collect::<Vec<_>>(),
            [1024, 2048, 4096]
        );
        for (old_slots, inserts) in doublings {
            assert!(
                inserts < old_slots / MIGRATE_SLOTS_PER_INSERT,
                "{old_slots}: {inserts}"
            );
        }
    }

    #[test]
    fn a_fixed_capacity_index_packs_denser_and_still_grows_past_it() {
        let ids: Vec<u128> = (1..=20_000u128).map(|i| i * 104_729).collect();
        let mut index = TransferIndex::with_fixed_capacity(7_000);
        // 7,000 at 3/4 would need 16 Ki slots; at 7/8, 8 Ki, of 4 bytes each.
        assert_eq!(index.table.slots(), 8 * 1024);
        assert!(matches!(index.table, Table::Narrow(_)));
        for (position, &id) in ids.iter().enumerate() {
            index.insert(id, position as u64, |p| ids[p as usize]);
            if position < 7_000 {
                assert!(
                    index.old.is_none() && index.reserved.is_none(),
                    "{position}"
                );
            }
        }
        assert!(index.table.slots() > 8 * 1024, "grew past the promise");
        assert!(matches!(index.table, Table::Wide(_)));
        for (position, &id) in ids.iter().enumerate() {
            assert_eq!(index.find(id, |p| ids[p as usize]), Some(position as u64));
        }
        assert_eq!(index.find(3, |p| ids[p as usize]), None);
    }

    #[test]
    fn a_tag_match_is_confirmed_against_the_stored_id() {
        // Every stored id reads back as something else: nothing may be found.
        for mut index in [
            TransferIndex::default(),
            TransferIndex::with_fixed_capacity(100),
        ] {
            for position in 0..100u64 {
                index.insert(position as u128 + 1, position, |p| p as u128 + 1);
            }
            assert_eq!(index.find(5, |_| 0), None);
            assert_eq!(index.find(5, |p| p as u128 + 1), Some(4));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// Against a std map, with ids from a narrow range (repeats) or anywhere, across
        /// several doublings: the store is a plain Vec of ids, as the transfer store is.
        #[test]
        fn behaves_like_a_map(
            ids in proptest::collection::vec(
                proptest::prop_oneof![0u128..3000, 0u128..u128::MAX], 1..4000),
            fixed_capacity in proptest::option::of(0usize..5000),
        ) {
            // A fixed capacity below the ids' count grows from `u32` slots to `u64` ones.
            let mut index = fixed_capacity.map_or_else(TransferIndex::default, TransferIndex::with_fixed_capacity);
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
