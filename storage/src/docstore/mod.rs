//! The document store: databases, collections and documents on RocksDB, written only by applying
//! WAL blocks in tick order.
//!
//! The WAL is the recovery log: RocksDB's own WAL is off, and every applied group of blocks is
//! one RocksDB write batch holding its data and the store's applied tick together (atomic flush
//! across the column families keeps them together on disk). So whatever RocksDB persisted is the
//! state after some tick T, and on restart the server replays its WAL from T. Applying a block
//! twice is harmless: puts and deletes by key are idempotent, and counts are derived from
//! whether a key existed before each change.
//!
//! Layout:
//! - column family `docs`: key `collection_id: u64 BE | _key bytes`, value `rev: u64 LE | JSON`,
//!   where the JSON is the document with `_key` and `_id` but without `_rev` (the revision is the
//!   tick that wrote it and is spliced in when the document is read);
//! - column family `meta`: `applied_tick` (u64 LE), `db/{name}` (database JSON),
//!   `col/{id}` (collection JSON), `count/{id}` (u64 LE), `out/{id}` (JSON of a collection that
//!   exists on the leader but that a follower's collection filter left out).
//!
//! Only one thread applies (the store writer). Readers read RocksDB directly and the catalog
//! through an `Arc` swapped after each applied change of databases or collections.

mod apply;
mod filter;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Env,
    FlushOptions, Options, ReadOptions, ReadTier, WriteBufferManager, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

pub use self::apply::{ApplyContext, ApplyStats};
pub use self::filter::{CollectionFilter, Restrict};
pub use self::writer::{collect_wal_segment, StoreWriter, StoreWriterOptions, StoreWriterTotals};
use crate::error::{Error, Result};
use crate::tick::Tick;
use crate::wal::values::ValueFiles;
use crate::wal::{Block, Wal};

const CF_DOCS: &str = "docs";
const CF_META: &str = "meta";
const APPLIED_TICK: &[u8] = b"applied_tick";
/// The last tick of the last batch applied, written with it: data a flush may have persisted
/// past `APPLIED_TICK` (a follower applies blocks before they are durable).
const APPLIED_MAX: &[u8] = b"applied_max";
/// Present once the store keeps documents in the WAL (`StoreOptions::documents_in_wal`): from
/// then on it always does, whatever later options say, since its values name WAL ticks.
const DOCUMENTS_IN_WAL: &[u8] = b"documents_in_wal";
/// The last tick of the newest WAL segment whose live documents were moved to the value files
/// (`DocStore::collected_through`).
const COLLECTED_THROUGH: &[u8] = b"values_collected_through";
/// `_system` always exists, with this id.
pub const SYSTEM_DATABASE: &str = "_system";

/// A database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseInfo {
    #[serde(with = "u64_string")]
    pub id: u64,
    pub name: String,
}

/// How a collection generates keys and whether users may choose them (ArangoDB's `keyOptions`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyOptions {
    #[serde(rename = "type", default = "traditional")]
    pub kind: String,
    #[serde(rename = "allowUserKeys", default = "yes")]
    pub allow_user_keys: bool,
}

fn traditional() -> String {
    "traditional".into()
}

fn yes() -> bool {
    true
}

impl Default for KeyOptions {
    fn default() -> KeyOptions {
        KeyOptions {
            kind: traditional(),
            allow_user_keys: true,
        }
    }
}

/// A collection, as logged in its create record and kept in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionInfo {
    #[serde(with = "u64_string")]
    pub id: u64,
    pub name: String,
    pub database: String,
    /// 2 = document collection, 3 = edge collection.
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(rename = "waitForSync", default)]
    pub wait_for_sync: bool,
    #[serde(rename = "keyOptions", default)]
    pub key_options: KeyOptions,
    #[serde(rename = "isSystem", default)]
    pub is_system: bool,
}

impl CollectionInfo {
    /// ArangoDB's `globallyUniqueId`, which the WAL tail calls `cuid`.
    pub fn globally_unique_id(&self) -> String {
        format!("c{}", self.id)
    }
}

/// Databases and collections, by name and by id.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    databases: BTreeMap<String, DatabaseInfo>,
    collections: HashMap<u64, Arc<CollectionInfo>>,
    by_name: HashMap<(String, String), u64>,
    /// Collections of the leader that a collection filter left out: not visible here, but their
    /// records are known to be excluded rather than addressed to a collection that is gone.
    left_out: HashMap<u64, CollectionInfo>,
}

impl Catalog {
    pub fn database(&self, name: &str) -> Option<&DatabaseInfo> {
        self.databases.get(name)
    }

    pub fn databases(&self) -> impl Iterator<Item = &DatabaseInfo> {
        self.databases.values()
    }

    pub fn collection(&self, database: &str, name: &str) -> Option<Arc<CollectionInfo>> {
        let id = self
            .by_name
            .get(&(database.to_string(), name.to_string()))?;
        self.collections.get(id).cloned()
    }

    pub fn collection_by_id(&self, id: u64) -> Option<Arc<CollectionInfo>> {
        self.collections.get(&id).cloned()
    }

    /// The collections of `database`, ordered by name.
    pub fn collections(&self, database: &str) -> Vec<Arc<CollectionInfo>> {
        let mut list: Vec<_> = self
            .collections
            .values()
            .filter(|c| c.database == database)
            .cloned()
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The largest collection or database id in use.
    pub fn max_id(&self) -> u64 {
        let collections = self.collections.keys().copied().max().unwrap_or(0);
        let databases = self.databases.values().map(|d| d.id).max().unwrap_or(0);
        collections.max(databases)
    }

    fn insert_collection(&mut self, info: CollectionInfo) {
        if let Some(old) = self.collections.get(&info.id) {
            self.by_name
                .remove(&(old.database.clone(), old.name.clone()));
        }
        self.by_name
            .insert((info.database.clone(), info.name.clone()), info.id);
        self.collections.insert(info.id, Arc::new(info));
    }

    fn remove_collection(&mut self, id: u64) -> Option<Arc<CollectionInfo>> {
        let info = self.collections.remove(&id)?;
        self.by_name
            .remove(&(info.database.clone(), info.name.clone()));
        Some(info)
    }
}

/// A stored document: the tick that wrote it and its JSON without `_rev`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDocument {
    pub rev: Tick,
    pub json: Vec<u8>,
}

impl StoredDocument {
    /// The document as clients of collection `collection` (its current name) see it: with
    /// `_rev` (the revision as a decimal string) and an `_id` naming `collection`.
    pub fn to_json_in(&self, collection: &str) -> Vec<u8> {
        with_rev(&self.json_in(collection), self.rev)
    }

    /// The stored JSON with its `_id` naming `collection`. A document keeps the `_id` it was
    /// written with, so after a rename the name in it is the old one; ArangoDB builds `_id` from
    /// the current name.
    pub fn json_in(&self, collection: &str) -> std::borrow::Cow<'_, [u8]> {
        let Some(span) = id_value_span(&self.json) else {
            return std::borrow::Cow::Borrowed(&self.json);
        };
        let id = &self.json[span.clone()];
        let Some(slash) = id.iter().position(|&b| b == b'/') else {
            return std::borrow::Cow::Borrowed(&self.json);
        };
        if &id[..slash] == collection.as_bytes() {
            return std::borrow::Cow::Borrowed(&self.json);
        }
        let mut out = Vec::with_capacity(self.json.len() + collection.len());
        out.extend_from_slice(&self.json[..span.start]);
        out.extend_from_slice(collection.as_bytes());
        out.extend_from_slice(&id[slash..]);
        out.extend_from_slice(&self.json[span.end..]);
        std::borrow::Cow::Owned(out)
    }
}

/// The bytes inside the quotes of the top-level `_id` of a stored document, looked for among its
/// first two attributes: stored documents begin with `_key` and `_id` (in either order), whose
/// values are strings without escapes (the key and name rules allow none).
fn id_value_span(json: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut at = 0;
    let skip_ws = |at: &mut usize| {
        while json.get(*at).is_some_and(u8::is_ascii_whitespace) {
            *at += 1;
        }
    };
    // A string without escapes starting at `at`: the range inside its quotes.
    let string = |at: &mut usize| -> Option<std::ops::Range<usize>> {
        if json.get(*at) != Some(&b'"') {
            return None;
        }
        let start = *at + 1;
        let len = json
            .get(start..)?
            .iter()
            .position(|&b| b == b'"' || b == b'\\')?;
        if json[start + len] != b'"' {
            return None;
        }
        *at = start + len + 1;
        Some(start..start + len)
    };
    skip_ws(&mut at);
    if json.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    for member in 0..2 {
        skip_ws(&mut at);
        if member == 1 {
            if json.get(at) != Some(&b',') {
                return None;
            }
            at += 1;
            skip_ws(&mut at);
        }
        let name = string(&mut at)?;
        skip_ws(&mut at);
        if json.get(at) != Some(&b':') {
            return None;
        }
        at += 1;
        skip_ws(&mut at);
        let value = string(&mut at)?;
        if &json[name] == b"_id" {
            return Some(value);
        }
    }
    None
}

/// Splices `"_rev":"<rev>"` into a JSON object as its first attribute.
pub fn with_rev(json: &[u8], rev: Tick) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 32);
    out.extend_from_slice(b"{\"_rev\":\"");
    out.extend_from_slice(rev.to_string().as_bytes());
    out.push(b'"');
    match json.get(1..) {
        Some(rest) if rest.first().is_some_and(|&b| b != b'}') => {
            out.push(b',');
            out.extend_from_slice(rest);
        }
        _ => out.push(b'}'),
    }
    out
}

/// Key of document `key` of collection `collection` in the `docs` column family.
pub(crate) fn doc_key(collection: u64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&collection.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// Bytes a file written by a flush or a compaction gathers before each write.
const WRITABLE_FILE_BUFFER_BYTES: u64 = 256 << 10;

/// Values from this size on go to blob files; smaller documents stay in the LSM tree.
const MIN_BLOB_SIZE: u64 = 256;

/// Bytes of one memtable of a follower keeping up with its leader (`DocStore::set_tailing`).
pub const TAILING_MEMTABLE_BYTES: usize = 16 << 20;

/// The same for a store keeping its documents in the WAL, whose memtables hold keys and ticks
/// only (~100 bytes a document): 2 MiB hold as many documents of ~1 KB as 32 MiB holding the
/// documents too. 4 MiB against 16 MiB: a follower catching up 1M documents peaked at 55–57 MiB
/// of anonymous memory instead of 58–72, one following at 55k docs/s at 35–36 instead of
/// 43–46 MiB, with the same lag and catch-up time. 2 MiB against 4 MiB (6 runs each,
/// alternating, medians): 10M behind 44 against 46 MiB (full memtables mapped 3.1–3.3 against
/// 7.4–8.2 MiB) in the same time, 10k behind on a store of 10M 41 against 42.5 MiB, following at
/// 56k docs/s 20.5 against 22 MiB for a lag p99 of 6.2 against 4.6 ms (4 runs): flushes twice
/// as often.
pub const TAILING_MEMTABLE_BYTES_KEYS_ONLY: usize = 2 << 20;

/// Memtables of the documents' column family, the one being filled and those waiting for their
/// flush, that a store keeping its documents in the WAL holds while it follows a leader (at most
/// `StoreOptions::write_buffers_max`): writes wait for a flush rather than fill a third one. Far
/// behind, flushes of 2 MiB of keys fell behind applying, and up to four memtables were held
/// (6.6 MiB at the peak of a follower catching up 10M documents, against 2–3 MiB when it is 10k
/// behind). 2 against 4, 3 pairs alternating (`scripts/catch-up 10010000`): exact peak RSS 52 /
/// 52 / 53 MiB in 28.90 / 29.07 / 26.99 s against 55 / 56 / 54 MiB in 28.26 / 28.27 / 27.70 s.
pub const TAILING_WRITE_BUFFERS_KEYS_ONLY: usize = 2;

/// Bytes of all memtables together that a store keeping its documents in the WAL holds while it
/// follows a leader far behind (`DocStore::set_far_behind`; at most
/// `StoreOptions::total_write_buffer_bytes`): its tailing memtable and a quarter more, so that
/// once it is full, writes wait for its flush before the next one grows past its first arena
/// block. Far behind, memtables fill faster than they flush, and a follower held two full ones
/// (2 × 2 MiB) where one 10k behind holds one and part of the next. Budgets of 3 MiB, with room
/// for half a memtable more, made no difference (10M behind: 53 / 51 against 52 / 52 MiB).
pub const FAR_BEHIND_TOTAL_WRITE_BUFFER_BYTES_KEYS_ONLY: usize =
    TAILING_MEMTABLE_BYTES_KEYS_ONLY + TAILING_MEMTABLE_BYTES_KEYS_ONLY / 4;

/// Arena blocks of the `meta` column family's memtables. It holds a few keys rewritten with
/// every write (the applied tick), so RocksDB's block of an eighth of the memtable size, up to
/// 1 MiB, was mostly empty, yet counted whole against the memtables' total (and so against
/// `FAR_BEHIND_TOTAL_WRITE_BUFFER_BYTES_KEYS_ONLY`).
const META_ARENA_BLOCK_BYTES: usize = 64 << 10;

/// The smallest table file, and so level, the document store makes
/// (`StoreOptions::max_bytes_for_level_base`).
pub const MIN_TABLE_FILE_BYTES: u64 = 64 << 10;

/// Blob garbage collection is switched on once this fraction of the live blob files' bytes is
/// garbage (documents replaced or removed), and off again below `BLOB_GC_OFF`. PostgreSQL's
/// autovacuum starts at 20% dead rows too (`autovacuum_vacuum_scale_factor`).
/// How hard RocksDB tries to take the blocks of a table file out of the block cache when
/// compaction makes the file obsolete (its `uncache_aggressiveness`; 300 is what its authors
/// expect to make the default). Every file a flush or compaction writes is opened once to be
/// checked, and its index and filter blocks are loaded into the cache then; without this they
/// stay there after the file is gone until the cache evicts them, so the cache fills with the
/// metadata of dead files at the speed the store is written, not read.
const UNCACHE_AGGRESSIVENESS: &str = "300";

const BLOB_GC_ON: f64 = 0.2;
const BLOB_GC_OFF: f64 = 0.1;

/// How documents in blob files are compressed (`--rocksdb.blob-compression-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobCompression {
    None,
    Lz4,
    Zstd,
}

impl BlobCompression {
    /// The names the flag takes (ArangoDB's).
    pub const NAMES: [&'static str; 3] = ["none", "lz4", "zstd"];

    fn rocksdb(self) -> DBCompressionType {
        match self {
            BlobCompression::None => DBCompressionType::None,
            BlobCompression::Lz4 => DBCompressionType::Lz4,
            BlobCompression::Zstd => DBCompressionType::Zstd,
        }
    }
}

impl std::str::FromStr for BlobCompression {
    type Err = String;

    fn from_str(name: &str) -> std::result::Result<BlobCompression, String> {
        match name {
            "none" => Ok(BlobCompression::None),
            "lz4" => Ok(BlobCompression::Lz4),
            "zstd" => Ok(BlobCompression::Zstd),
            other => Err(format!(
                "unknown compression {other:?}: expected one of {}",
                BlobCompression::NAMES.join(", ")
            )),
        }
    }
}

/// How the store's RocksDB uses memory and keeps documents (ArangoDB's `--rocksdb.*` options).
#[derive(Clone, Debug, PartialEq)]
pub struct StoreOptions {
    /// Bytes of one memtable (`--rocksdb.write-buffer-size`).
    pub write_buffer_bytes: usize,
    /// Memtables per column family, the active one and those waiting to be flushed
    /// (`--rocksdb.max-write-buffer-number`).
    pub write_buffers_max: usize,
    /// Bytes of all memtables together; past it RocksDB flushes, and writes wait for the flush
    /// when it is far past (`--rocksdb.total-write-buffer-size`; 0: no limit but the above).
    pub total_write_buffer_bytes: usize,
    /// Bytes of the block cache (`--rocksdb.block-cache-size`).
    pub block_cache_bytes: usize,
    /// Compression of each document in the blob files (`--rocksdb.blob-compression-type`).
    pub blob_compression: BlobCompression,
    /// Whether compactions reclaim the space of replaced and removed documents
    /// (`--rocksdb.enable-blob-garbage-collection`). They do it while the blob files hold
    /// enough garbage to be worth it (see `DocStore::tune_blob_gc`).
    pub blob_gc: bool,
    /// The oldest fraction of blob files whose live documents compactions move to new files
    /// (`--rocksdb.blob-garbage-collection-age-cutoff`, 0..=1).
    pub blob_gc_age_cutoff: f64,
    /// Level-0 files (one per flush) that start a compaction into the next level
    /// (`--rocksdb.level0-compaction-trigger`). Each such compaction rewrites the keys of the
    /// level below: at RocksDB's 4, compaction was a sixth of a follower's catch-up CPU; at 8 it
    /// is a third of that (1M documents: 0.91 → 0.27 s), and a lookup checks 8 more bloom
    /// filters at most.
    pub level0_compaction_trigger: u32,
    /// Bytes of compressed keys in the first level below level 0, each level below ten times
    /// the one above it (`--rocksdb.max-bytes-for-level-base`). A level-0 compaction rewrites
    /// up to that much. The store's tables hold keys and blob references only, about 10 bytes a
    /// document compressed, so RocksDB's 256 MiB left every key in one level up to ~28M
    /// documents, all of them rewritten by every level-0 compaction: a follower tailing 36k
    /// documents/s spent 12.3–13.8 s of CPU on compaction in 60 s (one compaction of 2M keys
    /// took 1.25–1.74 s), growing with the store. 8 MiB is the level-0 files that start a
    /// compaction (8) times the keys of one 64 MiB memtable (~1 MiB); below that, level 0's size
    /// starts compactions before its file count does (4 MiB: a 1M catch-up compacted 3× as many
    /// keys). At 8 MiB: 5.4–5.7 s in the same 60 s, the largest compaction 0.61–0.65 s, and a
    /// 1M catch-up unchanged.
    pub max_bytes_for_level_base: u64,
    /// Level-0 files past which writes are slowed down (`--rocksdb.level0-slowdown-trigger`).
    pub level0_slowdown_trigger: u32,
    /// Level-0 files past which writes wait for compaction (`--rocksdb.level0-stop-trigger`).
    pub level0_stop_trigger: u32,
    /// Bytes of one memtable while this server follows a leader and keeps up with it
    /// (`--replication.tailing-write-buffer-size`; 0: `write_buffer_bytes` always; `None`:
    /// `TAILING_MEMTABLE_BYTES`, or `TAILING_MEMTABLE_BYTES_KEYS_ONLY` for a store keeping its
    /// documents in the WAL). See `DocStore::set_tailing`.
    pub tailing_write_buffer_bytes: Option<usize>,
    /// Files (SSTs and blob files) kept open at most, the least recently used closed first; -1
    /// keeps every file open (RocksDB's default). A store grows a blob file per flush, so under
    /// the usual soft limit of 1024 descriptors "every file" fails reads at ~60 GB of documents.
    pub max_open_files: i32,
    /// Runs compactions at the lowest CPU priority (nice 19) (`--rocksdb.low-priority-compactions`).
    /// They are the one background work nothing waits for until level 0 reaches
    /// `level0_slowdown_trigger`; on a busy machine they then take what the threads that
    /// receive, log and apply writes leave. Flushes keep their priority: writes do wait for
    /// them once the memtables are full. The priority is the process's: every store opened in
    /// it with this option lowers it, so it is off unless asked for (tickshipd asks by default).
    /// Under a load that keeps every core busy, compactions then run only once level 0 slows
    /// the writes down.
    pub low_priority_compactions: bool,
    /// Keep each document only in the WAL (`--rocksdb.documents-in-wal`): the store maps a key
    /// to the tick of its last write, 8 bytes, and a read takes the document from the WAL
    /// record at that tick (`DocStore::attach_wal`). Documents are then written once instead
    /// of twice (compressed in the WAL, whole in blob files), and memtables hold keys, not
    /// documents. Sticky: once a store has used it, it always does. Until the WAL can move live
    /// documents out of old segments, a WAL holding the store's documents deletes no segment.
    pub documents_in_wal: bool,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            write_buffer_bytes: 64 << 20,
            write_buffers_max: 4,
            total_write_buffer_bytes: 128 << 20,
            block_cache_bytes: 256 << 20,
            blob_compression: BlobCompression::None,
            blob_gc: true,
            blob_gc_age_cutoff: 0.25,
            level0_compaction_trigger: 8,
            max_bytes_for_level_base: 8 << 20,
            level0_slowdown_trigger: 40,
            level0_stop_trigger: 64,
            tailing_write_buffer_bytes: None,
            max_open_files: -1,
            low_priority_compactions: false,
            documents_in_wal: false,
        }
    }
}

/// What a sample of a WAL segment found (`DocStore::prepare_collection`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentSample {
    /// Document puts in the sampled blocks.
    pub puts: usize,
    /// Those whose key still names their tick.
    pub live: usize,
}

impl SegmentSample {
    /// Half or more live: the segment becomes a value file as it is, a second name for the file
    /// and nothing copied; otherwise its live documents are copied out.
    pub fn mostly_live(&self) -> bool {
        self.live * 2 >= self.puts
    }
}

/// A collection of a WAL segment read and written, not yet recorded
/// (`DocStore::prepare_collection`, `DocStore::finish_collection`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreparedCollection {
    pub sample: SegmentSample,
    /// Documents copied into the segment's value file; `None` if it is to become one as it is.
    pub copied: Option<u64>,
}

/// A value file's rewrite written and waiting to be recorded (`DocStore::prepare_rewrite`,
/// `finish_rewrite`).
pub struct PreparedRewrite {
    file: Arc<crate::wal::segment::SealedSegment>,
    /// The rewrite in the `next` directory, or `None` if no record was live.
    next: Option<PathBuf>,
}

/// Memory the store's RocksDB holds, in bytes (ArangoDB's metric names in brackets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreMemory {
    /// Active and immutable memtables, flushed or not but still held
    /// (`rocksdb_size_all_mem_tables`).
    pub memtables: u64,
    /// Block cache in use: data, index and filter blocks (`rocksdb_block_cache_usage`).
    pub block_cache: u64,
    /// The part of it pinned by readers (`rocksdb_block_cache_pinned_usage`).
    pub block_cache_pinned: u64,
    /// Table readers outside the block cache (`rocksdb_estimate_table_readers_mem`).
    pub table_readers: u64,
}

/// Shards of RocksDB's cache of open files for at most `max_open_files` of them (-1: no limit).
/// Each shard keeps at least one file open, so RocksDB's 64 shards would hold up to 64 files
/// under a budget of 32 (measured: "Too many open files" under a limit of 64 descriptors); a
/// shard per 64 files keeps the budget.
fn table_cache_shard_bits(max_open_files: i32) -> i32 {
    if max_open_files < 0 {
        return 6;
    }
    let shards = (max_open_files as u32 / 64).max(1);
    (31 - shards.leading_zeros()).min(6) as i32
}

/// The document store.
pub struct DocStore {
    db: DB,
    cache: Cache,
    /// The memtables' total budget, when there is one, and its configured size
    /// (`StoreOptions::total_write_buffer_bytes`; `total_write_buffer_budget`).
    write_buffer_manager: Option<WriteBufferManager>,
    total_write_buffer_bytes: usize,
    /// Whether a follower keeping documents in the WAL is far behind its leader
    /// (`set_far_behind`).
    far_behind: AtomicBool,
    path: PathBuf,
    catalog: RwLock<Arc<Catalog>>,
    counts: Mutex<HashMap<u64, u64>>,
    applied: AtomicU64,
    /// The applied tick last written to the store (`APPLIED_TICK`): never past the WAL's durable
    /// tick, so a restart replays from a tick its WAL still has. Below `applied` while blocks from
    /// a leader are applied before they are durable here; replaying them again is harmless.
    recorded: AtomicU64,
    /// `APPLIED_MAX` as loaded: a replay looks up inserts up to it, which the store may hold.
    applied_max: AtomicU64,
    /// The collections this store keeps, if not all (a follower's `restrictCollections`).
    filter: RwLock<Option<Arc<CollectionFilter>>>,
    /// Whether blob garbage collection may run (`StoreOptions::blob_gc`), and whether it does.
    blob_gc_allowed: bool,
    blob_gc_on: AtomicBool,
    /// Memtable bytes far behind a leader (or leading) and while tailing one, and which of the
    /// two is in force (`set_tailing`).
    write_buffer_bytes: usize,
    tailing_write_buffer_bytes: usize,
    tailing: AtomicBool,
    /// Document memtables held at most (filled and waiting for a flush), as configured
    /// (`write_buffers_for`).
    write_buffers: usize,
    /// Level-0 file counts that start a compaction, slow writes and stop them, as configured
    /// (`StoreOptions::level0_compaction_trigger` and the two after it).
    level0_triggers: Level0Triggers,
    /// Whether new documents are kept in the WAL only (`StoreOptions::documents_in_wal`).
    documents_in_wal: bool,
    /// The WAL that documents kept in it are read from (`attach_wal`).
    wal: OnceLock<Arc<Wal>>,
    /// Where the live documents of WAL segments retention let go are kept (documents in the
    /// WAL only), and through which tick the WAL's segments were collected into them.
    values: Option<ValueFiles>,
    collected_through: AtomicU64,
    /// Scans running: their snapshots may name ticks a collection would drop.
    active_scans: AtomicUsize,
    /// A collection written but not yet persisted: (WAL collected through, applied tick then).
    pending_collection: Mutex<Option<(Tick, Tick)>>,
    /// A value file rewritten but not yet in place: (the file, its rewrite or none if nothing
    /// was live, applied tick then).
    pending_rewrite: Mutex<PendingRewrite>,
    /// The value file `value_file_to_look_at` names next.
    value_cursor: AtomicUsize,
    /// Replacements and removals applied since `value_file_to_look_at` last began a round: without
    /// them no value file gained dead documents.
    dead_since_look: AtomicU64,
}

type PendingRewrite = Option<(
    Arc<crate::wal::segment::SealedSegment>,
    Option<PathBuf>,
    Tick,
)>;

/// When level-0 files start a compaction, slow writes down and stop them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level0Triggers {
    pub compaction: u32,
    pub slowdown: u32,
    pub stop: u32,
}

impl Level0Triggers {
    /// For memtables `scale` times smaller than those `self` is for: as many bytes of keys in
    /// level 0 start a compaction. Slowing and stopping come no sooner than at twice and three
    /// times that, so small memtables do not bring writes to a stall sooner.
    pub fn scaled(self, scale: u32) -> Level0Triggers {
        let clamp = |n: u32| n.clamp(1, 1 << 16);
        if scale <= 1 {
            return Level0Triggers {
                compaction: clamp(self.compaction),
                slowdown: clamp(self.slowdown),
                stop: clamp(self.stop),
            };
        }
        let compaction = clamp(self.compaction.saturating_mul(scale.max(1)));
        Level0Triggers {
            compaction,
            slowdown: clamp(self.slowdown.max(compaction.saturating_mul(2))),
            stop: clamp(self.stop.max(compaction.saturating_mul(3))),
        }
    }

    /// For memtables `scale` times smaller that hold keys only (a store keeping its documents
    /// in the WAL). Their level-0 files are small (~0.5 MB for 2 MiB of keys), so what starts a
    /// compaction is level 0's size reaching the level base (8 MiB, ~19 files), long before
    /// `scaled`'s count (256 files), and `scaled`'s stalls (512 and 768 files) never came: a
    /// follower catching up outran its compactions at nice 19 by up to 80 files, and each
    /// compaction then rewrote up to 48 MB at once, loading the new files' index and filter
    /// partitions while the old ones were still cached. So the count that starts a compaction
    /// stays near where the size does (half the configured slowdown: 20), writes slow down at
    /// 1.5 times and stop at twice that (30 and 40). A follower keeping up with its leader
    /// never has more than ~24 files in level 0 (`scripts/catch-up 10010000 follow`), so only
    /// one catching up waits, for compactions of at most ~40 files.
    pub fn scaled_keys_only(self, scale: u32) -> Level0Triggers {
        if scale <= 1 {
            return self.scaled(1);
        }
        let clamp = |n: u32| n.clamp(1, 1 << 16);
        let compaction = clamp(
            self.compaction
                .saturating_mul(scale)
                .min(self.slowdown / 2)
                .max(2),
        );
        Level0Triggers {
            compaction,
            slowdown: clamp(compaction.saturating_mul(3) / 2),
            stop: clamp(compaction.saturating_mul(2)),
        }
    }
}

impl DocStore {
    /// Opens (creating if needed) the store in `path`, with the default options.
    pub fn open(path: impl AsRef<Path>) -> Result<DocStore> {
        DocStore::open_with(path, &StoreOptions::default())
    }

    /// Opens (creating if needed) the store in `path`.
    pub fn open_with(path: impl AsRef<Path>, store_options: &StoreOptions) -> Result<DocStore> {
        let path = path.as_ref().to_path_buf();
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // The applied tick is in `meta`, the documents in `docs`: flush them together.
        options.set_atomic_flush(true);
        options.increase_parallelism(2);
        if store_options.low_priority_compactions {
            let mut env = Env::new().map_err(|e| store_error("open the environment", e))?;
            env.lower_thread_pool_cpu_priority();
            options.set_env(&env);
        }
        options.set_max_background_jobs(2);
        // Flushes and compactions hand their files to the disk every MiB as they write, instead
        // of in one burst at the end: a follower catching up writes as fast as the disk takes
        // (~1.5 GB per 1M documents of ~1 KB, WAL included). Measured on catch-up 1M: 3.70–3.72 s
        // against 3.70–4.05 s in one sitting, no difference in a later A/B; kept for the
        // steadier writeback.
        options.set_bytes_per_sync(1 << 20);
        // What a flush or compaction gathers before it writes (RocksDB's 1 MiB by default):
        // 1.6 MiB of a follower's heap at its peak catching up, a flush and a compaction each
        // writing (heaptrack). Writes of 256 KiB are as cheap a system call per byte.
        options.set_writable_file_max_buffer_size(WRITABLE_FILE_BUFFER_BYTES);
        options.set_max_open_files(store_options.max_open_files.max(-1));
        options
            .set_table_cache_num_shard_bits(table_cache_shard_bits(store_options.max_open_files));
        let write_buffer_bytes = store_options.write_buffer_bytes.max(1 << 20);
        options.set_write_buffer_size(write_buffer_bytes);
        let write_buffers = store_options.write_buffers_max.clamp(2, 64);
        options.set_max_write_buffer_number(write_buffers as i32);
        let cache = Cache::new_lru_cache(store_options.block_cache_bytes);
        // One budget for the memtables of both column families, so that a follower far behind
        // (memtables filling faster than they flush) holds no more than a tailing one.
        let write_buffer_manager = (store_options.total_write_buffer_bytes > 0).then(|| {
            WriteBufferManager::new_write_buffer_manager(
                store_options.total_write_buffer_bytes,
                true,
            )
        });
        if let Some(manager) = &write_buffer_manager {
            options.set_write_buffer_manager(manager);
        }
        let level0_triggers = Level0Triggers {
            compaction: store_options.level0_compaction_trigger,
            slowdown: store_options.level0_slowdown_trigger,
            stop: store_options.level0_stop_trigger,
        }
        .scaled(1);
        options.set_level_zero_file_num_compaction_trigger(level0_triggers.compaction as i32);
        options.set_level_zero_slowdown_writes_trigger(level0_triggers.slowdown as i32);
        options.set_level_zero_stop_writes_trigger(level0_triggers.stop as i32);
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        // Index and filter in partitions of 4 KiB under a small top level, which stays in the
        // cache: a lookup loads the partitions it needs, not a file's whole filter, so a store
        // whose filters outgrow the block cache (10 bits a key: 1.25 GB at 1G documents) reads
        // 4 KiB on a miss rather than the filter of a whole file. Building a file then holds
        // one partition's key hashes, not the file's (8 bytes a key: 6.3 MiB for one output
        // file of a follower 10M documents behind, more the deeper the level). Lookups over
        // HTTP on 3M documents and a follower's catch-up of 10M were no slower (see README).
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_pin_top_level_index_and_filter(true);
        let mut docs = options.clone();
        docs.set_block_based_table_factory(&table);
        // Documents live in blob files (RocksDB's integrated key-value separation): each one is
        // written once when its memtable is flushed, and compaction then moves only keys and
        // blob references. Compacting whole documents through the levels (and zstd at the
        // bottom) was half of the server's CPU under batch inserts (perf). Replaced and removed
        // documents are reclaimed by blob garbage collection during compaction.
        //
        // Blobs are compressed one document at a time, which gains little on small documents:
        // lz4 made 1M documents of ~1 KB (tickship-load's) 17% smaller on disk, and cost 20% of
        // a follower's catch-up time, all of it on the one flush thread (perf: lz4 was 15% of
        // the follower's CPU). So they are stored as they are unless the flag asks; the WAL and
        // the wire compress whole blocks, where repeated field names do compress.
        docs.set_enable_blob_files(true);
        docs.set_min_blob_size(MIN_BLOB_SIZE);
        docs.set_blob_file_size(256 << 20);
        docs.set_blob_compression_type(store_options.blob_compression.rocksdb());
        // Off until `tune_blob_gc` finds garbage: RocksDB's collection moves every live
        // document of the oldest blob files whenever a compaction meets them, garbage or not,
        // which under inserts alone rewrote documents for nothing (a fifth of a follower's
        // catch-up time).
        docs.set_enable_blob_gc(false);
        docs.set_blob_gc_age_cutoff(store_options.blob_gc_age_cutoff.clamp(0.0, 1.0));
        docs.set_compression_type(DBCompressionType::Lz4);
        // Small levels of small files (`StoreOptions::max_bytes_for_level_base`); files twice as
        // large a level down, so that a store of 1G documents (~10 GB of keys) has about a
        // thousand of them rather than ten thousand.
        let level_base = store_options
            .max_bytes_for_level_base
            .max(MIN_TABLE_FILE_BYTES);
        docs.set_max_bytes_for_level_base(level_base);
        docs.set_target_file_size_base((level_base / 4).max(MIN_TABLE_FILE_BYTES));
        docs.set_target_file_size_multiplier(2);
        docs.set_bottommost_compression_type(DBCompressionType::Zstd);
        let mut meta = options.clone();
        meta.set_arena_block_size(META_ARENA_BLOCK_BYTES);
        let families = [
            ColumnFamilyDescriptor::new(CF_DOCS, docs),
            ColumnFamilyDescriptor::new(CF_META, meta),
        ];
        let db = DB::open_cf_descriptors(&options, &path, families)
            .map_err(|e| store_error("open", e))?;
        let store = DocStore {
            db,
            cache,
            write_buffer_manager,
            total_write_buffer_bytes: store_options.total_write_buffer_bytes,
            far_behind: AtomicBool::new(false),
            path,
            catalog: RwLock::new(Arc::new(Catalog::default())),
            counts: Mutex::new(HashMap::new()),
            applied: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            applied_max: AtomicU64::new(0),
            filter: RwLock::new(None),
            blob_gc_allowed: store_options.blob_gc,
            blob_gc_on: AtomicBool::new(false),
            write_buffer_bytes,
            // Set below, once the store's mode is known.
            tailing_write_buffer_bytes: write_buffer_bytes,
            tailing: AtomicBool::new(false),
            write_buffers,
            level0_triggers,
            documents_in_wal: store_options.documents_in_wal,
            wal: OnceLock::new(),
            values: None,
            collected_through: AtomicU64::new(0),
            active_scans: AtomicUsize::new(0),
            pending_collection: Mutex::new(None),
            pending_rewrite: Mutex::new(None),
            value_cursor: AtomicUsize::new(0),
            dead_since_look: AtomicU64::new(0),
        };
        let mut store = store;
        store.documents_in_wal = store.keep_documents_in_wal(store_options.documents_in_wal)?;
        store.tailing_write_buffer_bytes = match store_options.tailing_write_buffer_bytes {
            None if store.documents_in_wal => TAILING_MEMTABLE_BYTES_KEYS_ONLY,
            None => TAILING_MEMTABLE_BYTES,
            Some(0) => write_buffer_bytes,
            Some(bytes) => bytes.max(1 << 20),
        };
        if store.documents_in_wal {
            let name = store
                .path
                .file_name()
                .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
            store.values = Some(ValueFiles::open(
                store.path.with_file_name(format!("{name}-values")),
            )?);
            let collected = store
                .db
                .get_cf(store.meta(), COLLECTED_THROUGH)
                .map_err(|e| store_error("read options", e))?
                .map(|v| decode_u64(&v).ok_or_else(|| corrupt("collected tick")))
                .transpose()?
                .unwrap_or(0);
            store.collected_through.store(collected, Ordering::Release);
        }
        store
            .db
            .set_options_cf(
                store.docs(),
                &[("uncache_aggressiveness", UNCACHE_AGGRESSIVENESS)],
            )
            .map_err(|e| store_error("set uncache_aggressiveness", e))?;
        store.load()?;
        store.tune_blob_gc()?;
        Ok(store)
    }

    /// Whether the store keeps documents in the WAL: if asked, or if it already does. Recorded
    /// and flushed before any document is written that way.
    fn keep_documents_in_wal(&self, asked: bool) -> Result<bool> {
        let meta = self.meta();
        let recorded = self
            .db
            .get_cf(meta, DOCUMENTS_IN_WAL)
            .map_err(|e| store_error("read options", e))?
            .is_some();
        if recorded && !asked {
            tracing::warn!(
                "the document store keeps its documents in the WAL (it was opened so before): it \
                 still does"
            );
        }
        if asked && !recorded {
            let mut batch = rocksdb::WriteBatch::default();
            batch.put_cf(meta, DOCUMENTS_IN_WAL, [1u8]);
            self.write(batch)?;
            self.flush()?;
        }
        Ok(asked || recorded)
    }

    /// Stops RocksDB's background work (flushes, compactions) and waits for what runs. For the
    /// end of a process: the store may outlive it in a thread that never returns, and RocksDB's
    /// background threads running while the process exits abort it ("pthread lock: Invalid
    /// argument", seen when a compaction started by the last flush was still running).
    pub fn stop_background_work(&self) {
        self.db.cancel_all_background_work(true);
    }

    /// Whether documents written from now on are kept in the WAL only.
    pub fn documents_in_wal(&self) -> bool {
        self.documents_in_wal
    }

    /// The last tick of the newest WAL segment whose live documents were moved to the value
    /// files, as persisted: retention may delete the segments up to it.
    pub fn collected_through(&self) -> Tick {
        Tick::new(self.collected_through.load(Ordering::Acquire))
    }

    /// Value files and their bytes (documents kept in the WAL only).
    pub fn value_files(&self) -> Option<(usize, u64)> {
        self.values.as_ref().map(ValueFiles::stats)
    }

    /// Whether a scan is running (its snapshot may name ticks a collection would drop).
    pub fn scans_running(&self) -> bool {
        self.active_scans.load(Ordering::Acquire) > 0
    }

    /// The first half of moving the documents of WAL segment `segment` that are live into a
    /// value file (`finish_collection` is the second): the sample of every sixteenth block, and
    /// for a segment mostly dead the value file of its live documents, copied at their ticks
    /// (written and in place, so reads may use it: it holds exact copies). It only reads the
    /// store, so any thread may run it beside the store writer: a document of a written
    /// segment can only die, never come back, so every document still live when the collection
    /// is finished was live when it was looked at here and is in the file; one that died
    /// meanwhile is garbage for the value files' own collection. A value file whose collection
    /// is never finished (a crash) is made again by the next (`ValueFiles::writer` and `link`
    /// drop it first).
    pub fn prepare_collection(
        &self,
        wal: &Wal,
        segment: &crate::wal::SegmentRange,
    ) -> Result<PreparedCollection> {
        let values = self.values.as_ref().ok_or_else(|| Error::Store {
            op: "collect",
            reason: "the store keeps its documents itself".into(),
        })?;
        // Every sixteenth block says how much of the segment is live.
        let mut sample = SegmentSample::default();
        self.for_live_records(wal, segment, 16, |_, all, alive| {
            sample.puts += all;
            sample.live += alive.len();
            Ok(())
        })?;
        if sample.mostly_live() {
            return Ok(PreparedCollection {
                sample,
                copied: None,
            });
        }
        let frame_bytes = value_frame_bytes(wal);
        let mut writer = values.writer(segment.id)?;
        let mut copied = 0u64;
        self.for_live_records(wal, segment, 1, |records, _, alive| {
            copied += alive.len() as u64;
            write_runs(&mut writer, records, alive, frame_bytes)
        })?;
        writer.finish(segment.tick_max)?;
        Ok(PreparedCollection {
            sample,
            copied: Some(copied),
        })
    }

    /// The second half of a segment's collection, on the store writer's thread between groups
    /// (or any thread while no store writer runs): a segment mostly live becomes a value file
    /// as it is (a second name for the file, nothing copied), and the store writes (unflushed)
    /// that the WAL is collected through the segment's last tick. The collection counts once
    /// persisted (`settle_collection`): the replacements and removals that made the rest dead
    /// must survive a crash before the segment may go. Returns the documents copied (0 when
    /// linked).
    pub fn finish_collection(
        &self,
        segment: &crate::wal::SegmentRange,
        prepared: PreparedCollection,
    ) -> Result<u64> {
        let values = self.values.as_ref().ok_or_else(|| Error::Store {
            op: "collect",
            reason: "the store keeps its documents itself".into(),
        })?;
        let moved = match prepared.copied {
            Some(copied) => copied,
            None => {
                values.link(&segment.path, segment.id, segment.tick_min)?;
                0
            }
        };
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            self.meta(),
            COLLECTED_THROUGH,
            segment.tick_max.get().to_le_bytes(),
        );
        self.write(batch)?;
        *self
            .pending_collection
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((segment.tick_max, self.applied_tick()));
        Ok(moved)
    }

    /// Calls `visit(records, puts, live)` for every `every`-th block of `segment`: its records,
    /// how many are document puts, and the indexes of those whose key still names their tick.
    fn for_live_records(
        &self,
        wal: &Wal,
        segment: &crate::wal::SegmentRange,
        every: usize,
        mut visit: impl FnMut(&[(Tick, crate::wal::Record<'_>)], usize, &[usize]) -> Result<()>,
    ) -> Result<()> {
        let mut reader = wal.reader_after(segment.tick_min.saturating_prev())?;
        let mut scratch = Vec::new();
        let mut index = 0usize;
        while let Some(block) = reader.next_block()? {
            if block.ticks().first > segment.tick_max {
                break;
            }
            index += 1;
            if (index - 1) % every != 0 {
                continue;
            }
            let (records, puts, live) = self.live_records(&block, &mut scratch)?;
            visit(&records, puts, &live)?;
        }
        Ok(())
    }

    /// The records of `block`, how many are document puts, and the indexes of the puts whose
    /// key still names their tick (live).
    #[allow(clippy::type_complexity)]
    fn live_records<'a>(
        &self,
        block: &'a Block,
        scratch: &'a mut Vec<u8>,
    ) -> Result<(Vec<(Tick, crate::wal::Record<'a>)>, usize, Vec<usize>)> {
        let records: Vec<(Tick, crate::wal::Record<'_>)> = block
            .records(scratch)?
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::InvalidBlock)?;
        let puts: Vec<(usize, Vec<u8>)> = records
            .iter()
            .enumerate()
            .filter(|(_, (_, r))| r.kind.is_put())
            .filter_map(|(i, (_, r))| {
                let id = r.collection.parse::<u64>().ok()?;
                Some((i, doc_key(id, r.key)))
            })
            .collect();
        let found = self
            .db
            .batched_multi_get_cf(self.docs(), puts.iter().map(|(_, k)| k), false);
        let mut live = Vec::new();
        for ((i, _), value) in puts.iter().zip(found) {
            let value = value.map_err(|e| store_error("read before collect", e))?;
            if value.is_some_and(|v| v.as_ref() == records[*i].0.get().to_le_bytes()) {
                live.push(*i);
            }
        }
        Ok((records, puts.len(), live))
    }

    /// The value file whose collection is due next, in turn (one per call); `None` if none is:
    /// documents kept in the store, a collection pending, a scan running (its snapshot may
    /// name a record the rewrite would drop), or no replacement or removal since the last round
    /// over the files began (an insert-only load costs no sampling). On the store writer's
    /// thread (or any while none runs).
    pub fn value_file_to_look_at(&self) -> Option<Arc<crate::wal::segment::SealedSegment>> {
        let values = self.values.as_ref()?;
        if self.collection_pending() || self.scans_running() {
            return None;
        }
        let files = values.files();
        if files.is_empty() {
            return None;
        }
        let at = self.value_cursor.load(Ordering::Relaxed) % files.len();
        if at == 0 && self.dead_since_look.swap(0, Ordering::AcqRel) == 0 {
            return None;
        }
        self.value_cursor.store(at + 1, Ordering::Relaxed);
        Some(files[at].clone())
    }

    /// The first half of a value file's collection (`finish_rewrite` is the second): samples
    /// every sixteenth block of `file` and, if less than half of the documents sampled are
    /// live, writes its rewrite with the records live now (`None` if it keeps more than half).
    /// It only reads the store, so any thread may run it beside the store writer: a record of
    /// a value file can only die, never come back, so every record still live when the rewrite
    /// is recorded was live when its block was looked at here and is in the rewrite.
    pub fn prepare_rewrite(
        &self,
        wal: &Wal,
        file: &Arc<crate::wal::segment::SealedSegment>,
    ) -> Result<Option<PreparedRewrite>> {
        let Some(values) = &self.values else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let blocks = values.blocks(file)?;
        let mut scratch = Vec::new();
        let (mut sampled, mut live) = (0usize, 0usize);
        for block in blocks.iter().step_by(16) {
            let (_, puts, alive) = self.live_records(block, &mut scratch)?;
            sampled += puts;
            live += alive.len();
        }
        if live * 2 >= sampled && sampled > 0 {
            return Ok(None);
        }
        let frame_bytes = value_frame_bytes(wal);
        let mut writer = values.rewriter(file);
        for block in &blocks {
            let (records, _, alive) = self.live_records(block, &mut scratch)?;
            write_runs(&mut writer, &records, &alive, frame_bytes)?;
        }
        let next = writer.finish_next(file.ticks.last)?;
        tracing::debug!(
            file = %file.path.display(),
            sampled,
            live,
            seconds = started.elapsed().as_secs_f64(),
            "wrote the rewrite of a value file"
        );
        Ok(Some(PreparedRewrite {
            file: file.clone(),
            next,
        }))
    }

    /// The second half of a value file's collection, on the store writer's thread between
    /// groups (or any thread while none runs): the rewrite waits to replace the file until
    /// the store has persisted the tick applied now (`settle_collection`), so that the
    /// replacements and removals that made the dropped records dead survive a crash first.
    /// Dropped instead if a scan runs: it may have begun while the rewrite was being written
    /// and name a record that died since. Returns whether the rewrite was kept.
    pub fn finish_rewrite(&self, prepared: PreparedRewrite) -> Result<bool> {
        let Some(values) = &self.values else {
            return Ok(false);
        };
        if self.scans_running() || self.collection_pending() {
            if let Some(next) = &prepared.next {
                values.discard(next)?;
            }
            return Ok(false);
        }
        *self
            .pending_rewrite
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            Some((prepared.file, prepared.next, self.applied_tick()));
        Ok(true)
    }

    /// Whether a collection or a value file's rewrite waits to be persisted
    /// (`settle_collection`).
    pub fn collection_pending(&self) -> bool {
        self.pending_collection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
            || self
                .pending_rewrite
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
    }

    /// Counts the last collection once the store has persisted the tick it was decided at:
    /// retention may then delete the segments up to it. Returns whether one was pending still.
    pub fn settle_collection(&self, persisted: Tick) -> Result<bool> {
        {
            let mut rewrite = self
                .pending_rewrite
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match rewrite.take() {
                Some((old, next, decided)) if persisted >= decided => {
                    if let Some(values) = &self.values {
                        values.replace(&old, next)?;
                    }
                }
                Some(waiting) => {
                    *rewrite = Some(waiting);
                    return Ok(true);
                }
                None => {}
            }
        }
        let mut pending = self
            .pending_collection
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match *pending {
            Some((through, decided)) if persisted >= decided => {
                self.collected_through
                    .fetch_max(through.get(), Ordering::AcqRel);
                *pending = None;
                Ok(false)
            }
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    /// The WAL this store applies, which reads take documents kept in it from. Attach it before
    /// reading; a second call is ignored.
    pub fn attach_wal(&self, wal: Arc<Wal>) {
        let _ = self.wal.set(wal);
    }

    /// Reads the applied tick, the catalog and the counts.
    fn load(&self) -> Result<()> {
        let meta = self.meta();
        let applied = match self
            .db
            .get_cf(meta, APPLIED_TICK)
            .map_err(|e| store_error("read applied tick", e))?
        {
            Some(bytes) => decode_u64(&bytes).ok_or_else(|| corrupt("applied tick"))?,
            None => 0,
        };
        self.applied.store(applied, Ordering::Release);
        self.recorded.store(applied, Ordering::Release);
        let applied_max = self
            .db
            .get_cf(meta, APPLIED_MAX)
            .map_err(|e| store_error("read applied tick", e))?
            .map(|v| decode_u64(&v).ok_or_else(|| corrupt("applied tick")))
            .transpose()?
            .unwrap_or(0);
        self.applied_max.store(applied_max, Ordering::Release);
        let mut catalog = Catalog::default();
        catalog.databases.insert(
            SYSTEM_DATABASE.into(),
            DatabaseInfo {
                id: 1,
                name: SYSTEM_DATABASE.into(),
            },
        );
        let mut counts = HashMap::new();
        for item in self.db.iterator_cf(meta, rocksdb::IteratorMode::Start) {
            let (key, value) = item.map_err(|e| store_error("read catalog", e))?;
            if let Some(_name) = key.strip_prefix(b"db/") {
                let info: DatabaseInfo =
                    serde_json::from_slice(&value).map_err(|_| corrupt("database entry"))?;
                catalog.databases.insert(info.name.clone(), info);
            } else if key.starts_with(b"col/") {
                let info: CollectionInfo =
                    serde_json::from_slice(&value).map_err(|_| corrupt("collection entry"))?;
                catalog.insert_collection(info);
            } else if key.starts_with(b"out/") {
                let info: CollectionInfo =
                    serde_json::from_slice(&value).map_err(|_| corrupt("left-out collection"))?;
                catalog.left_out.insert(info.id, info);
            } else if let Some(id) = key.strip_prefix(b"count/") {
                let id = std::str::from_utf8(id)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                let id = id.ok_or_else(|| corrupt("count key"))?;
                counts.insert(id, decode_u64(&value).ok_or_else(|| corrupt("count"))?);
            }
        }
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()) = counts;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn docs(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_DOCS)
            .expect("docs column family exists")
    }

    fn meta(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_META)
            .expect("meta column family exists")
    }

    /// The last tick the store may hold data of from before it was opened (`APPLIED_MAX`): a
    /// replay up to it looks up the keys of inserts, which it otherwise takes as new.
    pub fn applied_max(&self) -> Tick {
        Tick::new(self.applied_max.load(Ordering::Acquire))
    }

    /// The last tick applied (visible to reads, not necessarily persisted by RocksDB).
    pub fn applied_tick(&self) -> Tick {
        Tick::new(self.applied.load(Ordering::Acquire))
    }

    /// The applied tick RocksDB has persisted: a restart replays the WAL from here, so the WAL
    /// must keep every tick after it. (With RocksDB's WAL off, the persisted tier is exactly
    /// what survives a crash.)
    pub fn persisted_tick(&self) -> Result<Tick> {
        let mut options = ReadOptions::default();
        options.set_read_tier(ReadTier::Persisted);
        let value = self.db.get_cf_opt(self.meta(), APPLIED_TICK, &options);
        match value.map_err(|e| store_error("read persisted tick", e))? {
            Some(bytes) => Ok(Tick::new(
                decode_u64(&bytes).ok_or_else(|| corrupt("applied tick"))?,
            )),
            None => Ok(Tick::ZERO),
        }
    }

    /// Starts flushing the memtables (all column families together) without waiting.
    pub fn start_flush(&self) -> Result<()> {
        let mut options = FlushOptions::default();
        options.set_wait(false);
        self.db
            .flush_cfs_opt(&[self.docs(), self.meta()], &options)
            .map_err(|e| store_error("flush", e))
    }

    /// Writes the applied tick to the store, limited to `durable` (the WAL's durable tick), if
    /// that is further than what was written so far.
    pub fn record_applied(&self, durable: Tick) -> Result<()> {
        let tick = self.applied_tick().min(durable);
        if tick.get() <= self.recorded.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(self.meta(), APPLIED_TICK, tick.get().to_le_bytes());
        self.write(batch)?;
        self.recorded.fetch_max(tick.get(), Ordering::AcqRel);
        Ok(())
    }

    /// Flushes the memtables and waits; afterwards `persisted_tick()` is the recorded applied
    /// tick (`applied_tick()` once `record_applied` was given a durable tick that far).
    pub fn flush(&self) -> Result<()> {
        let mut options = FlushOptions::default();
        options.set_wait(true);
        self.db
            .flush_cfs_opt(&[self.docs(), self.meta()], &options)
            .map_err(|e| store_error("flush", e))
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Number of documents in collection `id`.
    pub fn count(&self, id: u64) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
            .unwrap_or(0)
    }

    /// Document `key` of collection `collection`.
    pub fn get(&self, collection: u64, key: &str) -> Result<Option<StoredDocument>> {
        let read = || {
            let value = self.db.get_pinned_cf(self.docs(), doc_key(collection, key));
            value
                .map_err(|e| store_error("read document", e))?
                .map(|v| self.decode_document(collection, key, &v))
                .transpose()
        };
        match read() {
            // The document was replaced between reading its tick and reading it, and its old
            // record collected meanwhile: its key now names a newer tick.
            Err(_) if self.values.is_some() => read(),
            other => other,
        }
    }

    /// Documents `keys` of collection `collection`, in order.
    pub fn get_many(&self, collection: u64, keys: &[&str]) -> Result<Vec<Option<StoredDocument>>> {
        let store_keys: Vec<Vec<u8>> = keys.iter().map(|k| doc_key(collection, k)).collect();
        self.db
            .batched_multi_get_cf(self.docs(), &store_keys, false)
            .into_iter()
            .zip(keys)
            .map(|(value, key)| {
                let decoded = value
                    .map_err(|e| store_error("read documents", e))?
                    .map(|v| self.decode_document(collection, key, &v))
                    .transpose();
                match decoded {
                    // Replaced and its old record collected between the two reads (see `get`).
                    Err(_) if self.values.is_some() => self.get(collection, key),
                    other => other,
                }
            })
            .collect()
    }

    /// Calls `visit(key, document)` for every document of `collection`, from one consistent
    /// snapshot. Stops early when `visit` returns false. Documents kept in the store come in key
    /// order; those kept in the WAL are gathered (`SCAN_CHUNK` keys at a time) and read in tick
    /// order, so that each WAL frame is decompressed once per chunk rather than once per
    /// document (in key order, `tickship-load`'s 1M documents took 31 s instead of 2.9 s).
    pub fn scan(
        &self,
        collection: u64,
        mut visit: impl FnMut(&str, StoredDocument) -> bool,
    ) -> Result<()> {
        let prefix = collection.to_be_bytes();
        let mut options = rocksdb::ReadOptions::default();
        // A scan reads each data block once: kept out of the block cache, it neither grows the
        // process by the whole collection's keys (up to the cache's size) nor pushes out the
        // index and filter blocks that lookups need.
        options.fill_cache(false);
        options.set_iterate_lower_bound(prefix.to_vec());
        options.set_iterate_upper_bound((collection + 1).to_be_bytes().to_vec());
        let _scanning = ScanGuard::new(&self.active_scans);
        let iterator = self
            .db
            .iterator_cf_opt(self.docs(), options, rocksdb::IteratorMode::Start);
        let mut in_wal: Vec<(Tick, String)> = Vec::new();
        for item in iterator {
            let (key, value) = item.map_err(|e| store_error("scan documents", e))?;
            let key = std::str::from_utf8(&key[prefix.len()..])
                .map_err(|_| corrupt("document key is not UTF-8"))?;
            if value.len() == DOCUMENT_IN_WAL_BYTES {
                let tick = decode_u64(&value).ok_or_else(|| corrupt("document revision"))?;
                in_wal.push((Tick::new(tick), key.to_owned()));
                if in_wal.len() >= SCAN_CHUNK
                    && !self.visit_in_wal(collection, &mut in_wal, &mut visit)?
                {
                    return Ok(());
                }
                continue;
            }
            if !visit(key, self.decode_document(collection, key, &value)?) {
                return Ok(());
            }
        }
        self.visit_in_wal(collection, &mut in_wal, &mut visit)?;
        Ok(())
    }

    /// Visits the documents kept in the WAL at `documents` (tick, key), in tick order, reading
    /// each frame once; empties `documents`. Returns false if `visit` asked to stop.
    fn visit_in_wal(
        &self,
        collection: u64,
        documents: &mut Vec<(Tick, String)>,
        visit: &mut impl FnMut(&str, StoredDocument) -> bool,
    ) -> Result<bool> {
        if documents.is_empty() {
            return Ok(true);
        }
        documents.sort_unstable_by_key(|(tick, _)| *tick);
        let id = collection.to_string();
        // The block read last; its pages go back to the kernel when the scan moves on or ends.
        let mut block = ScannedBlock(None);
        // The records of the frame read last: (tick, put?, collection, key, document).
        let mut frame: Vec<(Tick, bool, String, String, Vec<u8>)> = Vec::new();
        let mut scratch = Vec::new();
        for (tick, key) in documents.drain(..) {
            let first = frame.first().map_or(Tick::ZERO, |r| r.0);
            let last = frame.last().map_or(Tick::ZERO, |r| r.0);
            if frame.is_empty() || tick < first || tick > last {
                if !block.0.as_ref().is_some_and(|b| b.ticks().contains(tick)) {
                    block.replace(self.kept_block_at(tick)?);
                }
                let Some(holding) = &block.0 else {
                    return Err(missing_in_wal(
                        collection,
                        &key,
                        tick,
                        "the WAL does not hold its",
                    ));
                };
                frame.clear();
                for item in holding.frame_records(tick, &mut scratch)? {
                    let (at, record) = item.map_err(Error::InvalidBlock)?;
                    frame.push((
                        at,
                        record.kind.is_put(),
                        record.collection.to_owned(),
                        record.key.to_owned(),
                        record.data.to_vec(),
                    ));
                }
            }
            let at = (tick.get() - frame[0].0.get()) as usize;
            match frame.get_mut(at) {
                Some((_, true, of, held, json)) if *of == id && *held == key => {
                    let document = StoredDocument {
                        rev: tick,
                        json: std::mem::take(json),
                    };
                    if !visit(&key, document) {
                        return Ok(false);
                    }
                }
                _ => {
                    return Err(missing_in_wal(
                        collection,
                        &key,
                        tick,
                        "the WAL holds another record at its",
                    ))
                }
            }
        }
        Ok(true)
    }

    fn attached_wal(&self) -> Result<&Arc<Wal>> {
        self.wal.get().ok_or_else(|| Error::Store {
            op: "read document",
            reason: "the document is kept in the WAL, and no WAL is attached".into(),
        })
    }

    /// Applies blocks in tick order on the calling thread (the caller is the single store
    /// writer).
    pub fn apply(&self, blocks: &[crate::wal::Block]) -> Result<ApplyStats> {
        apply::apply(
            self,
            blocks,
            &mut ApplyContext::serial(),
            Tick::new(u64::MAX),
        )
    }

    /// Applies blocks in tick order with the threads of `context`; what becomes visible is the
    /// same as with `apply`, all at once. The applied tick written with them is limited to
    /// `durable`, the WAL's durable tick (see `record_applied`).
    pub fn apply_with(
        &self,
        blocks: &[crate::wal::Block],
        context: &mut ApplyContext,
        durable: Tick,
    ) -> Result<ApplyStats> {
        let stats = apply::apply(self, blocks, context, durable)?;
        if stats.removals + stats.replaced > 0 {
            self.dead_since_look
                .fetch_add(stats.removals + stats.replaced, Ordering::AcqRel);
        }
        Ok(stats)
    }

    /// From the next applied group on, applies only the records of collections `filter`
    /// admits (`None`: all of them). A follower sets it from its applier configuration.
    pub fn set_filter(&self, filter: Option<CollectionFilter>) {
        let filter = filter.filter(|f| !f.keeps_all()).map(Arc::new);
        *self.filter.write().unwrap_or_else(|p| p.into_inner()) = filter;
    }

    /// Switches blob garbage collection on while at least `BLOB_GC_ON` of the live blob files'
    /// bytes is garbage, and off below `BLOB_GC_OFF`; returns whether it is on. Compactions
    /// account the garbage either way (a document replaced or removed leaves its old blob
    /// behind), so the ratio is known without collecting. Cheap: two integer properties.
    pub fn tune_blob_gc(&self) -> Result<bool> {
        if !self.blob_gc_allowed {
            return Ok(false);
        }
        let docs = self.docs();
        let live = self.int_property(docs, "rocksdb.live-blob-file-size")?;
        let garbage = self.int_property(docs, "rocksdb.live-blob-file-garbage-size")?;
        let ratio = if live == 0 {
            0.0
        } else {
            garbage as f64 / live as f64
        };
        let on = self.blob_gc_on.load(Ordering::Acquire);
        let want = if on {
            ratio >= BLOB_GC_OFF
        } else {
            ratio >= BLOB_GC_ON
        };
        if want != on {
            let value = if want { "true" } else { "false" };
            self.db
                .set_options_cf(docs, &[("enable_blob_garbage_collection", value)])
                .map_err(|e| store_error("switch blob garbage collection", e))?;
            self.blob_gc_on.store(want, Ordering::Release);
            tracing::info!(
                garbage,
                live,
                "blob garbage collection {}",
                if want { "on" } else { "off" }
            );
        }
        Ok(want)
    }

    /// Sizes the document memtables for a follower that keeps up with its leader (`true`:
    /// `StoreOptions::tailing_write_buffer_bytes`) or for one far behind, or a leader (`false`:
    /// `write_buffer_bytes`); returns whether that changed anything. The memtable being filled
    /// takes the new size at once when it shrinks, else the next one does. A store keeping its
    /// documents in the WAL also holds fewer of them while tailing
    /// (`TAILING_WRITE_BUFFERS_KEYS_ONLY`), and less of them together when far behind
    /// (`set_far_behind`).
    ///
    /// Small memtables while tailing: every flush of a 64 MiB memtable (~1.7 s apart at 36k
    /// documents/s) took the CPU from applying for ~170 ms, which was the slow tail of the
    /// follower's lag; with 16 MiB ones, 60 s runs of 1,000-document batches at 36k documents/s
    /// went from p50 1.1–1.7 / p99 median 22.6 ms to p50 0.5–0.8 / p99 median 12.4 ms (5 runs
    /// each), and a tailing follower's memory from 159–177 to 132 MiB. Large ones far behind:
    /// catching up with 16 MiB memtables took ~15% longer (more, smaller flushes and level-0
    /// files to compact).
    ///
    /// The level-0 triggers scale with the memtables (`level0_triggers_for`): with 16 MiB
    /// memtables and the 8 files of 64 MiB ones, a follower tailing 56k documents/s compacted
    /// as often again as its leader (65 compactions, 8.9 s of CPU in 60 s against 21 and
    /// 4.5 s); at 32 files it compacts as often as the leader (20, 4.1 s).
    pub fn set_tailing(&self, tailing: bool) -> Result<bool> {
        if self.tailing.load(Ordering::Acquire) == tailing {
            return Ok(false);
        }
        let bytes = self.memtable_bytes(tailing);
        let buffers = self.write_buffers_for(tailing);
        let triggers = self.level0_triggers_for(tailing);
        self.db
            .set_options_cf(
                self.docs(),
                &[
                    ("write_buffer_size", &bytes.to_string()),
                    ("max_write_buffer_number", &buffers.to_string()),
                    (
                        "level0_file_num_compaction_trigger",
                        &triggers.compaction.to_string(),
                    ),
                    (
                        "level0_slowdown_writes_trigger",
                        &triggers.slowdown.to_string(),
                    ),
                    ("level0_stop_writes_trigger", &triggers.stop.to_string()),
                ],
            )
            .map_err(|e| store_error("resize the memtables", e))?;
        self.tailing.store(tailing, Ordering::Release);
        let total = self.apply_total_write_buffer_budget();
        tracing::debug!(bytes, buffers, total, tailing, "memtable size set");
        Ok(true)
    }

    /// The size of the document memtables now in force (`set_tailing`).
    pub fn write_buffer_bytes(&self) -> u64 {
        self.memtable_bytes(self.tailing.load(Ordering::Acquire)) as u64
    }

    /// The level-0 triggers in force with the memtables of `set_tailing(tailing)`: scaled by how
    /// much smaller the tailing memtables are, so that a compaction starts at as many bytes of
    /// keys either way (`Level0Triggers::scaled`), or for memtables of keys only near where
    /// level 0's size starts one, with writes waiting for compactions past twice that
    /// (`Level0Triggers::scaled_keys_only`).
    pub fn level0_triggers_for(&self, tailing: bool) -> Level0Triggers {
        let scale = self.write_buffer_bytes / self.memtable_bytes(tailing).max(1);
        let scale = u32::try_from(scale).unwrap_or(u32::MAX);
        if self.documents_in_wal {
            self.level0_triggers.scaled_keys_only(scale)
        } else {
            self.level0_triggers.scaled(scale)
        }
    }

    fn memtable_bytes(&self, tailing: bool) -> usize {
        if tailing {
            self.tailing_write_buffer_bytes
        } else {
            self.write_buffer_bytes
        }
    }

    /// Tells a store keeping its documents in the WAL whether the leader it tails is far ahead
    /// (the follower decides, with the same distances as for `set_tailing`); returns whether that
    /// changed anything. While it tails far behind, its memtables together hold at most
    /// `FAR_BEHIND_TOTAL_WRITE_BUFFER_BYTES_KEYS_ONLY`: applying waits for each flush instead of
    /// filling a second memtable meanwhile. Close behind, a flush is short and the next memtable
    /// fills while it runs, which keeps the lag low. A store of documents switches to its large
    /// memtables far behind instead (`set_tailing(false)`), and ignores this.
    pub fn set_far_behind(&self, far: bool) -> bool {
        if !self.documents_in_wal || self.far_behind.swap(far, Ordering::AcqRel) == far {
            return false;
        }
        let total = self.apply_total_write_buffer_budget();
        tracing::debug!(far, total, "memtable budget set");
        true
    }

    /// The memtables' total budget for the tailing state and distance now in force (`None`: no
    /// total budget).
    pub fn total_write_buffer_budget(&self) -> Option<usize> {
        self.write_buffer_manager.as_ref()?;
        let keys_far_behind = self.documents_in_wal
            && self.tailing.load(Ordering::Acquire)
            && self.far_behind.load(Ordering::Acquire);
        Some(if keys_far_behind {
            self.total_write_buffer_bytes
                .min(FAR_BEHIND_TOTAL_WRITE_BUFFER_BYTES_KEYS_ONLY)
        } else {
            self.total_write_buffer_bytes
        })
    }

    /// Puts `total_write_buffer_budget` in force and returns it.
    fn apply_total_write_buffer_budget(&self) -> Option<usize> {
        let total = self.total_write_buffer_budget();
        if let (Some(manager), Some(total)) = (&self.write_buffer_manager, total) {
            manager.set_buffer_size(total);
        }
        total
    }

    /// Document memtables held at most with the memtables of `set_tailing(tailing)`.
    fn write_buffers_for(&self, tailing: bool) -> usize {
        if tailing && self.documents_in_wal {
            self.write_buffers.min(TAILING_WRITE_BUFFERS_KEYS_ONLY)
        } else {
            self.write_buffers
        }
    }

    /// An integer property of a column family (0 when RocksDB has no value for it).
    fn int_property(&self, cf: &rocksdb::ColumnFamily, name: &str) -> Result<u64> {
        Ok(self
            .db
            .property_int_value_cf(cf, name)
            .map_err(|e| store_error("read a property", e))?
            .unwrap_or(0))
    }

    /// What RocksDB holds in memory now.
    pub fn memory(&self) -> StoreMemory {
        let sum = |property: &str| -> u64 {
            [self.docs(), self.meta()]
                .into_iter()
                .filter_map(|cf| self.int_property(cf, property).ok())
                .sum()
        };
        StoreMemory {
            memtables: sum("rocksdb.size-all-mem-tables"),
            block_cache: self.cache.get_usage() as u64,
            block_cache_pinned: self.cache.get_pinned_usage() as u64,
            table_readers: sum("rocksdb.estimate-table-readers-mem"),
        }
    }

    pub fn filter(&self) -> Option<Arc<CollectionFilter>> {
        self.filter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn write(&self, batch: rocksdb::WriteBatch) -> Result<()> {
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| store_error("write", e))
    }
}

impl DocStore {
    /// The document stored as `value` under `key` of `collection`: its revision (the tick of its
    /// last write), then the document itself, or nothing more when it is kept in the WAL, where
    /// it is read from the record at that tick (decompressing one frame of its block).
    fn decode_document(&self, collection: u64, key: &str, value: &[u8]) -> Result<StoredDocument> {
        if value.len() < DOCUMENT_IN_WAL_BYTES {
            return Err(corrupt("document value"));
        }
        let rev = Tick::new(decode_u64(&value[..8]).ok_or_else(|| corrupt("document revision"))?);
        if value.len() > DOCUMENT_IN_WAL_BYTES {
            return Ok(StoredDocument {
                rev,
                json: value[8..].to_vec(),
            });
        }
        let missing = |why: &str| missing_in_wal(collection, key, rev, why);
        let block = self
            .kept_block_at(rev)?
            .ok_or_else(|| missing("neither the WAL nor a value file holds its"))?;
        WAL_SCRATCH.with(|scratch| {
            let scratch = &mut scratch.borrow_mut();
            let record = block.record_at(rev, scratch)?;
            let id = collection.to_string();
            if !record.kind.is_put() || record.key != key || record.collection != id {
                return Err(missing("the WAL holds another record at its"));
            }
            let json = record.data.to_vec();
            if scratch.capacity() > WAL_SCRATCH_BYTES_KEPT {
                **scratch = Vec::new();
            }
            Ok(StoredDocument { rev, json })
        })
    }
}

/// The block a scan of the documents kept in the WAL reads from. A scan reads each block once,
/// in tick order: its pages are handed back when the scan moves on or ends, so that a scan of
/// the whole store does not leave the WAL it read in the process's resident set.
struct ScannedBlock(Option<crate::wal::Block>);

impl ScannedBlock {
    fn replace(&mut self, next: Option<crate::wal::Block>) {
        if let Some(done) = std::mem::replace(&mut self.0, next) {
            done.release_pages();
        }
    }
}

impl Drop for ScannedBlock {
    fn drop(&mut self) {
        self.replace(None);
    }
}

impl DocStore {
    /// Hands back the pages that reads of single documents mapped in the value files since the
    /// last call (the store writer calls it every `POINT_READS_HANDED_BACK_EVERY`; the WAL
    /// does the same for its segments).
    pub fn hand_back_point_reads(&self) {
        if let Some(values) = &self.values {
            values.hand_back_point_reads();
        }
    }

    /// The block holding `tick`: in the WAL, or below its first tick in the value files.
    fn kept_block_at(&self, tick: Tick) -> Result<Option<Block>> {
        match self.attached_wal()?.block_at(tick) {
            Ok(Some(block)) => return Ok(Some(block)),
            Ok(None) | Err(Error::TickCompacted(_)) => {}
            Err(error) => return Err(error),
        }
        match &self.values {
            Some(values) => values.block_at(tick),
            None => Ok(None),
        }
    }
}

/// The frame size of the blocks value files are written in: the WAL's, or the default for
/// documents kept in the WAL if it writes blocks whole.
fn value_frame_bytes(wal: &Wal) -> usize {
    match wal.options().frame_bytes {
        0 => crate::wal::block::FRAME_RAW_BYTES,
        bytes => bytes,
    }
}

/// Writes the `live` records of `records` to `writer`: each run of consecutive ticks, at most
/// 1 MiB of records, as one block in frames of `frame_bytes`.
fn write_runs(
    writer: &mut crate::wal::values::ValueFileWriter<'_>,
    records: &[(Tick, crate::wal::Record<'_>)],
    live: &[usize],
    frame_bytes: usize,
) -> Result<()> {
    let mut run: Vec<crate::wal::Record<'_>> = Vec::new();
    let mut run_first = Tick::ZERO;
    let mut run_bytes = 0usize;
    let mut cut = |run: &mut Vec<crate::wal::Record<'_>>, first: Tick| -> Result<()> {
        if !run.is_empty() {
            let block = crate::wal::block::prepare_framed(run, frame_bytes)?;
            writer.push(&block.to_block(first))?;
            run.clear();
        }
        Ok(())
    };
    for &i in live {
        let (tick, record) = records[i];
        let continues = !run.is_empty()
            && run_first.get() + run.len() as u64 == tick.get()
            && run_bytes + record.encoded_bytes() <= 1 << 20;
        if !continues {
            cut(&mut run, run_first)?;
            run_first = tick;
            run_bytes = 0;
        }
        run_bytes += record.encoded_bytes();
        run.push(record);
    }
    cut(&mut run, run_first)
}

/// A document kept in the WAL that is not where its tick says.
fn missing_in_wal(collection: u64, key: &str, tick: Tick, why: &str) -> Error {
    Error::Store {
        op: "read document",
        reason: format!("document {key:?} of collection {collection}: {why} tick {tick}"),
    }
}

/// Counts a scan as running while it lives.
struct ScanGuard<'a>(&'a AtomicUsize);

impl<'a> ScanGuard<'a> {
    fn new(count: &'a AtomicUsize) -> ScanGuard<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        ScanGuard(count)
    }
}

impl Drop for ScanGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keys of documents kept in the WAL that a scan gathers, then reads in tick order: ~40 bytes
/// each, ~10 MiB.
const SCAN_CHUNK: usize = 1 << 18;

/// Bytes of the value of a document kept in the WAL: its tick alone. A document kept in the
/// store has its tick and then at least `{}`.
const DOCUMENT_IN_WAL_BYTES: usize = 8;

thread_local! {
    /// Where reads decompress the WAL frame holding a document.
    static WAL_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A read's frame scratch larger than this (a document in a block without frames, say) is not
/// kept for the next read.
const WAL_SCRATCH_BYTES_KEPT: usize = 1 << 20;

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

fn store_error(op: &'static str, error: rocksdb::Error) -> Error {
    Error::Store {
        op,
        reason: error.into_string(),
    }
}

fn corrupt(what: &'static str) -> Error {
    Error::Store {
        op: "decode",
        reason: format!("invalid {what} in the document store"),
    }
}

/// Serde for u64 ids written as decimal strings, as ArangoDB writes ids.
mod u64_string {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Number(u64),
        }
        match Either::deserialize(deserializer)? {
            Either::Text(text) => text.parse().map_err(D::Error::custom),
            Either::Number(number) => Ok(number),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: `_rev` is spliced in as the first attribute of any object, including an empty one.
    #[test]
    fn rev_is_spliced_into_objects() {
        assert_eq!(
            with_rev(br#"{"_key":"a","v":1}"#, Tick::new(17)),
            br#"{"_rev":"17","_key":"a","v":1}"#
        );
        assert_eq!(with_rev(b"{}", Tick::new(3)), br#"{"_rev":"3"}"#);
    }

    // Goal: `_id` names the collection's current name, whichever of the first two attributes
    // holds it; documents without one, or of another shape, are left as they are.
    #[test]
    fn id_follows_the_collection_name() {
        let doc = |json: &str| StoredDocument {
            rev: Tick::new(5),
            json: json.as_bytes().to_vec(),
        };
        let stored = doc(r#"{"_key":"a","_id":"before/a","v":"before/a"}"#);
        assert_eq!(
            stored.to_json_in("after"),
            br#"{"_rev":"5","_key":"a","_id":"after/a","v":"before/a"}"#
        );
        assert!(matches!(
            stored.json_in("before"),
            std::borrow::Cow::Borrowed(_)
        ));
        let sorted = doc(r#"{ "_id" : "old/k", "_key":"k", "x":1}"#);
        assert_eq!(
            &sorted.json_in("new")[..],
            br#"{ "_id" : "new/k", "_key":"k", "x":1}"#
        );
        for unchanged in [
            r#"{"_key":"a","v":1,"_id":"c/a"}"#,
            r#"{}"#,
            r#"{"_key":"a"}"#,
            "[1]",
        ] {
            assert_eq!(&doc(unchanged).json_in("other")[..], unchanged.as_bytes());
        }
    }

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

    /// RocksDB's `max_write_buffer_number` of the documents' column family, as in force.
    fn write_buffers_in_force(store: &DocStore) -> String {
        option_in_force(store, CF_DOCS, "max_write_buffer_number")
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

    // Goal: a store keeping its documents in the WAL holds at most two document memtables while
    // tailing (a follower far behind does not pile up four), and the configured number again
    // when it stops tailing; a store of documents keeps the configured number throughout.
    #[test]
    fn tailing_keys_only_holds_two_memtables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in_mode(&dir.path().join("in-wal"), true);
        assert_eq!(write_buffers_in_force(&store), "4");
        assert!(store.set_tailing(true).expect("tailing"));
        assert_eq!(
            write_buffers_in_force(&store),
            TAILING_WRITE_BUFFERS_KEYS_ONLY.to_string()
        );
        assert!(store.set_tailing(false).expect("leading"));
        assert_eq!(write_buffers_in_force(&store), "4");
        let store = open_in_mode(&dir.path().join("in-store"), false);
        assert!(store.set_tailing(true).expect("tailing"));
        assert_eq!(write_buffers_in_force(&store), "4");
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

    // Goal: without a size of its own, the tailing memtable follows the store's mode: 16 MiB
    // holding documents, 4 MiB holding keys only; a store that kept documents in the WAL keeps
    // the small ones when reopened without asking (the mode is sticky).
    #[test]
    fn tailing_memtables_default_by_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tailing = |path: &str, documents_in_wal: bool| {
            let store = open_in_mode(&dir.path().join(path), documents_in_wal);
            store.set_tailing(true).expect("tailing");
            store.write_buffer_bytes()
        };
        assert_eq!(tailing("in-store", false), TAILING_MEMTABLE_BYTES as u64);
        assert_eq!(
            tailing("in-wal", true),
            TAILING_MEMTABLE_BYTES_KEYS_ONLY as u64
        );
        assert_eq!(
            tailing("in-wal", false),
            TAILING_MEMTABLE_BYTES_KEYS_ONLY as u64
        );
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
            let store =
                DocStore::open_with(dir.path().join(base.to_string()), &options).expect("open");
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
    // removed (they filled it at the speed the store is written: a follower 10M documents
    // behind ended with 23 MiB of cache, 13 of it live).
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
                format!(
                    "{files} files left, cache at {after} bytes, {before} before the compaction"
                )
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

    #[test]
    fn level0_triggers_scale_with_the_memtables() {
        let configured = Level0Triggers {
            compaction: 8,
            slowdown: 40,
            stop: 64,
        };
        assert_eq!(configured.scaled(1), configured);
        assert_eq!(
            configured.scaled(4),
            Level0Triggers {
                compaction: 32,
                slowdown: 64,
                stop: 96
            }
        );
        // Configured triggers stay as they are unscaled, and never pass RocksDB's range.
        let odd = Level0Triggers {
            compaction: 0,
            slowdown: 100_000,
            stop: 1,
        };
        assert_eq!(
            odd.scaled(1),
            Level0Triggers {
                compaction: 1,
                slowdown: 1 << 16,
                stop: 1
            }
        );
        assert_eq!(configured.scaled(u32::MAX).stop, 1 << 16);
    }

    // Goal: memtables of keys only start a compaction at no more than half the configured
    // slowdown and stop writes at twice that, whatever the scale, so that a follower catching
    // up waits for compactions of at most that many files; unscaled they are as configured.
    #[test]
    fn level0_triggers_for_keys_only_bound_level0() {
        let configured = Level0Triggers {
            compaction: 8,
            slowdown: 40,
            stop: 64,
        };
        let bounded = Level0Triggers {
            compaction: 20,
            slowdown: 30,
            stop: 40,
        };
        assert_eq!(configured.scaled_keys_only(32), bounded);
        assert_eq!(configured.scaled_keys_only(u32::MAX), bounded);
        assert_eq!(configured.scaled_keys_only(1), configured);
        assert_eq!(
            configured.scaled_keys_only(2),
            Level0Triggers {
                compaction: 16,
                slowdown: 24,
                stop: 32
            }
        );
        // Always in order, so that a compaction starts before writes wait for one.
        for slowdown in [0, 1, 2, 3, 7, 1 << 20] {
            let t = Level0Triggers {
                compaction: 1,
                slowdown,
                stop: 1,
            }
            .scaled_keys_only(64);
            assert!(t.compaction < t.slowdown && t.slowdown < t.stop, "{t:?}");
        }
    }

    // Goal: a store keeping its documents in the WAL bounds level 0 while tailing
    // (`scaled_keys_only`); one keeping them in the store scales its triggers as before.
    #[test]
    fn keys_only_store_bounds_level0_while_tailing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let triggers = |path: &str, documents_in_wal: bool| {
            let store = open_in_mode(&dir.path().join(path), documents_in_wal);
            (
                store.level0_triggers_for(true),
                store.level0_triggers_for(false),
            )
        };
        let configured = StoreOptions::default();
        let configured = Level0Triggers {
            compaction: configured.level0_compaction_trigger,
            slowdown: configured.level0_slowdown_trigger,
            stop: configured.level0_stop_trigger,
        };
        let (tailing, leading) = triggers("in-wal", true);
        assert_eq!(tailing, configured.scaled_keys_only(32));
        assert_eq!(tailing.stop, 40);
        assert_eq!(leading, configured);
        let (tailing, leading) = triggers("in-store", false);
        assert_eq!(tailing, configured.scaled(4));
        assert_eq!(leading, configured);
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
}
