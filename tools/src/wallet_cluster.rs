//! `wallet cluster status`: the cluster as its partition map describes it, and every node's
//! own view of each partition's log, so an operator sees who leads what and how far each
//! replica is behind its leader.
//!
//! The map comes from the node `--addr` names; every node it lists is then asked for its
//! status. A node that does not answer is shown as such; the command fails only if the first
//! node does not answer.

use net::cluster_admin::{ClusterChange, Outcome, PartitionOutcome};
use net::partition_map::PartitionMap;
use net::{Client, ClientConfig};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One node's answer: its status, or why there is none.
struct NodeView {
    node_id: u64,
    addr: String,
    status: Result<net::client::Status, String>,
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
            .and_then(|client| client.status())
            .map_err(|e| e.to_string());
            NodeView {
                node_id: node.node_id,
                addr: node.client_addr.clone(),
                status,
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
            json!({"partition": p, "leader": leader.leader, "term": leader.term, "replicas": per_node})
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
