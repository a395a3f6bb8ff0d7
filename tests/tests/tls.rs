//! TLS on the client port and the handshake timeout, against real `walletd` processes.
//!
//! Certificates are made here with rcgen: a test CA that signs the server's certificate (for
//! `localhost` and 127.0.0.1), and an unrelated CA. Checked: the CLI and the client library
//! (pipelined batches, a subscription) work over TLS with the auth token still enforced inside
//! it; plain clients, clients trusting another CA and clients expecting another name are
//! refused with a clear error while the server keeps serving; a connection that does not
//! finish its handshake (TCP only, or TLS but no protocol handshake) is closed after
//! `handshake_timeout_ms`, and such connections stop holding connection slots then.

use engine::{NewTransfer, ResultCode};
use net::client::Subscription;
use net::{Client, ClientConfig, ClientError, ClientTls, ProtocolError};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use walletd_tests::eur;
use walletd_tests::server_process::ServerProcess;

const WALLETD: &str = env!("CARGO_BIN_EXE_test-walletd");
const WALLET: &str = env!("CARGO_BIN_EXE_test-wallet");
const TOKEN: &str = "tls-test-token-0123456789abcdef";

/// The PEM files of a test PKI, in a temp dir.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    other_ca: PathBuf,
    /// A key that does not belong to `cert`.
    other_key: PathBuf,
    token: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("a CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    (params.self_signed(&key).expect("a CA certificate"), key)
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (ca_cert, ca_key) = ca("walletd test CA");
    let key = rcgen::KeyPair::generate().expect("a server key");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "walletd test server");
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("a server certificate");
    let (other_ca, other_key) = ca("some other CA");
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("ca.pem"), ca_cert.pem()).expect("write");
    std::fs::write(path("server.pem"), cert.pem()).expect("write");
    std::fs::write(path("server.key"), key.serialize_pem()).expect("write");
    std::fs::write(path("other-ca.pem"), other_ca.pem()).expect("write");
    std::fs::write(path("other.key"), other_key.serialize_pem()).expect("write");
    std::fs::write(path("client.token"), format!("{TOKEN}\n")).expect("write");
    Pki {
        ca: path("ca.pem"),
        cert: path("server.pem"),
        key: path("server.key"),
        other_ca: path("other-ca.pem"),
        other_key: path("other.key"),
        token: path("client.token"),
        _dir: dir,
    }
}

fn tls(ca: &Path) -> ClientTls {
    ClientTls::from_ca_file(ca, "127.0.0.1").expect("a client TLS config")
}

/// A client config that fails fast: no retries, short timeout.
fn config(addr: &str, tls: Option<ClientTls>, token: Option<&str>) -> ClientConfig {
    ClientConfig {
        tls,
        token: token.map(|t| t.as_bytes().to_vec()),
        retries: 0,
        timeout_ms: 5_000,
        ..ClientConfig::new(addr)
    }
}

/// Runs the CLI against `addr`; returns (exit ok, stdout, stderr).
fn wallet(addr: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--addr", addr];
    all.extend_from_slice(args);
    walletd_tests::run_cli(WALLET, &all)
}

fn s(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// A TLS walletd with a token; `extra` adds flags.
fn tls_server(pki: &Pki, data: &Path, extra: &[&str]) -> ServerProcess {
    let mut args = vec![
        "--tls-cert",
        s(&pki.cert),
        "--tls-key",
        s(&pki.key),
        "--auth-token-file",
        s(&pki.token),
    ];
    args.extend_from_slice(extra);
    ServerProcess::start_probed(
        Path::new(WALLETD),
        data,
        &args,
        Some(TOKEN.as_bytes().to_vec()),
        Some(tls(&pki.ca)),
    )
}

/// Waits for the server to close `stream` (EOF or reset; at most 5 s) and returns how long
/// that took from `since`. Fails if the server sends anything that is not a TLS record.
fn closed_after<S: Read>(stream: &mut S, since: Instant, what: &str) -> Duration {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return since.elapsed(),
            Ok(n) => assert!(
                matches!(buf[..n], [0x15..=0x17, 0x03, ..]),
                "{what}: the server sent non-TLS bytes {:?}",
                &buf[..n]
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: still open after {:?}", since.elapsed())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return since.elapsed(), // reset, or a TLS close without close_notify
        }
    }
}

fn raw_connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    stream
}

#[test]
fn tls_serves_the_cli_and_the_library_and_refuses_plain_and_untrusted_clients() {
    let pki = pki();
    let data = tempfile::tempdir().expect("a temp dir");
    let server = tls_server(&pki, data.path(), &[]);
    let addr = server.addr.clone();
    let tls_args = ["--tls-ca", s(&pki.ca), "--token-file", s(&pki.token)];
    let cli = |args: &[&str]| wallet(&addr, &[&tls_args[..], args].concat());

    // The CLI over TLS: an issuer, two wallets, a deposit and a transfer.
    for args in [
        &[
            "create-account",
            "--id",
            "1",
            "--currency",
            "EUR",
            "--floor",
            "-1000000000",
        ][..],
        &["create-account", "--id", "2", "--currency", "EUR"],
        &["create-account", "--id", "3", "--currency", "EUR"],
        &[
            "deposit",
            "--id",
            "10",
            "--issuer",
            "1",
            "--to",
            "2",
            "--amount",
            "100",
            "--currency",
            "EUR",
        ],
        &[
            "transfer",
            "--id",
            "11",
            "--from",
            "2",
            "--to",
            "3",
            "--amount",
            "30",
            "--currency",
            "EUR",
        ],
    ] {
        let (ok, out, err) = cli(args);
        assert!(ok && out == "ok", "{args:?}: {out} / {err}");
    }
    let balance = |id: u128, extra: &[&str]| -> i64 {
        let id = id.to_string();
        let (ok, out, err) = cli(&[extra, &["--json", "balance", &id]].concat());
        assert!(ok, "balance {id}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        v["balance"].as_i64().expect("a balance")
    };
    assert_eq!(balance(2, &[]), 70);
    // The certificate carries both names.
    assert_eq!(balance(3, &["--tls-server-name", "localhost"]), 30);

    // The library over TLS: single transfers from threads through a batcher (pipelined on one
    // connection), and one batch of 8190 (a 590 KB request, many TLS records each way).
    let client = std::sync::Arc::new(
        Client::connect(config(&addr, Some(tls(&pki.ca)), Some(TOKEN))).expect("a TLS client"),
    );
    let batcher = client.batcher();
    let threads: Vec<_> = (0..4u128)
        .map(|t| {
            let batcher = batcher.clone();
            std::thread::spawn(move || {
                (0..250u128)
                    .filter(|i| {
                        let transfer = NewTransfer {
                            id: 1_000 + t * 1_000 + i,
                            from: 1,
                            to: 3,
                            amount: 1,
                            currency: eur(),
                            user_data: 0,
                        };
                        batcher.transfer(transfer).expect("a transfer") == ResultCode::Ok
                    })
                    .count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().expect("join")).sum();
    assert_eq!(ok, 1_000);
    let batch: Vec<NewTransfer> = (0..8190u128)
        .map(|i| NewTransfer {
            id: 100_000 + i,
            from: 1,
            to: 2,
            amount: 1,
            currency: eur(),
            user_data: 0,
        })
        .collect();
    let results = client.create_transfers(&batch).expect("a batch of 8190");
    assert!(results.iter().all(|r| *r == ResultCode::Ok));
    let accounts = client.lookup_accounts(&[2, 3]).expect("lookups");
    let balances: Vec<i64> = accounts.iter().flatten().map(|a| a.balance).collect();
    assert_eq!(balances, vec![70 + 8190, 30 + 1_000]);

    // A subscription over TLS sees account 3's first change (the transfer of 30).
    let mut subscription = Subscription::open(
        &config(&addr, Some(tls(&pki.ca)), Some(TOKEN)),
        Some(3),
        &[0],
    )
    .expect("a subscription over TLS");
    let (_, change) = subscription
        .next(Some(Duration::from_secs(5)))
        .expect("a change")
        .expect("a change within 5 s");
    assert_eq!((change.transfer_id, change.amount), (11, 30));

    // The token is still enforced inside TLS.
    for token in [None, Some("tls-test-token-0123456789abcdeF")] {
        let refused = Client::connect(config(&addr, Some(tls(&pki.ca)), token));
        assert!(
            matches!(
                refused,
                Err(ClientError::Refused {
                    error: ProtocolError::AuthFailed,
                    ..
                })
            ),
            "token {token:?}: {:?}",
            refused.err()
        );
    }
    let (ok, _, err) = wallet(&addr, &["--tls-ca", s(&pki.ca), "balance", "2"]);
    assert!(!ok && err.contains("auth_failed"), "{err}");

    // A plain client is told the server speaks TLS; it is not retried.
    let plain = Client::connect(ClientConfig {
        retries: 3,
        ..config(&addr, None, Some(TOKEN))
    });
    match plain {
        Err(ClientError::Tls { reason, .. }) => assert!(reason.contains("speaks TLS"), "{reason}"),
        other => panic!("a plain client got {:?}", other.err()),
    }
    let (ok, _, err) = wallet(&addr, &["--token-file", s(&pki.token), "balance", "2"]);
    assert!(!ok && err.contains("speaks TLS"), "{err}");
    // On the wire: no plaintext frame comes back, only TLS bytes, then the close.
    let mut raw = raw_connect(&addr);
    raw.write_all(b"WALT\x01\x01\x00\x00 plain bytes, not a TLS record")
        .expect("send");
    closed_after(&mut raw, Instant::now(), "a plain client");

    // A client that trusts another CA, or expects another name, refuses the server.
    let untrusted = Client::connect(config(&addr, Some(tls(&pki.other_ca)), Some(TOKEN)));
    match untrusted {
        Err(ClientError::Tls { reason, .. }) => {
            assert!(reason.contains("UnknownIssuer"), "{reason}")
        }
        other => panic!("a client trusting another CA got {:?}", other.err()),
    }
    let (ok, _, err) = wallet(
        &addr,
        &[
            "--tls-ca",
            s(&pki.other_ca),
            "--token-file",
            s(&pki.token),
            "balance",
            "2",
        ],
    );
    assert!(!ok && err.contains("invalid peer certificate"), "{err}");
    let (ok, _, err) = cli(&["--tls-server-name", "wallet.example", "balance", "2"]);
    assert!(!ok && err.contains("not valid for name"), "{err}");
    // A server certificate file given as the CA: not a CA, refused as well.
    let (ok, _, err) = wallet(
        &addr,
        &[
            "--tls-ca",
            s(&pki.cert),
            "--token-file",
            s(&pki.token),
            "balance",
            "2",
        ],
    );
    assert!(
        !ok,
        "the server's own certificate is not a trust anchor here: {err}"
    );

    // The server kept serving through all of that.
    assert_eq!(balance(2, &[]), 70 + 8190);
    client.ping().expect("the first TLS client still works");
}

#[test]
fn the_tls_and_protocol_handshakes_are_bounded_in_time() {
    let pki = pki();
    let data = tempfile::tempdir().expect("a temp dir");
    let server = tls_server(&pki, data.path(), &["--handshake-timeout-ms", "300"]);
    let addr = server.addr.clone();

    // TCP only, nothing sent: the TLS handshake never starts.
    let idle = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let started = Instant::now();
            let mut stream = raw_connect(&addr);
            closed_after(&mut stream, started, "an idle TCP connection")
        }
    });
    // TLS done, but no protocol handshake.
    let tls_only = std::thread::spawn({
        let addr = addr.clone();
        let tls = tls(&pki.ca);
        move || {
            let started = Instant::now();
            let mut socket = raw_connect(&addr);
            let mut conn = rustls::ClientConnection::new(tls.config, tls.server_name)
                .expect("a TLS connection");
            while conn.is_handshaking() {
                conn.complete_io(&mut socket).expect("the TLS handshake");
            }
            let mut stream = rustls::StreamOwned::new(conn, socket);
            closed_after(&mut stream, started, "a TLS connection without a handshake")
        }
    });
    // A client that completed its handshake is not cut by the timeout, however quiet.
    let client = Client::connect(config(&addr, Some(tls(&pki.ca)), Some(TOKEN))).expect("a client");
    std::thread::sleep(Duration::from_millis(700));
    client
        .ping()
        .expect("a quiet, handshaken connection stays open");

    for (what, closer) in [("idle TCP", idle), ("TLS only", tls_only)] {
        let after = closer.join().expect("join");
        assert!(
            after >= Duration::from_millis(250) && after < Duration::from_secs(5),
            "{what}: closed after {after:?}, expected about 300 ms"
        );
    }
    client.ping().expect("still serving");
}

#[test]
fn idle_unauthenticated_connections_stop_holding_connection_slots() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config_file = dir.path().join("walletd.toml");
    std::fs::write(
        &config_file,
        "connections_per_core_max = 2\nhandshake_timeout_ms = 1000\n",
    )
    .expect("write the config");
    let server = ServerProcess::start(
        Path::new(WALLETD),
        &dir.path().join("data"),
        &["--config", s(&config_file)],
    );
    let addr = server.addr.clone();
    // Let the server see the readiness probe's connection go.
    std::thread::sleep(Duration::from_millis(200));

    // Two connections that never say anything take both slots (the first one surely gets a
    // slot; the probe's, if somehow still counted, could cost the second its own).
    let started = Instant::now();
    let mut first = raw_connect(&addr);
    let mut second = raw_connect(&addr);
    let refused = Client::connect(config(&addr, None, None));
    assert!(
        matches!(refused, Err(ClientError::Connect { .. })),
        "a third connection got a slot {:?} after the idle ones connected: {:?}",
        started.elapsed(),
        refused.as_ref().err()
    );

    // The handshake timeout frees them...
    let after = closed_after(&mut first, started, "an idle connection");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "closed after {after:?}, expected about 1 s"
    );
    closed_after(&mut second, started, "an idle connection");
    // ...and a real client gets in.
    let client = Client::connect(config(&addr, None, None)).expect("a slot after the timeout");
    client.ping().expect("a ping");
}

#[test]
fn bad_tls_files_stop_walletd_with_a_one_line_error_naming_the_file() {
    let pki = pki();
    let data = tempfile::tempdir().expect("a temp dir");
    let missing = data.path().join("missing.pem");
    let run = |args: &[&str]| -> String {
        let out = std::process::Command::new(WALLETD)
            .args(["--listen", "127.0.0.1:1", "--data-dir"])
            .arg(data.path().join("data"))
            .args(args)
            .env("WALLETD_LOG", "warn")
            .output()
            .expect("run walletd");
        assert!(!out.status.success(), "walletd started with {args:?}");
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        err
    };
    let err = run(&["--tls-cert", s(&missing), "--tls-key", s(&pki.key)]);
    assert!(err.contains(s(&missing)), "{err}");
    let err = run(&["--tls-cert", s(&pki.cert), "--tls-key", s(&missing)]);
    assert!(err.contains(s(&missing)), "{err}");
    // A key file that holds a certificate, a certificate file that holds a key.
    let err = run(&["--tls-cert", s(&pki.cert), "--tls-key", s(&pki.cert)]);
    assert!(err.contains("no private key"), "{err}");
    let err = run(&["--tls-cert", s(&pki.key), "--tls-key", s(&pki.key)]);
    assert!(err.contains("no certificate"), "{err}");
    // A key that does not match the certificate.
    let err = run(&["--tls-cert", s(&pki.cert), "--tls-key", s(&pki.other_key)]);
    assert!(
        err.contains(s(&pki.other_key)) && err.contains("does not belong"),
        "{err}"
    );
    // Both or neither.
    let err = run(&["--tls-cert", s(&pki.cert)]);
    assert!(err.contains("go together"), "{err}");
    assert!(
        !data.path().join("data").exists(),
        "the data dir was touched before the TLS files were checked"
    );
}
