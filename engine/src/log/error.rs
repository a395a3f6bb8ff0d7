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
    /// A whole, checksummed record of a format this build does not read: written by another
    /// (newer) build. Never a torn write, so never cut off.
    #[error(
        "{path} at offset {offset}: record format version {version}, this build reads version {}; \
         the log was written by another walletd build: run that build (or a newer one) on it. \
         Refusing to start",
        super::record::FORMAT_VERSION
    )]
    UnsupportedFormat {
        path: PathBuf,
        offset: u64,
        version: u16,
    },
    #[error("{path} at offset {offset}: expected log index {expected}, found {found}")]
    IndexGap {
        path: PathBuf,
        offset: u64,
        expected: u64,
        found: u64,
    },
    /// A reader asked for a record the log says it holds, and the segment ends first.
    #[error("{path} at offset {offset}: the segment ends where log index {expected} should be")]
    Missing {
        path: PathBuf,
        offset: u64,
        expected: u64,
    },
    #[error("{path}: segment file name is not <20-digit first index>.wlog")]
    BadSegmentName { path: PathBuf },
    #[error("the log stopped accepting writes after an earlier I/O error: {0}")]
    Poisoned(String),
    /// Still out of space: a recent write or preallocation failed with ENOSPC/EFBIG and the
    /// retry back-off has not elapsed yet.
    #[error("the log is out of space (retrying shortly): {0}")]
    Full(String),
}

impl LogError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> LogError {
        LogError::Io {
            path: path.into(),
            source,
        }
    }

    /// From a glommio error, keeping the OS error code: glommio's own conversion to
    /// `std::io::Error` keeps only the message, and the code is what tells a full disk
    /// (retry later) from a failed fsync (fatal).
    pub fn glommio<T>(path: impl Into<PathBuf>, error: glommio::GlommioError<T>) -> LogError {
        let source = match error {
            glommio::GlommioError::IoError(source)
            | glommio::GlommioError::EnhancedIoError { source, .. } => source,
            other => other.into(),
        };
        LogError::io(path, source)
    }

    /// True for "no space left on device", and for EFBIG (the file size limit,
    /// `RLIMIT_FSIZE`, behaves like a full disk): the log keeps what it has not written and
    /// retries later; the node refuses new writes but keeps serving reads. Every other I/O error
    /// is fatal for writes.
    pub fn is_disk_full(&self) -> bool {
        match self {
            LogError::Io { source, .. } => {
                matches!(
                    source.raw_os_error(),
                    Some(libc::ENOSPC) | Some(libc::EFBIG)
                )
            }
            LogError::Full(_) => true,
            _ => false,
        }
    }
}

/// Ignores SIGXFSZ for the whole process. A write past the file size limit (`RLIMIT_FSIZE`)
/// raises SIGXFSZ, whose default action kills the process; ignored, the write fails with EFBIG
/// instead, which the log treats like a full disk (writes refused with `storage_full`, resumed
/// when the limit allows). Servers call this once at start.
pub fn ignore_file_size_signal() {
    // SAFETY: setting a disposition to SIG_IGN installs no handler code; nothing else in the
    // process handles SIGXFSZ.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

#[cfg(test)]
mod tests {
    use super::LogError;

    #[test]
    fn a_full_disk_is_told_apart_from_other_io_errors() {
        let glommio_error = |errno| glommio::GlommioError::<()>::EnhancedIoError {
            source: std::io::Error::from_raw_os_error(errno),
            op: "Writing",
            path: None,
            fd: None,
        };
        assert!(LogError::glommio("f", glommio_error(libc::ENOSPC)).is_disk_full());
        assert!(LogError::glommio("f", glommio_error(libc::EFBIG)).is_disk_full());
        assert!(!LogError::glommio("f", glommio_error(libc::EIO)).is_disk_full());
        assert!(LogError::Full("still".into()).is_disk_full());
        assert!(!LogError::Poisoned("x".into()).is_disk_full());
    }
}
