//! The persisted Raft vote of a partition (term, voted-for node, committed flag), written
//! atomically (`atomic_file`). A node must never vote twice in a term, even across a crash, so
//! the vote is durable before it is acted on.

use super::atomic_file::{damaged, le_u64, load_checked, save_checked};
use super::error::LogError;
use std::path::Path;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vote {
    pub term: u64,
    pub node_id: u64,
    pub committed: bool,
}

const VOTE_FILE: &str = "vote";
/// term (8), node id (8), committed (1).
const VOTE_BYTES: usize = 17;

pub fn save_vote(dir: &Path, vote: &Vote) -> Result<(), LogError> {
    let mut bytes = [0u8; VOTE_BYTES];
    bytes[0..8].copy_from_slice(&vote.term.to_le_bytes());
    bytes[8..16].copy_from_slice(&vote.node_id.to_le_bytes());
    bytes[16] = vote.committed as u8;
    save_checked(dir, VOTE_FILE, &bytes)
}

/// The saved vote, `None` if none was ever saved. A damaged vote file is an error.
pub fn load_vote(dir: &Path) -> Result<Option<Vote>, LogError> {
    let Some(bytes) = load_checked::<VOTE_BYTES>(dir, VOTE_FILE)? else {
        return Ok(None);
    };
    if bytes[16] > 1 {
        return Err(damaged(
            &dir.join(VOTE_FILE),
            "committed flag is not 0 or 1",
        ));
    }
    Ok(Some(Vote {
        term: le_u64(&bytes, 0),
        node_id: le_u64(&bytes, 8),
        committed: bytes[16] == 1,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_round_trips_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_vote(dir.path()).unwrap(), None);
        let vote = Vote {
            term: 7,
            node_id: 3,
            committed: true,
        };
        save_vote(dir.path(), &vote).unwrap();
        assert_eq!(load_vote(dir.path()).unwrap(), Some(vote));
        let path = dir.path().join(VOTE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 21, "the on-disk format is unchanged");
        bytes[0] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(load_vote(dir.path()).is_err());
    }
}
