//! The harness on a cluster (`ChaosConfig::nodes` > 1, e.g. `wallet-chaos --nodes 3`): the
//! nodes of a `TestCluster` (Raft groups of every node for every partition) under a load of
//! transfers inside and across partitions sent through a `ClusterClient`, with faults on a
//! seeded schedule, one node at a time so that a majority stays up:
//!
//! - `sigkill`: SIGKILL a node, restart it on the same data dir after 0.3-5 s;
//! - `sigstop`: SIGSTOP a node for 0.3-4 s (past the 1 s election timeout, often), SIGCONT;
//! - `isolate`: cut a node off from every other one, both ways (node link fault injection:
//!   `Isolate` on it for each other node and on each other node for it) for 1-5 s, then
//!   `HealAll` on every node.
//!
//! - `disk_full`: the node's disk runs "full" for 2-4 s (`RLIMIT_FSIZE` lowered on the live
//!   process, as in single-node mode): its log appends wait for space, a leader refuses new
//!   commands with `storage_full`, then space returns.
//!
//! At the end every fault is undone (SIGCONT, `HealAll`, dead nodes restarted), the load
//! drains, every partition has a leader, the TC/C holds settle on every node, the nodes' state
//! digests converge, and then each node is checked by follower reads (`check::verify`):
//! every `ok` applied with the acknowledged fields, every `exists` stored (applied, or a TC/C
//! cancelled in a failover), nothing refused applied, nothing applied twice (the stored count
//! equals what the lookups account for, every balance equals what the applied transfers make
//! it), money conserved per currency, no balance below its floor; and every node's
//! observation is the same.

use super::check;
use super::load::{Book, LoadReport};
use super::{join_loaders, say, say_at, tally, ChaosConfig, Summary, FAULT_RECORDS_MAX};
use crate::chaos::faults::FaultRecord;
use crate::cluster::{ClusterOptions, TestCluster};
use engine::ResultCode;
use net::cluster_admin::{Action, ClusterChange, Outcome};
use net::{Client, ClientConfig, ClusterClient};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The file size limit while a node's disk is "full" (as `faults::FULL_DISK_FILE_SIZE_BYTES`):
/// log writes past a segment's first block fail with EFBIG, small vote and meta files still fit.
const FULL_DISK_FILE_SIZE_BYTES: u64 = 4096;

/// How long the end waits for leaders, for the holds and for the digests to converge.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A fault on one node of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClusterFault {
    /// SIGKILL, then a restart after a random delay.
    Kill,
    /// SIGSTOP, then SIGCONT after a random delay.
    Pause,
    /// Cut off from every other node (both ways), then healed everywhere.
    Isolate,
    /// The disk runs full for a while (`RLIMIT_FSIZE`), then space returns.
    DiskFull,
}

impl ClusterFault {
    pub const ALL: [ClusterFault; 4] = [
        ClusterFault::Kill,
        ClusterFault::Pause,
        ClusterFault::Isolate,
        ClusterFault::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClusterFault::Kill => "sigkill",
            ClusterFault::Pause => "sigstop",
            ClusterFault::Isolate => "isolate",
            ClusterFault::DiskFull => "disk_full",
        }
    }
}

/// Rounds of every kind once in a random order, 1-2.5 s apart; the node is the leader of a
/// random partition half of the time (leader changes under load), else any node.
struct Schedule {
    rng: fastrand::Rng,
    round: Vec<ClusterFault>,
}

impl Schedule {
    fn new(seed: u64) -> Schedule {
        Schedule {
            rng: fastrand::Rng::with_seed(seed ^ 0xc105_7e8f),
            round: Vec::new(),
        }
    }

    fn gap(&mut self) -> Duration {
        Duration::from_millis(self.rng.u64(1_000..=2_500))
    }

    fn next(&mut self) -> ClusterFault {
        if self.round.is_empty() {
            self.round = ClusterFault::ALL.to_vec();
            self.rng.shuffle(&mut self.round);
        }
        self.round.pop().unwrap_or(ClusterFault::Kill)
    }

    fn victim(&mut self, cluster: &TestCluster, partitions: u32) -> usize {
        let nodes = cluster.specs.len();
        if self.rng.bool() {
            let p = self.rng.usize(..partitions.max(1) as usize);
            if let Some(leader) = leader_of(cluster, p) {
                return leader;
            }
        }
        self.rng.usize(..nodes)
    }
}

/// The index of the node that leads partition `p` now, as some running node's map says.
fn leader_of(cluster: &TestCluster, p: usize) -> Option<usize> {
    (0..cluster.specs.len())
        .filter(|i| cluster.nodes[*i].is_some())
        .find_map(|i| {
            let map = admin(cluster, i).ok()?.partition_map().ok()?;
            let leader = map.partitions.get(p)?.leader?;
            cluster.specs.iter().position(|s| s.node_id == leader)
        })
}

/// A short-timeout client of node `i` for administration (no retries: a down node fails fast).
fn admin(cluster: &TestCluster, i: usize) -> Result<Client, String> {
    let mut config = ClientConfig::new(cluster.specs[i].client_addr.clone());
    config.retries = 0;
    config.timeout_ms = 3_000;
    Client::connect(config).map_err(|e| format!("node {}: connect: {e}", i + 1))
}

fn change(cluster: &TestCluster, i: usize, action: Action, node_id: u64) -> Result<(), String> {
    let outcomes = admin(cluster, i)?
        .cluster_change(&ClusterChange {
            action,
            node_id,
            peer_addr: String::new(),
            client_addr: String::new(),
        })
        .map_err(|e| format!("node {}: {action:?} {node_id}: {e}", i + 1))?;
    match outcomes.iter().find(|o| o.outcome != Outcome::Ok) {
        None => Ok(()),
        Some(o) => Err(format!(
            "node {}: {action:?} {node_id}: partition {} answered {:?}: {}",
            i + 1,
            o.partition,
            o.outcome,
            o.message
        )),
    }
}

/// `HealAll` on every running node; retried for a while (a node just restarted or resumed
/// may not answer at once).
fn heal_everywhere(cluster: &TestCluster) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..cluster.specs.len() {
        if cluster.nodes[i].is_none() {
            continue;
        }
        loop {
            match change(cluster, i, Action::HealAll, 0) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => return Err(format!("heal: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    Ok(())
}

/// Runs `f`, turning a panic of the `TestCluster` helpers (they assert) into an error.
fn guard<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into());
        format!("{what}: {why}")
    })
}

/// Injects `kind` into node `i` and undoes it before returning a description.
fn inject(
    kind: ClusterFault,
    i: usize,
    cluster: &mut TestCluster,
    rng: &mut fastrand::Rng,
) -> Result<String, String> {
    let pid = cluster.nodes[i].as_ref().map_or(0, |n| n.pid());
    match kind {
        ClusterFault::Kill => {
            let down = Duration::from_millis(rng.u64(300..=5_000));
            cluster.kill(i);
            std::thread::sleep(down);
            let restarting = Instant::now();
            guard("restart", || cluster.restart(i))?;
            Ok(format!(
                "pid {pid} killed; down {:.2} s, restarted in {:.2} s",
                down.as_secs_f64(),
                restarting.elapsed().as_secs_f64()
            ))
        }
        ClusterFault::Pause => {
            let pause = Duration::from_millis(rng.u64(300..=4_000));
            if !cluster.pause(i) {
                return Err(format!("node {}: SIGSTOP failed", i + 1));
            }
            std::thread::sleep(pause);
            if !cluster.resume(i) {
                return Err(format!("node {}: SIGCONT failed", i + 1));
            }
            Ok(format!(
                "pid {pid} stopped for {:.2} s",
                pause.as_secs_f64()
            ))
        }
        ClusterFault::DiskFull => {
            let full = Duration::from_millis(rng.u64(2_000..=4_000));
            crate::set_file_size_limit(pid, Some(FULL_DISK_FILE_SIZE_BYTES))
                .map_err(|e| format!("node {}: prlimit: {e}", i + 1))?;
            std::thread::sleep(full);
            crate::set_file_size_limit(pid, None)
                .map_err(|e| format!("node {}: prlimit (space back): {e}", i + 1))?;
            Ok(format!(
                "pid {pid}: file size limit {FULL_DISK_FILE_SIZE_BYTES} bytes for {:.2} s",
                full.as_secs_f64()
            ))
        }
        ClusterFault::Isolate => {
            let cut = Duration::from_millis(rng.u64(1_000..=5_000));
            let id = cluster.specs[i].node_id;
            let others: Vec<usize> = (0..cluster.specs.len()).filter(|o| *o != i).collect();
            let mut result = Ok(());
            for &o in &others {
                let other_id = cluster.specs[o].node_id;
                result = result
                    .and_then(|()| change(cluster, i, Action::Isolate, other_id))
                    .and_then(|()| change(cluster, o, Action::Isolate, id));
            }
            if result.is_ok() {
                std::thread::sleep(cut);
            }
            // Heal even after a failed isolate (some links may be cut).
            let healed = heal_everywhere(cluster);
            result?;
            healed?;
            Ok(format!(
                "pid {pid} cut off from nodes {:?} for {:.2} s, healed everywhere",
                others
                    .iter()
                    .map(|o| cluster.specs[*o].node_id)
                    .collect::<Vec<_>>(),
                cut.as_secs_f64()
            ))
        }
    }
}

/// Creates the accounts and the opening deposits through the cluster (before any fault;
/// retried while leaders settle).
fn setup(client: &ClusterClient, book: &Book) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = |codes: &[ResultCode]| {
        codes
            .iter()
            .all(|c| matches!(c, ResultCode::Ok | ResultCode::Exists))
    };
    let creations = book.creations();
    loop {
        match client.create_accounts(&creations) {
            Ok(codes) if done(&codes) => break,
            other if Instant::now() > deadline => {
                return Err(format!("creating the accounts: {other:?}"))
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let funding = book.funding();
    loop {
        match client.create_transfers(&funding) {
            Ok(codes) if done(&codes) => return Ok(()),
            other if Instant::now() > deadline => {
                return Err(format!("the opening deposits: {other:?}"))
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

pub fn run(config: &ChaosConfig) -> Result<Summary, String> {
    let started = Instant::now();
    let mut summary = Summary {
        seed: config.seed,
        nodes: config.nodes,
        ..Summary::default()
    };
    let book = Arc::new(Book::new(config.partitions));
    let root = &config.work_dir;
    if root.join("node1").exists() {
        return Err(format!(
            "{} holds a cluster already: the harness checks a ledger it built itself; give it an empty --data-dir",
            root.display()
        ));
    }
    std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let options = ClusterOptions {
        // Small segments (rotations under load), a modest index pre-size (3 nodes on one
        // machine).
        extra_config: "segment_bytes = 4194304\ntransfers_capacity_per_partition = 1048576\n"
            .into(),
        log_dir: Some(root.to_path_buf()),
    };
    let mut cluster = guard("start the cluster", || {
        TestCluster::start_with(
            &config.walletd,
            root,
            config.nodes as u64,
            config.partitions,
            options,
        )
    })?;
    guard("cluster init", || cluster.init())?;
    let seeds: Vec<String> = cluster
        .specs
        .iter()
        .map(|s| s.client_addr.clone())
        .collect();
    say(
        config,
        started,
        &format!(
            "{} nodes up ({}), {} partitions (a Raft group of every node each), {} accounts; logs in {}/node*.log",
            cluster.specs.len(),
            seeds.join(", "),
            config.partitions,
            book.accounts.len(),
            root.display()
        ),
    );
    let mut template = ClientConfig::new(seeds[0].clone());
    template.retries = 0;
    template.timeout_ms = config.timeout_ms;
    let client =
        ClusterClient::connect(template, &seeds).map_err(|e| format!("cluster client: {e}"))?;
    setup(&client, &book)?;
    drop(client);

    // Load.
    let stop = Arc::new(AtomicBool::new(false));
    let loaders = super::spawn_loaders(config, &seeds[0], Some(seeds.clone()), &book, &stop)?;

    // Faults, one at a time, until the duration is up.
    let load_started = Instant::now();
    let mut schedule = Schedule::new(config.seed);
    let mut records: Vec<FaultRecord> = Vec::new();
    let mut outcome: Result<(), String> = Ok(());
    let mut leaderless_after: Vec<String> = Vec::new();
    loop {
        let left = config.duration.saturating_sub(load_started.elapsed());
        let gap = schedule.gap();
        if gap >= left {
            std::thread::sleep(left);
            break;
        }
        std::thread::sleep(gap);
        let kind = schedule.next();
        let i = schedule.victim(&cluster, config.partitions);
        let at = load_started.elapsed();
        let began = started.elapsed();
        let name = format!("node{}", cluster.specs[i].node_id);
        match inject(kind, i, &mut cluster, &mut schedule.rng) {
            Ok(detail) => {
                *summary.faults.entry(kind.name()).or_default() += 1;
                say_at(
                    config,
                    began,
                    &format!(
                        "fault {}: {} {name}: {detail}",
                        summary.faults.values().sum::<u64>(),
                        kind.name()
                    ),
                );
                if records.len() < FAULT_RECORDS_MAX {
                    records.push(FaultRecord {
                        at,
                        kind: kind.name(),
                        node: name,
                        detail,
                    });
                }
            }
            Err(e) => {
                outcome = Err(format!("fault {} ({name}) failed: {e}", kind.name()));
                break;
            }
        }
        // Before the next fault, every partition has a leader again (one faulty node at a
        // time: a majority is always up); if not within 30 s that is a finding, and the run
        // goes on.
        if let Err(e) = guard("leaders", || {
            cluster.wait_for_leaders(Duration::from_secs(30));
        }) {
            let what = format!(
                "no leader for some partition 30 s after fault {} ({} {}): {e}",
                summary.faults.values().sum::<u64>(),
                kind.name(),
                i + 1
            );
            say(config, started, &what);
            leaderless_after.push(what);
        }
    }
    summary.load_seconds = load_started.elapsed().as_secs_f64();
    summary.violations.extend(leaderless_after);

    // Undo whatever is left (nothing, unless a fault failed half-way).
    for i in 0..cluster.specs.len() {
        if cluster.nodes[i].is_none() {
            if let Err(e) = guard("restart", || cluster.restart(i)) {
                outcome = outcome.and(Err(e));
            }
        } else {
            cluster.resume(i);
        }
    }
    if let Err(e) = heal_everywhere(&cluster) {
        outcome = outcome.and(Err(e));
    }
    say(config, started, "faults over; stopping the load");
    stop.store(true, Ordering::Relaxed);
    let loads = join_loaders(loaders, &mut outcome);
    outcome?;
    summary.fault_log = records;
    tally(&mut summary, &loads);
    say(
        config,
        started,
        &format!(
            "load stopped: {} transfers sent, {} acknowledged ok, {} exists, {} refused",
            summary.transfers_sent,
            summary.acknowledged,
            summary.existing,
            summary.rejected.values().sum::<u64>()
        ),
    );
    final_check(config, started, &cluster, &book, &loads, &mut summary)?;
    summary.total_seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn final_check(
    config: &ChaosConfig,
    started: Instant,
    cluster: &TestCluster,
    book: &Book,
    loads: &[LoadReport],
    summary: &mut Summary,
) -> Result<(), String> {
    guard("leaders at the end", || {
        cluster.wait_for_leaders(SETTLE_TIMEOUT);
    })?;
    let connect = |i: usize| {
        let mut c = ClientConfig::new(cluster.specs[i].client_addr.clone());
        c.timeout_ms = 30_000;
        Client::connect(c).map_err(|e| format!("node {}: connect for the check: {e}", i + 1))
    };
    for i in 0..cluster.specs.len() {
        match check::wait_for_holds_follower(&connect(i)?, book) {
            Ok(took) => say(
                config,
                started,
                &format!(
                    "node {}: holds drained in {:.2} s",
                    i + 1,
                    took.as_secs_f64()
                ),
            ),
            Err(e) => summary.violations.push(format!("node {}: {e}", i + 1)),
        }
    }
    let digest = guard("converge", || cluster.converged_digest(SETTLE_TIMEOUT));
    match &digest {
        Ok(d) => {
            summary.digest = *d;
            say(
                config,
                started,
                &format!("every node's state digest is {d:032x}"),
            );
        }
        Err(e) => summary
            .violations
            .push(format!("the nodes' states did not converge: {e}")),
    }
    let mut fingerprints = Vec::new();
    for i in 0..cluster.specs.len() {
        let seen = check::observe_follower(&connect(i)?, book, loads)
            .map_err(|e| format!("node {}: {e}", i + 1))?;
        let verdict = check::verify(book, loads, &seen);
        summary.lost = summary.lost.max(verdict.lost);
        summary.duplicated = summary.duplicated.max(verdict.duplicated);
        summary.unanswered_applied = summary.unanswered_applied.max(verdict.unanswered_applied);
        summary.cancelled_stored = summary.cancelled_stored.max(verdict.cancelled);
        summary.stored_transfers = seen.stored;
        summary.fingerprint = seen.fingerprint;
        summary.violations.extend(
            verdict
                .violations
                .iter()
                .map(|v| format!("node {}: {v}", i + 1)),
        );
        say(
            config,
            started,
            &format!(
                "node {}: checked {} lookups: {} stored, {} cancelled TC/Cs, lost {}, duplicated {}, fingerprint {:016x}",
                i + 1,
                seen.lookups.len(),
                seen.stored,
                verdict.cancelled,
                verdict.lost,
                verdict.duplicated,
                seen.fingerprint
            ),
        );
        fingerprints.push(seen.fingerprint);
    }
    let same = fingerprints.windows(2).all(|w| w[0] == w[1]);
    if !same {
        summary.violations.push(format!(
            "the nodes answer differently for the same ids: fingerprints {fingerprints:016x?}"
        ));
    }
    // The checks wrote nothing: the digest is still every node's.
    let again = guard("converge again", || {
        cluster.converged_digest(Duration::from_secs(30))
    });
    let stable = matches!((&digest, &again), (Ok(a), Ok(b)) if a == b);
    if digest.is_ok() && !stable {
        summary.violations.push(format!(
            "the digest changed while only reads were sent: {digest:?} then {again:?}"
        ));
    }
    summary.digests_equal = digest.is_ok() && same;
    summary.digest_stable = stable;
    Ok(())
}

/// The summary of a cluster run as one JSON object (hand-written: no serde in the harness).
pub fn json(summary: &Summary, duration: Duration) -> String {
    let mut out = String::new();
    let map = |m: &std::collections::BTreeMap<&'static str, u64>| {
        let items: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", items.join(","))
    };
    let mut faults = summary.faults.clone();
    for kind in ClusterFault::ALL {
        faults.entry(kind.name()).or_default();
    }
    let _ = write!(
        out,
        "{{\"mode\":\"cluster\",\"nodes\":{},\"seed\":{},\"duration_s\":{},\"load_s\":{:.1},\"total_s\":{:.1},\
\"faults\":{},\"faults_total\":{},\
\"transfers_sent\":{},\"acknowledged\":{},\"existing\":{},\"cancelled_stored\":{},\"exists_on_retry\":{},\
\"refused_tcc_timeout\":{},\"rejected\":{},\"unanswered\":{},\"unanswered_applied\":{},\
\"batches\":{},\"batches_retried\":{},\"attempts\":{},\"errors\":{},\"stored_transfers\":{},\
\"lost\":{},\"duplicated\":{},\"digest\":\"{:032x}\",\"digests_equal\":{},\"digest_stable\":{},\"violations\":{},\"passed\":{}}}",
        summary.nodes,
        summary.seed,
        duration.as_secs(),
        summary.load_seconds,
        summary.total_seconds,
        map(&faults),
        summary.faults.values().sum::<u64>(),
        summary.transfers_sent,
        summary.acknowledged,
        summary.existing,
        summary.cancelled_stored,
        summary.exists_on_retry,
        summary.rejected.get("tcc_timeout").copied().unwrap_or(0),
        map(&summary.rejected),
        summary.unanswered,
        summary.unanswered_applied,
        summary.batches,
        summary.batches_retried,
        summary.attempts,
        map(&summary.errors),
        summary.stored_transfers,
        summary.lost,
        summary.duplicated,
        summary.digest,
        summary.digests_equal,
        summary.digest_stable,
        summary.violations.len(),
        summary.passed(),
    );
    out
}
