//! Claim: a last block cut at any byte (the rest never written, or the file itself cut short)
//! is a torn tail: recovery removes exactly it, reports where and how much, keeps every block
//! before it, and the log goes on from the last intact tick, cleanly across the next reopen.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{append_documents, block_layout, copy_dir, engines, options, read_all, segment_files};
use tickship_storage::wal::{IoEngine, Record};
use tickship_storage::{Tick, Wal};

const BLOCKS: u64 = 12;

/// A WAL of `BLOCKS` single-record blocks in one segment; returns the last block's offset and
/// length in the (only) segment file.
fn pristine(dir: &Path, engine: IoEngine) -> (usize, usize) {
    let wal = Wal::open(dir, options(engine)).expect("open");
    append_documents(&wal, 1, BLOCKS, 150);
    wal.close().expect("close");
    let files = segment_files(dir);
    assert_eq!(files.len(), 1);
    let layout = block_layout(&files[0]);
    assert_eq!(layout.len() as u64, BLOCKS);
    *layout.last().expect("blocks")
}

/// Opens the damaged copy, checks recovery kept exactly the blocks before the last one and cut
/// at most `torn_bytes_max` bytes (none if 0), appends, and reopens.
fn check_recovers(
    dir: &Path,
    engine: IoEngine,
    last_offset: usize,
    torn_bytes_max: usize,
    cut: usize,
    what: &str,
) {
    let wal = Wal::open(dir, options(engine))
        .unwrap_or_else(|e| panic!("{what} at {cut}: open failed: {e}"));
    match &wal.recovery_report().torn_tail {
        Some(torn) => {
            assert_eq!(
                torn.offset as usize, last_offset,
                "{what} at {cut}: cut where the last block starts"
            );
            assert!(
                torn.bytes > 0 && torn.bytes as usize <= torn_bytes_max,
                "{what} at {cut}: {torn:?}"
            );
        }
        None => assert_eq!(
            torn_bytes_max, 0,
            "{what} at {cut}: damage must be reported"
        ),
    }
    assert_eq!(wal.last_tick(), Tick::new(BLOCKS - 1), "{what} at {cut}");
    let records = read_all(&wal, Tick::ZERO);
    assert_eq!(records.len() as u64, BLOCKS - 1, "{what} at {cut}");
    for (i, record) in records.iter().enumerate() {
        assert_eq!(
            record.data,
            common::document(1, i as u64, 150),
            "{what} at {cut}: block {i} intact"
        );
    }
    let ticks = wal
        .append(&[Record::put("_system", "docs", "new", b"{\"new\":1}")])
        .expect("append");
    assert_eq!(
        ticks.first,
        Tick::new(BLOCKS),
        "{what} at {cut}: the lost tick is reused, never acknowledged"
    );
    wal.close().expect("close");
    let wal = Wal::open(dir, options(engine)).expect("reopen");
    assert_eq!(
        wal.recovery_report().torn_tail,
        None,
        "{what} at {cut}: the cut is durable"
    );
    assert_eq!(wal.last_tick(), Tick::new(BLOCKS));
    assert_eq!(
        read_all(&wal, Tick::new(BLOCKS - 1))[0].data,
        b"{\"new\":1}"
    );
}

/// For each engine and each byte `cut` of the last block: a copy of the pristine WAL whose
/// segment file `damage` hurts from there, then the recovery checks.
fn every_cut(what: &str, damage: impl Fn(&std::fs::File, usize, usize)) {
    for engine in engines() {
        let pristine_dir = tempfile::tempdir().expect("tempdir");
        let (offset, len) = pristine(pristine_dir.path(), engine);
        for cut in 0..len {
            let dir = tempfile::tempdir().expect("tempdir");
            copy_dir(pristine_dir.path(), dir.path());
            let file = OpenOptions::new()
                .write(true)
                .open(&segment_files(dir.path())[0])
                .expect("open segment");
            damage(&file, offset + cut, len - cut);
            check_recovers(dir.path(), engine, offset, cut, cut, what);
        }
    }
}

#[test]
fn last_block_zeroed_from_every_byte() {
    every_cut("zeroed", |file, from, rest| {
        file.write_all_at(&vec![0u8; rest], from as u64)
            .expect("zero");
    });
}

#[test]
fn segment_file_cut_short_at_every_byte() {
    every_cut("truncated", |file, from, _| {
        file.set_len(from as u64).expect("truncate");
    });
}

#[test]
fn last_block_with_garbage_tail_on_every_engine() {
    for engine in engines() {
        let pristine_dir = tempfile::tempdir().expect("tempdir");
        let (offset, len) = pristine(pristine_dir.path(), engine);
        for cut in [1, 39, 40, 41, len / 2, len - 1] {
            let dir = tempfile::tempdir().expect("tempdir");
            copy_dir(pristine_dir.path(), dir.path());
            let file = OpenOptions::new()
                .write(true)
                .open(&segment_files(dir.path())[0])
                .expect("open segment");
            // A write that reached the disk only partly, with stale garbage after it.
            let garbage: Vec<u8> = (0..len - cut + 300)
                .map(|i| (i * 7 + 3) as u8 | 1)
                .collect();
            file.write_all_at(&garbage, (offset + cut) as u64)
                .expect("garbage");
            check_recovers(dir.path(), engine, offset, len + 300, cut, "garbage");
        }
    }
}
