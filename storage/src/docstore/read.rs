//! Reads: single documents, batches of them, and scans of a collection from one snapshot. A
//! document kept in the WAL is read from the record at its tick, in the WAL or, once its segment
//! was collected, in a value file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::document::{doc_key, StoredDocument, DOCUMENT_IN_WAL_BYTES};
use super::{corrupt, decode_u64, store_error, DocStore};
use crate::error::{Error, Result};
use crate::tick::Tick;
use crate::wal::{Block, Wal};

impl DocStore {
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
        self.get_many_in(collection, keys, None)
    }

    /// `get_many` as `snapshot` shows the store (the live store if none).
    pub(super) fn get_many_in(
        &self,
        collection: u64,
        keys: &[&str],
        snapshot: Option<&rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>>,
    ) -> Result<Vec<Option<StoredDocument>>> {
        let store_keys: Vec<Vec<u8>> = keys.iter().map(|k| doc_key(collection, k)).collect();
        let mut options = rocksdb::ReadOptions::default();
        if let Some(snapshot) = snapshot {
            options.set_snapshot(snapshot);
        }
        let mut found: Vec<Option<StoredDocument>> = vec![None; keys.len()];
        // Documents kept in the WAL are read afterwards in tick order, each frame decompressed
        // once for all the documents it holds, not once per document (a sync fetching thousands
        // of keys changed together would decompress the same frames over and over).
        let mut in_wal: Vec<(Tick, String)> = Vec::new();
        let mut slots: HashMap<&str, Vec<usize>> = HashMap::new();
        let values = self
            .db
            .batched_multi_get_cf_opt(self.docs(), &store_keys, false, &options);
        for (at, (value, key)) in values.into_iter().zip(keys).enumerate() {
            let Some(value) = value.map_err(|e| store_error("read documents", e))? else {
                continue;
            };
            if value.len() == DOCUMENT_IN_WAL_BYTES {
                let tick = decode_u64(&value).ok_or_else(|| corrupt("document revision"))?;
                let held = slots.entry(key).or_default();
                if held.is_empty() {
                    in_wal.push((Tick::new(tick), (*key).to_owned()));
                }
                held.push(at);
                continue;
            }
            found[at] = Some(self.decode_document(collection, key, &value)?);
        }
        let read = self.visit_in_wal(collection, &mut in_wal, &mut |key, document| {
            if let Some(held) = slots.get(key) {
                for &at in held {
                    found[at] = Some(document.clone());
                }
            }
            true
        });
        match read {
            Ok(_) => {}
            // Replaced and its old record collected between the two reads (see `get`); a
            // snapshot holds its records, so no retry reads past it.
            Err(_) if self.values.is_some() && snapshot.is_none() => {
                for (key, held) in &slots {
                    let document = self.get(collection, key)?;
                    for &at in held {
                        found[at].clone_from(&document);
                    }
                }
            }
            Err(error) => return Err(error),
        }
        Ok(found)
    }

    /// Calls `visit(key, document)` for every document of `collection`, from one consistent
    /// snapshot. Stops early when `visit` returns false. Documents kept in the store come in key
    /// order; those kept in the WAL are gathered (`SCAN_CHUNK` keys at a time) and read in tick
    /// order, so that each WAL frame is decompressed once per chunk rather than once per
    /// document, as reading them in key order would.
    pub fn scan(
        &self,
        collection: u64,
        visit: impl FnMut(&str, StoredDocument) -> bool,
    ) -> Result<()> {
        self.scan_in(collection, KeyRange::ALL, usize::MAX, None, visit)
    }

    /// `scan` of the first `limit` documents with keys in `range`, as `snapshot` shows them
    /// (the live store if none). All `limit` are visited unless `visit` stops, though not in key
    /// order (those kept in the WAL come in tick order).
    pub(super) fn scan_in(
        &self,
        collection: u64,
        range: KeyRange<'_>,
        limit: usize,
        snapshot: Option<&rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>>,
        mut visit: impl FnMut(&str, StoredDocument) -> bool,
    ) -> Result<()> {
        let prefix = collection.to_be_bytes();
        let options = range_options(collection, range, snapshot);
        let _scanning = ScanGuard::new(&self.active_scans);
        let iterator = self
            .db
            .iterator_cf_opt(self.docs(), options, rocksdb::IteratorMode::Start);
        let mut in_wal: Vec<(Tick, String)> = Vec::new();
        for item in iterator.take(limit) {
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

    /// Calls `visit(key, revision)` for the documents of `collection` with keys in `range`, in
    /// key order, as `snapshot` shows them (the live store if none), without reading documents:
    /// what comparing two stores by key ranges needs. Stops early when `visit` returns false.
    pub(super) fn key_revs_in(
        &self,
        collection: u64,
        range: KeyRange<'_>,
        snapshot: Option<&rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>>,
        mut visit: impl FnMut(&str, Tick) -> bool,
    ) -> Result<()> {
        let prefix = collection.to_be_bytes();
        let options = range_options(collection, range, snapshot);
        let iterator = self
            .db
            .iterator_cf_opt(self.docs(), options, rocksdb::IteratorMode::Start);
        for item in iterator {
            let (key, value) = item.map_err(|e| store_error("scan document keys", e))?;
            let key = std::str::from_utf8(&key[prefix.len()..])
                .map_err(|_| corrupt("document key is not UTF-8"))?;
            let rev = value
                .get(..8)
                .and_then(decode_u64)
                .ok_or_else(|| corrupt("document revision"))?;
            if !visit(key, Tick::new(rev)) {
                break;
            }
        }
        Ok(())
    }

    /// Calls `visit(key, value)` with the stored value of each document of `collection` after
    /// key `after`, in key order, as `snapshot` shows them: the 8-byte tick of a document kept in
    /// the WAL, or the tick and the document. What a physical copy of the store ships.
    pub(super) fn raw_values_in(
        &self,
        collection: u64,
        after: Option<&str>,
        snapshot: Option<&rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>>,
        mut visit: impl FnMut(&str, &[u8]) -> bool,
    ) -> Result<()> {
        let prefix = collection.to_be_bytes();
        let options = range_options(collection, KeyRange::after(after), snapshot);
        let iterator = self
            .db
            .iterator_cf_opt(self.docs(), options, rocksdb::IteratorMode::Start);
        for item in iterator {
            let (key, value) = item.map_err(|e| store_error("scan documents", e))?;
            let key = std::str::from_utf8(&key[prefix.len()..])
                .map_err(|_| corrupt("document key is not UTF-8"))?;
            if value.len() < DOCUMENT_IN_WAL_BYTES {
                return Err(corrupt("document value shorter than its revision"));
            }
            if !visit(key, &value) {
                break;
            }
        }
        Ok(())
    }

    /// `key_revs_in` of the live store.
    pub fn key_revs(
        &self,
        collection: u64,
        range: KeyRange<'_>,
        visit: impl FnMut(&str, Tick) -> bool,
    ) -> Result<()> {
        self.key_revs_in(collection, range, None, visit)
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

    /// Whether a scan is running (its snapshot may name ticks a collection would drop).
    pub fn scans_running(&self) -> bool {
        self.active_scans.load(Ordering::Acquire) > 0
    }

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

thread_local! {
    /// Where reads decompress the WAL frame holding a document.
    static WAL_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A read's frame scratch larger than this (a document in a block without frames, say) is not
/// kept for the next read.
const WAL_SCRATCH_BYTES_KEPT: usize = 1 << 20;

/// Keys of one collection between two bounds, either open; `low` inclusive or, with
/// `after_low`, exclusive; `high` inclusive.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyRange<'a> {
    pub low: Option<&'a str>,
    pub after_low: bool,
    pub high: Option<&'a str>,
}

impl<'a> KeyRange<'a> {
    pub const ALL: KeyRange<'static> = KeyRange {
        low: None,
        after_low: false,
        high: None,
    };

    /// `low..=high`, either open.
    pub fn between(low: Option<&'a str>, high: Option<&'a str>) -> KeyRange<'a> {
        KeyRange {
            low,
            after_low: false,
            high,
        }
    }

    /// The keys after `after` (all if none).
    pub fn after(after: Option<&'a str>) -> KeyRange<'a> {
        KeyRange {
            low: after,
            after_low: true,
            high: None,
        }
    }
}

/// Read options that bound an iterator to `range` of `collection`, reading through `snapshot`.
fn range_options(
    collection: u64,
    range: KeyRange<'_>,
    snapshot: Option<&rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>>,
) -> rocksdb::ReadOptions {
    let prefix = collection.to_be_bytes();
    let mut options = rocksdb::ReadOptions::default();
    // A scan reads each data block once: kept out of the block cache, it neither grows the
    // process by the whole collection's keys (up to the cache's size) nor pushes out the index
    // and filter blocks that lookups need.
    options.fill_cache(false);
    if let Some(snapshot) = snapshot {
        options.set_snapshot(snapshot);
    }
    let mut lower = prefix.to_vec();
    if let Some(low) = range.low {
        lower.extend_from_slice(low.as_bytes());
        if range.after_low {
            // The smallest key after `low`: `low` followed by a zero byte.
            lower.push(0);
        }
    }
    options.set_iterate_lower_bound(lower);
    match range.high {
        Some(high) => {
            // Exclusive bound just past `high`.
            let mut upper = prefix.to_vec();
            upper.extend_from_slice(high.as_bytes());
            upper.push(0);
            options.set_iterate_upper_bound(upper);
        }
        None => options.set_iterate_upper_bound((collection + 1).to_be_bytes().to_vec()),
    }
    options
}
