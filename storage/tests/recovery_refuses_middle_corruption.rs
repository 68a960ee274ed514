//! Claim: damage that is not a torn tail is never skipped: a bad block followed by intact ones,
//! a damaged segment header, a damaged sealed segment (found at open with `verify_on_open`, or
//! by any reader otherwise) each fail with `Corruption` naming the segment and the offset.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{append_documents, block_layout, copy_dir, engines, options, segment_files};
use tickship_storage::wal::IoEngine;
use tickship_storage::{Error, SegmentId, Tick, Wal, WalOptions};

fn flip(path: &Path, offset: usize) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset as u64).expect("read");
    byte[0] ^= 0x5a;
    file.write_all_at(&byte, offset as u64).expect("write");
}

fn expect_corruption(result: Result<Wal, Error>, segment: u64, offset: usize, what: &str) {
    match result {
        Err(Error::Corruption {
            segment_id,
            offset: at,
            reason,
            ..
        }) => {
            assert_eq!(segment_id, SegmentId::new(segment), "{what}: {reason}");
            assert_eq!(at as usize, offset, "{what}: {reason}");
        }
        Err(other) => panic!("{what}: expected corruption, got {other}"),
        Ok(_) => panic!("{what}: a damaged WAL opened"),
    }
}

/// One segment of 12 blocks.
fn single_segment(engine: IoEngine) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), options(engine)).expect("open");
    append_documents(&wal, 1, 12, 150);
    wal.close().expect("close");
    dir
}

#[test]
fn flipped_byte_in_any_middle_block_is_refused() {
    for engine in engines() {
        let pristine = single_segment(engine);
        let layout = block_layout(&segment_files(pristine.path())[0]);
        for &(offset, len) in &layout[..layout.len() - 1] {
            for at in [offset, offset + 17, offset + 40, offset + len - 1] {
                let dir = tempfile::tempdir().expect("tempdir");
                copy_dir(pristine.path(), dir.path());
                flip(&segment_files(dir.path())[0], at);
                expect_corruption(
                    Wal::open(dir.path(), options(engine)),
                    0,
                    offset,
                    "flipped byte",
                );
            }
        }
    }
}

#[test]
fn zeroed_block_before_intact_ones_is_refused() {
    for engine in engines() {
        let pristine = single_segment(engine);
        let layout = block_layout(&segment_files(pristine.path())[0]);
        let (offset, len) = layout[5];
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(pristine.path(), dir.path());
        let file = OpenOptions::new()
            .write(true)
            .open(&segment_files(dir.path())[0])
            .expect("open");
        file.write_all_at(&vec![0u8; len], offset as u64)
            .expect("zero");
        expect_corruption(
            Wal::open(dir.path(), options(engine)),
            0,
            offset,
            "zeroed block",
        );
    }
}

#[test]
fn damaged_segment_header_is_refused() {
    for engine in engines() {
        let pristine = single_segment(engine);
        for at in [0, 9, 20, 63] {
            let dir = tempfile::tempdir().expect("tempdir");
            copy_dir(pristine.path(), dir.path());
            flip(&segment_files(dir.path())[0], at);
            expect_corruption(
                Wal::open(dir.path(), options(engine)),
                0,
                0,
                "segment header",
            );
        }
    }
}

#[test]
fn damaged_sealed_segment_is_found_by_verify_and_by_readers() {
    for engine in engines() {
        let pristine = tempfile::tempdir().expect("tempdir");
        {
            let wal = Wal::open(pristine.path(), options(engine)).expect("open");
            append_documents(&wal, 1, 300, 1000);
            assert!(wal.tick_ranges().len() >= 3);
        }
        let sealed = segment_files(pristine.path())[0].clone();
        let layout = block_layout(&sealed);
        let (offset, _) = layout[3];
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(pristine.path(), dir.path());
        flip(&segment_files(dir.path())[0], offset + 60);

        let verify = WalOptions {
            verify_on_open: true,
            ..options(engine)
        };
        expect_corruption(Wal::open(dir.path(), verify), 0, offset, "verify_on_open");

        // Without verification the WAL opens (sealed segments are the known-good point), but no
        // reader gets past the damage.
        let wal = Wal::open(dir.path(), options(engine)).expect("open without verification");
        let mut reader = wal.reader_after(Tick::ZERO).expect("reader");
        let error = loop {
            match reader.next_block() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("read past a damaged block"),
                Err(error) => break error,
            }
        };
        assert!(
            matches!(error, Error::Corruption { segment_id, offset: at, .. } if segment_id == SegmentId::new(0) && at as usize == offset),
            "{error}"
        );
        // The same for a reader starting after the damaged block: it reads on.
        let mut reader = wal.reader_after(Tick::new(5)).expect("reader");
        assert!(reader.next_block().expect("read").is_some());
    }
}

#[test]
fn damaged_seal_is_refused() {
    for engine in engines() {
        let pristine = tempfile::tempdir().expect("tempdir");
        {
            let wal = Wal::open(pristine.path(), options(engine)).expect("open");
            append_documents(&wal, 1, 300, 1000);
        }
        let sealed = segment_files(pristine.path())[0].clone();
        let len = std::fs::metadata(&sealed).expect("stat").len() as usize;
        // The locator, and a byte inside the seal block's index.
        for at in [len - 4, len - 40] {
            let dir = tempfile::tempdir().expect("tempdir");
            copy_dir(pristine.path(), dir.path());
            flip(&segment_files(dir.path())[0], at);
            let verify = WalOptions {
                verify_on_open: true,
                ..options(engine)
            };
            match Wal::open(dir.path(), verify) {
                Err(Error::Corruption { segment_id, .. }) => {
                    assert_eq!(segment_id, SegmentId::new(0))
                }
                Err(other) => panic!("damaged seal at {at}: expected corruption, got {other}"),
                Ok(_) => panic!("damaged seal at {at}: opened"),
            }
        }
    }
}
