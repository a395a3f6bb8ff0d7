//! The partition map: which node leads each partition, and where clients reach every node
//! (operation `PartitionMap`, docs/PROTOCOL.md). A client that knows it sends each command
//! straight to the leader of the command's partition instead of through a node that would
//! only answer `not_leader`.
//!
//! The map is advice, never authority: leaders change at any time, so a client routes by its
//! cached copy, and an item answered `not_leader` sends it back for a fresh copy (from any
//! node) and a retry with the same ids, which idempotency makes harmless.
//!
//! Wire format (little-endian):
//!
//! ```text
//! cluster_id u64 | node_count u16 | reserved u16 | partition_count u32
//! node_count      × (node_id u64 | addr_len u16 | addr: addr_len bytes of UTF-8 "host:port")
//! partition_count × (leader u64 (NO_LEADER: none known) | term u64)
//! ```

use crate::operation::ProtocolError;
use bytes::{BufMut, BytesMut};
use engine::model::AccountId;
use engine::partition::{partition_of, PartitionId};

/// Most nodes a map lists (a Raft group has 1, 3 or 5 voters; a cluster a few dozen nodes).
pub const MAP_NODES_MAX: usize = 255;
/// Longest client address of a node, in bytes.
pub const NODE_ADDR_BYTES_MAX: usize = 255;
/// Most partitions a map lists (the same bound as a Status reply).
pub const MAP_PARTITIONS_MAX: usize = 65_536;
/// `leader` value of a partition that has no known leader (an election is running).
pub const NO_LEADER: u64 = u64::MAX;

const HEADER_BYTES: usize = 16;
const PARTITION_BYTES: usize = 16;

/// A node as clients reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapNode {
    pub node_id: u64,
    /// `host:port` of the node's client listener.
    pub client_addr: String,
}

/// One partition's leader as the answering node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionLeader {
    /// `None` while no leader is known.
    pub leader: Option<u64>,
    /// The Raft term the leader was seen in (0 on a node without replication).
    pub term: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMap {
    pub cluster_id: u64,
    pub nodes: Vec<MapNode>,
    /// Indexed by partition id.
    pub partitions: Vec<PartitionLeader>,
}

impl PartitionMap {
    /// The map of a node that leads every one of its `partition_count` partitions itself (a
    /// node without replication, or a cluster of one).
    pub fn single_node(
        cluster_id: u64,
        node_id: u64,
        client_addr: String,
        partition_count: u32,
    ) -> PartitionMap {
        PartitionMap {
            cluster_id,
            nodes: vec![MapNode {
                node_id,
                client_addr,
            }],
            partitions: vec![
                PartitionLeader {
                    leader: Some(node_id),
                    term: 0,
                };
                partition_count as usize
            ],
        }
    }

    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// The partition that owns `account` (transfers belong to their source account's).
    pub fn partition_of(&self, account: AccountId) -> PartitionId {
        partition_of(account, self.partition_count())
    }

    /// The node leading `partition`, if one is known.
    pub fn leader_of(&self, partition: PartitionId) -> Option<&MapNode> {
        let leader = self.partitions.get(partition as usize)?.leader?;
        self.nodes.iter().find(|n| n.node_id == leader)
    }

    /// The node that leads every partition, if one does: then a whole batch can go there
    /// unsplit (the node splits it by partition itself).
    pub fn sole_leader(&self) -> Option<&MapNode> {
        let first = self.partitions.first()?.leader?;
        if self.partitions.iter().all(|p| p.leader == Some(first)) {
            self.nodes.iter().find(|n| n.node_id == first)
        } else {
            None
        }
    }

    /// One map from the maps several nodes of one cluster answered, each partition's leader
    /// from the map that saw it in the highest term (a known leader winning a tie): a node
    /// can keep showing itself as leader after the others elected another (its log stuck on
    /// a full disk, cut off from them), and the term tells whose view is newer. The nodes are
    /// all the maps list (a leader must be one of them); `None` for no maps or maps whose
    /// partition counts differ.
    pub fn newest_of(maps: &[PartitionMap]) -> Option<PartitionMap> {
        let first = maps.first()?;
        if maps
            .iter()
            .any(|m| m.partitions.len() != first.partitions.len())
        {
            return None;
        }
        let mut merged = first.clone();
        for map in &maps[1..] {
            for node in &map.nodes {
                if !merged.nodes.iter().any(|n| n.node_id == node.node_id) {
                    merged.nodes.push(node.clone());
                }
            }
            for (mine, theirs) in merged.partitions.iter_mut().zip(&map.partitions) {
                let newer = theirs.term > mine.term
                    || (theirs.term == mine.term
                        && mine.leader.is_none()
                        && theirs.leader.is_some());
                if newer {
                    *mine = *theirs;
                }
            }
        }
        Some(merged)
    }

    /// Checks what a decoder cannot: every leader is a listed node, node ids are unique.
    fn validate(&self) -> Result<(), ProtocolError> {
        for (i, node) in self.nodes.iter().enumerate() {
            if self.nodes[..i].iter().any(|n| n.node_id == node.node_id) {
                return Err(ProtocolError::MalformedBody);
            }
        }
        for p in &self.partitions {
            if let Some(leader) = p.leader {
                if !self.nodes.iter().any(|n| n.node_id == leader) {
                    return Err(ProtocolError::MalformedBody);
                }
            }
        }
        Ok(())
    }
}

/// Panics if the map breaks its own limits: the server builds it, so that is a bug there.
pub fn encode_partition_map(out: &mut BytesMut, map: &PartitionMap) {
    assert!(map.nodes.len() <= MAP_NODES_MAX, "too many nodes in a map");
    assert!(map.partitions.len() <= MAP_PARTITIONS_MAX);
    out.put_u64_le(map.cluster_id);
    out.put_u16_le(map.nodes.len() as u16);
    out.put_u16_le(0);
    out.put_u32_le(map.partitions.len() as u32);
    for node in &map.nodes {
        let addr = node.client_addr.as_bytes();
        assert!(addr.len() <= NODE_ADDR_BYTES_MAX, "node address too long");
        assert_ne!(node.node_id, NO_LEADER, "node id {NO_LEADER} is reserved");
        out.put_u64_le(node.node_id);
        out.put_u16_le(addr.len() as u16);
        out.put_slice(addr);
    }
    for p in &map.partitions {
        out.put_u64_le(p.leader.unwrap_or(NO_LEADER));
        out.put_u64_le(p.term);
    }
}

/// Decodes a map, refusing anything out of bounds, truncated, trailing, or inconsistent (a
/// leader that is not a listed node).
pub fn decode_partition_map(body: &[u8]) -> Result<PartitionMap, ProtocolError> {
    let malformed = ProtocolError::MalformedBody;
    let header = body.get(..HEADER_BYTES).ok_or(malformed)?;
    let cluster_id = u64::from_le_bytes(header[0..8].try_into().map_err(|_| malformed)?);
    let node_count = u16::from_le_bytes([header[8], header[9]]) as usize;
    let reserved = u16::from_le_bytes([header[10], header[11]]);
    let partition_count =
        u32::from_le_bytes(header[12..16].try_into().map_err(|_| malformed)?) as usize;
    // A map of no partitions routes nothing (and `partition_of` has nothing to hash into).
    if reserved != 0
        || node_count > MAP_NODES_MAX
        || partition_count == 0
        || partition_count > MAP_PARTITIONS_MAX
    {
        return Err(malformed);
    }
    let mut at = HEADER_BYTES;
    let mut nodes = Vec::with_capacity(node_count);
    for _ in 0..node_count {
        let fixed = body.get(at..at + 10).ok_or(malformed)?;
        let node_id = u64::from_le_bytes(fixed[0..8].try_into().map_err(|_| malformed)?);
        let addr_len = u16::from_le_bytes([fixed[8], fixed[9]]) as usize;
        if addr_len > NODE_ADDR_BYTES_MAX || node_id == NO_LEADER {
            return Err(malformed);
        }
        at += 10;
        let addr = body.get(at..at + addr_len).ok_or(malformed)?;
        let client_addr = std::str::from_utf8(addr)
            .map_err(|_| malformed)?
            .to_string();
        at += addr_len;
        nodes.push(MapNode {
            node_id,
            client_addr,
        });
    }
    let rest = &body[at..];
    if rest.len() != partition_count * PARTITION_BYTES {
        return Err(malformed);
    }
    let partitions = rest
        .chunks_exact(PARTITION_BYTES)
        .map(|p| {
            let leader = u64::from_le_bytes(p[0..8].try_into().expect("8 bytes"));
            PartitionLeader {
                leader: (leader != NO_LEADER).then_some(leader),
                term: u64::from_le_bytes(p[8..16].try_into().expect("8 bytes")),
            }
        })
        .collect();
    let map = PartitionMap {
        cluster_id,
        nodes,
        partitions,
    };
    map.validate()?;
    Ok(map)
}

/// A map of nodes 1, 2 and 3 (at `127.0.0.1:740N`) with one (leader, term) per partition.
#[cfg(test)]
pub(crate) fn three_node_map(partitions: &[(Option<u64>, u64)]) -> PartitionMap {
    PartitionMap {
        cluster_id: 9,
        nodes: (1..=3)
            .map(|id| MapNode {
                node_id: id,
                client_addr: format!("127.0.0.1:74{id:02}"),
            })
            .collect(),
        partitions: partitions
            .iter()
            .map(|&(leader, term)| PartitionLeader { leader, term })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn three_nodes() -> PartitionMap {
        three_node_map(&[(Some(1), 4), (None, 5), (Some(3), 2)])
    }

    #[test]
    fn round_trips_and_answers_leaders() {
        let map = three_nodes();
        let mut out = BytesMut::new();
        encode_partition_map(&mut out, &map);
        let back = decode_partition_map(&out).expect("decodes");
        assert_eq!(back, map);
        assert_eq!(back.leader_of(0).map(|n| n.node_id), Some(1));
        assert_eq!(back.leader_of(1), None);
        assert_eq!(back.leader_of(2).map(|n| n.node_id), Some(3));
        assert_eq!(back.leader_of(3), None, "no such partition");
        assert_eq!(back.sole_leader(), None);
        let single = PartitionMap::single_node(0, 7, "h:1".into(), 4);
        assert_eq!(single.sole_leader().map(|n| n.node_id), Some(7));
    }

    #[test]
    fn the_newest_of_several_views_takes_each_leader_from_its_highest_term() {
        // Node 1 still shows itself leading partition 0 in term 4; node 2 knows node 3 won
        // term 5; for partition 1 node 1 knows the leader of a term node 2 has no leader of.
        let stale = three_node_map(&[(Some(1), 4), (Some(2), 6), (Some(3), 2)]);
        let fresh = three_node_map(&[(Some(3), 5), (None, 6), (None, 3)]);
        let merged = PartitionMap::newest_of(&[stale.clone(), fresh.clone()]).unwrap();
        assert_eq!(
            merged.partitions,
            three_node_map(&[(Some(3), 5), (Some(2), 6), (None, 3)]).partitions
        );
        // The order of the answers does not matter.
        let other_order = PartitionMap::newest_of(&[fresh, stale.clone()]).unwrap();
        assert_eq!(other_order.partitions, merged.partitions);
        // A node only one map lists is kept (a leader must be listed).
        let mut added = stale.clone();
        added.nodes.push(MapNode {
            node_id: 4,
            client_addr: "127.0.0.1:7404".into(),
        });
        added.partitions[2] = PartitionLeader {
            leader: Some(4),
            term: 9,
        };
        let merged = PartitionMap::newest_of(&[stale.clone(), added]).unwrap();
        assert_eq!(merged.leader_of(2).map(|n| n.node_id), Some(4));
        assert!(merged.validate().is_ok());
        // Maps of different partition counts do not merge; nothing gives nothing.
        let fewer = three_node_map(&[(Some(1), 4)]);
        assert_eq!(PartitionMap::newest_of(&[stale, fewer]), None);
        assert_eq!(PartitionMap::newest_of(&[]), None);
    }

    #[test]
    fn refuses_every_truncation_and_a_trailing_byte() {
        let mut out = BytesMut::new();
        encode_partition_map(&mut out, &three_nodes());
        for cut in 0..out.len() {
            assert_eq!(
                decode_partition_map(&out[..cut]),
                Err(ProtocolError::MalformedBody),
                "cut at {cut}"
            );
        }
        let mut longer = out.to_vec();
        longer.push(0);
        assert!(decode_partition_map(&longer).is_err());
    }

    #[test]
    fn refuses_a_leader_that_is_not_listed_and_duplicate_nodes() {
        let mut map = three_nodes();
        map.partitions[0].leader = Some(42);
        let mut out = BytesMut::new();
        encode_partition_map(&mut out, &map);
        assert!(decode_partition_map(&out).is_err());

        let mut map = three_nodes();
        map.nodes[2].node_id = 1;
        map.partitions[2].leader = Some(1);
        let mut out = BytesMut::new();
        encode_partition_map(&mut out, &map);
        assert!(decode_partition_map(&out).is_err());

        // No partitions: a client routing by it would hash accounts into nothing (a panic).
        let mut map = three_nodes();
        map.partitions.clear();
        let mut out = BytesMut::new();
        encode_partition_map(&mut out, &map);
        assert!(decode_partition_map(&out).is_err());
    }

    proptest! {
        /// Garbage never panics the decoder, and what decodes re-encodes to the same bytes.
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(map) = decode_partition_map(&bytes) {
                let mut out = BytesMut::new();
                encode_partition_map(&mut out, &map);
                prop_assert_eq!(&out[..], &bytes[..]);
            }
        }
    }
}
