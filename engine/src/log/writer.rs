//! The append side of a partition's log: group commit through glommio DMA files (io_uring,
//! O_DIRECT).
//!
//! `append` only copies a record into memory. `flush` writes everything appended since the last
//! flush with one aligned write per segment and makes it durable with one `fdatasync`: one
//! fsync per group of batches, however many batches the group holds. Segments are
//! preallocated to their fixed size, so a full disk shows up when a segment is created, not in
//! the middle of a write. After any I/O error the writer is poisoned: nothing more is accepted
//! or acknowledged, because the state on disk is no longer known.

use super::error::LogError;
use super::record::{encode_record, record_bytes, RecordHeader};
use super::scan::{sync_dir, zero_from, LogTail};
use super::segments::{segment_path, SegmentInfo};
use glommio::io::{DmaFile, OpenOptions};
use std::path::{Path, PathBuf};

/// O_DIRECT writes are whole, aligned blocks.
const BLOCK_BYTES: u64 = 4096;

#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Size of every segment file (preallocated).
    pub segment_bytes: u64,
    /// Most bytes `append` buffers before a `flush` is required (bounds memory and write size).
    pub pending_bytes_max: usize,
}

impl Default for WriterOptions {
    fn default() -> WriterOptions {
        WriterOptions {
            segment_bytes: 256 << 20,
            pending_bytes_max: 32 << 20,
        }
    }
}

pub struct LogWriter {
    dir: PathBuf,
    options: WriterOptions,
    segments: Vec<SegmentInfo>,
    /// The segment being appended to (`None` before the first record of an empty log).
    active: Option<DmaFile>,
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
}

impl LogWriter {
    /// Opens the log of `dir` for appending after a scan found its tail. A torn tail found by
    /// the scan is cut off (zeroed and synced) first.
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
        let mut writer = LogWriter {
            dir: dir.to_path_buf(),
            options,
            segments: tail.segments.clone(),
            active: None,
            active_end: 0,
            tail_block: Vec::new(),
            pending: Vec::new(),
            overflow: Vec::new(),
            overflow_first_index: 0,
            last_index: tail.last_index,
            last_term: tail.last_term,
            durable_index: tail.last_index,
            poisoned: None,
        };
        if tail.last_index == 0 && tail.first_index > 1 {
            // An empty log that starts later (after a purge): keep its numbering.
            writer.last_index = tail.first_index - 1;
            writer.durable_index = writer.last_index;
        }
        if let Some(last) = writer.segments.last().cloned() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .dma_open(&last.path)
                .await
                .map_err(|e| LogError::io(&last.path, e.into()))?;
            writer.active_end = tail.end_offset;
            let block_start = tail.end_offset - tail.end_offset % BLOCK_BYTES;
            if block_start < tail.end_offset {
                let read = file
                    .read_at_aligned(block_start, BLOCK_BYTES as usize)
                    .await
                    .map_err(|e| LogError::io(&last.path, e.into()))?;
                let partial = (tail.end_offset - block_start) as usize;
                if read.len() < partial {
                    return Err(LogError::io(
                        &last.path,
                        std::io::Error::other("short read of the tail block"),
                    ));
                }
                writer.tail_block.extend_from_slice(&read[..partial]);
            }
            writer.active = Some(file);
        }
        Ok(writer)
    }

    pub fn last_index(&self) -> u64 {
        self.last_index
    }
    pub fn last_term(&self) -> u64 {
        self.last_term
    }
    /// Highest index known to be on disk (fsynced).
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

    /// Buffers one record; it is durable after the next successful `flush`.
    pub fn append(
        &mut self,
        term: u64,
        timestamp: u64,
        kind: u16,
        body: &[u8],
    ) -> Result<u64, LogError> {
        if let Some(reason) = &self.poisoned {
            return Err(LogError::Poisoned(reason.clone()));
        }
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

    /// Writes every appended record and fsyncs: afterwards they survive a crash.
    pub async fn flush(&mut self) -> Result<(), LogError> {
        if let Some(reason) = &self.poisoned {
            return Err(LogError::Poisoned(reason.clone()));
        }
        let result = self.flush_inner().await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "log write failed; the partition stops acknowledging");
            self.poisoned = Some(e.to_string());
        }
        result
    }

    async fn flush_inner(&mut self) -> Result<(), LogError> {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            self.write_active(&pending).await?;
            self.pending = pending;
            self.pending.clear();
        }
        if !self.overflow.is_empty() {
            self.open_segment(self.overflow_first_index).await?;
            let overflow = std::mem::take(&mut self.overflow);
            self.write_active(&overflow).await?;
            self.overflow = overflow;
            self.overflow.clear();
        }
        self.durable_index = self.last_index;
        Ok(())
    }

    /// One aligned write of (partial tail block + `bytes`) and one fdatasync.
    async fn write_active(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        let path = self.active_path();
        let file = self.active.as_ref().expect("a segment is open");
        let start = self.active_end - self.tail_block.len() as u64;
        let used = self.tail_block.len() + bytes.len();
        let len = (used as u64).next_multiple_of(BLOCK_BYTES) as usize;
        let mut buffer = file.alloc_dma_buffer(len);
        let out = buffer.as_bytes_mut();
        out[..self.tail_block.len()].copy_from_slice(&self.tail_block);
        out[self.tail_block.len()..used].copy_from_slice(bytes);
        out[used..].fill(0);
        let written = file
            .write_at(buffer, start)
            .await
            .map_err(|e| LogError::io(&path, e.into()))?;
        if written != len {
            return Err(LogError::io(
                &path,
                std::io::Error::other(format!("short write: {written} of {len} bytes")),
            ));
        }
        file.fdatasync()
            .await
            .map_err(|e| LogError::io(&path, e.into()))?;
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
        if let Some(old) = self.active.take() {
            old.close()
                .await
                .map_err(|e| LogError::io(self.active_path(), e.into()))?;
        }
        let path = segment_path(&self.dir, first_index);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(&path)
            .await
            .map_err(|e| LogError::io(&path, e.into()))?;
        file.pre_allocate(self.options.segment_bytes, false)
            .await
            .map_err(|e| LogError::io(&path, e.into()))?;
        file.fdatasync()
            .await
            .map_err(|e| LogError::io(&path, e.into()))?;
        sync_dir(&self.dir)?;
        self.segments.push(SegmentInfo { first_index, path });
        self.active = Some(file);
        self.active_end = 0;
        self.tail_block.clear();
        Ok(())
    }

    /// Closes the active segment (after a final flush by the caller).
    pub async fn close(mut self) -> Result<(), LogError> {
        if let Some(file) = self.active.take() {
            file.close()
                .await
                .map_err(|e| LogError::io(self.active_path(), e.into()))?;
        }
        Ok(())
    }

    /// Deletes whole segments whose records all precede `index` (after a snapshot covers them).
    /// The active segment is never deleted.
    pub fn purge_before(&mut self, index: u64) -> Result<usize, LogError> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].first_index <= index {
            let segment = self.segments.remove(0);
            std::fs::remove_file(&segment.path).map_err(|e| LogError::io(&segment.path, e))?;
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}
