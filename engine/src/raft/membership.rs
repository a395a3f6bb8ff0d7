//! The body of a `MEMBERSHIP` log record: openraft's `Membership` (the joint config of voter
//! sets, and the address of every voter and learner), encoded by hand. openraft's `serde`
//! feature stays off (RAFT_PLAN §1), and the layout is small and fixed enough to read without
//! a framework. All integers little-endian:
//!
//! ```text
//! u8   version                 1
//! u32  config count            1 (uniform) or 2 (joint consensus)
//!      per config: u32 voter count, then the voter ids (u64), strictly ascending
//! u32  node count
//!      per node, ids strictly ascending: u64 id, u16 length + UTF-8 raft_addr,
//!                                        u16 length + UTF-8 client_addr
//! ```
//!
//! Decoding takes bytes from disk (checksummed, but possibly from another build): every count
//! is checked against the bytes left before anything is allocated, and any leftover byte,
//! unsorted id or invalid UTF-8 is an error rather than a guess.

use crate::raft::types::{Membership, NodeAddr};
use std::collections::{BTreeMap, BTreeSet};

const VERSION: u8 = 1;

/// Appends the encoding of `membership` to `out`.
pub fn encode_membership(membership: &Membership, out: &mut Vec<u8>) {
    out.push(VERSION);
    let configs = membership.get_joint_config();
    put_len(out, configs.len());
    for config in configs {
        put_len(out, config.len());
        for id in config {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    let nodes: Vec<(&u64, &NodeAddr)> = membership.nodes().collect();
    put_len(out, nodes.len());
    for (id, node) in nodes {
        out.extend_from_slice(&id.to_le_bytes());
        put_str(out, &node.raft_addr);
        put_str(out, &node.client_addr);
    }
}

/// Why a membership body does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("membership record: {0}")]
pub struct MembershipDecodeError(String);

/// Decodes a body written by `encode_membership`.
pub fn decode_membership(body: &[u8]) -> Result<Membership, MembershipDecodeError> {
    let mut r = Reader { bytes: body };
    let version = r.u8()?;
    if version != VERSION {
        return Err(bad(format!("unsupported version {version}")));
    }
    let config_count = r.count(4)?;
    let mut configs = Vec::with_capacity(config_count);
    for _ in 0..config_count {
        let voter_count = r.count(8)?;
        let mut voters = BTreeSet::new();
        for _ in 0..voter_count {
            let id = r.u64()?;
            if voters.last().is_some_and(|last| *last >= id) {
                return Err(bad(format!("voter ids not ascending at {id}")));
            }
            voters.insert(id);
        }
        configs.push(voters);
    }
    let node_count = r.count(12)?;
    let mut nodes = BTreeMap::new();
    for _ in 0..node_count {
        let id = r.u64()?;
        if nodes.last_key_value().is_some_and(|(last, _)| *last >= id) {
            return Err(bad(format!("node ids not ascending at {id}")));
        }
        let raft_addr = r.str()?;
        let client_addr = r.str()?;
        nodes.insert(
            id,
            NodeAddr {
                raft_addr,
                client_addr,
            },
        );
    }
    if !r.bytes.is_empty() {
        return Err(bad(format!("{} bytes left over", r.bytes.len())));
    }
    if let Some(id) = configs.iter().flatten().find(|id| !nodes.contains_key(id)) {
        return Err(bad(format!("voter {id} has no node entry")));
    }
    Ok(Membership::new(configs, nodes))
}

fn bad(what: String) -> MembershipDecodeError {
    MembershipDecodeError(what)
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len).expect("a membership has far fewer than 2^32 members");
    out.extend_from_slice(&len.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("a node address is shorter than 64 KiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over the body that fails instead of reading past its end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MembershipDecodeError> {
        if self.bytes.len() < n {
            return Err(bad(format!(
                "cut short: {n} bytes wanted, {} left",
                self.bytes.len()
            )));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, MembershipDecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, MembershipDecodeError> {
        let mut b = [0u8; 2];
        b.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(b))
    }
    fn u32(&mut self) -> Result<u32, MembershipDecodeError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, MembershipDecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    /// A u32 count of items that take at least `min_item_bytes` each: more than the bytes
    /// left can hold is an error (before anything is allocated for them).
    fn count(&mut self, min_item_bytes: usize) -> Result<usize, MembershipDecodeError> {
        let count = self.u32()? as usize;
        if count.saturating_mul(min_item_bytes) > self.bytes.len() {
            return Err(bad(format!(
                "{count} items cannot fit in {} bytes",
                self.bytes.len()
            )));
        }
        Ok(count)
    }
    fn str(&mut self) -> Result<String, MembershipDecodeError> {
        let len = self.u16()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| bad("an address is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u64) -> NodeAddr {
        NodeAddr {
            raft_addr: format!("10.0.0.{n}:7001"),
            client_addr: format!("host-{n}:7000"),
        }
    }

    fn samples() -> Vec<Membership> {
        let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
        let with_learner: BTreeMap<u64, NodeAddr> = [1, 2, 3, 9].map(|n| (n, node(n))).into();
        vec![
            Membership::default(),
            Membership::new(vec![set(&[0])], ()),
            Membership::new(vec![set(&[1, 2, 3])], with_learner.clone()),
            Membership::new(vec![set(&[1, 2]), set(&[2, 3])], with_learner),
        ]
    }

    #[test]
    fn round_trips_uniform_joint_learners_and_default_nodes() {
        for membership in samples() {
            let mut body = Vec::new();
            encode_membership(&membership, &mut body);
            assert_eq!(decode_membership(&body), Ok(membership));
        }
    }

    #[test]
    fn every_cut_and_any_extra_byte_is_refused() {
        let membership = samples().pop().unwrap();
        let mut body = Vec::new();
        encode_membership(&membership, &mut body);
        for len in 0..body.len() {
            assert!(decode_membership(&body[..len]).is_err(), "cut at {len}");
        }
        body.push(0);
        assert!(decode_membership(&body).is_err());
    }

    #[test]
    fn huge_counts_unsorted_ids_and_unknown_versions_are_refused() {
        let mut huge = vec![VERSION];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = decode_membership(&huge).unwrap_err().to_string();
        assert!(err.contains("cannot fit"), "{err}");

        let mut unsorted = vec![VERSION];
        unsorted.extend_from_slice(&1u32.to_le_bytes());
        unsorted.extend_from_slice(&2u32.to_le_bytes());
        unsorted.extend_from_slice(&5u64.to_le_bytes());
        unsorted.extend_from_slice(&4u64.to_le_bytes());
        let err = decode_membership(&unsorted).unwrap_err().to_string();
        assert!(err.contains("not ascending"), "{err}");

        assert!(decode_membership(&[2, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
