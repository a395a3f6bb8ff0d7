//! A real `walletd --replication raft` process (every partition a one-voter Raft cluster),
//! used through the client library: accounts, deposits, transfers in two partitions,
//! a SIGKILL and a clean restart with the same digest, retries answered `exists`, and the
//! data dir refusing the other mode. (The transfers stay within their partitions: TC/C in Raft
//! mode is covered by `engine/tests/raft_runtime.rs`.)

use engine::ResultCode;
use net::{Client, ClientConfig};
use walletd_tests::server_process::ServerProcess;
use walletd_tests::{batch, creations, funding, PARTITIONS};

const WALLETD: &str = env!("CARGO_BIN_EXE_test-walletd");

fn all_ok(codes: &[ResultCode]) -> bool {
    codes.iter().all(|c| *c == ResultCode::Ok)
}

/// A `walletd --replication raft` on cores 0 and 1 with `PARTITIONS` partitions (plus
/// `extra` arguments), its accounts created and funded.
fn funded_raft_node(dir: &std::path::Path, extra: &[&str]) -> ServerProcess {
    let partitions = PARTITIONS.to_string();
    let mut args = vec![
        "--replication",
        "raft",
        "--partitions",
        &partitions,
        "--cores",
        "0,1",
    ];
    args.extend_from_slice(extra);
    let server = ServerProcess::start(std::path::Path::new(WALLETD), dir, &args);
    let client = Client::connect(ClientConfig::new(server.addr.clone())).unwrap();
    assert!(all_ok(&client.create_accounts(&creations()).unwrap()));
    assert!(all_ok(&client.create_transfers(&funding()).unwrap()));
    server
}

#[test]
fn walletd_in_raft_mode_keeps_every_acknowledged_transfer_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", walletd_tests::server_process::free_port());
    let mut server = funded_raft_node(dir.path(), &["--metrics-listen", &metrics]);
    let client = Client::connect(ClientConfig::new(server.addr.clone())).unwrap();
    let mut sent = Vec::new();
    for n in 0..20u64 {
        let transfers = batch(1_000 + u128::from(n) * 100, 100, n + 1);
        assert!(all_ok(&client.create_transfers(&transfers).unwrap()));
        sent.extend(transfers);
    }
    let digest = client.state_digest().unwrap().digest;
    drop(client);

    // A crash: everything acknowledged is back, and retries apply nothing.
    server.kill();
    server.restart();
    let client = Client::connect(ClientConfig::new(server.addr.clone())).unwrap();
    assert_eq!(
        client.state_digest().unwrap().digest,
        digest,
        "the state after the crash differs"
    );
    // Retries apply nothing (their entries are logged, so the digest moves on).
    let retried = client.create_transfers(&sent[..500]).unwrap();
    assert!(retried.iter().all(|c| *c == ResultCode::Exists));
    let digest = client.state_digest().unwrap().digest;
    drop(client);

    // A clean stop and start keep it too.
    assert_eq!(server.stop(), Some(0));
    server.restart();
    let client = Client::connect(ClientConfig::new(server.addr.clone())).unwrap();
    assert_eq!(client.state_digest().unwrap().digest, digest);
    // The partition map comes from each partition's Raft: this node leads every group, in
    // the term it was elected in (a lone voter resumes its term after a restart: its vote
    // is saved, committed).
    let map = client.partition_map().unwrap();
    assert_eq!(map.partitions.len(), PARTITIONS as usize);
    for p in &map.partitions {
        assert_eq!(p.leader, Some(1));
        assert!(
            p.term >= 1,
            "term {}: a Raft term, not the local path's 0",
            p.term
        );
    }
    // Retries once more, so that this run of the server has entries of its own to time.
    let retried = client.create_transfers(&sent[..500]).unwrap();
    assert!(retried.iter().all(|c| *c == ResultCode::Exists));
    // And so do the metrics: leader, term, and a log applied through its end.
    let (status, body) = walletd_tests::http_get(&metrics, "/metrics");
    assert!(status.contains("200"), "{status}");
    let value = |name: &str, p: u32| -> u64 {
        let prefix = format!("{name}{{partition=\"{p}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{prefix} in the metrics"))
            .parse()
            .unwrap()
    };
    for p in 0..PARTITIONS {
        assert_eq!(value("walletd_raft_is_leader", p), 1);
        assert!(value("walletd_raft_term", p) >= 1);
        let last = value("walletd_raft_last_log_index", p);
        assert!(last > 1 && value("walletd_raft_applied_index", p) == last);
        // One voter: everything in its log is committed.
        assert_eq!(value("walletd_raft_commit_index", p), last);
        assert_eq!(value("walletd_raft_follower_lag_max_entries", p), 0);
        // The Raft path's timings: every entry this node proposed since the restart (the
        // retries' above) was appended and applied on the way.
        let proposed = value("walletd_group_fsync_seconds_count", p);
        assert!(value("walletd_log_append_seconds_count", p) >= proposed);
        assert!(value("walletd_group_apply_seconds_count", p) >= 1.min(proposed));
    }
    let proposed: u64 = (0..PARTITIONS)
        .map(|p| value("walletd_group_fsync_seconds_count", p))
        .sum();
    assert!(proposed > 0, "the retries were proposed as entries");
    drop(client);
    assert_eq!(server.stop(), Some(0));

    // The data dir was created in Raft mode: local mode refuses it.
    let (ok, _, err) = walletd_tests::run_cli(
        WALLETD,
        &[
            "--data-dir",
            &dir.path().display().to_string(),
            "--listen",
            "127.0.0.1:1",
        ],
    );
    assert!(!ok && err.contains("replication"), "{err}");
}

/// A SIGKILL while batches are in flight (not at rest): every transfer acknowledged before the
/// kill is there, applied, after the restart. The kill moment comes from a printed seed
/// (`RAFT_E2E_SEED` replays it).
#[test]
fn a_sigkill_under_load_in_raft_mode_loses_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let seed = walletd_tests::seed_from_env("RAFT_E2E_SEED");
    let dir = tempfile::tempdir().unwrap();
    let mut server = funded_raft_node(dir.path(), &[]);

    let acked: Arc<Mutex<Vec<u128>>> = Arc::default();
    let killing = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, killing, addr) = (acked.clone(), killing.clone(), server.addr.clone());
        std::thread::spawn(move || {
            let client = Client::connect(ClientConfig {
                retries: 0,
                timeout_ms: 3_000,
                ..ClientConfig::new(addr)
            })
            .unwrap();
            for n in 0u64.. {
                let transfers = batch(1_000_000 + u128::from(n) * 100, 100, n + 1);
                match client.create_transfers(&transfers) {
                    Ok(codes) => {
                        assert!(all_ok(&codes), "every transfer of the load is valid");
                        acked.lock().unwrap().extend(transfers.iter().map(|t| t.id));
                    }
                    Err(e) => {
                        assert!(
                            killing.load(Ordering::SeqCst),
                            "a batch failed before the kill: {e}"
                        );
                        return;
                    }
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 2_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(
        fastrand::Rng::with_seed(seed).u64(..200),
    ));
    assert!(!writer.is_finished(), "the load stopped before the kill");
    killing.store(true, Ordering::SeqCst);
    server.kill();
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 2_000,
        "the load ran ({} acknowledged)",
        acked.len()
    );

    server.restart();
    let client = Client::connect(ClientConfig::new(server.addr.clone())).unwrap();
    for chunk in acked.chunks(8190) {
        let found = client.lookup_transfers(chunk).unwrap();
        for (id, t) in chunk.iter().zip(found) {
            let status = t.map(|t| t.status);
            assert_eq!(
                status,
                Some(ResultCode::Ok),
                "acknowledged transfer {id} after the crash (seed {seed})"
            );
        }
    }
    println!("{} acknowledged transfers all there", acked.len());
    drop(client);
    assert_eq!(server.stop(), Some(0));
}
