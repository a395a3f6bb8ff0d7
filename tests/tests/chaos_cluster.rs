//! The chaos harness on a 3-node cluster, CI-sized: 4 partitions (each a Raft group of the
//! three nodes) under load through the routing client for `CHAOS_CLUSTER_SECS` (default 75)
//! seconds while one node at a time is SIGKILLed and restarted, SIGSTOPped and resumed, cut
//! off from the others by the node link's fault injection, or runs out of disk space for a
//! few seconds (`RLIMIT_FSIZE`); then every node is checked (see
//! `walletd_tests::chaos::cluster`). The seed is printed; `CHAOS_SEED` repeats a fault
//! schedule. A separate test binary from `chaos.rs`, so the two runs do not share the cores.

use std::path::PathBuf;
use walletd_tests::chaos::cluster::{json, ClusterFault};
use walletd_tests::chaos::{run, ChaosConfig};

const WALLETD: &str = env!("CARGO_BIN_EXE_test-walletd");

#[test]
fn a_three_node_cluster_keeps_its_invariants_under_random_faults() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ChaosConfig::from_env(
        PathBuf::from(WALLETD),
        dir.path().to_path_buf(),
        "CHAOS_CLUSTER_SECS",
        75,
    );
    let (seed, secs) = (config.seed, config.duration.as_secs());
    config.nodes = 3;
    // Debug builds of three nodes on a small shared machine.
    config.rate = 1_000;
    config.timeout_ms = 3_000;
    let logs = || {
        (1..=3)
            .map(|n| {
                let path = dir.path().join(format!("node{n}.log"));
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                format!(
                    "--- {} (last lines)\n{}",
                    path.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let summary = run(&config).unwrap_or_else(|e| {
        panic!(
            "the cluster chaos run failed (seed {seed}): {e}\n{}",
            logs()
        )
    });
    println!("{summary}");
    println!("chaos-json: {}", json(&summary, config.duration));
    assert!(
        summary.passed(),
        "invariants violated (CHAOS_SEED={seed}):\n{summary}\n{}",
        logs()
    );
    assert_eq!(summary.lost, 0, "seed {seed}");
    assert_eq!(summary.duplicated, 0, "seed {seed}");
    assert!(summary.digests_equal, "seed {seed}");
    for kind in ClusterFault::ALL {
        assert!(
            summary.faults.get(kind.name()).copied().unwrap_or(0) >= 1,
            "no {} fault in {secs} s (seed {seed})",
            kind.name()
        );
    }
    // Failovers stall the load for seconds at a time, and a shared CI machine is slow: a low
    // bar that still fails if the load did not run.
    assert!(
        summary.acknowledged + summary.existing > 30 * secs,
        "the load barely ran: {} acknowledged, {} exists (seed {seed})",
        summary.acknowledged,
        summary.existing
    );
    // Every transfer of the load is valid: the only refusal it may get is a cross-partition
    // transfer timing out while a fault holds its destination (a bug refusing valid transfers
    // would pass every check above).
    assert!(
        summary.rejected.keys().all(|code| *code == "tcc_timeout"),
        "valid transfers refused: {:?} (seed {seed})",
        summary.rejected
    );
}
