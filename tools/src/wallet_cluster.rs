//! `wallet cluster status`: the cluster as its partition map describes it, and every node's
//! own view of each partition's log, so an operator sees who leads what and how far each
//! replica is behind its leader.
//!
//! The map comes from the node `--addr` names; every node it lists is then asked for its
//! status, and each partition's leader for its Raft view (`RaftStatus`: the commit index and
//! how far each follower has replicated). A node that does not answer is shown as such; the
//! command fails only if the first node does not answer.
//!
//! `wallet cluster balance-leaders` moves each partition's leadership back to its preferred
//! node (the one `init` gave it first) after failovers left leaders bunched up.

use net::cluster_admin::{ClusterChange, Outcome, PartitionOutcome};
use net::partition_map::PartitionMap;
use net::raft_status::{PartitionRaft, RaftStatusReply};
use net::{Client, ClientConfig};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One node's answer: its status, or why there is none.
struct NodeView {
    node_id: u64,
    addr: String,
    status: Result<net::client::Status, String>,
    /// Its Raft view of every partition (asked of the nodes that lead one, per the map).
    raft: Option<Result<RaftStatusReply, String>>,
}

pub fn status(config: &ClientConfig, as_json: bool) -> Result<(), String> {
    let first = Client::connect(config.clone()).map_err(|e| e.to_string())?;
    let map = first.partition_map().map_err(|e| e.to_string())?;
    let views: Vec<NodeView> = map
        .nodes
        .iter()
        .map(|node| {
            let status = Client::connect(ClientConfig {
                addr: node.client_addr.clone(),
                ..config.clone()
            })
            .and_then(|client| {
                let status = client.status()?;
                Ok((client, status))
            });
            let leads = map
                .partitions
                .iter()
                .any(|p| p.leader == Some(node.node_id));
            let (status, raft) = match status {
                Ok((client, status)) => {
                    let raft = leads.then(|| client.raft_status().map_err(|e| e.to_string()));
                    (Ok(status), raft)
                }
                Err(e) => (Err(e.to_string()), None),
            };
            NodeView {
                node_id: node.node_id,
                addr: node.client_addr.clone(),
                status,
                raft,
            }
        })
        .collect();
    if as_json {
        println!("{}", to_json(&map, &views));
    } else {
        print_human(&map, &views);
    }
    Ok(())
}

/// How long `add-node` / `remove-node` keep trying to reach every partition's leader (a new
/// learner first copies the whole log or a snapshot).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);

/// `cluster init`: the `--addr` node initializes its share of the partitions and names the
/// node of every other partition; each of those then initializes its own share.
pub fn init(config: &ClientConfig, as_json: bool) -> Result<(), String> {
    let change = ClusterChange {
        action: net::cluster_admin::Action::Init,
        node_id: net::cluster_admin::INIT_SHARE,
        peer_addr: String::new(),
        client_addr: String::new(),
    };
    let first = Client::connect(config.clone()).map_err(|e| e.to_string())?;
    let mut done: BTreeMap<u32, PartitionOutcome> = BTreeMap::new();
    let mut others = std::collections::BTreeSet::new();
    for o in first.cluster_change(&change).map_err(|e| e.to_string())? {
        if o.outcome == Outcome::NotLeader {
            others.insert(o.message.clone());
        } else {
            done.insert(o.partition, o);
        }
    }
    for addr in others {
        let client = Client::connect(ClientConfig {
            addr: addr.clone(),
            ..config.clone()
        })
        .map_err(|e| format!("{addr}: {e}"))?;
        for o in client
            .cluster_change(&change)
            .map_err(|e| format!("{addr}: {e}"))?
        {
            if o.outcome != Outcome::NotLeader {
                done.insert(o.partition, o);
            }
        }
    }
    report(&change, &done, as_json)
}

/// Sends `change` to the `--addr` node only (fault injection).
pub fn change_here(
    config: &ClientConfig,
    change: ClusterChange,
    as_json: bool,
) -> Result<(), String> {
    let client = Client::connect(config.clone()).map_err(|e| e.to_string())?;
    let outcomes = client.cluster_change(&change).map_err(|e| e.to_string())?;
    let done: BTreeMap<u32, PartitionOutcome> =
        outcomes.into_iter().map(|o| (o.partition, o)).collect();
    report(&change, &done, as_json)
}

/// Sends `change` to every node of the partition map, again to the nodes that now lead a
/// partition not yet changed, until each partition has been changed by its leader (a
/// membership change is made by the leader).
pub fn change_everywhere(
    config: &ClientConfig,
    change: ClusterChange,
    as_json: bool,
) -> Result<(), String> {
    let first = Client::connect(config.clone()).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    let mut done: BTreeMap<u32, PartitionOutcome> = BTreeMap::new();
    loop {
        let map = first.partition_map().map_err(|e| e.to_string())?;
        let partitions = map.partition_count();
        for node in &map.nodes {
            let led = (0..partitions).any(|p| {
                !done.contains_key(&p) && map.leader_of(p).map(|l| l.node_id) == Some(node.node_id)
            });
            if !led {
                continue;
            }
            let client = match Client::connect(ClientConfig {
                addr: node.client_addr.clone(),
                timeout_ms: CHANGE_TIMEOUT.as_millis() as u64,
                retries: 0,
                ..config.clone()
            }) {
                Ok(client) => client,
                Err(_) => continue,
            };
            if let Ok(outcomes) = client.cluster_change(&change) {
                for o in outcomes {
                    if o.outcome != Outcome::NotLeader && !done.contains_key(&o.partition) {
                        done.insert(o.partition, o);
                    }
                }
            }
        }
        if done.len() as u32 >= partitions || Instant::now() >= deadline {
            for p in 0..partitions {
                done.entry(p).or_insert(PartitionOutcome {
                    partition: p,
                    outcome: Outcome::NotLeader,
                    message: "no leader took the change in time".into(),
                });
            }
            return report(&change, &done, as_json);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Prints the outcome per partition; an error if any partition failed.
fn report(
    change: &ClusterChange,
    done: &BTreeMap<u32, PartitionOutcome>,
    as_json: bool,
) -> Result<(), String> {
    let failed = done.values().filter(|o| o.outcome != Outcome::Ok).count();
    if as_json {
        let parts: Vec<_> = done
            .values()
            .map(|o| json!({"partition": o.partition, "ok": o.outcome == Outcome::Ok, "message": o.message}))
            .collect();
        println!(
            "{}",
            json!({"action": format!("{:?}", change.action), "node_id": change.node_id, "partitions": parts, "failed": failed})
        );
    } else {
        for o in done.values() {
            match o.outcome {
                Outcome::Ok => println!("partition {}: ok", o.partition),
                _ => println!("partition {}: FAILED {}", o.partition, o.message),
            }
        }
        if done.is_empty() {
            println!("{:?}: done", change.action);
        }
    }
    if failed > 0 {
        return Err(format!("{failed} partition(s) not changed"));
    }
    Ok(())
}

/// `(node id, durable index)` of every node that answered, for `partition`.
fn replicas(views: &[NodeView], partition: u32) -> Vec<(u64, u64)> {
    views
        .iter()
        .filter_map(|v| {
            let status = v.status.as_ref().ok()?;
            let p = status
                .partitions
                .iter()
                .find(|p| p.partition == partition)?;
            Some((v.node_id, p.durable_index))
        })
        .collect()
}

/// The leader's durable index minus the replica's (0 when the leader is unknown or behind).
fn lag(replicas: &[(u64, u64)], leader: Option<u64>, durable_index: u64) -> Option<u64> {
    let leader = leader?;
    let (_, leader_index) = replicas.iter().find(|(id, _)| *id == leader)?;
    Some(leader_index.saturating_sub(durable_index))
}

/// The leader's own Raft view of `partition` (per the map), if it answered and still leads
/// (or is a node without replication, which leads everything).
fn leader_view(views: &[NodeView], leader: Option<u64>, partition: u32) -> Option<&PartitionRaft> {
    let leader = leader?;
    let view = views.iter().find(|v| v.node_id == leader)?;
    let reply = view.raft.as_ref()?.as_ref().ok()?;
    reply.partitions.iter().find(|p| {
        use net::raft_status::Role;
        p.partition == partition && matches!(p.role, Role::Leader | Role::Standalone)
    })
}

/// `(node id, voter, matched index, lag entries)` of every member but the leader, as the
/// leader sees them.
fn followers(view: &PartitionRaft) -> Vec<(u64, bool, Option<u64>, Option<u64>)> {
    view.members
        .iter()
        .filter(|m| Some(m.node_id) != view.leader)
        .map(|m| (m.node_id, m.voter, m.matched_index, view.lag_entries(m)))
        .collect()
}

fn to_json(map: &PartitionMap, views: &[NodeView]) -> serde_json::Value {
    let nodes: Vec<_> = views
        .iter()
        .map(|v| match &v.status {
            Ok(s) => {
                json!({"node_id": v.node_id, "addr": v.addr, "reachable": true, "cores": s.cores})
            }
            Err(e) => json!({"node_id": v.node_id, "addr": v.addr, "reachable": false, "error": e}),
        })
        .collect();
    let partitions: Vec<_> = map
        .partitions
        .iter()
        .enumerate()
        .map(|(p, leader)| {
            let replicas = replicas(views, p as u32);
            let per_node: Vec<_> = replicas
                .iter()
                .map(|&(node_id, durable_index)| {
                    json!({"node_id": node_id, "durable_index": durable_index,
                           "lag_entries": lag(&replicas, leader.leader, durable_index)})
                })
                .collect();
            let mut part = json!({"partition": p, "leader": leader.leader, "term": leader.term, "replicas": per_node});
            // From the leader's own answer; null when it did not answer (or no longer leads).
            let view = leader_view(views, leader.leader, p as u32);
            part["commit_index"] = json!(view.map(|v| v.commit_index));
            part["leader_last_log_index"] = json!(view.map(|v| v.last_log_index));
            part["followers"] = json!(view.map(|v| {
                followers(v)
                    .into_iter()
                    .map(|(node_id, voter, matched_index, lag_entries)| {
                        json!({"node_id": node_id, "voter": voter,
                               "matched_index": matched_index, "lag_entries": lag_entries})
                    })
                    .collect::<Vec<_>>()
            }));
            part
        })
        .collect();
    json!({"cluster_id": map.cluster_id, "nodes": nodes, "partitions": partitions})
}

fn print_human(map: &PartitionMap, views: &[NodeView]) {
    println!(
        "cluster {}: {} node(s), {} partition(s)",
        map.cluster_id,
        views.len(),
        map.partitions.len()
    );
    for v in views {
        match &v.status {
            Ok(s) => println!("  node {} at {}: up, {} cores", v.node_id, v.addr, s.cores),
            Err(e) => println!("  node {} at {}: not answering ({e})", v.node_id, v.addr),
        }
    }
    for (p, leader) in map.partitions.iter().enumerate() {
        let replicas = replicas(views, p as u32);
        let led = match leader.leader {
            Some(id) => format!("leader node {id}, term {}", leader.term),
            None => format!("no leader (term {})", leader.term),
        };
        let each: Vec<String> = replicas
            .iter()
            .map(
                |&(node, index)| match lag(&replicas, leader.leader, index) {
                    Some(lag) => format!("node {node} at {index} (lag {lag})"),
                    None => format!("node {node} at {index}"),
                },
            )
            .collect();
        println!("  partition {p}: {led}; {}", each.join(", "));
        match leader_view(views, leader.leader, p as u32) {
            Some(view) => {
                let each: Vec<String> = followers(view)
                    .into_iter()
                    .map(|(node, voter, matched, lag)| {
                        let kind = if voter { "" } else { " (learner)" };
                        match (matched, lag) {
                            (Some(m), Some(lag)) => {
                                format!("node {node}{kind} matched {m} (lag {lag})")
                            }
                            _ => format!("node {node}{kind} matched unknown"),
                        }
                    })
                    .collect();
                println!(
                    "    commit index {}, leader log at {}; followers: {}",
                    view.commit_index,
                    view.last_log_index,
                    if each.is_empty() {
                        "none".to_string()
                    } else {
                        each.join(", ")
                    }
                );
            }
            None if leader.leader.is_some() => {
                println!("    commit index unknown (the leader did not answer RaftStatus)")
            }
            None => {}
        }
    }
}

/// How often `balance-leaders` asks a preferred node again to campaign: a campaign can lose
/// (a voter still hearing from the current leader refuses any candidate for a leader lease,
/// twice the election timeout), and each new try costs the group an election.
const ELECT_AGAIN: Duration = Duration::from_secs(3);

/// Partition `p`'s preferred node: the `p % n`-th of the map's nodes in id order, as `init`
/// spreads them (`cluster_admin::INIT_SHARE`).
pub fn preferred_leader(map: &PartitionMap, partition: u32) -> Option<u64> {
    let mut ids: Vec<u64> = map.nodes.iter().map(|n| n.node_id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return None;
    }
    Some(ids[partition as usize % ids.len()])
}

/// One partition's result of `balance-leaders`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebalanced {
    pub partition: u32,
    pub preferred: Option<u64>,
    pub leader_before: Option<u64>,
    pub leader_after: Option<u64>,
    /// The last thing the preferred node said, or why it could not be asked.
    pub message: String,
}

/// `cluster balance-leaders`: asks each partition's preferred node to campaign where another
/// node leads, again every `ELECT_AGAIN` while it has not won, until every partition is led
/// by its preferred node or `timeout` passed. Returns every partition's result (an error
/// only if no map could be had at all).
pub fn balance_leaders(
    config: &ClientConfig,
    timeout: Duration,
) -> Result<Vec<Rebalanced>, String> {
    let first = Client::connect(config.clone()).map_err(|e| e.to_string())?;
    let before = first.partition_map().map_err(|e| e.to_string())?;
    let mut results: Vec<Rebalanced> = (0..before.partition_count())
        .map(|p| Rebalanced {
            partition: p,
            preferred: preferred_leader(&before, p),
            leader_before: before.partitions[p as usize].leader,
            leader_after: before.partitions[p as usize].leader,
            message: String::new(),
        })
        .collect();
    let deadline = Instant::now() + timeout;
    let mut asked: BTreeMap<u32, Instant> = BTreeMap::new();
    loop {
        // The first node's view; a moment behind a fresh election, which the next round sees.
        if let Ok(map) = first.partition_map() {
            for r in results.iter_mut() {
                r.leader_after = map
                    .partitions
                    .get(r.partition as usize)
                    .and_then(|p| p.leader);
            }
        }
        let pending: Vec<&Rebalanced> = results
            .iter()
            .filter(|r| r.preferred.is_some() && r.leader_after != r.preferred)
            .collect();
        if pending.is_empty() || Instant::now() >= deadline {
            return Ok(results);
        }
        // Per preferred node, its partitions not asked within ELECT_AGAIN.
        let mut by_node: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        for r in pending {
            let due = asked
                .get(&r.partition)
                .is_none_or(|at| at.elapsed() >= ELECT_AGAIN);
            if let (Some(node), true) = (r.preferred, due) {
                by_node.entry(node).or_default().push(r.partition);
            }
        }
        for (node, partitions) in by_node {
            let now = Instant::now();
            for p in &partitions {
                asked.insert(*p, now);
            }
            let addr = before
                .nodes
                .iter()
                .find(|n| n.node_id == node)
                .map(|n| n.client_addr.clone())
                .unwrap_or_default();
            let outcome = Client::connect(ClientConfig {
                addr,
                timeout_ms: 5_000,
                retries: 0,
                ..config.clone()
            })
            .and_then(|c| c.elect(&partitions));
            for p in &partitions {
                let message = match &outcome {
                    Ok(outcomes) => outcomes
                        .iter()
                        .find(|o| o.partition == *p)
                        .map_or("no answer for it".to_string(), |o| o.message.clone()),
                    Err(e) => format!("node {node} did not answer: {e}"),
                };
                results[*p as usize].message = message;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Prints `balance-leaders`' results; an error if a partition is not led by its preferred
/// node in the end.
pub fn report_balance(results: &[Rebalanced], as_json: bool) -> Result<(), String> {
    let unbalanced = results
        .iter()
        .filter(|r| r.leader_after != r.preferred)
        .count();
    let moved = results
        .iter()
        .filter(|r| r.leader_before != r.leader_after && r.leader_after == r.preferred)
        .count();
    if as_json {
        let parts: Vec<_> = results
            .iter()
            .map(|r| {
                json!({"partition": r.partition, "preferred": r.preferred,
                       "leader_before": r.leader_before, "leader_after": r.leader_after,
                       "balanced": r.leader_after == r.preferred, "message": r.message})
            })
            .collect();
        println!(
            "{}",
            json!({"partitions": parts, "moved": moved, "unbalanced": unbalanced})
        );
    } else {
        let node = |id: Option<u64>| id.map_or("none".to_string(), |id| format!("node {id}"));
        for r in results {
            let state = if r.leader_after != r.preferred {
                format!("NOT BALANCED {}", r.message)
            } else if r.leader_before != r.leader_after {
                "moved".to_string()
            } else {
                "already".to_string()
            };
            println!(
                "partition {}: preferred {}, leader before {}, after {}: {state}",
                r.partition,
                node(r.preferred),
                node(r.leader_before),
                node(r.leader_after)
            );
        }
    }
    if unbalanced > 0 {
        return Err(format!(
            "{unbalanced} partition(s) still led by another node than their preferred one"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferred_leaders_spread_as_init_does() {
        let mut map = net::partition_map::PartitionMap::single_node(0, 3, "c".into(), 4);
        for id in [1, 2] {
            map.nodes.push(net::partition_map::MapNode {
                node_id: id,
                client_addr: format!("n{id}"),
            });
        }
        let preferred: Vec<_> = (0..4).map(|p| preferred_leader(&map, p)).collect();
        assert_eq!(preferred, [Some(1), Some(2), Some(3), Some(1)]);
    }

    #[test]
    fn lag_is_measured_against_the_leader_only() {
        let replicas = [(1, 100), (2, 97), (3, 100)];
        assert_eq!(lag(&replicas, Some(1), 97), Some(3));
        assert_eq!(
            lag(&replicas, Some(2), 100),
            Some(0),
            "ahead of a stale leader: 0"
        );
        assert_eq!(lag(&replicas, None, 97), None);
        assert_eq!(
            lag(&replicas, Some(9), 97),
            None,
            "the leader did not answer"
        );
    }
}
