//! One client connection: handshake, then a read loop that hands each request to its own task
//! (pipelining) and a writer task that sends replies as they complete (matched by request id).

use super::handler::handle;
use super::CoreContext;
use crate::codec::{self, role};
use crate::frame::{self, FrameHeader, HEADER_BYTES};
use crate::operation::{Operation, ProtocolError};
use bytes::BytesMut;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use std::rc::Rc;

/// Replies queued for the writer per connection.
const REPLY_QUEUE_MAX: usize = 64;

pub(crate) async fn serve(stream: TcpStream, ctx: Rc<CoreContext>) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.split();
    let (replies, reply_queue) = local_channel::new_bounded::<BytesMut>(REPLY_QUEUE_MAX);
    let replies = Rc::new(replies);
    let writer_task = glommio::spawn_local(async move {
        while let Some(frame) = reply_queue.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = writer.close().await;
    });
    let requests = Rc::new(glommio::sync::Semaphore::new(
        ctx.config.requests_in_flight_per_connection_max,
    ));
    let mut handshaken = false;
    loop {
        let mut header_bytes = [0u8; HEADER_BYTES];
        let read = Box::pin(reader.read_exact(&mut header_bytes));
        let stopped = Box::pin(ctx.stop.recv_async());
        match futures::future::select(read, stopped).await {
            futures::future::Either::Left((Ok(()), _)) => {}
            futures::future::Either::Left((Err(_), _)) => break, // closed (or cut mid-header)
            futures::future::Either::Right(_) => break,          // the server is stopping
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
        if !handshaken {
            match accept_handshake(&ctx, &header, &body) {
                Ok(reply) => {
                    handshaken = true;
                    let _ = replies.send(reply).await;
                    continue;
                }
                Err((error, message)) => {
                    tracing::info!(?peer, %error, "handshake refused");
                    send_error(
                        &replies,
                        header.operation,
                        header.request_id,
                        error,
                        message,
                    )
                    .await;
                    break;
                }
            }
        }
        let ctx = ctx.clone();
        let replies = replies.clone();
        glommio::spawn_local(async move {
            let reply = handle(&ctx, header, body.freeze()).await;
            let _ = replies.send(reply).await;
            drop((bytes_permit, request_permit));
        })
        .detach();
    }
    drop(replies);
    writer_task.await;
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
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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
    replies: &LocalSender<BytesMut>,
    operation: u8,
    request_id: u64,
    error: ProtocolError,
    message: &str,
) {
    let _ = replies
        .send(error_frame(operation, request_id, error, message))
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
