//! Reading a range of durable records back (Raft's `try_get_log_entries`: replication to a
//! follower, openraft's own reads), validating each record and the continuity of indexes.
//!
//! Records are found by walking the headers of the segment that holds the first one (the
//! header checksum covers index and length; bodies before the range are not checksummed),
//! starting from the furthest offset the caller's `OffsetHints` remember, so a read costs a
//! walk over at most a stride of records plus the records returned.
//!
//! The walk stops as soon as the last wanted record is read and never decodes past it: the
//! caller may be truncating the log behind that point (the Raft log store shrinks what readers
//! may ask for before it cuts).

use super::error::LogError;
use super::offset_hints::OffsetHints;
use super::record::{decode_header, decode_record, record_bytes};
use super::segments::{MappedSegment, RecordRef, SegmentInfo};

/// Calls `visit` for the records with indexes `from..until`, in order, read from `segments`
/// (sorted by first index, as `LogWriter::segments` lists them). The caller promises that all
/// of them are durable and not purged; a record that is missing, out of place or damaged is
/// an error naming the file and offset. Nothing is visited when `from >= until`.
pub fn read_range<E: From<LogError>>(
    segments: &[SegmentInfo],
    hints: &mut OffsetHints,
    from: u64,
    until: u64,
    mut visit: impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<(), E> {
    if from >= until {
        return Ok(());
    }
    let Some(start) = segments.iter().rposition(|s| s.first_index <= from) else {
        let first = segments.first().ok_or_else(|| LogError::Missing {
            path: "<no segment>".into(),
            offset: 0,
            expected: from,
        })?;
        return Err(LogError::IndexGap {
            path: first.path.clone(),
            offset: 0,
            expected: from,
            found: first.first_index,
        }
        .into());
    };
    let mut expected = from;
    for (n, info) in segments.iter().enumerate().skip(start) {
        if n > start && info.first_index != expected {
            return Err(LogError::IndexGap {
                path: info.path.clone(),
                offset: 0,
                expected,
                found: info.first_index,
            }
            .into());
        }
        let segment = MappedSegment::open(info.clone())?;
        let bytes = segment.bytes();
        // Hop over the records before the range, by their headers alone, from the furthest
        // remembered point.
        let (mut index, mut offset) = hints.start_for(info.first_index, expected);
        if index > info.first_index && !header_at(bytes, offset, index) {
            // The hint is stale (its owner missed a truncation): walk from the start.
            hints.forget_segment(info.first_index);
            (index, offset) = (info.first_index, 0);
        }
        while index < expected {
            let header = match decode_header(&bytes[offset.min(bytes.len())..]) {
                Ok(Some(header)) if header.index == index => header,
                Ok(Some(header)) => return Err(gap(info, offset, index, header.index)),
                Ok(None) => return Err(missing(info, offset, index)),
                Err(reason) => return Err(corrupt(info, offset, reason)),
            };
            hints.learn(info.first_index, index, offset);
            offset += record_bytes(header.body_len as usize);
            index += 1;
        }
        // Then read and check the wanted ones, up to the end of this segment.
        let is_last = n + 1 == segments.len();
        while expected < until {
            match decode_record(&bytes[offset.min(bytes.len())..]) {
                Ok(Some((header, body))) if header.index == expected => {
                    hints.learn(info.first_index, expected, offset);
                    visit(RecordRef {
                        offset: offset as u64,
                        header,
                        body,
                    })?;
                    offset += record_bytes(body.len());
                    expected += 1;
                }
                Ok(Some((header, _))) => return Err(gap(info, offset, expected, header.index)),
                Ok(None) if !is_last => break,
                Ok(None) => return Err(missing(info, offset, expected)),
                Err(reason) => return Err(corrupt(info, offset, reason)),
            }
        }
        if expected >= until {
            return Ok(());
        }
    }
    unreachable!("the last segment either yields every wanted record or fails");
}

/// Whether a valid header of record `index` starts at `offset`.
fn header_at(bytes: &[u8], offset: usize, index: u64) -> bool {
    matches!(decode_header(&bytes[offset.min(bytes.len())..]), Ok(Some(h)) if h.index == index)
}

fn gap<E: From<LogError>>(info: &SegmentInfo, offset: usize, expected: u64, found: u64) -> E {
    LogError::IndexGap {
        path: info.path.clone(),
        offset: offset as u64,
        expected,
        found,
    }
    .into()
}

fn missing<E: From<LogError>>(info: &SegmentInfo, offset: usize, expected: u64) -> E {
    LogError::Missing {
        path: info.path.clone(),
        offset: offset as u64,
        expected,
    }
    .into()
}

fn corrupt<E: From<LogError>>(
    info: &SegmentInfo,
    offset: usize,
    reason: super::record::RecordError,
) -> E {
    LogError::Corrupt {
        path: info.path.clone(),
        offset: offset as u64,
        reason,
    }
    .into()
}
