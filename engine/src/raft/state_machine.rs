//! `RaftPartition`: openraft's state machine (`RaftStateMachine`, storage-v2) over a
//! partition's `PartitionState` (RAFT_PLAN §2.4).
//!
//! | openraft                   | here                                                        |
//! | -------------------------- | ----------------------------------------------------------- |
//! | `apply`                    | `PartitionState::apply_entry` per entry, at the leader's     |
//! |                            | timestamp (clamped there, so every replica agrees)          |
//! | `applied_state`            | the last applied id and membership, kept beside the state   |
//! | `get_snapshot_builder`     | `SnapshotCapture::take`: a consistent view, taken at once    |
//! | `build_snapshot`           | `snapshot_files::write_pair` on a helper thread             |
//! | `begin_receiving_snapshot` | a fresh path in the snapshot dir for the transport to fill   |
//! | `install_snapshot`         | `snapshot_files::install` (load, check, write) on a thread, |
//! |                            | then the loaded state replaces the live one                 |
//! | `get_current_snapshot`     | the newest snapshot + Raft meta pair on disk                |
//!
//! **Indexes.** `PartitionState::last_index` is a log index (its snapshots and the segment log
//! share it); openraft's ids are Raft indexes, one lower (`entry_record`). The invariant
//! `state.last_index == applied_log_index(applied)` holds between calls and is asserted.
//!
//! **Gaps.** openraft applies committed entries strictly in order, from the last applied one
//! (or the installed snapshot's) on. Its storage suite, though, applies blank and membership
//! entries to a fresh state machine at arbitrary increasing indexes. Such an entry changes no
//! ledger state, so it is applied past a gap (`PartitionState::skip_to`); a command entry must
//! follow the last applied one exactly, or `apply` fails (the state would silently miss
//! commands). An entry at or below the last applied one fails too.
//!
//! **Sharing.** The state is an `Rc<RefCell<_>>`: the partition task reads it (queries, TC/C)
//! while openraft's state-machine task applies to it, both on the partition's core. No borrow
//! is held across an `.await`. So is the read side (`read_side`): the read model, fed here with
//! the events of every applied entry on every replica, and the subscribers woken after each
//! applied batch.

use crate::command::entry_kind;
use crate::partition::PartitionId;
use crate::raft::entry_record::{applied_log_index, log_index};
use crate::raft::read_side::{ReadSide, SharedReadSide};
use crate::raft::snapshot_files::{
    install, load_for_rebuild, load_newest, newest, receiving_path, remove_unfinished_receptions,
    write_pair, RebuildWindow,
};
use crate::raft::snapshot_meta::RaftSnapshotMeta;
use crate::raft::types::{Entry, GroupResult, LogId, NodeAddr, SnapshotHandle, StorageError};
use crate::raft::WalletRaft;
use crate::runtime::timing::{self, SharedTiming};
use crate::snapshot::{SnapshotCapture, SnapshotError, SnapshotRetention};
use crate::state_machine::{ApplyOutput, PartitionState};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError, StoredMembership,
};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long `apply` lets the executor run before it applies command entries (see there).
const SUBMIT_TURN: Duration = Duration::from_micros(20);

/// How long `apply` lets the executor run before it applies entries, if at all.
///
/// Only entries with commands take CPU worth yielding for. Before them, a leader (and any
/// replica when `follower_delay` is zero) gives the executor one turn (`submit_turn`):
/// glommio hands queued I/O to the kernel only between task runs, and RaftCore has usually
/// just queued the next entry's log write, which otherwise waited for the whole apply (as
/// `PartitionTask`'s SUBMIT_TURN explains for the local path). A follower waits
/// `follower_delay` instead (which is a turn too): no client waits for its apply, while the
/// leader's, started by the same commit, holds the answers. Three replicas sharing two CPUs
/// all applied at once before; a leader's apply of a 4,000-transfer entry then took up to
/// 4 ms instead of 1.1 (timeline of a loopback cluster at 30,000 transfers/s).
fn pause_before_apply(
    submit_turn: bool,
    follower_delay: Duration,
    leading: bool,
    has_commands: bool,
) -> Option<Duration> {
    if !has_commands {
        None
    } else if !leading && !follower_delay.is_zero() {
        Some(follower_delay)
    } else {
        submit_turn.then_some(SUBMIT_TURN)
    }
}

/// How often a snapshot that found the disk full is written again.
const SNAPSHOT_FULL_RETRY_MS: u64 = 500;

pub struct RaftPartition {
    state: Rc<RefCell<PartitionState>>,
    /// The id of the last applied entry (`None`: nothing applied, log index 0).
    applied: Option<LogId>,
    /// The last membership applied (from a membership entry or an installed snapshot).
    membership: StoredMembership<u64, NodeAddr>,
    snapshot_dir: PathBuf,
    retention: SnapshotRetention,
    /// Snapshots this state machine built, shared with its builders and
    /// with whoever asked for `snapshots_written` (the partition's counters).
    snapshots_written: Rc<Cell<u64>>,
    /// Sleep `SUBMIT_TURN` before applying command entries (`with_submit_turn`).
    submit_turn: bool,
    /// Feed the read model after the apply returns, not inside it (`with_deferred_read_model`).
    defer_read_model: bool,
    /// While this node follows the partition, wait this long before applying command entries
    /// (`with_follower_apply_delay`; zero: no wait).
    follower_delay: Duration,
    /// Whether this node leads the partition now, kept by the partition's task.
    leading: Rc<Cell<bool>>,
    /// Set at shutdown: a snapshot waiting for disk space stops waiting (`with_give_up`).
    give_up: Arc<AtomicBool>,
    /// Held while a helper thread writes or prunes `snapshot_dir`: openraft may build a
    /// snapshot while it installs one received from the leader, and two writers of one dir
    /// would prune each other's files (seen in the cluster chaos run: the install failed on a
    /// file the build had just deleted, and openraft stopped the partition for good) or write
    /// the same index's temp file at once.
    dir_lock: Arc<Mutex<()>>,
    /// Reused across entries. Events are kept only for a read model (else counted).
    out: ApplyOutput,
    /// The read model and the subscribers' wake-ups, shared with the partition's task.
    read: SharedReadSide,
    /// Where each apply's time goes (`GroupTiming::apply`).
    timing: SharedTiming,
}

impl RaftPartition {
    /// The state machine of `partition` (of `partition_count`), starting from the newest usable
    /// snapshot in `snapshot_dir` (or from an empty state). openraft then re-applies the
    /// committed log entries after it.
    pub fn open(
        snapshot_dir: &Path,
        partition: PartitionId,
        partition_count: u32,
    ) -> Result<RaftPartition, crate::log::LogError> {
        RaftPartition::open_with_read_model(snapshot_dir, partition, partition_count, 0, None)
    }

    /// `open`, with a read model keeping `history_max` entries per account (0: none; see
    /// `read_side`). With `rebuild`, the state machine starts from the snapshot
    /// `load_for_rebuild` picks in that window (when one qualifies), not necessarily the
    /// newest, so that openraft re-applies the committed entries after it and the read model
    /// gets their history back (a clean shutdown leaves a snapshot at the very end, and
    /// starting there would leave the history empty). The state is the same either way.
    pub fn open_with_read_model(
        snapshot_dir: &Path,
        partition: PartitionId,
        partition_count: u32,
        history_max: usize,
        rebuild: Option<RebuildWindow>,
    ) -> Result<RaftPartition, crate::log::LogError> {
        let removed = remove_unfinished_receptions(snapshot_dir)?;
        if removed > 0 {
            tracing::info!(partition, removed, dir = %snapshot_dir.display(), "deleted snapshots whose reception did not finish");
        }
        let earlier = match rebuild {
            Some(window) => load_for_rebuild(snapshot_dir, partition, partition_count, window)?,
            None => None,
        };
        let loaded = match earlier {
            Some(loaded) => Some(loaded),
            None => load_newest(snapshot_dir, partition, partition_count)?,
        };
        let (state, applied, membership) = match loaded {
            Some((meta, loaded)) => (loaded.state, meta.last_log_id, meta.last_membership),
            None => (
                PartitionState::new(partition, partition_count),
                None,
                StoredMembership::default(),
            ),
        };
        let read = ReadSide::new(&state, history_max);
        let sm = RaftPartition {
            state: Rc::new(RefCell::new(state)),
            applied,
            membership,
            snapshot_dir: snapshot_dir.to_path_buf(),
            retention: SnapshotRetention::default(),
            snapshots_written: Rc::default(),
            submit_turn: false,
            defer_read_model: false,
            follower_delay: Duration::ZERO,
            leading: Rc::new(Cell::new(false)),
            give_up: Arc::default(),
            dir_lock: Arc::default(),
            out: if read.is_on() {
                ApplyOutput::default()
            } else {
                ApplyOutput::counting_events()
            },
            read: Rc::new(RefCell::new(read)),
            timing: SharedTiming::default(),
        };
        sm.check_applied();
        Ok(sm)
    }

    /// Which snapshots survive a new one (default: `SnapshotRetention::default()`).
    pub fn with_retention(mut self, retention: SnapshotRetention) -> RaftPartition {
        self.retention = retention;
        self
    }

    /// Records each apply's time in `timing` (the partition's).
    pub fn with_timing(mut self, timing: SharedTiming) -> RaftPartition {
        self.timing = timing;
        self
    }

    /// Lets the executor run once before each apply of command entries (see `apply`). Only on
    /// a glommio executor (a timer needs one); off by default.
    pub fn with_submit_turn(mut self) -> RaftPartition {
        self.submit_turn = true;
        self
    }

    /// Feeds the read model from a task of its own right after each apply (after a timer
    /// turn, so that the clients are answered first) instead of inside it: `read_side` module
    /// docs. Only on a glommio executor; off by default (fed before `apply` returns).
    pub fn with_deferred_read_model(mut self) -> RaftPartition {
        self.defer_read_model = true;
        self
    }

    /// While `leading` says this node follows, waits `delay` before each apply of command
    /// entries, so that a leader on the same CPUs applies (and answers its clients) first:
    /// `EngineConfig::follower_apply_delay_us`. The delay holds only this state machine's
    /// task: the follower keeps appending (and acknowledging) entries meanwhile, and the next
    /// apply takes every entry committed by then. Only on a glommio executor.
    pub fn with_follower_apply_delay(
        mut self,
        delay: Duration,
        leading: Rc<Cell<bool>>,
    ) -> RaftPartition {
        self.follower_delay = delay;
        self.leading = leading;
        self
    }

    /// Shares the flag that ends a snapshot's wait for disk space (`DiskSpace::give_up`).
    pub fn with_give_up(mut self, give_up: Arc<AtomicBool>) -> RaftPartition {
        self.give_up = give_up;
        self
    }

    /// The live state, shared: readers must not hold a borrow across an `.await`.
    pub fn state(&self) -> Rc<RefCell<PartitionState>> {
        self.state.clone()
    }

    /// The read side (read model and subscribers' wake-ups), shared: readers must not hold a
    /// borrow across an `.await`.
    pub fn read_side(&self) -> SharedReadSide {
        self.read.clone()
    }

    /// How many snapshots it wrote so far (a live counter, readable after the state machine
    /// moved into openraft).
    pub fn snapshots_written(&self) -> Rc<Cell<u64>> {
        self.snapshots_written.clone()
    }

    fn check_applied(&self) {
        assert_eq!(
            self.state.borrow().last_index(),
            applied_log_index(self.applied.as_ref()),
            "the state has applied exactly through the applied id"
        );
    }

    /// Applies one committed entry.
    fn apply_one(&mut self, entry: &Entry) -> Result<GroupResult, StorageError> {
        let index = log_index(entry.log_id.index);
        let mut state = self.state.borrow_mut();
        let next = state.last_index() + 1;
        let refuse = |what: String| -> StorageError {
            StorageIOError::apply(entry.log_id, AnyError::error(what)).into()
        };
        if index < next {
            return Err(refuse(format!(
                "entry {} is at or below the last applied one ({:?})",
                entry.log_id, self.applied
            )));
        }
        self.out.clear();
        let result = match &entry.payload {
            EntryPayload::Blank | EntryPayload::Membership(_) => {
                let kind = match &entry.payload {
                    EntryPayload::Membership(_) => entry_kind::MEMBERSHIP,
                    _ => entry_kind::BLANK,
                };
                state.skip_to(index - 1);
                state
                    .apply_entry(index, kind, &[], 0, &mut self.out)
                    .map_err(|e| refuse(e.to_string()))?;
                // No events, but the read model's position moves past the entry.
                self.read
                    .borrow_mut()
                    .defer(index, state.last_timestamp(), &[]);
                GroupResult::default()
            }
            EntryPayload::Normal(data) => {
                if index != next {
                    return Err(refuse(format!(
                        "command entry {} leaves a gap after log index {}",
                        entry.log_id,
                        next - 1
                    )));
                }
                let timestamp = state.effective_timestamp(data.timestamp_ns());
                state
                    .apply_entry(
                        index,
                        data.kind(),
                        data.body(),
                        data.timestamp_ns(),
                        &mut self.out,
                    )
                    .map_err(|e| refuse(e.to_string()))?;
                // The read model records the moment the entry was applied at, as recovery
                // does in local mode (every replica clamps alike, so they all agree).
                self.read
                    .borrow_mut()
                    .defer(index, timestamp, &self.out.events);
                GroupResult {
                    results: std::mem::take(&mut self.out.results),
                    timestamp,
                    outbox: std::mem::take(&mut self.out.outbox),
                    resolved: std::mem::take(&mut self.out.resolved),
                }
            }
        };
        drop(state);
        if let EntryPayload::Membership(membership) = &entry.payload {
            self.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
        }
        self.applied = Some(entry.log_id);
        Ok(result)
    }

    fn snapshot_meta(&self) -> RaftSnapshotMeta {
        RaftSnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.applied.map_or_else(
                || "none".to_string(),
                |id| format!("{}-{}", id.leader_id.term, id.index),
            ),
        }
    }
}

/// Builds one snapshot from a capture taken when the builder was made, so entries applied
/// meanwhile do not leak into it (openraft builds in a task of its own, beside `apply`).
pub struct SnapshotBuilder {
    capture: Option<SnapshotCapture>,
    meta: RaftSnapshotMeta,
    dir: PathBuf,
    retention: SnapshotRetention,
    written: Rc<Cell<u64>>,
    give_up: Arc<AtomicBool>,
    dir_lock: Arc<Mutex<()>>,
}

impl RaftSnapshotBuilder<WalletRaft> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<WalletRaft>, StorageError> {
        let signature = Some(self.meta.signature());
        let failed = |e: &dyn std::error::Error| -> StorageError {
            StorageIOError::write_snapshot(signature.clone(), AnyError::error(e.to_string())).into()
        };
        let capture = self
            .capture
            .take()
            .ok_or_else(|| failed(&std::io::Error::other("this builder already built")))?;
        let (dir, meta, retention) = (self.dir.clone(), self.meta.clone(), self.retention);
        let (give_up, dir_lock) = (self.give_up.clone(), self.dir_lock.clone());
        // A full disk is waited out (openraft stops the partition's Raft on a failed build),
        // on the helper thread, beside everything else; a shutdown ends the wait.
        let handle = on_helper_thread("raft-snapshot", move || {
            crate::background::leave_the_shard_core();
            let mut capture = capture;
            let _dir = lock_dir(&dir_lock);
            while_disk_full(&give_up, crate::log::LogError::is_disk_full, || {
                write_pair(&dir, &mut capture, &meta, retention)
            })
        })
        .await
        .map_err(|e| failed(&e))?
        .map_err(|e| failed(&e))?;
        self.written.set(self.written.get() + 1);
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(handle),
        })
    }
}

impl RaftStateMachine<WalletRaft> for RaftPartition {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, NodeAddr>), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    /// Applies `entries` in order, one result per entry. On an error the entries before it
    /// stay applied and openraft stops this Raft (the state is then behind, never wrong).
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<GroupResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let has_commands = entries
            .iter()
            .any(|e| matches!(e.payload, EntryPayload::Normal(_)));
        if let Some(pause) = pause_before_apply(
            self.submit_turn,
            self.follower_delay,
            self.leading.get(),
            has_commands,
        ) {
            glommio::timer::sleep(pause).await;
        }
        let started = Instant::now();
        // What an earlier apply deferred goes first (the model takes entries in order).
        self.read.borrow_mut().catch_up();
        let results = entries
            .iter()
            .map(|entry| self.apply_one(entry))
            .collect::<Result<Vec<_>, _>>();
        self.check_applied();
        // Subscribers hear of what was applied (committed): on a follower too, at once (or as
        // soon as the read model has it).
        let applied = self.state.borrow().last_index();
        self.read.borrow_mut().notify(applied);
        timing::record(&self.timing, |t| &mut t.apply, started.elapsed());
        if self.defer_read_model {
            let read = self.read.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(SUBMIT_TURN).await;
                read.borrow_mut().catch_up();
            })
            .detach();
        } else {
            self.read.borrow_mut().catch_up();
        }
        results
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let term = self.applied.map_or(0, |id| id.leader_id.term);
        SnapshotBuilder {
            capture: Some(SnapshotCapture::take(&self.state.borrow(), term)),
            meta: self.snapshot_meta(),
            dir: self.snapshot_dir.clone(),
            retention: self.retention,
            written: self.snapshots_written.clone(),
            give_up: self.give_up.clone(),
            dir_lock: self.dir_lock.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotHandle>, StorageError> {
        std::fs::create_dir_all(&self.snapshot_dir)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(SnapshotHandle {
            path: receiving_path(&self.snapshot_dir),
        }))
    }

    /// Loads and checks the snapshot, makes it this partition's newest snapshot on disk, then
    /// replaces the live state with it. A snapshot that fails to load or does not match `meta`
    /// or this partition changes nothing.
    async fn install_snapshot(
        &mut self,
        meta: &RaftSnapshotMeta,
        snapshot: Box<SnapshotHandle>,
    ) -> Result<(), StorageError> {
        let failed = |e: &dyn std::error::Error| -> StorageError {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e.to_string()))
                .into()
        };
        let (partition, count) = {
            let state = self.state.borrow();
            (state.partition(), state.partition_count())
        };
        let (dir, owned_meta, retention) =
            (self.snapshot_dir.clone(), meta.clone(), self.retention);
        let (give_up, dir_lock) = (self.give_up.clone(), self.dir_lock.clone());
        // A failed install stops the partition's Raft (openraft treats it as fatal): a full
        // disk is waited out instead, on the helper thread, as a snapshot build's is.
        let (loaded, _installed) = on_helper_thread("raft-install", move || {
            let _dir = lock_dir(&dir_lock);
            while_disk_full(&give_up, SnapshotError::is_disk_full, || {
                install(&dir, &owned_meta, &snapshot, partition, count, retention)
            })
        })
        .await
        .map_err(|e| failed(&e))?
        .map_err(|e: SnapshotError| failed(&e))?;
        *self.state.borrow_mut() = loaded.state;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.check_applied();
        tracing::info!(
            partition,
            last_index = self.state.borrow().last_index(),
            "installed a snapshot from the leader"
        );
        // The entries the snapshot covers never reach this node: the read model starts over
        // from the snapshot's balances, and refuses what lies before it (`read_side`).
        let state = self.state.borrow();
        let mut read = self.read.borrow_mut();
        read.restart_from(&state);
        read.notify(state.last_index());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<WalletRaft>>, StorageError> {
        newest(&self.snapshot_dir).map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

/// Takes the snapshot dir's lock (`RaftPartition::dir_lock`). A holder that panicked left no
/// state behind it in the lock (the files speak for themselves): take it over.
fn lock_dir(lock: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs blocking `attempt` until it does not fail on a full disk (`is_full`), every
/// `SNAPSHOT_FULL_RETRY_MS`, or until `give_up` is set (shutdown): the snapshot files' wait
/// for space, on a helper thread.
fn while_disk_full<T, E>(
    give_up: &AtomicBool,
    is_full: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    loop {
        match attempt() {
            Err(e) if is_full(&e) && !give_up.load(Ordering::Relaxed) => {
                std::thread::sleep(Duration::from_millis(SNAPSHOT_FULL_RETRY_MS));
            }
            done => return done,
        }
    }
}

/// Runs blocking `work` on a thread of its own and awaits its result without blocking the
/// executor. An error means the thread could not start or panicked.
async fn on_helper_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, std::io::Error> {
    let (done, result) = futures::channel::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = done.send(work());
        })?;
    result
        .await
        .map_err(|_| std::io::Error::other(format!("the {name} thread panicked")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(3);

    #[test]
    fn a_follower_waits_its_delay_before_commands_and_a_leader_only_a_turn() {
        assert_eq!(pause_before_apply(true, DELAY, false, true), Some(DELAY));
        assert_eq!(pause_before_apply(false, DELAY, false, true), Some(DELAY));
        assert_eq!(
            pause_before_apply(true, DELAY, true, true),
            Some(SUBMIT_TURN)
        );
        assert_eq!(pause_before_apply(false, DELAY, true, true), None);
    }

    #[test]
    fn without_a_delay_every_replica_takes_the_same_turn() {
        for leading in [false, true] {
            assert_eq!(
                pause_before_apply(true, Duration::ZERO, leading, true),
                Some(SUBMIT_TURN)
            );
            assert_eq!(
                pause_before_apply(false, Duration::ZERO, leading, true),
                None
            );
        }
    }

    #[test]
    fn entries_without_commands_never_wait() {
        for (turn, leading) in [(false, false), (false, true), (true, false), (true, true)] {
            assert_eq!(pause_before_apply(turn, DELAY, leading, false), None);
        }
    }
}
