//! Property tests of the state machine over random command sequences: money is conserved per
//! currency, no balance goes below its floor, a transfer id applies at most once, and replaying
//! the same entries (through the real segment log) reproduces the live state bit for bit.

use engine::command::{entry_kind, CommandBatch, NewAccount, NewTransfer};
use engine::digest::state_digest;
use engine::log::{body_bytes_of_kinds, find_tail, LogWriter, WriterOptions};
use engine::model::{account_flags, Currency};
use engine::recovery::{log_dir, recover_partition};
use engine::state_machine::{ApplyOutput, PartitionState};
use engine::ResultCode;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use std::collections::HashMap;

const PARTITIONS: u32 = 2;

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}
fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

/// Account ids 1..=12 that live in partition 0 (plus a few in partition 1, for
/// cross-partition attempts).
fn ids_in(partition: u32) -> Vec<u128> {
    (1u128..200)
        .filter(|id| engine::partition::partition_of(*id, PARTITIONS) == partition)
        .take(12)
        .collect()
}

#[derive(Clone, Debug)]
enum Op {
    Accounts(Vec<NewAccount>),
    Transfers(Vec<NewTransfer>),
}

fn account_strategy() -> impl Strategy<Value = NewAccount> {
    let ids = ids_in(0);
    let foreign = ids_in(1);
    (
        0..ids.len() + 2,
        prop::bool::ANY,
        prop_oneof![Just(0i64), Just(-1_000_000i64), Just(5i64)],
        0u32..3,
        0..10u32,
    )
        .prop_map(move |(i, euro, floor, flags, garbage)| NewAccount {
            id: if i < ids.len() {
                ids[i]
            } else if i == ids.len() {
                foreign[0]
            } else {
                0
            },
            currency: if garbage == 0 {
                Currency(7)
            } else if euro {
                eur()
            } else {
                usd()
            },
            flags: if flags == 2 { account_flags::FROZEN } else { 0 },
            floor,
            user_data: 0,
        })
}

fn transfer_strategy() -> impl Strategy<Value = NewTransfer> {
    let mut ids = ids_in(0);
    ids.push(ids_in(1)[0]);
    ids.push(999_999); // never created
    let n = ids.len();
    (
        1u128..40,
        0..n,
        0..n,
        prop_oneof![Just(0u64), 1u64..500, Just(u64::MAX)],
        prop::bool::ANY,
    )
        .prop_map(move |(id, from, to, amount, euro)| NewTransfer {
            id,
            from: ids[from],
            to: ids[to],
            amount,
            currency: if euro { eur() } else { usd() },
            user_data: id as u64 % 3,
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => prop::collection::vec(account_strategy(), 0..6).prop_map(Op::Accounts),
        3 => prop::collection::vec(transfer_strategy(), 0..20).prop_map(Op::Transfers),
    ]
}

fn encode(batch: &CommandBatch) -> rkyv::util::AlignedVec<16> {
    let mut body = rkyv::util::AlignedVec::<16>::new();
    batch.encode_into(&mut body);
    body
}

/// The entries of a run (kind, body, timestamp) and the number of events they produced.
struct Entries {
    entries: Vec<(u16, rkyv::util::AlignedVec<16>, u64)>,
    events: u64,
}

/// Applies `ops` to a fresh partition 0, checking invariants after every entry. Returns the
/// state and the entries for replay.
fn run(ops: &[Op]) -> (PartitionState, Entries) {
    let mut state = PartitionState::new(0, PARTITIONS);
    let mut entries = Vec::new();
    let mut events = 0u64;
    let mut applied: HashMap<u128, NewTransfer> = HashMap::new();
    let mut started: std::collections::HashSet<u128> = Default::default();
    let mut timestamp = 1_000;
    for op in ops {
        let batch = match op {
            Op::Accounts(a) => CommandBatch::CreateAccounts(a.clone()),
            Op::Transfers(t) => CommandBatch::CreateTransfers(t.clone()),
        };
        let body = encode(&batch);
        let before: Vec<_> = state.accounts_sorted();
        let mut out = engine::state_machine::ApplyOutput::default();
        let index = state.last_index() + 1;
        state
            .apply_entry(index, batch.kind(), &body, timestamp, &mut out)
            .unwrap();
        assert_eq!(out.events_emitted, out.events.len() as u64);
        events += out.events_emitted;
        let results = out.results;
        assert_eq!(results.len(), batch.len());

        if let CommandBatch::CreateTransfers(items) = &batch {
            for (t, code) in items.iter().zip(&results) {
                match code {
                    ResultCode::Ok => {
                        assert!(
                            applied.insert(t.id, *t).is_none(),
                            "id {} applied twice",
                            t.id
                        );
                    }
                    ResultCode::Exists => assert_eq!(
                        applied.get(&t.id).map(|a| (
                            a.from,
                            a.to,
                            a.amount,
                            a.currency,
                            a.user_data
                        )),
                        Some((t.from, t.to, t.amount, t.currency, t.user_data))
                    ),
                    ResultCode::ExistsWithDifferentFields => {
                        assert!(applied.contains_key(&t.id) || started.contains(&t.id))
                    }
                    // A cross-partition transfer started its TC/C (debit held); no other
                    // partition answers here, so it stays pending.
                    ResultCode::Pending => {
                        started.insert(t.id);
                    }
                    _ => {}
                }
            }
        }
        // Invariants after every entry.
        for (_, total) in state.totals_by_currency() {
            assert_eq!(total, 0, "money created or destroyed");
        }
        assert_eq!(state.accounts_below_floor(), 0);
        assert_eq!(state.transfer_count(), applied.len());
        // Accounts only change through Ok transfers: an all-rejected batch changes nothing.
        if results
            .iter()
            .all(|c| *c != ResultCode::Ok && *c != ResultCode::Pending)
        {
            assert_eq!(before, state.accounts_sorted());
        }
        entries.push((batch.kind(), body, timestamp));
        timestamp = state.next_timestamp_floor() + 17;
    }
    (state, Entries { entries, events })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_and_replay_is_bit_exact(ops in prop::collection::vec(op_strategy(), 1..40)) {
        // Deposits need money: prepend an issuer per currency so transfers can succeed.
        let ids = ids_in(0);
        let mut all = vec![Op::Accounts(vec![
            NewAccount { id: ids[0], currency: eur(), flags: 0, floor: -1_000_000, user_data: 0 },
            NewAccount { id: ids[1], currency: usd(), flags: 0, floor: -1_000_000, user_data: 0 },
        ])];
        all.extend(ops);
        let (live, entries) = run(&all);

        // Replay in memory, counting events without keeping them (as `wallet audit replay`
        // does): same state, same number of events.
        let mut replayed = PartitionState::new(0, PARTITIONS);
        let mut counted = 0u64;
        for (i, (kind, body, ts)) in entries.entries.iter().enumerate() {
            let mut out = ApplyOutput::counting_events();
            replayed.apply_entry(i as u64 + 1, *kind, body, *ts, &mut out).unwrap();
            prop_assert!(out.events.is_empty());
            counted += out.events_emitted;
        }
        prop_assert_eq!(state_digest(&replayed), state_digest(&live));
        prop_assert_eq!(counted, entries.events);
    }
}

#[test]
fn replay_through_the_segment_log_reproduces_the_digest() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let ops = prop::collection::vec(op_strategy(), 200..300)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let ids = ids_in(0);
    let mut all = vec![Op::Accounts(vec![
        NewAccount {
            id: ids[0],
            currency: eur(),
            flags: 0,
            floor: -1_000_000,
            user_data: 0,
        },
        NewAccount {
            id: ids[1],
            currency: usd(),
            flags: 0,
            floor: -1_000_000,
            user_data: 0,
        },
    ])];
    all.extend(ops);
    let (live, Entries { entries, .. }) = run(&all);
    let transfer_body_bytes: u64 = entries
        .iter()
        .filter(|(kind, _, _)| *kind == entry_kind::CREATE_TRANSFERS)
        .map(|(_, body, _)| body.len() as u64)
        .sum();
    assert!(
        live.transfer_count() > 10,
        "the workload moves money ({} transfers)",
        live.transfer_count()
    );

    let dir = tempfile::tempdir().unwrap();
    let partition_dir = dir.path().to_path_buf();
    let log = log_dir(&partition_dir);
    let options = WriterOptions {
        segment_bytes: 64 << 10,
        pending_bytes_max: 16 << 10,
        ..Default::default()
    };
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            let tail = find_tail(&log).unwrap();
            let mut writer = LogWriter::open(&log, options, &tail).await.unwrap();
            for (kind, body, ts) in &entries {
                if !writer.has_room(body.len()) {
                    writer.flush().await.unwrap();
                }
                writer.append(0, *ts, *kind, body).unwrap();
                if ts % 3 == 0 {
                    writer.flush().await.unwrap();
                }
            }
            writer.flush().await.unwrap();
            writer.close().await.unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
    let segments = engine::log::list_segments(&log_dir(&partition_dir)).unwrap();
    assert!(
        segments.len() > 1,
        "small segments force rotation ({} segments)",
        segments.len()
    );
    // The sizing hint a replay takes from the headers alone, over several segments.
    let log = log_dir(&partition_dir);
    let [hint] = body_bytes_of_kinds(&log, 1, u64::MAX, [entry_kind::CREATE_TRANSFERS]).unwrap();
    assert_eq!(hint, transfer_body_bytes);
    assert_eq!(
        body_bytes_of_kinds(&log, u64::MAX, u64::MAX, [entry_kind::CREATE_TRANSFERS]).unwrap(),
        [0]
    );
    // Nothing stamped at or before time 0: a replay as of then reserves nothing.
    assert_eq!(
        body_bytes_of_kinds(&log, 1, 0, [entry_kind::CREATE_TRANSFERS]).unwrap(),
        [0]
    );
    let recovered = recover_partition(&partition_dir, 0, PARTITIONS).unwrap();
    assert_eq!(recovered.replayed_entries, all.len() as u64);
    assert_eq!(state_digest(&recovered.state), state_digest(&live));
}
