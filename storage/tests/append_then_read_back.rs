//! Claim: what is appended can be read back after any tick, across segment rotations and a
//! reopen, with ticks that continue where they stopped; the tick ranges describe the segments.

mod common;

use common::{append_documents, engines, options, read_all};
use tickship_storage::wal::{Record, RecordType};
use tickship_storage::{Error, Tick, Wal};

#[test]
fn append_rotate_read_reopen() {
    for engine in engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ticks = {
            let wal = Wal::open(dir.path(), options(engine)).expect("open");
            assert_eq!(wal.last_tick(), Tick::ZERO);
            assert_eq!(wal.first_tick(), None);
            // 300 documents of ~1 KB in 64 KiB segments: several rotations.
            let ticks = append_documents(&wal, 1, 300, 1000);
            let expected: Vec<Tick> = (1..=300).map(Tick::new).collect();
            assert_eq!(
                ticks, expected,
                "{engine}: ticks start at 1 and are consecutive"
            );
            assert_eq!(wal.last_tick(), Tick::new(300));
            assert_eq!(wal.first_tick(), Some(Tick::new(1)));
            let ranges = wal.tick_ranges();
            assert!(
                ranges.len() >= 3,
                "{engine}: expected rotations, got {ranges:?}"
            );
            assert!(ranges[..ranges.len() - 1].iter().all(|r| r.sealed));
            assert!(!ranges.last().expect("ranges").sealed);
            assert_eq!(ranges[0].tick_min, Tick::new(1));
            assert_eq!(ranges.last().expect("ranges").tick_max, Tick::new(300));
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].tick_max.get() + 1, pair[1].tick_min.get());
            }
            // Read from the start, from inside a segment, from a segment boundary, from the end.
            for after in [
                0u64,
                1,
                150,
                ranges[1].tick_min.get() - 1,
                ranges[1].tick_min.get(),
                299,
                300,
            ] {
                let records = read_all(&wal, Tick::new(after));
                let got: Vec<u64> = records.iter().map(|r| r.tick.get()).collect();
                let want: Vec<u64> = (after + 1..=300).collect();
                assert_eq!(got, want, "{engine}: read after {after}");
            }
            let records = read_all(&wal, Tick::ZERO);
            assert!(records.iter().all(|r| r.kind == RecordType::DocumentPut));
            assert_eq!(records[41].key, "w1-41");
            assert_eq!(records[41].data, common::document(1, 41, 1000));
            wal.close().expect("close");
            ticks
        };
        let wal = Wal::open(dir.path(), options(engine)).expect("reopen");
        let report = wal.recovery_report();
        assert_eq!(
            report.torn_tail, None,
            "{engine}: a clean close leaves no torn tail"
        );
        assert_eq!(report.tick_last, Tick::new(300));
        assert_eq!(wal.last_tick(), Tick::new(300));
        assert_eq!(read_all(&wal, Tick::ZERO).len(), ticks.len());
        let more = wal
            .append(&[Record::put("_system", "docs", "after", b"{}")])
            .expect("append");
        assert_eq!(
            more.first,
            Tick::new(301),
            "{engine}: ticks continue after a reopen"
        );
        assert_eq!(read_all(&wal, Tick::new(300)).len(), 1);
    }
}

// Claim: any record can be read back by its tick alone, from a sealed segment or the open one,
// including from blocks of 1,000 documents stored in frames; ticks not written yet are `None`.
#[test]
fn records_read_back_by_tick() {
    for engine in engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = options(engine);
        opts.segment_bytes = 1 << 20;
        opts.frame_bytes = tickship_storage::wal::block::FRAME_RAW_BYTES;
        let wal = Wal::open(dir.path(), opts).expect("open");
        let docs: Vec<Vec<u8>> = (0..3000).map(|i| common::document(3, i, 1000)).collect();
        let keys: Vec<String> = (0..3000).map(|i| format!("k{i}")).collect();
        for chunk in 0..3 {
            let records: Vec<Record<'_>> = (chunk * 1000..(chunk + 1) * 1000)
                .map(|i| Record::put("_system", "c", &keys[i], &docs[i]))
                .collect();
            wal.append(&records).expect("append");
        }
        assert!(
            wal.tick_ranges().len() >= 2,
            "{engine}: a sealed segment and the open one"
        );
        let block = wal.block_at(Tick::new(1)).expect("read").expect("block");
        assert_eq!(
            block.header().compression,
            tickship_storage::wal::Compression::Lz4Frames,
            "{engine}: 1,000 documents are stored in frames"
        );
        let mut scratch = Vec::new();
        for tick in (1..=3000u64).step_by(7).chain([1000, 1001, 2999, 3000]) {
            let block = wal
                .block_at(Tick::new(tick))
                .expect("read")
                .unwrap_or_else(|| panic!("{engine}: no block for {tick}"));
            let record = block
                .record_at(Tick::new(tick), &mut scratch)
                .expect("record");
            let i = tick as usize - 1;
            assert_eq!(
                (record.key, record.data),
                (keys[i].as_str(), docs[i].as_slice())
            );
        }
        assert!(wal.block_at(Tick::new(3001)).expect("read").is_none());
        assert!(wal.block_at(Tick::ZERO).expect("read").is_none());
    }
}

#[test]
fn multi_record_block_is_one_tick_range() {
    for engine in engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), options(engine)).expect("open");
        let docs: Vec<Vec<u8>> = (0..50).map(|i| common::document(2, i, 200)).collect();
        let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
        let records: Vec<Record<'_>> = docs
            .iter()
            .zip(&keys)
            .map(|(doc, key)| Record::put("_system", "c", key, doc))
            .collect();
        let ticks = wal.append(&records).expect("append");
        assert_eq!((ticks.first.get(), ticks.last.get()), (1, 50));
        let mut reader = wal.reader_after(Tick::ZERO).expect("reader");
        let block = reader.next_block().expect("read").expect("a block");
        assert_eq!(block.ticks(), ticks, "{engine}: one append is one block");
        assert!(reader.next_block().expect("read").is_none());
        // Reading from inside the block returns the block; the caller skips what it has.
        let mut reader = wal.reader_after(Tick::new(20)).expect("reader");
        assert_eq!(
            reader.next_block().expect("read").map(|b| b.ticks()),
            Some(ticks)
        );
        assert_eq!(read_all(&wal, Tick::new(20)).len(), 30);
    }
}

#[test]
fn oversized_block_is_refused_and_nothing_changes() {
    for engine in engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), options(engine)).expect("open");
        // Random bytes do not compress: 70 KB cannot fit a 64 KiB segment.
        let mut state = 1u64;
        let noise: Vec<u8> = (0..70_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                (state >> 33) as u8
            })
            .collect();
        let err = wal
            .append(&[Record::put("_system", "c", "big", &noise)])
            .expect_err("too large");
        assert!(
            matches!(err, Error::BlockTooLarge { bytes_max, .. } if bytes_max == wal.block_bytes_max())
        );
        assert_eq!(wal.last_tick(), Tick::ZERO);
        assert_eq!(
            wal.append(&[Record::put("_system", "c", "small", b"{}")])
                .expect("append")
                .first,
            Tick::new(1)
        );
    }
}
