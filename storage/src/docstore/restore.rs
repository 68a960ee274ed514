//! Restoring a dump straight into the store, without taking ticks: a follower's log holds its
//! leader's ticks, so what a restore loads must not come through this server's WAL. Databases and
//! collections are written to the catalog, documents sorted into store files (SSTs) that RocksDB
//! ingests whole, in the form kept in the store with the revision they had on the leader.
//!
//! The store writes without RocksDB's own log (the WAL replays what a crash lost), and restored
//! data is in no WAL: every restore step therefore ends persisted (the ingest is durable, catalog
//! and counts are flushed) before it returns. `apply_lock` keeps a restore step and the applying
//! of WAL blocks from working on the catalog and counts at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rocksdb::WriteBatch;

use std::time::{Duration, Instant};

use super::catalog::{CollectionInfo, DatabaseInfo};
use super::digest::{digest_key, write_unsure, Digest};
use super::document::doc_key;
use super::{corrupt, decode_u64, store_error, DocStore, APPLIED_MAX, APPLIED_TICK};
use crate::error::{Error, Result};
use crate::tick::Tick;

/// One line of a dump, as a restore loads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restored {
    /// The document with `key` is `json` (the stored form: `_key` and `_id` first, no `_rev`),
    /// written at revision `rev`.
    Put {
        key: String,
        rev: Tick,
        json: Vec<u8>,
    },
    /// The document with `key` is gone (a 2302 line of an old dump).
    Remove { key: String },
}

impl Restored {
    fn key(&self) -> &str {
        match self {
            Restored::Put { key, .. } | Restored::Remove { key } => key,
        }
    }

    /// Bytes it holds (key and document), for callers that bound what they gather.
    pub fn bytes(&self) -> usize {
        match self {
            Restored::Put { key, json, .. } => key.len() + json.len(),
            Restored::Remove { key } => key.len(),
        }
    }
}

/// What a restore of documents did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Documents stored that the collection did not hold before.
    pub created: u64,
    /// Documents stored that replaced one with the same key.
    pub replaced: u64,
    /// Documents removed.
    pub removed: u64,
}

/// What a collection restore found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CollectionRestore {
    /// Created (or replaced) as `info`; its id is the dump's unless another collection had it.
    Created(Arc<CollectionInfo>),
    /// A collection of that name exists and replacing it was not asked for.
    Exists(Arc<CollectionInfo>),
}

/// Documents of one restore step from which it writes two store files and looks its keys up
/// with two threads.
const PARALLEL_ITEMS_MIN: usize = 4096;

/// `work` on each of `inputs`, the first on this thread and the others on threads of their
/// own; the results in order. A thread that panicked is an error.
fn in_parallel<I: Send, T: Send>(
    mut inputs: Vec<I>,
    work: impl Fn(I) -> T + Sync,
) -> Result<Vec<T>> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    let first = inputs.remove(0);
    std::thread::scope(|scope| {
        let work = &work;
        let others: Vec<_> = inputs
            .into_iter()
            .map(|input| scope.spawn(move || work(input)))
            .collect();
        let mut results = vec![work(first)];
        for other in others {
            results.push(
                other
                    .join()
                    .map_err(|_| Error::InvalidRecord("a restore thread panicked".into()))?,
            );
        }
        Ok(results)
    })
}

/// How long the unsure file stays after a restore step before the next flush may remove it.
const UNSURE_SETTLE: Duration = Duration::from_secs(1);

/// Names the store files a restore writes before they are ingested.
static SST_SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl DocStore {
    pub(super) fn lock_apply(&self) -> std::sync::MutexGuard<'_, ()> {
        self.apply_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates database `name` (with a new id) if it does not exist; true if it was created.
    pub fn restore_database(&self, name: &str) -> Result<bool> {
        self.restore_database_as(name, None)
    }

    /// `restore_database` keeping `id` (a leader's, so that no collection id of the leader
    /// clashes with it here) unless something here has it.
    pub fn restore_database_as(&self, name: &str, id: Option<u64>) -> Result<bool> {
        let _applying = self.lock_apply();
        let mut catalog = (*self.catalog()).clone();
        if catalog.database(name).is_some() {
            return Ok(false);
        }
        let taken = |id: u64| {
            catalog.collection_by_id(id).is_some()
                || catalog.left_out.contains_key(&id)
                || catalog.databases().any(|d| d.id == id)
        };
        let info = DatabaseInfo {
            id: id
                .filter(|&id| id > 0 && !taken(id))
                .unwrap_or(catalog.max_id() + 1),
            name: name.to_string(),
        };
        let json = serde_json::to_vec(&info).map_err(|e| Error::InvalidRecord(e.to_string()))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.meta(), format!("db/{name}"), json);
        self.write(batch)?;
        self.flush()?;
        catalog.databases.insert(name.to_string(), info);
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
        Ok(true)
    }

    /// Creates collection `info` in its database, empty, keeping its id unless another collection
    /// (or one a filter left out) has it. An existing collection of that name is dropped first
    /// with `replace`, and reported otherwise.
    pub fn restore_collection(
        &self,
        mut info: CollectionInfo,
        replace: bool,
    ) -> Result<CollectionRestore> {
        let _applying = self.lock_apply();
        let mut catalog = (*self.catalog()).clone();
        if catalog.database(&info.database).is_none() {
            return Err(Error::InvalidRecord(format!(
                "database '{}' does not exist",
                info.database
            )));
        }
        let (docs, meta) = (self.docs(), self.meta());
        let mut batch = WriteBatch::default();
        let mut replaced = None;
        if let Some(existing) = catalog.collection(&info.database, &info.name) {
            if !replace {
                return Ok(CollectionRestore::Exists(existing));
            }
            let id = existing.id;
            replaced = Some(id);
            batch.delete_range_cf(docs, id.to_be_bytes(), (id + 1).to_be_bytes());
            batch.delete_cf(meta, format!("col/{id}"));
            batch.delete_cf(meta, format!("count/{id}"));
            batch.delete_cf(meta, digest_key(id));
            catalog.remove_collection(id);
            self.counts_mut().remove(&id);
            self.digests_mut().remove(&id);
        }
        if info.id == 0
            || catalog.collection_by_id(info.id).is_some()
            || catalog.left_out.contains_key(&info.id)
        {
            // A database's id is only a label (the log names databases by name): a collection
            // may share it, as a follower's must when its own databases took its leader's ids.
            info.id = catalog.max_id() + 1;
        }
        let id = info.id;
        let json = serde_json::to_vec(&info).map_err(|e| Error::InvalidRecord(e.to_string()))?;
        // Whatever an earlier collection with this id left (none should be left).
        batch.delete_range_cf(docs, id.to_be_bytes(), (id + 1).to_be_bytes());
        batch.put_cf(meta, format!("col/{id}"), json);
        batch.put_cf(meta, format!("count/{id}"), 0u64.to_le_bytes());
        batch.put_cf(meta, digest_key(id), Digest::default().encode());
        self.write(batch)?;
        self.flush()?;
        catalog.insert_collection(info);
        let created = catalog
            .collection_by_id(id)
            .ok_or_else(|| Error::InvalidRecord("restored collection vanished".into()))?;
        self.counts_mut().insert(id, 0);
        self.digests_mut().insert(id, Digest::default());
        self.digest_rewritten(id);
        if let Some(old) = replaced {
            self.digest_rewritten(old);
        }
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
        Ok(CollectionRestore::Created(created))
    }

    /// Drops collection `id` and its documents without a tick (a sync removing what its leader
    /// no longer has). Durable when it returns; false if there was no such collection.
    pub fn restore_drop_collection(&self, id: u64) -> Result<bool> {
        let _applying = self.lock_apply();
        let mut catalog = (*self.catalog()).clone();
        if catalog.collection_by_id(id).is_none() {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.docs(), id.to_be_bytes(), (id + 1).to_be_bytes());
        batch.delete_cf(self.meta(), format!("col/{id}"));
        batch.delete_cf(self.meta(), format!("count/{id}"));
        batch.delete_cf(self.meta(), digest_key(id));
        self.write(batch)?;
        self.flush()?;
        catalog.remove_collection(id);
        self.counts_mut().remove(&id);
        self.digests_mut().remove(&id);
        self.digest_rewritten(id);
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
        Ok(true)
    }

    /// Records collection `info` as left out by the store's filter (a sync skipping a collection
    /// its follower does not replicate), as applying its create would: later records of it are
    /// then counted as excluded. Durable when it returns.
    pub fn restore_left_out(&self, info: &CollectionInfo) -> Result<()> {
        let _applying = self.lock_apply();
        let mut catalog = (*self.catalog()).clone();
        if catalog.collection_by_id(info.id).is_some() || catalog.left_out.contains_key(&info.id) {
            return Ok(());
        }
        let json = serde_json::to_vec(info).map_err(|e| Error::InvalidRecord(e.to_string()))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.meta(), format!("out/{}", info.id), json);
        self.write(batch)?;
        self.flush()?;
        catalog.left_out.insert(info.id, info.clone());
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
        Ok(())
    }

    fn counts_mut(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, u64>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn digests_mut(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Digest>> {
        self.digests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Collection `id`'s digest on disk was just replaced or deleted durably: no stale one of a
    /// failed restore step is left to delete.
    fn digest_rewritten(&self, id: u64) {
        self.unsure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget
            .remove(&id);
    }

    /// Sets the digest of collection `id` (a sync that found it equal to its leader's, whose
    /// digest this is), durably. False if there is no such collection.
    pub fn set_digest(&self, id: u64, digest: Digest) -> Result<bool> {
        let _applying = self.lock_apply();
        if self.catalog().collection_by_id(id).is_none() {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.meta(), digest_key(id), digest.encode());
        self.write(batch)?;
        self.flush()?;
        self.digests_mut().insert(id, digest);
        self.digest_rewritten(id);
        Ok(true)
    }

    /// Names `collection` in the unsure file before a store file changes it (see
    /// `DIGESTS_UNSURE_FILE`), and marks a restore step busy until its digest is flushed
    /// (`settle_unsure`). Called under the apply lock.
    fn mark_unsure(&self, collection: u64) -> Result<()> {
        let mut unsure = self.unsure.lock().unwrap_or_else(|p| p.into_inner());
        if unsure.ids.contains(&collection) {
            unsure.busy = true;
            return Ok(());
        }
        let mut ids = unsure.ids.clone();
        ids.insert(collection);
        write_unsure(&self.path, &ids)?;
        unsure.ids = ids;
        unsure.since = Instant::now();
        unsure.busy = true;
        Ok(())
    }

    /// After a flush under the apply lock every digest on disk matches its documents: the unsure
    /// file may go. Not at every restore step (two more syncs each): once a second at most, and
    /// when the store closes.
    fn settle_unsure(&self) -> Result<()> {
        let mut unsure = self.unsure.lock().unwrap_or_else(|p| p.into_inner());
        unsure.busy = false;
        if !unsure.forget.is_empty() {
            // Digests an earlier failed step left stale on disk go now.
            let mut batch = WriteBatch::default();
            for id in &unsure.forget {
                batch.delete_cf(self.meta(), digest_key(*id));
            }
            self.write(batch)?;
            self.flush()?;
            unsure.forget.clear();
        }
        if unsure.ids.is_empty() || unsure.since.elapsed() < UNSURE_SETTLE {
            return Ok(());
        }
        write_unsure(&self.path, &Default::default())?;
        unsure.ids.clear();
        Ok(())
    }

    /// Stores `items` in `collection` as one store file, ingested whole: the last line for a key
    /// wins. Durable when it returns.
    pub fn restore_documents(&self, collection: u64, items: Vec<Restored>) -> Result<RestoreStats> {
        self.restore_items(collection, items, true)
    }

    /// `restore_documents` for puts of keys the collection does not hold (the caller knows: a
    /// copy into an empty collection, in key order), which are not looked up first: every one
    /// counts as created.
    pub fn restore_new_documents(
        &self,
        collection: u64,
        items: Vec<Restored>,
    ) -> Result<RestoreStats> {
        if items.iter().any(|i| matches!(i, Restored::Remove { .. })) {
            return Err(Error::InvalidRecord(
                "a removal among documents said to be new".into(),
            ));
        }
        self.restore_items(collection, items, false)
    }

    fn restore_items(
        &self,
        collection: u64,
        mut items: Vec<Restored>,
        look_up: bool,
    ) -> Result<RestoreStats> {
        let mut stats = RestoreStats::default();
        if items.is_empty() {
            return Ok(stats);
        }
        // Sorted by key, the last line of a key kept (a stable sort keeps lines in order).
        items.sort_by(|a, b| a.key().cmp(b.key()));
        let mut last: Vec<Restored> = Vec::with_capacity(items.len());
        for item in items {
            match last.last_mut() {
                Some(previous) if previous.key() == item.key() => *previous = item,
                _ => last.push(item),
            }
        }
        // A large lot is written as two store files, by two threads, in two key ranges that do
        // not overlap; both are ingested in one call, which is atomic.
        let parts: Vec<&[Restored]> = if last.len() >= PARALLEL_ITEMS_MIN {
            let (low, high) = last.split_at(last.len() / 2);
            vec![low, high]
        } else {
            vec![&last[..]]
        };
        let paths: Vec<std::path::PathBuf> = parts
            .iter()
            .map(|_| {
                self.path.join(format!(
                    "restore-{}-{}.sst.tmp",
                    std::process::id(),
                    SST_SEQUENCE.fetch_add(1, Ordering::Relaxed)
                ))
            })
            .collect();
        let written = in_parallel(
            parts.iter().zip(&paths).collect(),
            |(part, path): (&&[Restored], &std::path::PathBuf)| {
                self.write_restore_file(collection, part, path)
            },
        )
        .and_then(|results| results.into_iter().collect::<Result<Vec<()>>>());
        let result =
            written.and_then(|_| self.ingest(collection, &last, &paths, &mut stats, look_up));
        // Moved into the store on success; anything left is ours to remove.
        for path in &paths {
            let _ = std::fs::remove_file(path);
        }
        result.map(|()| stats)
    }

    /// Writes `items` (in key order) of `collection` to the store file `path`.
    fn write_restore_file(
        &self,
        collection: u64,
        items: &[Restored],
        path: &std::path::Path,
    ) -> Result<()> {
        let documents = items
            .iter()
            .any(|item| matches!(item, Restored::Put { json, .. } if !json.is_empty()));
        let options = if documents {
            &self.sst_options
        } else {
            &self.sst_key_options
        };
        let mut writer = rocksdb::SstFileWriter::create(options);
        writer
            .open(path)
            .map_err(|e| store_error("create restore file", e))?;
        let mut value = Vec::new();
        for item in items {
            let key = doc_key(collection, item.key());
            match item {
                Restored::Put { rev, json, .. } => {
                    value.clear();
                    value.extend_from_slice(&rev.get().to_le_bytes());
                    value.extend_from_slice(json);
                    writer
                        .put(&key, &value)
                        .map_err(|e| store_error("write restore file", e))?;
                }
                Restored::Remove { .. } => writer
                    .delete(&key)
                    .map_err(|e| store_error("write restore file", e))?,
            }
        }
        writer
            .finish()
            .map_err(|e| store_error("finish restore file", e))
    }

    fn ingest(
        &self,
        collection: u64,
        items: &[Restored],
        paths: &[std::path::PathBuf],
        stats: &mut RestoreStats,
        look_up: bool,
    ) -> Result<()> {
        let _applying = self.lock_apply();
        if self.catalog().collection_by_id(collection).is_none() {
            return Err(Error::InvalidRecord(format!(
                "collection {collection} does not exist"
            )));
        }
        // Keys said to be new (`restore_new_documents`) are not looked up: all are created.
        // Looked up by two threads for a large lot, each half in key order.
        let existed: Vec<Option<u64>> = if look_up {
            let halves: Vec<&[Restored]> = if items.len() >= PARALLEL_ITEMS_MIN {
                let (low, high) = items.split_at(items.len() / 2);
                vec![low, high]
            } else {
                vec![items]
            };
            let found = in_parallel(halves, |half: &[Restored]| {
                let keys: Vec<Vec<u8>> = half
                    .iter()
                    .map(|item| doc_key(collection, item.key()))
                    .collect();
                self.db
                    .batched_multi_get_cf(self.docs(), &keys, true)
                    .into_iter()
                    .map(|found| {
                        found
                            .map_err(|e| store_error("look up restored keys", e))?
                            .map(|value| {
                                value
                                    .get(..8)
                                    .and_then(decode_u64)
                                    .ok_or_else(|| corrupt("document revision"))
                            })
                            .transpose()
                    })
                    .collect::<Result<Vec<Option<u64>>>>()
            })?;
            found
                .into_iter()
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect()
        } else {
            vec![None; items.len()]
        };
        let mut change = Digest::default();
        for (item, existed) in items.iter().zip(existed) {
            let key = item.key().as_bytes();
            if let Some(old) = existed {
                change.remove(key, old);
            }
            match (item, existed) {
                (Restored::Put { rev, .. }, None) => {
                    stats.created += 1;
                    change.add(key, rev.get());
                }
                (Restored::Put { rev, .. }, Some(_)) => {
                    stats.replaced += 1;
                    change.add(key, rev.get());
                }
                (Restored::Remove { .. }, Some(_)) => stats.removed += 1,
                (Restored::Remove { .. }, None) => {}
            }
        }
        let digest = self.digest(collection).map(|mut digest| {
            digest.join(&change);
            digest
        });
        if digest.is_some() {
            self.mark_unsure(collection)?;
        }
        let mut options = rocksdb::IngestExternalFileOptions::default();
        options.set_move_files(true);
        self.db
            .ingest_external_file_cf_opts(self.docs(), &options, paths.to_vec())
            .map_err(|e| store_error("ingest restored documents", e))?;
        let count = {
            let mut counts = self.counts_mut();
            let count = counts.entry(collection).or_insert(0);
            *count = (*count + stats.created).saturating_sub(stats.removed);
            *count
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.meta(),
            format!("count/{collection}"),
            count.to_le_bytes(),
        );
        if let Some(digest) = digest {
            batch.put_cf(self.meta(), digest_key(collection), digest.encode());
        }
        if let Err(error) = self.write(batch).and_then(|()| self.flush()) {
            // The documents changed; their digest may never reach the disk. It is unknown from
            // here on, and deleted on disk by the next step that succeeds (or the next open).
            self.digests_mut().remove(&collection);
            let mut unsure = self.unsure.lock().unwrap_or_else(|p| p.into_inner());
            unsure.busy = false;
            unsure.forget.insert(collection);
            return Err(error);
        }
        if let Some(digest) = digest {
            self.digests_mut().insert(collection, digest);
        }
        self.settle_unsure()
    }

    /// Declares that the store holds the state of the log through `applied` (a restored
    /// follower starting from its leader's log there), and data of ticks up to `through`: a
    /// replay up to `through` looks up the keys of inserts. Never moves either tick back.
    pub fn assume_applied(&self, applied: Tick, through: Tick) -> Result<()> {
        let _applying = self.lock_apply();
        let applied = applied.max(self.applied_tick());
        let through = through.max(applied).max(self.applied_max());
        let stored_max = self
            .db
            .get_cf(self.meta(), APPLIED_MAX)
            .map_err(|e| store_error("read applied tick", e))?
            .and_then(|v| decode_u64(&v))
            .unwrap_or(0);
        let mut batch = WriteBatch::default();
        batch.put_cf(self.meta(), APPLIED_TICK, applied.get().to_le_bytes());
        batch.put_cf(
            self.meta(),
            APPLIED_MAX,
            through.get().max(stored_max).to_le_bytes(),
        );
        self.write(batch)?;
        self.flush()?;
        self.recorded.fetch_max(applied.get(), Ordering::AcqRel);
        self.applied_max.fetch_max(through.get(), Ordering::AcqRel);
        self.applied.fetch_max(applied.get(), Ordering::AcqRel);
        Ok(())
    }
}

/// Shared by the store's fields: see `DocStore::apply_lock`.
pub(super) type ApplyLock = Mutex<()>;
