//! The segment log under damage: a torn tail is cut off, damage in the middle stops the start
//! with the file and offset, and an explicit repair truncates there. Also Raft's conflict
//! truncation (`truncate_from`) and appends at dictated indexes (`append_at`).

mod log_support;

use engine::log::{find_tail, repair_log, scan_log, LogError};
use log_support::{
    append_flushed, body_of, indexes, on_glommio, open_writer, terms, write_records,
};
use std::path::{Path, PathBuf};

fn last_segment(dir: &Path) -> PathBuf {
    engine::log::list_segments(dir).unwrap().pop().unwrap().path
}

/// Offset of the record with `index` in `path`.
fn offset_of(dir: &Path, index: u64) -> (PathBuf, u64) {
    let mut found = None;
    scan_log::<LogError>(dir, 1, |r| {
        if r.header.index == index {
            found = Some(r.offset);
        }
        Ok(())
    })
    .unwrap();
    let path = engine::log::list_segments(dir)
        .unwrap()
        .into_iter()
        .rfind(|s| s.first_index <= index)
        .unwrap()
        .path;
    (path, found.unwrap())
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn appends_survive_reopen_and_rotation_keeps_indexes_continuous() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 300, 7, 64 << 10);
    write_records(dir.path(), 200, 13, 64 << 10);
    assert_eq!(indexes(dir.path()), (1..=500).collect::<Vec<_>>());
    assert!(engine::log::list_segments(dir.path()).unwrap().len() > 3);
}

#[test]
fn torn_tail_is_cut_off_and_the_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 50, 5, 1 << 20);
    // Tear the last record: garble its body's last bytes as a half-done write would.
    let (path, offset) = offset_of(dir.path(), 50);
    flip_byte(&path, offset + 64 + 20);
    let tail = find_tail(dir.path()).unwrap();
    let torn = tail.torn.clone().expect("a torn tail is reported");
    assert_eq!((torn.path, torn.offset), (path, offset));
    assert_eq!(tail.last_index, 49);
    // Opening the writer cuts it; the next record takes index 50.
    write_records(dir.path(), 10, 3, 1 << 20);
    assert_eq!(indexes(dir.path()), (1..=59).collect::<Vec<_>>());
}

#[test]
fn a_half_written_header_at_the_end_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 20, 4, 1 << 20);
    let tail = find_tail(dir.path()).unwrap();
    let path = last_segment(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[tail.end_offset as usize..tail.end_offset as usize + 30].fill(0xab);
    std::fs::write(&path, bytes).unwrap();
    let tail = find_tail(dir.path()).unwrap();
    assert_eq!(tail.last_index, 20);
    assert_eq!(tail.torn.unwrap().offset, tail.end_offset);
}

#[test]
fn corruption_before_the_tail_refuses_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 50, 5, 1 << 20);
    let (path, offset) = offset_of(dir.path(), 20);
    flip_byte(&path, offset + 64 + 3);
    let err = find_tail(dir.path()).unwrap_err();
    match &err {
        LogError::Corrupt {
            path: p, offset: o, ..
        } => assert_eq!((p, *o), (&path, offset)),
        other => panic!("expected corruption, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.contains(&offset.to_string()),
        "{message}"
    );
    assert!(message.contains("--repair"), "{message}");

    // Explicit repair cuts the log at the damage; records before it stay.
    let cut = repair_log(dir.path()).unwrap();
    assert_eq!(cut, Some((path, offset)));
    assert_eq!(indexes(dir.path()), (1..=19).collect::<Vec<_>>());
}

#[test]
fn corruption_in_an_earlier_segment_is_never_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 400, 9, 64 << 10);
    let segments = engine::log::list_segments(dir.path()).unwrap();
    assert!(segments.len() >= 3);
    // The last record of the first segment: nothing valid follows it in that file.
    let last_in_first = segments[1].first_index - 1;
    let (path, offset) = offset_of(dir.path(), last_in_first);
    assert_eq!(path, segments[0].path);
    flip_byte(&path, offset + 64);
    let err = scan_log::<LogError>(dir.path(), 1, |_| Ok(())).unwrap_err();
    assert!(
        matches!(err, LogError::Corrupt { offset: o, .. } if o == offset),
        "{err}"
    );
}

#[test]
fn a_zeroed_block_in_the_middle_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 50, 5, 1 << 20);
    let (path, offset) = offset_of(dir.path(), 10);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize..offset as usize + 64].fill(0);
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(
        find_tail(dir.path()),
        Err(LogError::Corrupt { .. })
    ));
}

/// Raft's conflict truncation: cut the log at `cut`, then append `more` records of term 2 at
/// the dictated indexes, reopen, and check the log is 1..cut-1 of term 1 then term 2.
fn truncate_then_append(total: u64, cut: u64, more: u64) {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes = 64 << 10;
    write_records(dir.path(), total, 7, segment_bytes);
    let segments_before = engine::log::list_segments(dir.path()).unwrap().len();
    let path = dir.path().to_path_buf();
    on_glommio(move || async move {
        let mut writer = open_writer(&path, segment_bytes).await;
        writer.truncate_from(cut).await.unwrap();
        assert_eq!(writer.last_index(), cut - 1);
        assert_eq!(writer.durable_index(), cut - 1);
        append_flushed(&mut writer, more, 2).await;
        writer.close().await.unwrap();
    });
    let expected: Vec<(u64, u64)> = (1..cut)
        .map(|i| (i, 1))
        .chain((cut..cut + more).map(|i| (i, 2)))
        .collect();
    assert_eq!(terms(dir.path()), expected, "cut at {cut} of {total}");
    assert_eq!(indexes(dir.path()), (1..cut + more).collect::<Vec<_>>());
    let segments_after = engine::log::list_segments(dir.path()).unwrap().len();
    assert!(segments_after <= segments_before + 1);
}

#[test]
fn truncation_cuts_a_conflicting_suffix_and_appends_continue_at_the_cut() {
    // 400 records over many 64 KiB segments: cut in the last segment, in an earlier one
    // (later segments deleted), at the very first record of a segment, and at index 1.
    let total = 400;
    let probe = tempfile::tempdir().unwrap();
    write_records(probe.path(), total, 7, 64 << 10);
    let first_of_third = engine::log::list_segments(probe.path()).unwrap()[2].first_index;
    for cut in [total, total - 3, total / 2, first_of_third, 2, 1] {
        truncate_then_append(total, cut, 25);
    }
}

#[test]
fn truncating_past_the_end_changes_nothing_and_before_the_start_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 20, 5, 64 << 10);
    let path = dir.path().to_path_buf();
    on_glommio(move || async move {
        let mut writer = open_writer(&path, 64 << 10).await;
        writer.truncate_from(21).await.unwrap();
        assert_eq!(writer.last_index(), 20);
        assert!(writer.truncate_from(0).await.is_err());
        writer.close().await.unwrap();
    });
    assert_eq!(indexes(dir.path()), (1..=20).collect::<Vec<_>>());
}

/// A writer reopened on the thread that created the log (as `truncate_from` does) reads its
/// tail block back. glommio's iopoll probe on the new, empty first segment used to make every
/// later DMA read on that thread fail with EOPNOTSUPP.
#[test]
fn a_writer_reopened_on_the_thread_that_created_the_log_reads_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    on_glommio(move || async move {
        let mut writer = open_writer(&path, 64 << 10).await;
        append_flushed(&mut writer, 5, 1).await;
        writer.close().await.unwrap();
        let mut writer = open_writer(&path, 64 << 10).await;
        assert_eq!(writer.last_index(), 5);
        writer.truncate_from(3).await.unwrap();
        append_flushed(&mut writer, 2, 2).await;
        writer.close().await.unwrap();
    });
    assert_eq!(terms(dir.path()), [(1, 1), (2, 1), (3, 2), (4, 2)]);
}

/// A log that never held a record may start at any index (openraft's storage contract allows
/// it); after that, appends continue without a gap, also after a restart.
#[test]
fn a_pristine_log_starts_at_its_first_append_at_and_then_continues_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    on_glommio(move || async move {
        let mut writer = open_writer(&path, 64 << 10).await;
        assert!(writer.is_pristine());
        writer.append_at(7, 1, 1_007, 9, &body_of(7)).unwrap();
        assert!(!writer.is_pristine());
        writer.flush().await.unwrap();
        append_flushed(&mut writer, 2, 1).await;
        assert_eq!((writer.first_live_index(), writer.last_index()), (7, 9));
        writer.close().await.unwrap();
        let mut writer = open_writer(&path, 64 << 10).await;
        assert!(!writer.is_pristine());
        assert_eq!((writer.first_live_index(), writer.last_index()), (7, 9));
        let gap = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            writer.append_at(11, 1, 1_011, 9, &body_of(11))
        }));
        assert!(gap.is_err(), "a gap after the first record is refused");
        writer.close().await.unwrap();
    });
    assert_eq!(indexes(dir.path()), [7, 8, 9]);
    assert_eq!(
        engine::log::list_segments(dir.path()).unwrap()[0].first_index,
        7
    );
}

/// (index, term, body length) of the records `from..until`, read with `hints`.
fn read_with(
    w: &engine::log::LogWriter,
    hints: &mut engine::log::OffsetHints,
    from: u64,
    until: u64,
) -> Vec<(u64, u64, usize)> {
    let mut out = Vec::new();
    engine::log::read_range::<LogError>(w.segments(), hints, from, until, |r| {
        out.push((r.header.index, r.header.term, r.body.len()));
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn reads_that_start_from_offset_hints_equal_walks_from_the_start_across_a_truncation() {
    use engine::log::OffsetHints;
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 400, 7, 64 << 10);
    let path = dir.path().to_path_buf();
    on_glommio(move || async move {
        let mut w = open_writer(&path, 64 << 10).await;
        assert!(w.segments().len() > 2, "several segments");
        let ranges: Vec<(u64, u64)> = (1..400)
            .step_by(13)
            .map(|f| (f, (f + 29).min(401)))
            .collect();
        // Shared hints (stride 3) against fresh ones: the same records either way.
        let mut shared = OffsetHints::new(3);
        for &(from, until) in ranges.iter().chain(ranges.iter().rev()) {
            let want = read_with(&w, &mut OffsetHints::new(3), from, until);
            assert_eq!(want.len() as u64, until - from);
            assert_eq!(
                read_with(&w, &mut shared, from, until),
                want,
                "{from}..{until}"
            );
        }
        // Cut at 250 and append records of other sizes in term 2: offsets after the cut move.
        w.truncate_from(250).await.unwrap();
        for index in 250..=400u64 {
            let body = vec![0xAB; 60 + (index as usize % 13)];
            if !w.has_room(body.len()) {
                w.flush().await.unwrap();
            }
            w.append_at(index, 2, 5_000 + index, 9, &body).unwrap();
        }
        w.flush().await.unwrap();
        // Hints the owner did not invalidate are caught by their header check; invalidated
        // ones are simply gone. Both read what a walk from the start reads.
        let mut invalidated = OffsetHints::new(3);
        for &(from, until) in &ranges {
            let _ = read_with(&w, &mut invalidated, from, until.min(250));
        }
        invalidated.forget_from(250);
        for &(from, until) in &ranges {
            let want = read_with(&w, &mut OffsetHints::new(3), from, until);
            assert_eq!(
                read_with(&w, &mut shared, from, until),
                want,
                "stale {from}..{until}"
            );
            assert_eq!(
                read_with(&w, &mut invalidated, from, until),
                want,
                "{from}..{until}"
            );
            assert!(want.iter().all(|&(i, t, _)| (i < 250) == (t == 1)));
        }
        w.close().await.unwrap();
    });
}

/// A whole record of another format version (written by another build) is refused at start,
/// never taken for a torn tail and cut off: a downgrade would otherwise lose what the newer
/// build wrote.
#[test]
fn a_record_of_another_format_version_is_refused_never_cut_off() {
    const HEADER_BYTES: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 50, 5, 1 << 20);
    let (path, offset) = offset_of(dir.path(), 50);
    let mut bytes = std::fs::read(&path).unwrap();
    let h = &mut bytes[offset as usize..offset as usize + HEADER_BYTES];
    h[42..44].copy_from_slice(&2u16.to_le_bytes());
    let checksum = crc32c::crc32c(&h[8..]);
    h[4..8].copy_from_slice(&checksum.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();

    let err = find_tail(dir.path()).unwrap_err();
    assert!(
        matches!(&err, LogError::UnsupportedFormat { offset: o, version: 2, .. } if *o == offset),
        "{err}"
    );
    assert!(err.to_string().contains("record format version 2"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was cut off");
}
