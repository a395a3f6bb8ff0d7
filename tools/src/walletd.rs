//! `walletd`: the server. Flags override the TOML config file, which overrides the defaults
//! (single node on 127.0.0.1:7400, data in ./walletd-data, core 0, one partition).

use clap::Parser;
use engine::runtime::{EngineConfig, Node, Replication};
use net::{Server, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "walletd",
    version,
    about = "walletd: the digital-wallet ledger server"
)]
struct Args {
    /// TOML config file (keys as the long flags, with underscores).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Client address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// CPU ids to pin one shard to, e.g. 0,1 (one network executor each, floating unless
    /// `pin_network_threads` in the config file).
    #[arg(long, value_delimiter = ',')]
    cores: Option<Vec<usize>>,
    /// Partition count; fixed when the data dir is created (read back from it later).
    #[arg(long)]
    partitions: Option<u32>,
    /// Clients must present the token in this file at handshake.
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
    /// Speak TLS (1.3) on the client port with this PEM certificate chain (leaf first);
    /// needs --tls-key. TOML: tls_cert_file.
    #[arg(long = "tls-cert", alias = "tls-cert-file", value_name = "FILE")]
    tls_cert_file: Option<PathBuf>,
    /// The PEM private key of --tls-cert. TOML: tls_key_file.
    #[arg(long = "tls-key", alias = "tls-key-file", value_name = "FILE")]
    tls_key_file: Option<PathBuf>,
    /// Close connections that have not completed their handshake (TLS and protocol) within
    /// this many milliseconds of being accepted. Default 10000.
    #[arg(long)]
    handshake_timeout_ms: Option<u64>,
    /// Serve Prometheus text metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// The HOST:PORT clients should use to reach this node, as the partition map tells them
    /// (default: --listen; set it when listening on 0.0.0.0). TOML: advertise_addr.
    #[arg(long)]
    advertise_addr: Option<String>,
    /// Cut each partition's log at its first damaged record before starting (loses what
    /// follows it; see docs/OPERATIONS.md). Never needed after a plain crash.
    #[arg(long)]
    repair: bool,
    /// History entries the CQRS read model keeps per account (`wallet history`, `wallet
    /// balance --at`); 0 turns it off. Default 32. Memory: 64 bytes per entry per account that
    /// moved money, reserved at its first change (32 entries x 1M accounts = 2 GiB).
    #[arg(long)]
    read_model_history_per_account: Option<usize>,
    /// How partitions commit their log: `local` (default) or `raft` (each partition a
    /// Raft group: alone a one-voter cluster, see docs/RAFT_PLAN.md).
    /// Fixed when the data dir is created. TOML: replication.
    #[arg(long)]
    replication: Option<engine::runtime::Replication>,
    /// The node-to-node (Raft) address of core slot 0; slot `s` listens on port + `s`. Needed
    /// with [[peers]]. TOML: peer_listen.
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// The cluster's shared node-link secret (every node the same). Needed with [[peers]].
    /// TOML: peer_token_file.
    #[arg(long)]
    peer_token_file: Option<PathBuf>,
    /// This node's certificate (PEM, leaf first) for TLS on the node link; with
    /// --peer-tls-key and --peer-tls-ca (all three or none). TOML: peer_tls_cert.
    #[arg(long, value_name = "FILE")]
    peer_tls_cert: Option<PathBuf>,
    /// The PEM private key of --peer-tls-cert. TOML: peer_tls_key.
    #[arg(long, value_name = "FILE")]
    peer_tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) that signs every node's certificate: peers must present one
    /// it issued. TOML: peer_tls_ca.
    #[arg(long, value_name = "FILE")]
    peer_tls_ca: Option<PathBuf>,
    /// This node's id in its cluster (1 and up, unique). TOML: node_id.
    #[arg(long)]
    node_id: Option<u64>,
}

/// Another node of the cluster (`[[peers]]` in the TOML file).
#[derive(serde::Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct PeerEntry {
    node_id: u64,
    /// Its `peer_listen`.
    peer_addr: SocketAddr,
    /// Where its clients connect (its advertise_addr or listen).
    client_addr: String,
}

#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    cores: Option<Vec<usize>>,
    partitions: Option<u32>,
    auth_token_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    handshake_timeout_ms: Option<u64>,
    metrics_listen: Option<SocketAddr>,
    advertise_addr: Option<String>,
    segment_bytes: Option<u64>,
    snapshot_interval_entries: Option<u64>,
    /// Days (UTC, log time) whose newest snapshot is kept as an audit starting point.
    snapshot_daily_days: Option<u32>,
    queue_depth_max: Option<usize>,
    group_items_max: Option<usize>,
    io_memory_bytes: Option<usize>,
    transfers_capacity_per_partition: Option<usize>,
    connections_per_core_max: Option<usize>,
    requests_in_flight_per_connection_max: Option<u64>,
    /// Pin the network threads to `cores` beside the shards (default: they float).
    pin_network_threads: Option<bool>,
    cluster_id: Option<u64>,
    node_id: Option<u64>,
    read_model_history_per_account: Option<usize>,
    /// Log entries replayed into the read model at start (its history survives a restart).
    read_model_rebuild_entries: Option<u64>,
    /// "local" or "raft" (see --replication).
    replication: Option<String>,
    peer_listen: Option<SocketAddr>,
    peer_token_file: Option<PathBuf>,
    /// TLS on the node link (all three or none; see --peer-tls-cert).
    peer_tls_cert: Option<PathBuf>,
    peer_tls_key: Option<PathBuf>,
    peer_tls_ca: Option<PathBuf>,
    /// The other nodes of the cluster; with any, replication is Raft across them.
    peers: Option<Vec<PeerEntry>>,
    /// Raft election timeout of a cluster of several nodes (ms; heartbeats 5x as often).
    election_timeout_ms: Option<u64>,
    /// How long a follower waits before applying newly committed commands (µs; 0: at once).
    follower_apply_delay_us: Option<u64>,
    /// Lets `wallet cluster isolate/heal` cut this node's link (tests and chaos runs only).
    fault_injection: Option<bool>,
}

/// The node link's TLS files (`peer_tls_cert`, `peer_tls_key`, `peer_tls_ca`): all three or
/// none, since a node that dials with TLS must also accept with it and vice versa.
#[derive(Default, Debug, Clone)]
struct PeerTlsFiles {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
}

impl PeerTlsFiles {
    /// `None` when none is set; the loaded TLS settings when all are; otherwise an error
    /// naming what is missing.
    fn load(&self) -> Result<Option<net::tls::PeerTls>, String> {
        match (&self.cert, &self.key, &self.ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => {
                net::tls::PeerTls::from_files(cert, key, ca).map(Some)
            }
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "peer_tls_cert"),
                    (key.is_none(), "peer_tls_key"),
                    (ca.is_none(), "peer_tls_ca"),
                ]
                .iter()
                .filter(|(absent, _)| *absent)
                .map(|(_, name)| *name)
                .collect();
                Err(format!(
                    "node link TLS needs peer_tls_cert, peer_tls_key and peer_tls_ca together; missing: {}",
                    missing.join(", ")
                ))
            }
        }
    }
}

/// Reads a secret token file: trimmed, 1..=256 bytes.
fn read_token(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let token = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = token.trim().as_bytes().to_vec();
    if token.is_empty() || token.len() > net::codec::TOKEN_BYTES_MAX {
        return Err(format!(
            "{}: the token must be 1..=256 bytes",
            path.display()
        ));
    }
    Ok(token)
}

/// History entries per account the read model keeps unless configured.
const READ_MODEL_HISTORY_DEFAULT: usize = 32;

/// Makes any panic, on any thread, end the process after the usual message. A panic is a bug;
/// without this, one on a shard thread ends only that thread, and the node keeps answering on
/// its client port while its partitions are gone (a zombie no supervisor restarts). Aborted,
/// it restarts from its durable log like after any crash.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

/// The whole program; `std::process::exit`s with 1 on failure.
pub fn main() {
    // Before any thread starts, so every thread inherits it: a write past RLIMIT_FSIZE must
    // fail with EFBIG (handled like a full disk) rather than kill the server.
    engine::log::ignore_file_size_signal();
    abort_on_panic();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WALLETD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr on a full disk, or past RLIMIT_FSIZE) is
        // dropped. Reporting it would `eprintln!` to the same stderr, and that panics when the
        // write fails: the panic killed every shard thread of a node whose disk ran full.
        .log_internal_errors(false)
        .init();
    if let Err(reason) = run(Args::parse()) {
        eprintln!("walletd: {reason}");
        std::process::exit(1);
    }
}

/// A client address goes into partition maps, which hold at most `NODE_ADDR_BYTES_MAX` bytes.
fn check_map_addr(what: &str, addr: &str) -> Result<(), String> {
    let max = net::partition_map::NODE_ADDR_BYTES_MAX;
    if addr.len() > max {
        return Err(format!("{what} is {} bytes; at most {max}", addr.len()));
    }
    Ok(())
}

/// A config file's error on one line (`file:line:column: message`): toml's own rendering
/// spans several lines (the offending line and a caret).
fn config_error(path: &std::path::Path, text: &str, e: &toml::de::Error) -> String {
    let message = e.message().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{}:{line}:{column}: {message}", path.display())
        }
        None => format!("{}: {message}", path.display()),
    }
}

fn run(args: Args) -> Result<(), String> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| config_error(path, &text, &e))?
        }
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("walletd-data"));
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7400)));
    // One core and one partition by default, so every transfer works on a fresh machine
    // (transfers across partitions need TC/C); production configs list their cores.
    let cores = args.cores.or(file.cores).unwrap_or_else(|| vec![0]);
    let existing_partitions = std::fs::read_to_string(data_dir.join("partitions"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let partitions = args
        .partitions
        .or(file.partitions)
        .or(existing_partitions)
        .unwrap_or(cores.len() as u32);
    let token_file = args.auth_token_file.or(file.auth_token_file);
    let auth_token = match &token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    // Read before anything starts, so a bad file is reported before the data dir is touched.
    let tls = match (
        args.tls_cert_file.or(file.tls_cert_file),
        args.tls_key_file.or(file.tls_key_file),
    ) {
        (Some(cert), Some(key)) => Some(net::tls::server_config(&cert, &key)?),
        (None, None) => None,
        _ => {
            return Err("--tls-cert and --tls-key (tls_cert_file, tls_key_file) go together".into())
        }
    };
    let handshake_timeout_ms = args
        .handshake_timeout_ms
        .or(file.handshake_timeout_ms)
        .unwrap_or(ServerConfig::new(listen).handshake_timeout_ms);
    if handshake_timeout_ms == 0 {
        return Err("handshake_timeout_ms must be at least 1".into());
    }

    let peers = file.peers.clone().unwrap_or_default();
    let node_id = args.node_id.or(file.node_id).unwrap_or(1);
    // Both go into every partition map this node serves, whose encoding bounds them: checked
    // before anything starts (a recovery can take minutes).
    if node_id == net::partition_map::NO_LEADER {
        return Err(format!("node_id must be below {}", u64::MAX));
    }
    check_map_addr(
        "advertise_addr",
        args.advertise_addr
            .as_deref()
            .or(file.advertise_addr.as_deref())
            .unwrap_or(&listen.to_string()),
    )?;
    let replication = match (args.replication, &file.replication) {
        (Some(mode), _) => mode,
        (None, Some(name)) => name.parse()?,
        // Peers mean replication.
        (None, None) if !peers.is_empty() => Replication::Raft,
        (None, None) => Replication::Local,
    };
    let cluster = if peers.is_empty() {
        None
    } else {
        Some(cluster_setup(
            &args.peer_listen.or(file.peer_listen),
            &args.peer_token_file.or(file.peer_token_file.clone()),
            &PeerTlsFiles {
                cert: args.peer_tls_cert.or(file.peer_tls_cert.clone()),
                key: args.peer_tls_key.or(file.peer_tls_key.clone()),
                ca: args.peer_tls_ca.or(file.peer_tls_ca.clone()),
            },
            node_id,
            &peers,
            replication,
            file.cluster_id.unwrap_or(0),
            file.fault_injection.unwrap_or(false),
            &args
                .advertise_addr
                .clone()
                .or(file.advertise_addr.clone())
                .unwrap_or_else(|| listen.to_string()),
        )?)
    };
    let mut engine = EngineConfig::new(&data_dir);
    engine.cores = cores.clone();
    engine.partitions = partitions;
    engine.repair = args.repair;
    engine.replication = replication;
    engine.node_id = node_id;
    engine.multi_node = cluster.is_some();
    if let Some(v) = file.election_timeout_ms {
        engine.election_timeout_ms = v;
    }
    if let Some(v) = file.follower_apply_delay_us {
        engine.follower_apply_delay_us = v;
    }
    // Daily snapshots and the read model work in both modes.
    engine.read_model_history_per_account = args
        .read_model_history_per_account
        .or(file.read_model_history_per_account)
        .unwrap_or(READ_MODEL_HISTORY_DEFAULT);
    if let Some(v) = file.segment_bytes {
        engine.segment_bytes = v;
    }
    if let Some(v) = file.snapshot_interval_entries {
        engine.snapshot_interval_entries = v;
    }
    if let Some(v) = file.snapshot_daily_days {
        engine.snapshot_daily_days = v;
    }
    if let Some(v) = file.read_model_rebuild_entries {
        engine.read_model_rebuild_entries = v;
    }
    if let Some(v) = file.queue_depth_max {
        engine.queue_depth_max = v;
    }
    if let Some(v) = file.group_items_max {
        engine.group_items_max = v;
    }
    if let Some(v) = file.io_memory_bytes {
        engine.io_memory_bytes = v;
    }
    // Pre-size the idempotency index: growing a table of millions of ids rehashes it in one
    // go, which stalls the partition for a noticeable time. Address space only until used.
    engine.transfers_capacity_per_partition =
        file.transfers_capacity_per_partition.unwrap_or(16 << 20);
    // Before the node starts (its recovery can replay the log for minutes) and before the port
    // opens: a SIGTERM from then on stops the node cleanly (exit 0) once it is up, instead of
    // killing it with the default disposition. Signals that come early wait in the iterator.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("installing signal handlers: {e}"))?;
    tracing::info!(data_dir = %data_dir.display(), partitions, "starting: recovering the partitions (a SIGTERM from now on stops the node once it is up)");
    let node = match &cluster {
        Some((link, _)) => Node::start_with(engine, net::raft_link::LinkCluster::new(link.clone())),
        None => Node::start(engine),
    };
    let node = Arc::new(node.map_err(|e| e.to_string())?);

    let mut server_config = ServerConfig::new(listen);
    server_config.cores = cores.clone();
    server_config.auth_token = auth_token;
    let tls_enabled = tls.is_some();
    server_config.tls = tls;
    server_config.handshake_timeout_ms = handshake_timeout_ms;
    if let Some(v) = file.connections_per_core_max {
        server_config.connections_per_core_max = v;
    }
    if let Some(v) = file.requests_in_flight_per_connection_max {
        server_config.requests_in_flight_per_connection_max = v;
    }
    if let Some(v) = file.pin_network_threads {
        server_config.pin_network_threads = v;
    }
    server_config.cluster_id = file.cluster_id.unwrap_or(0);
    server_config.node_id = node_id;
    server_config.advertise_addr = args.advertise_addr.or(file.advertise_addr);
    let link_counters = cluster.as_ref().map(|(link, _)| link.counters.clone());
    server_config.cluster = cluster.map(|(_, setup)| setup);
    // Metrics before the client port: whoever waits for the client port (scripts, tests) then
    // finds the metrics port open too.
    if let Some(addr) = args.metrics_listen.or(file.metrics_listen) {
        crate::metrics::serve(addr, node.clone(), link_counters)?;
        tracing::info!(%addr, "metrics at /metrics");
    }
    let server = Server::start(node.clone(), server_config)?;
    tracing::info!(%listen, tls = tls_enabled, data_dir = %data_dir.display(), ?cores, partitions, replication = replication.name(), "walletd listening");

    let signal = signals.forever().next();
    tracing::info!(
        ?signal,
        "stopping: no new connections, finishing requests in flight"
    );
    server.stop();
    // Requests still held by the network layer (if any) are answered `shutting_down`.
    node.shutdown_shared()?;
    tracing::info!("stopped cleanly (logs flushed, snapshots written)");
    Ok(())
}

/// The node link's settings and what the client port needs to know of the cluster, from the
/// config's cluster keys; every mistake an operator can make here is refused with its reason.
#[allow(clippy::too_many_arguments)]
fn cluster_setup(
    peer_listen: &Option<SocketAddr>,
    peer_token_file: &Option<PathBuf>,
    peer_tls: &PeerTlsFiles,
    node_id: u64,
    peers: &[PeerEntry],
    replication: Replication,
    cluster_id: u64,
    fault_injection: bool,
    client_addr: &str,
) -> Result<(net::raft_link::LinkConfig, net::ClusterSetup), String> {
    if replication != Replication::Raft {
        return Err("[[peers]] need replication = \"raft\"".into());
    }
    let listen = peer_listen.ok_or("[[peers]] need peer_listen (--peer-listen)")?;
    if listen.port() == 0 {
        return Err("peer_listen needs a fixed port (peers are configured with it)".into());
    }
    let token_file = peer_token_file.as_ref().ok_or(
        "[[peers]] need peer_token_file (--peer-token-file): nodes authenticate each other",
    )?;
    let token = read_token(token_file)?;
    let tls = peer_tls.load()?;
    if node_id == 0 {
        return Err("node_id must be at least 1".into());
    }
    let mut nodes = vec![net::ClusterNode {
        node_id,
        peer_addr: listen,
        client_addr: client_addr.to_string(),
    }];
    for peer in peers {
        if nodes.iter().any(|n| n.node_id == peer.node_id) {
            return Err(format!(
                "node id {} is listed twice (this node is {node_id})",
                peer.node_id
            ));
        }
        if peer.node_id == 0 || peer.node_id == net::partition_map::NO_LEADER {
            return Err(format!(
                "a peer's node_id must be 1..{}, not {}",
                u64::MAX,
                peer.node_id
            ));
        }
        check_map_addr("a peer's client_addr", &peer.client_addr)?;
        nodes.push(net::ClusterNode {
            node_id: peer.node_id,
            peer_addr: peer.peer_addr,
            client_addr: peer.client_addr.clone(),
        });
    }
    let mut link = net::raft_link::LinkConfig::new(node_id, listen, token);
    link.cluster_id = cluster_id;
    link.tls = tls;
    let setup = net::ClusterSetup {
        nodes,
        link_filter: fault_injection.then(|| link.filter.clone()),
    };
    Ok((link, setup))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped example configs parse (unknown keys are refused, so a typo fails here).
    #[test]
    fn the_example_configs_parse() {
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let mut files = vec![deploy.join("walletd.example.toml")];
        for n in 1..=3 {
            files.push(deploy.join(format!("cluster/node{n}.toml")));
        }
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let config: FileConfig =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if file.to_string_lossy().contains("cluster") {
                let peers = config.peers.expect("peers");
                assert_eq!(peers.len(), 2, "{}", file.display());
                assert!(config.peer_listen.is_some() && config.peer_token_file.is_some());
            }
        }
    }

    #[test]
    fn a_cluster_config_without_its_pieces_is_refused() {
        let peer = PeerEntry {
            node_id: 2,
            peer_addr: "127.0.0.1:7521".parse().unwrap(),
            client_addr: "127.0.0.1:7402".into(),
        };
        let listen: Option<SocketAddr> = Some("127.0.0.1:7511".parse().unwrap());
        let token = tempfile_token();
        let setup = |listen: &Option<SocketAddr>,
                     token: &Option<PathBuf>,
                     id,
                     peers: &[PeerEntry],
                     mode| {
            cluster_setup(
                listen,
                token,
                &PeerTlsFiles::default(),
                id,
                peers,
                mode,
                7,
                false,
                "127.0.0.1:7401",
            )
            .map(|_| ())
        };
        assert!(setup(
            &listen,
            &token,
            1,
            std::slice::from_ref(&peer),
            Replication::Raft
        )
        .is_ok());
        assert!(setup(
            &None,
            &token,
            1,
            std::slice::from_ref(&peer),
            Replication::Raft
        )
        .unwrap_err()
        .contains("peer_listen"));
        assert!(setup(
            &listen,
            &None,
            1,
            std::slice::from_ref(&peer),
            Replication::Raft
        )
        .unwrap_err()
        .contains("peer_token_file"));
        assert!(setup(
            &listen,
            &token,
            2,
            std::slice::from_ref(&peer),
            Replication::Raft
        )
        .unwrap_err()
        .contains("twice"));
        assert!(setup(
            &listen,
            &token,
            1,
            std::slice::from_ref(&peer),
            Replication::Local
        )
        .unwrap_err()
        .contains("raft"));
    }

    /// Peer TLS is all three files or none; a partial set names what is missing (before any
    /// file is read).
    #[test]
    fn node_link_tls_is_all_three_files_or_none() {
        assert!(PeerTlsFiles::default().load().unwrap().is_none());
        let file = Some(PathBuf::from("/nonexistent/x.pem"));
        let partial = |cert: bool, key: bool, ca: bool| PeerTlsFiles {
            cert: cert.then(|| file.clone()).flatten(),
            key: key.then(|| file.clone()).flatten(),
            ca: ca.then(|| file.clone()).flatten(),
        };
        let e = partial(true, false, false).load().unwrap_err();
        assert!(e.ends_with("missing: peer_tls_key, peer_tls_ca"), "{e}");
        let e = partial(true, true, false).load().unwrap_err();
        assert!(e.ends_with("missing: peer_tls_ca"), "{e}");
        let e = partial(false, true, true).load().unwrap_err();
        assert!(e.ends_with("missing: peer_tls_cert"), "{e}");
        assert!(!e.contains('\n'));
        // All three: the files are read (and these do not exist).
        let e = partial(true, true, true).load().unwrap_err();
        assert!(e.contains("/nonexistent/x.pem"), "{e}");
        // And cluster_setup refuses a partial set.
        let peer = PeerEntry {
            node_id: 2,
            peer_addr: "127.0.0.1:7521".parse().unwrap(),
            client_addr: "127.0.0.1:7402".into(),
        };
        // A token file of its own: `tempfile_token`'s is rewritten by another test meanwhile.
        let token =
            std::env::temp_dir().join(format!("walletd-test-tls-token-{}", std::process::id()));
        std::fs::write(&token, "secret\n").unwrap();
        let e = cluster_setup(
            &Some("127.0.0.1:7511".parse().unwrap()),
            &Some(token.clone()),
            &partial(false, false, true),
            1,
            &[peer],
            Replication::Raft,
            0,
            false,
            "127.0.0.1:7401",
        )
        .map(|_| ())
        .unwrap_err();
        let _ = std::fs::remove_file(&token);
        assert!(e.contains("missing: peer_tls_cert, peer_tls_key"), "{e}");
    }

    fn tempfile_token() -> Option<PathBuf> {
        let path = std::env::temp_dir().join(format!("walletd-test-token-{}", std::process::id()));
        std::fs::write(&path, "secret\n").unwrap();
        Some(path)
    }
}
