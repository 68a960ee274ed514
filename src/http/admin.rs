//! Login, version, databases, metrics and the MMFiles-era WAL admin calls.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Response, StatusCode};
use serde_json::{json, Value};

use tickship_storage::wal::stats::LatencyHistogram;

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

/// Prometheus text exposition (format 0.0.4): every family once, `# HELP` and `# TYPE` first.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn counter(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "counter", help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "gauge", help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    /// A gauge with one sample per label value (none: the family is still declared).
    fn labelled_gauge(&mut self, name: &str, help: &str, label: &str, samples: &[(String, f64)]) {
        self.family(name, "gauge", help);
        for (value, sample) in samples {
            let value = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(self.0, "{name}{{{label}=\"{value}\"}} {sample}");
        }
    }

    fn histogram(&mut self, name: &str, help: &str, histogram: &LatencyHistogram) {
        self.family(name, "histogram", help);
        // Read the count first: buckets read later hold at least as many, and `+Inf` must not
        // be below any of them.
        let exported = histogram.exported();
        let count = histogram.count().max(exported.last().map_or(0, |e| e.1));
        for (bound, cumulative) in exported {
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(self.0, "{name}_sum {}", histogram.sum().as_secs_f64());
        let _ = writeln!(self.0, "{name}_count {count}");
    }
}

/// `GET /_admin/metrics`: Prometheus text format.
pub fn metrics(state: &AppState) -> ApiResult<Response<Body>> {
    let node = &state.node;
    let wal = &node.wal;
    let counters = wal.counters();
    let ranges = wal.tick_ranges();
    let relaxed = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let memory = tokio::task::block_in_place(|| node.store.memory());
    let applier = state.applier.metrics();
    let last_tick = wal.last_tick().get();
    let mut out = Exposition::default();
    out.gauge(
        "tickship_wal_last_tick",
        "Last durable tick of the WAL.",
        last_tick,
    );
    out.gauge(
        "tickship_wal_first_tick",
        "First tick still in the WAL (0 when empty).",
        wal.first_tick().map_or(0, |t| t.get()),
    );
    out.gauge(
        "tickship_store_applied_tick",
        "Last tick applied to the document store.",
        node.store_writer.applied_tick().get(),
    );
    out.gauge("tickship_wal_segments", "WAL segment files.", ranges.len());
    out.gauge(
        "tickship_wal_bytes",
        "Bytes of WAL segment files on disk.",
        ranges.iter().map(|r| r.file_bytes).sum::<u64>(),
    );
    out.counter(
        "tickship_wal_blocks_total",
        "Blocks appended.",
        relaxed(&counters.blocks),
    );
    out.counter(
        "tickship_wal_records_total",
        "Records appended.",
        relaxed(&counters.records),
    );
    out.counter(
        "tickship_wal_raw_bytes_total",
        "Uncompressed record bytes appended.",
        relaxed(&counters.raw_bytes),
    );
    out.counter(
        "tickship_wal_block_bytes_total",
        "Block bytes appended (compressed).",
        relaxed(&counters.block_bytes),
    );
    out.counter(
        "tickship_wal_groups_total",
        "Group commits.",
        relaxed(&counters.groups),
    );
    out.counter(
        "tickship_documents_written_total",
        "Documents inserted, replaced or updated: by clients, and applied from a leader.",
        relaxed(&node.metrics.documents_written) + applier.documents,
    );
    out.counter(
        "tickship_documents_removed_total",
        "Documents removed: by clients, and applied from a leader.",
        relaxed(&node.metrics.documents_removed) + applier.removals,
    );
    out.counter(
        "tickship_http_write_requests_total",
        "Document write requests.",
        relaxed(&node.metrics.write_requests),
    );
    out.counter(
        "tickship_http_read_requests_total",
        "Document read requests.",
        relaxed(&node.metrics.read_requests),
    );
    out.counter(
        "tickship_http_errors_total",
        "Requests answered with an error.",
        relaxed(&node.metrics.http_errors),
    );
    out.gauge(
        "tickship_replication_clients",
        "Registered replication clients (WAL barriers).",
        wal.barriers().len(),
    );
    // Each follower as this leader sees it, from its acknowledgements.
    let clients = state.clients.list();
    let now = std::time::SystemTime::now();
    let per_client = |value: &dyn Fn(&crate::leader::followers::Client) -> Option<f64>| {
        clients
            .iter()
            .filter_map(|c| {
                let name = if c.syncer_id.is_empty() {
                    &c.server_id
                } else {
                    &c.syncer_id
                };
                value(c).map(|v| (name.clone(), v))
            })
            .collect::<Vec<_>>()
    };
    out.labelled_gauge(
        "tickship_replication_follower_ticks_behind",
        "Ticks of this leader's log a follower does not yet hold durably.",
        "follower",
        &per_client(&|c| Some(last_tick.saturating_sub(c.last_served_tick.get()) as f64)),
    );
    out.labelled_gauge(
        "tickship_replication_follower_applied_ticks_behind",
        "Ticks of this leader's log a follower does not yet show to its readers.",
        "follower",
        &per_client(&|c| {
            c.applied
                .map(|(t, _)| last_tick.saturating_sub(t.get()) as f64)
        }),
    );
    let (ranges, rate) = (wal.tick_ranges(), wal.append_rate());
    let lag = |c: &crate::leader::followers::Client| c.lag(wal, &ranges, now, rate);
    out.labelled_gauge(
        "tickship_replication_follower_bytes_behind",
        "Bytes of this leader's WAL blocks after what a follower holds durably (the share of \
         the segment it is in estimated by its ticks).",
        "follower",
        &per_client(&|c| Some(lag(c).bytes as f64)),
    );
    out.labelled_gauge(
        "tickship_replication_follower_seconds_to_falloff",
        "Seconds until retention may take a follower's next tick: its registration expiring, or \
         --wal.archive-size-limit at the last minute's append rate.",
        "follower",
        &per_client(&|c| Some(lag(c).seconds_to_falloff)),
    );
    out.labelled_gauge(
        "tickship_replication_follower_seconds_to_catch_up",
        "Seconds until a follower holds this log's last tick, at the rate its distance shrank \
         over its acknowledgements of the last 15 s: 0 when level; absent when it is not \
         catching up (stalled, partitioned, down).",
        "follower",
        &per_client(&|c| lag(c).seconds_to_catch_up),
    );
    out.labelled_gauge(
        "tickship_replication_follower_last_ack_seconds",
        "Seconds since a follower last acknowledged what it holds.",
        "follower",
        &per_client(&|c| {
            c.applied
                .map(|(_, at)| now.duration_since(at).unwrap_or_default().as_secs_f64())
        }),
    );
    // This server's applier, when it follows a leader (ArangoDB 3.8+ names where they exist).
    out.gauge(
        "tickship_replication_applier_running",
        "1 while this server's replication applier runs.",
        u8::from(applier.running),
    );
    out.gauge(
        "tickship_replication_applier_failed_connects",
        "Connections to the leader in a row that failed or brought nothing; 0 once one brings a \
         block or shows this server level with its leader.",
        applier.failed_connects,
    );
    out.gauge(
        "tickship_replication_applier_last_error",
        "errorNum of the applier's last error (0: none).",
        applier.last_error_num,
    );
    out.gauge(
        "tickship_replication_applier_ticks_behind",
        "Ticks the leader has that this follower has not yet received or applied.",
        applier.ticks_behind,
    );
    out.gauge(
        "tickship_replication_applier_last_applied_tick",
        "Last tick visible in this follower's store.",
        applier.last_applied,
    );
    out.gauge(
        "tickship_replication_applier_last_received_tick",
        "The last tick received from the leader and handed to this server's log.",
        applier.last_received,
    );
    out.gauge(
        "tickship_replication_applier_last_durable_tick",
        "The last tick of the leader's durable in this server's log (lastProcessedContinuousTick).",
        applier.last_processed,
    );
    out.gauge(
        "tickship_replication_applier_last_available_tick",
        "The leader's last tick as last heard from it.",
        applier.last_available,
    );
    // Declared always, sampled only while the applier runs and has heard its leader.
    out.family(
        "tickship_replication_applier_leader_silent_seconds",
        "gauge",
        "Seconds since the leader last said anything (blocks, idle, welcome): it says something \
         at least every second, so more is a partition, a stalled leader or a dead one.",
    );
    if let Some(seconds) = applier.leader_silent_seconds {
        let _ = writeln!(
            out.0,
            "tickship_replication_applier_leader_silent_seconds {seconds}"
        );
    }
    out.family(
        "tickship_replication_applier_seconds_to_catch_up",
        "gauge",
        "Seconds until the applier shows the leader's last tick, at the rate its distance shrank \
         over the last 15 s: 0 when level; absent when it is not catching up (a stall, a \
         partition, a full disk, a leader writing faster than it applies).",
    );
    if let Some(seconds) = applier.seconds_to_catch_up {
        let _ = writeln!(
            out.0,
            "tickship_replication_applier_seconds_to_catch_up {seconds}"
        );
    }
    out.counter(
        "arangodb_replication_tailing_requests_total",
        "Frames of the leader's log received (tailing requests).",
        applier.requests,
    );
    out.counter(
        "arangodb_replication_tailing_markers_total",
        "Records of the leader's log received and stored.",
        applier.markers,
    );
    out.counter(
        "arangodb_replication_tailing_documents_total",
        "Document inserts and replaces applied from the leader.",
        applier.documents,
    );
    out.counter(
        "arangodb_replication_tailing_removals_total",
        "Document removals applied from the leader.",
        applier.removals,
    );
    let (batches, oldest) = state.batches.summary();
    out.gauge(
        "tickship_replication_batches",
        "Replication batches (read views for dumps) alive; while any lives no WAL segment is \
         collected.",
        batches,
    );
    out.gauge(
        "tickship_replication_dump_barriers",
        "Dumps whose tick the leader keeps servable (every WAL segment after it) until a \
         follower starts from it or --replication.dump-barrier-ttl passes.",
        state.clients.dumps().len(),
    );
    out.gauge(
        "tickship_replication_batch_oldest_seconds",
        "Age of the oldest live replication batch (0: none).",
        oldest.as_secs_f64(),
    );
    out.counter(
        "tickship_replication_tailing_excluded_total",
        "Operations of the leader's log left out by restrictType/includeSystem.",
        applier.excluded,
    );
    out.counter(
        "tickship_replication_tailing_errors_ignored_total",
        "Operations of the leader's log that conflicted with this server and were skipped as \
         ignoreErrors allows.",
        applier.errors_ignored,
    );
    out.counter(
        "arangodb_replication_tailing_bytes_received_total",
        "Bytes of the leader's log received.",
        applier.bytes_received,
    );
    out.counter(
        "arangodb_replication_failed_connects_total",
        "Connections to the leader that failed or ended without bringing anything.",
        applier.total_failed_connects,
    );
    out.counter(
        "arangodb_replication_tailing_follow_tick_failures_total",
        "Times the leader no longer had the tick to follow from (1414).",
        applier.follow_tick_failures,
    );
    out.counter(
        "tickship_replication_resyncs_total",
        "Initial syncs autoResync ran because the leader no longer had the tick to follow from.",
        applier.total_resyncs,
    );
    out.gauge(
        "tickship_replication_initial_sync_running",
        "1 while an initial sync (setup, sync, autoResync) runs.",
        u64::from(applier.sync_running),
    );
    out.gauge(
        "tickship_replication_initial_sync_bytes",
        "Bytes received from the leader by the last (or running) initial sync.",
        applier.sync_bytes,
    );
    out.gauge(
        "tickship_replication_initial_sync_documents",
        "Documents stored by the last (or running) initial sync.",
        applier.sync_documents,
    );
    out.gauge(
        "tickship_replication_initial_sync_removed",
        "Documents removed by the last (or running) initial sync (the leader had them no more).",
        applier.sync_removed,
    );
    out.gauge(
        "tickship_replication_initial_sync_requests",
        "Requests to the leader of the last (or running) initial sync.",
        applier.sync_requests,
    );
    out.counter(
        "arangodb_replication_tailing_request_time_total",
        "Milliseconds spent waiting for frames of the leader's log.",
        applier.fetch_seconds * 1000.0,
    );
    out.counter(
        "arangodb_replication_tailing_apply_time_total",
        "Milliseconds from a frame's arrival until its blocks were durable here.",
        applier.apply_seconds * 1000.0,
    );
    out.gauge(
        "rocksdb_size_all_mem_tables",
        "Bytes of the document store's memtables (active, immutable and pinned).",
        memory.memtables,
    );
    out.gauge(
        "tickship_store_write_buffer_bytes",
        "Bytes of one document memtable now (smaller while following a leader closely).",
        node.store.write_buffer_bytes(),
    );
    out.gauge(
        "rocksdb_block_cache_usage",
        "Bytes in the document store's block cache.",
        memory.block_cache,
    );
    out.gauge(
        "rocksdb_block_cache_pinned_usage",
        "Bytes of the block cache pinned by readers.",
        memory.block_cache_pinned,
    );
    out.gauge(
        "rocksdb_estimate_table_readers_mem",
        "Bytes of table readers outside the block cache.",
        memory.table_readers,
    );
    out.histogram(
        "tickship_wal_fsync_seconds",
        "Duration of WAL fdatasync calls.",
        &counters.sync_latency,
    );
    out.histogram(
        "tickship_wal_append_seconds",
        "From append to durable.",
        &counters.append_latency,
    );
    process_metrics(&mut out);
    Ok(raw(StatusCode::OK, "text/plain; version=0.0.4", out.0))
}

/// The process's own figures, under the names Prometheus' client libraries use.
fn process_metrics(out: &mut Exposition) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    out.gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        kib("VmRSS:"),
    );
    out.gauge(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        kib("VmSize:"),
    );
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // /proc/self/stat: the fields after the command name (which may hold spaces) in ")".
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    // utime and stime are fields 14 and 15, starttime 22 (1-based, the pid being 1).
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    out.counter(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        (field(14) + field(15)) / ticks,
    );
    let boot = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    out.gauge(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        boot + field(22) / ticks,
    );
    out.gauge(
        "process_open_fds",
        "Number of open file descriptors.",
        std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
    );
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        out.gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            limit.rlim_cur,
        );
    }
}
