//! What a store is opened with (ArangoDB's `--rocksdb.*` options) and what it reports of its
//! memory. How these become RocksDB's own options is `tuning`'s concern.

use rocksdb::DBCompressionType;

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

    pub(super) fn rocksdb(self) -> DBCompressionType {
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
/// RocksDB's background jobs (flushes and compactions) are as many as the machine has cores
/// (`tuning::background_jobs`), as ArangoDB's `--rocksdb.max-background-jobs` defaults to.
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
    /// level below, so waiting for more files than RocksDB's 4 takes a large share of
    /// compaction out of a follower's catch-up, for at most a few more bloom filters a lookup
    /// checks.
    pub level0_compaction_trigger: u32,
    /// Bytes of compressed keys in the first level below level 0, each level below ten times
    /// the one above it (`--rocksdb.max-bytes-for-level-base`). A level-0 compaction rewrites
    /// up to that much. The store's tables hold keys and blob references only, about 10 bytes a
    /// document compressed, so RocksDB's 256 MiB would keep every key of tens of millions of
    /// documents in one level, all of them rewritten by every level-0 compaction: a cost that
    /// grows with the store. 8 MiB is the level-0 files that start a compaction (8) times the
    /// keys of one 64 MiB memtable (~1 MiB); below that, level 0's size starts compactions
    /// before its file count does.
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
    /// documents. Sticky: once a store has used it, it always does. Before retention deletes a
    /// WAL segment, the documents still live in it move to the store's value files
    /// (`DocStore::prepare_collection`).
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
