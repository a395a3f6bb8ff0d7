//! The node link's handshake: the client protocol's Handshake frame (docs/PROTOCOL.md) with
//! role `PEER` and the cluster's peer token. The two ports refuse each other's role, so a
//! client that dials the link port, or a node that dials a client port, is turned away by
//! its first frame (`auth_failed`), before anything else is read.
//!
//! The acceptor answers with the client protocol's HandshakeReply (`partitions` = 0, its
//! `node_id`): the dialer checks that it reached the node it meant to (a stale address that
//! now belongs to another node must not get that node's Raft messages).

use super::io::{read_frame, LinkIoError};
use crate::codec::{self, role, Handshake, HandshakeReply, TOKEN_BYTES_MAX};
use crate::frame::{self, flags};
use crate::operation::{Operation, ProtocolError};
use crate::server::connection::{constant_time_eq, error_frame};
use bytes::BytesMut;
use futures::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

pub use crate::codec::HANDSHAKE_BODY_BYTES_MAX;

/// Dialer side: presents `token`, returns the acceptor's node id.
pub async fn offer<R, W>(
    reader: &mut R,
    writer: &mut W,
    token: &[u8],
    cluster_id: u64,
) -> Result<u64, LinkIoError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if token.len() > TOKEN_BYTES_MAX {
        return Err(LinkIoError::Protocol("the peer token is too long".into()));
    }
    let mut out = BytesMut::new();
    frame::encode_frame_with(&mut out, Operation::Handshake as u8, 0, 0, |b| {
        codec::encode_handshake(
            b,
            &Handshake {
                role: role::PEER,
                cluster_id,
                token: token.to_vec(),
            },
        )
    });
    writer.write_all(&out).await?;
    writer.flush().await?;
    let (header, body) = read_frame(reader, HANDSHAKE_BODY_BYTES_MAX).await?;
    if header.operation != Operation::Handshake as u8 || header.flags & flags::REPLY == 0 {
        return Err(LinkIoError::Protocol(
            "the peer did not answer the handshake".into(),
        ));
    }
    if header.flags & flags::ERROR != 0 {
        let (error, message) = codec::decode_error(&body);
        return Err(LinkIoError::Refused { error, message });
    }
    let reply = codec::decode_handshake_reply(&body)
        .map_err(|e| LinkIoError::Protocol(format!("handshake reply: {e}")))?;
    Ok(reply.node_id)
}

/// Acceptor side: the check of the first frame's body. `Ok` holds the reply frame to send,
/// `Err` the error frame (the connection closes after it).
pub fn accept(
    header: &frame::FrameHeader,
    body: &[u8],
    expected_token: &[u8],
    cluster_id: u64,
    node_id: u64,
) -> Result<BytesMut, BytesMut> {
    let refuse = |error: ProtocolError, message: &str| {
        Err(error_frame(
            header.operation,
            header.request_id,
            error,
            message,
        ))
    };
    if header.operation != Operation::Handshake as u8 {
        return refuse(
            ProtocolError::HandshakeRequired,
            "the first frame must be a handshake",
        );
    }
    let hello = match codec::decode_handshake(body) {
        Ok(h) => h,
        Err(e) => return refuse(e, "malformed handshake"),
    };
    if hello.role != role::PEER {
        return refuse(
            ProtocolError::AuthFailed,
            "this port serves cluster nodes only",
        );
    }
    if !constant_time_eq(expected_token, &hello.token) {
        return refuse(ProtocolError::AuthFailed, "wrong or missing peer token");
    }
    if hello.cluster_id != 0 && cluster_id != 0 && hello.cluster_id != cluster_id {
        return refuse(ProtocolError::ClusterMismatch, "a node of another cluster");
    }
    let mut out = BytesMut::new();
    frame::encode_frame_with(
        &mut out,
        Operation::Handshake as u8,
        flags::REPLY,
        header.request_id,
        |b| {
            codec::encode_handshake_reply(
                b,
                &HandshakeReply {
                    partitions: 0,
                    cluster_id,
                    node_id,
                },
            )
        },
    );
    Ok(out)
}
