//! Writing zeros over the active segment ahead of its records, in the background.
//!
//! A segment is preallocated (`fallocate`): its blocks are reserved but *unwritten*, and ext4
//! reads them back as zeros. An O_DIRECT | O_DSYNC write into unwritten blocks has to convert
//! them to written ones: ext4 cannot issue such a write without blocking, so io_uring hands it
//! to a worker thread, and its completion runs the conversion on a workqueue and commits the
//! journal before the write counts as durable: three more threads to wake per group commit, on
//! cores busy with the shards. Measured on this project's 2-core VM at 100,000 transfers/s (one
//! 8190-transfer batch every 82 ms), a group commit took 3.0 ms on average from its start until
//! durable, with a tail to 25 ms; over a segment zeroed whole beforehand 1.4 ms, zeroed ahead
//! by this task 2.1 ms; at 500,000/s the bench's batch p50 went from 4.7 to 3.1-3.5 ms.
//!
//! So a background task keeps the blocks just ahead of the writer written with zeros (up to
//! `AHEAD_BYTES` past the writer's end, `WriterOptions::zero_chunk_bytes` per write): the
//! record writes that follow are plain overwrites, issued inline and needing no metadata. The
//! contents do not change (the blocks read as zeros before and after), so a crash at any point
//! leaves the same log, and the task may fail or stop at any time without harm: it only costs
//! speed.
//!
//! **It never writes where records are.** The writer announces every write before issuing it
//! (`before_write`): the end of that write bounds where records are or will be, and the task
//! zeroes only beyond it. A write that would reach the chunk being zeroed waits for that chunk
//! first. Both sides run on the partition's executor thread, so a check and the write it allows
//! happen without anything in between.

use glommio::io::OpenOptions;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Bytes zeroed by one write of the task, unless the writer's options say otherwise
/// (`WriterOptions::zero_chunk_bytes`): about one large local group commit's write.
pub const CHUNK_BYTES_DEFAULT: u64 = 2 << 20;

/// A chunk for writers whose records are single client batches replicated to nodes that may
/// share the disk (Raft with peers): a zero write about the size of one record write beside
/// it, not six times it. The replicas of a partition write byte-identical logs and so reach a
/// chunk boundary together: with 2 MiB chunks, every sixth record of a loopback cluster's six
/// writers met 12 MiB of zeros on the one disk and took 8-21 ms instead of ~1
/// (docs/BENCHMARKS.md, sixteenth session).
pub const CHUNK_BYTES_REPLICATED: u64 = 512 << 10;

/// How far past the writer's end the task keeps zeros written: more than a typical group
/// commit's write (0.1-4 MiB), little enough that starting a segment costs little I/O.
const AHEAD_BYTES: u64 = 16 << 20;

/// The writer's handle on the task zeroing its active segment.
pub(super) struct ZeroAhead {
    shared: Rc<Shared>,
    task: Option<glommio::Task<()>>,
}

/// What the writer and the task share (one thread, so plain cells).
struct Shared {
    /// End of the bytes the writer has written or is writing: records live below it.
    writer_end: Cell<u64>,
    /// The task has written zeros from the writer's end at the time up to here.
    zeroed_end: Cell<u64>,
    /// The range the task's write in flight covers.
    in_flight: Cell<Option<(u64, u64)>>,
    segment_bytes: u64,
    /// Bytes per zero write.
    chunk_bytes: u64,
    stop: Cell<bool>,
    /// The task, waiting for the writer to move on (or to stop).
    task_waker: RefCell<Option<Waker>>,
    /// The writer, waiting for a chunk in flight that its next write overlaps.
    writer_waker: RefCell<Option<Waker>>,
}

impl ZeroAhead {
    /// Starts zeroing `path` (a segment of `segment_bytes`) from `writer_end` on. Must run on a
    /// glommio executor (the writer's). `None` on file systems where zeros would not help or
    /// would hurt (`zeroes_ahead`).
    /// `chunk_bytes` (a positive multiple of the block size) per zero write.
    pub(super) fn start(
        path: PathBuf,
        writer_end: u64,
        segment_bytes: u64,
        chunk_bytes: u64,
    ) -> Option<ZeroAhead> {
        assert!(chunk_bytes > 0 && chunk_bytes.is_multiple_of(super::BLOCK_BYTES));
        if !zeroes_ahead(&path) {
            return None;
        }
        let writer_end = writer_end.next_multiple_of(super::BLOCK_BYTES);
        let shared = Rc::new(Shared {
            writer_end: Cell::new(writer_end),
            zeroed_end: Cell::new(writer_end),
            in_flight: Cell::new(None),
            segment_bytes,
            chunk_bytes,
            stop: Cell::new(false),
            task_waker: RefCell::new(None),
            writer_waker: RefCell::new(None),
        });
        let task = glommio::spawn_local(zero_segment(path, shared.clone()));
        Some(ZeroAhead {
            shared,
            task: Some(task),
        })
    }

    /// Called before the writer writes `start..end`: records that records may reach `end`
    /// (first, so that the task claims no chunk below it from now on), then waits while the
    /// task's write in flight overlaps that range (at most the one chunk).
    pub(super) async fn before_write(&self, start: u64, end: u64) {
        let shared = &self.shared;
        if end > shared.writer_end.get() {
            shared.writer_end.set(end);
            shared.wake_task();
        }
        poll_fn(|cx| match shared.in_flight.get() {
            Some((from, to)) if from < end && start < to => {
                *shared.writer_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        })
        .await;
    }

    /// Stops the task and waits for its write in flight (at most one chunk), so nothing it
    /// does can land after the writer lets go of the segment. If this wait is itself
    /// cancelled, the handle still guards the writer's writes (the caller drops it only after
    /// this returns).
    pub(super) async fn stop(&mut self) {
        self.shared.stop.set(true);
        self.shared.wake_task();
        if let Some(task) = self.task.as_mut() {
            task.await;
        }
        self.task = None;
    }
}

impl Drop for ZeroAhead {
    /// Without `stop` (a writer dropped without `close`): the task is told to stop and left to
    /// finish its write in flight, not cancelled: a cancelled task's submitted write still
    /// completes, later, with nothing waiting for it.
    fn drop(&mut self) {
        self.shared.stop.set(true);
        self.shared.wake_task();
        if let Some(task) = self.task.take() {
            task.detach();
        }
    }
}

/// True when the writer zeroes segments at `path` ahead of their records: on file systems that
/// keep preallocated space unwritten and overwrite in place, ext4 and XFS. On a copy-on-write
/// one (btrfs) it would use up the preallocated space and make a full disk show in the middle
/// of a segment; elsewhere (tmpfs) it gains nothing.
pub fn zeroes_ahead(path: &Path) -> bool {
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we pass and reads the NUL-terminated path.
    let mut info: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut info) } != 0 {
        return false;
    }
    matches!(info.f_type as i64, EXT4_SUPER_MAGIC | XFS_SUPER_MAGIC)
}

impl Shared {
    fn wake_task(&self) {
        if let Some(waker) = self.task_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    fn wake_writer(&self) {
        if let Some(waker) = self.writer_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// The next range to zero, if the writer's end is close enough to what is zeroed.
    fn next_chunk(&self) -> Option<(u64, u64)> {
        let from = self.zeroed_end.get().max(self.writer_end.get());
        let wanted_end = (self.writer_end.get() + AHEAD_BYTES).min(self.segment_bytes);
        (from < wanted_end).then(|| (from, (from + self.chunk_bytes).min(self.segment_bytes)))
    }
}

/// The task: zero chunk after chunk while the writer moves on, until told to stop or a write
/// fails (then the rest of the segment is simply written the slower way).
async fn zero_segment(path: PathBuf, shared: Rc<Shared>) {
    if shared.stop.get() {
        return; // stopped before it ran (a writer opened and closed at once)
    }
    // A descriptor of its own, O_DSYNC like the writer's: each chunk's conversion is committed
    // by the chunk's own write, so the record writes after it find nothing left to commit.
    let file = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(&path)
        .await
    {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "not zeroing the log segment ahead of its records (slower writes): open failed");
            return;
        }
    };
    // One buffer of zeros for every chunk: the device reads it, nothing writes it again.
    let mut zeros = file.alloc_dma_buffer(shared.chunk_bytes as usize);
    zeros.as_bytes_mut().fill(0);
    let zeros = Rc::new(zeros);
    loop {
        let next = poll_fn(|cx| {
            if shared.stop.get() {
                return Poll::Ready(None);
            }
            match shared.next_chunk() {
                Some(chunk) => Poll::Ready(Some(chunk)),
                None => {
                    *shared.task_waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        let Some((from, to)) = next else { break };
        // Claimed before the first await: the writer checks it before each write.
        shared.in_flight.set(Some((from, to)));
        let len = (to - from) as usize;
        let written = if len == zeros.len() {
            file.write_rc_at(zeros.clone(), from).await
        } else {
            // The segment's last, shorter chunk.
            let mut tail = file.alloc_dma_buffer(len);
            tail.as_bytes_mut().fill(0);
            file.write_at(tail, from).await
        };
        shared.in_flight.set(None);
        shared.wake_writer();
        match written {
            Ok(n) if n == len => shared.zeroed_end.set(to),
            Ok(n) => {
                tracing::warn!(path = %path.display(), written = n, len, "zeroing the log segment ahead stopped (slower writes): short write");
                break;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "zeroing the log segment ahead stopped (slower writes)");
                break;
            }
        }
    }
    let _ = file.close().await;
}
