//! What the bench sends to: one node (`Client`: it splits batches by partition itself), or a
//! cluster (`ClusterClient`: each command to its partition's leader, lookups from leaders and
//! follower reads). The same calls either way, so the load, setup and check code is shared.

use engine::model::{Account, TransferLookup};
use engine::{NewAccount, NewTransfer, ResultCode};
use net::{Client, ClientError, ClusterClient};

pub enum Target {
    Node(Client),
    Cluster(ClusterClient),
}

impl Target {
    pub fn partitions(&self) -> u32 {
        match self {
            Target::Node(c) => c.partitions(),
            Target::Cluster(c) => c.map().partition_count(),
        }
    }

    pub async fn create_accounts_async(
        &self,
        items: &[NewAccount],
    ) -> Result<Vec<ResultCode>, ClientError> {
        match self {
            Target::Node(c) => c.create_accounts_async(items).await,
            Target::Cluster(c) => c.create_accounts_async(items).await,
        }
    }

    pub async fn create_transfers_async(
        &self,
        items: &[NewTransfer],
    ) -> Result<Vec<ResultCode>, ClientError> {
        match self {
            Target::Node(c) => c.create_transfers_async(items).await,
            Target::Cluster(c) => c.create_transfers_async(items).await,
        }
    }

    pub async fn lookup_accounts_async(
        &self,
        ids: &[u128],
    ) -> Result<Vec<Option<Account>>, ClientError> {
        match self {
            Target::Node(c) => c.lookup_accounts_async(ids).await,
            Target::Cluster(c) => c.lookup_accounts_async(ids).await,
        }
    }

    pub async fn lookup_transfers_async(
        &self,
        ids: &[u128],
    ) -> Result<Vec<Option<TransferLookup>>, ClientError> {
        match self {
            Target::Node(c) => c.lookup_transfers_async(ids).await,
            Target::Cluster(c) => c.lookup_transfers_anywhere_async(ids).await,
        }
    }
}
