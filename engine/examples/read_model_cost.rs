//! What feeding the read model costs next to `apply_entry`: same-partition transfers between
//! random accounts, the read model keeping `HISTORY` entries per account. Prints ns per
//! transfer for each part, while the histories fill and once they are full (steady state).
//! `cargo run --release -p walletd-engine --example read_model_cost`

use engine::command::{CommandBatch, NewAccount, NewTransfer};
use engine::model::Currency;
use engine::read_model::ReadModel;
use engine::state_machine::{ApplyOutput, PartitionState};
use std::time::{Duration, Instant};

const ACCOUNTS: u128 = 20_000;
/// Per phase: enough for every history to fill in the first.
const TRANSFERS: usize = 1_500_000;
const BATCH: usize = 8190;
const HISTORY: usize = 100;

fn main() {
    let eur = Currency::parse("EUR").unwrap();
    let mut state = PartitionState::new(0, 1);
    let mut model = ReadModel::new(0, 1, HISTORY);
    let mut out = ApplyOutput::default();
    let mut body = rkyv::util::AlignedVec::<16>::new();
    let (mut index, mut ts) = (0u64, 1u64);
    let mut in_apply = [Duration::ZERO; 2];
    let mut in_model = [Duration::ZERO; 2];
    let mut step = |batch: CommandBatch, phase: Option<usize>| {
        batch.encode_into(&mut body);
        index += 1;
        ts = ts.max(state.next_timestamp_floor()) + 1;
        out.clear();
        let t = Instant::now();
        state
            .apply_entry(index, batch.kind(), &body, ts, &mut out)
            .unwrap();
        let applied = t.elapsed();
        let t = Instant::now();
        model.apply(index, ts, &out.events);
        if let Some(phase) = phase {
            in_apply[phase] += applied;
            in_model[phase] += t.elapsed();
        }
    };
    let ids: Vec<u128> = (1..=ACCOUNTS).collect();
    for chunk in ids.chunks(BATCH) {
        let accounts = chunk
            .iter()
            .map(|&id| NewAccount {
                id,
                currency: eur,
                flags: 0,
                floor: if id == 1 { -1 << 50 } else { 0 },
                user_data: 0,
            })
            .collect();
        step(CommandBatch::CreateAccounts(accounts), None);
    }
    let mut id = 1u128 << 64;
    for chunk in ids[1..].chunks(BATCH) {
        let deposits = chunk
            .iter()
            .map(|&to| {
                id += 1;
                NewTransfer {
                    id,
                    from: 1,
                    to,
                    amount: 1 << 30,
                    currency: eur,
                    user_data: 0,
                }
            })
            .collect();
        step(CommandBatch::CreateTransfers(deposits), None);
    }
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..2 * (TRANSFERS / BATCH) {
        let transfers = (0..BATCH)
            .map(|_| {
                id += 1;
                let from = rng.u128(2..=ACCOUNTS);
                let mut to = rng.u128(2..=ACCOUNTS);
                if to == from {
                    to = if from == ACCOUNTS { 2 } else { from + 1 };
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
        let phase = usize::from(round >= TRANSFERS / BATCH);
        step(CommandBatch::CreateTransfers(transfers), Some(phase));
    }
    let n = (TRANSFERS / BATCH * BATCH) as f64;
    for (phase, name) in ["histories filling", "histories full"].iter().enumerate() {
        println!(
            "{name}: {n} transfers, {ACCOUNTS} accounts, history {HISTORY}/account: apply_entry {:.0} ns/transfer, read model {:.0} ns/transfer",
            in_apply[phase].as_nanos() as f64 / n,
            in_model[phase].as_nanos() as f64 / n
        );
    }
}
