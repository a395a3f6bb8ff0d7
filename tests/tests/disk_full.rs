//! A real `walletd` runs out of disk, without root: the test lowers the child's file size
//! limit (`RLIMIT_FSIZE`, through `prlimit`) below the segment size, so log writes past it
//! fail with EFBIG (walletd ignores SIGXFSZ), which the log treats like a full disk. Clients
//! must then get `storage_full`, reads must keep working, nothing unwritten may be
//! acknowledged, and raising the limit again must bring writes back without a restart. When
//! run as root, a second test fills a small tmpfs for a real ENOSPC at segment rotation.

use engine::{NewTransfer, ResultCode};
use net::{Client, ClientConfig, ClientError};
use std::path::Path;
use std::time::{Duration, Instant};
use walletd_tests::server_process::ServerProcess;
use walletd_tests::{eur, eur_account};

const WALLETD: &str = env!("CARGO_BIN_EXE_test-walletd");
const ISSUER: u128 = 1;
const WALLETS: u128 = 10;
/// Log writes beyond this offset of a segment fail (the segments are 4 MiB).
const FILE_SIZE_LIMIT_BYTES: u64 = 1 << 20;

fn set_file_size_limit(pid: u32, bytes: Option<u64>) {
    walletd_tests::set_file_size_limit(pid, bytes).expect("prlimit");
}

fn transfers(first_id: u128, count: u128) -> Vec<NewTransfer> {
    (first_id..first_id + count)
        .map(|id| NewTransfer {
            id,
            from: 100 + id % WALLETS,
            to: 100 + (id + 1) % WALLETS,
            amount: 1 + (id % 3) as u64,
            currency: eur(),
            user_data: 0,
        })
        .collect()
}

fn client(addr: &str) -> Client {
    let mut config = ClientConfig::new(addr.to_string());
    // A batch waiting for disk space gets no answer: the client gives up on it quickly and
    // never retries it by itself (the test does, with the same ids).
    config.timeout_ms = 1_000;
    config.retries = 0;
    Client::connect(config).expect("connect")
}

/// Every acknowledged transfer is stored, and the balances sum to zero.
fn check(client: &Client, acked: &[NewTransfer]) {
    let ids: Vec<u128> = acked.iter().map(|t| t.id).collect();
    for (chunk, transfers) in ids.chunks(4_000).zip(acked.chunks(4_000)) {
        let found = client.lookup_transfers(chunk).expect("lookup");
        for (t, f) in transfers.iter().zip(found) {
            let f = f.unwrap_or_else(|| panic!("acknowledged transfer {} is missing", t.id));
            assert_eq!(f.status, ResultCode::Ok);
            assert_eq!((f.transfer.from, f.transfer.amount), (t.from, t.amount));
        }
    }
    let accounts: Vec<u128> = std::iter::once(ISSUER)
        .chain((0..WALLETS).map(|i| 100 + i))
        .collect();
    let total: i64 = client
        .lookup_accounts(&accounts)
        .expect("balances")
        .iter()
        .map(|a| a.expect("account").balance)
        .sum();
    assert_eq!(total, 0, "money is conserved");
}

#[test]
fn a_full_disk_answers_storage_full_keeps_reads_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    run_out_of_space(
        dir.path(),
        |pid| set_file_size_limit(pid, Some(FILE_SIZE_LIMIT_BYTES)),
        |pid| set_file_size_limit(pid, None),
        false,
    );
}

/// The same with a real ENOSPC, from a small tmpfs: the full disk shows when a new segment is
/// preallocated (rotation). Needs root (mount); skipped otherwise.
#[test]
fn a_full_tmpfs_fails_the_rotation_and_recovers_when_it_grows() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = Tmpfs::mount(dir.path(), 10 << 20) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    // The next segment is preallocated before the batch that needs it is applied: that batch
    // is refused at once, none waits.
    run_out_of_space(&mount.path, |_| {}, |_| mount.resize(64 << 20), true);
}

/// A tmpfs mounted for one test, detached when dropped.
struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size_bytes: u64) -> Option<Tmpfs> {
        // SAFETY: plain syscalls.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let tmpfs = Tmpfs {
            path: path.to_path_buf(),
        };
        tmpfs.call_mount(size_bytes, 0).then_some(tmpfs)
    }

    fn resize(&self, size_bytes: u64) {
        assert!(self.call_mount(size_bytes, libc::MS_REMOUNT), "remount");
    }

    fn call_mount(&self, size_bytes: u64, flags: libc::c_ulong) -> bool {
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let target = c(self.path.to_str().unwrap());
        let options = c(&format!("size={size_bytes}"));
        let fstype = c("tmpfs");
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                options.as_ptr().cast(),
            )
        };
        rc == 0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.path.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated string; lazy detach, so a lingering file handle is no
        // obstacle.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Runs walletd on `dir`, calls `fill(pid)`, drives transfers until writes are refused with
/// `storage_full`, checks reads, calls `make_room(pid)` and checks that writes resume, that
/// every acknowledged transfer is stored and the money conserved, before and after a restart.
/// With `refused_at_once`, no batch may be left waiting for space (a full disk at rotation).
fn run_out_of_space(
    dir: &Path,
    fill: impl Fn(u32),
    make_room: impl Fn(u32),
    refused_at_once: bool,
) {
    let config_file = dir.join("walletd.toml");
    std::fs::write(&config_file, "segment_bytes = 4194304\n").unwrap();
    let data = dir.join("data");
    let mut server = ServerProcess::start(
        Path::new(WALLETD),
        &data,
        &["--config", config_file.to_str().unwrap()],
    );
    let client = client(&server.addr);
    let mut accounts = vec![eur_account(ISSUER, -1_000_000_000)];
    accounts.extend((0..WALLETS).map(|i| eur_account(100 + i, 0)));
    assert!(client
        .create_accounts(&accounts)
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    let deposits: Vec<NewTransfer> = (0..WALLETS)
        .map(|i| NewTransfer {
            id: 1_000_000 + i,
            from: ISSUER,
            to: 100 + i,
            amount: 10_000_000,
            currency: eur(),
            user_data: 0,
        })
        .collect();
    assert!(client
        .create_transfers(&deposits)
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    let mut acked = deposits;

    fill(server.pid());

    // ~1000 transfers are ~100 KB of log: the space runs out within a few dozen batches.
    let mut next_id = 1u128;
    let mut unanswered: Vec<Vec<NewTransfer>> = Vec::new();
    let mut refused = None;
    let started = Instant::now();
    while refused.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the full disk never refused a write"
        );
        let batch = transfers(next_id, 1_000);
        next_id += 1_000;
        match client.create_transfers(&batch) {
            Ok(results) if results.iter().all(|c| *c == ResultCode::Ok) => acked.extend(batch),
            Ok(results) if results.iter().all(|c| *c == ResultCode::StorageFull) => {
                refused = Some(batch)
            }
            Ok(results) => panic!("unexpected results: {:?}", &results[..3]),
            // Applied in memory, waiting for space: never acknowledged meanwhile.
            Err(ClientError::Timeout(_)) => unanswered.push(batch),
            Err(e) => panic!("{e}"),
        }
    }
    let refused = refused.expect("refused");
    assert!(acked.len() > 10, "some batches fit");
    if refused_at_once {
        assert_eq!(unanswered.len(), 0, "a batch waited for space");
    } else {
        // EFBIG comes from a write, after the batch was applied: it waits, unanswered.
        assert!(!unanswered.is_empty());
    }

    // Reads keep working, and the refused batch was not applied.
    let reader = client_checked_reads(&server.addr, &refused);

    // Space returns: writes resume without a restart. Retrying with the same ids is safe:
    // a batch that waited answers `exists` once it is durable, the refused one applies now.
    make_room(server.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    for batch in unanswered.into_iter().chain(std::iter::once(refused)) {
        loop {
            match reader.create_transfers(&batch) {
                Ok(results)
                    if results
                        .iter()
                        .all(|c| matches!(c, ResultCode::Ok | ResultCode::Exists)) =>
                {
                    break
                }
                Ok(results) if results[0] == ResultCode::StorageFull => {}
                Ok(results) => panic!("unexpected results: {:?}", &results[..3]),
                Err(ClientError::Timeout(_)) => {}
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < deadline, "writes did not resume");
            std::thread::sleep(Duration::from_millis(50));
        }
        acked.extend(batch);
    }
    let more = transfers(next_id, 1_000);
    assert!(reader
        .create_transfers(&more)
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    acked.extend(more);
    check(&reader, &acked);

    // And it is all on disk: a clean restart finds every acknowledged transfer.
    assert_eq!(server.stop(), Some(0));
    server.restart();
    check(&client_checked_reads(&server.addr, &[]), &acked);
    server.kill();
}

/// A fresh client; checks that balances answer and that `not_applied` transfers are absent.
fn client_checked_reads(addr: &str, not_applied: &[NewTransfer]) -> Client {
    let client = client(addr);
    let balances = client.lookup_accounts(&[100, 101]).expect("reads work");
    assert!(balances.iter().all(|a| a.is_some()));
    if !not_applied.is_empty() {
        let ids: Vec<u128> = not_applied.iter().map(|t| t.id).collect();
        let found = client.lookup_transfers(&ids).expect("lookups work");
        assert!(
            found.iter().all(|f| f.is_none()),
            "a refused batch was applied"
        );
    }
    client
}
