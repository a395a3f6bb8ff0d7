//! Hashing and prefetching shared by the partition's prefetchable tables (`account_table`,
//! `transfer_index`).

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
    use super::line_offsets;

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
