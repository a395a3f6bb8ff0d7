//! The task that owns one partition on its core: it takes requests off the partition's queue,
//! applies command batches in groups, makes each group durable with one fsync, and only then
//! answers. Reads are answered after the group's fsync too, so they never show a write that a
//! crash could still take back.

use super::request::{BatchReply, PartitionStats, Request};
use crate::digest::state_digest;
use crate::event::Event;
use crate::log::LogWriter;
use crate::result_code::ResultCode;
use crate::snapshot::{write_snapshot, SnapshotCapture};
use crate::state_machine::PartitionState;
use futures::channel::oneshot;
use std::path::PathBuf;

pub struct PartitionTask {
    pub state: PartitionState,
    pub writer: LogWriter,
    pub term: u64,
    pub snapshot_dir: PathBuf,
    pub snapshot_interval_entries: u64,
    pub group_items_max: usize,
    pub replayed_entries: u64,
    pub last_snapshot_index: u64,
    pub snapshots_written: u64,
    pub fsyncs: u64,
}

/// A snapshot being written on a helper thread.
struct SnapshotInFlight {
    index: u64,
    done: oneshot::Receiver<Result<PathBuf, String>>,
}

impl PartitionTask {
    pub async fn run(mut self, requests: flume::Receiver<Request>) {
        let mut group: Vec<Request> = Vec::with_capacity(64);
        let mut replies: Vec<(oneshot::Sender<BatchReply>, BatchReply)> = Vec::with_capacity(64);
        let mut body = rkyv::util::AlignedVec::<16>::with_capacity(1 << 20);
        let mut events: Vec<Event> = Vec::with_capacity(crate::command::BATCH_ITEMS_MAX);
        let mut failed: Option<String> = None;
        let mut snapshot: Option<SnapshotInFlight> = None;

        while let Ok(first) = requests.recv_async().await {
            group.push(first);
            let mut items = group_items(&group);
            while items < self.group_items_max {
                match requests.try_recv() {
                    Ok(next) => {
                        items += group_items(std::slice::from_ref(&next));
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }

            // 1. Apply every command batch of the group and append it to the log.
            let mut reads = Vec::new();
            for request in group.drain(..) {
                match request {
                    Request::Commands { batch, reply } => {
                        if let Some(reason) = &failed {
                            tracing::debug!(%reason, "refusing a batch: the log is failed");
                            let _ = reply
                                .send(BatchReply::refused(batch.len(), ResultCode::StorageError));
                            continue;
                        }
                        batch.encode_into(&mut body);
                        if !self.writer.has_room(body.len()) {
                            if let Err(e) = self.writer.flush().await {
                                failed = Some(e.to_string());
                                let _ = reply.send(BatchReply::refused(
                                    batch.len(),
                                    ResultCode::StorageError,
                                ));
                                continue;
                            }
                            self.fsyncs += 1;
                        }
                        let timestamp = now_ns().max(self.state.next_timestamp_floor());
                        let index =
                            match self
                                .writer
                                .append(self.term, timestamp, batch.kind(), &body)
                            {
                                Ok(index) => index,
                                Err(e) => {
                                    failed = Some(e.to_string());
                                    let _ = reply.send(BatchReply::refused(
                                        batch.len(),
                                        ResultCode::StorageError,
                                    ));
                                    continue;
                                }
                            };
                        let mut results = Vec::with_capacity(batch.len());
                        events.clear();
                        self.state
                            .apply_entry(
                                index,
                                batch.kind(),
                                &body,
                                timestamp,
                                &mut results,
                                &mut events,
                            )
                            .expect("a batch this task encoded is a valid entry");
                        replies.push((
                            reply,
                            BatchReply {
                                results,
                                index,
                                timestamp,
                            },
                        ));
                    }
                    other => reads.push(other),
                }
            }

            // 2. One fsync for the whole group, then the answers.
            if !replies.is_empty() && failed.is_none() {
                match self.writer.flush().await {
                    Ok(()) => self.fsyncs += 1,
                    Err(e) => failed = Some(e.to_string()),
                }
            }
            for (reply, answer) in replies.drain(..) {
                let answer = if failed.is_some() {
                    BatchReply::refused(answer.results.len(), ResultCode::StorageError)
                } else {
                    answer
                };
                let _ = reply.send(answer);
            }

            // 3. Reads see exactly the durable state.
            for read in reads {
                self.answer_read(read, &failed, &mut snapshot).await;
            }

            // 4. Snapshots: collect a finished one, start a new one when due.
            if let Some(inflight) = &mut snapshot {
                if let Ok(Some(result)) = inflight.done.try_recv() {
                    self.finish_snapshot(inflight.index, result);
                    snapshot = None;
                }
            }
            let due = self.snapshot_interval_entries > 0
                && self.state.last_index()
                    >= self.last_snapshot_index + self.snapshot_interval_entries;
            if due && snapshot.is_none() && failed.is_none() {
                snapshot = Some(self.start_snapshot());
            }
        }

        // The queue closed: shutdown. Everything answered was flushed; leave a snapshot so the
        // next start replays nothing.
        if let Some(inflight) = snapshot.take() {
            let result = inflight
                .done
                .await
                .unwrap_or_else(|_| Err("snapshot thread died".into()));
            self.finish_snapshot(inflight.index, result);
        }
        if failed.is_none() && self.state.last_index() > self.last_snapshot_index {
            let inflight = self.start_snapshot();
            let result = inflight
                .done
                .await
                .unwrap_or_else(|_| Err("snapshot thread died".into()));
            self.finish_snapshot(inflight.index, result);
        }
        if let Err(e) = self.writer.close().await {
            tracing::error!(error = %e, "closing the log failed");
        }
    }

    async fn answer_read(
        &mut self,
        read: Request,
        failed: &Option<String>,
        snapshot: &mut Option<SnapshotInFlight>,
    ) {
        match read {
            Request::Commands { .. } => unreachable!("commands are not reads"),
            Request::LookupAccounts { ids, reply } => {
                let _ = reply.send(
                    ids.iter()
                        .map(|id| self.state.account(*id).copied())
                        .collect(),
                );
            }
            Request::LookupTransfers { ids, reply } => {
                let _ = reply.send(
                    ids.iter()
                        .map(|id| self.state.transfer(*id).copied())
                        .collect(),
                );
            }
            Request::Stats { digest, reply } => {
                let _ = reply.send(PartitionStats {
                    partition: self.state.partition(),
                    accounts: self.state.account_count() as u64,
                    transfers: self.state.transfer_count() as u64,
                    last_index: self.state.last_index(),
                    durable_index: self.writer.durable_index(),
                    replayed_entries: self.replayed_entries,
                    snapshots_written: self.snapshots_written,
                    fsyncs: self.fsyncs,
                    digest: if digest { state_digest(&self.state) } else { 0 },
                });
            }
            Request::Snapshot { reply } => {
                if let Some(reason) = failed {
                    let _ = reply.send(Err(reason.clone()));
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

    /// Captures the state (a few ms) and writes it on a helper thread.
    fn start_snapshot(&mut self) -> SnapshotInFlight {
        assert_eq!(
            self.state.last_index(),
            self.writer.durable_index(),
            "snapshots only cover durable entries"
        );
        let capture = SnapshotCapture::take(&self.state, self.writer.last_term());
        let index = capture.meta.last_index;
        let dir = self.snapshot_dir.clone();
        let (done_tx, done_rx) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("snapshot-p{}", self.state.partition()))
            .spawn(move || {
                let result = write_snapshot(&dir, capture).map_err(|e| e.to_string());
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

fn group_items(group: &[Request]) -> usize {
    group
        .iter()
        .map(|r| match r {
            Request::Commands { batch, .. } => batch.len().max(1),
            _ => 1,
        })
        .sum()
}

/// Wall-clock nanoseconds: only a proposal; the task keeps timestamps strictly increasing
/// (`next_timestamp_floor`) whatever the clock does.
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
