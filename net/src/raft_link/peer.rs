//! `PeerLink`: this node's outgoing connection to one peer, shared by the Rafts of every
//! partition on this executor (RAFT_PLAN §5: one link per node pair, all partitions batched).
//!
//! ```text
//!  RaftNetwork calls (any partition)          pump task                     reply reader task
//!  ── call(): msg_id, pending[msg_id] = tx ──> outbox (bounded) ──> one RaftBatch frame per turn
//!                                              (connects on demand,         <── RaftBatch|REPLY
//!  <── rx resolves ─────────────────────────── backoff after a failure)     pending.remove(id)
//! ```
//!
//! - **Batching.** The pump waits for one message, then takes everything else already queued
//!   (up to `BATCH_BODY_BYTES_TARGET`, `MESSAGES_PER_FRAME_MAX`) into the same frame: the
//!   heartbeats of all partitions that fire together share one write.
//! - **Matching.** Every request gets a `msg_id` unique on this link; the reply reader hands a
//!   reply to the caller registered under its id. A caller that gives up (timeout) drops its
//!   `ReplyTicket`, which removes its entry, so an unanswered peer cannot grow the map; the
//!   pump skips queued messages nobody waits for any more.
//! - **Failures.** A connection that breaks fails everything pending at once as unreachable
//!   (openraft retries). A failed connect starts a backoff (`reconnect_backoff_*_ms`, doubling);
//!   until it ends, calls fail at once instead of queueing behind a dead peer.
//! - **TLS.** With `LinkConfig::tls` the connection is a rustls stream over the TCP one: the
//!   peer's certificate must be issued by the cluster's CA for the host of its address, and
//!   this node presents its own; the peer-token handshake follows inside TLS.
//! - **Bounds.** `OUTBOX_MESSAGES_MAX` and `OUTBOX_BYTES_MAX` queued (a caller waits for room
//!   within its timeout), `PENDING_REPLIES_MAX` awaited (beyond: unreachable at once).

use super::batch::{encode_batch, Envelope};
use super::config::LinkConfig;
use super::handshake;
use super::io::{read_frame, write_within, LinkIoError};
use super::limits::{
    BATCH_BODY_BYTES_TARGET, BATCH_HEADER_BYTES, ENVELOPE_BYTES, LINK_BODY_BYTES_MAX,
    MESSAGES_PER_FRAME_MAX, OUTBOX_BYTES_MAX, OUTBOX_MESSAGES_MAX, PENDING_REPLIES_MAX,
};
use super::message::{Failure, LinkReply};
use super::stats::LinkCounters;
use crate::frame::{self, flags};
use crate::operation::Operation;
use bytes::BytesMut;
use futures::channel::oneshot;
use futures::future::Either;
use futures::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use futures_rustls::client::TlsStream;
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a call got no reply from the peer's Raft.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Not sent, or the connection broke before the reply: the peer may be down.
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("no reply in time")]
    Timeout,
    /// The peer answered with a failure instead of Raft's answer.
    #[error("remote failure {:?}: {}", .0.code, .0.message)]
    Remote(Failure),
    /// The reply did not decode or was not the kind asked for.
    #[error("bad reply: {0}")]
    BadReply(String),
}

/// A request waiting in the outbox.
struct Outgoing {
    msg_id: u64,
    partition: u32,
    kind: u8,
    body: Vec<u8>,
    /// Its share of `OUTBOX_BYTES_MAX`, returned once it is written (or dropped).
    _bytes: glommio::sync::StaticPermit,
}

type ReplySender = oneshot::Sender<Result<LinkReply, CallError>>;

/// A call awaiting its reply.
struct Pending {
    tx: ReplySender,
    /// The connection the request was written on (0: not written yet). When a connection
    /// ends, only its own requests fail; queued ones go out on the next connection.
    connection: u64,
}

/// State shared by the link handle, its pump and its reply reader.
struct Shared {
    config: Rc<LinkConfig>,
    counters: Arc<LinkCounters>,
    target: u64,
    addr: String,
    pending: RefCell<HashMap<u64, Pending>>,
    /// Bytes of requests queued and not yet written (`OUTBOX_BYTES_MAX`).
    outbox_bytes: Rc<glommio::sync::Semaphore>,
    next_msg_id: Cell<u64>,
    next_connection_id: Cell<u64>,
    /// No connect attempt before this instant (after a failure).
    retry_at: Cell<Option<Instant>>,
    /// The delay the next failure sets (doubles per failure, reset on success).
    backoff_ms: Cell<u64>,
}

impl Shared {
    /// Answers every call written on `connection` with `error` (that connection is gone).
    fn fail_connection(&self, connection: u64, error: &CallError) {
        let failed: Vec<Pending> = {
            let mut pending = self.pending.borrow_mut();
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, p)| p.connection == connection)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        for p in failed {
            let _ = p.tx.send(Err(error.clone()));
        }
    }

    fn fail(&self, msg_id: u64, error: CallError) {
        if let Some(p) = self.pending.borrow_mut().remove(&msg_id) {
            let _ = p.tx.send(Err(error));
        }
    }

    fn connect_failed(&self) {
        self.counters.connect_failed();
        let delay_ms = self.backoff_ms.get();
        self.retry_at
            .set(Some(Instant::now() + Duration::from_millis(delay_ms)));
        self.backoff_ms
            .set((delay_ms * 2).min(self.config.reconnect_backoff_max_ms));
    }

    fn connected(&self) {
        self.counters.connected();
        self.retry_at.set(None);
        self.backoff_ms.set(self.config.reconnect_backoff_min_ms);
    }
}

/// A request handed to the link: its reply, once the peer sends it. Dropping the ticket
/// forgets the request (its pending entry goes, so an unanswered peer cannot grow the map; a
/// reply that comes later is dropped, and a request still queued is not written).
///
/// A caller that gives up on waiting may keep the ticket instead, and wait again later:
/// `LinkNetwork` does so for an AppendEntries that openraft timed out (`network.rs`).
pub struct ReplyTicket {
    shared: Rc<Shared>,
    msg_id: u64,
    rx: oneshot::Receiver<Result<LinkReply, CallError>>,
}

impl ReplyTicket {
    /// Waits for the reply. Cancel-safe: dropping the future keeps the ticket usable.
    pub async fn reply(&mut self) -> Result<LinkReply, CallError> {
        (&mut self.rx)
            .await
            .map_err(|_| CallError::Unreachable("the link dropped the request".into()))?
    }
}

impl Drop for ReplyTicket {
    fn drop(&mut self) {
        self.shared.pending.borrow_mut().remove(&self.msg_id);
    }
}

/// The handle: dropping it closes the outbox, which ends the pump and the connection.
pub struct PeerLink {
    shared: Rc<Shared>,
    outbox: flume::Sender<Outgoing>,
}

impl PeerLink {
    /// A link to `target` at `addr` (`host:port`); connects on the first call.
    pub(crate) fn new(
        config: Rc<LinkConfig>,
        counters: Arc<LinkCounters>,
        target: u64,
        addr: String,
    ) -> PeerLink {
        let (outbox, queued) = flume::bounded(OUTBOX_MESSAGES_MAX);
        let shared = Rc::new(Shared {
            backoff_ms: Cell::new(config.reconnect_backoff_min_ms),
            config,
            counters,
            target,
            addr,
            pending: RefCell::default(),
            outbox_bytes: Rc::new(glommio::sync::Semaphore::new(OUTBOX_BYTES_MAX)),
            next_msg_id: Cell::new(1),
            next_connection_id: Cell::new(1),
            retry_at: Cell::new(None),
        });
        glommio::spawn_local(pump(shared.clone(), queued)).detach();
        PeerLink { shared, outbox }
    }

    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// Sends one request of `partition` and waits for its reply, at most `timeout`.
    pub async fn call(
        &self,
        partition: u32,
        kind: u8,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<LinkReply, CallError> {
        let exchange = async {
            let mut ticket = self.send(partition, kind, body).await?;
            ticket.reply().await
        };
        within(pin!(glommio::timer::Timer::new(timeout)), exchange).await
    }

    /// Queues one request of `partition` (waiting for room in the outbox, `OUTBOX_*_MAX`) and
    /// returns the ticket its reply will come on. Fails at once while the peer is cut off by
    /// the filter, in reconnect backoff, or has `PENDING_REPLIES_MAX` requests unanswered.
    pub async fn send(
        &self,
        partition: u32,
        kind: u8,
        body: Vec<u8>,
    ) -> Result<ReplyTicket, CallError> {
        let shared = &self.shared;
        if shared
            .config
            .filter
            .blocks(shared.config.node_id, shared.target)
        {
            return Err(CallError::Unreachable("cut off by the link filter".into()));
        }
        if let Some(at) = shared.retry_at.get() {
            if Instant::now() < at {
                return Err(CallError::Unreachable(format!(
                    "node {} at {} is in reconnect backoff",
                    shared.target, shared.addr
                )));
            }
        }
        if shared.pending.borrow().len() >= PENDING_REPLIES_MAX {
            return Err(CallError::Unreachable(format!(
                "{PENDING_REPLIES_MAX} requests to node {} await replies",
                shared.target
            )));
        }
        let msg_id = shared.next_msg_id.get();
        shared.next_msg_id.set(msg_id + 1);
        let (tx, rx) = oneshot::channel();
        shared
            .pending
            .borrow_mut()
            .insert(msg_id, Pending { tx, connection: 0 });
        // From here on, however this future ends, the ticket's drop removes the entry.
        let ticket = ReplyTicket {
            shared: shared.clone(),
            msg_id,
            rx,
        };
        let units = (body.len() as u64).clamp(1, OUTBOX_BYTES_MAX);
        let bytes = shared
            .outbox_bytes
            .acquire_static_permit(units)
            .await
            .map_err(|_| CallError::Unreachable("the link is shut down".into()))?;
        let message = Outgoing {
            msg_id,
            partition,
            kind,
            body,
            _bytes: bytes,
        };
        self.outbox
            .send_async(message)
            .await
            .map_err(|_| CallError::Unreachable("the link is shut down".into()))?;
        Ok(ticket)
    }
}

/// `f`, unless the timer `deadline` fires first (then `CallError::Timeout`). A caller that
/// waits in steps (`LinkNetwork::append_entries`) passes one deadline to each.
pub(super) async fn within<T>(
    deadline: Pin<&mut glommio::timer::Timer>,
    f: impl Future<Output = Result<T, CallError>>,
) -> Result<T, CallError> {
    match futures::future::select(pin!(f), deadline).await {
        Either::Left((result, _)) => result,
        Either::Right(_) => Err(CallError::Timeout),
    }
}

/// A connection to a peer: plain TCP, or TLS over it. One `match` per poll of the stream
/// (`Either` forwards `AsyncRead`/`AsyncWrite`) next to a syscall per frame: the plain path
/// costs the same as before TLS existed, and the pump need not be generic.
type PeerStream = Either<TcpStream, TlsStream<TcpStream>>;

/// A live connection's write half (the read half belongs to its reply reader).
struct Connection {
    id: u64,
    writer: WriteHalf<PeerStream>,
    alive: Rc<Cell<bool>>,
}

/// Moves queued requests to the peer, one frame per turn, (re)connecting as needed.
async fn pump(shared: Rc<Shared>, queued: flume::Receiver<Outgoing>) {
    let mut connection: Option<Connection> = None;
    let mut carry: Option<Outgoing> = None;
    let mut frame_seq = 0u64;
    loop {
        let first = match carry.take() {
            Some(m) => m,
            None => match queued.recv_async().await {
                Ok(m) => m,
                Err(_) => break, // the handle is gone
            },
        };
        let mut batch = vec![first];
        let mut bytes = ENVELOPE_BYTES + batch[0].body.len();
        while batch.len() < MESSAGES_PER_FRAME_MAX && bytes < BATCH_BODY_BYTES_TARGET {
            let Ok(next) = queued.try_recv() else { break };
            if BATCH_HEADER_BYTES + bytes + ENVELOPE_BYTES + next.body.len() > LINK_BODY_BYTES_MAX {
                carry = Some(next);
                break;
            }
            bytes += ENVELOPE_BYTES + next.body.len();
            batch.push(next);
        }
        // Calls that timed out meanwhile need no bytes on the wire.
        batch.retain(|m| shared.pending.borrow().contains_key(&m.msg_id));
        if batch.is_empty() {
            continue;
        }
        if connection.as_ref().is_some_and(|c| !c.alive.get()) {
            connection = None;
        }
        if connection.is_none() {
            match connect(&shared).await {
                Ok(c) => {
                    shared.connected();
                    connection = Some(c);
                }
                Err(e) => {
                    tracing::debug!(target = shared.target, error = %e, "node link connect failed");
                    shared.connect_failed();
                    let error = CallError::Unreachable(format!(
                        "cannot reach node {} at {}: {e}",
                        shared.target, shared.addr
                    ));
                    for m in &batch {
                        shared.fail(m.msg_id, error.clone());
                    }
                    continue;
                }
            }
        }
        let Some(c) = connection.as_mut() else {
            continue;
        };
        {
            let mut pending = shared.pending.borrow_mut();
            for m in &batch {
                if let Some(p) = pending.get_mut(&m.msg_id) {
                    p.connection = c.id;
                }
            }
        }
        frame_seq += 1;
        let envelopes: Vec<Envelope<'_>> = batch
            .iter()
            .map(|m| Envelope {
                partition: m.partition,
                kind: m.kind,
                msg_id: m.msg_id,
                body: &m.body,
            })
            .collect();
        let mut out = BytesMut::with_capacity(bytes + 64);
        frame::encode_frame_limited(
            &mut out,
            Operation::RaftBatch as u8,
            0,
            frame_seq,
            LINK_BODY_BYTES_MAX,
            |b| encode_batch(b, shared.config.node_id, shared.target, &envelopes),
        );
        shared.counters.frame(batch.len());
        let stall = Duration::from_millis(shared.config.write_stall_timeout_ms);
        if let Err(e) = write_within(&mut c.writer, &out, stall).await {
            tracing::debug!(target = shared.target, error = %e, "node link write failed");
            c.alive.set(false);
            let id = c.id;
            connection = None;
            let error = CallError::Unreachable(format!("write to node failed: {e}"));
            shared.fail_connection(id, &error);
        }
    }
    if let Some(mut c) = connection {
        let _ = c.writer.close().await;
    }
}

/// TCP connect, handshake, reply reader: within `connect_timeout_ms`.
async fn connect(shared: &Rc<Shared>) -> Result<Connection, LinkIoError> {
    let budget = Duration::from_millis(shared.config.connect_timeout_ms);
    let attempt = async {
        // Resolved here, not by glommio's `connect`, which panics on a name that resolves to
        // no address. A host name is resolved with a blocking lookup on the executor (rare:
        // once per connect; membership addresses are normally IP literals).
        let resolved = std::net::ToSocketAddrs::to_socket_addrs(shared.addr.as_str())?
            .next()
            .ok_or_else(|| {
                LinkIoError::Protocol(format!("{} resolves to no address", shared.addr))
            })?;
        let stream = TcpStream::connect(resolved)
            .await
            .map_err(|e| LinkIoError::Io(std::io::Error::other(e.to_string())))?;
        let _ = stream.set_nodelay(true);
        let stream: PeerStream = match &shared.config.tls {
            None => Either::Left(stream),
            Some(tls) => {
                let name = crate::tls::PeerTls::server_name(&shared.addr)
                    .map_err(LinkIoError::Protocol)?;
                let connector = futures_rustls::TlsConnector::from(tls.client.clone());
                let stream = connector.connect(name, stream).await.map_err(|e| {
                    LinkIoError::Protocol(format!("TLS handshake with {}: {e}", shared.addr))
                })?;
                Either::Right(stream)
            }
        };
        let (mut reader, mut writer) = stream.split();
        let node = handshake::offer(
            &mut reader,
            &mut writer,
            &shared.config.peer_token,
            shared.config.cluster_id,
        )
        .await?;
        if node != shared.target {
            return Err(LinkIoError::Protocol(format!(
                "{} is node {node}, not node {}",
                shared.addr, shared.target
            )));
        }
        Ok((reader, writer))
    };
    let timer = pin!(glommio::timer::sleep(budget));
    let (reader, writer) = match futures::future::select(pin!(attempt), timer).await {
        Either::Left((result, _)) => result?,
        Either::Right(_) => {
            return Err(LinkIoError::Protocol(format!(
                "no connection within {} ms",
                shared.config.connect_timeout_ms
            )))
        }
    };
    let alive = Rc::new(Cell::new(true));
    let id = shared.next_connection_id.get();
    shared.next_connection_id.set(id + 1);
    glommio::spawn_local(read_replies(shared.clone(), reader, id, alive.clone())).detach();
    Ok(Connection { id, writer, alive })
}

/// Hands each reply to its caller until the connection ends; then fails what is pending.
async fn read_replies(
    shared: Rc<Shared>,
    mut reader: ReadHalf<PeerStream>,
    connection: u64,
    alive: Rc<Cell<bool>>,
) {
    let error = loop {
        let (header, body) = match read_frame(&mut reader, LINK_BODY_BYTES_MAX).await {
            Ok(frame) => frame,
            Err(e) => break e.to_string(),
        };
        if header.operation != Operation::RaftBatch as u8 || header.flags & flags::REPLY == 0 {
            break format!("unexpected frame (operation {})", header.operation);
        }
        let batch = match super::batch::decode_batch(&body) {
            Ok(b) => b,
            Err(e) => break format!("reply batch: {e}"),
        };
        if batch.from != shared.target || batch.to != shared.config.node_id {
            break format!("replies from {} to {} on this link", batch.from, batch.to);
        }
        if shared
            .config
            .filter
            .blocks(shared.target, shared.config.node_id)
        {
            continue;
        }
        for m in batch.messages {
            let reply =
                LinkReply::decode(m.kind, m.body).map_err(|e| CallError::BadReply(e.to_string()));
            if let Some(p) = shared.pending.borrow_mut().remove(&m.msg_id) {
                let _ = p.tx.send(reply);
            }
        }
    };
    tracing::debug!(target = shared.target, %error, "node link connection ended");
    alive.set(false);
    let error = CallError::Unreachable(format!(
        "connection to node {} lost: {error}",
        shared.target
    ));
    shared.fail_connection(connection, &error);
}
