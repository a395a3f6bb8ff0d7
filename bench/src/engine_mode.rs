//! `wallet-bench engine`: the engine in process. Accounts are created and funded, then one
//! driver thread keeps `--inflight` batches in flight per partition through the real shard
//! runtime; every batch is acknowledged only after its group commit's fsync.

use crate::machine;
use crate::summary::{Check, Latency, Summary};
use crate::workload::{Accounts, TransferGenerator};
use engine::runtime::{EngineConfig, Node, Replication};
use engine::{CommandBatch, NewTransfer, ResultCode};
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, serde::Serialize)]
pub struct EngineArgs {
    /// Wallet accounts to create (plus one issuer per partition).
    #[arg(long, default_value_t = 100_000)]
    accounts: u64,
    /// How long to drive transfers (e.g. 10s). Default 10s unless --transfers is given.
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "as_secs")]
    duration: Option<Duration>,
    /// Stop after this many transfers instead of after a duration.
    #[arg(long)]
    transfers: Option<u64>,
    /// Transfers per batch (one log entry each).
    #[arg(long, default_value_t = 8190)]
    batch: usize,
    /// Cores to pin shard executors to, e.g. 0,1.
    #[arg(long, default_value = "0", value_delimiter = ',')]
    cores: Vec<usize>,
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    /// Data directory (must not exist or be empty). Default: a temporary one, removed after.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Share of transfers whose destination lives in another partition.
    #[arg(long, default_value_t = 0.0)]
    cross_partition_ratio: f64,
    /// Batches in flight per partition.
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// History entries the CQRS read model keeps per account; 0 (default) = read model off.
    #[arg(long, default_value_t = 0)]
    read_model_history: usize,
    /// How partitions commit: `local` (the group-commit loop) or `raft` (each partition a
    /// one-voter openraft cluster, RAFT_PLAN step 4).
    #[arg(long, default_value = "local", value_parser = ["local", "raft"])]
    replication: String,
    /// Write the JSON summary here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn as_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

const FUNDING_PER_ACCOUNT: u64 = 1_000_000_000;
/// Pre-drawn transfers per partition (replayed with fresh ids; see `TransferGenerator::prepare`).
const POOL_TRANSFERS_PER_PARTITION: usize = 1 << 19;

pub fn run(args: EngineArgs) -> Result<(), String> {
    if args.batch == 0 || args.batch > engine::BATCH_ITEMS_MAX {
        return Err(format!("--batch must be 1..={}", engine::BATCH_ITEMS_MAX));
    }
    if !(0.0..=1.0).contains(&args.cross_partition_ratio) {
        return Err("--cross-partition-ratio must be within 0..=1".into());
    }
    if args.accounts < 2 * args.partitions as u64 {
        return Err("--accounts must be at least 2 per partition".into());
    }
    let duration = match (args.duration, args.transfers) {
        (Some(_), Some(_)) => return Err("give --duration or --transfers, not both".into()),
        (d, None) => Some(d.unwrap_or(Duration::from_secs(10))),
        (None, Some(_)) => None,
    };
    let (data_dir, _temp) = match &args.data_dir {
        Some(dir) => {
            if dir.exists()
                && std::fs::read_dir(dir)
                    .map_err(|e| e.to_string())?
                    .next()
                    .is_some()
            {
                return Err(format!(
                    "{} is not empty; the bench needs a fresh data dir",
                    dir.display()
                ));
            }
            (dir.clone(), None)
        }
        None => {
            let temp = tempdir_here()?;
            (temp.clone(), Some(RemoveOnDrop(temp)))
        }
    };

    let mut config = EngineConfig::new(&data_dir);
    config.cores = args.cores.clone();
    config.partitions = args.partitions;
    config.snapshot_interval_entries = 0;
    config.replication = args.replication.parse()?;
    if config.replication == Replication::Raft {
        config.snapshot_daily_days = 0;
    }
    let expected_transfers = match (duration, args.transfers) {
        (_, Some(n)) => n,
        // Above the fastest rate measured on the reference machine (~8M/s same-partition):
        // an index that fills up mid-run rehashes on the shard, a stall of about a second.
        (Some(d), None) => (d.as_secs_f64() * 8_000_000.0) as u64,
        (None, None) => 0,
    };
    config.transfers_capacity_per_partition =
        ((expected_transfers + args.accounts) / args.partitions as u64).min(64 << 20) as usize;
    config.read_model_history_per_account = args.read_model_history;
    let node = Node::start(config).map_err(|e| e.to_string())?;

    eprintln!(
        "creating {} accounts in {} partitions...",
        args.accounts, args.partitions
    );
    let accounts = Accounts::new(args.accounts, args.partitions);
    let setup_started = Instant::now();
    for chunk in accounts.creations().chunks(engine::BATCH_ITEMS_MAX) {
        let results =
            futures::executor::block_on(node.create_accounts(chunk)).map_err(|e| e.to_string())?;
        if let Some(bad) = results.iter().find(|c| **c != ResultCode::Ok) {
            return Err(format!("account creation failed: {bad}"));
        }
    }
    for chunk in accounts
        .deposits(FUNDING_PER_ACCOUNT, 1)
        .chunks(engine::BATCH_ITEMS_MAX)
    {
        let results =
            futures::executor::block_on(node.create_transfers(chunk)).map_err(|e| e.to_string())?;
        if let Some(bad) = results.iter().find(|c| **c != ResultCode::Ok) {
            return Err(format!("funding failed: {bad}"));
        }
    }
    // The reserved tables are faulted in by a background thread (engine::prefault); measure
    // from steady state and count that one-time cost as setup.
    if !engine::prefault::wait_until_resident(Duration::from_secs(120)) {
        eprintln!("warning: reserved memory still not resident after 120 s; measuring anyway");
    }
    eprintln!(
        "setup took {:.1} s (accounts, funding, reserved memory made resident); driving transfers...",
        setup_started.elapsed().as_secs_f64()
    );

    let outcome = futures::executor::block_on(drive(&node, &accounts, &args, duration))?;
    let check = futures::executor::block_on(check(&node, &accounts, &outcome))?;
    let fsyncs: u64 = node
        .all_stats()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|s| s.fsyncs)
        .sum();
    let unit = match args.replication.as_str() {
        "raft" => "raft entries (one leader append + fsync each)",
        _ => "fsyncs",
    };
    eprintln!(
        "group commits: {fsyncs} {unit} in all partitions ({:.0} transfers each, setup included)",
        outcome.transfers as f64 / fsyncs.max(1) as f64
    );
    node.shutdown()?;

    let seconds = outcome.elapsed.as_secs_f64();
    let summary = Summary {
        mode: "engine",
        config: serde_json::to_value(&args).map_err(|e| e.to_string())?,
        machine: machine::describe(),
        transfers: outcome.transfers,
        seconds,
        transfers_per_sec: outcome.transfers as f64 / seconds,
        latency_us: Latency::of(&outcome.batch_latency_us),
        results: outcome.results,
        check,
    };
    summary.print_human();
    match args.read_model_history {
        0 => println!("read model: off"),
        n => println!("read model: on ({n} history entries per account)"),
    }
    if let Some(path) = &args.json {
        summary.write_json(path)?;
    }
    if !summary.check.passed() {
        return Err("consistency check FAILED".into());
    }
    Ok(())
}

struct Outcome {
    transfers: u64,
    elapsed: Duration,
    batch_latency_us: Histogram<u64>,
    results: BTreeMap<String, u64>,
    ok: u64,
    /// Every 1024th transfer acknowledged `ok`, to look up afterwards.
    ok_sample: Vec<(u32, u128)>,
}

async fn drive(
    node: &Node,
    accounts: &Accounts,
    args: &EngineArgs,
    duration: Option<Duration>,
) -> Result<Outcome, String> {
    let partitions = args.partitions as usize;
    let mut generators: Vec<TransferGenerator> = (0..partitions)
        .map(|p| {
            let mut g = TransferGenerator::new(args.seed, p, args.cross_partition_ratio);
            g.prepare(accounts, POOL_TRANSFERS_PER_PARTITION);
            g
        })
        .collect();
    // 1 us to 1 hour: a stall of any length is recorded, not a panic.
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
    // Set when the engine refuses a batch (it is stopping): nothing more is sent, and the
    // batches in flight are still awaited so that every applied transfer is counted.
    let mut stopped: Option<String> = None;
    let mut counts = [0u64; 256];
    let mut ok_sample = Vec::new();
    let mut sent = 0u64;
    let limit = args.transfers.unwrap_or(u64::MAX);
    let started = Instant::now();
    let deadline = duration.map(|d| started + d);
    let mut in_flight = FuturesUnordered::new();
    let mut last_report = started;
    let mut transfers_at_last_report = 0u64;
    let mut done = 0u64;

    let submit = |p: usize, batch: Vec<NewTransfer>| {
        let ids: Vec<u128> = batch.iter().step_by(1024).map(|t| t.id).collect();
        let ready_at = Instant::now();
        async move {
            let reply = node
                .submit(p as u32, CommandBatch::CreateTransfers(batch))
                .await;
            (p, ready_at, ids, reply)
        }
    };
    let mut batch = Vec::with_capacity(args.batch);
    for (p, generator) in generators.iter_mut().enumerate() {
        for _ in 0..args.inflight {
            if sent < limit {
                let n = (limit - sent).min(args.batch as u64) as usize;
                generator.fill(accounts, n, &mut batch);
                sent += n as u64;
                in_flight.push(submit(p, std::mem::take(&mut batch)));
            }
        }
    }
    while let Some((p, ready_at, ids, reply)) = in_flight.next().await {
        let latency = ready_at.elapsed().as_micros() as u64;
        histogram.saturating_record(latency.max(1));
        match reply {
            Ok(reply) => {
                for (i, code) in reply.results.iter().enumerate() {
                    counts[*code as usize] += 1;
                    if i % 1024 == 0 && *code == ResultCode::Ok {
                        ok_sample.push((p as u32, ids[i / 1024]));
                    }
                }
                done += reply.results.len() as u64;
            }
            Err(e) => {
                stopped.get_or_insert_with(|| e.to_string());
                continue;
            }
        }
        let now = Instant::now();
        if now.duration_since(last_report) >= Duration::from_secs(1) {
            let rate = (done - transfers_at_last_report) as f64
                / now.duration_since(last_report).as_secs_f64();
            eprintln!(
                "{:>6.1} s  {:>10.0} transfers/s  p99 so far {} us",
                now.duration_since(started).as_secs_f64(),
                rate,
                histogram.value_at_quantile(0.99)
            );
            last_report = now;
            transfers_at_last_report = done;
        }
        let time_left = deadline.is_none_or(|d| now < d);
        if time_left && sent < limit && stopped.is_none() {
            let n = (limit - sent).min(args.batch as u64) as usize;
            generators[p].fill(accounts, n, &mut batch);
            sent += n as u64;
            in_flight.push(submit(p, std::mem::take(&mut batch)));
        }
    }
    if let Some(reason) = stopped {
        return Err(format!(
            "the engine refused a batch during the run: {reason}"
        ));
    }
    let elapsed = started.elapsed();
    let mut results = BTreeMap::new();
    for code in ResultCode::ALL {
        if counts[*code as usize] > 0 {
            results.insert(code.name().to_string(), counts[*code as usize]);
        }
    }
    Ok(Outcome {
        transfers: done,
        elapsed,
        batch_latency_us: histogram,
        ok: counts[ResultCode::Ok as usize],
        results,
        ok_sample,
    })
}

/// Conservation over every account, floors, and acknowledged transfers present.
async fn check(node: &Node, accounts: &Accounts, outcome: &Outcome) -> Result<Check, String> {
    // Cross-partition transfers are answered when decided; credits and hold releases follow
    // by one message. Wait (bounded) until no TC/C is running so the sums are exact.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut running;
    loop {
        running = 0;
        for p in 0..node.partition_count() {
            running += node
                .counters(p)
                .await
                .map_err(|e| e.to_string())?
                .tcc_in_flight;
        }
        if running == 0 || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut total: i128 = 0;
    let mut below_floor = 0u64;
    for (p, wallets) in accounts.by_partition.iter().enumerate() {
        let mut ids = wallets.clone();
        ids.push(accounts.issuers[p]);
        for chunk in ids.chunks(engine::BATCH_ITEMS_MAX) {
            let found = node
                .lookup_accounts(p as u32, chunk.to_vec())
                .await
                .map_err(|e| e.to_string())?;
            for account in found {
                let a = account.ok_or("an account created by the bench is missing")?;
                total += a.balance as i128 + a.held as i128;
                if a.balance < a.floor {
                    below_floor += 1;
                }
            }
        }
    }
    let mut stored = 0u64;
    for p in 0..node.partition_count() {
        stored += node.stats(p).await.map_err(|e| e.to_string())?.transfers;
    }
    let deposits = accounts
        .by_partition
        .iter()
        .map(|w| w.len() as u64)
        .sum::<u64>();
    let mut missing = (deposits + outcome.ok).saturating_sub(stored);
    for p in 0..accounts.by_partition.len() {
        let ids: Vec<u128> = outcome
            .ok_sample
            .iter()
            .filter(|(q, _)| *q as usize == p)
            .map(|(_, id)| *id)
            .collect();
        for chunk in ids.chunks(engine::BATCH_ITEMS_MAX) {
            let found = node
                .lookup_transfers(p as u32, chunk.to_vec())
                .await
                .map_err(|e| e.to_string())?;
            missing += crate::summary::not_applied(&found);
        }
    }
    // `running` is what the wait above ended with: 0, or what the deadline left running.
    let unsettled = running;
    if unsettled > 0 {
        eprintln!("wallet-bench: FAIL: {unsettled} cross-partition transfers still running 30 s after the load");
    }
    Ok(Check {
        conserved: total == 0,
        negative_balances: below_floor,
        missing_acks: missing,
        unsettled_holds: unsettled,
    })
}

fn tempdir_here() -> Result<PathBuf, String> {
    let base = std::env::current_dir().map_err(|e| e.to_string())?;
    for n in 0..1000 {
        let dir = base.join(format!(".wallet-bench-{}-{n}", std::process::id()));
        if std::fs::create_dir(&dir).is_ok() {
            return Ok(dir);
        }
    }
    Err("could not create a temporary data dir in the current directory".into())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
