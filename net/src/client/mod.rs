//! The Rust client library.
//!
//! One `Client` holds a small pool of pipelined connections. Every call has an async form
//! (`*_async`, usable from any runtime: tokio, glommio, or `futures::executor`) and a blocking
//! form for plain threads. Calls time out (`timeout_ms`) and are retried after a disconnect or
//! timeout (on a fresh connection when the old one died, or heard nothing while the request
//! waited): this is safe because accounts and transfers carry client-chosen ids, so a repeat
//! answers `exists` instead of applying twice.
//!
//! ```no_run
//! use net::{Client, ClientConfig};
//! use engine::{NewTransfer, model::Currency};
//!
//! let client = Client::connect(ClientConfig::new("127.0.0.1:7400")).unwrap();
//! let eur = Currency::parse("EUR").unwrap();
//! let results = client
//!     .create_transfers(&[NewTransfer { id: 7, from: 1, to: 2, amount: 500, currency: eur, user_data: 0 }])
//!     .unwrap();
//! println!("{}", results[0]); // "ok", "exists", "insufficient_funds", ...
//! ```
//!
//! Single transfers from many threads are coalesced into batches by `Client::batcher`.

mod any;
mod batcher;
mod cluster;
mod connection;
mod routing;
mod subscription;
mod transport;

pub use any::AnyClient;
pub use batcher::Batcher;
pub use cluster::ClusterClient;
use connection::{Connection, Reply};
pub use subscription::{Subscription, SubscriptionError};

use crate::codec::{self, PartitionDigest, PartitionStatus, ReadModelStatus};
use crate::operation::{Operation, ProtocolError};
use crate::partition_map::{decode_partition_map, PartitionMap};
use crate::tls::ClientTls;
use bytes::BytesMut;
use engine::model::{Account, TransferLookup};
use engine::read_model::{At, BalanceAsOf, HistoryPage, HistoryQuery, QueryError};
use engine::{NewAccount, NewTransfer, ResultCode, BATCH_ITEMS_MAX};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub addr: String,
    pub token: Option<Vec<u8>>,
    pub cluster_id: u64,
    /// Connections in the pool (calls are spread round-robin).
    pub connections: usize,
    pub timeout_ms: u64,
    /// Extra attempts after a disconnect or timeout.
    pub retries: u32,
    /// Speak TLS to the server (`ClientTls::from_ca_file`); `None`: plain TCP.
    pub tls: Option<ClientTls>,
}

impl ClientConfig {
    pub fn new(addr: impl Into<String>) -> ClientConfig {
        ClientConfig {
            addr: addr.into(),
            token: None,
            cluster_id: 0,
            connections: 1,
            timeout_ms: 10_000,
            retries: 3,
            tls: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// TLS could not be agreed (untrusted or wrong certificate, TLS on one side only): not
    /// retried.
    #[error("TLS with {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("connection lost: {0}")]
    Disconnected(String),
    #[error("no reply within {0} ms")]
    Timeout(u64),
    #[error("server refused the request: {error} ({message})")]
    Refused {
        error: ProtocolError,
        message: String,
    },
    #[error("server sent a malformed reply")]
    BadReply,
    #[error("a batch holds at most {BATCH_ITEMS_MAX} items, not {0}")]
    TooManyItems(usize),
}

impl ClientError {
    /// A short snake_case name of the kind of error, for counting errors by kind (reports,
    /// metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Connect { .. } => "connect",
            ClientError::Tls { .. } => "tls",
            ClientError::Disconnected(_) => "disconnected",
            ClientError::Timeout(_) => "timeout",
            ClientError::Refused { .. } => "refused",
            ClientError::BadReply => "bad_reply",
            ClientError::TooManyItems(_) => "too_many_items",
        }
    }

    /// Worth retrying on a fresh connection (the request may or may not have been applied;
    /// ids make the retry safe).
    fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Disconnected(_) | ClientError::Timeout(_) | ClientError::Connect { .. }
        )
    }
}

pub struct Client {
    config: ClientConfig,
    pool: Mutex<Vec<Option<Arc<Connection>>>>,
    next: AtomicUsize,
    partitions: u32,
    node_id: u64,
}

/// Node status as reported by `Client::status`.
#[derive(Clone, Debug)]
pub struct Status {
    pub cores: u32,
    pub partitions: Vec<PartitionStatus>,
}

/// The node's state digest, as reported by `Client::state_digest`.
#[derive(Clone, Debug)]
pub struct StateDigest {
    /// Every partition's digest combined in partition order: the value `wallet audit replay`
    /// prints for the same log (`engine::digest::combine_digests`).
    pub digest: u128,
    pub partitions: Vec<PartitionDigest>,
}

impl Client {
    /// Connects the first pooled connection (handshake included); others connect on demand.
    /// Transient connect failures (refused, reset: e.g. a server restarting) are retried
    /// `retries` times with a growing pause.
    pub fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let size = config.connections.max(1);
        let mut attempt = 0;
        let first = loop {
            match Connection::open(&config) {
                Ok(c) => break c,
                Err(e) if e.is_transient() && attempt < config.retries => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50 * attempt as u64));
                }
                Err(e) => return Err(e),
            }
        };
        let partitions = first.partitions();
        let node_id = first.node_id();
        let mut pool = vec![None; size];
        pool[0] = Some(Arc::new(first));
        Ok(Client {
            config,
            pool: Mutex::new(pool),
            next: AtomicUsize::new(0),
            partitions,
            node_id,
        })
    }

    /// Partition count of the node (from the handshake).
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Id of the node (from the first connection's handshake): two addresses of one node
    /// answer with the same id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The connection of the next slot, opened afresh when it died. The pool is not locked
    /// while a connection opens (a round trip, or up to `timeout_ms` for a node that does not
    /// answer): callers whose slots are healthy go on meanwhile.
    fn connection(&self) -> Result<Arc<Connection>, ClientError> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.config.connections.max(1);
        let lock = || {
            self.pool
                .lock()
                .map_err(|_| ClientError::Disconnected("pool poisoned".into()))
        };
        if let Some(c) = &lock()?[slot] {
            if c.is_alive() {
                return Ok(c.clone());
            }
        }
        let fresh = Arc::new(Connection::open(&self.config)?);
        let mut pool = lock()?;
        match &pool[slot] {
            // Another caller replaced it first: use theirs, drop ours.
            Some(c) if c.is_alive() => Ok(c.clone()),
            _ => {
                pool[slot] = Some(fresh.clone());
                Ok(fresh)
            }
        }
    }

    /// Sends one request and waits for its reply body, retrying transient failures.
    async fn call(&self, operation: Operation, body: &[u8]) -> Result<Reply, ClientError> {
        self.call_flagged(operation, 0, body).await
    }

    /// `call` with request `flags`.
    async fn call_flagged(
        &self,
        operation: Operation,
        flags: u16,
        body: &[u8],
    ) -> Result<Reply, ClientError> {
        self.call_retrying(operation, flags, body, self.config.retries)
            .await
    }

    /// Sends one request, retrying transient failures up to `retries` times.
    async fn call_retrying(
        &self,
        operation: Operation,
        flags: u16,
        body: &[u8],
        retries: u32,
    ) -> Result<Reply, ClientError> {
        let mut attempt = 0;
        loop {
            let result = match self.connection() {
                Ok(conn) => match conn.send_flagged(operation, flags, body).await {
                    Ok(pending) => pending.await.unwrap_or_else(|_| {
                        Err(ClientError::Disconnected("reader stopped".into()))
                    }),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_transient() && attempt < retries => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "retrying on a fresh connection");
                    std::thread::sleep(std::time::Duration::from_millis(20 * attempt as u64));
                }
                other => return other,
            }
        }
    }

    pub async fn create_accounts_async(
        &self,
        items: &[NewAccount],
    ) -> Result<Vec<ResultCode>, ClientError> {
        check_len(items.len())?;
        let mut body = BytesMut::with_capacity(8 + items.len() * codec::NEW_ACCOUNT_BYTES);
        codec::encode_new_accounts(&mut body, items);
        let reply = self.call(Operation::CreateAccounts, &body).await?;
        decode_counted(codec::decode_results(&reply.body), items.len())
    }

    pub async fn create_transfers_async(
        &self,
        items: &[NewTransfer],
    ) -> Result<Vec<ResultCode>, ClientError> {
        check_len(items.len())?;
        let mut body = BytesMut::with_capacity(8 + items.len() * codec::NEW_TRANSFER_BYTES);
        codec::encode_new_transfers(&mut body, items);
        let reply = self.call(Operation::CreateTransfers, &body).await?;
        decode_counted(codec::decode_results(&reply.body), items.len())
    }

    pub async fn lookup_accounts_async(
        &self,
        ids: &[u128],
    ) -> Result<Vec<Option<Account>>, ClientError> {
        self.lookup_accounts_flagged(ids, 0).await
    }

    pub async fn lookup_transfers_async(
        &self,
        ids: &[u128],
    ) -> Result<Vec<Option<TransferLookup>>, ClientError> {
        self.lookup_transfers_flagged(ids, 0).await
    }

    /// A follower read (`frame::flags::FOLLOWER_READ`): accounts as this node has applied
    /// them, even if it does not lead their partitions. It may lag the leader; the default
    /// lookups read the leader's confirmed state.
    pub async fn lookup_accounts_follower_async(
        &self,
        ids: &[u128],
    ) -> Result<Vec<Option<Account>>, ClientError> {
        self.lookup_accounts_flagged(ids, crate::frame::flags::FOLLOWER_READ)
            .await
    }

    /// A follower read of transfers (see `lookup_accounts_follower_async`).
    pub async fn lookup_transfers_follower_async(
        &self,
        ids: &[u128],
    ) -> Result<Vec<Option<TransferLookup>>, ClientError> {
        self.lookup_transfers_flagged(ids, crate::frame::flags::FOLLOWER_READ)
            .await
    }

    async fn lookup_accounts_flagged(
        &self,
        ids: &[u128],
        flags: u16,
    ) -> Result<Vec<Option<Account>>, ClientError> {
        check_len(ids.len())?;
        let mut body = BytesMut::new();
        codec::encode_ids(&mut body, ids);
        let reply = self
            .call_flagged(Operation::LookupAccounts, flags, &body)
            .await?;
        decode_counted(codec::decode_account_replies(&reply.body), ids.len())
    }

    async fn lookup_transfers_flagged(
        &self,
        ids: &[u128],
        flags: u16,
    ) -> Result<Vec<Option<TransferLookup>>, ClientError> {
        check_len(ids.len())?;
        let mut body = BytesMut::new();
        codec::encode_ids(&mut body, ids);
        let reply = self
            .call_flagged(Operation::LookupTransfers, flags, &body)
            .await?;
        decode_counted(codec::decode_transfer_replies(&reply.body), ids.len())
    }

    pub fn lookup_accounts_follower(
        &self,
        ids: &[u128],
    ) -> Result<Vec<Option<Account>>, ClientError> {
        futures::executor::block_on(self.lookup_accounts_follower_async(ids))
    }

    pub fn lookup_transfers_follower(
        &self,
        ids: &[u128],
    ) -> Result<Vec<Option<TransferLookup>>, ClientError> {
        futures::executor::block_on(self.lookup_transfers_follower_async(ids))
    }

    pub async fn status_async(&self) -> Result<Status, ClientError> {
        let reply = self.call(Operation::Status, &[]).await?;
        let (cores, partitions) =
            codec::decode_status(&reply.body).map_err(|_| ClientError::BadReply)?;
        Ok(Status { cores, partitions })
    }

    /// The state digest of every partition and their combination. Each partition hashes its
    /// whole state for this (a pause of that partition proportional to its size): an
    /// operator's and auditor's command, not for monitoring loops.
    pub async fn state_digest_async(&self) -> Result<StateDigest, ClientError> {
        let reply = self.call(Operation::StateDigest, &[]).await?;
        let mut partitions =
            codec::decode_state_digests(&reply.body).map_err(|_| ClientError::BadReply)?;
        partitions.sort_by_key(|p| p.partition);
        let digests: Vec<u128> = partitions.iter().map(|p| p.digest).collect();
        Ok(StateDigest {
            digest: engine::digest::combine_digests(&digests),
            partitions,
        })
    }

    /// A page of an account's history from the read model (newest first). The inner error
    /// is the read model's answer (e.g. the range is older than the retained history).
    pub async fn history_async(
        &self,
        query: &HistoryQuery,
    ) -> Result<Result<HistoryPage, QueryError>, ClientError> {
        let mut body = BytesMut::with_capacity(codec::HISTORY_QUERY_BYTES);
        codec::encode_history_query(&mut body, query);
        let reply = self.call(Operation::GetAccountHistory, &body).await?;
        codec::decode_history_reply(&reply.body, query.account).map_err(|_| ClientError::BadReply)
    }

    /// An account's balance as of a timestamp or a position, from the read model.
    pub async fn balance_at_async(
        &self,
        account: u128,
        at: At,
    ) -> Result<Result<BalanceAsOf, QueryError>, ClientError> {
        let mut body = BytesMut::with_capacity(codec::BALANCE_AT_QUERY_BYTES);
        codec::encode_balance_at_query(&mut body, account, at);
        let reply = self.call(Operation::GetBalanceAt, &body).await?;
        codec::decode_balance_at_reply(&reply.body).map_err(|_| ClientError::BadReply)
    }

    /// Money per currency in every partition of the node, from the read models.
    pub async fn totals_async(&self) -> Result<Vec<crate::totals::PartitionTotals>, ClientError> {
        let reply = self.call(Operation::GetTotals, &[]).await?;
        crate::totals::decode_totals_reply(&reply.body).map_err(|_| ClientError::BadReply)
    }

    /// Position and lag of every partition's read model.
    pub async fn read_model_status_async(&self) -> Result<Vec<ReadModelStatus>, ClientError> {
        let reply = self.call(Operation::ReadModelStatus, &[]).await?;
        codec::decode_read_model_status(&reply.body).map_err(|_| ClientError::BadReply)
    }

    /// Which node leads each partition, as this node knows it (`partition_map.rs`).
    pub async fn partition_map_async(&self) -> Result<PartitionMap, ClientError> {
        let reply = self.call(Operation::PartitionMap, &[]).await?;
        decode_partition_map(&reply.body).map_err(|_| ClientError::BadReply)
    }

    /// Every partition's Raft group as this node sees it (`raft_status.rs`): on the leader of
    /// a partition, its commit index and every member's matched index. Asks again from where
    /// an answer stopped until it has every partition (an answer holds what fits a frame).
    pub async fn raft_status_async(
        &self,
    ) -> Result<crate::raft_status::RaftStatusReply, ClientError> {
        use crate::raft_status::{decode_reply, encode_request, REQUEST_BYTES};
        let mut all: Option<crate::raft_status::RaftStatusReply> = None;
        loop {
            let first = all
                .as_ref()
                .and_then(|a| a.partitions.last())
                .map_or(0, |p| p.partition + 1);
            let mut body = BytesMut::with_capacity(REQUEST_BYTES);
            encode_request(&mut body, first);
            let reply = self.call(Operation::RaftStatus, &body).await?;
            let page = decode_reply(&reply.body).map_err(|_| ClientError::BadReply)?;
            // Each page must start at `first` or later and carry something, or the loop
            // would never end.
            if page.partitions.first().is_some_and(|p| p.partition < first) {
                return Err(ClientError::BadReply);
            }
            let done = page
                .partitions
                .last()
                .is_none_or(|p| p.partition + 1 >= page.partition_total);
            match &mut all {
                None => all = Some(page),
                Some(a) => {
                    if a.partition_total != page.partition_total || a.node_id != page.node_id {
                        return Err(ClientError::BadReply);
                    }
                    a.partitions.extend(page.partitions);
                }
            }
            if done {
                return all.ok_or(ClientError::BadReply);
            }
        }
    }

    pub async fn ping_async(&self) -> Result<(), ClientError> {
        self.call(Operation::Ping, &[]).await.map(|_| ())
    }

    pub fn create_accounts(&self, items: &[NewAccount]) -> Result<Vec<ResultCode>, ClientError> {
        futures::executor::block_on(self.create_accounts_async(items))
    }
    pub fn create_transfers(&self, items: &[NewTransfer]) -> Result<Vec<ResultCode>, ClientError> {
        futures::executor::block_on(self.create_transfers_async(items))
    }
    pub fn lookup_accounts(&self, ids: &[u128]) -> Result<Vec<Option<Account>>, ClientError> {
        futures::executor::block_on(self.lookup_accounts_async(ids))
    }
    pub fn lookup_transfers(
        &self,
        ids: &[u128],
    ) -> Result<Vec<Option<TransferLookup>>, ClientError> {
        futures::executor::block_on(self.lookup_transfers_async(ids))
    }
    pub fn status(&self) -> Result<Status, ClientError> {
        futures::executor::block_on(self.status_async())
    }

    pub fn state_digest(&self) -> Result<StateDigest, ClientError> {
        futures::executor::block_on(self.state_digest_async())
    }
    pub fn history(
        &self,
        query: &HistoryQuery,
    ) -> Result<Result<HistoryPage, QueryError>, ClientError> {
        futures::executor::block_on(self.history_async(query))
    }
    pub fn balance_at(
        &self,
        account: u128,
        at: At,
    ) -> Result<Result<BalanceAsOf, QueryError>, ClientError> {
        futures::executor::block_on(self.balance_at_async(account, at))
    }
    pub fn totals(&self) -> Result<Vec<crate::totals::PartitionTotals>, ClientError> {
        futures::executor::block_on(self.totals_async())
    }
    pub fn read_model_status(&self) -> Result<Vec<ReadModelStatus>, ClientError> {
        futures::executor::block_on(self.read_model_status_async())
    }
    pub fn partition_map(&self) -> Result<PartitionMap, ClientError> {
        futures::executor::block_on(self.partition_map_async())
    }
    /// Sends a cluster change (`cluster_admin.rs`) and returns each partition's outcome.
    pub fn cluster_change(
        &self,
        change: &crate::cluster_admin::ClusterChange,
    ) -> Result<Vec<crate::cluster_admin::PartitionOutcome>, ClientError> {
        let mut body = BytesMut::new();
        crate::cluster_admin::encode_change(&mut body, change);
        // A membership change is never resent by the client: it may outlast the timeout while
        // it goes on (a learner catching up), and a second copy would race it; the caller
        // decides (`wallet cluster` asks each leader again until every partition answered).
        // The other actions are harmless to repeat (`init` of an initialized partition
        // answers `failed`).
        use crate::cluster_admin::Action;
        let retries = match change.action {
            Action::AddNode | Action::RemoveNode => 0,
            _ => self.config.retries,
        };
        let reply = futures::executor::block_on(self.call_retrying(
            Operation::ClusterChange,
            0,
            &body,
            retries,
        ))?;
        crate::cluster_admin::decode_outcomes(&reply.body).map_err(|_| ClientError::BadReply)
    }

    pub fn raft_status(&self) -> Result<crate::raft_status::RaftStatusReply, ClientError> {
        futures::executor::block_on(self.raft_status_async())
    }

    /// Makes this node campaign for leadership of `partitions` (`cluster_admin::Action::Elect`)
    /// and returns each partition's outcome (`Ok`: the campaign started, or it leads already).
    pub fn elect(
        &self,
        partitions: &[u32],
    ) -> Result<Vec<crate::cluster_admin::PartitionOutcome>, ClientError> {
        let mut body = BytesMut::new();
        crate::cluster_admin::encode_elect(&mut body, partitions);
        let reply = futures::executor::block_on(self.call(Operation::ClusterChange, &body))?;
        crate::cluster_admin::decode_outcomes(&reply.body).map_err(|_| ClientError::BadReply)
    }

    pub fn ping(&self) -> Result<(), ClientError> {
        futures::executor::block_on(self.ping_async())
    }

    /// A batcher that coalesces single transfers from many threads into batches.
    pub fn batcher(self: &Arc<Self>) -> Batcher {
        Batcher::start(self.clone())
    }
}

fn check_len(n: usize) -> Result<(), ClientError> {
    if n > BATCH_ITEMS_MAX {
        return Err(ClientError::TooManyItems(n));
    }
    Ok(())
}

fn decode_counted<T>(
    decoded: Result<Vec<T>, ProtocolError>,
    expected: usize,
) -> Result<Vec<T>, ClientError> {
    match decoded {
        Ok(items) if items.len() == expected => Ok(items),
        _ => Err(ClientError::BadReply),
    }
}
