//! `ReadSide`: a partition's CQRS read model in Raft mode, with the subscribers waiting for
//! it to move, shared between openraft's state machine (which feeds it) and the partition's
//! `RaftTask` (which queries it).
//!
//! **Fed by the committed stream.** `RaftPartition::apply` hands it the events `apply_entry`
//! derived from each committed entry, in log order, with the entry's log index and effective
//! timestamp: exactly what `PartitionTask` feeds the local read model. Every replica applies
//! the same committed entries with the same deterministic `apply_entry`, so every node's read
//! model holds the same history and numbers the same events with the same positions
//! (`position = log index << 16 | ordinal`, as in local mode). Nothing uncommitted ever
//! reaches it: openraft applies an entry only once a majority has it.
//!
//! **Where it starts.** From the state the state machine starts from (`ReadModel::from_state`):
//! balances are exact from that point, older history is unknown and refused
//! (`QueryError::BeforeRetained`, naming the oldest point known). At a restart that state is a
//! snapshot chosen to lie `read_model_rebuild_entries` before the committed end when the
//! retained log allows it (`snapshot_files::load_for_rebuild`), and openraft re-applies the
//! committed entries after it through `apply`, which rebuilds their history. A snapshot
//! *installed* from the leader (a follower too far behind for the log) restarts the model from
//! that snapshot: the entries it covers never reach this node, so their history is not here.
//!
//! **Off the commit path.** Feeding the model costs about 200 ns per transfer (1.5-2 ms for
//! an entry of 8190), and `apply` runs between commit and the client's answer. So `apply` only
//! *defers* each entry's events (`defer`: copied into reused buffers), and they reach the model
//! in order at the next `catch_up`: run by a task spawned right after the apply (after a
//! timer turn, so the partition's task answers the clients first), by the next `apply` before
//! it defers more, and by every query, stats read and subscription poll before it reads. A
//! reader therefore never sees the model behind what the state machine applied.
//!
//! **Wake-ups.** Subscription tasks register a wake-up channel (`Request::Watch`); `notify`
//! runs after each applied batch, so a subscriber on a follower hears of new changes as soon
//! as its node applies them, not at the partition task's next turn.
//!
//! Single-threaded (the partition's core): shared as `Rc<RefCell<_>>`, and no borrow is held
//! across an `.await`.

use crate::event::Event;
use crate::model::AccountId;
use crate::raft::entry_record::applied_log_index;
use crate::raft::snapshot_files::RebuildWindow;
use crate::raft::types::StorageError;
use crate::raft::RaftLogStore;
use crate::read_model::position::position;
use crate::read_model::{
    At, BalanceAsOf, EventsPage, HistoryPage, HistoryQuery, QueryError, ReadModel,
};
use crate::runtime::watchers::Watchers;
use crate::runtime::{PartitionStats, PartitionTotals};
use crate::state_machine::PartitionState;
use openraft::storage::RaftLogStorage;
use std::cell::RefCell;
use std::rc::Rc;

/// The read side shared by a partition's state machine and its task.
pub type SharedReadSide = Rc<RefCell<ReadSide>>;

pub struct ReadSide {
    /// `None` when the read model is off (`read_model_history_per_account = 0`).
    model: Option<ReadModel>,
    history_max: usize,
    watchers: Watchers,
    /// Applied entries whose events wait for `catch_up`, in log order: (index, timestamp,
    /// events). At most `DEFERRED_ENTRIES_MAX`.
    deferred: Vec<(u64, u64, Vec<Event>)>,
    /// Emptied event buffers, reused by `defer` (no allocation per entry once warm).
    spare: Vec<Vec<Event>>,
    /// The applied index the last `notify` reported, for the wake-up after a `catch_up`.
    applied_index: u64,
}

/// Most entries waiting in `ReadSide::deferred`: past it, `defer` catches up first. (Every
/// apply catches up before it defers, so this bounds one apply's entries.)
const DEFERRED_ENTRIES_MAX: usize = 256;

impl ReadSide {
    /// A read side starting where `state` is, keeping `history_max` entries per account
    /// (0: no read model; wake-ups still work, queries answer `Disabled`).
    pub fn new(state: &PartitionState, history_max: usize) -> ReadSide {
        ReadSide {
            model: (history_max > 0).then(|| ReadModel::from_state(state, history_max)),
            history_max,
            watchers: Watchers::default(),
            deferred: Vec::new(),
            spare: Vec::new(),
            applied_index: state.last_index(),
        }
    }

    /// The read model is on.
    pub fn is_on(&self) -> bool {
        self.model.is_some()
    }

    pub fn model(&self) -> Option<&ReadModel> {
        self.model.as_ref()
    }

    /// Starts over from `state` (an installed snapshot): what the model knew is replaced by
    /// the snapshot's balances, with no history before it.
    pub fn restart_from(&mut self, state: &PartitionState) {
        if self.model.is_some() {
            // The snapshot covers whatever waited: its balances replace it.
            self.recycle_deferred();
            self.model = Some(ReadModel::from_state(state, self.history_max));
        }
    }

    /// Keeps the events of committed log entry `index`, applied at `timestamp`, for the next
    /// `catch_up` (module docs). Nothing is kept without a read model.
    pub fn defer(&mut self, index: u64, timestamp: u64, events: &[Event]) {
        if self.model.is_none() {
            return;
        }
        if self.deferred.len() >= DEFERRED_ENTRIES_MAX {
            self.catch_up();
        }
        let mut buffer = self.spare.pop().unwrap_or_default();
        buffer.extend_from_slice(events);
        self.deferred.push((index, timestamp, buffer));
    }

    /// Feeds the model every deferred entry, in order, then wakes the subscribers if the
    /// partition moved.
    pub fn catch_up(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let deferred = std::mem::take(&mut self.deferred);
        for (index, timestamp, events) in &deferred {
            self.apply(*index, *timestamp, events);
        }
        self.deferred = deferred;
        self.recycle_deferred();
        self.watchers.notify(self.applied_index);
    }

    /// Empties `deferred`, keeping its event buffers for reuse.
    fn recycle_deferred(&mut self) {
        for (_, _, mut events) in self.deferred.drain(..) {
            events.clear();
            self.spare.push(events);
        }
    }

    /// Feeds the events of committed log entry `index`, applied at `timestamp` (the entry's
    /// effective timestamp). An entry without events may follow a gap (a blank or membership
    /// entry applied past one, see `RaftPartition`); one with events must be the next.
    pub fn apply(&mut self, index: u64, timestamp: u64, events: &[Event]) {
        if let Some(model) = &mut self.model {
            if events.is_empty() {
                model.skip_to(index.saturating_sub(1));
            }
            model.apply(index, timestamp, events);
        }
    }

    /// Wakes every subscriber when the partition applied past the last wake-up (at once if
    /// nothing waits for `catch_up`; else that catch-up wakes them, once the model has it).
    pub fn notify(&mut self, applied_index: u64) {
        self.applied_index = applied_index;
        if self.deferred.is_empty() {
            self.watchers.notify(applied_index);
        }
    }

    pub fn add_watcher(&mut self, wake: flume::Sender<()>) {
        self.watchers.add(wake);
    }

    pub fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, QueryError> {
        self.on()?.history(query)
    }

    pub fn balance_at(&self, account: AccountId, at: At) -> Result<BalanceAsOf, QueryError> {
        self.on()?.balance_at(account, at)
    }

    /// Money per currency, as of the model's read position.
    pub fn totals(&self) -> Result<PartitionTotals, QueryError> {
        let model = self.on()?;
        Ok(PartitionTotals {
            position: model.read_position(),
            by_currency: model.totals(),
        })
    }

    /// Changes from position `from` on (see `ReadModel::events_since`). Everything the model
    /// holds is committed, so nothing is held back: the bound is the end of what it applied.
    pub fn events_since(
        &self,
        from: u64,
        account: Option<AccountId>,
        limit: usize,
    ) -> Result<EventsPage, QueryError> {
        let model = self.on()?;
        let below = position(model.last_index() + 1, 0);
        model.events_since(from, below, account, limit)
    }

    /// Fills the read-model fields of a partition's counters (`state`: the partition's
    /// applied state; call `catch_up` first, and the lag is 0).
    pub fn fill_stats(&self, stats: &mut PartitionStats, state: &PartitionState) {
        stats.read_model = self.model.is_some();
        if let Some(model) = &self.model {
            let lag = model.lag(state.last_index(), state.last_timestamp());
            stats.read_model_position = model.read_position();
            stats.read_model_lag_entries = lag.entries;
            stats.read_model_lag_ms = lag.ms;
        }
    }

    fn on(&self) -> Result<&ReadModel, QueryError> {
        self.model.as_ref().ok_or(QueryError::Disabled)
    }
}

/// Where a restart should start the state machine so that the read model gets back the
/// history of the last `rebuild_entries` committed entries (`RaftPartition::
/// open_with_read_model`), read from the log store before openraft takes it: what is
/// committed and what is purged. `None` without a read model or with `rebuild_entries = 0`
/// (start from the newest snapshot).
pub async fn rebuild_window(
    store: &mut RaftLogStore,
    history_max: usize,
    rebuild_entries: u64,
) -> Result<Option<RebuildWindow>, StorageError> {
    if history_max == 0 || rebuild_entries == 0 {
        return Ok(None);
    }
    let log = store.get_log_state().await?;
    let committed = applied_log_index(store.read_committed().await?.as_ref());
    Ok(Some(RebuildWindow {
        purged: applied_log_index(log.last_purged_log_id.as_ref()),
        committed,
        wanted: committed.saturating_sub(rebuild_entries),
    }))
}
