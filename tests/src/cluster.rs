//! A cluster of `walletd` processes on loopback, for the multi-node tests: config files with
//! free ports, `cluster init`, and the checks every test ends with (leaders known, state
//! digests equal on every node).

use crate::server_process::{free_port, ServerProcess};
use net::cluster_admin::{Action, ClusterChange, Outcome};
use net::partition_map::PartitionMap;
use net::{Client, ClientConfig, ClusterClient};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Cores per node (every node the same: partition `p` is on slot `p % cores`).
pub const CORES: &str = "0,1";
const CORE_COUNT: u16 = 2;

pub struct NodeSpec {
    pub node_id: u64,
    pub client_addr: String,
    /// Where its Prometheus metrics are served (`GET /metrics`).
    pub metrics_addr: String,
    /// Base of its node-link ports (one per core).
    pub peer_port: u16,
    pub config: PathBuf,
    pub data_dir: PathBuf,
}

pub struct TestCluster {
    pub specs: Vec<NodeSpec>,
    /// `None` while a node is down (killed and not restarted).
    pub nodes: Vec<Option<ServerProcess>>,
    binary: PathBuf,
    options: ClusterOptions,
    /// One cluster at a time per test process: three clusters of three two-core nodes on a
    /// two-core machine time out instead of testing anything.
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// What `TestCluster::start_with` adds to the defaults.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// TOML lines appended to every node's config (keys the generated config does not set).
    pub extra_config: String,
    /// Each node's stderr goes to `DIR/node{id}.log` (appended across restarts) instead of
    /// the test's own stderr.
    pub log_dir: Option<PathBuf>,
}

/// `CORE_COUNT` consecutive free ports.
fn free_port_run() -> u16 {
    loop {
        let base = free_port();
        if (1..CORE_COUNT).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            // Skip the counter past the run so `free_port` does not hand it out again.
            for _ in 1..CORE_COUNT {
                let _ = free_port();
            }
            return base;
        }
    }
}

fn node_config(
    spec: &NodeSpec,
    all: &[NodeSpec],
    partitions: u32,
    root: &Path,
    extra: &str,
) -> String {
    let mut text = format!(
        "listen = \"{}\"\ndata_dir = \"{}\"\ncores = [{CORES}]\npartitions = {partitions}\n\
         node_id = {}\ncluster_id = 7\npeer_listen = \"127.0.0.1:{}\"\n\
         peer_token_file = \"{}\"\nfault_injection = true\n\
         snapshot_interval_entries = 64\nelection_timeout_ms = 1000\n\
         metrics_listen = \"{}\"\n",
        spec.client_addr,
        spec.data_dir.display(),
        spec.node_id,
        spec.peer_port,
        root.join("peer.token").display(),
        spec.metrics_addr,
    );
    text.push_str(extra);
    if !extra.is_empty() && !extra.ends_with('\n') {
        text.push('\n');
    }
    for peer in all.iter().filter(|p| p.node_id != spec.node_id) {
        text.push_str(&format!(
            "\n[[peers]]\nnode_id = {}\npeer_addr = \"127.0.0.1:{}\"\nclient_addr = \"{}\"\n",
            peer.node_id, peer.peer_port, peer.client_addr
        ));
    }
    text
}

impl TestCluster {
    /// Writes configs for `count` nodes under `root` and starts them (not initialized yet).
    pub fn start(binary: &Path, root: &Path, count: u64, partitions: u32) -> TestCluster {
        TestCluster::start_with(binary, root, count, partitions, ClusterOptions::default())
    }

    /// `start` with `options` (extra config lines, log files).
    pub fn start_with(
        binary: &Path,
        root: &Path,
        count: u64,
        partitions: u32,
        options: ClusterOptions,
    ) -> TestCluster {
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        // A test that failed with its cluster poisons the lock; the next one may still run.
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::write(root.join("peer.token"), "test-peer-token\n").expect("token file");
        // One cluster's ports at a time: a run of consecutive peer ports must not interleave
        // with another test thread's picks.
        static PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let ports = PORTS.lock().unwrap_or_else(|p| p.into_inner());
        let specs: Vec<NodeSpec> = (1..=count)
            .map(|node_id| NodeSpec {
                node_id,
                client_addr: format!("127.0.0.1:{}", free_port()),
                metrics_addr: format!("127.0.0.1:{}", free_port()),
                peer_port: free_port_run(),
                config: root.join(format!("node{node_id}.toml")),
                data_dir: root.join(format!("node{node_id}")),
            })
            .collect();
        drop(ports);
        for spec in &specs {
            std::fs::write(
                &spec.config,
                node_config(spec, &specs, partitions, root, &options.extra_config),
            )
            .expect("config file");
        }
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            specs,
            binary: binary.to_path_buf(),
            options,
            _serial: serial,
        };
        for i in 0..cluster.specs.len() {
            let node = cluster.launch(i);
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    fn launch(&self, i: usize) -> ServerProcess {
        let spec = &self.specs[i];
        let config = spec.config.display().to_string();
        match &self.options.log_dir {
            Some(dir) => ServerProcess::start_at_logged(
                &self.binary,
                spec.client_addr.clone(),
                &spec.data_dir,
                &["--config", &config],
                &dir.join(format!("node{}.log", spec.node_id)),
            ),
            None => ServerProcess::start_at(
                &self.binary,
                spec.client_addr.clone(),
                &spec.data_dir,
                &["--config", &config],
            ),
        }
    }

    /// The log file of node `i` (0-based), if the cluster keeps logs.
    pub fn log_file(&self, i: usize) -> Option<PathBuf> {
        let dir = self.options.log_dir.as_ref()?;
        Some(dir.join(format!("node{}.log", self.specs[i].node_id)))
    }

    /// How far node `i`'s Raft logs reach: the greatest end of the last valid record in any
    /// partition's newest segment (`engine::log::find_tail`, which reads and changes nothing).
    /// For a file size limit that the log's next appends stay under.
    pub fn log_end_bytes(&self, i: usize) -> u64 {
        let partitions = std::fs::read_dir(&self.specs[i].data_dir).expect("the node's data dir");
        partitions
            .flatten()
            .map(|p| p.path().join("log"))
            .filter(|log| log.is_dir())
            .map(|log| {
                engine::log::find_tail(&log)
                    .unwrap_or_else(|e| panic!("{}: {e}", log.display()))
                    .end_offset
            })
            .max()
            .unwrap_or(0)
    }

    /// The size of node `i`'s newest snapshot of the partition whose newest is smallest
    /// (`None` while some partition has none): what the node would send a follower at least.
    pub fn newest_snapshot_bytes(&self, i: usize) -> Option<u64> {
        let partitions = std::fs::read_dir(&self.specs[i].data_dir).ok()?;
        let mut smallest: Option<u64> = None;
        for partition in partitions.flatten() {
            let Ok(files) = std::fs::read_dir(partition.path().join("snapshots")) else {
                continue;
            };
            // Named by the log index they cover, zero-padded: the greatest name is the newest.
            let newest = files
                .flatten()
                .map(|f| f.path())
                .filter(|p| p.extension().is_some_and(|e| e == "wsnap"))
                .max()?;
            let bytes = std::fs::metadata(&newest).ok()?.len();
            smallest = Some(smallest.map_or(bytes, |s| s.min(bytes)));
        }
        smallest
    }

    /// Waits until node `i`'s log (the cluster must keep logs) contains `text`, calling
    /// `between` between looks; panics after `timeout`.
    pub fn wait_for_log(&self, i: usize, text: &str, timeout: Duration, mut between: impl FnMut()) {
        let log = self.log_file(i).expect("the cluster keeps logs");
        let deadline = Instant::now() + timeout;
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(text)
        {
            assert!(
                Instant::now() < deadline,
                "node {}: no {text:?} in {} within {timeout:?}",
                self.specs[i].node_id,
                log.display()
            );
            between();
        }
    }

    /// `wallet cluster init` as the CLI does it: every node initializes its share of the
    /// partitions (so leaders start spread over the nodes); then waits until every partition
    /// has a leader.
    pub fn init(&self) -> PartitionMap {
        let change = ClusterChange {
            action: Action::Init,
            node_id: net::cluster_admin::INIT_SHARE,
            peer_addr: String::new(),
            client_addr: String::new(),
        };
        let mut initialized = 0;
        for i in 0..self.specs.len() {
            let outcomes = self
                .client_of(i)
                .cluster_change(&change)
                .expect("cluster init");
            for o in outcomes {
                match o.outcome {
                    Outcome::Ok => initialized += 1,
                    Outcome::NotLeader => {}
                    Outcome::Failed => panic!("init: partition {}: {}", o.partition, o.message),
                }
            }
        }
        let map = self.wait_for_leaders(Duration::from_secs(30));
        assert_eq!(
            initialized,
            map.partitions.len(),
            "each partition initialized once"
        );
        map
    }

    /// Starts one more node (id `len + 1`) whose config lists every node so far; it is no
    /// member of any group until `change_everywhere(AddNode)` adds it.
    pub fn add_node(&mut self, root: &Path, partitions: u32) -> usize {
        let node_id = self.specs.len() as u64 + 1;
        let spec = NodeSpec {
            node_id,
            client_addr: format!("127.0.0.1:{}", free_port()),
            metrics_addr: format!("127.0.0.1:{}", free_port()),
            peer_port: free_port_run(),
            config: root.join(format!("node{node_id}.toml")),
            data_dir: root.join(format!("node{node_id}")),
        };
        self.specs.push(spec);
        let spec = self.specs.last().expect("just pushed");
        std::fs::write(
            &spec.config,
            node_config(
                spec,
                &self.specs,
                partitions,
                root,
                &self.options.extra_config,
            ),
        )
        .expect("config file");
        let i = self.specs.len() - 1;
        let node = self.launch(i);
        self.nodes.push(Some(node));
        i
    }

    /// Sends `change` to each partition's leader until every partition took it (as `wallet
    /// cluster add-node/remove-node` does); panics after `timeout`.
    pub fn change_everywhere(&self, change: &ClusterChange, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut done = std::collections::BTreeSet::new();
        loop {
            let map = self.wait_for_leaders(Duration::from_secs(30));
            for (p, leader) in map.partitions.iter().enumerate() {
                if done.contains(&p) {
                    continue;
                }
                let Some(i) = leader.leader.map(|l| (l - 1) as usize) else {
                    continue;
                };
                let mut config = ClientConfig::new(self.specs[i].client_addr.clone());
                config.timeout_ms = timeout.as_millis() as u64;
                config.retries = 0;
                let Ok(outcomes) = Client::connect(config).and_then(|c| c.cluster_change(change))
                else {
                    continue;
                };
                for o in outcomes {
                    match o.outcome {
                        Outcome::Ok => {
                            done.insert(o.partition as usize);
                        }
                        Outcome::NotLeader => {}
                        Outcome::Failed => {
                            panic!("{change:?}: partition {}: {}", o.partition, o.message)
                        }
                    }
                }
            }
            if done.len() == map.partitions.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{change:?} not done within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn client_of(&self, i: usize) -> Client {
        let mut config = ClientConfig::new(self.specs[i].client_addr.clone());
        config.timeout_ms = 10_000;
        Client::connect(config).expect("connect to a node")
    }

    /// A routing client seeded with every node.
    pub fn cluster_client(&self) -> ClusterClient {
        let mut template = ClientConfig::new(self.specs[0].client_addr.clone());
        template.timeout_ms = 10_000;
        template.retries = 1;
        let seeds: Vec<String> = self.specs.iter().map(|s| s.client_addr.clone()).collect();
        ClusterClient::connect(template, &seeds).expect("cluster client")
    }

    /// The index of the running node whose map says every partition has a leader, and the
    /// map; waits up to `timeout`.
    pub fn wait_for_leaders(&self, timeout: Duration) -> PartitionMap {
        let deadline = Instant::now() + timeout;
        loop {
            for (i, node) in self.nodes.iter().enumerate() {
                if node.is_none() {
                    continue;
                }
                let Ok(map) = Client::connect({
                    let mut c = ClientConfig::new(self.specs[i].client_addr.clone());
                    c.retries = 0;
                    c.timeout_ms = 2_000;
                    c
                })
                .and_then(|c| c.partition_map()) else {
                    continue;
                };
                let running = |id: u64| self.nodes[(id - 1) as usize].is_some();
                if map.partitions.iter().all(|p| p.leader.is_some_and(running)) {
                    return map;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader for some partition after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL node `i` (0-based).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.kill();
        }
    }

    /// SIGSTOP node `i`: it freezes with its sockets open (a long pause, a VM steal).
    /// False if it is not running.
    pub fn pause(&self, i: usize) -> bool {
        self.nodes[i]
            .as_ref()
            .is_some_and(|n| n.signal(libc::SIGSTOP))
    }

    /// SIGCONT node `i` after `pause`.
    pub fn resume(&self, i: usize) -> bool {
        self.nodes[i]
            .as_ref()
            .is_some_and(|n| n.signal(libc::SIGCONT))
    }

    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "kill it first");
        let node = self.launch(i);
        self.nodes[i] = Some(node);
    }

    /// Waits until every running node reports the same `(last_index, digest)` for every
    /// partition, twice in a row; returns the combined digest.
    pub fn converged_digest(&self, timeout: Duration) -> u128 {
        let deadline = Instant::now() + timeout;
        let mut previous = None;
        loop {
            let views: Vec<_> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.is_some())
                .map(|(i, _)| {
                    self.client_of(i)
                        .state_digest()
                        .map(|d| {
                            let parts: Vec<(u64, u128)> = d
                                .partitions
                                .iter()
                                .map(|p| (p.last_index, p.digest))
                                .collect();
                            (d.digest, parts)
                        })
                        .ok()
                })
                .collect();
            match views[0].clone() {
                Some(first) if views.iter().all(|v| v.as_ref() == Some(&first)) => {
                    if previous.as_ref() == Some(&first) {
                        return first.0;
                    }
                    previous = Some(first);
                }
                _ => previous = None,
            }
            assert!(
                Instant::now() < deadline,
                "the nodes' states did not converge within {timeout:?}: {views:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
