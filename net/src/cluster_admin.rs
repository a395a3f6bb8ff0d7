//! Cluster administration over the client port (operation `ClusterChange`, docs/PROTOCOL.md):
//! `wallet cluster init`, `add-node`, `remove-node`, and the fault-injection switches of the
//! node link that partition tests use (refused unless the node allows fault injection).
//!
//! A membership change is made per partition by that partition's leader, so the node that
//! receives `AddNode` or `RemoveNode` changes the partitions it leads and answers
//! `NotLeader` for the others; `wallet` sends the change to every node until each partition
//! has answered `Ok` once. `Init` is made on the node it is sent to, for every partition,
//! with the node's configured `[[peers]]` and itself.
//!
//! `Elect` (`wallet cluster balance-leaders`) is not a membership change: the node it is sent
//! to campaigns for leadership of the partitions listed, and answers per partition.
//!
//! Wire format (little-endian):
//!
//! ```text
//! request  action u8 | reserved u8 × 7 | node_id u64 | u16 len + peer_addr | u16 len + client_addr
//! Elect    action u8 = 6 | reserved u8 × 3 | count u32 | count × partition u32
//! reply    count u32 | count × (partition u32 | outcome u8 | u16 len + message)
//! ```

use crate::frame::BODY_BYTES_MAX;
use crate::operation::ProtocolError;
use crate::partition_map::{NODE_ADDR_BYTES_MAX, NO_LEADER};
use bytes::{Buf, BufMut, BytesMut};

/// Longest address or message, in bytes.
pub const TEXT_BYTES_MAX: usize = 1024;
/// Most partitions in a reply (as a partition map).
pub const OUTCOMES_MAX: usize = crate::partition_map::MAP_PARTITIONS_MAX;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make the partitions of a fresh cluster Raft groups of the configured nodes. With
    /// `node_id` = `INIT_ALL`, every partition, here (this node then wins every first
    /// election); with `INIT_SHARE` (what `wallet cluster init` sends to every node), only
    /// this node's share, partition `p` going to the `p % n`-th configured node in id order,
    /// which then wins its first election: leaders start spread over the nodes. A partition
    /// of another node's share answers `NotLeader` with that node's client address as the
    /// message.
    Init = 1,
    /// Add `node_id` (at `peer_addr` for the node link, `client_addr` for clients).
    AddNode = 2,
    /// Remove `node_id` from every group.
    RemoveNode = 3,
    /// Fault injection: this node's link stops talking to `node_id` (both ways, as seen
    /// from here).
    Isolate = 4,
    /// Fault injection: undo every `Isolate`.
    HealAll = 5,
    /// This node campaigns for leadership of the partitions listed (its own layout:
    /// `encode_elect`; `ClusterRequest::Elect`). Answers `Ok` per partition once the campaign
    /// started (or when this node leads it already: the message says which), `Failed` when
    /// it cannot (not a voter of it, its Raft stopped, no such partition). Whether it won
    /// shows in the partition map a moment later.
    Elect = 6,
}

/// `ClusterChange::node_id` of an `Init` of every partition on the receiving node.
pub const INIT_ALL: u64 = 0;
/// `ClusterChange::node_id` of an `Init` of the receiving node's share of the partitions.
pub const INIT_SHARE: u64 = u64::MAX;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterChange {
    pub action: Action,
    pub node_id: u64,
    /// `host:port` of the node's link (core slot 0); `AddNode` only.
    pub peer_addr: String,
    /// `host:port` of the node's client listener; `AddNode` only.
    pub client_addr: String,
}

/// Any request of operation `ClusterChange`, as the server decodes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterRequest {
    Change(ClusterChange),
    /// `Action::Elect` of these partitions (at most `OUTCOMES_MAX`, no duplicates).
    Elect {
        partitions: Vec<u32>,
    },
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok = 0,
    /// This node does not lead the partition: send the change to its leader.
    NotLeader = 1,
    /// The change failed (the message says why).
    Failed = 2,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOutcome {
    pub partition: u32,
    pub outcome: Outcome,
    pub message: String,
}

/// Writes `s`, cut to at most `bytes_max` bytes (and `TEXT_BYTES_MAX`) at a character
/// boundary: a cut inside a character would make the whole reply undecodable.
fn put_text(out: &mut BytesMut, s: &str, bytes_max: usize) {
    let mut len = s.len().min(bytes_max).min(TEXT_BYTES_MAX);
    while !s.is_char_boundary(len) {
        len -= 1;
    }
    out.put_u16_le(len as u16);
    out.put_slice(&s.as_bytes()[..len]);
}

fn get_text(body: &mut &[u8]) -> Result<String, ProtocolError> {
    if body.remaining() < 2 {
        return Err(ProtocolError::MalformedBody);
    }
    let len = body.get_u16_le() as usize;
    if len > TEXT_BYTES_MAX || body.remaining() < len {
        return Err(ProtocolError::MalformedBody);
    }
    let text = std::str::from_utf8(&body[..len]).map_err(|_| ProtocolError::MalformedBody)?;
    let text = text.to_string();
    body.advance(len);
    Ok(text)
}

/// Panics on `Action::Elect`, which has its own layout (`encode_elect`).
pub fn encode_change(out: &mut BytesMut, change: &ClusterChange) {
    assert_ne!(
        change.action,
        Action::Elect,
        "Elect is encoded by encode_elect"
    );
    out.put_u8(change.action as u8);
    out.put_slice(&[0; 7]);
    out.put_u64_le(change.node_id);
    put_text(out, &change.peer_addr, TEXT_BYTES_MAX);
    put_text(out, &change.client_addr, TEXT_BYTES_MAX);
}

/// The body of an `Elect` of `partitions`. Panics past `OUTCOMES_MAX` partitions (a caller
/// lists partitions of a map, which has no more).
pub fn encode_elect(out: &mut BytesMut, partitions: &[u32]) {
    assert!(partitions.len() <= OUTCOMES_MAX, "too many partitions");
    out.put_u8(Action::Elect as u8);
    out.put_slice(&[0; 3]);
    out.put_u32_le(partitions.len() as u32);
    for p in partitions {
        out.put_u32_le(*p);
    }
}

/// Decodes any `ClusterChange` request: an `Elect` or a change (`decode_change`).
pub fn decode_request(body: &[u8]) -> Result<ClusterRequest, ProtocolError> {
    if body.first() != Some(&(Action::Elect as u8)) {
        return decode_change(body).map(ClusterRequest::Change);
    }
    let malformed = ProtocolError::MalformedBody;
    let header = body.get(..8).ok_or(malformed)?;
    if header[1..4] != [0; 3] {
        return Err(malformed);
    }
    let count = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let rest = &body[8..];
    if count > OUTCOMES_MAX || rest.len() != count * 4 {
        return Err(malformed);
    }
    let mut partitions: Vec<u32> = rest
        .chunks_exact(4)
        .map(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]))
        .collect();
    let listed = partitions.len();
    partitions.sort_unstable();
    partitions.dedup();
    if partitions.len() != listed {
        return Err(malformed);
    }
    Ok(ClusterRequest::Elect { partitions })
}

/// Decodes a membership or fault-injection change (every action but `Elect`).
pub fn decode_change(mut body: &[u8]) -> Result<ClusterChange, ProtocolError> {
    if body.remaining() < 16 {
        return Err(ProtocolError::MalformedBody);
    }
    let action = match body.get_u8() {
        1 => Action::Init,
        2 => Action::AddNode,
        3 => Action::RemoveNode,
        4 => Action::Isolate,
        5 => Action::HealAll,
        _ => return Err(ProtocolError::MalformedBody),
    };
    if body[..7] != [0; 7] {
        return Err(ProtocolError::MalformedBody);
    }
    body.advance(7);
    let node_id = body.get_u64_le();
    let peer_addr = get_text(&mut body)?;
    let client_addr = get_text(&mut body)?;
    if body.has_remaining() {
        return Err(ProtocolError::MalformedBody);
    }
    // A node added here lands in every partition's membership and from there in every
    // partition map, whose format holds no longer address and reserves id `NO_LEADER`:
    // refused now, not when a map is encoded (on every node, for as long as it is a member).
    let member_fits = client_addr.len() <= NODE_ADDR_BYTES_MAX
        && peer_addr.len() <= NODE_ADDR_BYTES_MAX
        && node_id != NO_LEADER
        && node_id != 0;
    if action == Action::AddNode && !member_fits {
        return Err(ProtocolError::MalformedBody);
    }
    Ok(ClusterChange {
        action,
        node_id,
        peer_addr,
        client_addr,
    })
}

/// Bytes of an outcome besides its message: partition u32, outcome u8, message length u16.
const OUTCOME_FIXED_BYTES: usize = 7;

/// The reply fits one frame whatever the messages say: when they would not fit whole, each
/// gets an equal share of the body (`TEXT_BYTES_MAX` at most), the rest of it cut.
pub fn encode_outcomes(out: &mut BytesMut, outcomes: &[PartitionOutcome]) {
    assert!(outcomes.len() <= OUTCOMES_MAX);
    let start = out.len();
    let whole_bytes: usize = outcomes
        .iter()
        .map(|o| OUTCOME_FIXED_BYTES + o.message.len().min(TEXT_BYTES_MAX))
        .sum();
    let message_bytes_max = if 4 + whole_bytes <= BODY_BYTES_MAX {
        TEXT_BYTES_MAX
    } else {
        ((BODY_BYTES_MAX - 4) / outcomes.len()).saturating_sub(OUTCOME_FIXED_BYTES)
    };
    out.put_u32_le(outcomes.len() as u32);
    for o in outcomes {
        out.put_u32_le(o.partition);
        out.put_u8(o.outcome as u8);
        put_text(out, &o.message, message_bytes_max);
    }
    assert!(out.len() - start <= BODY_BYTES_MAX);
}

pub fn decode_outcomes(mut body: &[u8]) -> Result<Vec<PartitionOutcome>, ProtocolError> {
    if body.remaining() < 4 {
        return Err(ProtocolError::MalformedBody);
    }
    let count = body.get_u32_le() as usize;
    // Each outcome takes at least its fixed bytes: check before allocating.
    if count > OUTCOMES_MAX || count.saturating_mul(OUTCOME_FIXED_BYTES) > body.remaining() {
        return Err(ProtocolError::MalformedBody);
    }
    let mut outcomes = Vec::with_capacity(count);
    for _ in 0..count {
        if body.remaining() < 5 {
            return Err(ProtocolError::MalformedBody);
        }
        let partition = body.get_u32_le();
        let outcome = match body.get_u8() {
            0 => Outcome::Ok,
            1 => Outcome::NotLeader,
            2 => Outcome::Failed,
            _ => return Err(ProtocolError::MalformedBody),
        };
        let message = get_text(&mut body)?;
        outcomes.push(PartitionOutcome {
            partition,
            outcome,
            message,
        });
    }
    if body.has_remaining() {
        return Err(ProtocolError::MalformedBody);
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_and_outcomes_round_trip() {
        let change = ClusterChange {
            action: Action::AddNode,
            node_id: 4,
            peer_addr: "127.0.0.1:7501".into(),
            client_addr: "127.0.0.1:7401".into(),
        };
        let mut out = BytesMut::new();
        encode_change(&mut out, &change);
        assert_eq!(decode_change(&out).unwrap(), change);
        let outcomes = vec![
            PartitionOutcome {
                partition: 0,
                outcome: Outcome::Ok,
                message: String::new(),
            },
            PartitionOutcome {
                partition: 1,
                outcome: Outcome::NotLeader,
                message: "led by node 2".into(),
            },
        ];
        let mut out = BytesMut::new();
        encode_outcomes(&mut out, &outcomes);
        assert_eq!(decode_outcomes(&out).unwrap(), outcomes);
    }

    #[test]
    fn a_reply_of_every_partition_with_long_messages_fits_a_frame_and_decodes() {
        // "€" is three bytes: a cut at `TEXT_BYTES_MAX` (1024) would split one.
        let message = "€".repeat(TEXT_BYTES_MAX);
        for count in [1, 3, 1000, OUTCOMES_MAX] {
            let outcomes: Vec<PartitionOutcome> = (0..count as u32)
                .map(|partition| PartitionOutcome {
                    partition,
                    outcome: Outcome::Failed,
                    message: message.clone(),
                })
                .collect();
            let mut out = BytesMut::new();
            encode_outcomes(&mut out, &outcomes);
            assert!(
                out.len() <= BODY_BYTES_MAX,
                "{count} outcomes: {} bytes",
                out.len()
            );
            let decoded = decode_outcomes(&out).expect("the reply decodes");
            assert_eq!(decoded.len(), count);
            for d in &decoded {
                assert!(message.starts_with(&d.message));
                assert!(!d.message.is_empty());
            }
        }
    }

    #[test]
    fn hostile_bodies_are_refused() {
        let change = ClusterChange {
            action: Action::Init,
            node_id: 0,
            peer_addr: String::new(),
            client_addr: String::new(),
        };
        let mut out = BytesMut::new();
        encode_change(&mut out, &change);
        let mut bad = out.to_vec();
        bad[0] = 9;
        assert!(decode_change(&bad).is_err(), "unknown action");
        let mut bad = out.to_vec();
        bad.push(0);
        assert!(decode_change(&bad).is_err(), "trailing bytes");
        assert!(decode_change(&out[..10]).is_err(), "truncated");
        // A reply that claims more outcomes than it carries.
        assert!(decode_outcomes(&[255, 255, 255, 255, 0]).is_err());
    }

    /// A node that a partition map could not hold is refused at the door: its address longer
    /// than a map's, or an id the map reserves (or 0, which no node has).
    #[test]
    fn an_added_node_must_fit_the_partition_map() {
        let add = |node_id: u64, peer: usize, client: usize| {
            let mut out = BytesMut::new();
            encode_change(
                &mut out,
                &ClusterChange {
                    action: Action::AddNode,
                    node_id,
                    peer_addr: "p".repeat(peer),
                    client_addr: "c".repeat(client),
                },
            );
            decode_change(&out)
        };
        assert!(add(4, NODE_ADDR_BYTES_MAX, NODE_ADDR_BYTES_MAX).is_ok());
        assert!(
            add(4, 10, NODE_ADDR_BYTES_MAX + 1).is_err(),
            "client address"
        );
        assert!(add(4, NODE_ADDR_BYTES_MAX + 1, 10).is_err(), "peer address");
        assert!(add(NO_LEADER, 10, 10).is_err(), "the reserved id");
        assert!(add(0, 10, 10).is_err(), "node id 0");
    }

    #[test]
    fn elect_round_trips_beside_the_changes() {
        let mut out = BytesMut::new();
        encode_elect(&mut out, &[0, 3, 2]);
        assert_eq!(
            decode_request(&out).unwrap(),
            ClusterRequest::Elect {
                partitions: vec![0, 2, 3]
            }
        );
        assert!(decode_change(&out).is_err(), "not a membership change");
        let change = ClusterChange {
            action: Action::RemoveNode,
            node_id: 3,
            peer_addr: String::new(),
            client_addr: String::new(),
        };
        let mut out = BytesMut::new();
        encode_change(&mut out, &change);
        assert_eq!(
            decode_request(&out).unwrap(),
            ClusterRequest::Change(change)
        );
    }

    #[test]
    fn hostile_elects_are_refused() {
        let mut out = BytesMut::new();
        encode_elect(&mut out, &[1, 2]);
        for cut in 0..out.len() {
            assert!(decode_request(&out[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = out.to_vec();
        longer.push(0);
        assert!(decode_request(&longer).is_err(), "trailing byte");
        let mut bad = out.to_vec();
        bad[2] = 1;
        assert!(decode_request(&bad).is_err(), "reserved byte");
        // A count far beyond the bytes (and beyond the bound) allocates nothing.
        assert!(decode_request(&[6, 0, 0, 0, 255, 255, 255, 255]).is_err());
        let mut dup = BytesMut::new();
        encode_elect(&mut dup, &[4, 4]);
        assert!(decode_request(&dup).is_err(), "a partition twice");
    }

    proptest::proptest! {
        /// Garbage never panics the request decoder.
        #[test]
        fn hostile_requests_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = decode_request(&bytes);
            let mut elect = bytes.clone();
            if let Some(first) = elect.first_mut() {
                *first = Action::Elect as u8;
            }
            let _ = decode_request(&elect);
        }
    }
}
