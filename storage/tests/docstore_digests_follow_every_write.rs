//! Claim: a collection's digest (the XOR of the hashes of its `(key, revision)` pairs) is, after
//! every kind of write (puts, inserts, removals, transactions, truncates applied from the log, a
//! replay of blocks applied before, restores that create, replace and remove, a copy into an
//! empty collection), exactly the digest of what the collection holds; it survives a reopen, a
//! snapshot keeps the digest of its tick, and a digest a cut-short restore may have left stale
//! is forgotten at the next open.

mod common;

use std::sync::Arc;

use common::{blocks_after, collection_definition, options, record};
use tickship_storage::docstore::{
    CollectionInfo, Digest, DocStore, KeyOptions, KeyRange, Restored,
};
use tickship_storage::wal::{IoEngine, Record, RecordType};
use tickship_storage::{Tick, Wal};

/// The digest of what `store` holds of `id`, from a walk of its keys.
fn walked(store: &DocStore, id: u64) -> u128 {
    let mut digest = Digest::default();
    store
        .key_revs(id, KeyRange::ALL, |key, rev| {
            digest.add(key.as_bytes(), rev.get());
            true
        })
        .expect("walk");
    digest.xor
}

fn kept(store: &DocStore, id: u64) -> u128 {
    store.digest(id).expect("digest known").xor
}

/// A small deterministic generator (xorshift), so that a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[test]
fn applied_writes_keep_the_digest_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path().join("wal"), options(IoEngine::Sync)).expect("wal");
    let store = DocStore::open(dir.path().join("store")).expect("store");
    wal.append(&[record(
        RecordType::CollectionCreate,
        "1001",
        "",
        &collection_definition(1001, "users"),
    )])
    .expect("create");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut applied_through = Tick::ZERO;
    for round in 0..40 {
        // A block of up to 300 writes over 200 keys: puts, inserts of keys never used, removals,
        // some inside a transaction; every tenth round a truncate.
        let mut owned: Vec<(RecordType, String, Vec<u8>)> = Vec::new();
        for n in 0..rng.next(300) + 1 {
            let key = format!("k{}", rng.next(200));
            let kind = match rng.next(10) {
                0..=5 => RecordType::DocumentPut,
                6 => RecordType::DocumentInsert,
                _ => RecordType::DocumentRemove,
            };
            let key = if kind == RecordType::DocumentInsert {
                format!("new-{round}-{n}")
            } else {
                key
            };
            let data = format!(r#"{{"_key":"{key}","round":{round}}}"#).into_bytes();
            owned.push((kind, key, data));
        }
        let mut records: Vec<Record<'_>> = Vec::new();
        let tid = if round % 3 == 0 { 100 + round } else { 0 };
        if tid != 0 {
            records.push(Record {
                kind: RecordType::TransactionBegin,
                tid,
                db: "_system",
                collection: "",
                key: "",
                data: b"",
            });
        }
        for (kind, key, data) in &owned {
            let mut r = record(*kind, "1001", key, data);
            r.tid = tid;
            if *kind == RecordType::DocumentRemove {
                r.data = b"";
            }
            records.push(r);
        }
        if tid != 0 {
            records.push(Record {
                kind: RecordType::TransactionCommit,
                tid,
                db: "_system",
                collection: "",
                key: "",
                data: b"",
            });
        }
        wal.append(&records).expect("append");
        if round % 10 == 4 {
            wal.append(&[record(RecordType::CollectionTruncate, "1001", "", b"")])
                .expect("truncate");
        }
        let blocks = blocks_after(&wal, applied_through);
        store.apply(&blocks).expect("apply");
        applied_through = wal.last_tick();
        assert_eq!(kept(&store, 1001), walked(&store, 1001), "round {round}");
    }
    assert!(store.count(1001) > 0);
    // Applying everything again (a replay) changes neither documents nor digest.
    let before = kept(&store, 1001);
    store
        .apply(&blocks_after(&wal, Tick::ZERO))
        .expect("apply again");
    assert_eq!(kept(&store, 1001), before);
    assert_eq!(walked(&store, 1001), before);
    let max_rev = store.digest(1001).expect("digest").max_rev;
    assert!(max_rev > 0 && max_rev <= wal.last_tick().get());

    // A snapshot keeps the digest of its tick while writes go on.
    let store = Arc::new(store);
    let snapshot = store.snapshot().expect("snapshot");
    assert_eq!(snapshot.digest(1001).map(|d| d.xor), Some(before));
    wal.append(&[record(
        RecordType::DocumentPut,
        "1001",
        "after-snapshot",
        br#"{"_key":"after-snapshot"}"#,
    )])
    .expect("put");
    store
        .apply(&blocks_after(&wal, applied_through))
        .expect("apply");
    assert_ne!(kept(&store, 1001), before);
    assert_eq!(snapshot.digest(1001).map(|d| d.xor), Some(before));
    drop(snapshot);

    // The digest is persisted with the documents; a dropped collection has none.
    let now = kept(&store, 1001);
    drop(store);
    let store = DocStore::open(dir.path().join("store")).expect("reopen");
    assert_eq!(kept(&store, 1001), now);
    assert_eq!(walked(&store, 1001), now);
    let before_drop = wal.last_tick();
    wal.append(&[record(RecordType::CollectionDrop, "1001", "", b"")])
        .expect("drop");
    store
        .apply(&blocks_after(&wal, before_drop))
        .expect("apply drop");
    assert_eq!(store.digest(1001), None);
}

fn users() -> CollectionInfo {
    CollectionInfo {
        id: 2001,
        name: "users".into(),
        database: "_system".into(),
        kind: 2,
        wait_for_sync: false,
        key_options: KeyOptions::default(),
        is_system: false,
    }
}

fn put(key: &str, rev: u64) -> Restored {
    Restored::Put {
        key: key.into(),
        rev: Tick::new(rev),
        json: format!(r#"{{"_key":"{key}","_id":"users/{key}"}}"#).into_bytes(),
    }
}

#[test]
fn restores_keep_the_digest_exact_and_a_cut_short_one_is_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = DocStore::open(&path).expect("store");
    store
        .restore_collection(users(), false)
        .expect("collection");
    assert_eq!(
        kept(&store, 2001),
        0,
        "an empty collection's digest is known"
    );
    let news: Vec<Restored> = (0..500).map(|i| put(&format!("k{i:04}"), 10 + i)).collect();
    store.restore_new_documents(2001, news).expect("new");
    assert_eq!(kept(&store, 2001), walked(&store, 2001));
    assert_eq!(store.digest(2001).expect("digest").max_rev, 509);
    // Replacements, removals of keys held and not held, new keys, a key twice (the last wins).
    let mut changes: Vec<Restored> = (0..100)
        .map(|i| put(&format!("k{:04}", i * 3), 1000 + i))
        .collect();
    changes.extend((0..50).map(|i| Restored::Remove {
        key: format!("k{:04}", i * 7 + 1),
    }));
    changes.push(Restored::Remove {
        key: "never-there".into(),
    });
    changes.push(put("fresh", 2000));
    changes.push(put("fresh", 2001));
    store.restore_documents(2001, changes).expect("changes");
    assert_eq!(kept(&store, 2001), walked(&store, 2001));
    assert_eq!(store.count(2001), 500 - 50 + 1);
    let digest = kept(&store, 2001);

    // Reopened: the same digest.
    drop(store);
    let store = DocStore::open(&path).expect("reopen");
    assert_eq!(kept(&store, 2001), digest);

    // A restore cut short between ingesting its documents and persisting their digest leaves
    // the unsure file naming the collection: the next open forgets the digest (and the file).
    std::fs::write(path.join("DIGESTS-UNSURE"), "2001\n").expect("unsure file");
    drop(store);
    let store = DocStore::open(&path).expect("reopen");
    assert_eq!(store.digest(2001), None);
    assert!(!path.join("DIGESTS-UNSURE").exists());
    drop(store);
    let store = DocStore::open(&path).expect("reopen");
    assert_eq!(store.digest(2001), None, "forgotten durably");
    // A sync that found the collection equal to its leader's sets it again.
    assert!(store
        .set_digest(
            2001,
            Digest {
                xor: digest,
                max_rev: 5000
            }
        )
        .expect("set"));
    assert_eq!(kept(&store, 2001), walked(&store, 2001));
    store
        .restore_documents(2001, vec![put("k0002", 6000)])
        .expect("one more");
    assert_eq!(kept(&store, 2001), walked(&store, 2001));
    assert_eq!(store.digest(2001).expect("digest").max_rev, 6000);
}
