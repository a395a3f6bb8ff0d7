//! Shared pieces of the cross-process tests: the workload the crash child runs, so the parent
//! can check exactly what it expects to find, and a walletd child process on a free port.

pub mod chaos;
pub mod cluster;
pub mod server_process;

use engine::model::Currency;
use engine::partition::partition_of;
use engine::{NewAccount, NewTransfer};

pub const PARTITIONS: u32 = 2;
pub const WALLETS_PER_PARTITION: u128 = 40;

pub fn eur() -> Currency {
    Currency::parse("EUR").expect("valid code")
}

/// (issuer, wallets) of each partition.
pub fn accounts() -> Vec<(u128, Vec<u128>)> {
    (0..PARTITIONS)
        .map(|p| {
            let mut ids = (1u128..).filter(|id| partition_of(*id, PARTITIONS) == p);
            let issuer = ids.next().expect("ids are plentiful");
            let wallets = ids.take(WALLETS_PER_PARTITION as usize).collect();
            (issuer, wallets)
        })
        .collect()
}

/// A EUR account with no flags and no user data; a negative `floor` makes an issuer.
pub fn eur_account(id: u128, floor: i64) -> NewAccount {
    NewAccount {
        id,
        currency: eur(),
        flags: 0,
        floor,
        user_data: 0,
    }
}

pub fn creations() -> Vec<NewAccount> {
    let mut out = Vec::new();
    for (issuer, wallets) in accounts() {
        out.push(eur_account(issuer, -1_000_000_000_000));
        out.extend(wallets.iter().map(|&id| eur_account(id, 0)));
    }
    out
}

/// A large opening deposit for every wallet, with fixed ids (so a rerun answers `exists`).
pub fn funding() -> Vec<NewTransfer> {
    let mut out = Vec::new();
    for (issuer, wallets) in accounts() {
        for wallet in wallets {
            out.push(NewTransfer {
                id: (1u128 << 100) + wallet,
                from: issuer,
                to: wallet,
                amount: 1_000_000_000,
                currency: eur(),
                user_data: 0,
            });
        }
    }
    out
}

/// Batch `n` of a run: transfers with ids `first_id..first_id + size`, every one valid (the
/// issuer deposits a lot first, then wallets pay each other small amounts), so every
/// acknowledgement should be `ok`.
pub fn batch(first_id: u128, size: usize, seed: u64) -> Vec<NewTransfer> {
    let accounts = accounts();
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..size)
        .map(|i| {
            let id = first_id + i as u128;
            let (issuer, wallets) = &accounts[(next() % PARTITIONS as u64) as usize];
            let a = (next() % wallets.len() as u64) as usize;
            let b = (a + 1 + (next() % (wallets.len() as u64 - 1)) as usize) % wallets.len();
            let (from, to, amount) = if i % 10 == 0 {
                (*issuer, wallets[a], 1_000)
            } else {
                (wallets[a], wallets[b], 1)
            };
            NewTransfer {
                id,
                from,
                to,
                amount,
                currency: eur(),
                user_data: 0,
            }
        })
        .collect()
}

/// A randomized test's seed: from the environment variable `var` when set (to replay a run),
/// else fresh; printed as `VAR=seed` so a failure can be replayed.
pub fn seed_from_env(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("{var}={seed}");
    seed
}

/// Runs a command-line binary (the `wallet` CLI in the tests) with `args`; returns whether it
/// exited 0, and its stdout and stderr, trimmed.
pub fn run_cli(binary: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{binary}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// Runs the `wallet` CLI `binary` against `addr` with `--json` and `args`, and returns what it
/// printed; panics, naming the command and its output, unless it exits 0 with JSON.
pub fn wallet_json(binary: &str, addr: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--addr", addr, "--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = run_cli(binary, &all);
    assert!(ok, "wallet {args:?} at {addr}: {err} {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("wallet {args:?}: {e}: {out}"))
}

/// Sets (or, with `None`, lifts back to the hard limit) the file-size limit (`RLIMIT_FSIZE`,
/// through `prlimit`) of a running process: its writes past that offset fail with EFBIG,
/// which walletd treats like a full disk.
pub fn set_file_size_limit(pid: u32, bytes: Option<u64>) -> Result<(), std::io::Error> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall on valid pointers.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            std::ptr::null(),
            &mut old,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let new = libc::rlimit {
        rlim_cur: bytes.map_or(old.rlim_max, |b| b.min(old.rlim_max)),
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &new,
            std::ptr::null_mut(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A plain HTTP/1.1 GET (the metrics endpoint); returns (status line, body).
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP endpoint");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send the request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read the answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}
