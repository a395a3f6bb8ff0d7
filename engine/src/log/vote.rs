//! The persisted Raft vote of a partition (term, voted-for node, committed flag), written
//! atomically: temp file, fsync, rename, fsync directory. A node must never vote twice in a
//! term, even across a crash, so the vote is durable before it is acted on.

use super::error::LogError;
use super::scan::sync_dir;
use std::io::Write;
use std::path::Path;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vote {
    pub term: u64,
    pub node_id: u64,
    pub committed: bool,
}

const VOTE_FILE: &str = "vote";

pub fn save_vote(dir: &Path, vote: &Vote) -> Result<(), LogError> {
    let tmp = dir.join("vote.tmp");
    let mut bytes = Vec::with_capacity(21);
    bytes.extend_from_slice(&vote.term.to_le_bytes());
    bytes.extend_from_slice(&vote.node_id.to_le_bytes());
    bytes.push(vote.committed as u8);
    let checksum = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    let mut file = std::fs::File::create(&tmp).map_err(|e| LogError::io(&tmp, e))?;
    file.write_all(&bytes).map_err(|e| LogError::io(&tmp, e))?;
    file.sync_all().map_err(|e| LogError::io(&tmp, e))?;
    let path = dir.join(VOTE_FILE);
    std::fs::rename(&tmp, &path).map_err(|e| LogError::io(&path, e))?;
    sync_dir(dir)
}

/// The saved vote, `None` if none was ever saved. A damaged vote file is an error.
pub fn load_vote(dir: &Path) -> Result<Option<Vote>, LogError> {
    let path = dir.join(VOTE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io(&path, e)),
    };
    let damaged = || {
        LogError::io(
            &path,
            std::io::Error::other("vote file is damaged (bad length or checksum)"),
        )
    };
    if bytes.len() != 21 {
        return Err(damaged());
    }
    let checksum = u32::from_le_bytes([bytes[17], bytes[18], bytes[19], bytes[20]]);
    if crc32c::crc32c(&bytes[..17]) != checksum || bytes[16] > 1 {
        return Err(damaged());
    }
    let mut term = [0u8; 8];
    term.copy_from_slice(&bytes[0..8]);
    let mut node = [0u8; 8];
    node.copy_from_slice(&bytes[8..16]);
    Ok(Some(Vote {
        term: u64::from_le_bytes(term),
        node_id: u64::from_le_bytes(node),
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
        bytes[0] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(load_vote(dir.path()).is_err());
    }
}
