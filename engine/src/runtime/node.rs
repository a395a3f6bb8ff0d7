//! Starting, using and stopping a node's shards.

use super::cluster::{ClusterHook, CoreCluster, SingleNode};
use super::config::{EngineConfig, Replication};
use super::partition_task::PartitionTask;
use super::raft_task::RaftTask;
use super::request::{BatchReply, NotLeader, PartitionStats, PartitionTotals, ReadFrom, Request};
use crate::command::CommandBatch;
use crate::log::{LogWriter, WriterOptions};
use crate::model::{Account, AccountId, TransferId, TransferLookup};
use crate::partition::{partition_of, PartitionId};
use crate::read_model::{At, BalanceAsOf, EventsPage, HistoryPage, HistoryQuery, QueryError};
use crate::recovery::{log_dir, partition_dir, recover_partition_with, snapshot_dir};
use crate::result_code::ResultCode;
use futures::channel::oneshot;
use glommio::{LocalExecutorBuilder, Placement};
use std::rc::Rc;
use std::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(
        "could not start the executor for core {core}: {reason}. walletd needs io_uring (kernel \
         5.8+, sysctl kernel.io_uring_disabled=0) and enough locked memory for its I/O buffers: \
         raise `ulimit -l` (systemd: LimitMEMLOCK=) or lower io_memory_bytes; check that the core \
         exists and is allowed (taskset/cgroups)"
    )]
    Executor { core: usize, reason: String },
    #[error("partition {partition}: {reason}")]
    Recovery {
        partition: PartitionId,
        reason: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the partition's queue is full")]
    Busy,
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A lookup from the leader's state reached a partition this node does not lead.
    #[error("this node does not lead partition {partition} (leader: {})", leader.map_or("none known".to_string(), |l| format!("node {l}")))]
    NotLeader {
        partition: PartitionId,
        leader: Option<u64>,
    },
}

impl SubmitError {
    pub fn code(self) -> ResultCode {
        match self {
            SubmitError::Busy => ResultCode::Busy,
            SubmitError::ShuttingDown => ResultCode::ShuttingDown,
            SubmitError::NotLeader { .. } => ResultCode::NotLeader,
        }
    }
}

/// A running node: handles to every partition's queue, and the executor threads.
pub struct Node {
    config: EngineConfig,
    queues: Vec<flume::Sender<Request>>,
    /// Behind a lock so a node shared by other threads (`Arc<Node>`) can still be shut down.
    executors: std::sync::Mutex<Vec<glommio::ExecutorJoinHandle<()>>>,
    /// Result codes of every routed client batch (for metrics).
    results: super::result_counts::ResultCounts,
}

const PARTITION_COUNT_FILE: &str = "partitions";
/// Holds the data dir's replication mode (`Replication::name`); a data dir without it was
/// created before Raft mode existed, and is local.
const REPLICATION_FILE: &str = "replication";

impl Node {
    /// Recovers every partition (in parallel, each on its own core) and starts serving.
    pub fn start(config: EngineConfig) -> Result<Node, StartError> {
        Node::start_with(config, SingleNode)
    }

    /// `start` for a node of a cluster: `hook` starts each executor's end of the node link
    /// (`cluster.rs`). Only Raft mode uses it.
    pub fn start_with<H: ClusterHook>(config: EngineConfig, hook: H) -> Result<Node, StartError> {
        let hook = std::sync::Arc::new(hook);
        config.validate().map_err(StartError::Config)?;
        let fresh = check_partition_count(&config)?;
        check_replication(&config, fresh)?;
        let mut queues = Vec::with_capacity(config.partitions as usize);
        let mut receivers: Vec<Option<flume::Receiver<Request>>> = Vec::new();
        for _ in 0..config.partitions {
            let (tx, rx) = flume::bounded(config.queue_depth_max);
            queues.push(tx);
            receivers.push(Some(rx));
        }
        let (ready_tx, ready_rx) = mpsc::channel::<Result<PartitionId, StartError>>();
        let mut executors = Vec::new();
        for (slot, &core) in config.cores.iter().enumerate() {
            let owned: Vec<(PartitionId, flume::Receiver<Request>)> = (0..config.partitions)
                .filter(|p| *p as usize % config.cores.len() == slot)
                .map(|p| {
                    (
                        p,
                        receivers[p as usize]
                            .take()
                            .expect("each partition is owned once"),
                    )
                })
                .collect();
            let config = config.clone();
            let ready = ready_tx.clone();
            let peers = queues.clone();
            let hook = hook.clone();
            let handle = LocalExecutorBuilder::new(Placement::Fixed(core))
                .name(&format!("shard-{core}"))
                .io_memory(config.io_memory_bytes)
                .spawn(move || run_shard(config, slot, hook, owned, peers, ready))
                .map_err(|e| StartError::Executor {
                    core,
                    reason: e.to_string(),
                })?;
            executors.push(handle);
        }
        drop(ready_tx);
        let node = Node {
            config,
            queues,
            executors: std::sync::Mutex::new(executors),
            results: Default::default(),
        };
        for _ in 0..node.config.partitions {
            match ready_rx.recv() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    node.stop_threads();
                    return Err(e);
                }
                Err(_) => {
                    // A shard thread ended before reporting: its executor failed to start.
                    let reason = node
                        .stop_threads()
                        .unwrap_or_else(|| "shard thread exited".into());
                    return Err(StartError::Executor {
                        core: node.config.cores[0],
                        reason,
                    });
                }
            }
        }
        Ok(node)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Requests waiting in `partition`'s queue right now (at most `queue_depth_max`).
    pub fn queue_depth(&self, partition: PartitionId) -> usize {
        self.queues[partition as usize].len()
    }

    /// Result codes of every client batch routed through this node so far.
    pub fn results(&self) -> &super::result_counts::ResultCounts {
        &self.results
    }

    pub fn partition_count(&self) -> u32 {
        self.config.partitions
    }

    /// The partition that owns `account`.
    pub fn partition_of(&self, account: AccountId) -> PartitionId {
        partition_of(account, self.config.partitions)
    }

    /// The CPU core whose shard runs `partition` (partitions are dealt to `cores` in turn).
    pub fn core_of(&self, partition: PartitionId) -> usize {
        self.config.core_of(partition)
    }

    /// Sends a batch to `partition` and waits (asynchronously) for its durable reply. Waits for
    /// queue space when the queue is full.
    pub async fn submit(
        &self,
        partition: PartitionId,
        batch: CommandBatch,
    ) -> Result<BatchReply, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.queues[partition as usize]
            .send_async(Request::Commands {
                batch,
                reply,
                enqueued: std::time::Instant::now(),
            })
            .await
            .map_err(|_| SubmitError::ShuttingDown)?;
        answer.await.map_err(|_| SubmitError::ShuttingDown)
    }

    /// Like `submit`, but answers `Busy` at once when the queue is full (for network edges that
    /// must not block).
    pub fn try_submit(
        &self,
        partition: PartitionId,
        batch: CommandBatch,
    ) -> Result<oneshot::Receiver<BatchReply>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.queues[partition as usize]
            .try_send(Request::Commands {
                batch,
                reply,
                enqueued: std::time::Instant::now(),
            })
            .map_err(|e| match e {
                flume::TrySendError::Full(_) => SubmitError::Busy,
                flume::TrySendError::Disconnected(_) => SubmitError::ShuttingDown,
            })?;
        Ok(answer)
    }

    /// Blocking `submit`, for plain threads.
    pub fn submit_blocking(
        &self,
        partition: PartitionId,
        batch: CommandBatch,
    ) -> Result<BatchReply, SubmitError> {
        futures::executor::block_on(self.submit(partition, batch))
    }

    async fn ask<T>(
        &self,
        partition: PartitionId,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.queues[partition as usize]
            .send_async(make(reply))
            .await
            .map_err(|_| SubmitError::ShuttingDown)?;
        answer.await.map_err(|_| SubmitError::ShuttingDown)
    }

    pub async fn lookup_accounts(
        &self,
        partition: PartitionId,
        ids: Vec<AccountId>,
    ) -> Result<Vec<Option<Account>>, SubmitError> {
        self.lookup_accounts_from(partition, ids, ReadFrom::Leader)
            .await
    }

    /// `lookup_accounts`, reading the state `read` says.
    pub async fn lookup_accounts_from(
        &self,
        partition: PartitionId,
        ids: Vec<AccountId>,
        read: ReadFrom,
    ) -> Result<Vec<Option<Account>>, SubmitError> {
        self.ask(partition, |reply| Request::LookupAccounts {
            ids,
            read,
            reply,
        })
        .await?
        .map_err(|NotLeader { leader }| SubmitError::NotLeader { partition, leader })
    }

    pub async fn lookup_transfers(
        &self,
        partition: PartitionId,
        ids: Vec<TransferId>,
    ) -> Result<Vec<Option<TransferLookup>>, SubmitError> {
        self.lookup_transfers_from(partition, ids, ReadFrom::Leader)
            .await
    }

    /// `lookup_transfers`, reading the state `read` says.
    pub async fn lookup_transfers_from(
        &self,
        partition: PartitionId,
        ids: Vec<TransferId>,
        read: ReadFrom,
    ) -> Result<Vec<Option<TransferLookup>>, SubmitError> {
        self.ask(partition, |reply| Request::LookupTransfers {
            ids,
            read,
            reply,
        })
        .await?
        .map_err(|NotLeader { leader }| SubmitError::NotLeader { partition, leader })
    }

    /// A page of `query.account`'s history from its partition's read model.
    pub async fn history(
        &self,
        query: HistoryQuery,
    ) -> Result<Result<HistoryPage, QueryError>, SubmitError> {
        let partition = self.partition_of(query.account);
        self.ask(partition, |reply| Request::History { query, reply })
            .await
    }

    /// `account`'s balance as of a timestamp or a position, from its partition's read model.
    pub async fn balance_at(
        &self,
        account: AccountId,
        at: At,
    ) -> Result<Result<BalanceAsOf, QueryError>, SubmitError> {
        let partition = self.partition_of(account);
        self.ask(partition, |reply| Request::BalanceAt { account, at, reply })
            .await
    }

    /// Money per currency in `partition`, from its read model.
    pub async fn totals(
        &self,
        partition: PartitionId,
    ) -> Result<Result<PartitionTotals, QueryError>, SubmitError> {
        self.ask(partition, |reply| Request::Totals { reply }).await
    }

    /// Durable changes of `partition` from position `from` on (`read_model::FROM_NOW`: the
    /// next ones), of `account` only when given: a subscription's poll.
    pub async fn events(
        &self,
        partition: PartitionId,
        from: u64,
        account: Option<AccountId>,
        limit: usize,
    ) -> Result<Result<EventsPage, QueryError>, SubmitError> {
        self.ask(partition, |reply| Request::Events {
            from,
            account,
            limit,
            reply,
        })
        .await
    }

    /// Asks `partition` to send `()` on `wake` (never blocking) after each group commit that
    /// makes new entries durable, until `wake`'s receiver is dropped.
    pub async fn watch(
        &self,
        partition: PartitionId,
        wake: flume::Sender<()>,
    ) -> Result<(), SubmitError> {
        self.queues[partition as usize]
            .send_async(Request::Watch { wake })
            .await
            .map_err(|_| SubmitError::ShuttingDown)
    }

    /// Counters and the state digest of `partition` (the digest is a full pass: not for hot
    /// paths; see `counters`).
    pub async fn stats(&self, partition: PartitionId) -> Result<PartitionStats, SubmitError> {
        self.ask(partition, |reply| Request::Stats {
            digest: true,
            reply,
        })
        .await
    }

    /// Counters of `partition` without the digest (cheap).
    pub async fn counters(&self, partition: PartitionId) -> Result<PartitionStats, SubmitError> {
        self.ask(partition, |reply| Request::Stats {
            digest: false,
            reply,
        })
        .await
    }

    /// Stats of every partition, in partition order (blocking).
    pub fn all_stats(&self) -> Result<Vec<PartitionStats>, SubmitError> {
        (0..self.config.partitions)
            .map(|p| futures::executor::block_on(self.stats(p)))
            .collect()
    }

    /// Changes the Raft membership of `partition` on this node (see `MembershipChange`); the
    /// inner error says why the change failed (for example: this node does not lead it).
    pub async fn change_membership(
        &self,
        partition: PartitionId,
        change: super::request::MembershipChange,
    ) -> Result<Result<(), String>, SubmitError> {
        self.ask(partition, |reply| Request::Membership { change, reply })
            .await
    }

    /// Writes a snapshot of `partition` now; returns the index it covers.
    pub async fn snapshot(
        &self,
        partition: PartitionId,
    ) -> Result<Result<u64, String>, SubmitError> {
        self.ask(partition, |reply| Request::Snapshot { reply })
            .await
    }

    /// Clean shutdown: close every queue, let each partition answer what it holds, flush,
    /// snapshot and close its log, then join the executor threads.
    pub fn shutdown(self) -> Result<(), String> {
        self.shutdown_shared()
    }

    /// `shutdown` through a shared reference, for a node that other threads still hold
    /// (`Arc<Node>`): later submissions answer `ShuttingDown`. Idempotent.
    pub fn shutdown_shared(&self) -> Result<(), String> {
        match self.stop_threads() {
            None => Ok(()),
            Some(reason) => Err(reason),
        }
    }

    /// Tells every partition to stop and joins the threads; returns the first thread failure.
    fn stop_threads(&self) -> Option<String> {
        // Partition tasks hold each other's queues (TC/C), so closing ours is not enough:
        // each is told to stop explicitly.
        for queue in &self.queues {
            let _ = queue.send(Request::Shutdown);
        }
        let handles: Vec<_> = match self.executors.lock() {
            Ok(mut executors) => executors.drain(..).collect(),
            Err(poisoned) => poisoned.into_inner().drain(..).collect(),
        };
        let mut failure = None;
        for handle in handles {
            let outcome = match handle.join() {
                Ok(()) => None,
                Err(e) => Some(e.to_string()),
            };
            failure = failure.or(outcome);
        }
        failure
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Refuses to open a data dir in another replication mode than it was created with: the two
/// read their logs and snapshots differently (a Raft log starts with openraft's membership and
/// blank entries, and only its committed part may be applied).
fn check_replication(config: &EngineConfig, fresh: bool) -> Result<(), StartError> {
    let path = config.data_dir.join(REPLICATION_FILE);
    let io = |source| StartError::Io {
        path: path.clone(),
        source,
    };
    let found = match std::fs::read_to_string(&path) {
        Ok(text) => Replication::from_name(text.trim()).ok_or_else(|| {
            StartError::Config(format!(
                "{}: unknown replication mode {:?}",
                path.display(),
                text.trim()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mode = if fresh {
                config.replication
            } else {
                Replication::Local
            };
            // Durably (temp file, fsync, rename, directory fsync): an empty file after a
            // power loss would stop every later start.
            crate::log::atomic_file::save_plain(
                &config.data_dir,
                REPLICATION_FILE,
                format!("{}\n", mode.name()).as_bytes(),
            )
            .map_err(|e| StartError::Config(e.to_string()))?;
            mode
        }
        Err(e) => return Err(io(e)),
    };
    if found != config.replication {
        return Err(StartError::Config(format!(
            "{} was created with replication = {:?}, not {:?}; the replication mode is fixed for the life of a data dir",
            config.data_dir.display(),
            found.name(),
            config.replication.name()
        )));
    }
    Ok(())
}

/// Refuses to open a data dir with a different partition count (accounts would move). True
/// when the data dir is new (it had no partition count yet).
fn check_partition_count(config: &EngineConfig) -> Result<bool, StartError> {
    let io = |source| StartError::Io {
        path: config.data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(io)?;
    let path = config.data_dir.join(PARTITION_COUNT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found: u32 = text
                .trim()
                .parse()
                .map_err(|_| StartError::Config(format!("{}: not a number", path.display())))?;
            if found != config.partitions {
                return Err(StartError::Config(format!(
                    "{} was created with {found} partitions, not {}; the partition count is fixed for the life of a data dir",
                    config.data_dir.display(),
                    config.partitions
                )));
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::log::atomic_file::save_plain(
                &config.data_dir,
                PARTITION_COUNT_FILE,
                format!("{}\n", config.partitions).as_bytes(),
            )
            .map_err(|e| StartError::Config(e.to_string()))?;
            // The data dir itself may be new: its entry in its parent must last too.
            if let Some(parent) = config
                .data_dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                crate::log::scan::sync_dir(parent)
                    .map_err(|e| StartError::Config(e.to_string()))?;
            }
            Ok(true)
        }
        Err(e) => Err(io(e)),
    }
}

/// The body of one shard executor: recover its partitions, then run their tasks.
async fn run_shard<H: ClusterHook>(
    config: EngineConfig,
    slot: usize,
    hook: std::sync::Arc<H>,
    owned: Vec<(PartitionId, flume::Receiver<Request>)>,
    peers: Vec<flume::Sender<Request>>,
    ready: mpsc::Sender<Result<PartitionId, StartError>>,
) {
    let mut tasks = Vec::new();
    let core = match config.replication {
        Replication::Raft => match hook.start_core(slot) {
            Ok(core) => Some(Rc::new(core)),
            Err(reason) => {
                let _ = ready.send(Err(StartError::Config(reason)));
                return;
            }
        },
        Replication::Local => None,
    };
    for (partition, queue) in owned {
        let dir = partition_dir(&config.data_dir, partition);
        if let Some(core) = &core {
            match RaftTask::open(&config, partition, &dir, peers.clone(), core.clone()).await {
                Ok(task) => {
                    tasks.push(glommio::spawn_local(task.run(queue)));
                    let _ = ready.send(Ok(partition));
                    continue;
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            }
        }
        if config.repair {
            match crate::log::repair_log(&log_dir(&dir)) {
                Ok(Some((path, offset))) => tracing::error!(
                    partition,
                    path = %path.display(),
                    offset,
                    "REPAIR: log cut at a damaged record; everything after it is gone"
                ),
                Ok(None) => tracing::info!(partition, "repair: log is sound, nothing cut"),
                Err(e) => {
                    let _ = ready.send(Err(StartError::Recovery {
                        partition,
                        reason: e.to_string(),
                    }));
                    return;
                }
            }
        }
        let history = config.read_model_history_per_account;
        let recovered = match recover_partition_with(
            &dir,
            partition,
            config.partitions,
            history,
            config.read_model_rebuild_entries,
        ) {
            Ok(r) => r,
            Err(e) => {
                let _ = ready.send(Err(StartError::Recovery {
                    partition,
                    reason: e.to_string(),
                }));
                return;
            }
        };
        let options = WriterOptions {
            segment_bytes: config.segment_bytes,
            pending_bytes_max: (config.segment_bytes / 4).min(32 << 20) as usize,
            faults: config.faults.clone(),
            ..WriterOptions::default()
        };
        let writer = match LogWriter::open(&log_dir(&dir), options, &recovered.tail).await {
            Ok(w) => w,
            Err(e) => {
                let _ = ready.send(Err(StartError::Recovery {
                    partition,
                    reason: e.to_string(),
                }));
                return;
            }
        };
        tracing::info!(
            partition,
            last_index = recovered.state.last_index(),
            replayed = recovered.replayed_entries,
            snapshot = ?recovered.snapshot,
            "partition recovered"
        );
        let mut state = recovered.state;
        if config.transfers_capacity_per_partition > 0 {
            state.reserve_transfers(config.transfers_capacity_per_partition);
        }
        let task = PartitionTask {
            last_snapshot_index: recovered.snapshot_index,
            last_snapshot_day: state.last_timestamp() / crate::snapshot::DAY_NS,
            state,
            writer,
            term: recovered.last_term,
            snapshot_dir: snapshot_dir(&dir),
            snapshot_interval_entries: config.snapshot_interval_entries,
            snapshot_retention: crate::snapshot::SnapshotRetention {
                daily_days: config.snapshot_daily_days,
                ..Default::default()
            },
            group_items_max: config.group_items_max,
            replayed_entries: recovered.replayed_entries,
            snapshots_written: 0,
            fsyncs: 0,
            timing: Default::default(),
            peers: peers.clone(),
            tcc_try_timeout: std::time::Duration::from_millis(config.tcc_try_timeout_ms),
            clock: config.clock.clone(),
            read_model: recovered.read_model,
        };
        tasks.push(glommio::spawn_local(task.run(queue)));
        let _ = ready.send(Ok(partition));
    }
    for task in tasks {
        task.await;
    }
    if let Some(core) = core {
        core.shutdown();
    }
}
