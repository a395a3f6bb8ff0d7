//! `wallet cluster status`: the cluster as its partition map describes it, and every node's
//! own view of each partition's log, so an operator sees who leads what and how far each
//! replica is behind its leader.
//!
//! The map comes from the node `--addr` names; every node it lists is then asked for its
//! status. A node that does not answer is shown as such; the command fails only if the first
//! node does not answer.

use net::partition_map::PartitionMap;
use net::{Client, ClientConfig};
use serde_json::json;

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
