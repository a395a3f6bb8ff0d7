//! Reading a whole log in index order: validation, continuity, and the torn-tail rule.
//!
//! The rule that separates a crash from damage: bad bytes at offset `p` in the *last* segment,
//! with no valid record of a higher index anywhere after `p`, are a torn tail (a write the crash
//! cut short, never acknowledged) and may be cut off. Anything else, bad bytes in an earlier
//! segment, or valid records after the bad ones, is corruption: the scan stops with an error
//! naming the file and offset, and only an explicit repair truncates there.
//!
//! Records at or below `raft_meta`'s `last_purged` are walked (validated, counted for
//! continuity) but never handed to a `scan_log` visitor: a purge deletes only whole segments
//! (and a Raft log keeps some for audits), so such records may survive on disk, and no reader
//! may serve them again. Only the offline audit tools read them (`scan_log_history`).

use super::error::LogError;
use super::raft_meta::{load_raft_meta, RaftMeta};
use super::record::{decode_header, record_bytes, RecordError};
use super::segments::{
    list_segments, valid_header_after, MappedSegment, RecordRef, SegmentEnd, SegmentInfo,
};
use std::path::{Path, PathBuf};

/// Where a log ends, as found by a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogTail {
    pub segments: Vec<SegmentInfo>,
    /// Index of the first record (0 when the log is empty).
    pub first_index: u64,
    pub last_index: u64,
    pub last_term: u64,
    pub last_timestamp: u64,
    /// Offset just past the last valid record of the last segment.
    pub end_offset: u64,
    /// A torn tail that was found (not yet cut off): file, offset, what was wrong.
    pub torn: Option<TornTail>,
    /// The `raft_meta` file as the scan read it (default when there is none).
    pub raft_meta: RaftMeta,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
    pub reason: RecordError,
}

/// Calls `visit` for every valid record with index >= `from_index` and above `raft_meta`'s
/// `last_purged`, in order, and returns where the log ends (`last_index`/`last_term` are those
/// of the last record on disk, purged or not). `visit` may stop the scan by returning an error.
pub fn scan_log<E: From<LogError>>(
    dir: &Path,
    from_index: u64,
    visit: impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<LogTail, E> {
    scan(dir, from_index, false, |_| {}, visit)
}

/// Like `scan_log`, but purged records still on disk are visited too: the audit tools read
/// the history a Raft log keeps behind its purge point for them (records from the oldest kept
/// snapshot on, see `WriterOptions::history_from_index`). They are committed entries (a
/// purge only covers applied ones), so replaying them is sound; no Raft reader serves them.
pub fn scan_log_history<E: From<LogError>>(
    dir: &Path,
    from_index: u64,
    visit: impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<LogTail, E> {
    scan(dir, from_index, true, |_| {}, visit)
}

/// `scan_log_history`, showing each segment to `on_segment` before its records are visited: a
/// replay that reads records in place (`mapped_transfers`) keeps the maps.
pub fn scan_log_history_segments<E: From<LogError>>(
    dir: &Path,
    from_index: u64,
    on_segment: impl FnMut(&MappedSegment),
    visit: impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<LogTail, E> {
    scan(dir, from_index, true, on_segment, visit)
}

fn scan<E: From<LogError>>(
    dir: &Path,
    from_index: u64,
    with_purged: bool,
    mut on_segment: impl FnMut(&MappedSegment),
    mut visit: impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<LogTail, E> {
    let raft_meta = load_raft_meta(dir)?.unwrap_or_default();
    let from_index = if with_purged {
        from_index
    } else {
        from_index.max(raft_meta.first_unpurged_index())
    };
    let segments = list_segments(dir)?;
    let mut tail = LogTail {
        segments: segments.clone(),
        raft_meta,
        ..LogTail::default()
    };
    let count = segments.len();
    tail.first_index = segments.first().map_or(0, |s| s.first_index);
    for (n, info) in segments.into_iter().enumerate() {
        let is_last = n + 1 == count;
        // Skip whole segments that end before `from_index` (the next one starts at or below it).
        // The one before the last is always read, so an empty last segment still has a
        // predecessor that tells the last index.
        if n + 2 < count && tail.segments[n + 1].first_index <= from_index && tail.last_index == 0 {
            continue;
        }
        let segment = MappedSegment::open(info.clone())?;
        on_segment(&segment);
        let expected = if tail.last_index == 0 {
            info.first_index
        } else {
            tail.last_index + 1
        };
        if info.first_index != expected {
            return Err(LogError::IndexGap {
                path: info.path,
                offset: 0,
                expected,
                found: info.first_index,
            }
            .into());
        }
        let mut records = segment.records();
        for (expected, record) in (expected..).zip(records.by_ref()) {
            if record.header.index != expected {
                return Err(LogError::IndexGap {
                    path: info.path,
                    offset: record.offset,
                    expected,
                    found: record.header.index,
                }
                .into());
            }
            tail.last_index = record.header.index;
            tail.last_term = record.header.term;
            tail.last_timestamp = record.header.timestamp;
            if record.header.index >= from_index {
                visit(record)?;
            }
        }
        let (offset, reason) = match records.end().cloned() {
            Some(SegmentEnd::Clean { offset }) => (offset, None),
            Some(SegmentEnd::Invalid { offset, reason }) => (offset, Some(reason)),
            None => unreachable!("the iterator ran to its end"),
        };
        // A checksummed record of another format version is another build's, not a torn
        // write: cutting it off (as a torn tail) would lose everything that build wrote.
        if let Some(RecordError::Version(version)) = reason {
            return Err(LogError::UnsupportedFormat {
                path: info.path,
                offset,
                version,
            }
            .into());
        }
        // Damage is anything followed by a valid, later record: never cut that off silently.
        if valid_header_after(segment.bytes(), offset as usize, tail.last_index).is_some() {
            return Err(LogError::Corrupt {
                path: info.path,
                offset,
                reason: reason.unwrap_or(RecordError::BadMagic(0)),
            }
            .into());
        }
        if let Some(reason) = reason {
            if !is_last {
                return Err(LogError::Corrupt {
                    path: info.path,
                    offset,
                    reason,
                }
                .into());
            }
            tail.torn = Some(TornTail {
                path: info.path.clone(),
                offset,
                reason,
            });
        }
        if is_last {
            tail.end_offset = offset;
        }
    }
    Ok(tail)
}

/// Finds the end of the log, validating the last two segments (earlier ones are validated
/// when they are read, e.g. by replay or `wallet log verify`).
pub fn find_tail(dir: &Path) -> Result<LogTail, LogError> {
    scan_log::<LogError>(dir, u64::MAX, |_| Ok(()))
}

/// For each of `kinds`, the sum of the body lengths of its records with an index at or above
/// `from_index` and a timestamp at or before `until_timestamp`, read from the headers alone
/// (bodies are neither read nor checked) in one walk: a sizing hint a replay takes before it
/// starts, then validates every record as it applies it. (A record applies at its header's
/// timestamp or later, so one stamped after `until_timestamp` is not replayed as of it.) The
/// walk of a segment stops quietly at its first bad header.
pub fn body_bytes_of_kinds<const N: usize>(
    dir: &Path,
    from_index: u64,
    until_timestamp: u64,
    kinds: [u16; N],
) -> Result<[u64; N], LogError> {
    let mut totals = [0u64; N];
    for info in list_segments(dir)? {
        let segment = MappedSegment::open(info)?;
        let bytes = segment.bytes();
        let mut offset = 0usize;
        while offset < bytes.len() {
            let Ok(Some(header)) = decode_header(&bytes[offset..]) else {
                break;
            };
            if header.index >= from_index && header.timestamp <= until_timestamp {
                if let Some(k) = kinds.iter().position(|k| *k == header.kind) {
                    totals[k] += u64::from(header.body_len);
                }
            }
            offset += record_bytes(header.body_len as usize);
        }
    }
    Ok(totals)
}

/// Zeroes `path` from `offset` to its end and syncs it: cuts a torn tail or, on explicit repair,
/// everything from a corrupt record on.
pub fn zero_from(path: &Path, offset: u64) -> Result<(), LogError> {
    zero_range(path, offset, u64::MAX)
}

/// Zeroes `path` from `offset` up to `end` (or its end, if shorter) and syncs it.
pub fn zero_range(path: &Path, offset: u64, end: u64) -> Result<(), LogError> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| LogError::io(path, e))?;
    let len = file.metadata().map_err(|e| LogError::io(path, e))?.len();
    // Back to front: a crash part way leaves zeros at the end and records from `offset` on,
    // which a restart reads as a clean log up to where the zeros begin (those records were
    // being dropped, and are dropped again). Front to back, it would leave zeros at `offset`
    // and records after them, which is damage in the middle of the log and stops the start.
    let zeros = vec![0u8; 1 << 20];
    let mut chunk_end = len.min(end);
    while chunk_end > offset {
        let chunk_start = chunk_end.saturating_sub(zeros.len() as u64).max(offset);
        let n = (chunk_end - chunk_start) as usize;
        file.seek(SeekFrom::Start(chunk_start))
            .map_err(|e| LogError::io(path, e))?;
        file.write_all(&zeros[..n])
            .map_err(|e| LogError::io(path, e))?;
        chunk_end = chunk_start;
    }
    file.sync_all().map_err(|e| LogError::io(path, e))
}

/// Makes a directory entry change (create, rename, delete) durable.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir, e))
}

/// Explicit repair: cuts the log at the first bad record, wherever it is, and deletes every
/// later segment. Returns what was cut (file, offset) or `None` when the log was sound.
/// Only called on operator request (`--repair`), never on a normal start.
pub fn repair_log(dir: &Path) -> Result<Option<(PathBuf, u64)>, LogError> {
    match find_tail(dir) {
        Ok(tail) => {
            if let Some(torn) = tail.torn {
                zero_from(&torn.path, torn.offset)?;
                return Ok(Some((torn.path, torn.offset)));
            }
            Ok(None)
        }
        Err(LogError::Corrupt { path, offset, .. })
        | Err(LogError::IndexGap { path, offset, .. }) => {
            zero_from(&path, offset)?;
            for segment in list_segments(dir)? {
                if segment.path > path {
                    std::fs::remove_file(&segment.path)
                        .map_err(|e| LogError::io(&segment.path, e))?;
                }
            }
            sync_dir(dir)?;
            Ok(Some((path, offset)))
        }
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over several 1 MiB chunks, unaligned: exactly `offset..end` becomes zero.
    #[test]
    fn zero_range_zeroes_exactly_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let len = (3 << 20) + 777;
        std::fs::write(&path, vec![0xA5u8; len]).unwrap();
        let (offset, end) = (12_345u64, (2u64 << 20) + 4_097);
        zero_range(&path, offset, end).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), len);
        for (i, b) in bytes.iter().enumerate() {
            let zeroed = (offset..end).contains(&(i as u64));
            assert_eq!(*b == 0, zeroed, "byte {i}");
        }
        // Past the end of the file: up to its end, never longer.
        zero_from(&path, (3 << 20) + 700).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), len);
        assert!(bytes[(3 << 20) + 700..].iter().all(|b| *b == 0));
        assert_eq!(bytes[(3 << 20) + 699], 0xA5);
    }
}
