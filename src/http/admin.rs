//! Login, version, databases, metrics and the MMFiles-era WAL admin calls.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Response, StatusCode};
use serde_json::{json, Value};

use super::{json, raw, AppState, Req};
use crate::api::{num, ApiError, ApiResult};

/// The ArangoDB version reported to drivers (some tools compare it, so it is a 3.x version).
pub const ARANGO_VERSION: &str = "3.11.0";

/// `POST /_open/auth`: a JWT for valid credentials.
pub fn open_auth(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    if req.method != axum::http::Method::POST {
        return Err(ApiError::method_not_allowed());
    }
    let body = req.json()?;
    let username = body.get("username").and_then(Value::as_str).unwrap_or("");
    let password = body.get("password").and_then(Value::as_str).unwrap_or("");
    if state.auth.enabled() && !state.auth.check_password(username, password) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            num::UNAUTHORIZED,
            "Wrong credentials",
        ));
    }
    let user = if username.is_empty() {
        crate::auth::ROOT
    } else {
        username
    };
    Ok(json(
        StatusCode::OK,
        &json!({ "jwt": state.auth.issue_token(user) }),
    ))
}

pub fn version(req: &Req) -> ApiResult<Response<Body>> {
    let mut body = json!({ "server": "arango", "version": ARANGO_VERSION, "license": "community" });
    if req.flag("details", false) {
        body["details"] = json!({
            "mode": "server",
            "role": "SINGLE",
            "engine": "rocksdb",
            "server-version": ARANGO_VERSION,
            "tickship-version": env!("CARGO_PKG_VERSION"),
        });
    }
    Ok(json(StatusCode::OK, &body))
}

fn database_json(info: &tickship_storage::docstore::DatabaseInfo) -> Value {
    json!({
        "id": info.id.to_string(),
        "name": info.name,
        "isSystem": info.name == tickship_storage::docstore::SYSTEM_DATABASE,
        "path": "none",
    })
}

pub fn current_database(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    let info = state.node.database(&req.db)?;
    Ok(json(
        StatusCode::OK,
        &json!({ "error": false, "code": 200, "result": database_json(&info) }),
    ))
}

pub fn list_databases(state: &AppState, _req: &Req) -> ApiResult<Response<Body>> {
    let names: Vec<String> = state
        .node
        .store
        .catalog()
        .databases()
        .map(|d| d.name.clone())
        .collect();
    Ok(json(
        StatusCode::OK,
        &json!({ "error": false, "code": 200, "result": names }),
    ))
}

fn require_system(req: &Req) -> ApiResult<()> {
    if req.db != tickship_storage::docstore::SYSTEM_DATABASE {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            num::USE_SYSTEM_DATABASE,
            "operation only allowed in system database",
        ));
    }
    Ok(())
}

pub async fn create_database(state: &Arc<AppState>, req: &Req) -> ApiResult<Response<Body>> {
    require_system(req)?;
    let body = req.json()?;
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_parameter("expecting name"))?;
    state.node.create_database(name).await?;
    Ok(json(
        StatusCode::CREATED,
        &json!({ "error": false, "code": 201, "result": true }),
    ))
}

pub async fn drop_database(
    state: &Arc<AppState>,
    req: &Req,
    name: &str,
) -> ApiResult<Response<Body>> {
    require_system(req)?;
    state.node.drop_database(name).await?;
    Ok(json(
        StatusCode::OK,
        &json!({ "error": false, "code": 200, "result": true }),
    ))
}

pub fn wal_transactions() -> ApiResult<Response<Body>> {
    Ok(json(
        StatusCode::OK,
        &json!({ "runningTransactions": 0, "minLastCollected": null, "minLastSealed": null }),
    ))
}

/// `PUT /_admin/wal/flush`: every acknowledged write is already durable in the WAL; this makes
/// the document store persist too, so a restart replays nothing.
pub fn wal_flush(state: &AppState) -> ApiResult<Response<Body>> {
    tokio::task::block_in_place(|| state.node.store.flush())?;
    Ok(json(
        StatusCode::OK,
        &json!({ "error": false, "code": 200 }),
    ))
}

/// `GET /_admin/metrics`: Prometheus text format.
pub fn metrics(state: &AppState) -> ApiResult<Response<Body>> {
    let node = &state.node;
    let wal = &node.wal;
    let counters = wal.counters();
    let ranges = wal.tick_ranges();
    let relaxed = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let memory = tokio::task::block_in_place(|| node.store.memory());
    let gauges_and_counters: [(&str, &str, &str, u64); 21] = [
        (
            "tickship_wal_last_tick",
            "gauge",
            "Last durable tick of the WAL.",
            wal.last_tick().get(),
        ),
        (
            "tickship_wal_first_tick",
            "gauge",
            "First tick still in the WAL (0 when empty).",
            wal.first_tick().map_or(0, |t| t.get()),
        ),
        (
            "tickship_store_applied_tick",
            "gauge",
            "Last tick applied to the document store.",
            node.applier.applied_tick().get(),
        ),
        (
            "tickship_wal_segments",
            "gauge",
            "WAL segment files.",
            ranges.len() as u64,
        ),
        (
            "tickship_wal_bytes",
            "gauge",
            "Bytes of WAL segment files on disk.",
            ranges.iter().map(|r| r.file_bytes).sum(),
        ),
        (
            "tickship_wal_blocks_total",
            "counter",
            "Blocks appended.",
            relaxed(&counters.blocks),
        ),
        (
            "tickship_wal_records_total",
            "counter",
            "Records appended.",
            relaxed(&counters.records),
        ),
        (
            "tickship_wal_raw_bytes_total",
            "counter",
            "Uncompressed record bytes appended.",
            relaxed(&counters.raw_bytes),
        ),
        (
            "tickship_wal_block_bytes_total",
            "counter",
            "Block bytes appended (compressed).",
            relaxed(&counters.block_bytes),
        ),
        (
            "tickship_wal_groups_total",
            "counter",
            "Group commits.",
            relaxed(&counters.groups),
        ),
        (
            "tickship_documents_written_total",
            "counter",
            "Documents inserted, replaced or updated.",
            relaxed(&node.metrics.documents_written),
        ),
        (
            "tickship_documents_removed_total",
            "counter",
            "Documents removed.",
            relaxed(&node.metrics.documents_removed),
        ),
        (
            "tickship_http_write_requests_total",
            "counter",
            "Document write requests.",
            relaxed(&node.metrics.write_requests),
        ),
        (
            "tickship_http_read_requests_total",
            "counter",
            "Document read requests.",
            relaxed(&node.metrics.read_requests),
        ),
        (
            "tickship_http_errors_total",
            "counter",
            "Requests answered with an error.",
            relaxed(&node.metrics.http_errors),
        ),
        (
            "tickship_replication_clients",
            "gauge",
            "Registered replication clients (WAL barriers).",
            wal.barriers().len() as u64,
        ),
        (
            "rocksdb_size_all_mem_tables",
            "gauge",
            "Bytes of the document store's memtables (active, immutable and pinned).",
            memory.memtables,
        ),
        (
            "tickship_store_write_buffer_bytes",
            "gauge",
            "Bytes of one document memtable now (smaller while following a leader closely).",
            node.store.write_buffer_bytes(),
        ),
        (
            "rocksdb_block_cache_usage",
            "gauge",
            "Bytes in the document store's block cache.",
            memory.block_cache,
        ),
        (
            "rocksdb_block_cache_pinned_usage",
            "gauge",
            "Bytes of the block cache pinned by readers.",
            memory.block_cache_pinned,
        ),
        (
            "rocksdb_estimate_table_readers_mem",
            "gauge",
            "Bytes of table readers outside the block cache.",
            memory.table_readers,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in gauges_and_counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    for (name, help, histogram) in [
        (
            "tickship_wal_fsync_seconds",
            "Duration of WAL fdatasync calls.",
            &counters.sync_latency,
        ),
        (
            "tickship_wal_append_seconds",
            "From append to durable.",
            &counters.append_latency,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (upper_micros, cumulative) in histogram.cumulative() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                upper_micros as f64 / 1e6
            );
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", histogram.count());
        let _ = writeln!(
            out,
            "{name}_sum {}",
            histogram.mean().as_secs_f64() * histogram.count() as f64
        );
        let _ = writeln!(out, "{name}_count {}", histogram.count());
    }
    Ok(raw(StatusCode::OK, "text/plain; version=0.0.4", out))
}
