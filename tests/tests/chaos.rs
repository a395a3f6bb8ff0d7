//! The chaos harness, CI-sized: a walletd with 4 partitions under load for `CHAOS_SECS`
//! (default 30) seconds while it is SIGKILLed, SIGSTOPped, runs out of disk and is restarted
//! cleanly, then the invariant check (see `walletd_tests::chaos`). The seed is printed;
//! `CHAOS_SEED` repeats a fault schedule. For a soak: `CHAOS_SECS=600 cargo test --test chaos
//! -- --nocapture`, or the `wallet-chaos` program.

use std::path::PathBuf;
use walletd_tests::chaos::faults::FaultKind;
use walletd_tests::chaos::{run, ChaosConfig};

const WALLETD: &str = env!("CARGO_BIN_EXE_test-walletd");

#[test]
fn walletd_keeps_its_invariants_under_random_faults() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ChaosConfig::from_env(
        PathBuf::from(WALLETD),
        dir.path().to_path_buf(),
        "CHAOS_SECS",
        30,
    );
    let (seed, secs) = (config.seed, config.duration.as_secs());
    // A debug build on a small shared machine: a modest rate keeps the final lookups short.
    config.rate = 3_000;
    let summary = run(&config).unwrap_or_else(|e| {
        panic!(
            "the chaos run failed (seed {seed}): {e}; walletd log: {}",
            std::fs::read_to_string(dir.path().join("node0/walletd.log")).unwrap_or_default()
        )
    });
    println!("{summary}");
    assert!(
        summary.passed(),
        "invariants violated (CHAOS_SEED={seed}):\n{summary}"
    );
    assert_eq!(summary.lost, 0, "seed {seed}");
    assert_eq!(summary.duplicated, 0, "seed {seed}");
    assert_eq!(summary.unanswered, 0, "seed {seed}");
    for kind in FaultKind::ALL {
        assert!(
            summary.faults_of(kind) >= 1,
            "no {} fault in {secs} s (seed {seed})",
            kind.name()
        );
    }
    assert!(
        summary.acknowledged > 300 * secs,
        "the load barely ran: {} acknowledged (seed {seed})",
        summary.acknowledged
    );
    // A retried batch alone proves nothing (a `storage_full` answer is retried too): some
    // attempt must have lost its answer (a kill or a stall cut it off).
    let answers_lost = summary.errors.get("timeout").copied().unwrap_or(0)
        + summary.errors.get("disconnected").copied().unwrap_or(0);
    assert!(
        answers_lost > 0 || summary.exists_on_retry > 0,
        "no batch lost its answer, so exactly-once was not exercised (seed {seed})"
    );
    assert!(
        summary.codes.get("storage_full").copied().unwrap_or(0) > 0,
        "the disk-full faults never refused a write (seed {seed})"
    );
    // Every transfer of the load is valid: the only refusal it may get is a cross-partition
    // transfer timing out while a fault holds its destination.
    assert!(
        summary.rejected.keys().all(|code| *code == "tcc_timeout"),
        "valid transfers refused: {:?} (seed {seed})",
        summary.rejected
    );
}
