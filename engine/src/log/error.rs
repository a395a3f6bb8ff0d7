//! Errors of the segment log. Every one names the file (and offset) it is about, so an
//! operator can find it.

use super::record::RecordError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "corrupt record in {path} at offset {offset}: {reason}; valid records follow it, so this \
         is not a torn write. Refusing to start. Restore the data dir from a backup, or start with \
         --repair to truncate the log at this offset (everything after it is lost)"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: RecordError,
    },
    #[error("{path} at offset {offset}: expected log index {expected}, found {found}")]
    IndexGap {
        path: PathBuf,
        offset: u64,
        expected: u64,
        found: u64,
    },
    #[error("{path}: segment file name is not <20-digit first index>.wlog")]
    BadSegmentName { path: PathBuf },
    #[error("the log stopped accepting writes after an earlier I/O error: {0}")]
    Poisoned(String),
}

impl LogError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> LogError {
        LogError::Io {
            path: path.into(),
            source,
        }
    }

    /// True for "no space left on device" (the node refuses writes but keeps serving reads).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, LogError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}
