//! openraft's `RaftNetworkFactory`/`RaftNetwork` (RAFT_PLAN §2.5) over the node link.
//!
//! openraft asks the factory of a partition's Raft for one `RaftNetwork` per target node
//! (two, in fact: replication and snapshots each get their own). Ours are thin: a partition
//! id and a shared `PeerLink` to the target, the same one for every partition of this
//! executor, so all partitions' messages to a node travel on one connection.
//!
//! Errors, as openraft reacts to them:
//!
//! | what happened                                  | returned                         |
//! | ---------------------------------------------- | -------------------------------- |
//! | not connected / connection lost / filtered     | `Unreachable` (openraft backs off, `backoff()`) |
//! | the peer has no Raft for the partition, or it stopped | `Unreachable` (same)      |
//! | the peer could not take a snapshot (full disk) | `Network`, after a pause (below) |
//! | no reply within `RPCOption::hard_ttl()`        | `Timeout`                        |
//! | the peer's Raft failed (panic, storage)        | `RemoteError(Fatal)`             |
//! | a reply that does not decode or fit            | `Network` (retried at once)      |
//! | an AppendEntries over `MESSAGE_BYTES_MAX` bytes or `ENTRIES_PER_APPEND_MAX` entries | `PayloadTooLarge` (openraft sends fewer) |
//!
//! **Retries after a timeout.** openraft 0.9 bounds every AppendEntries by the heartbeat
//! interval (`replication/mod.rs`: `C::timeout(heartbeat_interval, ..)`), drops the call when
//! it passes, and at once sends the whole unacknowledged range again. On a follower that is a
//! heartbeat interval behind, the first copy is still queued on the link (or in the follower's
//! socket), so each retry adds the same megabytes to what the follower must read before it can
//! catch up (BENCHMARKS, eighteenth and nineteenth sessions). So an AppendEntries with entries
//! keeps its `ReplyTicket` here when openraft gives up on it (`unanswered`), and the next
//! AppendEntries with the same vote and `prev_log_id` (a retry) first waits, within its own
//! time, for *that* reply: a success answers the retry (`Success` when the first copy reached
//! as far, else `PartialSuccess(last entry of the first copy)`, and openraft sends only what
//! follows), a conflict or a higher vote answers it as well (both are about `prev_log_id` and
//! the vote, which the two share), and a failure sends the retry in full, as does the retry
//! after `APPEND_RETRIES_ON_EARLIER_COPY_MAX` have waited (a reply may never come: a link
//! filter drops it). Requests without entries (heartbeats) pass the unanswered one by; any
//! other request drops it (its reply no longer matters). The follower thus gets each entry
//! once; openraft's leader clock for that target is set at the retry's send time instead of
//! the first copy's, which openraft 0.9 uses only for its metrics (`millis_since_quorum_ack`).
//!
//! **Snapshots** (`full_snapshot`, feature `generic-snapshot-data`): the snapshot is a file
//! (`SnapshotHandle::path`); it is streamed in chunks of `snapshot_chunk_bytes`, each
//! acknowledged before the next is sent (so one chunk per transfer is in flight, and a slow
//! receiver slows the sender instead of filling its queues), `cancel` is checked around every
//! chunk, and a final `SnapshotInstall` carries openraft's meta; the receiver installs the
//! file through `Raft::install_full_snapshot` and answers with its vote. The file is read
//! with blocking `pread`s on the executor: about a millisecond per MiB chunk from the page
//! cache; moving it to glommio's DMA reads is left for the wiring step.
//!
//! A transfer the receiver refused (it could not store the file: a full disk) is reported
//! only after the link's longest reconnect backoff (`reconnect_backoff_max_ms`), unless the
//! replication closes first: openraft sends the snapshot again as soon as it hears, and a
//! follower whose disk is full would otherwise get it hundreds of times a second (each time a
//! file created, written, failed and deleted, and a warning in its log).

use super::limits::{
    APPEND_RETRIES_ON_EARLIER_COPY_MAX, ENTRIES_PER_APPEND_MAX, MESSAGE_BYTES_MAX,
    SNAPSHOT_CHUNK_BYTES_MAX,
};
use super::message::{
    Failure, FailureCode, LinkReply, LinkRequest, SnapshotChunk, SnapshotInstall,
};
use super::peer::{within, CallError, PeerLink, ReplyTicket};
use super::stats::LinkCounters;
use super::LinkShared;
use bytes::Bytes;
use engine::raft::{NodeAddr, WalletRaft};
use openraft::error::InstallSnapshotError;
use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use openraft::{AnyError, ErrorSubject, ErrorVerb, LogId, RaftLogId, StorageIOError, Vote};
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

type RpcError = RPCError<u64, NodeAddr, RaftError<u64>>;

/// The network factory of one partition's Raft (`RaftLink::network`).
pub struct LinkNetworkFactory {
    pub(super) link: Rc<LinkShared>,
    pub(super) partition: u32,
}

impl RaftNetworkFactory<WalletRaft> for LinkNetworkFactory {
    type Network = LinkNetwork;

    /// Never connects: the shared link connects on its first message.
    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> LinkNetwork {
        LinkNetwork {
            peer: self.link.peer(target, &node.raft_addr),
            counters: self.link.counters.clone(),
            unanswered: None,
            node_id: self.link.config.node_id,
            target,
            partition: self.partition,
            config_backoff_ms: (
                self.link.config.reconnect_backoff_min_ms,
                self.link.config.reconnect_backoff_max_ms,
            ),
            install_timeout: Duration::from_millis(self.link.config.snapshot_install_timeout_ms),
            chunk_bytes: self
                .link
                .config
                .snapshot_chunk_bytes
                .clamp(1, SNAPSHOT_CHUNK_BYTES_MAX),
        }
    }
}

/// One partition's Raft talking to one target node.
pub struct LinkNetwork {
    peer: Rc<PeerLink>,
    counters: Arc<LinkCounters>,
    /// The last AppendEntries with entries that openraft stopped waiting for before its reply
    /// came (module docs, "Retries after a timeout"). At most one: it holds one pending reply.
    unanswered: Option<UnansweredAppend>,
    node_id: u64,
    target: u64,
    partition: u32,
    config_backoff_ms: (u64, u64),
    install_timeout: Duration,
    chunk_bytes: usize,
}

/// An AppendEntries still on its way (or being answered) whose caller gave up.
struct UnansweredAppend {
    vote: Vote<u64>,
    prev_log_id: Option<LogId<u64>>,
    /// Its last entry's id: how far a success reaches.
    last_log_id: LogId<u64>,
    ticket: ReplyTicket,
    /// Retries that waited for this reply so far (`APPEND_RETRIES_ON_EARLIER_COPY_MAX`).
    retries_waited: u32,
}

/// What a failed call means to openraft, before it is put in the error type of the method.
enum Failed {
    Unreachable(Unreachable),
    Timeout,
    Network(NetworkError),
    Fatal(Fatal<u64>),
}

fn classify(error: CallError) -> Failed {
    let other = |message: String| std::io::Error::other(message);
    match error {
        CallError::Unreachable(m) => Failed::Unreachable(Unreachable::new(&other(m))),
        CallError::Timeout => Failed::Timeout,
        CallError::BadReply(m) => Failed::Network(NetworkError::new(&other(m))),
        CallError::Remote(f) => match f.code {
            FailureCode::NoSuchPartition | FailureCode::RaftStopped | FailureCode::Busy => {
                Failed::Unreachable(Unreachable::new(&other(f.message)))
            }
            FailureCode::RaftPanicked => Failed::Fatal(Fatal::Panicked),
            FailureCode::Storage => Failed::Fatal(Fatal::StorageError(
                StorageIOError::new(
                    ErrorSubject::Store,
                    ErrorVerb::Write,
                    AnyError::error(f.message),
                )
                .into(),
            )),
            FailureCode::SnapshotTransfer => Failed::Network(NetworkError::new(&other(f.message))),
        },
    }
}

fn unexpected(reply: LinkReply) -> CallError {
    CallError::BadReply(format!("a reply of kind {} to another kind", reply.kind()))
}

impl LinkNetwork {
    fn rpc_error(&self, action: RPCTypes, timeout: Duration, error: CallError) -> RpcError {
        match classify(error) {
            Failed::Unreachable(u) => RPCError::Unreachable(u),
            Failed::Timeout => RPCError::Timeout(self.timeout(action, timeout)),
            Failed::Network(n) => RPCError::Network(n),
            Failed::Fatal(f) => {
                RPCError::RemoteError(RemoteError::new(self.target, RaftError::Fatal(f)))
            }
        }
    }

    fn streaming_error(
        &self,
        timeout: Duration,
        error: CallError,
    ) -> StreamingError<WalletRaft, Fatal<u64>> {
        match classify(error) {
            Failed::Unreachable(u) => StreamingError::Unreachable(u),
            Failed::Timeout => {
                StreamingError::Timeout(self.timeout(RPCTypes::InstallSnapshot, timeout))
            }
            Failed::Network(n) => StreamingError::Network(n),
            Failed::Fatal(f) => StreamingError::RemoteError(RemoteError::new(self.target, f)),
        }
    }

    fn timeout(&self, action: RPCTypes, timeout: Duration) -> Timeout<u64> {
        Timeout {
            action,
            id: self.node_id,
            target: self.target,
            timeout,
        }
    }

    async fn call(&self, request: &LinkRequest, timeout: Duration) -> Result<LinkReply, CallError> {
        let mut body = Vec::new();
        request.encode(&mut body);
        self.peer
            .call(self.partition, request.kind(), body, timeout)
            .await
    }

    /// The answer to `rpc` that an earlier, unanswered AppendEntries gives, if it is a retry
    /// of it (module docs, "Retries after a timeout"); `None`: send `rpc` itself. Waits for
    /// that reply until `deadline` (then `Timeout`, and the earlier request stays kept).
    async fn answer_from_unanswered(
        &mut self,
        rpc: &AppendEntriesRequest<WalletRaft>,
        deadline: Pin<&mut glommio::timer::Timer>,
    ) -> Result<Option<AppendEntriesResponse<u64>>, CallError> {
        let Some(rpc_last) = rpc.entries.last().map(|e| *e.get_log_id()) else {
            return Ok(None); // a heartbeat: it passes by
        };
        let Some(earlier) = self.unanswered.as_mut() else {
            return Ok(None);
        };
        // The same leader's log from the same point: the two agree wherever both reach
        // (Raft's log matching); the check on the shared last id is a cheap guard of that.
        let agrees = rpc
            .entries
            .iter()
            .find(|e| e.get_log_id().index == earlier.last_log_id.index)
            .is_none_or(|e| *e.get_log_id() == earlier.last_log_id);
        let retry = earlier.vote == rpc.vote && earlier.prev_log_id == rpc.prev_log_id && agrees;
        if retry {
            self.counters.append_retried_unanswered();
        }
        if !retry || earlier.retries_waited >= APPEND_RETRIES_ON_EARLIER_COPY_MAX {
            self.unanswered = None;
            return Ok(None);
        }
        earlier.retries_waited += 1;
        let reply = within(deadline, earlier.ticket.reply()).await;
        if reply == Err(CallError::Timeout) {
            return Err(CallError::Timeout);
        }
        let earlier_last = earlier.last_log_id;
        self.unanswered = None;
        let reached = |matching: Option<LogId<u64>>| match matching {
            Some(m) if m.index < rpc_last.index => AppendEntriesResponse::PartialSuccess(Some(m)),
            _ => AppendEntriesResponse::Success,
        };
        let answer = match reply {
            Ok(LinkReply::AppendEntries(AppendEntriesResponse::Success)) => {
                reached(Some(earlier_last))
            }
            Ok(LinkReply::AppendEntries(AppendEntriesResponse::PartialSuccess(matching))) => {
                match matching {
                    None => return Ok(None), // nothing matched: send the retry itself
                    m @ Some(_) => reached(m),
                }
            }
            Ok(LinkReply::AppendEntries(r @ AppendEntriesResponse::Conflict))
            | Ok(LinkReply::AppendEntries(r @ AppendEntriesResponse::HigherVote(_))) => r,
            // A failure or an odd reply: the retry goes out in full.
            _ => return Ok(None),
        };
        self.counters.append_answered_by_earlier();
        Ok(Some(answer))
    }

    /// Waits `reconnect_backoff_max_ms` after the receiver refused a snapshot transfer
    /// (module docs), or until the replication closes.
    async fn pause_after_refusal(
        &self,
        failure: &Failure,
        cancel: Pin<&mut impl Future<Output = ReplicationClosed>>,
    ) {
        if failure.code != FailureCode::SnapshotTransfer {
            return;
        }
        let pause = glommio::timer::sleep(Duration::from_millis(self.config_backoff_ms.1));
        futures::future::select(pin!(pause), cancel).await;
    }
}

impl RaftNetwork<WalletRaft> for LinkNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<WalletRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcError> {
        let timeout = option.hard_ttl();
        let mut deadline = pin!(glommio::timer::Timer::new(timeout));
        match self.answer_from_unanswered(&rpc, deadline.as_mut()).await {
            Ok(Some(answer)) => return Ok(answer),
            Ok(None) => {}
            Err(e) => return Err(self.rpc_error(RPCTypes::AppendEntries, timeout, e)),
        }
        let entries = rpc.entries.len() as u64;
        if rpc.entries.len() > ENTRIES_PER_APPEND_MAX {
            // Only with `max_payload_entries` set above the link's limit.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(ENTRIES_PER_APPEND_MAX as u64),
            ));
        }
        let (vote, prev_log_id) = (rpc.vote, rpc.prev_log_id);
        let last_log_id = rpc.entries.last().map(|e| *e.get_log_id());
        let request = LinkRequest::AppendEntries(rpc);
        let mut body = Vec::new();
        request.encode(&mut body);
        if body.len() > MESSAGE_BYTES_MAX {
            // Our log's bodies are at most 16 MiB, so one entry always fits.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint((entries / 2).max(1)),
            ));
        }
        let sent = within(
            deadline.as_mut(),
            self.peer.send(self.partition, request.kind(), body),
        )
        .await;
        let reply = match (sent, last_log_id) {
            (Err(e), _) => Err(e),
            (Ok(mut ticket), None) => within(deadline.as_mut(), ticket.reply()).await,
            (Ok(ticket), Some(last_log_id)) => {
                // Kept where a dropped call leaves it (module docs).
                let unanswered = self.unanswered.insert(UnansweredAppend {
                    vote,
                    prev_log_id,
                    last_log_id,
                    ticket,
                    retries_waited: 0,
                });
                let reply = within(deadline.as_mut(), unanswered.ticket.reply()).await;
                if reply != Err(CallError::Timeout) {
                    self.unanswered = None;
                }
                reply
            }
        };
        match reply {
            Ok(LinkReply::AppendEntries(r)) => Ok(r),
            Ok(LinkReply::Failure(f)) => {
                Err(self.rpc_error(RPCTypes::AppendEntries, timeout, CallError::Remote(f)))
            }
            Ok(other) => Err(self.rpc_error(RPCTypes::AppendEntries, timeout, unexpected(other))),
            Err(e) => Err(self.rpc_error(RPCTypes::AppendEntries, timeout, e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcError> {
        let timeout = option.hard_ttl();
        match self.call(&LinkRequest::Vote(rpc), timeout).await {
            Ok(LinkReply::Vote(r)) => Ok(r),
            Ok(LinkReply::Failure(f)) => {
                Err(self.rpc_error(RPCTypes::Vote, timeout, CallError::Remote(f)))
            }
            Ok(other) => Err(self.rpc_error(RPCTypes::Vote, timeout, unexpected(other))),
            Err(e) => Err(self.rpc_error(RPCTypes::Vote, timeout, e)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<WalletRaft>,
        cancel: impl Future<Output = ReplicationClosed> + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<WalletRaft, Fatal<u64>>> {
        let meta = snapshot.meta;
        let unreadable = |e: std::io::Error| -> StreamingError<WalletRaft, Fatal<u64>> {
            StreamingError::StorageError(
                StorageIOError::read_snapshot(Some(meta.signature()), &e).into(),
            )
        };
        let file = std::fs::File::open(&snapshot.snapshot.path).map_err(unreadable)?;
        let total_bytes = file.metadata().map_err(unreadable)?.len();
        let chunk_timeout = option.hard_ttl();
        let mut cancel = pin!(cancel);
        let mut offset = 0u64;
        loop {
            let len = (total_bytes - offset).min(self.chunk_bytes as u64) as usize;
            let mut data = vec![0u8; len];
            file.read_exact_at(&mut data, offset).map_err(unreadable)?;
            let request = LinkRequest::SnapshotChunk(SnapshotChunk {
                vote,
                snapshot_id: meta.snapshot_id.clone(),
                offset,
                data: Bytes::from(data),
            });
            let sent = pin!(self.call(&request, chunk_timeout));
            let reply = match futures::future::select(sent, cancel.as_mut()).await {
                futures::future::Either::Left((reply, _)) => reply,
                futures::future::Either::Right((closed, _)) => {
                    return Err(StreamingError::Closed(closed))
                }
            };
            offset += len as u64;
            match reply {
                Ok(LinkReply::ChunkAck { received_bytes }) if received_bytes == offset => {}
                Ok(LinkReply::ChunkAck { received_bytes }) => {
                    let e = CallError::BadReply(format!(
                        "the receiver has {received_bytes} bytes, {offset} were sent"
                    ));
                    return Err(self.streaming_error(chunk_timeout, e));
                }
                Ok(LinkReply::Failure(f)) => {
                    self.pause_after_refusal(&f, cancel.as_mut()).await;
                    return Err(self.streaming_error(chunk_timeout, CallError::Remote(f)));
                }
                Ok(other) => return Err(self.streaming_error(chunk_timeout, unexpected(other))),
                Err(e) => return Err(self.streaming_error(chunk_timeout, e)),
            }
            if offset >= total_bytes {
                break;
            }
        }
        let request = LinkRequest::SnapshotInstall(SnapshotInstall {
            vote,
            total_bytes,
            meta,
        });
        let sent = pin!(self.call(&request, self.install_timeout));
        let reply = match futures::future::select(sent, cancel.as_mut()).await {
            futures::future::Either::Left((reply, _)) => reply,
            futures::future::Either::Right((closed, _)) => {
                return Err(StreamingError::Closed(closed))
            }
        };
        match reply {
            Ok(LinkReply::Snapshot(r)) => Ok(r),
            Ok(LinkReply::Failure(f)) => {
                self.pause_after_refusal(&f, cancel.as_mut()).await;
                Err(self.streaming_error(self.install_timeout, CallError::Remote(f)))
            }
            Ok(other) => Err(self.streaming_error(self.install_timeout, unexpected(other))),
            Err(e) => Err(self.streaming_error(self.install_timeout, e)),
        }
    }

    /// Chunked snapshots are openraft's other transfer; with `generic-snapshot-data` it never
    /// calls this, and walletd sends every snapshot through `full_snapshot`.
    #[allow(deprecated)]
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<WalletRaft>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, NodeAddr, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(RPCError::Network(NetworkError::new(&std::io::Error::other(
            "the node link sends snapshots whole (full_snapshot), not in install_snapshot chunks",
        ))))
    }

    /// Exponential from the link's reconnect backoff (openraft's default is a constant
    /// 500 ms, long next to our election timeouts once a peer comes back).
    fn backoff(&self) -> Backoff {
        let (min_ms, max_ms) = self.config_backoff_ms;
        let mut next_ms = min_ms.max(1);
        Backoff::new(std::iter::from_fn(move || {
            let now = next_ms;
            next_ms = (next_ms * 2).min(max_ms.max(min_ms));
            Some(Duration::from_millis(now))
        }))
    }
}
