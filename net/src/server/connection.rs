//! One client connection: TLS (when configured) and the protocol handshake, both within
//! `handshake_timeout_ms` of the accept, then a read loop that hands each request to its own
//! task (pipelining) and a writer task that sends replies as they complete (matched by request
//! id). The code after the transport is set up is generic over the stream halves, so plain TCP
//! runs on the glommio stream directly and TLS on a rustls stream, each monomorphized.
//!
//! Memory per connection is bounded: request bodies by the per-connection request permits and
//! the per-core byte budget (released as soon as a request is handled, so a client that does
//! not read cannot pin it), replies by a per-connection reply-byte budget (a handler waits for
//! room, which in turn stops the reader). A client whose replies cannot be written for
//! `write_stall_timeout_ms` is disconnected.

use super::handler::handle;
use super::CoreContext;
use crate::codec::{self, role, HANDSHAKE_BODY_BYTES_MAX};
use crate::frame::{self, FrameHeader, HEADER_BYTES};
use crate::operation::{Operation, ProtocolError};
use bytes::BytesMut;
use futures::future::Either;
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Replies queued for the writer per connection.
const REPLY_QUEUE_MAX: usize = 64;

/// A reply frame and its share of the connection's reply budget (none for error frames,
/// which are small and end the connection anyway).
pub(crate) type Reply = (BytesMut, Option<glommio::sync::StaticPermit>);

pub(crate) async fn serve(stream: TcpStream, ctx: Rc<CoreContext>) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    // The TLS handshake (if any) and the protocol handshake must both be done by then.
    let deadline = Instant::now() + Duration::from_millis(ctx.config.handshake_timeout_ms);
    match ctx.tls.clone() {
        // Plain TCP: the halves of the glommio stream itself, so the per-frame path is the
        // same code as without TLS support (`serve_split` is monomorphized per stream type).
        None => {
            let (reader, writer) = stream.split();
            serve_split(reader, writer, peer, deadline, ctx).await;
        }
        Some(acceptor) => match before(deadline, &ctx.stop, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                let (reader, writer) = stream.split();
                serve_split(reader, writer, peer, deadline, ctx).await;
            }
            Ok(Err(e)) => tracing::info!(?peer, error = %e, "TLS handshake failed"),
            Err(Cut::TimedOut) => tracing::info!(?peer, "TLS handshake timed out"),
            Err(Cut::Stopping) => {}
        },
    }
}

/// Why `before` gave up on a future.
enum Cut {
    TimedOut,
    Stopping,
}

/// `f`, unless `deadline` passes or the server stops first.
async fn before<F: Future>(
    deadline: Instant,
    stop: &flume::Receiver<()>,
    f: F,
) -> Result<F::Output, Cut> {
    let timer = pin!(glommio::timer::sleep(
        deadline.saturating_duration_since(Instant::now())
    ));
    let stopped = pin!(stop.recv_async());
    match futures::future::select(pin!(f), futures::future::select(timer, stopped)).await {
        Either::Left((output, _)) => Ok(output),
        Either::Right((Either::Left(_), _)) => Err(Cut::TimedOut),
        Either::Right((Either::Right(_), _)) => Err(Cut::Stopping),
    }
}

/// A connection after its transport is set up: the protocol handshake (bounded by
/// `deadline`), then requests until either side stops.
async fn serve_split<R, W>(
    mut reader: R,
    mut writer: W,
    peer: Option<SocketAddr>,
    deadline: Instant,
    ctx: Rc<CoreContext>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + 'static,
{
    let handshake = handshake(&mut reader, &mut writer, &ctx, peer);
    match before(deadline, &ctx.stop, handshake).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(Cut::TimedOut) => {
            tracing::info!(
                ?peer,
                "closing a connection that did not complete its handshake in time"
            );
            return;
        }
        Err(Cut::Stopping) => return,
    }
    let (replies, reply_queue) = local_channel::new_bounded::<Reply>(REPLY_QUEUE_MAX);
    let replies = Rc::new(replies);
    let reply_budget = Rc::new(glommio::sync::Semaphore::new(
        ctx.config.reply_bytes_per_connection_max,
    ));
    // Dropped by the writer when it gives up: wakes the reader so the connection ends.
    let (writer_gone_tx, writer_gone) = flume::bounded::<()>(1);
    let stall = std::time::Duration::from_millis(ctx.config.write_stall_timeout_ms);
    let writer_task = glommio::spawn_local(async move {
        while let Some((frame, permit)) = reply_queue.recv().await {
            // The flush is free on plain TCP; TLS may keep the tail of a record until then.
            let write = Box::pin(async {
                writer.write_all(&frame).await?;
                writer.flush().await
            });
            let timeout = Box::pin(glommio::timer::sleep(stall));
            match futures::future::select(write, timeout).await {
                Either::Left((Ok(()), _)) => drop(permit),
                Either::Left((Err(_), _)) => break,
                Either::Right(_) => {
                    tracing::warn!(?peer, "closing a connection that does not read its replies");
                    break;
                }
            }
        }
        drop(writer_gone_tx);
        // Bounded too: closing a TLS stream first flushes what it buffered, which never ends
        // while the peer reads nothing, and this task (with the reply queue and the
        // connection's slot) would live as long as the peer keeps the socket open.
        let close = pin!(writer.close());
        let _ = futures::future::select(close, pin!(glommio::timer::sleep(stall))).await;
    });
    let requests = Rc::new(glommio::sync::Semaphore::new(
        ctx.config.requests_in_flight_per_connection_max,
    ));
    // Set when the read loop ends, so subscription tasks (which hold `replies`) stop too.
    let closed = Rc::new(std::cell::Cell::new(false));
    loop {
        let mut header_bytes = [0u8; HEADER_BYTES];
        let read = Box::pin(reader.read_exact(&mut header_bytes));
        let stopped = futures::future::select(
            Box::pin(ctx.stop.recv_async()),
            Box::pin(writer_gone.recv_async()),
        );
        match futures::future::select(read, stopped).await {
            Either::Left((Ok(()), _)) => {}
            Either::Left((Err(_), _)) => break, // closed (or cut mid-header)
            Either::Right(_) => break,          // the server is stopping
        }
        let header = match FrameHeader::decode(&header_bytes) {
            Ok(h) => h,
            Err(e) => {
                send_error(&replies, 0, 0, e.into(), &e.to_string()).await;
                break;
            }
        };
        // Both limits are waited for *before* reading the body: a client that floods us is
        // simply not read from.
        let Ok(bytes_permit) = ctx
            .bytes_in_flight
            .acquire_static_permit(header.body_len as u64 + HEADER_BYTES as u64)
            .await
        else {
            break;
        };
        let Ok(request_permit) = requests.acquire_static_permit(1).await else {
            break;
        };
        let mut body = BytesMut::zeroed(header.body_len as usize);
        if reader.read_exact(&mut body).await.is_err() {
            break;
        }
        if let Err(e) = header.check_body(&body) {
            send_error(
                &replies,
                header.operation,
                header.request_id,
                e.into(),
                &e.to_string(),
            )
            .await;
            break;
        }
        let ctx = ctx.clone();
        let replies = replies.clone();
        let reply_budget = reply_budget.clone();
        if header.operation == Operation::Subscribe as u8 {
            // Long-lived: holds one request slot of the connection until it closes.
            drop(bytes_permit);
            let outlet = super::subscription::Outlet {
                replies,
                reply_budget,
                closed: closed.clone(),
            };
            glommio::spawn_local(async move {
                super::subscription::serve(&ctx, header, &body, outlet).await;
                drop(request_permit);
            })
            .detach();
            continue;
        }
        glommio::spawn_local(async move {
            let reply = handle(&ctx, header, body.freeze()).await;
            // The request is done with the shards: its share of the core's budget goes back
            // now, whether or not the client ever reads the reply.
            drop(bytes_permit);
            let units = (reply.len() as u64).min(ctx.config.reply_bytes_per_connection_max);
            if let Ok(permit) = reply_budget.acquire_static_permit(units).await {
                let _ = replies.send((reply, Some(permit))).await;
            }
            drop(request_permit);
        })
        .detach();
    }
    closed.set(true);
    drop(replies);
    writer_task.await;
}

/// Reads the first frame, which must be an acceptable handshake, and answers it. `false`: the
/// connection is done (refused with an error frame, or closed by the peer); the writer is
/// closed then. The caller bounds the whole exchange in time.
async fn handshake<R, W>(
    reader: &mut R,
    writer: &mut W,
    ctx: &CoreContext,
    peer: Option<SocketAddr>,
) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let reply = async {
        let mut header_bytes = [0u8; HEADER_BYTES];
        reader.read_exact(&mut header_bytes).await.ok()?;
        let header = match FrameHeader::decode(&header_bytes) {
            Ok(h) => h,
            Err(e) => return Some(Err(error_frame(0, 0, e.into(), &e.to_string()))),
        };
        // Before the token is checked a connection may send a handshake and nothing larger:
        // a 1 MiB frame would reserve (and zero) 1 MiB of the core's read budget for the
        // whole handshake timeout, and a few hundred such connections would stall the core's
        // logged-in clients.
        if header.body_len as usize > HANDSHAKE_BODY_BYTES_MAX {
            let message = format!(
                "a {}-byte first frame; a handshake has at most {HANDSHAKE_BODY_BYTES_MAX}",
                header.body_len
            );
            let error = if header.operation == Operation::Handshake as u8 {
                ProtocolError::FrameTooLarge
            } else {
                ProtocolError::HandshakeRequired
            };
            return Some(Err(error_frame(
                header.operation,
                header.request_id,
                error,
                &message,
            )));
        }
        // The body's bytes count against the core's budget like any request's.
        let _bytes_permit = ctx
            .bytes_in_flight
            .acquire_static_permit(header.body_len as u64 + HEADER_BYTES as u64)
            .await
            .ok()?;
        let mut body = BytesMut::zeroed(header.body_len as usize);
        reader.read_exact(&mut body).await.ok()?;
        if let Err(e) = header.check_body(&body) {
            let error = error_frame(
                header.operation,
                header.request_id,
                e.into(),
                &e.to_string(),
            );
            return Some(Err(error));
        }
        Some(
            accept_handshake(ctx, &header, &body).map_err(|(error, message)| {
                tracing::info!(?peer, %error, "handshake refused");
                error_frame(header.operation, header.request_id, error, message)
            }),
        )
    }
    .await;
    let accepted = matches!(reply, Some(Ok(_)));
    if let Some(Ok(frame) | Err(frame)) = reply {
        if writer.write_all(&frame).await.is_err() || writer.flush().await.is_err() {
            return false;
        }
    }
    if !accepted {
        let _ = writer.close().await;
    }
    accepted
}

fn accept_handshake(
    ctx: &CoreContext,
    header: &FrameHeader,
    body: &[u8],
) -> Result<BytesMut, (ProtocolError, &'static str)> {
    if header.operation != Operation::Handshake as u8 {
        return Err((
            ProtocolError::HandshakeRequired,
            "the first frame must be a handshake",
        ));
    }
    let hello = codec::decode_handshake(body).map_err(|e| (e, "malformed handshake"))?;
    if hello.role != role::CLIENT {
        return Err((ProtocolError::AuthFailed, "this port serves clients only"));
    }
    if let Some(expected) = &ctx.config.auth_token {
        if !constant_time_eq(expected, &hello.token) {
            return Err((ProtocolError::AuthFailed, "wrong or missing token"));
        }
    }
    if hello.cluster_id != 0
        && ctx.config.cluster_id != 0
        && hello.cluster_id != ctx.config.cluster_id
    {
        return Err((
            ProtocolError::ClusterMismatch,
            "client expects another cluster",
        ));
    }
    let mut out = BytesMut::new();
    frame::encode_frame_with(
        &mut out,
        Operation::Handshake as u8,
        frame::flags::REPLY,
        header.request_id,
        |b| {
            codec::encode_handshake_reply(
                b,
                &codec::HandshakeReply {
                    partitions: ctx.node.partition_count(),
                    cluster_id: ctx.config.cluster_id,
                    node_id: ctx.config.node_id,
                },
            )
        },
    );
    Ok(out)
}

/// Compares without an early exit, so timing does not tell how much of a token matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

pub(crate) fn error_frame(
    operation: u8,
    request_id: u64,
    error: ProtocolError,
    message: &str,
) -> BytesMut {
    let mut out = BytesMut::new();
    frame::encode_frame_with(
        &mut out,
        operation,
        frame::flags::REPLY | frame::flags::ERROR,
        request_id,
        |b| codec::encode_error(b, error, message),
    );
    out
}

async fn send_error(
    replies: &LocalSender<Reply>,
    operation: u8,
    request_id: u64,
    error: ProtocolError,
    message: &str,
) {
    let _ = replies
        .send((error_frame(operation, request_id, error, message), None))
        .await;
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
