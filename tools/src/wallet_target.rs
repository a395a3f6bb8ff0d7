//! Where `wallet`'s account and transfer commands go.
//!
//! A lone node answers everything itself. In a Raft cluster, writes and linearizable lookups
//! are answered only by each partition's leader (a follower answers `not_leader`), so the CLI
//! asks the node it was given for the partition map once and, when the map lists more than one
//! node, sends each command to its partition's leader through `ClusterClient` (which follows
//! leader changes and retries `not_leader` safely: a transfer id applies at most once). The
//! read-model commands (`history`, `balance --at`, `totals`, `watch`) stay on the node given:
//! every node keeps those views.

use engine::model::{Account, TransferLookup};
use engine::{NewAccount, NewTransfer, ResultCode};
use net::{Client, ClientConfig, ClientError, ClusterClient};

pub enum Target {
    /// The node given leads every partition (no replication, or a cluster of one).
    Node(Client),
    /// One node of a cluster: commands go to the leaders.
    Cluster(ClusterClient),
}

impl Target {
    /// The target for `client` (connected to `config.addr`): the node itself, or its cluster
    /// when its partition map lists other nodes.
    pub fn of(client: Client, config: &ClientConfig) -> Result<Target, ClientError> {
        let map = client.partition_map()?;
        if map.nodes.len() <= 1 {
            return Ok(Target::Node(client));
        }
        let seeds = [config.addr.clone()];
        Ok(Target::Cluster(ClusterClient::connect(
            config.clone(),
            &seeds,
        )?))
    }

    pub fn create_accounts(&self, items: &[NewAccount]) -> Result<Vec<ResultCode>, ClientError> {
        match self {
            Target::Node(client) => client.create_accounts(items),
            Target::Cluster(cluster) => cluster.create_accounts(items),
        }
    }

    pub fn create_transfers(&self, items: &[NewTransfer]) -> Result<Vec<ResultCode>, ClientError> {
        match self {
            Target::Node(client) => client.create_transfers(items),
            Target::Cluster(cluster) => cluster.create_transfers(items),
        }
    }

    /// Accounts as their partitions' leaders have them (linearizable).
    pub fn lookup_accounts(&self, ids: &[u128]) -> Result<Vec<Option<Account>>, ClientError> {
        match self {
            Target::Node(client) => client.lookup_accounts(ids),
            Target::Cluster(cluster) => {
                futures::executor::block_on(cluster.lookup_accounts_async(ids))
            }
        }
    }

    /// Transfers by id. In a cluster every node is asked (the id does not tell the partition,
    /// and each partition's leader has all its committed transfers), see
    /// `ClusterClient::lookup_transfers_anywhere_async`.
    pub fn lookup_transfers(
        &self,
        ids: &[u128],
    ) -> Result<Vec<Option<TransferLookup>>, ClientError> {
        match self {
            Target::Node(client) => client.lookup_transfers(ids),
            Target::Cluster(cluster) => {
                futures::executor::block_on(cluster.lookup_transfers_anywhere_async(ids))
            }
        }
    }
}
