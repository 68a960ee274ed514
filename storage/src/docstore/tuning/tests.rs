//! Tests of how the store sets RocksDB up that look inside it: at its RocksDB handle, cache and
//! memtable budget, which the public API does not show. Those that need only the public API are
//! in `storage/tests/docstore_tunes_memtables_for_tailing.rs`.

use std::path::Path;

use super::*;
use crate::docstore::CF_META;

// Goal: a small open-file budget is not exceeded by RocksDB's shards each keeping a file.
#[test]
fn open_files_keep_their_budget_across_shards() {
    // Small budgets: one shard, so the budget is the bound, not the shard count.
    assert_eq!(table_cache_shard_bits(20), 0);
    assert_eq!(table_cache_shard_bits(32), 0);
    assert_eq!(table_cache_shard_bits(127), 0);
    // A shard per 64 files.
    assert_eq!(table_cache_shard_bits(128), 1);
    assert_eq!(table_cache_shard_bits(512), 3);
    // RocksDB's 64 shards for large budgets and for no limit.
    assert_eq!(table_cache_shard_bits(15_904), 6);
    assert_eq!(table_cache_shard_bits(i32::MAX), 6);
    assert_eq!(table_cache_shard_bits(-1), 6);
}

// Goal: `set_tailing` switches RocksDB's memtable size both ways, and only on a change:
// 4 MiB written stay in one memtable at the large size and are flushed on the way at the
// tailing size.
#[test]
fn tailing_memtables_are_smaller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions {
        tailing_write_buffer_bytes: Some(1 << 20),
        ..StoreOptions::default()
    };
    let store = DocStore::open_with(dir.path().join("store"), &options).expect("open");
    let active = || {
        store
            .int_property(store.docs(), "rocksdb.cur-size-active-mem-table")
            .expect("property")
    };
    let put = |round: u8| {
        for key in 0..1024 {
            store
                .db
                .put_cf(store.docs(), format!("k{round}-{key:05}"), vec![b'a'; 4096])
                .expect("put");
        }
    };
    assert_eq!(store.write_buffer_bytes(), 64 << 20);
    assert!(!store.set_tailing(false).expect("no change"));
    put(0);
    assert!(active() >= 4 << 20, "one 64 MiB memtable holds 4 MiB");
    store.db.flush_cf(store.docs()).expect("flush");
    assert!(store.set_tailing(true).expect("tailing"));
    assert!(!store.set_tailing(true).expect("no change"));
    assert_eq!(store.write_buffer_bytes(), 1 << 20);
    put(1);
    assert!(active() < 2 << 20, "1 MiB memtables: {} bytes", active());
    assert!(store.set_tailing(false).expect("catching up"));
    assert_eq!(store.write_buffer_bytes(), 64 << 20);
    store.db.flush_cf(store.docs()).expect("flush");
    put(2);
    assert!(active() >= 4 << 20, "64 MiB again: {} bytes", active());
    // 0 turns tailing memtables off.
    drop(store);
    let options = StoreOptions {
        tailing_write_buffer_bytes: Some(0),
        ..StoreOptions::default()
    };
    let store = DocStore::open_with(dir.path().join("store"), &options).expect("open");
    store.set_tailing(true).expect("tailing");
    assert_eq!(store.write_buffer_bytes(), 64 << 20);
}

/// Option `name` of column family `family` in the store's latest OPTIONS file.
fn option_in_force(store: &DocStore, family: &str, name: &str) -> String {
    let options = std::fs::read_dir(&store.path)
        .expect("list the store")
        .filter_map(|entry| {
            entry
                .ok()
                .map(|e| e.file_name().to_string_lossy().into_owned())
        })
        .filter(|name| name.starts_with("OPTIONS-"))
        .max_by_key(|name| name[8..].parse::<u64>().unwrap_or(0))
        .expect("an OPTIONS file");
    let text = std::fs::read_to_string(store.path.join(options)).expect("read OPTIONS");
    let section = text
        .split("[CFOptions \"")
        .find(|section| section.starts_with(&format!("{family}\"")))
        .expect("the column family's section");
    let prefix = format!("{name}=");
    section
        .lines()
        .find_map(|line| line.trim().strip_prefix(prefix.as_str()))
        .expect("the option")
        .to_owned()
}

// Goal: a store keeping its documents in the WAL holds at most
// `FAR_BEHIND_TOTAL_WRITE_BUFFER_BYTES_KEYS_ONLY` of memtables while it tails far behind,
// and the configured total again when it gets close or stops tailing; a store of documents
// keeps the configured total throughout, a smaller configured total is never raised, and a
// store without a total gets none. The `meta` memtables grow by small blocks, so that they
// do not take the budget from the documents'.
#[test]
fn far_behind_keys_only_holds_one_memtable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let total = |store: &DocStore| {
        store
            .write_buffer_manager
            .as_ref()
            .map(|m| m.get_buffer_size())
    };
    let configured = StoreOptions::default().total_write_buffer_bytes;
    let far = Some(FAR_BEHIND_TOTAL_WRITE_BUFFER_BYTES_KEYS_ONLY);
    let store = open_in_mode(&dir.path().join("in-wal"), true);
    assert_eq!(
        option_in_force(&store, CF_META, "arena_block_size"),
        META_ARENA_BLOCK_BYTES.to_string()
    );
    assert_eq!(total(&store), Some(configured));
    store.set_tailing(true).expect("tailing");
    assert_eq!(total(&store), Some(configured));
    assert!(store.set_far_behind(true));
    assert!(!store.set_far_behind(true));
    assert_eq!(total(&store), far);
    assert_eq!(store.total_write_buffer_budget(), far);
    assert!(store.set_far_behind(false));
    assert_eq!(total(&store), Some(configured));
    store.set_far_behind(true);
    store.set_tailing(false).expect("leading");
    assert_eq!(total(&store), Some(configured));
    store.set_tailing(true).expect("tailing");
    assert_eq!(total(&store), far);
    let store = open_in_mode(&dir.path().join("in-store"), false);
    store.set_tailing(true).expect("tailing");
    assert!(!store.set_far_behind(true));
    assert_eq!(total(&store), Some(configured));
    let open = |name: &str, total_write_buffer_bytes: usize| {
        let options = StoreOptions {
            documents_in_wal: true,
            total_write_buffer_bytes,
            ..StoreOptions::default()
        };
        let store = DocStore::open_with(dir.path().join(name), &options).expect("open");
        store.set_tailing(true).expect("tailing");
        store.set_far_behind(true);
        store
    };
    assert_eq!(total(&open("small", 2 << 20)), Some(2 << 20));
    assert_eq!(total(&open("unlimited", 0)), None);
}

/// A store at `path` with the default options, documents kept in the WAL or in the store.
fn open_in_mode(path: &Path, documents_in_wal: bool) -> DocStore {
    let options = StoreOptions {
        documents_in_wal,
        ..StoreOptions::default()
    };
    DocStore::open_with(path, &options).expect("open")
}

// Goal: `max_bytes_for_level_base` is in force: with a small base the keys spread over
// several levels (so a level-0 compaction rewrites at most the base level), while RocksDB's
// 256 MiB keeps them all in the last level, every compaction rewriting all of them.
#[test]
fn small_level_base_spreads_keys_over_levels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let levels = |base: u64| -> Vec<u64> {
        let options = StoreOptions {
            max_bytes_for_level_base: base,
            level0_compaction_trigger: 2,
            ..StoreOptions::default()
        };
        let store = DocStore::open_with(dir.path().join(base.to_string()), &options).expect("open");
        // Keys in no order, as a load's keys arrive: every flush overlaps the levels below.
        // Each flush's compactions finish before the next flush, as they would with a steady
        // load: the shape must not depend on how fast compactions get the CPU (at nice 19,
        // with other tests running, all 20 files may otherwise go down in one compaction).
        let key = |n: u64| format!("k{:010}", n.wrapping_mul(2_654_435_761) % 10_000_000_000);
        for round in 0..20u64 {
            for n in round * 1500..(round + 1) * 1500 {
                store
                    .db
                    .put_cf(store.docs(), key(n), vec![b'd'; 300])
                    .expect("put");
            }
            store.db.flush_cf(store.docs()).expect("flush");
            wait_for_compactions(&store);
        }
        for n in [0, 17_011, 29_999] {
            assert_eq!(
                store.db.get_cf(store.docs(), key(n)).expect("get"),
                Some(vec![b'd'; 300]),
                "key {n} survives compaction"
            );
        }
        (1..=6)
            .map(|level| {
                store
                    .int_property(store.docs(), &format!("rocksdb.num-files-at-level{level}"))
                    .expect("property")
            })
            .collect()
    };
    let small = levels(64 << 10);
    assert!(
        small[..5].iter().sum::<u64>() > 0 && small[5] > 0,
        "64 KiB base: keys in several levels, {small:?}"
    );
    let large = levels(256 << 20);
    assert_eq!(
        large[..5].iter().sum::<u64>(),
        0,
        "256 MiB base: one level, {large:?}"
    );
    assert!(large[5] > 0, "256 MiB base: {large:?}");
}

// Goal: the block cache does not keep the index and filter blocks of files that compaction
// removed (they would fill it at the speed the store is written, not read).
#[test]
fn compaction_takes_dead_files_out_of_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions {
        level0_compaction_trigger: 64,
        ..StoreOptions::default()
    };
    let store = DocStore::open_with(dir.path().join("store"), &options).expect("open");
    let docs = store.docs();
    // Eight files; each is opened once written, which loads its index and filter blocks.
    for round in 0..8u32 {
        for n in 0..4000u32 {
            let key = format!("k{round}-{n:06}");
            store.db.put_cf(docs, key, [b'v'; 8]).expect("put");
        }
        store.db.flush_cf(docs).expect("flush");
    }
    let before = store.cache.get_usage();
    assert!(
        before > 32 << 10,
        "the files' metadata is cached: {before} bytes"
    );
    // Every key removed: compaction into the last level leaves no file at all.
    store
        .db
        .delete_range_cf(docs, "k", "l")
        .expect("delete range");
    store.db.flush_cf(docs).expect("flush");
    store
        .db
        .compact_range_cf(docs, None::<&[u8]>, None::<&[u8]>);
    wait_until(|| {
        let files: u64 = (0..7)
            .map(|level| {
                store
                    .int_property(docs, &format!("rocksdb.num-files-at-level{level}"))
                    .expect("property")
            })
            .sum();
        let after = store.cache.get_usage();
        (files > 0 || after >= before / 8).then(|| {
            format!("{files} files left, cache at {after} bytes, {before} before the compaction")
        })
    });
}

// Goal: table files have their index and filter in partitions, so that building one holds a
// partition's key hashes and a lookup loads a partition, not a whole file's filter.
#[test]
fn tables_are_partitioned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DocStore::open(dir.path().join("store")).expect("open");
    let docs = store.docs();
    for n in 0..100_000u32 {
        store
            .db
            .put_cf(docs, format!("k{n:08}"), n.to_le_bytes())
            .expect("put");
    }
    store.db.flush_cf(docs).expect("flush");
    let properties = store
        .db
        .property_value_cf(docs, "rocksdb.aggregated-table-properties")
        .expect("property")
        .expect("tables");
    let partitions = properties
        .split(';')
        .find_map(|p| p.trim().strip_prefix("# index partitions="))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(partitions >= 2, "{properties}");
    for n in [0u32, 54_321, 99_999] {
        assert_eq!(
            store.db.get_cf(docs, format!("k{n:08}")).expect("get"),
            Some(n.to_le_bytes().to_vec())
        );
    }
    assert_eq!(store.db.get_cf(docs, "k-missing").expect("get"), None);
}

// Goal: a store whose memtables shrink for tailing lets level 0 grow by as many more files
// before compacting, and compacts at the configured count again once they grow back.
#[test]
fn tailing_scales_the_level0_compaction_trigger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions {
        write_buffer_bytes: 4 << 20,
        tailing_write_buffer_bytes: Some(1 << 20),
        level0_compaction_trigger: 2,
        ..StoreOptions::default()
    };
    let store = DocStore::open_with(dir.path(), &options).expect("open");
    assert_eq!(store.level0_triggers_for(true).compaction, 8);
    assert_eq!(store.level0_triggers_for(false).compaction, 2);
    let settled = |store: &DocStore| {
        wait_for_compactions(store);
        store
            .int_property(store.docs(), "rocksdb.num-files-at-level0")
            .expect("property")
    };
    assert!(store.set_tailing(true).expect("tailing"));
    for round in 0..5u32 {
        for n in 0..100u32 {
            store
                .db
                .put_cf(store.docs(), format!("k{n:04}-{round}"), vec![b'd'; 100])
                .expect("put");
        }
        store.db.flush_cf(store.docs()).expect("flush");
    }
    assert_eq!(
        settled(&store),
        5,
        "tailing: 5 files stay below the trigger of 8"
    );
    assert!(store.set_tailing(false).expect("leading"));
    // Changing the options schedules the compaction the configured trigger asks for.
    assert_eq!(settled(&store), 0, "leading: level 0 compacted at 2 files");
    assert_eq!(
        store.db.get_cf(store.docs(), "k0042-3").expect("get"),
        Some(vec![b'd'; 100])
    );
}

// Goal: blob garbage collection stays off under inserts alone, comes on once compactions
// have found enough replaced documents, moves the live ones out of the old blob file, and
// goes off again; with the flag off it never comes on.
#[test]
fn blob_gc_runs_only_while_there_is_garbage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions {
        blob_gc_age_cutoff: 1.0,
        ..StoreOptions::default()
    };
    let store = DocStore::open_with(dir.path().join("store"), &options).expect("open");
    let value = |round: u8| vec![b'a' + round; 4096];
    let put = |keys: std::ops::Range<u32>, round: u8| {
        for key in keys {
            store
                .db
                .put_cf(store.docs(), format!("k{key:05}"), value(round))
                .expect("put");
        }
        store.db.flush_cf(store.docs()).expect("flush");
    };
    let compact = || {
        let mut options = rocksdb::CompactOptions::default();
        options.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        store
            .db
            .compact_range_cf_opt(store.docs(), None::<&[u8]>, None::<&[u8]>, &options)
    };
    let garbage = || {
        store
            .int_property(store.docs(), "rocksdb.live-blob-file-garbage-size")
            .expect("property")
    };
    put(0..200, 0);
    compact();
    assert!(
        !store.tune_blob_gc().expect("tune"),
        "inserts alone leave no garbage"
    );
    // Half of the documents replaced: the first blob file is half garbage once compacted.
    put(0..100, 1);
    compact();
    assert!(
        garbage() > 0,
        "compaction accounts replaced documents as garbage"
    );
    assert!(
        store.tune_blob_gc().expect("tune"),
        "a third of the blob bytes are garbage"
    );
    // With collection on, a compaction moves the live documents out of the old file.
    compact();
    assert_eq!(garbage(), 0, "collection reclaimed the old blob file");
    assert!(
        !store.tune_blob_gc().expect("tune"),
        "nothing left to collect"
    );
    for key in [0u32, 150] {
        let got = store
            .db
            .get_cf(store.docs(), format!("k{key:05}"))
            .expect("get");
        assert_eq!(
            got,
            Some(value(u8::from(key < 100))),
            "documents survive collection"
        );
    }
    drop(store);

    let off = StoreOptions {
        blob_gc: false,
        ..options
    };
    let store = DocStore::open_with(dir.path().join("off"), &off).expect("open");
    for round in 0..2 {
        for key in 0..100u32 {
            store
                .db
                .put_cf(store.docs(), format!("k{key:05}"), value(round))
                .expect("put");
        }
        store.db.flush_cf(store.docs()).expect("flush");
    }
    store
        .db
        .compact_range_cf(store.docs(), None::<&[u8]>, None::<&[u8]>);
    assert!(
        !store.tune_blob_gc().expect("tune"),
        "the flag keeps it off"
    );
}

/// Waits (up to a minute) until no compaction of the documents runs or waits to run.
fn wait_for_compactions(store: &DocStore) {
    wait_until(|| {
        let busy = store
            .int_property(store.docs(), "rocksdb.compaction-pending")
            .expect("property")
            + store
                .int_property(store.docs(), "rocksdb.num-running-compactions")
                .expect("property");
        (busy > 0).then(|| "compactions never settled".to_string())
    });
}

/// Polls `pending` every 10 ms until it says nothing is left; fails with what it said last
/// after a minute.
fn wait_until(mut pending: impl FnMut() -> Option<String>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Some(left) = pending() {
        assert!(std::time::Instant::now() < deadline, "{left}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
