//! The shard runtime end to end in one process: pinned executors, routing, durable replies,
//! idempotency across restarts, snapshots, and the partition-count guard.

use engine::command::{NewAccount, NewTransfer};
use engine::model::Currency;
use engine::runtime::{EngineConfig, Node};
use engine::ResultCode;

mod node_support;
use node_support::wait_tcc_settled;

fn config(dir: &std::path::Path) -> EngineConfig {
    let mut c = EngineConfig::new(dir);
    c.cores = vec![0, 1];
    c.partitions = 4;
    c.segment_bytes = 4 << 20;
    c.snapshot_interval_entries = 0;
    c
}

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

/// Two accounts of the same partition, plus one of another partition.
fn pick_accounts(node: &Node) -> (u128, u128, u128, u128) {
    let issuer = (1u128..).find(|id| node.partition_of(*id) == 0).unwrap();
    let mut same = (issuer + 1..).filter(|id| node.partition_of(*id) == 0);
    let a = same.next().unwrap();
    let b = same.next().unwrap();
    let other = (1u128..).find(|id| node.partition_of(*id) == 1).unwrap();
    (issuer, a, b, other)
}

fn t(id: u128, from: u128, to: u128, amount: u64) -> NewTransfer {
    NewTransfer {
        id,
        from,
        to,
        amount,
        currency: eur(),
        user_data: 0,
    }
}

#[test]
fn transfers_apply_once_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).unwrap();
    let (issuer, a, b, other) = pick_accounts(&node);
    let accounts: Vec<NewAccount> = [(issuer, -1_000_000), (a, 0), (b, 0), (other, 0)]
        .iter()
        .map(|&(id, floor)| NewAccount {
            id,
            currency: eur(),
            flags: 0,
            floor,
            user_data: 0,
        })
        .collect();
    let results = futures::executor::block_on(node.create_accounts(&accounts)).unwrap();
    assert_eq!(results, vec![ResultCode::Ok; 4]);

    let batch = vec![
        t(1, issuer, a, 500),   // deposit
        t(2, a, b, 200),        // transfer
        t(2, a, b, 200),        // retry: exists
        t(2, a, b, 201),        // same id, other amount
        t(3, b, a, 1_000),      // overdraft
        t(4, a, 77_777_777, 1), // unknown account (in another partition: TC/C cancels)
        t(5, a, a, 1),          // same account
        t(6, a, b, 0),          // zero
        t(7, a, other, 1),      // other partition: TC/C confirms
    ];
    let results = futures::executor::block_on(node.create_transfers(&batch)).unwrap();
    use ResultCode::*;
    assert_ne!(node.partition_of(77_777_777), 0);
    let unknown_code = ToAccountNotFound;
    assert_eq!(
        results,
        vec![
            Ok,
            Ok,
            Exists,
            ExistsWithDifferentFields,
            InsufficientFunds,
            unknown_code,
            SameAccount,
            ZeroAmount,
            Ok
        ]
    );
    let balances = |node: &Node| {
        futures::executor::block_on(node.lookup_accounts(0, vec![issuer, a, b]))
            .unwrap()
            .into_iter()
            .map(|acc| acc.unwrap().balance)
            .collect::<Vec<_>>()
    };
    wait_tcc_settled(&node, std::time::Duration::from_secs(10));
    // Balances after the batch: the TC/C to `other` moved 1 and left no hold behind.
    let check_state = |node: &Node| {
        assert_eq!(balances(node), vec![-500, 299, 200]);
        let source =
            futures::executor::block_on(node.lookup_accounts(0, vec![a])).unwrap()[0].unwrap();
        assert_eq!(source.held, 0, "the TC/C hold was released");
        let destination =
            futures::executor::block_on(node.lookup_accounts(1, vec![other])).unwrap()[0].unwrap();
        assert_eq!(destination.balance, 1, "the destination was credited");
    };
    check_state(&node);
    let digests: Vec<u128> = node.all_stats().unwrap().iter().map(|s| s.digest).collect();
    node.shutdown().unwrap();

    // Restart: same state (from the shutdown snapshot), and the old id is still remembered.
    let node = Node::start(config(dir.path())).unwrap();
    check_state(&node);
    let after: Vec<u128> = node.all_stats().unwrap().iter().map(|s| s.digest).collect();
    assert_eq!(digests, after);
    let retry = futures::executor::block_on(node.create_transfers(&[t(2, a, b, 200)])).unwrap();
    assert_eq!(retry, vec![Exists]);
    let found = futures::executor::block_on(node.lookup_transfers(0, vec![2, 3])).unwrap();
    assert_eq!(found[0].map(|t| t.transfer.amount), Some(200));
    assert_eq!(found[1], None, "rejected transfers are not stored");
    node.shutdown().unwrap();
}

#[test]
fn replay_without_snapshot_equals_replay_with_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).unwrap();
    let (issuer, a, b, _) = pick_accounts(&node);
    let accounts: Vec<NewAccount> = [(issuer, -1_000_000_000), (a, 0), (b, 0)]
        .iter()
        .map(|&(id, floor)| NewAccount {
            id,
            currency: eur(),
            flags: 0,
            floor,
            user_data: 0,
        })
        .collect();
    futures::executor::block_on(node.create_accounts(&accounts)).unwrap();
    let mut id = 100u128;
    for round in 0..50u64 {
        let batch: Vec<NewTransfer> = (0..100u64)
            .map(|i| {
                id += 1;
                match (round + i) % 3 {
                    0 => t(id, issuer, a, 10 + i),
                    1 => t(id, a, b, 5 + i),
                    _ => t(id, b, a, 3 + i),
                }
            })
            .collect();
        futures::executor::block_on(node.create_transfers(&batch)).unwrap();
        if round == 20 {
            futures::executor::block_on(node.snapshot(0))
                .unwrap()
                .unwrap();
        }
    }
    let live = node.all_stats().unwrap()[0].digest;
    drop(node); // Drop also shuts down cleanly (and snapshots).

    // Remove every snapshot but the mid-run one: restart replays the log after it.
    let snaps = dir.path().join("partition-00000/snapshots");
    let mut files: Vec<_> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    std::fs::remove_file(files.last().unwrap()).unwrap();
    let node = Node::start(config(dir.path())).unwrap();
    let stats = node.all_stats().unwrap()[0].clone();
    assert!(
        stats.replayed_entries > 0,
        "the tail after the snapshot was replayed"
    );
    assert_eq!(stats.digest, live);
    drop(node);

    // No snapshot at all: replay from genesis.
    std::fs::remove_dir_all(&snaps).unwrap();
    let node = Node::start(config(dir.path())).unwrap();
    let stats = node.all_stats().unwrap()[0].clone();
    assert_eq!(stats.replayed_entries, stats.last_index);
    assert_eq!(stats.digest, live);
}

#[test]
fn the_partition_count_of_a_data_dir_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    Node::start(config(dir.path())).unwrap().shutdown().unwrap();
    let mut other = config(dir.path());
    other.partitions = 8;
    let err = Node::start(other).err().unwrap().to_string();
    assert!(err.contains("4 partitions"), "{err}");
}

#[test]
fn a_core_that_does_not_exist_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.cores = vec![4096];
    let err = Node::start(c).err().unwrap().to_string();
    assert!(err.contains("core 4096"), "{err}");
}

#[test]
fn mid_log_corruption_stops_the_start_and_repair_is_explicit() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.partitions = 1;
    c.cores = vec![0];
    let node = Node::start(c.clone()).unwrap();
    let (issuer, a) = (1u128, 2u128);
    let accounts: Vec<NewAccount> = [(issuer, -1_000_000), (a, 0)]
        .iter()
        .map(|&(id, floor)| NewAccount {
            id,
            currency: eur(),
            flags: 0,
            floor,
            user_data: 0,
        })
        .collect();
    futures::executor::block_on(node.create_accounts(&accounts)).unwrap();
    for i in 0..10u128 {
        futures::executor::block_on(node.create_transfers(&[t(10 + i, issuer, a, 1)])).unwrap();
    }
    drop(node);
    let pdir = engine::recovery::partition_dir(dir.path(), 0);
    std::fs::remove_dir_all(engine::recovery::snapshot_dir(&pdir)).unwrap();
    // Damage entry 3's body (entries 4..12 follow it).
    let segment = engine::log::list_segments(&engine::recovery::log_dir(&pdir)).unwrap()[0]
        .path
        .clone();
    let mut offset = 0u64;
    engine::log::scan_log::<engine::log::LogError>(&engine::recovery::log_dir(&pdir), 1, |r| {
        if r.header.index == 3 {
            offset = r.offset;
        }
        Ok(())
    })
    .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[offset as usize + 70] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();

    let err = Node::start(c.clone())
        .err()
        .expect("refuses to start")
        .to_string();
    assert!(
        err.contains(&format!("offset {offset}")) && err.contains("--repair"),
        "{err}"
    );
    c.repair = true;
    let node = Node::start(c).unwrap();
    let stats = node.all_stats().unwrap()[0].clone();
    assert_eq!(
        stats.last_index, 2,
        "the log was cut before the damaged entry"
    );
    let balance = futures::executor::block_on(node.lookup_accounts(0, vec![a])).unwrap()[0]
        .unwrap()
        .balance;
    assert_eq!(balance, 1, "only the transfer before the damage remains");
}
