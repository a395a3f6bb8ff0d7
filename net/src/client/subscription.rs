//! A subscription: its own connection, on which the server pushes the subscribed changes as
//! they become durable (operation 23, docs/PROTOCOL.md). Blocking: `next` waits for the next
//! change. To resume after a disconnect, subscribe again from `resume_from()`: every change
//! comes exactly once, as long as the server still retains that position.

use super::connection::{handshake, read_frame};
use super::transport::Transport;
use super::{ClientConfig, ClientError};
use crate::codec::{self, Push, Subscribe};
use crate::frame::{self, FrameHeader, HEADER_BYTES};
use crate::operation::Operation;
use bytes::BytesMut;
use engine::read_model::{ChangeEvent, QueryError};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::time::Duration;

/// The request id of the subscribe request on its connection.
const SUBSCRIBE_REQUEST_ID: u64 = 1;

pub struct Subscription {
    stream: Transport,
    account: Option<u128>,
    /// Per subscribed partition: the position to resume from (after the last change seen).
    cursors: Vec<(u32, u64)>,
    buffered: VecDeque<(u32, ChangeEvent)>,
    /// Bytes read but not yet a whole frame (a read timeout can strike mid-frame).
    incoming: BytesMut,
}

/// Why `Subscription::next` stopped.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The server ended the subscription (e.g. the subscriber fell behind what it retains).
    #[error("subscription ended by the server: {0}")]
    Ended(QueryError),
    /// Refused at subscribe time (read model off, unknown account, start not retained).
    #[error("subscription refused: {0}")]
    Refused(QueryError),
}

impl Subscription {
    /// Subscribes to one account's changes (`account`), or to every change of every partition
    /// (`None`). `from`: start positions (inclusive; `read_model::FROM_NOW` = only new
    /// changes): one for an account, and for all changes either one per partition in
    /// partition order or one for every partition.
    pub fn open(
        config: &ClientConfig,
        account: Option<u128>,
        from: &[u64],
    ) -> Result<Subscription, SubscriptionError> {
        let mut stream = Transport::open(config)?;
        handshake(&mut stream, config)?;
        let mut body = BytesMut::new();
        codec::encode_subscribe(
            &mut body,
            &Subscribe {
                account,
                from: from.to_vec(),
            },
        );
        let mut frame = BytesMut::with_capacity(HEADER_BYTES + body.len());
        frame::encode_frame(
            &mut frame,
            Operation::Subscribe as u8,
            0,
            SUBSCRIBE_REQUEST_ID,
            &body,
        );
        stream
            .write_all(&frame)
            .and_then(|()| stream.flush())
            .map_err(disconnected)?;
        let (header, body) = read_frame(&mut stream).map_err(disconnected)?;
        if header.flags & frame::flags::ERROR != 0 {
            let (error, message) = codec::decode_error(&body);
            return Err(match error {
                Some(error) => ClientError::Refused { error, message },
                None => ClientError::BadReply,
            }
            .into());
        }
        if header.request_id != SUBSCRIBE_REQUEST_ID {
            return Err(ClientError::BadReply.into());
        }
        let cursors = codec::decode_subscribe_reply(&body, account.unwrap_or(0))
            .map_err(|_| ClientError::BadReply)?
            .map_err(SubscriptionError::Refused)?;
        stream
            .socket()
            .set_read_timeout(None)
            .map_err(disconnected)?;
        Ok(Subscription {
            stream,
            account,
            cursors,
            buffered: VecDeque::new(),
            incoming: BytesMut::new(),
        })
    }

    /// The next change (partition, change), waiting at most `timeout` (`None`: forever).
    /// `Ok(None)` when the timeout passed without one.
    pub fn next(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<(u32, ChangeEvent)>, SubscriptionError> {
        loop {
            if let Some((partition, change)) = self.buffered.pop_front() {
                if let Some(cursor) = self.cursors.iter_mut().find(|c| c.0 == partition) {
                    cursor.1 = cursor.1.max(change.position + 1);
                }
                return Ok(Some((partition, change)));
            }
            let Some((header, body)) = self.read_frame(timeout)? else {
                return Ok(None);
            };
            if header.flags & frame::flags::PUSH == 0
                || header.request_id != SUBSCRIBE_REQUEST_ID
                || header.operation != Operation::Subscribe as u8
            {
                return Err(ClientError::BadReply.into());
            }
            match codec::decode_push(&body, self.account.unwrap_or(0))
                .map_err(|_| ClientError::BadReply)?
            {
                Push::Changes(changes) => self.buffered.extend(changes),
                Push::Ended(why) => return Err(SubscriptionError::Ended(why)),
            }
        }
    }

    /// The next whole frame, or `None` when `timeout` passed first (partial bytes are kept).
    fn read_frame(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<(FrameHeader, BytesMut)>, ClientError> {
        self.stream
            .socket()
            .set_read_timeout(timeout.map(|t| t.max(Duration::from_millis(1))))
            .map_err(disconnected)?;
        loop {
            if self.incoming.len() >= HEADER_BYTES {
                let bytes: &[u8; HEADER_BYTES] = self.incoming[..HEADER_BYTES]
                    .try_into()
                    .map_err(|_| ClientError::BadReply)?;
                let header = FrameHeader::decode(bytes).map_err(|_| ClientError::BadReply)?;
                let end = HEADER_BYTES + header.body_len as usize;
                if self.incoming.len() >= end {
                    let mut frame = self.incoming.split_to(end);
                    let body = frame.split_off(HEADER_BYTES);
                    header
                        .check_body(&body)
                        .map_err(|_| ClientError::BadReply)?;
                    return Ok(Some((header, body)));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ClientError::Disconnected("closed by the server".into())),
                Ok(n) => self.incoming.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(disconnected(e)),
            }
        }
    }

    /// Where to resume after a disconnect: per subscribed partition, the position after the
    /// last change returned by `next` (or the start).
    pub fn resume_from(&self) -> Vec<(u32, u64)> {
        self.cursors.clone()
    }
}

fn disconnected(e: std::io::Error) -> ClientError {
    ClientError::Disconnected(e.to_string())
}
