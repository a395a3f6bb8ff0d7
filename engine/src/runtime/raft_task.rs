//! The task that owns one partition on its core in Raft mode (`Replication::Raft`, RAFT_PLAN
//! step 4): the partition is an openraft cluster of which this node is the only voter. It
//! reads the same `Request` queue as `PartitionTask`, so the router, the server and the client
//! see no difference, except that a write is acknowledged once **committed and applied**.
//!
//! ```text
//!   queue[p] ──▶ RaftTask: group ─▶ merge ─▶ client_write_ff ─▶ in-flight FIFO ─▶ replies
//!                                              │                        ▲
//!                                              ▼                        │ GroupResult
//!                                  openraft: RaftCore (append+fsync) ─▶ SM worker (apply)
//! ```
//!
//! **Entries.** openraft 0.9 appends and fsyncs one `client_write` at a time (RAFT_PLAN §6),
//! so client batches are not proposed one by one: a group (what is queued, up to
//! `group_items_max`) is cut into runs of consecutive batches of the same kind, and each run
//! becomes **one** Raft entry, one concatenated command batch of at most `entry_items_max`
//! items. Its items apply exactly as the batches would one after the other: item `i` of the
//! entry has timestamp `T + i`, and a client batch that owns items `a..b` gets results
//! `a..b` and timestamp `T + a`.
//!
//! `entry_items_max` is not `BATCH_ITEMS_MAX` (a client frame's limit, which Raft entries never
//! travel in): an entry holds up to `ENTRY_BYTES_MAX` of archived items (and at most half a
//! flush group of the log writer, at least one full client batch). With entries of one client
//! batch of 8190 transfers, the one-voter cluster ran at about 30% of the local group commit on
//! the reference VM: each entry costs one O_DSYNC write of nearly fixed latency (~10 ms there),
//! and openraft 0.9 writes one entry at a time. The local path puts up to `group_items_max`
//! items in one write. Entries are proposed with `client_write_ff`, not awaited; the
//! in-flight FIFO keeps each entry's receiver and which client owns which item range, and a
//! client is answered when its entry's `GroupResult` arrives (RaftCore sends it after commit
//! and apply, in log order).
//!
//! **Pipeline.** A new group is formed only while fewer than `PIPELINE_ENTRIES` entries are in
//! flight. RaftCore writes one entry at a time anyway; letting requests wait in the queue
//! meanwhile is what makes the next entry big (the same dynamics as the local group commit).
//! `IN_FLIGHT_ENTRIES_MAX` is the hard bound of the FIFO.
//!
//! **Timestamps** (RAFT_PLAN §4.8): the task keeps the end of the last proposed entry
//! (`next_timestamp`: its `T` + its item count) and never reads the applied state for it,
//! since apply lags the log. At start it begins at the applied state's floor, read after
//! `ensure_linearizable`, when everything in the log is applied (a one-voter cluster holds no
//! entry of another leader). `apply_entry` clamps anyway, so a reply's timestamp is always the
//! one applied (`GroupResult::timestamp`).
//!
//! **TC/C**: the same `Coordinator` as `PartitionTask`: held replies, resolutions and outbox
//! messages come from each entry's `GroupResult`, which only the leader receives (its
//! responder), so only the leader ships messages. Incoming messages and Try timeouts' ABORTs
//! become TC/C entries. Unfinished records are re-driven at start, after everything logged is
//! applied.
//!
//! **Reads** (lookups, stats, snapshot requests) go to a reader task that calls
//! `ensure_linearizable` once for all reads queued (a leadership check and a wait until the
//! state has applied everything committed when it was called), then reads the shared state. A
//! read thus sees every write acknowledged before it was sent. The reader runs beside this
//! task, so the write pipeline never waits for reads.
//!
//! **Read model** (history, balance as of, subscriptions): fed by the state machine
//! with every committed entry, on every node (`raft::read_side`); the reader answers its
//! queries from this node's model on a follower as on the leader, without `ensure_linearizable`
//! (see `serve_reads`). Subscribers are woken by the state machine after each applied batch.
//!
//! **A full disk**: the log store waits for space inside openraft's append (`DiskSpace`,
//! `raft/log_store.rs`); meanwhile a leader refuses new command batches at once with
//! `storage_full` (the entries already proposed wait for space: they are neither acknowledged
//! nor refused), and a one-voter partition serves lookups from its applied state, since no
//! other node can commit anything. Stats report `storage_full` while it lasts.
//!
//! **Daily snapshots**: the task asks openraft for one when applied log time enters a new UTC
//! day (`daily_snapshot`); the log keeps the history from the oldest kept snapshot on for the
//! audit tools (`RaftLogStore::open_keeping_history`).
//!
//! **Not in Raft mode yet**: some counters (see `PartitionStats` in `stats`).

use super::cluster::CoreCluster;
use super::config::{Clock, EngineConfig};
use super::coordinator::Coordinator;
use super::node::StartError;
use super::request::{
    self, fill_group, BatchReply, MembershipChange, NotLeader, PartitionStats, RaftMember,
    RaftRole, RaftStatus, ReadFrom, Request,
};
use super::timing::{self, SharedTiming};
use crate::command::{ArchivedNewAccount, ArchivedNewTransfer, CommandBatch, BATCH_ITEMS_MAX};
use crate::digest::state_digest;
use crate::log::WriterOptions;
use crate::model::TransferId;
use crate::partition::PartitionId;
use crate::raft::entry_record::{applied_log_index, log_index};
use crate::raft::log_store::DiskSpace;
use crate::raft::read_side::{rebuild_window, ReadSide, SharedReadSide};
use crate::raft::types::LogId;
use crate::raft::{EntryData, NodeAddr, RaftLogStore, RaftPartition, WalletRaft};
use crate::recovery::{log_dir, snapshot_dir};
use crate::result_code::ResultCode;
use crate::snapshot::{SnapshotRetention, DAY_NS};
use crate::state_machine::PartitionState;
use crate::tcc::{self, take_entry, ArchivedTccMessage, TccMessage};
use futures::channel::oneshot;
use openraft::error::{ClientWriteError, Fatal};
use openraft::raft::ClientWriteResult;
use openraft::{ChangeMembers, Raft, ServerState, SnapshotPolicy};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// A new group is formed only while fewer entries than this are in flight: one being applied,
/// one being written, one waiting in RaftCore so its disk never waits for a proposal. What
/// arrives meanwhile waits in the queue and makes the next entry bigger. (Measured against 2,
/// which merges more but lets the disk idle: 3 was as fast or faster with big batches and
/// clearly faster with many small ones, RAFT_PLAN §10.)
const PIPELINE_ENTRIES: usize = 3;

/// Most archived item bytes in one entry (4 MiB: below the node link's frame limit planned in
/// RAFT_PLAN §5, and a few ms of apply).
const ENTRY_BYTES_MAX: usize = 4 << 20;

/// Most entries proposed and not yet answered (the FIFO's hard bound; a group of many small
/// batches of alternating kinds waits here for room).
const IN_FLIGHT_ENTRIES_MAX: usize = 64;

/// Most groups of reads waiting for the reader task.
const READ_GROUPS_MAX: usize = 64;

/// How often the loop wakes to retry shipping messages and check Try timeouts while TC/C
/// work is outstanding (as `PartitionTask`).
const TCC_TICK: Duration = Duration::from_millis(2);

/// How often a leader of a cluster of several nodes sends every unfinished TC/C message of its
/// partition again. Messages to a partition led by another node can be lost (a leader change,
/// a node down, a forward that failed); all of them are idempotent, so sending them again is
/// always safe.
const TCC_RESEND: Duration = Duration::from_millis(1_000);

/// How often an idle partition of a cluster of several nodes wakes to notice that it became
/// leader (and re-drive its TC/C work) or that TC/C work is due again.
const CLUSTER_TICK: Duration = Duration::from_millis(100);

/// How long a start waits for this node to lead its own one-voter cluster.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// How long a snapshot request (or the one at shutdown) waits for openraft to write it.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(300);

/// How often a snapshot request asks openraft again while no snapshot covers what it asked for
/// (`snapshot_now`).
const SNAPSHOT_RETRIGGER: Duration = Duration::from_millis(500);

/// Counters shared with the reader task (for `Request::Stats`).
#[derive(Default)]
struct Counters {
    /// Raft entries this task proposed that were committed and applied. In openraft 0.9 each
    /// cost one log append + fdatasync on this node.
    entries_committed: Cell<u64>,
    /// Entries openraft re-applied at start (after the newest snapshot).
    replayed_entries: Cell<u64>,
    /// Shared with the log store and the state machine (`GroupTiming` says who records what).
    timing: SharedTiming,
}

/// Hands TC/C messages to another node's leader (`CoreCluster::forward_tcc`).
type ForwardTcc = Box<dyn Fn(PartitionId, u64, &NodeAddr, Vec<TccMessage>)>;

pub struct RaftTask {
    raft: Raft<WalletRaft>,
    node_id: u64,
    partition: PartitionId,
    /// Part of a cluster of several nodes (`EngineConfig::multi_node`).
    multi_node: bool,
    /// Whether this node leads the partition, as of the last `lead_changes`; shared with the
    /// state machine, whose applies wait a little while it follows
    /// (`EngineConfig::follower_apply_delay_us`).
    leading_now: Rc<Cell<bool>>,
    /// Whether the log waits for disk space (shared with the log store inside openraft).
    space: Rc<DiskSpace>,
    forward_tcc: ForwardTcc,
    state: Rc<RefCell<PartitionState>>,
    /// The read model and subscribers' wake-ups, fed by the state machine.
    read: SharedReadSide,
    snapshots_written: Rc<Cell<u64>>,
    counters: Rc<Counters>,
    group_items_max: usize,
    /// Most items merged into one entry (see the module doc).
    entry_items_max: usize,
    /// Every partition's queue, by partition id (TC/C messages go through them).
    peers: Vec<flume::Sender<Request>>,
    tcc_try_timeout: Duration,
    clock: Clock,
    /// The smallest timestamp the next proposed entry may use: past every item of the entries
    /// proposed before it.
    next_timestamp: u64,
    /// Keep daily snapshots (`snapshot_daily_days > 0`): ask openraft for one when the
    /// applied log time enters a new UTC day (`daily_snapshot`).
    daily_snapshots: bool,
    /// The UTC day (of log time) of the last snapshot asked for, or of the state at start.
    last_snapshot_day: u64,
    /// Reused encoding buffer.
    body: rkyv::util::AlignedVec<16>,
}

/// A client batch's share of an entry: its reply slot and the entry's items it owns.
struct Owner {
    reply: oneshot::Sender<BatchReply>,
    items: Range<usize>,
}

/// An entry being formed from consecutive client batches of one kind.
struct Forming {
    batch: CommandBatch,
    owners: Vec<Owner>,
}

/// A proposed entry waiting for its `GroupResult`.
struct InFlight {
    answer: oneshot::Receiver<ClientWriteResult<WalletRaft>>,
    owners: Vec<Owner>,
    /// The ids of the entry's transfers (empty for other kinds): pending TC/C items are held
    /// by id.
    transfer_ids: Vec<TransferId>,
    items: usize,
    proposed: Instant,
}

enum Event {
    Request(Result<Request, flume::RecvError>),
    Applied(
        InFlight,
        Result<ClientWriteResult<WalletRaft>, oneshot::Canceled>,
    ),
    Tick,
}

/// openraft's settings for a partition. A one-voter cluster never holds an election after its
/// first, so its timeouts hardly matter; a cluster of several nodes uses the configured one.
fn raft_config(config: &EngineConfig) -> Result<openraft::Config, String> {
    let interval = config.snapshot_interval_entries;
    let (heartbeat_ms, election_ms) = if config.multi_node {
        (
            (config.election_timeout_ms / 5).max(10),
            config.election_timeout_ms,
        )
    } else {
        (50, 150)
    };
    let raft = openraft::Config {
        cluster_name: "walletd".into(),
        heartbeat_interval: heartbeat_ms,
        election_timeout_min: election_ms,
        election_timeout_max: election_ms * 2,
        snapshot_policy: if interval == 0 {
            SnapshotPolicy::Never
        } else {
            SnapshotPolicy::LogsSinceLast(interval)
        },
        // Keep the log back to about the previous snapshot (for followers, later). When a
        // restart rebuilds the read model's history, surely back to it (snapshots lie about
        // `interval` apart, a little more when a trigger lands late: twice covers it; with
        // only shutdown snapshots, twice the entries to rebuild), so that the restart can
        // start from it and re-apply what follows (`raft::read_side`).
        max_in_snapshot_log_to_keep: if config.read_model_history_per_account > 0
            && config.read_model_rebuild_entries > 0
        {
            let apart = if interval > 0 {
                interval
            } else {
                config.read_model_rebuild_entries
            };
            apart.saturating_mul(2)
        } else {
            interval.min(1024)
        },
        ..Default::default()
    };
    raft.validate().map_err(|e| e.to_string())
}

impl RaftTask {
    /// Opens partition `partition` in `dir` as a Raft group member on this core: the log
    /// store over its log dir, the state machine from its newest snapshot, then openraft
    /// (which re-applies the committed log after the snapshot).
    ///
    /// Alone (`!multi_node`), a fresh partition is initialized with this node as the only
    /// voter, and `open` returns once this node leads and has applied everything in its log.
    /// In a cluster of several nodes it returns at once: a fresh partition waits for `cluster
    /// init`, and leadership comes from an election.
    pub async fn open<C: CoreCluster>(
        config: &EngineConfig,
        partition: PartitionId,
        dir: &Path,
        peers: Vec<flume::Sender<Request>>,
        cluster: Rc<C>,
    ) -> Result<RaftTask, StartError> {
        let fail = |reason: String| StartError::Recovery { partition, reason };
        let leading_now = Rc::new(Cell::new(false));
        let options = WriterOptions {
            segment_bytes: config.segment_bytes,
            pending_bytes_max: (config.segment_bytes / 4).min(32 << 20) as usize,
            faults: config.faults.clone(),
            zero_chunk_bytes: if config.multi_node {
                crate::log::writer::CHUNK_BYTES_REPLICATED
            } else {
                crate::log::writer::CHUNK_BYTES_DEFAULT
            },
            ..WriterOptions::default()
        };
        let entry_items_max = entry_items_max(options.pending_bytes_max, config.group_items_max);
        // With daily snapshots the log keeps the history behind the oldest one for the
        // audit tools.
        let opened = if config.snapshot_daily_days > 0 {
            RaftLogStore::open_keeping_history(&log_dir(dir), options, &snapshot_dir(dir)).await
        } else {
            RaftLogStore::open(&log_dir(dir), options).await
        };
        let timing = SharedTiming::default();
        let mut store = opened
            .map_err(|e| fail(e.to_string()))?
            .with_timing(timing.clone());
        let space = store.space();
        let history = config.read_model_history_per_account;
        let rebuild = rebuild_window(&mut store, history, config.read_model_rebuild_entries)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let sm = RaftPartition::open_with_read_model(
            &snapshot_dir(dir),
            partition,
            config.partitions,
            history,
            rebuild,
        )
        .map_err(|e| fail(e.to_string()))?
        .with_retention(SnapshotRetention {
            daily_days: config.snapshot_daily_days,
            ..Default::default()
        })
        .with_submit_turn()
        .with_timing(timing.clone())
        .with_deferred_read_model()
        .with_follower_apply_delay(
            // A one-voter cluster has no followers (and replays its log at start unhurried).
            if config.multi_node {
                Duration::from_micros(config.follower_apply_delay_us)
            } else {
                Duration::ZERO
            },
            leading_now.clone(),
        )
        .with_give_up(space.give_up_flag());
        let state = sm.state();
        let read = sm.read_side();
        let snapshot_index = state.borrow().last_index();
        if config.transfers_capacity_per_partition > 0 {
            state
                .borrow_mut()
                .reserve_transfers(config.transfers_capacity_per_partition);
        }
        let snapshots_written = sm.snapshots_written();
        let raft_config = raft_config(config).map_err(fail)?;
        let node_id = config.node_id;
        let raft = Raft::new(
            node_id,
            std::sync::Arc::new(raft_config),
            cluster.network(partition),
            store,
            sm,
        )
        .await
        .map_err(|e| fail(format!("starting Raft: {e}")))?;
        cluster.register(partition, raft.clone(), peers[partition as usize].clone());
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !config.multi_node {
            if !initialized {
                raft.initialize(BTreeMap::from([(node_id, NodeAddr::default())]))
                    .await
                    .map_err(|e| fail(format!("initializing the one-voter cluster: {e}")))?;
            }
            // A one-voter cluster that led before is restored as leader at once; a fresh one
            // elects itself right after `initialize`.
            raft.wait(Some(LEADER_WAIT))
                .state(ServerState::Leader, "this node leads its own partition")
                .await
                .map_err(|e| fail(format!("no leadership after {LEADER_WAIT:?}: {e}")))?;
            raft.ensure_linearizable()
                .await
                .map_err(|e| fail(format!("applying the committed log: {e}")))?;
        }
        let counters = Rc::new(Counters {
            timing,
            ..Counters::default()
        });
        let next_timestamp = {
            let state = state.borrow();
            counters
                .replayed_entries
                .set(state.last_index() - snapshot_index);
            tracing::info!(
                partition,
                last_index = state.last_index(),
                snapshot_index,
                initialized,
                multi_node = config.multi_node,
                "partition recovered (raft)"
            );
            state.next_timestamp_floor()
        };
        let forward_tcc: ForwardTcc = {
            let cluster = cluster.clone();
            Box::new(move |partition, leader, addr, messages| {
                cluster.forward_tcc(partition, leader, addr, messages)
            })
        };
        let last_snapshot_day = state.borrow().last_timestamp() / DAY_NS;
        Ok(RaftTask {
            leading_now,
            raft,
            node_id,
            partition,
            multi_node: config.multi_node,
            space,
            forward_tcc,
            state,
            read,
            snapshots_written,
            counters,
            group_items_max: config.group_items_max,
            entry_items_max,
            peers,
            tcc_try_timeout: Duration::from_millis(config.tcc_try_timeout_ms),
            clock: config.clock.clone(),
            next_timestamp,
            daily_snapshots: config.snapshot_daily_days > 0,
            last_snapshot_day,
            body: rkyv::util::AlignedVec::new(),
        })
    }

    pub async fn run(mut self, requests: flume::Receiver<Request>) {
        let mut coordinator = Coordinator::default();
        let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(IN_FLIGHT_ENTRIES_MAX);
        let mut group: Vec<Request> = Vec::with_capacity(64);
        // Command batches and TC/C messages that arrived while the pipeline was full, in
        // order, and the items they count (`request::group_items`).
        let mut waiting: Vec<Request> = Vec::new();
        let mut waiting_items = 0usize;
        let mut stopping = false;
        let (reads_tx, reads_rx) = flume::bounded::<Vec<Request>>(READ_GROUPS_MAX);
        let reader = glommio::spawn_local(serve_reads(
            self.raft.clone(),
            self.state.clone(),
            self.read.clone(),
            self.counters.clone(),
            self.snapshots_written.clone(),
            self.space.clone(),
            reads_rx,
        ));

        // Alone, everything logged is applied (`open`) and this node leads: move every
        // unfinished TC/C forward again. In a cluster, the leader does it when it is elected.
        let mut leading = false;
        let mut last_resend = Instant::now();
        self.lead_changes(
            &mut leading,
            &mut last_resend,
            &mut coordinator,
            &mut in_flight,
        );

        while !stopping {
            // Reads, stats and membership changes are always taken from the queue (a leader
            // whose entries cannot commit, cut off from its followers, must still answer
            // them); commands wait in `waiting` while the pipeline is full, up to a group's
            // worth, and make the next entry bigger.
            let room = self.group_items_max.saturating_sub(waiting_items);
            let accept = room > 0;
            let tick = if coordinator.has_work() {
                Some(TCC_TICK)
            } else {
                self.multi_node.then_some(CLUSTER_TICK)
            };
            match next_event(&requests, accept, &mut in_flight, tick).await {
                Event::Request(Ok(first)) => group.push(first),
                Event::Request(Err(_)) => break, // every sender is gone
                Event::Applied(entry, answer) => self.finish(entry, answer, &mut coordinator),
                Event::Tick => {}
            }
            self.finish_ready(&mut in_flight, &mut coordinator);
            self.daily_snapshot();
            self.lead_changes(
                &mut leading,
                &mut last_resend,
                &mut coordinator,
                &mut in_flight,
            );
            if !group.is_empty() {
                fill_group(&requests, &mut group, room);
            }
            coordinator.abort_overdue(&self.state.borrow(), self.tcc_try_timeout);

            // Cut the group into entries: runs of consecutive command batches of one kind,
            // then one entry (or more, of at most BATCH_ITEMS_MAX) of TC/C messages.
            let group_started = Instant::now();
            let mut formed: Vec<Forming> = Vec::new();
            // Only a leader's pipeline fills up (a follower's proposals are answered at once).
            let pipeline_full = leading && in_flight.len() >= PIPELINE_ENTRIES;
            let mut tcc_in: Vec<TccMessage> = if pipeline_full {
                Vec::new()
            } else {
                std::mem::take(&mut coordinator.local)
            };
            let mut reads = Vec::new();
            // Each request moves into `waiting` at most once, and out of it in order.
            let arrived = if pipeline_full {
                Vec::new()
            } else {
                waiting_items = 0;
                std::mem::take(&mut waiting)
            };
            for request in arrived.into_iter().chain(group.drain(..)) {
                match request {
                    // Refused at once, not queued behind entries that wait for disk space. In a
                    // cluster the answer is `not_leader`: while openraft waits in the append it
                    // sends no heartbeats, so the others elect a leader whose disk has room,
                    // and the client should go there (its map refresh takes the newest term).
                    // Alone, nobody else can take the writes: `storage_full`.
                    Request::Commands { batch, reply, .. } if leading && self.space.is_full() => {
                        let code = if self.multi_node {
                            ResultCode::NotLeader
                        } else {
                            ResultCode::StorageFull
                        };
                        let _ = reply.send(BatchReply::refused(batch.len(), code));
                    }
                    Request::Commands { .. } | Request::Tcc { .. } if pipeline_full => {
                        waiting_items += request::group_items(std::slice::from_ref(&request));
                        waiting.push(request)
                    }
                    Request::Commands {
                        batch,
                        reply,
                        enqueued,
                    } => {
                        timing::record(
                            &self.counters.timing,
                            |t| &mut t.queue,
                            group_started.saturating_duration_since(enqueued),
                        );
                        merge(&mut formed, batch, reply, self.entry_items_max);
                    }
                    Request::Tcc { messages } => tcc_in.extend(messages),
                    Request::Shutdown => stopping = true,
                    Request::Watch { wake } => self.read.borrow_mut().add_watcher(wake),
                    Request::Membership { change, reply } => {
                        glommio::spawn_local(change_membership(self.raft.clone(), change, reply))
                            .detach();
                    }
                    other => reads.push(other),
                }
            }
            if !leading && self.multi_node && !tcc_in.is_empty() {
                self.forward_to_leader(std::mem::take(&mut tcc_in));
            }
            for forming in formed {
                self.propose(forming, &mut in_flight, &mut coordinator)
                    .await;
            }
            while !tcc_in.is_empty() {
                let forming = Forming {
                    batch: CommandBatch::Tcc(take_entry(&mut tcc_in, self.entry_items_max)),
                    owners: Vec::new(),
                };
                self.propose(forming, &mut in_flight, &mut coordinator)
                    .await;
            }
            if !reads.is_empty() && reads_tx.send_async(reads).await.is_err() {
                tracing::error!("the reader task of a partition ended early");
            }
            coordinator.ship(&self.peers);
        }

        // Shutdown: answer everything in flight, then leave a snapshot of it (the next start
        // re-applies nothing) and stop openraft. Clients still waiting on a TC/C see their
        // reply channel close; the records are durable and re-driven at the next start. An
        // append waiting for disk space fails now (its entries were never acknowledged).
        self.space.give_up();
        while let Some(mut entry) = in_flight.pop_front() {
            let answer = (&mut entry.answer).await;
            self.finish(entry, answer, &mut coordinator);
        }
        drop(coordinator);
        drop(reads_tx);
        reader.await;
        if let Err(e) = snapshot_now(&self.raft).await {
            tracing::error!(error = %e, "the shutdown snapshot failed");
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::error!(error = %e, "stopping the partition's Raft failed");
        }
        self.peers.clear();
    }

    /// Log time entered a new UTC day since the last snapshot: ask openraft for one, so each
    /// day with entries has a starting point for audits and read models (`SnapshotRetention`
    /// keeps the newest of each of the last `snapshot_daily_days` days, as in local mode).
    /// Every node does it for itself, followers too: they apply the same entries. The wait
    /// for it (`snapshot_now`, which asks again while openraft builds another snapshot) runs
    /// beside this task, which goes on meanwhile.
    fn daily_snapshot(&mut self) {
        if !self.daily_snapshots {
            return;
        }
        let day = self.state.borrow().last_timestamp() / DAY_NS;
        if day > self.last_snapshot_day {
            self.last_snapshot_day = day;
            let raft = self.raft.clone();
            glommio::spawn_local(async move {
                if let Err(e) = snapshot_now(&raft).await {
                    tracing::warn!(error = %e, "the daily snapshot was not written");
                }
            })
            .detach();
        }
    }

    /// Leads the partition now (in a cluster, elected; alone, always after `open`).
    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
    }

    /// Follows this node's leadership of the partition. On election: start after the last
    /// applied timestamp, and move every unfinished TC/C that started here forward again (the
    /// old leader's messages may be lost). On deposition: the coordinator's bookkeeping is the
    /// old term's; clients it held see their replies closed (their transfers are durable and
    /// finish under the new leader; a retry with the same id answers from there). While
    /// leading a cluster: send the unfinished messages again every `TCC_RESEND`.
    fn lead_changes(
        &mut self,
        leading: &mut bool,
        last_resend: &mut Instant,
        coordinator: &mut Coordinator,
        in_flight: &mut VecDeque<InFlight>,
    ) {
        let now_leading = self.is_leader();
        self.leading_now.set(now_leading);
        if now_leading && !*leading {
            let redrive = {
                let state = self.state.borrow();
                self.next_timestamp = self.next_timestamp.max(state.next_timestamp_floor());
                state.tcc_redrive()
            };
            tracing::info!(
                partition = self.partition,
                tcc_redriven = redrive.len(),
                "leading the partition"
            );
            coordinator.redrive(redrive.iter().map(|(_, m)| m.id));
            coordinator.queue(&redrive);
            coordinator.ship(&self.peers);
            *last_resend = Instant::now();
        } else if !now_leading && *leading {
            tracing::info!(
                partition = self.partition,
                "no longer leading the partition"
            );
            *coordinator = Coordinator::default();
            // Entries proposed while leading may never be answered: ones that reached no
            // other node stay in this log, neither committed nor truncated, until a new
            // leader writes over them, which an idle partition never does. Waiting for them
            // would keep this follower's pipeline full, and with it every TC/C message it
            // should forward, for good. Their clients get `not_leader` and retry with the
            // same ids (answered `exists` where the entry did commit).
            for entry in in_flight.drain(..) {
                refuse(entry.owners, ResultCode::NotLeader);
            }
        } else if now_leading && self.multi_node && last_resend.elapsed() >= TCC_RESEND {
            *last_resend = Instant::now();
            let resend = self.state.borrow().tcc_redrive();
            if !resend.is_empty() {
                // Tries that reached this leader's state only after the re-drive of its
                // election (entries of the previous term it applied later) get their timers
                // now, so that they too end in `tcc_timeout` if their destination never
                // answers. Transfers already tracked keep theirs.
                coordinator.redrive(
                    resend
                        .iter()
                        .filter(|(_, m)| m.kind == tcc::kind::TRY)
                        .map(|(_, m)| m.id),
                );
                coordinator.queue(&resend);
                coordinator.ship(&self.peers);
            }
        }
        *leading = now_leading;
    }

    /// Hands TC/C messages that reached this follower to the partition's leader, if one is
    /// known; otherwise drops them (their sources send them again, `TCC_RESEND`).
    fn forward_to_leader(&self, messages: Vec<TccMessage>) {
        let metrics = self.raft.metrics().borrow().clone();
        let Some(leader) = metrics.current_leader.filter(|l| *l != self.node_id) else {
            return;
        };
        let Some(addr) = metrics.membership_config.membership().get_node(&leader) else {
            return;
        };
        (self.forward_tcc)(self.partition, leader, addr, messages);
    }

    /// Encodes `forming` as one entry at the next timestamp and hands it to openraft without
    /// waiting for it; its clients are answered from the FIFO. Waits for the oldest entry first
    /// while the FIFO is full.
    async fn propose(
        &mut self,
        forming: Forming,
        in_flight: &mut VecDeque<InFlight>,
        coordinator: &mut Coordinator,
    ) {
        while in_flight.len() >= IN_FLIGHT_ENTRIES_MAX {
            let Some(mut oldest) = in_flight.pop_front() else {
                break;
            };
            let answer = (&mut oldest.answer).await;
            self.finish(oldest, answer, coordinator);
        }
        let Forming { batch, owners } = forming;
        let items = batch.len();
        if let Some(last) = owners.last() {
            assert_eq!(last.items.end, items, "the owners cover the entry's items");
        }
        batch.encode_into(&mut self.body);
        let timestamp = self.clock.now_ns().max(self.next_timestamp);
        // As `PartitionState::advance` will: an empty entry still uses one timestamp.
        self.next_timestamp = timestamp + items.max(1) as u64;
        let data = EntryData::new(
            batch.kind(),
            timestamp,
            bytes::Bytes::copy_from_slice(&self.body),
        );
        let transfer_ids = match &batch {
            CommandBatch::CreateTransfers(transfers) => transfers.iter().map(|t| t.id).collect(),
            _ => Vec::new(),
        };
        drop(batch);
        match self.raft.client_write_ff(data).await {
            Ok(answer) => in_flight.push_back(InFlight {
                answer,
                owners,
                transfer_ids,
                items,
                proposed: Instant::now(),
            }),
            Err(fatal) => {
                // TC/C messages of a refused entry are not lost for good: their sources
                // re-drive them after the next start.
                let code = fatal_code(&fatal);
                tracing::error!(error = %fatal, "the partition's Raft refused an entry");
                refuse(owners, code);
            }
        }
    }

    /// Answers the entries at the front of the FIFO that are already applied, in order,
    /// without waiting.
    fn finish_ready(&mut self, in_flight: &mut VecDeque<InFlight>, coordinator: &mut Coordinator) {
        while let Some(front) = in_flight.front_mut() {
            let answer = match front.answer.try_recv() {
                Ok(Some(answer)) => Ok(answer),
                Ok(None) => return,
                Err(canceled) => Err(canceled),
            };
            let entry = in_flight.pop_front().expect("the front entry exists");
            self.finish(entry, answer, coordinator);
        }
    }

    /// Answers the clients of one entry from its `GroupResult`, and feeds the TC/C
    /// coordinator (held replies first, then resolutions, then outgoing messages, as
    /// `PartitionTask` does).
    fn finish(
        &mut self,
        entry: InFlight,
        answer: Result<ClientWriteResult<WalletRaft>, oneshot::Canceled>,
        coordinator: &mut Coordinator,
    ) {
        let response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(ClientWriteError::ForwardToLeader(forward))) => {
                tracing::warn!(leader = ?forward.leader_id, "an entry was not committed: this node is not the leader");
                refuse(entry.owners, ResultCode::NotLeader);
                return;
            }
            Ok(Err(ClientWriteError::ChangeMembershipError(e))) => {
                tracing::error!(error = %e, "a command entry answered with a membership error");
                refuse(entry.owners, ResultCode::StorageError);
                return;
            }
            Err(oneshot::Canceled) => {
                // openraft dropped the responder: it stopped (shutdown or a fatal error).
                refuse(entry.owners, self.stopped_code());
                return;
            }
        };
        timing::record(
            &self.counters.timing,
            |t| &mut t.fsync,
            entry.proposed.elapsed(),
        );
        self.counters
            .entries_committed
            .set(self.counters.entries_committed.get() + 1);
        let index = log_index(response.log_id.index);
        let result = response.data;
        // Client batches get one result per item; TC/C message entries (no owners) none.
        assert!(
            entry.owners.is_empty() || result.results.len() == entry.items,
            "entry {index} has {} results for {} items",
            result.results.len(),
            entry.items
        );
        for Owner { reply, items } in entry.owners {
            let results = result.results[items.clone()].to_vec();
            let pending: Vec<(usize, TransferId)> = results
                .iter()
                .enumerate()
                .filter(|(_, code)| **code == ResultCode::Pending)
                .map(|(i, _)| (i, entry.transfer_ids[items.start + i]))
                .collect();
            let answer = BatchReply {
                results,
                index,
                timestamp: result.timestamp + items.start as u64,
            };
            if pending.is_empty() {
                let _ = reply.send(answer);
            } else {
                coordinator.hold(reply, answer, pending);
            }
        }
        for (id, code) in result.resolved {
            coordinator.resolve(id, code);
        }
        coordinator.queue(&result.outbox);
    }

    /// The code for writes openraft dropped unanswered: `storage_error` when it stopped on a
    /// storage failure, `shutting_down` otherwise.
    fn stopped_code(&self) -> ResultCode {
        match &self.raft.metrics().borrow().running_state {
            Err(fatal) => fatal_code(fatal),
            Ok(()) => ResultCode::ShuttingDown,
        }
    }
}

/// Most items of one entry: `ENTRY_BYTES_MAX` (and half a flush group of the log writer, which
/// must hold a whole entry) of the largest archived item, but at least a full client batch
/// (which the local path appends to the same writer as it is) and at most `group_items_max`.
fn entry_items_max(pending_bytes_max: usize, group_items_max: usize) -> usize {
    let item_bytes_max = std::mem::size_of::<ArchivedNewAccount>()
        .max(std::mem::size_of::<ArchivedNewTransfer>())
        .max(std::mem::size_of::<ArchivedTccMessage>());
    let bytes = ENTRY_BYTES_MAX.min(pending_bytes_max / 2);
    (bytes / item_bytes_max)
        .min(group_items_max)
        .max(BATCH_ITEMS_MAX)
}

/// Adds a client batch to the entries being formed: to the last one when it has the same kind
/// and room (at most `items_max` items), else as a new entry.
fn merge(
    formed: &mut Vec<Forming>,
    batch: CommandBatch,
    reply: oneshot::Sender<BatchReply>,
    items_max: usize,
) {
    let items = batch.len();
    if let Some(last) = formed.last_mut() {
        let start = last.batch.len();
        if start + items <= items_max {
            let merged = match (&mut last.batch, batch) {
                (CommandBatch::CreateAccounts(into), CommandBatch::CreateAccounts(from)) => {
                    into.extend(from);
                    None
                }
                (CommandBatch::CreateTransfers(into), CommandBatch::CreateTransfers(from)) => {
                    into.extend(from);
                    None
                }
                (CommandBatch::Tcc(into), CommandBatch::Tcc(from)) => {
                    into.extend(from);
                    None
                }
                (_, other) => Some(other),
            };
            match merged {
                None => {
                    last.owners.push(Owner {
                        reply,
                        items: start..start + items,
                    });
                    return;
                }
                Some(batch) => return start_entry(formed, batch, reply),
            }
        }
    }
    start_entry(formed, batch, reply)
}

fn start_entry(formed: &mut Vec<Forming>, batch: CommandBatch, reply: oneshot::Sender<BatchReply>) {
    let items = batch.len();
    formed.push(Forming {
        batch,
        owners: vec![Owner {
            reply,
            items: 0..items,
        }],
    });
}

fn refuse(owners: Vec<Owner>, code: ResultCode) {
    for Owner { reply, items } in owners {
        let _ = reply.send(BatchReply::refused(items.len(), code));
    }
}

fn fatal_code(fatal: &Fatal<u64>) -> ResultCode {
    match fatal {
        Fatal::Stopped => ResultCode::ShuttingDown,
        Fatal::StorageError(_) | Fatal::Panicked => ResultCode::StorageError,
    }
}

/// Waits for the next thing to do: an applied entry at the front of the FIFO, a request (only
/// when `accept`), or a tick (after `tick`, when given).
async fn next_event(
    requests: &flume::Receiver<Request>,
    accept: bool,
    in_flight: &mut VecDeque<InFlight>,
    tick: Option<Duration>,
) -> Event {
    let mut recv = accept.then(|| Box::pin(requests.recv_async()));
    let mut timer = tick.map(|after| Box::pin(glommio::timer::sleep(after)));
    futures::future::poll_fn(|cx| {
        if let Some(front) = in_flight.front_mut() {
            if let Poll::Ready(answer) = Pin::new(&mut front.answer).poll(cx) {
                let entry = in_flight.pop_front().expect("the front entry exists");
                return Poll::Ready(Event::Applied(entry, answer));
            }
        }
        if let Some(recv) = recv.as_mut() {
            if let Poll::Ready(request) = recv.as_mut().poll(cx) {
                return Poll::Ready(Event::Request(request));
            }
        }
        if let Some(timer) = timer.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Tick);
            }
        }
        Poll::Pending
    })
    .await
}

/// Carries out a membership change on this node's Raft of the partition and answers with
/// the outcome (a change other than `Initialize` needs this node to lead the partition).
async fn change_membership(
    raft: Raft<WalletRaft>,
    change: MembershipChange,
    reply: oneshot::Sender<Result<(), String>>,
) {
    let outcome = match change {
        MembershipChange::Initialize(members) => {
            raft.initialize(members).await.map_err(|e| e.to_string())
        }
        MembershipChange::AddVoter(id, addr) => match raft.add_learner(id, addr, true).await {
            Ok(_) => raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        MembershipChange::Remove(id) => raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        // Returns once the campaign started; a leader ignores it (openraft).
        MembershipChange::Elect => raft.trigger().elect().await.map_err(|e| e.to_string()),
    };
    let _ = reply.send(outcome);
}

/// Asks openraft for a snapshot of everything applied and waits until it is written; returns
/// the log index it covers.
///
/// openraft ignores the trigger while it builds a snapshot already (a daily or an interval
/// one, of fewer entries): that build ends short of `applied`, and nothing else would start
/// the one asked for. So the trigger is repeated every `SNAPSHOT_RETRIGGER` until a snapshot
/// covers `applied` (a repeat during a build is ignored again, harmlessly).
async fn snapshot_now(raft: &Raft<WalletRaft>) -> Result<u64, String> {
    let applied = raft.metrics().borrow().last_applied;
    let covers = |snapshot: &Option<LogId>| snapshot.map(|s| s.index) >= applied.map(|a| a.index);
    let deadline = Instant::now() + SNAPSHOT_WAIT;
    loop {
        if covers(&raft.metrics().borrow().snapshot) {
            return Ok(applied_log_index(applied.as_ref()));
        }
        raft.trigger().snapshot().await.map_err(|e| e.to_string())?;
        let waited = raft
            .wait(Some(SNAPSHOT_RETRIGGER))
            .metrics(|m| covers(&m.snapshot), "a snapshot of everything applied")
            .await;
        match waited {
            Ok(metrics) => return Ok(applied_log_index(metrics.snapshot.as_ref())),
            Err(openraft::metrics::WaitError::Timeout(..)) if Instant::now() < deadline => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The reader task: answers groups of reads after one `ensure_linearizable` for all of them.
/// When it fails (the Raft stopped), lookups are dropped (the caller sees `ShuttingDown`),
/// stats are answered from the local state and snapshot requests with the error.
async fn serve_reads(
    raft: Raft<WalletRaft>,
    state: Rc<RefCell<PartitionState>>,
    read_side: SharedReadSide,
    counters: Rc<Counters>,
    snapshots_written: Rc<Cell<u64>>,
    space: Rc<DiskSpace>,
    groups: flume::Receiver<Vec<Request>>,
) {
    while let Ok(mut reads) = groups.recv_async().await {
        while let Ok(more) = groups.try_recv() {
            reads.extend(more);
        }
        // Stats and snapshots do not need this node to lead (a follower answers them from
        // its own state); lookups do.
        let lookups = reads.iter().any(|r| {
            matches!(
                r,
                Request::LookupAccounts {
                    read: ReadFrom::Leader,
                    ..
                } | Request::LookupTransfers {
                    read: ReadFrom::Leader,
                    ..
                }
            )
        });
        let linearizable = if lookups && space.is_full() && is_only_voter(&raft) {
            // openraft waits inside the stuck append and would not answer; alone, this node
            // is the only one that can commit, so its applied state is the latest.
            Ok(())
        } else if lookups {
            raft.ensure_linearizable().await.map(|_| ())
        } else {
            Ok(())
        };
        let linearizable = linearizable.map_err(|e| {
            tracing::debug!(error = %e, "lookups on a partition this node cannot confirm it leads");
            NotLeader {
                leader: raft.metrics().borrow().current_leader,
            }
        });
        for read in reads {
            match read {
                Request::Commands { .. }
                | Request::Tcc { .. }
                | Request::Shutdown
                | Request::Membership { .. }
                | Request::Watch { .. } => unreachable!("not reads"),
                Request::LookupAccounts { ids, read, reply } => {
                    let answer = match (read, linearizable) {
                        (ReadFrom::Leader, Err(not_leader)) => Err(not_leader),
                        _ => {
                            let state = state.borrow();
                            Ok(ids.iter().map(|id| state.account(*id).copied()).collect())
                        }
                    };
                    let _ = reply.send(answer);
                }
                Request::LookupTransfers { ids, read, reply } => {
                    let answer = match (read, linearizable) {
                        (ReadFrom::Leader, Err(not_leader)) => Err(not_leader),
                        _ => {
                            let state = state.borrow();
                            Ok(ids.iter().map(|id| state.lookup_transfer(*id)).collect())
                        }
                    };
                    let _ = reply.send(answer);
                }
                // Read-model queries are answered from this node's model, leader or follower,
                // with or without FOLLOWER_READ: the model is eventually consistent by design
                // (it says how far it has read: `read_position` in every answer, lag in
                // stats), every node's model follows the same committed stream with the same
                // positions, and a point it has not reached is refused (`Ahead`), never
                // answered wrongly. A leadership check would buy nothing a position does not.
                Request::History { query, reply } => {
                    let _ = reply.send(caught_up(&read_side).history(&query));
                }
                Request::BalanceAt { account, at, reply } => {
                    let _ = reply.send(caught_up(&read_side).balance_at(account, at));
                }
                Request::Totals { reply } => {
                    let _ = reply.send(caught_up(&read_side).totals());
                }
                Request::Events {
                    from,
                    account,
                    limit,
                    reply,
                } => {
                    let _ = reply.send(caught_up(&read_side).events_since(from, account, limit));
                }
                Request::Stats { digest, reply } => {
                    let state = state.borrow();
                    let mut stats =
                        stats(&raft, &state, &counters, &snapshots_written, &space, digest);
                    caught_up(&read_side).fill_stats(&mut stats, &state);
                    let _ = reply.send(stats);
                }
                Request::Snapshot { reply } => {
                    let _ = reply.send(snapshot_now(&raft).await);
                }
            }
        }
    }
}

/// A partition's counters in Raft mode. Differences from `PartitionTask`'s: `durable_index` is
/// the last log index openraft appended (durable once appended, in 0.9); `fsyncs` counts this
/// task's committed entries (one leader append + fdatasync each; openraft's own blank and
/// membership entries and its `raft_meta` saves are not counted); `replayed_entries` are the
/// entries openraft re-applied at start; `timing.fsync` holds each entry's time from proposal
/// to committed and applied, `timing.append` and `timing.apply` the log appends and applies
/// (`GroupTiming`);
/// `storage_full` is set while the log waits for disk space; the read model fields are
/// filled in by the caller (`ReadSide::fill_stats`).
fn stats(
    raft: &Raft<WalletRaft>,
    state: &PartitionState,
    counters: &Counters,
    snapshots_written: &Cell<u64>,
    space: &DiskSpace,
    digest: bool,
) -> PartitionStats {
    let metrics = raft.metrics().borrow().clone();
    PartitionStats {
        partition: state.partition(),
        accounts: state.account_count() as u64,
        transfers: state.transfer_count() as u64,
        last_index: state.last_index(),
        durable_index: metrics.last_log_index.map_or(0, log_index),
        replayed_entries: counters.replayed_entries.get(),
        snapshots_written: snapshots_written.get(),
        fsyncs: counters.entries_committed.get(),
        tcc_in_flight: state.tcc_in_flight() as u64,
        read_model: false,
        read_model_position: 0,
        read_model_lag_entries: 0,
        read_model_lag_ms: 0,
        storage_full: space.is_full(),
        storage_failed: metrics.running_state.is_err(),
        timing: counters.timing.get(),
        digest: if digest { state_digest(state) } else { 0 },
        raft: Some(raft_status(&metrics)),
    }
}

/// The read side with everything applied fed to its model (it may lag by the entries of the
/// last apply: `raft::read_side`).
fn caught_up(read_side: &SharedReadSide) -> std::cell::RefMut<'_, ReadSide> {
    let mut read = read_side.borrow_mut();
    read.catch_up();
    read
}

/// True when this node is the partition's only voter (nobody else can commit).
fn is_only_voter(raft: &Raft<WalletRaft>) -> bool {
    let metrics = raft.metrics().borrow().clone();
    let mut voters = metrics.membership_config.membership().voter_ids();
    voters.next() == Some(metrics.id) && voters.next().is_none()
}

fn raft_status(metrics: &openraft::RaftMetrics<u64, NodeAddr>) -> RaftStatus {
    let last_log_index = metrics.last_log_index.map_or(0, log_index);
    let follower_lag_max = metrics.replication.as_ref().map_or(0, |followers| {
        followers
            .iter()
            .filter(|(id, _)| **id != metrics.id)
            .map(|(_, matched)| {
                last_log_index.saturating_sub(matched.map_or(0, |m| log_index(m.index)))
            })
            .max()
            .unwrap_or(0)
    });
    let membership = metrics.membership_config.membership();
    let role = match metrics.state {
        openraft::ServerState::Learner => RaftRole::Learner,
        openraft::ServerState::Follower => RaftRole::Follower,
        openraft::ServerState::Candidate => RaftRole::Candidate,
        openraft::ServerState::Leader => RaftRole::Leader,
        openraft::ServerState::Shutdown => RaftRole::Shutdown,
    };
    let applied_index = metrics.last_applied.map_or(0, |id| log_index(id.index));
    // Only a leader has `replication` (every member's matched log id, itself included). Its
    // own entry is what it flushed; its last log index is what it appended, durable once
    // appended here (in 0.9), so that counts for itself.
    let commit_index = match &metrics.replication {
        Some(matched) if role == RaftRole::Leader => {
            let majority = request::commit_index(membership.get_joint_config(), |id| {
                if id == metrics.id {
                    last_log_index
                } else {
                    matched
                        .get(&id)
                        .and_then(|m| m.as_ref())
                        .map_or(0, |m| log_index(m.index))
                }
            });
            // Applied means committed: metrics sampled a moment apart never say less.
            majority.max(applied_index)
        }
        _ => applied_index,
    };
    let members = membership
        .nodes()
        .map(|(id, addr)| RaftMember {
            node_id: *id,
            client_addr: addr.client_addr.clone(),
            voter: membership.voter_ids().any(|v| v == *id),
            matched_index: metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id))
                .map(|m| m.map_or(0, |m| log_index(m.index))),
        })
        .collect();
    RaftStatus {
        term: metrics.current_term,
        is_leader: role == RaftRole::Leader,
        role,
        leader: metrics.current_leader,
        last_log_index,
        applied_index,
        commit_index,
        follower_lag_max,
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_hold_up_to_4_mib_of_items_and_never_less_than_a_client_batch() {
        let big = entry_items_max(32 << 20, 64 * 1024);
        assert!(big > BATCH_ITEMS_MAX && big < 64 * 1024, "{big}");
        assert!(big * std::mem::size_of::<ArchivedNewTransfer>() <= ENTRY_BYTES_MAX);
        // A small writer (4 MiB segments: 1 MiB flush groups) still takes a client batch.
        assert_eq!(entry_items_max(1 << 20, 64 * 1024), BATCH_ITEMS_MAX);
        // Never more than a group.
        assert_eq!(entry_items_max(32 << 20, 10_000), 10_000);
    }
}
