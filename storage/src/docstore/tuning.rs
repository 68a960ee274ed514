//! How the store tunes RocksDB: the options a store is opened with, derived from its
//! `StoreOptions`, and what changes while it runs (memtable sizes and level-0 triggers as a
//! follower tails its leader or falls behind, blob garbage collection while there is garbage).

use std::sync::atomic::Ordering;

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, DBCompressionType, Env, Options,
    WriteBufferManager,
};

use super::options::{StoreMemory, StoreOptions};
use super::{store_error, DocStore};
use crate::error::Result;

/// Bytes a file written by a flush or a compaction gathers before each write (RocksDB's default
/// is 1 MiB): one such buffer per file being written is held in memory, and writes of 256 KiB
/// cost as little a system call per byte.
const WRITABLE_FILE_BUFFER_BYTES: u64 = 256 << 10;

/// Flushes and compactions hand what they wrote to the disk every this many bytes, instead of
/// in one burst at the end of each file: a follower catching up writes as fast as the disk
/// takes, and steady writeback keeps that even.
const BYTES_PER_SYNC: u64 = 1 << 20;

/// Background jobs (flushes and compactions) when the machine's cores are unknown: one of each
/// at a time.
const BACKGROUND_JOBS_UNKNOWN_CORES: usize = 2;

/// The smallest memtable a store uses, whatever it is configured with.
const MIN_MEMTABLE_BYTES: usize = 1 << 20;

/// The range of memtables per column family a store holds (`StoreOptions::write_buffers_max`):
/// at least one being filled while another is flushed.
const WRITE_BUFFERS_MIN: usize = 2;
const WRITE_BUFFERS_MAX: usize = 64;

/// Bits of bloom filter per key: about 1% false positives.
const BLOOM_BITS_PER_KEY: f64 = 10.0;

/// Values from this size on go to blob files; smaller documents stay in the LSM tree.
const MIN_BLOB_SIZE: u64 = 256;

/// Bytes of one blob file.
const BLOB_FILE_BYTES: u64 = 256 << 20;

/// Table files in the first level below level 0 (`StoreOptions::max_bytes_for_level_base`),
/// and how much larger they are each level down: a store of 1G documents (~10 GB of keys) then
/// has about a thousand table files rather than ten thousand.
const TABLE_FILES_IN_LEVEL_BASE: u64 = 4;
const TABLE_FILE_SIZE_MULTIPLIER: i32 = 2;

/// Bytes of one memtable of a follower keeping up with its leader (`DocStore::set_tailing`).
pub const TAILING_MEMTABLE_BYTES: usize = 16 << 20;

/// The same for a store keeping its documents in the WAL, whose memtables hold keys and ticks
/// only (~100 bytes a document): 2 MiB hold as many documents of ~1 KB as 32 MiB holding the
/// documents too. Smaller memtables lowered a follower's memory, catching up and following,
/// in the same time and with the same lag; at this size they flush twice as often as at 4 MiB,
/// for a slightly longer tail of the lag.
pub const TAILING_MEMTABLE_BYTES_KEYS_ONLY: usize = 2 << 20;

/// Memtables of the documents' column family, the one being filled and those waiting for their
/// flush, that a store keeping its documents in the WAL holds while it follows a leader (at most
/// `StoreOptions::write_buffers_max`): writes wait for a flush rather than fill a third one. Far
/// behind, flushes of small memtables of keys fall behind applying, and more memtables waiting
/// for them only raised a follower's peak memory, without catching up sooner.
pub const TAILING_WRITE_BUFFERS_KEYS_ONLY: usize = 2;

/// Bytes of all memtables together that a store keeping its documents in the WAL holds while it
/// follows a leader far behind (`DocStore::set_far_behind`; at most
/// `StoreOptions::total_write_buffer_bytes`): its tailing memtable and a quarter more, so that
/// once it is full, writes wait for its flush before the next one grows past its first arena
/// block. Far behind, memtables fill faster than they flush, and a follower held two full ones
/// where one close behind holds one and part of the next; a larger budget, with room for half
/// a memtable more, made no difference.
pub const FAR_BEHIND_TOTAL_WRITE_BUFFER_BYTES_KEYS_ONLY: usize =
    TAILING_MEMTABLE_BYTES_KEYS_ONLY + TAILING_MEMTABLE_BYTES_KEYS_ONLY / 4;

/// Arena blocks of the `meta` column family's memtables. It holds a few keys rewritten with
/// every write (the applied tick), so RocksDB's block of an eighth of the memtable size, up to
/// 1 MiB, would be mostly empty, yet count whole against the memtables' total (and so against
/// `FAR_BEHIND_TOTAL_WRITE_BUFFER_BYTES_KEYS_ONLY`).
pub(super) const META_ARENA_BLOCK_BYTES: usize = 64 << 10;

/// The smallest table file, and so level, the document store makes
/// (`StoreOptions::max_bytes_for_level_base`).
pub const MIN_TABLE_FILE_BYTES: u64 = 64 << 10;

/// How hard RocksDB tries to take the blocks of a table file out of the block cache when
/// compaction makes the file obsolete (its `uncache_aggressiveness`; 300 is what its authors
/// expect to make the default). Every file a flush or compaction writes is opened once to be
/// checked, and its index and filter blocks are loaded into the cache then; without this they
/// stay there after the file is gone until the cache evicts them, so the cache fills with the
/// metadata of dead files at the speed the store is written, not read.
const UNCACHE_AGGRESSIVENESS: &str = "300";

/// Blob garbage collection is switched on once this fraction of the live blob files' bytes is
/// garbage (documents replaced or removed), and off again below `BLOB_GC_OFF`. PostgreSQL's
/// autovacuum starts at 20% dead rows too (`autovacuum_vacuum_scale_factor`).
const BLOB_GC_ON: f64 = 0.2;
const BLOB_GC_OFF: f64 = 0.1;

/// RocksDB's shards of its cache of open files at most (its default, 64 shards), and the files
/// each shard is given at least (`table_cache_shard_bits`).
const TABLE_CACHE_SHARD_BITS_MAX: u32 = 6;
const FILES_PER_TABLE_CACHE_SHARD: u32 = 64;

/// The largest level-0 trigger RocksDB takes.
const LEVEL0_TRIGGER_MAX: u32 = 1 << 16;

/// RocksDB's background jobs: as many as the machine has cores (ArangoDB's default for
/// `--rocksdb.max-background-jobs`), so that flushes and compactions run beside each other
/// without more threads than the cores can run.
pub(super) fn background_jobs() -> i32 {
    let cores =
        std::thread::available_parallelism().map_or(BACKGROUND_JOBS_UNKNOWN_CORES, |n| n.get());
    i32::try_from(cores).unwrap_or(i32::MAX)
}

/// Shards of RocksDB's cache of open files for at most `max_open_files` of them (-1: no limit).
/// Each shard keeps at least one file open, so RocksDB's 64 shards would hold up to 64 files
/// under a smaller budget, past a process's descriptor limit that the budget was chosen to
/// keep; a shard per 64 files keeps the budget.
fn table_cache_shard_bits(max_open_files: i32) -> i32 {
    if max_open_files < 0 {
        return TABLE_CACHE_SHARD_BITS_MAX as i32;
    }
    let shards = (max_open_files as u32 / FILES_PER_TABLE_CACHE_SHARD).max(1);
    (31 - shards.leading_zeros()).min(TABLE_CACHE_SHARD_BITS_MAX) as i32
}

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
        let clamp = |n: u32| n.clamp(1, LEVEL0_TRIGGER_MAX);
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
    /// in the WAL). Their level-0 files are small, so what starts a compaction is level 0's
    /// size reaching the level base, long before `scaled`'s count, and `scaled`'s stalls never
    /// come: a follower catching up outran its low-priority compactions by dozens of files, and
    /// each compaction then rewrote them all at once, loading the new files' index and filter
    /// partitions while the old ones were still cached. So the count that starts a compaction
    /// stays near where the size does (half the configured slowdown: 20), writes slow down at
    /// 1.5 times and stop at twice that (30 and 40). A follower keeping up with its leader
    /// stays below that, so only one catching up waits, for compactions of at most ~40 files.
    pub fn scaled_keys_only(self, scale: u32) -> Level0Triggers {
        if scale <= 1 {
            return self.scaled(1);
        }
        let clamp = |n: u32| n.clamp(1, LEVEL0_TRIGGER_MAX);
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

/// RocksDB's options for a store opened with `StoreOptions`, and what the store keeps of them.
pub(super) struct Tuned {
    /// The database's options, and those of the `docs` and `meta` column families.
    pub(super) options: Options,
    pub(super) docs: Options,
    pub(super) meta: Options,
    pub(super) cache: Cache,
    pub(super) write_buffer_manager: Option<WriteBufferManager>,
    /// Memtable bytes and memtables held, and the level-0 triggers, as configured and bounded.
    pub(super) write_buffer_bytes: usize,
    pub(super) write_buffers: usize,
    pub(super) level0_triggers: Level0Triggers,
}

impl Tuned {
    /// The options for `store_options`.
    pub(super) fn new(store_options: &StoreOptions) -> Result<Tuned> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // The applied tick is in `meta`, the documents in `docs`: flush them together.
        options.set_atomic_flush(true);
        let background_jobs = background_jobs();
        options.increase_parallelism(background_jobs);
        if store_options.low_priority_compactions {
            let mut env = Env::new().map_err(|e| store_error("open the environment", e))?;
            env.lower_thread_pool_cpu_priority();
            options.set_env(&env);
        }
        options.set_max_background_jobs(background_jobs);
        options.set_bytes_per_sync(BYTES_PER_SYNC);
        options.set_writable_file_max_buffer_size(WRITABLE_FILE_BUFFER_BYTES);
        options.set_max_open_files(store_options.max_open_files.max(-1));
        options
            .set_table_cache_num_shard_bits(table_cache_shard_bits(store_options.max_open_files));
        let write_buffer_bytes = store_options.write_buffer_bytes.max(MIN_MEMTABLE_BYTES);
        options.set_write_buffer_size(write_buffer_bytes);
        let write_buffers = store_options
            .write_buffers_max
            .clamp(WRITE_BUFFERS_MIN, WRITE_BUFFERS_MAX);
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
        table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        // Index and filter in partitions of 4 KiB under a small top level, which stays in the
        // cache: a lookup loads the partitions it needs, not a file's whole filter, so a store
        // whose filters outgrow the block cache (10 bits a key: 1.25 GB at 1G documents) reads
        // 4 KiB on a miss rather than the filter of a whole file. Building a file then holds
        // one partition's key hashes, not the file's, and lookups are no slower for it.
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_pin_top_level_index_and_filter(true);
        let mut docs = options.clone();
        docs.set_block_based_table_factory(&table);
        // Documents live in blob files (RocksDB's integrated key-value separation): each one is
        // written once when its memtable is flushed, and compaction then moves only keys and
        // blob references. Compacting whole documents through the levels (and zstd at the
        // bottom) took much of the server's CPU under batch inserts. Replaced and removed
        // documents are reclaimed by blob garbage collection during compaction.
        //
        // Blobs are compressed one document at a time, which gains little on small documents
        // and costs the one flush thread, which a follower's catch-up waits for. So they are
        // stored as they are unless the flag asks; the WAL and the wire compress whole blocks,
        // where repeated field names do compress.
        docs.set_enable_blob_files(true);
        docs.set_min_blob_size(MIN_BLOB_SIZE);
        docs.set_blob_file_size(BLOB_FILE_BYTES);
        docs.set_blob_compression_type(store_options.blob_compression.rocksdb());
        // Off until `tune_blob_gc` finds garbage: RocksDB's collection moves every live
        // document of the oldest blob files whenever a compaction meets them, garbage or not,
        // which under inserts alone rewrites documents for nothing.
        docs.set_enable_blob_gc(false);
        docs.set_blob_gc_age_cutoff(store_options.blob_gc_age_cutoff.clamp(0.0, 1.0));
        docs.set_compression_type(DBCompressionType::Lz4);
        // Small levels of small files (`StoreOptions::max_bytes_for_level_base`), larger a
        // level down (`TABLE_FILE_SIZE_MULTIPLIER`).
        let level_base = store_options
            .max_bytes_for_level_base
            .max(MIN_TABLE_FILE_BYTES);
        docs.set_max_bytes_for_level_base(level_base);
        docs.set_target_file_size_base(
            (level_base / TABLE_FILES_IN_LEVEL_BASE).max(MIN_TABLE_FILE_BYTES),
        );
        docs.set_target_file_size_multiplier(TABLE_FILE_SIZE_MULTIPLIER);
        docs.set_bottommost_compression_type(DBCompressionType::Zstd);
        let mut meta = options.clone();
        meta.set_arena_block_size(META_ARENA_BLOCK_BYTES);
        Ok(Tuned {
            options,
            docs,
            meta,
            cache,
            write_buffer_manager,
            write_buffer_bytes,
            write_buffers,
            level0_triggers,
        })
    }
}

/// Bytes of one memtable while tailing (`StoreOptions::tailing_write_buffer_bytes`), for a
/// store in the mode `documents_in_wal` whose other memtables are `write_buffer_bytes`.
pub(super) fn tailing_memtable_bytes(
    store_options: &StoreOptions,
    documents_in_wal: bool,
    write_buffer_bytes: usize,
) -> usize {
    match store_options.tailing_write_buffer_bytes {
        None if documents_in_wal => TAILING_MEMTABLE_BYTES_KEYS_ONLY,
        None => TAILING_MEMTABLE_BYTES,
        Some(0) => write_buffer_bytes,
        Some(bytes) => bytes.max(MIN_MEMTABLE_BYTES),
    }
}

impl DocStore {
    /// Puts in force what RocksDB takes only once the store is open.
    pub(super) fn tune_open_store(&self) -> Result<()> {
        self.db
            .set_options_cf(
                self.docs(),
                &[("uncache_aggressiveness", UNCACHE_AGGRESSIVENESS)],
            )
            .map_err(|e| store_error("set uncache_aggressiveness", e))
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
    /// Small memtables while tailing: the flush of a large memtable takes the CPU from applying
    /// long enough to be the slow tail of a follower's lag, and large memtables hold more
    /// memory. Large ones far behind: small ones catch up slower (more, smaller flushes and
    /// level-0 files to compact).
    ///
    /// The level-0 triggers scale with the memtables (`level0_triggers_for`): with the file
    /// count of large memtables, a follower with small ones would compact far more often than
    /// its leader.
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
}

#[cfg(test)]
mod tests;
