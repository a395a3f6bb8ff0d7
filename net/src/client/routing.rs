//! Routing one batch over the partition map: split the items by the node that leads their
//! partition, send the parts concurrently, put the answers back in the caller's order, and
//! retry what came back `not_leader` (or was lost with a node) after refreshing the map.
//!
//! The rounds are generic over how a part reaches a node (`Nodes`), so they are tested here
//! without a network. Retrying is safe for the same reason it is on one node: every item
//! carries its client-chosen id, so an item that did apply before its answer was lost answers
//! `exists` the second time, never applies twice.

use super::ClientError;
use crate::operation::ProtocolError;
use crate::partition_map::PartitionMap;
use engine::model::AccountId;
use engine::ResultCode;
use std::sync::Arc;

/// Rounds of "send, refresh the map, resend what must be resent" per batch. Elections take a
/// few hundred ms and each refresh after the first pauses (`Nodes::refresh`), so this outlasts
/// one leader change; after it, items still without a leader stay answered `not_leader`.
pub const ROUTE_ROUNDS_MAX: u32 = 8;

/// How the rounds reach the cluster.
pub(crate) trait Nodes<T> {
    /// The map to route the next round by.
    fn map(&self) -> Arc<PartitionMap>;
    /// Fetches a fresh map before round `round` (≥ 1), pausing first so that an election in
    /// progress can finish.
    async fn refresh(&self, round: u32);
    /// Sends `items` to node `node_id`: one result per item, in order.
    async fn send(&self, node_id: u64, items: Vec<T>) -> Result<Vec<ResultCode>, ClientError>;
}

/// The positions of `todo` grouped by the node leading their partition (nodes in first-seen
/// order, positions ascending within a node), and the positions whose partition has no known
/// leader.
pub(crate) fn plan(
    map: &PartitionMap,
    todo: &[usize],
    key: impl Fn(usize) -> AccountId,
) -> (Vec<(u64, Vec<usize>)>, Vec<usize>) {
    let mut by_node: Vec<(u64, Vec<usize>)> = Vec::new();
    let mut leaderless = Vec::new();
    for &position in todo {
        match map.leader_of(map.partition_of(key(position))) {
            Some(node) => match by_node.iter_mut().find(|(id, _)| *id == node.node_id) {
                Some((_, positions)) => positions.push(position),
                None => by_node.push((node.node_id, vec![position])),
            },
            None => leaderless.push(position),
        }
    }
    (by_node, leaderless)
}

/// An error after which a request is worth sending again, to the partition's leader of a
/// fresh map: its node could not be reached or did not answer (the outcome is unknown), it
/// answers that it does not lead, or it is stopping (a rolling restart: entries it proposed
/// may still commit under the next leader, so the outcome is unknown too).
pub(crate) fn leader_may_have_moved(e: &ClientError) -> bool {
    e.is_transient()
        || matches!(
            e,
            ClientError::Refused {
                error: ProtocolError::NotLeader | ProtocolError::ShuttingDown,
                ..
            }
        )
}

/// Routes `items` (owned by the partition of `key(item)`) until every item has an answer
/// other than `not_leader`, or `ROUTE_ROUNDS_MAX` rounds have passed.
///
/// - An item whose node answered `not_leader`, or whose partition had no leader in the map,
///   is sent again after a refresh; if no round finds its leader it ends as `not_leader`.
/// - An item whose node could not be reached, timed out, or is stopping (it may or may not
///   have applied) is sent again too; if it has no final answer after the last round, the whole call fails
///   with that error, as `Client` does, and the caller retries with the same ids (even when
///   later rounds found no leader for it: an item that may have applied never ends as a bare
///   `not_leader`).
/// - Any other error (a refused request, a malformed reply) fails the call at once.
pub(crate) async fn route<T: Copy, N: Nodes<T>>(
    nodes: &N,
    items: &[T],
    key: impl Fn(&T) -> AccountId,
) -> Result<Vec<ResultCode>, ClientError> {
    let mut results = vec![ResultCode::NotLeader; items.len()];
    let mut todo: Vec<usize> = (0..items.len()).collect();
    // The last attempt error of an item whose outcome it left unknown, and which items that is.
    let mut lost: Option<ClientError> = None;
    let mut maybe_applied = vec![false; items.len()];
    for round in 0..ROUTE_ROUNDS_MAX {
        if round > 0 {
            nodes.refresh(round).await;
        }
        let map = nodes.map();
        let (by_node, mut again) = match map.sole_leader() {
            // One node leads everything: the batch goes whole, unsplit and uncopied by index.
            Some(node) if todo.len() == items.len() => (vec![(node.node_id, todo.clone())], vec![]),
            _ => plan(&map, &todo, |i| key(&items[i])),
        };
        let sends = by_node.iter().map(|(node, positions)| {
            nodes.send(*node, positions.iter().map(|&i| items[i]).collect())
        });
        let answers = futures::future::join_all(sends).await;
        for ((_, positions), answer) in by_node.into_iter().zip(answers) {
            match answer {
                Ok(codes) if codes.len() == positions.len() => {
                    for (&position, code) in positions.iter().zip(codes) {
                        results[position] = code;
                        // A stopping leader answers what it proposed but did not apply with
                        // `shutting_down`: like `not_leader`, ask the next leader.
                        if code == ResultCode::NotLeader || code == ResultCode::ShuttingDown {
                            again.push(position);
                        }
                    }
                }
                Ok(_) => return Err(ClientError::BadReply),
                Err(e) if leader_may_have_moved(&e) => {
                    for &position in &positions {
                        maybe_applied[position] = true;
                    }
                    again.extend_from_slice(&positions);
                    lost = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if again.is_empty() {
            return Ok(results);
        }
        again.sort_unstable();
        todo = again;
    }
    match lost {
        Some(e) if todo.iter().any(|&i| maybe_applied[i]) => Err(e),
        _ => Ok(results),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition_map::three_node_map;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// A fake cluster: `truth` is who really leads; clients see `seen` until they refresh.
    /// Every item a true leader accepts is counted per id, as a ledger would apply it.
    struct FakeCluster {
        truth: RefCell<PartitionMap>,
        seen: RefCell<Arc<PartitionMap>>,
        applied: RefCell<HashMap<u64, u32>>,
        /// Moves leadership after this many sends (a leader change mid-batch).
        change_after_sends: Cell<Option<u32>>,
        sends: Cell<u32>,
        refreshes: Cell<u32>,
        /// Node that is unreachable (its sends fail as disconnected).
        down: Cell<Option<u64>>,
        /// Node that is stopping: it refuses its first send with `shutting_down`, and its
        /// partitions move to the next node.
        stopping: Cell<Option<u64>>,
    }

    fn map(leaders: &[Option<u64>], term: u64) -> PartitionMap {
        let partitions: Vec<_> = leaders.iter().map(|&leader| (leader, term)).collect();
        three_node_map(&partitions)
    }

    impl FakeCluster {
        fn new(truth: PartitionMap, seen: PartitionMap) -> FakeCluster {
            FakeCluster {
                truth: RefCell::new(truth),
                seen: RefCell::new(Arc::new(seen)),
                applied: RefCell::default(),
                change_after_sends: Cell::new(None),
                sends: Cell::new(0),
                refreshes: Cell::new(0),
                down: Cell::new(None),
                stopping: Cell::new(None),
            }
        }
    }

    impl Nodes<u64> for FakeCluster {
        fn map(&self) -> Arc<PartitionMap> {
            self.seen.borrow().clone()
        }
        async fn refresh(&self, _round: u32) {
            self.refreshes.set(self.refreshes.get() + 1);
            *self.seen.borrow_mut() = Arc::new(self.truth.borrow().clone());
        }
        async fn send(&self, node: u64, items: Vec<u64>) -> Result<Vec<ResultCode>, ClientError> {
            self.sends.set(self.sends.get() + 1);
            if self.down.get() == Some(node) {
                return Err(ClientError::Disconnected("node down".into()));
            }
            if self.stopping.get() == Some(node) {
                self.stopping.set(None);
                let mut truth = self.truth.borrow_mut();
                for p in &mut truth.partitions {
                    if p.leader == Some(node) {
                        p.leader = Some(node % 3 + 1);
                        p.term += 1;
                    }
                }
                return Err(ClientError::Refused {
                    error: ProtocolError::ShuttingDown,
                    message: "the node is shutting down".into(),
                });
            }
            let truth = self.truth.borrow().clone();
            let codes = items
                .iter()
                .map(|&id| {
                    let partition = truth.partition_of(id as AccountId);
                    if truth.partitions[partition as usize].leader != Some(node) {
                        return ResultCode::NotLeader;
                    }
                    let mut applied = self.applied.borrow_mut();
                    let count = applied.entry(id).or_insert(0);
                    *count += 1;
                    if *count == 1 {
                        ResultCode::Ok
                    } else {
                        ResultCode::Exists
                    }
                })
                .collect();
            if self.change_after_sends.get() == Some(self.sends.get()) {
                let mut truth = self.truth.borrow_mut();
                for p in &mut truth.partitions {
                    p.leader = p.leader.map(|l| l % 3 + 1);
                    p.term += 1;
                }
            }
            Ok(codes)
        }
    }

    fn ids(n: u64) -> Vec<u64> {
        (1..=n).collect()
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        futures::executor::block_on(f)
    }

    #[test]
    fn plan_splits_by_leader_and_keeps_positions_in_order() {
        let m = map(&[Some(1), Some(2), None, Some(1)], 1);
        let items = ids(200);
        let todo: Vec<usize> = (0..items.len()).collect();
        let (by_node, leaderless) = plan(&m, &todo, |i| items[i] as AccountId);
        let mut seen: Vec<usize> = leaderless.clone();
        for (node, positions) in &by_node {
            assert!(positions.windows(2).all(|w| w[0] < w[1]));
            for &p in positions {
                let partition = m.partition_of(items[p] as AccountId);
                assert_eq!(m.partitions[partition as usize].leader, Some(*node));
            }
            seen.extend(positions);
        }
        for &p in &leaderless {
            assert_eq!(m.partition_of(items[p] as AccountId), 2);
        }
        seen.sort_unstable();
        assert_eq!(seen, todo, "every position planned exactly once");
    }

    #[test]
    fn a_stale_map_costs_one_refresh_and_applies_everything_once() {
        let truth = map(&[Some(2), Some(3), Some(1), Some(2)], 5);
        let stale = map(&[Some(1), Some(1), Some(1), Some(1)], 4);
        let cluster = FakeCluster::new(truth, stale);
        let items = ids(500);
        let results = run(route(&cluster, &items, |&id| id as AccountId)).expect("routes");
        assert!(results.iter().all(|&c| c == ResultCode::Ok), "{results:?}");
        assert_eq!(cluster.refreshes.get(), 1);
        let applied = cluster.applied.borrow();
        assert_eq!(applied.len(), items.len());
        assert!(applied.values().all(|&n| n == 1));
    }

    #[test]
    fn a_leader_change_mid_batch_is_followed() {
        let leaders = [Some(1), Some(2), Some(3), Some(1)];
        let cluster = FakeCluster::new(map(&leaders, 1), map(&leaders, 1));
        // Leadership rotates after the first part is answered: the other parts of the same
        // round already went to nodes that are no longer leaders.
        cluster.change_after_sends.set(Some(1));
        let items = ids(300);
        let results = run(route(&cluster, &items, |&id| id as AccountId)).expect("routes");
        assert!(results.iter().all(|&c| c == ResultCode::Ok), "{results:?}");
        assert!(cluster.refreshes.get() >= 1);
        assert!(cluster.applied.borrow().values().all(|&n| n == 1));
    }

    #[test]
    fn no_leader_for_a_partition_leaves_its_items_not_leader_and_the_rest_ok() {
        let leaders = [Some(1), None, Some(2), Some(3)];
        let cluster = FakeCluster::new(map(&leaders, 1), map(&leaders, 1));
        let items = ids(100);
        let results = run(route(&cluster, &items, |&id| id as AccountId)).expect("routes");
        let m = map(&leaders, 1);
        for (id, code) in items.iter().zip(&results) {
            let expected = if m.partition_of(*id as AccountId) == 1 {
                ResultCode::NotLeader
            } else {
                ResultCode::Ok
            };
            assert_eq!(*code, expected, "item {id}");
        }
        assert_eq!(
            cluster.refreshes.get(),
            ROUTE_ROUNDS_MAX - 1,
            "bounded rounds"
        );
    }

    #[test]
    fn a_node_that_stays_down_fails_the_call_and_one_that_returns_does_not() {
        let leaders = [Some(1), Some(2), Some(3), Some(1)];
        let cluster = FakeCluster::new(map(&leaders, 1), map(&leaders, 1));
        cluster.down.set(Some(2));
        let items = ids(100);
        let error = run(route(&cluster, &items, |&id| id as AccountId)).expect_err("node 2 down");
        assert!(matches!(error, ClientError::Disconnected(_)));
        // The other nodes' items applied once; a retry of the whole batch with the same ids
        // (node 2 back) applies node 2's items and answers `exists` for the rest.
        let before = cluster.applied.borrow().len();
        assert!(before > 0 && before < items.len());
        cluster.down.set(None);
        let results = run(route(&cluster, &items, |&id| id as AccountId)).expect("routes");
        assert!(results
            .iter()
            .all(|&c| c == ResultCode::Ok || c == ResultCode::Exists));
        assert_eq!(cluster.applied.borrow().len(), items.len());
    }

    #[test]
    fn an_item_whose_send_was_lost_never_ends_as_a_bare_not_leader() {
        // Node 2 led partition 1 and vanished with the first send to it (the items may have
        // applied); since then partition 1 has had no leader. Answering those items
        // `not_leader` would read as "not applied": the call must fail as a lost send does.
        let seen = map(&[Some(1), Some(2), Some(3), Some(1)], 1);
        let truth = map(&[Some(1), None, Some(3), Some(1)], 2);
        let cluster = FakeCluster::new(truth, seen);
        cluster.down.set(Some(2));
        let items = ids(100);
        let error = run(route(&cluster, &items, |&id| id as AccountId))
            .expect_err("the outcome of partition 1's items is unknown");
        assert!(matches!(error, ClientError::Disconnected(_)), "{error}");
    }

    #[test]
    fn a_leader_that_is_stopping_is_failed_over() {
        // A rolling restart: node 2 refuses with `shutting_down` and hands its partitions on.
        let leaders = [Some(1), Some(2), Some(3), Some(2)];
        let cluster = FakeCluster::new(map(&leaders, 1), map(&leaders, 1));
        cluster.stopping.set(Some(2));
        let items = ids(100);
        let results = run(route(&cluster, &items, |&id| id as AccountId)).expect("routes");
        assert!(results.iter().all(|&c| c == ResultCode::Ok), "{results:?}");
        assert!(cluster.applied.borrow().values().all(|&n| n == 1));
        assert_eq!(cluster.applied.borrow().len(), items.len());
    }

    #[test]
    fn one_leader_for_all_partitions_sends_the_batch_whole() {
        let leaders = [Some(3), Some(3), Some(3), Some(3)];
        let cluster = FakeCluster::new(map(&leaders, 1), map(&leaders, 1));
        let items = ids(1000);
        let results = run(route(&cluster, &items, |&id| id as AccountId)).expect("routes");
        assert!(results.iter().all(|&c| c == ResultCode::Ok));
        assert_eq!(cluster.sends.get(), 1);
        assert_eq!(cluster.refreshes.get(), 0);
    }
}
