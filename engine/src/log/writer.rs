//! The append side of a partition's log: group commit through glommio DMA files (io_uring,
//! O_DIRECT).
//!
//! `append` only copies a record into memory. `flush` writes everything appended since the last
//! flush with one aligned write per segment: one durable write per group of batches, however
//! many batches the group holds. Segments are opened with O_DSYNC, so a write completes only
//! once its data (and the metadata needed to read it back) is on stable storage: one I/O
//! instead of a write followed by an `fdatasync`, and the caller can keep the CPU busy (apply
//! the entries) while that single I/O is in flight. Segments are preallocated to their fixed
//! size, so a full disk shows up when a segment is created, not in the middle of a write, and a
//! background task writes zeros just ahead of the records (`zero_ahead.rs`), so that each
//! record write is a plain overwrite of written blocks (fast, nothing for the journal).
//!
//! Two kinds of failure:
//! - **Out of space** (ENOSPC, or EFBIG from `RLIMIT_FSIZE`, when preallocating or writing): the
//!   writer keeps every byte it has not written and writes them again, at the same offsets, on
//!   a later `flush`, at most every `FULL_RETRY` while the disk stays full. Nothing is lost and
//!   nothing is acknowledged until that flush succeeds.
//! - **Any other I/O error** (a failed fsync above all): the writer is poisoned, nothing more is
//!   accepted or acknowledged, because the state on disk is no longer known (after a failed
//!   fsync the kernel may have dropped the dirty pages: retrying would pretend).

use super::error::LogError;
use super::fault::FaultPlan;
use super::raft_meta::{EntryId, RaftMeta};
use super::record::{encode_record, record_bytes, RecordHeader};
use super::scan::{find_tail, sync_dir, zero_from, zero_range, LogTail};
use super::segments::{segment_path, MappedSegment, SegmentEnd, SegmentInfo};
use glommio::io::{DmaFile, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod purge;
mod zero_ahead;

use zero_ahead::ZeroAhead;
pub use zero_ahead::{zeroes_ahead, CHUNK_BYTES_DEFAULT, CHUNK_BYTES_REPLICATED};

/// O_DIRECT writes are whole, aligned blocks.
const BLOCK_BYTES: u64 = 4096;

/// While the disk is full, a `flush` touches the disk at most this often; the calls between
/// answer `LogError::Full` at once (a full disk under load would otherwise cost a failing
/// write, or a file creation and preallocation, per batch).
const FULL_RETRY: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Size of every segment file (preallocated).
    pub segment_bytes: u64,
    /// Most bytes `append` buffers before a `flush` is required (bounds memory and write size).
    pub pending_bytes_max: usize,
    /// Test-only fault injection (`None` in production).
    pub faults: Option<Arc<FaultPlan>>,
    /// A purge deletes no segment that holds a record at or above this index: the history
    /// the audit tools replay from the oldest kept snapshot (a Raft log keeping daily
    /// snapshots sets it; `LogWriter::set_history_from_index` moves it). `u64::MAX`: a purge
    /// deletes every segment it covers.
    pub history_from_index: u64,
    /// Bytes per write of the zero-ahead task (`writer/zero_ahead.rs`): `CHUNK_BYTES_DEFAULT`,
    /// or `CHUNK_BYTES_REPLICATED` for a replica of a Raft group with peers.
    pub zero_chunk_bytes: u64,
}

impl Default for WriterOptions {
    fn default() -> WriterOptions {
        WriterOptions {
            segment_bytes: 256 << 20,
            pending_bytes_max: 32 << 20,
            faults: None,
            history_from_index: u64::MAX,
            zero_chunk_bytes: CHUNK_BYTES_DEFAULT,
        }
    }
}

pub struct LogWriter {
    dir: PathBuf,
    options: WriterOptions,
    segments: Vec<SegmentInfo>,
    /// The segment being appended to (`None` before the first record of an empty log).
    active: Option<DmaFile>,
    /// The background task writing zeros ahead of the records in `active` (`zero_ahead.rs`).
    zero_ahead: Option<ZeroAhead>,
    /// Bytes written (and durable) in the active segment.
    active_end: u64,
    /// The bytes of the active segment's last, partial block: rewritten with the next write.
    tail_block: Vec<u8>,
    /// Records for the active segment, not yet written.
    pending: Vec<u8>,
    /// Records that did not fit the active segment: they open the next one.
    overflow: Vec<u8>,
    overflow_first_index: u64,
    last_index: u64,
    last_term: u64,
    durable_index: u64,
    poisoned: Option<String>,
    /// Out of space: when the next attempt may touch the disk, and why the last one failed.
    full: Option<(Instant, String)>,
    /// `prepare_segment` asked for the next segment and it is not created yet.
    segment_wanted: bool,
    /// The Raft pointers kept beside the segments (`last_purged`, `committed`): `last_purged`
    /// as persisted; `committed` may be ahead of the file until the next purge or close (see
    /// `save_committed`).
    meta: RaftMeta,
    /// `committed` as the `raft_meta` file holds it.
    committed_on_disk: Option<EntryId>,
}

impl LogWriter {
    /// Opens the log of `dir` for appending after a scan found its tail. A torn tail found by
    /// the scan is cut off (zeroed and synced) first, then a purge that a crash interrupted is
    /// finished (`purge::settle_purge`).
    pub async fn open(
        dir: &Path,
        options: WriterOptions,
        tail: &LogTail,
    ) -> Result<LogWriter, LogError> {
        assert!(options.segment_bytes.is_multiple_of(BLOCK_BYTES));
        assert!(
            options.pending_bytes_max as u64 * 2 <= options.segment_bytes,
            "a flush group must fit well inside a segment"
        );
        std::fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        if let Some(torn) = &tail.torn {
            tracing::warn!(
                path = %torn.path.display(),
                offset = torn.offset,
                reason = %torn.reason,
                "cutting off a torn log tail (a write interrupted by a crash, never acknowledged)"
            );
            zero_from(&torn.path, torn.offset)?;
        }
        let start = purge::settle_purge(dir, tail, options.history_from_index)?;
        let mut writer = LogWriter {
            dir: dir.to_path_buf(),
            options,
            segments: start.segments,
            active: None,
            zero_ahead: None,
            active_end: 0,
            tail_block: Vec::new(),
            pending: Vec::new(),
            overflow: Vec::new(),
            overflow_first_index: 0,
            last_index: start.last_index,
            last_term: start.last_term,
            durable_index: start.last_index,
            poisoned: None,
            full: None,
            segment_wanted: false,
            meta: tail.raft_meta,
            committed_on_disk: tail.raft_meta.committed,
        };
        // The last segment is the scanned one (a purge never deletes it unless it deletes all).
        if let Some(last) = writer.segments.last().cloned() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DSYNC)
                .dma_open(&last.path)
                .await
                .map_err(|e| LogError::glommio(&last.path, e))?;
            writer.active_end = tail.end_offset;
            writer.tail_block = read_tail_block(&last.path, tail.end_offset)?;
            writer.active = Some(file);
            writer.zero_ahead = ZeroAhead::start(
                last.path.clone(),
                tail.end_offset,
                writer.options.segment_bytes,
                writer.options.zero_chunk_bytes,
            );
        }
        Ok(writer)
    }

    /// After an I/O error of unknown outcome nothing more is written (module doc).
    fn refuse_if_poisoned(&self) -> Result<(), LogError> {
        match &self.poisoned {
            Some(reason) => Err(LogError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    pub fn last_index(&self) -> u64 {
        self.last_index
    }
    pub fn last_term(&self) -> u64 {
        self.last_term
    }
    /// Highest index known to be on stable storage.
    pub fn durable_index(&self) -> u64 {
        self.durable_index
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Bytes appended but not yet flushed.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len() + self.overflow.len()
    }

    /// True when a record with `body_len` bytes can be appended without a flush first.
    pub fn has_room(&self, body_len: usize) -> bool {
        self.pending_bytes() + record_bytes(body_len) <= self.options.pending_bytes_max
    }

    /// True when a record of `body_len` bytes cannot go into the active segment (there is none
    /// yet, or it is too full): appending it would start a new segment at the next flush.
    pub fn needs_new_segment(&self, body_len: usize) -> bool {
        !(self.active.is_some()
            && self.overflow.is_empty()
            && self.active_end + (self.pending.len() + record_bytes(body_len)) as u64
                <= self.options.segment_bytes)
    }

    /// Makes room *before* a record that needs a new segment is appended (and applied): writes
    /// and syncs what is pending, then creates and preallocates the next segment. A full disk
    /// then refuses that record cleanly, instead of failing after it was applied. Errors are
    /// those of `flush`; after an out-of-space error, a later `flush` retries the creation.
    pub async fn prepare_segment(&mut self, body_len: usize) -> Result<(), LogError> {
        if !self.needs_new_segment(body_len) {
            return Ok(());
        }
        if self.overflow.is_empty() {
            self.segment_wanted = true;
        }
        self.flush().await
    }

    /// Buffers one record; it is durable after the next successful `flush`.
    pub fn append(
        &mut self,
        term: u64,
        timestamp: u64,
        kind: u16,
        body: &[u8],
    ) -> Result<u64, LogError> {
        self.refuse_if_poisoned()?;
        assert!(self.has_room(body.len()), "flush before appending more");
        assert!(term >= self.last_term, "terms never decrease");
        let index = self.last_index + 1;
        let header = RecordHeader {
            body_checksum: 0,
            body_len: body.len() as u32,
            index,
            term,
            timestamp,
            kind,
        };
        let fits_active = self.active.is_some()
            && self.overflow.is_empty()
            && self.active_end + (self.pending.len() + record_bytes(body.len())) as u64
                <= self.options.segment_bytes;
        if fits_active {
            encode_record(&mut self.pending, &header, body);
        } else {
            if self.overflow.is_empty() {
                self.overflow_first_index = index;
            }
            encode_record(&mut self.overflow, &header, body);
        }
        self.last_index = index;
        self.last_term = term;
        Ok(index)
    }

    /// True while the disk is full: appended records wait for a `flush` that succeeds.
    pub fn is_full(&self) -> bool {
        self.full.is_some()
    }

    /// Writes every appended record durably: afterwards they survive a crash.
    ///
    /// An out-of-space error (`LogError::is_disk_full`) keeps the unwritten records: call
    /// `flush` again later. Any other error poisons the writer.
    pub async fn flush(&mut self) -> Result<(), LogError> {
        self.refuse_if_poisoned()?;
        if let Some((retry_at, reason)) = &self.full {
            if Instant::now() < *retry_at {
                return Err(LogError::Full(reason.clone()));
            }
        }
        let result = self.flush_inner().await;
        match &result {
            Ok(()) => {
                if self.full.take().is_some() {
                    tracing::warn!(dir = %self.dir.display(), "disk space is back; the log accepts writes again");
                }
            }
            Err(e) if e.is_disk_full() => {
                if self.full.is_none() {
                    tracing::error!(error = %e, "the disk is full; the partition refuses writes (storage_full) until space returns");
                }
                self.full = Some((Instant::now() + FULL_RETRY, e.to_string()));
            }
            Err(e) => {
                tracing::error!(error = %e, "log write failed; the partition stops acknowledging");
                self.poisoned = Some(e.to_string());
            }
        }
        result
    }

    async fn flush_inner(&mut self) -> Result<(), LogError> {
        // On an error the buffers are put back untouched, so a retry writes the same bytes at
        // the same offsets.
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            let written = self.write_active(&pending).await;
            self.pending = pending;
            written?;
            self.pending.clear();
        }
        if !self.overflow.is_empty() {
            // A retry after a failed write of the overflow finds its segment already open.
            let opened = self.active.is_some()
                && self.segments.last().map(|s| s.first_index) == Some(self.overflow_first_index);
            if !opened {
                self.open_segment(self.overflow_first_index).await?;
            }
            let overflow = std::mem::take(&mut self.overflow);
            let written = self.write_active(&overflow).await;
            self.overflow = overflow;
            written?;
            self.overflow.clear();
        }
        if self.segment_wanted {
            // Everything before it is durable now, so the new, empty segment continues the
            // log without a gap even if a crash comes before its first record.
            self.open_segment(self.last_index + 1).await?;
            self.segment_wanted = false;
        }
        self.durable_index = self.last_index;
        Ok(())
    }

    /// One aligned, durable (O_DSYNC) write of (partial tail block + `bytes`).
    async fn write_active(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        let path = self.active_path();
        let file = self.active.as_ref().expect("a segment is open");
        let start = self.active_end - self.tail_block.len() as u64;
        let used = self.tail_block.len() + bytes.len();
        let len = (used as u64).next_multiple_of(BLOCK_BYTES) as usize;
        if let Some(faults) = &self.options.faults {
            let delay_ms = faults.write_delay_ms();
            if delay_ms > 0 {
                glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
            }
            if FaultPlan::take(&faults.write_full_failures) {
                return Err(LogError::io(&path, injected(libc::ENOSPC)));
            }
        }
        if let Some(zero_ahead) = &self.zero_ahead {
            zero_ahead.before_write(start, start + len as u64).await;
        }
        let mut buffer = file.alloc_dma_buffer(len);
        fill_image(buffer.as_bytes_mut(), 0, &self.tail_block, bytes);
        let mut written = file
            .write_at(buffer, start)
            .await
            .map_err(|e| LogError::glommio(&path, e))?;
        while written < len {
            // A short write: the file hit a limit part-way (disk full, RLIMIT_FSIZE). Writing
            // the rest reports the actual error, or succeeds if space came back meanwhile.
            if written == 0 || !(written as u64).is_multiple_of(BLOCK_BYTES) {
                return Err(LogError::io(
                    &path,
                    std::io::Error::other(format!("short write: {written} of {len} bytes")),
                ));
            }
            let mut rest = file.alloc_dma_buffer(len - written);
            fill_image(rest.as_bytes_mut(), written, &self.tail_block, bytes);
            written += file
                .write_at(rest, start + written as u64)
                .await
                .map_err(|e| LogError::glommio(&path, e))?;
        }
        // O_DSYNC: the write completed, so it is durable (a failed sync shows as a failed
        // write above). The injected fault stands for that failure.
        if let Some(faults) = &self.options.faults {
            if FaultPlan::take(&faults.fsync_failures) {
                return Err(LogError::io(&path, injected(libc::EIO)));
            }
        }
        self.active_end += bytes.len() as u64;
        let partial = (self.active_end % BLOCK_BYTES) as usize;
        let mut new_tail = std::mem::take(&mut self.tail_block);
        if partial == 0 {
            new_tail.clear();
        } else if bytes.len() >= partial {
            new_tail.clear();
            new_tail.extend_from_slice(&bytes[bytes.len() - partial..]);
        } else {
            new_tail.extend_from_slice(bytes);
        }
        self.tail_block = new_tail;
        Ok(())
    }

    fn active_path(&self) -> PathBuf {
        self.segments
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_else(|| self.dir.clone())
    }

    /// Creates, preallocates and syncs a new segment (and its directory entry).
    async fn open_segment(&mut self, first_index: u64) -> Result<(), LogError> {
        self.close_active().await?;
        let path = segment_path(&self.dir, first_index);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(libc::O_DSYNC)
            .dma_open(&path)
            .await
            .map_err(|e| LogError::glommio(&path, e))?;
        let injected_full = self
            .options
            .faults
            .as_ref()
            .is_some_and(|f| FaultPlan::take(&f.preallocate_full_failures));
        let allocated = if injected_full {
            Err(LogError::io(&path, injected(libc::ENOSPC)))
        } else {
            file.pre_allocate(self.options.segment_bytes, false)
                .await
                .map_err(|e| LogError::glommio(&path, e))
        };
        if let Err(e) = allocated {
            // Out of space: leave no half-made segment behind (it holds no record yet); the
            // next flush creates it again.
            let _ = file.close().await;
            if e.is_disk_full() {
                let _ = std::fs::remove_file(&path);
            }
            return Err(e);
        }
        file.fdatasync()
            .await
            .map_err(|e| LogError::glommio(&path, e))?;
        sync_dir(&self.dir)?;
        self.zero_ahead = ZeroAhead::start(
            path.clone(),
            0,
            self.options.segment_bytes,
            self.options.zero_chunk_bytes,
        );
        self.segments.push(SegmentInfo { first_index, path });
        self.active = Some(file);
        self.active_end = 0;
        self.tail_block.clear();
        Ok(())
    }

    /// Closes the active segment (after a final flush by the caller).
    /// Closes the log: the active segment, and a `committed` not yet written to `raft_meta`.
    pub async fn close(mut self) -> Result<(), LogError> {
        if self.poisoned.is_none() && self.meta.committed != self.committed_on_disk {
            self.write_meta().await?;
        }
        self.close_active().await
    }

    /// `append` at an index the caller dictates (a Raft follower writes the leader's entries
    /// at the leader's indexes): it must be the next one.
    ///
    /// Except on a **pristine** log (no segment, nothing buffered, never purged): its first
    /// record may have any index, and the log then starts there (its first segment is named
    /// after it, which is all a scan needs). openraft's storage contract allows a log to begin
    /// anywhere, and its conformance suite appends a first entry at index 1 or 2.
    pub fn append_at(
        &mut self,
        index: u64,
        term: u64,
        timestamp: u64,
        kind: u16,
        body: &[u8],
    ) -> Result<u64, LogError> {
        assert!(index >= 1, "log indexes start at 1");
        if self.is_pristine() {
            self.last_index = index - 1;
            self.durable_index = index - 1;
        }
        assert_eq!(
            index,
            self.last_index + 1,
            "the log continues without a gap"
        );
        self.append(term, timestamp, kind, body)
    }

    /// True for a log that never held a record: no segment, nothing buffered, never purged.
    /// Its first `append_at` may be at any index.
    pub fn is_pristine(&self) -> bool {
        self.segments.is_empty()
            && self.pending_bytes() == 0
            && self.last_index == 0
            && self.meta.last_purged.is_none()
    }

    /// The segments on disk, in index order (the last one is the active segment). Readers of
    /// the durable records (`log::range::read_range`) walk them.
    pub fn segments(&self) -> &[SegmentInfo] {
        &self.segments
    }

    /// Removes every record at or after `index` (for Raft: a follower's entries that conflict
    /// with the new leader's). Later segments are deleted from the back, so a crash midway
    /// leaves no hole; the written part of the segment that holds `index`, from that record
    /// on, is zeroed and synced. Afterwards the log ends at `index - 1` and appends continue
    /// there. Only durable records can be cut (flush first); nothing happens when `index` is
    /// past the end, and purged records (at or below `last_purged`) cannot be cut. The writer
    /// is reopened from a fresh scan of the tail (a rare operation: the proven start-up path
    /// is worth more than saving that scan).
    pub async fn truncate_from(&mut self, index: u64) -> Result<(), LogError> {
        self.refuse_if_poisoned()?;
        assert_eq!(
            self.durable_index, self.last_index,
            "flush before truncating"
        );
        if index > self.last_index {
            return Ok(());
        }
        let first = self.first_live_index();
        if index == 0 || index < first {
            return Err(LogError::io(
                &self.dir,
                std::io::Error::other(format!(
                    "cannot truncate from index {index}: the log's first live index is {first}"
                )),
            ));
        }
        self.close_active().await?;
        let mut deleted = false;
        while self.segments.len() > 1 && self.segments.last().is_some_and(|s| s.first_index > index)
        {
            let segment = self.segments.pop().expect("checked above");
            std::fs::remove_file(&segment.path).map_err(|e| LogError::io(&segment.path, e))?;
            deleted = true;
        }
        if deleted {
            sync_dir(&self.dir)?;
        }
        let holder = self
            .segments
            .last()
            .cloned()
            .expect("the log has a segment");
        let mapped = MappedSegment::open(holder.clone())?;
        let mut records = mapped.records();
        let cut = records
            .by_ref()
            .find(|r| r.header.index >= index)
            .map(|r| r.offset);
        let end = match records.end() {
            Some(SegmentEnd::Clean { offset }) | Some(SegmentEnd::Invalid { offset, .. }) => {
                *offset
            }
            None => mapped.bytes().len() as u64,
        };
        drop(mapped);
        if let Some(cut) = cut {
            zero_range(&holder.path, cut, end.next_multiple_of(BLOCK_BYTES))?;
        }
        self.reopen().await?;
        if self.last_index != index - 1 {
            // The records before the cut did not read back: the disk changed under the log.
            let path = self.active_path();
            let error = LogError::Missing {
                path,
                offset: self.active_end,
                expected: self.last_index + 1,
            };
            self.poisoned = Some(error.to_string());
            return Err(error);
        }
        Ok(())
    }

    /// Closes the active segment (if one is open) after its zeroing task stopped; appends
    /// need `reopen` or a new segment afterwards.
    async fn close_active(&mut self) -> Result<(), LogError> {
        if let Some(zero_ahead) = self.zero_ahead.as_mut() {
            zero_ahead.stop().await;
        }
        self.zero_ahead = None;
        if let Some(active) = self.active.take() {
            active
                .close()
                .await
                .map_err(|e| LogError::glommio(self.active_path(), e))?;
        }
        Ok(())
    }

    /// Replaces the writer by one opened from a fresh scan of the tail, after an operation
    /// that changed the files under it (truncation, a purge past the end). A failure leaves the
    /// files in a state this writer no longer describes, so it poisons the writer.
    async fn reopen(&mut self) -> Result<(), LogError> {
        let reopened = async {
            self.close_active().await?;
            let tail = find_tail(&self.dir)?;
            LogWriter::open(&self.dir, self.options.clone(), &tail).await
        }
        .await;
        match reopened {
            Ok(writer) => {
                *self = writer;
                Ok(())
            }
            Err(e) => {
                self.poisoned = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// The bytes of `path` from the start of the block that holds `end_offset` up to it: the
/// partial last block, which the next write rewrites.
///
/// A plain buffered read, not a glommio DMA read: glommio 0.9 decides once per thread and
/// device whether the device supports io_uring polling, by a read at offset 0 of the first
/// DMA file opened. When that file is a segment just created (empty), the read succeeds
/// without reaching the device, glommio wrongly concludes polling works, and every later DMA
/// read on that thread fails with EOPNOTSUPP (seen on a virtio disk: a writer reopened on the
/// thread that created the log, as `truncate_from` does). Writes are not affected. The read
/// happens once per open; after O_DIRECT writes the page cache holds no stale copy.
fn read_tail_block(path: &Path, end_offset: u64) -> Result<Vec<u8>, LogError> {
    use std::os::unix::fs::FileExt;
    let block_start = end_offset - end_offset % BLOCK_BYTES;
    let mut block = vec![0u8; (end_offset - block_start) as usize];
    std::fs::File::open(path)
        .and_then(|file| file.read_exact_at(&mut block, block_start))
        .map_err(|e| LogError::io(path, e))?;
    Ok(block)
}

/// Fills `out` with bytes `skip..skip + out.len()` of the block image `tail ++ bytes ++ zeros`
/// (the partial tail block, the new records, zero padding to the block boundary).
fn fill_image(out: &mut [u8], skip: usize, tail: &[u8], bytes: &[u8]) {
    let mut at = 0;
    let mut skip = skip;
    for part in [tail, bytes] {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        let n = (part.len() - skip).min(out.len() - at);
        out[at..at + n].copy_from_slice(&part[skip..skip + n]);
        at += n;
        skip = 0;
    }
    out[at..].fill(0);
}

/// An error injected by a `FaultPlan`: the plain OS error, so it is classified exactly like a
/// real one.
fn injected(errno: i32) -> std::io::Error {
    tracing::warn!(errno, "injecting a log I/O fault (test-only FaultPlan)");
    std::io::Error::from_raw_os_error(errno)
}

#[cfg(test)]
mod tests {
    use super::fill_image;

    #[test]
    fn image_pieces_concatenate() {
        let tail = [1u8, 2, 3];
        let bytes = [4u8, 5, 6, 7];
        let mut whole = [9u8; 10];
        fill_image(&mut whole, 0, &tail, &bytes);
        assert_eq!(whole, [1, 2, 3, 4, 5, 6, 7, 0, 0, 0]);
        for skip in 0..10 {
            let mut part = vec![9u8; 10 - skip];
            fill_image(&mut part, skip, &tail, &bytes);
            assert_eq!(part, whole[skip..], "skip {skip}");
        }
    }
}
