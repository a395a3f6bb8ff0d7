//! Segment files on disk: naming, listing, and a validating, zero-copy reader.
//!
//! A partition's log is a directory of fixed-size, preallocated files named
//! `<first index, 20 digits>.wlog`. Reading maps a segment into memory and walks its records;
//! each body is handed out as a slice of the mapping (no copy) after its checksum matched.

use super::error::LogError;
use super::record::{
    decode_header, decode_record, record_bytes, RecordError, RecordHeader, RECORD_ALIGN,
};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const SEGMENT_SUFFIX: &str = ".wlog";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub first_index: u64,
    pub path: PathBuf,
}

pub fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}{SEGMENT_SUFFIX}"))
}

/// The segments of `dir`, in index order. A missing directory is an empty log.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentInfo>, LogError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LogError::io(dir, e)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) else {
            continue;
        };
        let path = entry.path();
        let first_index = match stem.parse::<u64>() {
            Ok(i) if stem.len() == 20 => i,
            _ => return Err(LogError::BadSegmentName { path }),
        };
        segments.push(SegmentInfo { first_index, path });
    }
    segments.sort_by_key(|s| s.first_index);
    Ok(segments)
}

/// A segment mapped read-only.
pub struct MappedSegment {
    pub info: SegmentInfo,
    map: Option<Arc<memmap2::Mmap>>,
}

impl MappedSegment {
    pub fn open(info: SegmentInfo) -> Result<MappedSegment, LogError> {
        let file = File::open(&info.path).map_err(|e| LogError::io(&info.path, e))?;
        let len = file
            .metadata()
            .map_err(|e| LogError::io(&info.path, e))?
            .len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only. The writer only appends past the validated end and
            // every record is checksummed before use, so a concurrent append cannot make us
            // trust bytes that were not validated.
            let map =
                unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LogError::io(&info.path, e))?;
            Some(Arc::new(map))
        };
        Ok(MappedSegment { info, map })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().map_or(&[], |m| &m[..])
    }

    /// The mapping, to keep records readable after this segment is dropped (`None` when the
    /// file is empty).
    pub fn shared_map(&self) -> Option<Arc<memmap2::Mmap>> {
        self.map.clone()
    }

    /// Walks the records from offset 0 and stops at the written end or the first bad record.
    pub fn records(&self) -> SegmentRecords<'_> {
        SegmentRecords {
            bytes: self.bytes(),
            offset: 0,
            stop: None,
        }
    }
}

/// How the walk over a segment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentEnd {
    /// All-zero header (or end of file) at this offset: the clean end of the written part.
    Clean { offset: u64 },
    /// A record that does not validate at this offset.
    Invalid { offset: u64, reason: RecordError },
}

pub struct SegmentRecords<'a> {
    bytes: &'a [u8],
    offset: usize,
    stop: Option<SegmentEnd>,
}

/// One validated record; `body` borrows the mapping.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    pub offset: u64,
    pub header: RecordHeader,
    pub body: &'a [u8],
}

impl<'a> SegmentRecords<'a> {
    /// Why the walk stopped (after `next()` returned `None`).
    pub fn end(&self) -> Option<&SegmentEnd> {
        self.stop.as_ref()
    }
}

impl<'a> Iterator for SegmentRecords<'a> {
    type Item = RecordRef<'a>;

    fn next(&mut self) -> Option<RecordRef<'a>> {
        if self.stop.is_some() {
            return None;
        }
        let offset = self.offset;
        match decode_record(&self.bytes[offset..]) {
            Ok(Some((header, body))) => {
                // A file may end right after a body, without its padding (a snapshot cut
                // short): the next call then sees the end, not a slice past it.
                self.offset = (self.offset + record_bytes(body.len())).min(self.bytes.len());
                Some(RecordRef {
                    offset: offset as u64,
                    header,
                    body,
                })
            }
            Ok(None) => {
                self.stop = Some(SegmentEnd::Clean {
                    offset: offset as u64,
                });
                None
            }
            Err(reason) => {
                self.stop = Some(SegmentEnd::Invalid {
                    offset: offset as u64,
                    reason,
                });
                None
            }
        }
    }
}

/// Looks for a valid record header with an index above `after_index` anywhere past `from`.
/// Finding one means the bad bytes at `from` are not a torn tail but damage in the middle.
pub fn valid_header_after(bytes: &[u8], from: usize, after_index: u64) -> Option<u64> {
    let mut offset = (from + RECORD_ALIGN).next_multiple_of(RECORD_ALIGN);
    while offset + RECORD_ALIGN <= bytes.len() {
        if bytes[offset..offset + 4] == super::record::MAGIC.to_le_bytes() {
            if let Ok(Some(h)) = decode_header(&bytes[offset..]) {
                if h.index > after_index {
                    return Some(offset as u64);
                }
            }
        }
        offset += RECORD_ALIGN;
    }
    None
}
