//! An offline replay keeps the transfers it applies in the mapped log (`mapped_transfers`)
//! instead of copying them. Whatever it answers must be what a live partition, which copies
//! them, answers: the same digest, the same transfers in the same order, the same lookups,
//! including the results of retried ids (which read a kept transfer back) and transfers that a
//! TC/C confirmation filed (kept by value), and across segments.

use engine::audit;
use engine::command::{NewAccount, NewTransfer};
use engine::digest::state_digest;
use engine::model::Currency;
use engine::recovery::{log_dir, partition_dir, recover_partition, snapshot_dir};
use engine::runtime::{EngineConfig, Node};
use engine::snapshot::list_snapshots;
use engine::state_machine::PartitionState;
use engine::ResultCode;

mod node_support;
use node_support::wait_tcc_settled;

const PARTITIONS: u32 = 2;
const ACCOUNTS: u128 = 200;
const BATCHES: usize = 40;
const BATCH: usize = 4_000;
const FIRST_ID: u128 = 1_000_000;

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

#[test]
fn a_replay_that_reads_transfers_in_place_answers_like_the_live_state() {
    let seed: u64 = std::env::var("REPLAY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("seed {seed} (rerun with REPLAY_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);

    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.cores = vec![0, 1];
    config.partitions = PARTITIONS;
    // Small segments, so the kept transfers lie in several mapped files; a snapshot every few
    // entries, so a replay can also start from one (copied transfers, then kept ones).
    config.segment_bytes = 4 << 20;
    config.snapshot_interval_entries = 12;
    let node = Node::start(config).unwrap();
    let accounts: Vec<NewAccount> = (1..=ACCOUNTS)
        .map(|id| NewAccount {
            id,
            currency: eur(),
            flags: 0,
            floor: if id <= 4 { -1_000_000_000 } else { 0 },
            user_data: 0,
        })
        .collect();
    let codes = futures::executor::block_on(node.create_accounts(&accounts)).unwrap();
    assert!(codes.iter().all(|c| *c == ResultCode::Ok));

    let mut sent: Vec<NewTransfer> = Vec::new();
    let mut codes_seen = std::collections::BTreeMap::<ResultCode, usize>::new();
    for _ in 0..BATCHES {
        let mut batch: Vec<NewTransfer> = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            // Some retries of an earlier id: as sent (exists) or changed (different fields).
            if !sent.is_empty() && rng.u32(0..20) == 0 {
                let mut again = sent[rng.usize(0..sent.len())];
                if rng.bool() {
                    again.amount += 1;
                }
                batch.push(again);
                continue;
            }
            let from = rng.u128(1..=ACCOUNTS);
            let transfer = NewTransfer {
                id: FIRST_ID + sent.len() as u128,
                from,
                to: rng.u128(1..=ACCOUNTS),
                amount: if from <= 4 {
                    rng.u64(1..10_000)
                } else {
                    rng.u64(1..50)
                },
                currency: eur(),
                user_data: rng.u64(..),
            };
            sent.push(transfer);
            batch.push(transfer);
        }
        let codes = futures::executor::block_on(node.create_transfers(&batch)).unwrap();
        for code in codes {
            *codes_seen.entry(code).or_default() += 1;
        }
    }
    // The workload did exercise what the kept store must answer.
    for code in [
        ResultCode::Ok,
        ResultCode::Exists,
        ResultCode::ExistsWithDifferentFields,
    ] {
        assert!(
            codes_seen.get(&code).copied().unwrap_or(0) > 0,
            "{codes_seen:?}"
        );
    }
    wait_tcc_settled(&node, std::time::Duration::from_secs(20));
    node.shutdown().unwrap();

    // The live state as a restart rebuilds it (from the shutdown snapshot: copied transfers).
    let live: Vec<PartitionState> = (0..PARTITIONS)
        .map(|p| {
            recover_partition(&partition_dir(dir.path(), p), p, PARTITIONS)
                .unwrap()
                .state
        })
        .collect();
    let ids: Vec<u128> = (FIRST_ID..FIRST_ID + sent.len() as u128 + 10).collect();
    let same_as_live = |replayed: &[PartitionState], how: &str| {
        for (replayed, live) in replayed.iter().zip(&live) {
            let p = live.partition();
            assert_eq!(state_digest(replayed), state_digest(live), "{how}, p{p}");
            assert_eq!(replayed.transfer_count(), live.transfer_count(), "{how}");
            assert!(replayed.transfers().eq(live.transfers()), "{how}, p{p}");
            for id in &ids {
                assert_eq!(
                    replayed.lookup_transfer(*id),
                    live.lookup_transfer(*id),
                    "{how}, p{p}, transfer {id}"
                );
            }
        }
    };
    for p in 0..PARTITIONS {
        let log = log_dir(&partition_dir(dir.path(), p));
        let segments = engine::log::list_segments(&log).unwrap();
        assert!(segments.len() >= 2, "p{p}: {segments:?}");
    }
    let from_genesis = audit::replay(dir.path(), None, true).unwrap();
    same_as_live(&from_genesis.states, "from genesis");

    // Without the newer snapshots, a replay starts from the oldest one: transfers copied from
    // it, then kept in place.
    for p in 0..PARTITIONS {
        let snapshots = list_snapshots(&snapshot_dir(&partition_dir(dir.path(), p))).unwrap();
        assert!(snapshots.len() >= 2, "p{p}: {snapshots:?}");
        for (_, path) in &snapshots[1..] {
            std::fs::remove_file(path).unwrap();
        }
    }
    let from_snapshot = audit::replay(dir.path(), None, false).unwrap();
    assert!(from_snapshot.entries < from_genesis.entries);
    same_as_live(&from_snapshot.states, "from a snapshot");
}
