//! Claim: with a collection filter (a follower's `restrictType`/`restrictCollections`,
//! `includeSystem`), the store applies exactly the records of the collections the filter admits
//! by their current name, counts every other record as excluded, and does so the same way on one
//! thread and on several (large groups are partitioned).

mod common;

use common::{blocks_after, collection_definition, options, record};
use tickship_storage::docstore::{ApplyContext, CollectionFilter, DocStore, Restrict};
use tickship_storage::wal::{IoEngine, Record, RecordType};
use tickship_storage::{Tick, Wal};

/// Enough documents per block that a group is applied by several partitions.
const PER_BLOCK: usize = 1500;

/// Puts `PER_BLOCK` documents `{prefix}{i}` into `collection` as one block.
fn put_many(wal: &Wal, collection: &str, prefix: &str) {
    let docs: Vec<(String, Vec<u8>)> = (0..PER_BLOCK)
        .map(|i| {
            let key = format!("{prefix}{i}");
            let json = format!(r#"{{"_key":"{key}","i":{i}}}"#).into_bytes();
            (key, json)
        })
        .collect();
    let records: Vec<Record<'_>> = docs
        .iter()
        .map(|(key, json)| record(RecordType::DocumentPut, collection, key, json))
        .collect();
    wal.append(&records).expect("put");
}

/// A log touching three collections: `keep` (1001), `other` (1002), `_hidden` (1003); `keep`
/// is renamed to `renamed` halfway, `other` truncated at the end.
fn write_log(wal: &Wal) {
    for (id, name) in [(1001, "keep"), (1002, "other"), (1003, "_hidden")] {
        let definition = collection_definition(id, name);
        wal.append(&[record(
            RecordType::CollectionCreate,
            &id.to_string(),
            "",
            &definition,
        )])
        .expect("create");
    }
    put_many(wal, "1001", "a");
    put_many(wal, "1002", "a");
    put_many(wal, "1003", "a");
    wal.append(&[record(
        RecordType::CollectionRename,
        "1001",
        "",
        br#"{"name":"renamed"}"#,
    )])
    .expect("rename");
    put_many(wal, "1001", "b");
    wal.append(&[record(RecordType::CollectionTruncate, "1002", "", b"")])
        .expect("truncate");
}

struct Outcome {
    names: Vec<String>,
    counts: [u64; 3],
    documents: u64,
    excluded: u64,
}

fn apply_filtered(filter: CollectionFilter, threads: usize) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path().join("wal"), options(IoEngine::Sync)).expect("wal");
    let store = DocStore::open(dir.path().join("store")).expect("store");
    store.set_filter(Some(filter));
    write_log(&wal);
    let blocks = blocks_after(&wal, Tick::ZERO);
    let mut context = ApplyContext::with_threads(threads).expect("threads");
    let stats = store
        .apply_with(&blocks, &mut context, wal.last_tick())
        .expect("apply");
    assert_eq!(store.applied_tick(), wal.last_tick());
    // Applying again changes nothing.
    let again = store.apply(&blocks).expect("apply again");
    assert_eq!(again.documents, 0, "everything was applied already");
    let names = store
        .catalog()
        .collections("_system")
        .iter()
        .map(|c| c.name.clone())
        .collect();
    Outcome {
        names,
        counts: [store.count(1001), store.count(1002), store.count(1003)],
        documents: stats.documents,
        excluded: stats.excluded,
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn include_follows_a_collection_by_its_current_name() {
    for threads in [1, 3] {
        let filter = CollectionFilter::new(Restrict::Include, names(&["keep", "_hidden"]), false);
        let outcome = apply_filtered(filter, threads);
        // `keep` was created and filled, then renamed out of the list: its later documents are
        // left out. `other` is not listed; `_hidden` is listed but system collections are not
        // included.
        assert_eq!(outcome.names, names(&["renamed"]), "{threads} threads");
        assert_eq!(outcome.counts, [PER_BLOCK as u64, 0, 0]);
        assert_eq!(outcome.documents, PER_BLOCK as u64);
        // 2 creates, 3 × PER_BLOCK documents and a truncate left out.
        assert_eq!(outcome.excluded, 3 * PER_BLOCK as u64 + 3);
    }
}

#[test]
fn exclude_leaves_out_the_named_collections_only() {
    for threads in [1, 3] {
        let filter = CollectionFilter::new(Restrict::Exclude, names(&["other"]), true);
        let outcome = apply_filtered(filter, threads);
        assert_eq!(
            outcome.names,
            names(&["_hidden", "renamed"]),
            "{threads} threads"
        );
        assert_eq!(outcome.counts, [2 * PER_BLOCK as u64, 0, PER_BLOCK as u64]);
        assert_eq!(outcome.documents, 3 * PER_BLOCK as u64);
        // The create, the documents and the truncate of `other`.
        assert_eq!(outcome.excluded, PER_BLOCK as u64 + 2);
    }
}

#[test]
fn no_restriction_applies_everything() {
    let filter = CollectionFilter::new(Restrict::None, [], true);
    let outcome = apply_filtered(filter, 3);
    assert_eq!(outcome.names, names(&["_hidden", "other", "renamed"]));
    assert_eq!(
        outcome.counts,
        [2 * PER_BLOCK as u64, 0, PER_BLOCK as u64],
        "other was truncated"
    );
    assert_eq!(outcome.excluded, 0);
}

#[test]
fn left_out_collections_are_remembered_after_a_reopen_until_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path().join("wal"), options(IoEngine::Sync)).expect("wal");
    let filter = || CollectionFilter::new(Restrict::Exclude, names(&["other"]), true);
    write_log(&wal);
    let applied = {
        let store = DocStore::open(dir.path().join("store")).expect("store");
        store.set_filter(Some(filter()));
        store.apply(&blocks_after(&wal, Tick::ZERO)).expect("apply");
        store.flush().expect("flush");
        wal.last_tick()
    };
    // More writes to the left-out collection, then its drop, then a new `other` (id 1004).
    put_many(&wal, "1002", "c");
    wal.append(&[record(RecordType::CollectionDrop, "1002", "", b"")])
        .expect("drop");
    let definition = collection_definition(1004, "other");
    wal.append(&[record(
        RecordType::CollectionCreate,
        "1004",
        "",
        &definition,
    )])
    .expect("create");
    put_many(&wal, "1004", "d");

    let store = DocStore::open(dir.path().join("store")).expect("reopen");
    assert_eq!(store.applied_tick(), applied);
    store.set_filter(Some(filter()));
    let stats = store
        .apply(&blocks_after(&wal, applied))
        .expect("apply after reopen");
    assert_eq!(stats.excluded, 2 * PER_BLOCK as u64 + 2, "{stats:?}");
    assert_eq!(
        stats.skipped, 0,
        "nothing is taken for a write to a dropped collection"
    );
    assert!(store.catalog().collection("_system", "other").is_none());

    // Without the filter, a new collection named `other` is replicated.
    store.set_filter(None);
    let definition = collection_definition(1005, "other");
    wal.append(&[record(
        RecordType::CollectionCreate,
        "1005",
        "",
        &definition,
    )])
    .expect("create");
    put_many(&wal, "1005", "e");
    let stats = store
        .apply(&blocks_after(&wal, store.applied_tick()))
        .expect("apply unfiltered");
    assert_eq!(stats.documents, PER_BLOCK as u64);
    assert_eq!(store.count(1005), PER_BLOCK as u64);
}
