//! Applying WAL blocks to the store: one RocksDB write batch per call, holding the data and the
//! new applied tick.
//!
//! Counts stay exact and replays stay idempotent because every put or remove first looks at
//! whether its key exists (one batched multi-get per call, then an overlay of the keys changed
//! earlier in the same call). Records of a collection that no longer exists are skipped (a write
//! that raced with the drop of its collection); records of a transaction aborted in the same
//! block are skipped too. Index records are accepted and ignored (no secondary indexes yet).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rocksdb::WriteBatch;

use super::{doc_key, CollectionInfo, DatabaseInfo, DocStore, APPLIED_TICK};
use crate::error::{Error, Result};
use crate::tick::{Tick, TickRange};
use crate::wal::{Block, Record, RecordType};

/// What one `apply` call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub blocks: u64,
    pub records: u64,
    /// Document puts applied.
    pub documents: u64,
    /// Document removals applied.
    pub removals: u64,
    /// Records skipped (their collection is gone, or their transaction aborted).
    pub skipped: u64,
    pub ticks: Option<TickRange>,
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

pub(super) fn apply(store: &DocStore, blocks: &[Block]) -> Result<ApplyStats> {
    let mut stats = ApplyStats::default();
    let Some(last) = blocks.last() else {
        return Ok(stats);
    };
    let applied = store.applied_tick();
    let mut scratch: Vec<Vec<u8>> = Vec::with_capacity(blocks.len());
    scratch.resize_with(blocks.len(), Vec::new);
    // Decode everything first (validating each record), skipping ticks already applied.
    let mut decoded: Vec<(Tick, Record<'_>)> = Vec::new();
    for (block, scratch) in blocks.iter().zip(scratch.iter_mut()) {
        let mut aborted = HashSet::new();
        let start = decoded.len();
        for item in block.records(scratch)? {
            let (tick, record) = item.map_err(invalid)?;
            if record.kind == RecordType::TransactionAbort {
                aborted.insert(record.tid);
            }
            if tick > applied {
                decoded.push((tick, record));
            }
        }
        if !aborted.is_empty() {
            let mut kept = decoded.split_off(start);
            let before = kept.len();
            kept.retain(|(_, r)| r.tid == 0 || !aborted.contains(&r.tid));
            stats.skipped += (before - kept.len()) as u64;
            decoded.extend(kept);
        }
        stats.blocks += 1;
    }
    stats.ticks = Some(TickRange::new(blocks[0].ticks().first, last.ticks().last));
    if last.ticks().last <= applied {
        return Ok(stats);
    }

    let mut catalog = (*store.catalog()).clone();
    let mut catalog_changed = false;
    let mut counts: HashMap<u64, u64> = HashMap::new();
    let count_of = |counts: &mut HashMap<u64, u64>, id: u64| {
        *counts.entry(id).or_insert_with(|| store.count(id))
    };

    // Which document keys exist before this batch.
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut seen = HashSet::new();
    for (_, record) in &decoded {
        if matches!(
            record.kind,
            RecordType::DocumentPut | RecordType::DocumentRemove
        ) {
            let key = doc_key(collection_id(record)?, record.key);
            if seen.insert(key.clone()) {
                keys.push(key);
            }
        }
    }
    let docs = store.docs();
    let mut exists: HashMap<Vec<u8>, bool> = HashMap::with_capacity(keys.len());
    for (key, value) in keys
        .iter()
        .zip(store.db.batched_multi_get_cf(docs, &keys, false))
    {
        let present = value
            .map_err(|e| super::store_error("read before apply", e))?
            .is_some();
        exists.insert(key.clone(), present);
    }

    let mut batch = WriteBatch::default();
    let meta = store.meta();
    let mut value = Vec::new();
    for (tick, record) in &decoded {
        stats.records += 1;
        match record.kind {
            RecordType::DocumentPut | RecordType::DocumentRemove => {
                let id = collection_id(record)?;
                if catalog.collection_by_id(id).is_none() {
                    stats.skipped += 1;
                    continue;
                }
                let key = doc_key(id, record.key);
                let existed = exists.get(&key).copied().unwrap_or(false);
                let count = count_of(&mut counts, id);
                if record.kind == RecordType::DocumentPut {
                    if record.key.is_empty() || record.data.first() != Some(&b'{') {
                        return Err(invalid("document record without key or object"));
                    }
                    value.clear();
                    value.extend_from_slice(&tick.get().to_le_bytes());
                    value.extend_from_slice(record.data);
                    batch.put_cf(docs, &key, &value);
                    if !existed {
                        counts.insert(id, count + 1);
                    }
                    exists.insert(key, true);
                    stats.documents += 1;
                } else {
                    batch.delete_cf(docs, &key);
                    if existed {
                        counts.insert(id, count.saturating_sub(1));
                    }
                    exists.insert(key, false);
                    stats.removals += 1;
                }
            }
            RecordType::CollectionCreate => {
                let info: CollectionInfo = serde_json::from_slice(record.data)
                    .map_err(|_| invalid("collection create without definition"))?;
                batch.put_cf(meta, format!("col/{}", info.id), record.data);
                if catalog.collection_by_id(info.id).is_none() {
                    counts.insert(info.id, 0);
                }
                catalog.insert_collection(info);
                catalog_changed = true;
            }
            RecordType::CollectionDrop | RecordType::CollectionTruncate => {
                let id = collection_id(record)?;
                let from = id.to_be_bytes();
                let to = (id + 1).to_be_bytes();
                batch.delete_range_cf(docs, from, to);
                exists.retain(|key, _| !key.starts_with(&from));
                if record.kind == RecordType::CollectionDrop {
                    batch.delete_cf(meta, format!("col/{id}"));
                    batch.delete_cf(meta, format!("count/{id}"));
                    counts.remove(&id);
                    catalog.remove_collection(id);
                    catalog_changed = true;
                } else {
                    counts.insert(id, 0);
                }
            }
            RecordType::CollectionRename | RecordType::CollectionChange => {
                let id = collection_id(record)?;
                let Some(current) = catalog.collection_by_id(id) else {
                    stats.skipped += 1;
                    continue;
                };
                let change: serde_json::Value = serde_json::from_slice(record.data)
                    .map_err(|_| invalid("collection change is not JSON"))?;
                let mut info = (*current).clone();
                if let Some(name) = change.get("name").and_then(|v| v.as_str()) {
                    info.name = name.to_string();
                }
                if let Some(wait) = change.get("waitForSync").and_then(|v| v.as_bool()) {
                    info.wait_for_sync = wait;
                }
                let json =
                    serde_json::to_vec(&info).map_err(|_| invalid("collection definition"))?;
                batch.put_cf(meta, format!("col/{id}"), json);
                catalog.insert_collection(info);
                catalog_changed = true;
            }
            RecordType::DatabaseCreate => {
                let info: DatabaseInfo = serde_json::from_slice(record.data)
                    .map_err(|_| invalid("database create without definition"))?;
                batch.put_cf(meta, format!("db/{}", info.name), record.data);
                catalog.databases.insert(info.name.clone(), info);
                catalog_changed = true;
            }
            RecordType::DatabaseDrop => {
                let name = record.db;
                for collection in catalog.collections(name) {
                    let id = collection.id;
                    batch.delete_range_cf(docs, id.to_be_bytes(), (id + 1).to_be_bytes());
                    batch.delete_cf(meta, format!("col/{id}"));
                    batch.delete_cf(meta, format!("count/{id}"));
                    counts.remove(&id);
                    catalog.remove_collection(id);
                }
                batch.delete_cf(meta, format!("db/{name}"));
                catalog.databases.remove(name);
                catalog_changed = true;
            }
            RecordType::IndexCreate
            | RecordType::IndexDrop
            | RecordType::TransactionBegin
            | RecordType::TransactionCommit
            | RecordType::TransactionAbort => {}
        }
    }
    for (id, count) in &counts {
        if catalog.collection_by_id(*id).is_some() {
            batch.put_cf(meta, format!("count/{id}"), count.to_le_bytes());
        }
    }
    let tick_last = last.ticks().last;
    batch.put_cf(meta, APPLIED_TICK, tick_last.get().to_le_bytes());
    store.write(batch)?;

    // Publish: counts and catalog first, then the tick that says they are there.
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
    if catalog_changed {
        *store.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
    }
    assert!(tick_last > applied, "applied ticks only grow");
    store.applied.store(tick_last.get(), Ordering::Release);
    Ok(stats)
}
