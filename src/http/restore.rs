//! What arangorestore sends: `restore-collection`, `restore-indexes` and `restore-data`. The
//! data goes straight into the store without taking ticks (`DocStore::restore_*`), so that a
//! follower restored from its leader's dump can go on with the leader's log after the dump's
//! tick. Because restored data is in no WAL, the first restore step raises the log's floor past
//! its last tick: no replication client is ever served a log that lacks what was restored.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Response, StatusCode};
use serde_json::{json, Value};
use tickship_storage::docstore::{CollectionInfo, CollectionRestore, KeyOptions, Restored};
use tickship_storage::Tick;

use super::{json, AppState, Req};
use crate::api::{num, ApiError, ApiResult};
use crate::json::RawObject;

/// How long a restore waits for the store to apply what the log holds before moving its floor.
const APPLIED_WAIT: Duration = Duration::from_secs(60);

/// A restore changes the store under the log: refused while this server follows a leader
/// (its data must be the leader's) or while replication clients read its log (they would lose
/// their place: after the restore they get 1414 and must be initialised again).
fn check_restorable(state: &AppState) -> ApiResult<()> {
    state.node.check_writable()?;
    if state.applier.is_running() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            num::RUNNING,
            "cannot restore while the replication applier is running; stop it first",
        ));
    }
    let clients = state.clients.list();
    if !clients.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            num::CONFLICT,
            format!(
                "cannot restore into a server whose log {} replication client(s) read (restored \
                 data is not in the log, so they would have to be initialised again); restore \
                 into a server without followers",
                clients.len()
            ),
        ));
    }
    Ok(())
}

/// Moves the log's floor past its last tick once the store has applied it, unless the floor is
/// there already: from here on no client is served a tick from before the restore.
fn raise_floor(state: &AppState) -> ApiResult<()> {
    // Restores of several collections at once: one moves the floor, the others see it moved.
    static RAISING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _raising = RAISING.lock().unwrap_or_else(|p| p.into_inner());
    let node = &state.node;
    let last = node.wal.last_tick();
    if last == node.wal.floor() && last > Tick::ZERO {
        return Ok(());
    }
    node.store_writer.wait_applied(last, APPLIED_WAIT)?;
    let floor = last
        .checked_next()
        .ok_or_else(|| ApiError::internal("tick space exhausted"))?;
    node.wal.skip_to(floor, false)?;
    node.store.assume_applied(floor, floor)?;
    node.store_writer.note_applied(node.store.applied_tick());
    tracing::info!(%floor, "restore: the log's floor moved past its last tick");
    Ok(())
}

/// A collection id as a dump names it: `id`, `cid` or `planId`, a string or a number.
fn dumped_id(parameters: &Value) -> u64 {
    ["id", "cid", "planId"]
        .iter()
        .filter_map(|name| parameters.get(*name))
        .find_map(|v| match v {
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        })
        .unwrap_or(0)
}

/// The collection a dump's (or an inventory's) `parameters` describe, in database `db`.
pub(crate) fn collection_info(parameters: &Value, db: &str) -> ApiResult<CollectionInfo> {
    let name = parameters
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_parameter("restore-collection: \"parameters\" has no \"name\"")
        })?;
    if !crate::util::valid_collection_name(name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            num::ILLEGAL_NAME,
            format!("illegal name: '{name}'"),
        ));
    }
    let kind = match parameters.get("type").and_then(Value::as_u64) {
        None | Some(2) => 2,
        Some(3) => 3,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                num::COLLECTION_TYPE_INVALID,
                format!("invalid collection type {other}"),
            ))
        }
    };
    let key_options = parameters.get("keyOptions");
    let info = CollectionInfo {
        id: dumped_id(parameters),
        name: name.to_string(),
        database: db.to_string(),
        kind,
        wait_for_sync: parameters
            .get("waitForSync")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        key_options: KeyOptions {
            kind: key_options
                .and_then(|k| k.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("traditional")
                .to_string(),
            allow_user_keys: key_options
                .and_then(|k| k.get("allowUserKeys"))
                .and_then(Value::as_bool)
                .unwrap_or(true),
        },
        is_system: name.starts_with('_'),
    };
    Ok(info)
}

/// `PUT /_api/replication/restore-collection?overwrite[&createDatabase]`: creates the collection
/// of a dump's structure file, empty. tickship's `createDatabase=true` creates the database too
/// (without a tick, unlike `POST /_api/database`).
pub fn restore_collection(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    check_restorable(state)?;
    let body = req.json()?;
    let parameters = body
        .get("parameters")
        .filter(|p| p.is_object())
        .ok_or_else(|| {
            ApiError::bad_parameter("restore-collection: body has no \"parameters\" object")
        })?;
    let info = collection_info(parameters, &req.db)?;
    let name = info.name.clone();
    let overwrite = req.flag("overwrite", false);
    let create_database = req.flag("createDatabase", false);
    tokio::task::block_in_place(|| -> ApiResult<Response<Body>> {
        let store = &state.node.store;
        if store.catalog().database(&req.db).is_none() {
            if !create_database {
                return Err(ApiError::database_not_found());
            }
            if !crate::util::valid_database_name(&req.db) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    num::DATABASE_NAME_INVALID,
                    format!("database name invalid: '{}'", req.db),
                ));
            }
            raise_floor(state)?;
            store.restore_database(&req.db)?;
        }
        raise_floor(state)?;
        match store.restore_collection(info, overwrite)? {
            CollectionRestore::Created(created) => {
                tracing::info!(
                    database = %req.db,
                    collection = %created.name,
                    id = created.id,
                    "restore: collection created"
                );
                Ok(json(
                    StatusCode::OK,
                    &json!({"result": true, "id": created.id.to_string()}),
                ))
            }
            CollectionRestore::Exists(_) => Err(ApiError::new(
                StatusCode::CONFLICT,
                num::DUPLICATE_NAME,
                format!(
                    "duplicate name: collection '{name}' exists; restore with overwrite=true to \
                     replace it"
                ),
            )),
        }
    })
}

/// `PUT /_api/replication/restore-indexes`: the primary and edge indexes every collection has
/// are accepted; any other is refused, since tickship keeps no secondary indexes.
pub fn restore_indexes(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    let body = req.json()?;
    let name = body["parameters"]["name"].as_str().unwrap_or("");
    state.node.collection(&req.db, name)?;
    let indexes = body.get("indexes").and_then(Value::as_array);
    for index in indexes.into_iter().flatten() {
        let kind = index.get("type").and_then(Value::as_str).unwrap_or("");
        if !matches!(kind, "primary" | "edge") {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                num::NOT_IMPLEMENTED,
                format!(
                    "index {} of type '{kind}' on collection '{name}' cannot be restored: tickship \
                     serves documents by key and keeps no secondary indexes",
                    index.get("id").unwrap_or(&Value::Null)
                ),
            ));
        }
    }
    Ok(json(StatusCode::OK, &json!({"result": true})))
}

/// A line of a dump that cannot be restored: 400 with the line number and what is wrong.
fn bad_line(line: usize, error_num: u32, what: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        error_num,
        format!("line {line} of the data: {what}"),
    )
}

/// One line of a data file as the document or removal it restores. Lines are a bare document
/// (3.8+ without envelope), `{"type":2300|2302,"data":{...}}`, or the MMFiles form with `key`
/// and `rev` beside them. A `_rev` that is not a tick (ArangoDB's own revisions) becomes
/// `fallback_rev`.
pub(crate) fn parse_line(
    text: &[u8],
    line: usize,
    collection: &CollectionInfo,
    fallback_rev: Tick,
) -> ApiResult<Restored> {
    let text = std::str::from_utf8(text).map_err(|e| {
        bad_line(
            line,
            num::CORRUPTED_JSON,
            format!("invalid JSON: not UTF-8: {e}"),
        )
    })?;
    // The scan refuses what a later parse of the stored document would, numbers no double
    // holds included, as the document API does.
    let invalid = |e: crate::json::ScanError| {
        let what = if e.what.starts_with("number out of range") {
            e.to_string()
        } else {
            format!("invalid JSON: {e}")
        };
        bad_line(line, num::CORRUPTED_JSON, what)
    };
    let object = RawObject::parse(text).map_err(invalid)?;
    let (kind, document) = match (object.get("type"), object.get("data")) {
        (Some(kind), Some(data)) => {
            let kind: u64 = serde_json::from_str(kind)
                .map_err(|_| bad_line(line, num::BAD_PARAMETER, "\"type\" is not a number"))?;
            let data = RawObject::parse(data).map_err(|_| {
                bad_line(
                    line,
                    num::DOCUMENT_TYPE_INVALID,
                    "\"data\" is not an object",
                )
            })?;
            (kind, data)
        }
        _ => (2300, object),
    };
    let key = match document.get_str("_key") {
        Some(Ok(key)) => key,
        _ => match (kind, document.get_str("key")) {
            (2302, Some(Ok(key))) => key,
            _ => {
                return Err(bad_line(
                    line,
                    num::DOCUMENT_KEY_BAD,
                    "document has no \"_key\" string",
                ))
            }
        },
    };
    if !crate::util::valid_key(&key) {
        return Err(bad_line(
            line,
            num::DOCUMENT_KEY_BAD,
            format!("illegal document key {key:?}"),
        ));
    }
    match kind {
        2302 => Ok(Restored::Remove { key }),
        2300 | 2301 => {
            if collection.kind == 3 {
                for side in ["_from", "_to"] {
                    let valid = document
                        .get_str(side)
                        .and_then(Result::ok)
                        .is_some_and(|h| h.contains('/'));
                    if !valid {
                        return Err(bad_line(
                            line,
                            num::INVALID_EDGE_ATTRIBUTE,
                            format!("edge has no valid \"{side}\""),
                        ));
                    }
                }
            }
            let rev = document
                .get_str("_rev")
                .and_then(Result::ok)
                .and_then(|r| r.parse::<u64>().ok())
                .filter(|&r| r > 0)
                .map_or(fallback_rev, Tick::new);
            let id = format!("{}/{key}", collection.name);
            let json = document.write_document(&key, &id);
            Ok(Restored::Put { key, rev, json })
        }
        other => Err(bad_line(
            line,
            num::BAD_PARAMETER,
            format!("unexpected marker type {other} (a data file holds 2300 and 2302 only)"),
        )),
    }
}

/// `PUT /_api/replication/restore-data?collection=`: the body's lines (a piece of a data file)
/// stored in the collection, durably, in one step: all of them or, on a bad line, none.
pub fn restore_data(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    check_restorable(state)?;
    let name = req.query("collection").unwrap_or("");
    let collection: Arc<CollectionInfo> = state.node.collection(&req.db, name)?;
    // ArangoDB revisions are not ticks: such documents get the tick of the restore (the floor).
    let fallback_rev = state.node.wal.floor().max(Tick::new(1));
    let mut items = Vec::new();
    let body = &req.body[..];
    let mut starts = std::iter::once(0).chain(memchr::memchr_iter(b'\n', body).map(|at| at + 1));
    let mut next = starts.next();
    let lines = std::iter::from_fn(|| {
        let start = next?;
        next = starts.next();
        Some(&body[start..next.map_or(body.len(), |end| end - 1)])
    });
    for (index, text) in lines.enumerate() {
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let item = parse_line(text, index + 1, &collection, fallback_rev)?;
        if let Restored::Put { key, .. } = &item {
            if let Ok(number) = key.parse::<u64>() {
                state.node.keygen.track(number);
            }
        }
        items.push(item);
    }
    let lines = items.len();
    let stats =
        tokio::task::block_in_place(|| state.node.store.restore_documents(collection.id, items))?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "result": true,
            "lines": lines,
            "created": stats.created,
            "replaced": stats.replaced,
            "removed": stats.removed,
        }),
    ))
}
