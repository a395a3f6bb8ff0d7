//! What callers send to a partition task, and what comes back.

use crate::command::CommandBatch;
use crate::model::{Account, AccountId, TransferId, TransferLookup};
use crate::read_model::{At, BalanceAsOf, EventsPage, HistoryPage, HistoryQuery, QueryError};
use crate::result_code::ResultCode;
use crate::tcc::TccMessage;
use futures::channel::oneshot;

/// The answer to a command batch: one code per item, in order. Sent only after the batch's log
/// entry is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchReply {
    pub results: Vec<ResultCode>,
    /// Log index of the entry (0 when the whole batch was refused before logging).
    pub index: u64,
    /// Timestamp of the first item.
    pub timestamp: u64,
}

impl BatchReply {
    /// The same code for every item of a batch that never reached the log.
    pub fn refused(items: usize, code: ResultCode) -> BatchReply {
        BatchReply {
            results: vec![code; items],
            index: 0,
            timestamp: 0,
        }
    }
}

/// Counters of one partition, for status and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionStats {
    pub partition: u32,
    pub accounts: u64,
    pub transfers: u64,
    pub last_index: u64,
    pub durable_index: u64,
    pub replayed_entries: u64,
    pub snapshots_written: u64,
    pub fsyncs: u64,
    /// TC/C transfers started here and not finished.
    pub tcc_in_flight: u64,
    /// The read model is on (`read_model_history_per_account` > 0).
    pub read_model: bool,
    /// Read model position (everything at or below it is in its answers).
    pub read_model_position: u64,
    /// How far the read model is behind the partition: log entries and milliseconds.
    pub read_model_lag_entries: u64,
    pub read_model_lag_ms: u64,
    /// The disk is full: writes are refused with `storage_full` until space returns.
    pub storage_full: bool,
    /// The log failed (an fsync or write error): writes are refused with `storage_error`
    /// until a restart.
    pub storage_failed: bool,
    /// Time spent per group commit: apply (CPU) and write + fdatasync (disk).
    pub timing: super::timing::GroupTiming,
    pub digest: u128,
    /// The partition's Raft as this node sees it (`None` without replication).
    pub raft: Option<RaftStatus>,
}

/// A partition's Raft group from this node's side (openraft's metrics), in log indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub term: u64,
    /// This node leads the group now.
    pub is_leader: bool,
    /// The last entry in this node's log (durable).
    pub last_log_index: u64,
    /// The last entry applied to the state.
    pub applied_index: u64,
    /// On a leader: the most entries any follower is behind its log (0 with no followers).
    pub follower_lag_max: u64,
    /// The node this node believes leads the group (itself when `is_leader`).
    pub leader: Option<u64>,
    /// The group's members as this node's log has them (a single node: itself).
    pub members: Vec<RaftMember>,
}

/// One member of a partition's Raft group, as `RaftStatus` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftMember {
    pub node_id: u64,
    /// Where its clients connect (what the partition map hands out).
    pub client_addr: String,
    /// A voter (else a learner catching up).
    pub voter: bool,
    /// On the leader: the last log index known to be on that member (None elsewhere).
    pub matched_index: Option<u64>,
}

/// Whose state a lookup may read (Raft mode; without replication every read is the node's
/// own, durable state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadFrom {
    /// The leader's, after it confirms it still leads (`ensure_linearizable`): a lookup sees
    /// every write acknowledged before it was sent. A follower drops such a lookup (the
    /// client library answers `not_leader`).
    #[default]
    Leader,
    /// This node's state as applied so far, even on a follower: may miss the latest
    /// acknowledged writes (by its replication lag), never shows anything unacknowledged-
    /// and-lost. The explicit opt-in of "follower reads".
    Local,
}

/// What `Request::Membership` asks a partition's Raft to do.
#[derive(Clone, Debug)]
pub enum MembershipChange {
    /// Make a fresh partition a cluster of these voters (`cluster init`; this node must be
    /// one of them). Harmless on a partition that is already initialized with them.
    Initialize(std::collections::BTreeMap<u64, crate::raft::NodeAddr>),
    /// Add a node: as a learner until it has caught up, then as a voter.
    AddVoter(u64, crate::raft::NodeAddr),
    /// Remove a voter (or learner).
    Remove(u64),
}

pub enum Request {
    Commands {
        batch: CommandBatch,
        reply: oneshot::Sender<BatchReply>,
        /// When it was queued (for the queue-wait histogram).
        enqueued: std::time::Instant,
    },
    LookupAccounts {
        ids: Vec<AccountId>,
        read: ReadFrom,
        reply: oneshot::Sender<Vec<Option<Account>>>,
    },
    LookupTransfers {
        ids: Vec<TransferId>,
        read: ReadFrom,
        reply: oneshot::Sender<Vec<Option<TransferLookup>>>,
    },
    /// A page of an account's history from the read model.
    History {
        query: HistoryQuery,
        reply: oneshot::Sender<Result<HistoryPage, QueryError>>,
    },
    /// An account's balance as of a timestamp or position, from the read model.
    BalanceAt {
        account: AccountId,
        at: At,
        reply: oneshot::Sender<Result<BalanceAsOf, QueryError>>,
    },
    /// Durable changes from a position on (subscriptions), from the read model.
    Events {
        from: u64,
        account: Option<AccountId>,
        limit: usize,
        reply: oneshot::Sender<Result<EventsPage, QueryError>>,
    },
    /// Wake me (`()`, never blocking) after each group commit that makes new entries durable
    /// (subscriptions); dropped when the receiver is.
    Watch { wake: flume::Sender<()> },
    /// Counters; with `digest`, also the state digest (a full pass over the state: tests and
    /// audits only).
    Stats {
        digest: bool,
        reply: oneshot::Sender<PartitionStats>,
    },
    /// Writes a snapshot now (and waits for it to be durable).
    Snapshot {
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// TC/C messages from another partition (no reply: answers travel as messages too).
    Tcc { messages: Vec<TccMessage> },
    /// A change of the partition's Raft membership (Raft mode with peers).
    Membership {
        change: MembershipChange,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Finish what is queued, flush, snapshot, close the log, stop.
    Shutdown,
}

/// The items a group of requests counts against `group_items_max`: a command batch's or TC/C
/// message list's length (at least 1), 1 for anything else.
pub(super) fn group_items(group: &[Request]) -> usize {
    group
        .iter()
        .map(|r| match r {
            Request::Commands { batch, .. } => batch.len().max(1),
            Request::Tcc { messages } => messages.len().max(1),
            _ => 1,
        })
        .sum()
}

/// Adds to `group` what is already queued in `requests`, without waiting, until the group holds
/// `items_max` items (counted as `group_items` does) or the queue is empty.
pub(super) fn fill_group(
    requests: &flume::Receiver<Request>,
    group: &mut Vec<Request>,
    items_max: usize,
) {
    let mut items = group_items(group);
    while items < items_max {
        match requests.try_recv() {
            Ok(next) => {
                items += group_items(std::slice::from_ref(&next));
                group.push(next);
            }
            Err(_) => break,
        }
    }
}
