//! Daily snapshots: when log time crosses midnight (UTC) a partition takes a snapshot, the
//! newest one of each of the last `snapshot_daily_days` days is kept besides the newest two,
//! and `audit replay --until T` can start from the one at or before T with the same result
//! as a replay from genesis.

use engine::audit;
use engine::command::{NewAccount, NewTransfer};
use engine::model::Currency;
use engine::recovery::{partition_dir, snapshot_dir};
use engine::runtime::{Clock, EngineConfig, Node, Replication};
use engine::snapshot::{list_snapshots, snapshot_timestamp, DAY_NS};
use engine::ResultCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    futures::executor::block_on(f)
}

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

#[test]
fn one_snapshot_per_day_is_kept_and_replay_starts_from_it() {
    one_snapshot_per_day(Replication::Local);
}

/// In Raft mode the task asks openraft for the day's snapshot (`RaftTask::daily_snapshot`), and
/// the days are kept alike. The log is purged behind the snapshots, but keeps the history from
/// the oldest kept snapshot on (`RaftLogStore::open_keeping_history`), so a replay as of a past
/// day works from that day's snapshot; one from genesis is refused (those segments are gone).
#[test]
fn in_raft_mode_one_snapshot_per_day_is_kept_and_a_replay_as_of_a_past_day_works() {
    one_snapshot_per_day(Replication::Raft);
}

/// Full batches (~650 KB each), so that a day's entries fill more than a (smallest, 4 MiB)
/// segment: a purge through a newer day then has whole segments of older days to delete.
const BATCHES_PER_DAY: u128 = 7;
const BATCH: u128 = 8190;

fn one_snapshot_per_day(replication: Replication) {
    let dir = tempfile::tempdir().unwrap();
    // Log time: noon of day 20,000 (2024-10-04), advanced a day at a time by the test.
    let now_ns = Arc::new(AtomicU64::new(20_000 * DAY_NS + DAY_NS / 2));
    let mut config = EngineConfig::new(dir.path());
    config.snapshot_interval_entries = 0; // only the day rollover (and shutdown) snapshot
    config.snapshot_daily_days = 3;
    config.segment_bytes = 4 << 20;
    config.replication = replication;
    config.clock = {
        let now_ns = now_ns.clone();
        Clock::from_fn(move || now_ns.load(Ordering::SeqCst))
    };
    let node = Node::start(config.clone()).unwrap();
    let accounts = [
        NewAccount {
            id: 1,
            currency: eur(),
            flags: 0,
            floor: -1_000_000,
            user_data: 0,
        },
        NewAccount {
            id: 2,
            currency: eur(),
            flags: 0,
            floor: 0,
            user_data: 0,
        },
    ];
    assert!(block(node.create_accounts(&accounts))
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    let mut end_of_day_ns = Vec::new();
    for day in 0..6u128 {
        for batch in 0..BATCHES_PER_DAY {
            let first_id = 1_000 + (day * BATCHES_PER_DAY + batch) * BATCH;
            let transfers: Vec<NewTransfer> = (first_id..first_id + BATCH)
                .map(|id| NewTransfer {
                    id,
                    from: 1,
                    to: 2,
                    amount: 1,
                    currency: eur(),
                    user_data: 0,
                })
                .collect();
            let codes = block(node.create_transfers(&transfers)).unwrap();
            assert!(codes.iter().all(|c| *c == ResultCode::Ok), "day {day}");
        }
        // Log time moves on by an item per transfer past the clock; a second covers a day.
        end_of_day_ns.push(now_ns.load(Ordering::SeqCst) + 1_000_000_000);
        now_ns.fetch_add(DAY_NS, Ordering::SeqCst);
        // The first entry of the new day triggers the snapshot; give its thread a moment.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    node.shutdown().unwrap();

    let snapshots = list_snapshots(&snapshot_dir(&partition_dir(dir.path(), 0))).unwrap();
    let days: Vec<u64> = snapshots
        .iter()
        .map(|(_, path)| snapshot_timestamp(path).expect("readable") / DAY_NS)
        .collect();
    // The newest two (the shutdown one and the one before it), plus one per day for the last
    // three days: at most 5 files, all from distinct recent days except the newest pair.
    assert!(snapshots.len() >= 3 && snapshots.len() <= 5, "{days:?}");
    let mut distinct = days.clone();
    distinct.dedup();
    assert!(distinct.len() >= 3, "one per day kept: {days:?}");
    assert!(
        days.iter().all(|d| *d >= 20_003),
        "older days pruned: {days:?}"
    );

    let until = end_of_day_ns[4];
    // As of the end of day 4 (kept as a daily snapshot), the replay starts from that snapshot:
    // full batches every day for 5 days.
    let from_snapshot = audit::replay(dir.path(), Some(until), false).unwrap();
    let balance = from_snapshot.states[0].account(2).unwrap().balance;
    assert_eq!(balance, (5 * BATCHES_PER_DAY * BATCH) as i64);
    let from_genesis = audit::replay(dir.path(), Some(until), true);
    if replication == Replication::Raft {
        // openraft purged the log behind its snapshots; the segments wholly before the oldest
        // kept snapshot are gone, so a replay from genesis is refused instead of answered
        // from what is left.
        assert!(
            matches!(from_genesis, Err(audit::AuditError::Purged { .. })),
            "{:?}",
            from_genesis.map(|r| r.digest)
        );
        return;
    }
    // Local mode keeps its whole log: from genesis gives the same state.
    let from_genesis = from_genesis.unwrap();
    assert_eq!(from_snapshot.digest, from_genesis.digest);
    assert!(
        from_snapshot.entries < from_genesis.entries,
        "started from a snapshot"
    );
}
