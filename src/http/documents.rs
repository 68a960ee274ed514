//! `/_api/document`: single and array insert, replace, update, remove; get, HEAD, `onlyget`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};
use tickship_storage::docstore::CollectionInfo;

use super::{empty, error_response, json, AppState, Req};
use crate::api::{ApiError, ApiResult};
use crate::json;
use crate::leader::{ItemResult, OverwriteMode, WriteInput, WriteKind, WriteOptions};
use crate::node::rev_string;

fn write_options(req: &Req, kind: WriteKind) -> ApiResult<WriteOptions> {
    let overwrite = match req.query("overwriteMode") {
        Some("replace") => OverwriteMode::Replace,
        Some("update") => OverwriteMode::Update,
        Some("ignore") => OverwriteMode::Ignore,
        Some("conflict") => OverwriteMode::Conflict,
        Some(other) if kind == WriteKind::Insert && !other.is_empty() && other != "undefined" => {
            return Err(ApiError::bad_parameter(format!(
                "invalid overwriteMode '{other}'"
            )));
        }
        // The legacy `overwrite=true` on insert means replace.
        _ if kind == WriteKind::Insert && req.flag("overwrite", false) => OverwriteMode::Replace,
        _ => OverwriteMode::Conflict,
    };
    Ok(WriteOptions {
        overwrite,
        return_new: req.flag("returnNew", false),
        return_old: req.flag("returnOld", false),
        keep_null: req.flag("keepNull", true),
        merge_objects: req.flag("mergeObjects", true),
        ignore_revs: req.flag("ignoreRevs", true),
        if_match: req.header("if-match").map(unquote),
    })
}

fn unquote(value: &str) -> String {
    value.trim().trim_matches('"').to_string()
}

/// 201 when the write was synced on request (ours always are durable), else 202, as ArangoDB.
fn write_status(req: &Req, collection: &CollectionInfo) -> StatusCode {
    if req.flag("waitForSync", false) || collection.wait_for_sync {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    }
}

/// The answer to a single-document write.
fn single(
    req: &Req,
    collection: &CollectionInfo,
    mut results: Vec<ItemResult>,
) -> ApiResult<Response<Body>> {
    match results.pop() {
        Some(Ok(body)) if req.flag("silent", false) => {
            let _ = body;
            Ok(json(write_status(req, collection), &json!({})))
        }
        Some(Ok(body)) => Ok(json(write_status(req, collection), &body)),
        Some(Err(error)) => Err(error),
        None => Err(ApiError::internal("no result for a single-document write")),
    }
}

/// The answer to an array write: one entry per input, errors inline, 2xx regardless.
fn many(req: &Req, collection: &CollectionInfo, results: Vec<ItemResult>) -> Response<Body> {
    let silent = req.flag("silent", false);
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let items: Vec<Value> = results
        .into_iter()
        .filter_map(|result| match result {
            Ok(_) if silent => None,
            Ok(body) => Some(body),
            Err(error) => {
                *codes.entry(error.error_num.to_string()).or_default() += 1;
                Some(json!({ "error": true, "errorNum": error.error_num, "errorMessage": error.message }))
            }
        })
        .collect();
    let mut response = json(write_status(req, collection), &Value::Array(items));
    if !codes.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&serde_json::to_string(&codes).unwrap_or_default())
        {
            response.headers_mut().insert("x-arango-error-codes", value);
        }
    }
    response
}

pub async fn insert(
    state: &Arc<AppState>,
    req: &Req,
    collection: &str,
) -> ApiResult<Response<Body>> {
    let info = state.node.collection(&req.db, collection)?;
    let options = write_options(req, WriteKind::Insert)?;
    let (array, items) = json::parse_body(&req.body)?;
    let inputs = items
        .into_iter()
        .map(|body| WriteInput { key: None, body })
        .collect();
    let results = state
        .node
        .write(&info, WriteKind::Insert, inputs, &options)
        .await?;
    if array {
        Ok(many(req, &info, results))
    } else {
        single(req, &info, results)
    }
}

pub async fn write_one(
    state: &Arc<AppState>,
    req: &Req,
    collection: &str,
    key: &str,
    kind: WriteKind,
) -> ApiResult<Response<Body>> {
    let info = state.node.collection(&req.db, collection)?;
    let options = write_options(req, kind)?;
    let empty_body = req.body.iter().all(u8::is_ascii_whitespace);
    let body = if kind == WriteKind::Remove && empty_body {
        json::Item::Key(key.to_string())
    } else {
        let (array, mut items) = json::parse_body(&req.body)?;
        match (array, items.pop()) {
            (false, Some(item @ json::Item::Object(_))) => item,
            // A remove ignores a body that is not a document.
            _ if kind == WriteKind::Remove => json::Item::Key(key.to_string()),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    crate::api::num::DOCUMENT_TYPE_INVALID,
                    "invalid document type",
                ));
            }
        }
    };
    let input = WriteInput {
        key: Some(key.to_string()),
        body,
    };
    let results = state.node.write(&info, kind, vec![input], &options).await?;
    single(req, &info, results).map_err(|error| with_current_rev(state, &info, key, error))
}

/// A 412 carries the document's current `_rev`, as ArangoDB's does.
fn with_current_rev(
    state: &AppState,
    info: &CollectionInfo,
    key: &str,
    error: ApiError,
) -> ApiError {
    if error.status == StatusCode::PRECONDITION_FAILED {
        if let Ok(Some(doc)) = state.node.read(info, key) {
            let mut error = error;
            error.message = format!(
                "conflict, _rev values do not match (current _rev {})",
                rev_string(doc.rev)
            );
            return error;
        }
    }
    error
}

pub async fn write_many(
    state: &Arc<AppState>,
    req: &Req,
    collection: &str,
    kind: WriteKind,
) -> ApiResult<Response<Body>> {
    let info = state.node.collection(&req.db, collection)?;
    let options = write_options(req, kind)?;
    let (array, items) = json::parse_body(&req.body)?;
    if !array {
        return Err(ApiError::bad_parameter("expecting a JSON array body"));
    }
    let inputs = items
        .into_iter()
        .map(|body| WriteInput { key: None, body })
        .collect();
    let results = state.node.write(&info, kind, inputs, &options).await?;
    Ok(many(req, &info, results))
}

pub fn get(
    state: &AppState,
    req: &Req,
    collection: &str,
    key: &str,
    head: bool,
) -> ApiResult<Response<Body>> {
    let info = state.node.collection(&req.db, collection)?;
    let doc = state
        .node
        .read(&info, key)?
        .ok_or_else(ApiError::document_not_found);
    let doc = match doc {
        Ok(doc) => doc,
        Err(error) if head => return Ok(empty(error.status)),
        Err(error) => return Err(error),
    };
    let rev = rev_string(doc.rev);
    let etag = HeaderValue::from_str(&format!("\"{rev}\""))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(wanted) = req.header("if-match").map(unquote) {
        if wanted != rev {
            if head {
                return Ok(empty(StatusCode::PRECONDITION_FAILED));
            }
            let error = ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                crate::api::num::CONFLICT,
                "conflict, _rev values do not match",
            );
            let mut response = error_response(&error);
            response.headers_mut().insert(header::ETAG, etag);
            return Ok(response);
        }
    }
    if req
        .header("if-none-match")
        .map(unquote)
        .is_some_and(|wanted| wanted == rev)
    {
        let mut response = empty(StatusCode::NOT_MODIFIED);
        response.headers_mut().insert(header::ETAG, etag);
        return Ok(response);
    }
    let mut response = if head {
        empty(StatusCode::OK)
    } else {
        super::raw(
            StatusCode::OK,
            "application/json; charset=utf-8",
            doc.to_json_in(&info.name),
        )
    };
    response.headers_mut().insert(header::ETAG, etag);
    Ok(response)
}

/// `PUT /_api/document/{c}?onlyget=true`: documents by key, errors inline.
pub fn get_many(state: &AppState, req: &Req, collection: &str) -> ApiResult<Response<Body>> {
    let info = state.node.collection(&req.db, collection)?;
    let Value::Array(items) = req.json()? else {
        return Err(ApiError::bad_parameter("expecting a JSON array body"));
    };
    let keys: Vec<Option<String>> = items
        .iter()
        .map(|item| match item {
            Value::String(key) => Some(key.clone()),
            Value::Object(map) => map.get("_key").and_then(Value::as_str).map(str::to_string),
            _ => None,
        })
        .collect();
    let valid: Vec<&str> = keys
        .iter()
        .flatten()
        .map(String::as_str)
        .filter(|k| crate::util::valid_key(k))
        .collect();
    let mut found = state.node.read_many(&info, &valid)?.into_iter();
    let results: Vec<Value> = keys
        .iter()
        .map(|key| match key {
            Some(key) if crate::util::valid_key(key) => match found.next().flatten() {
                Some(doc) => serde_json::from_slice(&doc.to_json_in(&info.name)).unwrap_or(Value::Null),
                None => json!({ "error": true, "errorNum": crate::api::num::DOCUMENT_NOT_FOUND, "errorMessage": "document not found" }),
            },
            _ => json!({ "error": true, "errorNum": crate::api::num::DOCUMENT_KEY_BAD, "errorMessage": "illegal document key" }),
        })
        .collect();
    Ok(json(StatusCode::OK, &Value::Array(results)))
}

/// `GET /_api/edges/{collection}?vertex=ID&direction=in|out|any`: the edges of an edge
/// collection that start (`out`), end (`in`) or touch (`any`) a vertex. There is no edge index:
/// the collection is scanned, in constant memory beyond the edges found.
pub fn edges(state: &AppState, req: &Req, collection: &str) -> ApiResult<Response<Body>> {
    #[derive(serde::Deserialize)]
    struct Ends<'a> {
        #[serde(borrow, rename = "_from")]
        from: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, rename = "_to")]
        to: Option<std::borrow::Cow<'a, str>>,
    }
    let info = state.node.collection(&req.db, collection)?;
    if info.kind != 3 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            crate::api::num::COLLECTION_TYPE_INVALID,
            format!("collection '{}' is not an edge collection", info.name),
        ));
    }
    let vertex = match req.query("vertex") {
        Some(vertex) if vertex.contains('/') => vertex.to_string(),
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                crate::api::num::DOCUMENT_HANDLE_BAD,
                "illegal document handle: expecting vertex=<collection>/<key>",
            ))
        }
    };
    let (outgoing, incoming) = match req.query("direction").unwrap_or("any") {
        "" | "any" => (true, true),
        "out" => (true, false),
        "in" => (false, true),
        other => {
            return Err(ApiError::bad_parameter(format!(
                "<direction> must by any, in, or out, not: {other}"
            )))
        }
    };
    let (mut edges, mut scanned) = (Vec::new(), 0u64);
    let mut unreadable = None;
    tokio::task::block_in_place(|| {
        state.node.store.scan(info.id, |key, document| {
            scanned += 1;
            let json = document.json_in(&info.name);
            match serde_json::from_slice::<Ends<'_>>(&json) {
                Ok(ends) => {
                    let matches = (outgoing && ends.from.as_deref() == Some(vertex.as_str()))
                        || (incoming && ends.to.as_deref() == Some(vertex.as_str()));
                    if matches {
                        edges.push(
                            serde_json::from_slice::<Value>(&document.to_json_in(&info.name))
                                .unwrap_or(Value::Null),
                        );
                    }
                    true
                }
                Err(e) => {
                    unreadable = Some(format!("stored edge '{key}' is not valid JSON: {e}"));
                    false
                }
            }
        })
    })?;
    if let Some(reason) = unreadable {
        return Err(ApiError::internal(reason));
    }
    state
        .node
        .metrics
        .read_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(json(
        StatusCode::OK,
        &json!({
            "edges": edges,
            "error": false,
            "code": 200,
            "stats": { "scannedIndex": scanned, "filtered": 0 },
        }),
    ))
}
