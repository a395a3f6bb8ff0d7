//! Hashing, probing and prefetching shared by the partition's prefetchable tables
//! (`account_table`, `transfer_index`, the read model's `accounts`).

/// A 64-bit hash of a 128-bit id whose top bits depend on every bit of the id (a folded
/// multiply of the two halves, each mixed with the seed).
#[inline]
pub fn mix(id: u128, seed: u64) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let lo = (id as u64) ^ seed;
    let hi = ((id >> 64) as u64) ^ seed.rotate_left(32) ^ K;
    let product = (lo as u128).wrapping_mul(hi as u128);
    let folded = (product as u64) ^ ((product >> 64) as u64);
    // A second round so that ids differing only in high bits still spread.
    let product = (folded as u128).wrapping_mul(K as u128);
    (product as u64) ^ ((product >> 64) as u64)
}

/// Linear probing as the account tables do it (`account_table`, `read_model::accounts`): from
/// slot `home` of a table of `slots` slots (a power of two) in which slot `i` holds the id
/// `id_at(i)` (0: empty), `Ok(the slot that holds id)`, or `Err(the first empty slot)`, where
/// an insert puts it (as `binary_search` answers). The table always has an empty slot (its
/// load factor is below 1), so the probe ends.
#[inline]
pub fn probe(
    slots: usize,
    home: usize,
    id: u128,
    id_at: impl Fn(usize) -> u128,
) -> Result<usize, usize> {
    debug_assert!(slots.is_power_of_two() && home < slots);
    debug_assert_ne!(id, 0, "0 marks an empty slot");
    let mask = slots - 1;
    let mut slot = home;
    loop {
        let occupant = id_at(slot);
        if occupant == id {
            return Ok(slot);
        }
        if occupant == 0 {
            return Err(slot);
        }
        slot = (slot + 1) & mask;
    }
}

/// One random seed per process, drawn from the standard library's hash-map keys.
pub fn process_seed() -> u64 {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1)
}

/// Prefetches every cache line of `[start, start + bytes)` for reading and writing.
#[inline]
pub fn prefetch_lines(start: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for offset in line_offsets(bytes) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: prefetching is a hint that never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset) as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (start, bytes);
    }
}

/// Offsets into a range of `bytes` bytes, one in each cache line the range starts in or
/// crosses, wherever it starts: every 64 bytes from its first byte, and its last byte.
#[inline]
fn line_offsets(bytes: usize) -> impl Iterator<Item = usize> {
    const LINE_BYTES: usize = 64;
    let last = bytes.max(1) - 1;
    (0..last).step_by(LINE_BYTES).chain(std::iter::once(last))
}

#[cfg(test)]
mod tests {
    use super::{line_offsets, probe};

    #[test]
    fn a_probe_wraps_around_and_stops_at_the_first_empty_slot() {
        // Slots 6, 7, 0 hold a run that started at home 6; slot 1 is empty.
        let table: [u128; 8] = [30, 0, 5, 0, 0, 0, 10, 20];
        let at = |i: usize| table[i];
        assert_eq!(probe(8, 6, 10, at), Ok(6));
        assert_eq!(probe(8, 6, 20, at), Ok(7));
        assert_eq!(probe(8, 6, 30, at), Ok(0), "found past the wrap");
        assert_eq!(
            probe(8, 6, 40, at),
            Err(1),
            "the run ends at slot 1: the place for 40"
        );
        assert_eq!(probe(8, 2, 5, at), Ok(2));
        assert_eq!(
            probe(8, 3, 5, at),
            Err(3),
            "an empty home slot ends the probe at once"
        );
    }

    #[test]
    fn line_offsets_touch_every_line_of_the_range() {
        for start in 0..200usize {
            for bytes in 1..400usize {
                let touched: std::collections::BTreeSet<usize> =
                    line_offsets(bytes).map(|o| (start + o) / 64).collect();
                let expected: std::collections::BTreeSet<usize> =
                    (start / 64..=(start + bytes - 1) / 64).collect();
                assert_eq!(touched, expected, "start {start} bytes {bytes}");
                assert!(line_offsets(bytes).all(|o| o < bytes));
            }
        }
    }
}
