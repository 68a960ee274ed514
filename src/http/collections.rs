//! `/_api/collection`: list, create, info, properties, count, truncate, rename, drop.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Response, StatusCode};
use serde_json::{json, Value};
use tickship_storage::docstore::{CollectionInfo, KeyOptions};
use tickship_storage::wal::RecordType;

use super::{json, AppState, Req};
use crate::api::{ApiError, ApiResult};

/// The short form of a collection, as `GET /_api/collection` lists it.
fn summary(info: &CollectionInfo) -> serde_json::Map<String, Value> {
    let value = json!({
        "id": info.id.to_string(),
        "name": info.name,
        "status": 3,
        "type": info.kind,
        "isSystem": info.is_system,
        "globallyUniqueId": info.globally_unique_id(),
    });
    value.as_object().cloned().unwrap_or_default()
}

/// The properties form, as create and `/properties` return it.
pub(super) fn properties_json(info: &CollectionInfo) -> serde_json::Map<String, Value> {
    let mut map = summary(info);
    map.insert("statusString".into(), json!("loaded"));
    map.insert("waitForSync".into(), json!(info.wait_for_sync));
    map.insert(
        "keyOptions".into(),
        json!({ "type": info.key_options.kind, "allowUserKeys": info.key_options.allow_user_keys, "lastValue": 0 }),
    );
    map.insert("objectId".into(), json!(info.id.to_string()));
    map.insert("cacheEnabled".into(), json!(false));
    map.insert("schema".into(), Value::Null);
    map.insert("computedValues".into(), Value::Null);
    map.insert("writeConcern".into(), json!(1));
    map.insert("syncByRevision".into(), json!(true));
    map.insert("usesRevisionsAsDocumentIds".into(), json!(true));
    map
}

fn ok(mut map: serde_json::Map<String, Value>, status: StatusCode) -> Response<Body> {
    map.insert("error".into(), json!(false));
    map.insert("code".into(), json!(status.as_u16()));
    json(status, &Value::Object(map))
}

pub fn list(state: &AppState, req: &Req) -> ApiResult<Response<Body>> {
    let exclude_system = req.flag("excludeSystem", false);
    let result: Vec<Value> = state
        .node
        .store
        .catalog()
        .collections(&req.db)
        .iter()
        .filter(|c| !(exclude_system && c.is_system))
        .map(|c| Value::Object(summary(c)))
        .collect();
    Ok(json(
        StatusCode::OK,
        &json!({ "error": false, "code": 200, "result": result }),
    ))
}

pub async fn create(state: &Arc<AppState>, req: &Req) -> ApiResult<Response<Body>> {
    let body = req.json()?;
    let Value::Object(body) = body else {
        return Err(ApiError::bad_parameter("expecting a JSON object body"));
    };
    let name = body.get("name").and_then(Value::as_str).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            crate::api::num::ILLEGAL_NAME,
            "illegal name",
        )
    })?;
    let kind = match body.get("type") {
        None | Some(Value::Null) => 2,
        Some(value) => value
            .as_u64()
            .and_then(|v| u8::try_from(v).ok())
            .ok_or_else(|| ApiError::bad_parameter("invalid collection type"))?,
    };
    let wait_for_sync = body
        .get("waitForSync")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let key_options = match body.get("keyOptions") {
        Some(options @ Value::Object(_)) => {
            serde_json::from_value::<KeyOptions>(options.clone())
                .map_err(|e| ApiError::bad_parameter(format!("invalid keyOptions: {e}")))?
        }
        _ => KeyOptions::default(),
    };
    if key_options.kind != "traditional"
        && key_options.kind != "autoincrement"
        && key_options.kind != "padded"
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            1232,
            "invalid key generator",
        ));
    }
    let info = state
        .node
        .create_collection(&req.db, name, kind, wait_for_sync, key_options)
        .await?;
    Ok(ok(properties_json(&info), StatusCode::OK))
}

pub fn info(
    state: &AppState,
    req: &Req,
    name: &str,
    with_count: bool,
) -> ApiResult<Response<Body>> {
    let info = state.node.collection(&req.db, name)?;
    let mut map = properties_json(&info);
    if with_count {
        map.insert("count".into(), json!(state.node.store.count(info.id)));
    }
    Ok(ok(map, StatusCode::OK))
}

/// `GET /_api/collection/{name}/checksum`: a checksum over every document's key, and with
/// `withRevisions` its `_rev`, with `withData` its content: the XOR of a SHA-256-based 64-bit
/// hash per document, so that it does not depend on order. Leader and follower hold the same
/// bytes, so equal checksums mean equal collections.
pub fn checksum(state: &AppState, req: &Req, name: &str) -> ApiResult<Response<Body>> {
    use sha2::{Digest, Sha256};
    let info = state.node.collection(&req.db, name)?;
    let with_revisions = req.flag("withRevisions", false);
    let with_data = req.flag("withData", false);
    let (mut checksum, mut revision) = (0u64, 0u64);
    tokio::task::block_in_place(|| {
        state.node.store.scan(info.id, |key, document| {
            let mut hasher = Sha256::new();
            hasher.update(key.as_bytes());
            hasher.update([0]);
            if with_revisions {
                hasher.update(document.rev.get().to_le_bytes());
            }
            if with_data {
                hasher.update(document.json_in(&info.name));
            }
            let digest = hasher.finalize();
            checksum ^=
                u64::from_le_bytes(digest[..8].try_into().expect("8 bytes of a 32-byte digest"));
            revision = revision.max(document.rev.get());
            true
        })
    })?;
    let mut map = properties_json(&info);
    map.insert("checksum".into(), json!(checksum.to_string()));
    map.insert("revision".into(), json!(revision.to_string()));
    Ok(ok(map, StatusCode::OK))
}

pub async fn drop(state: &Arc<AppState>, req: &Req, name: &str) -> ApiResult<Response<Body>> {
    let info = state.node.collection(&req.db, name)?;
    if info.is_system && !req.flag("isSystem", false) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            1214,
            "cannot drop a system collection without isSystem=true",
        ));
    }
    state
        .node
        .change_collection(&info, RecordType::CollectionDrop, b"")
        .await?;
    Ok(json(
        StatusCode::OK,
        &json!({ "error": false, "code": 200, "id": info.id.to_string() }),
    ))
}

pub async fn truncate(state: &Arc<AppState>, req: &Req, name: &str) -> ApiResult<Response<Body>> {
    let info = state.node.collection(&req.db, name)?;
    state
        .node
        .change_collection(&info, RecordType::CollectionTruncate, b"")
        .await?;
    Ok(ok(summary(&info), StatusCode::OK))
}

pub async fn rename(state: &Arc<AppState>, req: &Req, name: &str) -> ApiResult<Response<Body>> {
    let info = state.node.collection(&req.db, name)?;
    let body = req.json()?;
    let new_name = body
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_parameter("expecting name"))?;
    state.node.rename_collection(&info, new_name).await?;
    let renamed = state.node.collection(&req.db, new_name)?;
    Ok(ok(summary(&renamed), StatusCode::OK))
}

pub async fn set_properties(
    state: &Arc<AppState>,
    req: &Req,
    name: &str,
) -> ApiResult<Response<Body>> {
    let info = state.node.collection(&req.db, name)?;
    let body = req.json_object_or_empty()?;
    if let Some(wait) = body.get("waitForSync").and_then(Value::as_bool) {
        let data = serde_json::to_vec(&json!({ "waitForSync": wait })).unwrap_or_default();
        state
            .node
            .change_collection(&info, RecordType::CollectionChange, &data)
            .await?;
    }
    let info = state.node.collection(&req.db, name)?;
    Ok(ok(properties_json(&info), StatusCode::OK))
}
