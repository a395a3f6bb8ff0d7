//! `wallet-chaos`: the soak/chaos harness on the command line (see `walletd_tests::chaos`).
//!
//! ```text
//! wallet-chaos [--nodes 1|3] [--duration 60s] [--seed N] [--walletd PATH] [--data-dir DIR]
//!              [--partitions 4] [--cores 0,1] [--threads 4] [--rate 5000] [--batch 200]
//!              [--cross-partition-ratio 0.3] [--timeout-ms 1500] [--keep]
//! ```
//! Prints the seed first (a failing schedule can be replayed with `--seed`), each fault as it
//! happens, then a summary; exits 1 on any violation, 2 on bad usage. `--nodes 3` runs a
//! cluster (SIGKILL, SIGSTOP and isolation of one node at a time; default rate 2000 and
//! timeout 3000 ms) and ends with the summary as one JSON line (`chaos-json: {...}`).

use std::path::PathBuf;
use std::time::Duration;
use walletd_tests::chaos::{self, run, ChaosConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: wallet-chaos [--nodes 1|3] [--duration 60s] [--seed N] [--walletd PATH] [--data-dir DIR] \
[--partitions N] [--cores LIST] [--threads N] [--rate TPS] [--batch N] [--cross-partition-ratio R] [--timeout-ms MS] [--keep]";

fn fail_usage(why: &str) -> ! {
    eprintln!("wallet-chaos: {why}\n{USAGE}");
    std::process::exit(2);
}

fn bad_value(flag: &str, value: &str) -> ! {
    fail_usage(&format!("bad value {value:?} for {flag}"))
}

/// `90s`, `5m`, `1500ms` or plain seconds.
fn parse_duration(s: &str) -> Option<Duration> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

/// `walletd` next to this program (a cargo target dir), else the one on PATH.
fn default_walletd() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("walletd")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("walletd"))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut duration = Duration::from_secs(60);
    let mut seed: Option<u64> = None;
    let mut walletd = default_walletd();
    let mut data_dir: Option<PathBuf> = None;
    let mut keep = false;
    let mut rest: Vec<(String, String)> = Vec::new();
    while let Some(flag) = args.next() {
        if flag == "--keep" {
            keep = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            return;
        }
        let Some(value) = args.next() else {
            fail_usage(&format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--duration" => {
                duration = parse_duration(&value)
                    .unwrap_or_else(|| fail_usage(&format!("bad duration {value:?}")))
            }
            "--seed" => {
                seed = Some(
                    value
                        .parse()
                        .unwrap_or_else(|_| fail_usage(&format!("bad seed {value:?}"))),
                )
            }
            "--walletd" => walletd = PathBuf::from(value),
            "--data-dir" => data_dir = Some(PathBuf::from(value)),
            _ => rest.push((flag, value)),
        }
    }
    let seed = seed.unwrap_or_else(|| fastrand::u64(..));
    println!("wallet-chaos: seed {seed} (repeat the fault schedule with --seed {seed})");
    let temporary = data_dir.is_none();
    let work_dir = data_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("walletd-chaos-{seed}-{}", std::process::id()))
    });
    let mut config = ChaosConfig::new(walletd, work_dir.clone(), seed, duration);
    if let Some((flag, value)) = rest.iter().rev().find(|(f, _)| f == "--nodes") {
        config.nodes = value.parse().unwrap_or_else(|_| bad_value(flag, value));
        if config.nodes == 0 || config.nodes == 2 {
            fail_usage("--nodes must be 1, or 3 or more (a majority must survive one faulty node)");
        }
        if config.nodes > 1 {
            // Raft round trips and failovers: a longer client timeout, a modest rate.
            config.rate = 2_000;
            config.timeout_ms = 3_000;
        }
    }
    for (flag, value) in rest {
        match flag.as_str() {
            "--nodes" => {}
            "--timeout-ms" => {
                config.timeout_ms = value.parse().unwrap_or_else(|_| bad_value(&flag, &value))
            }
            "--partitions" => {
                config.partitions = value.parse().unwrap_or_else(|_| bad_value(&flag, &value))
            }
            "--cores" => config.cores = value.clone(),
            "--threads" => {
                config.threads = value.parse().unwrap_or_else(|_| bad_value(&flag, &value))
            }
            "--rate" => config.rate = value.parse().unwrap_or_else(|_| bad_value(&flag, &value)),
            "--batch" => {
                config.batch_max = value.parse().unwrap_or_else(|_| bad_value(&flag, &value))
            }
            "--cross-partition-ratio" => {
                config.cross_ratio = value.parse().unwrap_or_else(|_| bad_value(&flag, &value))
            }
            _ => fail_usage(&format!("unknown flag {flag}")),
        }
    }
    println!(
        "wallet-chaos: {} node(s), {} s, walletd {}, work dir {}",
        config.nodes,
        duration.as_secs_f64(),
        config.walletd.display(),
        work_dir.display()
    );
    match run(&config) {
        Ok(summary) => {
            println!("{summary}");
            if config.nodes > 1 {
                println!("chaos-json: {}", chaos::cluster::json(&summary, duration));
            }
            if summary.passed() {
                if temporary && !keep {
                    let _ = std::fs::remove_dir_all(&work_dir);
                }
            } else {
                eprintln!(
                    "wallet-chaos: INVARIANT VIOLATED (seed {seed}); data and walletd logs kept in {}",
                    work_dir.display()
                );
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!(
                "wallet-chaos: RUN FAILED (seed {seed}): {e}; data and walletd logs kept in {}",
                work_dir.display()
            );
            std::process::exit(1);
        }
    }
}
