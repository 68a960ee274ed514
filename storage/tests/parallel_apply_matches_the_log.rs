//! Claim: applying with several threads (records partitioned by collection and key) leaves
//! exactly the state the log describes, the same as applying on one thread: every key's last
//! change wins in tick order across partitions, counts are exact, collection truncates, drops,
//! re-creations and renames act between the document records around them, aborted transactions
//! stay out, and any split of the log into groups gives the same result.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{blocks_after, collection_definition, options};
use tickship_storage::docstore::{
    ApplyContext, CollectionInfo, DocStore, StoreOptions, StoreWriter, StoreWriterOptions,
};
use tickship_storage::wal::{IoEngine, Record, RecordType};
use tickship_storage::{Tick, Wal, WalOptions};

/// A small deterministic generator (the test must not depend on a seed it cannot print).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One record as generated, owning its strings.
struct Owned {
    kind: RecordType,
    tid: u64,
    collection: String,
    key: String,
    data: Vec<u8>,
}

impl Owned {
    fn record(&self) -> Record<'_> {
        Record {
            kind: self.kind,
            tid: self.tid,
            db: "_system",
            collection: &self.collection,
            key: &self.key,
            data: &self.data,
        }
    }
}

/// The expected state: collection id → (name, key → (rev, document)).
type Model = BTreeMap<u64, (String, BTreeMap<String, (u64, Vec<u8>)>)>;

/// Applies one block's records (first tick `first`) to the model as the log defines them.
fn model_apply(model: &mut Model, block: &[Owned], first: u64) {
    let aborted: Vec<u64> = block
        .iter()
        .filter(|r| r.kind == RecordType::TransactionAbort)
        .map(|r| r.tid)
        .collect();
    for (i, r) in block.iter().enumerate() {
        let tick = first + i as u64;
        if r.tid != 0 && aborted.contains(&r.tid) {
            continue;
        }
        let id: u64 = r.collection.parse().unwrap_or(0);
        match r.kind {
            RecordType::CollectionCreate => {
                let info: CollectionInfo = serde_json::from_slice(&r.data).expect("definition");
                model.entry(info.id).or_insert((info.name, BTreeMap::new()));
            }
            RecordType::CollectionDrop => {
                model.remove(&id);
            }
            RecordType::CollectionTruncate => {
                if let Some((_, docs)) = model.get_mut(&id) {
                    docs.clear();
                }
            }
            RecordType::CollectionRename => {
                let change: serde_json::Value = serde_json::from_slice(&r.data).expect("json");
                if let Some((name, _)) = model.get_mut(&id) {
                    *name = change["name"].as_str().expect("name").to_string();
                }
            }
            RecordType::DocumentPut | RecordType::DocumentInsert => {
                if let Some((_, docs)) = model.get_mut(&id) {
                    docs.insert(r.key.clone(), (tick, r.data.clone()));
                }
            }
            RecordType::DocumentRemove => {
                if let Some((_, docs)) = model.get_mut(&id) {
                    docs.remove(&r.key);
                }
            }
            _ => {}
        }
    }
}

fn put(collection: u64, key: u64, version: u64) -> Owned {
    let key = format!("k{key}");
    Owned {
        kind: RecordType::DocumentPut,
        tid: 0,
        collection: collection.to_string(),
        data: format!(
            r#"{{"_key":"{key}","v":{version},"pad":"{}"}}"#,
            "x".repeat(40)
        )
        .into_bytes(),
        key,
    }
}

fn remove(collection: u64, key: u64) -> Owned {
    Owned {
        kind: RecordType::DocumentRemove,
        tid: 0,
        collection: collection.to_string(),
        key: format!("k{key}"),
        data: Vec::new(),
    }
}

fn marker(kind: RecordType, tid: u64, collection: u64, data: &[u8]) -> Owned {
    Owned {
        kind,
        tid,
        collection: if collection == 0 {
            String::new()
        } else {
            collection.to_string()
        },
        key: String::new(),
        data: data.to_vec(),
    }
}

/// Writes a mixed log into `wal` and returns the model of what it describes.
fn write_log(wal: &Wal, seed: u64) -> Model {
    let mut rng = Lcg(seed);
    let mut model = Model::new();
    let mut live: Vec<u64> = Vec::new();
    let mut next_id = 3001;
    let mut version = 0;
    let append = |records: Vec<Owned>, model: &mut Model| {
        let refs: Vec<Record<'_>> = records.iter().map(Owned::record).collect();
        let ticks = wal.append(&refs).expect("append");
        model_apply(model, &records, ticks.first.get());
    };
    for _ in 0..4 {
        append(
            vec![marker(
                RecordType::CollectionCreate,
                0,
                0,
                &collection_definition(next_id, &format!("c{next_id}")),
            )],
            &mut model,
        );
        live.push(next_id);
        next_id += 1;
    }
    for step in 0..120u64 {
        let collection = live[rng.below(live.len() as u64) as usize];
        match rng.below(100) {
            // Batches, some of them transactions (committed or aborted), over a small key space
            // so keys are changed again and again, in and across blocks.
            0..=54 => {
                let tid = match rng.below(3) {
                    0 => 0,
                    _ => 100 + step,
                };
                let mut records = Vec::new();
                if tid != 0 {
                    records.push(marker(RecordType::TransactionBegin, tid, 0, b""));
                }
                for _ in 0..(50 + rng.below(400)) {
                    let target = live[rng.below(live.len() as u64) as usize];
                    let key = rng.below(300);
                    version += 1;
                    let mut record = match rng.below(5) {
                        0 => remove(target, key),
                        _ => put(target, key, version),
                    };
                    record.tid = tid;
                    records.push(record);
                }
                if tid != 0 {
                    let end = match rng.below(4) {
                        0 => RecordType::TransactionAbort,
                        _ => RecordType::TransactionCommit,
                    };
                    records.push(marker(end, tid, 0, b""));
                }
                append(records, &mut model);
            }
            // A single write; a put of a key the collection lacks is logged as an insert, as
            // the leader logs it (the store writer then does not look the key up).
            55..=84 => {
                version += 1;
                let key = rng.below(300);
                let record = match rng.below(3) {
                    0 => remove(collection, key),
                    _ => {
                        let mut record = put(collection, key, version);
                        let known = model.get(&collection).map(|(_, docs)| docs);
                        if known.is_some_and(|docs| !docs.contains_key(&record.key)) {
                            record.kind = RecordType::DocumentInsert;
                        }
                        record
                    }
                };
                append(vec![record], &mut model);
            }
            // Truncate in the middle of a block of puts: the puts before it go, those after stay.
            85..=89 => {
                let mut records: Vec<Owned> = (0..20)
                    .map(|k| {
                        version += 1;
                        put(collection, k, version)
                    })
                    .collect();
                records.push(marker(RecordType::CollectionTruncate, 0, collection, b""));
                records.extend((10..30).map(|k| {
                    version += 1;
                    put(collection, k, version)
                }));
                append(records, &mut model);
            }
            90..=94 => {
                let name = format!("renamed{step}");
                append(
                    vec![marker(
                        RecordType::CollectionRename,
                        0,
                        collection,
                        format!(r#"{{"name":"{name}"}}"#).as_bytes(),
                    )],
                    &mut model,
                );
            }
            // Drop a collection (later writes to it are skipped) and create another.
            _ => {
                version += 1;
                let records = vec![
                    put(collection, 1, version),
                    marker(RecordType::CollectionDrop, 0, collection, b""),
                    put(collection, 2, version),
                    marker(
                        RecordType::CollectionCreate,
                        0,
                        0,
                        &collection_definition(next_id, &format!("c{next_id}")),
                    ),
                    Owned {
                        kind: RecordType::DocumentInsert,
                        ..put(next_id, 3, version)
                    },
                ];
                live.retain(|&c| c != collection);
                live.push(next_id);
                next_id += 1;
                append(records, &mut model);
            }
        }
    }
    model
}

/// Asserts that `store` holds exactly `model`: catalog, counts, every document and its `_rev`.
fn assert_matches(store: &DocStore, model: &Model, ids: std::ops::Range<u64>, what: &str) {
    let catalog = store.catalog();
    for id in ids {
        let expected = model.get(&id);
        assert_eq!(
            catalog.collection_by_id(id).map(|c| c.name.clone()),
            expected.map(|(name, _)| name.clone()),
            "{what}: collection {id}"
        );
        let mut found = BTreeMap::new();
        store
            .scan(id, |key, doc| {
                found.insert(key.to_string(), (doc.rev.get(), doc.json));
                true
            })
            .expect("scan");
        let empty = BTreeMap::new();
        let docs = expected.map_or(&empty, |(_, docs)| docs);
        assert_eq!(&found, docs, "{what}: documents of collection {id}");
        if expected.is_some() {
            assert_eq!(store.count(id), docs.len() as u64, "{what}: count of {id}");
        }
    }
}

#[test]
fn parallel_apply_in_any_grouping_equals_the_log() {
    for seed in [1, 7, 42] {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path().join("wal"), options(IoEngine::Sync)).expect("wal");
        let model = write_log(&wal, seed);
        let all = blocks_after(&wal, Tick::ZERO);
        let records: u64 = all.iter().map(|b| u64::from(b.record_count())).sum();
        assert!(
            records > 10_000,
            "the log is big enough to apply in parallel"
        );

        // One thread, everything at once.
        let serial = DocStore::open(dir.path().join("serial")).expect("store");
        serial.apply(&all).expect("apply");
        assert_eq!(serial.applied_tick(), wal.last_tick());
        assert_matches(&serial, &model, 3000..3100, "serial");

        // Four threads, in groups of random sizes (one block up to dozens).
        let parallel = DocStore::open(dir.path().join("parallel")).expect("store");
        let mut context = ApplyContext::with_threads(4).expect("threads");
        let mut rng = Lcg(seed + 1000);
        let mut rest = &all[..];
        let mut groups = 0;
        while !rest.is_empty() {
            let n = (1 + rng.below(30) as usize).min(rest.len());
            let stats = parallel
                .apply_with(&rest[..n], &mut context, Tick::new(u64::MAX))
                .expect("apply");
            assert_eq!(stats.blocks, n as u64);
            assert_eq!(parallel.applied_tick(), rest[n - 1].ticks().last);
            rest = &rest[n..];
            groups += 1;
        }
        assert!(groups > 5);
        assert_matches(&parallel, &model, 3000..3100, "parallel");

        // Applying it all again, in parallel, changes nothing.
        parallel
            .apply_with(&all, &mut context, Tick::new(u64::MAX))
            .expect("again");
        assert_matches(&parallel, &model, 3000..3100, "parallel again");
    }
}

/// Runs a store writer with `threads` and groups of at most `group_bytes_max` over the mixed
/// log of `seed`, written while it runs or before it starts, and checks the store against it.
fn store_writer_follows(seed: u64, threads: usize, group_bytes_max: usize, log_first: bool) {
    store_writer_follows_with(seed, threads, group_bytes_max, log_first, false);
}

/// `store_writer_follows`, with the store keeping its documents in the WAL if `in_wal`.
fn store_writer_follows_with(
    seed: u64,
    threads: usize,
    group_bytes_max: usize,
    log_first: bool,
    in_wal: bool,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal_options = WalOptions {
        frame_bytes: if in_wal { 4 << 10 } else { 0 },
        ..options(IoEngine::Sync)
    };
    let wal = Arc::new(Wal::open(dir.path().join("wal"), wal_options).expect("wal"));
    let store_options = StoreOptions {
        documents_in_wal: in_wal,
        ..StoreOptions::default()
    };
    let store =
        Arc::new(DocStore::open_with(dir.path().join("store"), &store_options).expect("store"));
    store.attach_wal(wal.clone());
    let start = || {
        StoreWriter::start(
            wal.clone(),
            store.clone(),
            StoreWriterOptions {
                threads,
                group_bytes_max,
                ..StoreWriterOptions::default()
            },
        )
        .expect("store writer")
    };
    let (model, writer) = if log_first {
        let model = write_log(&wal, seed);
        (model, start())
    } else {
        let writer = start();
        (write_log(&wal, seed), writer)
    };
    writer
        .wait_applied(wal.last_tick(), Duration::from_secs(60))
        .expect("applied");
    let what = format!(
        "store writer, seed {seed}, {threads} threads, groups of {group_bytes_max} bytes, \
         documents in the WAL: {in_wal}"
    );
    assert_matches(&store, &model, 3000..3100, &what);
    let documents = writer.totals().documents;
    assert!(documents > 0);
    writer.stop();
    assert_eq!(store.persisted_tick().expect("persisted"), wal.last_tick());
}

#[test]
fn store_writer_with_threads_follows_the_wal() {
    store_writer_follows(5, 3, StoreWriterOptions::default().group_bytes_max, false);
}

// Goal: a store keeping its documents in the WAL (in small frames, so blocks have several)
// equals the log too: documents, revisions, counts and catalog, through truncates, drops,
// aborted transactions and keys changed again and again.
#[test]
fn store_writer_with_documents_in_the_wal_follows_the_wal() {
    for (seed, threads, group_bytes_max) in [(5, 3, 4 << 20), (11, 2, 1)] {
        store_writer_follows_with(seed, threads, group_bytes_max, true, true);
    }
}

// Goal: with one block per group, each group is prepared while the one before is still being
// written (keys changed again and again across groups, truncates and drops in between), and
// the store still equals the log: documents, revisions, counts, catalog.
#[test]
fn store_writer_one_block_per_group_equals_the_log() {
    for (seed, threads) in [(5, 1), (11, 3), (23, 2)] {
        store_writer_follows(seed, threads, 1, true);
    }
}
