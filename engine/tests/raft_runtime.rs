//! The shard runtime in Raft mode (`Replication::Raft`, RAFT_PLAN step 4): every partition is a
//! one-voter openraft cluster driven by `RaftTask`, reached through the same `Node` API as the
//! local mode. Accounts, deposits and transfers, idempotent retries, refusals, cross-partition
//! TC/C, a randomized workload with money conserved, merged small batches, restarts on the same
//! data dir, and what Raft mode refuses.

use engine::command::{NewAccount, NewTransfer};
use engine::model::Currency;
use engine::runtime::{EngineConfig, Node, Replication};
use engine::{CommandBatch, ResultCode};
use futures::executor::block_on;
use std::time::Duration;

mod node_support;
use node_support::wait_tcc_settled;

fn config(dir: &std::path::Path) -> EngineConfig {
    let mut c = EngineConfig::new(dir);
    c.cores = vec![0, 1];
    c.partitions = 2;
    c.segment_bytes = 4 << 20;
    c.snapshot_interval_entries = 0;
    c.snapshot_daily_days = 0;
    c.replication = Replication::Raft;
    c
}

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

fn account(id: u128, floor: i64) -> NewAccount {
    NewAccount {
        id,
        currency: eur(),
        flags: 0,
        floor,
        user_data: 0,
    }
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

/// The first `n` account ids of `partition`, from `start` on.
fn ids_in(node: &Node, partition: u32, start: u128, n: usize) -> Vec<u128> {
    (start..)
        .filter(|id| node.partition_of(*id) == partition)
        .take(n)
        .collect()
}

fn balances(node: &Node, ids: &[u128]) -> Vec<i64> {
    block_on(node.lookup_accounts_routed(ids))
        .unwrap()
        .into_iter()
        .map(|a| a.expect("account exists").balance)
        .collect()
}

#[test]
fn raft_mode_moves_money_once_refuses_overdrafts_settles_tcc_and_restarts_identically() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).unwrap();
    let issuer = ids_in(&node, 0, 1, 1)[0];
    let [a, b] = ids_in(&node, 0, issuer + 1, 2)[..] else {
        unreachable!()
    };
    let other = ids_in(&node, 1, 1, 1)[0];
    let accounts = vec![
        account(issuer, -1_000_000),
        account(a, 0),
        account(b, 0),
        account(other, 0),
    ];
    let results = block_on(node.create_accounts(&accounts)).unwrap();
    assert_eq!(results, vec![ResultCode::Ok; 4]);
    assert_eq!(
        block_on(node.create_accounts(&accounts[..1])).unwrap(),
        vec![ResultCode::Exists],
        "an account created twice"
    );

    use ResultCode::*;
    let batch = vec![
        t(1, issuer, a, 500), // deposit
        t(2, a, b, 200),      // transfer
        t(2, a, b, 200),      // retry in the same batch: exists
        t(2, a, b, 201),      // same id, other amount
        t(3, b, a, 1_000),    // overdraft
        t(5, a, a, 1),        // same account
        t(6, a, b, 0),        // zero
        t(7, a, other, 1),    // other partition: TC/C confirms
    ];
    let results = block_on(node.create_transfers(&batch)).unwrap();
    assert_eq!(
        results,
        vec![
            Ok,
            Ok,
            Exists,
            ExistsWithDifferentFields,
            InsufficientFunds,
            SameAccount,
            ZeroAmount,
            Ok
        ]
    );
    // A retry of the whole batch applies nothing again.
    let retry = block_on(node.create_transfers(&batch[..2])).unwrap();
    assert_eq!(retry, vec![Exists, Exists]);
    wait_tcc_settled(&node, Duration::from_secs(10));
    let ids = [issuer, a, b, other];
    assert_eq!(balances(&node, &ids), vec![-500, 299, 200, 1]);
    let lookup = block_on(node.lookup_transfers(0, vec![2, 7, 99])).unwrap();
    assert_eq!(lookup[0].unwrap().status, Ok);
    assert_eq!(lookup[1].unwrap().status, Ok);
    assert!(lookup[2].is_none());

    // A reply's index and timestamp are the entry's (log index, item timestamps).
    let reply =
        block_on(node.submit(0, CommandBatch::CreateTransfers(vec![t(8, a, b, 1)]))).unwrap();
    assert_eq!(reply.results, vec![Ok]);
    assert!(reply.index > 0 && reply.timestamp > 0);
    let snapshot = block_on(node.snapshot(0)).unwrap().unwrap();
    assert!(
        snapshot >= reply.index,
        "the snapshot covers the last write"
    );

    let stats = node.all_stats().unwrap();
    assert!(stats.iter().all(|s| !s.storage_failed && s.fsyncs > 0));
    let digests: Vec<u128> = stats.iter().map(|s| s.digest).collect();
    let before = balances(&node, &ids);
    node.shutdown().unwrap();

    // Restart on the same data dir: same state, and the ids are still known.
    let node = Node::start(config(dir.path())).unwrap();
    let stats = node.all_stats().unwrap();
    assert_eq!(stats.iter().map(|s| s.digest).collect::<Vec<_>>(), digests);
    assert_eq!(balances(&node, &ids), before);
    let again = block_on(node.create_transfers(&batch[..2])).unwrap();
    assert_eq!(again, vec![Exists, Exists]);
    let later =
        block_on(node.submit(0, CommandBatch::CreateTransfers(vec![t(9, a, b, 1)]))).unwrap();
    assert_eq!(later.results, vec![Ok]);
    assert!(later.index > reply.index && later.timestamp > reply.timestamp);
    node.shutdown().unwrap();

    // The mode is fixed for the data dir's life.
    let mut local = config(dir.path());
    local.replication = Replication::Local;
    let refused = Node::start(local)
        .err()
        .expect("a raft data dir refuses local mode");
    assert!(refused.to_string().contains("replication"), "{refused}");
}

/// Many concurrent small client batches end up in fewer Raft entries, and each client gets
/// its own items' results and timestamps.
#[test]
fn small_batches_merge_into_fewer_entries_with_per_item_results() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.partitions = 1;
    c.cores = vec![0];
    let node = Node::start(c).unwrap();
    let issuer = 1;
    let wallets: Vec<u128> = (2..=33).collect();
    let mut accounts = vec![account(issuer, -1_000_000_000)];
    accounts.extend(wallets.iter().map(|id| account(*id, 0)));
    assert!(block_on(node.create_accounts(&accounts))
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    let entries_before = node.all_stats().unwrap()[0].fsyncs;
    // 32 clients, each 20 batches of 4 transfers: a deposit of 10 and three moves that
    // sometimes lack the funds.
    let clients = wallets.len();
    let rounds = 20u128;
    let replies = block_on(async {
        let mut all = Vec::new();
        for round in 0..rounds {
            let pending: Vec<_> = wallets
                .iter()
                .enumerate()
                .map(|(c, &w)| {
                    let base = 1_000 + (round * clients as u128 + c as u128) * 4;
                    let next = wallets[(c + 1) % clients];
                    let batch = vec![
                        t(base, issuer, w, 10),
                        t(base + 1, w, next, 7),
                        t(base + 2, w, next, 7),
                        t(base + 3, w, issuer, 1),
                    ];
                    node.submit(0, CommandBatch::CreateTransfers(batch))
                })
                .collect();
            all.extend(futures::future::join_all(pending).await);
        }
        all
    });
    let entries = node.all_stats().unwrap()[0].fsyncs - entries_before;
    let batches = replies.len() as u64;
    println!("{batches} client batches in {entries} Raft entries");
    assert!(
        entries < batches,
        "{batches} batches took {entries} entries: nothing merged"
    );
    let mut timestamps = Vec::new();
    for reply in &replies {
        let reply = reply.as_ref().unwrap();
        assert_eq!(reply.results.len(), 4);
        assert_eq!(reply.results[0], ResultCode::Ok, "a deposit always applies");
        assert!(reply.results[1..]
            .iter()
            .all(|c| matches!(c, ResultCode::Ok | ResultCode::InsufficientFunds)));
        timestamps.push(reply.timestamp);
    }
    timestamps.sort_unstable();
    assert!(
        timestamps.windows(2).all(|w| w[1] >= w[0] + 4),
        "every batch's four items have timestamps of their own"
    );
    let mut all = vec![issuer];
    all.extend(&wallets);
    let sum: i64 = balances(&node, &all).iter().sum();
    assert_eq!(sum, 0, "money is conserved");
    assert!(balances(&node, &wallets).iter().all(|b| *b >= 0));
    node.shutdown().unwrap();
}

/// A randomized workload over two partitions (same- and cross-partition transfers, retries,
/// overdrafts, unknown accounts) keeps the total at zero and no wallet below zero, and a
/// restart brings back the same digests.
#[test]
fn randomized_workload_conserves_money_across_a_restart() {
    let seed: u64 = std::env::var("RAFT_RUNTIME_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("seed {seed} (RAFT_RUNTIME_SEED={seed} repeats it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).unwrap();
    let issuers = [ids_in(&node, 0, 1, 1)[0], ids_in(&node, 1, 1, 1)[0]];
    let wallets: Vec<u128> = (1_000u128..1_040).collect();
    let mut accounts: Vec<NewAccount> = issuers.iter().map(|id| account(*id, -1 << 40)).collect();
    accounts.extend(wallets.iter().map(|id| account(*id, 0)));
    assert!(block_on(node.create_accounts(&accounts))
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    let mut sent: Vec<NewTransfer> = Vec::new();
    let mut applied: std::collections::BTreeMap<u128, NewTransfer> = Default::default();
    let mut next_id = 1u128;
    for _round in 0..30 {
        let batches: Vec<Vec<NewTransfer>> = (0..rng.usize(1..6))
            .map(|_| {
                (0..rng.usize(1..40))
                    .map(|_| {
                        if !sent.is_empty() && rng.u8(..10) == 0 {
                            return sent[rng.usize(..sent.len())]; // a retry
                        }
                        let id = next_id;
                        next_id += 1;
                        let from = match rng.u8(..4) {
                            0 => issuers[rng.usize(..2)],
                            _ => wallets[rng.usize(..wallets.len())],
                        };
                        let to = match rng.u8(..20) {
                            0 => 5_000_000 + rng.u128(..1000), // unknown
                            _ => wallets[rng.usize(..wallets.len())],
                        };
                        let transfer = t(id, from, to, rng.u64(1..500));
                        sent.push(transfer);
                        transfer
                    })
                    .collect()
            })
            .collect();
        let results = block_on(futures::future::join_all(
            batches.iter().map(|b| node.create_transfers(b)),
        ));
        for (batch, results) in batches.iter().zip(results) {
            let results = results.unwrap();
            assert_eq!(results.len(), batch.len());
            assert!(results.iter().all(|c| *c != ResultCode::Pending));
            for (t, code) in batch.iter().zip(results) {
                if code == ResultCode::Ok {
                    assert!(
                        applied.insert(t.id, *t).is_none(),
                        "seed {seed}: transfer {} answered ok twice",
                        t.id
                    );
                }
            }
        }
    }
    // The workload did move money, across partitions too: a run that refused everything
    // would pass the sums below on an empty ledger.
    let cross = applied
        .values()
        .filter(|t| node.partition_of(t.from) != node.partition_of(t.to))
        .count();
    println!(
        "{} transfers sent, {} applied, {cross} of them across partitions",
        sent.len(),
        applied.len()
    );
    assert!(
        applied.len() * 3 > sent.len() && cross > 0,
        "seed {seed}: too few transfers applied to test anything"
    );
    wait_tcc_settled(&node, Duration::from_secs(10));
    let mut all = issuers.to_vec();
    all.extend(&wallets);
    // Each balance is the sum of the transfers answered `ok`, exactly.
    let mut expected = vec![0i64; all.len()];
    for t in applied.values() {
        for (i, id) in all.iter().enumerate() {
            if *id == t.from {
                expected[i] -= t.amount as i64;
            }
            if *id == t.to {
                expected[i] += t.amount as i64;
            }
        }
    }
    let check = |node: &Node| {
        let balances = balances(node, &all);
        assert_eq!(
            balances, expected,
            "seed {seed}: balances are the transfers answered ok"
        );
        assert_eq!(
            balances.iter().sum::<i64>(),
            0,
            "seed {seed}: money is conserved"
        );
        assert!(
            balances[2..].iter().all(|b| *b >= 0),
            "seed {seed}: no wallet below zero"
        );
        balances
    };
    let before = check(&node);
    let digests: Vec<u128> = node.all_stats().unwrap().iter().map(|s| s.digest).collect();
    node.shutdown().unwrap();
    let node = Node::start(config(dir.path())).unwrap();
    assert_eq!(check(&node), before, "seed {seed}");
    let after: Vec<u128> = node.all_stats().unwrap().iter().map(|s| s.digest).collect();
    assert_eq!(after, digests, "seed {seed}: same state after a restart");
    node.shutdown().unwrap();
}

#[test]
fn raft_mode_refuses_what_it_does_not_support_yet() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.read_model_history_per_account = 8;
    c.validate().expect("Raft mode has a read model");
    let mut c = config(dir.path());
    c.snapshot_daily_days = 7;
    c.validate().expect("Raft mode keeps daily snapshots");
    let mut c = config(dir.path());
    c.repair = true;
    assert!(c.validate().is_err());

    // A local data dir refuses Raft mode.
    let mut local = config(dir.path());
    local.replication = Replication::Local;
    Node::start(local).unwrap().shutdown().unwrap();
    let refused = Node::start(config(dir.path())).err().unwrap();
    assert!(refused.to_string().contains("replication"), "{refused}");

    // Without one (read_model_history_per_account = 0), read-model queries say it is off.
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).unwrap();
    let answer = block_on(node.events(0, 0, None, 10)).unwrap();
    assert!(answer.is_err());
    node.shutdown().unwrap();
}
