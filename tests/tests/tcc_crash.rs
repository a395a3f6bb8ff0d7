//! SIGKILL walletd while cross-partition (TC/C) transfers are in flight, restart it, and show
//! that every transfer finished: no hold remains, money is conserved, no balance is below its
//! floor, and every acknowledged transfer is there. The kill time comes from a printed seed
//! (`TCC_CRASH_SEED` replays it).

use engine::model::Currency;
use engine::partition::partition_of;
use engine::{NewAccount, NewTransfer, ResultCode};
use net::{Client, ClientConfig};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use walletd_tests::eur_account;
use walletd_tests::server_process::ServerProcess;

const WALLETD: &str = env!("CARGO_BIN_EXE_test-walletd");

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

#[test]
fn sigkill_during_cross_partition_transfers_leaves_no_hold() {
    let seed = walletd_tests::seed_from_env("TCC_CRASH_SEED");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(
        Path::new(WALLETD),
        dir.path(),
        &["--cores", "0,1", "--partitions", "2"],
    );
    let client = Client::connect(ClientConfig::new(server.addr.clone())).unwrap();

    let mut wallets: [Vec<u128>; 2] = [Vec::new(), Vec::new()];
    let mut issuers = [0u128; 2];
    for id in 1u128..400 {
        let p = partition_of(id, 2) as usize;
        if issuers[p] == 0 {
            issuers[p] = id;
        } else if wallets[p].len() < 20 {
            wallets[p].push(id);
        }
    }
    let mut accounts: Vec<NewAccount> = issuers
        .iter()
        .map(|&id| eur_account(id, -1_000_000_000))
        .collect();
    accounts.extend(wallets.iter().flatten().map(|&id| eur_account(id, 0)));
    assert!(client
        .create_accounts(&accounts)
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    let deposits: Vec<NewTransfer> = (0..2)
        .flat_map(|p| wallets[p].iter().map(move |&to| (p, to)))
        .enumerate()
        .map(|(i, (p, to))| NewTransfer {
            id: 1 + i as u128,
            from: issuers[p],
            to,
            amount: 100_000,
            currency: eur(),
            user_data: 0,
        })
        .collect();
    assert!(client
        .create_transfers(&deposits)
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));

    // Load: batches of cross-partition transfers, both directions, until the server dies.
    // Every transfer sent is kept (`sent`), so that after the restart the fate of the ones in
    // flight at the kill can be looked up and every balance recomputed.
    let sent: Arc<Mutex<Vec<NewTransfer>>> = Arc::default();
    let acked: Arc<Mutex<Vec<u128>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let failed_before_kill: Arc<Mutex<Option<String>>> = Arc::default();
    let loader = {
        let (sent, acked, stop, failed, wallets, addr) = (
            sent.clone(),
            acked.clone(),
            stop.clone(),
            failed_before_kill.clone(),
            wallets.clone(),
            server.addr.clone(),
        );
        std::thread::spawn(move || {
            let mut config = ClientConfig::new(addr);
            config.retries = 0;
            config.timeout_ms = 3_000;
            let client = Client::connect(config).unwrap();
            let mut id = 1_000_000u128;
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<NewTransfer> = (0..200)
                    .map(|i| {
                        id += 1;
                        let p = (i + n) % 2;
                        let from = wallets[p][(i * 7 + n) % 20];
                        let to = wallets[1 - p][(i * 3 + n) % 20];
                        NewTransfer {
                            id,
                            from,
                            to,
                            amount: 1 + (i % 5) as u64,
                            currency: eur(),
                            user_data: 0,
                        }
                    })
                    .collect();
                n += 1;
                sent.lock().unwrap().extend(batch.iter().copied());
                match client.create_transfers(&batch) {
                    Ok(results) => {
                        let mut acked = acked.lock().unwrap();
                        for (t, code) in batch.iter().zip(results) {
                            assert_eq!(
                                code,
                                ResultCode::Ok,
                                "every transfer of this load is valid"
                            );
                            acked.push(t.id);
                        }
                    }
                    Err(e) => {
                        // Expected once the kill began; before it, the crash would hit an idle
                        // server and prove nothing.
                        if !stop.load(Ordering::SeqCst) {
                            *failed.lock().unwrap() = Some(e.to_string());
                        }
                        break;
                    }
                }
            }
        })
    };
    // Let the load flow (a debug build needs ~100 ms per batch), then kill at a random moment.
    let flowing = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 600 && Instant::now() < flowing {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(rng.u64(..500)));
    assert!(
        !loader.is_finished(),
        "the load stopped before the kill: {:?} (seed {seed})",
        failed_before_kill.lock().unwrap()
    );
    stop.store(true, Ordering::SeqCst);
    server.kill();
    loader.join().unwrap();
    if let Some(e) = failed_before_kill.lock().unwrap().as_ref() {
        panic!("a batch failed before the kill: {e} (seed {seed})");
    }
    let acked = acked.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    println!(
        "{} cross-partition transfers acknowledged before SIGKILL",
        acked.len()
    );
    assert!(acked.len() > 200, "the load ran before the kill");

    // Restart: the coordinators re-drive every unfinished TC/C; wait for holds to drain.
    server.restart();
    let client = Client::connect(ClientConfig::new(server.addr.clone())).unwrap();
    let all: Vec<u128> = issuers
        .iter()
        .chain(wallets.iter().flatten())
        .copied()
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let accounts = loop {
        let accounts: Vec<_> = client
            .lookup_accounts(&all)
            .unwrap()
            .into_iter()
            .map(|a| a.unwrap())
            .collect();
        if accounts.iter().all(|a| a.held == 0) {
            break accounts;
        }
        assert!(
            Instant::now() < deadline,
            "holds remain after restart (seed {seed})"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let total: i128 = accounts
        .iter()
        .map(|a| a.balance as i128 + a.held as i128)
        .sum();
    assert_eq!(total, 0, "money conserved (seed {seed})");
    assert!(
        accounts.iter().all(|a| a.balance >= a.floor),
        "no balance below its floor (seed {seed})"
    );
    // Every acknowledged transfer is applied as sent; one in flight at the kill is applied
    // or not (cancelled or absent), never left pending. Every balance is the deposits plus
    // the applied transfers, exactly.
    let acked: std::collections::HashSet<u128> = acked.into_iter().collect();
    let mut expected: std::collections::HashMap<u128, i64> = std::collections::HashMap::new();
    for d in &deposits {
        *expected.entry(d.to).or_default() += d.amount as i64;
        *expected.entry(d.from).or_default() -= d.amount as i64;
    }
    let mut in_flight_applied = 0;
    for chunk in sent.chunks(8190) {
        let ids: Vec<u128> = chunk.iter().map(|t| t.id).collect();
        let found = client.lookup_transfers(&ids).unwrap();
        for (t, found) in chunk.iter().zip(found) {
            let applied = match found {
                Some(f) if f.status == ResultCode::Ok => {
                    assert_eq!(
                        (f.transfer.from, f.transfer.to, f.transfer.amount),
                        (t.from, t.to, t.amount),
                        "transfer {} applied with other fields (seed {seed})",
                        t.id
                    );
                    true
                }
                Some(f) => {
                    assert_ne!(
                        f.status,
                        ResultCode::Pending,
                        "transfer {} still pending after the holds drained (seed {seed})",
                        t.id
                    );
                    false
                }
                None => false,
            };
            if acked.contains(&t.id) {
                assert!(
                    applied,
                    "acknowledged transfer {} is not applied after the restart (seed {seed})",
                    t.id
                );
            } else if applied {
                in_flight_applied += 1;
            }
            if applied {
                *expected.entry(t.to).or_default() += t.amount as i64;
                *expected.entry(t.from).or_default() -= t.amount as i64;
            }
        }
    }
    println!(
        "{} sent, {} acknowledged, {in_flight_applied} unacknowledged ones applied",
        sent.len(),
        acked.len()
    );
    for a in &accounts {
        assert_eq!(
            a.balance,
            expected.get(&a.id).copied().unwrap_or(0),
            "account {}: balance differs from the deposits plus the applied transfers (seed {seed})",
            a.id
        );
    }
    assert_eq!(server.stop(), Some(0));
}
