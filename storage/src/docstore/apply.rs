//! Applying WAL blocks to the store: one RocksDB write batch per call, holding the data and the
//! new applied tick, so a group of blocks, and every transaction in it, becomes visible at once.
//!
//! The work is spread over the threads of an [`ApplyContext`]. Blocks are decompressed and
//! decoded in parallel; then the document records are partitioned by a hash of collection and
//! key, and each partition, taking its records in tick order (so every key's changes keep their
//! order), looks up which of its keys exist and writes its puts and removals into a batch of its
//! own. Records that change collections or databases (create, drop, truncate, rename) are
//! barriers: the document records before them are done first. The partitions' batches and the
//! barriers' changes are joined, in order, into the one batch that is written.
//!
//! Counts stay exact and replays stay idempotent because every put or remove first looks at
//! whether its key exists (one batched multi-get per partition, then the partition's overlay of
//! the keys it changed earlier in the same call). Records of a collection that no longer exists
//! are skipped (a write that raced with the drop of its collection); records of a transaction
//! aborted in the same block are skipped too. Index records are accepted and ignored (no
//! secondary indexes yet). With a [`StoreFilter`] set on the store, the records of the
//! databases and collections it leaves out are not applied and are counted as excluded, and
//! those below a database's floor are skipped.
//!
//! A **catch-up** (`catch_up`) applies the records of one database from an older range of the
//! log, which the store skipped while that database was left out: it writes their documents
//! and catalog changes but no applied tick, and keeps every document's bytes in the store
//! (the WAL segments it read may have had their live documents collected already).
//!
//! This file is longer than most because it is one step: decoding, partitioning, barriers and
//! joining share the state of the call (`Applying`) and are read together.

use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rayon::prelude::*;
use rocksdb::WriteBatch;
use rustc_hash::{FxHashMap, FxHashSet, FxHasher};

use super::digest::{digest_key, Digest};
use super::document::doc_key;
use super::{
    Catalog, CollectionInfo, DatabaseInfo, DocStore, StoreFilter, APPLIED_MAX, APPLIED_TICK,
};
use crate::error::{Error, Result};
use crate::tick::{Tick, TickRange};
use crate::wal::block::Compression;
use crate::wal::{Block, Record, RecordType};

/// Below this many records a call is applied on the calling thread alone: handing work to other
/// threads costs more than it saves.
const PARALLEL_RECORDS_MIN: usize = 1024;

/// Decompression buffers kept between calls, at most this many and this large each.
const SCRATCH_KEPT: usize = 64;
const SCRATCH_BYTES_KEPT: usize = 8 << 20;

/// What one `apply` call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub blocks: u64,
    pub records: u64,
    /// Document puts applied.
    pub documents: u64,
    /// Document removals applied.
    pub removals: u64,
    /// Document puts that replaced a document (with `removals`, what makes stored documents
    /// dead).
    pub replaced: u64,
    /// Records skipped (their collection is gone, or their transaction aborted).
    pub skipped: u64,
    /// Records left out by the store's collection filter (ArangoDB's `totalOperationsExcluded`).
    pub excluded: u64,
    /// Conflicting records skipped because the store was allowed to (`ignoreErrors`).
    pub ignored: u64,
    pub ticks: Option<TickRange>,
}

/// The threads that apply, and buffers reused from one call to the next.
pub struct ApplyContext {
    pool: Option<rayon::ThreadPool>,
    threads: usize,
    scratch: Vec<Vec<u8>>,
}

impl ApplyContext {
    /// Applies on the calling thread only.
    pub fn serial() -> ApplyContext {
        ApplyContext {
            pool: None,
            threads: 1,
            scratch: Vec::new(),
        }
    }

    /// Applies with `threads` threads (the calling thread waits while they work).
    pub fn with_threads(threads: usize) -> Result<ApplyContext> {
        ApplyContext::with_threads_at_nice(threads, 0)
    }

    /// `with_threads`, the threads at nice value `nice` (best effort, as the store writer's own
    /// thread: `fs::set_thread_nice_or_say`), so that all of an apply runs at one priority.
    pub fn with_threads_at_nice(threads: usize, nice: i32) -> Result<ApplyContext> {
        if threads <= 1 {
            return Ok(ApplyContext::serial());
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("store-apply-{i}"))
            .start_handler(move |_| crate::fs::set_thread_nice_or_say(nice))
            .build()
            .map_err(|e| Error::Config(format!("cannot start {threads} apply threads: {e}")))?;
        Ok(ApplyContext {
            pool: Some(pool),
            threads,
            scratch: Vec::new(),
        })
    }
}

fn invalid(reason: &'static str) -> Error {
    Error::InvalidBlock(reason)
}

fn collection_id(record: &Record<'_>) -> Result<u64> {
    record
        .collection
        .parse::<u64>()
        .map_err(|_| invalid("record names an invalid collection id"))
}

/// A record to apply, at its tick.
struct Item<'a> {
    tick: Tick,
    record: Record<'a>,
    /// Whether a document it puts may be kept in the WAL only (`DocStore::documents_in_wal`):
    /// not when its block is one large lz4 payload, as a leader keeping documents itself writes
    /// them, since every later read of the document would decompress the whole block.
    in_wal: bool,
}

/// Largest raw payload of a block compressed as a whole whose documents a store may still keep
/// in the WAL only: a read decompresses at most twice a frame (`FRAME_RAW_BYTES`).
const WHOLE_BLOCK_IN_WAL_MAX: u32 = 2 * crate::wal::block::FRAME_RAW_BYTES as u32;

/// Whether the documents of `block` may be kept in the WAL only (see `Item::in_wal`).
fn keeps_in_wal(store: &DocStore, block: &Block) -> bool {
    let header = block.header();
    store.documents_in_wal()
        && (header.compression != Compression::Lz4 || header.raw_bytes <= WHOLE_BLOCK_IN_WAL_MAX)
}

/// The records of `block` after `applied`, without those of transactions aborted in the block;
/// and how many were left out that way.
fn decode<'a>(
    block: &'a Block,
    scratch: &'a mut Vec<u8>,
    applied: Tick,
    in_wal: bool,
) -> Result<(Vec<Item<'a>>, u64)> {
    let mut items = Vec::with_capacity(block.record_count() as usize);
    let mut aborted = FxHashSet::default();
    for item in block.records(scratch)? {
        let (tick, record) = item.map_err(invalid)?;
        if record.kind == RecordType::TransactionAbort {
            aborted.insert(record.tid);
        }
        if tick > applied {
            items.push(Item {
                tick,
                record,
                in_wal,
            });
        }
    }
    let before = items.len();
    if !aborted.is_empty() {
        items.retain(|i| i.record.tid == 0 || !aborted.contains(&i.record.tid));
    }
    let skipped = (before - items.len()) as u64;
    Ok((items, skipped))
}

/// Which of `parts` partitions a document record belongs to.
fn partition_of(record: &Record<'_>, parts: usize) -> usize {
    if parts == 1 {
        return 0;
    }
    let mut hasher = FxHasher::default();
    record.collection.hash(&mut hasher);
    record.key.hash(&mut hasher);
    // Multiply-shift maps the hash onto 0..parts evenly.
    ((u128::from(hasher.finish()) * parts as u128) >> 64) as usize
}

/// One partition's keys: the revision of each that exists, as of the records applied so far in
/// this call.
#[derive(Default)]
struct Partition {
    exists: FxHashMap<Vec<u8>, Option<u64>>,
    /// Collections emptied (truncated or dropped) earlier in this call: the store still shows
    /// their old documents until the call's batch is written, so their keys are not looked up.
    emptied: FxHashSet<u64>,
}

/// What was applied of one database's records (kept only while the store keeps databases one
/// by one, for per-database appliers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatabaseTotals {
    pub documents: u64,
    pub removals: u64,
    pub excluded: u64,
}

/// The totals of `db` in `list`, added if missing (a list of a few databases).
fn tally<'l>(list: &'l mut Vec<(String, DatabaseTotals)>, db: &str) -> &'l mut DatabaseTotals {
    let at = match list.iter().position(|(name, _)| name == db) {
        Some(at) => at,
        None => {
            list.push((db.to_string(), DatabaseTotals::default()));
            list.len() - 1
        }
    };
    &mut list[at].1
}

/// What one partition wrote for one run of document records.
struct PartitionBatch {
    /// Per database, if the store keeps databases one by one.
    by_db: Vec<(String, DatabaseTotals)>,
    batch: WriteBatch,
    /// Change of each collection's count.
    deltas: FxHashMap<u64, i64>,
    /// Change of each collection's digest.
    digests: FxHashMap<u64, Digest>,
    documents: u64,
    removals: u64,
    replaced: u64,
    skipped: u64,
    excluded: u64,
}

/// Where a document record goes.
enum Target {
    /// Its collection does not exist here.
    Gone,
    /// Its collection is left out by the filter.
    Excluded,
    /// The store key, with the collection's id.
    Key(u64, Vec<u8>),
}

impl Partition {
    fn apply(
        &mut self,
        store: &DocStore,
        catalog: &Catalog,
        excluded: &FxHashSet<u64>,
        items: &[&Item<'_>],
        filter: Option<&StoreFilter>,
        lookup_through: Tick,
    ) -> Result<PartitionBatch> {
        // Sized up front: a batch grown by doubling holds up to twice its bytes, and this one is
        // as large as the partition's share of the group (without the documents kept in the WAL,
        // which the batch does not hold).
        let bytes: usize = items
            .iter()
            .map(|i| {
                let data = if i.in_wal { 0 } else { i.record.data.len() };
                data + i.record.key.len() + BATCH_RECORD_OVERHEAD
            })
            .sum();
        let mut out = PartitionBatch {
            batch: WriteBatch::with_capacity_bytes(BATCH_HEADER_BYTES + bytes),
            deltas: FxHashMap::default(),
            digests: FxHashMap::default(),
            documents: 0,
            removals: 0,
            replaced: 0,
            skipped: 0,
            excluded: 0,
            by_db: Vec::new(),
        };
        let per_db = matches!(filter, Some(StoreFilter::Databases(_)));
        if items.is_empty() {
            return Ok(out);
        }
        // Where each record goes, and which keys are not known yet and must be looked up.
        let mut keys: Vec<Target> = Vec::with_capacity(items.len());
        let mut lookup: Vec<usize> = Vec::new();
        for Item { tick, record, .. } in items {
            let id = collection_id(record)?;
            if excluded.contains(&id) {
                keys.push(Target::Excluded);
                continue;
            }
            if filter.is_some_and(|f| f.below_floor(record.db, *tick)) {
                keys.push(Target::Gone);
                continue;
            }
            if catalog.collection_by_id(id).is_none() {
                keys.push(Target::Gone);
                continue;
            }
            let key = doc_key(id, record.key);
            if !self.exists.contains_key(&key) {
                self.exists.insert(key.clone(), None);
                // An insert's key did not exist at its tick (the leader read it under its
                // lock); the state here is that of the tick before, so it is not looked up,
                // unless the store may hold it already.
                let insert = record.kind == RecordType::DocumentInsert && *tick > lookup_through;
                if !self.emptied.contains(&id) && !insert {
                    lookup.push(keys.len());
                }
            }
            keys.push(Target::Key(id, key));
        }
        let docs = store.docs();
        if !lookup.is_empty() {
            let wanted = lookup.iter().filter_map(|&i| match &keys[i] {
                Target::Key(_, key) => Some(key.as_slice()),
                _ => None,
            });
            let found = store.db.batched_multi_get_cf(docs, wanted, false);
            for (&i, value) in lookup.iter().zip(found) {
                let present = value
                    .map_err(|e| super::store_error("read before apply", e))?
                    .map(|value| {
                        value
                            .get(..8)
                            .and_then(super::decode_u64)
                            .ok_or_else(|| super::corrupt("document revision"))
                    })
                    .transpose()?;
                if let Target::Key(_, key) = &keys[i] {
                    if let Some(slot) = self.exists.get_mut(key) {
                        *slot = present;
                    }
                }
            }
        }
        let mut value = Vec::new();
        for (item, key) in items.iter().zip(keys) {
            let (tick, record) = (&item.tick, &item.record);
            let (id, key) = match key {
                Target::Key(id, key) => (id, key),
                Target::Gone => {
                    out.skipped += 1;
                    continue;
                }
                Target::Excluded => {
                    out.excluded += 1;
                    if per_db {
                        tally(&mut out.by_db, record.db).excluded += 1;
                    }
                    continue;
                }
            };
            if per_db {
                let totals = tally(&mut out.by_db, record.db);
                if record.kind.is_put() {
                    totals.documents += 1;
                } else {
                    totals.removals += 1;
                }
            }
            if filter.is_some_and(|f| f.verbose(record.db)) {
                tracing::info!(
                    tick = tick.get(),
                    kind = ?record.kind,
                    database = record.db,
                    collection = id,
                    key = record.key,
                    "applied"
                );
            }
            let now = record.kind.is_put().then_some(tick.get());
            let existed = match self.exists.get_mut(&key) {
                Some(slot) => std::mem::replace(slot, now),
                None => {
                    self.exists.insert(key.clone(), now);
                    None
                }
            };
            let digest = out.digests.entry(id).or_default();
            if let Some(old) = existed {
                digest.remove(record.key.as_bytes(), old);
            }
            if now.is_some() {
                digest.add(record.key.as_bytes(), tick.get());
                if record.key.is_empty() || record.data.first() != Some(&b'{') {
                    return Err(invalid("document record without key or object"));
                }
                value.clear();
                value.extend_from_slice(&tick.get().to_le_bytes());
                // Kept in the WAL, a document is its tick alone (see `decode_document`).
                if !item.in_wal {
                    value.extend_from_slice(record.data);
                }
                out.batch.put_cf(docs, &key, &value);
                if existed.is_some() {
                    out.replaced += 1;
                } else {
                    *out.deltas.entry(id).or_default() += 1;
                }
                out.documents += 1;
            } else {
                out.batch.delete_cf(docs, &key);
                if existed.is_some() {
                    *out.deltas.entry(id).or_default() -= 1;
                }
                out.removals += 1;
            }
        }
        Ok(out)
    }
}

/// The state of one call between barriers.
struct Applying<'s> {
    store: &'s DocStore,
    catalog: Catalog,
    catalog_changed: bool,
    filter: Option<Arc<StoreFilter>>,
    /// The collections whose records are left out: those of `catalog` whose names `filter`
    /// does not admit, and those left out when they were created.
    excluded: FxHashSet<u64>,
    counts: FxHashMap<u64, u64>,
    /// The digests of the collections changed so far (`None`: not known, not kept).
    digests: FxHashMap<u64, Option<Digest>>,
    partitions: Vec<Partition>,
    /// The batches to join, in order.
    pieces: Vec<WriteBatch>,
    /// What was applied per database (see `DatabaseTotals`).
    by_db: Vec<(String, DatabaseTotals)>,
    /// Inserts up to this tick are looked up: the store may hold their keys already (see
    /// `DocStore::applied_max`; a catch-up looks every key up).
    lookup_through: Tick,
}

impl Applying<'_> {
    /// Works out again which collections the filter leaves out, after the catalog changed.
    fn refresh_excluded(&mut self) {
        self.excluded.clear();
        self.excluded.extend(self.catalog.left_out.keys().copied());
        if let Some(filter) = &self.filter {
            self.excluded.extend(
                self.catalog
                    .collections
                    .values()
                    .filter(|c| !filter.admits(&c.database, &c.name))
                    .map(|c| c.id),
            );
        }
    }

    fn count(&mut self, id: u64) -> u64 {
        let store = self.store;
        *self.counts.entry(id).or_insert_with(|| store.count(id))
    }

    /// Applies the document records gathered per partition, then empties the gathering.
    fn run(
        &mut self,
        gathered: &mut [Vec<&Item<'_>>],
        pool: Option<&rayon::ThreadPool>,
        stats: &mut ApplyStats,
    ) -> Result<()> {
        if gathered.iter().all(Vec::is_empty) {
            return Ok(());
        }
        let (store, catalog, excluded) = (self.store, &self.catalog, &self.excluded);
        let (filter, lookup_through) = (self.filter.as_deref(), self.lookup_through);
        let work = |(partition, items): (&mut Partition, &Vec<&Item<'_>>)| {
            partition.apply(store, catalog, excluded, items, filter, lookup_through)
        };
        let batches = match pool {
            Some(pool) => pool.install(|| {
                self.partitions
                    .par_iter_mut()
                    .zip(gathered.par_iter())
                    .map(work)
                    .collect::<Result<Vec<_>>>()
            })?,
            None => self
                .partitions
                .iter_mut()
                .zip(gathered.iter())
                .map(work)
                .collect::<Result<Vec<_>>>()?,
        };
        for part in batches {
            for (id, delta) in part.deltas {
                let count = self.count(id);
                let count = count.saturating_add_signed(delta);
                self.counts.insert(id, count);
            }
            for (id, change) in part.digests {
                let store = self.store;
                if let Some(digest) = self.digests.entry(id).or_insert_with(|| store.digest(id)) {
                    digest.join(&change);
                }
            }
            stats.documents += part.documents;
            stats.removals += part.removals;
            stats.replaced += part.replaced;
            stats.skipped += part.skipped;
            stats.excluded += part.excluded;
            for (db, totals) in part.by_db {
                let sum = tally(&mut self.by_db, &db);
                sum.documents += totals.documents;
                sum.removals += totals.removals;
                sum.excluded += totals.excluded;
            }
            if !part.batch.is_empty() {
                self.pieces.push(part.batch);
            }
        }
        gathered.iter_mut().for_each(Vec::clear);
        Ok(())
    }

    /// Tells the partitions that collection `id` holds no documents from here on.
    fn emptied(&mut self, id: u64) {
        let prefix = id.to_be_bytes();
        for partition in &mut self.partitions {
            partition.exists.retain(|key, _| !key.starts_with(&prefix));
            partition.emptied.insert(id);
        }
    }

    /// Applies a record that changes collections or databases.
    fn barrier(&mut self, tick: Tick, record: &Record<'_>, stats: &mut ApplyStats) -> Result<()> {
        let excluded = stats.excluded;
        let result = self.change(tick, record, stats);
        if stats.excluded > excluded
            && matches!(self.filter.as_deref(), Some(StoreFilter::Databases(_)))
        {
            tally(&mut self.by_db, record.db).excluded += stats.excluded - excluded;
        }
        if result.is_ok() && self.filter.as_ref().is_some_and(|f| f.verbose(record.db)) {
            tracing::info!(tick = tick.get(), kind = ?record.kind, database = record.db, collection = record.collection, "applied");
        }
        // The record may have created, renamed or dropped a collection (barriers are rare, the
        // catalog small).
        self.refresh_excluded();
        result
    }

    /// A conflict with what this store holds at `tick`: skipped and counted while the store
    /// allows it, else the error that stops the store writer before this group.
    fn conflict(&self, tick: Tick, reason: String, stats: &mut ApplyStats) -> Result<()> {
        if self.store.may_ignore_conflict(stats.ignored) {
            tracing::warn!("skipped the record at tick {tick} (ignoreErrors): {reason}");
            stats.ignored += 1;
            return Ok(());
        }
        Err(Error::ApplyConflict { tick, reason })
    }

    /// The collection of database `db` named `name` other than `id`, if there is one.
    fn named_otherwise(&self, db: &str, name: &str, id: u64) -> Option<u64> {
        self.catalog
            .collection(db, name)
            .map(|c| c.id)
            .filter(|&other| other != id)
    }

    fn change(&mut self, tick: Tick, record: &Record<'_>, stats: &mut ApplyStats) -> Result<()> {
        let (docs, meta) = (self.store.docs(), self.store.meta());
        let mut batch = WriteBatch::default();
        if let Some(filter) = &self.filter {
            if filter.below_floor(record.db, tick) {
                stats.skipped += 1;
                return Ok(());
            }
            if filter.rule(record.db).is_none()
                && matches!(
                    record.kind,
                    RecordType::DatabaseCreate | RecordType::DatabaseDrop
                )
            {
                stats.excluded += 1;
                return Ok(());
            }
        }
        if self
            .filter
            .as_ref()
            .is_some_and(|f| f.skips_create_drop(record.db))
            && matches!(
                record.kind,
                RecordType::CollectionCreate
                    | RecordType::CollectionDrop
                    | RecordType::CollectionRename
            )
        {
            stats.excluded += 1;
            return Ok(());
        }
        let collection_record = matches!(
            record.kind,
            RecordType::CollectionDrop
                | RecordType::CollectionTruncate
                | RecordType::CollectionRename
                | RecordType::CollectionChange
        );
        let id = if collection_record {
            collection_id(record)?
        } else {
            0
        };
        if collection_record && self.excluded.contains(&id) {
            stats.excluded += 1;
            // A left-out collection is remembered until it is dropped, under its current name.
            if let Some(info) = self.catalog.left_out.get_mut(&id) {
                if record.kind == RecordType::CollectionDrop {
                    self.catalog.left_out.remove(&id);
                    batch.delete_cf(meta, format!("out/{id}"));
                } else if record.kind == RecordType::CollectionRename {
                    let change: serde_json::Value = serde_json::from_slice(record.data)
                        .map_err(|_| invalid("collection change is not JSON"))?;
                    if let Some(name) = change.get("name").and_then(|v| v.as_str()) {
                        info.name = name.to_string();
                    }
                    let json =
                        serde_json::to_vec(&*info).map_err(|_| invalid("collection definition"))?;
                    batch.put_cf(meta, format!("out/{id}"), json);
                }
                self.catalog_changed = true;
                self.pieces.push(batch);
            }
            return Ok(());
        }
        match record.kind {
            RecordType::CollectionCreate => {
                let info: CollectionInfo = serde_json::from_slice(record.data)
                    .map_err(|_| invalid("collection create without definition"))?;
                let admitted = self
                    .filter
                    .as_ref()
                    .is_none_or(|f| f.admits(&info.database, &info.name));
                if !admitted && self.catalog.collection_by_id(info.id).is_none() {
                    stats.excluded += 1;
                    batch.put_cf(meta, format!("out/{}", info.id), record.data);
                    self.catalog.left_out.insert(info.id, info);
                    self.catalog_changed = true;
                    self.pieces.push(batch);
                    return Ok(());
                }
                if !admitted {
                    // Created here before the filter left it out (a replayed create).
                    stats.excluded += 1;
                    return Ok(());
                }
                if let Some(other) = self.named_otherwise(&info.database, &info.name, info.id) {
                    return self.conflict(
                        tick,
                        format!(
                            "duplicate name: the leader creates collection '{}' (id {}) in database \
                             '{}', where this server has a collection of that name (id {other})",
                            info.name, info.id, info.database
                        ),
                        stats,
                    );
                }
                if self.catalog.left_out.remove(&info.id).is_some() {
                    // Left out before, admitted by the filter now (a replayed create).
                    batch.delete_cf(meta, format!("out/{}", info.id));
                }
                batch.put_cf(meta, format!("col/{}", info.id), record.data);
                if self.catalog.collection_by_id(info.id).is_none() {
                    self.counts.insert(info.id, 0);
                    self.digests.insert(info.id, Some(Digest::default()));
                }
                self.catalog.insert_collection(info);
                self.catalog_changed = true;
            }
            RecordType::CollectionDrop | RecordType::CollectionTruncate => {
                batch.delete_range_cf(docs, id.to_be_bytes(), (id + 1).to_be_bytes());
                self.emptied(id);
                if record.kind == RecordType::CollectionDrop {
                    batch.delete_cf(meta, format!("col/{id}"));
                    batch.delete_cf(meta, format!("count/{id}"));
                    batch.delete_cf(meta, digest_key(id));
                    self.counts.remove(&id);
                    self.digests.insert(id, None);
                    self.catalog.remove_collection(id);
                    self.catalog_changed = true;
                } else {
                    self.counts.insert(id, 0);
                    self.digests.insert(id, Some(Digest::default()));
                }
            }
            RecordType::CollectionRename | RecordType::CollectionChange => {
                let Some(current) = self.catalog.collection_by_id(id) else {
                    stats.skipped += 1;
                    return Ok(());
                };
                let change: serde_json::Value = serde_json::from_slice(record.data)
                    .map_err(|_| invalid("collection change is not JSON"))?;
                let mut info = (*current).clone();
                if let Some(name) = change.get("name").and_then(|v| v.as_str()) {
                    if let Some(other) = self.named_otherwise(&info.database, name, id) {
                        return self.conflict(
                            tick,
                            format!(
                                "duplicate name: the leader renames collection '{}' (id {id}) to \
                                 '{name}' in database '{}', where this server has a collection of \
                                 that name (id {other})",
                                info.name, info.database
                            ),
                            stats,
                        );
                    }
                    info.name = name.to_string();
                }
                if let Some(wait) = change.get("waitForSync").and_then(|v| v.as_bool()) {
                    info.wait_for_sync = wait;
                }
                let json =
                    serde_json::to_vec(&info).map_err(|_| invalid("collection definition"))?;
                batch.put_cf(meta, format!("col/{id}"), json);
                self.catalog.insert_collection(info);
                self.catalog_changed = true;
            }
            RecordType::DatabaseCreate => {
                let info: DatabaseInfo = serde_json::from_slice(record.data)
                    .map_err(|_| invalid("database create without definition"))?;
                batch.put_cf(meta, format!("db/{}", info.name), record.data);
                self.catalog.databases.insert(info.name.clone(), info);
                self.catalog_changed = true;
            }
            RecordType::DatabaseDrop => {
                let name = record.db;
                let ids: Vec<u64> = self
                    .catalog
                    .collections(name)
                    .iter()
                    .map(|c| c.id)
                    .collect();
                let left_out: Vec<u64> = self
                    .catalog
                    .left_out
                    .values()
                    .filter(|c| c.database == name)
                    .map(|c| c.id)
                    .collect();
                for id in left_out {
                    batch.delete_cf(meta, format!("out/{id}"));
                    self.catalog.left_out.remove(&id);
                }
                for id in ids {
                    batch.delete_range_cf(docs, id.to_be_bytes(), (id + 1).to_be_bytes());
                    batch.delete_cf(meta, format!("col/{id}"));
                    batch.delete_cf(meta, format!("count/{id}"));
                    batch.delete_cf(meta, digest_key(id));
                    self.counts.remove(&id);
                    self.digests.insert(id, None);
                    self.catalog.remove_collection(id);
                    self.emptied(id);
                }
                batch.delete_cf(meta, format!("db/{name}"));
                self.catalog.databases.remove(name);
                self.catalog_changed = true;
            }
            RecordType::DocumentPut
            | RecordType::DocumentInsert
            | RecordType::DocumentRemove
            | RecordType::IndexCreate
            | RecordType::IndexDrop
            | RecordType::TransactionBegin
            | RecordType::TransactionCommit
            | RecordType::TransactionAbort => {}
        }
        if !batch.is_empty() {
            self.pieces.push(batch);
        }
        Ok(())
    }
}

/// Makes the counts, digests and catalog an apply call wrote visible.
fn publish(
    store: &DocStore,
    counts: FxHashMap<u64, u64>,
    digests: FxHashMap<u64, Option<Digest>>,
    catalog: Catalog,
    changed: bool,
) {
    {
        let mut stored = store.counts.lock().unwrap_or_else(|p| p.into_inner());
        for (id, count) in counts {
            if catalog.collection_by_id(id).is_some() {
                stored.insert(id, count);
            } else {
                stored.remove(&id);
            }
        }
    }
    {
        let mut stored = store.digests.lock().unwrap_or_else(|p| p.into_inner());
        for (id, digest) in digests {
            match digest {
                Some(digest) if catalog.collection_by_id(id).is_some() => {
                    stored.insert(id, digest);
                }
                _ => {
                    stored.remove(&id);
                }
            }
        }
    }
    if changed {
        *store.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
    }
}

/// RocksDB's write batch representation: an 8-byte sequence number, a 4-byte record count
/// (both little-endian), then the records, each self-delimiting (`db/write_batch.cc`).
const BATCH_HEADER_BYTES: usize = 12;

/// Bytes a put adds to a batch besides the record's key and document: type, then column family
/// and two lengths (varint32s of up to 5 bytes), the 8-byte collection id before the key and
/// the 8-byte revision before the value.
const BATCH_RECORD_OVERHEAD: usize = 1 + 5 + 5 + 5 + 8 + 8;

/// Joins batches into one whose records are theirs, in order.
fn join(mut pieces: Vec<WriteBatch>) -> Result<WriteBatch> {
    if pieces.len() <= 1 {
        return Ok(pieces.pop().unwrap_or_default());
    }
    let bytes = pieces.iter().map(|p| p.data().len()).sum::<usize>();
    let mut rep = Vec::with_capacity(bytes);
    rep.extend_from_slice(&[0; BATCH_HEADER_BYTES]);
    let mut count: u32 = 0;
    for piece in &pieces {
        let data = piece.data();
        let header = data
            .get(8..BATCH_HEADER_BYTES)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .ok_or_else(|| invalid("write batch shorter than its header"))?;
        count = count
            .checked_add(u32::from_le_bytes(header))
            .ok_or_else(|| invalid("write batch with too many records"))?;
        rep.extend_from_slice(&data[BATCH_HEADER_BYTES..]);
    }
    rep[8..BATCH_HEADER_BYTES].copy_from_slice(&count.to_le_bytes());
    let joined = WriteBatch::from_data(&rep);
    if joined.len() != count as usize {
        return Err(invalid("joined write batch lost records"));
    }
    Ok(joined)
}

/// How an apply call treats the ticks of its blocks.
pub(super) enum Mode {
    /// The log's next blocks: records after the store's applied tick, which then moves to the
    /// last one; the tick recorded with them is limited to the WAL's durable tick.
    Next { durable: Tick },
    /// A catch-up: the records of the range `after..=through` that `filter` keeps, with no
    /// applied tick written.
    CatchUp {
        after: Tick,
        through: Tick,
        filter: Arc<StoreFilter>,
    },
}

pub(super) fn apply(
    store: &DocStore,
    blocks: &[Block],
    context: &mut ApplyContext,
    mode: Mode,
) -> Result<ApplyStats> {
    let mut stats = ApplyStats::default();
    let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else {
        return Ok(stats);
    };
    stats.blocks = blocks.len() as u64;
    stats.ticks = Some(TickRange::new(first.ticks().first, last.ticks().last));
    let _applying = store.lock_apply();
    let (applied, through, filter, lookup_through) = match &mode {
        Mode::Next { .. } => (
            store.applied_tick(),
            Tick::new(u64::MAX),
            store.filter(),
            store.applied_max(),
        ),
        Mode::CatchUp {
            after,
            through,
            filter,
        } => (*after, *through, Some(filter.clone()), Tick::new(u64::MAX)),
    };
    let catch_up = matches!(mode, Mode::CatchUp { .. });
    if last.ticks().last <= applied {
        return Ok(stats);
    }
    let ApplyContext {
        pool,
        threads,
        scratch,
    } = context;
    // Keep a bounded set of decompression buffers from one call to the next.
    scratch.truncate(SCRATCH_KEPT);
    for buffer in scratch.iter_mut() {
        if buffer.capacity() > SCRATCH_BYTES_KEPT {
            *buffer = Vec::new();
        }
    }
    let todo: Vec<&Block> = blocks
        .iter()
        .filter(|b| b.ticks().last > applied && b.ticks().first <= through)
        .collect();
    if scratch.len() < todo.len() {
        scratch.resize_with(todo.len(), Vec::new);
    }
    // A catch-up keeps document bytes in the store (see the module's notes).
    let in_wal = |block: &Block| !catch_up && keeps_in_wal(store, block);
    let decoded = match pool {
        Some(pool) if todo.len() > 1 => pool.install(|| {
            todo.par_iter()
                .zip(scratch.par_iter_mut())
                .map(|(block, scratch)| decode(block, scratch, applied, in_wal(block)))
                .collect::<Result<Vec<_>>>()
        })?,
        _ => todo
            .iter()
            .zip(scratch.iter_mut())
            .map(|(block, scratch)| decode(block, scratch, applied, in_wal(block)))
            .collect::<Result<Vec<_>>>()?,
    };
    let records = decoded.iter().map(|(items, _)| items.len()).sum::<usize>();
    stats.skipped += decoded.iter().map(|(_, skipped)| skipped).sum::<u64>();
    let (pool, parts) = match pool {
        Some(pool) if records >= PARALLEL_RECORDS_MIN => (Some(&*pool), *threads),
        _ => (None, 1),
    };

    let mut applying = Applying {
        store,
        catalog: (*store.catalog()).clone(),
        catalog_changed: false,
        filter,
        excluded: FxHashSet::default(),
        counts: FxHashMap::default(),
        digests: FxHashMap::default(),
        partitions: (0..parts).map(|_| Partition::default()).collect(),
        pieces: Vec::new(),
        lookup_through,
        by_db: Vec::new(),
    };
    applying.refresh_excluded();
    let mut gathered: Vec<Vec<&Item<'_>>> = vec![Vec::new(); parts];
    for item in decoded.iter().flat_map(|(items, _)| items) {
        if item.tick > through {
            break;
        }
        stats.records += 1;
        match item.record.kind {
            RecordType::DocumentPut | RecordType::DocumentInsert | RecordType::DocumentRemove => {
                gathered[partition_of(&item.record, parts)].push(item);
            }
            RecordType::IndexCreate
            | RecordType::IndexDrop
            | RecordType::TransactionBegin
            | RecordType::TransactionCommit
            | RecordType::TransactionAbort => {}
            _ => {
                applying.run(&mut gathered, pool, &mut stats)?;
                applying.barrier(item.tick, &item.record, &mut stats)?;
            }
        }
    }
    applying.run(&mut gathered, pool, &mut stats)?;

    let Applying {
        catalog,
        catalog_changed,
        counts,
        digests,
        mut pieces,
        by_db,
        ..
    } = applying;
    let meta = store.meta();
    let mut tail = WriteBatch::default();
    for (id, count) in &counts {
        if catalog.collection_by_id(*id).is_some() {
            tail.put_cf(meta, format!("count/{id}"), count.to_le_bytes());
        }
    }
    for (id, digest) in &digests {
        if let Some(digest) = digest {
            if catalog.collection_by_id(*id).is_some() {
                tail.put_cf(meta, digest_key(*id), digest.encode());
            }
        }
    }
    if let Mode::CatchUp { .. } = mode {
        pieces.push(tail);
        store.write(join(pieces)?)?;
        store.used_ignored_conflicts(stats.ignored);
        store.add_database_totals(by_db);
        publish(store, counts, digests, catalog, catalog_changed);
        return Ok(stats);
    }
    let Mode::Next { durable } = mode else {
        unreachable!("a catch-up returned above");
    };
    let tick_last = last.ticks().last;
    // Never record a tick the WAL may not have after a crash (a follower applies blocks from its
    // leader before they are durable here): the restart replays from the recorded tick.
    let recorded = tick_last
        .min(durable)
        .max(Tick::new(store.recorded.load(Ordering::Acquire)));
    tail.put_cf(meta, APPLIED_TICK, recorded.get().to_le_bytes());
    // What this batch holds, which a flush may persist with it even though the recorded tick
    // stays at the durable one: a replay up to here looks its inserts up.
    // Never below what a restore declared (`DocStore::assume_applied`).
    tail.put_cf(
        meta,
        APPLIED_MAX,
        tick_last.max(store.applied_max()).get().to_le_bytes(),
    );
    pieces.push(tail);
    store.write(join(pieces)?)?;
    store.recorded.fetch_max(recorded.get(), Ordering::AcqRel);
    store.used_ignored_conflicts(stats.ignored);
    store.add_database_totals(by_db);

    // Publish: counts and catalog first, then the tick that says they are there.
    publish(store, counts, digests, catalog, catalog_changed);
    assert!(tick_last > applied, "applied ticks only grow");
    store.applied.store(tick_last.get(), Ordering::Release);
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: `--replication.thread-nice` reaches the threads that apply groups, not only the
    // store writer's own thread. 19, since raising a nice value needs no privilege.
    #[test]
    fn apply_threads_run_at_the_nice_value_asked_for() {
        let context = ApplyContext::with_threads_at_nice(2, 19).expect("threads");
        let pool = context.pool.as_ref().expect("a pool for two threads");
        // SAFETY: plain system call; `who` 0 is the calling thread (nice values are per thread).
        let nices = pool.broadcast(|_| unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) });
        assert_eq!(nices, [19, 19]);
    }
}
