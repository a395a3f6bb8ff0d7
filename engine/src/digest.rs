//! A 128-bit digest of a partition's state: equal digests mean equal state, bit for bit.
//! Accounts are hashed in id order and transfers in log order, so hash-map order never leaks.

use crate::state_machine::PartitionState;
use xxhash_rust::xxh3::Xxh3;

pub fn state_digest(state: &PartitionState) -> u128 {
    let mut h = Xxh3::new();
    h.update(&state.partition().to_le_bytes());
    h.update(&state.partition_count().to_le_bytes());
    h.update(&state.last_index().to_le_bytes());
    h.update(&state.last_timestamp().to_le_bytes());
    for a in state.accounts_sorted() {
        h.update(&a.id.to_le_bytes());
        h.update(&a.currency.0.to_le_bytes());
        h.update(&a.flags.to_le_bytes());
        h.update(&a.balance.to_le_bytes());
        h.update(&a.held.to_le_bytes());
        h.update(&a.incoming.to_le_bytes());
        h.update(&a.floor.to_le_bytes());
        h.update(&a.user_data.to_le_bytes());
        h.update(&a.timestamp.to_le_bytes());
    }
    for t in state.transfers() {
        h.update(&t.id.to_le_bytes());
        h.update(&t.from.to_le_bytes());
        h.update(&t.to.to_le_bytes());
        h.update(&t.amount.to_le_bytes());
        h.update(&t.currency.0.to_le_bytes());
        h.update(&t.user_data.to_le_bytes());
        h.update(&t.timestamp.to_le_bytes());
    }
    for r in state.tcc_records_sorted() {
        h.update(&r.transfer.id.to_le_bytes());
        h.update(&r.transfer.from.to_le_bytes());
        h.update(&r.transfer.to.to_le_bytes());
        h.update(&r.transfer.amount.to_le_bytes());
        h.update(&r.transfer.timestamp.to_le_bytes());
        h.update(&[
            r.phase,
            r.destination_try,
            r.final_code,
            r.cancel_acked as u8,
        ]);
        h.update(&r.destination.to_le_bytes());
    }
    for p in state.participants_sorted() {
        h.update(&p.id.to_le_bytes());
        h.update(&p.to.to_le_bytes());
        h.update(&p.amount.to_le_bytes());
        h.update(&[p.state, p.code, p.out_of_order as u8]);
        h.update(&p.source.to_le_bytes());
    }
    h.digest128()
}

/// Combines per-partition digests (in partition order) into one node digest.
pub fn combine_digests(digests: &[u128]) -> u128 {
    let mut h = Xxh3::new();
    for d in digests {
        h.update(&d.to_le_bytes());
    }
    h.digest128()
}
