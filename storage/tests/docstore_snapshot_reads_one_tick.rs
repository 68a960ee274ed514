//! Claim: a store snapshot shows the store exactly as it was at its tick — documents, counts
//! and catalog — while writes, updates, removals and a new collection go on after it, in both
//! store modes; pages of it come in key order and join up without gaps or repeats; and while it
//! lives the store reports a scan running, so no segment is collected under it.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{collection_definition, options, record};
use tickship_storage::docstore::{DocStore, StoreOptions, StoreWriter, StoreWriterOptions};
use tickship_storage::wal::{IoEngine, Record, RecordType};
use tickship_storage::Wal;

fn put(wal: &Wal, collection: &str, keys: impl Iterator<Item = u64>, version: u32) {
    let docs: Vec<(String, Vec<u8>)> = keys
        .map(|i| (format!("k{i:05}"), common::document(version, i, 300)))
        .collect();
    for chunk in docs.chunks(200) {
        let records: Vec<Record<'_>> = chunk
            .iter()
            .map(|(key, doc)| record(RecordType::DocumentPut, collection, key, doc))
            .collect();
        wal.append(&records).unwrap();
    }
}

/// Every document of collection 1001 in `pages` of `limit`, checking the pages' order.
fn paged(
    snapshot: &tickship_storage::docstore::StoreSnapshot,
    limit: usize,
) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = snapshot.page(1001, after.as_deref(), limit).unwrap();
        assert!(page.len() <= limit);
        assert!(
            page.windows(2).all(|w| w[0].0 < w[1].0),
            "a page in key order"
        );
        if let (Some(after), Some(first)) = (&after, page.first()) {
            assert!(&first.0 > after, "the next page starts after the cursor");
        }
        let Some(last) = page.last() else { break };
        after = Some(last.0.clone());
        for (key, document) in page {
            assert!(all.insert(key, document.json).is_none(), "no key twice");
        }
    }
    all
}

fn run(dir: &Path, documents_in_wal: bool) {
    let wal = Arc::new(Wal::open(dir.join("wal"), options(IoEngine::Sync)).unwrap());
    let store = DocStore::open_with(
        dir.join("store"),
        &StoreOptions {
            documents_in_wal,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    store.attach_wal(wal.clone());
    let store = Arc::new(store);
    let writer =
        StoreWriter::start(wal.clone(), store.clone(), StoreWriterOptions::default()).unwrap();
    let users = collection_definition(1001, "users");
    wal.append(&[record(RecordType::CollectionCreate, "1001", "", &users)])
        .unwrap();
    put(&wal, "1001", 0..1000, 1);
    writer
        .wait_applied(wal.last_tick(), Duration::from_secs(30))
        .unwrap();
    let mut expected = BTreeMap::new();
    store
        .scan(1001, |key, doc| {
            expected.insert(key.to_owned(), doc.json);
            true
        })
        .unwrap();
    assert_eq!(expected.len(), 1000);

    let snapshot = store.snapshot().unwrap();
    assert_eq!(snapshot.tick(), wal.last_tick());
    assert!(store.scans_running(), "the snapshot holds collection off");

    // After the snapshot: new documents, new versions, removals, a new collection.
    put(&wal, "1001", 1000..1300, 1);
    put(&wal, "1001", (0..1000).step_by(3), 2);
    for i in (1..1000).step_by(7) {
        let key = format!("k{i:05}");
        wal.append(&[record(RecordType::DocumentRemove, "1001", &key, b"")])
            .unwrap();
    }
    let orders = collection_definition(1002, "orders");
    wal.append(&[record(RecordType::CollectionCreate, "1002", "", &orders)])
        .unwrap();
    writer
        .wait_applied(wal.last_tick(), Duration::from_secs(30))
        .unwrap();
    assert!(
        store.get(1001, "k00001").unwrap().is_none(),
        "the live store moved on"
    );

    for limit in [1, 97, 1000, 5000] {
        assert_eq!(
            paged(&snapshot, limit),
            expected,
            "pages of {limit}, in_wal={documents_in_wal}"
        );
    }
    assert_eq!(snapshot.count(1001), 1000);
    assert!(snapshot.catalog().collection("_system", "users").is_some());
    assert!(snapshot.catalog().collection("_system", "orders").is_none());
    drop(snapshot);
    assert!(!store.scans_running(), "the hold ends with the snapshot");
    writer.stop();
}

#[test]
fn a_snapshot_shows_its_tick_only() {
    for documents_in_wal in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), documents_in_wal);
    }
}
