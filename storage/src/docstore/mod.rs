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
//!   tick that wrote it and is spliced in when the document is read), or `rev` alone for a
//!   document kept in the WAL (`document`);
//! - column family `meta`: `applied_tick` (u64 LE), `db/{name}` (database JSON),
//!   `col/{id}` (collection JSON), `count/{id}` (u64 LE), `digest/{id}` (the collection's
//!   digest: XOR u128 LE, largest revision u64 LE; `digest`), `out/{id}` (JSON of a collection
//!   that exists on the leader but that a follower's collection filter left out) (`catalog`);
//! - file `DIGESTS-UNSURE` (decimal collection ids, one per line) while a restore may have left
//!   those collections' digests behind their documents on disk (`digest`).
//!
//! Only one thread applies (the store writer, `writer`; one group's batch is built in `apply`).
//! Readers (`read`) read RocksDB directly and the catalog through an `Arc` swapped after each
//! applied change of databases or collections. A store keeping its documents in the WAL moves
//! those still live out of segments retention lets go into value files (`collect`, `values`).
//! `options` is what a store is opened with, `tuning` how RocksDB is set up from it and
//! adjusted while a follower tails its leader.

mod apply;
mod catalog;
mod collect;
mod digest;
mod document;
mod filter;
mod options;
mod physical;
mod read;
mod restore;
mod snapshot;
mod tuning;
mod values;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rocksdb::{
    Cache, ColumnFamilyDescriptor, FlushOptions, ReadOptions, ReadTier, WriteBufferManager,
    WriteOptions, DB,
};

pub use self::apply::DatabaseTotals;
pub use self::apply::{ApplyContext, ApplyStats};
pub use self::catalog::{Catalog, CollectionInfo, DatabaseInfo, KeyOptions, SYSTEM_DATABASE};
use self::collect::PendingRewrite;
pub use self::collect::{PreparedCollection, PreparedRewrite, SegmentSample};
pub use self::digest::{pair_hash, Digest};
pub use self::document::{with_rev, without_rev, StoredDocument};
pub use self::filter::{CollectionFilter, DatabaseRule, Restrict, StoreFilter};
pub use self::options::{BlobCompression, StoreMemory, StoreOptions};
pub use self::physical::{physical_id, IncomingFile, PhysicalFile, PHYSICAL_ID_BASE};
pub use self::read::KeyRange;
pub use self::restore::{CollectionRestore, RestoreStats, Restored};
pub use self::snapshot::StoreSnapshot;
use self::tuning::Tuned;
pub use self::tuning::{
    Level0Triggers, FAR_BEHIND_TOTAL_WRITE_BUFFER_BYTES_KEYS_ONLY, MIN_TABLE_FILE_BYTES,
    TAILING_MEMTABLE_BYTES, TAILING_MEMTABLE_BYTES_KEYS_ONLY, TAILING_WRITE_BUFFERS_KEYS_ONLY,
};
use self::values::ValueFiles;
pub use self::writer::{
    collect_wal_segment, Damage, StoreWriter, StoreWriterOptions, StoreWriterTotals,
};
use crate::error::{Error, Result};
use crate::tick::Tick;
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

/// The document store.
impl Drop for DocStore {
    fn drop(&mut self) {
        // Every restore step ended with a flush, unless one failed (`busy`): the digests on
        // disk match their documents and the unsure file may go.
        let unsure = self.unsure.get_mut().unwrap_or_else(|p| p.into_inner());
        if unsure.stale().is_empty() && !unsure.ids.is_empty() {
            if let Err(error) = digest::write_unsure(&self.path, &Default::default()) {
                tracing::warn!("could not remove the store's unsure-digests file: {error}");
            }
        }
    }
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
    /// The collections' digests (`digest`), written with their counts; a collection missing
    /// here has none known.
    digests: Mutex<HashMap<u64, Digest>>,
    /// The collections a restore is changing (`DIGESTS-UNSURE`).
    unsure: Mutex<digest::Unsure>,
    applied: AtomicU64,
    /// The applied tick last written to the store (`APPLIED_TICK`): never past the WAL's durable
    /// tick, so a restart replays from a tick its WAL still has. Below `applied` while blocks from
    /// a leader are applied before they are durable here; replaying them again is harmless.
    recorded: AtomicU64,
    /// `APPLIED_MAX` as loaded: a replay looks up inserts up to it, which the store may hold.
    applied_max: AtomicU64,
    /// The collections this store keeps, if not all (a follower's `restrictCollections`).
    filter: RwLock<Option<Arc<StoreFilter>>>,
    /// Apply conflicts still to be skipped rather than stop the store writer (a follower's
    /// `ignoreErrors`; `u64::MAX`: all of them).
    ignore_conflicts: AtomicU64,
    /// What was applied per database while databases are kept one by one.
    database_totals: Mutex<HashMap<String, DatabaseTotals>>,
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
    /// Held while WAL blocks are applied and while a restore step changes the store, so neither
    /// works from a catalog or counts the other is changing.
    apply_lock: restore::ApplyLock,
    /// The documents' column family options, for the store files a restore writes: those
    /// holding documents (`sst_options`) and those holding only keys and the ticks of documents
    /// kept in the WAL (`sst_key_options`).
    sst_options: rocksdb::Options,
    sst_key_options: rocksdb::Options,
}

impl DocStore {
    /// Opens (creating if needed) the store in `path`, with the default options.
    pub fn open(path: impl AsRef<Path>) -> Result<DocStore> {
        DocStore::open_with(path, &StoreOptions::default())
    }

    /// Opens (creating if needed) the store in `path`.
    pub fn open_with(path: impl AsRef<Path>, store_options: &StoreOptions) -> Result<DocStore> {
        let path = path.as_ref().to_path_buf();
        let Tuned {
            options,
            docs,
            meta,
            cache,
            write_buffer_manager,
            write_buffer_bytes,
            write_buffers,
            level0_triggers,
        } = Tuned::new(store_options)?;
        // A restore's files are written at ingest speed. Documents in them are compressed as the
        // store compresses documents in its blob files (`--rocksdb.blob-compression-type`, none
        // by default): compressing them with lz4 took a fifth of a restore's CPU. Files of keys
        // alone use lz4, as the upper levels; compactions later give the bottommost level its
        // own compression.
        let mut sst_options = docs.clone();
        sst_options.set_compression_type(store_options.blob_compression.rocksdb());
        sst_options.set_bottommost_compression_type(store_options.blob_compression.rocksdb());
        let mut sst_key_options = docs.clone();
        sst_key_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        sst_key_options.set_bottommost_compression_type(rocksdb::DBCompressionType::Lz4);
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
            digests: Mutex::new(HashMap::new()),
            unsure: Mutex::new(digest::Unsure::default()),
            applied: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            applied_max: AtomicU64::new(0),
            filter: RwLock::new(None),
            ignore_conflicts: AtomicU64::new(0),
            database_totals: Mutex::new(HashMap::new()),
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
            apply_lock: Mutex::new(()),
            sst_options,
            sst_key_options,
        };
        let mut store = store;
        store.documents_in_wal = store.keep_documents_in_wal(store_options.documents_in_wal)?;
        store.tailing_write_buffer_bytes = tuning::tailing_memtable_bytes(
            store_options,
            store.documents_in_wal,
            write_buffer_bytes,
        );
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
        store.tune_open_store()?;
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
        let (catalog, counts, mut digests) = self.load_catalog()?;
        // Digests a restore was changing when the store stopped may not match the documents
        // that reached the disk: they are forgotten (`digest`).
        let unsure = match digest::read_unsure(&self.path)? {
            Some(ids) => ids,
            None => digests.keys().copied().collect(),
        };
        if !unsure.is_empty() {
            let mut batch = rocksdb::WriteBatch::default();
            for id in &unsure {
                batch.delete_cf(meta, digest::digest_key(*id));
                digests.remove(id);
            }
            self.write(batch)?;
            self.flush()?;
            tracing::warn!(collections = ?unsure, "restores were cut short: these collections' digests are unknown until a sync sets them");
            digest::write_unsure(&self.path, &Default::default())?;
        }
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()) = counts;
        *self.digests.lock().unwrap_or_else(|p| p.into_inner()) = digests;
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

    /// The digest of collection `id`, if known (`digest`).
    pub fn digest(&self, id: u64) -> Option<Digest> {
        self.digests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
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

    /// Applies blocks in tick order on the calling thread (the caller is the single store
    /// writer).
    pub fn apply(&self, blocks: &[Block]) -> Result<ApplyStats> {
        apply::apply(
            self,
            blocks,
            &mut ApplyContext::serial(),
            apply::Mode::Next {
                durable: Tick::new(u64::MAX),
            },
        )
    }

    /// Applies what `filter` keeps of the records `after..=through` of `blocks` (a range the
    /// store applied before while leaving them out), writing no applied tick. Documents are
    /// stored with their bytes, never as WAL positions. The caller is the single store writer.
    pub fn catch_up(
        &self,
        blocks: &[Block],
        context: &mut ApplyContext,
        after: Tick,
        through: Tick,
        filter: Arc<StoreFilter>,
    ) -> Result<ApplyStats> {
        apply::apply(
            self,
            blocks,
            context,
            apply::Mode::CatchUp {
                after,
                through,
                filter,
            },
        )
    }

    /// Applies blocks in tick order with the threads of `context`; what becomes visible is the
    /// same as with `apply`, all at once. The applied tick written with them is limited to
    /// `durable`, the WAL's durable tick (see `record_applied`).
    pub fn apply_with(
        &self,
        blocks: &[Block],
        context: &mut ApplyContext,
        durable: Tick,
    ) -> Result<ApplyStats> {
        let stats = apply::apply(self, blocks, context, apply::Mode::Next { durable })?;
        if stats.removals + stats.replaced > 0 {
            self.dead_since_look
                .fetch_add(stats.removals + stats.replaced, Ordering::AcqRel);
        }
        Ok(stats)
    }

    /// From the next applied group on, applies only the records of collections `filter`
    /// admits (`None`: all of them). A follower sets it from its applier configuration.
    pub fn set_filter(&self, filter: Option<CollectionFilter>) {
        self.set_store_filter(filter.map(StoreFilter::All));
    }

    /// From the next applied group on, applies what `filter` keeps (`None`: everything). To
    /// change which databases are kept while a store writer runs, go through it
    /// (`StoreWriter::admit_database`, `StoreWriter::leave_out_database`), which knows the tick
    /// at which the change takes effect.
    pub fn set_store_filter(&self, filter: Option<StoreFilter>) {
        let filter = filter.filter(|f| !f.keeps_all()).map(Arc::new);
        *self.filter.write().unwrap_or_else(|p| p.into_inner()) = filter;
    }

    /// Lets the next `count` apply conflicts be skipped (and counted) instead of stopping the
    /// store writer; `u64::MAX` skips them all.
    pub fn set_ignore_conflicts(&self, count: u64) {
        self.ignore_conflicts.store(count, Ordering::Release);
    }

    /// Whether a conflict may be skipped when `already` were skipped in the same apply call
    /// (a call that fails uses none of the allowance).
    pub(super) fn may_ignore_conflict(&self, already: u64) -> bool {
        self.ignore_conflicts.load(Ordering::Acquire) > already
    }

    /// Takes `count` conflicts skipped by an apply call that was written from the allowance.
    pub(super) fn used_ignored_conflicts(&self, count: u64) {
        if count == 0 {
            return;
        }
        let _ = self
            .ignore_conflicts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| match left {
                u64::MAX => None,
                left => Some(left.saturating_sub(count)),
            });
    }

    /// What was applied of database `db` since this store opened, while databases were kept
    /// one by one.
    pub fn database_totals(&self, db: &str) -> DatabaseTotals {
        self.database_totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(db)
            .copied()
            .unwrap_or_default()
    }

    pub(super) fn add_database_totals(&self, list: Vec<(String, DatabaseTotals)>) {
        if list.is_empty() {
            return;
        }
        let mut totals = self
            .database_totals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (db, add) in list {
            let sum = totals.entry(db).or_default();
            sum.documents += add.documents;
            sum.removals += add.removals;
            sum.excluded += add.excluded;
        }
    }

    pub fn filter(&self) -> Option<Arc<StoreFilter>> {
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
