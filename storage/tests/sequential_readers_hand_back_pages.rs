//! Claim: a reader going through the WAL from start to end keeps only the last few MiB of the
//! segment mappings it read resident, within one large segment and across many small ones, and
//! none once it is dropped; what it reads is unchanged (every tick, in order). Without it a
//! follower catching up 10 GB counted ~2 GB of its WAL in its resident set.

mod common;

use tickship_storage::wal::Record;
use tickship_storage::{Tick, Wal, WalOptions};

/// Documents per append and their size: incompressible, so the WAL holds about what is written.
const BATCH: usize = 500;
const DOC_BYTES: usize = 1024;

/// Appends `batches` × `BATCH` documents of random bytes; returns the last tick.
fn fill(wal: &Wal, batches: usize) -> Tick {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut last = Tick::ZERO;
    for batch in 0..batches {
        let docs: Vec<(String, Vec<u8>)> = (0..BATCH)
            .map(|i| {
                (
                    format!("k{batch}-{i}"),
                    common::noise(&mut state, DOC_BYTES),
                )
            })
            .collect();
        let records: Vec<Record> = docs
            .iter()
            .map(|(key, doc)| Record::put("_system", "docs", key, doc))
            .collect();
        last = wal.append(&records).expect("append").last;
    }
    last
}

fn reads_through_and_keeps_little_mapped(segment_bytes: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = WalOptions {
        segment_bytes,
        retention_interval: None,
        ..WalOptions::default()
    };
    let wal = Wal::open(dir.path(), options).expect("open");
    // 48 batches of ~0.5 MB: ~24 MiB of log.
    let last = fill(&wal, 48);
    let mut reader = wal.reader_after(Tick::ZERO).expect("reader");
    let (mut read, mut tick) = (0u64, Tick::ZERO);
    while let Some(block) = reader.next_block().expect("read") {
        assert!(block.ticks().first > tick, "ticks increase");
        tick = block.ticks().last;
        read += block.bytes().len() as u64;
    }
    assert_eq!(tick, last, "read every tick");
    assert!(read > 20 << 20, "read {read} bytes");
    let resident = common::resident_kib_of_files_in(dir.path());
    // What is left: at most RELEASE_BEHIND + RELEASE_STEP (3 MiB) and the block in hand
    // (~0.5 MB), counted across mappings, against the ~24 MiB the reader went through. Across
    // 2 MiB segments, before the mappings left behind were handed back as one with the one read:
    // 4,072 KiB.
    assert!(
        resident <= 3584,
        "{resident} KiB of the WAL still mapped after reading {read} bytes"
    );
    assert!(
        resident >= 1 << 10,
        "the last blocks read stay mapped ({resident} KiB): smaps is parsed right"
    );
    drop(reader);
    let left = common::resident_kib_of_files_in(dir.path());
    assert_eq!(
        left, 0,
        "KiB of the WAL still mapped after the reader was dropped"
    );
}

#[test]
fn within_one_large_segment() {
    reads_through_and_keeps_little_mapped(64 << 20);
}

#[test]
fn across_many_small_segments() {
    reads_through_and_keeps_little_mapped(2 << 20);
}

/// A reader reads a segment through its active mapping, and moves to the sealed one wherever it
/// stands when the segment is sealed: once dropped, it leaves nothing of either mapped, the
/// seal block's partial last page included (the reader never reads it, but the kernel maps it
/// around the last blocks; it stayed in every segment a follower had read).
#[test]
fn moving_from_the_active_mapping_to_the_sealed_one_mid_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = WalOptions {
        segment_bytes: 32 << 20,
        retention_interval: None,
        ..WalOptions::default()
    };
    let wal = Wal::open(dir.path(), options).expect("open");
    let mut reader = wal.reader_after(Tick::ZERO).expect("reader");
    let mut tick = Tick::ZERO;
    let mut read_to = |reader: &mut tickship_storage::wal::Reader, to: Tick| {
        while tick < to {
            let block = reader
                .next_block()
                .expect("read")
                .expect("a block up to the tick");
            assert!(block.ticks().first > tick, "ticks increase");
            tick = block.ticks().last;
        }
    };
    // ~10 MiB into the first segment, half of it read through the active mapping (the
    // kernel's readahead has gone on past the reader); then ~35 MiB more, which seals it and
    // two more, and the rest read through the sealed mappings.
    let half = fill(&wal, 30);
    fill(&wal, 20);
    read_to(&mut reader, half);
    let last = fill(&wal, 30);
    read_to(&mut reader, last);
    assert!(
        reader.next_block().expect("read").is_none(),
        "nothing after the last tick"
    );
    assert_eq!(tick, last, "read every tick");
    assert!(
        wal.tick_ranges().iter().any(|s| s.sealed),
        "the first segment was sealed"
    );
    drop(reader);
    let left = common::resident_kib_of_files_in(dir.path());
    assert_eq!(
        left, 0,
        "KiB of the WAL still mapped after the reader was dropped"
    );
}
