//! Helpers shared by the storage crate tests: options per engine, record payloads, reading a
//! whole WAL back.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use tickship_storage::wal::{IoEngine, Record, RecordType, SyncPolicy};
use tickship_storage::{Error, Tick, Wal, WalOptions};

/// Small segments (so tests rotate often), no background retention, default sync.
pub fn options(engine: IoEngine) -> WalOptions {
    WalOptions {
        segment_bytes: 64 << 10,
        io_engine: engine,
        retention_interval: None,
        write_buffer_bytes: 16 << 10,
        ..WalOptions::default()
    }
}

/// The engines this machine can run: the portable one always, io_uring unless the kernel
/// refuses it (then a message says the io_uring half was skipped).
pub fn engines() -> Vec<IoEngine> {
    let dir = tempfile::tempdir().expect("tempdir");
    match Wal::open(dir.path(), options(IoEngine::Uring)) {
        Ok(wal) => {
            drop(wal);
            vec![IoEngine::Sync, IoEngine::Uring]
        }
        Err(Error::Config(reason)) => {
            eprintln!("skipping the io_uring engine here: {reason}");
            vec![IoEngine::Sync]
        }
        Err(e) => panic!("opening a WAL with io_uring failed unexpectedly: {e}"),
    }
}

/// A ~`size`-byte JSON-like document that names its writer and sequence number, with words
/// drawn by a seeded PRNG so it compresses about as well as real JSON (lz4 ratio ~2).
pub fn document(writer: u32, sequence: u64, size: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "alpha", "berlin", "cobalt", "delta", "ember", "fjord", "garnet", "harbor", "indigo",
        "juniper", "kepler", "lumen", "meadow", "nimbus", "orchid", "quartz",
    ];
    let mut doc =
        format!(r#"{{"_key":"w{writer}-{sequence}","writer":{writer},"seq":{sequence},"text":""#)
            .into_bytes();
    let mut state = (u64::from(writer) << 32 ^ sequence).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while doc.len() + 12 < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        doc.extend_from_slice(WORDS[(state % 16) as usize].as_bytes());
        doc.extend_from_slice(format!(" {} ", state % 1000).as_bytes());
    }
    doc.extend_from_slice(b"\"}");
    doc
}

/// `len` incompressible bytes from a xorshift generator at `state`, which it advances.
pub fn noise(state: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state as u8
        })
        .collect()
}

/// Appends `count` single-record blocks of `size`-byte documents; returns their ticks.
pub fn append_documents(wal: &Wal, writer: u32, count: u64, size: usize) -> Vec<Tick> {
    (0..count)
        .map(|sequence| {
            let doc = document(writer, sequence, size);
            let key = format!("w{writer}-{sequence}");
            let ticks = wal
                .append(&[Record::put("_system", "docs", &key, &doc)])
                .expect("append");
            assert_eq!(ticks.count(), 1);
            ticks.first
        })
        .collect()
}

/// One decoded record, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    pub tick: Tick,
    pub kind: RecordType,
    pub key: String,
    pub data: Vec<u8>,
}

/// Every record after `after`, read through a reader, in order.
pub fn read_all(wal: &Wal, after: Tick) -> Vec<Owned> {
    let mut reader = wal.reader_after(after).expect("reader");
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    while let Some(block) = reader.next_block().expect("next block") {
        for record in block.records(&mut scratch).expect("records") {
            let (tick, record) = record.expect("record");
            if tick > after {
                out.push(Owned {
                    tick,
                    kind: record.kind,
                    key: record.key.to_string(),
                    data: record.data.to_vec(),
                });
            }
        }
    }
    out
}

pub fn wait_short() -> Duration {
    Duration::from_secs(10)
}

/// Options for a WAL that never syncs, for tests that only exercise layout.
pub fn unsynced(engine: IoEngine) -> WalOptions {
    WalOptions {
        sync: SyncPolicy::Never,
        ..options(engine)
    }
}

/// The segment files of `dir`, sorted by name.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

/// Offsets and lengths (header + payload) of the blocks in the segment file `path`.
pub fn block_layout(path: &Path) -> Vec<(usize, usize)> {
    let bytes = std::fs::read(path).expect("read segment");
    let mut offset = tickship_storage::wal::segment::SEGMENT_HEADER_BYTES;
    let mut blocks = Vec::new();
    while let Ok(Some(header)) = tickship_storage::wal::BlockHeader::decode(&bytes[offset..]) {
        if header.is_seal() {
            break;
        }
        blocks.push((offset, header.block_bytes()));
        offset += header.segment_bytes();
    }
    blocks
}

/// Copies the regular files of `from` into the empty directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
        }
    }
}

/// Every block after `after`, as a reader returns them.
pub fn blocks_after(wal: &Wal, after: Tick) -> Vec<tickship_storage::wal::Block> {
    let mut reader = wal.reader_after(after).expect("reader");
    let mut blocks = Vec::new();
    while let Some(block) = reader.next_block().expect("read") {
        blocks.push(block);
    }
    blocks
}

/// The definition a `CollectionCreate` record carries, for collection `id` named `name` in
/// `_system`.
pub fn collection_definition(id: u64, name: &str) -> Vec<u8> {
    use tickship_storage::docstore::{CollectionInfo, KeyOptions};
    serde_json::to_vec(&CollectionInfo {
        id,
        name: name.into(),
        database: "_system".into(),
        kind: 2,
        wait_for_sync: false,
        key_options: KeyOptions::default(),
        is_system: false,
    })
    .expect("json")
}

/// A record of `_system` outside any transaction.
pub fn record<'a>(
    kind: tickship_storage::wal::RecordType,
    collection: &'a str,
    key: &'a str,
    data: &'a [u8],
) -> tickship_storage::wal::Record<'a> {
    tickship_storage::wal::Record {
        kind,
        tid: 0,
        db: "_system",
        collection,
        key,
        data,
    }
}

/// KiB of the mappings of files in `dir` resident in this process (`/proc/self/smaps`).
pub fn resident_kib_of_files_in(dir: &Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let dir = dir.to_str().expect("utf-8 temporary path");
    let mut inside = false;
    let mut total = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: address range, permissions, offset, device, inode, path.
            inside = line
                .split_whitespace()
                .nth(5)
                .is_some_and(|p| p.starts_with(dir));
        } else if inside && first == "Rss:" {
            total += line
                .split_whitespace()
                .nth(1)
                .and_then(|kib| kib.parse::<u64>().ok())
                .expect("Rss value");
        }
    }
    total
}

/// A WAL for a store keeping its documents in it: small segments, 64 KiB frames, and retention
/// that deletes whatever the store does not need at once.
pub fn documents_wal_options() -> WalOptions {
    WalOptions {
        segment_bytes: 256 << 10,
        frame_bytes: tickship_storage::wal::block::FRAME_RAW_BYTES,
        retention: tickship_storage::wal::RetentionPolicy {
            historic_count: 0,
            file_timeout: Duration::ZERO,
            file_timeout_initial: Duration::ZERO,
            archive_bytes_max: 0,
        },
        ..options(IoEngine::Sync)
    }
}

/// Applies everything `wal` holds to `store` with a store writer, then stops it.
pub fn apply_all(
    wal: &std::sync::Arc<Wal>,
    store: &std::sync::Arc<tickship_storage::docstore::DocStore>,
) {
    let writer = tickship_storage::docstore::StoreWriter::start(
        wal.clone(),
        store.clone(),
        tickship_storage::docstore::StoreWriterOptions::default(),
    )
    .expect("store writer");
    writer
        .wait_applied(wal.last_tick(), Duration::from_secs(30))
        .expect("applied");
    writer.stop();
}

/// What the store writer does between groups: collect, persist, let retention go on; until a
/// round over every value file finds nothing to do. Returns how many segments were collected.
pub fn collect_all(store: &tickship_storage::docstore::DocStore, wal: &Wal) -> usize {
    let mut collected = 0;
    let mut idle = 0;
    while idle <= store.value_files().map_or(0, |(files, _)| files) {
        let did = tickship_storage::docstore::collect_wal_segment(
            wal,
            store,
            std::time::SystemTime::now(),
        )
        .expect("collect");
        store.flush().expect("flush");
        let persisted = store.persisted_tick().expect("persisted");
        store.settle_collection(persisted).expect("settle");
        wal.set_store_tick(persisted.min(store.collected_through()));
        wal.run_retention(std::time::SystemTime::now())
            .expect("retention");
        if did || store.collection_pending() {
            idle = 0;
        } else {
            idle += 1;
        }
        collected += usize::from(did);
    }
    collected
}
