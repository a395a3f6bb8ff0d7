//! Clusters of three `walletd` processes on loopback (config files with [[peers]], `cluster
//! init`), driven through the routing client (`ClusterClient`) with transfers inside and
//! across partitions:
//!
//! - the leader of a partition is SIGKILLed under load: a new leader is elected, clients go
//!   on, the old node restarts and catches up (its log was purged meanwhile: by snapshot);
//! - a leader is cut off from the others by the node link's fault injection: it
//!   acknowledges nothing, the majority elects a leader and goes on, and after healing
//!   nothing acknowledged is lost.
//!
//!   Then `wallet cluster status` shows each partition's commit index (at least every
//!   acknowledged write's) and each follower's matched index, and `wallet cluster
//!   balance-leaders` gives partition 0 back to its preferred node;
//! - a follower falls behind the leaders' purges while its disk is full (a file size limit
//!   below the snapshot it needs): the transfers fail and are said so in its log, the
//!   partitions go on without it, and once space returns it catches up by snapshot;
//! - the cluster grows from 3 to 5 nodes and shrinks back to 3 under load (each new node
//!   catches up as a learner before it votes).
//!
//! After each: every node has the same state digest, every acknowledged transfer is found,
//! money is conserved and no balance is below its floor.

use engine::model::Currency;
use engine::partition::partition_of;
use engine::{NewAccount, NewTransfer, ResultCode};
use net::cluster_admin::{Action, ClusterChange};
use net::operation::ProtocolError;
use net::{ClientError, ClusterClient};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use walletd_tests::cluster::{ClusterOptions, TestCluster};

const WALLETD: &str = env!("CARGO_BIN_EXE_test-walletd");
const WALLET: &str = env!("CARGO_BIN_EXE_test-wallet");
const PARTITIONS: u32 = 2;
const WALLETS_PER_PARTITION: usize = 20;
const BATCH: usize = 200;

fn eur() -> Currency {
    Currency::parse("EUR").expect("valid code")
}

/// (issuer, wallets) per partition.
fn accounts() -> Vec<(u128, Vec<u128>)> {
    (0..PARTITIONS)
        .map(|p| {
            let mut ids = (1u128..).filter(|id| partition_of(*id, PARTITIONS) == p);
            let issuer = ids.next().expect("plenty");
            (issuer, ids.take(WALLETS_PER_PARTITION).collect())
        })
        .collect()
}

fn all_accounts() -> Vec<u128> {
    accounts()
        .into_iter()
        .flat_map(|(issuer, wallets)| std::iter::once(issuer).chain(wallets))
        .collect()
}

fn setup(client: &ClusterClient) {
    let mut creations = Vec::new();
    let mut funding = Vec::new();
    for (issuer, wallets) in accounts() {
        creations.push(NewAccount {
            id: issuer,
            currency: eur(),
            flags: 0,
            floor: -1_000_000_000_000,
            user_data: 0,
        });
        for &w in &wallets {
            creations.push(NewAccount {
                id: w,
                currency: eur(),
                flags: 0,
                floor: 0,
                user_data: 0,
            });
            funding.push(NewTransfer {
                id: (1 << 100) + w,
                from: issuer,
                to: w,
                amount: 1_000_000,
                currency: eur(),
                user_data: 0,
            });
        }
    }
    let codes = client.create_accounts(&creations).expect("create accounts");
    assert!(codes.iter().all(|c| *c == ResultCode::Ok), "{codes:?}");
    let codes = client.create_transfers(&funding).expect("funding");
    assert!(codes.iter().all(|c| *c == ResultCode::Ok), "{codes:?}");
}

/// Batch `n`: wallet-to-wallet transfers of 1, a quarter of them across partitions.
fn batch(n: u64, seed: u64) -> Vec<NewTransfer> {
    let accounts = accounts();
    let mut rng = fastrand::Rng::with_seed(seed ^ n);
    (0..BATCH)
        .map(|i| {
            let p = rng.usize(..PARTITIONS as usize);
            let q = if rng.u8(..4) == 0 { 1 - p } else { p };
            let a = rng.usize(..WALLETS_PER_PARTITION);
            // Never the same account: another index when in the same partition.
            let b = (a + 1 + rng.usize(..WALLETS_PER_PARTITION - 1)) % WALLETS_PER_PARTITION;
            let from = accounts[p].1[a];
            let to = accounts[q].1[if p == q {
                b
            } else {
                rng.usize(..WALLETS_PER_PARTITION)
            }];
            NewTransfer {
                id: (u128::from(n) << 32) + i as u128 + 1,
                from,
                to,
                amount: 1,
                currency: eur(),
                user_data: 0,
            }
        })
        .collect()
}

/// What the load thread saw.
#[derive(Default)]
struct Load {
    /// Transfer ids acknowledged `ok`: each must be applied on every node.
    acknowledged: BTreeSet<u128>,
    /// Answered `exists` on a retry (an earlier attempt was logged; it may have applied or,
    /// for a TC/C cut short by the failover, been cancelled): each must be present.
    existing: BTreeSet<u128>,
    /// Items that got a final refusal (a TC/C cancelled by its Try timeout while the
    /// destination's leader was being replaced).
    refused: u64,
    batches: u64,
    errors: u64,
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "batches {} acknowledged {} exists {} refused {} client errors {}",
            self.batches,
            self.acknowledged.len(),
            self.existing.len(),
            self.refused,
            self.errors
        )
    }
}

/// A load thread and what it has seen so far.
struct Running {
    stop: Arc<AtomicBool>,
    load: Arc<Mutex<Load>>,
    worker: std::thread::JoinHandle<()>,
}

impl Running {
    fn start(cluster: &TestCluster, seed: u64) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let load = Arc::new(Mutex::new(Load::default()));
        let worker = {
            let (stop, load) = (stop.clone(), load.clone());
            let client = cluster.cluster_client();
            std::thread::spawn(move || run_load(client, stop, load, seed))
        };
        Running { stop, load, worker }
    }

    fn batches(&self) -> u64 {
        self.load.lock().unwrap().batches
    }

    /// Waits (at most a minute) until `more` further batches are done.
    fn wait_batches(&self, more: u64) {
        let target = self.batches() + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.batches() < target {
            assert!(Instant::now() < deadline, "the load stalled");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn finish(self) -> Load {
        self.stop.store(true, Ordering::Relaxed);
        self.worker.join().unwrap();
        let load = std::mem::take(&mut *self.load.lock().unwrap());
        eprintln!("{load}");
        load
    }
}

/// Sends `transfers` until each has a final answer (at most 30 s), recording it in `load`.
fn send_until_decided(client: &ClusterClient, mut left: Vec<NewTransfer>, load: &mut Load) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !left.is_empty() {
        // The answers that left this round's transfers undecided (or the error), for the
        // message if they never get decided.
        let last_answers = match client.create_transfers(&left) {
            Ok(codes) => {
                let mut again = Vec::new();
                let mut again_codes = Vec::new();
                for (t, c) in left.iter().zip(codes) {
                    match c {
                        ResultCode::Ok => {
                            load.acknowledged.insert(t.id);
                        }
                        ResultCode::Exists => {
                            load.existing.insert(t.id);
                        }
                        c if retry_later(c) => {
                            again.push(*t);
                            again_codes.push(c);
                        }
                        ResultCode::TccTimeout => load.refused += 1,
                        c => panic!("transfer {:#x}: unexpected {c:?}", t.id),
                    }
                }
                again_codes.truncate(8);
                left = again;
                format!("{again_codes:?}")
            }
            Err(e) => {
                load.errors += 1;
                e.to_string()
            }
        };
        assert!(
            left.is_empty() || Instant::now() < deadline,
            "{} transfers undecided after 30 s (the first {:#x}; the last answers: {last_answers})",
            left.len(),
            left[0].id
        );
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Codes that mean "not decided yet, ask again with the same id".
fn retry_later(code: ResultCode) -> bool {
    matches!(
        code,
        ResultCode::NotLeader
            | ResultCode::Busy
            | ResultCode::StorageFull
            | ResultCode::ShuttingDown
            | ResultCode::Pending
            | ResultCode::StorageError
    )
}

/// Sends batches until `stop`, each retried (same ids) until every item has a final answer.
fn run_load(client: ClusterClient, stop: Arc<AtomicBool>, load: Arc<Mutex<Load>>, seed: u64) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        // Held while the batch is decided: readers see whole batches only.
        let mut load = load.lock().unwrap();
        send_until_decided(&client, batch(n, seed), &mut load);
        load.batches += 1;
    }
}

/// On every running node (follower reads, after the states converged): every acknowledged
/// transfer is present and applied, money is conserved once every TC/C has settled, and no
/// balance is below its floor.
fn check_invariants(
    cluster: &TestCluster,
    acknowledged: &BTreeSet<u128>,
    existing: &BTreeSet<u128>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, _) in cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.is_some())
    {
        let client = cluster.client_of(i);
        loop {
            let accounts = client
                .lookup_accounts_follower(&all_accounts())
                .expect("follower read");
            let accounts: Vec<_> = accounts
                .into_iter()
                .map(|a| a.expect("every account exists on every node"))
                .collect();
            for a in &accounts {
                assert!(
                    a.balance >= a.floor,
                    "node {}: account {} below its floor: {a:?}",
                    i + 1,
                    a.id
                );
            }
            let held: i64 = accounts.iter().map(|a| a.held).sum();
            if held == 0 {
                let total: i64 = accounts.iter().map(|a| a.balance).sum();
                assert_eq!(total, 0, "node {}: money was created or lost", i + 1);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {}: TC/C holds did not settle",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let ids: Vec<u128> = acknowledged.iter().copied().collect();
        for chunk in ids.chunks(4096) {
            let found = client
                .lookup_transfers_follower(chunk)
                .expect("follower read");
            for (id, found) in chunk.iter().zip(found) {
                let found = found.unwrap_or_else(|| {
                    panic!("node {}: acknowledged transfer {id:#x} is lost", i + 1)
                });
                assert_eq!(
                    found.status,
                    ResultCode::Ok,
                    "node {}: transfer {id:#x}",
                    i + 1
                );
            }
        }
        let ids: Vec<u128> = existing.iter().copied().collect();
        for chunk in ids.chunks(4096) {
            let found = client
                .lookup_transfers_follower(chunk)
                .expect("follower read");
            for (id, found) in chunk.iter().zip(found) {
                assert!(
                    found.is_some(),
                    "node {}: transfer {id:#x} answered exists is missing",
                    i + 1
                );
            }
        }
    }
}

fn change(action: Action, node_id: u64) -> ClusterChange {
    ClusterChange {
        action,
        node_id,
        peer_addr: String::new(),
        client_addr: String::new(),
    }
}

fn seed() -> u64 {
    walletd_tests::seed_from_env("WALLETD_TEST_SEED")
}

#[test]
fn a_leader_killed_under_load_is_replaced_and_catches_up_by_snapshot() {
    let seed = seed();
    let root = tempfile::tempdir().unwrap();
    // The read model stays on (a follower's is restarted by the snapshot it installs), but a
    // restart does not rebuild its history: that would keep the log back to the previous
    // snapshot, and the dead node would catch up from the log instead.
    let logs = root.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let options = ClusterOptions {
        extra_config: "read_model_rebuild_entries = 0\n".into(),
        log_dir: Some(logs),
    };
    let mut cluster =
        TestCluster::start_with(WALLETD.as_ref(), root.path(), 3, PARTITIONS, options);
    cluster.init();
    let client = cluster.cluster_client();
    setup(&client);

    let running = Running::start(&cluster, seed);
    running.wait_batches(20);

    // SIGKILL the leader of partition 0 under load (as it is now: leadership may have moved
    // since `init`).
    let before = cluster.wait_for_leaders(Duration::from_secs(10));
    let victim = before.partitions[0].leader.expect("a leader") as usize - 1;
    cluster.kill(victim);
    let map = cluster.wait_for_leaders(Duration::from_secs(30));
    assert!(
        map.partitions[0].term > before.partitions[0].term,
        "no new election for partition 0: {map:?}"
    );
    // A routing client whose map still names the dead leader reads on: its lookups refresh
    // the map and ask the new leader (they failed on the dead node's address before).
    let accounts = futures::executor::block_on(client.lookup_accounts_async(&all_accounts()))
        .expect("lookups through a map naming a dead leader");
    assert!(accounts.iter().all(|a| a.is_some()));
    // Clients go on; meanwhile more than a snapshot interval of entries is written, so the
    // leaders purge what the dead node misses.
    running.wait_batches(100);
    cluster.restart(victim);
    running.wait_batches(20);
    let load = running.finish();
    assert!(load.acknowledged.len() > 100 * BATCH);
    // The restarted node caught up by a snapshot (the leaders had purged what it missed).
    cluster.wait_for_log(
        victim,
        "installed a snapshot from the leader",
        Duration::from_secs(30),
        || std::thread::sleep(Duration::from_millis(200)),
    );
    let digest = cluster.converged_digest(Duration::from_secs(60));
    check_invariants(&cluster, &load.acknowledged, &load.existing);
    // The checks wrote nothing: the digest is still every node's.
    assert_eq!(cluster.converged_digest(Duration::from_secs(30)), digest);
}

/// How far above the end of its log a "full" follower's file size limit lies: room for the
/// entries its leaders sent before it was frozen, which it still appends once it resumes.
const FULL_DISK_HEADROOM_BYTES: u64 = 4 << 20;

#[test]
fn a_follower_with_a_full_disk_catches_up_by_snapshot_once_space_returns() {
    let seed = seed();
    let root = tempfile::tempdir().unwrap();
    let logs = root.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let options = ClusterOptions {
        // As in the snapshot test above: no history rebuild that would keep the log back.
        extra_config: "read_model_rebuild_entries = 0\n".into(),
        log_dir: Some(logs),
    };
    let cluster = TestCluster::start_with(WALLETD.as_ref(), root.path(), 3, PARTITIONS, options);
    let map = cluster.init();
    let client = cluster.cluster_client();
    setup(&client);
    let running = Running::start(&cluster, seed);
    running.wait_batches(20);

    // A node that leads no partition (two partitions, three nodes: there is one), frozen
    // while the others write far past a snapshot interval and purge what it lacks.
    let leaders: Vec<u64> = map.partitions.iter().filter_map(|p| p.leader).collect();
    let victim = (1..=3u64)
        .find(|n| !leaders.contains(n))
        .expect("a node without a partition to lead") as usize
        - 1;
    let pid = cluster.nodes[victim].as_ref().expect("running").pid();
    assert!(cluster.pause(victim));
    running.wait_batches(300);
    // The "full disk": a file size limit above where its log ends (0.6 to 3.3 MB seen at this
    // point), so that the entries still on their way to it fit: a follower whose append waits
    // for space answers nothing, snapshots included, and the refused transfer this test waits
    // for would never come. And below the snapshots the leaders have (the one they send is
    // at least as big): more load until they are (a snapshot under the limit would install).
    let limit = cluster.log_end_bytes(victim) + FULL_DISK_HEADROOM_BYTES;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let snapshot = (0..3)
            .filter(|i| *i != victim)
            .filter_map(|i| cluster.newest_snapshot_bytes(i))
            .min()
            .unwrap_or(0);
        if snapshot > limit {
            eprintln!("file size limit {limit} bytes, the leaders' snapshots {snapshot} and up");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leaders' snapshots stayed at {snapshot} bytes, the limit is {limit}"
        );
        running.wait_batches(20);
    }
    walletd_tests::set_file_size_limit(pid, Some(limit)).expect("prlimit");
    assert!(cluster.resume(victim));
    let started = Instant::now();

    // It needs a snapshot larger than it may write: the transfer fails, here and again (the
    // leaders resend it), while the others go on.
    cluster.wait_for_log(
        victim,
        "a snapshot transfer to this node failed",
        Duration::from_secs(60),
        || running.wait_batches(1),
    );
    running.wait_batches(20);

    // Space returns: the next transfer succeeds and the node catches up.
    walletd_tests::set_file_size_limit(pid, None).expect("prlimit");
    let full_for = started.elapsed();
    running.wait_batches(20);
    let load = running.finish();
    let digest = cluster.converged_digest(Duration::from_secs(60));
    check_invariants(&cluster, &load.acknowledged, &load.existing);
    assert_eq!(cluster.converged_digest(Duration::from_secs(30)), digest);
    // It caught up by a snapshot installed after the failed transfers.
    let log = cluster.log_file(victim).expect("the cluster keeps logs");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let failed = text
        .rfind("a snapshot transfer to this node failed")
        .expect("the failures are logged");
    // The leaders paused after each refused transfer (the link's longest reconnect backoff,
    // 500 ms): a few attempts a second, where resending at once made hundreds. The bound
    // allows twice the rate.
    let attempts = text
        .matches("a snapshot transfer to this node failed")
        .count();
    let bound = PARTITIONS as usize * (full_for.as_millis() as usize / 250 + 2);
    eprintln!("{attempts} failed snapshot transfers while the disk was full for {full_for:?}");
    assert!(
        attempts <= bound,
        "{attempts} failed transfers in {full_for:?} (at most {bound})"
    );
    assert!(
        text[failed..].contains("installed a snapshot from the leader"),
        "no snapshot installed after the last failed transfer: {}",
        &text[failed..]
    );
}

/// The leader of a partition runs out of disk (a file size limit of one byte: every log
/// write fails) under load. It cannot commit, and while its append waits for space it sends no
/// heartbeats: the other two elect a leader, the clients follow it (the stuck node answers
/// `not_leader` and still shows itself as leader, in an older term), and once space returns the
/// old leader rejoins as a follower. Nothing acknowledged is lost.
#[test]
fn a_leader_whose_disk_fills_up_is_replaced_and_nothing_is_lost() {
    let seed = seed();
    let root = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(WALLETD.as_ref(), root.path(), 3, PARTITIONS);
    let map = cluster.init();
    let client = cluster.cluster_client();
    setup(&client);
    let running = Running::start(&cluster, seed);
    running.wait_batches(20);

    let old = map.partitions[0].leader.expect("a leader");
    let pid = cluster.nodes[old as usize - 1]
        .as_ref()
        .expect("running")
        .pid();
    walletd_tests::set_file_size_limit(pid, Some(1)).expect("prlimit");
    // The others elect a new leader; the load goes on through it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let views: Vec<Option<u64>> = (1..=3u64)
            .filter(|n| *n != old)
            .map(|n| {
                cluster
                    .client_of(n as usize - 1)
                    .partition_map()
                    .ok()
                    .and_then(|m| m.partitions[0].leader)
            })
            .collect();
        if views.iter().all(|l| l.is_some_and(|l| l != old)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the others did not replace node {old}: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    running.wait_batches(50);

    // Space returns: the old leader catches up as a follower.
    walletd_tests::set_file_size_limit(pid, None).expect("prlimit");
    running.wait_batches(20);
    let load = running.finish();
    let digest = cluster.converged_digest(Duration::from_secs(60));
    check_invariants(&cluster, &load.acknowledged, &load.existing);
    assert_eq!(cluster.converged_digest(Duration::from_secs(30)), digest);
}

#[test]
fn an_isolated_leader_acknowledges_nothing_and_loses_nothing() {
    let seed = seed();
    let root = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(WALLETD.as_ref(), root.path(), 3, PARTITIONS);
    let map = cluster.init();
    let client = cluster.cluster_client();
    setup(&client);
    let mut load = Load::default();
    for n in 1..=10 {
        send_until_decided(&client, batch(n, seed), &mut load);
    }

    // Cut the leader of partition 0 off from both others, in both directions.
    let leader = map.partitions[0].leader.expect("a leader");
    let li = leader as usize - 1;
    for i in 0..3 {
        let c = cluster.client_of(i);
        if i == li {
            for other in (1..=3).filter(|o| *o != leader) {
                c.cluster_change(&change(Action::Isolate, other))
                    .expect("isolate");
            }
        } else {
            c.cluster_change(&change(Action::Isolate, leader))
                .expect("isolate");
        }
    }
    // The minority side: a write sent straight to the isolated node is not acknowledged.
    let isolated = {
        let mut config = net::ClientConfig::new(cluster.specs[li].client_addr.clone());
        config.timeout_ms = 3_000;
        config.retries = 0;
        net::Client::connect(config).expect("connect")
    };
    let minority: Vec<NewTransfer> = batch(1_000, seed)
        .into_iter()
        .filter(|t| partition_of(t.from, PARTITIONS) == 0)
        .collect();
    match isolated.create_transfers(&minority) {
        Err(_) => {}
        Ok(codes) => assert!(
            codes
                .iter()
                .all(|c| *c != ResultCode::Ok && *c != ResultCode::Exists),
            "the isolated node acknowledged: {codes:?}"
        ),
    }
    // The majority side elects a leader of its own and goes on.
    let deadline = Instant::now() + Duration::from_secs(30);
    let majority = (0..3).find(|i| *i != li).expect("a majority node");
    loop {
        let map = cluster.client_of(majority).partition_map().expect("map");
        if map.partitions[0].leader.is_some_and(|l| l != leader) {
            break;
        }
        assert!(Instant::now() < deadline, "the majority elected no leader");
        std::thread::sleep(Duration::from_millis(100));
    }
    let majority_client = {
        let mut template = net::ClientConfig::new(cluster.specs[majority].client_addr.clone());
        template.timeout_ms = 10_000;
        let seeds: Vec<String> = (0..3)
            .filter(|i| *i != li)
            .map(|i| cluster.specs[i].client_addr.clone())
            .collect();
        ClusterClient::connect(template, &seeds).expect("majority client")
    };
    for n in 11..=30 {
        send_until_decided(&majority_client, batch(n, seed), &mut load);
    }

    // Heal: the old leader rejoins as a follower, and the minority's unacknowledged writes
    // are gone or (retried) harmless; nothing acknowledged is lost.
    for i in 0..3 {
        cluster
            .client_of(i)
            .cluster_change(&change(Action::HealAll, 0))
            .expect("heal");
    }
    cluster.wait_for_leaders(Duration::from_secs(30));
    cluster.converged_digest(Duration::from_secs(60));
    eprintln!("{load}");
    check_invariants(&cluster, &load.acknowledged, &load.existing);

    // Partition 0 is led by another node than the one init gave it (its preferred node).
    check_cluster_status(&cluster);
    let preferred = leader; // init: partition 0 to the first node by id
    assert_eq!(preferred, 1);
    let addr = cluster.specs[0].client_addr.clone();
    let started = Instant::now();
    let report = walletd_tests::wallet_json(
        WALLET,
        &addr,
        &["cluster", "balance-leaders", "--timeout-secs", "20"],
    );
    eprintln!("balance-leaders in {:?}: {report}", started.elapsed());
    let p0 = &report["partitions"][0];
    assert_eq!(p0["preferred"], preferred);
    assert_ne!(p0["leader_before"], preferred, "{report}");
    assert_eq!(p0["leader_after"], preferred, "{report}");
    assert_eq!(report["unbalanced"], 0);
    let map = cluster.wait_for_leaders(Duration::from_secs(10));
    assert_eq!(map.partitions[0].leader, Some(preferred));
    // The new leader takes writes; nothing acknowledged was lost.
    let client = cluster.cluster_client();
    for n in 31..=33 {
        send_until_decided(&client, batch(n, seed), &mut load);
    }
    cluster.converged_digest(Duration::from_secs(60));
    check_invariants(&cluster, &load.acknowledged, &load.existing);

    cli_on_a_follower(&cluster);
    link_metrics(&cluster);
}

/// Every node's metrics count its node-link traffic (requests it sent: a node that never led
/// nor campaigned sent none, its answers travel back on its peers' connections): the leaders'
/// frames carried Raft messages, several per frame at times (heartbeats and entries of both
/// partitions share writes), over connections they made.
fn link_metrics(cluster: &TestCluster) {
    let (mut frames_all, mut connects_all) = (0, 0);
    for spec in &cluster.specs {
        let (status, body) = walletd_tests::http_get(&spec.metrics_addr, "/metrics");
        assert!(status.contains("200"), "{status}: {body}");
        let value = |name: &str| -> u64 {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} in node {}'s metrics", spec.node_id))
        };
        let frames = value("walletd_link_frames_sent_total");
        let messages = value("walletd_link_messages_sent_total");
        assert!(
            messages >= frames,
            "node {}: {messages} < {frames}",
            spec.node_id
        );
        assert_eq!(
            frames > 0,
            value("walletd_link_messages_per_frame_max") > 0,
            "node {}",
            spec.node_id
        );
        frames_all += frames;
        connects_all += value("walletd_link_connects_total");
        value("walletd_link_connect_failures_total");
    }
    assert!(
        frames_all > 0 && connects_all >= 2,
        "{frames_all} frames, {connects_all} connects"
    );
}

/// `wallet` pointed at a node that does not lead the partition of the accounts it names
/// still creates, transfers and looks up: it sends each command to the partition's leader
/// (`wallet_target`), where the node itself would answer `not_leader`.
fn cli_on_a_follower(cluster: &TestCluster) {
    let map = cluster.wait_for_leaders(Duration::from_secs(10));
    let partition = 1u32;
    let leader = map.partitions[partition as usize].leader.expect("a leader");
    // Every node runs again (healed): any other than the leader follows.
    let follower = (0..cluster.specs.len())
        .find(|i| *i as u64 + 1 != leader)
        .expect("a follower");
    let addr = cluster.specs[follower].client_addr.clone();
    let ids: Vec<u128> = (1u128 << 90..)
        .filter(|id| partition_of(*id, PARTITIONS) == partition)
        .take(2)
        .collect();
    let (issuer, wallet) = (ids[0].to_string(), ids[1].to_string());
    eprintln!("wallet commands on follower node {}", follower + 1);
    let cli = |args: &[&str]| walletd_tests::wallet_json(WALLET, &addr, args);
    let created = cli(&[
        "create-account",
        "--id",
        &issuer,
        "--currency",
        "EUR",
        "--floor",
        "-1000",
    ]);
    assert_eq!(created["result"], "ok");
    assert_eq!(
        cli(&["create-account", "--id", &wallet, "--currency", "EUR"])["result"],
        "ok"
    );
    let transfer_id = (1u128 << 95).to_string();
    let args = [
        "transfer",
        "--id",
        &transfer_id,
        "--from",
        &issuer,
        "--to",
        &wallet,
        "--amount",
        "250",
        "--currency",
        "EUR",
    ];
    assert_eq!(cli(&args)["result"], "ok");
    // The retry with the same id is harmless, through the leader as well.
    assert_eq!(cli(&args)["result"], "exists");
    assert_eq!(cli(&["balance", &wallet])["balance"], 250);
    let found = cli(&["lookup-transfer", &transfer_id]);
    assert_eq!(found["status"], "applied", "{found}");
    assert_eq!(found["amount"], 250);

    // A plain client's lookup (a read of the leader's state) on the follower is refused with
    // `not_leader`, naming the partition that refused and its leader.
    let wallet_id: u128 = ids[1];
    match cluster.client_of(follower).lookup_accounts(&[wallet_id]) {
        Err(ClientError::Refused {
            error: ProtocolError::NotLeader,
            message,
        }) => assert!(
            message.contains(&format!("partition {partition} "))
                && message.contains(&format!("node {leader}")),
            "the refusal names another partition or leader: {message}"
        ),
        other => panic!("a leader read on a follower was not refused as not_leader: {other:?}"),
    }
}

/// `wallet cluster status --json`: every partition's leader answers with a commit index at
/// or past everything it applied (every acknowledged write: a write is acknowledged after
/// apply) and lists both followers with their matched index; with no load, they catch up to
/// the leader's log (lag 0) within a few heartbeats.
fn check_cluster_status(cluster: &TestCluster) {
    let addr = cluster.specs[0].client_addr.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let map = cluster.wait_for_leaders(Duration::from_secs(10));
        // What each leader applied before the status is asked: a floor for its commit index.
        let applied: Vec<u64> = map
            .partitions
            .iter()
            .enumerate()
            .map(|(p, leader)| {
                let i = (leader.leader.expect("a leader") - 1) as usize;
                let status = cluster.client_of(i).status().expect("status");
                status.partitions[p].last_index
            })
            .collect();
        let status = walletd_tests::wallet_json(WALLET, &addr, &["cluster", "status"]);
        let mut caught_up = true;
        for (p, floor) in applied.iter().enumerate() {
            let part = &status["partitions"][p];
            // The fields that were there before stay.
            for field in ["partition", "leader", "term", "replicas"] {
                assert!(!part[field].is_null(), "{field} in {part}");
            }
            if part["leader"] != map.partitions[p].leader.expect("a leader") {
                caught_up = false; // leadership moved meanwhile: ask again
                continue;
            }
            let commit = part["commit_index"].as_u64().expect("commit index");
            assert!(
                commit >= *floor,
                "partition {p}: commit {commit} < applied {floor}"
            );
            let leader_log = part["leader_last_log_index"].as_u64().expect("log index");
            assert!(commit <= leader_log, "{part}");
            let followers = part["followers"].as_array().expect("followers");
            assert_eq!(followers.len(), 2, "{part}");
            for f in followers {
                assert_eq!(f["voter"], true);
                let matched = f["matched_index"].as_u64().expect("matched index");
                let lag = f["lag_entries"].as_u64().expect("lag");
                assert_eq!(lag, leader_log - matched, "{f}");
                caught_up &= lag == 0;
            }
        }
        if caught_up {
            eprintln!("cluster status: {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "followers did not catch up: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn membership_goes_from_three_to_five_to_three_nodes_under_load() {
    let seed = seed();
    let root = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(WALLETD.as_ref(), root.path(), 3, PARTITIONS);
    cluster.init();
    setup(&cluster.cluster_client());

    let running = Running::start(&cluster, seed);
    running.wait_batches(10);
    let grow = Duration::from_secs(90);
    for _ in 0..2 {
        let i = cluster.add_node(root.path(), PARTITIONS);
        let spec = &cluster.specs[i];
        let add = ClusterChange {
            action: Action::AddNode,
            node_id: spec.node_id,
            peer_addr: format!("127.0.0.1:{}", spec.peer_port),
            client_addr: spec.client_addr.clone(),
        };
        cluster.change_everywhere(&add, grow);
        running.wait_batches(5);
    }
    // Five voters in every partition, as every node's map shows.
    let map = cluster.client_of(0).partition_map().expect("map");
    assert_eq!(map.nodes.len(), 5, "{map:?}");
    // Back to three: remove the two newest nodes, then stop them.
    for id in [5u64, 4] {
        cluster.change_everywhere(&change(Action::RemoveNode, id), grow);
        running.wait_batches(5);
    }
    let load = running.finish();
    cluster.kill(4);
    cluster.kill(3);
    let map = cluster.wait_for_leaders(Duration::from_secs(30));
    assert_eq!(map.nodes.len(), 3, "{map:?}");
    cluster.converged_digest(Duration::from_secs(60));
    check_invariants(&cluster, &load.acknowledged, &load.existing);
}
