//! Claim: opening a WAL directory that holds something the WAL cannot account for fails with a
//! precise error instead of guessing: a foreign file, a missing segment, segments whose ticks
//! go backwards, a second process; while the WAL's own leftovers (a spare file, a segment
//! renamed into place but never written) are cleaned up.

mod common;

use common::{append_documents, engines, options, segment_files};
use tickship_storage::wal::segment::file_name;
use tickship_storage::wal::IoEngine;
use tickship_storage::{Error, SegmentId, Tick, Wal};

fn three_segments(engine: IoEngine) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), options(engine)).expect("open");
    append_documents(&wal, 1, 250, 1000);
    assert!(wal.tick_ranges().len() >= 3);
    dir
}

fn directory_error(result: Result<Wal, Error>) -> String {
    match result {
        Err(Error::Directory { reason, .. }) => reason,
        Err(other) => panic!("expected a directory error, got {other}"),
        Ok(_) => panic!("opened"),
    }
}

#[test]
fn foreign_file_is_refused() {
    for engine in engines() {
        let dir = three_segments(engine);
        std::fs::write(dir.path().join("notes.txt"), b"hello").expect("write");
        let reason = directory_error(Wal::open(dir.path(), options(engine)));
        assert!(reason.contains("notes.txt"), "{reason}");
    }
}

#[test]
fn missing_segment_is_refused() {
    for engine in engines() {
        let dir = three_segments(engine);
        std::fs::remove_file(&segment_files(dir.path())[1]).expect("remove");
        let reason = directory_error(Wal::open(dir.path(), options(engine)));
        assert!(reason.contains("segment 1 is missing"), "{reason}");
    }
}

#[test]
fn misnamed_segment_is_refused() {
    for engine in engines() {
        let dir = three_segments(engine);
        let files = segment_files(dir.path());
        let renamed = dir.path().join(file_name(SegmentId::new(1), Tick::new(3)));
        std::fs::rename(&files[1], &renamed).expect("rename");
        match Wal::open(dir.path(), options(engine)) {
            Err(Error::Corruption {
                segment_id,
                offset: 0,
                reason,
                ..
            }) => {
                assert_eq!(segment_id, SegmentId::new(1));
                assert!(reason.contains("file name"), "{reason}");
            }
            Err(other) => panic!("expected corruption, got {other}"),
            Ok(_) => panic!("opened"),
        }
    }
}

#[test]
fn second_process_is_refused() {
    for engine in engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _wal = Wal::open(dir.path(), options(engine)).expect("open");
        match Wal::open(dir.path(), options(engine)) {
            Err(Error::Io { op: "lock", .. }) => {}
            Err(other) => panic!("expected a lock error, got {other}"),
            Ok(_) => panic!("opened twice"),
        }
    }
}

#[test]
fn own_leftovers_are_cleaned_up() {
    for engine in engines() {
        let dir = three_segments(engine);
        let files = segment_files(dir.path());
        let name = files
            .last()
            .and_then(|f| f.file_name())
            .and_then(|n| n.to_str())
            .expect("name");
        let (last_id, _) =
            tickship_storage::wal::segment::parse_file_name(name).expect("segment name");
        let last_tick = Wal::open(dir.path(), options(engine))
            .expect("open")
            .last_tick();
        // A spare left by a crash, and a segment renamed into place but never written.
        let spare = dir.path().join("spare-7.wal.tmp");
        std::fs::write(&spare, vec![0u8; 4096]).expect("spare");
        let blank = dir.path().join(file_name(
            last_id.next(),
            last_tick.checked_next().expect("next"),
        ));
        std::fs::write(&blank, vec![0u8; 64 << 10]).expect("blank segment");
        let wal = Wal::open(dir.path(), options(engine)).expect("open");
        assert_eq!(wal.recovery_report().removed, vec![blank.clone()]);
        assert!(!blank.exists());
        assert!(!spare.exists());
        assert_eq!(wal.last_tick(), last_tick);
        let ticks = wal
            .append(&[tickship_storage::wal::Record::put(
                "_system", "c", "k", b"{}",
            )])
            .expect("append");
        assert_eq!(ticks.first, last_tick.checked_next().expect("next"));
        drop(wal);
        let wal =
            Wal::open(dir.path(), options(engine)).expect("reopen: segment ids stay contiguous");
        assert_eq!(wal.last_tick(), ticks.first);
    }
}
