//! Positions: one `u64` per event that orders the events of a partition.
//!
//! `position = entry_index << 16 | ordinal`, where `ordinal` is the event's place among the
//! events of its log entry. An item emits at most one event and the writers keep entries
//! below 65,535 items (`BATCH_ITEMS_MAX` in local mode, for client batches and, cut by
//! `tcc::take_entry`, the TC/C messages of a group alike; `entry_items_max` in Raft mode), so
//! 16 bits are enough. Positions come from the log alone (entry index + the deterministic
//! events of `apply_entry`), so they are the same after a restart and on every replica.

/// Bits of a position that hold the event's ordinal within its entry.
pub const ORDINAL_BITS: u32 = 16;
/// Largest ordinal a position can carry.
pub const ORDINAL_MAX: u64 = (1 << ORDINAL_BITS) - 1;

/// The position of the `ordinal`-th event of log entry `entry_index`.
pub fn position(entry_index: u64, ordinal: usize) -> u64 {
    debug_assert!(entry_index < 1 << (64 - ORDINAL_BITS));
    debug_assert!(ordinal as u64 <= ORDINAL_MAX);
    entry_index << ORDINAL_BITS | (ordinal as u64).min(ORDINAL_MAX)
}

/// The position just after every event of entry `entry_index` (its last possible ordinal):
/// the state "as of the end of" that entry.
pub fn end_of_entry(entry_index: u64) -> u64 {
    entry_index << ORDINAL_BITS | ORDINAL_MAX
}

/// The log entry a position belongs to.
pub fn entry_of(position: u64) -> u64 {
    position >> ORDINAL_BITS
}

/// The event's ordinal within its entry.
pub fn ordinal_of(position: u64) -> u64 {
    position & ORDINAL_MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_orders() {
        let p = position(7, 8189);
        assert_eq!(entry_of(p), 7);
        assert_eq!(ordinal_of(p), 8189);
        assert!(position(7, 8189) < position(8, 0));
        assert!(position(7, 8189) < end_of_entry(7));
        assert!(end_of_entry(7) < position(8, 0));
    }
}
