//! The node link's listener and its connections (the receiving side).
//!
//! One connection per peer that dials us. Per connection:
//!
//! 1. **Handshake** within `handshake_timeout_ms`: the TLS handshake first when the link has
//!    TLS (`LinkConfig::tls`: the peer must present a certificate of the cluster's CA), then
//!    the first frame must be a peer Handshake with the right token (`handshake.rs`); until
//!    then frames may hold only a handshake. After that the code is generic over the stream
//!    halves, so plain TCP runs on the glommio stream directly and TLS on a rustls stream,
//!    each monomorphized (as on the client port).
//! 2. **Read loop**: each `RaftBatch` frame (at most `LINK_BODY_BYTES_MAX`) is split into its
//!    messages; every message is decoded *before* any is dispatched (one bad message closes
//!    the connection: the stream is not trusted any more), then each becomes a task that
//!    answers it (`receive::answer`). At most `MESSAGES_IN_FLIGHT_PER_CONNECTION_MAX` messages
//!    and `MESSAGE_BYTES_IN_FLIGHT_PER_CONNECTION_MAX` bytes of them are in hand at once;
//!    beyond that the loop stops reading and TCP pushes back on the peer.
//! 3. **Writer task**: replies queue (bounded, `REPLY_QUEUE_MAX`) as they complete, in any
//!    order; the writer takes all that are queued into one reply frame per turn.
//!
//! The `LinkFilter` is applied to every batch read and every reply frame written.

use super::batch::{decode_batch, encode_batch, Envelope};
use super::handshake::{self, HANDSHAKE_BODY_BYTES_MAX};
use super::io::{read_frame, write_within, LinkIoError};
use super::limits::{
    BATCH_BODY_BYTES_TARGET, ENVELOPE_BYTES, LINK_BODY_BYTES_MAX,
    MESSAGES_IN_FLIGHT_PER_CONNECTION_MAX, MESSAGES_PER_FRAME_MAX,
    MESSAGE_BYTES_IN_FLIGHT_PER_CONNECTION_MAX, REPLY_QUEUE_MAX,
};
use super::message::{LinkReply, LinkRequest};
use super::receive::{answer, Transfers};
use super::LinkShared;
use crate::frame::{self, flags};
use crate::operation::Operation;
use bytes::BytesMut;
use futures::future::Either;
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A reply on its way to the writer.
struct QueuedReply {
    partition: u32,
    msg_id: u64,
    reply: LinkReply,
}

pub(super) async fn accept_loop(listener: TcpListener, link: Rc<LinkShared>) {
    loop {
        let accepted = pin!(listener.accept());
        let stopped = pin!(link.stop.recv_async());
        match futures::future::select(accepted, stopped).await {
            Either::Left((Ok(stream), _)) => {
                if link.connections.get() >= super::limits::CONNECTIONS_MAX {
                    tracing::warn!("node link connection limit reached; refusing a connection");
                    continue;
                }
                link.connections.set(link.connections.get() + 1);
                let link = link.clone();
                glommio::spawn_local(async move {
                    let peer = stream.peer_addr().ok();
                    if let Err(e) = serve(stream, &link).await {
                        tracing::debug!(?peer, error = %e, "node link connection ended");
                    }
                    link.connections.set(link.connections.get() - 1);
                })
                .detach();
            }
            Either::Left((Err(e), _)) => {
                tracing::warn!(error = %e, "node link accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            Either::Right(_) => break,
        }
    }
}

async fn serve(stream: TcpStream, link: &Rc<LinkShared>) -> Result<(), LinkIoError> {
    let _ = stream.set_nodelay(true);
    // The TLS handshake (if any) and the peer handshake must both be done by then.
    let deadline = Instant::now() + Duration::from_millis(link.config.handshake_timeout_ms);
    match &link.config.tls {
        None => {
            let (reader, writer) = stream.split();
            serve_split(reader, writer, link, deadline).await
        }
        Some(tls) => {
            let acceptor = futures_rustls::TlsAcceptor::from(tls.server.clone());
            let stream = before(deadline, acceptor.accept(stream))
                .await?
                .map_err(|e| LinkIoError::Protocol(format!("TLS handshake: {e}")))?;
            let (reader, writer) = stream.split();
            serve_split(reader, writer, link, deadline).await
        }
    }
}

/// `f`, unless `deadline` passes first (then the connection is not worth waiting for).
async fn before<F: Future>(deadline: Instant, f: F) -> Result<F::Output, LinkIoError> {
    let timer = pin!(glommio::timer::sleep(
        deadline.saturating_duration_since(Instant::now())
    ));
    match futures::future::select(pin!(f), timer).await {
        Either::Left((output, _)) => Ok(output),
        Either::Right(_) => Err(LinkIoError::Protocol("no handshake in time".into())),
    }
}

/// A connection after its transport is set up: the peer handshake (by `deadline`), then
/// batches until either side stops.
async fn serve_split<R, W>(
    mut reader: R,
    mut writer: W,
    link: &Rc<LinkShared>,
    deadline: Instant,
) -> Result<(), LinkIoError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + 'static,
{
    let config = &link.config;
    let greeting = async {
        let (header, body) = read_frame(&mut reader, HANDSHAKE_BODY_BYTES_MAX).await?;
        let answer = handshake::accept(
            &header,
            &body,
            &config.peer_token,
            config.cluster_id,
            config.node_id,
        );
        let (Ok(frame) | Err(frame)) = &answer;
        writer.write_all(frame).await?;
        writer.flush().await?;
        Ok::<bool, LinkIoError>(answer.is_ok())
    };
    match before(deadline, greeting).await? {
        Ok(true) => {}
        Ok(false) => {
            let _ = writer.close().await;
            return Err(LinkIoError::Protocol("handshake refused".into()));
        }
        Err(e) => return Err(e),
    }

    let (replies, queued) = flume::bounded::<QueuedReply>(REPLY_QUEUE_MAX);
    // The peer's node id, from its first batch (fixed for the connection).
    let peer = Rc::new(std::cell::Cell::new(None::<u64>));
    let (gone, writer_gone) = flume::bounded::<()>(1);
    let writer_task = glommio::spawn_local(write_replies(
        writer,
        queued,
        link.clone(),
        peer.clone(),
        gone,
    ));
    let in_flight = Rc::new(glommio::sync::Semaphore::new(
        MESSAGES_IN_FLIGHT_PER_CONNECTION_MAX,
    ));
    let bytes_in_flight = Rc::new(glommio::sync::Semaphore::new(
        MESSAGE_BYTES_IN_FLIGHT_PER_CONNECTION_MAX,
    ));
    let transfers = Rc::new(Transfers::default());
    let result = loop {
        let read = pin!(read_frame(&mut reader, LINK_BODY_BYTES_MAX));
        let stop = pin!(link.stop.recv_async());
        let gone = pin!(writer_gone.recv_async());
        let stopped = futures::future::select(stop, gone);
        let (header, body) = match futures::future::select(read, stopped).await {
            Either::Left((Ok(frame), _)) => frame,
            Either::Left((Err(e), _)) => break Err(e),
            Either::Right(_) => break Ok(()),
        };
        if header.operation != Operation::RaftBatch as u8 || header.flags != 0 {
            break Err(LinkIoError::Protocol(format!(
                "unexpected frame (operation {}, flags {})",
                header.operation, header.flags
            )));
        }
        let batch = match decode_batch(&body) {
            Ok(b) => b,
            Err(e) => break Err(e.into()),
        };
        if batch.to != config.node_id || peer.get().is_some_and(|p| p != batch.from) {
            break Err(LinkIoError::Protocol(format!(
                "a batch from {} to {} on a link to node {}",
                batch.from, batch.to, config.node_id
            )));
        }
        peer.set(Some(batch.from));
        if config.filter.blocks(batch.from, config.node_id) {
            continue;
        }
        let decoded: Result<Vec<_>, _> = batch
            .messages
            .iter()
            .map(|m| {
                LinkRequest::decode(m.kind, m.body)
                    .map(|r| (m.partition, m.msg_id, m.body.len(), r))
            })
            .collect();
        let requests = match decoded {
            Ok(requests) => requests,
            Err(e) => break Err(e.into()),
        };
        for (partition, msg_id, len, request) in requests {
            let units = (len as u64).clamp(1, MESSAGE_BYTES_IN_FLIGHT_PER_CONNECTION_MAX);
            let (Ok(permit), Ok(bytes)) = (
                in_flight.acquire_static_permit(1).await,
                bytes_in_flight.acquire_static_permit(units).await,
            ) else {
                break;
            };
            let (registry, transfers, replies) =
                (link.registry.clone(), transfers.clone(), replies.clone());
            glommio::spawn_local(async move {
                let reply = answer(&registry, &transfers, partition, request).await;
                let _ = replies
                    .send_async(QueuedReply {
                        partition,
                        msg_id,
                        reply,
                    })
                    .await;
                drop((permit, bytes));
            })
            .detach();
        }
    };
    drop(replies);
    // Tasks still answering hold senders: the writer ends when the last of them is done.
    writer_task.await;
    result
}

/// Writes queued replies, all that are waiting per frame, until the connection's tasks are
/// done or a write fails.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut writer: W,
    queued: flume::Receiver<QueuedReply>,
    link: Rc<LinkShared>,
    peer: Rc<std::cell::Cell<Option<u64>>>,
    // Dropped when the writer ends: wakes the read loop, which then ends too.
    _gone: flume::Sender<()>,
) {
    let node_id = link.config.node_id;
    let stall = Duration::from_millis(link.config.write_stall_timeout_ms);
    let mut frame_seq = 0u64;
    while let Ok(first) = queued.recv_async().await {
        let mut batch = vec![first];
        while batch.len() < MESSAGES_PER_FRAME_MAX {
            let Ok(next) = queued.try_recv() else { break };
            batch.push(next);
        }
        let Some(to) = peer.get() else { continue };
        if link.config.filter.blocks(node_id, to) {
            continue;
        }
        // Replies are small except acks of nothing in particular; still, split by bytes.
        let encoded: Vec<(u32, u8, u64, Vec<u8>)> = batch
            .into_iter()
            .map(|q| {
                let mut body = Vec::new();
                q.reply.encode(&mut body);
                (q.partition, q.reply.kind(), q.msg_id, body)
            })
            .collect();
        let mut start = 0;
        while start < encoded.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < encoded.len() && (end == start || bytes < BATCH_BODY_BYTES_TARGET) {
                bytes += ENVELOPE_BYTES + encoded[end].3.len();
                end += 1;
            }
            let envelopes: Vec<Envelope<'_>> = encoded[start..end]
                .iter()
                .map(|(partition, kind, msg_id, body)| Envelope {
                    partition: *partition,
                    kind: *kind,
                    msg_id: *msg_id,
                    body,
                })
                .collect();
            frame_seq += 1;
            let mut out = BytesMut::with_capacity(bytes + 64);
            frame::encode_frame_limited(
                &mut out,
                Operation::RaftBatch as u8,
                flags::REPLY,
                frame_seq,
                LINK_BODY_BYTES_MAX,
                |b| encode_batch(b, node_id, to, &envelopes),
            );
            if write_within(&mut writer, &out, stall).await.is_err() {
                return;
            }
            start = end;
        }
    }
    let _ = writer.close().await;
}
