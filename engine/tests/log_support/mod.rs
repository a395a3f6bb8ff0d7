//! Helpers shared by the segment log tests (`log_recovery.rs`, `log_purge.rs`): running on a
//! glommio executor, opening a writer, writing and reading back records whose body is their
//! index repeated (so a stale or misplaced body is caught).
#![allow(dead_code)] // each test crate uses a subset

use engine::log::{find_tail, scan_log, LogError, LogWriter, WriterOptions};
use std::path::Path;

/// Runs `f` on a fresh glommio executor; a panic inside it resumes in the caller (so a
/// proptest sees the real message).
pub fn on_glommio<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    let joined = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(f)
        .unwrap()
        .join();
    match joined {
        Ok(value) => value,
        Err(glommio::GlommioError::BuilderError(glommio::BuilderErrorKind::ThreadPanic(p))) => {
            std::panic::resume_unwind(p)
        }
        Err(other) => panic!("glommio executor: {other}"),
    }
}

/// Writer options with `segment_bytes` segments and a flush group of a quarter of one.
pub fn options(segment_bytes: u64) -> WriterOptions {
    WriterOptions {
        segment_bytes,
        pending_bytes_max: (segment_bytes / 4) as usize,
        ..Default::default()
    }
}

/// Opens the writer of `dir` from a fresh tail scan, as a start does.
pub async fn open_writer(dir: &Path, segment_bytes: u64) -> LogWriter {
    let tail = find_tail(dir).unwrap();
    LogWriter::open(dir, options(segment_bytes), &tail)
        .await
        .unwrap()
}

/// The body of the record at `index`: its low byte repeated, 100 to 999 bytes.
pub fn body_of(index: u64) -> Vec<u8> {
    vec![index as u8; 100 + (index as usize * 37) % 900]
}

/// Appends records `last_index + 1 ..= last_index + count` of `term`, flushing whenever the
/// flush group is full, then flushes.
pub async fn append_flushed(writer: &mut LogWriter, count: u64, term: u64) {
    for _ in 0..count {
        let index = writer.last_index() + 1;
        let body = body_of(index);
        if !writer.has_room(body.len()) {
            writer.flush().await.unwrap();
        }
        writer
            .append_at(index, term, 1_000 + index, 9, &body)
            .unwrap();
    }
    writer.flush().await.unwrap();
}

/// Writes `count` records of term 1, flushing every `per_flush`.
pub fn write_records(dir: &Path, count: u64, per_flush: u64, segment_bytes: u64) {
    let dir = dir.to_path_buf();
    on_glommio(move || async move {
        let mut writer = open_writer(&dir, segment_bytes).await;
        for i in 1..=count {
            let index = writer.last_index() + 1;
            writer.append(1, 1_000 + index, 9, &body_of(index)).unwrap();
            if i % per_flush == 0 {
                writer.flush().await.unwrap();
            }
        }
        writer.flush().await.unwrap();
        writer.close().await.unwrap();
    })
}

/// (index, term) of every record a reader is served, checking each body.
pub fn terms(dir: &Path) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    scan_log::<LogError>(dir, 1, |r| {
        assert_eq!(
            r.body,
            body_of(r.header.index),
            "body of {}",
            r.header.index
        );
        seen.push((r.header.index, r.header.term));
        Ok(())
    })
    .unwrap();
    seen
}

/// The index of every record a reader is served.
pub fn indexes(dir: &Path) -> Vec<u64> {
    terms(dir).into_iter().map(|(index, _)| index).collect()
}
