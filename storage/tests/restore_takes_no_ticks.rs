//! Claim: a restore loads databases, collections and documents into the store without a tick
//! of the WAL — documents keep the revision they were dumped with, counts are right after
//! replacements and removals, and all of it survives a reopen without the WAL's help — and the
//! log's floor (`Wal::skip_to`) keeps clients from being served ticks the store's data does not
//! follow from, survives a reopen, and may go down only while the log holds no block.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{collection_definition, options, record};
use tickship_storage::docstore::{
    CollectionInfo, CollectionRestore, DocStore, KeyOptions, Restored, StoreOptions, StoreWriter,
    StoreWriterOptions,
};
use tickship_storage::wal::{IoEngine, RecordType};
use tickship_storage::{Tick, Wal};

fn put(key: &str, rev: u64, body: &str) -> Restored {
    Restored::Put {
        key: key.into(),
        rev: Tick::new(rev),
        json: format!(r#"{{"_key":"{key}","_id":"users/{key}","v":"{body}"}}"#).into_bytes(),
    }
}

#[test]
fn restored_documents_keep_their_revisions_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let info = CollectionInfo {
        id: 4242,
        name: "users".into(),
        database: "shop".into(),
        kind: 2,
        wait_for_sync: false,
        key_options: KeyOptions::default(),
        is_system: false,
    };
    {
        let store =
            DocStore::open_with(dir.path().join("store"), &StoreOptions::default()).unwrap();
        assert!(store.restore_database("shop").unwrap());
        assert!(!store.restore_database("shop").unwrap(), "once only");
        let CollectionRestore::Created(created) =
            store.restore_collection(info.clone(), false).unwrap()
        else {
            panic!("created")
        };
        assert_eq!(created.id, 4242, "the dump's id is kept when free");
        assert!(matches!(
            store.restore_collection(info.clone(), false).unwrap(),
            CollectionRestore::Exists(_)
        ));
        let first: Vec<Restored> = (0..500)
            .map(|i| put(&format!("k{i:04}"), 1000 + i, "a"))
            .collect();
        let stats = store.restore_documents(4242, first).unwrap();
        assert_eq!((stats.created, stats.replaced), (500, 0));
        // A second chunk: new versions, a removal, a key twice (the last line wins), new keys.
        let second = vec![
            put("k0001", 2001, "b"),
            Restored::Remove {
                key: "k0002".into(),
            },
            put("k9000", 2003, "c"),
            put("k9000", 2004, "d"),
            Restored::Remove { key: "nope".into() },
        ];
        let stats = store.restore_documents(4242, second).unwrap();
        assert_eq!((stats.created, stats.replaced, stats.removed), (1, 1, 1));
        assert_eq!(store.count(4242), 500);
        // Nothing is flushed on purpose here: the restore made itself durable.
    }
    let store = DocStore::open_with(dir.path().join("store"), &StoreOptions::default()).unwrap();
    assert_eq!(store.count(4242), 500);
    assert_eq!(
        store.catalog().collection("shop", "users").unwrap().id,
        4242
    );
    let doc = store.get(4242, "k0001").unwrap().unwrap();
    assert_eq!(doc.rev, Tick::new(2001));
    assert!(String::from_utf8(doc.json).unwrap().contains(r#""v":"b""#));
    assert_eq!(
        store.get(4242, "k9000").unwrap().unwrap().rev,
        Tick::new(2004)
    );
    assert!(store.get(4242, "k0002").unwrap().is_none());
    assert_eq!(
        store.get(4242, "k0003").unwrap().unwrap().rev,
        Tick::new(1003)
    );
    // Replacing drops what was there.
    let CollectionRestore::Created(again) = store.restore_collection(info, true).unwrap() else {
        panic!("replaced")
    };
    assert_eq!(store.count(again.id), 0);
    assert!(store.get(again.id, "k0003").unwrap().is_none());
    assert_eq!(store.applied_tick(), Tick::ZERO, "a restore takes no tick");
}

#[test]
fn the_floor_stops_serving_older_ticks_and_moves_the_next_tick() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    {
        let wal = Wal::open(&wal_dir, options(IoEngine::Sync)).unwrap();
        // An empty log may take any floor, and lower it again.
        wal.skip_to(Tick::new(50), false).unwrap();
        assert_eq!(wal.last_tick(), Tick::new(50));
        assert!(!wal.contains_after(Tick::new(49)));
        assert!(wal.contains_after(Tick::new(50)));
        wal.skip_to(Tick::new(9), true).unwrap();
        assert_eq!(wal.last_tick(), Tick::new(9));
        let users = collection_definition(1001, "users");
        let ticks = wal
            .append(&[record(RecordType::CollectionCreate, "1001", "", &users)])
            .unwrap();
        assert_eq!(
            ticks.first,
            Tick::new(10),
            "the next tick follows the floor"
        );
        // With blocks, the floor only goes up; ticks before it are no longer served.
        assert!(wal.skip_to(Tick::new(5), true).is_err());
        wal.skip_to(Tick::new(20), false).unwrap();
        assert!(!wal.contains_after(Tick::new(10)));
        assert!(wal.contains_after(Tick::new(20)));
        let ticks = wal
            .append(&[record(
                RecordType::DocumentPut,
                "1001",
                "a",
                br#"{"_key":"a"}"#,
            )])
            .unwrap();
        assert_eq!(ticks.first, Tick::new(21));
    }
    let wal = Arc::new(Wal::open(&wal_dir, options(IoEngine::Sync)).unwrap());
    assert_eq!(wal.floor(), Tick::new(20), "the floor survives a reopen");
    assert_eq!(wal.last_tick(), Tick::new(21));
    assert!(!wal.contains_after(Tick::new(19)));
    // The store still replays from before the floor: the floor is about serving, not reading.
    let store =
        Arc::new(DocStore::open_with(dir.path().join("store"), &StoreOptions::default()).unwrap());
    store.attach_wal(wal.clone());
    // What a store restored for a log that begins at tick 10 declares (the follower does this
    // before storing the first block).
    store.assume_applied(Tick::new(9), Tick::new(9)).unwrap();
    let writer =
        StoreWriter::start(wal.clone(), store.clone(), StoreWriterOptions::default()).unwrap();
    writer
        .wait_applied(Tick::new(21), Duration::from_secs(30))
        .unwrap();
    assert_eq!(store.count(1001), 1);
    writer.stop();
}
