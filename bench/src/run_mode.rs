//! `wallet-bench run`: load over the network, through the client library, against a walletd
//! given by `--addr` or started here (`--spawn`).
//!
//! Closed loop (default): each of `--connections` workers has its own connection and keeps
//! `--pipeline` batches in flight on it, sending a new batch as each reply comes back.
//! Open loop (`--rate TPS`): batches are scheduled every `batch / TPS` seconds whatever the
//! replies do, and latency counts from the scheduled time, so a slow server shows up as
//! latency instead of being hidden by a client that politely waited (coordinated omission).
//!
//! Latency is per batch, from the moment the batch was ready (closed loop) or due (open loop)
//! to its reply, which the server sends only after the batch is durable. Batches that complete
//! during `--warmup` are left out of every number but the consistency check.

use crate::acked_ids::AckedIds;
use crate::machine;
use crate::progress::Progress;
use crate::spawn::{self, Walletd};
use crate::summary::{Check, Latency, Summary};
use crate::workload::{Accounts, MixedGenerator, Popularity};
use crate::zipf::Zipf;
use crate::{hgrm, report};
use engine::{NewTransfer, ResultCode, BATCH_ITEMS_MAX};
use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::future::{Either, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use net::{AnyClient, ClientConfig, ClientError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Serialize)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["addr", "spawn"])))]
pub struct RunArgs {
    /// A running walletd (it should hold no accounts but this bench's, or the conservation
    /// check covers only part of the money).
    #[arg(long)]
    addr: Option<String>,
    /// Start a local walletd on a free loopback port with a temporary data dir, stop it after.
    #[arg(long)]
    spawn: bool,
    /// walletd processes to spawn: 1, or a Raft cluster of 3 or 5 nodes on loopback
    /// (replication = raft, initialized with `cluster init`; the load goes to the node that
    /// leads every partition, as after a fresh init).
    #[arg(long, default_value_t = 1, conflicts_with = "addr")]
    nodes: u32,
    /// Wallet accounts to create (plus one issuer per partition).
    #[arg(long, default_value_t = 100_000)]
    accounts: u64,
    /// How long to measure, after the warm-up (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "as_secs")]
    duration: Duration,
    /// Load before measuring starts; its batches are not counted.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "as_secs")]
    warmup: Duration,
    /// Transfers per batch (one request).
    #[arg(long, default_value_t = BATCH_ITEMS_MAX)]
    batch: usize,
    /// Connections, one load worker each.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Batches in flight per connection (closed loop).
    #[arg(long, default_value_t = 4)]
    pipeline: usize,
    /// Share of transfers whose destination lives in another partition.
    #[arg(long, default_value_t = 0.0)]
    cross_partition_ratio: f64,
    /// Zipf exponent for picking accounts (0 = uniform; 1 = classic Zipf, hot accounts).
    #[arg(long, default_value_t = 0.0)]
    zipf: f64,
    /// Open loop: schedule this many transfers per second (in batches of --batch).
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: at most this many batches outstanding; a batch due beyond it waits (counted).
    #[arg(long, default_value_t = 10_000)]
    max_outstanding: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// --addr: speak TLS, trusting the CA certificate(s) in this PEM file (the server runs
    /// with --tls-cert/--tls-key).
    #[arg(long, value_name = "FILE", conflicts_with = "spawn")]
    tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of the address).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// Per-request client timeout in milliseconds (a timed-out request is retried).
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// --spawn: cores for walletd [default: 0,1].
    #[arg(long, value_delimiter = ',', conflicts_with = "addr")]
    cores: Option<Vec<usize>>,
    /// --spawn: partitions for walletd [default: 2]. With --addr the server's count is used.
    #[arg(long, conflicts_with = "addr")]
    partitions: Option<u32>,
    /// --spawn: the walletd binary [default: the one next to this executable].
    #[arg(long, conflicts_with = "addr")]
    walletd: Option<PathBuf>,
    /// --spawn --nodes 3|5: each node's `follower_apply_delay_us` (its followers apply this
    /// long after a commit, so that the leader's apply runs first on the shared CPUs; 0: at
    /// once, as a node on a machine of its own would).
    #[arg(long, default_value_t = crate::spawn_cluster::LOOPBACK_FOLLOWER_APPLY_DELAY_US)]
    follower_apply_delay_us: u64,
    /// --spawn: one more argument for walletd (repeatable), e.g.
    /// `--walletd-arg=--read-model-history-per-account=0`.
    #[arg(long, conflicts_with = "addr", allow_hyphen_values = true)]
    walletd_arg: Vec<String>,
    /// Write the JSON summary here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the batch latency distribution (HdrHistogram .hgrm text, microseconds) here.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Write DIR/index.html, a self-contained report with plots.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

const FUNDING_PER_ACCOUNT: u64 = 1_000_000_000;
/// How long the check waits for cross-partition transfers to settle (no hold left) before it
/// counts the accounts still holding money as a failure.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Latency histograms: 1 us to 1 hour, 3 significant digits.
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// The JSON summary of run mode: the common schema plus what only a network run has.
#[derive(Serialize)]
pub struct RunSummary {
    #[serde(flatten)]
    pub summary: Summary,
    /// Per transfer (each transfer counts with its batch's latency).
    pub transfer_latency_us: Latency,
    pub partitions: u32,
    /// Transfers acknowledged during the warm-up (not in `transfers`).
    pub warmup_transfers: u64,
    /// Transfers per second and batch latency over time, one point per second of the
    /// measurement (a second's batches are those answered in it).
    pub throughput_series: Vec<SeriesPoint>,
    /// Batches that failed after the client's retries, by error (their transfers are in no
    /// result count: their outcome is unknown).
    pub errors: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_loop: Option<OpenLoopStats>,
    /// Transfers acknowledged `ok`, warm-up included.
    pub acknowledged_ok: u64,
    /// Acknowledged-ok transfers looked up by the check (all of them).
    pub checked_acks: u64,
    /// The run was cut short by Ctrl-C.
    pub interrupted: bool,
}

#[derive(Serialize, Clone, Copy, Debug)]
pub struct SeriesPoint {
    /// End of the interval, seconds since the measurement started.
    pub t: f64,
    pub transfers_per_sec: f64,
    /// Batch latency percentiles of the batches answered in this second: a stall shows here
    /// as a spike at the moment it happened, where the run's histogram only says how often.
    /// All three are 0 for a second in which no batch was answered.
    pub batch_p50_us: u64,
    pub batch_p99_us: u64,
    pub batch_max_us: u64,
}

#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct OpenLoopStats {
    pub target_transfers_per_sec: f64,
    pub scheduled_batches: u64,
    /// Batches that were due while `max_outstanding` batches were already out, so went late
    /// (their latency still counts from when they were due).
    pub delayed_by_cap: u64,
    pub max_outstanding_seen: u64,
}

pub fn run(mut args: RunArgs) -> Result<(), String> {
    if ![1, 3, 5].contains(&args.nodes) {
        return Err(format!("--nodes {}: 1, 3 or 5", args.nodes));
    }
    if args.batch == 0 || args.batch > BATCH_ITEMS_MAX {
        return Err(format!("--batch must be 1..={BATCH_ITEMS_MAX}"));
    }
    if args.connections == 0 || args.pipeline == 0 {
        return Err("--connections and --pipeline must be at least 1".into());
    }
    if !(0.0..=1.0).contains(&args.cross_partition_ratio) {
        return Err("--cross-partition-ratio must be within 0..=1".into());
    }
    if !(args.zipf >= 0.0 && args.zipf.is_finite()) {
        return Err("--zipf must be 0 (uniform) or a positive exponent".into());
    }
    if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            return Err("--rate must be a positive number of transfers per second".into());
        }
    }
    if args.duration.is_zero() {
        return Err("--duration must be above zero".into());
    }
    if args.max_outstanding == 0 {
        return Err("--max-outstanding must be at least 1".into());
    }

    // Ctrl-C once: stop the load, check and report what ran. Twice: exit at once.
    let interrupted = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // (Actions run in registration order: the exit test sees the flag of the previous Ctrl-C.)
    signal_hook::flag::register_conditional_shutdown(
        signal_hook::consts::SIGINT,
        130,
        interrupted.clone(),
    )
    .and_then(|_| signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone()))
    .and_then(|_| signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone()))
    .map_err(|e| format!("cannot handle SIGINT: {e}"))?;

    let mut server: Option<Walletd> = None;
    let mut cluster: Option<crate::spawn_cluster::SpawnedCluster> = None;
    let addr = if args.spawn {
        let cores = args.cores.get_or_insert_with(|| vec![0, 1]).clone();
        let partitions = *args.partitions.get_or_insert(2);
        let binary = match &args.walletd {
            Some(path) => path.clone(),
            None => spawn::default_binary()?,
        };
        args.walletd = Some(binary.clone());
        eprintln!(
            "starting {} (cores {:?}, {} partitions)...",
            binary.display(),
            cores,
            partitions
        );
        if args.nodes > 1 {
            eprintln!(
                "  as a cluster of {} nodes (replication = raft)",
                args.nodes
            );
            let started = crate::spawn_cluster::SpawnedCluster::start(
                &binary,
                u64::from(args.nodes),
                &cores,
                partitions,
                args.follower_apply_delay_us,
                &args.walletd_arg,
            )?;
            started.wait_for_leaders()?;
            let addr = started.nodes[0].addr.clone();
            cluster = Some(started);
            addr
        } else {
            let started = Walletd::start(&binary, &cores, partitions, &args.walletd_arg)?;
            let addr = started.addr.clone();
            server = Some(started);
            addr
        }
    } else {
        args.addr.clone().expect("clap requires --addr or --spawn")
    };

    let tls = match &args.tls_ca {
        Some(ca) => {
            let name = args
                .tls_server_name
                .as_deref()
                .unwrap_or_else(|| net::tls::host_of(&addr));
            Some(net::ClientTls::from_ca_file(ca, name)?)
        }
        None => None,
    };
    let config = ClientConfig {
        connections: args.connections,
        timeout_ms: args.timeout_ms,
        tls,
        ..ClientConfig::new(addr.clone())
    };
    // A node of a cluster lists the others in its partition map: then every command goes to
    // its partition's leader (`AnyClient`) instead of everything to one node.
    let connect = |connections: usize| -> Result<AnyClient, String> {
        AnyClient::connect(ClientConfig {
            connections,
            ..config.clone()
        })
        .map_err(|e| e.to_string())
    };
    let client = connect(args.connections)?;
    let nodes = client.node_count();
    if nodes > 1 {
        eprintln!("{addr} is a node of a cluster of {nodes}: sending each batch to its partitions' leaders");
    }
    let partitions = client.partitions();
    if args.partitions.is_some_and(|p| p != partitions) {
        eprintln!(
            "wallet-bench: note: the server has {partitions} partitions (its data dir decides)"
        );
    }
    args.partitions = Some(partitions);
    let accounts = Accounts::new(args.accounts, partitions);
    if let Some(p) = accounts.by_partition.iter().position(|w| w.len() < 2) {
        return Err(format!(
            "partition {p} got fewer than 2 of the {} wallets; use more --accounts",
            args.accounts
        ));
    }

    let concurrency = args.connections * args.pipeline;
    eprintln!(
        "creating and funding {} wallets + {} issuers on {addr} ({partitions} partitions)...",
        args.accounts, partitions
    );
    let setup_started = Instant::now();
    setup(&client, &accounts, concurrency)?;
    eprintln!("setup took {:.1} s", setup_started.elapsed().as_secs_f64());
    if interrupted.load(Ordering::Relaxed) {
        return Err("interrupted during setup".into());
    }

    // One client (one connection) per worker, so `--pipeline` is exactly per connection.
    let worker_clients = (0..args.connections)
        .map(|_| connect(1))
        .collect::<Result<Vec<_>, _>>()?;
    let popularity = Arc::new(if args.zipf > 0.0 {
        Popularity::Zipf(Zipf::new(args.accounts, args.zipf))
    } else {
        Popularity::Uniform
    });
    // Transfer ids: a spawned server is empty, so fixed ids make runs reproducible; a given
    // server may hold an earlier run's transfers, so ids there are unique per run.
    let run_nonce: u64 = if args.spawn {
        1
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            .max(1)
    };
    let generators = (0..args.connections)
        .map(|w| {
            MixedGenerator::new(
                args.seed,
                w as u64,
                ((run_nonce as u128) << 64) | ((w as u128 + 1) << 48),
                args.cross_partition_ratio,
                popularity.clone(),
            )
        })
        .collect();

    let mode = if args.rate.is_some() {
        "open loop"
    } else {
        "closed loop"
    };
    eprintln!(
        "driving transfers ({mode}): {} s warm-up + {} s measured...",
        args.warmup.as_secs_f64(),
        args.duration.as_secs_f64()
    );
    let outcome = drive(
        &args,
        &accounts,
        &worker_clients,
        generators,
        &stop,
        &interrupted,
    );
    drop(worker_clients);
    let outcome = outcome?;

    eprintln!(
        "checking: looking up {} accounts and {} acknowledged transfers...",
        accounts.wallets() + accounts.issuers.len() as u64,
        outcome.ok_ids.len()
    );
    let check = check(&client, &accounts, &outcome.ok_ids, concurrency)?;
    drop(client);
    drop(cluster.take());
    if let Some(mut server) = server.take() {
        server.stop();
    }

    let seconds = outcome.seconds;
    let summary = RunSummary {
        summary: Summary {
            mode: "run",
            config: serde_json::to_value(&args).map_err(|e| e.to_string())?,
            machine: machine::describe(),
            transfers: outcome.transfers,
            seconds,
            transfers_per_sec: if seconds > 0.0 {
                outcome.transfers as f64 / seconds
            } else {
                0.0
            },
            latency_us: Latency::of(&outcome.batch_latency_us),
            results: outcome.results.clone(),
            check,
        },
        transfer_latency_us: Latency::of(&outcome.transfer_latency_us),
        partitions,
        warmup_transfers: outcome.warmup_transfers,
        throughput_series: outcome.series.clone(),
        errors: outcome.errors.clone(),
        open_loop: outcome.open_loop,
        acknowledged_ok: outcome.ok_ids.len() as u64,
        checked_acks: outcome.ok_ids.len() as u64,
        interrupted: interrupted.load(Ordering::Relaxed),
    };
    summary.summary.print_human();
    print_extras(&summary);
    if let Some(path) = &args.json {
        write_json(&summary, path)?;
    }
    if let Some(path) = &args.hgrm {
        std::fs::write(
            path,
            hgrm::percentile_distribution(&outcome.batch_latency_us, 1.0),
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(dir) = &args.report {
        let page = report::render(&report::Inputs {
            summary: &summary,
            batch_latency_us: &outcome.batch_latency_us,
            batch: args.batch,
        });
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("index.html");
        std::fs::write(&path, page).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("report: {}", path.display());
    }
    if !summary.summary.check.passed() {
        eprintln!();
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("!!  FAIL: the consistency check failed (see \"check\" above)        !!");
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        return Err("consistency check FAILED".into());
    }
    if summary.interrupted {
        return Err("interrupted (the numbers above cover the part that ran)".into());
    }
    Ok(())
}

fn print_extras(s: &RunSummary) {
    let t = &s.transfer_latency_us;
    println!(
        "transfer latency (us): p50 {}  p99 {}  p999 {}  max {}",
        t.p50, t.p99, t.p999, t.max
    );
    if let Some(open) = &s.open_loop {
        println!(
            "open loop: target {:.0} transfers/s, {} batches scheduled, {} delayed by the outstanding cap, at most {} outstanding",
            open.target_transfers_per_sec,
            open.scheduled_batches,
            open.delayed_by_cap,
            open.max_outstanding_seen
        );
    }
    if !s.errors.is_empty() {
        let errors: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "WARNING: failed batches (outcome unknown): {}",
            errors.join(" ")
        );
    }
    println!(
        "warm-up: {} transfers not counted; check looked up {} acknowledged transfers",
        s.warmup_transfers, s.checked_acks
    );
}

fn write_json(summary: &RunSummary, path: &std::path::Path) -> Result<(), String> {
    let text = serde_json::to_string_pretty(summary).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

/// Creates every account, then funds every wallet from its partition's issuer (transfer ids
/// `1..=N`). `exists` is fine: a given server may hold an earlier run's accounts.
fn setup(client: &AnyClient, accounts: &Accounts, concurrency: usize) -> Result<(), String> {
    let creations = accounts.creations();
    let replies: Vec<_> = futures::executor::block_on(
        futures::stream::iter(creations.chunks(BATCH_ITEMS_MAX))
            .map(|chunk| client.create_accounts_async(chunk))
            .buffer_unordered(concurrency)
            .collect(),
    );
    for reply in replies {
        let codes = reply.map_err(|e| format!("account creation failed: {e}"))?;
        if let Some(bad) = codes
            .iter()
            .find(|c| !matches!(c, ResultCode::Ok | ResultCode::Exists))
        {
            return Err(format!("account creation failed: {bad}"));
        }
    }
    let deposits = accounts.deposits(FUNDING_PER_ACCOUNT, 1);
    let replies: Vec<_> = futures::executor::block_on(
        futures::stream::iter(deposits.chunks(BATCH_ITEMS_MAX))
            .map(|chunk| client.create_transfers_async(chunk))
            .buffer_unordered(concurrency)
            .collect(),
    );
    for reply in replies {
        let codes = reply.map_err(|e| format!("funding failed: {e}"))?;
        if let Some(bad) = codes
            .iter()
            .find(|c| !matches!(c, ResultCode::Ok | ResultCode::Exists))
        {
            return Err(format!("funding failed: {bad}"));
        }
    }
    Ok(())
}

/// One batch's round trip, as a worker hands it to the aggregator.
struct Done {
    /// When the batch was ready (closed loop) or due (open loop).
    intended: Instant,
    finished: Instant,
    batch: Vec<NewTransfer>,
    reply: Result<Vec<ResultCode>, ClientError>,
}

struct Outcome {
    transfers: u64,
    seconds: f64,
    batch_latency_us: Histogram<u64>,
    transfer_latency_us: Histogram<u64>,
    results: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    warmup_transfers: u64,
    series: Vec<SeriesPoint>,
    open_loop: Option<OpenLoopStats>,
    /// Every acknowledged-ok id (16 bytes each: 160 MB for 10 million), all looked up by the
    /// check.
    ok_ids: AckedIds,
}

fn drive(
    args: &RunArgs,
    accounts: &Accounts,
    clients: &[AnyClient],
    generators: Vec<MixedGenerator>,
    stop: &AtomicBool,
    interrupted: &AtomicBool,
) -> Result<Outcome, String> {
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let deadline = measure_from + args.duration;
    let outstanding = AtomicUsize::new(0);
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let open_loop = args.rate.is_some();

    std::thread::scope(|scope| {
        let mut schedules = Vec::new();
        for (w, (client, generator)) in clients.iter().zip(generators).enumerate() {
            let (tx, rx) = if open_loop {
                let (tx, rx) = unbounded();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            schedules.extend(tx);
            let done_tx = done_tx.clone();
            let outstanding = &outstanding;
            std::thread::Builder::new()
                .name(format!("bench-worker-{w}"))
                .spawn_scoped(scope, move || {
                    work(Worker {
                        client,
                        accounts,
                        generator,
                        batch: args.batch,
                        pipeline: args.pipeline,
                        deadline,
                        stop,
                        schedule: rx,
                        done: done_tx,
                        outstanding,
                    })
                })
                .expect("spawn a worker thread");
        }
        drop(done_tx);
        let scheduler = args.rate.map(|rate| {
            let outstanding = &outstanding;
            let interval = args.batch as f64 / rate;
            let cap = args.max_outstanding;
            std::thread::Builder::new()
                .name("bench-scheduler".into())
                .spawn_scoped(scope, move || {
                    let mut stats =
                        schedule(start, deadline, interval, cap, schedules, stop, outstanding);
                    stats.target_transfers_per_sec = rate;
                    stats
                })
                .expect("spawn the scheduler thread")
        });
        let mut outcome = aggregate(
            args,
            start,
            measure_from,
            deadline,
            done_rx,
            stop,
            interrupted,
        );
        if let Some(scheduler) = scheduler {
            let stats = scheduler.join().expect("scheduler thread");
            if let Ok(outcome) = outcome.as_mut() {
                outcome.open_loop = Some(stats);
            }
        }
        outcome
    })
}

struct Worker<'a> {
    client: &'a AnyClient,
    accounts: &'a Accounts,
    generator: MixedGenerator,
    batch: usize,
    pipeline: usize,
    deadline: Instant,
    stop: &'a AtomicBool,
    /// Open loop: the times batches are due; closed loop: none.
    schedule: Option<UnboundedReceiver<Instant>>,
    done: mpsc::Sender<Done>,
    outstanding: &'a AtomicUsize,
}

fn work(w: Worker<'_>) {
    let Worker {
        client,
        accounts,
        mut generator,
        batch,
        pipeline,
        deadline,
        stop,
        schedule,
        done,
        outstanding,
    } = w;
    let mut make_batch = move || {
        let mut items = Vec::with_capacity(batch);
        generator.fill(accounts, batch, &mut items);
        items
    };
    let send = |items: Vec<NewTransfer>, intended: Instant| async move {
        let reply = client.create_transfers_async(&items).await;
        Done {
            intended,
            finished: Instant::now(),
            batch: items,
            reply,
        }
    };
    futures::executor::block_on(async {
        let mut in_flight = FuturesUnordered::new();
        match schedule {
            None => {
                let keep_going = || Instant::now() < deadline && !stop.load(Ordering::Relaxed);
                for _ in 0..pipeline {
                    if keep_going() {
                        let items = make_batch();
                        in_flight.push(send(items, Instant::now()));
                    }
                }
                while let Some(d) = in_flight.next().await {
                    let _ = done.send(d);
                    if keep_going() {
                        let items = make_batch();
                        in_flight.push(send(items, Instant::now()));
                    }
                }
            }
            Some(schedule) => {
                // The next batch is made while the worker waits for its due time, as a client
                // has its batch ready when it sends: the load generator's own work (drawing
                // 8190 transfers into fresh memory, ~0.3 ms here) is not the server's latency.
                // `select_biased!` polls the batches in flight first, so a batch just started
                // is sent before the next one is made.
                let mut schedule = schedule.fuse();
                let mut ready: Option<Vec<NewTransfer>> = None;
                let mut scheduled_all = false;
                while !(scheduled_all && in_flight.is_empty()) {
                    let make_next = if ready.is_none() && !scheduled_all {
                        Either::Left(futures::future::ready(()))
                    } else {
                        Either::Right(futures::future::pending::<()>())
                    };
                    futures::select_biased! {
                        d = in_flight.select_next_some() => {
                            outstanding.fetch_sub(1, Ordering::Relaxed);
                            let _ = done.send(d);
                        }
                        due = schedule.next() => match due {
                            Some(due) => {
                                let items = ready.take().unwrap_or_else(&mut make_batch);
                                in_flight.push(send(items, due));
                            }
                            None => scheduled_all = true,
                        },
                        () = make_next.fuse() => ready = Some(make_batch()),
                    }
                }
            }
        }
    });
}

/// Open loop: hands out due times every `interval` seconds, round-robin over the workers.
fn schedule(
    start: Instant,
    deadline: Instant,
    interval: f64,
    cap: usize,
    workers: Vec<UnboundedSender<Instant>>,
    stop: &AtomicBool,
    outstanding: &AtomicUsize,
) -> OpenLoopStats {
    let mut stats = OpenLoopStats::default();
    for i in 0u64.. {
        let due = start + Duration::from_secs_f64(i as f64 * interval);
        if due >= deadline || stop.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if outstanding.load(Ordering::Relaxed) >= cap {
            stats.delayed_by_cap += 1;
            while outstanding.load(Ordering::Relaxed) >= cap && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        let now_out = outstanding.fetch_add(1, Ordering::Relaxed) as u64 + 1;
        stats.max_outstanding_seen = stats.max_outstanding_seen.max(now_out);
        if workers[i as usize % workers.len()]
            .unbounded_send(due)
            .is_err()
        {
            outstanding.fetch_sub(1, Ordering::Relaxed);
            break;
        }
        stats.scheduled_batches += 1;
    }
    stats
}

/// Collects every batch's outcome, draws progress, and stops the load on a fatal error.
fn aggregate(
    args: &RunArgs,
    start: Instant,
    measure_from: Instant,
    deadline: Instant,
    done_rx: mpsc::Receiver<Done>,
    stop: &AtomicBool,
    interrupted: &AtomicBool,
) -> Result<Outcome, String> {
    let new_histogram =
        || Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds");
    let mut o = Outcome {
        transfers: 0,
        seconds: 0.0,
        batch_latency_us: new_histogram(),
        transfer_latency_us: new_histogram(),
        results: BTreeMap::new(),
        errors: BTreeMap::new(),
        warmup_transfers: 0,
        series: Vec::new(),
        open_loop: None,
        ok_ids: AckedIds::default(),
    };
    let mut counts = [0u64; 256];
    let mut per_second: Vec<u64> = Vec::new();
    // Two significant digits are plenty for a per-second line and keep each histogram small.
    let mut per_second_latency: Vec<Histogram<u64>> = Vec::new();
    let mut last_finish = measure_from;
    let mut fatal: Option<String> = None;

    let mut progress = Progress::new(start, args.warmup + args.duration);
    let mut completed_all = 0u64;
    let mut told_interrupt = false;
    loop {
        match done_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(done) => {
                let n = done.batch.len() as u64;
                match &done.reply {
                    Ok(codes) => {
                        for (t, code) in done.batch.iter().zip(codes) {
                            if *code == ResultCode::Ok {
                                o.ok_ids.push(t.id);
                            }
                        }
                        completed_all += n;
                        if done.finished >= measure_from {
                            let latency = (done.finished - done.intended).as_micros() as u64;
                            let latency = latency.clamp(1, LATENCY_MAX_US);
                            o.batch_latency_us.saturating_record(latency);
                            o.transfer_latency_us.saturating_record_n(latency, n);
                            for code in codes {
                                counts[*code as usize] += 1;
                            }
                            o.transfers += n;
                            let second = (done.finished - measure_from).as_secs() as usize;
                            if per_second.len() <= second {
                                per_second.resize(second + 1, 0);
                                per_second_latency.resize_with(second + 1, || {
                                    Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_US, 2)
                                        .expect("valid histogram bounds")
                                });
                            }
                            per_second[second] += n;
                            per_second_latency[second].saturating_record(latency);
                            last_finish = last_finish.max(done.finished);
                        } else {
                            o.warmup_transfers += n;
                        }
                    }
                    Err(e) => {
                        *o.errors.entry(e.kind().to_string()).or_default() += 1;
                        if is_fatal(e) && fatal.is_none() {
                            fatal = Some(e.to_string());
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if interrupted.load(Ordering::Relaxed) && !told_interrupt {
            told_interrupt = true;
            stop.store(true, Ordering::Relaxed);
            progress.println(
                "interrupted: stopping the load, then checking and reporting (Ctrl-C again quits at once)",
            );
        }
        progress.update(completed_all, &o.batch_latency_us, &o.errors, deadline);
    }
    progress.finish();
    if let Some(reason) = fatal {
        return Err(format!("the load stopped: {reason}"));
    }

    o.seconds = (last_finish - measure_from).as_secs_f64();
    for (i, (count, latency)) in per_second.iter().zip(&per_second_latency).enumerate() {
        let begin = i as f64;
        let end = (begin + 1.0).min(o.seconds);
        if end - begin > 0.05 {
            o.series.push(SeriesPoint {
                t: end,
                transfers_per_sec: *count as f64 / (end - begin),
                batch_p50_us: latency.value_at_quantile(0.5),
                batch_p99_us: latency.value_at_quantile(0.99),
                batch_max_us: latency.max(),
            });
        }
    }
    for code in ResultCode::ALL {
        if counts[*code as usize] > 0 {
            o.results
                .insert(code.name().to_string(), counts[*code as usize]);
        }
    }
    Ok(o)
}

/// Errors after which more load makes no sense (the server is gone or refuses us).
fn is_fatal(e: &ClientError) -> bool {
    !matches!(e, ClientError::Timeout(_) | ClientError::Disconnected(_))
}

/// Through the protocol: every account (conservation, floors, settled holds) and every
/// acknowledged transfer (present and applied).
fn check(
    client: &AnyClient,
    accounts: &Accounts,
    ok_ids: &AckedIds,
    concurrency: usize,
) -> Result<Check, String> {
    let ids = accounts.all_ids();
    // Cross-partition transfers are answered when decided; the destination's credit and the
    // release of the source's hold follow by one message. Sums are exact once no hold remains,
    // so wait for that (bounded), then check; a hold left after that is a failure of its own
    // (with the money in `held`, the sum alone would not show a credit that never came).
    let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
    let replies = loop {
        let replies: Vec<_> = futures::executor::block_on(
            futures::stream::iter(ids.chunks(BATCH_ITEMS_MAX))
                .map(|chunk| client.lookup_accounts_async(chunk))
                .buffer_unordered(concurrency)
                .collect(),
        );
        let holds = replies
            .iter()
            .flat_map(|r| r.iter().flatten().flatten())
            .any(|a| a.held != 0);
        if !holds || std::time::Instant::now() > deadline {
            break replies;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut total: i128 = 0;
    let mut below_floor = 0u64;
    let mut missing_accounts = 0u64;
    let mut unsettled = 0u64;
    for reply in replies {
        for account in reply.map_err(|e| format!("check: account lookup failed: {e}"))? {
            match account {
                Some(a) => {
                    total += a.balance as i128 + a.held as i128;
                    if a.balance < a.floor {
                        below_floor += 1;
                    }
                    if a.held != 0 {
                        unsettled += 1;
                    }
                }
                None => missing_accounts += 1,
            }
        }
    }
    if missing_accounts > 0 {
        eprintln!(
            "wallet-bench: FAIL: {missing_accounts} accounts created by the bench are missing"
        );
    }
    if unsettled > 0 {
        eprintln!(
            "wallet-bench: FAIL: {unsettled} accounts still hold money {} s after the load",
            SETTLE_TIMEOUT.as_secs()
        );
    }
    // Counted as the answers come (not collected): there may be millions of ids.
    let mut missing = 0u64;
    futures::executor::block_on(async {
        let mut answers = futures::stream::iter(ok_ids.slices(BATCH_ITEMS_MAX))
            .map(|chunk| client.lookup_transfers_async(chunk))
            .buffer_unordered(concurrency);
        while let Some(found) = answers.next().await {
            let found = found.map_err(|e| format!("check: transfer lookup failed: {e}"))?;
            missing += crate::summary::not_applied(&found);
        }
        Ok::<(), String>(())
    })?;
    Ok(Check {
        // A missing account's money is missing too.
        conserved: total == 0 && missing_accounts == 0,
        negative_balances: below_floor,
        missing_acks: missing,
        unsettled_holds: unsettled,
    })
}
