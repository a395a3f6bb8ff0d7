//! The glommio TCP server. One network executor per configured core (floating, or pinned beside
//! that core's shard executor: `ServerConfig::pin_network_threads`) listens on the same address
//! with SO_REUSEPORT, so the kernel spreads connections over them. Each connection pipelines
//! requests; each request is split by partition and forwarded to the owning shards in batches
//! (`engine::runtime::Node`).
//!
//! Limits: requests in flight per connection, bytes in flight per core, connections per core.
//! Beyond a limit the server stops reading from that socket (TCP pushes back on the client).
//! A connection must finish its handshake (TLS, when configured, then the protocol's) within
//! `handshake_timeout_ms`.

mod cluster_change;
pub(crate) mod connection;
mod handler;
mod subscription;

use engine::runtime::Node;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub cores: Vec<usize>,
    /// Clients must present this token at handshake (compared in constant time).
    pub auth_token: Option<Vec<u8>>,
    /// 0 accepts any client cluster id.
    pub cluster_id: u64,
    pub node_id: u64,
    pub requests_in_flight_per_connection_max: u64,
    pub bytes_in_flight_per_core_max: u64,
    pub connections_per_core_max: usize,
    /// Reply bytes a connection may have waiting to be written before its handlers (and so
    /// its reader) wait.
    pub reply_bytes_per_connection_max: u64,
    /// A connection whose replies cannot be written for this long is closed.
    pub write_stall_timeout_ms: u64,
    /// A connection that has not completed its handshake (the TLS handshake, if any, and the
    /// protocol handshake) this long after it was accepted is closed, so idle unauthenticated
    /// connections cannot hold connection slots.
    pub handshake_timeout_ms: u64,
    /// TLS on the client port (`crate::tls::server_config`); `None`: plain TCP. With TLS the
    /// port speaks nothing else.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub io_memory_bytes: usize,
    /// Pin network executor `i` to `cores[i]` (the shard of that core then shares it with
    /// it). `false` (the default): the network executors float, one per shard core, and the
    /// kernel runs each where a CPU is free. A network thread does little per request (decode,
    /// split, hand over, encode), but it must run *when* a shard answers; pinned beside a
    /// busy shard it waited for its core (p90 1.35 ms from the shard's answer to the request
    /// resuming, measured at 500,000 transfers/s on 2 cores); floating, the batch p50 fell in
    /// 14 of 15 alternating runs (3.41 to 3.18 ms on average; docs/BENCHMARKS.md). Pin them
    /// when the machine gives them cores of their own, and under `isolcpus=`, where the
    /// kernel does not move threads between isolated CPUs.
    pub pin_network_threads: bool,
    /// The `host:port` clients should use for this node, as the partition map tells them
    /// (`None`: the listen address, which is wrong when listening on 0.0.0.0).
    pub advertise_addr: Option<String>,
    /// The cluster this node belongs to, when it has peers (`None`: a single node).
    pub cluster: Option<ClusterSetup>,
}

/// What the client port needs to know of a cluster of several nodes (`ClusterChange`).
#[derive(Clone, Debug)]
pub struct ClusterSetup {
    /// Every node of the cluster as configured, this one included.
    pub nodes: Vec<ClusterNode>,
    /// The node link's fault-injection switch, when the operator allowed fault injection
    /// (`fault_injection = true`: tests and chaos runs, never production).
    pub link_filter: Option<crate::raft_link::LinkFilter>,
}

#[derive(Clone, Debug)]
pub struct ClusterNode {
    pub node_id: u64,
    /// The node link's base address (core slot 0; slot `s` listens on port + `s`).
    pub peer_addr: SocketAddr,
    pub client_addr: String,
}

impl ServerConfig {
    /// Where clients reach this node (`advertise_addr`, else the listen address).
    pub fn advertised_addr(&self) -> String {
        self.advertise_addr
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    pub fn new(listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            listen,
            cores: vec![0],
            auth_token: None,
            cluster_id: 0,
            node_id: 1,
            requests_in_flight_per_connection_max: 16,
            bytes_in_flight_per_core_max: 256 << 20,
            connections_per_core_max: 1024,
            reply_bytes_per_connection_max: 8 << 20,
            write_stall_timeout_ms: 10_000,
            handshake_timeout_ms: 10_000,
            tls: None,
            io_memory_bytes: 1 << 20,
            pin_network_threads: false,
            advertise_addr: None,
            cluster: None,
        }
    }
}

/// A running server; `stop` (or drop) stops accepting and lets in-flight requests finish.
pub struct Server {
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    stop: Option<flume::Sender<()>>,
}

/// Shared by the connections of one core.
pub(crate) struct CoreContext {
    pub node: Arc<Node>,
    pub config: ServerConfig,
    pub bytes_in_flight: Rc<glommio::sync::Semaphore>,
    pub connections: std::cell::Cell<usize>,
    /// Set when the port speaks TLS.
    pub tls: Option<futures_rustls::TlsAcceptor>,
    /// Resolves (with an error) when the server stops: connections stop reading then.
    pub stop: flume::Receiver<()>,
}

impl Server {
    pub fn start(node: Arc<Node>, config: ServerConfig) -> Result<Server, String> {
        let (stop_tx, stop_rx) = flume::bounded::<()>(1);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let mut executors = Vec::new();
        for &core in &config.cores {
            let node = node.clone();
            let config = config.clone();
            let stop = stop_rx.clone();
            let ready = ready_tx.clone();
            let placement = if config.pin_network_threads {
                Placement::Fixed(core)
            } else {
                Placement::Unbound
            };
            let handle = LocalExecutorBuilder::new(placement)
                .name(&format!("net-{core}"))
                .io_memory(config.io_memory_bytes)
                .spawn(move || accept_loop(node, config, stop, ready))
                .map_err(|e| format!("network executor on core {core}: {e}"))?;
            executors.push(handle);
        }
        drop(ready_tx);
        let mut server = Server {
            executors,
            stop: Some(stop_tx),
        };
        for _ in 0..config.cores.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    server.stop_now();
                    return Err(e);
                }
                Err(_) => {
                    server.stop_now();
                    return Err("a network executor ended during start-up".into());
                }
            }
        }
        Ok(server)
    }

    /// Stops accepting, waits for requests in flight (bounded), joins the network executors.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.take();
        for handle in self.executors.drain(..) {
            if let Err(e) = handle.join() {
                tracing::error!(error = %e, "network executor failed");
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_now();
    }
}

async fn accept_loop(
    node: Arc<Node>,
    config: ServerConfig,
    stop: flume::Receiver<()>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let listener = match TcpListener::bind(config.listen) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot listen on {}: {e}", config.listen)));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let ctx = Rc::new(CoreContext {
        bytes_in_flight: Rc::new(glommio::sync::Semaphore::new(
            config.bytes_in_flight_per_core_max,
        )),
        tls: config.tls.clone().map(futures_rustls::TlsAcceptor::from),
        node,
        config,
        connections: std::cell::Cell::new(0),
        stop: stop.clone(),
    });
    loop {
        let accept = Box::pin(listener.accept());
        let stopped = Box::pin(stop.recv_async());
        match futures::future::select(accept, stopped).await {
            futures::future::Either::Left((Ok(stream), _)) => {
                if ctx.connections.get() >= ctx.config.connections_per_core_max {
                    tracing::warn!("connection limit reached; refusing a connection");
                    drop(stream);
                    continue;
                }
                ctx.connections.set(ctx.connections.get() + 1);
                let ctx = ctx.clone();
                glommio::spawn_local(async move {
                    connection::serve(stream, ctx.clone()).await;
                    ctx.connections.set(ctx.connections.get() - 1);
                })
                .detach();
            }
            futures::future::Either::Left((Err(e), _)) => {
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            futures::future::Either::Right(_) => break,
        }
    }
    // Let requests already handed to the shards come back (bounded wait).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ctx.bytes_in_flight.available() < ctx.config.bytes_in_flight_per_core_max
        && std::time::Instant::now() < deadline
    {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}
