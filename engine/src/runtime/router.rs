//! Batches that span partitions: split by owning partition, submitted concurrently, answers
//! put back in the caller's order. A transfer is owned by its source (`from`) account's
//! partition; an account creation by the account's.

use super::node::{Node, SubmitError};
use crate::command::{CommandBatch, NewAccount, NewTransfer};
use crate::partition::PartitionId;
use crate::result_code::ResultCode;

impl Node {
    /// Creates accounts on their owning partitions; one result per item, in order.
    pub async fn create_accounts(
        &self,
        accounts: &[NewAccount],
    ) -> Result<Vec<ResultCode>, SubmitError> {
        let groups = self.split(accounts, |a| a.id);
        let batches = groups.into_iter().map(|(p, positions)| {
            (
                p,
                CommandBatch::CreateAccounts(positions.iter().map(|&i| accounts[i]).collect()),
                positions,
            )
        });
        self.submit_split(accounts.len(), batches).await
    }

    /// Creates transfers on their source partitions; one result per item, in order.
    pub async fn create_transfers(
        &self,
        transfers: &[NewTransfer],
    ) -> Result<Vec<ResultCode>, SubmitError> {
        let groups = self.split(transfers, |t| t.from);
        let batches = groups.into_iter().map(|(p, positions)| {
            (
                p,
                CommandBatch::CreateTransfers(positions.iter().map(|&i| transfers[i]).collect()),
                positions,
            )
        });
        self.submit_split(transfers.len(), batches).await
    }

    /// Item positions per partition, partitions in ascending order.
    fn split<T>(&self, items: &[T], key: impl Fn(&T) -> u128) -> Vec<(PartitionId, Vec<usize>)> {
        let mut by_partition: Vec<Vec<usize>> = vec![Vec::new(); self.partition_count() as usize];
        for (i, item) in items.iter().enumerate() {
            by_partition[self.partition_of(key(item)) as usize].push(i);
        }
        by_partition
            .into_iter()
            .enumerate()
            .filter(|(_, positions)| !positions.is_empty())
            .map(|(p, positions)| (p as PartitionId, positions))
            .collect()
    }

    async fn submit_split(
        &self,
        items: usize,
        batches: impl Iterator<Item = (PartitionId, CommandBatch, Vec<usize>)>,
    ) -> Result<Vec<ResultCode>, SubmitError> {
        let mut positions = Vec::new();
        let mut pending = Vec::new();
        for (partition, batch, at) in batches {
            positions.push(at);
            pending.push(self.submit(partition, batch));
        }
        let replies = futures::future::join_all(pending).await;
        let mut results = vec![ResultCode::ShuttingDown; items];
        for (reply, at) in replies.into_iter().zip(positions) {
            let reply = reply?;
            for (code, i) in reply.results.into_iter().zip(at) {
                results[i] = code;
            }
        }
        Ok(results)
    }
}
