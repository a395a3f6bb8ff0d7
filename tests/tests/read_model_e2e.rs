//! The read model through a real `walletd`: `wallet history`, `wallet balance --at`, the
//! client library's history/balance-at calls, read-model lag in `wallet status`, and history
//! that survives a crash (recovery replays the log tail into the read model).

use engine::read_model::{At, HistoryQuery, QueryError};
use engine::{NewTransfer, ResultCode};
use net::{Client, ClientConfig};
use walletd_tests::server_process::ServerProcess;
use walletd_tests::{eur, eur_account};

const WALLETD: &str = env!("CARGO_BIN_EXE_test-walletd");
const WALLET: &str = env!("CARGO_BIN_EXE_test-wallet");

/// Runs the CLI; returns (exit ok, stdout, stderr).
fn wallet(addr: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--addr", addr];
    all.extend_from_slice(args);
    walletd_tests::run_cli(WALLET, &all)
}

fn json(addr: &str, args: &[&str]) -> serde_json::Value {
    walletd_tests::wallet_json(WALLET, addr, args)
}

fn transfer(id: u128, from: u128, to: u128, amount: u64) -> NewTransfer {
    NewTransfer {
        id,
        from,
        to,
        amount,
        currency: eur(),
        user_data: 0,
    }
}

/// Finished snapshot files in `dir` (not temp files of one being written).
fn snapshot_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "wsnap"))
            .count()
    })
}

#[test]
fn history_and_balance_at_through_cli_and_client_survive_a_crash_and_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(
        std::path::Path::new(WALLETD),
        dir.path(),
        &["--read-model-history-per-account", "3"],
    );
    let addr = server.addr.clone();
    let client = Client::connect(ClientConfig::new(addr.clone())).unwrap();
    let accounts = [
        eur_account(1, -1_000_000),
        eur_account(2, 0),
        eur_account(3, 0),
    ];
    assert_eq!(
        client.create_accounts(&accounts).unwrap(),
        vec![ResultCode::Ok; 3]
    );
    // Account 2: +1000, -100, -200, +50, -300 (five changes; three are retained).
    for (id, from, to, amount) in [
        (10, 1, 2, 1000),
        (11, 2, 3, 100),
        (12, 2, 3, 200),
        (13, 3, 2, 50),
        (14, 2, 3, 300),
    ] {
        let results = client
            .create_transfers(&[transfer(id, from, to, amount)])
            .unwrap();
        assert_eq!(results, vec![ResultCode::Ok]);
    }

    let history = json(&addr, &["history", "2", "--limit", "10"]);
    let entries = history["entries"].as_array().unwrap();
    let amounts: Vec<i64> = entries
        .iter()
        .map(|e| e["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(
        amounts,
        vec![-300, 50, -200],
        "newest first, three retained"
    );
    let balances: Vec<i64> = entries
        .iter()
        .map(|e| e["balance_after"].as_i64().unwrap())
        .collect();
    assert_eq!(balances, vec![450, 750, 700]);
    assert_eq!(entries[0]["counterparty"], 3);
    assert_eq!(entries[0]["transfer_id"], 14);
    assert_eq!(entries[0]["kind"], "transfer");
    assert_eq!(history["currency"], "EUR");
    assert!(history["truncated_at"]["timestamp"].as_u64().is_some());
    let oldest_retained = history["truncated_at"]["timestamp"].as_u64().unwrap();

    // Paging: --limit 2 gives the newest two and a cursor to the rest.
    let page = json(&addr, &["history", "2", "--limit", "2"]);
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    let cursor = page["next_before"].as_u64().unwrap();
    let rest = json(
        &addr,
        &[
            "history",
            "2",
            "--before",
            &cursor.to_string(),
            "--limit",
            "5",
        ],
    );
    assert_eq!(rest["entries"][0]["amount"], -200);

    // Balance as of the middle entry's timestamp and position; human output too.
    let middle = &entries[1];
    let at = middle["timestamp"].as_u64().unwrap().to_string();
    let b = json(&addr, &["balance", "2", "--at", &at]);
    assert_eq!(b["balance"], 750);
    // The fields `balance ID` promises (../shared/CLI.md), as of then.
    assert_eq!(
        b["available"].as_i64().unwrap(),
        750 - b["floor"].as_i64().unwrap(),
        "{b}"
    );
    let pos = middle["position"].as_u64().unwrap().to_string();
    assert_eq!(
        json(&addr, &["balance", "2", "--at-position", &pos])["balance"],
        750
    );
    let (ok, out, _) = wallet(&addr, &["balance", "2", "--at", &at]);
    assert!(ok && out.contains("750"), "{out}");
    let (ok, out, _) = wallet(&addr, &["history", "2"]);
    assert!(ok && out.contains("-300"), "{out}");

    // Older than the retained window: a clear refusal naming the oldest retained point.
    let (ok, _, err) = wallet(&addr, &["balance", "2", "--at", "1"]);
    assert!(!ok);
    assert!(
        err.contains("did not exist yet") || err.contains("oldest retained"),
        "{err}"
    );
    let before_window = (oldest_retained - 1).to_string();
    let (ok, _, err) = wallet(&addr, &["balance", "2", "--at", &before_window]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "oldest retained point is timestamp {oldest_retained}"
        )),
        "{err}"
    );
    let (ok, _, err) = wallet(&addr, &["history", "99"]);
    assert!(!ok && err.contains("not found"), "{err}");

    // The client library sees the same.
    let page = client
        .history(&HistoryQuery {
            account: 3,
            ..Default::default()
        })
        .unwrap()
        .unwrap();
    assert_eq!(page.entries[0].balance_after, 550);
    let old = client.balance_at(2, At::Position(1)).unwrap();
    assert!(
        matches!(old, Err(QueryError::BeforeRetained { .. })),
        "{old:?}"
    );

    // Lag in status (zero: the read model is fed right after each entry is applied).
    let status = json(&addr, &["status"]);
    let rm = &status["partitions"][0]["read_model"];
    assert_eq!(rm["enabled"], true);
    assert_eq!(rm["lag_entries"], 0);
    assert_eq!(status["partitions"][0]["leader"], 1, "a single node leads");
    assert_eq!(status["nodes"][0]["addr"], addr.as_str());
    let (ok, out, _) = wallet(&addr, &["status"]);
    assert!(ok && out.contains("read model lag 0 entries"), "{out}");
    assert!(out.contains("leader node 1 (term 0)"), "{out}");

    // A crash: no snapshot was written since the day's first one (at the first entry), so
    // recovery replays the log into the read model and the history comes back the same. That
    // first snapshot is written on a helper thread: wait for it, or a kill during its write
    // leaves only a temp file, and after the clean restart below nothing older than the
    // shutdown's snapshot would be left to rebuild the history from (seen under load).
    let snapshot_dir = dir.path().join("partition-00000/snapshots");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while snapshot_files(&snapshot_dir) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the day's first snapshot was never written"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(client);
    server.kill();
    server.restart();
    let again = json(&addr, &["history", "2", "--limit", "10"]);
    assert_eq!(again["entries"], history["entries"]);
    assert_eq!(json(&addr, &["balance", "2", "--at", &at])["balance"], 750);

    // A clean restart writes a snapshot at the very end; recovery starts from an older point
    // (`read_model_rebuild_entries`) and replays the history back, instead of starting it
    // afresh at that last snapshot.
    assert_eq!(server.stop(), Some(0));
    let snapshots = snapshot_files(&snapshot_dir);
    assert!(
        snapshots >= 2,
        "the shutdown wrote a snapshot ({snapshots} snapshots)"
    );
    server.restart();
    let after_clean = json(&addr, &["history", "2", "--limit", "10"]);
    assert_eq!(after_clean["entries"], history["entries"]);
    assert_eq!(json(&addr, &["balance", "2", "--at", &at])["balance"], 750);
}

/// `wallet totals`: every partition's money per currency equals the sum of `balance + held`
/// over its accounts, and all partitions together hold zero (the issuer runs negative), with
/// transfers inside and across partitions.
#[test]
fn totals_per_partition_match_the_accounts_and_sum_to_zero() {
    const PARTITIONS: u32 = 4;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        std::path::Path::new(WALLETD),
        dir.path(),
        &["--partitions", &PARTITIONS.to_string()],
    );
    let addr = server.addr.clone();
    let client = Client::connect(ClientConfig::new(addr.clone())).unwrap();
    let ids: Vec<u128> = (1..=8).collect();
    let accounts: Vec<_> = ids
        .iter()
        .map(|id| eur_account(*id, if *id == 1 { -1_000_000 } else { 0 }))
        .collect();
    assert!(client
        .create_accounts(&accounts)
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    // Deposits from the issuer into every wallet, then wallet to wallet: most of these cross
    // partitions (TC/C), some stay inside one.
    let mut id = 100;
    for to in 2..=8u128 {
        id += 1;
        let results = client
            .create_transfers(&[transfer(id, 1, to, 1_000)])
            .unwrap();
        assert_eq!(results, vec![ResultCode::Ok]);
    }
    for (from, to) in [(2, 3), (3, 4), (5, 6), (7, 8), (8, 2), (4, 5)] {
        id += 1;
        let results = client
            .create_transfers(&[transfer(id, from, to, 70)])
            .unwrap();
        assert_eq!(results, vec![ResultCode::Ok]);
    }

    // A cross-partition transfer is acknowledged before its source partition settles the hold
    // (money is in flight between the two for a moment): check once nothing is in flight.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let totals = json(&addr, &["totals"]);
        let found = client.lookup_accounts(&ids).unwrap();
        match check_totals(&totals, &ids, &found, PARTITIONS) {
            Ok(()) => break,
            Err(why) if std::time::Instant::now() > deadline => panic!("{why}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    let (ok, human, err) = wallet(&addr, &["totals"]);
    assert!(ok, "{err}");
    assert!(human.contains("all partitions: 0 EUR"), "{human}");
}

/// `wallet totals --json` against the accounts' `balance + held`, partition by partition, and
/// the sum over all of them against zero.
fn check_totals(
    totals: &serde_json::Value,
    ids: &[u128],
    found: &[Option<engine::model::Account>],
    partitions: u32,
) -> Result<(), String> {
    if totals["totals"][0]["currency"] != "EUR" || totals["totals"][0]["total"] != "0" {
        return Err(format!(
            "the partitions together do not hold zero: {totals}"
        ));
    }
    let parts = totals["partitions"].as_array().ok_or("no partitions")?;
    if parts.len() != partitions as usize {
        return Err(format!("{} partitions listed", parts.len()));
    }
    for part in parts {
        let p = part["partition"].as_u64().ok_or("no partition id")? as u32;
        let expected: i128 = ids
            .iter()
            .zip(found)
            .filter(|(id, _)| engine::partition::partition_of(**id, partitions) == p)
            .map(|(_, a)| a.map_or(0, |a| a.balance as i128 + a.held as i128))
            .sum();
        let got: i128 = part["totals"]
            .as_array()
            .ok_or("no totals")?
            .iter()
            .map(|t| {
                t["total"]
                    .as_str()
                    .unwrap_or("x")
                    .parse::<i128>()
                    .unwrap_or(i128::MIN)
            })
            .sum();
        if got != expected {
            return Err(format!("partition {p}: {got} != {expected}: {part}"));
        }
    }
    Ok(())
}

/// Ids are u128: `--json` prints ids past u64 as exact JSON numbers (it once panicked on
/// them), for writes, lookups and history alike.
#[test]
fn json_output_carries_ids_past_u64_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(std::path::Path::new(WALLETD), dir.path(), &[]);
    let addr = server.addr.clone();
    let issuer = (u128::MAX - 7).to_string();
    let wallet_id = ((1u128 << 100) + 3).to_string();
    let transfer_id = ((1u128 << 120) + 11).to_string();
    let created = json(
        &addr,
        &[
            "create-account",
            "--id",
            &issuer,
            "--currency",
            "EUR",
            "--floor",
            "-500",
        ],
    );
    assert_eq!(created["result"], "ok");
    assert_eq!(created["id"].to_string(), issuer);
    let created = json(
        &addr,
        &["create-account", "--id", &wallet_id, "--currency", "EUR"],
    );
    assert_eq!(created["id"].to_string(), wallet_id);
    let moved = json(
        &addr,
        &[
            "transfer",
            "--id",
            &transfer_id,
            "--from",
            &issuer,
            "--to",
            &wallet_id,
            "--amount",
            "120",
            "--currency",
            "EUR",
        ],
    );
    assert_eq!(moved["result"], "ok");
    assert_eq!(moved["id"].to_string(), transfer_id);
    let balance = json(&addr, &["balance", &wallet_id]);
    assert_eq!(balance["id"].to_string(), wallet_id);
    assert_eq!(balance["balance"], 120);
    let found = json(&addr, &["lookup-transfer", &transfer_id]);
    assert_eq!(found["id"].to_string(), transfer_id);
    assert_eq!(found["from"].to_string(), issuer);
    assert_eq!(found["to"].to_string(), wallet_id);
    let history = json(&addr, &["history", &wallet_id]);
    assert_eq!(
        history["entries"][0]["transfer_id"].to_string(),
        transfer_id
    );
    assert_eq!(history["entries"][0]["counterparty"].to_string(), issuer);
}
