//! Subscriptions through a real `walletd` (two partitions, transfers within and across them):
//! a subscriber that disconnects again and again, and across a SIGKILL and restart of the
//! server, resumes from its cursors and sees every change exactly once, in order (compared
//! with a fresh subscription from the start); `wallet watch` prints JSON lines; a start older
//! than the retained changes is refused with a clear error.

use engine::partition::partition_of;
use engine::read_model::{ChangeEvent, QueryError};
use engine::{NewTransfer, ResultCode};
use net::client::{Subscription, SubscriptionError};
use net::{Client, ClientConfig};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;
use walletd_tests::server_process::ServerProcess;
use walletd_tests::{eur, eur_account};

const WALLETD: &str = env!("CARGO_BIN_EXE_test-walletd");
const WALLET: &str = env!("CARGO_BIN_EXE_test-wallet");

/// (issuer, wallets) per partition of a two-partition node.
fn accounts() -> Vec<(u128, Vec<u128>)> {
    (0..2)
        .map(|p| {
            let mut ids = (1u128..).filter(|id| partition_of(*id, 2) == p);
            let issuer = ids.next().unwrap();
            (issuer, ids.take(6).collect())
        })
        .collect()
}

/// Deposits, then random transfers within and across the partitions (ids from `first_id`);
/// returns the transfers answered `ok`.
fn write_batches(addr: &str, first_id: u128, batches: usize, seed: u64) -> Vec<NewTransfer> {
    let client = Client::connect(ClientConfig::new(addr)).unwrap();
    let accounts = accounts();
    let all: Vec<u128> = accounts.iter().flat_map(|(_, w)| w.clone()).collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut id = first_id;
    let mut acked = Vec::new();
    for _ in 0..batches {
        let transfers: Vec<NewTransfer> = (0..rng.usize(1..20))
            .map(|_| {
                id += 1;
                let (from, amount) = if rng.u32(..4) == 0 {
                    (accounts[rng.usize(..2)].0, 1_000)
                } else {
                    (all[rng.usize(..all.len())], rng.u64(1..300))
                };
                NewTransfer {
                    id,
                    from,
                    to: all[rng.usize(..all.len())],
                    amount,
                    currency: eur(),
                    user_data: 0,
                }
            })
            .collect();
        let codes = client.create_transfers(&transfers).unwrap();
        acked.extend(
            transfers
                .iter()
                .zip(codes)
                .filter(|(_, code)| *code == ResultCode::Ok)
                .map(|(t, _)| *t),
        );
    }
    acked
}

type Seen = BTreeMap<u32, Vec<ChangeEvent>>;

/// Reads up to `n` changes (or until `idle` passes without one), recording them.
fn read(
    sub: &mut Subscription,
    seen: &mut Seen,
    n: usize,
    idle: Duration,
) -> Result<usize, SubscriptionError> {
    let mut got = 0;
    while got < n {
        match sub.next(Some(idle))? {
            Some((partition, change)) => {
                seen.entry(partition).or_default().push(change);
                got += 1;
            }
            None => break,
        }
    }
    Ok(got)
}

fn resume(config: &ClientConfig, sub: &Subscription) -> Subscription {
    let mut cursors = sub.resume_from();
    cursors.sort_unstable();
    let from: Vec<u64> = cursors.iter().map(|c| c.1).collect();
    Subscription::open(config, None, &from).unwrap()
}

#[test]
fn a_resuming_subscriber_sees_every_change_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(
        std::path::Path::new(WALLETD),
        dir.path(),
        &["--partitions", "2"],
    );
    let addr = server.addr.clone();
    let config = ClientConfig::new(addr.clone());
    {
        let client = Client::connect(config.clone()).unwrap();
        let mut creations = Vec::new();
        for (issuer, wallets) in accounts() {
            creations.push(eur_account(issuer, -1_000_000_000));
            creations.extend(wallets.iter().map(|w| eur_account(*w, 0)));
        }
        let results = client.create_accounts(&creations).unwrap();
        assert!(results.iter().all(|c| *c == ResultCode::Ok));
    }

    let mut seen = Seen::new();
    let mut sub = Subscription::open(&config, None, &[0]).unwrap();
    let idle = Duration::from_millis(300);

    // Phase 1: writes run while the subscriber reads a little, disconnects, resumes.
    let writer = {
        let addr = addr.clone();
        std::thread::spawn(move || write_batches(&addr, 1_000, 60, 1))
    };
    for round in 0..12 {
        read(&mut sub, &mut seen, 7 + round, Duration::from_millis(50)).unwrap();
        sub = resume(&config, &sub); // the old connection is dropped: a disconnect
    }
    let mut acked = writer.join().unwrap();

    // Everything so far, as one uninterrupted subscription from the start sees it.
    while read(&mut sub, &mut seen, usize::MAX, idle).unwrap() > 0 {}
    let mut reference = Seen::new();
    let mut fresh = Subscription::open(&config, None, &[0]).unwrap();
    while read(&mut fresh, &mut reference, usize::MAX, idle).unwrap() > 0 {}
    let mut cursors = fresh.resume_from();
    cursors.sort_unstable();
    let after_phase_1: Vec<u64> = cursors.iter().map(|c| c.1).collect();
    drop(fresh);

    // A crash of the server: the subscriber's connection breaks; it resumes after the restart
    // (the read model and its changes are rebuilt from the snapshot and the log after it, so
    // positions after the snapshot are still there).
    server.kill();
    let broken = read(&mut sub, &mut seen, usize::MAX, idle);
    assert!(broken.is_err(), "the subscription must notice the crash");
    server.restart();
    sub = resume(&config, &sub);

    // Phase 2: more writes, more disconnects.
    let writer = {
        let addr = addr.clone();
        std::thread::spawn(move || write_batches(&addr, 1_000_000, 60, 2))
    };
    for round in 0..8 {
        read(&mut sub, &mut seen, 11 + round, Duration::from_millis(50)).unwrap();
        sub = resume(&config, &sub);
    }
    acked.extend(writer.join().unwrap());
    // Drain: until nothing comes for a while (TC/C steps settle meanwhile).
    while read(&mut sub, &mut seen, usize::MAX, idle).unwrap() > 0 {}

    // The reference, continued: one uninterrupted subscription from where phase 1 ended.
    let mut fresh = Subscription::open(&config, None, &after_phase_1).unwrap();
    while read(&mut fresh, &mut reference, usize::MAX, idle).unwrap() > 0 {}
    let total: usize = reference.values().map(Vec::len).sum();
    assert!(total > 500, "a real workload ({total} changes)");
    for (partition, changes) in &reference {
        let positions: Vec<u64> = changes.iter().map(|c| c.position).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "partition {partition} in order"
        );
    }
    assert_eq!(seen, reference, "every change exactly once, in order");
    // And the reference is complete: every transfer answered `ok` is in it once, as the
    // change that moved the money to its destination (a local transfer, or a TC/C credit in
    // the destination's partition). Compared with the client's answers, not the server's
    // own stream, so a change the server lost would show here.
    for t in &acked {
        let to = partition_of(t.to, 2);
        let kind = if partition_of(t.from, 2) == to {
            engine::read_model::HistoryKind::Transfer
        } else {
            engine::read_model::HistoryKind::TccCredit
        };
        let found = reference[&to]
            .iter()
            .filter(|c| c.transfer_id == t.id && c.kind == kind)
            .count();
        assert_eq!(found, 1, "transfer {} ({kind:?}) in the changes", t.id);
    }
    assert!(acked.len() > 300, "{} transfers answered ok", acked.len());
    assert!(
        reference
            .values()
            .flatten()
            .any(|c| c.kind == engine::read_model::HistoryKind::TccCredit),
        "cross-partition transfers were part of it"
    );

    // `wallet watch`: one account's changes as JSON lines, from the start of phase 2.
    let (issuer0, wallets0) = accounts().remove(0);
    let _ = issuer0;
    let account = wallets0[0];
    let home = partition_of(account, 2);
    let phase_2_from = after_phase_1[home as usize];
    let mine: Vec<&ChangeEvent> = reference[&home]
        .iter()
        .filter(|c| c.position >= phase_2_from)
        .filter(|c| c.from == account || c.to == account)
        .filter(|c| match c.kind {
            engine::read_model::HistoryKind::TccCredit => c.to == account,
            engine::read_model::HistoryKind::Transfer => true,
            _ => c.from == account,
        })
        .collect();
    assert!(!mine.is_empty());
    let out = Command::new(WALLET)
        .args([
            "--addr",
            &addr,
            "--json",
            "watch",
            "--account",
            &account.to_string(),
        ])
        .args(["--from-position", &phase_2_from.to_string()])
        .args(["--count", &mine.len().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let printed: Vec<u64> = lines
        .iter()
        .map(|l| l["position"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = mine.iter().map(|c| c.position).collect();
    assert_eq!(printed, expected);
    assert_eq!(lines[0]["currency"], "EUR");

    // Unknown account, and a start the server no longer retains after a flood of changes.
    match Subscription::open(&config, Some(u128::MAX - 7), &[0]) {
        Err(SubscriptionError::Refused(QueryError::AccountNotFound(_))) => {}
        other => panic!("expected account_not_found, got {:?}", other.err()),
    }
    let client = Client::connect(config.clone()).unwrap();
    let (issuer, wallets) = accounts().remove(0);
    for batch in 0..9u128 {
        let transfers: Vec<NewTransfer> = (0..engine::BATCH_ITEMS_MAX as u128)
            .map(|i| NewTransfer {
                id: 10_000_000 + batch * 10_000 + i,
                from: issuer,
                to: wallets[(i % 6) as usize],
                amount: 1,
                currency: eur(),
                user_data: 0,
            })
            .collect();
        assert!(client
            .create_transfers(&transfers)
            .unwrap()
            .iter()
            .all(|c| *c == ResultCode::Ok));
    }
    match Subscription::open(&config, None, &after_phase_1) {
        Err(SubscriptionError::Refused(e @ QueryError::BeforeRetained { .. })) => {
            assert!(e.to_string().contains("oldest retained point"), "{e}");
        }
        other => panic!("expected before_retained, got {:?}", other.err()),
    }
    let (ok, err) = {
        let out = Command::new(WALLET)
            .args([
                "--addr",
                &addr,
                "watch",
                "--from-position",
                "0",
                "--count",
                "1",
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert!(!ok && err.contains("oldest retained"), "{err}");
}
