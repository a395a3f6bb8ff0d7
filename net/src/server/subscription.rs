//! Subscriptions (operation 23): after the reply, the server pushes the subscribed changes as
//! they become durable, in frames with the `PUSH` flag and the subscribe request's id, until
//! the connection closes.
//!
//! The task asks each subscribed partition's read model for changes from its cursor on
//! (`Node::events`, answered after the partition's group commit, durable changes only), pushes
//! what it gets and moves the cursor past it; idle, it waits until a subscribed partition
//! reports a group commit (`Node::watch`), or `POLL_IDLE` at most. Each push goes
//! through the connection's reply budget, so a subscriber that does not read stops the polling
//! (and is disconnected by the writer's stall timeout). A subscriber too far behind (its
//! cursor fell out of the partition's retained ring) gets a final push saying so.

use super::connection::Reply;
use super::CoreContext;
use crate::codec::{self, Subscribe};
use crate::frame::{self, FrameHeader};
use crate::operation::{Operation, ProtocolError};
use bytes::BytesMut;
use engine::read_model::{QueryError, EVENTS_PAGE_MAX, FROM_NOW};
use glommio::channels::local_channel::LocalSender;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

/// Longest wait between polls when nothing new came (wake-ups normally come first).
const POLL_IDLE: Duration = Duration::from_millis(100);
/// Pause between polls for a subscription no partition wakes.
const POLL_FALLBACK: Duration = Duration::from_millis(2);

/// What a subscription task needs from its connection.
pub(crate) struct Outlet {
    pub replies: Rc<LocalSender<Reply>>,
    pub reply_budget: Rc<glommio::sync::Semaphore>,
    /// Set when the connection's reader stops: the subscription ends.
    pub closed: Rc<Cell<bool>>,
}

impl Outlet {
    /// Queues a frame within the connection's reply budget; false when the connection is gone.
    async fn send(&self, ctx: &CoreContext, frame: BytesMut) -> bool {
        let units = (frame.len() as u64).min(ctx.config.reply_bytes_per_connection_max);
        match self.reply_budget.acquire_static_permit(units).await {
            Ok(permit) => self.replies.send((frame, Some(permit))).await.is_ok(),
            Err(_) => false,
        }
    }
}

fn frame_of(request_id: u64, flags: u16, body: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut out = BytesMut::new();
    frame::encode_frame_with(
        &mut out,
        Operation::Subscribe as u8,
        flags,
        request_id,
        body,
    );
    out
}

pub(crate) async fn serve(ctx: &CoreContext, header: FrameHeader, body: &[u8], outlet: Outlet) {
    let id = header.request_id;
    let request = match codec::decode_subscribe(body) {
        Ok(r) => r,
        Err(e) => {
            let error = super::connection::error_frame(
                header.operation,
                id,
                e,
                "the body does not match the operation's layout",
            );
            let _ = outlet.replies.send((error, None)).await;
            return;
        }
    };
    if let Err(message) = check_start_count(&request, ctx.node.partition_count()) {
        let error = super::connection::error_frame(
            header.operation,
            id,
            ProtocolError::MalformedBody,
            &message,
        );
        let _ = outlet.replies.send((error, None)).await;
        return;
    }
    let mut cursors = match start(ctx, &request).await {
        Ok(Ok(cursors)) => cursors,
        Ok(Err(why)) => {
            let reply = frame_of(id, frame::flags::REPLY, |b| {
                codec::encode_subscribe_reply(b, &Err(why))
            });
            outlet.send(ctx, reply).await;
            return;
        }
        Err(()) => return, // shutting down
    };
    let reply = frame_of(id, frame::flags::REPLY, |b| {
        codec::encode_subscribe_reply(b, &Ok(cursors.clone()))
    });
    if !outlet.send(ctx, reply).await {
        return;
    }
    // Wake-ups after each group commit of a subscribed partition (one pending at most: they
    // coalesce). Registered before the first poll, so no commit goes unnoticed.
    let (wake, woken) = flume::bounded::<()>(1);
    for (partition, _) in &cursors {
        if ctx.node.watch(*partition, wake.clone()).await.is_err() {
            return;
        }
    }
    drop(wake);
    let push = frame::flags::REPLY | frame::flags::PUSH;
    while !outlet.closed.get() {
        let mut busy = false;
        for (partition, from) in cursors.iter_mut() {
            let Ok(answer) = ctx
                .node
                .events(*partition, *from, request.account, EVENTS_PAGE_MAX)
                .await
            else {
                return; // the node is shutting down
            };
            match answer {
                Ok(page) => {
                    *from = page.next_from;
                    if page.events.is_empty() {
                        continue;
                    }
                    busy |= page.events.len() == EVENTS_PAGE_MAX;
                    let p = *partition;
                    let frame =
                        frame_of(id, push, |b| codec::encode_push_changes(b, p, &page.events));
                    if !outlet.send(ctx, frame).await {
                        return;
                    }
                }
                Err(why) => {
                    let frame = frame_of(id, push, |b| codec::encode_push_end(b, &why));
                    outlet.send(ctx, frame).await;
                    return;
                }
            }
        }
        if !busy {
            let woken = Box::pin(woken.recv_async());
            let timer = Box::pin(glommio::timer::sleep(POLL_IDLE));
            if let futures::future::Either::Left((Err(_), _)) =
                futures::future::select(woken, timer).await
            {
                // No partition keeps our wake-up channel (its watcher list was full): poll.
                glommio::timer::sleep(POLL_FALLBACK).await;
            }
        }
    }
}

/// An account's subscription starts at one position (its partition's); one for all changes
/// starts either each partition at its own position or all at the same one. Any other count
/// is refused rather than guessed at: taking the first start for every partition would send a
/// resuming subscriber changes it already had, or skip some.
fn check_start_count(request: &Subscribe, partition_count: u32) -> Result<(), String> {
    let count = request.from.len();
    match request.account {
        Some(_) if count != 1 => Err(format!(
            "an account's subscription takes 1 start position, not {count}"
        )),
        None if count != 1 && count != partition_count as usize => Err(format!(
            "a subscription to all changes takes 1 start position or 1 per partition \
             ({partition_count}), not {count}"
        )),
        _ => Ok(()),
    }
}

/// The subscribed partitions and their start positions (`FROM_NOW` resolved), after checking
/// each start against the partition's retained changes. `Err(())`: the node is stopping.
async fn start(
    ctx: &CoreContext,
    request: &Subscribe,
) -> Result<Result<Vec<(u32, u64)>, QueryError>, ()> {
    let node = &ctx.node;
    let partitions: Vec<u32> = match request.account {
        Some(account) => vec![node.partition_of(account)],
        None => (0..node.partition_count()).collect(),
    };
    let from_of = |i: usize| -> u64 {
        if request.from.len() == partitions.len() {
            request.from[i]
        } else {
            request.from[0]
        }
    };
    let mut cursors = Vec::with_capacity(partitions.len());
    for (i, &p) in partitions.iter().enumerate() {
        let mut from = from_of(i);
        if from == FROM_NOW {
            let stats = node.counters(p).await.map_err(|_| ())?;
            if !stats.read_model {
                return Ok(Err(QueryError::Disabled));
            }
            from = stats.read_model_position + 1;
        }
        // Validates the start (retained? account known?) without moving past anything.
        if let Err(e) = node
            .events(p, from, request.account, 1)
            .await
            .map_err(|_| ())?
        {
            return Ok(Err(e));
        }
        cursors.push((p, from));
    }
    Ok(Ok(cursors))
}
