//! Claim: a store that keeps databases one by one (per-database appliers) applies only the
//! databases it keeps; a database left out and admitted again later is caught up from the WAL
//! with exactly the records it missed; one admitted with a floor skips its records up to it; and
//! what was applied is counted per database.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{options, record};
use tickship_storage::docstore::{
    CollectionFilter, CollectionInfo, DatabaseInfo, DatabaseRule, DocStore, KeyOptions, Restrict,
    StoreFilter, StoreWriter, StoreWriterOptions,
};
use tickship_storage::wal::{IoEngine, Record, RecordType};
use tickship_storage::{Tick, Wal};

/// Database `db` with collection `c` of id `id`.
fn create(wal: &Wal, db: &str, id: u64) {
    let database = serde_json::to_vec(&DatabaseInfo {
        id: id - 1,
        name: db.into(),
    })
    .unwrap();
    let collection = serde_json::to_vec(&CollectionInfo {
        id,
        name: "c".into(),
        database: db.into(),
        kind: 2,
        wait_for_sync: false,
        key_options: KeyOptions::default(),
        is_system: false,
    })
    .unwrap();
    let id = id.to_string();
    for (kind, collection, data) in [
        (RecordType::DatabaseCreate, "", &database),
        (RecordType::CollectionCreate, id.as_str(), &collection),
    ] {
        wal.append(&[Record {
            db,
            ..record(kind, collection, "", data)
        }])
        .unwrap();
    }
}

/// Documents `{prefix}0..count` into collection `id` of `db`, one block.
fn put(wal: &Wal, db: &str, id: u64, prefix: &str, count: usize) {
    let id = id.to_string();
    let docs: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| {
            let key = format!("{prefix}{i}");
            (key.clone(), format!(r#"{{"_key":"{key}"}}"#).into_bytes())
        })
        .collect();
    let records: Vec<Record<'_>> = docs
        .iter()
        .map(|(key, json)| Record {
            db,
            ..record(RecordType::DocumentPut, &id, key, json)
        })
        .collect();
    wal.append(&records).unwrap();
}

fn all() -> CollectionFilter {
    CollectionFilter::new(Restrict::None, [], true)
}

fn keeping(dbs: &[&str]) -> StoreFilter {
    StoreFilter::Databases(
        dbs.iter()
            .map(|db| {
                (
                    db.to_string(),
                    DatabaseRule {
                        collections: all(),
                        floor: Tick::ZERO,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
    )
}

fn settle(writer: &StoreWriter, wal: &Wal) {
    writer
        .wait_applied(wal.last_tick(), Duration::from_secs(30))
        .unwrap();
}

#[test]
fn databases_left_out_are_caught_up_from_the_wal_when_admitted_again() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path().join("wal"), options(IoEngine::Sync)).unwrap());
    let store = Arc::new(DocStore::open(dir.path().join("store")).unwrap());
    store.set_store_filter(Some(keeping(&["a", "b"])));
    let writer =
        StoreWriter::start(wal.clone(), store.clone(), StoreWriterOptions::default()).unwrap();
    for (db, id) in [("a", 1001), ("b", 2001), ("c", 3001)] {
        create(&wal, db, id);
        put(&wal, db, id, "x", 10);
    }
    settle(&writer, &wal);
    let catalog = store.catalog();
    assert!(catalog.database("a").is_some() && catalog.database("b").is_some());
    assert!(catalog.database("c").is_none(), "c is never kept");
    assert_eq!(
        (store.count(1001), store.count(2001), store.count(3001)),
        (10, 10, 0)
    );
    assert_eq!(store.database_totals("a").documents, 10);
    assert!(store.database_totals("c").excluded > 0);

    // b left out: its new records are not applied, a's are.
    let left_at = writer.leave_out_database("b").unwrap();
    assert_eq!(
        left_at,
        store.persisted_tick().unwrap(),
        "persisted when left out"
    );
    put(&wal, "a", 1001, "y", 5);
    put(&wal, "b", 2001, "y", 7);
    wal.append(&[Record {
        db: "b",
        ..record(RecordType::DocumentRemove, "2001", "x0", b"")
    }])
    .unwrap();
    settle(&writer, &wal);
    assert_eq!((store.count(1001), store.count(2001)), (15, 10));

    // Admitted again from where it was left out: it gets exactly what it missed.
    let joined = writer.admit_database("b", all(), left_at).unwrap();
    assert_eq!(joined, store.applied_tick());
    assert_eq!(store.count(2001), 16, "10 + 7 - 1");
    assert!(store.get(2001, "x0").unwrap().is_none());
    let doc = store.get(2001, "y6").unwrap().expect("caught up");
    assert!(
        String::from_utf8_lossy(&doc.json).contains("\"y6\""),
        "bytes kept"
    );
    // And from then on follows the log.
    put(&wal, "b", 2001, "z", 3);
    settle(&writer, &wal);
    assert_eq!(store.count(2001), 19);

    // A database admitted with a floor at the applied tick skips its records up to it (its
    // state there came from elsewhere, a sync), and applies the later ones.
    writer.leave_out_database("b").unwrap();
    put(&wal, "b", 2001, "w", 4);
    settle(&writer, &wal);
    let floor = store.applied_tick();
    writer.admit_database("b", all(), floor).unwrap();
    put(&wal, "b", 2001, "v", 2);
    settle(&writer, &wal);
    assert_eq!(store.count(2001), 21, "w* skipped, v* applied");
    assert!(store.get(2001, "w0").unwrap().is_none());

    // A store that keeps every database cannot admit one by one.
    store.set_filter(Some(all()));
    assert!(writer.admit_database("c", all(), Tick::ZERO).is_err());
    writer.stop();

    // Everything caught up was persisted: a reopened store has it.
    drop(writer);
    drop(store);
    let store = DocStore::open(dir.path().join("store")).unwrap();
    assert_eq!((store.count(1001), store.count(2001)), (15, 21));
}
