//! `wallet-bench`: drives walletd and reports throughput and latency honestly (HdrHistogram,
//! per-batch latency from the moment a batch was ready to send).
//!
//! Modes: `engine` runs the engine in this process (no network) through the real shard
//! runtime and durable log; `run` drives a walletd server over the network through the client
//! library (started here with `--spawn`, or given with `--addr`).

mod acked_ids;
mod engine_mode;
mod hgrm;
mod machine;
mod progress;
mod report;
mod run_mode;
mod spawn;
mod spawn_cluster;
mod summary;
mod workload;
mod zipf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "wallet-bench", version, about = "walletd load generator")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Run the engine in process: shards, durable log, group commit; no network.
    Engine(engine_mode::EngineArgs),
    /// Drive a walletd server over the network (closed loop, or open loop with --rate).
    Run(run_mode::RunArgs),
}

/// The whole program: parses the command line, runs the mode, exits 1 with the reason on
/// failure. `src/main.rs` calls it, and so does the test build (`walletd-tests`'s
/// `test-wallet-bench`) that the cross-process tests run.
pub fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WALLETD_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.mode {
        Mode::Engine(args) => engine_mode::run(args),
        Mode::Run(args) => run_mode::run(args),
    };
    if let Err(reason) = outcome {
        eprintln!("wallet-bench: {reason}");
        std::process::exit(1);
    }
}
