//! `wallet audit trace` / `wallet audit diff` on a real data dir: the same build agrees with
//! itself, and a build that decides one entry differently (simulated by a wrapper that alters
//! one trace line, exactly what a changed state machine would print) is caught at that entry.

use engine::{NewAccount, NewTransfer, ResultCode};
use net::{Client, ClientConfig};
use std::path::Path;
use std::process::Command;
use walletd_tests::server_process::ServerProcess;
use walletd_tests::{eur, eur_account};

const WALLETD: &str = env!("CARGO_BIN_EXE_test-walletd");
const WALLET: &str = env!("CARGO_BIN_EXE_test-wallet");

/// Runs the CLI; returns (exit ok, stdout, stderr).
fn wallet(args: &[&str]) -> (bool, String, String) {
    walletd_tests::run_cli(WALLET, args)
}

/// A data dir with same- and cross-partition transfers (TC/C steps in both logs), stopped.
fn populated_data_dir(dir: &Path) {
    let mut server = ServerProcess::start(
        Path::new(WALLETD),
        dir,
        &["--cores", "0,1", "--partitions", "2"],
    );
    let client = Client::connect(ClientConfig::new(server.addr.clone())).unwrap();
    let mut accounts: Vec<NewAccount> = (1..=40).map(|id| eur_account(id, 0)).collect();
    accounts[0] = eur_account(1, -1_000_000);
    accounts[1] = eur_account(2, -1_000_000);
    assert!(client
        .create_accounts(&accounts)
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    let mut id = 1u128;
    for round in 0..20u128 {
        let transfers: Vec<NewTransfer> = (3..=40u128)
            .map(|to| {
                id += 1;
                NewTransfer {
                    id,
                    from: 1 + (round + to) % 2,
                    to,
                    amount: 10 + round as u64,
                    currency: eur(),
                    user_data: 0,
                }
            })
            .collect();
        client.create_transfers(&transfers).unwrap();
    }
    assert_eq!(server.stop(), Some(0));
}

/// A stand-in for another build: runs the real one and rewrites `field` on trace line `line`.
fn altered_build(dir: &Path, line: usize, field: &str) -> String {
    let path = dir.join(format!("other-build-{line}-{field}.sh"));
    let script = format!(
        "#!/bin/sh\n\"{WALLET}\" \"$@\" | sed '{line}s/\"{field}\":\"[0-9a-f]*\"/\"{field}\":\"00000000000000000000000000000000\"/'\n"
    );
    std::fs::write(&path, script).unwrap();
    let status = Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    assert!(status.success());
    path.display().to_string()
}

#[test]
fn the_same_build_agrees_and_a_divergent_one_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    populated_data_dir(&data_dir);
    let data = data_dir.to_str().unwrap();

    let (ok, trace, err) = wallet(&[
        "audit",
        "trace",
        "--data-dir",
        data,
        "--checkpoint-every",
        "4",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = trace
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 10, "{trace}");
    assert!(lines.iter().any(|l| l["partition"] == 1));
    assert!(lines.iter().any(|l| !l["state"].is_null()));

    // `wallet --json audit diff` against `other`: (exit ok, report, stderr).
    let diff = |other: &str| -> (bool, serde_json::Value, String) {
        let (ok, out, err) = wallet(&[
            "--json",
            "audit",
            "diff",
            "--data-dir",
            data,
            "--against",
            other,
            "--checkpoint-every",
            "4",
        ]);
        let report = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
        (ok, report, err)
    };
    let (ok, report, err) = diff(WALLET);
    assert!(ok, "{report} {err}");
    assert_eq!(report["identical"], true);
    assert_eq!(report["entries"].as_u64().unwrap(), lines.len() as u64);

    // Decisions differ at trace line 7: named exactly, exit 1.
    let (ok, report, err) = diff(&altered_build(dir.path(), 7, "outputs"));
    assert!(!ok, "{report}");
    assert!(err.contains("first divergence"), "{err}");
    assert_eq!(report["kind"], "outputs");
    assert_eq!(report["ours"]["partition"], lines[6]["partition"]);
    assert_eq!(report["ours"]["index"], lines[6]["index"]);

    // Same decisions, different state at the last checkpoint: bounded by the one before.
    let last = lines.len();
    let (ok, report, _) = diff(&altered_build(dir.path(), last, "state"));
    assert!(!ok);
    assert_eq!(report["kind"], "state");
    assert_eq!(report["ours"]["index"], lines[last - 1]["index"]);
    assert!(report["since_index"].as_u64().unwrap() < lines[last - 1]["index"].as_u64().unwrap());
}
