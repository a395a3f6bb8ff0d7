//! A real `walletd` process, used through the client library and the `wallet` CLI: accounts,
//! deposits, transfers, every common rejection, restarts (clean and SIGKILL), and batches of
//! 8190 transfers pipelined over one connection.

use engine::model::Currency;
use engine::{NewAccount, NewTransfer, ResultCode};
use net::{Client, ClientConfig};
use std::time::{Duration, Instant};
use walletd_tests::server_process::ServerProcess;
use walletd_tests::{eur_account, http_get};

const WALLETD: &str = env!("CARGO_BIN_EXE_test-walletd");
const WALLET: &str = env!("CARGO_BIN_EXE_test-wallet");

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

/// Runs the CLI; returns (exit ok, stdout, stderr).
fn wallet(addr: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--addr", addr];
    all.extend_from_slice(args);
    walletd_tests::run_cli(WALLET, &all)
}

fn balance(addr: &str, id: u128) -> i64 {
    let (ok, out, err) = wallet(addr, &["--json", "balance", &id.to_string()]);
    assert!(ok, "balance {id}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["balance"].as_i64().unwrap()
}

#[test]
fn cli_and_client_move_money_and_it_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(std::path::Path::new(WALLETD), dir.path(), &[]);
    let addr = server.addr.clone();

    // The CLI: issuer, two wallets, a deposit and a transfer.
    assert!(
        wallet(
            &addr,
            &[
                "create-account",
                "--id",
                "1",
                "--currency",
                "EUR",
                "--floor",
                "-1000000"
            ]
        )
        .0
    );
    assert!(wallet(&addr, &["create-account", "--id", "2", "--currency", "EUR"]).0);
    assert!(wallet(&addr, &["create-account", "--id", "3", "--currency", "EUR"]).0);
    let (ok, out, _) = wallet(
        &addr,
        &[
            "deposit",
            "--id",
            "100",
            "--issuer",
            "1",
            "--to",
            "2",
            "--amount",
            "500",
            "--currency",
            "EUR",
        ],
    );
    assert!(ok && out == "ok", "{out}");
    let (ok, out, _) = wallet(
        &addr,
        &[
            "--json",
            "transfer",
            "--id",
            "101",
            "--from",
            "2",
            "--to",
            "3",
            "--amount",
            "200",
            "--currency",
            "EUR",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["result"],
        "ok"
    );
    // A retry of the same id is harmless; a different body under it is refused.
    assert_eq!(
        wallet(
            &addr,
            &[
                "transfer",
                "--id",
                "101",
                "--from",
                "2",
                "--to",
                "3",
                "--amount",
                "200",
                "--currency",
                "EUR"
            ]
        )
        .1,
        "exists"
    );
    let (ok, _, err) = wallet(
        &addr,
        &[
            "transfer",
            "--id",
            "101",
            "--from",
            "2",
            "--to",
            "3",
            "--amount",
            "999",
            "--currency",
            "EUR",
        ],
    );
    assert!(!ok && err.contains("exists_with_different_fields"), "{err}");
    // Rejections exit non-zero with the precise code.
    let (ok, _, err) = wallet(
        &addr,
        &[
            "transfer",
            "--id",
            "102",
            "--from",
            "2",
            "--to",
            "3",
            "--amount",
            "10000",
            "--currency",
            "EUR",
        ],
    );
    assert!(!ok && err.contains("insufficient_funds"), "{err}");
    let (ok, _, err) = wallet(
        &addr,
        &[
            "transfer",
            "--id",
            "103",
            "--from",
            "2",
            "--to",
            "99",
            "--amount",
            "1",
            "--currency",
            "EUR",
        ],
    );
    assert!(!ok && err.contains("to_account_not_found"), "{err}");
    let (ok, _, err) = wallet(&addr, &["balance", "4242"]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, out, _) = wallet(&addr, &["--json", "lookup-transfer", "101"]);
    assert!(ok);
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (t["from"].as_u64(), t["to"].as_u64(), t["amount"].as_u64()),
        (Some(2), Some(3), Some(200))
    );
    assert_eq!(t["status"], "applied");

    // The client library, same server.
    let client = Client::connect(ClientConfig::new(addr.clone())).unwrap();
    let accounts = [NewAccount {
        id: 4,
        currency: eur(),
        flags: 0,
        floor: 0,
        user_data: 7,
    }];
    assert_eq!(
        client.create_accounts(&accounts).unwrap(),
        vec![ResultCode::Ok]
    );
    let transfers = [
        NewTransfer {
            id: 200,
            from: 3,
            to: 4,
            amount: 50,
            currency: eur(),
            user_data: 0,
        },
        NewTransfer {
            id: 201,
            from: 3,
            to: 4,
            amount: 1_000,
            currency: eur(),
            user_data: 0,
        },
        NewTransfer {
            id: 202,
            from: 3,
            to: 3,
            amount: 1,
            currency: eur(),
            user_data: 0,
        },
        NewTransfer {
            id: 203,
            from: 3,
            to: 4,
            amount: 0,
            currency: eur(),
            user_data: 0,
        },
        NewTransfer {
            id: 204,
            from: 77,
            to: 4,
            amount: 1,
            currency: eur(),
            user_data: 0,
        },
        NewTransfer {
            id: 205,
            from: 3,
            to: 4,
            amount: 1,
            currency: Currency::parse("USD").unwrap(),
            user_data: 0,
        },
    ];
    use ResultCode::*;
    assert_eq!(
        client.create_transfers(&transfers).unwrap(),
        vec![
            Ok,
            InsufficientFunds,
            SameAccount,
            ZeroAmount,
            FromAccountNotFound,
            CurrencyMismatch
        ]
    );
    drop(client);
    let before: Vec<i64> = (1..=4).map(|id| balance(&addr, id)).collect();
    assert_eq!(before, vec![-500, 300, 150, 50]);

    // Clean restart (SIGTERM: exit 0), then a crash (SIGKILL): balances stay.
    assert_eq!(server.stop(), Some(0));
    server.restart();
    assert_eq!(
        (1..=4).map(|id| balance(&addr, id)).collect::<Vec<_>>(),
        before
    );
    server.kill();
    server.restart();
    assert_eq!(
        (1..=4).map(|id| balance(&addr, id)).collect::<Vec<_>>(),
        before
    );
    assert_eq!(
        wallet(
            &addr,
            &[
                "transfer",
                "--id",
                "101",
                "--from",
                "2",
                "--to",
                "3",
                "--amount",
                "200",
                "--currency",
                "EUR"
            ]
        )
        .1,
        "exists"
    );

    // The live state digest, to compare with the offline replay below.
    let (ok, live, err) = wallet(&addr, &["--json", "digest"]);
    assert!(ok, "{err}");
    let live: serde_json::Value = serde_json::from_str(&live).unwrap();
    assert!(live["partitions"].as_array().is_some_and(|a| !a.is_empty()));

    // Offline audit of the stopped node's data dir: every record verifies, and replaying
    // from genesis or from the snapshot gives the same state (balances sum to zero), the
    // state the live node reported.
    assert_eq!(server.stop(), Some(0));
    let data = dir.path().to_str().unwrap();
    let (ok, out, err) = wallet(&addr, &["log", "verify", "--data-dir", data]);
    assert!(
        ok && out.contains("checksums and continuity ok"),
        "{out} {err}"
    );
    // With --json: one object, every partition in it.
    let (ok, out, err) = wallet(&addr, &["--json", "log", "verify", "--data-dir", data]);
    let verified: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    assert!(ok && verified["ok"] == true, "{verified}");
    assert!(
        verified["partitions"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{verified}"
    );
    let replay = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["--json", "audit", "replay", "--data-dir", data];
        args.extend_from_slice(extra);
        let (ok, out, err) = wallet(&addr, &args);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let from_snapshot = replay(&[]);
    let from_genesis = replay(&["--from-genesis"]);
    assert_eq!(from_snapshot["digest"], from_genesis["digest"]);
    assert_eq!(from_genesis["digest"], live["digest"]);
    assert_eq!(from_genesis["balances_total"], "0");
    assert!(from_genesis["events"].as_u64().unwrap() > 10);
    // As of a moment before the first transfer, no money had moved.
    let (ok, dump, _) = wallet(&addr, &["--json", "log", "dump", "--data-dir", data]);
    assert!(ok);
    let first_transfer: serde_json::Value = dump
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["kind"] == "transfer")
        .unwrap();
    let before = first_transfer["timestamp"].as_u64().unwrap() - 1;
    let early = replay(&[
        "--until",
        &before.to_string(),
        "--balances",
        "--from-genesis",
    ]);
    assert!(early["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["balance"] == 0));
}

#[test]
fn batches_of_8190_pipelined_over_one_connection_all_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        std::path::Path::new(WALLETD),
        dir.path(),
        &["--cores", "0,1", "--partitions", "2"],
    );
    let client = Client::connect(ClientConfig::new(server.addr.clone())).unwrap();
    // Accounts of partition 0 only (ids 2..8 of 2 partitions, see engine::partition), plus
    // an issuer there, so every transfer is same-partition.
    let ids: Vec<u128> = (2u128..2_000)
        .filter(|id| engine::partition::partition_of(*id, 2) == 0)
        .take(1_000)
        .collect();
    let issuer = ids[0];
    let mut accounts = vec![eur_account(issuer, -1_000_000_000_000)];
    accounts.extend(ids[1..].iter().map(|&id| eur_account(id, 0)));
    assert!(client
        .create_accounts(&accounts)
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    let deposits: Vec<NewTransfer> = ids[1..]
        .iter()
        .enumerate()
        .map(|(i, &to)| NewTransfer {
            id: 1 + i as u128,
            from: issuer,
            to,
            amount: 1_000_000,
            currency: eur(),
            user_data: 0,
        })
        .collect();
    assert!(client
        .create_transfers(&deposits)
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));

    let batches = 40usize;
    let in_flight = 8usize;
    let mut next_id = 1_000_000u128;
    let mut make_batch = || -> Vec<NewTransfer> {
        (0..8190)
            .map(|i| {
                next_id += 1;
                let a = ids[1 + (next_id as usize * 7 + i) % (ids.len() - 1)];
                let b = ids[1 + (next_id as usize * 13 + i + 1) % (ids.len() - 1)];
                let b = if a == b { issuer } else { b };
                NewTransfer {
                    id: next_id,
                    from: a,
                    to: b,
                    amount: 1,
                    currency: eur(),
                    user_data: 0,
                }
            })
            .collect()
    };
    let prepared: Vec<Vec<NewTransfer>> = (0..batches).map(|_| make_batch()).collect();
    let all_sent: Vec<NewTransfer> = prepared.iter().flatten().copied().collect();
    let started = Instant::now();
    let mut total = 0usize;
    let mut ok = 0usize;
    futures::executor::block_on(async {
        use futures::stream::{FuturesUnordered, StreamExt};
        let client = &client;
        let send = |batch: Vec<NewTransfer>| async move {
            let n = batch.len();
            (n, client.create_transfers_async(&batch).await)
        };
        let mut pending = FuturesUnordered::new();
        let mut sent = 0;
        let mut prepared = prepared.into_iter();
        while sent < in_flight {
            let batch = prepared.next().unwrap();
            pending.push(send(batch));
            sent += 1;
        }
        while let Some((n, reply)) = pending.next().await {
            let results = reply.expect("every batch gets a reply");
            assert_eq!(results.len(), n);
            total += n;
            ok += results.iter().filter(|c| **c == ResultCode::Ok).count();
            if let Some(batch) = prepared.next() {
                pending.push(send(batch));
            }
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(total, batches * 8190);
    assert_eq!(ok, total, "every transfer is valid and applies");
    println!(
        "{total} transfers in {batches} batches of 8190, {in_flight} in flight on one connection: {seconds:.2} s = {:.0} transfers/s ({} build)",
        total as f64 / seconds,
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    // Every acknowledged transfer (all were `ok`) is there as sent, and every balance is the
    // deposits plus those transfers.
    let mut expected: std::collections::HashMap<u128, i64> = std::collections::HashMap::new();
    for t in deposits.iter().chain(&all_sent) {
        *expected.entry(t.to).or_default() += t.amount as i64;
        *expected.entry(t.from).or_default() -= t.amount as i64;
    }
    for chunk in all_sent.chunks(8190) {
        let ids: Vec<u128> = chunk.iter().map(|t| t.id).collect();
        let found = client.lookup_transfers(&ids).unwrap();
        for (t, found) in chunk.iter().zip(found) {
            let found = found.unwrap_or_else(|| panic!("acknowledged transfer {} lost", t.id));
            assert_eq!(found.status, ResultCode::Ok, "transfer {}", t.id);
            assert_eq!(
                (
                    found.transfer.from,
                    found.transfer.to,
                    found.transfer.amount
                ),
                (t.from, t.to, t.amount),
                "transfer {} stored with other fields",
                t.id
            );
        }
    }
    for chunk in ids.chunks(8190) {
        let found = client.lookup_accounts(chunk).unwrap();
        for (id, account) in chunk.iter().zip(found) {
            let account = account.unwrap_or_else(|| panic!("account {id} lost"));
            assert_eq!(
                account.balance,
                expected.get(id).copied().unwrap_or(0),
                "account {id}: balance differs from the acknowledged transfers"
            );
        }
    }
}

#[test]
fn single_transfers_from_many_threads_are_batched_and_auth_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("client.token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let data = dir.path().join("data");
    let mut server =
        ServerProcess::start_with_token(std::path::Path::new(WALLETD), &data, &token_file);

    // No token, or a wrong one: refused at handshake.
    let refused = Client::connect(ClientConfig::new(server.addr.clone()));
    assert!(
        matches!(
            refused,
            Err(net::ClientError::Refused {
                error: net::ProtocolError::AuthFailed,
                ..
            })
        ),
        "{:?}",
        refused.err()
    );
    let mut wrong = ClientConfig::new(server.addr.clone());
    wrong.token = Some(b"s3cret-tokem".to_vec());
    assert!(Client::connect(wrong).is_err());
    // The CLI reads the token from a file.
    let (ok, _, err) = wallet(
        &server.addr,
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "create-account",
            "--id",
            "1",
            "--currency",
            "EUR",
            "--floor",
            "-1000000",
        ],
    );
    assert!(ok, "{err}");

    let mut config = ClientConfig::new(server.addr.clone());
    config.token = Some(b"s3cret-token".to_vec());
    let client = std::sync::Arc::new(Client::connect(config).unwrap());
    let wallets: Vec<NewAccount> = (2..=9).map(|id| eur_account(id, 0)).collect();
    assert!(client
        .create_accounts(&wallets)
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));

    // 8 threads x 250 single deposits through one batcher.
    let batcher = client.batcher();
    let threads: Vec<_> = (0..8u128)
        .map(|t| {
            let batcher = batcher.clone();
            std::thread::spawn(move || {
                (0..250u128)
                    .map(|i| {
                        let transfer = NewTransfer {
                            id: 10_000 + t * 1_000 + i,
                            from: 1,
                            to: 2 + t,
                            amount: 3,
                            currency: eur(),
                            user_data: 0,
                        };
                        batcher.transfer(transfer).unwrap()
                    })
                    .filter(|c| *c == ResultCode::Ok)
                    .count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(ok, 2_000);
    let balances: Vec<i64> = client
        .lookup_accounts(&(2..=9).collect::<Vec<_>>())
        .unwrap()
        .iter()
        .map(|a| a.unwrap().balance)
        .collect();
    assert_eq!(balances, vec![750; 8]);
    // Fewer requests than transfers reached the server: the batcher coalesced them.
    let status = client.status().unwrap();
    let entries: u64 = status.partitions.iter().map(|p| p.last_index).sum();
    assert!(entries < 2_000, "{entries} log entries for 2,000 transfers");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn metrics_endpoint_reports_per_partition_counters() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", walletd_tests::server_process::free_port());
    let server = ServerProcess::start(
        std::path::Path::new(WALLETD),
        dir.path(),
        &[
            "--cores",
            "0,1",
            "--partitions",
            "2",
            "--metrics-listen",
            &metrics,
        ],
    );
    let client = Client::connect(ClientConfig::new(server.addr.clone())).unwrap();
    let accounts: Vec<NewAccount> = (1..=4).map(|id| eur_account(id, -100)).collect();
    assert!(client
        .create_accounts(&accounts)
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    let (status, body) = http_get(&metrics, "/metrics");
    assert!(status.contains("200"), "{status}");
    let accounts_total: u64 = body
        .lines()
        .filter(|l| l.starts_with("walletd_accounts{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(accounts_total, 4, "{body}");
    // The four creations were counted by result code; a repeat of them answers `exists`.
    assert!(
        body.contains("walletd_results_total{code=\"ok\"} 4\n"),
        "{body}"
    );
    assert!(client
        .create_accounts(&accounts)
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Exists));
    let (_, body) = http_get(&metrics, "/metrics");
    assert!(
        body.contains("walletd_results_total{code=\"exists\"} 4\n"),
        "{body}"
    );
    // Nothing is waiting between requests of one idle client.
    assert!(
        body.contains("walletd_queue_depth{partition=\"1\"} 0\n"),
        "{body}"
    );
    assert!(
        body.contains("walletd_fsyncs_total{partition=\"1\"}"),
        "{body}"
    );
    assert!(body.contains("# TYPE walletd_tcc_in_flight gauge"));
    // Every group that wrote to the log (the account creation above) was timed: each
    // partition's fsync histogram counts as many groups as fsyncs, and buckets are cumulative.
    assert!(body.contains("# TYPE walletd_group_fsync_seconds histogram"));
    let value = |series: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing: {body}"))
    };
    let mut timed_groups = 0;
    for partition in 0..2 {
        let fsyncs = value(&format!(
            "walletd_fsyncs_total{{partition=\"{partition}\"}}"
        ));
        let count = value(&format!(
            "walletd_group_fsync_seconds_count{{partition=\"{partition}\"}}"
        ));
        let inf = value(&format!(
            "walletd_group_fsync_seconds_bucket{{partition=\"{partition}\",le=\"+Inf\"}}"
        ));
        assert!(count <= fsyncs && count == inf, "{body}");
        // Each command batch that reached a group was timed in the queue (account creation).
        let queued = value(&format!(
            "walletd_queue_wait_seconds_count{{partition=\"{partition}\"}}"
        ));
        assert!(queued >= 1, "{body}");
        assert_eq!(
            count,
            value(&format!(
                "walletd_group_apply_seconds_count{{partition=\"{partition}\"}}"
            ))
        );
        timed_groups += count;
    }
    assert!(timed_groups >= 1, "{body}");
    for partition in 0..2 {
        assert_eq!(
            value(&format!(
                "walletd_storage_full{{partition=\"{partition}\"}}"
            )),
            0
        );
        assert_eq!(
            value(&format!(
                "walletd_storage_failed{{partition=\"{partition}\"}}"
            )),
            0
        );
    }
    let (status, _) = http_get(&metrics, "/");
    assert!(status.contains("404"), "{status}");
}

#[test]
fn cluster_client_routes_by_the_partition_map() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        std::path::Path::new(WALLETD),
        dir.path(),
        &["--cores", "0,1", "--partitions", "2"],
    );
    let seeds = vec!["127.0.0.1:1".to_string(), server.addr.clone()];
    let cluster = net::ClusterClient::connect(ClientConfig::new(""), &seeds)
        .expect("the second seed answers");
    let map = cluster.map();
    assert_eq!(map.partition_count(), 2);
    assert_eq!(map.nodes.len(), 1);
    assert_eq!(map.nodes[0].node_id, 1);
    assert_eq!(
        map.nodes[0].client_addr, server.addr,
        "advertised = listen by default"
    );
    assert_eq!(map.sole_leader().map(|n| n.node_id), Some(1));

    // Accounts on both partitions and transfers across them (TC/C), through the map.
    let mut accounts = vec![eur_account(1, -1_000_000)];
    accounts.extend((2u128..40).map(|id| eur_account(id, 0)));
    assert!(cluster
        .create_accounts(&accounts)
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    let transfers: Vec<NewTransfer> = (2u128..40)
        .map(|to| NewTransfer {
            id: 500 + to,
            from: 1,
            to,
            amount: 10,
            currency: eur(),
            user_data: 0,
        })
        .collect();
    assert!(
        transfers
            .iter()
            .any(|t| engine::partition::partition_of(t.from, 2)
                != engine::partition::partition_of(t.to, 2)),
        "some transfers cross partitions"
    );
    let first = cluster.create_transfers(&transfers).unwrap();
    assert!(first.iter().all(|c| *c == ResultCode::Ok), "{first:?}");
    let again = cluster.create_transfers(&transfers).unwrap();
    assert!(again.iter().all(|c| *c == ResultCode::Exists), "{again:?}");
    assert_eq!(balance(&server.addr, 1), -380);
    assert_eq!(balance(&server.addr, 39), 10);

    // wallet cluster status: one node leading both partitions, no lag.
    let (ok, out, err) = wallet(&server.addr, &["--json", "cluster", "status"]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["nodes"][0]["reachable"], true);
    for p in 0..2 {
        let part = &status["partitions"][p];
        assert_eq!(part["leader"], 1);
        assert_eq!(part["replicas"][0]["node_id"], 1);
        assert_eq!(part["replicas"][0]["lag_entries"], 0);
        assert!(part["replicas"][0]["durable_index"].as_u64().unwrap() > 0);
    }
    let (ok, out, _) = wallet(&server.addr, &["cluster", "status"]);
    assert!(
        ok && out.contains("partition 1: leader node 1, term 0"),
        "{out}"
    );

    // --advertise-addr is what the map tells clients.
    let dir2 = tempfile::tempdir().unwrap();
    let advertised = ServerProcess::start(
        std::path::Path::new(WALLETD),
        dir2.path(),
        &["--advertise-addr", "walletd-1.example:7400"],
    );
    let map = Client::connect(ClientConfig::new(advertised.addr.clone()))
        .unwrap()
        .partition_map()
        .unwrap();
    assert_eq!(map.nodes[0].client_addr, "walletd-1.example:7400");
    assert_eq!(map.partition_count(), 1);
}

/// A bad config file is refused with one line naming the file, line and column (toml's own
/// message spans several lines).
#[test]
fn a_bad_config_file_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("walletd.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\n\nno_such_setting = 3\n").unwrap();
    let (ok, _, stderr) = walletd_tests::run_cli(WALLETD, &["--config", config.to_str().unwrap()]);
    assert!(!ok, "walletd started with an unknown setting");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("walletd.toml:3:1:") && stderr.contains("no_such_setting"),
        "{stderr}"
    );
}

/// An advertised address longer than a partition map holds is refused at start (it went into
/// every map the node served, and each map request then panicked the network core).
#[test]
fn an_advertised_address_longer_than_a_map_holds_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!("{}:7400", "h".repeat(300));
    let (ok, _, stderr) = walletd_tests::run_cli(
        WALLETD,
        &[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--advertise-addr",
            &long,
        ],
    );
    assert!(!ok, "walletd started with a 305-byte advertise_addr");
    assert!(stderr.contains("advertise_addr"), "{stderr}");
}

/// A SIGTERM that comes while the node is still starting (its partitions recovering, the port
/// not open yet) stops it cleanly once it is up: exit 0 and a clean stop, not death by the
/// signal's default disposition (the handlers were once installed only after the start).
#[test]
fn a_sigterm_during_start_up_stops_the_node_cleanly() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = format!("127.0.0.1:{}", walletd_tests::server_process::free_port());
    let mut child = std::process::Command::new(WALLETD)
        .args(["--listen", &addr, "--data-dir"])
        .arg(dir.path().join("data"))
        .env("WALLETD_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn walletd");
    // A walletd that never says it starts, or never stops, fails the test instead of hanging
    // it: after a minute the watchdog kills it (exit by SIGKILL, not 0).
    let pid = child.id() as i32;
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_secs(60)).is_err() {
            // SAFETY: a plain kill(2) of the child this test started (still unwaited).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok);
    let starting = lines
        .by_ref()
        .find(|line| line.contains("recovering the partitions"));
    if starting.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        // Reaped: the watchdog must not signal its pid (which may be reused) any more.
        let _ = done.send(());
        panic!("walletd never said it was starting");
    }
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let rest: Vec<String> = lines.collect();
    let status = child.wait().expect("wait for walletd");
    let _ = done.send(());
    watchdog.join().expect("the watchdog");
    assert_eq!(status.code(), Some(0), "{status:?}: {rest:#?}");
    assert!(
        rest.iter().any(|line| line.contains("stopped cleanly")),
        "{rest:#?}"
    );
}
