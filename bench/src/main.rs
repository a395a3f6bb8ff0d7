//! `wallet-bench`: drives walletd and reports throughput and latency honestly (HdrHistogram,
//! per-batch latency from the moment a batch was ready to send).
//!
//! Modes: `engine` runs the engine in this process (no network) through the real shard
//! runtime and durable log.

mod engine_mode;
mod machine;
mod summary;
mod workload;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
}

fn main() {
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
    };
    if let Err(reason) = outcome {
        eprintln!("wallet-bench: {reason}");
        std::process::exit(1);
    }
}
