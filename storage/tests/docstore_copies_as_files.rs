//! Claim: a snapshot of a store that keeps its documents in the WAL can be copied as files (its
//! value files, its sealed WAL segments not yet collected, and the written part of the open
//! segment, cut at the snapshot's tick) plus its key index, and a second store that installs the
//! files as value files and ingests the keys reads back exactly the snapshot's documents with
//! their revisions, also after a reopen. A copy interrupted half-way continues from what was
//! checked; a damaged byte is refused with where it is, before anything of its block is written.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::{
    apply_all, collect_all, collection_definition, documents_wal_options as wal_options, record,
};
use tickship_storage::docstore::{
    physical_id, DocStore, IncomingFile, PhysicalFile, Restored, StoreOptions, PHYSICAL_ID_BASE,
};
use tickship_storage::wal::{Record, RecordType};
use tickship_storage::{Tick, Wal};

fn open_store(dir: &Path, wal: &Arc<Wal>) -> Arc<DocStore> {
    let options = StoreOptions {
        documents_in_wal: true,
        ..StoreOptions::default()
    };
    let store = DocStore::open_with(dir, &options).expect("store");
    store.attach_wal(wal.clone());
    Arc::new(store)
}

/// Puts version `version` of documents `k{i}` for `keys`, 250 to a block.
fn put(wal: &Wal, keys: impl IntoIterator<Item = u64>, version: u32, size: usize) {
    let docs: Vec<(String, Vec<u8>)> = keys
        .into_iter()
        .map(|i| (format!("k{i}"), common::document(version, i, size)))
        .collect();
    for chunk in docs.chunks(250) {
        let records: Vec<Record<'_>> = chunk
            .iter()
            .map(|(key, doc)| record(RecordType::DocumentPut, "1001", key, doc))
            .collect();
        wal.append(&records).expect("put");
    }
}

/// Every document of collection 1001 with its revision, by scan and by get.
fn contents(store: &DocStore) -> BTreeMap<String, (u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    store
        .scan(1001, |key, document| {
            out.insert(key.to_owned(), (document.rev.get(), document.json));
            true
        })
        .expect("scan");
    for (key, (rev, json)) in &out {
        let document = store.get(1001, key).expect("get").expect("present");
        assert_eq!(
            (document.rev.get(), &document.json),
            (*rev, json),
            "get {key}"
        );
    }
    assert_eq!(store.count(1001), out.len() as u64);
    out
}

/// Copies `file` into `path` in pieces of `piece` bytes; with `interrupt`, drops the copy
/// half-way and continues it from the file on disk.
fn copy(file: &PhysicalFile, path: &Path, piece: usize, interrupt: bool) {
    let mut incoming = IncomingFile::open(path, file.id, file.ticks.first).expect("incoming");
    let mut offset = incoming.next_offset();
    while offset < file.data_end {
        if interrupt && offset > file.data_end / 2 {
            incoming.flush().expect("flush");
            drop(incoming);
            incoming = IncomingFile::open(path, file.id, file.ticks.first).expect("resume");
            let resumed = incoming.next_offset();
            assert!(
                resumed <= offset && resumed > 64,
                "resumed at {resumed} of {offset}"
            );
            offset = resumed;
            return finish_copy(file, incoming, offset, piece);
        }
        let bytes = file.read(offset, piece).expect("read");
        incoming.push(&bytes).expect("push");
        offset += bytes.len() as u64;
    }
    incoming.finish(file.ticks, file.data_end).expect("finish");
}

fn finish_copy(file: &PhysicalFile, mut incoming: IncomingFile, mut offset: u64, piece: usize) {
    while offset < file.data_end {
        let bytes = file.read(offset, piece).expect("read");
        incoming.push(&bytes).expect("push");
        offset += bytes.len() as u64;
    }
    incoming.finish(file.ticks, file.data_end).expect("finish");
}

#[test]
fn a_snapshot_copied_as_files_reads_back_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let leader_wal = Arc::new(Wal::open(dir.path().join("wal"), wal_options()).expect("wal"));
    let users = collection_definition(1001, "users");
    leader_wal
        .append(&[record(RecordType::CollectionCreate, "1001", "", &users)])
        .expect("create");
    put(&leader_wal, 0..3000, 1, 1000);
    put(&leader_wal, (0..3000).step_by(2), 2, 700);
    let leader = open_store(&dir.path().join("store"), &leader_wal);
    apply_all(&leader_wal, &leader);
    collect_all(&leader, &leader_wal);
    assert!(leader.value_files().expect("value files").0 >= 1);
    // Documents in the open segment too, then the snapshot; writes after it are not copied.
    put(&leader_wal, 3000..3300, 3, 900);
    apply_all(&leader_wal, &leader);
    let snapshot = leader.snapshot().expect("snapshot");
    let expected = contents(&leader);
    put(&leader_wal, (0..3300).step_by(3), 4, 800);
    apply_all(&leader_wal, &leader);

    let files = snapshot.physical_files().expect("list").expect("copyable");
    assert!(files.iter().any(|f| f.value_file), "value files listed");
    assert!(files.iter().any(|f| !f.value_file), "WAL segments listed");
    for pair in files.windows(2) {
        assert!(
            pair[0].ticks.last < pair[1].ticks.first,
            "in tick order, apart"
        );
    }
    let last = files.last().expect("a file");
    assert_eq!(
        last.ticks.last,
        snapshot.tick(),
        "cut at the snapshot's tick"
    );

    // The follower: an empty store and an empty log.
    let follower_wal =
        Arc::new(Wal::open(dir.path().join("follower-wal"), wal_options()).expect("follower wal"));
    let follower = open_store(&dir.path().join("follower-store"), &follower_wal);
    assert!(follower.takes_physical_files());
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    for (i, file) in files.iter().enumerate() {
        let path = staging.join(format!("{i}.part"));
        // Odd pieces split headers and blocks; one file is interrupted half-way.
        copy(file, &path, 77_777 + i * 1_000, i == 1);
        follower
            .install_physical_file(&path, file.ticks.first)
            .expect("install");
    }
    let installed = follower.physical_value_files();
    assert_eq!(installed.len(), files.len());
    assert!(installed.iter().all(|(id, _)| id.get() >= PHYSICAL_ID_BASE));
    let info = snapshot
        .catalog()
        .collection_by_id(1001)
        .expect("users")
        .as_ref()
        .clone();
    follower.restore_collection(info, true).expect("collection");
    let mut items = Vec::new();
    snapshot
        .raw_values(1001, None, |key, value| {
            items.push(Restored::Put {
                key: key.to_owned(),
                rev: Tick::new(u64::from_le_bytes(value[..8].try_into().expect("8 bytes"))),
                json: value[8..].to_vec(),
            });
            true
        })
        .expect("keys");
    assert_eq!(items.len(), expected.len());
    follower.restore_documents(1001, items).expect("ingest");
    assert_eq!(contents(&follower), expected);

    // Reopened, the installed files are found again.
    drop(follower);
    let follower = open_store(&dir.path().join("follower-store"), &follower_wal);
    assert_eq!(contents(&follower), expected);
    assert_eq!(follower.physical_value_files().len(), files.len());
    // An installed file can be taken out again (a physical sync started over).
    let (id, _) = installed[0];
    follower.remove_physical_file(id).expect("remove");
    assert_eq!(follower.physical_value_files().len(), files.len() - 1);
    assert!(follower
        .remove_physical_file(tickship_storage::SegmentId::new(3))
        .is_err());
}

#[test]
fn a_damaged_byte_is_refused_where_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Arc::new(Wal::open(dir.path().join("wal"), wal_options()).expect("wal"));
    let users = collection_definition(1001, "users");
    wal.append(&[record(RecordType::CollectionCreate, "1001", "", &users)])
        .expect("create");
    put(&wal, 0..500, 1, 1000);
    let store = open_store(&dir.path().join("store"), &wal);
    apply_all(&wal, &store);
    let snapshot = store.snapshot().expect("snapshot");
    let files = snapshot.physical_files().expect("list").expect("copyable");
    let file = &files[0];
    let mut bytes = file.read(0, file.data_end as usize).expect("read");
    // A byte inside the second block's payload.
    let first = 64; // the first block starts after the segment header
    let first_len = {
        let header = tickship_storage::wal::block::BlockHeader::decode(&bytes[first..])
            .expect("header")
            .expect("a block");
        header.segment_bytes()
    };
    let target = first + first_len + 100;
    bytes[target] ^= 0x40;
    let path = dir.path().join("copy.part");
    let mut incoming = IncomingFile::open(&path, file.id, file.ticks.first).expect("incoming");
    let error = incoming.push(&bytes).expect_err("damage refused");
    let text = error.to_string();
    assert!(text.contains("checksum"), "{text}");
    assert!(
        text.contains(&(first + first_len).to_string()),
        "names the block's offset: {text}"
    );
    drop(incoming);
    // Only the first block reached the disk, after the header this server writes.
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        (64 + first_len) as u64
    );
    // A copy under the wrong name (another leader file's tick) is refused at its header.
    let path = dir.path().join("other.part");
    let mut incoming = IncomingFile::open(&path, file.id, Tick::new(file.ticks.first.get() + 1))
        .expect("incoming");
    assert!(incoming.push(&bytes[..64]).is_err());
    assert_eq!(physical_id(Tick::new(5)).get(), PHYSICAL_ID_BASE | 5);
}
