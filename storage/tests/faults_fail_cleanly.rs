//! Claim: injected I/O faults get precise errors and lose nothing acknowledged. A failed
//! fdatasync or write stops the writer for good (never retried and reported durable); ENOSPC
//! while preparing a segment fails only the appends that needed it; a crash between writing a
//! seal and cutting the file is completed at the next open.
//!
//! Needs the `failpoints` feature; the fail points are process-global, so each test holds a
//! `FailScenario`, which serialises them.
#![cfg(feature = "failpoints")]

mod common;

use common::{append_documents, engines, options, read_all};
use fail::FailScenario;
use tickship_storage::wal::Record;
use tickship_storage::{Error, Tick, Wal};

fn put(wal: &Wal, key: &str) -> Result<tickship_storage::TickRange, Error> {
    wal.append(&[Record::put("_system", "c", key, br#"{"v":1}"#)])
}

#[test]
fn failed_fdatasync_stops_the_writer_for_good() {
    for engine in engines() {
        let scenario = FailScenario::setup();
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), options(engine)).expect("open");
        let acknowledged = append_documents(&wal, 1, 20, 200);
        fail::cfg("wal::segment::sync::err", "return").expect("failpoint");
        let error = put(&wal, "lost").expect_err("sync fails");
        let text = error.to_string();
        assert!(text.contains("fdatasync"), "{engine}: {text}");
        fail::remove("wal::segment::sync::err");
        // For good: the disk is fine again, the writer is not.
        assert!(
            matches!(put(&wal, "after"), Err(Error::WriterFailed(reason)) if reason.contains("fdatasync"))
        );
        assert!(matches!(wal.close(), Err(Error::WriterFailed(_))));
        drop(wal);
        let wal = Wal::open(dir.path(), options(engine)).expect("reopen");
        let records = read_all(&wal, Tick::ZERO);
        assert!(
            records.len() >= acknowledged.len(),
            "{engine}: every acknowledged append survives"
        );
        for (i, record) in records.iter().take(acknowledged.len()).enumerate() {
            assert_eq!(record.data, common::document(1, i as u64, 200));
        }
        scenario.teardown();
    }
}

#[test]
fn failed_write_stops_the_writer_for_good() {
    for engine in engines() {
        let scenario = FailScenario::setup();
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), options(engine)).expect("open");
        append_documents(&wal, 1, 5, 200);
        fail::cfg("wal::segment::write::err", "return").expect("failpoint");
        let error = put(&wal, "lost").expect_err("write fails");
        assert!(error.to_string().contains("write"), "{engine}: {error}");
        fail::remove("wal::segment::write::err");
        assert!(matches!(put(&wal, "after"), Err(Error::WriterFailed(_))));
        scenario.teardown();
    }
}

#[test]
fn enospc_preparing_a_segment_fails_only_what_needed_it() {
    for engine in engines() {
        let scenario = FailScenario::setup();
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), options(engine)).expect("open");
        // The first segment comes from the spare prepared at open; once the fail point is on, the
        // next segment cannot be prepared (a spare prepared meanwhile may still serve one more).
        let mut acknowledged = vec![put(&wal, "first").expect("append").first];
        fail::cfg("wal::segment::preallocate::enospc", "return").expect("failpoint");
        let error = loop {
            let key = format!("k{}", acknowledged.len());
            let doc = common::document(2, acknowledged.len() as u64, 1000);
            match wal.append(&[Record::put("_system", "c", &key, &doc)]) {
                Ok(ticks) => acknowledged.push(ticks.first),
                Err(error) => break error,
            }
            assert!(acknowledged.len() < 1000, "segments never filled up");
        };
        match &error {
            Error::Io { op, cause, .. } => {
                assert_eq!(*op, "preallocate");
                assert_eq!(cause.raw_os_error(), Some(libc::ENOSPC));
                assert!(error.is_no_space());
                assert!(
                    error.to_string().contains("No space left on device"),
                    "{error}"
                );
            }
            other => panic!("expected ENOSPC, got {other}"),
        }
        let last = wal.last_tick();
        assert_eq!(last, *acknowledged.last().expect("some appends succeeded"));
        fail::remove("wal::segment::preallocate::enospc");
        // Space is back: the very next append succeeds, with the next tick.
        let ticks = put(&wal, "after").expect("append after space is freed");
        assert_eq!(ticks.first, last.checked_next().expect("next"));
        assert_eq!(read_all(&wal, Tick::ZERO).len(), acknowledged.len() + 1);
        scenario.teardown();
    }
}

#[test]
fn crash_between_seal_and_cut_is_completed_at_open() {
    for engine in engines() {
        let scenario = FailScenario::setup();
        let dir = tempfile::tempdir().expect("tempdir");
        let acknowledged = {
            let wal = Wal::open(dir.path(), options(engine)).expect("open");
            fail::cfg("wal::segment::truncate::err", "return").expect("failpoint");
            let mut acknowledged = 0u64;
            loop {
                let doc = common::document(3, acknowledged, 1000);
                match wal.append(&[Record::put("_system", "c", "k", &doc)]) {
                    Ok(_) => acknowledged += 1,
                    Err(Error::Io { op: "truncate", .. }) => break,
                    Err(other) => panic!("unexpected error {other}"),
                }
            }
            fail::remove("wal::segment::truncate::err");
            acknowledged
        };
        let wal = Wal::open(dir.path(), options(engine)).expect("reopen");
        assert_eq!(
            wal.recovery_report().resealed.len(),
            1,
            "{:?}",
            wal.recovery_report()
        );
        let ranges = wal.tick_ranges();
        assert!(ranges[0].sealed);
        assert_eq!(
            ranges[0].file_bytes,
            std::fs::metadata(&ranges[0].path).expect("stat").len()
        );
        assert!(
            ranges[0].file_bytes < 64 << 10,
            "the preallocated tail was cut"
        );
        assert_eq!(read_all(&wal, Tick::ZERO).len() as u64, acknowledged);
        let ticks = put(&wal, "after").expect("append");
        assert_eq!(ticks.first.get(), acknowledged + 1);
        scenario.teardown();
    }
}
