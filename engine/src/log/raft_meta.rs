//! `raft_meta`: the Raft log pointers that the segments cannot hold themselves, in a small file
//! beside them, replaced atomically (`atomic_file`).
//!
//! - `last_purged`: the id of the last entry a purge removed. Openraft's log state needs its
//!   term even after the record is gone, and a purge deletes only whole segments, so records at
//!   or below it may survive on disk: they are never served again. It is saved *before* any
//!   segment is deleted, so a crash in between leaves deletable leftovers, never a log that
//!   starts later than it says.
//! - `committed`: a lower bound of the commit index (openraft's `save_committed`). It may lag;
//!   openraft re-applies up to it at start.
//!
//! Layout (38 bytes with the checksum):
//!
//! ```text
//! offset size field
//!  0     1    version      1
//!  1     1    flags        bit 0: last_purged present, bit 1: committed present
//!  2     8    last_purged.term     (zero when absent)
//! 10     8    last_purged.index
//! 18     8    committed.term       (zero when absent)
//! 26     8    committed.index
//! 34     4    CRC32C of bytes 0..34
//! ```

use super::atomic_file::{damaged, le_u64, load_checked, save_checked, save_checked_async};
use super::error::LogError;
use std::path::Path;

pub const RAFT_META_FILE: &str = "raft_meta";
const VERSION: u8 = 1;
const PAYLOAD_BYTES: usize = 34;
const HAS_LAST_PURGED: u8 = 1;
const HAS_COMMITTED: u8 = 2;

/// A log entry's id as Raft orders it: by term, then index (field order gives the derived
/// `Ord` that meaning).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub term: u64,
    pub index: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaftMeta {
    pub last_purged: Option<EntryId>,
    pub committed: Option<EntryId>,
}

impl RaftMeta {
    /// The lowest index a purge left readable: right after `last_purged`, 1 when nothing was
    /// purged (log indexes start at 1).
    pub fn first_unpurged_index(&self) -> u64 {
        self.last_purged.map_or(1, |p| p.index.saturating_add(1))
    }
}

/// Replaces the `raft_meta` file of `dir` durably (temp file, fsync, rename, fsync of `dir`),
/// with blocking std::fs (tools and tests).
pub fn save_raft_meta(dir: &Path, meta: &RaftMeta) -> Result<(), LogError> {
    save_checked(dir, RAFT_META_FILE, &encode(meta))
}

/// `save_raft_meta` through glommio, without blocking the executor.
pub async fn save_raft_meta_async(dir: &Path, meta: &RaftMeta) -> Result<(), LogError> {
    save_checked_async(dir, RAFT_META_FILE, &encode(meta)).await
}

fn encode(meta: &RaftMeta) -> [u8; PAYLOAD_BYTES] {
    let mut bytes = [0u8; PAYLOAD_BYTES];
    bytes[0] = VERSION;
    for (id, flag, at) in [
        (meta.last_purged, HAS_LAST_PURGED, 2),
        (meta.committed, HAS_COMMITTED, 18),
    ] {
        if let Some(id) = id {
            bytes[1] |= flag;
            bytes[at..at + 8].copy_from_slice(&id.term.to_le_bytes());
            bytes[at + 8..at + 16].copy_from_slice(&id.index.to_le_bytes());
        }
    }
    bytes
}

/// The saved pointers, `None` when no `raft_meta` file exists (a log that was never purged and
/// never told a commit). A file that is cut short, fails its checksum, has another version or
/// sets unknown flags is an error naming it.
pub fn load_raft_meta(dir: &Path) -> Result<Option<RaftMeta>, LogError> {
    let Some(bytes) = load_checked::<PAYLOAD_BYTES>(dir, RAFT_META_FILE)? else {
        return Ok(None);
    };
    let path = dir.join(RAFT_META_FILE);
    if bytes[0] != VERSION {
        return Err(damaged(
            &path,
            &format!("unsupported raft_meta version {}", bytes[0]),
        ));
    }
    if bytes[1] & !(HAS_LAST_PURGED | HAS_COMMITTED) != 0 {
        return Err(damaged(&path, &format!("unknown flags {:#04x}", bytes[1])));
    }
    let id_at = |flag: u8, at: usize| -> Result<Option<EntryId>, LogError> {
        let id = EntryId {
            term: le_u64(&bytes, at),
            index: le_u64(&bytes, at + 8),
        };
        if bytes[1] & flag != 0 {
            Ok(Some(id))
        } else if id == (EntryId { term: 0, index: 0 }) {
            Ok(None)
        } else {
            Err(damaged(&path, "an absent id has non-zero bytes"))
        }
    };
    Ok(Some(RaftMeta {
        last_purged: id_at(HAS_LAST_PURGED, 2)?,
        committed: id_at(HAS_COMMITTED, 18)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(term: u64, index: u64) -> EntryId {
        EntryId { term, index }
    }

    fn saved(meta: RaftMeta) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        save_raft_meta(dir.path(), &meta).unwrap();
        let path = dir.path().join(RAFT_META_FILE);
        (dir, path)
    }

    #[test]
    fn every_combination_round_trips() {
        let values = [None, Some(id(0, 0)), Some(id(3, 17)), Some(id(u64::MAX, 1))];
        for last_purged in values {
            for committed in values {
                let meta = RaftMeta {
                    last_purged,
                    committed,
                };
                let (dir, path) = saved(meta);
                assert_eq!(load_raft_meta(dir.path()).unwrap(), Some(meta));
                assert_eq!(std::fs::metadata(&path).unwrap().len(), 38);
                assert!(!dir.path().join("raft_meta.tmp").exists());
            }
        }
    }

    #[test]
    fn a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_raft_meta(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_flipped_byte_anywhere_is_detected() {
        let meta = RaftMeta {
            last_purged: Some(id(2, 40)),
            committed: Some(id(3, 55)),
        };
        let (dir, path) = saved(meta);
        let good = std::fs::read(&path).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let err = load_raft_meta(dir.path()).unwrap_err().to_string();
            assert!(
                err.contains("raft_meta") && err.contains("damaged"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_cut_short_or_overlong_file_is_detected() {
        let (dir, path) = saved(RaftMeta {
            last_purged: Some(id(1, 9)),
            committed: None,
        });
        let good = std::fs::read(&path).unwrap();
        for len in [0, 1, 20, good.len() - 1] {
            std::fs::write(&path, &good[..len]).unwrap();
            let err = load_raft_meta(dir.path()).unwrap_err().to_string();
            assert!(err.contains(&format!("{len} bytes, expected 38")), "{err}");
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(load_raft_meta(dir.path()).is_err());
    }

    #[test]
    fn another_version_or_unknown_flags_are_refused_even_with_a_good_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let mut payload = [0u8; PAYLOAD_BYTES];
        payload[0] = 2;
        save_checked(dir.path(), RAFT_META_FILE, &payload).unwrap();
        let err = load_raft_meta(dir.path()).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
        payload[0] = VERSION;
        payload[1] = 4;
        save_checked(dir.path(), RAFT_META_FILE, &payload).unwrap();
        assert!(load_raft_meta(dir.path()).is_err());
        payload[1] = 0;
        payload[30] = 1;
        save_checked(dir.path(), RAFT_META_FILE, &payload).unwrap();
        assert!(load_raft_meta(dir.path()).is_err());
    }
}
