//! The log writer writes zeros over each segment ahead of its records, in the background
//! (`engine/src/log/writer/zero_ahead.rs`), so that record writes are overwrites of written
//! blocks. These tests check that it does (the blocks ahead stop being unwritten extents, on
//! file systems that have them) and that it never touches a record, however record writes,
//! segment switches, truncations and the zeroing interleave.

mod log_support;

use engine::log::writer::{CHUNK_BYTES_DEFAULT, CHUNK_BYTES_REPLICATED};
use engine::log::{find_tail, LogWriter, WriterOptions};
use log_support::{body_of, indexes, on_glommio, terms};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Smaller than the distance the writer zeroes ahead (16 MiB): each segment gets zeroed whole.
const SEGMENT_BYTES: u64 = 8 << 20;

/// `FS_IOC_FIEMAP` (`_IOWR('f', 11, struct fiemap)`), and the extent flag for space that is
/// allocated but reads as zeros until written.
const FS_IOC_FIEMAP: libc::Ioctl = 0xC020_660B_u32 as libc::Ioctl;
const FIEMAP_FLAG_SYNC: u32 = 1;
const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
const EXTENTS_MAX: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; EXTENTS_MAX],
}

/// Bytes of `path` in `[start, end)` that are unwritten extents (`None`: the file system does
/// not answer FIEMAP).
fn unwritten_bytes(path: &Path, start: u64, end: u64) -> Option<u64> {
    let file = std::fs::File::open(path).ok()?;
    let mut map = Box::new(Fiemap {
        start,
        length: end - start,
        flags: FIEMAP_FLAG_SYNC,
        mapped_extents: 0,
        extent_count: EXTENTS_MAX as u32,
        reserved: 0,
        extents: [FiemapExtent::default(); EXTENTS_MAX],
    });
    // SAFETY: FIEMAP reads the header and writes at most `extent_count` extents into `map`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut *map as *mut Fiemap) };
    if rc != 0 {
        return None;
    }
    let extents = &map.extents[..map.mapped_extents as usize];
    Some(
        extents
            .iter()
            .filter(|e| e.flags & FIEMAP_EXTENT_UNWRITTEN != 0)
            .map(|e| {
                let from = e.logical.max(start);
                let to = (e.logical + e.length).min(end);
                to.saturating_sub(from)
            })
            .sum(),
    )
}

/// True when the writer zeroes ahead in this directory (ext4, XFS) and its preallocated space
/// reads back as unwritten extents (so zeroing can be seen).
fn has_unwritten_extents(dir: &Path) -> bool {
    if !engine::log::writer::zeroes_ahead(dir) {
        return false;
    }
    let path = dir.join("probe");
    let file = std::fs::File::create(&path).unwrap();
    // SAFETY: plain fallocate on a file we own.
    let allocated = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, 1 << 20) } == 0;
    let unwritten = allocated && unwritten_bytes(&path, 0, 1 << 20) == Some(1 << 20);
    std::fs::remove_file(&path).unwrap();
    unwritten
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wlog"))
        .collect();
    files.sort();
    files
}

/// A writer of `SEGMENT_BYTES` segments whose zero-ahead task writes `zero_chunk_bytes` at a
/// time.
async fn open_writer_zeroing_by(dir: &Path, zero_chunk_bytes: u64) -> LogWriter {
    let tail = find_tail(dir).unwrap();
    let options = WriterOptions {
        zero_chunk_bytes,
        ..log_support::options(SEGMENT_BYTES)
    };
    LogWriter::open(dir, options, &tail).await.unwrap()
}

#[test]
fn the_segment_ahead_of_the_records_gets_written_with_zeros() {
    segment_ahead_gets_written_with_zeros(CHUNK_BYTES_DEFAULT);
}

#[test]
fn the_segment_ahead_gets_zeroed_in_replicated_sized_chunks_too() {
    segment_ahead_gets_written_with_zeros(CHUNK_BYTES_REPLICATED);
}

fn segment_ahead_gets_written_with_zeros(zero_chunk_bytes: u64) {
    let tmp = tempfile::tempdir().unwrap();
    if !has_unwritten_extents(tmp.path()) {
        eprintln!("skipped: not ext4 or XFS, or preallocated space is not unwritten here");
        return;
    }
    let dir = tmp.path().join("log");
    let checked = dir.clone();
    on_glommio(move || async move {
        let mut writer = open_writer_zeroing_by(&dir, zero_chunk_bytes).await;
        log_support::append_flushed(&mut writer, 200, 1).await;
        let segment = segment_files(&dir).pop().expect("a segment");
        // The task runs beside the writer: wait for it to get through the whole segment.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut left = unwritten_bytes(&segment, 0, SEGMENT_BYTES).expect("FIEMAP answers");
        while left > 0 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(20)).await;
            left = unwritten_bytes(&segment, 0, SEGMENT_BYTES).expect("FIEMAP answers");
        }
        assert_eq!(left, 0, "bytes of the segment still unwritten after 20 s");
        log_support::append_flushed(&mut writer, 100, 1).await;
        writer.close().await.unwrap();
    });
    assert_eq!(indexes(&checked), (1..=300).collect::<Vec<_>>());
}

/// Flushes of every size from one record to a quarter segment, across several segments, with
/// a truncation (a Raft follower's cut) in the middle: every record reads back with its body
/// whatever the zeroing did meanwhile, and nothing follows the last one.
#[test]
fn zeroing_never_touches_a_record() {
    zeroing_never_touches_a_record_with(CHUNK_BYTES_DEFAULT);
}

#[test]
fn zeroing_in_replicated_sized_chunks_never_touches_a_record() {
    zeroing_never_touches_a_record_with(CHUNK_BYTES_REPLICATED);
}

fn zeroing_never_touches_a_record_with(zero_chunk_bytes: u64) {
    let seed = seed();
    eprintln!("seed {seed} (ZERO_AHEAD_SEED reruns it)");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let checked = dir.clone();
    let last = on_glommio(move || async move {
        let mut rng = seed;
        let mut next = move |bound: u64| {
            // xorshift64*: enough for picking sizes.
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
        };
        let mut writer = open_writer_zeroing_by(&dir, zero_chunk_bytes).await;
        for round in 0..120 {
            // 1 to ~4,000 records of 100-999 bytes: up to the flush group's 2 MiB.
            let count = 1 + next(4_000);
            for _ in 0..count {
                let index = writer.last_index() + 1;
                let body = body_of(index);
                if !writer.has_room(body.len()) {
                    writer.flush().await.unwrap();
                }
                writer.append(1, 1_000 + index, 9, &body).unwrap();
            }
            writer.flush().await.unwrap();
            if round == 60 {
                let cut = writer.last_index() - next(writer.last_index() / 2 + 1);
                writer.truncate_from(cut).await.unwrap();
                assert_eq!(writer.last_index(), cut - 1);
            }
        }
        let last = writer.last_index();
        writer.close().await.unwrap();
        last
    });
    assert!(
        segment_files(&checked).len() >= 3,
        "the test spans segments"
    );
    // `terms` checks every record's body.
    assert_eq!(indexes(&checked), (1..=last).collect::<Vec<_>>());
    assert!(terms(&checked).iter().all(|(_, term)| *term == 1));
}

fn seed() -> u64 {
    std::env::var("ZERO_AHEAD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(1)
        })
}
