//! Faults under a running node, injected through `EngineConfig::faults` (a full disk at write
//! and at segment rotation, a failed fsync, a slow disk), a damaged snapshot, and a wall clock
//! that jumps. Each test checks what clients are told, that nothing unacknowledged is
//! acknowledged, and that the data dir restarts into a consistent state.

use engine::command::{CommandBatch, NewAccount, NewTransfer};
use engine::log::FaultPlan;
use engine::model::Currency;
use engine::runtime::{BatchReply, Clock, EngineConfig, Node, Replication, SubmitError};
use engine::snapshot::list_snapshots;
use engine::ResultCode;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ISSUER: u128 = 1;
const ACCOUNTS: u128 = 8;

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

fn config(dir: &Path, faults: &Arc<FaultPlan>) -> EngineConfig {
    let mut c = EngineConfig::new(dir);
    c.cores = vec![0];
    c.partitions = 1;
    c.segment_bytes = 4 << 20;
    c.snapshot_interval_entries = 0;
    c.faults = Some(faults.clone());
    c
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    futures::executor::block_on(f)
}

/// An issuer and `ACCOUNTS` wallets, each funded with 1_000_000.
fn open_accounts(node: &Node) {
    let mut accounts = vec![NewAccount {
        id: ISSUER,
        currency: eur(),
        flags: 0,
        floor: -1_000_000_000_000,
        user_data: 0,
    }];
    accounts.extend((0..ACCOUNTS).map(|i| NewAccount {
        id: 100 + i,
        currency: eur(),
        flags: 0,
        floor: 0,
        user_data: 0,
    }));
    let results = block(node.create_accounts(&accounts)).unwrap();
    assert!(results.iter().all(|c| *c == ResultCode::Ok), "{results:?}");
    let deposits: Vec<NewTransfer> = (0..ACCOUNTS)
        .map(|i| transfer(1_000_000 + i, ISSUER, 100 + i, 1_000_000))
        .collect();
    let results = block(node.create_transfers(&deposits)).unwrap();
    assert!(results.iter().all(|c| *c == ResultCode::Ok), "{results:?}");
}

fn transfer(id: u128, from: u128, to: u128, amount: u64) -> NewTransfer {
    NewTransfer {
        id,
        from,
        to,
        amount,
        currency: eur(),
        user_data: 0,
    }
}

/// `count` small transfers between the wallets, ids from `first_id`.
fn transfers(first_id: u128, count: usize) -> Vec<NewTransfer> {
    (0..count as u128)
        .map(|i| {
            let id = first_id + i;
            let from = 100 + id % ACCOUNTS;
            let to = 100 + (id * 7 + 3) % ACCOUNTS;
            let to = if to == from {
                100 + (id + 1) % ACCOUNTS
            } else {
                to
            };
            transfer(id, from, to, 1 + (id % 5) as u64)
        })
        .collect()
}

fn submit(node: &Node, batch: &[NewTransfer]) -> futures::channel::oneshot::Receiver<BatchReply> {
    node.try_submit(0, CommandBatch::CreateTransfers(batch.to_vec()))
        .expect("queue has room")
}

/// Waits up to `limit` for a reply; `None` if none came.
fn wait_reply(
    answer: &mut futures::channel::oneshot::Receiver<BatchReply>,
    limit: Duration,
) -> Option<BatchReply> {
    let deadline = Instant::now() + limit;
    loop {
        match answer.try_recv() {
            Ok(Some(reply)) => return Some(reply),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => return None,
            Err(_) => panic!("reply channel closed"),
        }
    }
}

/// Checks the invariants of a (restarted) node against what clients were told: every
/// acknowledged transfer is stored with its fields, every balance equals what the stored
/// transfers say, and the money is conserved.
fn check_consistent(node: &Node, acked: &[NewTransfer], maybe: &[NewTransfer]) {
    let ids: Vec<u128> = acked.iter().map(|t| t.id).collect();
    let found = block(node.lookup_transfers(0, ids)).unwrap();
    for (t, f) in acked.iter().zip(&found) {
        let f = f.unwrap_or_else(|| panic!("acknowledged transfer {} is missing", t.id));
        assert_eq!(f.status, ResultCode::Ok);
        assert_eq!((f.transfer.from, f.transfer.to), (t.from, t.to));
        assert_eq!(f.transfer.amount, t.amount);
    }
    let maybe_found =
        block(node.lookup_transfers(0, maybe.iter().map(|t| t.id).collect())).unwrap();
    let mut expected: BTreeMap<u128, i64> = BTreeMap::new();
    let present = acked.iter().chain(
        maybe
            .iter()
            .zip(&maybe_found)
            .filter(|(_, f)| f.is_some())
            .map(|(t, _)| t),
    );
    for t in present {
        *expected.entry(t.from).or_default() -= t.amount as i64;
        *expected.entry(t.to).or_default() += t.amount as i64;
    }
    let ids: Vec<u128> = std::iter::once(ISSUER)
        .chain((0..ACCOUNTS).map(|i| 100 + i))
        .collect();
    let accounts = block(node.lookup_accounts(0, ids.clone())).unwrap();
    let mut total = 0i64;
    for (id, account) in ids.iter().zip(accounts) {
        let account = account.expect("account exists");
        assert_eq!(account.held, 0);
        assert_eq!(
            account.balance,
            expected.get(id).copied().unwrap_or(0),
            "balance of {id} differs from its stored transfers"
        );
        assert!(account.balance >= account.floor);
        total += account.balance;
    }
    assert_eq!(total, 0, "money is conserved");
}

fn deposits() -> Vec<NewTransfer> {
    (0..ACCOUNTS)
        .map(|i| transfer(1_000_000 + i, ISSUER, 100 + i, 1_000_000))
        .collect()
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers_by_itself() {
    full_disk_refuses_writes_keeps_reads_and_recovers(Replication::Local);
}

/// The same full disk in Raft mode (a one-voter cluster): the log store waits for space inside
/// openraft's append instead of failing it (which would stop the partition's Raft for good).
#[test]
fn in_raft_mode_a_full_disk_refuses_writes_keeps_reads_and_recovers_by_itself() {
    full_disk_refuses_writes_keeps_reads_and_recovers(Replication::Raft);
}

fn full_disk_refuses_writes_keeps_reads_and_recovers(replication: Replication) {
    let raft = replication == Replication::Raft;
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultPlan::new());
    let mode_config = |faults: &Arc<FaultPlan>| {
        let mut c = config(dir.path(), faults);
        c.replication = replication;
        if raft {
            c.snapshot_daily_days = 0;
        }
        c
    };
    let node = Node::start(mode_config(&faults)).unwrap();
    open_accounts(&node);
    let mut acked = deposits();
    let before = transfers(1, 100);
    let results = block(node.create_transfers(&before)).unwrap();
    assert!(results.iter().all(|c| *c == ResultCode::Ok));
    acked.extend(before);

    // The disk fills up: the next write fails with ENOSPC until disarmed.
    faults.write_full_failures.store(u32::MAX, Ordering::SeqCst);
    let held_batch = transfers(1_000, 10);
    let mut held = submit(&node, &held_batch);
    // Not durable (local: applied in memory; Raft: proposed): no answer at all, neither ok
    // nor a refusal.
    assert_eq!(wait_reply(&mut held, Duration::from_millis(400)), None);

    // Later writes are refused outright, with the distinct code, and not applied.
    let refused_batch = transfers(2_000, 5);
    let mut refused = submit(&node, &refused_batch);
    let reply = wait_reply(&mut refused, Duration::from_secs(5)).expect("a prompt refusal");
    assert_eq!(reply.results, vec![ResultCode::StorageFull; 5]);
    let accounts = vec![NewAccount {
        id: 999,
        currency: eur(),
        flags: 0,
        floor: 0,
        user_data: 0,
    }];
    assert_eq!(
        block(node.create_accounts(&accounts)).unwrap(),
        vec![ResultCode::StorageFull]
    );
    let lookup = block(node.lookup_transfers(0, vec![2_000])).unwrap();
    assert_eq!(lookup, vec![None], "a refused transfer was not applied");
    if raft {
        // Linearizable (this node is the only voter), and the proposed batch is not applied.
        let lookup = block(node.lookup_transfers(0, vec![1_000])).unwrap();
        assert_eq!(lookup, vec![None], "nothing uncommitted is visible");
    }

    // Reads keep working.
    let balance = block(node.lookup_accounts(0, vec![100])).unwrap();
    assert!(balance[0].is_some());
    let stats = block(node.counters(0)).unwrap();
    if !raft {
        assert!(
            stats.durable_index < stats.last_index,
            "the held entry is not durable"
        );
    }
    assert!(stats.storage_full && !stats.storage_failed, "{stats:?}");

    // Space comes back: the held batch becomes durable and is acknowledged, writes resume
    // without a restart, and the refused batch can be retried with the same ids.
    faults.write_full_failures.store(0, Ordering::SeqCst);
    let reply = wait_reply(&mut held, Duration::from_secs(5)).expect("held batch answered");
    assert!(
        reply.results.iter().all(|c| *c == ResultCode::Ok),
        "{reply:?}"
    );
    acked.extend(held_batch);
    let results = block(node.create_transfers(&refused_batch)).unwrap();
    assert!(results.iter().all(|c| *c == ResultCode::Ok), "{results:?}");
    acked.extend(refused_batch);
    let stats = block(node.stats(0)).unwrap();
    assert_eq!(stats.durable_index, stats.last_index);
    assert!(
        !stats.storage_full && !stats.storage_failed,
        "space came back: {stats:?}"
    );
    check_consistent(&node, &acked, &[]);
    node.shutdown().unwrap();

    let node = Node::start(mode_config(&Arc::new(FaultPlan::new()))).unwrap();
    assert_eq!(block(node.stats(0)).unwrap().digest, stats.digest);
    check_consistent(&node, &acked, &[]);
    node.shutdown().unwrap();
}

/// A shutdown while the disk stays full does not wait for space: the waiting entry fails (its
/// client was never told ok), and the restarted node holds exactly what was acknowledged.
#[test]
fn in_raft_mode_a_shutdown_on_a_full_disk_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultPlan::new());
    let mut c = config(dir.path(), &faults);
    c.replication = Replication::Raft;
    c.snapshot_daily_days = 0;
    let node = Node::start(c.clone()).unwrap();
    open_accounts(&node);
    faults.write_full_failures.store(u32::MAX, Ordering::SeqCst);
    let held_batch = transfers(1_000, 10);
    let mut held = submit(&node, &held_batch);
    assert_eq!(wait_reply(&mut held, Duration::from_millis(300)), None);
    let started = Instant::now();
    node.shutdown().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    if let Ok(Some(reply)) = held.try_recv() {
        assert!(
            reply.results.iter().all(|c| *c != ResultCode::Ok),
            "an entry that never reached the disk was acknowledged: {reply:?}"
        );
    }

    c.faults = None;
    let node = Node::start(c).unwrap();
    check_consistent(&node, &deposits(), &held_batch);
    node.shutdown().unwrap();
}

#[test]
fn a_full_disk_at_segment_rotation_refuses_that_batch_cleanly_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultPlan::new());
    let node = Node::start(config(dir.path(), &faults)).unwrap();
    open_accounts(&node);
    let mut acked = deposits();
    // No new segment can be preallocated from now on.
    faults
        .preallocate_full_failures
        .store(u32::MAX, Ordering::SeqCst);
    let segments = || {
        std::fs::read_dir(dir.path().join("partition-00000/log"))
            .unwrap()
            .count()
    };
    assert_eq!(segments(), 1);

    // Big batches until one does not fit the 4 MiB segment. The next segment is made before
    // that batch is applied, so the full disk refuses it at once: nothing waits.
    let mut next_id = 10_000u128;
    let mut refused = None;
    for _ in 0..40 {
        let batch = transfers(next_id, 8_000);
        next_id += 8_000;
        let mut answer = submit(&node, &batch);
        let reply = wait_reply(&mut answer, Duration::from_secs(5)).expect("answered");
        if reply.results.iter().all(|c| *c == ResultCode::Ok) {
            acked.extend(batch);
        } else {
            assert_eq!(reply.results, vec![ResultCode::StorageFull; batch.len()]);
            refused = Some(batch);
            break;
        }
    }
    let refused = refused.expect("a rotation was needed and failed");
    assert_eq!(segments(), 1, "no half-made segment is left behind");
    let stats = block(node.counters(0)).unwrap();
    assert_eq!(
        stats.durable_index, stats.last_index,
        "nothing applied waits"
    );
    let ids: Vec<u128> = refused.iter().map(|t| t.id).collect();
    let found = block(node.lookup_transfers(0, ids)).unwrap();
    assert!(
        found.iter().all(|f| f.is_none()),
        "the refused batch was not applied"
    );
    let probe = transfers(next_id, 3);
    let mut answer = submit(&node, &probe);
    let reply = wait_reply(&mut answer, Duration::from_secs(5)).expect("a prompt refusal");
    assert_eq!(reply.results, vec![ResultCode::StorageFull; 3]);
    assert!(block(node.lookup_accounts(0, vec![101])).unwrap()[0].is_some());

    // Space returns: the partition creates the segment by itself (after the writer's short
    // back-off). A restart on a log that ends with that empty segment loses nothing.
    faults.preallocate_full_failures.store(0, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while segments() < 2 {
        assert!(Instant::now() < deadline, "the segment was not created");
        std::thread::sleep(Duration::from_millis(20));
    }
    let digest = block(node.stats(0)).unwrap().digest;
    node.shutdown().unwrap();
    let node = Node::start(config(dir.path(), &faults)).unwrap();
    assert_eq!(block(node.stats(0)).unwrap().digest, digest);

    // The same batches go through now.
    for batch in [refused, probe] {
        loop {
            let results = block(node.create_transfers(&batch)).unwrap();
            if results.iter().all(|c| *c == ResultCode::Ok) {
                break;
            }
            assert_eq!(results[0], ResultCode::StorageFull);
            assert!(Instant::now() < deadline, "writes did not resume");
            std::thread::sleep(Duration::from_millis(20));
        }
        acked.extend(batch);
    }
    assert_eq!(segments(), 2);
    let digest = block(node.stats(0)).unwrap().digest;
    node.shutdown().unwrap();

    let node = Node::start(config(dir.path(), &faults)).unwrap();
    assert_eq!(block(node.stats(0)).unwrap().digest, digest);
    check_consistent(&node, &acked, &[]);
    node.shutdown().unwrap();
}

#[test]
fn a_failed_fsync_stops_acknowledging_and_a_restart_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultPlan::new());
    let node = Node::start(config(dir.path(), &faults)).unwrap();
    open_accounts(&node);
    let mut acked = deposits();
    let before = transfers(1, 200);
    assert!(block(node.create_transfers(&before))
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    acked.extend(before);

    FaultPlan::arm(&faults.fsync_failures, 1);
    let failed_batch = transfers(1_000, 10);
    assert_eq!(
        block(node.create_transfers(&failed_batch)).unwrap(),
        vec![ResultCode::StorageError; 10]
    );
    // The injected failure is spent, so the disk works again, but the partition must not
    // pretend: after a failed fsync nothing is acknowledged until a restart.
    let later = transfers(2_000, 10);
    assert_eq!(
        block(node.create_transfers(&later)).unwrap(),
        vec![ResultCode::StorageError; 10]
    );
    assert!(block(node.lookup_accounts(0, vec![100])).unwrap()[0].is_some());
    let stats = block(node.counters(0)).unwrap();
    assert!(stats.storage_failed && !stats.storage_full, "{stats:?}");
    assert!(block(node.snapshot(0)).unwrap().is_err());
    node.shutdown().unwrap();

    let node = Node::start(config(dir.path(), &faults)).unwrap();
    // The failed batch's bytes may or may not have reached the disk; either is consistent.
    let mut maybe = failed_batch;
    maybe.extend(later.iter().copied());
    check_consistent(&node, &acked, &maybe);
    let after = transfers(3_000, 10);
    assert!(block(node.create_transfers(&after))
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    node.shutdown().unwrap();
}

#[test]
fn a_slow_disk_still_acknowledges_correctly_and_queues_answer_busy() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultPlan::new());
    let mut c = config(dir.path(), &faults);
    c.queue_depth_max = 4;
    let node = Node::start(c.clone()).unwrap();
    open_accounts(&node);
    let mut acked = deposits();
    faults.write_delay_ms.store(30, Ordering::SeqCst);

    let mut answers = Vec::new();
    let mut busy = 0;
    for n in 0..200u128 {
        let batch = transfers(10_000 + n * 10, 10);
        match node.try_submit(0, CommandBatch::CreateTransfers(batch.clone())) {
            Ok(answer) => answers.push((answer, batch)),
            Err(SubmitError::Busy) => busy += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(busy > 0, "a bounded queue pushes back instead of growing");
    assert!(answers.len() >= 4);
    let started = Instant::now();
    for (mut answer, batch) in answers {
        let reply = wait_reply(&mut answer, Duration::from_secs(10)).expect("answered");
        assert!(
            reply.results.iter().all(|c| *c == ResultCode::Ok),
            "{reply:?}"
        );
        acked.extend(batch);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(30),
        "the delay was applied"
    );
    faults.write_delay_ms.store(0, Ordering::SeqCst);
    check_consistent(&node, &acked, &[]);
    node.shutdown().unwrap();
    let node = Node::start(c).unwrap();
    check_consistent(&node, &acked, &[]);
    node.shutdown().unwrap();
}

/// Flips bytes in the middle of a snapshot file.
fn damage(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_damaged_newest_snapshot_falls_back_and_reaches_the_same_digest() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultPlan::new());
    let node = Node::start(config(dir.path(), &faults)).unwrap();
    open_accounts(&node);
    let mut acked = deposits();
    for round in 0..2u128 {
        let batch = transfers(1 + round * 1_000, 500);
        assert!(block(node.create_transfers(&batch))
            .unwrap()
            .iter()
            .all(|c| *c == ResultCode::Ok));
        acked.extend(batch);
        block(node.snapshot(0)).unwrap().unwrap();
    }
    let digest = block(node.stats(0)).unwrap().digest;
    node.shutdown().unwrap();
    let snapshots = list_snapshots(&dir.path().join("partition-00000/snapshots")).unwrap();
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");

    // Newest damaged: the older snapshot plus the log after it.
    damage(&snapshots[1].1);
    let node = Node::start(config(dir.path(), &faults)).unwrap();
    let stats = block(node.stats(0)).unwrap();
    assert_eq!(stats.digest, digest);
    assert!(
        stats.replayed_entries > 0,
        "replayed the log after the older snapshot"
    );
    check_consistent(&node, &acked, &[]);
    // Shutting down writes a fresh snapshot at the newest index (the damaged one is replaced).
    node.shutdown().unwrap();

    // Every snapshot damaged: replay of the whole log.
    let snapshots = list_snapshots(&dir.path().join("partition-00000/snapshots")).unwrap();
    assert!(!snapshots.is_empty());
    for (_, path) in &snapshots {
        damage(path);
    }
    let node = Node::start(config(dir.path(), &faults)).unwrap();
    let stats = block(node.stats(0)).unwrap();
    assert_eq!(stats.digest, digest);
    assert!(
        stats.replayed_entries >= 4,
        "replayed from the start of the log"
    );
    check_consistent(&node, &acked, &[]);
    node.shutdown().unwrap();
}

#[test]
fn timestamps_stay_strictly_increasing_when_the_clock_jumps() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultPlan::new());
    let offset_ns = Arc::new(AtomicI64::new(0));
    let clock = {
        let offset_ns = offset_ns.clone();
        let system = Clock::system();
        Clock::from_fn(move || {
            (system.now_ns() as i64 + offset_ns.load(Ordering::SeqCst)).max(0) as u64
        })
    };
    let mut c = config(dir.path(), &faults);
    c.clock = clock;
    let node = Node::start(c.clone()).unwrap();
    open_accounts(&node);
    let mut acked = deposits();
    const HOUR_NS: i64 = 3_600 * 1_000_000_000;
    let mut next_id = 1u128;
    let mut run = |node: &Node, acked: &mut Vec<NewTransfer>| {
        for _ in 0..20 {
            let batch = transfers(next_id, 3);
            next_id += 3;
            assert!(block(node.create_transfers(&batch))
                .unwrap()
                .iter()
                .all(|c| *c == ResultCode::Ok));
            acked.extend(batch);
        }
    };
    run(&node, &mut acked);
    offset_ns.store(-HOUR_NS, Ordering::SeqCst); // an hour back
    run(&node, &mut acked);
    offset_ns.store(HOUR_NS, Ordering::SeqCst); // two hours forward
    run(&node, &mut acked);
    offset_ns.store(0, Ordering::SeqCst); // an hour back again
    run(&node, &mut acked);
    node.shutdown().unwrap();
    // Restarted with the clock an hour behind what the log holds.
    offset_ns.store(-HOUR_NS, Ordering::SeqCst);
    let node = Node::start(c).unwrap();
    run(&node, &mut acked);

    check_consistent(&node, &acked, &[]);
    let ids: Vec<u128> = acked.iter().map(|t| t.id).collect();
    let stamps: Vec<u64> = block(node.lookup_transfers(0, ids))
        .unwrap()
        .iter()
        .map(|f| f.expect("stored").transfer.timestamp)
        .collect();
    for (i, pair) in stamps.windows(2).enumerate() {
        assert!(
            pair[0] < pair[1],
            "timestamps of transfers {} and {} do not increase: {pair:?}",
            acked[i].id,
            acked[i + 1].id
        );
    }
    node.shutdown().unwrap();
}
