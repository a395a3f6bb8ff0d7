//! SIGKILL at random moments while a child process appends transfers. After each kill the data
//! dir is recovered and checked: every acknowledged transfer is present, money is conserved,
//! no balance is below its floor, and the recovered state equals a from-scratch replay of the
//! log (snapshots removed). The seed is printed; set CRASH_SEED to replay a schedule.

use engine::digest::state_digest;
use engine::recovery::recover_partition;
use engine::runtime::{EngineConfig, Node};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use walletd_tests::PARTITIONS;

fn config(dir: &Path) -> EngineConfig {
    let mut c = EngineConfig::new(dir);
    c.cores = vec![0, 1];
    c.partitions = PARTITIONS;
    c.segment_bytes = 4 << 20;
    c.snapshot_interval_entries = 50;
    c
}

/// Runs the child until a random number of acknowledgements, SIGKILLs it, returns what it
/// acknowledged as (first id, count).
fn run_and_kill(dir: &Path, first_id: u128, seed: u64, kill_after_ms: u64) -> Vec<(u128, usize)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash-child"))
        .arg(dir)
        .arg(first_id.to_string())
        .arg(seed.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start crash-child");
    let stdout = child.stdout.take().unwrap();
    let pid = child.id() as i32;
    let killer = std::thread::spawn(move || {
        // Wait for READY is done by the reader; the kill lands at a random time after start.
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.first() == Some(&"ACK") {
            let id: u128 = parts[1].parse().unwrap();
            let count: usize = parts[2].parse().unwrap();
            let ok: usize = parts[3].parse().unwrap();
            assert_eq!(ok, count, "the crash workload only sends valid transfers");
            acked.push((id, count));
        }
    }
    killer.join().unwrap();
    let status = child.wait().unwrap();
    // Killed by our SIGKILL mid-load, not exited (or panicked) on its own.
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the child was not killed by SIGKILL: {status}"
    );
    acked
}

#[test]
fn sigkill_at_random_points_loses_nothing_acknowledged() {
    let seed = walletd_tests::seed_from_env("CRASH_SEED");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut all_acked: Vec<(u128, usize)> = Vec::new();
    let rounds = 6;
    let started = Instant::now();
    for round in 0..rounds {
        let first_id = (round as u128 + 1) << 40;
        let kill_after_ms = 150 + rng.u64(..900);
        let acked = run_and_kill(dir.path(), first_id, rng.u64(..), kill_after_ms);
        println!(
            "round {round}: killed after {kill_after_ms} ms, {} batches acknowledged",
            acked.len()
        );
        all_acked.extend(acked);

        // Recover in this process and check.
        let node = Node::start(config(dir.path())).expect("recovery after SIGKILL");
        let mut live_digests = Vec::new();
        for p in 0..PARTITIONS {
            live_digests.push(futures::executor::block_on(node.stats(p)).unwrap().digest);
        }
        for &(first, count) in &all_acked {
            let ids: Vec<u128> = (first..first + count as u128).collect();
            // Look each id up in every partition (ids are routed by source account).
            let mut found = vec![false; ids.len()];
            for p in 0..PARTITIONS {
                let got =
                    futures::executor::block_on(node.lookup_transfers(p, ids.clone())).unwrap();
                for (f, g) in found.iter_mut().zip(got) {
                    *f |= g.is_some();
                }
            }
            let missing = found.iter().filter(|f| !**f).count();
            assert_eq!(
                missing, 0,
                "acknowledged transfers lost (seed {seed}, batch at {first})"
            );
        }
        let mut total: i128 = 0;
        for (p, (issuer, wallets)) in walletd_tests::accounts().into_iter().enumerate() {
            let mut ids = wallets;
            ids.push(issuer);
            for a in futures::executor::block_on(node.lookup_accounts(p as u32, ids)).unwrap() {
                let a = a.expect("accounts exist");
                assert!(a.balance >= a.floor, "balance below floor (seed {seed})");
                total += a.balance as i128 + a.held as i128;
            }
        }
        assert_eq!(total, 0, "money not conserved (seed {seed})");
        // Kill-free stop for this checker; the child's next round starts from here.
        drop(node);

        // From-scratch replay of a copy without snapshots gives the same digest.
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        for p in 0..PARTITIONS {
            let pdir = engine::recovery::partition_dir(copy.path(), p);
            let _ = std::fs::remove_dir_all(engine::recovery::snapshot_dir(&pdir));
            let replayed = recover_partition(&pdir, p, PARTITIONS).unwrap();
            assert_eq!(
                state_digest(&replayed.state),
                live_digests[p as usize],
                "replay differs (seed {seed})"
            );
        }
    }
    assert!(
        all_acked.len() > 10,
        "the child acknowledged batches before its kills"
    );
    println!(
        "{} batches checked in {:?}",
        all_acked.len(),
        started.elapsed()
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
