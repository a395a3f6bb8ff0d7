//! `ClusterClient`: a client of a whole cluster. It keeps the partition map (which node leads
//! each partition, `partition_map.rs`) and one `Client` per node, sends every command straight
//! to the leader of its partition, and follows leader changes (`routing.rs`).
//!
//! Against a single node (or any node that leads every partition) a batch goes there whole,
//! exactly as with `Client`.
//!
//! ```no_run
//! use net::{ClientConfig, ClusterClient};
//!
//! let seeds = vec!["10.0.0.1:7400".to_string(), "10.0.0.2:7400".to_string()];
//! let cluster = ClusterClient::connect(ClientConfig::new(""), &seeds).unwrap();
//! println!("{} partitions", cluster.map().partition_count());
//! ```

use super::routing::{leader_may_have_moved, route, Nodes, ROUTE_ROUNDS_MAX};
use super::{check_len, Client, ClientConfig, ClientError};
use crate::partition_map::PartitionMap;
use engine::partition::PartitionId;
use engine::{NewAccount, NewTransfer, ResultCode};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Pause before the refresh of routing round `n` is `n` times this (capped), so a cluster in an
/// election is asked again after it has had time to elect.
const REFRESH_BACKOFF_MS: u64 = 25;
const REFRESH_BACKOFF_MAX_MS: u64 = 200;

pub struct ClusterClient {
    /// Settings for every node's `Client` (token, TLS, timeouts); `addr` is set per node.
    template: ClientConfig,
    /// Where to ask for a map when no node of the current one answers.
    seeds: Vec<String>,
    routes: Mutex<Routes>,
}

struct Routes {
    map: Arc<PartitionMap>,
    /// One client (with its own connection pool) per node id, connected on first use.
    clients: HashMap<u64, Arc<Client>>,
}

impl ClusterClient {
    /// Fetches the partition map from the first seed that answers. `template` carries the
    /// settings of every connection; its `addr` is ignored.
    pub fn connect(template: ClientConfig, seeds: &[String]) -> Result<ClusterClient, ClientError> {
        let mut last = ClientError::Connect {
            addr: String::new(),
            reason: "no seed address given".into(),
        };
        for seed in seeds {
            match futures::executor::block_on(fetch_map(&template, seed)) {
                Ok((client, map)) => {
                    let mut clients = HashMap::new();
                    if let Some(node) = map.nodes.iter().find(|n| n.client_addr == *seed) {
                        clients.insert(node.node_id, client);
                    }
                    return Ok(ClusterClient {
                        template,
                        seeds: seeds.to_vec(),
                        routes: Mutex::new(Routes {
                            map: Arc::new(map),
                            clients,
                        }),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The map requests are routed by now.
    pub fn map(&self) -> Arc<PartitionMap> {
        self.routes().map.clone()
    }

    /// Asks the map's nodes and the seeds (at once) for their maps, and once a majority of
    /// the map's nodes answered, keeps each partition's leader from the view of the highest
    /// term (`PartitionMap::newest_of`): a node whose log is stuck (a full disk) or that is
    /// cut off still shows itself as leader after the others elected another, so the first
    /// answer alone can be stale. Keeps the old map if nobody of the same cluster answers.
    pub fn refresh(&self) -> Result<Arc<PartitionMap>, ClientError> {
        futures::executor::block_on(self.refresh_async())
    }

    /// `refresh` for async callers (the routing loop runs inside `block_on` already, and
    /// executors do not nest).
    pub async fn refresh_async(&self) -> Result<Arc<PartitionMap>, ClientError> {
        let current = self.map();
        let mut candidates: Vec<String> = current
            .nodes
            .iter()
            .map(|n| n.client_addr.clone())
            .collect();
        for seed in &self.seeds {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        let majority = current.nodes.len() / 2 + 1;
        let mut answers: FuturesUnordered<_> = candidates
            .iter()
            .map(|addr| {
                let current = &current;
                async move {
                    let fetched = match self.cached_client_at(current, addr) {
                        Some(client) => client
                            .partition_map_async()
                            .await
                            .map(|map| (client.node_id(), map)),
                        None => fetch_map(&self.template, addr)
                            .await
                            .map(|(client, map)| (client.node_id(), map)),
                    };
                    (addr, fetched)
                }
            })
            .collect();
        let (maps, last) = maps_of_a_majority(&mut answers, current.cluster_id, majority).await;
        drop(answers);
        let Some(map) = PartitionMap::newest_of(&maps).or_else(|| maps.into_iter().next()) else {
            return Err(last);
        };
        let map = Arc::new(map);
        let mut routes = self.routes();
        // Clients of nodes that left the cluster are dropped with their connections.
        routes
            .clients
            .retain(|id, _| map.nodes.iter().any(|n| n.node_id == *id));
        routes.map = map.clone();
        Ok(map)
    }

    /// The client of the node leading `partition` (for reads, which its leader answers).
    pub fn leader_client(&self, partition: PartitionId) -> Result<Arc<Client>, ClientError> {
        let map = self.map();
        let node = map.leader_of(partition).ok_or_else(|| {
            ClientError::Disconnected(format!("partition {partition} has no leader now"))
        })?;
        self.client(node.node_id)
    }

    pub async fn create_accounts_async(
        &self,
        items: &[NewAccount],
    ) -> Result<Vec<ResultCode>, ClientError> {
        check_len(items.len())?;
        route(self, items, |a| a.id).await
    }

    /// Creates transfers on the leaders of their source accounts' partitions; one result per
    /// item, in order. See `routing::route` for what is retried.
    pub async fn create_transfers_async(
        &self,
        items: &[NewTransfer],
    ) -> Result<Vec<ResultCode>, ClientError> {
        check_len(items.len())?;
        route(self, items, |t| t.from).await
    }

    pub fn create_accounts(&self, items: &[NewAccount]) -> Result<Vec<ResultCode>, ClientError> {
        futures::executor::block_on(self.create_accounts_async(items))
    }

    pub fn create_transfers(&self, items: &[NewTransfer]) -> Result<Vec<ResultCode>, ClientError> {
        futures::executor::block_on(self.create_transfers_async(items))
    }

    /// Accounts from the leaders of their partitions (linearizable reads), in order. The
    /// partitions are asked at once; one whose leader moved (`not_leader`), is not known, or
    /// could not be reached is asked again after a map refresh, for `ROUTE_ROUNDS_MAX` rounds
    /// at most (a read is safe to repeat), as writes are routed.
    pub async fn lookup_accounts_async(
        &self,
        ids: &[u128],
    ) -> Result<Vec<Option<engine::model::Account>>, ClientError> {
        check_len(ids.len())?;
        let mut out = vec![None; ids.len()];
        let mut todo: Vec<usize> = (0..ids.len()).collect();
        let mut last = ClientError::Disconnected("no round ran".into());
        for round in 0..ROUTE_ROUNDS_MAX {
            if round > 0 {
                self.refresh_after_pause(round).await;
            }
            let map = self.map();
            let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for &i in &todo {
                by_partition
                    .entry(map.partition_of(ids[i]))
                    .or_default()
                    .push(i);
            }
            let asks = by_partition.into_iter().map(|(p, at)| async move {
                let part: Vec<u128> = at.iter().map(|&i| ids[i]).collect();
                let found = match self.leader_client(p) {
                    Ok(client) => client.lookup_accounts_async(&part).await,
                    Err(e) => Err(e),
                };
                (at, found)
            });
            let mut again = Vec::new();
            for (at, found) in futures::future::join_all(asks).await {
                match found {
                    Ok(found) if found.len() == at.len() => {
                        for (i, account) in at.into_iter().zip(found) {
                            out[i] = account;
                        }
                    }
                    Ok(_) => return Err(ClientError::BadReply),
                    Err(e) if leader_may_have_moved(&e) => {
                        again.extend(at);
                        last = e;
                    }
                    Err(e) => return Err(e),
                }
            }
            if again.is_empty() {
                return Ok(out);
            }
            todo = again;
        }
        Err(last)
    }

    /// Transfers by id, from every node's applied state (follower reads): a transfer lives
    /// in its source account's partition, which the id does not tell, and no node need lead
    /// every partition. Each partition's leader has all of its committed transfers, and no
    /// node shows an uncommitted one, so a transfer found on any node is committed.
    ///
    /// The nodes are asked at once. A found transfer's answer is a final one when any node
    /// has it final (a status never goes back to `pending`, and a lagging follower may still
    /// show a TC/C as `pending` that its leader decided), else the map's leader's. An id
    /// found nowhere is "not found" only when every node, or every partition's leader,
    /// answered; otherwise the map is refreshed and the nodes asked again (bounded rounds, as
    /// for account lookups), then the call fails with the last error.
    pub async fn lookup_transfers_anywhere_async(
        &self,
        ids: &[u128],
    ) -> Result<Vec<Option<engine::model::TransferLookup>>, ClientError> {
        check_len(ids.len())?;
        let mut last: Option<ClientError> = None;
        for round in 0..ROUTE_ROUNDS_MAX {
            if round > 0 {
                self.refresh_after_pause(round).await;
            }
            let map = self.map();
            let asks = map.nodes.iter().map(|node| async move {
                let found = match self.client(node.node_id) {
                    Ok(client) => client.lookup_transfers_follower_async(ids).await,
                    Err(e) => Err(e),
                };
                (node.node_id, found)
            });
            let mut answered: Vec<(u64, Vec<Option<engine::model::TransferLookup>>)> = Vec::new();
            for (node_id, found) in futures::future::join_all(asks).await {
                match found {
                    Ok(found) if found.len() == ids.len() => answered.push((node_id, found)),
                    Ok(_) => return Err(ClientError::BadReply),
                    Err(e) => last = Some(e),
                }
            }
            let every_leader_answered = (0..map.partition_count()).all(|p| {
                map.leader_of(p)
                    .is_some_and(|leader| answered.iter().any(|(n, _)| *n == leader.node_id))
            });
            let complete = answered.len() == map.nodes.len() || every_leader_answered;
            let leads = |node_id: u64, t: &engine::model::TransferLookup| {
                map.leader_of(map.partition_of(t.transfer.from))
                    .is_some_and(|leader| leader.node_id == node_id)
            };
            let mut out = Vec::with_capacity(ids.len());
            for i in 0..ids.len() {
                let best = answered
                    .iter()
                    .filter_map(|(node_id, found)| found[i].map(|t| (*node_id, t)))
                    .max_by_key(|(node_id, t)| {
                        (t.status != ResultCode::Pending, leads(*node_id, t))
                    });
                out.push(best.map(|(_, t)| t));
            }
            if complete || out.iter().all(Option::is_some) {
                return Ok(out);
            }
        }
        Err(last.unwrap_or_else(|| {
            ClientError::Disconnected(
                "no round heard from every partition's leader (elections running)".into(),
            )
        }))
    }

    /// Before the `round`-th attempt of a routed call or a lookup: a pause growing with the
    /// round, then a map refresh (on failure the old map stays).
    async fn refresh_after_pause(&self, round: u32) {
        let pause_ms = (REFRESH_BACKOFF_MS * round as u64).min(REFRESH_BACKOFF_MAX_MS);
        // Blocking, like `Client`'s own retry pause: the client library runs on any executor
        // and has no timer of its own.
        std::thread::sleep(Duration::from_millis(pause_ms));
        if let Err(e) = self.refresh_async().await {
            tracing::debug!(error = %e, round, "partition map refresh failed; routing by the old one");
        }
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        // A panic while holding the lock leaves plain data behind (a map and clients), which
        // stays valid: take it over.
        self.routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cached_client_at(&self, map: &PartitionMap, addr: &str) -> Option<Arc<Client>> {
        let node = map.nodes.iter().find(|n| n.client_addr == addr)?;
        self.routes().clients.get(&node.node_id).cloned()
    }

    /// The client of `node_id`, connecting it on first use (outside the lock: connecting
    /// blocks for a round trip or a timeout).
    fn client(&self, node_id: u64) -> Result<Arc<Client>, ClientError> {
        let addr = {
            let routes = self.routes();
            if let Some(client) = routes.clients.get(&node_id) {
                return Ok(client.clone());
            }
            routes
                .map
                .nodes
                .iter()
                .find(|n| n.node_id == node_id)
                .map(|n| n.client_addr.clone())
                .ok_or_else(|| ClientError::Disconnected(format!("node {node_id} left the map")))?
        };
        let client = Arc::new(Client::connect(ClientConfig {
            addr,
            ..self.template.clone()
        })?);
        Ok(self
            .routes()
            .clients
            .entry(node_id)
            .or_insert(client)
            .clone())
    }
}

impl<T: Copy + Routed> Nodes<T> for ClusterClient {
    fn map(&self) -> Arc<PartitionMap> {
        ClusterClient::map(self)
    }

    async fn refresh(&self, round: u32) {
        self.refresh_after_pause(round).await;
    }

    async fn send(&self, node_id: u64, items: Vec<T>) -> Result<Vec<ResultCode>, ClientError> {
        let client = self.client(node_id)?;
        T::send(&client, &items).await
    }
}

/// A command item the cluster client routes, and the call that sends a batch of them.
pub(crate) trait Routed: Sized {
    async fn send(client: &Client, items: &[Self]) -> Result<Vec<ResultCode>, ClientError>;
}

impl Routed for NewTransfer {
    async fn send(client: &Client, items: &[Self]) -> Result<Vec<ResultCode>, ClientError> {
        client.create_transfers_async(items).await
    }
}

impl Routed for NewAccount {
    async fn send(client: &Client, items: &[Self]) -> Result<Vec<ResultCode>, ClientError> {
        client.create_accounts_async(items).await
    }
}

async fn fetch_map(
    template: &ClientConfig,
    addr: &str,
) -> Result<(Arc<Client>, PartitionMap), ClientError> {
    let client = Arc::new(Client::connect(ClientConfig {
        addr: addr.to_string(),
        ..template.clone()
    })?);
    let map = client.partition_map_async().await?;
    Ok((client, map))
}

/// Takes map answers (address, then node id and map, or the error) as they come until maps
/// from `majority` distinct nodes of cluster `cluster_id` are in; returns those maps and the
/// last error seen. A node answering under two addresses (a seed naming it differently from
/// the map) counts once: counting it twice could stop before a second node's newer view.
async fn maps_of_a_majority<A: std::fmt::Display>(
    answers: &mut (impl futures::Stream<Item = (A, Result<(u64, PartitionMap), ClientError>)> + Unpin),
    cluster_id: u64,
    majority: usize,
) -> (Vec<PartitionMap>, ClientError) {
    let mut maps = Vec::new();
    let mut answered: Vec<u64> = Vec::new();
    let mut last = ClientError::Disconnected("no node answered with a map".into());
    while let Some((addr, fetched)) = answers.next().await {
        match fetched {
            Ok((_, map)) if map.cluster_id != cluster_id => {
                tracing::warn!(%addr, cluster_id = map.cluster_id, "ignoring the map of another cluster");
            }
            Ok((node_id, _)) if answered.contains(&node_id) => {}
            Ok((node_id, map)) => {
                answered.push(node_id);
                maps.push(map);
                if maps.len() >= majority {
                    break;
                }
            }
            Err(e) => last = e,
        }
    }
    (maps, last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition_map::three_node_map;

    /// Node 1 answers first under two addresses with an old view; node 2 answers later with
    /// the newer one. A majority of the three needs node 2's answer, so its leader wins.
    #[test]
    fn a_node_answering_under_two_addresses_counts_once_toward_the_majority() {
        let stale = three_node_map(&[(Some(1), 3)]);
        let newer = three_node_map(&[(Some(2), 4)]);
        let answers = vec![
            ("127.0.0.1:7401", Ok((1, stale.clone()))),
            ("localhost:7401", Ok((1, stale.clone()))),
            (
                "127.0.0.1:7403",
                Err(ClientError::Disconnected("down".into())),
            ),
            ("127.0.0.1:7402", Ok((2, newer.clone()))),
        ];
        let mut stream = futures::stream::iter(answers);
        let (maps, _) =
            futures::executor::block_on(maps_of_a_majority(&mut stream, stale.cluster_id, 2));
        assert_eq!(maps, vec![stale, newer.clone()]);
        assert_eq!(PartitionMap::newest_of(&maps), Some(newer));
    }
}
