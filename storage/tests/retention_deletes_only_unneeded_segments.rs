//! Claim: retention deletes a sealed segment only when no unexpired barrier, no store recovery
//! need, the historic count, the file timeout or the initial timeout keeps it; the archive size
//! limit overrides barriers and names the clients that lost their position; deleted ticks read
//! as `TickCompacted`; the WAL reopens after deletions with its ticks intact.

mod common;

use std::time::{Duration, SystemTime};

use common::{append_documents, engines, options, segment_files};
use tickship_storage::wal::{IoEngine, KeepReason, RetentionPolicy};
use tickship_storage::{Error, Tick, Wal, WalOptions};

fn retention_options(engine: IoEngine, policy: RetentionPolicy) -> WalOptions {
    WalOptions {
        retention: policy,
        ..options(engine)
    }
}

fn policy() -> RetentionPolicy {
    RetentionPolicy {
        historic_count: 2,
        file_timeout: Duration::from_secs(10),
        file_timeout_initial: Duration::from_secs(180),
        archive_bytes_max: 0,
    }
}

/// A WAL with at least 7 sealed segments.
fn filled(engine: IoEngine, dir: &std::path::Path, policy: RetentionPolicy) -> Wal {
    let wal = Wal::open(dir, retention_options(engine, policy)).expect("open");
    append_documents(&wal, 1, 700, 1000);
    assert!(wal.tick_ranges().iter().filter(|r| r.sealed).count() >= 7);
    wal
}

fn after(wal: &Wal, seconds: u64) -> SystemTime {
    wal.opened_at() + Duration::from_secs(seconds)
}

#[test]
fn timeouts_historic_count_and_store_tick() {
    for engine in engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = filled(engine, dir.path(), policy());
        let files_before = segment_files(dir.path()).len();
        let sealed_before = wal.tick_ranges().iter().filter(|r| r.sealed).count();

        let report = wal.run_retention(after(&wal, 500)).expect("retention");
        assert!(report.deleted.is_empty());
        assert_eq!(
            report.kept,
            Some(KeepReason::NoStoreTick),
            "nothing goes before the store reports a tick"
        );

        wal.set_store_tick(wal.last_tick());
        let report = wal.run_retention(after(&wal, 100)).expect("retention");
        assert_eq!(report.kept, Some(KeepReason::InitialTimeout));
        let report = wal.run_retention(after(&wal, 500)).expect("retention");
        assert!(report.deleted.is_empty(), "the file timeout starts now");
        let report = wal.run_retention(after(&wal, 510)).expect("retention");
        assert_eq!(
            report.deleted.len(),
            sealed_before - 2,
            "all but the 2 historic segments"
        );
        assert_eq!(report.kept, Some(KeepReason::Historic));
        assert_eq!(
            segment_files(dir.path()).len(),
            files_before - report.deleted.len()
        );
        for path in &report.deleted {
            assert!(!path.exists());
        }

        let first = wal.first_tick().expect("first tick");
        assert!(first > Tick::new(1));
        assert!(wal.contains_after(first.saturating_prev()));
        assert!(!wal.contains_after(Tick::ZERO));
        assert!(matches!(
            wal.reader_after(Tick::ZERO),
            Err(Error::TickCompacted(_))
        ));
        assert_eq!(
            common::read_all(&wal, first.saturating_prev()).len() as u64,
            wal.last_tick().get() - first.get() + 1
        );
        let last = wal.last_tick();
        wal.close().expect("close");

        let wal = Wal::open(dir.path(), retention_options(engine, policy()))
            .expect("reopen after deletions");
        assert_eq!(wal.first_tick(), Some(first));
        assert_eq!(wal.last_tick(), last);
        let next = wal
            .append(&[tickship_storage::wal::Record::put(
                "_system", "c", "k", b"{}",
            )])
            .expect("append");
        assert_eq!(next.first, last.checked_next().expect("next"));
    }
}

#[test]
fn barriers_hold_segments_until_they_expire() {
    for engine in engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = filled(engine, dir.path(), policy());
        wal.set_store_tick(wal.last_tick());
        let ranges = wal.tick_ranges();
        let barrier_tick = ranges[2].tick_min; // inside segment 2: segments 0 and 1 are not needed
        wal.set_barrier("follower-1", barrier_tick, after(&wal, 1000))
            .expect("barrier");
        wal.run_retention(after(&wal, 500)).expect("retention");
        let report = wal.run_retention(after(&wal, 510)).expect("retention");
        assert_eq!(
            report.deleted,
            vec![ranges[0].path.clone(), ranges[1].path.clone()]
        );
        assert_eq!(
            report.kept,
            Some(KeepReason::Barrier {
                client: "follower-1".into(),
                tick: barrier_tick
            })
        );
        // Extending keeps it; once expired it is dropped and its segments go after the timeout.
        assert!(wal.extend_barrier("follower-1", after(&wal, 2000)));
        assert!(wal
            .run_retention(after(&wal, 1500))
            .expect("retention")
            .deleted
            .is_empty());
        let report = wal.run_retention(after(&wal, 2000)).expect("retention");
        assert_eq!(report.expired_clients, vec!["follower-1".to_string()]);
        let report = wal.run_retention(after(&wal, 2010)).expect("retention");
        assert!(!report.deleted.is_empty());
        assert!(wal.barriers().is_empty());
        assert!(!wal.drop_barrier("follower-1"));
    }
}

#[test]
fn archive_limit_overrides_barriers_and_reports_lost_clients() {
    for engine in engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut limited = policy();
        limited.archive_bytes_max = 3 * (64 << 10);
        let wal = filled(engine, dir.path(), limited.clone());
        wal.set_store_tick(wal.last_tick());
        wal.set_barrier("slow", Tick::new(5), after(&wal, 10_000))
            .expect("barrier");
        let recent = wal.tick_ranges().last().expect("ranges").tick_min;
        wal.set_barrier("fast", recent, after(&wal, 10_000))
            .expect("barrier");

        let report = wal.run_retention(after(&wal, 100)).expect("retention");
        assert!(
            report.deleted.is_empty(),
            "the archive limit waits for the initial timeout"
        );
        let report = wal.run_retention(after(&wal, 181)).expect("retention");
        assert!(!report.forced.is_empty());
        assert_eq!(
            report.lost_clients,
            vec![("slow".to_string(), Tick::new(5))]
        );
        let sealed_bytes: u64 = wal
            .tick_ranges()
            .iter()
            .filter(|r| r.sealed)
            .map(|r| r.file_bytes)
            .sum();
        assert!(sealed_bytes <= limited.archive_bytes_max, "{sealed_bytes}");
        let lost = wal.lost_position("slow").expect("slow lost its position");
        assert_eq!(lost.tick, Tick::new(5));
        assert!(wal.lost_position("fast").is_none());
        assert!(matches!(
            wal.set_barrier("slow", Tick::new(5), after(&wal, 10_000)),
            Err(Error::TickCompacted(_))
        ));
    }
}

#[test]
fn newest_segment_is_never_deleted() {
    for engine in engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut everything = policy();
        everything.historic_count = 0;
        everything.file_timeout = Duration::ZERO;
        everything.file_timeout_initial = Duration::ZERO;
        let wal = filled(engine, dir.path(), everything);
        wal.set_store_tick(wal.last_tick());
        wal.run_retention(after(&wal, 1)).expect("retention");
        let ranges = wal.tick_ranges();
        assert_eq!(ranges.len(), 1, "only the open segment remains: {ranges:?}");
        assert_eq!(ranges[0].tick_max, wal.last_tick());
    }
}
