//! `AnyClient`: a client of whatever an address turns out to be.
//!
//! A lone node answers everything itself. A node of a Raft cluster answers writes and
//! linearizable lookups only for the partitions it leads (`not_leader` for the others), so a
//! program given one address (`wallet`, `wallet-bench`) asks that node for its partition map
//! once and, when the map lists other nodes, talks to the cluster through `ClusterClient`
//! (each command to its partition's leader, leader changes followed, `not_leader` retried
//! safely: a transfer id applies at most once). The same calls either way.

use super::{Client, ClientConfig, ClientError, ClusterClient};
use engine::model::{Account, TransferLookup};
use engine::{NewAccount, NewTransfer, ResultCode};

pub enum AnyClient {
    /// The node leads every partition (no replication, or a cluster of one).
    Node(Client),
    /// A node of a cluster: commands go to the leaders.
    Cluster(ClusterClient),
}

impl AnyClient {
    /// Connects to `config.addr`, and to its cluster instead when that node's partition map
    /// lists other nodes (seeded with `config.addr`; every connection with `config`'s
    /// settings).
    pub fn connect(config: ClientConfig) -> Result<AnyClient, ClientError> {
        let node = Client::connect(config.clone())?;
        if node.partition_map()?.nodes.len() <= 1 {
            return Ok(AnyClient::Node(node));
        }
        drop(node);
        let seeds = std::slice::from_ref(&config.addr);
        Ok(AnyClient::Cluster(ClusterClient::connect(
            config.clone(),
            seeds,
        )?))
    }

    /// Nodes behind this client (1 for a lone node).
    pub fn node_count(&self) -> usize {
        match self {
            AnyClient::Node(_) => 1,
            AnyClient::Cluster(c) => c.map().nodes.len(),
        }
    }

    pub fn partitions(&self) -> u32 {
        match self {
            AnyClient::Node(c) => c.partitions(),
            AnyClient::Cluster(c) => c.map().partition_count(),
        }
    }

    pub async fn create_accounts_async(
        &self,
        items: &[NewAccount],
    ) -> Result<Vec<ResultCode>, ClientError> {
        match self {
            AnyClient::Node(c) => c.create_accounts_async(items).await,
            AnyClient::Cluster(c) => c.create_accounts_async(items).await,
        }
    }

    pub async fn create_transfers_async(
        &self,
        items: &[NewTransfer],
    ) -> Result<Vec<ResultCode>, ClientError> {
        match self {
            AnyClient::Node(c) => c.create_transfers_async(items).await,
            AnyClient::Cluster(c) => c.create_transfers_async(items).await,
        }
    }

    /// Accounts as their partitions' leaders have them (linearizable).
    pub async fn lookup_accounts_async(
        &self,
        ids: &[u128],
    ) -> Result<Vec<Option<Account>>, ClientError> {
        match self {
            AnyClient::Node(c) => c.lookup_accounts_async(ids).await,
            AnyClient::Cluster(c) => c.lookup_accounts_async(ids).await,
        }
    }

    /// Transfers by id. In a cluster every node is asked (the id does not tell the
    /// partition; see `ClusterClient::lookup_transfers_anywhere_async`).
    pub async fn lookup_transfers_async(
        &self,
        ids: &[u128],
    ) -> Result<Vec<Option<TransferLookup>>, ClientError> {
        match self {
            AnyClient::Node(c) => c.lookup_transfers_async(ids).await,
            AnyClient::Cluster(c) => c.lookup_transfers_anywhere_async(ids).await,
        }
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
}
