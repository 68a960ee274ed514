//! Claim: a WAL written by format version 1 (the worked example of FORMAT.md, kept in
//! `testdata/v1`) still opens and reads back exactly, and sealing it gives the layout FORMAT.md
//! describes (seal block and locator after the data, file cut to 376 bytes).

mod common;

use common::{copy_dir, engines, options, read_all, segment_files};
use tickship_storage::wal::{Record, RecordType};
use tickship_storage::{Tick, Wal};

#[test]
fn version_1_fixture() {
    for engine in engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The package's directory as cargo gives it when it runs the test, not where it was
        // built: a target directory shared by two checkouts keeps a binary built in the other.
        let package = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
            || env!("CARGO_MANIFEST_DIR").into(),
            std::path::PathBuf::from,
        );
        copy_dir(&package.join("tests/testdata/v1"), dir.path());
        let wal = Wal::open(dir.path(), options(engine)).expect("open the v1 fixture");
        assert_eq!(wal.recovery_report().torn_tail, None);
        let records = read_all(&wal, Tick::ZERO);
        let summary: Vec<(u64, RecordType, &str, &[u8])> = records
            .iter()
            .map(|r| (r.tick.get(), r.kind, r.key.as_str(), r.data.as_slice()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    1,
                    RecordType::DocumentPut,
                    "alice",
                    br#"{"_key":"alice","age":31}"#.as_slice()
                ),
                (
                    2,
                    RecordType::DocumentPut,
                    "bob",
                    br#"{"_key":"bob","age":27}"#.as_slice()
                ),
                (
                    3,
                    RecordType::DocumentRemove,
                    "alice",
                    br#"{"_key":"alice"}"#.as_slice()
                ),
            ],
            "{engine}"
        );
        // A block that fits only an empty 64 KiB segment seals this one.
        let noise = common::noise(&mut 7u64, 65_250);
        let ticks = wal
            .append(&[Record::put("_system", "users", "big", &noise)])
            .expect("append");
        assert_eq!(ticks.first, Tick::new(4));
        let files = segment_files(dir.path());
        assert_eq!(files.len(), 2, "{:?}", wal.tick_ranges());
        assert_eq!(
            std::fs::metadata(&files[0]).expect("stat").len(),
            376,
            "{engine}: FORMAT.md's sealed size"
        );
        let sealed = std::fs::read(&files[0]).expect("read");
        assert_eq!(
            &sealed[376 - 16..376 - 16 + 8],
            &288u64.to_le_bytes(),
            "locator points at the seal"
        );
        assert_eq!(&sealed[376 - 8..376 - 4], b"TSSL");
        assert!(files[1].ends_with("0000000000000001-0000000000000004.wal"));
    }
}
