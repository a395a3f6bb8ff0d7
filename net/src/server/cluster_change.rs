//! Carries out a `ClusterChange` request (`cluster_admin.rs`) on this node's partitions.

use super::{ClusterSetup, CoreContext};
use crate::cluster_admin::{Action, ClusterChange, Outcome, PartitionOutcome};
use crate::raft_link::raft_addr_for;
use engine::raft::NodeAddr;
use engine::runtime::MembershipChange;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The address of partition `partition` of a node: its link on the core slot that owns the
/// partition (the same slot on every node: a cluster's nodes run the same number of cores).
fn node_addr(
    peer_addr: &SocketAddr,
    client_addr: &str,
    partition: u32,
    cores: usize,
) -> Result<NodeAddr, String> {
    let slot = partition as usize % cores.max(1);
    Ok(NodeAddr {
        raft_addr: raft_addr_for(peer_addr, slot)?.to_string(),
        client_addr: client_addr.to_string(),
    })
}

fn setup(ctx: &CoreContext) -> Result<&ClusterSetup, String> {
    ctx.config.cluster.as_ref().ok_or_else(|| {
        "this node has no peers configured ([[peers]]): it is a cluster of one".to_string()
    })
}

/// Applies `change` and answers per partition (none for the fault-injection actions).
pub(crate) async fn apply(
    ctx: &CoreContext,
    change: ClusterChange,
) -> Result<Vec<PartitionOutcome>, String> {
    let setup = setup(ctx)?;
    let node = &ctx.node;
    let cores = node.config().cores.len();
    match change.action {
        Action::Isolate | Action::HealAll => {
            let filter = setup.link_filter.as_ref().ok_or_else(|| {
                "fault injection is off on this node (fault_injection = true turns it on)"
                    .to_string()
            })?;
            if change.action == Action::Isolate {
                filter.isolate(change.node_id);
            } else {
                filter.heal_all();
            }
            tracing::warn!(action = ?change.action, node = change.node_id, "link fault injection");
            return Ok(Vec::new());
        }
        Action::Init | Action::AddNode | Action::RemoveNode => {}
        Action::Elect => return Err("Elect has its own request layout".into()),
    }
    let added = match change.action {
        Action::AddNode => Some(
            change
                .peer_addr
                .parse::<SocketAddr>()
                .map_err(|e| format!("peer address {:?}: {e}", change.peer_addr))?,
        ),
        _ => None,
    };
    let mut by_id: Vec<&crate::server::ClusterNode> = setup.nodes.iter().collect();
    by_id.sort_unstable_by_key(|n| n.node_id);
    let mut outcomes = Vec::with_capacity(node.partition_count() as usize);
    for p in 0..node.partition_count() {
        // Init of this node's share: partition p belongs to the (p % n)-th node by id.
        if change.action == Action::Init && change.node_id == crate::cluster_admin::INIT_SHARE {
            let owner = by_id[p as usize % by_id.len()];
            if owner.node_id != ctx.config.node_id {
                outcomes.push(PartitionOutcome {
                    partition: p,
                    outcome: Outcome::NotLeader,
                    message: owner.client_addr.clone(),
                });
                continue;
            }
        }
        let membership = match change.action {
            Action::Init => {
                let mut members = BTreeMap::new();
                for n in &setup.nodes {
                    members.insert(
                        n.node_id,
                        node_addr(&n.peer_addr, &n.client_addr, p, cores)?,
                    );
                }
                MembershipChange::Initialize(members)
            }
            Action::AddNode => {
                let peer = added.as_ref().expect("parsed above");
                MembershipChange::AddVoter(
                    change.node_id,
                    node_addr(peer, &change.client_addr, p, cores)?,
                )
            }
            _ => MembershipChange::Remove(change.node_id),
        };
        // Only a leader changes the membership; `Init` is for a fresh cluster, led by nobody.
        if change.action != Action::Init {
            let leads = node
                .counters(p)
                .await
                .ok()
                .and_then(|s| s.raft)
                .is_some_and(|r| r.is_leader);
            if !leads {
                outcomes.push(PartitionOutcome {
                    partition: p,
                    outcome: Outcome::NotLeader,
                    message: String::new(),
                });
                continue;
            }
        }
        let (outcome, message) = match node.change_membership(p, membership).await {
            Ok(Ok(())) => (Outcome::Ok, String::new()),
            Ok(Err(e)) => (Outcome::Failed, e),
            Err(e) => (Outcome::Failed, e.to_string()),
        };
        tracing::info!(partition = p, action = ?change.action, node = change.node_id, ?outcome, %message, "cluster change");
        outcomes.push(PartitionOutcome {
            partition: p,
            outcome,
            message,
        });
    }
    Ok(outcomes)
}

/// `Elect`: this node campaigns for leadership of each partition listed (`balance-leaders`
/// sends it to a partition's preferred node). Answers once each campaign started; whether it
/// won shows in the partition map a moment later. Partitions this node leads already answer
/// `Ok` without a campaign (openraft ignores it on a leader anyway).
pub(crate) async fn elect(
    ctx: &CoreContext,
    partitions: &[u32],
) -> Result<Vec<PartitionOutcome>, String> {
    setup(ctx)?;
    let node = &ctx.node;
    let me = ctx.config.node_id;
    let mut outcomes = Vec::with_capacity(partitions.len());
    for &p in partitions {
        let (outcome, message) = if p >= node.partition_count() {
            (Outcome::Failed, format!("no partition {p} on this node"))
        } else {
            match node.counters(p).await.ok().and_then(|s| s.raft) {
                None => (Outcome::Failed, "the partition does not answer".to_string()),
                Some(raft) if raft.is_leader => (Outcome::Ok, "leads already".to_string()),
                // A learner's campaign would be ignored: say so instead of "started".
                Some(raft) if !raft.members.iter().any(|m| m.node_id == me && m.voter) => (
                    Outcome::Failed,
                    "this node is not a voter of it".to_string(),
                ),
                Some(_) => match node.change_membership(p, MembershipChange::Elect).await {
                    Ok(Ok(())) => (Outcome::Ok, "campaign started".to_string()),
                    Ok(Err(e)) => (Outcome::Failed, e),
                    Err(e) => (Outcome::Failed, e.to_string()),
                },
            }
        };
        tracing::info!(partition = p, ?outcome, %message, "elect");
        outcomes.push(PartitionOutcome {
            partition: p,
            outcome,
            message,
        });
    }
    Ok(outcomes)
}
