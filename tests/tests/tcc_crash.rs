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
    let seed: u64 = std::env::var("TCC_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("TCC_CRASH_SEED={seed}");
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
    let acked: Arc<Mutex<Vec<u128>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (acked, stop, wallets, addr) = (
            acked.clone(),
            stop.clone(),
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
                    Err(_) => break, // the server was killed
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
    server.kill();
    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();
    let acked = acked.lock().unwrap().clone();
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
    for chunk in acked.chunks(8190) {
        let found = client.lookup_transfers(chunk).unwrap();
        let missing = found.iter().filter(|t| t.is_none()).count();
        assert_eq!(missing, 0, "acknowledged transfers lost (seed {seed})");
    }
    assert_eq!(server.stop(), Some(0));
}
