//! Claim: the document store applied from the WAL holds exactly the logged state (documents with
//! `_rev` = the tick that wrote them, exact counts, collections created, renamed, truncated and
//! dropped, aborted transactions left out); applying blocks again changes nothing; and a store
//! reopened from what RocksDB persisted catches up by replaying the WAL from its persisted tick.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{blocks_after, collection_definition, options, record};
use tickship_storage::docstore::{DocStore, StoreWriter, StoreWriterOptions};
use tickship_storage::wal::{Block, IoEngine, Record, RecordType};
use tickship_storage::{Tick, Wal};

#[test]
fn apply_state_counts_ddl_and_idempotence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path().join("wal"), options(IoEngine::Sync)).expect("wal");
    let store = DocStore::open(dir.path().join("store")).expect("store");
    let (users, other) = (
        collection_definition(1001, "users"),
        collection_definition(1002, "other"),
    );
    wal.append(&[record(RecordType::CollectionCreate, "1001", "", &users)])
        .expect("create");
    wal.append(&[record(RecordType::CollectionCreate, "1002", "", &other)])
        .expect("create");
    let a = br#"{"_key":"a","_id":"users/a","v":1}"#;
    let b = br#"{"_key":"b","_id":"users/b","v":2}"#;
    let a2 = br#"{"_key":"a","_id":"users/a","v":3}"#;
    let put_a = wal
        .append(&[record(RecordType::DocumentPut, "1001", "a", a)])
        .expect("put");
    // A transaction: begin, two puts, commit (one block).
    let tx = |kind, key, data| Record {
        kind,
        tid: 9,
        db: "_system",
        collection: "1001",
        key,
        data,
    };
    wal.append(&[
        tx(RecordType::TransactionBegin, "", b""),
        tx(RecordType::DocumentPut, "b", b),
        tx(RecordType::DocumentPut, "a", a2),
        tx(RecordType::TransactionCommit, "", b""),
    ])
    .expect("tx");
    // An aborted transaction is left out.
    wal.append(&[
        Record {
            kind: RecordType::DocumentPut,
            tid: 11,
            db: "_system",
            collection: "1001",
            key: "z",
            data: br#"{"_key":"z"}"#,
        },
        Record {
            kind: RecordType::TransactionAbort,
            tid: 11,
            db: "_system",
            collection: "",
            key: "",
            data: b"",
        },
    ])
    .expect("aborted");
    wal.append(&[record(
        RecordType::DocumentPut,
        "1002",
        "x",
        br#"{"_key":"x","_id":"other/x"}"#,
    )])
    .expect("put");
    wal.append(&[record(RecordType::DocumentRemove, "1001", "b", b"")])
        .expect("remove");
    wal.append(&[record(
        RecordType::CollectionRename,
        "1001",
        "",
        br#"{"name":"people"}"#,
    )])
    .expect("rename");
    wal.append(&[record(RecordType::CollectionTruncate, "1002", "", b"")])
        .expect("truncate");

    let all = blocks_after(&wal, Tick::ZERO);
    let stats = store.apply(&all).expect("apply");
    assert_eq!(stats.documents, 4);
    assert_eq!(stats.removals, 1);
    assert_eq!(store.applied_tick(), wal.last_tick());
    let doc = store.get(1001, "a").expect("get").expect("a exists");
    assert_eq!(doc.json, a2.to_vec());
    assert_eq!(
        doc.rev,
        Tick::new(put_a.last.get() + 3),
        "rev = the tick of the second put"
    );
    assert_eq!(
        doc.to_json_in("users"),
        format!(
            r#"{{"_rev":"{}","_key":"a","_id":"users/a","v":3}}"#,
            doc.rev
        )
        .into_bytes()
    );
    assert!(store.get(1001, "b").expect("get").is_none(), "removed");
    assert!(
        store.get(1001, "z").expect("get").is_none(),
        "aborted transaction left out"
    );
    assert_eq!(store.count(1001), 1);
    assert_eq!(store.count(1002), 0, "truncated");
    let catalog = store.catalog();
    assert_eq!(
        catalog.collection("_system", "people").map(|c| c.id),
        Some(1001)
    );
    assert!(catalog.collection("_system", "users").is_none());

    // Applying everything again changes nothing.
    store.apply(&all).expect("apply again");
    assert_eq!(store.count(1001), 1);
    assert_eq!(
        store.get(1001, "a").expect("get").map(|d| d.rev),
        Some(doc.rev)
    );

    // Drop removes documents, count and catalog entry; writes to a dropped collection are skipped.
    wal.append(&[record(RecordType::CollectionDrop, "1001", "", b"")])
        .expect("drop");
    wal.append(&[record(
        RecordType::DocumentPut,
        "1001",
        "late",
        br#"{"_key":"late"}"#,
    )])
    .expect("late put");
    let later: Vec<Block> = blocks_after(&wal, Tick::ZERO)
        .into_iter()
        .filter(|b| b.ticks().first > all.last().expect("blocks").ticks().last)
        .collect();
    let stats = store.apply(&later).expect("apply drop");
    assert_eq!(stats.skipped, 1);
    assert!(store.catalog().collection_by_id(1001).is_none());
    assert!(store.get(1001, "a").expect("get").is_none());
    assert!(store.get(1001, "late").expect("get").is_none());
}

#[test]
fn reopened_store_replays_from_its_persisted_tick() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Arc::new(Wal::open(dir.path().join("wal"), options(IoEngine::Sync)).expect("wal"));
    let users = collection_definition(1001, "users");
    wal.append(&[record(RecordType::CollectionCreate, "1001", "", &users)])
        .expect("create");
    let docs: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| {
            (
                format!("k{i}"),
                format!(r#"{{"_key":"k{i}","i":{i}}}"#).into_bytes(),
            )
        })
        .collect();
    let persisted = {
        let store = Arc::new(DocStore::open(dir.path().join("store")).expect("store"));
        let writer = StoreWriter::start(wal.clone(), store.clone(), StoreWriterOptions::default())
            .expect("store writer");
        for (key, data) in &docs[..150] {
            wal.append(&[record(RecordType::DocumentPut, "1001", key, data)])
                .expect("put");
        }
        writer
            .wait_applied(wal.last_tick(), Duration::from_secs(30))
            .expect("applied");
        writer.stop();
        assert_eq!(
            store.persisted_tick().expect("persisted"),
            wal.last_tick(),
            "stopping persists"
        );
        wal.last_tick()
    };
    // The WAL goes on while no store runs (as after a crash that lost the store's memtables).
    for (key, data) in &docs[150..] {
        wal.append(&[record(RecordType::DocumentPut, "1001", key, data)])
            .expect("put");
    }
    let store = Arc::new(DocStore::open(dir.path().join("store")).expect("reopen"));
    assert_eq!(store.applied_tick(), persisted);
    assert_eq!(store.count(1001), 150);
    let writer = StoreWriter::start(wal.clone(), store.clone(), StoreWriterOptions::default())
        .expect("store writer");
    writer
        .wait_applied(wal.last_tick(), Duration::from_secs(30))
        .expect("replayed");
    assert_eq!(store.count(1001), 300);
    for (key, data) in &docs {
        assert_eq!(
            store.get(1001, key).expect("get").map(|d| d.json),
            Some(data.clone())
        );
    }
    // The WAL was told how far the store is persisted (retention must keep the rest).
    writer.stop();
    assert_eq!(store.persisted_tick().expect("persisted"), wal.last_tick());
}
