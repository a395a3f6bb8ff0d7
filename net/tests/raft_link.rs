//! The node link (`net::raft_link`) end to end: three nodes in one process, each with a real
//! `RaftLogStore` and `RaftPartition` per partition in a temporary directory, talking over
//! real TCP on loopback (port 0). All three nodes share one glommio executor (as in the
//! RAFT_PLAN spike); they share nothing else but a `LinkFilter`, which cuts nodes off.
//!
//! 1. a 3-voter group per partition (two partitions on the same links) applies the same
//!    entries everywhere: equal state digests;
//! 2. the leader is cut off: the majority elects another and commits, the old leader commits
//!    nothing; healed, all converge, and every acknowledged transfer is there;
//! 3. a follower cut off while the leader snapshots and purges its log catches up by snapshot
//!    streaming;
//! 4. the codec: every message round-trips (proptest); hostile bytes are errors, never panics;
//! 5. the handshake: a wrong peer token, and a client's handshake, are refused (and the
//!    client port refuses a peer's); requests of many partitions share frames; an
//!    authenticated peer that sends garbage loses its connection, and nothing else changes;
//! 6. reconnecting to a peer that comes back;
//! 7. the same cluster with each node on an executor thread of its own;
//! 8. TLS on the link (mutual, against the cluster's CA): the cluster converges over it, and
//!    a node whose certificate another CA signed gets no RPC through either way.
//!
//! Timing: heartbeats every 50 ms; each node has its own election window (node n: 250n..
//! 250n+100 ms) so that two candidates never time out on the same tick (RAFT_PLAN §8.7).

use bytes::Bytes;
use engine::command::{CommandBatch, NewAccount, NewTransfer};
use engine::digest::state_digest;
use engine::log::WriterOptions;
use engine::model::Currency;
use engine::partition::partition_of;
use engine::raft::{EntryData, NodeAddr, RaftLogStore, RaftPartition, WalletRaft};
use engine::state_machine::PartitionState;
use engine::ResultCode;
use net::raft_link::{LinkConfig, LinkFilter, RaftLink, RaftRegistry};
use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &[u8] = b"the cluster's peer token";
const NODES: [u64; 3] = [1, 2, 3];
const WAIT: Duration = Duration::from_secs(10);

/// A whole test's budget: every wait inside is bounded too, so a hang is a failure that says
/// where, not a stuck test run.
const TEST_BUDGET: Duration = Duration::from_secs(60);

/// Runs `f` on a fresh glommio executor, within `TEST_BUDGET`; a panic inside it resumes in
/// the caller.
fn on_glommio<T: Send + 'static, F: Future<Output = T> + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    let joined = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(4 << 20)
        .spawn(move || async move {
            within(TEST_BUDGET, f())
                .await
                .unwrap_or_else(|| panic!("the test did not finish within {TEST_BUDGET:?}"))
        })
        .unwrap()
        .join();
    match joined {
        Ok(value) => value,
        Err(glommio::GlommioError::BuilderError(glommio::BuilderErrorKind::ThreadPanic(p))) => {
            std::panic::resume_unwind(p)
        }
        Err(other) => panic!("glommio executor: {other}"),
    }
}

fn raft_config(node: u64, snapshots: bool) -> Arc<Config> {
    let election_min_ms = 250 * node;
    let mut config = Config {
        heartbeat_interval: 50,
        election_timeout_min: election_min_ms,
        election_timeout_max: election_min_ms + 100,
        ..Default::default()
    };
    if snapshots {
        // Snapshots only when the test asks, and then the whole log up to them goes.
        config.snapshot_policy = SnapshotPolicy::Never;
        config.max_in_snapshot_log_to_keep = 0;
        config.purge_batch_size = 1;
    }
    Arc::new(config.validate().unwrap())
}

fn writer_options() -> WriterOptions {
    WriterOptions {
        segment_bytes: 256 << 10,
        pending_bytes_max: 64 << 10,
        ..Default::default()
    }
}

/// One node: its link and, per partition, its Raft and the state that Raft applies to.
struct Node {
    id: u64,
    link: RaftLink,
    rafts: Vec<Raft<WalletRaft>>,
    states: Vec<Rc<RefCell<PartitionState>>>,
}

async fn start_node(
    id: u64,
    dir: &Path,
    partitions: u32,
    filter: &LinkFilter,
    snapshots: bool,
    tls: Option<net::tls::PeerTls>,
) -> Node {
    let mut config = LinkConfig::new(id, "127.0.0.1:0".parse().unwrap(), TOKEN.to_vec());
    config.filter = filter.clone();
    config.tls = tls;
    if snapshots {
        // Small chunks, so a snapshot travels in many of them.
        config.snapshot_chunk_bytes = 4 << 10;
    }
    let registry = RaftRegistry::new();
    let link = RaftLink::start(config, registry.clone()).unwrap();
    let mut rafts = Vec::new();
    let mut states = Vec::new();
    for p in 0..partitions {
        let base = dir.join(format!("node{id}/p{p}"));
        let store = RaftLogStore::open(&base.join("log"), writer_options())
            .await
            .unwrap();
        let sm = RaftPartition::open(&base.join("snapshots"), p, partitions).unwrap();
        states.push(sm.state());
        let raft = Raft::new(id, raft_config(id, snapshots), link.network(p), store, sm)
            .await
            .unwrap();
        registry.register(p, raft.clone());
        rafts.push(raft);
    }
    Node {
        id,
        link,
        rafts,
        states,
    }
}

/// Three nodes; node 1 initializes every partition's group with all three as voters.
async fn start_cluster(
    dir: &Path,
    partitions: u32,
    filter: &LinkFilter,
    snapshots: bool,
) -> Vec<Node> {
    start_cluster_with_tls(dir, partitions, filter, snapshots, [None, None, None]).await
}

/// `start_cluster` with each node's link TLS (`tls[i]` for node `i + 1`).
async fn start_cluster_with_tls(
    dir: &Path,
    partitions: u32,
    filter: &LinkFilter,
    snapshots: bool,
    tls: [Option<net::tls::PeerTls>; 3],
) -> Vec<Node> {
    let mut nodes = Vec::new();
    for (id, tls) in NODES.into_iter().zip(tls) {
        nodes.push(start_node(id, dir, partitions, filter, snapshots, tls).await);
    }
    let members: BTreeMap<u64, NodeAddr> = nodes
        .iter()
        .map(|n| {
            let addr = NodeAddr {
                raft_addr: n.link.local_addr().to_string(),
                client_addr: String::new(),
            };
            (n.id, addr)
        })
        .collect();
    for raft in &nodes[0].rafts {
        within(WAIT, raft.initialize(members.clone()))
            .await
            .expect("initialize did not complete")
            .unwrap();
    }
    nodes
}

async fn stop_cluster(nodes: Vec<Node>) {
    for node in &nodes {
        for raft in &node.rafts {
            within(WAIT, raft.shutdown())
                .await
                .unwrap_or_else(|| panic!("node {} did not shut down", node.id))
                .unwrap();
        }
        node.link.shutdown();
    }
}

/// The node every reachable node of `among` agrees leads `partition`.
async fn leader(nodes: &[Node], among: &[u64], partition: usize) -> u64 {
    let start = Instant::now();
    loop {
        let views: Vec<(u64, ServerState, Option<u64>)> = nodes
            .iter()
            .filter(|n| among.contains(&n.id))
            .map(|n| {
                let m = n.rafts[partition].metrics().borrow().clone();
                (n.id, m.state, m.current_leader)
            })
            .collect();
        let leaders: Vec<u64> = views
            .iter()
            .filter(|(_, state, _)| *state == ServerState::Leader)
            .map(|(id, _, _)| *id)
            .collect();
        if let [l] = leaders[..] {
            if views.iter().all(|(_, _, seen)| *seen == Some(l)) {
                return l;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "no agreed leader of p{partition}: {views:?}"
        );
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

fn node(nodes: &[Node], id: u64) -> &Node {
    nodes.iter().find(|n| n.id == id).unwrap()
}

/// Waits until the nodes `ids` have all applied through the same last entry as each other,
/// and at least `at_least`; returns that index.
async fn converge(nodes: &[Node], ids: &[u64], partition: usize, at_least: u64) -> u64 {
    let start = Instant::now();
    loop {
        let applied: Vec<Option<u64>> = ids
            .iter()
            .map(|id| {
                let m = node(nodes, *id).rafts[partition].metrics().borrow().clone();
                m.last_applied.map(|l| l.index)
            })
            .collect();
        if let Some(Some(first)) = applied.first() {
            if *first >= at_least && applied.iter().all(|a| *a == Some(*first)) {
                return *first;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "p{partition} on {ids:?} applied {applied:?}, want all equal >= {at_least}"
        );
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

fn digests(nodes: &[Node], ids: &[u64], partition: usize) -> Vec<u128> {
    ids.iter()
        .map(|id| state_digest(&node(nodes, *id).states[partition].borrow()))
        .collect()
}

/// A deterministic workload for `partition` of `partitions`: twelve accounts of that
/// partition (the first an issuer), then batches of 20 transfers among them, ids from
/// `first_transfer_id` on, stamped from `clock`.
struct Workload {
    accounts: Vec<u128>,
    next_transfer_id: u128,
    rng: u64,
    clock_ns: u64,
}

impl Workload {
    fn new(partition: u32, partitions: u32, first_transfer_id: u128) -> Workload {
        let accounts = (1..)
            .filter(|id| partition_of(*id, partitions) == partition)
            .take(12)
            .collect();
        Workload {
            accounts,
            next_transfer_id: first_transfer_id,
            rng: 0x2545_f491_4f6c_dd1d + u64::from(partition),
            clock_ns: 1_700_000_000_000_000_000,
        }
    }

    fn next(&mut self, n: u64) -> u64 {
        self.rng = self
            .rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.rng >> 33) % n
    }

    fn accounts(&self) -> CommandBatch {
        let eur = Currency::parse("EUR").unwrap();
        CommandBatch::CreateAccounts(
            self.accounts
                .iter()
                .enumerate()
                .map(|(i, id)| NewAccount {
                    id: *id,
                    currency: eur,
                    flags: 0,
                    floor: if i == 0 { -1_000_000_000_000 } else { 0 },
                    user_data: i as u64,
                })
                .collect(),
        )
    }

    fn transfers(&mut self) -> CommandBatch {
        let eur = Currency::parse("EUR").unwrap();
        let wallets = self.accounts.len() as u64 - 1;
        let transfers = (0..20)
            .map(|i| {
                let from = if i % 3 == 0 {
                    0
                } else {
                    1 + self.next(wallets) as usize
                };
                let to = 1 + self.next(wallets) as usize;
                let (from, to) = (self.accounts[from], self.accounts[to]);
                let id = self.next_transfer_id;
                self.next_transfer_id += 1;
                NewTransfer {
                    id,
                    from,
                    to,
                    amount: 1 + self.next(1_000),
                    currency: eur,
                    user_data: i,
                }
            })
            .collect();
        CommandBatch::CreateTransfers(transfers)
    }

    fn entry(&mut self, batch: &CommandBatch) -> EntryData {
        let mut body = rkyv::util::AlignedVec::<16>::new();
        batch.encode_into(&mut body);
        self.clock_ns += 1_000_000;
        EntryData::new(batch.kind(), self.clock_ns, Bytes::copy_from_slice(&body))
    }
}

/// Proposes `batch` on `raft` (a leader) and returns the transfers it acknowledged as done.
async fn write(
    raft: &Raft<WalletRaft>,
    workload: &mut Workload,
    batch: CommandBatch,
) -> Vec<NewTransfer> {
    let data = workload.entry(&batch);
    let answer = within(WAIT, raft.client_write(data))
        .await
        .expect("client_write did not complete")
        .unwrap()
        .data;
    assert_eq!(answer.results.len(), batch.len());
    match batch {
        CommandBatch::CreateTransfers(transfers) => transfers
            .into_iter()
            .zip(answer.results)
            .filter(|(_, code)| *code == ResultCode::Ok)
            .map(|(t, _)| t)
            .collect(),
        _ => Vec::new(),
    }
}

fn assert_has(state: &PartitionState, acknowledged: &[NewTransfer]) {
    for t in acknowledged {
        let stored = state
            .transfer(t.id)
            .unwrap_or_else(|| panic!("acknowledged transfer {} is missing", t.id));
        assert_eq!(
            (stored.from, stored.to, stored.amount),
            (t.from, t.to, t.amount)
        );
    }
}

#[test]
fn three_voters_apply_the_same_entries_on_every_node_for_every_partition() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    on_glommio(move || async move {
        const PARTITIONS: u32 = 2;
        let filter = LinkFilter::new();
        let nodes = start_cluster(&path, PARTITIONS, &filter, false).await;
        // Both partitions write at once, so their messages share frames on the links.
        let mut writers = Vec::new();
        for p in 0..PARTITIONS as usize {
            let l = leader(&nodes, &NODES, p).await;
            let raft = node(&nodes, l).rafts[p].clone();
            let mut workload = Workload::new(p as u32, PARTITIONS, 1 + p as u128 * 1_000_000);
            writers.push(glommio::spawn_local(async move {
                let mut done = Vec::new();
                let accounts = workload.accounts();
                write(&raft, &mut workload, accounts).await;
                for _ in 0..15 {
                    let batch = workload.transfers();
                    done.extend(write(&raft, &mut workload, batch).await);
                }
                done
            }));
        }
        let mut acknowledged = Vec::new();
        for writer in writers {
            let done = writer.await;
            assert!(done.len() > 100, "{} transfers acknowledged", done.len());
            acknowledged.push(done);
        }
        for (p, acknowledged) in acknowledged.iter().enumerate() {
            // membership + blank + accounts + 15 transfer batches: raft index 17.
            converge(&nodes, &NODES, p, 17).await;
            let d = digests(&nodes, &NODES, p);
            assert!(d.iter().all(|x| *x == d[0]), "p{p} digests differ: {d:x?}");
            for n in &nodes {
                assert_has(&n.states[p].borrow(), acknowledged);
            }
        }
        assert_ne!(digests(&nodes, &[1], 0), digests(&nodes, &[1], 1));
        for n in &nodes {
            let stats = n.link.stats();
            eprintln!("node {} sent {stats:?}", n.id);
            // At most one connection per peer (no reconnects on a healthy loopback), shared by
            // both partitions' messages.
            assert!(
                stats.connects <= 2 && stats.connect_failures == 0,
                "{stats:?}"
            );
        }
        stop_cluster(nodes).await;
    });
}

#[test]
fn an_isolated_leader_commits_nothing_while_the_majority_goes_on_and_all_converge_on_heal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    on_glommio(move || async move {
        let filter = LinkFilter::new();
        let nodes = start_cluster(&path, 1, &filter, false).await;
        let mut workload = Workload::new(0, 1, 1);
        let mut acknowledged = Vec::new();
        let old = leader(&nodes, &NODES, 0).await;
        let raft = node(&nodes, old).rafts[0].clone();
        let accounts = workload.accounts();
        write(&raft, &mut workload, accounts).await;
        for _ in 0..5 {
            let batch = workload.transfers();
            acknowledged.extend(write(&raft, &mut workload, batch).await);
        }
        let before = converge(&nodes, &NODES, 0, 7).await;

        filter.isolate(old);
        let isolated_at = Instant::now();
        let rest: Vec<u64> = NODES.iter().copied().filter(|id| *id != old).collect();
        // The old leader takes a write it can never commit (transfer ids from 900 000 on).
        let mut stale_workload = Workload::new(0, 1, 900_000);
        let stale_batch = stale_workload.transfers();
        let stale_data = stale_workload.entry(&stale_batch);
        let stale = glommio::spawn_local({
            let raft = raft.clone();
            async move { raft.client_write(stale_data).await }
        })
        .detach();
        let new = leader(&nodes, &rest, 0).await;
        assert_ne!(new, old);
        let failover = isolated_at.elapsed();
        let new_raft = node(&nodes, new).rafts[0].clone();
        for _ in 0..5 {
            let batch = workload.transfers();
            acknowledged.extend(write(&new_raft, &mut workload, batch).await);
        }
        let majority = converge(&nodes, &rest, 0, before + 6).await;
        let old_metrics = node(&nodes, old).rafts[0].metrics().borrow().clone();
        assert_eq!(
            old_metrics.last_applied.map(|l| l.index),
            Some(before),
            "the isolated leader applied something new"
        );

        filter.heal_all();
        // A new leader may be elected on heal (no PreVote in openraft 0.9, RAFT_PLAN §8.8);
        // whoever leads, everyone applies the same entries.
        let healed = leader(&nodes, &NODES, 0).await;
        let raft = node(&nodes, healed).rafts[0].clone();
        let batch = workload.transfers();
        acknowledged.extend(write(&raft, &mut workload, batch).await);
        converge(&nodes, &NODES, 0, majority + 1).await;
        let d = digests(&nodes, &NODES, 0);
        assert!(
            d.iter().all(|x| *x == d[0]),
            "digests differ after heal: {d:x?}"
        );
        for n in &nodes {
            assert_has(&n.states[0].borrow(), &acknowledged);
        }
        // The stale write was never acknowledged (it fails, or is still waiting): its
        // transfers are nowhere.
        if let Some(Some(Ok(_))) = within(Duration::from_secs(2), stale).await {
            panic!("the isolated leader acknowledged a write");
        }
        for n in &nodes {
            assert!(n.states[0].borrow().transfer(900_000).is_none());
        }
        eprintln!("failover after isolating node {old}: node {new} leads after {failover:?}");
        stop_cluster(nodes).await;
    });
}

/// `f`'s output, or `None` if it takes longer than `limit`.
async fn within<T>(limit: Duration, f: impl Future<Output = T>) -> Option<T> {
    let timer = std::pin::pin!(glommio::timer::sleep(limit));
    match futures::future::select(std::pin::pin!(f), timer).await {
        futures::future::Either::Left((v, _)) => Some(v),
        futures::future::Either::Right(_) => None,
    }
}

#[test]
fn a_follower_behind_the_purged_log_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    on_glommio(move || async move {
        let filter = LinkFilter::new();
        let nodes = start_cluster(&path, 1, &filter, true).await;
        let mut workload = Workload::new(0, 1, 1);
        let mut acknowledged = Vec::new();
        let l = leader(&nodes, &NODES, 0).await;
        let raft = node(&nodes, l).rafts[0].clone();
        let accounts = workload.accounts();
        write(&raft, &mut workload, accounts).await;
        let behind = *NODES.iter().find(|id| **id != l).unwrap();
        let behind_at = converge(&nodes, &NODES, 0, 2).await;

        filter.isolate(behind);
        for _ in 0..12 {
            let batch = workload.transfers();
            acknowledged.extend(write(&raft, &mut workload, batch).await);
        }
        let last = raft.metrics().borrow().last_applied;
        raft.trigger().snapshot().await.unwrap();
        raft.wait(Some(WAIT))
            .metrics(
                |m| m.snapshot == last && m.purged == last,
                "snapshot taken and log purged",
            )
            .await
            .unwrap();
        assert!(last.unwrap().index > behind_at + 10);
        let snapshot_bytes: u64 = std::fs::read_dir(path.join(format!("node{l}/p0/snapshots")))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.path().extension().is_some_and(|x| x == "wsnap"))
            .map(|e| e.metadata().unwrap().len())
            .max()
            .unwrap();
        assert!(
            snapshot_bytes > 3 * (4 << 10),
            "{snapshot_bytes} bytes: one chunk"
        );

        filter.heal_all();
        let lagging = &node(&nodes, behind).rafts[0];
        lagging
            .wait(Some(WAIT))
            .metrics(|m| m.snapshot == last, "the snapshot installed")
            .await
            .unwrap();
        let leader_now = leader(&nodes, &NODES, 0).await;
        let raft = node(&nodes, leader_now).rafts[0].clone();
        let batch = workload.transfers();
        acknowledged.extend(write(&raft, &mut workload, batch).await);
        converge(&nodes, &NODES, 0, last.unwrap().index + 1).await;
        let d = digests(&nodes, &NODES, 0);
        assert!(d.iter().all(|x| *x == d[0]), "digests differ: {d:x?}");
        for n in &nodes {
            assert_has(&n.states[0].borrow(), &acknowledged);
        }
        stop_cluster(nodes).await;
    });
}

/// The handshake on the node link's port: a peer with the wrong token, and a client, are
/// turned away by their first frame; the right token gets through (and an RPC for a partition
/// nobody runs there is answered as unreachable, not left to time out).
mod handshake {
    use super::{on_glommio, TOKEN};
    use engine::raft::NodeAddr;
    use futures::io::{AsyncReadExt, AsyncWriteExt};
    use net::codec::{self, role, Handshake};
    use net::frame::{self, flags, FrameHeader, HEADER_BYTES};
    use net::operation::{Operation, ProtocolError};
    use net::raft_link::limits::LINK_BODY_BYTES_MAX;
    use net::raft_link::message::{kind, LinkRequest};
    use net::raft_link::{encode_batch, Envelope, LinkConfig, RaftLink, RaftRegistry};
    use openraft::error::RPCError;
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use openraft::raft::VoteRequest;
    use openraft::Vote;
    use std::time::Duration;

    fn link(id: u64, token: &[u8]) -> RaftLink {
        link_on(id, token, "127.0.0.1:0".parse().unwrap())
    }

    pub(super) fn link_on(id: u64, token: &[u8], listen: std::net::SocketAddr) -> RaftLink {
        let config = LinkConfig::new(id, listen, token.to_vec());
        RaftLink::start(config, RaftRegistry::new()).unwrap()
    }

    async fn vote_from(from: &RaftLink, to: &RaftLink) -> String {
        vote_to(from, to.local_addr()).await
    }

    /// A vote request of partition 0 to node 2 at `to`; the unreachable error it gets.
    pub(super) async fn vote_to(from: &RaftLink, to: std::net::SocketAddr) -> String {
        let addr = NodeAddr {
            raft_addr: to.to_string(),
            client_addr: String::new(),
        };
        let mut network = from.network(0).new_client(2, &addr).await;
        let request = VoteRequest::new(Vote::new(1, 1), None);
        match network
            .vote(request, RPCOption::new(Duration::from_secs(2)))
            .await
        {
            Err(RPCError::Unreachable(u)) => u.to_string(),
            other => panic!("expected unreachable, got {other:?}"),
        }
    }

    /// Sends one handshake frame with `role` and `token`, returns the error it is refused with.
    async fn raw_handshake(to: &RaftLink, role: u8, token: &[u8]) -> Option<ProtocolError> {
        super::within(
            Duration::from_secs(5),
            raw_handshake_unbounded(to, role, token),
        )
        .await
        .expect("the handshake exchange did not complete")
    }

    async fn raw_handshake_unbounded(
        to: &RaftLink,
        role: u8,
        token: &[u8],
    ) -> Option<ProtocolError> {
        let mut stream = glommio::net::TcpStream::connect(to.local_addr())
            .await
            .unwrap();
        let mut out = bytes::BytesMut::new();
        frame::encode_frame_with(&mut out, Operation::Handshake as u8, 0, 7, |b| {
            codec::encode_handshake(
                b,
                &Handshake {
                    role,
                    cluster_id: 0,
                    token: token.to_vec(),
                },
            )
        });
        stream.write_all(&out).await.unwrap();
        let mut header = [0u8; HEADER_BYTES];
        stream.read_exact(&mut header).await.unwrap();
        let header = FrameHeader::decode(&header).unwrap();
        let mut body = vec![0u8; header.body_len as usize];
        stream.read_exact(&mut body).await.unwrap();
        assert_ne!(header.flags & flags::REPLY, 0);
        if header.flags & flags::ERROR == 0 {
            return None;
        }
        let mut rest = Vec::new();
        // Refused: the acceptor closes the connection after the error frame.
        let n = stream.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(n, 0);
        codec::decode_error(&body).0
    }

    /// A connection that completed a peer handshake with the right token.
    async fn handshaken(to: &RaftLink) -> glommio::net::TcpStream {
        let mut stream = glommio::net::TcpStream::connect(to.local_addr())
            .await
            .unwrap();
        let mut out = bytes::BytesMut::new();
        frame::encode_frame_with(&mut out, Operation::Handshake as u8, 0, 1, |b| {
            codec::encode_handshake(
                b,
                &Handshake {
                    role: role::PEER,
                    cluster_id: 0,
                    token: TOKEN.to_vec(),
                },
            )
        });
        stream.write_all(&out).await.unwrap();
        let mut header = [0u8; HEADER_BYTES];
        stream.read_exact(&mut header).await.unwrap();
        let header = FrameHeader::decode(&header).unwrap();
        let mut body = vec![0u8; header.body_len as usize];
        stream.read_exact(&mut body).await.unwrap();
        assert_eq!(header.flags & flags::ERROR, 0);
        stream
    }

    /// A RaftBatch frame (REPLY when `reply`) around `body`.
    fn batch_frame(body: &[u8], reply: bool) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        let flags = if reply { flags::REPLY } else { 0 };
        frame::encode_frame_with(&mut out, Operation::RaftBatch as u8, flags, 1, |b| {
            b.extend_from_slice(body)
        });
        out.to_vec()
    }

    /// A batch body from node 1 to `to` with one message of `kind` and `body`.
    fn batch_body(to: u64, kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        let envelope = Envelope {
            partition: 0,
            kind,
            msg_id: 1,
            body,
        };
        encode_batch(&mut out, 1, to, &[envelope]);
        out.to_vec()
    }

    #[test]
    fn an_authenticated_peer_that_sends_garbage_is_cut_off_and_the_link_goes_on() {
        on_glommio(|| async {
            let target = link(2, TOKEN);
            let mut vote = Vec::new();
            LinkRequest::Vote(VoteRequest::new(Vote::new(1, 1), None)).encode(&mut vote);
            // A header announcing one byte more than the link's limit (checksums valid).
            let mut oversized = batch_frame(b"", false);
            oversized[16..20].copy_from_slice(&(LINK_BODY_BYTES_MAX as u32 + 1).to_le_bytes());
            let checksum = crc32c::crc32c(&oversized[..28]);
            oversized[28..32].copy_from_slice(&checksum.to_le_bytes());
            let cases: Vec<(&str, Vec<u8>)> = vec![
                (
                    "a body that is no batch",
                    batch_frame(b"garbage, not a batch", false),
                ),
                (
                    "a batch for node 9",
                    batch_frame(&batch_body(9, kind::VOTE, &vote), false),
                ),
                (
                    "a message that does not decode",
                    batch_frame(&batch_body(2, kind::VOTE, &vote[..5]), false),
                ),
                (
                    "an unknown kind",
                    batch_frame(&batch_body(2, 77, &vote), false),
                ),
                (
                    "a reply frame",
                    batch_frame(&batch_body(2, kind::VOTE, &vote), true),
                ),
                ("a frame over the limit", oversized),
            ];
            for (what, bytes) in cases {
                let mut stream = handshaken(&target).await;
                stream.write_all(&bytes).await.unwrap();
                let mut rest = Vec::new();
                let closed =
                    super::within(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
                assert!(
                    matches!(closed, Some(Ok(0)) | Some(Err(_))),
                    "{what}: {closed:?}, {} bytes",
                    rest.len()
                );
            }
            // The listener still serves a well-behaved peer.
            let friend = link(1, TOKEN);
            let why = vote_from(&friend, &target).await;
            assert!(why.contains("no Raft of partition 0 "), "{why}");
        });
    }

    #[test]
    fn a_wrong_token_and_a_client_are_refused_and_the_right_token_gets_in() {
        on_glommio(|| async {
            let target = link(2, TOKEN);
            let impostor = link(1, b"not the token");
            let why = vote_from(&impostor, &target).await;
            assert!(why.contains("AuthFailed"), "{why}");

            let friend = link(1, TOKEN);
            let why = vote_from(&friend, &target).await;
            assert!(why.contains("no Raft of partition 0 "), "{why}");

            // Many partitions' requests issued in one turn share frames, and each reply finds
            // its caller.
            let addr = NodeAddr {
                raft_addr: target.local_addr().to_string(),
                client_addr: String::new(),
            };
            let calls = (0..64u32).map(|p| {
                let factory = friend.network(p);
                let addr = addr.clone();
                async move {
                    let mut factory = factory;
                    let mut network = factory.new_client(2, &addr).await;
                    let request = VoteRequest::new(Vote::new(1, 1), None);
                    network
                        .vote(request, RPCOption::new(Duration::from_secs(2)))
                        .await
                }
            });
            let before = friend.stats();
            let results = futures::future::join_all(calls).await;
            for (p, result) in results.into_iter().enumerate() {
                match result {
                    Err(RPCError::Unreachable(u)) => {
                        let why = u.to_string();
                        assert!(why.contains(&format!("partition {p} ")), "{why}");
                    }
                    other => panic!("expected unreachable, got {other:?}"),
                }
            }
            let after = friend.stats();
            assert_eq!(after.messages_sent - before.messages_sent, 64);
            assert!(after.frames_sent - before.frames_sent < 64, "{after:?}");
            assert!(after.messages_per_frame_max > 1, "{after:?}");

            let refused = raw_handshake(&target, role::CLIENT, TOKEN).await;
            assert_eq!(refused, Some(ProtocolError::AuthFailed));
            let refused = raw_handshake(&target, role::PEER, b"").await;
            assert_eq!(refused, Some(ProtocolError::AuthFailed));
            assert_eq!(raw_handshake(&target, role::PEER, TOKEN).await, None);
        });
    }
}

/// The other way round: the client port refuses a peer's handshake (role 2), so a node that
/// dials a client address by mistake gets nowhere.
mod client_port {
    use super::TOKEN;
    use engine::runtime::{EngineConfig, Node};
    use net::codec::{self, role, Handshake};
    use net::frame::{self, flags, FrameHeader, HEADER_BYTES};
    use net::operation::{Operation, ProtocolError};
    use net::{Server, ServerConfig};
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn the_client_port_refuses_a_peer_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new(dir.path());
        config.segment_bytes = 4 << 20;
        let node = Arc::new(Node::start(config).unwrap());
        // A free port (the server reports no address when given port 0).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut server_config = ServerConfig::new(listen);
        server_config.auth_token = Some(TOKEN.to_vec());
        let server = Server::start(node.clone(), server_config).unwrap();

        let mut stream = std::net::TcpStream::connect(listen).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut out = bytes::BytesMut::new();
        frame::encode_frame_with(&mut out, Operation::Handshake as u8, 0, 1, |b| {
            codec::encode_handshake(
                b,
                &Handshake {
                    role: role::PEER,
                    cluster_id: 0,
                    token: TOKEN.to_vec(),
                },
            )
        });
        stream.write_all(&out).unwrap();
        let mut header = [0u8; HEADER_BYTES];
        stream.read_exact(&mut header).unwrap();
        let header = FrameHeader::decode(&header).unwrap();
        let mut body = vec![0u8; header.body_len as usize];
        stream.read_exact(&mut body).unwrap();
        assert_ne!(header.flags & flags::ERROR, 0);
        assert_eq!(
            codec::decode_error(&body).0,
            Some(ProtocolError::AuthFailed)
        );
        drop(stream);
        server.stop();
        drop(node);
    }
}

/// Reconnecting: a peer that goes away is reported unreachable (at once while the link backs
/// off), and reached again once it is back on the same address.
mod reconnect {
    use super::handshake::{link_on, vote_to};
    use super::{on_glommio, TOKEN};
    use std::time::{Duration, Instant};

    #[test]
    fn a_peer_that_comes_back_is_reached_again() {
        on_glommio(|| async {
            let target = link_on(2, TOKEN, "127.0.0.1:0".parse().unwrap());
            let addr = target.local_addr();
            let from = link_on(1, TOKEN, "127.0.0.1:0".parse().unwrap());
            assert!(vote_to(&from, addr).await.contains("no Raft"));

            target.shutdown();
            drop(target);
            let gone = vote_to(&from, addr).await;
            assert!(
                gone.contains("lost") || gone.contains("cannot reach") || gone.contains("backoff"),
                "{gone}"
            );
            // While it is down, calls fail fast (refused connects, then backoff).
            let start = Instant::now();
            for _ in 0..5 {
                vote_to(&from, addr).await;
            }
            assert!(start.elapsed() < Duration::from_secs(1));

            let back = link_on(2, TOKEN, addr);
            let start = Instant::now();
            loop {
                let why = vote_to(&from, addr).await;
                if why.contains("no Raft") {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(5), "still: {why}");
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            drop(back);
        });
    }
}

/// The hand encoding: every message round-trips; truncated, oversized and random input is an
/// error and never a panic.
mod codec {
    use bytes::{Bytes, BytesMut};
    use engine::command::entry_kind;
    use engine::raft::entry_record::log_id;
    use engine::raft::types::{Entry, LogId, Membership};
    use engine::raft::{EntryData, NodeAddr, WalletRaft};
    use net::raft_link::message::{
        kind, Failure, FailureCode, LinkReply, LinkRequest, SnapshotChunk, SnapshotInstall,
    };
    use net::raft_link::{decode_batch, encode_batch, Envelope};
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
    };
    use openraft::{EntryPayload, LeaderId, SnapshotMeta, StoredMembership, Vote};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn vote() -> impl Strategy<Value = Vote<u64>> {
        (any::<u64>(), any::<Option<u64>>(), any::<bool>()).prop_map(
            |(term, voted_for, committed)| Vote {
                leader_id: LeaderId { term, voted_for },
                committed,
            },
        )
    }

    fn opt_log_id() -> impl Strategy<Value = Option<LogId>> {
        any::<Option<(u64, u64)>>().prop_map(|id| id.map(|(t, i)| log_id(t, i)))
    }

    fn membership() -> impl Strategy<Value = Membership> {
        (
            proptest::collection::btree_set(0u64..6, 1..4),
            proptest::option::of(6u64..9),
        )
            .prop_map(|(voters, learner)| {
                let nodes: BTreeMap<u64, NodeAddr> = voters
                    .iter()
                    .copied()
                    .chain(learner)
                    .map(|id| {
                        let addr = NodeAddr {
                            raft_addr: format!("10.0.0.{id}:7001"),
                            client_addr: format!("h{id}:7000"),
                        };
                        (id, addr)
                    })
                    .collect();
                Membership::new(vec![voters.into_iter().collect::<BTreeSet<_>>()], nodes)
            })
    }

    fn payload() -> impl Strategy<Value = EntryPayload<WalletRaft>> {
        prop_oneof![
            Just(EntryPayload::Blank),
            (
                any::<u16>().prop_filter("not a raft kind", |k| !entry_kind::is_raft(*k)),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..300),
            )
                .prop_map(|(kind, ts, body)| {
                    EntryPayload::Normal(EntryData::new(kind, ts, Bytes::from(body)))
                }),
            membership().prop_map(EntryPayload::Membership),
        ]
    }

    fn append() -> impl Strategy<Value = AppendEntriesRequest<WalletRaft>> {
        (
            vote(),
            proptest::option::of((1u64..1_000, 0u64..1_000_000)),
            opt_log_id(),
            proptest::collection::vec((0u64..3, payload()), 0..8),
        )
            .prop_map(|(vote, prev, leader_commit, entries)| {
                let prev_log_id = prev.map(|(t, i)| log_id(t, i));
                let first = prev.map_or(0, |(_, i)| i + 1);
                let base_term = prev.map_or(1, |(t, _)| t);
                let entries = entries
                    .into_iter()
                    .enumerate()
                    .map(|(n, (bump, payload))| Entry {
                        log_id: log_id(base_term + bump, first + n as u64),
                        payload,
                    })
                    .collect();
                AppendEntriesRequest {
                    vote,
                    prev_log_id,
                    entries,
                    leader_commit,
                }
            })
    }

    fn request() -> impl Strategy<Value = LinkRequest> {
        prop_oneof![
            (vote(), opt_log_id()).prop_map(|(vote, last_log_id)| LinkRequest::Vote(VoteRequest {
                vote,
                last_log_id
            })),
            append().prop_map(LinkRequest::AppendEntries),
            (
                vote(),
                "[a-z0-9-]{0,40}",
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..2000)
            )
                .prop_map(|(vote, snapshot_id, offset, data)| {
                    LinkRequest::SnapshotChunk(SnapshotChunk {
                        vote,
                        snapshot_id,
                        offset,
                        data: Bytes::from(data),
                    })
                }),
            (
                vote(),
                any::<u64>(),
                opt_log_id(),
                opt_log_id(),
                membership(),
                "[0-9-]{1,20}"
            )
                .prop_map(|(vote, total_bytes, last, mid, m, id)| {
                    LinkRequest::SnapshotInstall(SnapshotInstall {
                        vote,
                        total_bytes,
                        meta: SnapshotMeta {
                            last_log_id: last,
                            last_membership: StoredMembership::new(mid, m),
                            snapshot_id: id,
                        },
                    })
                }),
        ]
    }

    fn reply() -> impl Strategy<Value = LinkReply> {
        // openraft's AppendEntriesResponse is not Clone, so no `Just` of it.
        let append = (0u8..4, opt_log_id(), vote()).prop_map(|(outcome, id, vote)| match outcome {
            0 => AppendEntriesResponse::Success,
            1 => AppendEntriesResponse::PartialSuccess(id),
            2 => AppendEntriesResponse::Conflict,
            _ => AppendEntriesResponse::HigherVote(vote),
        });
        let code = prop_oneof![
            Just(FailureCode::NoSuchPartition),
            Just(FailureCode::RaftStopped),
            Just(FailureCode::RaftPanicked),
            Just(FailureCode::Storage),
            Just(FailureCode::SnapshotTransfer),
        ];
        prop_oneof![
            (vote(), any::<bool>(), opt_log_id()).prop_map(|(vote, vote_granted, last_log_id)| {
                LinkReply::Vote(VoteResponse {
                    vote,
                    vote_granted,
                    last_log_id,
                })
            }),
            append.prop_map(LinkReply::AppendEntries),
            any::<u64>().prop_map(|received_bytes| LinkReply::ChunkAck { received_bytes }),
            vote().prop_map(|vote| LinkReply::Snapshot(SnapshotResponse { vote })),
            (code, "\\PC{0,200}")
                .prop_map(|(code, message)| LinkReply::Failure(Failure { code, message })),
        ]
    }

    fn encoded_request(r: &LinkRequest) -> Vec<u8> {
        let mut out = Vec::new();
        r.encode(&mut out);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn requests_round_trip_and_every_cut_is_an_error(r in request()) {
            let bytes = encoded_request(&r);
            let back = LinkRequest::decode(r.kind(), &bytes).unwrap();
            // openraft's AppendEntriesRequest has no PartialEq; Debug shows every field.
            prop_assert_eq!(format!("{back:?}"), format!("{r:?}"));
            for len in 0..bytes.len() {
                prop_assert!(LinkRequest::decode(r.kind(), &bytes[..len]).is_err(), "cut at {}", len);
            }
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(LinkRequest::decode(r.kind(), &longer).is_err());
        }

        #[test]
        fn replies_round_trip_and_every_cut_is_an_error(r in reply()) {
            let mut bytes = Vec::new();
            r.encode(&mut bytes);
            prop_assert_eq!(&LinkReply::decode(r.kind(), &bytes).unwrap(), &r);
            for len in 0..bytes.len() {
                prop_assert!(LinkReply::decode(r.kind(), &bytes[..len]).is_err(), "cut at {}", len);
            }
        }

        #[test]
        fn batches_round_trip(
            from in any::<u64>(),
            to in any::<u64>(),
            messages in proptest::collection::vec(
                (any::<u32>(), any::<u8>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..100)),
                1..20,
            ),
        ) {
            let envelopes: Vec<Envelope<'_>> = messages
                .iter()
                .map(|(partition, kind, msg_id, body)| Envelope {
                    partition: *partition,
                    kind: *kind,
                    msg_id: *msg_id,
                    body,
                })
                .collect();
            let mut out = BytesMut::new();
            encode_batch(&mut out, from, to, &envelopes);
            let batch = decode_batch(&out).unwrap();
            prop_assert_eq!((batch.from, batch.to), (from, to));
            prop_assert_eq!(&batch.messages, &envelopes);
            for len in 0..out.len() {
                prop_assert!(decode_batch(&out[..len]).is_err());
            }
        }

        #[test]
        fn random_bytes_never_panic(kind in any::<u8>(), bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = LinkRequest::decode(kind, &bytes);
            let _ = LinkReply::decode(kind, &bytes);
            let _ = decode_batch(&bytes);
        }

        #[test]
        fn damaged_messages_never_panic(r in request(), at in any::<prop::sample::Index>(), xor in 1u8..) {
            let mut bytes = encoded_request(&r);
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] ^= xor;
                let _ = LinkRequest::decode(r.kind(), &bytes);
            }
        }
    }

    #[test]
    fn a_damaged_entry_record_is_refused() {
        let request = LinkRequest::AppendEntries(AppendEntriesRequest {
            vote: Vote::new(2, 1),
            prev_log_id: Some(log_id(1, 4)),
            entries: vec![Entry {
                log_id: log_id(2, 5),
                payload: EntryPayload::Normal(EntryData::new(
                    entry_kind::CREATE_TRANSFERS,
                    7,
                    Bytes::from_static(b"an archived batch"),
                )),
            }],
            leader_commit: None,
        });
        let bytes = encoded_request(&request);
        // Every byte of the record (it starts at 64: the fixed part is padded to 16).
        for i in 64..bytes.len() - 15 {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                LinkRequest::decode(kind::APPEND_ENTRIES, &bad).is_err(),
                "a flip at {i} went unnoticed"
            );
        }
    }

    #[test]
    fn oversized_counts_and_lengths_are_refused_before_allocating() {
        // A batch claiming u32::MAX messages.
        let mut batch = Vec::new();
        batch.extend_from_slice(&1u64.to_le_bytes());
        batch.extend_from_slice(&2u64.to_le_bytes());
        batch.extend_from_slice(&u32::MAX.to_le_bytes());
        batch.extend_from_slice(&[0; 4]);
        assert!(decode_batch(&batch).is_err());
        // One message claiming a 4 GiB body.
        let mut batch = Vec::new();
        batch.extend_from_slice(&1u64.to_le_bytes());
        batch.extend_from_slice(&2u64.to_le_bytes());
        batch.extend_from_slice(&1u32.to_le_bytes());
        batch.extend_from_slice(&[0; 4]);
        batch.extend_from_slice(&0u32.to_le_bytes());
        batch.extend_from_slice(&[kind::VOTE, 0, 0, 0]);
        batch.extend_from_slice(&9u64.to_le_bytes());
        batch.extend_from_slice(&u32::MAX.to_le_bytes());
        batch.extend_from_slice(&[0; 40]);
        assert!(decode_batch(&batch).is_err());
        // An AppendEntries claiming u32::MAX entries.
        let mut append = encoded_request(&LinkRequest::AppendEntries(AppendEntriesRequest {
            vote: Vote::new(1, 1),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        }));
        append[51..55].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(LinkRequest::decode(kind::APPEND_ENTRIES, &append).is_err());
        // A snapshot chunk claiming a 4 GiB piece.
        let mut chunk = encoded_request(&LinkRequest::SnapshotChunk(SnapshotChunk {
            vote: Vote::new(1, 1),
            snapshot_id: "1-5".into(),
            offset: 0,
            data: Bytes::from_static(b"abc"),
        }));
        let at = 17 + 8 + 2 + 3;
        chunk[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(LinkRequest::decode(kind::SNAPSHOT_CHUNK, &chunk).is_err());
    }
}

/// The same link with each node on an executor thread of its own (as a deployment has it:
/// separate reactors, real parallelism), driven from the test thread; the `LinkFilter` is
/// shared across the threads. Replication, a failover and the convergence after healing.
mod separate_executors {
    use super::{on_glommio, raft_config, within, writer_options, Workload, NODES, TOKEN, WAIT};
    use engine::command::NewTransfer;
    use engine::digest::state_digest;
    use engine::raft::{NodeAddr, RaftLogStore, RaftPartition};
    use net::raft_link::{LinkConfig, LinkFilter, RaftLink, RaftRegistry};
    use openraft::{Raft, ServerState};
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    /// What the test thread asks a node.
    enum Command {
        /// Write `batches` transfer batches if leader (accounts first when `accounts`); the
        /// transfers acknowledged, or `None` when not leader.
        Write {
            workload: Box<Workload>,
            accounts: bool,
            batches: usize,
            reply: flume::Sender<(Box<Workload>, Option<Vec<NewTransfer>>)>,
        },
        Status(flume::Sender<Status>),
        Stop(flume::Sender<()>),
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Status {
        leader: bool,
        current_leader: Option<u64>,
        applied: Option<u64>,
        digest: u128,
    }

    fn spawn_node(
        id: u64,
        dir: PathBuf,
        filter: LinkFilter,
        addr_tx: std::sync::mpsc::Sender<(u64, String)>,
        members_rx: flume::Receiver<BTreeMap<u64, NodeAddr>>,
        commands: flume::Receiver<Command>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            on_glommio(move || async move {
                let mut config =
                    LinkConfig::new(id, "127.0.0.1:0".parse().unwrap(), TOKEN.to_vec());
                config.filter = filter;
                let registry = RaftRegistry::new();
                let link = RaftLink::start(config, registry.clone()).unwrap();
                addr_tx.send((id, link.local_addr().to_string())).unwrap();
                let base = dir.join(format!("node{id}"));
                let store = RaftLogStore::open(&base.join("log"), writer_options())
                    .await
                    .unwrap();
                let sm = RaftPartition::open(&base.join("snapshots"), 0, 1).unwrap();
                let state = sm.state();
                let raft = Raft::new(id, raft_config(id, false), link.network(0), store, sm)
                    .await
                    .unwrap();
                registry.register(0, raft.clone());
                let members = members_rx.recv_async().await.unwrap();
                if id == 1 {
                    raft.initialize(members).await.unwrap();
                }
                while let Ok(command) = commands.recv_async().await {
                    match command {
                        Command::Write {
                            mut workload,
                            accounts,
                            batches,
                            reply,
                        } => {
                            let m = raft.metrics().borrow().clone();
                            if m.state != ServerState::Leader || m.current_leader != Some(id) {
                                reply.send((workload, None)).unwrap();
                                continue;
                            }
                            let mut done = Vec::new();
                            if accounts {
                                let batch = workload.accounts();
                                super::write(&raft, &mut workload, batch).await;
                            }
                            for _ in 0..batches {
                                let batch = workload.transfers();
                                done.extend(super::write(&raft, &mut workload, batch).await);
                            }
                            reply.send((workload, Some(done))).unwrap();
                        }
                        Command::Status(reply) => {
                            let m = raft.metrics().borrow().clone();
                            let status = Status {
                                leader: m.state == ServerState::Leader,
                                current_leader: m.current_leader,
                                applied: m.last_applied.map(|l| l.index),
                                digest: state_digest(&state.borrow()),
                            };
                            reply.send(status).unwrap();
                        }
                        Command::Stop(reply) => {
                            within(WAIT, raft.shutdown()).await.unwrap().unwrap();
                            link.shutdown();
                            reply.send(()).unwrap();
                            break;
                        }
                    }
                }
            })
        })
    }

    struct Cluster {
        commands: BTreeMap<u64, flume::Sender<Command>>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Cluster {
        fn status(&self, id: u64) -> Status {
            let (tx, rx) = flume::bounded(1);
            self.commands[&id].send(Command::Status(tx)).unwrap();
            rx.recv_timeout(WAIT).unwrap()
        }

        /// The node all of `among` agree leads.
        fn leader(&self, among: &[u64]) -> u64 {
            let start = Instant::now();
            loop {
                let statuses: Vec<(u64, Status)> =
                    among.iter().map(|id| (*id, self.status(*id))).collect();
                let leaders: Vec<u64> = statuses
                    .iter()
                    .filter(|(_, s)| s.leader)
                    .map(|(id, _)| *id)
                    .collect();
                if let [l] = leaders[..] {
                    if statuses.iter().all(|(_, s)| s.current_leader == Some(l)) {
                        return l;
                    }
                }
                assert!(start.elapsed() < WAIT, "no agreed leader: {statuses:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        fn write(
            &self,
            id: u64,
            workload: Box<Workload>,
            accounts: bool,
            batches: usize,
        ) -> (Box<Workload>, Vec<NewTransfer>) {
            let (tx, rx) = flume::bounded(1);
            let command = Command::Write {
                workload,
                accounts,
                batches,
                reply: tx,
            };
            self.commands[&id].send(command).unwrap();
            let (workload, done) = rx.recv_timeout(WAIT * 2).unwrap();
            (
                workload,
                done.expect("the node was not the leader any more"),
            )
        }

        /// Waits until `ids` applied the same last entry (at least `at_least`); their digests.
        fn converge(&self, ids: &[u64], at_least: u64) -> Vec<u128> {
            let start = Instant::now();
            loop {
                let statuses: Vec<Status> = ids.iter().map(|id| self.status(*id)).collect();
                let first = statuses[0].applied;
                if first >= Some(at_least) && statuses.iter().all(|s| s.applied == first) {
                    return statuses.iter().map(|s| s.digest).collect();
                }
                assert!(start.elapsed() < WAIT, "{statuses:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        fn stop(self) {
            for commands in self.commands.values() {
                let (tx, rx) = flume::bounded(1);
                commands.send(Command::Stop(tx)).unwrap();
                rx.recv_timeout(WAIT).unwrap();
            }
            for thread in self.threads {
                thread.join().unwrap();
            }
        }
    }

    #[test]
    fn nodes_on_their_own_executors_replicate_fail_over_and_converge() {
        let dir = tempfile::tempdir().unwrap();
        let filter = LinkFilter::new();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let mut commands = BTreeMap::new();
        let mut member_txs = Vec::new();
        let mut threads = Vec::new();
        for id in NODES {
            let (members_tx, members_rx) = flume::bounded(1);
            let (command_tx, command_rx) = flume::bounded(16);
            threads.push(spawn_node(
                id,
                dir.path().to_path_buf(),
                filter.clone(),
                addr_tx.clone(),
                members_rx,
                command_rx,
            ));
            commands.insert(id, command_tx);
            member_txs.push(members_tx);
        }
        let members: BTreeMap<u64, NodeAddr> = (0..NODES.len())
            .map(|_| {
                let (id, raft_addr) = addr_rx.recv_timeout(WAIT).unwrap();
                let addr = NodeAddr {
                    raft_addr,
                    client_addr: String::new(),
                };
                (id, addr)
            })
            .collect();
        for tx in member_txs {
            tx.send(members.clone()).unwrap();
        }
        let cluster = Cluster { commands, threads };

        let old = cluster.leader(&NODES);
        let workload = Box::new(Workload::new(0, 1, 1));
        let (workload, mut acknowledged) = cluster.write(old, workload, true, 5);
        let before = cluster.converge(&NODES, 7);
        assert!(before.iter().all(|d| *d == before[0]));

        filter.isolate(old);
        let rest: Vec<u64> = NODES.iter().copied().filter(|id| *id != old).collect();
        let new = cluster.leader(&rest);
        let (workload, done) = cluster.write(new, workload, false, 5);
        acknowledged.extend(done);
        let majority = cluster.converge(&rest, 12);
        assert_eq!(majority[0], majority[1]);
        assert_eq!(
            cluster.status(old).applied,
            Some(7),
            "the isolated node applied"
        );

        filter.heal_all();
        let healed = cluster.leader(&NODES);
        let (_, done) = cluster.write(healed, workload, false, 1);
        acknowledged.extend(done);
        let all = cluster.converge(&NODES, 13);
        assert!(all.iter().all(|d| *d == all[0]), "digests differ: {all:x?}");
        assert!(acknowledged.len() > 100);
        cluster.stop();
    }
}

/// TLS on the node link, with certificates made here by rcgen: a cluster CA that signs a
/// certificate per node for 127.0.0.1 (an IP SAN: the dialer checks the host of the peer's
/// address, which is an IP literal), and an unrelated CA.
mod tls {
    use super::*;
    use net::tls::PeerTls;
    use openraft::error::RPCError;
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use openraft::raft::VoteRequest;
    use openraft::Vote;

    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    fn ca(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("a CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("a CA certificate");
        Ca { cert, key }
    }

    /// Node `id`'s TLS settings: a certificate for 127.0.0.1 that `issuer` signs, trusting
    /// the CA certificate of `trusted`.
    fn node_tls(dir: &Path, id: u64, issuer: &Ca, trusted: &Ca) -> PeerTls {
        let key = rcgen::KeyPair::generate().expect("a node key");
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("node params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("walletd node {id}"));
        let cert = params
            .signed_by(&key, &issuer.cert, &issuer.key)
            .expect("a node certificate");
        let path = |name: &str| dir.join(format!("node{id}-{name}"));
        std::fs::write(path("cert.pem"), cert.pem()).unwrap();
        std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(path("ca.pem"), trusted.cert.pem()).unwrap();
        PeerTls::from_files(&path("cert.pem"), &path("key.pem"), &path("ca.pem")).unwrap()
    }

    /// A vote request of partition 0 from `from` to node `to` at `addr`: its outcome.
    async fn vote(from: &Node, to: u64, addr: std::net::SocketAddr, term: u64) -> String {
        let addr = NodeAddr {
            raft_addr: addr.to_string(),
            client_addr: String::new(),
        };
        let mut network = from.link.network(0).new_client(to, &addr).await;
        let request = VoteRequest::new(Vote::new(term, from.id), None);
        match network
            .vote(request, RPCOption::new(Duration::from_secs(2)))
            .await
        {
            Err(RPCError::Unreachable(u)) => u.to_string(),
            other => panic!("expected unreachable, got {other:?}"),
        }
    }

    #[test]
    fn three_voters_converge_over_mutual_tls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let cluster_ca = ca("walletd cluster CA");
        let tls = NODES.map(|id| Some(node_tls(&path, id, &cluster_ca, &cluster_ca)));
        on_glommio(move || async move {
            let filter = LinkFilter::new();
            let nodes = start_cluster_with_tls(&path, 1, &filter, false, tls).await;
            let l = leader(&nodes, &NODES, 0).await;
            let raft = node(&nodes, l).rafts[0].clone();
            let mut workload = Workload::new(0, 1, 1);
            let accounts = workload.accounts();
            write(&raft, &mut workload, accounts).await;
            let mut acknowledged = Vec::new();
            for _ in 0..5 {
                let batch = workload.transfers();
                acknowledged.extend(write(&raft, &mut workload, batch).await);
            }
            assert!(!acknowledged.is_empty());
            // membership + blank + accounts + 5 transfer batches: raft index 7.
            converge(&nodes, &NODES, 0, 7).await;
            let d = digests(&nodes, &NODES, 0);
            assert!(d.iter().all(|x| *x == d[0]), "digests differ: {d:x?}");
            for n in &nodes {
                assert_has(&n.states[0].borrow(), &acknowledged);
                let stats = n.link.stats();
                assert!(
                    stats.connects <= 2 && stats.connect_failures == 0,
                    "node {}: {stats:?}",
                    n.id
                );
            }
            stop_cluster(nodes).await;
        });
    }

    /// Node 3 trusts the cluster's CA but holds a certificate another CA signed: nodes 1 and
    /// 2 refuse it as a client (mutual TLS) and as a server (its certificate does not chain to
    /// their CA). The group of three goes on with its majority; node 3 applies nothing, and a
    /// vote of node 3 with a term far ahead never reaches the others (a vote that did would
    /// depose their leader).
    #[test]
    fn a_node_whose_certificate_another_ca_signed_cannot_join() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let cluster_ca = ca("walletd cluster CA");
        let rogue_ca = ca("some other CA");
        let tls = [
            Some(node_tls(&path, 1, &cluster_ca, &cluster_ca)),
            Some(node_tls(&path, 2, &cluster_ca, &cluster_ca)),
            Some(node_tls(&path, 3, &rogue_ca, &cluster_ca)),
        ];
        on_glommio(move || async move {
            let filter = LinkFilter::new();
            let nodes = start_cluster_with_tls(&path, 1, &filter, false, tls).await;
            let l = leader(&nodes, &[1, 2], 0).await;
            let raft = node(&nodes, l).rafts[0].clone();
            let mut workload = Workload::new(0, 1, 1);
            let accounts = workload.accounts();
            write(&raft, &mut workload, accounts).await;
            let batch = workload.transfers();
            let acknowledged = write(&raft, &mut workload, batch).await;
            converge(&nodes, &[1, 2], 0, 3).await;
            let term = |id: u64| node(&nodes, id).rafts[0].metrics().borrow().current_term;
            let terms = (term(1), term(2));

            let rogue = node(&nodes, 3);
            for id in [1, 2] {
                let e = vote(rogue, id, node(&nodes, id).link.local_addr(), 1_000).await;
                assert!(e.contains(&format!("node {id}")), "{e}");
                let e = vote(node(&nodes, id), 3, rogue.link.local_addr(), 1_000).await;
                assert!(e.contains("node 3"), "{e}");
            }
            assert!(rogue.link.stats().connect_failures >= 2);
            assert_eq!((term(1), term(2)), terms, "a vote of node 3 got through");
            assert_eq!(leader(&nodes, &[1, 2], 0).await, l);
            assert!(rogue.rafts[0].metrics().borrow().last_applied.is_none());
            assert_ne!(digests(&nodes, &[3], 0), digests(&nodes, &[1], 0));
            for id in [1, 2] {
                assert_has(&node(&nodes, id).states[0].borrow(), &acknowledged);
            }
            stop_cluster(nodes).await;
        });
    }
}

/// 9. An AppendEntries that openraft timed out (0.9 bounds each by the heartbeat interval) and
///    retried: the retry waits for the first copy's reply instead of sending the entries again;
///    a heartbeat passes by meanwhile; a reply that never comes is waited for by at most
///    `APPEND_RETRIES_ON_EARLIER_COPY_MAX` retries, then the entries go out again.
mod retries {
    use super::on_glommio;
    use super::TOKEN;
    use bytes::BytesMut;
    use engine::raft::{NodeAddr, WalletRaft};
    use futures::io::{AsyncReadExt, AsyncWriteExt};
    use net::codec::{self, HandshakeReply};
    use net::frame::{self, flags, FrameHeader, HEADER_BYTES};
    use net::operation::Operation;
    use net::raft_link::limits::APPEND_RETRIES_ON_EARLIER_COPY_MAX;
    use net::raft_link::message::{LinkReply, LinkRequest};
    use net::raft_link::{
        decode_batch, encode_batch, Envelope, LinkConfig, LinkNetwork, RaftLink, RaftRegistry,
    };
    use openraft::error::RPCError;
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    /// Each AppendEntries the fake follower read: its prev index and its entries' indexes.
    type Seen = Rc<RefCell<Vec<(Option<u64>, Vec<u64>)>>>;

    const SHORT: Duration = Duration::from_millis(100);
    const LONG: Duration = Duration::from_secs(5);

    fn log_id(index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// An AppendEntries of leader 1 in term 1 after `prev`, with blank entries `indexes`.
    fn append(
        prev: Option<u64>,
        indexes: impl IntoIterator<Item = u64>,
    ) -> AppendEntriesRequest<WalletRaft> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: prev.map(log_id),
            leader_commit: None,
            entries: indexes
                .into_iter()
                .map(|i| Entry {
                    log_id: log_id(i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
        }
    }

    async fn read_frame(stream: &mut (impl AsyncReadExt + Unpin)) -> (FrameHeader, Vec<u8>) {
        let mut header = [0u8; HEADER_BYTES];
        stream.read_exact(&mut header).await.unwrap();
        let header = FrameHeader::decode(&header).unwrap();
        let mut body = vec![0u8; header.body_len as usize];
        stream.read_exact(&mut body).await.unwrap();
        (header, body)
    }

    /// Node 2, faked: accepts the link's handshake, records every AppendEntries and answers
    /// `Success`, except the first, whose reply it holds back `first_reply_delay` (`None`:
    /// forever).
    async fn fake_follower(
        listener: glommio::net::TcpListener,
        seen: Seen,
        first_reply_delay: Option<Duration>,
    ) {
        let mut stream = listener.accept().await.unwrap();
        let (hello, _) = read_frame(&mut stream).await;
        let mut out = BytesMut::new();
        frame::encode_frame_with(
            &mut out,
            Operation::Handshake as u8,
            flags::REPLY,
            hello.request_id,
            |b| {
                codec::encode_handshake_reply(
                    b,
                    &HandshakeReply {
                        partitions: 0,
                        cluster_id: 0,
                        node_id: 2,
                    },
                )
            },
        );
        stream.write_all(&out).await.unwrap();
        let (mut reader, mut writer) = stream.split();
        let (replies, to_write) = flume::unbounded::<Vec<u8>>();
        glommio::spawn_local(async move {
            while let Ok(frame) = to_write.recv_async().await {
                writer.write_all(&frame).await.unwrap();
            }
        })
        .detach();
        loop {
            let (_, body) = read_frame(&mut reader).await;
            let batch = decode_batch(&body).unwrap();
            for m in batch.messages {
                let LinkRequest::AppendEntries(rpc) = LinkRequest::decode(m.kind, m.body).unwrap()
                else {
                    panic!("only AppendEntries are sent here");
                };
                let first = seen.borrow().is_empty();
                seen.borrow_mut().push((
                    rpc.prev_log_id.map(|l| l.index),
                    rpc.entries.iter().map(|e| e.log_id.index).collect(),
                ));
                let reply = LinkReply::AppendEntries(AppendEntriesResponse::Success);
                let mut reply_body = Vec::new();
                reply.encode(&mut reply_body);
                let envelope = Envelope {
                    partition: m.partition,
                    kind: reply.kind(),
                    msg_id: m.msg_id,
                    body: &reply_body,
                };
                let mut out = BytesMut::new();
                frame::encode_frame_with(
                    &mut out,
                    Operation::RaftBatch as u8,
                    flags::REPLY,
                    1,
                    |b| encode_batch(b, 2, 1, &[envelope]),
                );
                let (frame, replies) = (out.to_vec(), replies.clone());
                match (first, first_reply_delay) {
                    (false, _) => replies.send(frame).unwrap(),
                    (true, None) => {}
                    (true, Some(delay)) => {
                        glommio::spawn_local(async move {
                            glommio::timer::sleep(delay).await;
                            let _ = replies.send(frame);
                        })
                        .detach();
                    }
                }
            }
        }
    }

    /// The sending node 1's link and its network to the fake follower.
    async fn sender(seen: &Seen, first_reply_delay: Option<Duration>) -> (RaftLink, LinkNetwork) {
        let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = NodeAddr {
            raft_addr: listener.local_addr().unwrap().to_string(),
            client_addr: String::new(),
        };
        glommio::spawn_local(fake_follower(listener, seen.clone(), first_reply_delay)).detach();
        let config = LinkConfig::new(1, "127.0.0.1:0".parse().unwrap(), TOKEN.to_vec());
        let link = RaftLink::start(config, RaftRegistry::new()).unwrap();
        let network = link.network(0).new_client(2, &addr).await;
        (link, network)
    }

    #[test]
    fn a_retry_is_answered_by_the_first_copys_reply_and_its_entries_are_not_sent_again() {
        on_glommio(|| async {
            let seen = Seen::default();
            let (link, mut network) = sender(&seen, Some(Duration::from_millis(400))).await;
            let first = network.append_entries(append(Some(0), 1..=3), RPCOption::new(SHORT));
            assert!(matches!(first.await, Err(RPCError::Timeout(_))));
            // A heartbeat is not held up by the unanswered copy.
            let heartbeat = network.append_entries(append(Some(0), []), RPCOption::new(LONG));
            assert_eq!(heartbeat.await.unwrap(), AppendEntriesResponse::Success);
            // The retry reaches further than the first copy: it is told how far that one got.
            let retry = network.append_entries(append(Some(0), 1..=5), RPCOption::new(LONG));
            assert_eq!(
                retry.await.unwrap(),
                AppendEntriesResponse::PartialSuccess(Some(log_id(3)))
            );
            let rest = network.append_entries(append(Some(3), 4..=5), RPCOption::new(LONG));
            assert_eq!(rest.await.unwrap(), AppendEntriesResponse::Success);
            assert_eq!(
                *seen.borrow(),
                vec![
                    (Some(0), vec![1, 2, 3]),
                    (Some(0), vec![]),
                    (Some(3), vec![4, 5])
                ],
                "every entry sent once"
            );
            let stats = link.stats();
            assert_eq!(
                (
                    stats.appends_retried_unanswered,
                    stats.appends_answered_by_earlier
                ),
                (1, 1)
            );
            link.shutdown();
        });
    }

    #[test]
    fn a_reply_that_never_comes_is_waited_for_only_so_many_retries() {
        on_glommio(|| async {
            let seen = Seen::default();
            let (link, mut network) = sender(&seen, None).await;
            for _ in 0..=APPEND_RETRIES_ON_EARLIER_COPY_MAX {
                let call = network.append_entries(append(Some(0), 1..=3), RPCOption::new(SHORT));
                assert!(matches!(call.await, Err(RPCError::Timeout(_))));
            }
            assert_eq!(seen.borrow().len(), 1, "the retries waited, none was sent");
            let last = network.append_entries(append(Some(0), 1..=3), RPCOption::new(LONG));
            assert_eq!(last.await.unwrap(), AppendEntriesResponse::Success);
            assert_eq!(
                *seen.borrow(),
                vec![(Some(0), vec![1, 2, 3]), (Some(0), vec![1, 2, 3])]
            );
            let stats = link.stats();
            let retries = u64::from(APPEND_RETRIES_ON_EARLIER_COPY_MAX) + 1;
            assert_eq!(
                (
                    stats.appends_retried_unanswered,
                    stats.appends_answered_by_earlier
                ),
                (retries, 0)
            );
            link.shutdown();
        });
    }
}
