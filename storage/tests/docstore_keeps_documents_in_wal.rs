//! Claim: a store that keeps its documents in the WAL (`StoreOptions::documents_in_wal`) reads
//! back exactly what a store keeping them itself reads (get, get_many, scan, counts), across
//! updates, removals and a reopen that no longer asks for it; a damaged frame is an error, not a
//! wrong document; and retention deletes none of the segments its documents live in. A scan
//! through all of them leaves none of the WAL it read mapped in the process's resident set.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{
    apply_all, collect_all, collection_definition, documents_wal_options as wal_options, record,
};
use tickship_storage::docstore::{DocStore, StoreOptions, StoreWriter, StoreWriterOptions};
use tickship_storage::wal::block::FRAME_RAW_BYTES;
use tickship_storage::wal::{Record, RecordType};
use tickship_storage::{Wal, WalOptions};

fn store_options(documents_in_wal: bool) -> StoreOptions {
    StoreOptions {
        documents_in_wal,
        ..StoreOptions::default()
    }
}

/// Puts `docs` into collection 1001, `per_block` to a block.
fn put_all(wal: &Wal, docs: &[(String, Vec<u8>)], per_block: usize) {
    for chunk in docs.chunks(per_block) {
        let records: Vec<Record<'_>> = chunk
            .iter()
            .map(|(key, doc)| record(RecordType::DocumentPut, "1001", key, doc))
            .collect();
        wal.append(&records).expect("put");
    }
}

/// Puts version `version` (`bytes` long) of documents `k{i}` for each of `keys`, `per_block` to
/// a block, and adds them to `expected`.
fn put_versions(
    wal: &Wal,
    expected: &mut BTreeMap<String, Vec<u8>>,
    keys: impl IntoIterator<Item = u64>,
    (version, bytes): (u32, usize),
    per_block: usize,
) {
    let docs: Vec<(String, Vec<u8>)> = keys
        .into_iter()
        .map(|i| (format!("k{i}"), common::document(version, i, bytes)))
        .collect();
    put_all(wal, &docs, per_block);
    expected.extend(docs);
}

/// Writes 3,000 documents in blocks of 250 (several frames each), then replaces every 7th and removes every 11th;
/// returns what the collection holds.
fn write(wal: &Wal) -> BTreeMap<String, Vec<u8>> {
    let users = collection_definition(1001, "users");
    wal.append(&[record(RecordType::CollectionCreate, "1001", "", &users)])
        .expect("create");
    let mut expected = BTreeMap::new();
    for round in 0..12 {
        let docs: Vec<(String, Vec<u8>)> = (round * 250..(round + 1) * 250)
            .map(|i| (format!("k{i}"), common::document(1, i, 1000)))
            .collect();
        put_all(wal, &docs, docs.len());
        expected.extend(docs);
    }
    let changed: Vec<(String, Vec<u8>)> = (0..3000u64)
        .step_by(7)
        .map(|i| (format!("k{i}"), common::document(2, i, 500)))
        .collect();
    put_all(wal, &changed, changed.len());
    expected.extend(changed);
    let removed: Vec<String> = (0..3000).step_by(11).map(|i| format!("k{i}")).collect();
    let records: Vec<Record<'_>> = removed
        .iter()
        .map(|key| record(RecordType::DocumentRemove, "1001", key, b""))
        .collect();
    wal.append(&records).expect("remove");
    for key in &removed {
        expected.remove(key);
    }
    expected
}

/// Everything the store shows of collection 1001, through all three read paths.
fn contents(store: &DocStore) -> BTreeMap<String, Vec<u8>> {
    let mut scanned = BTreeMap::new();
    store
        .scan(1001, |key, document| {
            assert!(scanned.insert(key.to_owned(), document.json).is_none());
            true
        })
        .expect("scan");
    for (key, json) in &scanned {
        let document = store.get(1001, key).expect("get").expect("present");
        assert_eq!(&document.json, json, "get {key}");
    }
    let keys: Vec<&str> = scanned.keys().map(String::as_str).collect();
    let many = store.get_many(1001, &keys).expect("get_many");
    for (key, document) in keys.iter().zip(many) {
        assert_eq!(
            document.map(|d| d.json).as_ref(),
            scanned.get(*key),
            "get_many {key}"
        );
    }
    assert_eq!(store.count(1001), scanned.len() as u64);
    scanned
}

/// The store under `dir` (`documents_in_wal` asked or not), reading from `wal`.
fn open_store(dir: &Path, documents_in_wal: bool, wal: &Arc<Wal>) -> Arc<DocStore> {
    let store =
        DocStore::open_with(dir.join("store"), &store_options(documents_in_wal)).expect("store");
    store.attach_wal(wal.clone());
    Arc::new(store)
}

#[test]
fn documents_kept_in_the_wal_read_back_like_stored_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Arc::new(Wal::open(dir.path().join("wal"), wal_options()).expect("wal"));
    let expected = write(&wal);
    let store = open_store(dir.path(), true, &wal);
    assert!(store.documents_in_wal());
    apply_all(&wal, &store);
    assert_eq!(contents(&store), expected);
    assert!(store.get(1001, "k11").expect("get").is_none(), "removed");

    // Reopened without asking, the store still reads its documents from the WAL.
    drop(store);
    let store = Arc::new(
        DocStore::open_with(dir.path().join("store"), &store_options(false)).expect("reopen"),
    );
    assert!(store.documents_in_wal(), "sticky");
    assert!(
        store.get(1001, "k1").is_err(),
        "without its WAL a store cannot read a document kept there"
    );
    store.attach_wal(wal.clone());
    assert_eq!(contents(&store), expected);

    // Retention deletes nothing before the live documents of a segment are moved out of it.
    let segments = wal.tick_ranges().len();
    assert!(segments >= 3, "{segments} segments");
    for _ in 0..2 {
        let report = wal.run_retention(SystemTime::now()).expect("retention");
        assert!(report.deleted.is_empty(), "{report:?}");
    }
    assert_eq!(wal.tick_ranges().len(), segments);
    assert_eq!(contents(&store), expected);
}

// The control for the retention claim above: the same log under a store keeping its documents
// itself loses its old segments to the same retention.
#[test]
fn a_store_keeping_documents_itself_lets_retention_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Arc::new(Wal::open(dir.path().join("wal"), wal_options()).expect("wal"));
    let expected = write(&wal);
    let store = open_store(dir.path(), false, &wal);
    apply_all(&wal, &store);
    let segments = wal.tick_ranges().len();
    let deleted: usize = (0..2)
        .map(|_| {
            wal.run_retention(SystemTime::now())
                .expect("retention")
                .deleted
                .len()
        })
        .sum();
    assert!(deleted > 0 && wal.tick_ranges().len() < segments);
    assert_eq!(contents(&store), expected);
}

#[test]
fn a_damaged_frame_is_an_error_not_a_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Arc::new(Wal::open(dir.path().join("wal"), wal_options()).expect("wal"));
    let expected = write(&wal);
    let store = open_store(dir.path(), true, &wal);
    apply_all(&wal, &store);
    // Flip one byte in the middle of the first sealed segment's data: inside a frame of some
    // early documents. In place: the WAL maps the file.
    let first = &wal.tick_ranges()[0];
    assert!(first.sealed);
    let length = std::fs::metadata(&first.path).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&first.path)
        .expect("open");
    let mut byte = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, length / 2).expect("read");
    byte[0] ^= 0x5a;
    std::os::unix::fs::FileExt::write_all_at(&file, &byte, length / 2).expect("write");
    let mut failed = 0;
    for i in 0..3000 {
        let key = format!("k{i}");
        match store.get(1001, &key) {
            Ok(document) => assert_eq!(document.map(|d| d.json).as_ref(), expected.get(&key)),
            Err(_) => failed += 1,
        }
    }
    assert!(failed > 0, "a damaged frame went unnoticed");
    assert!(failed < 100, "one damaged frame failed {failed} reads");
}

// Goal: segments retention lets go leave their live documents in value files: the WAL loses
// segments, every document still reads back (get, get_many, scan) with its revision, also after
// both are reopened, and collection goes on where it stopped.
#[test]
fn collected_segments_leave_their_live_documents_in_value_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Arc::new(Wal::open(dir.path().join("wal"), wal_options()).expect("wal"));
    let mut expected = write(&wal);
    // Replace half the documents again: the oldest segments are mostly dead now (their live
    // documents are copied), the newer ones mostly live (they become value files as they are).
    let again = (0..3000u64).step_by(2).filter(|i| i % 11 != 0);
    put_versions(&wal, &mut expected, again, (3, 700), 250);
    let store = open_store(dir.path(), true, &wal);
    apply_all(&wal, &store);
    let revisions: BTreeMap<String, u64> = expected
        .keys()
        .map(|k| {
            (
                k.clone(),
                store.get(1001, k).expect("get").expect("present").rev.get(),
            )
        })
        .collect();
    let segments = wal.tick_ranges().len();

    let collected = collect_all(&store, &wal);
    assert!(collected >= 2, "{collected} segments collected");
    assert!(
        wal.tick_ranges().len() < segments,
        "retention deleted collected segments: {} of {segments} left",
        wal.tick_ranges().len()
    );
    let (files, bytes) = store.value_files().expect("value files");
    assert!(files >= 1 && bytes > 0);
    assert_eq!(contents(&store), expected);
    for (key, rev) in &revisions {
        assert_eq!(
            store
                .get(1001, key)
                .expect("get")
                .expect("present")
                .rev
                .get(),
            *rev
        );
    }

    // Both reopened: the value files and how far they go are found again.
    let through = store.collected_through();
    drop(store);
    drop(wal);
    let wal = Arc::new(Wal::open(dir.path().join("wal"), wal_options()).expect("wal"));
    let store = open_store(dir.path(), false, &wal);
    assert_eq!(store.collected_through(), through);
    assert_eq!(store.value_files().expect("value files").0, files);
    assert_eq!(contents(&store), expected);
    // More writes, more collection, still equal.
    put_versions(&wal, &mut expected, 3000..4000u64, (4, 900), 250);
    apply_all(&wal, &store);
    collect_all(&store, &wal);
    assert!(store.collected_through() > through);
    assert_eq!(contents(&store), expected);

    // Replace or remove nine in ten of the documents: value files that are mostly dead now are
    // rewritten with their live documents only, and every document still reads back.
    let (_, bytes_before) = store.value_files().expect("value files");
    let replaced = (0..4000u64).filter(|i| i % 10 != 0 && i % 11 != 0);
    put_versions(&wal, &mut expected, replaced, (5, 300), 500);
    apply_all(&wal, &store);
    collect_all(&store, &wal);
    let (files_after, bytes_after) = store.value_files().expect("value files");
    assert!(
        bytes_after < bytes_before,
        "value files shrank: {bytes_before} -> {bytes_after} bytes in {files_after} files"
    );
    assert_eq!(contents(&store), expected);

    // A rewrite a crash kept from its place is dropped at open; the old file still serves.
    let next = dir.path().join("store-values").join("next");
    std::fs::write(
        next.join("00000000000000aa-0000000000000001.val"),
        b"unconfirmed",
    )
    .expect("write");
    drop(store);
    drop(wal);
    let wal = Arc::new(Wal::open(dir.path().join("wal"), wal_options()).expect("wal"));
    let store = open_store(dir.path(), true, &wal);
    assert_eq!(std::fs::read_dir(&next).expect("list").count(), 0);
    assert_eq!(contents(&store), expected);
}

// Goal: a running store writer collects segments by itself, reading each one (sample, copy of
// the live documents) on a thread of its own so that applying never waits for it, while it
// keeps applying new blocks, and rewrites value files that became mostly dead the same way;
// every document reads back the same.
#[test]
fn a_running_store_writer_collects_segments_while_it_applies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Arc::new(Wal::open(dir.path().join("wal"), wal_options()).expect("wal"));
    let mut expected = write(&wal);
    // Two in three documents replaced: the oldest segments are mostly dead, so their live
    // documents are copied (the newer ones are linked).
    let again = (0..3000u64).filter(|i| i % 3 != 0 && i % 11 != 0);
    put_versions(&wal, &mut expected, again, (7, 600), 250);
    let segments = wal.tick_ranges().len();
    assert!(segments >= 4, "{segments} segments");
    let store = open_store(dir.path(), true, &wal);
    // Segments become collectable once the store has persisted their ticks.
    let options = StoreWriterOptions {
        flush_interval: Duration::from_millis(200),
        ..StoreWriterOptions::default()
    };
    let writer = StoreWriter::start(wal.clone(), store.clone(), options).expect("store writer");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0u64;
    // Writes go on while segments are collected, paced by the store: the next batch once the
    // last one is persisted (a flush every 200 ms).
    while store.value_files().expect("value files").0 < 3 {
        assert!(
            Instant::now() < deadline,
            "collected through {} of {segments} segments",
            store.collected_through()
        );
        let keys = 10_000 + round * 20..10_000 + round * 20 + 20;
        put_persisted(&wal, &writer, &mut expected, keys, 6, deadline);
        round += 1;
    }
    writer
        .wait_applied(wal.last_tick(), Duration::from_secs(30))
        .expect("applied");
    assert!(store.collected_through().get() > 0);
    assert_eq!(contents(&store), expected);

    // Nine in ten of the documents replaced: the value files made so far are mostly dead, and
    // the running store writer rewrites them (read and written on the collecting thread) while it
    // applies more.
    let before = value_file_sizes(dir.path());
    let replaced = (0..3000u64).filter(|i| i % 10 != 0);
    put_versions(&wal, &mut expected, replaced, (8, 300), 250);
    let shrunk = |now: &BTreeMap<String, u64>| {
        before
            .iter()
            .any(|(name, bytes)| now.get(name).is_some_and(|now| now < bytes))
    };
    while !shrunk(&value_file_sizes(dir.path())) {
        assert!(
            Instant::now() < deadline,
            "no value file rewritten: {before:?} -> {:?}",
            value_file_sizes(dir.path())
        );
        let keys = 20_000 + round * 20..20_000 + round * 20 + 20;
        put_persisted(&wal, &writer, &mut expected, keys, 9, deadline);
        round += 1;
    }
    writer
        .wait_applied(wal.last_tick(), Duration::from_secs(30))
        .expect("applied");
    assert_eq!(contents(&store), expected);
    writer.stop();
    drop(writer);
    assert_eq!(contents(&store), expected);
}

/// Puts version `version` (500 bytes) of documents `k{i}` for each of `keys` in one block,
/// and waits (until `deadline`) for `writer` to have them persisted.
fn put_persisted(
    wal: &Wal,
    writer: &StoreWriter,
    expected: &mut BTreeMap<String, Vec<u8>>,
    keys: impl IntoIterator<Item = u64>,
    version: u32,
    deadline: Instant,
) {
    put_versions(wal, expected, keys, (version, 500), 20);
    let last = wal.last_tick();
    writer
        .wait_persisted(last, deadline.saturating_duration_since(Instant::now()))
        .unwrap_or_else(|e| panic!("tick {last} never persisted: {e}"));
}

/// The value files in the store under `dir` and their sizes.
fn value_file_sizes(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir.join("store-values"))
        .expect("list value files")
        .filter_map(|entry| {
            let entry = entry.expect("entry");
            let name = entry.file_name().into_string().expect("name");
            let bytes = entry.metadata().expect("metadata").len();
            name.ends_with(".val").then_some((name, bytes))
        })
        .collect()
}

// Goal: behind a leader that compresses each block as a whole (one keeping its documents
// itself), a store keeping documents in the WAL keeps those of large blocks itself, where a read
// would decompress the whole block, and those of small blocks in the WAL: the large blocks'
// segments go to retention with nothing copied into value files, and everything reads back.
#[test]
fn documents_of_large_whole_blocks_stay_in_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let whole = WalOptions {
        frame_bytes: 0,
        ..wal_options()
    };
    let wal = Arc::new(Wal::open(dir.path().join("wal"), whole).expect("wal"));
    // 12 blocks of 250 ~1 KB documents (~250 KB each, compressed whole), then small blocks.
    let mut expected = write(&wal);
    put_versions(&wal, &mut expected, 5000..5200u64, (6, 1000), 10);
    let store = open_store(dir.path(), true, &wal);
    apply_all(&wal, &store);
    assert_eq!(contents(&store), expected);
    let segments = wal.tick_ranges().len();
    assert!(collect_all(&store, &wal) >= 2);
    assert!(
        wal.tick_ranges().len() < segments,
        "retention deleted collected segments: {} of {segments} left",
        wal.tick_ranges().len()
    );
    // Only the small blocks' documents (200 of ~1 KB, some of them maybe still in the WAL) can
    // be in value files; the ~2,300 others of the large blocks are not.
    let (_, bytes) = store.value_files().expect("value files");
    assert!(bytes < 400_000, "{bytes} bytes in value files");
    assert_eq!(contents(&store), expected);
}

/// `count` documents `k0`, `k1`, ... of ~1 KB of random letters each: incompressible, so the
/// WAL holds about what is written.
fn noise_documents(count: usize) -> Vec<(String, Vec<u8>)> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..count)
        .map(|i| {
            let mut json = format!(r#"{{"_key":"k{i}","n":""#).into_bytes();
            json.extend(
                common::noise(&mut state, 1000)
                    .iter()
                    .map(|b| b'a' + b % 26),
            );
            json.extend_from_slice(br#""}"#);
            (format!("k{i}"), json)
        })
        .collect()
}

/// A WAL under `dir` in segments of `segment_bytes`, holding collection 1001 and `docs`
/// (`per_block` to a block), applied by a store that keeps its documents in the WAL.
fn users_applied(
    dir: &Path,
    segment_bytes: u64,
    docs: &[(String, Vec<u8>)],
    per_block: usize,
) -> (Arc<Wal>, Arc<DocStore>) {
    let wal_options = WalOptions {
        segment_bytes,
        frame_bytes: FRAME_RAW_BYTES,
        retention_interval: None,
        ..WalOptions::default()
    };
    let wal = Arc::new(Wal::open(dir.join("wal"), wal_options).expect("wal"));
    let users = collection_definition(1001, "users");
    wal.append(&[record(RecordType::CollectionCreate, "1001", "", &users)])
        .expect("create");
    put_all(&wal, docs, per_block);
    let store = open_store(dir, true, &wal);
    apply_all(&wal, &store);
    (wal, store)
}

/// Scans collection 1001 whole, handing each document's JSON to `check`; returns how many.
fn scan_count(store: &DocStore, mut check: impl FnMut(&[u8])) -> usize {
    let mut seen = 0usize;
    store
        .scan(1001, |_, document| {
            check(&document.json);
            seen += 1;
            true
        })
        .expect("scan");
    seen
}

#[test]
fn a_scan_hands_back_the_wal_pages_it_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    // ~20 MiB of incompressible documents, 500 to a block.
    let docs = noise_documents(20_000);
    let (_wal, store) = users_applied(dir.path(), 64 << 20, &docs, 500);
    let wal_dir = dir.path().join("wal");
    let before = common::resident_kib_of_files_in(&wal_dir);
    let seen = scan_count(&store, |json| assert!(json.len() > 1000));
    assert_eq!(seen, docs.len());
    let after = common::resident_kib_of_files_in(&wal_dir);
    // Without handing pages back, the scan leaves the ~20 MiB it read mapped.
    assert!(
        after <= before + 1024,
        "{after} KiB of the WAL mapped after the scan, {before} KiB before"
    );
}

#[test]
fn a_scan_leaves_the_block_cache_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 100k small documents: ~3 MB of keys and ticks in the store's table files once flushed.
    let docs: Vec<(String, Vec<u8>)> = (0..100_000)
        .map(|i| {
            let key = format!("document-{i:08}");
            let json = format!(r#"{{"_key":"{key}","n":{i}}}"#).into_bytes();
            (key, json)
        })
        .collect();
    let (_wal, store) = users_applied(dir.path(), WalOptions::default().segment_bytes, &docs, 1000);
    store.flush().expect("flush");
    let before = store.memory().block_cache;
    assert_eq!(scan_count(&store, |_| {}), docs.len());
    let after = store.memory().block_cache;
    // Filling the cache, the scan left every data block it read in it (2.3 MB more).
    assert!(
        after <= before + (64 << 10),
        "block cache {after} bytes after the scan, {before} before"
    );
}

#[test]
fn reads_of_single_documents_hand_back_their_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    // ~20 MiB of incompressible documents in ~5 sealed segments.
    let docs = noise_documents(20_000);
    let (wal, store) = users_applied(dir.path(), 4 << 20, &docs, 200);
    let wal_dir = dir.path().join("wal");
    let before = common::resident_kib_of_files_in(&wal_dir);
    for (key, json) in docs.iter().step_by(10) {
        let document = store.get(1001, key).expect("get").expect("found");
        assert_eq!(&document.json, json);
    }
    let read = common::resident_kib_of_files_in(&wal_dir);
    // Each read maps the fault-around window of its frame: over 2,000 reads, most of the log.
    assert!(
        read >= before + (8 << 10),
        "{read} KiB of the WAL mapped after the reads, {before} KiB before"
    );
    wal.hand_back_point_reads();
    let after = common::resident_kib_of_files_in(&wal_dir);
    // Sealed segments and the active one alike (before the active one was handed back too,
    // its share stayed: 4,032 KiB).
    assert!(
        after <= before + 256,
        "{after} KiB of the WAL mapped after handing back, {read} KiB before it"
    );
}
