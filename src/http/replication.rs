//! The replication logger (`logger-state`, `logger-first-tick`, `logger-tick-ranges`,
//! `server-id`) and the WAL access API (`wal/range`, `wal/lastTick`, `wal/tail`).

use std::fmt::Write;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode};
use serde_json::{json, Value};
use tickship_storage::docstore::with_rev;
use tickship_storage::wal::RecordType;
use tickship_storage::Tick;

use super::{json, AppState, Req};
use crate::api::{num, ApiError, ApiResult};
use crate::http::admin::ARANGO_VERSION;
use crate::util::iso8601;

/// Default and largest `chunkSize` of `wal/tail`, as ArangoDB's.
const CHUNK_DEFAULT: usize = 1 << 20;
const CHUNK_MAX: usize = 128 << 20;

fn server(state: &AppState, engine: bool) -> Value {
    let mut server = json!({ "version": ARANGO_VERSION, "serverId": state.node.server_id });
    if engine {
        server["engine"] = json!("rocksdb");
    }
    server
}

pub fn logger_state(state: &AppState) -> ApiResult<Response<Body>> {
    let last = state.node.wal.last_tick();
    let (wal, now) = (&state.node.wal, SystemTime::now());
    let (ranges, rate) = (wal.tick_ranges(), wal.append_rate());
    let clients: Vec<Value> = state
        .clients
        .list()
        .into_iter()
        .map(|c| {
            let lag = c.lag(wal, &ranges, now, rate);
            json!({
                "syncerId": c.syncer_id,
                "serverId": c.server_id,
                "clientInfo": c.client_info,
                "time": iso8601(c.time),
                "expires": iso8601(c.expires),
                "lastServedTick": c.last_served_tick.to_string(),
                "ticksBehind": lag.ticks,
                "bytesBehind": lag.bytes,
                "secondsToFalloff": lag.seconds_to_falloff,
                "secondsToCatchUp": lag.seconds_to_catch_up,
            })
        })
        .chain(state.clients.dumps().into_iter().map(|d| {
            let at = |ms: u64| iso8601(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
            json!({
                "syncerId": "",
                "serverId": "",
                "clientInfo": format!("dump barrier of batch {} (until a follower starts from its tick)", d.batch),
                "time": at(d.created),
                "expires": at(d.expires),
                "lastServedTick": d.tick,
            })
        }))
        .collect();
    let body = json!({
        "state": {
            "running": true,
            "lastLogTick": last.to_string(),
            "lastUncommittedLogTick": last.to_string(),
            "totalEvents": last.get(),
            "time": iso8601(SystemTime::now()),
        },
        "server": server(state, true),
        "clients": clients,
    });
    Ok(json(StatusCode::OK, &body))
}

/// The smallest tick still servable: the WAL's first tick, or the next tick if it is empty.
fn first_tick(state: &AppState) -> Tick {
    let wal = &state.node.wal;
    wal.first_tick()
        .unwrap_or_else(|| wal.last_tick().checked_next().unwrap_or(Tick::MAX))
}

pub fn logger_first_tick(state: &AppState) -> ApiResult<Response<Body>> {
    Ok(json(
        StatusCode::OK,
        &json!({ "firstTick": first_tick(state).to_string() }),
    ))
}

pub fn logger_tick_ranges(state: &AppState) -> ApiResult<Response<Body>> {
    let ranges: Vec<Value> = state
        .node
        .wal
        .tick_ranges()
        .into_iter()
        .map(|r| {
            json!({
                "datafile": r.path.display().to_string(),
                "status": r.status(),
                "tickMin": r.tick_min.to_string(),
                "tickMax": r.tick_max.to_string(),
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &Value::Array(ranges)))
}

pub fn server_id(state: &AppState) -> ApiResult<Response<Body>> {
    Ok(json(
        StatusCode::OK,
        &json!({ "serverId": state.node.server_id }),
    ))
}

pub fn wal_range(state: &AppState) -> ApiResult<Response<Body>> {
    let body = json!({
        "time": iso8601(SystemTime::now()),
        "tickMin": first_tick(state).to_string(),
        "tickMax": state.node.wal.last_tick().to_string(),
        "server": server(state, false),
    });
    Ok(json(StatusCode::OK, &body))
}

pub fn wal_last_tick(state: &AppState) -> ApiResult<Response<Body>> {
    let body = json!({
        "time": iso8601(SystemTime::now()),
        "tick": state.node.wal.last_tick().to_string(),
        "server": server(state, false),
    });
    Ok(json(StatusCode::OK, &body))
}

fn tick_param(req: &Req, name: &str) -> ApiResult<Option<Tick>> {
    match req.query(name) {
        None | Some("") => Ok(None),
        Some(text) => text.parse::<Tick>().map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                num::HTTP_BAD_PARAMETER,
                "invalid from/to values",
            )
        }),
    }
}

/// One marker line of `wal/tail`, in ArangoDB's wal/tail dialect.
fn marker(
    out: &mut Vec<u8>,
    tick: Tick,
    record: &tickship_storage::wal::Record<'_>,
    cuid: Option<String>,
) {
    let mut line = String::with_capacity(64 + record.data.len());
    let _ = write!(
        line,
        r#"{{"tick":"{tick}","type":{},"db":{}"#,
        record.kind.marker_type(),
        json!(record.db)
    );
    if let Some(cuid) = cuid {
        let _ = write!(line, r#","cuid":{}"#, json!(cuid));
    }
    let _ = write!(line, r#","tid":"{}""#, record.tid);
    out.extend_from_slice(line.as_bytes());
    match record.kind {
        RecordType::DocumentPut | RecordType::DocumentInsert => {
            out.extend_from_slice(br#","data":"#);
            out.extend_from_slice(&with_rev(record.data, tick));
        }
        RecordType::DocumentRemove => {
            let data = json!({ "_key": record.key, "_rev": tick.to_string() });
            let _ = write!(line, "");
            out.extend_from_slice(format!(r#","data":{data}"#).as_bytes());
        }
        RecordType::CollectionCreate
        | RecordType::CollectionRename
        | RecordType::CollectionChange
        | RecordType::DatabaseCreate
        | RecordType::IndexCreate
        | RecordType::IndexDrop
            if !record.data.is_empty() =>
        {
            out.extend_from_slice(br#","data":"#);
            out.extend_from_slice(record.data);
        }
        _ => {}
    }
    out.extend_from_slice(b"}\n");
}

/// `GET|PUT /_api/wal/tail`: the markers after `from` (exclusive) up to `to` (inclusive), about
/// `chunkSize` bytes of them, with the `x-arango-replication-*` headers.
pub async fn wal_tail(state: &Arc<AppState>, req: &Req) -> ApiResult<Response<Body>> {
    let from = tick_param(req, "from")?.unwrap_or(Tick::ZERO);
    let to = tick_param(req, "to")?.unwrap_or(Tick::MAX);
    if to < from {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            num::HTTP_BAD_PARAMETER,
            "invalid from/to values",
        ));
    }
    let global = req.flag("global", false);
    if global && req.db != tickship_storage::docstore::SYSTEM_DATABASE {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            num::HTTP_FORBIDDEN,
            "global tailing is only possible from within _system database",
        ));
    }
    let chunk = req
        .query("chunkSize")
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(CHUNK_DEFAULT)
        .clamp(1, CHUNK_MAX);
    let catalog = state.node.store.catalog();
    let only_collection = match req.query("collection") {
        Some(name) if !name.is_empty() => Some(state.node.collection(&req.db, name)?.id),
        _ => None,
    };
    let (syncer_id, server_id) = (
        req.query("syncerId").unwrap_or(""),
        req.query("serverId").unwrap_or(""),
    );
    let wal = state.node.wal.clone();
    let present = wal.contains_after(from);
    if present && (!syncer_id.is_empty() || !server_id.is_empty()) {
        if let Err(error) = state.clients.register(
            &wal,
            syncer_id,
            server_id,
            req.query("clientInfo").unwrap_or(""),
            from,
        ) {
            tracing::debug!("replication client lost its position: {error}");
        }
    }
    let last_tick = wal.last_tick();
    let db = req.db.clone();
    let (body, last_included, last_scanned) = if present {
        tokio::task::block_in_place(|| -> ApiResult<(Vec<u8>, Tick, Tick)> {
            let mut reader = wal.reader_after(from)?;
            let mut out = Vec::new();
            let (mut last_included, mut last_scanned) = (Tick::ZERO, from);
            let mut scratch = Vec::new();
            'blocks: while let Some(block) = reader.next_block()? {
                for item in block.records(&mut scratch)? {
                    let (tick, record) = item.map_err(|reason| {
                        ApiError::internal(format!("damaged WAL record: {reason}"))
                    })?;
                    if tick <= from {
                        continue;
                    }
                    if tick > to || (out.len() >= chunk && last_included > Tick::ZERO) {
                        break 'blocks;
                    }
                    last_scanned = tick;
                    if !global && record.db != db {
                        continue;
                    }
                    let id = record.collection.parse::<u64>().ok();
                    if only_collection.is_some() && id != only_collection {
                        continue;
                    }
                    let cuid = id.filter(|_| !record.collection.is_empty()).map(|id| {
                        catalog
                            .collection_by_id(id)
                            .map_or_else(|| format!("c{id}"), |c| c.globally_unique_id())
                    });
                    marker(&mut out, tick, &record, cuid);
                    last_included = tick;
                }
            }
            Ok((out, last_included, last_scanned))
        })?
    } else {
        (Vec::new(), Tick::ZERO, from)
    };
    let status = if body.is_empty() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::OK
    };
    let mut response = super::raw(status, "application/x-arango-dump", body);
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set(
        "x-arango-replication-lastincluded",
        last_included.to_string(),
    );
    set("x-arango-replication-lastscanned", last_scanned.to_string());
    set("x-arango-replication-lasttick", last_tick.to_string());
    set("x-arango-replication-frompresent", present.to_string());
    set("x-arango-replication-active", "true".into());
    set(
        "x-arango-replication-checkmore",
        (present && last_scanned < last_tick && last_scanned < to).to_string(),
    );
    Ok(response)
}

/// `POST /_api/replication/batch`: a read view of the store at its last applied tick, for
/// `inventory` and `dump`, living for the body's `ttl`.
pub fn create_batch(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    let body = req.json_object_or_empty()?;
    // Refused rather than ignored until they are built.
    if body.contains_key("patchCount") {
        return Err(ApiError::not_implemented("batch patchCount"));
    }
    if req.flag("state", false) {
        return Err(ApiError::not_implemented("batch ?state=true"));
    }
    let ttl = crate::leader::batches::requested_ttl(&Value::Object(body))?;
    let batch = tokio::task::block_in_place(|| state.batches.create(&state.node.store, ttl))?;
    let tick = batch.snapshot.tick();
    tracing::info!(batch = batch.id, %tick, ?ttl, "replication batch created");
    // ArangoDB pins the caller as a replication client while the batch lives; here the dump's
    // barrier holds the log after the tick longer (`--replication.dump-barrier-ttl`).
    // ArangoDB's syncer names itself with `serverId`; tickship's sync does, so that a sync
    // started again replaces the barrier of the one before.
    let server_id = req.query("serverId").unwrap_or("");
    if let Err(e) = state
        .clients
        .hold_for_dump(&state.node.wal, batch.id, tick, server_id)
    {
        let _ = state.batches.remove(&batch.id.to_string());
        return Err(ApiError::internal(format!(
            "cannot keep the log after tick {tick} for the dump: {e:#}"
        )));
    }
    Ok(json(
        StatusCode::OK,
        &json!({"id": batch.id.to_string(), "lastTick": tick.to_string()}),
    ))
}

/// `PUT /_api/replication/batch/{id}`: the batch lives for the body's `ttl` from now.
pub fn extend_batch(state: &AppState, req: &Req, id: &str) -> ApiResult<Response<Body>> {
    let body = req.json_object_or_empty()?;
    let ttl = crate::leader::batches::requested_ttl(&Value::Object(body))?;
    state.batches.extend(id, ttl)?;
    Ok(super::raw(
        StatusCode::NO_CONTENT,
        "application/json",
        Vec::new(),
    ))
}

/// `DELETE /_api/replication/batch/{id}`.
pub fn delete_batch(state: &AppState, id: &str) -> ApiResult<Response<Body>> {
    state.batches.remove(id)?;
    Ok(super::raw(
        StatusCode::NO_CONTENT,
        "application/json",
        Vec::new(),
    ))
}

/// The applier routes: `global=true` (from `_system` only) addresses the server-level applier,
/// which replicates every database; without it, the applier of the request's database.
pub async fn applier(state: &Arc<AppState>, req: &Req, route: &str) -> ApiResult<Response<Body>> {
    use axum::http::Method;
    let global = req.flag("global", false);
    if global && req.db != tickship_storage::docstore::SYSTEM_DATABASE {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            num::HTTP_FORBIDDEN,
            "the global applier can only be addressed from within the _system database",
        ));
    }
    let from = || -> ApiResult<Option<u64>> {
        match req.query("from") {
            Some(from) if !from.is_empty() => from
                .parse::<u64>()
                .map(Some)
                .map_err(|_| ApiError::bad_parameter(format!("invalid value for <from>: {from}"))),
            _ => Ok(None),
        }
    };
    let (applier, appliers, db) = (&state.applier, &state.appliers, req.db.as_str());
    // The server-level applier and the database appliers share one session with the leader:
    // one kind at a time.
    let databases_busy = || -> ApiResult<()> {
        if appliers.any_enabled() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                num::RUNNING,
                "per-database appliers apply their databases on this server: stop them before \
                 starting the server-level applier",
            ));
        }
        Ok(())
    };
    let answer = match (route, &req.method) {
        ("applier-config", &Method::GET) if global => applier.config().public_json(),
        ("applier-config", &Method::GET) => appliers.config(db).public_json(),
        ("applier-config", &Method::PUT) if global => {
            applier.configure(&req.json()?, db)?.public_json()
        }
        ("applier-config", &Method::PUT) => appliers.configure(db, &req.json()?)?.public_json(),
        ("applier-start", &Method::PUT) if global => {
            databases_busy()?;
            applier.start(from()?)?;
            applier.state_json()
        }
        ("applier-start", &Method::PUT) => {
            appliers.start(db, from()?).await?;
            appliers.state_json(db)
        }
        ("applier-stop", &Method::PUT) if global => {
            applier.stop().await;
            applier.state_json()
        }
        ("applier-stop", &Method::PUT) => {
            appliers.stop(db).await?;
            appliers.state_json(db)
        }
        ("applier-state", &Method::GET) if global => applier.state_json(),
        ("applier-state", &Method::GET) => appliers.state_json(db),
        ("applier-state", &Method::DELETE) if global => {
            databases_busy()?;
            applier.forget_state()?;
            applier.state_json()
        }
        ("applier-state", &Method::DELETE) => {
            appliers.forget(db)?;
            appliers.state_json(db)
        }
        ("make-follower" | "make-slave", &Method::PUT) if global => {
            databases_busy()?;
            applier.make_follower(&req.json()?, db).await?
        }
        ("make-follower" | "make-slave", &Method::PUT) => {
            appliers.make_follower(db, &req.json()?).await?
        }
        ("sync", &Method::PUT) if global => {
            databases_busy()?;
            applier.sync(&req.json()?, db).await?
        }
        ("sync", &Method::PUT) => appliers.sync(db, &req.json()?).await?,
        _ => return Err(ApiError::method_not_allowed()),
    };
    Ok(json(StatusCode::OK, &answer))
}
