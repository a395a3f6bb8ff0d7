//! Measures the state machine alone (no log, no runtime): transfers/s of same-partition
//! transfers and of cross-partition transfers carried through every TC/C step in memory.
//! `cargo run --release -p walletd-engine --example apply_cost`

use engine::command::{CommandBatch, NewAccount, NewTransfer};
use engine::model::Currency;
use engine::partition::partition_of;
use engine::state_machine::{ApplyOutput, PartitionState};
use std::time::Instant;

const ACCOUNTS: u128 = 1_000_000;
const BATCH: usize = 8190;

fn main() {
    let eur = Currency::parse("EUR").unwrap();
    for cross in [false, true] {
        let mut states: Vec<PartitionState> = (0..2).map(|p| PartitionState::new(p, 2)).collect();
        let mut ts = [1u64, 1u64];
        let mut index = [0u64, 0u64];
        let mut out = ApplyOutput::default();
        let mut body = rkyv::util::AlignedVec::<16>::new();
        let mut apply = |states: &mut Vec<PartitionState>,
                         p: usize,
                         batch: CommandBatch,
                         out: &mut ApplyOutput| {
            batch.encode_into(&mut body);
            index[p] += 1;
            ts[p] = ts[p].max(states[p].next_timestamp_floor()) + 1;
            out.clear();
            states[p]
                .apply_entry(index[p], batch.kind(), &body, ts[p], out)
                .unwrap();
        };
        let mut by_partition: [Vec<u128>; 2] = [Vec::new(), Vec::new()];
        for id in 1..=ACCOUNTS {
            by_partition[partition_of(id, 2) as usize].push(id);
        }
        for (p, ids) in by_partition.iter().enumerate() {
            for chunk in ids.chunks(BATCH) {
                let accounts = chunk
                    .iter()
                    .map(|&id| NewAccount {
                        id,
                        currency: eur,
                        flags: 0,
                        floor: if id == chunk[0] { -1 << 40 } else { 0 },
                        user_data: 0,
                    })
                    .collect();
                apply(
                    &mut states,
                    p,
                    CommandBatch::CreateAccounts(accounts),
                    &mut out,
                );
            }
        }
        // Fund every account from the first (issuer) account of its partition's first chunk.
        let mut id = 1u128 << 64;
        for (p, ids) in by_partition.iter().enumerate() {
            let issuer = ids[0];
            for chunk in ids[1..].chunks(BATCH) {
                let t = chunk
                    .iter()
                    .map(|&to| {
                        id += 1;
                        NewTransfer {
                            id,
                            from: issuer,
                            to,
                            amount: 1 << 20,
                            currency: eur,
                            user_data: 0,
                        }
                    })
                    .collect();
                apply(&mut states, p, CommandBatch::CreateTransfers(t), &mut out);
            }
        }
        let mut rng = fastrand::Rng::with_seed(7);
        let batches = 200;
        let started = Instant::now();
        let cpu_started = thread_cpu_ns();
        let mut ok = 0usize;
        for b in 0..batches {
            let p = b % 2;
            let q = if cross { 1 - p } else { p };
            let t: Vec<NewTransfer> = (0..BATCH)
                .map(|_| {
                    id += 1;
                    let from = by_partition[p][1 + rng.usize(..by_partition[p].len() - 1)];
                    let mut to = by_partition[q][1 + rng.usize(..by_partition[q].len() - 1)];
                    if to == from {
                        to = by_partition[q][0];
                    }
                    NewTransfer {
                        id,
                        from,
                        to,
                        amount: 1,
                        currency: eur,
                        user_data: 0,
                    }
                })
                .collect();
            apply(&mut states, p, CommandBatch::CreateTransfers(t), &mut out);
            // Carry the TC/C messages to completion, one entry per hop.
            let mut messages: Vec<(u32, engine::tcc::TccMessage)> = out.outbox.drain(..).collect();
            ok += out
                .results
                .iter()
                .filter(|c| **c == engine::ResultCode::Ok)
                .count();
            while !messages.is_empty() {
                let mut next = Vec::new();
                for dest in 0..2u32 {
                    let batch: Vec<_> = messages
                        .iter()
                        .filter(|(d, _)| *d == dest)
                        .map(|(_, m)| *m)
                        .collect();
                    if batch.is_empty() {
                        continue;
                    }
                    apply(
                        &mut states,
                        dest as usize,
                        CommandBatch::Tcc(batch),
                        &mut out,
                    );
                    ok += out
                        .resolved
                        .iter()
                        .filter(|(_, c)| *c == engine::ResultCode::Ok)
                        .count();
                    next.append(&mut out.outbox);
                }
                messages = next;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu_ns_per_transfer = (thread_cpu_ns() - cpu_started) as f64 / (batches * BATCH) as f64;
        println!(
            "{}: {} ok of {} in {:.2} s = {:.0} transfers/s (one thread); \
             {cpu_ns_per_transfer:.0} ns of thread CPU per transfer (batch generation included)",
            if cross {
                "cross-partition"
            } else {
                "same-partition"
            },
            ok,
            batches * BATCH,
            seconds,
            (batches * BATCH) as f64 / seconds
        );
    }
}

/// CPU time of this thread: unlike wall time, not inflated when other work shares the cores.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
