//! The leader's write path: from a validated document request to a durable, applied block (the
//! reads and catalog operations both roles share are in `node`).
//!
//! A write locks exactly its keys (`locks`: all at once or none, so writers to different keys
//! never wait on each other beyond the shared WAL append), checks the current documents (unique
//! `_key`, `_rev` preconditions, merge for update), builds records holding the full new
//! documents, appends them as one block (one multi-document request = one block: all or nothing,
//! with transaction begin/commit records around several documents), waits until the block is
//! durable and applied to the store, and only then answers. So a client reads its own
//! writes, and an acknowledged write survives `kill -9` (it is in the WAL, and the store replays
//! the WAL from its persisted tick at restart).

use crate::api::{num, ApiError, ApiResult};
use crate::json::Item;
use crate::util::valid_key;
use axum::http::StatusCode;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use tickship_storage::docstore::{CollectionInfo, StoredDocument};
use tickship_storage::wal::{Record, RecordType};
use tickship_storage::Tick;

use crate::leader::locks::KeyGuard;
use crate::node::{document_value, rev_string, Node};

/// Reads of a request's generated keys that may find them taken before it answers 1210: with
/// gaps doubling, 40 tries cross 2^40 taken keys.
const GENERATED_KEY_TRIES: u32 = 40;

/// What an insert does when the key exists (`overwriteMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverwriteMode {
    Conflict,
    Ignore,
    Replace,
    Update,
}

/// The kind of a document write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    Insert,
    Replace,
    Update,
    Remove,
}

/// Options of a document write, from the query string and headers.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    pub overwrite: OverwriteMode,
    pub return_new: bool,
    pub return_old: bool,
    pub keep_null: bool,
    pub merge_objects: bool,
    /// Ignore `_rev` in the body (If-Match is always honoured).
    pub ignore_revs: bool,
    pub if_match: Option<String>,
}

impl Default for WriteOptions {
    fn default() -> WriteOptions {
        WriteOptions {
            overwrite: OverwriteMode::Conflict,
            return_new: false,
            return_old: false,
            keep_null: true,
            merge_objects: true,
            ignore_revs: true,
            if_match: None,
        }
    }
}

/// One input of a document write: the key it targets (from the path, for single-document
/// calls) and the body item.
pub struct WriteInput<'a> {
    pub key: Option<String>,
    pub body: Item<'a>,
}

/// The outcome of one input.
pub type ItemResult = Result<Value, ApiError>;

/// The keys of the planned inputs that have one, in order (what `get_many` answers for).
fn planned_keys<'p>(planned: &'p [Planned<'_>]) -> Vec<&'p str> {
    planned
        .iter()
        .filter_map(|p| p.as_ref().ok().map(|(key, _, _)| key.as_str()))
        .collect()
}

/// ArangoDB's answer to an insert of a key that exists (1210).
fn key_taken(key: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        num::UNIQUE_CONSTRAINT_VIOLATED,
        format!("unique constraint violated - in index primary of type primary over '_key'; conflicting key: {key}"),
    )
}
impl Node {
    // ---- document writes ----------------------------------------------------------------

    /// Performs one document write request (one or many inputs) as one block. Returns one
    /// result per input, in order: plan (keys and shapes), lock (and read what is there), decide
    /// (each input against the current documents), log (one block, durable and applied), answer.
    pub async fn write(
        &self,
        collection: &CollectionInfo,
        kind: WriteKind,
        inputs: Vec<WriteInput<'_>>,
        options: &WriteOptions,
    ) -> ApiResult<Vec<ItemResult>> {
        self.check_writable()?;
        self.metrics.write_requests.fetch_add(1, Ordering::Relaxed);
        // 1. Keys and shapes.
        let mut planned: Vec<_> = inputs
            .into_iter()
            .map(|input| self.plan(collection, kind, input))
            .collect();
        let (_guard, state) = self.lock_and_read(collection, &mut planned).await?;
        let steps = self.decide(collection, kind, planned, state, options);
        let ticks = self.log_writes(collection, &steps).await?;
        Ok(answers(collection, steps, ticks, options))
    }

    /// Step 2: Locks the planned keys, then reads their current documents.
    async fn lock_and_read<'s>(
        &'s self,
        collection: &CollectionInfo,
        planned: &mut [Planned<'_>],
    ) -> ApiResult<(KeyGuard<'s>, HashMap<String, Option<StoredDocument>>)> {
        // Locks, then the current documents. Generated keys are locked and read too: a
        // client may have chosen the same numeric key, or this server may have been a follower
        // whose leader generated it. A generated key found taken is replaced by a later one
        // (the generator moving past it by a gap that doubles with each try, so that a range of
        // replicated keys is crossed in a few reads) before anything is decided.
        let mut tries = 0u32;
        let (guard, current) = loop {
            let keys = planned_keys(planned);
            let guard = self.locks.lock(collection.id, &keys).await;
            let current = self.store.get_many(collection.id, &keys)?;
            // `current` follows `keys`: one entry per planned input that has a key.
            let mut taken = Vec::new();
            let mut at = 0;
            for (i, plan) in planned.iter().enumerate() {
                if let Ok((_, _, generated)) = plan {
                    if *generated && current.get(at).is_some_and(Option::is_some) {
                        taken.push(i);
                    }
                    at += 1;
                }
            }
            drop(keys);
            if taken.is_empty() || tries >= GENERATED_KEY_TRIES {
                break (guard, current);
            }
            drop(guard);
            for i in taken {
                if let Ok((key, _, _)) = &mut planned[i] {
                    self.keygen.skip_past(key.parse().unwrap_or(0), 1 << tries);
                    *key = self.keygen.next()?.to_string();
                }
            }
            tries += 1;
        };
        let keys = planned_keys(planned);
        let mut state: HashMap<String, Option<StoredDocument>> = HashMap::with_capacity(keys.len());
        for (key, doc) in keys.iter().zip(current) {
            state.insert(key.to_string(), doc);
        }
        Ok((guard, state))
    }

    /// Step 3: decides each input against the current documents (`state`, which also takes
    /// the writes of earlier inputs of this request) and builds the new documents.
    fn decide(
        &self,
        collection: &CollectionInfo,
        kind: WriteKind,
        planned: Vec<Planned<'_>>,
        mut state: HashMap<String, Option<StoredDocument>>,
        options: &WriteOptions,
    ) -> Vec<Step> {
        let mut steps = Vec::with_capacity(planned.len());
        for plan in planned {
            let (key, body, generated) = match plan {
                Ok(plan) => plan,
                Err(error) => {
                    steps.push(Step::Done(Err(error)));
                    continue;
                }
            };
            // `state` includes the writes of earlier inputs of this request (their revision is
            // only known after the append, so they carry tick 0 until then).
            let existing = state.get(&key).cloned().flatten();
            let exists = existing.is_some();
            let meta = |rev: Option<Tick>| {
                let mut meta = Map::new();
                meta.insert(
                    "_id".into(),
                    Value::String(format!("{}/{key}", collection.name)),
                );
                meta.insert("_key".into(), Value::String(key.clone()));
                if let Some(rev) = rev {
                    meta.insert("_rev".into(), Value::String(rev_string(rev)));
                }
                meta
            };
            let outcome = match kind {
                // A generated key that exists is never overwritten, whatever the mode: the
                // client did not name that document.
                WriteKind::Insert if exists && generated => Err(key_taken(&key)),
                WriteKind::Insert if exists => match options.overwrite {
                    OverwriteMode::Conflict => Err(key_taken(&key)),
                    OverwriteMode::Ignore => Ok(None),
                    OverwriteMode::Replace => self
                        .new_document(collection, &key, &body, None, options)
                        .map(Some),
                    OverwriteMode::Update => {
                        let base = existing.as_ref().map(|d| d.json.as_slice());
                        self.new_document(collection, &key, &body, base, options)
                            .map(Some)
                    }
                },
                WriteKind::Insert => self
                    .new_document(collection, &key, &body, None, options)
                    .map(Some),
                WriteKind::Replace | WriteKind::Update | WriteKind::Remove => match &existing {
                    None => Err(ApiError::document_not_found()),
                    Some(doc) => {
                        let wanted = options
                            .if_match
                            .clone()
                            .or_else(|| (!options.ignore_revs).then(|| body_rev(&body)).flatten());
                        match wanted {
                            Some(rev) if rev != rev_string(doc.rev) => {
                                let mut error = ApiError::new(
                                    StatusCode::PRECONDITION_FAILED,
                                    num::CONFLICT,
                                    "conflict, _rev values do not match",
                                );
                                error.message =
                                    format!("{} (current _rev {})", error.message, doc.rev);
                                Err(error)
                            }
                            _ if kind == WriteKind::Remove => Ok(Some((Vec::new(), None))),
                            _ => {
                                let base =
                                    (kind == WriteKind::Update).then_some(doc.json.as_slice());
                                self.new_document(collection, &key, &body, base, options)
                                    .map(Some)
                            }
                        }
                    }
                },
            };
            match outcome {
                Err(error) => steps.push(Step::Done(Err(error))),
                Ok(None) => {
                    // overwriteMode=ignore on an existing key: answer with its current meta.
                    let doc = existing.expect(
                        "only overwriteMode=ignore on an existing document decides Ok(None)",
                    );
                    steps.push(Step::Done(Ok(Value::Object(meta(Some(doc.rev))))));
                }
                Ok(Some((json, new_value))) => {
                    let removing = kind == WriteKind::Remove;
                    state.insert(
                        key.clone(),
                        if removing {
                            None
                        } else {
                            Some(StoredDocument {
                                rev: Tick::ZERO,
                                json: json.clone(),
                            })
                        },
                    );
                    steps.push(Step::Write {
                        key,
                        new_json: (!removing).then_some(json),
                        old: existing,
                        new_value,
                    });
                }
            }
        }
        steps
    }

    /// Step 4: Logs the writes of `steps` as one block; returns the tick of each write, in order.
    async fn log_writes(
        &self,
        collection: &CollectionInfo,
        steps: &[Step],
    ) -> ApiResult<Vec<Tick>> {
        // A write to a key that did not exist (read above under the key's lock) is logged as
        // an insert: the store appliers here and on followers need not look the key up.
        let writes: Vec<(&String, &Option<Vec<u8>>, bool)> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Write {
                    key, new_json, old, ..
                } => Some((key, new_json, old.is_none())),
                Step::Done(_) => None,
            })
            .collect();
        let mut tick_of_write = Vec::with_capacity(writes.len());
        if !writes.is_empty() {
            let id = collection.id.to_string();
            let db = collection.database.as_str();
            let tid = if writes.len() > 1 {
                self.tid.fetch_add(1, Ordering::Relaxed)
            } else {
                0
            };
            let mut records = Vec::with_capacity(writes.len() + 2);
            if tid != 0 {
                records.push(Record {
                    kind: RecordType::TransactionBegin,
                    tid,
                    db,
                    collection: "",
                    key: "",
                    data: b"",
                });
            }
            for (key, json, fresh) in &writes {
                records.push(match json {
                    Some(json) => Record {
                        kind: if *fresh {
                            RecordType::DocumentInsert
                        } else {
                            RecordType::DocumentPut
                        },
                        tid,
                        db,
                        collection: &id,
                        key,
                        data: json,
                    },
                    None => Record {
                        kind: RecordType::DocumentRemove,
                        tid,
                        db,
                        collection: &id,
                        key,
                        data: b"",
                    },
                });
            }
            if tid != 0 {
                records.push(Record {
                    kind: RecordType::TransactionCommit,
                    tid,
                    db,
                    collection: "",
                    key: "",
                    data: b"",
                });
            }
            let ticks = self.log(&records).await?;
            let offset = u64::from(tid != 0);
            for i in 0..writes.len() as u64 {
                tick_of_write.push(Tick::new(ticks.first.get() + offset + i));
            }
            let removed = writes.iter().filter(|(_, json, _)| json.is_none()).count() as u64;
            self.metrics
                .documents_written
                .fetch_add(writes.len() as u64 - removed, Ordering::Relaxed);
            self.metrics
                .documents_removed
                .fetch_add(removed, Ordering::Relaxed);
        }
        Ok(tick_of_write)
    }

    /// Step 1: the key an input targets (and whether it was generated) and its body, checked.
    fn plan<'a>(
        &self,
        collection: &CollectionInfo,
        kind: WriteKind,
        input: WriteInput<'a>,
    ) -> Result<(String, Item<'a>, bool), ApiError> {
        let bad_key = || {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                num::DOCUMENT_KEY_BAD,
                "illegal document key",
            )
        };
        let body = input.body;
        let body_key = match &body {
            Item::Object(object) => match object.get_str("_key") {
                Some(Ok(key)) => Some(key),
                Some(Err(())) => return Err(bad_key()),
                None => None,
            },
            Item::Key(key) if kind == WriteKind::Remove => Some(key.clone()),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    num::DOCUMENT_TYPE_INVALID,
                    "invalid document type",
                ));
            }
        };
        let (key, generated) = match (input.key, body_key, kind) {
            (Some(key), _, _) => (key, false),
            (None, Some(_), WriteKind::Insert) if !collection.key_options.allow_user_keys => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    num::DOCUMENT_KEY_UNEXPECTED,
                    "collection does not allow using user-defined keys",
                ));
            }
            (None, Some(key), _) => (key, false),
            (None, None, WriteKind::Insert) => (self.keygen.next()?.to_string(), true),
            (None, None, _) => return Err(bad_key()),
        };
        if !valid_key(&key) {
            return Err(bad_key());
        }
        if !generated {
            if let Ok(number) = key.parse::<u64>() {
                self.keygen.track(number);
            }
        }
        if collection.kind == 3 && matches!(kind, WriteKind::Insert | WriteKind::Replace) {
            let ok = |field: &str| match &body {
                Item::Object(object) => {
                    matches!(object.get_str(field), Some(Ok(v)) if v.contains('/'))
                }
                _ => false,
            };
            if !ok("_from") || !ok("_to") {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    num::INVALID_EDGE_ATTRIBUTE,
                    "edge attribute missing or invalid",
                ));
            }
        }
        Ok((key, body, generated))
    }

    /// The new document (canonical JSON without `_rev`, and its value for `returnNew`): `body`
    /// as sent, or merged onto `base` for update.
    fn new_document(
        &self,
        collection: &CollectionInfo,
        key: &str,
        body: &Item<'_>,
        base: Option<&[u8]>,
        options: &WriteOptions,
    ) -> Result<(Vec<u8>, Option<Value>), ApiError> {
        let Item::Object(object) = body else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                num::DOCUMENT_TYPE_INVALID,
                "invalid document type",
            ));
        };
        let id = format!("{}/{key}", collection.name);
        let json = match base {
            // Insert and replace: the fields as sent, copied through.
            None => object.write_document(key, &id),
            // Update: merged field by field onto the stored document.
            Some(base) => {
                let mut fields = match serde_json::from_slice::<Value>(base) {
                    Ok(Value::Object(map)) => map,
                    _ => return Err(ApiError::internal("stored document is not an object")),
                };
                let Value::Object(patch) = object.to_value() else {
                    unreachable!("an object converts to an object")
                };
                for (name, value) in patch {
                    if !matches!(name.as_str(), "_key" | "_id" | "_rev") {
                        merge_field(
                            &mut fields,
                            name,
                            value,
                            options.keep_null,
                            options.merge_objects,
                        );
                    }
                }
                fields.remove("_key");
                fields.remove("_id");
                fields.remove("_rev");
                let mut document = Map::with_capacity(fields.len() + 2);
                document.insert("_key".into(), Value::String(key.to_string()));
                document.insert("_id".into(), Value::String(id));
                document.extend(fields);
                serde_json::to_vec(&Value::Object(document))
                    .map_err(|e| ApiError::internal(e.to_string()))?
            }
        };
        if json.len() > self.max_document_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                num::DOCUMENT_TOO_LARGE,
                format!(
                    "document of {} bytes exceeds the maximal document size of {} bytes",
                    json.len(),
                    self.max_document_bytes
                ),
            ));
        }
        let new_value = if options.return_new {
            serde_json::from_slice(&json).ok()
        } else {
            None
        };
        Ok((json, new_value))
    }
}

/// Step 5: The answer to each input: its error, or the written document's meta (and old/new).
fn answers(
    collection: &CollectionInfo,
    steps: Vec<Step>,
    tick_of_write: Vec<Tick>,
    options: &WriteOptions,
) -> Vec<ItemResult> {
    let mut ticks = tick_of_write.into_iter();
    steps
        .into_iter()
        .map(|step| match step {
            Step::Done(result) => result,
            Step::Write {
                key,
                new_json,
                old,
                new_value,
            } => {
                let rev = ticks
                    .next()
                    .expect("log_writes gives one tick per Step::Write");
                let mut body = Map::new();
                body.insert(
                    "_id".into(),
                    Value::String(format!("{}/{key}", collection.name)),
                );
                body.insert("_key".into(), Value::String(key.clone()));
                body.insert(
                    "_rev".into(),
                    Value::String(rev_string(if new_json.is_some() {
                        rev
                    } else {
                        old.as_ref().map_or(rev, |d| d.rev)
                    })),
                );
                if let Some(old) = &old {
                    if new_json.is_some() {
                        body.insert("_oldRev".into(), Value::String(rev_string(old.rev)));
                    }
                    if options.return_old {
                        body.insert("old".into(), document_value(old, &collection.name));
                    }
                }
                if options.return_new {
                    if let Some(mut new) = new_value {
                        if let Some(object) = new.as_object_mut() {
                            object.insert("_rev".into(), Value::String(rev_string(rev)));
                        }
                        body.insert("new".into(), new);
                    }
                }
                Ok(Value::Object(body))
            }
        })
        .collect()
}

/// An input's plan: its key, body and whether the key was generated; or why it cannot be done.
type Planned<'a> = Result<(String, Item<'a>, bool), ApiError>;

/// What deciding an input came to: an answer already, or a write to log.
enum Step {
    Done(ItemResult),
    Write {
        key: String,
        new_json: Option<Vec<u8>>,
        old: Option<StoredDocument>,
        new_value: Option<Value>,
    },
}

/// The `_rev` an input body names, if any.
fn body_rev(body: &Item<'_>) -> Option<String> {
    match body {
        Item::Object(object) => object.get_str("_rev").and_then(Result::ok),
        _ => None,
    }
}

/// ArangoDB's update merge: `null` removes a field unless `keep_null`; objects merge
/// recursively when `merge_objects`.
fn merge_field(
    target: &mut Map<String, Value>,
    name: String,
    value: Value,
    keep_null: bool,
    merge_objects: bool,
) {
    match value {
        Value::Null if !keep_null => {
            target.remove(&name);
        }
        Value::Object(patch) if merge_objects => match target.get_mut(&name) {
            Some(Value::Object(existing)) => {
                for (inner, value) in patch {
                    merge_field(existing, inner, value, keep_null, merge_objects);
                }
            }
            _ => {
                let mut fresh = Map::new();
                for (inner, value) in patch {
                    merge_field(&mut fresh, inner, value, keep_null, merge_objects);
                }
                target.insert(name, Value::Object(fresh));
            }
        },
        value => {
            target.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: update merges like ArangoDB: nested objects merge, null removes unless keepNull.
    #[test]
    fn update_merge_rules() {
        let mut doc = serde_json::json!({"a": 1, "o": {"x": 1, "y": 2}, "n": 5})
            .as_object()
            .cloned()
            .expect("object");
        merge_field(
            &mut doc,
            "o".into(),
            serde_json::json!({"y": 3, "z": 4}),
            true,
            true,
        );
        merge_field(&mut doc, "n".into(), Value::Null, false, true);
        merge_field(&mut doc, "b".into(), Value::Null, true, true);
        assert_eq!(
            Value::Object(doc.clone()),
            serde_json::json!({"a": 1, "o": {"x": 1, "y": 3, "z": 4}, "b": null})
        );
        merge_field(
            &mut doc,
            "o".into(),
            serde_json::json!({"only": true}),
            true,
            false,
        );
        assert_eq!(doc["o"], serde_json::json!({"only": true}));
    }
}
