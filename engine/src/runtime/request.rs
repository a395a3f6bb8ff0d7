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
    /// This node's part in the group (`Leader` exactly when `is_leader`).
    pub role: RaftRole,
    /// The last entry in this node's log (durable).
    pub last_log_index: u64,
    /// The last entry applied to the state.
    pub applied_index: u64,
    /// On the leader: the highest log index a majority of the voters hold (`commit_index`
    /// below), never below `applied_index`. Elsewhere a node does not know the group's commit
    /// index (openraft 0.9's metrics have none): it reports its `applied_index`, which is
    /// committed for sure and at most a heartbeat behind the leader's commit index.
    pub commit_index: u64,
    /// On a leader: the most entries any follower is behind its log (0 with no followers).
    pub follower_lag_max: u64,
    /// The node this node believes leads the group (itself when `is_leader`).
    pub leader: Option<u64>,
    /// The group's members as this node's log has them (a single node: itself).
    pub members: Vec<RaftMember>,
}

/// A node's part in a partition's Raft group (openraft's `ServerState`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RaftRole {
    /// Receives the log but does not vote (a node being added catches up as one).
    Learner,
    #[default]
    Follower,
    /// Campaigning for leadership (an election is running).
    Candidate,
    Leader,
    /// The partition's Raft stopped (a storage failure, or shutting down).
    Shutdown,
}

/// The highest log index that a majority of each voter configuration holds, given
/// `matched(node)`: the last log index known to be on each voter (the leader counts its own
/// last log index). With a joint configuration (during a membership change, old and new
/// voter sets) an entry is committed only when it is on a majority of both, hence the
/// minimum over the configurations. Learners are in no configuration, so they never count.
/// No voters at all: 0.
///
/// This is what the leader's commit index converges to: openraft commits the same point
/// from the same matched indexes, except right after an election, when it waits until an
/// entry of the new term is on a majority (the blank entry every new leader appends) before
/// it counts older entries as committed; a status answer may be that one round trip ahead.
pub fn commit_index<'a>(
    configs: impl IntoIterator<Item = &'a std::collections::BTreeSet<u64>>,
    matched: impl Fn(u64) -> u64,
) -> u64 {
    let mut lowest: Option<u64> = None;
    for voters in configs {
        if voters.is_empty() {
            continue;
        }
        let mut indexes: Vec<u64> = voters.iter().map(|&id| matched(id)).collect();
        // Descending: the entry at position n/2 is held by n/2 + 1 voters, a majority, and
        // no higher index is.
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        let majority = indexes[indexes.len() / 2];
        lowest = Some(lowest.map_or(majority, |l| l.min(majority)));
    }
    lowest.unwrap_or(0)
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

/// One partition's money per currency, as its read model has it (`Request::Totals`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTotals {
    /// The read position the totals are as of (`read_model::position`).
    pub position: u64,
    /// `(currency, balance + held)`, in currency order.
    pub by_currency: Vec<(crate::model::Currency, i128)>,
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
    /// Campaign for leadership now (`cluster balance-leaders`). `Ok` means the campaign
    /// started (or this node leads already), not that it won: voters refuse a candidate whose
    /// log is behind theirs, and a follower that still hears its leader refuses any candidate
    /// (openraft's leader lease). A lost campaign is harmless: at most a term passes.
    Elect,
}

/// A lookup from the leader's state that a partition refused: its Raft on this node could not
/// confirm it leads (a lookup answered from a deposed leader's state could miss a write the
/// new leader acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotLeader {
    /// The leader this node knows of, if any.
    pub leader: Option<u64>,
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
        reply: oneshot::Sender<Result<Vec<Option<Account>>, NotLeader>>,
    },
    LookupTransfers {
        ids: Vec<TransferId>,
        read: ReadFrom,
        reply: oneshot::Sender<Result<Vec<Option<TransferLookup>>, NotLeader>>,
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
    /// Money per currency in the partition (`balance + held` over its accounts) from the read
    /// model, with the read position it is as of.
    Totals {
        reply: oneshot::Sender<Result<PartitionTotals, QueryError>>,
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

#[cfg(test)]
mod tests {
    use super::commit_index;
    use std::collections::{BTreeMap, BTreeSet};

    fn voters(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn matched(indexes: &[(u64, u64)]) -> impl Fn(u64) -> u64 {
        let map: BTreeMap<u64, u64> = indexes.iter().copied().collect();
        move |id| map.get(&id).copied().unwrap_or(0)
    }

    #[test]
    fn commit_index_is_what_a_majority_of_an_odd_number_of_voters_holds() {
        let three = [voters(&[1, 2, 3])];
        assert_eq!(commit_index(&three, matched(&[(1, 10), (2, 7), (3, 4)])), 7);
        assert_eq!(
            commit_index(&three, matched(&[(1, 10), (2, 10), (3, 0)])),
            10
        );
        assert_eq!(
            commit_index(&three, matched(&[(1, 10)])),
            0,
            "alone: nothing"
        );
        let five = [voters(&[1, 2, 3, 4, 5])];
        let m = matched(&[(1, 50), (2, 40), (3, 30), (4, 20), (5, 10)]);
        assert_eq!(commit_index(&five, m), 30);
        let one = [voters(&[1])];
        assert_eq!(commit_index(&one, matched(&[(1, 9)])), 9, "a single voter");
    }

    #[test]
    fn commit_index_of_an_even_number_of_voters_needs_more_than_half() {
        // Four voters: a majority is three.
        let four = [voters(&[1, 2, 3, 4])];
        assert_eq!(
            commit_index(&four, matched(&[(1, 40), (2, 30), (3, 20), (4, 10)])),
            20
        );
        let two = [voters(&[1, 2])];
        assert_eq!(commit_index(&two, matched(&[(1, 8), (2, 5)])), 5, "both");
    }

    #[test]
    fn learners_never_count_and_joint_configs_need_both_majorities() {
        // Node 4 and 5 are learners far ahead of nothing: they are in no configuration.
        let three = [voters(&[1, 2, 3])];
        let m = matched(&[(1, 10), (2, 3), (3, 2), (4, 10), (5, 10)]);
        assert_eq!(commit_index(&three, m), 3);
        // Joint {1,2,3} + {3,4,5}: 10 is on a majority of the old set only.
        let joint = [voters(&[1, 2, 3]), voters(&[3, 4, 5])];
        let m = matched(&[(1, 10), (2, 10), (3, 4), (4, 6), (5, 2)]);
        assert_eq!(commit_index(&joint, m), 4);
        assert_eq!(commit_index(&[], matched(&[])), 0, "no voters");
        assert_eq!(commit_index(&[BTreeSet::new()], matched(&[])), 0);
    }
}
