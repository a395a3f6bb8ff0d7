//! `--spawn --nodes 3|5`: a local cluster of walletd processes on loopback, each with a
//! config file naming the others ([[peers]]), initialized with `cluster init`; every process
//! is stopped (and its directory removed) when the guard is dropped.

use crate::spawn::{bind_free_port, temp_dir_here, Walletd};
use net::cluster_admin::{Action, ClusterChange, Outcome};
use net::partition_map::PartitionMap;
use net::{Client, ClientConfig};
use std::net::TcpListener;
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

/// Loopback ports for the nodes of one cluster, each held bound until every one is picked:
/// the kernel hands a released port out again, so ports picked one by one and released could
/// repeat (seen: a node's client port inside another node's run of link ports, and `cluster
/// init` refused by the link listening there).
#[derive(Default)]
struct PortPicker {
    held: Vec<TcpListener>,
}

impl PortPicker {
    /// A free port, not handed out again by this picker.
    fn one(&mut self) -> Result<u16, String> {
        let (listener, port) = bind_free_port()?;
        self.held.push(listener);
        Ok(port)
    }

    /// `count` consecutive free ports (a node's link listens on one port per core); returns
    /// the first.
    fn run(&mut self, count: usize) -> Result<u16, String> {
        for _ in 0..100 {
            let base = self.one()?;
            let rest: Vec<TcpListener> = (1..count as u16)
                .map_while(|i| {
                    let port = base.checked_add(i)?;
                    TcpListener::bind(("127.0.0.1", port)).ok()
                })
                .collect();
            if rest.len() + 1 == count {
                self.held.extend(rest);
                return Ok(base);
            }
        }
        Err("no run of free loopback ports for the node link".into())
    }
}

/// The nodes of a loopback cluster share the machine's CPUs: by default their followers apply
/// this long after a commit, so that the leader's apply, which holds the answers, runs first
/// (`follower_apply_delay_us`, `wallet-bench run --follower-apply-delay-us`; measured in
/// docs/BENCHMARKS.md, "Followers apply after the leader").
pub const LOOPBACK_FOLLOWER_APPLY_DELAY_US: u64 = 3_000;

impl SpawnedCluster {
    /// Starts `count` nodes, their followers applying `follower_apply_delay_us` after each
    /// commit, and initializes the cluster; returns once every partition has a leader.
    pub fn start(
        binary: &Path,
        count: u64,
        cores: &[usize],
        partitions: u32,
        follower_apply_delay_us: u64,
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
        let mut ports = PortPicker::default();
        for node_id in 1..=count {
            let client = format!("127.0.0.1:{}", ports.one()?);
            let peer = ports.run(cores.len())?;
            let metrics = format!("127.0.0.1:{}", ports.one()?);
            nodes.push((node_id, client, peer, metrics));
        }
        // Released just before the nodes start, for them to bind.
        drop(ports);
        for (node_id, client, peer, metrics) in &nodes {
            // Each node's metrics (Prometheus text at /metrics) are printed, so the stages of
            // a slow run can be looked at while it runs.
            eprintln!("  node {node_id}: clients {client}, metrics http://{metrics}/metrics");
            let mut text = format!(
                "node_id = {node_id}\npeer_listen = \"127.0.0.1:{peer}\"\npeer_token_file = \"{}\"\nmetrics_listen = \"{metrics}\"\nfollower_apply_delay_us = {follower_apply_delay_us}\n",
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

#[cfg(test)]
mod tests {
    use super::PortPicker;
    use std::collections::BTreeSet;

    #[test]
    fn a_picker_never_hands_out_a_port_twice() {
        let mut picker = PortPicker::default();
        let mut seen = BTreeSet::new();
        for _ in 0..5 {
            assert!(seen.insert(picker.one().unwrap()));
            let base = picker.run(4).unwrap();
            for port in base..base + 4 {
                assert!(seen.insert(port), "port {port} handed out twice");
            }
            assert!(seen.insert(picker.one().unwrap()));
        }
        // Still held: binding any of them fails until the picker is dropped.
        let first = *seen.first().unwrap();
        assert!(std::net::TcpListener::bind(("127.0.0.1", first)).is_err());
        drop(picker);
        assert!(std::net::TcpListener::bind(("127.0.0.1", first)).is_ok());
    }
}
