//! Hostile input against a running `walletd` process: truncated, oversized, corrupt and random
//! frames, protocol violations, and a client that floods requests without ever reading its
//! replies. Every misbehaving connection must get an error frame and/or a close (never a hang),
//! and afterwards a fresh client must still get answers.
//!
//! The garbage test prints its seed; set HOSTILE_SEED=<seed> to replay it.

use bytes::BytesMut;
use engine::model::Currency;
use engine::{NewAccount, NewTransfer, ResultCode, BATCH_ITEMS_MAX};
use net::codec::{self, role, Handshake};
use net::frame::{
    encode_frame, flags, FrameError, FrameHeader, BODY_BYTES_MAX, HEADER_BYTES, MAGIC,
};
use net::operation::{Operation, ProtocolError};
use net::{Client, ClientConfig};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a raw connection waits for the server to answer or close before calling it a hang.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The flooding tests measure latency and memory of a server whose shard is pinned to core 0
/// (its network thread floats), as every server of this file is: they run one at a time so
/// they do not disturb each other.
fn heavy_test() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A `test-walletd` child on a free loopback port with its own data dir; killed on drop.
struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = walletd_tests::server_process::free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_test-walletd"))
            .args(["--listen", &addr, "--data-dir"])
            .arg(dir.path())
            .args(["--cores", "0", "--partitions", "1"])
            .env("WALLETD_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start test-walletd");
        let mut server = Server {
            child,
            addr,
            _dir: dir,
        };
        // Ready means a real handshake and ping succeed. A bare TCP connect is not proof: a
        // connect to a free port in the ephemeral range can connect to itself, or reach another
        // test's server that happened to get the same port.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Client::connect(client_config(&server.addr))
            .and_then(|c| c.ping())
            .is_err()
        {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("walletd exited during start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "walletd did not answer on {} within 10 s",
                server.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn client(&self) -> Client {
        Client::connect(client_config(&self.addr))
            .unwrap_or_else(|e| panic!("a normal client cannot connect: {e}"))
    }

    /// The process is still running and a fresh, well-behaved client gets a ping answered.
    fn assert_alive(&mut self, after: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("walletd exited after {after}: {status}");
        }
        let client = Client::connect(client_config(&self.addr))
            .unwrap_or_else(|e| panic!("after {after}: a fresh client cannot connect: {e}"));
        client
            .ping()
            .unwrap_or_else(|e| panic!("after {after}: a fresh client's ping failed: {e}"));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// No retries: a refused or lost request must show up as a failure, not be papered over.
fn client_config(addr: &str) -> ClientConfig {
    ClientConfig {
        timeout_ms: 5_000,
        retries: 0,
        ..ClientConfig::new(addr)
    }
}

fn eur() -> Currency {
    Currency::parse("EUR").expect("a valid currency code")
}

// ---- raw frames ------------------------------------------------------------------------------

/// A well-formed frame (header + body) as bytes.
fn frame(operation: u8, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(&mut out, operation, 0, request_id, body);
    out.to_vec()
}

fn handshake_frame(request_id: u64) -> Vec<u8> {
    let mut body = BytesMut::new();
    codec::encode_handshake(
        &mut body,
        &Handshake {
            role: role::CLIENT,
            cluster_id: 0,
            token: Vec::new(),
        },
    );
    frame(Operation::Handshake as u8, request_id, &body)
}

/// Recomputes the header checksum (bytes 28..32) after the header was edited.
fn reseal(frame: &mut [u8]) {
    let checksum = crc32c::crc32c(&frame[..28]);
    frame[28..32].copy_from_slice(&checksum.to_le_bytes());
}

fn connect_raw(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to walletd");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
    stream
}

/// A raw connection that completed the handshake (request id 1).
fn handshaken(addr: &str) -> TcpStream {
    let mut stream = connect_raw(addr);
    stream
        .write_all(&handshake_frame(1))
        .expect("send the handshake");
    match read_frame(&mut stream) {
        Ok(Some((header, _))) => {
            assert_eq!(header.flags, flags::REPLY, "the handshake was refused");
            assert_eq!(
                (header.operation, header.request_id),
                (Operation::Handshake as u8, 1)
            );
        }
        Ok(None) => panic!("the server closed instead of answering the handshake"),
        Err(e) => panic!("no handshake reply: {e}"),
    }
    stream
}

/// Reads one whole frame and checks both of its checksums. `Ok(None)` is a clean close at a
/// frame boundary; a read timeout is an error (of kind WouldBlock or TimedOut).
fn read_frame(stream: &mut TcpStream) -> std::io::Result<Option<(FrameHeader, Vec<u8>)>> {
    let mut header = [0u8; HEADER_BYTES];
    let mut filled = 0;
    while filled < HEADER_BYTES {
        match stream.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "closed in the middle of a header",
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let header = FrameHeader::decode(&header).map_err(|e| {
        std::io::Error::new(
            ErrorKind::InvalidData,
            format!("the server sent a bad header: {e}"),
        )
    })?;
    let mut body = vec![0u8; header.body_len as usize];
    stream.read_exact(&mut body)?;
    header.check_body(&body).map_err(|e| {
        std::io::Error::new(
            ErrorKind::InvalidData,
            format!("the server sent a bad body: {e}"),
        )
    })?;
    Ok(Some((header, body)))
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// The next frame must be an error frame for (`operation`, `request_id`) carrying `expected`.
fn expect_error_frame(
    stream: &mut TcpStream,
    expected: ProtocolError,
    operation: u8,
    request_id: u64,
) {
    let (header, body) = match read_frame(stream) {
        Ok(Some(frame)) => frame,
        Ok(None) => panic!("the server closed without an error frame (expected {expected:?})"),
        Err(e) if is_timeout(&e) => {
            panic!("no answer within {IO_TIMEOUT:?} (expected {expected:?})")
        }
        Err(e) => panic!("reading the error frame (expected {expected:?}): {e}"),
    };
    assert_eq!(
        header.flags,
        flags::REPLY | flags::ERROR,
        "expected an error frame with {expected:?}"
    );
    let (code, message) = codec::decode_error(&body);
    assert_eq!(code, Some(expected), "error frame message: {message:?}");
    assert_eq!(
        (header.operation, header.request_id),
        (operation, request_id),
        "error frame {expected:?} ({message}) answers another request"
    );
}

/// The server must close the connection now: EOF with nothing more to read.
fn expect_eof(stream: &mut TcpStream, what: &str) {
    match read_frame(stream) {
        Ok(None) => {}
        Ok(Some((header, body))) => panic!(
            "{what}: expected the server to close, got another frame {header:?} {:?}",
            codec::decode_error(&body)
        ),
        Err(e) if is_timeout(&e) => {
            panic!("{what}: the server did not close the connection within {IO_TIMEOUT:?}")
        }
        Err(e) => panic!("{what}: expected a clean close, got {e}"),
    }
}

/// Error frame, then close: how the server must treat a byte stream it can no longer trust.
fn expect_error_then_close(
    stream: &mut TcpStream,
    expected: ProtocolError,
    operation: u8,
    request_id: u64,
) {
    assert!(
        expected.closes_connection(),
        "{expected:?} is not a closing error"
    );
    expect_error_frame(stream, expected, operation, request_id);
    expect_eof(stream, &format!("after the {expected:?} error frame"));
}

/// VmRSS, RssAnon and RssFile of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64, u64) {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"), field("RssFile:"))
}

/// VmRSS once it has stopped growing: the server faults its reserved tables in on a background
/// thread after start (engine::prefault), so memory is only a baseline once that is done.
fn settled_rss_kib(pid: u32) -> u64 {
    let mut last = rss_kib(pid).0;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(200));
        let now = rss_kib(pid).0;
        if now <= last + 1024 {
            return now;
        }
        last = now;
    }
    panic!("server RSS still growing after 20 s: {last} KiB");
}

// ---- tests -----------------------------------------------------------------------------------

#[test]
fn truncated_frames_are_dropped_without_harm() {
    let mut server = Server::start();

    // 10 bytes of a valid handshake header, then a full close.
    let mut stream = connect_raw(&server.addr);
    stream
        .write_all(&handshake_frame(1)[..10])
        .expect("send 10 bytes");
    drop(stream);
    server.assert_alive("a 10-byte header then close");

    // The same, but half-closed: the server must close too, without an error frame (there is
    // no frame to answer).
    let mut stream = connect_raw(&server.addr);
    stream
        .write_all(&handshake_frame(1)[..10])
        .expect("send 10 bytes");
    stream.shutdown(Shutdown::Write).expect("half-close");
    expect_eof(&mut stream, "a 10-byte header then half-close");
    server.assert_alive("a 10-byte header then half-close");

    // A whole header announcing a body, and only part of that body.
    let mut stream = handshaken(&server.addr);
    let mut body = BytesMut::new();
    codec::encode_ids(&mut body, &[1, 2, 3, 4]);
    let whole = frame(Operation::LookupAccounts as u8, 2, &body);
    stream
        .write_all(&whole[..HEADER_BYTES + 20])
        .expect("send a header and part of its body");
    stream.shutdown(Shutdown::Write).expect("half-close");
    expect_eof(&mut stream, "a frame cut in its body");
    server.assert_alive("a frame cut in its body");
}

#[test]
fn a_body_length_of_4_gib_is_refused_before_anything_is_allocated() {
    let mut server = Server::start();

    for (len, handshake_first) in [
        (u32::MAX, false),
        (u32::MAX, true),
        (BODY_BYTES_MAX as u32 + 1, true),
    ] {
        let mut stream = if handshake_first {
            handshaken(&server.addr)
        } else {
            connect_raw(&server.addr)
        };
        let mut header = frame(Operation::Ping as u8, 9, &[]);
        header[16..20].copy_from_slice(&len.to_le_bytes());
        reseal(&mut header);
        assert_eq!(
            FrameHeader::decode(header[..HEADER_BYTES].try_into().expect("32 bytes")),
            Err(FrameError::TooLarge(len)),
            "the header is valid apart from its length"
        );
        stream.write_all(&header).expect("send the header");
        // Framing errors are answered with request id 0 and operation 0: the header is untrusted.
        expect_error_then_close(&mut stream, ProtocolError::FrameTooLarge, 0, 0);
        server.assert_alive(&format!(
            "a body length of {len} (handshake first: {handshake_first})"
        ));
    }
}

#[test]
fn wrong_magic_and_wrong_version_are_refused_and_closed() {
    let mut server = Server::start();

    let mut bad_magic = frame(Operation::Ping as u8, 3, &[]);
    bad_magic[0..4].copy_from_slice(b"WALX");
    reseal(&mut bad_magic);
    assert_ne!(
        u32::from_le_bytes(bad_magic[0..4].try_into().expect("4 bytes")),
        MAGIC
    );
    let mut stream = connect_raw(&server.addr);
    stream.write_all(&bad_magic).expect("send");
    expect_error_then_close(&mut stream, ProtocolError::BadMagic, 0, 0);
    server.assert_alive("a bad magic");

    // The same after a good handshake.
    let mut stream = handshaken(&server.addr);
    stream.write_all(&bad_magic).expect("send");
    expect_error_then_close(&mut stream, ProtocolError::BadMagic, 0, 0);
    server.assert_alive("a bad magic after the handshake");

    for version in [0u8, 2, 255] {
        let mut bad_version = handshake_frame(4);
        bad_version[4] = version;
        reseal(&mut bad_version);
        let mut stream = connect_raw(&server.addr);
        // Only the header: the server stops reading at a bad header, and unread bytes would turn
        // its close into a reset.
        stream
            .write_all(&bad_version[..HEADER_BYTES])
            .expect("send");
        expect_error_then_close(&mut stream, ProtocolError::BadVersion, 0, 0);
        server.assert_alive(&format!("protocol version {version}"));
    }
}

#[test]
fn bad_header_and_body_checksums_are_refused_and_closed() {
    let mut server = Server::start();

    // A header whose checksum no longer matches (request id changed after sealing).
    let mut bad_header = frame(Operation::Ping as u8, 5, &[]);
    bad_header[8] ^= 0x01;
    let mut stream = connect_raw(&server.addr);
    stream.write_all(&bad_header).expect("send");
    expect_error_then_close(&mut stream, ProtocolError::HeaderChecksum, 0, 0);
    server.assert_alive("a bad header checksum");

    let mut stream = handshaken(&server.addr);
    stream.write_all(&bad_header).expect("send");
    expect_error_then_close(&mut stream, ProtocolError::HeaderChecksum, 0, 0);
    server.assert_alive("a bad header checksum after the handshake");

    // A valid header over a body that was damaged in transit (one bit flipped).
    let mut body = BytesMut::new();
    codec::encode_new_accounts(
        &mut body,
        &[NewAccount {
            id: 42,
            currency: eur(),
            flags: 0,
            floor: 0,
            user_data: 0,
        }],
    );
    let mut damaged = frame(Operation::CreateAccounts as u8, 6, &body);
    damaged[HEADER_BYTES + 8] ^= 0x40;
    let mut stream = handshaken(&server.addr);
    stream.write_all(&damaged).expect("send");
    // The header was valid, so the error names the request.
    expect_error_then_close(
        &mut stream,
        ProtocolError::BodyChecksum,
        Operation::CreateAccounts as u8,
        6,
    );
    server.assert_alive("a bad body checksum");

    // The damaged account must not have been created.
    let found = server.client().lookup_accounts(&[42]).expect("lookup");
    assert_eq!(
        found,
        vec![None],
        "a frame with a bad body checksum was applied"
    );
}

#[test]
fn an_unknown_operation_is_refused_but_the_connection_stays_usable() {
    let mut server = Server::start();
    let mut stream = handshaken(&server.addr);

    stream.write_all(&frame(200, 77, &[])).expect("send");
    expect_error_frame(&mut stream, ProtocolError::UnknownOperation, 200, 77);

    stream
        .write_all(&frame(Operation::Ping as u8, 78, &[]))
        .expect("send a ping");
    match read_frame(&mut stream) {
        Ok(Some((header, body))) => {
            assert_eq!(
                header.flags,
                flags::REPLY,
                "ping refused: {:?}",
                codec::decode_error(&body)
            );
            assert_eq!(
                (header.operation, header.request_id),
                (Operation::Ping as u8, 78)
            );
        }
        other => panic!("no ping reply on the same connection: {other:?}"),
    }

    // Other non-framing refusals leave the connection open as well: a body that does not match
    // its operation, a batch that is too big, and a second handshake.
    stream
        .write_all(&frame(Operation::CreateTransfers as u8, 79, &[1, 2, 3]))
        .expect("send");
    expect_error_frame(
        &mut stream,
        ProtocolError::MalformedBody,
        Operation::CreateTransfers as u8,
        79,
    );
    let mut too_many = vec![0u8; 8];
    too_many[0..4].copy_from_slice(&(BATCH_ITEMS_MAX as u32 + 1).to_le_bytes());
    stream
        .write_all(&frame(Operation::LookupAccounts as u8, 80, &too_many))
        .expect("send");
    expect_error_frame(
        &mut stream,
        ProtocolError::TooManyItems,
        Operation::LookupAccounts as u8,
        80,
    );
    stream.write_all(&handshake_frame(81)).expect("send");
    expect_error_frame(
        &mut stream,
        ProtocolError::MalformedBody,
        Operation::Handshake as u8,
        81,
    );

    // Pipelined: an unknown operation between two pings; every reply matches its request id.
    let mut burst = frame(Operation::Ping as u8, 90, &[]);
    burst.extend(frame(201, 91, &[]));
    burst.extend(frame(Operation::Ping as u8, 92, &[]));
    stream.write_all(&burst).expect("send");
    let mut seen = Vec::new();
    for _ in 0..3 {
        match read_frame(&mut stream) {
            Ok(Some((header, body))) => {
                let error =
                    (header.flags & flags::ERROR != 0).then(|| codec::decode_error(&body).0);
                seen.push((header.request_id, header.operation, error));
            }
            other => panic!("missing a pipelined reply: {other:?}"),
        }
    }
    seen.sort_by_key(|s| s.0);
    assert_eq!(
        seen,
        vec![
            (90, Operation::Ping as u8, None),
            (91, 201, Some(Some(ProtocolError::UnknownOperation))),
            (92, Operation::Ping as u8, None),
        ]
    );
    drop(stream);
    server.assert_alive("unknown operations");
}

/// A subscription's start count must be 1, or (for all changes) 1 per partition: any other
/// count is refused, where the server once quietly used the first start for every partition.
#[test]
fn a_subscription_with_the_wrong_number_of_starts_is_refused() {
    let mut server = Server::start();
    let subscribe = |account: Option<u128>, from: Vec<u64>| {
        let mut body = BytesMut::new();
        codec::encode_subscribe(&mut body, &codec::Subscribe { account, from });
        frame(Operation::Subscribe as u8, 7, &body)
    };
    // The server has one partition: two starts fit neither an account nor all changes.
    for (account, from) in [(Some(1), vec![0, 0]), (None, vec![0, 0])] {
        let mut stream = handshaken(&server.addr);
        stream.write_all(&subscribe(account, from)).expect("send");
        expect_error_frame(
            &mut stream,
            ProtocolError::MalformedBody,
            Operation::Subscribe as u8,
            7,
        );
    }
    // The control: one start for all changes is accepted.
    let mut stream = handshaken(&server.addr);
    stream.write_all(&subscribe(None, vec![0])).expect("send");
    match read_frame(&mut stream) {
        Ok(Some((header, body))) => assert_eq!(
            header.flags,
            flags::REPLY,
            "a valid subscription was refused: {:?}",
            codec::decode_error(&body)
        ),
        other => panic!("no reply to a valid subscription: {other:?}"),
    }
    drop(stream);
    server.assert_alive("subscriptions with the wrong number of starts");
}

/// Before the token is checked a connection may announce no more than a handshake's bytes:
/// a header announcing 1 MiB is answered at once, its body never awaited (nor its bytes
/// reserved from the core's read budget).
#[test]
fn a_first_frame_larger_than_a_handshake_is_refused_before_its_body() {
    let mut server = Server::start();
    for (operation, expected) in [
        (Operation::Handshake, ProtocolError::FrameTooLarge),
        (Operation::CreateTransfers, ProtocolError::HandshakeRequired),
    ] {
        let mut header = frame(operation as u8, 5, &[]);
        header[16..20].copy_from_slice(&(1u32 << 20).to_le_bytes());
        reseal(&mut header);
        let mut stream = connect_raw(&server.addr);
        stream.write_all(&header).expect("send the header alone");
        expect_error_then_close(&mut stream, expected, operation as u8, 5);
    }
    server.assert_alive("first frames announcing 1 MiB");
}

#[test]
fn the_first_frame_must_be_a_handshake() {
    let mut server = Server::start();

    let mut stream = connect_raw(&server.addr);
    stream
        .write_all(&frame(Operation::Ping as u8, 12, &[]))
        .expect("send");
    expect_error_then_close(
        &mut stream,
        ProtocolError::HandshakeRequired,
        Operation::Ping as u8,
        12,
    );
    server.assert_alive("a ping before the handshake");

    let mut body = BytesMut::new();
    codec::encode_new_accounts(
        &mut body,
        &[NewAccount {
            id: 7,
            currency: eur(),
            flags: 0,
            floor: 0,
            user_data: 0,
        }],
    );
    let mut stream = connect_raw(&server.addr);
    stream
        .write_all(&frame(Operation::CreateAccounts as u8, 13, &body))
        .expect("send");
    expect_error_then_close(
        &mut stream,
        ProtocolError::HandshakeRequired,
        Operation::CreateAccounts as u8,
        13,
    );
    server.assert_alive("create_accounts before the handshake");
    let found = server.client().lookup_accounts(&[7]).expect("lookup");
    assert_eq!(
        found,
        vec![None],
        "a request sent before the handshake was applied"
    );
}

/// How the garbage connections ended.
#[derive(Debug, Default)]
struct GarbageOutcomes {
    error_frames: usize,
    silent_closes: usize,
    resets: usize,
}

#[test]
fn random_garbage_gets_an_error_or_a_close_never_a_hang() {
    let seed = walletd_tests::seed_from_env("HOSTILE_SEED");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut server = Server::start();
    let mut outcomes = GarbageOutcomes::default();

    for round in 0..50 {
        let len = rng.usize(..=64 * 1024);
        let mut garbage: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
        let mode = rng.u8(..3);
        match mode {
            // Plain garbage from the first byte.
            0 => {}
            // A valid handshake, then garbage.
            1 => garbage = [handshake_frame(1), garbage].concat(),
            // A header that passes every check (random operation, flags, id, and a body length
            // that may or may not fit), then garbage.
            _ => {
                if garbage.len() < HEADER_BYTES {
                    garbage.resize(HEADER_BYTES, 0);
                }
                garbage[0..4].copy_from_slice(&MAGIC.to_le_bytes());
                garbage[4] = 1;
                let body_len = if rng.bool() {
                    rng.u32(..=BODY_BYTES_MAX as u32)
                } else {
                    rng.u32(..)
                };
                garbage[16..20].copy_from_slice(&body_len.to_le_bytes());
                reseal(&mut garbage);
            }
        }
        let what = format!(
            "garbage round {round} (seed {seed}, mode {mode}, {} bytes)",
            garbage.len()
        );

        let mut stream = connect_raw(&server.addr);
        // The server may close before it has read everything: a failed write is fine.
        let _ = stream.write_all(&garbage);
        let _ = stream.shutdown(Shutdown::Write);
        let mut got_error_frame = false;
        let started = Instant::now();
        loop {
            match read_frame(&mut stream) {
                Ok(Some((header, body))) => {
                    assert_ne!(
                        header.flags & flags::REPLY,
                        0,
                        "{what}: a frame without the reply flag"
                    );
                    if header.flags & flags::ERROR != 0 {
                        let (code, message) = codec::decode_error(&body);
                        assert!(
                            code.is_some(),
                            "{what}: an error frame without a known code: {message:?}"
                        );
                        got_error_frame = true;
                    }
                }
                Ok(None) => {
                    if got_error_frame {
                        outcomes.error_frames += 1;
                    } else {
                        outcomes.silent_closes += 1;
                    }
                    break;
                }
                Err(e) if is_timeout(&e) => {
                    panic!("{what}: neither an error frame nor a close within {IO_TIMEOUT:?}")
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    // The server closed with our garbage still unread: the kernel resets.
                    if got_error_frame {
                        outcomes.error_frames += 1;
                    } else {
                        outcomes.resets += 1;
                    }
                    break;
                }
                Err(e) => panic!("{what}: unexpected {e} after {:?}", started.elapsed()),
            }
        }
        server.assert_alive(&what);
    }
    println!("garbage outcomes: {outcomes:?}");

    // A normal client still gets real work done.
    let client = server.client();
    let created = client
        .create_accounts(&[NewAccount {
            id: 1,
            currency: eur(),
            flags: 0,
            floor: 0,
            user_data: 0,
        }])
        .expect("create an account after the garbage");
    assert_eq!(created, vec![ResultCode::Ok]);
    assert!(client.lookup_accounts(&[1]).expect("lookup")[0].is_some());
}

/// Bound on the growth of the server's resident memory (over its settled idle size, which
/// includes the pre-sized tables) while one client floods it and never reads.
///
/// With one network core the server holds at most 32 requests of this connection (the
/// per-connection limit; the 256 MiB per-core byte limit is far off at 32 x 576 KiB = 18 MiB),
/// each a 576 KiB body plus two decoded copies (~0.65 MiB each): about 60 MiB. Add 64 queued
/// replies of 8 KiB, the log writer's pending buffer (at most 32 MiB), glommio I/O memory
/// (3 MiB): about 100 MiB (88-91 MiB measured). 256 MiB leaves room for allocator slack, and
/// the flood goes on until it pushed more than that (`FLOOD_BYTES_MIN`), so a server that
/// buffered what it was sent could not stay under the bound. (This server reads about 320 MiB
/// of it, applying the batches, before its unread replies stop it reading.)
const FLOOD_RSS_MAX_KIB: u64 = 256 * 1024;
/// The flood lasts until this much was sent, the server stopped reading, or `FLOOD_TIME_MAX`;
/// less, with the server still reading, fails the test as too small to tell.
const FLOOD_BYTES_MIN: u64 = (FLOOD_RSS_MAX_KIB + 16 * 1024) * 1024;
const FLOOD_TIME_MAX: Duration = Duration::from_secs(15);
const FLOOD_TIME_MIN: Duration = Duration::from_secs(3);
/// Each ping or lookup of the well-behaved client while the flood goes on. Starvation would
/// last as long as the flood; 5 s leaves room for a machine shared with other test binaries
/// (3.08 s was seen once with a second full test run beside it).
const PROBE_LATENCY_MAX: Duration = Duration::from_secs(5);

#[test]
fn a_client_that_floods_and_never_reads_starves_no_one() {
    let _heavy = heavy_test();
    let mut server = Server::start();
    let pid = server.pid();
    let client = server.client();
    let created = client
        .create_accounts(&[
            NewAccount {
                id: 1,
                currency: eur(),
                flags: 0,
                floor: -1_000_000,
                user_data: 0,
            },
            NewAccount {
                id: 2,
                currency: eur(),
                flags: 0,
                floor: 0,
                user_data: 0,
            },
        ])
        .expect("create accounts");
    assert_eq!(created, vec![ResultCode::Ok, ResultCode::Ok]);
    let rss_before = settled_rss_kib(pid);

    // The flooding client: a full batch of transfers between accounts that do not exist, sent
    // again and again under new request ids, replies never read.
    let mut slow = non_reading_client(&server.addr);
    let transfers: Vec<NewTransfer> = (0..BATCH_ITEMS_MAX as u128)
        .map(|i| NewTransfer {
            id: (1 << 100) + i,
            from: (1 << 80) + i,
            to: (1 << 81) + i,
            amount: 1,
            currency: eur(),
            user_data: 0,
        })
        .collect();
    let mut body = BytesMut::new();
    codec::encode_new_transfers(&mut body, &transfers);
    let mut template = frame(Operation::CreateTransfers as u8, 0, &body);
    let flood = std::thread::spawn(move || {
        // At least `FLOOD_TIME_MIN`, long enough for the server to stop reading (the unread
        // replies), and at least `FLOOD_BYTES_MIN` unless the server stopped reading first
        // (a second without progress: where it stops depends on the socket buffers).
        let started = Instant::now();
        let (mut frames, mut bytes, mut stalls) = (0u64, 0u64, 0u64);
        let mut progress_at = Instant::now();
        let mut at = template.len();
        let stopped_reading =
            |progress_at: Instant| progress_at.elapsed() >= Duration::from_secs(1);
        while started.elapsed() < FLOOD_TIME_MAX
            && (started.elapsed() < FLOOD_TIME_MIN
                || (bytes < FLOOD_BYTES_MIN && !stopped_reading(progress_at)))
        {
            if at == template.len() {
                frames += 1;
                template[8..16].copy_from_slice(&(frames + 1).to_le_bytes());
                reseal(&mut template);
                at = 0;
            }
            match slow.write(&template[at..]) {
                Ok(n) => {
                    at += n;
                    bytes += n as u64;
                    progress_at = Instant::now();
                }
                Err(e) if is_timeout(&e) => stalls += 1,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    panic!("the server dropped the flooding connection after {bytes} bytes: {e}")
                }
            }
        }
        let whole_frames = if at == template.len() {
            frames
        } else {
            frames - 1
        };
        (
            slow,
            whole_frames,
            bytes,
            stalls,
            stopped_reading(progress_at),
        )
    });

    // Meanwhile (and for a while after the flood stops, with the flooder's connection still
    // open and unread) a normal client pings and looks up.
    let started = Instant::now();
    let (mut probes, mut worst) = (0u32, Duration::ZERO);
    let mut rss_peak = (0u64, 0u64, 0u64);
    let mut flood_ended: Option<Instant> = None;
    while flood_ended.is_none_or(|ended| ended.elapsed() < Duration::from_secs(2)) {
        if flood.is_finished() {
            flood_ended.get_or_insert_with(Instant::now);
        }
        let t = Instant::now();
        client
            .ping()
            .unwrap_or_else(|e| panic!("ping during the flood ({:?} in): {e}", started.elapsed()));
        let ping = t.elapsed();
        let t = Instant::now();
        let found = client.lookup_accounts(&[1, 2]).unwrap_or_else(|e| {
            panic!("lookup during the flood ({:?} in): {e}", started.elapsed())
        });
        let lookup = t.elapsed();
        assert!(
            found.iter().all(Option::is_some),
            "accounts vanished: {found:?}"
        );
        assert!(
            ping < PROBE_LATENCY_MAX && lookup < PROBE_LATENCY_MAX,
            "a normal client was starved {:?} into the flood: ping {ping:?}, lookup {lookup:?}",
            started.elapsed()
        );
        worst = worst.max(ping).max(lookup);
        probes += 1;
        let rss = rss_kib(pid);
        if rss.0 > rss_peak.0 {
            rss_peak = rss;
        }
        assert!(
            rss.0.saturating_sub(rss_before) < FLOOD_RSS_MAX_KIB,
            "server RSS {} MiB (anon {} MiB, file {} MiB) grew more than {} MiB over its idle {} MiB during the flood",
            rss.0 / 1024,
            rss.1 / 1024,
            rss.2 / 1024,
            FLOOD_RSS_MAX_KIB / 1024,
            rss_before / 1024
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (slow, frames, bytes, stalls, stopped_reading) = flood.join().expect("the flooding thread");
    let logged = client
        .status()
        .expect("status")
        .partitions
        .iter()
        .map(|p| p.last_index)
        .sum::<u64>();
    println!(
        "flood: {frames} whole frames ({} MiB) sent, {stalls} write stalls of 100 ms, {logged} log entries on the server; \
         {probes} probe rounds, worst latency {worst:?}; server RSS before {} MiB, peak {} MiB (anon {} MiB, file {} MiB)",
        bytes >> 20,
        rss_before / 1024,
        rss_peak.0 / 1024,
        rss_peak.1 / 1024,
        rss_peak.2 / 1024
    );
    // Either the flood outweighed the bound (a server that buffered it could not have stayed
    // under), or the server stopped reading it (it buffered no more than it took).
    assert!(
        bytes >= FLOOD_BYTES_MIN || stopped_reading,
        "the flood pushed only {} MiB in {FLOOD_TIME_MAX:?} and the server kept reading: too little to tell a bounded server from one that buffers it",
        bytes >> 20
    );

    drop(slow);
    server.assert_alive("the flooding client left");
    // The flooder's held permits and queued replies are released: the server still serves a
    // full batch of its own.
    let results = client
        .create_transfers(&[NewTransfer {
            id: 5,
            from: 1,
            to: 2,
            amount: 10,
            currency: eur(),
            user_data: 0,
        }])
        .expect("a transfer after the flood");
    assert_eq!(results, vec![ResultCode::Ok]);
}

/// Caps SO_RCVBUF of a connected socket, so replies the client never reads back up sooner.
fn shrink_receive_buffer(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let bytes: libc::c_int = 16 * 1024;
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_RCVBUF): {}",
        std::io::Error::last_os_error()
    );
}

/// A raw client that completed the handshake and will never read a reply (its receive buffer
/// is kept small, so the server's replies back up sooner).
fn non_reading_client(addr: &str) -> TcpStream {
    let stream = handshaken(addr);
    shrink_receive_buffer(&stream);
    stream
        .set_write_timeout(Some(Duration::from_millis(100)))
        .expect("write timeout");
    stream
}

/// Writes `frames` back to back until all are written or `deadline` passes (the server may
/// have stopped reading long before; what it has not read stays in the kernel's buffers).
/// Returns how many frames were written whole.
fn write_frames(
    stream: &mut TcpStream,
    frames: impl Iterator<Item = Vec<u8>>,
    deadline: Instant,
) -> usize {
    let mut written = 0;
    for frame in frames {
        let mut at = 0;
        while at < frame.len() {
            if Instant::now() >= deadline {
                return written;
            }
            match stream.write(&frame[at..]) {
                Ok(n) => at += n,
                Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    panic!("the server dropped a non-reading client after {written} frames: {e}")
                }
            }
        }
        written += 1;
    }
    written
}

/// A full-size lookup: 8190 ids (128 KiB) whose reply is 8190 x 72 bytes (576 KiB).
fn big_lookup_frame(request_id: u64) -> Vec<u8> {
    let ids: Vec<u128> = (1..=BATCH_ITEMS_MAX as u128).collect();
    let mut body = BytesMut::new();
    codec::encode_ids(&mut body, &ids);
    frame(Operation::LookupAccounts as u8, request_id, &body)
}

/// Body bytes of a create_transfers request with a full batch.
const FULL_TRANSFER_BATCH_BODY: usize = 8 + BATCH_ITEMS_MAX * codec::NEW_TRANSFER_BYTES;

/// Clients that stop reading must not be able to take the per-core byte budget (256 MiB of
/// request bytes in flight) away from everyone else. Each client here first makes the server's
/// replies back up (large lookup replies fill its socket buffers, empty pings its reply
/// queue), then sends pings with a body as large as a full batch of transfers: the server
/// reads them, answers at once, and cannot deliver the answers. A well-behaved client,
/// connected before, must still get a full batch of transfers through.
#[test]
fn clients_that_never_read_cannot_pin_the_per_core_byte_budget() {
    const FLOODERS: usize = 24;
    let _heavy = heavy_test();
    let mut server = Server::start();
    let client = server.client();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(4);
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let mut stream = non_reading_client(&addr);
                // 12 replies of 576 KiB fill the socket buffers (4 MiB at most) and block the
                // server's writer for this connection ...
                let mut written = write_frames(
                    &mut stream,
                    (0..12).map(|i| big_lookup_frame(10 + i)),
                    deadline,
                );
                std::thread::sleep(Duration::from_secs(1));
                // ... 64 empty pings then fill its reply queue, and the replies to the big pings
                // that follow wait for room in the queue, holding their request bytes (up to 32
                // at a time per connection). They are exactly as big as the well-behaved
                // client's batch, so what is left of the budget never fits that batch.
                let big_body = vec![0x5au8; FULL_TRANSFER_BATCH_BODY];
                let frames = (0..64)
                    .map(|i| frame(Operation::Ping as u8, 100 + i, &[]))
                    .chain((0..48).map(|i| frame(Operation::Ping as u8, 1_000 + i, &big_body)));
                written += write_frames(&mut stream, frames, deadline);
                (stream, written)
            })
        })
        .collect();
    let flooders: Vec<(TcpStream, usize)> = flooders
        .into_iter()
        .map(|t| t.join().expect("a flooding thread"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "{FLOODERS} non-reading clients wrote {:?} frames in {:?}",
        flooders.iter().map(|f| f.1).collect::<Vec<_>>(),
        started.elapsed()
    );

    let transfers: Vec<NewTransfer> = (0..BATCH_ITEMS_MAX as u128)
        .map(|i| NewTransfer {
            id: 1 + i,
            from: (1 << 80) + i,
            to: (1 << 81) + i,
            amount: 1,
            currency: eur(),
            user_data: 0,
        })
        .collect();
    let t = Instant::now();
    let result = client.create_transfers(&transfers);
    let took = t.elapsed();
    assert!(
        result.is_ok() && took < PROBE_LATENCY_MAX,
        "with {FLOODERS} clients that never read, a well-behaved client's batch of {BATCH_ITEMS_MAX} transfers \
         got {:?} after {took:?}",
        result.map(|r| r.len())
    );
    let t = Instant::now();
    client
        .ping()
        .unwrap_or_else(|e| panic!("ping on the same connection after the batch: {e}"));
    assert!(
        t.elapsed() < PROBE_LATENCY_MAX,
        "ping took {:?}",
        t.elapsed()
    );
    drop(flooders);
    server.assert_alive("clients that never read left");
}

/// Bound on the growth of resident memory (over the settled idle size) however many clients
/// stop reading: the per-core budget of request bytes in flight (256 MiB), the same again for
/// their decoded copies, and 128 MiB of slack (log writer at most 32 MiB, I/O memory).
const MANY_FLOODERS_RSS_MAX_KIB: u64 = 640 * 1024;

/// Lookups are small requests with large replies (128 KiB in, 576 KiB out). Clients that send
/// many and never read must not make the server hold reply bytes without bound: memory must
/// stay within the server's limits however many such connections there are (up to the 1024
/// connections per core that are accepted).
#[test]
fn clients_that_never_read_lookup_replies_cannot_grow_memory_without_bound() {
    const FLOODERS: usize = 16;
    let _heavy = heavy_test();
    let mut server = Server::start();
    let pid = server.pid();
    let rss_before = settled_rss_kib(pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(6);
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let mut stream = non_reading_client(&addr);
                let written = write_frames(
                    &mut stream,
                    (0..110).map(|i| big_lookup_frame(10 + i)),
                    deadline,
                );
                (stream, written)
            })
        })
        .collect();
    // Sample while they write, then until the server has taken in what the kernel still
    // buffers (memory stops growing).
    let mut peak = rss_kib(pid);
    let sample = |peak: &mut (u64, u64, u64)| {
        let now = rss_kib(pid);
        if now.0 > peak.0 {
            *peak = now;
        }
        now.0
    };
    while !flooders.iter().all(|t| t.is_finished()) {
        sample(&mut peak);
        std::thread::sleep(Duration::from_millis(100));
    }
    let flooders: Vec<(TcpStream, usize)> = flooders
        .into_iter()
        .map(|t| t.join().expect("a flooding thread"))
        .collect();
    let mut last = sample(&mut peak);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let now = sample(&mut peak);
        if now <= last {
            break;
        }
        last = now;
    }
    let rss = peak;
    println!(
        "{FLOODERS} non-reading lookup clients wrote {} frames in {:?}; server RSS {} MiB before, peak {} MiB \
         (anon {} MiB, file {} MiB)",
        flooders.iter().map(|f| f.1).sum::<usize>(),
        started.elapsed(),
        rss_before / 1024,
        rss.0 / 1024,
        rss.1 / 1024,
        rss.2 / 1024
    );
    assert!(
        rss.0.saturating_sub(rss_before) < MANY_FLOODERS_RSS_MAX_KIB,
        "{FLOODERS} clients that never read their lookup replies grew the server from {} MiB to {} MiB (bound: {} MiB of growth)",
        rss_before / 1024,
        rss.0 / 1024,
        MANY_FLOODERS_RSS_MAX_KIB / 1024
    );
    drop(flooders);
    server.assert_alive("clients that never read their lookup replies left");
}
