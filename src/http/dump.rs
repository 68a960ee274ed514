//! What arangodump and ArangoDB's initial syncer read through a batch: `inventory` (the
//! databases and collections as of the batch's tick) and `dump` (a collection's documents as of
//! that tick, paged by the batch's cursor for it).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode};
use serde_json::{json, Map, Value};
use tickship_storage::docstore::{Catalog, KeyRange, StoreSnapshot, SYSTEM_DATABASE};
use tickship_storage::Tick;

use super::{json, AppState, Req};
use crate::api::{num, ApiError, ApiResult};
use crate::leader::batches::{Batch, DumpCursor};
use crate::util::iso8601;

/// Default and largest `chunkSize` of `dump`, in bytes.
const CHUNK_DEFAULT: usize = 16 << 20;
const CHUNK_MAX: usize = 128 << 20;
/// Documents read from the snapshot at a time while filling a chunk.
const PAGE_DOCS: usize = 1000;

/// The batch named by `batchId`, with ArangoDB's answers when there is none.
fn batch_of(
    state: &AppState,
    req: &Req,
    missing: &str,
    unknown: &str,
    error_num: u32,
) -> ApiResult<Arc<Batch>> {
    match req.query("batchId") {
        None | Some("") => Err(ApiError::new(StatusCode::NOT_FOUND, error_num, missing)),
        Some(id) => state
            .batches
            .get(id)
            .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, error_num, unknown)),
    }
}

/// `batch_of` with the answers of `inventory`, the key-range calls and the physical copy's.
fn batch_named(state: &AppState, req: &Req) -> ApiResult<Arc<Batch>> {
    batch_of(
        state,
        req,
        "batchId not specified",
        "context was not found",
        num::CURSOR_NOT_FOUND,
    )
}

/// A database's collections as `inventory` lists them.
fn collections_of(snapshot: &StoreSnapshot, db: &str, include_system: bool) -> Vec<Value> {
    snapshot
        .catalog()
        .collections(db)
        .iter()
        .filter(|c| include_system || !c.is_system)
        .map(|c| {
            let mut parameters = super::collections::properties_json(c);
            // Not in ArangoDB's inventory; lets a dump show progress against a total.
            parameters.insert("count".into(), json!(snapshot.count(c.id)));
            let mut entry = json!({ "parameters": parameters, "indexes": [] });
            // Not in ArangoDB's either: what a syncing follower compares its copy with.
            if let Some(digest) = snapshot.digest(c.id) {
                entry["digest"] = json!(digest.hex());
            }
            entry
        })
        .collect()
}

fn database_properties(catalog: &Catalog, db: &str) -> Value {
    let id = catalog.database(db).map_or(0, |d| d.id);
    json!({
        "id": id.to_string(),
        "name": db,
        "isSystem": db == SYSTEM_DATABASE,
        "sharding": "",
        "replicationFactor": 1,
        "writeConcern": 1,
    })
}

/// `GET /_api/replication/inventory?batchId&includeSystem&global`: the collections (and, with
/// `global`, the databases) as of the batch's tick.
pub fn inventory(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    let batch = batch_named(state, req)?;
    let include_system = req.flag("includeSystem", true);
    let global = req.flag("global", false);
    if global && req.db != SYSTEM_DATABASE {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            num::USE_SYSTEM_DATABASE,
            "global inventory can only be fetched from within _system database",
        ));
    }
    let snapshot = &batch.snapshot;
    let catalog = snapshot.catalog();
    let tick = snapshot.tick().to_string();
    let mut body = Map::new();
    if global {
        let mut databases = Map::new();
        for db in catalog.databases() {
            databases.insert(
                db.name.clone(),
                json!({
                    "id": db.id.to_string(),
                    "name": db.name,
                    "properties": database_properties(catalog, &db.name),
                    "collections": collections_of(snapshot, &db.name, include_system),
                    "views": [],
                }),
            );
        }
        body.insert("databases".into(), Value::Object(databases));
    } else {
        if catalog.database(&req.db).is_none() {
            return Err(ApiError::database_not_found());
        }
        let mut collections = collections_of(snapshot, &req.db, include_system);
        if let Some(only) = req.query("collection").filter(|c| !c.is_empty()) {
            collections.retain(|c| c["parameters"]["name"] == only);
        }
        body.insert("collections".into(), Value::Array(collections));
        body.insert("views".into(), json!([]));
        body.insert("properties".into(), database_properties(catalog, &req.db));
    }
    body.insert(
        "state".into(),
        json!({
            "running": true,
            "lastLogTick": tick,
            "lastUncommittedLogTick": tick,
            "totalEvents": snapshot.tick().get(),
            "time": iso8601(std::time::SystemTime::now()),
        }),
    );
    // ArangoDB puts its global tick here, which arangodump records as `lastTickAtDumpStart`;
    // the batch's own tick is the one a follower restored from this dump can start from.
    body.insert("tick".into(), json!(tick));
    Ok(json(StatusCode::OK, &Value::Object(body)))
}

/// The request's `collection` (a name or id) of its database as of the batch's tick.
fn snapshot_collection(
    batch: &Batch,
    req: &Req,
) -> ApiResult<Arc<tickship_storage::docstore::CollectionInfo>> {
    let name = req.query("collection").unwrap_or("");
    if name.is_empty() {
        return Err(ApiError::bad_parameter(
            "invalid collection parameter: collection missing",
        ));
    }
    let catalog = batch.snapshot.catalog();
    catalog
        .collection(&req.db, name)
        .or_else(|| {
            name.parse::<u64>()
                .ok()
                .and_then(|id| catalog.collection_by_id(id))
        })
        .filter(|c| c.database == req.db)
        .ok_or_else(ApiError::collection_not_found)
}

/// Bytes of one piece of a chunk: small enough that the allocator reuses them, rather than
/// mapping (and the kernel zeroing) a whole chunk's pages for every request.
const PIECE_BYTES: usize = 1 << 20;

/// A chunk of a dump, read and serialised.
pub struct Chunk {
    pieces: Vec<bytes::Bytes>,
    bytes: usize,
    /// Documents remain after it.
    more: bool,
}

/// Reads about `chunk` bytes of documents of collection `id` (named `name`) after the cursor,
/// and moves the cursor past them only if all of them were read.
fn produce(
    batch: &Batch,
    id: u64,
    name: &str,
    cursor: &mut DumpCursor,
    chunk: usize,
    envelope: bool,
) -> ApiResult<Chunk> {
    let (mut after, mut done) = (cursor.after.clone(), cursor.done);
    let mut pieces = Vec::new();
    let mut piece: Vec<u8> = Vec::with_capacity(PIECE_BYTES + (64 << 10));
    let mut bytes = 0usize;
    // Documents per read, sized from those seen so far so a chunk overshoots by little.
    let mut average = 1024usize;
    let mut seen = 0usize;
    while !done && bytes + piece.len() < chunk {
        let limit = ((chunk - bytes - piece.len()) / average).clamp(1, PAGE_DOCS);
        let page = batch.snapshot.page(id, after.as_deref(), limit)?;
        if page.len() < limit {
            done = true;
        }
        for (_, doc) in &page {
            if envelope {
                piece.extend_from_slice(br#"{"type":2300,"data":"#);
            }
            piece.extend_from_slice(&doc.to_json_in(name));
            if envelope {
                piece.push(b'}');
            }
            piece.push(b'\n');
            if piece.len() >= PIECE_BYTES {
                bytes += piece.len();
                pieces.push(bytes::Bytes::from(std::mem::replace(
                    &mut piece,
                    Vec::with_capacity(PIECE_BYTES + (64 << 10)),
                )));
            }
        }
        seen += page.len();
        average = ((bytes + piece.len()) / seen.max(1)).max(64);
        if let Some((key, _)) = page.into_iter().next_back() {
            after = Some(key);
        }
    }
    if !piece.is_empty() {
        bytes += piece.len();
        pieces.push(bytes::Bytes::from(piece));
    }
    cursor.after = after;
    cursor.done = done;
    Ok(Chunk {
        pieces,
        bytes,
        more: !done,
    })
}

/// `GET /_api/replication/dump?collection&batchId&chunkSize[&useEnvelope]`: the next documents
/// of `collection` as of the batch's tick, about `chunkSize` bytes of them, one per line; 204
/// once they have all been sent.
pub fn dump(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    let batch = batch_of(
        state,
        req,
        "replication dump - request misses batchId",
        "replication dump - unable to find context (it could be expired)",
        num::HTTP_BAD_PARAMETER,
    )?;
    let snapshot = &batch.snapshot;
    let collection = snapshot_collection(&batch, req)?;
    let chunk = req
        .query("chunkSize")
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(CHUNK_DEFAULT)
        .clamp(1, CHUNK_MAX);
    let envelope = req.flag("useEnvelope", true);
    let cursor = batch.cursor(collection.id);
    let name = collection.name.clone();
    let id = collection.id;
    let produced = tokio::task::block_in_place(|| -> ApiResult<Chunk> {
        let mut cursor = cursor.lock().unwrap_or_else(|p| p.into_inner());
        match cursor.prefetched.take() {
            Some(chunk) => Ok(chunk),
            None => Ok(produce(&batch, id, &name, &mut cursor, chunk, envelope)?),
        }
    })?;
    // While this chunk travels, the next one is read (one chunk ahead at most, per collection).
    if produced.more {
        let (batch, cursor) = (batch.clone(), cursor.clone());
        tokio::task::spawn_blocking(move || {
            let mut cursor = cursor.lock().unwrap_or_else(|p| p.into_inner());
            if cursor.prefetched.is_none() && !cursor.done {
                if let Ok(next) = produce(&batch, id, &name, &mut cursor, chunk, envelope) {
                    cursor.prefetched = Some(next);
                }
            }
        });
    }
    let Chunk {
        pieces,
        bytes,
        more,
    } = produced;
    let status = if bytes == 0 {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::OK
    };
    let included = if bytes == 0 {
        "0".to_string()
    } else {
        snapshot.tick().to_string()
    };
    let body = Body::from_stream(futures_util::stream::iter(
        pieces.into_iter().map(Ok::<_, std::io::Error>),
    ));
    let mut response = super::raw(status, "application/x-arango-dump", body);
    if let Ok(length) = HeaderValue::from_str(&bytes.to_string()) {
        response
            .headers_mut()
            .insert(axum::http::header::CONTENT_LENGTH, length);
    }
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-arango-replication-checkmore", more.to_string()),
        ("x-arango-replication-lastincluded", included),
        ("x-arango-replication-active", "true".to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    Ok(response)
}

/// The batch and collection a key-range request names (`batchId`, `collection`).
fn range_request(
    state: &AppState,
    req: &Req,
) -> ApiResult<(Arc<Batch>, Arc<tickship_storage::docstore::CollectionInfo>)> {
    let batch = batch_named(state, req)?;
    let collection = snapshot_collection(&batch, req)?;
    Ok((batch, collection))
}

/// The key range of a request: `low` (included) or `after` (excluded), and `high` (included).
fn key_range<'a>(
    low: Option<&'a str>,
    after: Option<&'a str>,
    high: Option<&'a str>,
) -> KeyRange<'a> {
    let empty_is_none = |v: Option<&'a str>| v.filter(|v| !v.is_empty());
    match empty_is_none(after) {
        Some(after) => KeyRange {
            low: Some(after),
            after_low: true,
            high: empty_is_none(high),
        },
        None => KeyRange::between(empty_is_none(low), empty_is_none(high)),
    }
}

/// Chunks one `ranges` answer holds at most; a follower asks again after the last for more.
const RANGES_MAX: usize = 65_536;
/// Pairs one `range-keys` answer holds at most.
const RANGE_KEYS_MAX: usize = 100_000;
/// Keys one `range-documents` request may name.
const RANGE_DOCUMENTS_KEYS_MAX: usize = 100_000;
/// Bytes of documents after which a `range-documents` answer for a range stops.
const RANGE_DOCUMENTS_BYTES: usize = 16 << 20;

/// `GET /_api/replication/ranges?batchId&collection&chunkSize[&low|&after][&high]` (tickship):
/// the collection's keys in the range as of the batch's tick, cut into chunks of `chunkSize`
/// consecutive keys, each with its first and last key, count and hash (`leader::ranges`).
/// `more` says chunks remain after the last (ask again with `after` its `high`).
pub fn ranges(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    let (batch, collection) = range_request(state, req)?;
    let size = match req.query("chunkSize").map(str::parse::<u64>) {
        None => 4096,
        Some(Ok(size)) if (1..=1 << 20).contains(&size) => size,
        Some(_) => {
            return Err(ApiError::bad_parameter(
                "invalid chunkSize: expecting 1 to 1048576 keys",
            ))
        }
    };
    let most = match req.query("maxRanges").map(str::parse::<usize>) {
        None => RANGES_MAX,
        Some(Ok(most)) if (1..=RANGES_MAX).contains(&most) => most,
        Some(_) => {
            return Err(ApiError::bad_parameter(format!(
                "invalid maxRanges: expecting 1 to {RANGES_MAX}"
            )))
        }
    };
    let range = key_range(req.query("low"), req.query("after"), req.query("high"));
    let (chunks, more) = tokio::task::block_in_place(|| {
        crate::leader::ranges::chunk_pairs(size, most, |visit| {
            batch.snapshot.key_revs(collection.id, range, visit)
        })
    })?;
    Ok(checked(json!({
        "count": chunks.iter().map(|c| c.count).sum::<u64>(),
        "ranges": chunks,
        "more": more,
    })))
}

/// A JSON answer with the CRC-32C of its body (`leader::ranges::CRC_HEADER`).
fn checked(value: Value) -> Response<Body> {
    checked_bytes(
        serde_json::to_vec(&value).unwrap_or_default(),
        "application/json",
    )
}

/// `GET /_api/replication/range-keys?batchId&collection[&low|&after][&high]` (tickship): the
/// `[key, revision]` pairs of the range as of the batch's tick, in key order.
pub fn range_keys(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    let (batch, collection) = range_request(state, req)?;
    let range = key_range(req.query("low"), req.query("after"), req.query("high"));
    let mut pairs: Vec<Value> = Vec::new();
    let mut too_many = false;
    tokio::task::block_in_place(|| {
        batch.snapshot.key_revs(collection.id, range, |key, rev| {
            if pairs.len() >= RANGE_KEYS_MAX {
                too_many = true;
                return false;
            }
            pairs.push(json!([key, rev.to_string()]));
            true
        })
    })?;
    if too_many {
        return Err(ApiError::bad_parameter(format!(
            "the range holds more than {RANGE_KEYS_MAX} keys: ask for its chunks (ranges) first"
        )));
    }
    Ok(checked(Value::Array(pairs)))
}

/// `PUT /_api/replication/range-documents?batchId&collection` (tickship): the documents named
/// by the body's `keys`, or those in its range (`low` or `after`, and `high`), as of the batch's
/// tick, one per line as `dump` without envelope writes them. Keys the snapshot does not hold are
/// left out. A range stops after about 16 MiB: `x-arango-replication-checkmore` is then true and
/// `x-tickship-last-key` names the last key sent.
pub fn range_documents(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    let (batch, collection) = range_request(state, req)?;
    let body = req.json()?;
    let text = |name: &str| body.get(name).and_then(Value::as_str);
    let mut out = Vec::new();
    let mut more = false;
    let mut last_key = String::new();
    match body.get("keys") {
        Some(Value::Array(keys)) => {
            if keys.len() > RANGE_DOCUMENTS_KEYS_MAX {
                return Err(ApiError::bad_parameter(format!(
                    "at most {RANGE_DOCUMENTS_KEYS_MAX} keys per request"
                )));
            }
            let keys: Vec<&str> = keys
                .iter()
                .map(|k| {
                    k.as_str()
                        .ok_or_else(|| ApiError::bad_parameter("\"keys\" must hold strings"))
                })
                .collect::<ApiResult<_>>()?;
            let found =
                tokio::task::block_in_place(|| batch.snapshot.get_many(collection.id, &keys))?;
            for doc in found.into_iter().flatten() {
                out.extend_from_slice(&doc.to_json_in(&collection.name));
                out.push(b'\n');
            }
        }
        Some(_) => return Err(ApiError::bad_parameter("\"keys\" must be an array")),
        None => {
            let first = key_range(text("low"), text("after"), text("high"));
            tokio::task::block_in_place(|| -> ApiResult<()> {
                loop {
                    let range = if last_key.is_empty() {
                        first
                    } else {
                        KeyRange {
                            low: Some(&last_key),
                            after_low: true,
                            high: first.high,
                        }
                    };
                    let page = batch.snapshot.range(collection.id, range, PAGE_DOCS)?;
                    let full = page.len() == PAGE_DOCS;
                    for (_, doc) in &page {
                        out.extend_from_slice(&doc.to_json_in(&collection.name));
                        out.push(b'\n');
                    }
                    if let Some((key, _)) = page.into_iter().next_back() {
                        last_key = key;
                    }
                    if !full {
                        return Ok(());
                    }
                    if out.len() >= RANGE_DOCUMENTS_BYTES {
                        more = true;
                        return Ok(());
                    }
                }
            })?;
        }
    }
    Ok(page(out, "application/x-arango-dump", more, &last_key))
}

/// Keys one `changed-keys` answer names at most (about, as it ends with a block).
const CHANGED_KEYS_MAX: usize = 65_536;

/// `GET /_api/replication/changed-keys?batchId&from` (tickship): the keys of the documents the
/// log changed after tick `from` through the batch's tick, per collection id
/// (`leader::changes`). `from` in the answer is later than asked if the log no longer holds
/// every tick after it; `more` says to ask again from `through`.
pub fn changed_keys(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    let batch = batch_named(state, req)?;
    let from = match req.query("from").map(str::parse::<u64>) {
        Some(Ok(from)) => Tick::new(from),
        _ => return Err(ApiError::bad_parameter("invalid from: expecting a tick")),
    };
    let until = batch.snapshot.tick();
    let found = tokio::task::block_in_place(|| {
        crate::leader::changes::changed_keys(&state.node.wal, from, until, CHANGED_KEYS_MAX)
    })?;
    let keys: Map<String, Value> = found
        .keys
        .into_iter()
        .map(|(id, keys)| (id.to_string(), json!(keys)))
        .collect();
    Ok(checked(json!({
        "from": found.from.to_string(),
        "through": found.through.to_string(),
        "more": found.more,
        "records": found.records,
        "keys": keys,
        "emptied": found.emptied.iter().map(u64::to_string).collect::<Vec<_>>(),
    })))
}

/// A page of a range answer: its CRC-32C, whether more follows and, if so, its last key.
fn page(out: Vec<u8>, content_type: &'static str, more: bool, last_key: &str) -> Response<Body> {
    let mut response = checked_bytes(out, content_type);
    let headers = response.headers_mut();
    headers.insert(
        "x-arango-replication-checkmore",
        HeaderValue::from_static(if more { "true" } else { "false" }),
    );
    if more {
        if let Ok(value) = HeaderValue::from_str(last_key) {
            headers.insert("x-tickship-last-key", value);
        }
    }
    response
}

/// `body` with its CRC-32C in `CRC_HEADER`.
fn checked_bytes(body: Vec<u8>, content_type: &'static str) -> Response<Body> {
    let crc = crate::leader::ranges::crc_of(&body);
    let mut response = super::raw(StatusCode::OK, content_type, body);
    if let Ok(crc) = HeaderValue::from_str(&crc) {
        response
            .headers_mut()
            .insert(crate::leader::ranges::CRC_HEADER, crc);
    }
    response
}

/// Largest piece of a file one `file` request returns.
const FILE_PIECE_MAX: usize = 16 << 20;
/// Bytes of keys and values after which a `key-values` page ends.
const KEY_VALUES_PAGE_BYTES: usize = 4 << 20;

/// `GET /_api/replication/files?batchId` (tickship): the files holding the batch's documents,
/// for a physical sync: each with its index (for `file`), the leader's id of it, the ticks it is
/// sealed as covering, the bytes to copy and its inode (what tells a resumed copy it is the same
/// file). `files` is null, with `reason`, when the batch cannot be copied as files.
pub fn files(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    let batch = batch_named(state, req)?;
    let listed = tokio::task::block_in_place(|| batch.files());
    let tick = batch.snapshot.tick().to_string();
    let body = match listed {
        Ok(files) => {
            let files: Vec<Value> = files
                .iter()
                .enumerate()
                .map(|(index, f)| {
                    json!({
                        "index": index,
                        "id": f.id.get().to_string(),
                        "valueFile": f.value_file,
                        "tickFirst": f.ticks.first.to_string(),
                        "tickLast": f.ticks.last.to_string(),
                        "bytes": f.data_end,
                        "inode": f.inode.to_string(),
                    })
                })
                .collect();
            json!({ "tick": tick, "files": files })
        }
        Err(reason) => json!({ "tick": tick, "files": null, "reason": reason }),
    };
    Ok(checked(body))
}

/// `GET /_api/replication/file?batchId&index&offset&length` (tickship): bytes of file `index`
/// of the batch's `files`, from `offset`, at most `length` (16 MiB at most), as they are on disk.
pub fn file(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    let batch = batch_named(state, req)?;
    let number = |name: &str| -> ApiResult<u64> {
        req.query(name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ApiError::bad_parameter(format!("invalid or missing {name}")))
    };
    let index = number("index")? as usize;
    let offset = number("offset")?;
    let length = (number("length")? as usize).min(FILE_PIECE_MAX);
    let files = batch.files().map_err(ApiError::bad_parameter)?;
    let file = files
        .get(index)
        .ok_or_else(|| ApiError::bad_parameter(format!("the batch has no file {index}")))?;
    if offset > file.data_end {
        return Err(ApiError::bad_parameter(format!(
            "offset {offset} is past the file's {} bytes",
            file.data_end
        )));
    }
    let bytes = tokio::task::block_in_place(|| file.read(offset, length))?;
    Ok(checked_bytes(bytes, "application/octet-stream"))
}

/// `GET /_api/replication/key-values?batchId&collection[&after]` (tickship): the collection's
/// stored values as of the batch's tick, in key order after `after`, for a physical sync: each
/// as `key length (u16 LE) | key | value length (u32 LE) | value`, where the value is the
/// document's revision (8 bytes LE) followed by the document if the store keeps it itself. A
/// page ends after about 4 MiB: `x-arango-replication-checkmore` is then true and
/// `x-tickship-last-key` names its last key.
pub fn key_values(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    let (batch, collection) = range_request(state, req)?;
    let after = req.query("after").filter(|a| !a.is_empty());
    let mut out = Vec::new();
    let mut more = false;
    let mut last_key = String::new();
    tokio::task::block_in_place(|| {
        batch
            .snapshot
            .raw_values(collection.id, after, |key, value| {
                if out.len() >= KEY_VALUES_PAGE_BYTES {
                    more = true;
                    return false;
                }
                out.extend_from_slice(&(key.len() as u16).to_le_bytes());
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
                last_key.clear();
                last_key.push_str(key);
                true
            })
    })?;
    Ok(page(out, "application/octet-stream", more, &last_key))
}
