//! Which partition owns an account. The function is part of the on-disk format: changing it
//! would move accounts between partitions, so it is fixed forever (tested against constants).

use crate::model::AccountId;

/// Index of a partition within a cluster (`0..partition_count`).
pub type PartitionId = u32;

/// The partition that owns `account`: a stable 64-bit mix of the id, reduced modulo the count.
pub fn partition_of(account: AccountId, partition_count: u32) -> PartitionId {
    assert!(partition_count > 0, "a cluster has at least one partition");
    let folded = (account as u64) ^ mix64((account >> 64) as u64);
    (mix64(folded) % partition_count as u64) as PartitionId
}

/// SplitMix64's finalizer: cheap, and every input bit affects every output bit.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_frozen() {
        // These constants pin the on-disk meaning of the partition function.
        let got: Vec<u32> = (1u128..=8).map(|id| partition_of(id, 7)).collect();
        assert_eq!(got, FROZEN_1_TO_8_MOD_7);
        assert_eq!(partition_of(u128::MAX - 1, 1), 0);
    }

    const FROZEN_1_TO_8_MOD_7: [u32; 8] = [6, 1, 4, 6, 2, 4, 2, 6];

    #[test]
    fn spreads_sequential_ids_evenly() {
        let mut counts = [0u32; 4];
        for id in 1u128..=40_000 {
            counts[partition_of(id, 4) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }
}
