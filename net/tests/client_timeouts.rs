//! The client library's time bounds against servers that misbehave in time rather than in
//! bytes: one that answers some requests and sits on others, one that goes silent after the
//! handshake (a host that vanished without a reset), one whose listen queue is full (SYNs
//! dropped, as for a powered-off host), one that drops the connection on a cluster change
//! (which the client resends only when a copy cannot race the first). Each fake server
//! speaks just enough of the protocol.

use bytes::BytesMut;
use engine::model::Currency;
use engine::NewTransfer;
use net::codec::{self, HandshakeReply};
use net::frame::{self, FrameHeader, HEADER_BYTES};
use net::{Client, ClientConfig, ClientError, Operation};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the fake server treats requests after the handshake.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers pings, never answers anything else.
    PingsOnly,
    /// Answers nothing at all.
    Silent,
    /// Closes the connection on a cluster change, unanswered (counted).
    DropsClusterChanges,
}

/// What a fake server counted: connections it accepted, cluster changes it received.
struct Counts {
    accepted: AtomicUsize,
    changes: AtomicUsize,
}

/// A fake server on a free loopback port, and what it counts.
fn fake_server(behaviour: Behaviour) -> (String, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let counts = Arc::new(Counts {
        accepted: AtomicUsize::new(0),
        changes: AtomicUsize::new(0),
    });
    let counter = counts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            counter.accepted.fetch_add(1, Ordering::SeqCst);
            let counts = counter.clone();
            std::thread::spawn(move || serve(stream, behaviour, &counts));
        }
    });
    (addr, counts)
}

fn read_frame(stream: &mut TcpStream) -> Option<(FrameHeader, Vec<u8>)> {
    let mut header = [0u8; HEADER_BYTES];
    stream.read_exact(&mut header).ok()?;
    let header = FrameHeader::decode(&header).ok()?;
    let mut body = vec![0u8; header.body_len as usize];
    stream.read_exact(&mut body).ok()?;
    Some((header, body))
}

fn reply(stream: &mut TcpStream, header: &FrameHeader, body: &[u8]) {
    let mut out = BytesMut::new();
    frame::encode_frame(
        &mut out,
        header.operation,
        frame::flags::REPLY,
        header.request_id,
        body,
    );
    let _ = stream.write_all(&out);
}

fn serve(mut stream: TcpStream, behaviour: Behaviour, counts: &Counts) {
    let Some((hello, _)) = read_frame(&mut stream) else {
        return;
    };
    let mut body = BytesMut::new();
    codec::encode_handshake_reply(
        &mut body,
        &HandshakeReply {
            partitions: 1,
            cluster_id: 0,
            node_id: 1,
        },
    );
    reply(&mut stream, &hello, &body);
    while let Some((header, _)) = read_frame(&mut stream) {
        match behaviour {
            Behaviour::PingsOnly if header.operation == Operation::Ping as u8 => {
                reply(&mut stream, &header, &[]);
            }
            Behaviour::DropsClusterChanges
                if header.operation == Operation::ClusterChange as u8 =>
            {
                counts.changes.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Behaviour::PingsOnly | Behaviour::Silent | Behaviour::DropsClusterChanges => {}
        }
    }
}

fn config(addr: &str, timeout_ms: u64) -> ClientConfig {
    ClientConfig {
        timeout_ms,
        retries: 0,
        ..ClientConfig::new(addr)
    }
}

fn transfer() -> NewTransfer {
    NewTransfer {
        id: 1,
        from: 1,
        to: 2,
        amount: 1,
        currency: Currency::parse("EUR").expect("a currency"),
        user_data: 0,
    }
}

/// Replies to other requests keep arriving more often than the reader's idle tick: the
/// request the server sits on must still time out (it waited for good when expiry ran only
/// on a quiet connection).
#[test]
fn a_request_times_out_while_other_replies_keep_arriving() {
    let (addr, _) = fake_server(Behaviour::PingsOnly);
    let client = Arc::new(Client::connect(config(&addr, 300)).expect("connect"));
    let pinger = {
        let client = client.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                client.ping().expect("pings are answered");
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let started = Instant::now();
    let result = client.create_transfers(&[transfer()]);
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(ClientError::Timeout(300))),
        "{result:?}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "timed out after {waited:?}"
    );
    pinger.join().expect("the pinger");
}

/// A server that goes silent after the handshake (no reset, no bytes): the timed-out
/// request takes the connection with it, and the next call connects afresh instead of
/// sending into the dead one.
#[test]
fn a_connection_that_heard_nothing_while_a_request_waited_is_replaced() {
    let (addr, counts) = fake_server(Behaviour::Silent);
    let client = Client::connect(config(&addr, 200)).expect("connect");
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
    let result = client.ping();
    assert!(
        matches!(result, Err(ClientError::Timeout(200))),
        "{result:?}"
    );
    // The reader takes the connection for dead within a tick of the deadline.
    std::thread::sleep(Duration::from_millis(200));
    let result = client.ping();
    assert!(
        matches!(result, Err(ClientError::Timeout(200))),
        "{result:?}"
    );
    assert_eq!(
        counts.accepted.load(Ordering::SeqCst),
        2,
        "the second ping went out on a fresh connection"
    );
}

/// A listener whose accept queue is full drops new SYNs, as a powered-off host does: the
/// connect must give up within the client's timeout, not the kernel's ~2 minutes.
#[test]
fn connecting_to_a_host_that_does_not_answer_gives_up_within_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Never accepted: fill the queue until a connect hangs.
    let mut held = Vec::new();
    let filled =
        (0..4096).any(
            |_| match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(stream) => {
                    held.push(stream);
                    false
                }
                Err(_) => true,
            },
        );
    assert!(filled, "the accept queue never filled");
    let started = Instant::now();
    let result = Client::connect(config(&addr.to_string(), 300));
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(ClientError::Connect { .. })),
        "{:?}",
        result.err()
    );
    assert!(waited < Duration::from_secs(3), "gave up after {waited:?}");
    drop(listener);
}

/// A membership change whose connection drops before the answer is not sent again (a second
/// copy could race the first, which may still be going on); an `init` is, up to the
/// configured retries (repeating it is harmless).
#[test]
fn a_lost_membership_change_is_not_resent_and_a_lost_init_is() {
    use net::cluster_admin::{Action, ClusterChange};
    const RETRIES: u32 = 2;
    let (addr, counts) = fake_server(Behaviour::DropsClusterChanges);
    let client = Client::connect(ClientConfig {
        retries: RETRIES,
        ..config(&addr, 2_000)
    })
    .expect("connect");
    let change = |action| ClusterChange {
        action,
        node_id: 4,
        peer_addr: "127.0.0.1:1".into(),
        client_addr: "127.0.0.1:2".into(),
    };
    for (action, sent) in [
        (Action::AddNode, 1),
        (Action::RemoveNode, 1),
        (Action::Init, 1 + RETRIES as usize),
    ] {
        let before = counts.changes.load(Ordering::SeqCst);
        let result = client.cluster_change(&change(action));
        assert!(result.is_err(), "{action:?}: {result:?}");
        let seen = counts.changes.load(Ordering::SeqCst) - before;
        assert_eq!(seen, sent, "{action:?}");
    }
}
