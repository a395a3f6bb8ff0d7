//! `wallet-bench` from the outside, as a newcomer runs it (README): `run --spawn` in closed and
//! open loop and against a spawned 3-node cluster, and `engine`. Each run must exit 0, pass
//! its own consistency check, and write the documented JSON summary (../shared/CLI.md), the
//! HdrHistogram text and the HTML report. Short, small runs: this checks the tool works, the
//! numbers are for docs/BENCHMARKS.md.

use std::path::Path;

const BENCH: &str = env!("CARGO_BIN_EXE_test-wallet-bench");
const WALLETD: &str = env!("CARGO_BIN_EXE_test-walletd");

/// Runs wallet-bench with `args`, asserts it succeeded, returns its JSON summary.
fn bench(out: &Path, args: &[&str]) -> serde_json::Value {
    let json_path = out.join("summary.json");
    let mut all: Vec<&str> = args.to_vec();
    let json_arg = json_path.to_str().expect("utf-8 path");
    all.extend(["--json", json_arg]);
    let (ok, stdout, stderr) = walletd_tests::run_cli(BENCH, &all);
    assert!(ok, "wallet-bench {args:?}:\n{stdout}\n{stderr}");
    let text = std::fs::read_to_string(&json_path).expect("the --json file");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `run --spawn` on a small workload (2,000 accounts, batches of 256, one connection, 2 s),
/// plus `extra` arguments.
fn run_spawn(out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "run",
        "--spawn",
        "--walletd",
        WALLETD,
        "--accounts",
        "2000",
        "--batch",
        "256",
        "--connections",
        "1",
        "--duration",
        "2s",
    ];
    args.extend_from_slice(extra);
    bench(out, &args)
}

/// The fields ../shared/CLI.md promises, and a passed check.
fn check_summary(summary: &serde_json::Value, mode: &str) {
    assert_eq!(summary["mode"], mode, "{summary}");
    assert!(summary["config"].is_object(), "{summary}");
    for field in ["cores", "kernel", "commit"] {
        assert!(
            !summary["machine"][field].is_null(),
            "machine.{field}: {summary}"
        );
    }
    assert!(
        summary["transfers"].as_u64().expect("transfers") > 0,
        "{summary}"
    );
    assert!(summary["seconds"].as_f64().expect("seconds") > 0.0);
    assert!(summary["transfers_per_sec"].as_f64().expect("rate") > 0.0);
    let latency = &summary["latency_us"];
    let p = |name: &str| {
        latency[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: {latency}"))
    };
    assert!(p("p50") <= p("p99") && p("p99") <= p("p999") && p("p999") <= p("max"));
    assert!(
        summary["results"]["ok"].as_u64().expect("ok count") > 0,
        "{summary}"
    );
    let check = &summary["check"];
    assert_eq!(check["conserved"], true, "{check}");
    assert_eq!(check["negative_balances"], 0, "{check}");
    assert_eq!(check["missing_acks"], 0, "{check}");
    assert_eq!(check["unsettled_holds"], 0, "{check}");
    if summary["mode"] == "run" {
        assert_eq!(
            summary["checked_acks"], summary["acknowledged_ok"],
            "every acknowledged transfer is looked up"
        );
    }
}

#[test]
fn run_spawn_writes_the_summary_the_histogram_and_the_report() {
    let out = tempfile::tempdir().unwrap();
    let report = out.path().join("report");
    let hgrm = out.path().join("run.hgrm");
    let summary = run_spawn(
        out.path(),
        &[
            "--report",
            report.to_str().unwrap(),
            "--hgrm",
            hgrm.to_str().unwrap(),
            // Cross-partition transfers too: their holds must settle for the check to pass.
            "--cross-partition-ratio",
            "0.2",
        ],
    );
    check_summary(&summary, "run");
    let page = std::fs::read_to_string(report.join("index.html")).expect("report page");
    assert!(page.contains("<svg"), "the page carries its plots");
    let text = std::fs::read_to_string(&hgrm).expect("hgrm file");
    assert!(text.contains("Percentile"), "{text}");
}

#[test]
fn run_spawn_in_open_loop_and_against_three_nodes() {
    let out = tempfile::tempdir().unwrap();
    let summary = run_spawn(out.path(), &["--rate", "20000"]);
    check_summary(&summary, "run");
    let summary = run_spawn(out.path(), &["--nodes", "3"]);
    check_summary(&summary, "run");
}

#[test]
fn engine_mode_writes_the_same_summary() {
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("data");
    let summary = bench(
        out.path(),
        &[
            "engine",
            "--accounts",
            "2000",
            "--transfers",
            "50000",
            "--batch",
            "512",
            "--cores",
            "0",
            "--partitions",
            "2",
            "--cross-partition-ratio",
            "0.2",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    check_summary(&summary, "engine");
}
