//! The persisted Raft vote of a partition (term, voted-for node, committed flag), written
//! atomically (`atomic_file`). A node must never vote twice in a term, even across a crash, so
//! the vote is durable before it is acted on.
//!
//! Layout (21 bytes with the checksum): term (8, LE), voted-for node id (8, LE, zero when there
//! is none), flags (1: bit 0 committed, bit 1 voted-for present), CRC32C (4). "No vote cast" is
//! a flag rather than node id 0 because openraft reserves no node id: 0 is a valid one (its own
//! storage conformance suite votes for node 0).

use super::atomic_file::{damaged, le_u64, load_checked, save_checked, save_checked_async};
use super::error::LogError;
use std::path::Path;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vote {
    pub term: u64,
    /// The node this one voted for in `term` (itself when it is a candidate), `None` before
    /// it voted.
    pub voted_for: Option<u64>,
    /// The vote was granted by a quorum: `voted_for` is the leader of `term`.
    pub committed: bool,
}

const VOTE_FILE: &str = "vote";
/// term (8), voted-for node id (8), flags (1).
const VOTE_BYTES: usize = 17;
const COMMITTED: u8 = 1;
const HAS_VOTED_FOR: u8 = 2;

pub fn save_vote(dir: &Path, vote: &Vote) -> Result<(), LogError> {
    save_checked(dir, VOTE_FILE, &encode(vote))
}

/// `save_vote` through glommio, without blocking the executor (an election over many
/// partitions of one core saves many votes at once).
pub async fn save_vote_async(dir: &Path, vote: &Vote) -> Result<(), LogError> {
    save_checked_async(dir, VOTE_FILE, &encode(vote)).await
}

fn encode(vote: &Vote) -> [u8; VOTE_BYTES] {
    let mut bytes = [0u8; VOTE_BYTES];
    bytes[0..8].copy_from_slice(&vote.term.to_le_bytes());
    if let Some(node_id) = vote.voted_for {
        bytes[8..16].copy_from_slice(&node_id.to_le_bytes());
        bytes[16] |= HAS_VOTED_FOR;
    }
    if vote.committed {
        bytes[16] |= COMMITTED;
    }
    bytes
}

/// The saved vote, `None` if none was ever saved. A damaged vote file is an error.
pub fn load_vote(dir: &Path) -> Result<Option<Vote>, LogError> {
    let Some(bytes) = load_checked::<VOTE_BYTES>(dir, VOTE_FILE)? else {
        return Ok(None);
    };
    let path = dir.join(VOTE_FILE);
    let flags = bytes[16];
    if flags & !(COMMITTED | HAS_VOTED_FOR) != 0 {
        return Err(damaged(&path, &format!("unknown flags {flags:#04x}")));
    }
    let node_id = le_u64(&bytes, 8);
    let voted_for = if flags & HAS_VOTED_FOR != 0 {
        Some(node_id)
    } else if node_id == 0 {
        None
    } else {
        return Err(damaged(&path, "no vote cast, but a node id is set"));
    };
    Ok(Some(Vote {
        term: le_u64(&bytes, 0),
        voted_for,
        committed: flags & COMMITTED != 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_round_trips_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_vote(dir.path()).unwrap(), None);
        for vote in [
            Vote {
                term: 7,
                voted_for: Some(3),
                committed: true,
            },
            Vote {
                term: 8,
                voted_for: Some(0),
                committed: false,
            },
            Vote {
                term: 9,
                voted_for: None,
                committed: false,
            },
        ] {
            save_vote(dir.path(), &vote).unwrap();
            assert_eq!(load_vote(dir.path()).unwrap(), Some(vote));
        }
        let path = dir.path().join(VOTE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 21, "term, node id, flags, checksum");
        bytes[0] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(load_vote(dir.path()).is_err());
    }

    #[test]
    fn unknown_flags_or_a_node_without_a_vote_are_refused_even_with_a_good_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let mut payload = [0u8; VOTE_BYTES];
        payload[16] = 4;
        save_checked(dir.path(), VOTE_FILE, &payload).unwrap();
        assert!(load_vote(dir.path()).is_err());
        payload[16] = COMMITTED;
        payload[8] = 5;
        save_checked(dir.path(), VOTE_FILE, &payload).unwrap();
        let err = load_vote(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no vote cast"), "{err}");
    }
}
