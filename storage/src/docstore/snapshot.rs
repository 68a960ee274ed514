//! Read views of the whole store at one tick, for dumps: a RocksDB snapshot, the tick it holds
//! everything through, the catalog and counts as of that tick, and a hold that keeps segment
//! collection and value-file rewrites from dropping documents the view still names.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rocksdb::{SnapshotWithThreadMode, DB};

use super::catalog::catalog_from;
use super::read::KeyRange;
use super::{
    corrupt, decode_u64, store_error, Catalog, Digest, DocStore, StoredDocument, APPLIED_MAX,
};
use crate::error::Result;
use crate::Tick;

/// The store as it was at `tick()`, for as long as this lives.
pub struct StoreSnapshot {
    // Declared before `store`: fields drop in declaration order, and the snapshot borrows the
    // database that `store` owns.
    snapshot: SnapshotWithThreadMode<'static, DB>,
    tick: Tick,
    catalog: Catalog,
    counts: HashMap<u64, u64>,
    digests: HashMap<u64, Digest>,
    store: Arc<DocStore>,
}

impl DocStore {
    /// A read view of everything applied so far. While it lives no WAL segment is collected and
    /// no value file rewritten (both would judge documents by the live store and may drop what
    /// the view still names), so retention keeps the segments its documents are in.
    pub fn snapshot(self: &Arc<Self>) -> Result<StoreSnapshot> {
        // The hold comes first: a collection that starts after it sees the scan running.
        self.active_scans.fetch_add(1, Ordering::AcqRel);
        let held = Held(self);
        // Taken between applied groups and restore steps, never inside one: a restore ingests
        // its documents before it writes their digest.
        let snapshot = {
            let _applying = self.lock_apply();
            self.db.snapshot()
        };
        // SAFETY: the snapshot borrows `self.db`. The `Arc<DocStore>` stored beside it in
        // `StoreSnapshot` keeps that database alive and unmoved for as long as the snapshot
        // exists, and the field order drops the snapshot first; nothing else can reach it.
        let snapshot: SnapshotWithThreadMode<'static, DB> =
            unsafe { std::mem::transmute(snapshot) };
        // The tick the snapshot holds everything through: written in the same batch as the
        // documents of the group that ended at it.
        let tick = snapshot
            .get_cf(self.meta(), APPLIED_MAX)
            .map_err(|e| store_error("read applied tick", e))?
            .map(|v| decode_u64(&v).ok_or_else(|| corrupt("applied tick")))
            .transpose()?
            .unwrap_or(0);
        let (catalog, counts, mut digests) =
            catalog_from(snapshot.iterator_cf(self.meta(), rocksdb::IteratorMode::Start))?;
        {
            // A digest that failed to reach the store after its documents did is stale there.
            let stale = self
                .unsure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .stale();
            digests.retain(|id, _| !stale.contains(id));
        }
        std::mem::forget(held);
        Ok(StoreSnapshot {
            snapshot,
            tick: Tick::new(tick),
            catalog,
            counts,
            digests,
            store: self.clone(),
        })
    }
}

/// Gives the hold back if building the snapshot fails. It borrows the store: forgotten once the
/// snapshot is built (the snapshot gives the hold back when it drops), it must leak nothing.
struct Held<'a>(&'a DocStore);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.active_scans.fetch_sub(1, Ordering::AcqRel);
    }
}

impl StoreSnapshot {
    /// The last tick whose changes the view holds; none after it.
    pub fn tick(&self) -> Tick {
        self.tick
    }

    /// The databases and collections as of the view's tick.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Documents in `collection` as of the view's tick.
    pub fn count(&self, collection: u64) -> u64 {
        self.counts.get(&collection).copied().unwrap_or(0)
    }

    /// The digest of `collection` as of the view's tick, if known (`Digest`).
    pub fn digest(&self, collection: u64) -> Option<Digest> {
        self.digests.get(&collection).copied()
    }

    /// Up to `limit` documents of `collection` with keys after `after` (from the first if
    /// none), in key order: a page of a dump, and its last key the cursor of the next.
    pub fn page(
        &self,
        collection: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, StoredDocument)>> {
        self.range(collection, KeyRange::after(after), limit)
    }

    /// Up to `limit` documents of `collection` with keys in `range`, in key order.
    pub fn range(
        &self,
        collection: u64,
        range: KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<(String, StoredDocument)>> {
        let mut page = Vec::new();
        self.store.scan_in(
            collection,
            range,
            limit,
            Some(&self.snapshot),
            |key, doc| {
                page.push((key.to_owned(), doc));
                true
            },
        )?;
        page.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(page)
    }
}

impl StoreSnapshot {
    /// `DocStore::key_revs` as of the view's tick.
    pub fn key_revs(
        &self,
        collection: u64,
        range: KeyRange<'_>,
        visit: impl FnMut(&str, Tick) -> bool,
    ) -> Result<()> {
        self.store
            .key_revs_in(collection, range, Some(&self.snapshot), visit)
    }

    /// `DocStore::raw_values_in` as of the view's tick.
    pub fn raw_values(
        &self,
        collection: u64,
        after: Option<&str>,
        visit: impl FnMut(&str, &[u8]) -> bool,
    ) -> Result<()> {
        self.store
            .raw_values_in(collection, after, Some(&self.snapshot), visit)
    }

    /// The files holding the view's documents, opened (`DocStore::physical_files`).
    pub fn physical_files(&self) -> Result<std::result::Result<Vec<super::PhysicalFile>, String>> {
        self.store.physical_files(self.tick)
    }

    /// Documents `keys` of `collection` as of the view's tick, in order.
    pub fn get_many(&self, collection: u64, keys: &[&str]) -> Result<Vec<Option<StoredDocument>>> {
        self.store
            .get_many_in(collection, keys, Some(&self.snapshot))
    }
}

impl Drop for StoreSnapshot {
    fn drop(&mut self) {
        // After this no read goes through the view; the snapshot itself is released when the
        // fields drop, before `store`.
        self.store.active_scans.fetch_sub(1, Ordering::AcqRel);
    }
}
