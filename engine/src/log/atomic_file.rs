//! Small metadata files beside the segments (the vote, `raft_meta`) that must never be read
//! half-written. Each is replaced whole: temp file, fsync, rename, fsync of the directory, so
//! after a crash a load sees the old content or the new one, never a mix. Each carries a
//! CRC32C of its payload, so damage is reported instead of trusted.
//!
//! Layout: `payload ++ crc32c(payload)` (4 bytes, little-endian). The payload's own format,
//! including any version byte, belongs to the caller.

use super::error::LogError;
use super::scan::sync_dir;
use std::io::Write;
use std::path::Path;

/// Bytes of the checksum that follows the payload.
const CHECKSUM_BYTES: usize = 4;

/// Replaces `dir/name` with `payload` and its checksum, durably (see the module doc), with
/// blocking std::fs: for tools and tests, off any executor's hot path.
pub fn save_checked(dir: &Path, name: &str, payload: &[u8]) -> Result<(), LogError> {
    save_plain(dir, name, &checked_bytes(payload))
}

/// Replaces `dir/name` with `bytes` as they are (no checksum: the small text files a person
/// reads, such as the data dir's partition count), by the same durable steps.
pub fn save_plain(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), LogError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(|e| LogError::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| LogError::io(&tmp, e))?;
    file.sync_all().map_err(|e| LogError::io(&tmp, e))?;
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).map_err(|e| LogError::io(&path, e))?;
    sync_dir(dir)
}

/// `save_checked` through glommio's io_uring: the same steps and the same file, but the
/// executor runs other tasks while the disk works (a vote or `raft_meta` save on a shard core
/// must not stall its partitions for two fsyncs).
pub async fn save_checked_async(dir: &Path, name: &str, payload: &[u8]) -> Result<(), LogError> {
    use glommio::io::{BufferedFile, Directory};
    let tmp = dir.join(format!("{name}.tmp"));
    let bytes = checked_bytes(payload);
    let len = bytes.len();
    let file = BufferedFile::create(&tmp)
        .await
        .map_err(|e| LogError::glommio(&tmp, e))?;
    let written = file
        .write_at(bytes, 0)
        .await
        .map_err(|e| LogError::glommio(&tmp, e))?;
    if written != len {
        return Err(LogError::io(
            &tmp,
            std::io::Error::other(format!("short write: {written} of {len} bytes")),
        ));
    }
    file.fdatasync()
        .await
        .map_err(|e| LogError::glommio(&tmp, e))?;
    file.close().await.map_err(|e| LogError::glommio(&tmp, e))?;
    let path = dir.join(name);
    glommio::io::rename(&tmp, &path)
        .await
        .map_err(|e| LogError::glommio(&path, e))?;
    let directory = Directory::open(dir)
        .await
        .map_err(|e| LogError::glommio(dir, e))?;
    directory
        .sync()
        .await
        .map_err(|e| LogError::glommio(dir, e))?;
    directory
        .close()
        .await
        .map_err(|e| LogError::glommio(dir, e))
}

/// `payload ++ crc32c(payload)`.
fn checked_bytes(payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(payload.len() + CHECKSUM_BYTES);
    bytes.extend_from_slice(payload);
    bytes.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    bytes
}

/// The payload of `dir/name` (exactly `N` bytes), `None` when the file does not exist. A file
/// of another length (cut short, or not ours) or with a bad checksum is an error naming it.
pub fn load_checked<const N: usize>(dir: &Path, name: &str) -> Result<Option<[u8; N]>, LogError> {
    let path = dir.join(name);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io(&path, e)),
    };
    if bytes.len() != N + CHECKSUM_BYTES {
        return Err(damaged(
            &path,
            &format!("{} bytes, expected {}", bytes.len(), N + CHECKSUM_BYTES),
        ));
    }
    let (payload, checksum) = bytes.split_at(N);
    let mut stored = [0u8; CHECKSUM_BYTES];
    stored.copy_from_slice(checksum);
    if crc32c::crc32c(payload) != u32::from_le_bytes(stored) {
        return Err(damaged(&path, "checksum mismatch"));
    }
    let mut out = [0u8; N];
    out.copy_from_slice(payload);
    Ok(Some(out))
}

/// The error for a metadata file whose content is not valid: names the file and what is wrong.
pub fn damaged(path: &Path, what: &str) -> LogError {
    LogError::io(
        path,
        std::io::Error::other(format!("file is damaged: {what}")),
    )
}

/// The little-endian u64 at `bytes[at..at + 8]` (the caller checked the length).
pub fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}
