//! The task that owns one partition on its core: it takes requests off the partition's queue,
//! applies command batches in groups, makes each group durable with one fsync, and only then
//! answers. Reads are answered after the group's fsync too, so they never show a write that a
//! crash could still take back.
//!
//! It is also the TC/C coordinator for transfers whose source account lives here: it ships the
//! messages the state machine emits (after they are durable, batched per destination), keeps
//! the client's reply until each cross-partition transfer is decided, re-drives unfinished
//! records after a restart, and aborts a Try that gets no answer in time.

use super::config::Clock;
use super::coordinator::Coordinator;
use super::request::{fill_group, BatchReply, PartitionStats, PartitionTotals, Request};
use super::timing::GroupTiming;
use crate::command::{CommandBatch, BATCH_ITEMS_MAX};
use crate::digest::state_digest;
use crate::log::LogWriter;
use crate::model::TransferId;
use crate::partition::PartitionId;
use crate::read_model::{QueryError, ReadModel};
use crate::result_code::ResultCode;
use crate::snapshot::{write_snapshot, SnapshotCapture, SnapshotRetention, DAY_NS};
use crate::state_machine::{ApplyOutput, PartitionState};
use crate::tcc::{take_entry, TccMessage};
use futures::channel::oneshot;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct PartitionTask {
    pub state: PartitionState,
    pub writer: LogWriter,
    pub term: u64,
    pub snapshot_dir: PathBuf,
    pub snapshot_interval_entries: u64,
    pub snapshot_retention: SnapshotRetention,
    pub group_items_max: usize,
    pub replayed_entries: u64,
    pub last_snapshot_index: u64,
    /// UTC day (log time) of the last snapshot taken, or of the state recovered at start.
    pub last_snapshot_day: u64,
    pub snapshots_written: u64,
    pub fsyncs: u64,
    /// Apply and fsync time of every group that wrote to the log.
    pub timing: GroupTiming,
    /// Every partition's queue, by partition id (TC/C messages go through them).
    pub peers: Vec<flume::Sender<Request>>,
    pub tcc_try_timeout: Duration,
    /// Proposes log timestamps (floored so they only increase).
    pub clock: Clock,
    /// The CQRS read model, fed each applied entry's events (`None`: off).
    pub read_model: Option<ReadModel>,
}

/// A snapshot being written on a helper thread.
struct SnapshotInFlight {
    index: u64,
    done: oneshot::Receiver<Result<PathBuf, String>>,
}

/// A client batch's reply and the items of it that wait for a TC/C outcome.
type Answered = (
    oneshot::Sender<BatchReply>,
    BatchReply,
    Vec<(usize, TransferId)>,
);

/// A log entry appended in this group and not applied yet.
struct Staged {
    kind: u16,
    index: u64,
    timestamp: u64,
    /// The client batch it came from and its reply slot (`None` for the group's TC/C entry).
    batch: Option<(CommandBatch, oneshot::Sender<BatchReply>)>,
}

/// How long the apply waits before it starts, so the executor gets a turn to submit the
/// group's write: glommio hands queued I/O to the kernel only between task runs, and the apply
/// that follows keeps the thread busy for milliseconds.
const SUBMIT_TURN: Duration = Duration::from_micros(20);

/// The body buffer of the entry staged at `slot` (buffers are kept from group to group, so a
/// steady load allocates none).
fn next_body(
    bodies: &mut Vec<rkyv::util::AlignedVec<16>>,
    slot: usize,
) -> &mut rkyv::util::AlignedVec<16> {
    assert!(slot <= bodies.len(), "slots are used in order");
    if bodies.len() == slot {
        bodies.push(rkyv::util::AlignedVec::new());
    }
    &mut bodies[slot]
}

/// (item position, transfer id) of the items of `batch` that wait for a TC/C outcome.
fn pending_ids(batch: &CommandBatch, results: &[ResultCode]) -> Vec<(usize, TransferId)> {
    let CommandBatch::CreateTransfers(items) = batch else {
        return Vec::new();
    };
    results
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == ResultCode::Pending)
        .map(|(i, _)| (i, items[i].id))
        .collect()
}

/// How often the loop wakes to retry shipping messages and check Try timeouts while TC/C
/// work is outstanding.
const TCC_TICK: Duration = Duration::from_millis(2);

/// How often the loop wakes to retry writing while the disk is full and no request comes (the
/// writer itself touches the disk at most every 100 ms).
const FULL_TICK: Duration = Duration::from_millis(50);

impl PartitionTask {
    pub async fn run(mut self, requests: flume::Receiver<Request>) {
        let mut group: Vec<Request> = Vec::with_capacity(64);
        let mut replies: Vec<Answered> = Vec::with_capacity(64);
        // Entries appended this group and waiting to be applied; `bodies[i]` is the encoded
        // body of `staged[i]` (buffers reused from group to group).
        let mut staged: Vec<Staged> = Vec::with_capacity(64);
        let mut bodies: Vec<rkyv::util::AlignedVec<16>> = Vec::with_capacity(64);
        // (index, timestamp, range of `out.events`) of every entry applied this group, for the
        // read model, which is fed after the answers are sent.
        let mut deferred: Vec<(u64, u64, std::ops::Range<usize>)> = Vec::with_capacity(64);
        let mut out = ApplyOutput::default();
        let mut emitted: Vec<(PartitionId, TccMessage)> = Vec::new();
        let mut resolved: Vec<(TransferId, ResultCode)> = Vec::new();
        let mut failed: Option<String> = None;
        // The disk is full: the entries appended so far wait in the writer and their replies in
        // `replies` (with their TC/C effects in `emitted`/`resolved`) until a flush succeeds;
        // new command batches are refused with `storage_full` without being applied.
        let mut full = false;
        let mut snapshot: Option<SnapshotInFlight> = None;
        let mut coordinator = Coordinator::default();
        let mut stopping = false;
        let mut watchers = super::watchers::Watchers::default();

        // Recovery: move every unfinished TC/C that started here forward again.
        let redrive = self.state.tcc_redrive();
        coordinator.redrive(redrive.iter().map(|(_, m)| m.id));
        coordinator.queue(&redrive);
        coordinator.ship(&self.peers);

        while !stopping {
            // Wait for work; tick while TC/C work is outstanding or a full disk needs a retry.
            let next = if coordinator.has_work() || full {
                let every = if coordinator.has_work() {
                    TCC_TICK
                } else {
                    FULL_TICK
                };
                let recv = Box::pin(requests.recv_async());
                let tick = Box::pin(glommio::timer::sleep(every));
                match futures::future::select(recv, tick).await {
                    futures::future::Either::Left((r, _)) => Some(r),
                    futures::future::Either::Right(_) => None,
                }
            } else {
                Some(requests.recv_async().await)
            };
            match next {
                Some(Ok(first)) => group.push(first),
                Some(Err(_)) => break, // every sender is gone
                None => {}
            }
            fill_group(&requests, &mut group, self.group_items_max);
            // The timers act on the applied state. While a group waits for disk space (or
            // after the log failed) that state holds decisions that are not durable, and a
            // CONFIRM sent for one could outlive a crash that forgets the decision; the
            // overdue timers fire once the log is durable again.
            if self.writer.durable_index() == self.writer.last_index() && failed.is_none() {
                coordinator.abort_overdue(&self.state, self.tcc_try_timeout);
            }
            if full && failed.is_none() {
                // Retry what waits in the writer (throttled by the writer while still full).
                match self.writer.flush().await {
                    Ok(()) => {
                        self.fsyncs += 1;
                        full = false;
                    }
                    Err(e) if e.is_disk_full() => {}
                    Err(e) => failed = Some(e.to_string()),
                }
            }

            // 1. Append every command batch of the group to the log (not applied yet); incoming
            //    TC/C messages of the group become one more entry.
            let group_started = Instant::now();
            let mut reads = Vec::new();
            let mut tcc_in: Vec<TccMessage> = std::mem::take(&mut coordinator.local);
            let mut timestamp_floor = self.state.next_timestamp_floor();
            for request in group.drain(..) {
                match request {
                    Request::Commands {
                        batch,
                        reply,
                        enqueued,
                    } => {
                        self.timing
                            .queue
                            .record(group_started.saturating_duration_since(enqueued));
                        match self
                            .append(
                                &batch,
                                next_body(&mut bodies, staged.len()),
                                &mut timestamp_floor,
                                &mut failed,
                                &mut full,
                            )
                            .await
                        {
                            Ok((index, timestamp)) => staged.push(Staged {
                                kind: batch.kind(),
                                index,
                                timestamp,
                                batch: Some((batch, reply)),
                            }),
                            Err(code) => {
                                let _ = reply.send(BatchReply::refused(batch.len(), code));
                            }
                        }
                    }
                    Request::Tcc { messages } => tcc_in.extend(messages),
                    Request::Shutdown => stopping = true,
                    Request::Watch { wake } => watchers.add(wake),
                    other => reads.push(other),
                }
            }
            // Entries of at most BATCH_ITEMS_MAX messages each (`tcc::take_entry`).
            while !tcc_in.is_empty() {
                let batch = CommandBatch::Tcc(take_entry(&mut tcc_in, BATCH_ITEMS_MAX));
                match self
                    .append(
                        &batch,
                        next_body(&mut bodies, staged.len()),
                        &mut timestamp_floor,
                        &mut failed,
                        &mut full,
                    )
                    .await
                {
                    Ok((index, timestamp)) => staged.push(Staged {
                        kind: batch.kind(),
                        index,
                        timestamp,
                        batch: None,
                    }),
                    Err(ResultCode::StorageFull) => {
                        // Messages from other partitions must not be lost: log them later.
                        if let CommandBatch::Tcc(messages) = batch {
                            coordinator.local.extend(messages);
                        }
                    }
                    Err(_) => {} // the log is failed: the sources re-drive after a restart
                }
            }

            // 2. Make the group durable and apply it at the same time: the one durable write
            //    (O_DSYNC) is submitted first, then the state machine applies the entries while
            //    it is in flight. Nothing is answered before both are done, so applying ahead of
            //    durability is invisible outside this task (as it was when apply came first).
            let must_write =
                self.writer.last_index() > self.writer.durable_index() && failed.is_none() && !full;
            let writer = &mut self.writer;
            let state = &mut self.state;
            let write = async {
                if must_write {
                    let written = writer.flush().await;
                    Some((written, group_started.elapsed()))
                } else {
                    None
                }
            };
            let apply = async {
                if must_write {
                    // Give the executor one turn so it submits the write before the CPU is
                    // busy with the apply (glommio submits I/O only between task runs).
                    glommio::timer::sleep(SUBMIT_TURN).await;
                }
                out.clear();
                for (slot, entry) in staged.iter_mut().enumerate() {
                    let events_from = out.events.len();
                    state
                        .apply_entry(
                            entry.index,
                            entry.kind,
                            &bodies[slot],
                            entry.timestamp,
                            &mut out,
                        )
                        .expect("an entry this task encoded applies");
                    deferred.push((entry.index, entry.timestamp, events_from..out.events.len()));
                    emitted.append(&mut out.outbox);
                    resolved.append(&mut out.resolved);
                    let results = std::mem::take(&mut out.results);
                    if let Some((batch, reply)) = entry.batch.take() {
                        let pending = pending_ids(&batch, &results);
                        replies.push((
                            reply,
                            BatchReply {
                                results,
                                index: entry.index,
                                timestamp: entry.timestamp,
                            },
                            pending,
                        ));
                    }
                }
                group_started.elapsed()
            };
            let (written, applied) = futures::future::join(write, apply).await;
            staged.clear();
            if let Some((written, write_time)) = written {
                self.timing.apply.record(applied);
                self.timing.fsync.record(write_time);
                match written {
                    Ok(()) => self.fsyncs += 1,
                    Err(e) if e.is_disk_full() => full = true,
                    Err(e) => failed = Some(e.to_string()),
                }
            }

            // 3. Answers (durable now), held ones for running TC/Cs, then decided TC/Cs. While
            //    entries wait for disk space, nothing of this is durable: it all waits.
            let durable = self.writer.durable_index() == self.writer.last_index();
            if durable || failed.is_some() {
                for (reply, answer, pending) in replies.drain(..) {
                    if failed.is_some() {
                        let _ = reply.send(BatchReply::refused(
                            answer.results.len(),
                            ResultCode::StorageError,
                        ));
                    } else if pending.is_empty() {
                        let _ = reply.send(answer);
                    } else {
                        coordinator.hold(reply, answer, pending);
                    }
                }
                if failed.is_none() {
                    for (id, code) in resolved.drain(..) {
                        coordinator.resolve(id, code);
                    }
                    coordinator.queue(&emitted);
                } else {
                    // No decision of this partition becomes durable any more: the clients
                    // waiting for running TC/Cs learn that their outcome is unknown now,
                    // rather than when they time out (a restart decides them).
                    coordinator.refuse_held(ResultCode::StorageError);
                }
                resolved.clear();
                emitted.clear();
            }
            coordinator.ship(&self.peers);

            // 4. The read model follows (off the answers' critical path: it is eventually
            //    consistent by design, and reads below see it up to date).
            if let Some(model) = &mut self.read_model {
                for (index, timestamp, events) in deferred.drain(..) {
                    model.apply(index, timestamp, &out.events[events]);
                }
            }
            deferred.clear();
            watchers.notify(self.writer.durable_index());

            // 5. Reads see exactly the durable state.
            for read in reads {
                self.answer_read(read, &failed, full, &mut snapshot).await;
            }

            // 6. Snapshots: collect a finished one, start a new one when due.
            if let Some(inflight) = &mut snapshot {
                if let Ok(Some(result)) = inflight.done.try_recv() {
                    self.finish_snapshot(inflight.index, result);
                    snapshot = None;
                }
            }
            let due = (self.snapshot_interval_entries > 0
                && self.state.last_index()
                    >= self.last_snapshot_index + self.snapshot_interval_entries)
                || self.crossed_midnight();
            if due && snapshot.is_none() && failed.is_none() && !full {
                snapshot = Some(self.start_snapshot());
            }
        }

        // Shutdown. Everything answered was flushed; leave a snapshot so the next start
        // replays nothing. Clients still waiting on a TC/C see their reply channel close; the
        // records are durable and are re-driven at the next start.
        drop(coordinator);
        if let Some(inflight) = snapshot.take() {
            let result = inflight
                .done
                .await
                .unwrap_or_else(|_| Err("snapshot thread died".into()));
            self.finish_snapshot(inflight.index, result);
        }
        if failed.is_none() && !full && self.state.last_index() > self.last_snapshot_index {
            let inflight = self.start_snapshot();
            let result = inflight
                .done
                .await
                .unwrap_or_else(|_| Err("snapshot thread died".into()));
            self.finish_snapshot(inflight.index, result);
        }
        self.peers.clear();
        if let Err(e) = self.writer.close().await {
            tracing::error!(error = %e, "closing the log failed");
        }
    }

    /// Encodes `batch` into `body` and appends it to the log (durable at the next flush, applied
    /// by the caller). Its timestamp is the clock's, floored to `timestamp_floor`, which then
    /// moves past the entry's items (item `i` has timestamp + i). Refused, and not logged, with
    /// `storage_error` when the log is failed (and then it stays failed) or `storage_full`
    /// while the disk is full.
    async fn append(
        &mut self,
        batch: &CommandBatch,
        body: &mut rkyv::util::AlignedVec<16>,
        timestamp_floor: &mut u64,
        failed: &mut Option<String>,
        full: &mut bool,
    ) -> Result<(u64, u64), ResultCode> {
        if let Some(reason) = failed {
            tracing::debug!(%reason, "refusing a batch: the log is failed");
            return Err(ResultCode::StorageError);
        }
        if *full {
            return Err(ResultCode::StorageFull);
        }
        batch.encode_into(body);
        // Room first, before anything is applied: a flush when the buffer is full, the next
        // segment when this entry does not fit the active one. A full disk usually shows at
        // that preallocation, and then refuses this batch cleanly.
        let needs_segment = self.writer.needs_new_segment(body.len());
        if needs_segment || !self.writer.has_room(body.len()) {
            let made = if needs_segment {
                self.writer.prepare_segment(body.len()).await
            } else {
                self.writer.flush().await
            };
            match made {
                Ok(()) => self.fsyncs += 1,
                Err(e) if e.is_disk_full() => {
                    *full = true;
                    return Err(ResultCode::StorageFull);
                }
                Err(e) => {
                    *failed = Some(e.to_string());
                    return Err(ResultCode::StorageError);
                }
            }
        }
        let timestamp = self.clock.now_ns().max(*timestamp_floor);
        let index = match self.writer.append(self.term, timestamp, batch.kind(), body) {
            Ok(index) => index,
            Err(e) => {
                *failed = Some(e.to_string());
                return Err(ResultCode::StorageError);
            }
        };
        // As `PartitionState::advance` will: an empty entry still uses one timestamp.
        *timestamp_floor = timestamp + batch.len().max(1) as u64;
        Ok((index, timestamp))
    }

    async fn answer_read(
        &mut self,
        read: Request,
        failed: &Option<String>,
        full: bool,
        snapshot: &mut Option<SnapshotInFlight>,
    ) {
        match read {
            Request::Commands { .. }
            | Request::Tcc { .. }
            | Request::Shutdown
            | Request::Watch { .. } => {
                unreachable!("not reads")
            }
            Request::LookupAccounts { ids, reply, .. } => {
                let _ = reply.send(Ok(ids
                    .iter()
                    .map(|id| self.state.account(*id).copied())
                    .collect()));
            }
            Request::LookupTransfers { ids, reply, .. } => {
                let _ = reply.send(Ok(ids
                    .iter()
                    .map(|id| self.state.lookup_transfer(*id))
                    .collect()));
            }
            Request::History { query, reply } => {
                let answer = match &self.read_model {
                    Some(model) => model.history(&query),
                    None => Err(QueryError::Disabled),
                };
                let _ = reply.send(answer);
            }
            Request::BalanceAt { account, at, reply } => {
                let answer = match &self.read_model {
                    Some(model) => model.balance_at(account, at),
                    None => Err(QueryError::Disabled),
                };
                let _ = reply.send(answer);
            }
            Request::Totals { reply } => {
                let answer = match &self.read_model {
                    Some(model) => Ok(PartitionTotals {
                        position: model.read_position(),
                        by_currency: model.totals(),
                    }),
                    None => Err(QueryError::Disabled),
                };
                let _ = reply.send(answer);
            }
            Request::Events {
                from,
                account,
                limit,
                reply,
            } => {
                // Only what is durable: entries waiting for disk space are not shown.
                let below =
                    crate::read_model::position::position(self.writer.durable_index() + 1, 0);
                let answer = match &self.read_model {
                    Some(model) => model.events_since(from, below, account, limit),
                    None => Err(QueryError::Disabled),
                };
                let _ = reply.send(answer);
            }
            Request::Stats { digest, reply } => {
                let lag = self.read_model.as_ref().map_or(Default::default(), |m| {
                    m.lag(self.state.last_index(), self.state.last_timestamp())
                });
                let _ = reply.send(PartitionStats {
                    partition: self.state.partition(),
                    accounts: self.state.account_count() as u64,
                    transfers: self.state.transfer_count() as u64,
                    last_index: self.state.last_index(),
                    durable_index: self.writer.durable_index(),
                    replayed_entries: self.replayed_entries,
                    snapshots_written: self.snapshots_written,
                    fsyncs: self.fsyncs,
                    tcc_in_flight: self.state.tcc_in_flight() as u64,
                    read_model: self.read_model.is_some(),
                    read_model_position: self.read_model.as_ref().map_or(0, |m| m.read_position()),
                    read_model_lag_entries: lag.entries,
                    read_model_lag_ms: lag.ms,
                    storage_full: full,
                    storage_failed: failed.is_some(),
                    timing: self.timing,
                    digest: if digest { state_digest(&self.state) } else { 0 },
                    raft: None,
                });
            }
            Request::Membership { reply, .. } => {
                let _ = reply.send(Err(
                    "this node runs replication = \"local\": it has no cluster membership".into(),
                ));
            }
            Request::Snapshot { reply } => {
                if let Some(reason) = failed {
                    let _ = reply.send(Err(reason.clone()));
                    return;
                }
                if full {
                    // A snapshot covers durable entries only, and some wait for disk space.
                    let _ = reply.send(Err("the disk is full; retry when space returns".into()));
                    return;
                }
                if let Some(inflight) = snapshot.take() {
                    let result = inflight
                        .done
                        .await
                        .unwrap_or_else(|_| Err("snapshot thread died".into()));
                    self.finish_snapshot(inflight.index, result);
                }
                let inflight = self.start_snapshot();
                let index = inflight.index;
                let result = inflight
                    .done
                    .await
                    .unwrap_or_else(|_| Err("snapshot thread died".into()));
                let answer = result.clone().map(|_| index);
                self.finish_snapshot(index, result);
                let _ = reply.send(answer);
            }
        }
    }

    /// Log time entered a new UTC day since the last snapshot: take the day's first one, so
    /// each day with entries has a starting point (`SnapshotRetention` keeps the newest per
    /// day).
    fn crossed_midnight(&self) -> bool {
        self.snapshot_retention.daily_days > 0
            && self.state.last_index() > self.last_snapshot_index
            && self.state.last_timestamp() / DAY_NS > self.last_snapshot_day
    }

    /// Captures the state (a few ms) and writes it on a helper thread.
    fn start_snapshot(&mut self) -> SnapshotInFlight {
        assert_eq!(
            self.state.last_index(),
            self.writer.durable_index(),
            "snapshots only cover durable entries"
        );
        let capture = SnapshotCapture::take(&self.state, self.writer.last_term());
        let index = capture.meta.last_index;
        self.last_snapshot_day = self.state.last_timestamp() / DAY_NS;
        let dir = self.snapshot_dir.clone();
        let retention = self.snapshot_retention;
        let (done_tx, done_rx) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("snapshot-p{}", self.state.partition()))
            .spawn(move || {
                crate::background::leave_the_shard_core();
                let mut capture = capture;
                let result =
                    write_snapshot(&dir, &mut capture, retention).map_err(|e| e.to_string());
                let _ = done_tx.send(result);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the snapshot thread");
        }
        SnapshotInFlight {
            index,
            done: done_rx,
        }
    }

    fn finish_snapshot(&mut self, index: u64, result: Result<PathBuf, String>) {
        match result {
            Ok(path) => {
                tracing::info!(partition = self.state.partition(), index, path = %path.display(), "snapshot written");
                self.last_snapshot_index = self.last_snapshot_index.max(index);
                self.snapshots_written += 1;
            }
            Err(e) => {
                tracing::error!(partition = self.state.partition(), index, error = %e, "snapshot failed")
            }
        }
    }
}
