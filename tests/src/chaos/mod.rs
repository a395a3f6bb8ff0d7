//! The soak/chaos harness (issue 8): walletd node(s) on loopback under a steady load of
//! transfers (same- and cross-partition), with faults injected on a seeded random schedule
//! (SIGKILL + restart, SIGSTOP/SIGCONT, a full disk, SIGTERM + restart), then the invariant
//! check: money conserved per currency, no balance below its floor, every acknowledged
//! transfer applied with the acknowledged fields, nothing applied twice, and the state equal
//! after a crash-restart, after a clean restart, and when the log is replayed offline from
//! genesis or from the newest snapshot.
//!
//! Bounded in time (`duration`, plus the final check); bounded in memory (`max_transfers`).
//! The nodes are a `Vec<NodeHandle>` and faults pick a node, so a cluster slots in when Raft
//! exists; today it is one node (see `FaultKind` for the partition TODO). `wallet-chaos` is
//! the command line, `tests/chaos.rs` the CI-sized run.

pub mod check;
pub mod cluster;
pub mod faults;
pub mod load;
pub mod node;

use faults::{FaultKind, FaultRecord, Schedule};
use load::{Book, LoadConfig, LoadReport};
use node::NodeHandle;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Faults kept in the record (at least a second apart, so a long run stays far below this;
/// beyond it they are still injected and counted).
const FAULT_RECORDS_MAX: usize = 100_000;

#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// How long load and faults run (the final check comes after).
    pub duration: Duration,
    pub seed: u64,
    /// The walletd program.
    pub walletd: PathBuf,
    /// Where nodes keep data and logs (`DIR/node0/{data,walletd.toml,walletd.log}`); must not
    /// hold a ledger yet. Created if missing.
    pub work_dir: PathBuf,
    pub nodes: usize,
    /// walletd `--cores` and `--partitions`.
    pub cores: String,
    pub partitions: u32,
    pub threads: u32,
    /// Transfers per second over all load threads.
    pub rate: u64,
    pub batch_max: usize,
    pub cross_ratio: f64,
    /// Upper bound of transfers sent in all (bounds the harness's memory: ~12 bytes each).
    pub max_transfers: usize,
    /// Client request timeout (a lost reply is retried after it).
    pub timeout_ms: u64,
    /// Print each fault as it happens.
    pub verbose: bool,
}

impl ChaosConfig {
    /// The configuration a test run uses: the seed from `CHAOS_SEED` (else random) and the
    /// duration from the variable `secs_var` (else `default_secs`), both printed so that a
    /// failure can be repeated.
    pub fn from_env(
        walletd: PathBuf,
        work_dir: PathBuf,
        secs_var: &str,
        default_secs: u64,
    ) -> ChaosConfig {
        let env_u64 = |name: &str| std::env::var(name).ok().and_then(|s| s.parse().ok());
        let seed = env_u64("CHAOS_SEED").unwrap_or_else(|| fastrand::u64(..));
        let secs = env_u64(secs_var).unwrap_or(default_secs);
        println!("CHAOS_SEED={seed} {secs_var}={secs}");
        ChaosConfig::new(walletd, work_dir, seed, Duration::from_secs(secs))
    }

    pub fn new(walletd: PathBuf, work_dir: PathBuf, seed: u64, duration: Duration) -> ChaosConfig {
        ChaosConfig {
            duration,
            seed,
            walletd,
            work_dir,
            nodes: 1,
            cores: "0,1".into(),
            partitions: 4,
            threads: 4,
            rate: 5_000,
            batch_max: 200,
            cross_ratio: 0.3,
            max_transfers: 20_000_000,
            timeout_ms: 1_500,
            verbose: true,
        }
    }
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct Summary {
    pub seed: u64,
    pub load_seconds: f64,
    pub total_seconds: f64,
    pub faults: BTreeMap<&'static str, u64>,
    pub batches: u64,
    pub batches_retried: u64,
    pub attempts: u64,
    pub transfers_sent: u64,
    pub acknowledged: u64,
    /// Acknowledged by `exists` on a retry (applied by an attempt whose answer was lost).
    pub exists_on_retry: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    pub unanswered: u64,
    pub unanswered_applied: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Per-item answers over all attempts, by result code.
    pub codes: BTreeMap<&'static str, u64>,
    /// Failed attempts (no answer) by kind.
    pub errors: BTreeMap<&'static str, u64>,
    pub stored_transfers: u64,
    pub fingerprint: u64,
    pub replay_digest: u128,
    /// Cluster mode: how many nodes.
    pub nodes: usize,
    /// Cluster mode: answered `exists` (logged; applied, or a TC/C cancelled in a failover).
    pub existing: u64,
    /// Cluster mode: ids stored as a cancelled TC/C (not applied): every `tcc_timeout`
    /// refusal, plus `exists` answers whose TC/C a failover cancelled, plus unanswered ones.
    pub cancelled_stored: u64,
    /// Cluster mode: the combined state digest every node reported at the end.
    pub digest: u128,
    /// Cluster mode: every node reported the same state digest, and answered the final
    /// lookups the same (equal fingerprints).
    pub digests_equal: bool,
    /// Cluster mode: the digest was the same again after the check's reads (nothing was still
    /// moving once the states had converged).
    pub digest_stable: bool,
    /// Every fault injected, in order (the first `FAULT_RECORDS_MAX`).
    pub fault_log: Vec<FaultRecord>,
    pub violations: Vec<String>,
}

impl Summary {
    pub fn faults_of(&self, kind: FaultKind) -> u64 {
        self.faults.get(kind.name()).copied().unwrap_or(0)
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

fn map(m: &BTreeMap<&'static str, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "chaos summary (seed {})", self.seed)?;
        writeln!(
            f,
            "  duration      {:.1} s of load and faults, {:.1} s in all",
            self.load_seconds, self.total_seconds
        )?;
        let total: u64 = self.faults.values().sum();
        writeln!(f, "  faults        {total}: {}", map(&self.faults))?;
        writeln!(
            f,
            "  batches       sent={} retried={} attempts={}",
            self.batches, self.batches_retried, self.attempts
        )?;
        writeln!(
            f,
            "  transfers     sent={} acknowledged={} (exists on retry: {}) rejected={} unanswered={} (applied: {})",
            self.transfers_sent,
            self.acknowledged,
            self.exists_on_retry,
            self.rejected.values().sum::<u64>(),
            self.unanswered,
            self.unanswered_applied
        )?;
        writeln!(f, "  rejections    {}", map(&self.rejected))?;
        writeln!(f, "  answers       {}", map(&self.codes))?;
        writeln!(f, "  no answer     {}", map(&self.errors))?;
        if self.nodes > 1 {
            writeln!(
                f,
                "  cluster       {} nodes; answered exists: {}; cancelled TC/Cs stored: {}",
                self.nodes, self.existing, self.cancelled_stored
            )?;
            writeln!(
                f,
                "  state         {} transfers stored; fingerprint {:016x}; digest {:032x} ({} on every node; {})",
                self.stored_transfers,
                self.fingerprint,
                self.digest,
                if self.digests_equal { "equal" } else { "NOT equal" },
                if self.digest_stable {
                    "stable after the check"
                } else {
                    "CHANGED during the check"
                }
            )?;
        } else {
            writeln!(
                f,
                "  state         {} transfers stored; fingerprint {:016x} (live = after SIGKILL+restart = after clean restart); replay digest {:032x} (genesis = snapshot)",
                self.stored_transfers, self.fingerprint, self.replay_digest
            )?;
        }
        writeln!(f, "  lost          {}", self.lost)?;
        writeln!(f, "  duplicated    {}", self.duplicated)?;
        if self.violations.is_empty() {
            write!(f, "  result        PASS")
        } else {
            writeln!(
                f,
                "  result        FAIL: {} violation(s)",
                self.violations.len()
            )?;
            for v in &self.violations {
                writeln!(f, "    VIOLATION: {v}")?;
            }
            Ok(())
        }
    }
}

fn say(config: &ChaosConfig, started: Instant, what: &str) {
    say_at(config, started.elapsed(), what);
}

/// Prints `what` stamped with `at` (since the harness started).
fn say_at(config: &ChaosConfig, at: Duration, what: &str) {
    if config.verbose {
        println!("[{:8.3}s] {what}", at.as_secs_f64());
    }
}

/// Runs the harness. `Err` means the run could not be carried out (walletd did not start, a
/// node could not be brought back, the final check could not talk to it); `Ok` carries the
/// summary, whose `violations` say whether the invariants held.
pub fn run(config: &ChaosConfig) -> Result<Summary, String> {
    if config.nodes > 1 {
        return cluster::run(config);
    }
    let started = Instant::now();
    let mut summary = Summary {
        seed: config.seed,
        ..Summary::default()
    };
    let book = Arc::new(Book::new(config.partitions));
    let mut nodes = start_nodes(config)?;
    say(
        config,
        started,
        &format!(
            "{} node(s) up ({}), {} partitions, {} accounts",
            nodes.len(),
            nodes
                .iter()
                .map(|n| n.addr.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            config.partitions,
            book.accounts.len()
        ),
    );
    // The node the load and the checks talk to (the leader, once there is replication).
    let addr = nodes[0].addr.clone();
    setup(&addr, &book)?;

    // Load.
    let stop = Arc::new(AtomicBool::new(false));
    let loaders = spawn_loaders(config, &addr, None, &book, &stop)?;

    // Faults, until the duration is up.
    let load_started = Instant::now();
    let mut schedule = Schedule::new(config.seed);
    let mut records: Vec<FaultRecord> = Vec::new();
    let mut outcome: Result<(), String> = Ok(());
    loop {
        let left = config.duration.saturating_sub(load_started.elapsed());
        let gap = schedule.gap();
        if gap >= left {
            std::thread::sleep(left);
            break;
        }
        std::thread::sleep(gap);
        let (kind, n) = schedule.next(nodes.len());
        let at = load_started.elapsed();
        let began = started.elapsed();
        let node = &mut nodes[n];
        match schedule.inject(kind, node, &mut summary.violations) {
            Ok(detail) => {
                *summary.faults.entry(kind.name()).or_default() += 1;
                say_at(
                    config,
                    began,
                    &format!(
                        "fault {}: {} {}: {detail}",
                        summary.faults.values().sum::<u64>(),
                        kind.name(),
                        node.name
                    ),
                );
                if records.len() < FAULT_RECORDS_MAX {
                    records.push(FaultRecord {
                        at,
                        kind: kind.name(),
                        node: node.name.clone(),
                        detail,
                    });
                }
            }
            Err(e) => {
                outcome = Err(format!("fault {} ({}) failed: {e}", kind.name(), node.name));
                break;
            }
        }
    }
    summary.load_seconds = load_started.elapsed().as_secs_f64();
    // Heal whatever is left (nothing, unless a fault failed half-way), stop the load and let
    // every thread finish its last batch.
    for node in &mut nodes {
        if !node.is_running() {
            if let Err(e) = node.start() {
                outcome = outcome.and(Err(e));
            }
        } else if let Err(e) = node.heal() {
            outcome = outcome.and(Err(e));
        }
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
            "load stopped: {} transfers sent, {} acknowledged",
            summary.transfers_sent, summary.acknowledged
        ),
    );

    final_check(config, started, &mut nodes, &book, &loads, &mut summary)?;
    summary.total_seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn start_nodes(config: &ChaosConfig) -> Result<Vec<NodeHandle>, String> {
    let mut nodes = Vec::new();
    for n in 0..config.nodes.max(1) {
        let dir = config.work_dir.join(format!("node{n}"));
        let data = dir.join("data");
        if data.exists() {
            return Err(format!(
                "{} exists: the harness checks a ledger it built itself; give it an empty --data-dir",
                data.display()
            ));
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Small segments (rotations under load and under a full disk) and frequent snapshots
        // (crashes between them, restarts from them); a modest index pre-size.
        let toml = dir.join("walletd.toml");
        std::fs::write(
            &toml,
            "segment_bytes = 4194304\nsnapshot_interval_entries = 300\n\
             transfers_capacity_per_partition = 1048576\n",
        )
        .map_err(|e| format!("{}: {e}", toml.display()))?;
        let args = vec![
            "--config".to_string(),
            toml.display().to_string(),
            "--cores".into(),
            config.cores.clone(),
            "--partitions".into(),
            config.partitions.to_string(),
        ];
        let addr = format!("127.0.0.1:{}", crate::server_process::free_port());
        let mut node = NodeHandle::new(
            &format!("node{n}"),
            &config.walletd,
            addr,
            &data,
            &dir.join("walletd.log"),
            args,
        );
        node.start()?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Creates the accounts and the opening deposits (before any fault).
/// Starts `config.threads` load threads against `addr` (one node), or through a routing
/// client seeded with `cluster_seeds` (a cluster); each stops when `stop` is set.
pub(crate) fn spawn_loaders(
    config: &ChaosConfig,
    addr: &str,
    cluster_seeds: Option<Vec<String>>,
    book: &Arc<Book>,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<std::thread::JoinHandle<LoadReport>>, String> {
    let threads = config.threads.max(1);
    let per_thread_max = config.max_transfers / threads as usize;
    (0..threads)
        .map(|thread| {
            let load = LoadConfig {
                addr: addr.to_string(),
                cluster_seeds: cluster_seeds.clone(),
                seed: config.seed,
                rate: config.rate as f64 / threads as f64,
                batch_max: config.batch_max.clamp(1, engine::BATCH_ITEMS_MAX),
                cross_ratio: config.cross_ratio,
                max_transfers: per_thread_max,
                timeout_ms: config.timeout_ms,
            };
            let (book, stop) = (book.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("chaos-load-{thread}"))
                .spawn(move || load::run_load(thread, book, load, stop))
                .map_err(|e| format!("spawn a load thread: {e}"))
        })
        .collect()
}

/// Waits for every load thread; a thread that panicked makes `outcome` an error.
pub(crate) fn join_loaders(
    loaders: Vec<std::thread::JoinHandle<LoadReport>>,
    outcome: &mut Result<(), String>,
) -> Vec<LoadReport> {
    let mut loads = Vec::new();
    for loader in loaders {
        match loader.join() {
            Ok(report) => loads.push(report),
            Err(_) => {
                *outcome = std::mem::replace(outcome, Ok(()))
                    .and(Err("a load thread panicked".to_string()))
            }
        }
    }
    loads
}

fn setup(addr: &str, book: &Book) -> Result<(), String> {
    let client = net::Client::connect(net::ClientConfig::new(addr.to_string()))
        .map_err(|e| format!("connect: {e}"))?;
    let created = client
        .create_accounts(&book.creations())
        .map_err(|e| format!("create accounts: {e}"))?;
    if let Some(bad) = created.iter().find(|c| **c != engine::ResultCode::Ok) {
        return Err(format!("creating the accounts answered {bad}"));
    }
    let funded = client
        .create_transfers(&book.funding())
        .map_err(|e| format!("opening deposits: {e}"))?;
    if let Some(bad) = funded.iter().find(|c| **c != engine::ResultCode::Ok) {
        return Err(format!("an opening deposit answered {bad}"));
    }
    Ok(())
}

fn tally(summary: &mut Summary, loads: &[LoadReport]) {
    for l in loads {
        summary.batches += l.batches;
        summary.batches_retried += l.batches_retried;
        summary.attempts += l.attempts;
        summary.exists_on_retry += l.exists_on_retry;
        summary.transfers_sent += l.sent.len() as u64;
        for s in &l.sent {
            match s.outcome {
                load::Outcome::Acked => summary.acknowledged += 1,
                load::Outcome::Rejected(code) => {
                    *summary.rejected.entry(code.name()).or_default() += 1
                }
                load::Outcome::Unanswered => summary.unanswered += 1,
                load::Outcome::Existing => summary.existing += 1,
            }
        }
        for (k, v) in &l.codes {
            *summary.codes.entry(k).or_default() += v;
        }
        for (k, v) in &l.errors {
            *summary.errors.entry(k).or_default() += v;
        }
        summary.violations.extend(
            l.violations
                .iter()
                .map(|v| format!("load thread {}: {v}", l.thread)),
        );
        if l.violations_total > l.violations.len() as u64 {
            summary.violations.push(format!(
                "load thread {}: ... {} violations in all",
                l.thread, l.violations_total
            ));
        }
    }
}

/// Holds drained, then the protocol-level check; then the same state after a SIGKILL and
/// restart (snapshot + log replay), offline replays from genesis and from the newest snapshot
/// agreeing, and the same state after a clean restart.
fn final_check(
    config: &ChaosConfig,
    started: Instant,
    nodes: &mut [NodeHandle],
    book: &Book,
    loads: &[LoadReport],
    summary: &mut Summary,
) -> Result<(), String> {
    let connect = |addr: &str| {
        let mut c = net::ClientConfig::new(addr.to_string());
        c.timeout_ms = 30_000;
        net::Client::connect(c).map_err(|e| format!("connect for the check: {e}"))
    };
    let node = &mut nodes[0];
    let client = connect(&node.addr)?;
    let drained = check::wait_for_holds(&client, book);
    match drained {
        Ok(took) => say(
            config,
            started,
            &format!("holds drained in {:.2} s", took.as_secs_f64()),
        ),
        Err(e) => summary.violations.push(e),
    }
    let live = check::observe(&client, book, loads)?;
    let verdict = check::verify(book, loads, &live);
    summary.lost = verdict.lost;
    summary.duplicated = verdict.duplicated;
    summary.unanswered_applied = verdict.unanswered_applied;
    summary.stored_transfers = live.stored;
    summary.fingerprint = live.fingerprint;
    summary.violations.extend(verdict.violations);
    say(
        config,
        started,
        &format!(
            "checked {} lookups: lost {}, duplicated {}",
            live.lookups.len(),
            summary.lost,
            summary.duplicated
        ),
    );
    drop(client);

    // A crash now: recovery (newest snapshot + log replay) must give the same state.
    node.kill();
    node.start()?;
    let after_kill = check::observe(&connect(&node.addr)?, book, loads)?;
    if after_kill.fingerprint != live.fingerprint {
        summary.violations.push(format!(
            "state after SIGKILL + restart ({:016x}) differs from the live state ({:016x}): recovery does not reproduce it",
            after_kill.fingerprint, live.fingerprint
        ));
    }
    // A clean stop, then the log replayed offline: from genesis and from the newest snapshot.
    match node.terminate()? {
        Some(0) => {}
        code => summary
            .violations
            .push(format!("final clean stop exited with {code:?}, not 0")),
    }
    let genesis = engine::audit::replay(&node.data_dir, None, true)
        .map_err(|e| format!("offline replay from genesis: {e}"))?;
    let snapshot = engine::audit::replay(&node.data_dir, None, false)
        .map_err(|e| format!("offline replay from the snapshot: {e}"))?;
    summary.replay_digest = genesis.digest;
    if genesis.digest != snapshot.digest {
        summary.violations.push(format!(
            "replay from genesis (digest {:032x}) and from the newest snapshot ({:032x}) disagree",
            genesis.digest, snapshot.digest
        ));
    }
    if genesis.balances_total != 0 {
        summary.violations.push(format!(
            "replayed balances sum to {}, not 0",
            genesis.balances_total
        ));
    }
    let replayed: u64 = genesis
        .states
        .iter()
        .map(|s| s.transfer_count() as u64)
        .sum();
    if replayed != live.stored {
        summary.violations.push(format!(
            "replay from genesis holds {replayed} transfers, the live node {}",
            live.stored
        ));
    }
    say(
        config,
        started,
        &format!(
            "offline replay: {} entries, digest {:032x} (genesis) {} snapshot",
            genesis.entries,
            genesis.digest,
            if genesis.digest == snapshot.digest {
                "="
            } else {
                "!="
            }
        ),
    );
    node.start()?;
    let after_restart = check::observe(&connect(&node.addr)?, book, loads)?;
    if after_restart.fingerprint != live.fingerprint {
        summary.violations.push(format!(
            "state after a clean restart ({:016x}) differs from the live state ({:016x})",
            after_restart.fingerprint, live.fingerprint
        ));
    }
    match node.terminate()? {
        Some(0) => Ok(()),
        code => {
            summary
                .violations
                .push(format!("last clean stop exited with {code:?}, not 0"));
            Ok(())
        }
    }
}
