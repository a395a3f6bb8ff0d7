//! Each partition's Raft group as one node sees it (operation `RaftStatus`, docs/PROTOCOL.md):
//! term, leader, this node's role, its log positions, the commit index and, on the leader,
//! how far every member has replicated. `wallet cluster status` asks each partition's
//! leader for it to show the commit index and every follower's lag.
//!
//! The reply is bounded by the frame body limit, not by the partition count: a node with
//! many partitions answers the ones from `first` on that fit, and says how many it has in
//! all, so the client asks again from where the answer stopped (`Client::raft_status`).
//!
//! Versioned: the request names the highest reply version the client reads, the reply says
//! which version it is. A later version may add fields; a server answers in the newest
//! version both sides know, so old clients keep working.
//!
//! Wire format (little-endian):
//!
//! ```text
//! request  version u8 | reserved u8 × 3 | first u32
//! reply    version u8 | reserved u8 × 3 | partition_total u32 | node_id u64 | count u32
//!          | reserved u32
//!          count × (partition u32 | role u8 | member_count u8 | reserved u16
//!                   | term u64 | leader u64 (NO_LEADER: none known)
//!                   | last_log_index u64 | applied_index u64 | commit_index u64
//!                   member_count × (node_id u64 | flags u8 | reserved u8 × 7 | matched_index u64))
//! ```
//!
//! Member flags: bit 0 voter (else a learner), bit 1 `matched_index` known (only the leader
//! knows it; without the bit `matched_index` is 0).

use crate::operation::ProtocolError;
use crate::partition_map::NO_LEADER;
use bytes::{BufMut, BytesMut};

/// The reply version this code writes and reads.
pub const VERSION: u8 = 1;
/// Most members listed per partition (a group has 1, 3 or 5 voters, plus a learner or two
/// while a node is added).
pub const MEMBERS_MAX: usize = 16;
/// Most partitions a node has (the engine's bound).
pub const PARTITIONS_MAX: usize = 4096;
pub const REQUEST_BYTES: usize = 8;
pub const REPLY_HEADER_BYTES: usize = 24;
pub const PARTITION_BYTES: usize = 48;
pub const MEMBER_BYTES: usize = 24;

const VOTER: u8 = 1 << 0;
const MATCHED_KNOWN: u8 = 1 << 1;

/// This node's part in a partition's group.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// No replication: the node alone holds the partition (it leads it, term 0, no members).
    Standalone = 0,
    Learner = 1,
    Follower = 2,
    Candidate = 3,
    Leader = 4,
    /// The partition's Raft stopped (a storage failure) or does not answer.
    Shutdown = 5,
}

impl Role {
    fn from_u8(value: u8) -> Option<Role> {
        Some(match value {
            0 => Role::Standalone,
            1 => Role::Learner,
            2 => Role::Follower,
            3 => Role::Candidate,
            4 => Role::Leader,
            5 => Role::Shutdown,
            _ => return None,
        })
    }

    /// Lower-case name, as `wallet --json` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Learner => "learner",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
            Role::Shutdown => "shutdown",
        }
    }
}

/// One member of a partition's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub node_id: u64,
    /// A voter (else a learner).
    pub voter: bool,
    /// On the leader: the last log index known to be on that member (the leader's own entry
    /// is its last log index). `None` on other nodes.
    pub matched_index: Option<u64>,
}

/// One partition's group as the answering node sees it. Indexes are walletd log indexes
/// (the first entry is 1; 0 is none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionRaft {
    pub partition: u32,
    pub role: Role,
    pub term: u64,
    /// The node this node believes leads the group, if any.
    pub leader: Option<u64>,
    /// The last entry in this node's log.
    pub last_log_index: u64,
    /// The last entry applied to this node's state.
    pub applied_index: u64,
    /// On the leader: the highest index a majority of the voters hold (at least
    /// `applied_index`). On any other node: its `applied_index` (a follower does not know the
    /// group's commit index; what it applied is committed, at most a heartbeat behind).
    pub commit_index: u64,
    /// The members (at most `MEMBERS_MAX`).
    pub members: Vec<Member>,
}

impl PartitionRaft {
    /// Entries `member` is behind this (leader's) log: `last_log_index - matched_index`.
    /// `None` where the matched index is unknown (not the leader's answer).
    pub fn lag_entries(&self, member: &Member) -> Option<u64> {
        member
            .matched_index
            .map(|m| self.last_log_index.saturating_sub(m))
    }

    fn encoded_len(&self) -> usize {
        PARTITION_BYTES + self.members.len() * MEMBER_BYTES
    }
}

/// A node's answer: some of its partitions, from the one asked for on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftStatusReply {
    pub version: u8,
    pub node_id: u64,
    /// How many partitions the node has (the answer may hold fewer: ask again from after the
    /// last one listed).
    pub partition_total: u32,
    /// In increasing partition order.
    pub partitions: Vec<PartitionRaft>,
}

/// The request: answers from partition `first` on.
pub fn encode_request(out: &mut BytesMut, first: u32) {
    out.put_u8(VERSION);
    out.put_slice(&[0; 3]);
    out.put_u32_le(first);
}

/// Returns `(version to answer in, first partition)`.
pub fn decode_request(body: &[u8]) -> Result<(u8, u32), ProtocolError> {
    let malformed = ProtocolError::MalformedBody;
    if body.len() != REQUEST_BYTES || body[0] == 0 || body[1..4] != [0; 3] {
        return Err(malformed);
    }
    let first = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
    Ok((body[0].min(VERSION), first))
}

/// How many of `partitions` (from the front) fit a reply body of `body_max` bytes.
pub fn fitting(partitions: &[PartitionRaft], body_max: usize) -> usize {
    let mut used = REPLY_HEADER_BYTES;
    partitions
        .iter()
        .take_while(|p| {
            used += p.encoded_len();
            used <= body_max
        })
        .count()
}

/// Panics if the reply breaks its own limits: the server builds it, so that is a bug there
/// (it truncates members to `MEMBERS_MAX` and lists what `fitting` allows).
pub fn encode_reply(out: &mut BytesMut, reply: &RaftStatusReply) {
    assert!(reply.partitions.len() <= PARTITIONS_MAX);
    out.put_u8(reply.version);
    out.put_slice(&[0; 3]);
    out.put_u32_le(reply.partition_total);
    out.put_u64_le(reply.node_id);
    out.put_u32_le(reply.partitions.len() as u32);
    out.put_u32_le(0);
    for p in &reply.partitions {
        assert!(p.members.len() <= MEMBERS_MAX, "too many members");
        out.put_u32_le(p.partition);
        out.put_u8(p.role as u8);
        out.put_u8(p.members.len() as u8);
        out.put_u16_le(0);
        out.put_u64_le(p.term);
        out.put_u64_le(p.leader.unwrap_or(NO_LEADER));
        out.put_u64_le(p.last_log_index);
        out.put_u64_le(p.applied_index);
        out.put_u64_le(p.commit_index);
        for m in &p.members {
            let mut flags = 0;
            if m.voter {
                flags |= VOTER;
            }
            if m.matched_index.is_some() {
                flags |= MATCHED_KNOWN;
            }
            out.put_u64_le(m.node_id);
            out.put_u8(flags);
            out.put_slice(&[0; 7]);
            out.put_u64_le(m.matched_index.unwrap_or(0));
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Decodes a reply of version `VERSION`, refusing anything out of bounds, truncated,
/// trailing or inconsistent: an unknown role or flag, a nonzero reserved byte, partitions
/// out of order or beyond the total, a member listed twice, a matched index without its
/// flag. Callers index nothing by what it carries without these checks having passed.
pub fn decode_reply(body: &[u8]) -> Result<RaftStatusReply, ProtocolError> {
    let malformed = ProtocolError::MalformedBody;
    let header = body.get(..REPLY_HEADER_BYTES).ok_or(malformed)?;
    let version = header[0];
    if version != VERSION || header[1..4] != [0; 3] || u32_at(header, 20) != 0 {
        return Err(malformed);
    }
    let partition_total = u32_at(header, 4);
    let node_id = u64_at(header, 8);
    let count = u32_at(header, 16) as usize;
    let mut rest = &body[REPLY_HEADER_BYTES..];
    // Each partition takes at least PARTITION_BYTES: check before allocating.
    if count > PARTITIONS_MAX
        || count > partition_total as usize
        || count.saturating_mul(PARTITION_BYTES) > rest.len()
    {
        return Err(malformed);
    }
    let mut partitions: Vec<PartitionRaft> = Vec::with_capacity(count);
    for _ in 0..count {
        let fixed = rest.get(..PARTITION_BYTES).ok_or(malformed)?;
        let partition = u32_at(fixed, 0);
        let role = Role::from_u8(fixed[4]).ok_or(malformed)?;
        let member_count = fixed[5] as usize;
        let in_order = partitions.last().is_none_or(|p| p.partition < partition);
        if member_count > MEMBERS_MAX
            || fixed[6..8] != [0; 2]
            || partition >= partition_total
            || !in_order
        {
            return Err(malformed);
        }
        let leader = u64_at(fixed, 16);
        let mut p = PartitionRaft {
            partition,
            role,
            term: u64_at(fixed, 8),
            leader: (leader != NO_LEADER).then_some(leader),
            last_log_index: u64_at(fixed, 24),
            applied_index: u64_at(fixed, 32),
            commit_index: u64_at(fixed, 40),
            members: Vec::with_capacity(member_count),
        };
        rest = &rest[PARTITION_BYTES..];
        let listed = rest.get(..member_count * MEMBER_BYTES).ok_or(malformed)?;
        for m in listed.chunks_exact(MEMBER_BYTES) {
            let node_id = u64_at(m, 0);
            let flags = m[8];
            let matched = u64_at(m, 16);
            let known = flags & MATCHED_KNOWN != 0;
            if flags & !(VOTER | MATCHED_KNOWN) != 0
                || m[9..16] != [0; 7]
                || (!known && matched != 0)
                || p.members.iter().any(|o| o.node_id == node_id)
            {
                return Err(malformed);
            }
            p.members.push(Member {
                node_id,
                voter: flags & VOTER != 0,
                matched_index: known.then_some(matched),
            });
        }
        rest = &rest[member_count * MEMBER_BYTES..];
        partitions.push(p);
    }
    if !rest.is_empty() {
        return Err(malformed);
    }
    Ok(RaftStatusReply {
        version,
        node_id,
        partition_total,
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> RaftStatusReply {
        RaftStatusReply {
            version: VERSION,
            node_id: 1,
            partition_total: 3,
            partitions: vec![
                PartitionRaft {
                    partition: 0,
                    role: Role::Leader,
                    term: 4,
                    leader: Some(1),
                    last_log_index: 120,
                    applied_index: 118,
                    commit_index: 119,
                    members: vec![
                        Member {
                            node_id: 1,
                            voter: true,
                            matched_index: Some(120),
                        },
                        Member {
                            node_id: 2,
                            voter: true,
                            matched_index: Some(119),
                        },
                        Member {
                            node_id: 4,
                            voter: false,
                            matched_index: Some(0),
                        },
                    ],
                },
                PartitionRaft {
                    partition: 2,
                    role: Role::Follower,
                    term: 3,
                    leader: None,
                    last_log_index: 7,
                    applied_index: 7,
                    commit_index: 7,
                    members: vec![Member {
                        node_id: 3,
                        voter: true,
                        matched_index: None,
                    }],
                },
            ],
        }
    }

    fn encoded(reply: &RaftStatusReply) -> BytesMut {
        let mut out = BytesMut::new();
        encode_reply(&mut out, reply);
        out
    }

    #[test]
    fn round_trips_and_measures_lag() {
        let reply = sample();
        let out = encoded(&reply);
        let back = decode_reply(&out).expect("decodes");
        assert_eq!(back, reply);
        let leader = &back.partitions[0];
        assert_eq!(leader.lag_entries(&leader.members[1]), Some(1));
        assert_eq!(leader.lag_entries(&leader.members[2]), Some(120));
        let follower = &back.partitions[1];
        assert_eq!(follower.lag_entries(&follower.members[0]), None);

        let mut request = BytesMut::new();
        encode_request(&mut request, 5);
        assert_eq!(decode_request(&request), Ok((VERSION, 5)));
        // A newer client is answered in this version; version 0 does not exist.
        request[0] = VERSION + 1;
        assert_eq!(decode_request(&request), Ok((VERSION, 5)));
        request[0] = 0;
        assert!(decode_request(&request).is_err());
        assert!(decode_request(&request[..7]).is_err());
    }

    #[test]
    fn refuses_every_truncation_a_trailing_byte_and_each_inconsistency() {
        let out = encoded(&sample());
        for cut in 0..out.len() {
            assert_eq!(
                decode_reply(&out[..cut]),
                Err(ProtocolError::MalformedBody),
                "cut at {cut}"
            );
        }
        let mut longer = out.to_vec();
        longer.push(0);
        assert!(decode_reply(&longer).is_err(), "trailing byte");

        let member0 = REPLY_HEADER_BYTES + PARTITION_BYTES;
        let corrupt = |at: usize, value: u8| {
            let mut bad = out.to_vec();
            bad[at] = value;
            decode_reply(&bad)
        };
        assert!(corrupt(0, 2).is_err(), "unknown version");
        assert!(corrupt(1, 1).is_err(), "reserved header byte");
        assert!(corrupt(4, 2).is_err(), "partition 2 beyond a total of 2");
        assert!(corrupt(16, 200).is_err(), "count beyond the bytes");
        assert!(corrupt(REPLY_HEADER_BYTES + 4, 6).is_err(), "unknown role");
        assert!(
            corrupt(REPLY_HEADER_BYTES + 5, 17).is_err(),
            "members beyond bound"
        );
        assert!(corrupt(REPLY_HEADER_BYTES + 6, 1).is_err(), "reserved");
        assert!(corrupt(member0 + 8, 4 | 1).is_err(), "unknown flag");
        assert!(corrupt(member0 + 9, 1).is_err(), "reserved member byte");
        assert!(corrupt(member0 + MEMBER_BYTES, 1).is_err(), "node 1 twice");
        // Partition 2 listed before partition 0.
        let mut reply = sample();
        reply.partitions.reverse();
        assert!(decode_reply(&encoded(&reply)).is_err(), "out of order");
        // A matched index without its flag.
        let mut bad = out.to_vec();
        bad[member0 + 8] = VOTER;
        assert!(decode_reply(&bad).is_err(), "matched 120 without the flag");
    }

    #[test]
    fn a_long_answer_is_cut_to_the_body_limit() {
        let mut many = Vec::new();
        for p in 0..PARTITIONS_MAX as u32 {
            let mut one = sample().partitions[0].clone();
            one.partition = p;
            one.members = vec![one.members[0]; MEMBERS_MAX];
            for (i, m) in one.members.iter_mut().enumerate() {
                m.node_id = i as u64;
            }
            many.push(one);
        }
        let fit = fitting(&many, crate::frame::BODY_BYTES_MAX);
        assert!(fit > 0 && fit < many.len(), "{fit}");
        many.truncate(fit);
        let reply = RaftStatusReply {
            version: VERSION,
            node_id: 1,
            partition_total: PARTITIONS_MAX as u32,
            partitions: many,
        };
        let out = encoded(&reply);
        assert!(out.len() <= crate::frame::BODY_BYTES_MAX);
        assert_eq!(decode_reply(&out).expect("decodes"), reply);
    }

    proptest! {
        /// Garbage never panics the decoder, and what decodes re-encodes to the same bytes.
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(reply) = decode_reply(&bytes) {
                prop_assert_eq!(&encoded(&reply)[..], &bytes[..]);
            }
            let _ = decode_request(&bytes);
        }

        /// Garbage after a valid header (version 1, small counts) reaches the deep checks.
        #[test]
        fn hostile_partitions_never_panic(
            total in 0u32..8,
            count in 0u32..4,
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = vec![VERSION, 0, 0, 0];
            bytes.extend_from_slice(&total.to_le_bytes());
            bytes.extend_from_slice(&9u64.to_le_bytes());
            bytes.extend_from_slice(&count.to_le_bytes());
            bytes.extend_from_slice(&0u32.to_le_bytes());
            bytes.extend_from_slice(&tail);
            if let Ok(reply) = decode_reply(&bytes) {
                prop_assert_eq!(&encoded(&reply)[..], &bytes[..]);
            }
        }
    }
}
