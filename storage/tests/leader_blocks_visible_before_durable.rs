//! Claim: on a follower, blocks from the leader (already durable there) are visible to readers
//! as soon as they are written, before this WAL's fdatasync, while `durable_tick` keeps saying
//! what a crash would keep; the node's own appends stay invisible until durable; and the applied
//! tick a store records never passes the durable tick, so a restart replays from a tick the WAL
//! still has.
//!
//! Needs the `failpoints` feature: the fdatasync is held with a `pause` fail point.
#![cfg(feature = "failpoints")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{append_documents, blocks_after, collection_definition, options, record};
use fail::FailScenario;
use tickship_storage::docstore::{ApplyContext, DocStore};
use tickship_storage::wal::{self, Block, IoEngine, Record, RecordType};
use tickship_storage::{Tick, Wal};

/// A leader's three blocks, and a follower WAL that has stored the first one durably. The first
/// block opens the segment (taking the prepared spare, whose preparation syncs too), so it is
/// stored before a test holds any sync. The directories live as long as the returned guard.
fn follower_with_a_durable_first_block() -> ([tempfile::TempDir; 2], Vec<Block>, Wal) {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
    let leader = Wal::open(leader_dir.path(), options(IoEngine::Sync)).expect("leader");
    append_documents(&leader, 1, 3, 200);
    let blocks = blocks_after(&leader, Tick::ZERO);
    let follower = Wal::open(follower_dir.path(), options(IoEngine::Sync)).expect("follower");
    follower
        .submit_block(blocks[0].clone())
        .expect("submit")
        .wait()
        .expect("durable");
    ([leader_dir, follower_dir], blocks, follower)
}

#[test]
fn leader_blocks_are_visible_before_the_fdatasync_own_appends_after() {
    let (_dirs, blocks, follower) = follower_with_a_durable_first_block();
    let mut reader = follower
        .reader_after(blocks[0].ticks().last)
        .expect("reader");

    // Declared after the WALs: on a failed assertion it is dropped (releasing the held syncs)
    // before they are, so their threads can be joined.
    let scenario = FailScenario::setup();
    fail::cfg("wal::segment::sync::err", "pause").expect("fail point");
    let pending = follower.submit_block(blocks[1].clone()).expect("submit");
    let seen = reader
        .wait_next(Duration::from_secs(30))
        .expect("read")
        .expect("the leader's block is visible while its fdatasync is held");
    assert_eq!(seen.bytes(), blocks[1].bytes());
    assert_eq!(follower.last_tick(), blocks[1].ticks().last);
    assert!(
        follower.durable_tick() < blocks[1].ticks().last,
        "not durable yet"
    );

    // The node's own append is written too, but readers wait for its fdatasync.
    let own = follower
        .submit(wal::block::prepare(&[Record::put("_system", "c", "own", b"{}")]).expect("prepare"))
        .expect("submit own");
    assert!(
        reader
            .wait_next(Duration::from_millis(300))
            .expect("read")
            .is_none(),
        "an own append is not visible before it is durable"
    );

    fail::remove("wal::segment::sync::err");
    let ticks = pending.wait().expect("durable");
    assert_eq!(ticks, blocks[1].ticks());
    let own = own.wait().expect("own durable");
    let next = reader
        .wait_next(Duration::from_secs(30))
        .expect("read")
        .expect("the own append is visible once durable");
    assert_eq!(next.ticks(), own);
    assert_eq!(follower.durable_tick(), own.last);
    scenario.teardown();
}

/// A WAL under `dir` creating collection 7, then writing k0..k19 into it with records of
/// `kind`, one block each.
fn twenty_documents(dir: &Path, kind: RecordType) -> Wal {
    let wal = Wal::open(dir.join("wal"), options(IoEngine::Sync)).expect("wal");
    let definition = collection_definition(7, "c");
    wal.append(&[record(RecordType::CollectionCreate, "7", "", &definition)])
        .expect("create");
    for i in 0..20 {
        let doc = format!(r#"{{"_key":"k{i}","v":{i}}}"#);
        wal.append(&[record(kind, "7", &format!("k{i}"), doc.as_bytes())])
            .expect("document");
    }
    wal
}

/// `twenty_documents` applied whole to a new store under `dir` while only the ticks up to the
/// middle block count as durable: the WAL, its blocks, that middle tick and the store (not yet
/// flushed).
fn applied_past_durable(dir: &Path, kind: RecordType) -> (Wal, Vec<Block>, Tick, DocStore) {
    let wal = twenty_documents(dir, kind);
    let all = blocks_after(&wal, Tick::ZERO);
    let middle = all[10].ticks().last;
    let store = DocStore::open(dir.join("store")).expect("store");
    store
        .apply_with(&all, &mut ApplyContext::serial(), middle)
        .expect("apply");
    (wal, all, middle, store)
}

#[test]
fn the_recorded_applied_tick_stays_at_the_durable_tick() {
    // No fail point here, but holding a scenario keeps the other test's from pausing this one.
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, all, middle, store) = applied_past_durable(dir.path(), RecordType::DocumentPut);
    assert_eq!(store.applied_tick(), wal.last_tick(), "all visible");
    store.flush().expect("flush");
    assert_eq!(store.persisted_tick().expect("persisted"), middle);
    drop(store);
    // After a restart the store says `middle` (it holds more: replaying that again is harmless).
    let store = DocStore::open(dir.path().join("store")).expect("reopen");
    assert_eq!(store.applied_tick(), middle);
    assert_eq!(store.count(7), 20);
    store.apply(&all).expect("replay");
    assert_eq!(store.applied_tick(), wal.last_tick());
    assert_eq!(store.count(7), 20);
    for i in 0..20 {
        let stored = store
            .get(7, &format!("k{i}"))
            .expect("get")
            .expect("present");
        assert_eq!(
            stored.json,
            format!(r#"{{"_key":"k{i}","v":{i}}}"#).into_bytes()
        );
    }
    store.record_applied(wal.durable_tick()).expect("record");
    store.flush().expect("flush");
    assert_eq!(store.persisted_tick().expect("persisted"), wal.last_tick());
}

// Goal: a store keeping its documents in the WAL applies a leader's block before it is durable
// here (visible at once), but writes nothing more until the ticks it applied are durable: RocksDB
// may persist a memtable at any write, and a persisted value must not name a tick that a crash
// could take out of the WAL. `wait_durable` says when.
#[test]
fn a_store_keeping_documents_in_the_wal_persists_only_durable_ticks() {
    use std::sync::Arc;
    use tickship_storage::docstore::{StoreOptions, StoreWriter, StoreWriterOptions};

    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
    let leader = Wal::open(leader_dir.path(), options(IoEngine::Sync)).expect("leader");
    let definition = collection_definition(7, "c");
    leader
        .append(&[record(RecordType::CollectionCreate, "7", "", &definition)])
        .expect("create");
    for i in 0..2 {
        let doc = format!(r#"{{"_key":"k{i}"}}"#);
        leader
            .append(&[Record::put(
                "_system",
                "7",
                &format!("k{i}"),
                doc.as_bytes(),
            )])
            .expect("put");
    }
    let blocks = blocks_after(&leader, Tick::ZERO);
    let follower =
        Arc::new(Wal::open(follower_dir.path().join("wal"), options(IoEngine::Sync)).expect("wal"));
    follower
        .submit_block(blocks[0].clone())
        .expect("submit")
        .wait()
        .expect("durable");
    let store = Arc::new(
        DocStore::open_with(
            follower_dir.path().join("store"),
            &StoreOptions {
                documents_in_wal: true,
                ..StoreOptions::default()
            },
        )
        .expect("store"),
    );
    store.attach_wal(follower.clone());
    let writer = StoreWriter::start(
        follower.clone(),
        store.clone(),
        StoreWriterOptions::default(),
    )
    .expect("store writer");
    writer
        .wait_applied(blocks[0].ticks().last, Duration::from_secs(30))
        .expect("applied");

    let scenario = FailScenario::setup();
    fail::cfg("wal::segment::sync::err", "pause").expect("fail point");
    let first = follower.submit_block(blocks[1].clone()).expect("submit");
    writer
        .wait_applied(blocks[1].ticks().last, Duration::from_secs(30))
        .expect("a leader's block is applied before it is durable here");
    assert!(!follower.wait_durable(blocks[1].ticks().last, Duration::from_millis(50)));
    let second = follower.submit_block(blocks[2].clone()).expect("submit");
    assert!(
        writer
            .wait_applied(blocks[2].ticks().last, Duration::from_millis(300))
            .is_err(),
        "nothing more is written while applied ticks are not durable"
    );
    assert_eq!(store.applied_tick(), blocks[1].ticks().last);

    fail::remove("wal::segment::sync::err");
    first.wait().expect("durable");
    second.wait().expect("durable");
    assert!(follower.wait_durable(blocks[2].ticks().last, Duration::from_secs(30)));
    writer
        .wait_applied(blocks[2].ticks().last, Duration::from_secs(30))
        .expect("applied once durable");
    assert_eq!(
        store.get(7, "k1").expect("get").map(|d| d.json),
        Some(br#"{"_key":"k1"}"#.to_vec())
    );
    writer.stop();
    scenario.teardown();
}

// Goal: a replay counts each document once even when the store persisted documents past the
// tick it recorded (a follower's group applied before it was durable here, then flushed): an
// insert, which store writers do not look up, replayed over a persisted copy of itself.
#[test]
fn a_replay_over_persisted_inserts_counts_them_once() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, all, middle, store) = applied_past_durable(dir.path(), RecordType::DocumentInsert);
    assert_eq!(store.count(7), 20);
    store.flush().expect("flush");
    drop(store);
    let store = DocStore::open(dir.path().join("store")).expect("reopen");
    assert_eq!(store.applied_tick(), middle);
    assert_eq!(store.count(7), 20);
    let rest: Vec<_> = all
        .iter()
        .filter(|b| b.ticks().last > middle)
        .cloned()
        .collect();
    store
        .apply_with(&rest, &mut ApplyContext::serial(), wal.last_tick())
        .expect("replay");
    assert_eq!(store.count(7), 20, "replayed inserts counted again");
}

/// Claim: a follower's block is `taken` (copied by the writer, no longer held in the
/// appender's memory) as soon as it is written, while its fdatasync is still held; what a
/// follower keeps queued is bounded by that, not by how slow its disk syncs.
#[test]
fn a_block_is_taken_once_written_before_it_is_durable() {
    let (_dirs, blocks, follower) = follower_with_a_durable_first_block();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");

    let scenario = FailScenario::setup();
    fail::cfg("wal::segment::sync::err", "pause").expect("fail point");
    let pending = follower.submit_block(blocks[1].clone()).expect("submit");
    let taken = pending.taken();
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), taken).await })
        .expect("taken while its fdatasync is held");
    assert!(
        follower.durable_tick() < blocks[1].ticks().last,
        "taken, not durable"
    );
    fail::remove("wal::segment::sync::err");
    assert_eq!(pending.wait().expect("durable"), blocks[1].ticks());
    scenario.teardown();
}
