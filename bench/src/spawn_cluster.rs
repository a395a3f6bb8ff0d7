//! `--spawn --nodes 3|5`: a local cluster of walletd processes on loopback, each with a
//! config file naming the others ([[peers]]), initialized with `cluster init`; every process
//! is stopped (and its directory removed) when the guard is dropped.

use crate::spawn::{free_port, temp_dir_here, Walletd};
use net::cluster_admin::{Action, ClusterChange, Outcome};
use net::partition_map::PartitionMap;
use net::{Client, ClientConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the cluster gets to elect a leader for every partition after `init`.
const LEADERS_TIMEOUT: Duration = Duration::from_secs(30);

pub struct SpawnedCluster {
    /// Stopped in order when dropped.
    pub nodes: Vec<Walletd>,
    /// Holds the config files and the peer token.
    dir: PathBuf,
}

impl Drop for SpawnedCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `cores.len()` consecutive free ports (a node's link listens on one port per core).
fn free_port_run(count: usize) -> Result<u16, String> {
    for _ in 0..100 {
        let base = free_port()?;
        let all_free = (1..count as u16).all(|i| {
            base.checked_add(i)
                .is_some_and(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if all_free {
            return Ok(base);
        }
    }
    Err("no run of free loopback ports for the node link".into())
}

/// The nodes of a loopback cluster share the machine's CPUs: their followers apply this long
/// after a commit, so that the leader's apply, which holds the answers, runs first
/// (`follower_apply_delay_us`; measured in docs/BENCHMARKS.md, "Followers apply after the
/// leader").
const FOLLOWER_APPLY_DELAY_US: u64 = 3_000;

impl SpawnedCluster {
    /// Starts `count` nodes and initializes the cluster; returns once every partition has a
    /// leader.
    pub fn start(
        binary: &Path,
        count: u64,
        cores: &[usize],
        partitions: u32,
        extra_args: &[String],
    ) -> Result<SpawnedCluster, String> {
        let dir = temp_dir_here()?;
        let mut cluster = SpawnedCluster {
            nodes: Vec::new(),
            dir,
        };
        let token = cluster.dir.join("peer.token");
        std::fs::write(&token, format!("bench-{}\n", std::process::id()))
            .map_err(|e| format!("{}: {e}", token.display()))?;
        let mut nodes = Vec::new();
        for node_id in 1..=count {
            let client = format!("127.0.0.1:{}", free_port()?);
            let peer = free_port_run(cores.len())?;
            let metrics = format!("127.0.0.1:{}", free_port()?);
            nodes.push((node_id, client, peer, metrics));
        }
        for (node_id, client, peer, metrics) in &nodes {
            // Each node's metrics (Prometheus text at /metrics) are printed, so the stages of
            // a slow run can be looked at while it runs.
            eprintln!("  node {node_id}: clients {client}, metrics http://{metrics}/metrics");
            let mut text = format!(
                "node_id = {node_id}\npeer_listen = \"127.0.0.1:{peer}\"\npeer_token_file = \"{}\"\nmetrics_listen = \"{metrics}\"\nfollower_apply_delay_us = {FOLLOWER_APPLY_DELAY_US}\n",
                token.display()
            );
            for (other, other_client, other_peer, _) in nodes.iter().filter(|n| n.0 != *node_id) {
                text.push_str(&format!(
                    "\n[[peers]]\nnode_id = {other}\npeer_addr = \"127.0.0.1:{other_peer}\"\nclient_addr = \"{other_client}\"\n"
                ));
            }
            let path = cluster.dir.join(format!("node{node_id}.toml"));
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut args = vec!["--config".to_string(), path.display().to_string()];
            args.extend(extra_args.iter().cloned());
            cluster.nodes.push(Walletd::start_at(
                binary,
                client.clone(),
                cores,
                partitions,
                &args,
            )?);
        }
        // Each node initializes its share of the partitions, so leaders start spread.
        let change = ClusterChange {
            action: Action::Init,
            node_id: net::cluster_admin::INIT_SHARE,
            peer_addr: String::new(),
            client_addr: String::new(),
        };
        for node in &cluster.nodes {
            let outcomes = Client::connect(ClientConfig::new(node.addr.clone()))
                .and_then(|c| c.cluster_change(&change))
                .map_err(|e| format!("cluster init on {}: {e}", node.addr))?;
            if let Some(o) = outcomes.iter().find(|o| o.outcome == Outcome::Failed) {
                return Err(format!(
                    "cluster init: partition {}: {}",
                    o.partition, o.message
                ));
            }
        }
        Ok(cluster)
    }

    /// Waits until every partition has a leader; returns the partition map.
    pub fn wait_for_leaders(&self) -> Result<PartitionMap, String> {
        let deadline = Instant::now() + LEADERS_TIMEOUT;
        loop {
            let map = Client::connect(ClientConfig::new(self.nodes[0].addr.clone()))
                .and_then(|c| c.partition_map())
                .map_err(|e| e.to_string())?;
            if map.partitions.iter().all(|p| p.leader.is_some()) {
                return Ok(map);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "some partition has no leader {} s after cluster init",
                    LEADERS_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
