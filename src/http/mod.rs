//! The HTTP API: the subset of ArangoDB's that drivers use for documents, collections and the
//! replication logger, exact in paths, status codes, JSON field names and `errorNum` values.
//!
//! One handler takes every request: it splits the path into percent-decoded segments, takes an
//! optional `/_db/{db}` prefix (no prefix means `_system`), checks authentication, and
//! dispatches on (method, segments). Doing the routing by hand keeps every answer, including
//! "unknown path" and "method not supported", in ArangoDB's error format.

pub mod admin;
mod collections;
mod documents;
pub(crate) mod dump;
mod jobs;
mod replication;
pub(crate) mod restore;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use bytes::Bytes;
use percent_encoding::percent_decode_str;
use serde_json::Value;

use crate::api::{ApiError, ApiResult};
use crate::auth::Auth;
use crate::leader::followers::Clients;
use crate::node::Node;

/// Everything a handler needs.
pub struct AppState {
    pub node: Arc<Node>,
    pub auth: Arc<Auth>,
    pub clients: Arc<Clients>,
    pub batches: Arc<crate::leader::batches::Batches>,
    /// The server-level applier (`global=true`), which is also the one session with the leader
    /// that the per-database appliers use.
    pub applier: Arc<crate::follower::Applier>,
    /// The appliers of this server's databases.
    pub appliers: Arc<crate::follower::DatabaseAppliers>,
    pub max_body_bytes: usize,
    pub endpoint: String,
    /// Requests sent with `x-arango-async: store`, and their answers.
    pub jobs: jobs::Jobs,
}

/// A parsed request.
pub struct Req {
    pub method: Method,
    pub db: String,
    pub segments: Vec<String>,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Req {
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    pub fn flag(&self, name: &str, default: bool) -> bool {
        crate::util::query_bool(self.query(name), default)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON.
    pub fn json(&self) -> ApiResult<Value> {
        if self.body.is_empty() {
            return Err(ApiError::corrupted_json("empty body"));
        }
        serde_json::from_slice(&self.body).map_err(ApiError::corrupted_json)
    }

    /// The body as a JSON object, or `{}` when empty.
    pub fn json_object_or_empty(&self) -> ApiResult<serde_json::Map<String, Value>> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Map::new());
        }
        match self.json()? {
            Value::Object(map) => Ok(map),
            Value::Null => Ok(serde_json::Map::new()),
            _ => Err(ApiError::bad_parameter("expecting a JSON object body")),
        }
    }
}

/// A JSON response.
pub fn json(status: StatusCode, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    raw(status, "application/json; charset=utf-8", body)
}

/// A response with the given content type.
pub fn raw(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Body>,
) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An empty response.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

pub fn error_response(error: &ApiError) -> Response<Body> {
    let mut response = json(error.status, &error.body());
    if error.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic, realm=\"ArangoDB\""),
        );
    }
    if let Some(leader) = error
        .leader
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        response.headers_mut().insert("x-arango-endpoint", leader);
    }
    response
}

/// Splits `path` into percent-decoded segments.
fn segments(path: &str) -> ApiResult<Vec<String>> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|d| d.into_owned())
                .map_err(|_| ApiError::bad_parameter("path is not valid UTF-8"))
        })
        .collect()
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        out.insert(decode(name), decode(value));
    }
    out
}

/// The one handler: parse, authenticate, dispatch.
pub async fn handle(state: Arc<AppState>, request: Request<Body>) -> Response<Body> {
    let result = handle_inner(&state, request).await;
    match result {
        Ok(response) => response,
        Err(error) => {
            state
                .node
                .metrics
                .http_errors
                .fetch_add(1, Ordering::Relaxed);
            error_response(&error)
        }
    }
}

async fn handle_inner(state: &Arc<AppState>, request: Request<Body>) -> ApiResult<Response<Body>> {
    let (parts, body) = request.into_parts();
    let mut segments = segments(parts.uri.path())?;
    let mut db = tickship_storage::docstore::SYSTEM_DATABASE.to_string();
    if segments.first().map(String::as_str) == Some("_db") {
        if segments.len() < 2 {
            return Err(ApiError::not_found_path());
        }
        db = segments.remove(1);
        segments.remove(0);
    }
    let body = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                crate::api::num::DOCUMENT_TOO_LARGE,
                format!(
                    "request body exceeds the maximum of {} bytes",
                    state.max_body_bytes
                ),
            )
        })?;
    let req = Req {
        method: parts.method,
        db,
        segments,
        query: parse_query(parts.uri.query()),
        headers: parts.headers,
        body,
    };
    let path: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    if path == ["_open", "auth"] {
        return admin::open_auth(state, &req);
    }
    if let Err(refusal) = state.auth.authorize(req.header("authorization")) {
        return Err(ApiError::unauthorized(refusal));
    }
    // A restore may create its database (tickship's `createDatabase=true`).
    let creates_database =
        path == ["_api", "replication", "restore-collection"] && req.flag("createDatabase", false);
    if !creates_database {
        state.node.database(&req.db)?;
    }
    if path.first() != Some(&"_api") || path.get(1) != Some(&"job") {
        match req.header("x-arango-async") {
            Some("store") => return Ok(jobs::start(state, req, true)),
            Some("true") => return Ok(jobs::start(state, req, false)),
            _ => {}
        }
    }
    dispatch(state, &req, &path).await
}

/// Runs one request to its answer (also for a job, on a task of its own).
pub(crate) async fn run_request(state: &Arc<AppState>, req: &Req) -> ApiResult<Response<Body>> {
    let path: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    dispatch(state, req, &path).await
}

async fn dispatch(state: &Arc<AppState>, req: &Req, path: &[&str]) -> ApiResult<Response<Body>> {
    let m = &req.method;
    let is = |method: Method| *m == method;
    match path {
        ["_api", "version"] if is(Method::GET) => admin::version(req),
        ["_admin", "metrics"] | ["_admin", "metrics", "v2"] if is(Method::GET) => {
            admin::metrics(state)
        }
        ["_api", "database", "current"] if is(Method::GET) => admin::current_database(state, req),
        ["_api", "database"] | ["_api", "database", "user"] if is(Method::GET) => {
            admin::list_databases(state, req)
        }
        ["_api", "database"] if is(Method::POST) => admin::create_database(state, req).await,
        ["_api", "database", name] if is(Method::DELETE) => {
            admin::drop_database(state, req, name).await
        }
        ["_api", "cursor", ..] => Err(ApiError::not_implemented(
            "AQL (tickship serves documents by key)",
        )),
        ["_api", "edges", collection] if is(Method::GET) => {
            documents::edges(state, req, collection)
        }
        ["_api", "collection"] if is(Method::GET) => collections::list(state, req),
        ["_api", "collection"] if is(Method::POST) => collections::create(state, req).await,
        ["_api", "collection", name] if is(Method::GET) => {
            collections::info(state, req, name, false)
        }
        ["_api", "collection", name] if is(Method::DELETE) => {
            collections::drop(state, req, name).await
        }
        ["_api", "collection", name, "properties"] if is(Method::GET) => {
            collections::info(state, req, name, false)
        }
        ["_api", "collection", name, "properties"] if is(Method::PUT) => {
            collections::set_properties(state, req, name).await
        }
        ["_api", "collection", name, "count"] if is(Method::GET) => {
            collections::info(state, req, name, true)
        }
        ["_api", "collection", name, "checksum"] if is(Method::GET) => {
            collections::checksum(state, req, name)
        }
        ["_api", "collection", name, "truncate"] if is(Method::PUT) => {
            collections::truncate(state, req, name).await
        }
        ["_api", "collection", name, "rename"] if is(Method::PUT) => {
            collections::rename(state, req, name).await
        }
        ["_api", "document", collection] => {
            use crate::leader::WriteKind;
            if is(Method::POST) {
                documents::insert(state, req, collection).await
            } else if is(Method::PUT) && req.flag("onlyget", false) {
                documents::get_many(state, req, collection)
            } else if is(Method::PUT) {
                documents::write_many(state, req, collection, WriteKind::Replace).await
            } else if is(Method::PATCH) {
                documents::write_many(state, req, collection, WriteKind::Update).await
            } else if is(Method::DELETE) {
                documents::write_many(state, req, collection, WriteKind::Remove).await
            } else {
                Err(ApiError::method_not_allowed())
            }
        }
        ["_api", "document", collection, key] => {
            use crate::leader::WriteKind;
            if is(Method::GET) {
                documents::get(state, req, collection, key, false)
            } else if is(Method::HEAD) {
                documents::get(state, req, collection, key, true)
            } else if is(Method::PUT) {
                documents::write_one(state, req, collection, key, WriteKind::Replace).await
            } else if is(Method::PATCH) {
                documents::write_one(state, req, collection, key, WriteKind::Update).await
            } else if is(Method::DELETE) {
                documents::write_one(state, req, collection, key, WriteKind::Remove).await
            } else {
                Err(ApiError::method_not_allowed())
            }
        }
        ["_api", "replication", "batch"] if is(Method::POST) => {
            replication::create_batch(state, req)
        }
        ["_api", "replication", "batch", id] if is(Method::PUT) => {
            replication::extend_batch(state, req, id)
        }
        ["_api", "replication", "batch", id] if is(Method::DELETE) => {
            replication::delete_batch(state, id)
        }
        ["_api", "replication", "inventory"] if is(Method::GET) => dump::inventory(state, req),
        ["_api", "replication", "dump"] if is(Method::GET) => dump::dump(state, req),
        ["_api", "replication", "ranges"] if is(Method::GET) => dump::ranges(state, req),
        ["_api", "replication", "range-keys"] if is(Method::GET) => dump::range_keys(state, req),
        ["_api", "replication", "range-documents"] if is(Method::PUT) => {
            dump::range_documents(state, req)
        }
        ["_api", "replication", "files"] if is(Method::GET) => dump::files(state, req),
        ["_api", "replication", "file"] if is(Method::GET) => dump::file(state, req),
        ["_api", "replication", "key-values"] if is(Method::GET) => dump::key_values(state, req),
        ["_api", "replication", "changed-keys"] if is(Method::GET) => {
            dump::changed_keys(state, req)
        }
        ["_api", "job", id] if is(Method::PUT) => jobs::fetch(state, id),
        ["_api", "job", id] if is(Method::GET) => jobs::status(state, id),
        ["_api", "job", id] if is(Method::DELETE) => jobs::delete(state, id),
        ["_api", "replication", "restore-collection"] if is(Method::PUT) => {
            restore::restore_collection(state, req)
        }
        ["_api", "replication", "restore-indexes"] if is(Method::PUT) => {
            restore::restore_indexes(state, req)
        }
        ["_api", "replication", "restore-data"] if is(Method::PUT) => {
            restore::restore_data(state, req)
        }
        ["_api", "replication", "logger-state"] if is(Method::GET) => {
            replication::logger_state(state)
        }
        ["_api", "replication", "logger-first-tick"] if is(Method::GET) => {
            replication::logger_first_tick(state)
        }
        ["_api", "replication", "logger-tick-ranges"] if is(Method::GET) => {
            replication::logger_tick_ranges(state)
        }
        ["_api", "replication", "server-id"] if is(Method::GET) => replication::server_id(state),
        ["_api", "replication", "applier-config" | "applier-start" | "applier-stop" | "applier-state" | "make-follower"
        | "make-slave" | "sync"]
            if is(Method::GET) || is(Method::PUT) || is(Method::DELETE) =>
        {
            replication::applier(state, req, path[2]).await
        }
        ["_api", "replication", "applier-state-all"] if is(Method::GET) => {
            let mut all = serde_json::Map::new();
            for db in state.node.store.catalog().databases() {
                all.insert(db.name.clone(), state.appliers.state_json(&db.name));
            }
            Ok(json(StatusCode::OK, &serde_json::Value::Object(all)))
        }
        ["_api", "wal", "range"] if is(Method::GET) => replication::wal_range(state),
        ["_api", "wal", "lastTick"] if is(Method::GET) => replication::wal_last_tick(state),
        ["_api", "wal", "tail"] if is(Method::GET) || is(Method::PUT) => {
            replication::wal_tail(state, req).await
        }
        ["_admin", "wal", "transactions"] if is(Method::GET) => admin::wal_transactions(),
        ["_admin", "wal", "flush"] if is(Method::PUT) => admin::wal_flush(state),
        _ if served_path(path) => Err(ApiError::method_not_allowed()),
        [area @ ("_api" | "_admin"), name, ..] if arango_route(area, name) => Err(
            ApiError::not_implemented(&format!("{} /{}", req.method, path.join("/"))),
        ),
        _ => Err(ApiError::not_found_path()),
    }
}

/// Whether `path` is a route served above: another method on it gets 405, as from ArangoDB.
fn served_path(path: &[&str]) -> bool {
    matches!(
        path,
        ["_api", "version"]
            | ["_admin", "metrics"]
            | ["_admin", "metrics", "v2"]
            | ["_api", "database"]
            | ["_api", "database", _]
            | ["_api", "collection"]
            | ["_api", "collection", _]
            | [
                "_api",
                "collection",
                _,
                "properties" | "count" | "checksum" | "truncate" | "rename"
            ]
            | ["_api", "document", _]
            | ["_api", "document", _, _]
            | ["_api", "edges", _]
            | [
                "_api",
                "replication",
                "logger-state"
                    | "logger-first-tick"
                    | "logger-tick-ranges"
                    | "server-id"
                    | "applier-config"
                    | "applier-start"
                    | "applier-stop"
                    | "applier-state"
                    | "applier-state-all"
                    | "make-follower"
                    | "make-slave"
                    | "inventory"
                    | "dump"
                    | "restore-collection"
                    | "restore-indexes"
                    | "restore-data"
                    | "ranges"
                    | "range-keys"
                    | "range-documents"
                    | "files"
                    | "file"
                    | "key-values"
                    | "sync"
            ]
            | ["_api", "job", _]
            | ["_api", "replication", "batch"]
            | ["_api", "replication", "batch", _]
            | ["_api", "wal", "range" | "lastTick" | "tail"]
            | ["_admin", "wal", "transactions" | "flush"]
    )
}

/// Whether `/{area}/{name}/...` is a part of ArangoDB's API (3.x): what this server does not
/// serve of it is a feature it lacks (501), not an unknown path (404).
fn arango_route(area: &str, name: &str) -> bool {
    const API: &[&str] = &[
        "analyzer",
        "aqlfunction",
        "batch",
        "collection",
        "control_pregel",
        "cursor",
        "database",
        "document",
        "edge",
        "edges",
        "endpoint",
        "engine",
        "explain",
        "export",
        "foxx",
        "gharial",
        "graph",
        "import",
        "index",
        "job",
        "key-generators",
        "query",
        "query-cache",
        "replication",
        "simple",
        "tasks",
        "transaction",
        "traversal",
        "user",
        "version",
        "view",
        "wal",
    ];
    const ADMIN: &[&str] = &[
        "backup",
        "cluster",
        "compact",
        "echo",
        "execute",
        "license",
        "log",
        "metrics",
        "routing",
        "server",
        "statistics",
        "statistics-description",
        "status",
        "support-info",
        "time",
        "wal",
    ];
    match area {
        "_api" => API.contains(&name),
        "_admin" => ADMIN.contains(&name),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: ArangoDB routes this server does not serve are told apart from unknown paths and
    // from wrong methods on served routes.
    #[test]
    fn routes_served_unsupported_or_unknown() {
        assert!(served_path(&["_api", "collection", "c", "count"]));
        assert!(!served_path(&["_api", "collection", "c", "figures"]));
        assert!(arango_route("_api", "collection"));
        assert!(served_path(&["_api", "replication", "batch"]));
        assert!(served_path(&["_api", "replication", "inventory"]));
        assert!(!served_path(&["_api", "replication", "keys"]));
        assert!(arango_route("_api", "replication"));
        assert!(!arango_route("_api", "nonsense"));
        assert!(!arango_route("_open", "auth"));
    }

    // Goal: path segments and query parameters are percent-decoded the way drivers encode them.
    #[test]
    fn decoding() {
        assert_eq!(
            segments("/_db/_system/_api/document/users/a%3Ab%40c").expect("segments"),
            vec!["_db", "_system", "_api", "document", "users", "a:b@c"]
        );
        let query = parse_query(Some("returnNew=1&overwriteMode=update&details=undefined&x"));
        assert_eq!(query.get("returnNew").map(String::as_str), Some("1"));
        assert_eq!(query.get("x").map(String::as_str), Some(""));
        assert!(segments("/_api/document/%FF").is_err());
    }
}
