//! Turns one validated request frame into its reply frame.

use super::connection::error_frame;
use super::CoreContext;
use crate::codec;
use crate::frame::{self, FrameHeader};
use crate::operation::{Operation, ProtocolError};
use bytes::{Bytes, BytesMut};
use engine::runtime::{ReadFrom, SubmitError};

pub(crate) async fn handle(ctx: &CoreContext, header: FrameHeader, body: Bytes) -> BytesMut {
    let op = header.operation;
    let id = header.request_id;
    let read = if header.flags & frame::flags::FOLLOWER_READ != 0 {
        ReadFrom::Local
    } else {
        ReadFrom::Leader
    };
    match answer(ctx, op, &body, read).await {
        Ok(reply) => reply_frame(op, id, reply),
        Err((error, message)) => error_frame(op, id, error, &message),
    }
}

fn reply_frame(op: u8, id: u64, body: BytesMut) -> BytesMut {
    let mut out = BytesMut::with_capacity(frame::HEADER_BYTES + body.len());
    frame::encode_frame(&mut out, op, frame::flags::REPLY, id, &body);
    out
}

type Answer = Result<BytesMut, (ProtocolError, String)>;

/// Why a lookup got no answer: a partition whose Raft on this node could not confirm it leads
/// refuses lookups of the leader's state (`not_leader`, naming the partition that refused);
/// otherwise the node is stopping.
fn lookup_failed(e: SubmitError) -> (ProtocolError, String) {
    match e {
        SubmitError::NotLeader { .. } => (
            ProtocolError::NotLeader,
            format!("{e}; see the partition map"),
        ),
        SubmitError::Busy | SubmitError::ShuttingDown => shutting_down(e),
    }
}

fn shutting_down(_: SubmitError) -> (ProtocolError, String) {
    (
        ProtocolError::ShuttingDown,
        "the node is shutting down".into(),
    )
}

async fn answer(ctx: &CoreContext, op: u8, body: &[u8], read: ReadFrom) -> Answer {
    let Some(operation) = Operation::from_u8(op) else {
        return Err((
            ProtocolError::UnknownOperation,
            format!("operation {op} is not known"),
        ));
    };
    let mut out = BytesMut::new();
    match operation {
        Operation::Handshake => {
            return Err((ProtocolError::MalformedBody, "already handshaken".into()))
        }
        Operation::Ping => {}
        Operation::RaftBatch => {
            return Err((
                ProtocolError::UnknownOperation,
                "a node-link operation; this is the client port".into(),
            ))
        }
        Operation::Status => {
            let node = &ctx.node;
            let mut parts = Vec::with_capacity(node.partition_count() as usize);
            for p in 0..node.partition_count() {
                let s = node.counters(p).await.map_err(shutting_down)?;
                parts.push(codec::PartitionStatus {
                    partition: p,
                    last_index: s.last_index,
                    durable_index: s.durable_index,
                    accounts: s.accounts,
                    transfers: s.transfers,
                    fsyncs: s.fsyncs,
                });
            }
            codec::encode_status(&mut out, node.config().cores.len() as u32, &parts);
        }
        Operation::PartitionMap => {
            let map = partition_map(ctx).await;
            crate::partition_map::encode_partition_map(&mut out, &map);
        }
        Operation::ClusterChange => {
            let request = crate::cluster_admin::decode_request(body)
                .map_err(|e| (e, "a malformed cluster change".into()))?;
            let outcomes = match request {
                crate::cluster_admin::ClusterRequest::Change(change) => {
                    super::cluster_change::apply(ctx, change).await
                }
                crate::cluster_admin::ClusterRequest::Elect { partitions } => {
                    super::cluster_change::elect(ctx, &partitions).await
                }
            }
            .map_err(|m| (ProtocolError::MalformedBody, m))?;
            crate::cluster_admin::encode_outcomes(&mut out, &outcomes);
        }
        Operation::RaftStatus => {
            let (version, first) = crate::raft_status::decode_request(body).map_err(malformed)?;
            let reply = raft_status(ctx, version, first).await;
            crate::raft_status::encode_reply(&mut out, &reply);
        }
        Operation::StateDigest => {
            let node = &ctx.node;
            let mut parts = Vec::with_capacity(node.partition_count() as usize);
            for p in 0..node.partition_count() {
                let s = node.stats(p).await.map_err(shutting_down)?;
                parts.push(codec::PartitionDigest {
                    partition: p,
                    last_index: s.last_index,
                    digest: s.digest,
                });
            }
            codec::encode_state_digests(&mut out, &parts);
        }
        Operation::CreateAccounts => {
            let items: Vec<_> =
                decode_all(body, codec::NEW_ACCOUNT_BYTES, codec::decode_new_account)?;
            let results = ctx
                .node
                .create_accounts(&items)
                .await
                .map_err(shutting_down)?;
            codec::encode_results(&mut out, &results);
        }
        Operation::CreateTransfers => {
            let items: Vec<_> =
                decode_all(body, codec::NEW_TRANSFER_BYTES, codec::decode_new_transfer)?;
            let results = ctx
                .node
                .create_transfers(&items)
                .await
                .map_err(shutting_down)?;
            codec::encode_results(&mut out, &results);
        }
        Operation::LookupAccounts => {
            let ids: Vec<u128> = decode_all(body, codec::ID_BYTES, codec::decode_id)?;
            let found = match ctx.node.lookup_accounts_routed_from(&ids, read).await {
                Ok(found) => found,
                Err(e) => return Err(lookup_failed(e)),
            };
            codec::encode_account_replies(&mut out, &found);
        }
        Operation::LookupTransfers => {
            let ids: Vec<u128> = decode_all(body, codec::ID_BYTES, codec::decode_id)?;
            let found = match ctx.node.lookup_transfers_any_from(&ids, read).await {
                Ok(found) => found,
                Err(e) => return Err(lookup_failed(e)),
            };
            codec::encode_transfer_replies(&mut out, &found);
        }
        Operation::GetAccountHistory => {
            let query = codec::decode_history_query(body).map_err(malformed)?;
            let answer = ctx.node.history(query).await.map_err(shutting_down)?;
            codec::encode_history_reply(&mut out, &answer);
        }
        Operation::GetBalanceAt => {
            let (account, at) = codec::decode_balance_at_query(body).map_err(malformed)?;
            let answer = ctx
                .node
                .balance_at(account, at)
                .await
                .map_err(shutting_down)?;
            codec::encode_balance_at_reply(&mut out, account, &answer);
        }
        Operation::Subscribe => {
            // Served by the connection itself (it pushes frames after the reply).
            return Err((
                ProtocolError::MalformedBody,
                "not a one-shot request".into(),
            ));
        }
        Operation::GetTotals => {
            if !body.is_empty() {
                return Err(malformed(ProtocolError::MalformedBody));
            }
            let node = &ctx.node;
            let mut parts = Vec::with_capacity(node.partition_count() as usize);
            for p in 0..node.partition_count() {
                let totals = match node.totals(p).await.map_err(shutting_down)? {
                    Ok(totals) => Some(totals),
                    Err(engine::read_model::QueryError::Disabled) => None,
                    Err(e) => {
                        return Err((ProtocolError::MalformedBody, format!("partition {p}: {e}")))
                    }
                };
                parts.push(crate::totals::PartitionTotals {
                    partition: p,
                    totals,
                });
            }
            crate::totals::encode_totals_reply(&mut out, &parts).map_err(|e| {
                (
                    e,
                    "more partitions or currencies than one reply holds".to_string(),
                )
            })?;
        }
        Operation::ReadModelStatus => {
            let node = &ctx.node;
            let mut parts = Vec::with_capacity(node.partition_count() as usize);
            for p in 0..node.partition_count() {
                let s = node.counters(p).await.map_err(shutting_down)?;
                parts.push(codec::ReadModelStatus {
                    partition: p,
                    enabled: s.read_model,
                    position: s.read_model_position,
                    lag_entries: s.read_model_lag_entries,
                    lag_ms: s.read_model_lag_ms,
                });
            }
            codec::encode_read_model_status(&mut out, &parts);
        }
    }
    Ok(out)
}

fn malformed(e: ProtocolError) -> (ProtocolError, String) {
    (
        e,
        "the body does not match the operation's layout".to_string(),
    )
}

/// Every record of a counted body, decoded (one allocation for the batch, none per item).
fn decode_all<T>(
    body: &[u8],
    record_bytes: usize,
    decode: fn(&[u8]) -> T,
) -> Result<Vec<T>, (ProtocolError, String)> {
    let records = codec::records(body, record_bytes).map_err(|e| {
        (
            e,
            "the body does not match the operation's layout".to_string(),
        )
    })?;
    Ok(records.map(decode).collect())
}

/// `RaftStatus` from partition `first` on, as many partitions as fit a reply body (the
/// client asks again from where it stopped). Cheap: counters only, no state digest.
async fn raft_status(
    ctx: &CoreContext,
    version: u8,
    first: u32,
) -> crate::raft_status::RaftStatusReply {
    use crate::raft_status::{Member, PartitionRaft, Role, MEMBERS_MAX};
    use engine::runtime::RaftRole;
    let node = &ctx.node;
    let total = node.partition_count();
    let mut partitions = Vec::new();
    let mut used = crate::raft_status::REPLY_HEADER_BYTES;
    for p in first.min(total)..total {
        let answer = match node.counters(p).await {
            Ok(stats) => match stats.raft {
                Some(raft) => PartitionRaft {
                    partition: p,
                    role: match raft.role {
                        RaftRole::Learner => Role::Learner,
                        RaftRole::Follower => Role::Follower,
                        RaftRole::Candidate => Role::Candidate,
                        RaftRole::Leader => Role::Leader,
                        RaftRole::Shutdown => Role::Shutdown,
                    },
                    term: raft.term,
                    leader: raft.leader,
                    last_log_index: raft.last_log_index,
                    applied_index: raft.applied_index,
                    commit_index: raft.commit_index,
                    members: raft
                        .members
                        .iter()
                        .take(MEMBERS_MAX)
                        .map(|m| Member {
                            node_id: m.node_id,
                            voter: m.voter,
                            matched_index: if m.node_id == ctx.config.node_id && raft.is_leader {
                                // The leader's own log counts for itself (as in the commit
                                // index), not the flushed point openraft last reported.
                                Some(raft.last_log_index)
                            } else {
                                m.matched_index
                            },
                        })
                        .collect(),
                },
                // No replication: this node alone decides; what is durable is committed.
                None => PartitionRaft {
                    partition: p,
                    role: Role::Standalone,
                    term: 0,
                    leader: Some(ctx.config.node_id),
                    last_log_index: stats.durable_index,
                    applied_index: stats.last_index,
                    commit_index: stats.durable_index,
                    members: Vec::new(),
                },
            },
            // The partition does not answer (stopped).
            Err(_) => PartitionRaft {
                partition: p,
                role: Role::Shutdown,
                term: 0,
                leader: None,
                last_log_index: 0,
                applied_index: 0,
                commit_index: 0,
                members: Vec::new(),
            },
        };
        used += crate::raft_status::PARTITION_BYTES
            + answer.members.len() * crate::raft_status::MEMBER_BYTES;
        if used > frame::BODY_BYTES_MAX || partitions.len() >= crate::raft_status::PARTITIONS_MAX {
            break;
        }
        partitions.push(answer);
    }
    crate::raft_status::RaftStatusReply {
        version,
        node_id: ctx.config.node_id,
        partition_total: total,
        partitions,
    }
}

/// The partition map as this node knows it. Without replication (or a cluster of one) this
/// node leads every partition, except one whose Raft is not leader now (electing, or
/// stopped after a storage failure). In a cluster: each partition's leader as its Raft on
/// this node knows it, and every node of its membership.
async fn partition_map(ctx: &CoreContext) -> crate::partition_map::PartitionMap {
    let node = &ctx.node;
    let mut map = crate::partition_map::PartitionMap::single_node(
        ctx.config.cluster_id,
        ctx.config.node_id,
        ctx.config.advertised_addr(),
        node.partition_count(),
    );
    for p in 0..node.partition_count() {
        let leader = &mut map.partitions[p as usize];
        match node.counters(p).await {
            Ok(stats) => {
                if let Some(raft) = stats.raft {
                    leader.term = raft.term;
                    leader.leader = raft.leader;
                    for member in raft.members {
                        let known = map.nodes.iter().any(|n| n.node_id == member.node_id);
                        if !known && !member.client_addr.is_empty() {
                            map.nodes.push(crate::partition_map::MapNode {
                                node_id: member.node_id,
                                client_addr: member.client_addr,
                            });
                        }
                    }
                }
            }
            // The partition does not answer (stopped): nobody leads it.
            Err(_) => map.partitions[p as usize].leader = None,
        }
    }
    // A leader this node knows no address of (it learns of a node from a membership entry
    // before it applies it) is no help to a client: no leader then.
    for i in 0..map.partitions.len() {
        if let Some(id) = map.partitions[i].leader {
            if !map.nodes.iter().any(|n| n.node_id == id) {
                map.partitions[i].leader = None;
            }
        }
    }
    map.nodes.truncate(crate::partition_map::MAP_NODES_MAX);
    map
}
