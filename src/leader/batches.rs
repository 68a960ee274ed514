//! Replication batches, as ArangoDB's syncers and arangodump use them: a read view of the whole
//! store at one tick (`StoreSnapshot`), kept for a TTL that the client extends, and ended by it
//! or by expiry. While any batch lives the store collects no WAL segment (see `StoreSnapshot`),
//! so a forgotten batch costs disk until its TTL passes; the sweeper ends it then.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tickship_storage::docstore::{DocStore, PhysicalFile, StoreSnapshot};

use crate::api::{num, ApiError, ApiResult};

/// ArangoDB's default when a client names no TTL (or 0).
pub const DEFAULT_TTL: Duration = Duration::from_secs(7200);

/// One batch: its view, and until when it lives.
pub struct Batch {
    pub id: u64,
    pub snapshot: StoreSnapshot,
    created: Instant,
    expires: Mutex<Instant>,
    /// Where each collection's dump stands: ArangoDB's batches keep one iterator per collection,
    /// so that repeated `dump` calls page through it without naming a position.
    cursors: Mutex<HashMap<u64, Arc<Mutex<DumpCursor>>>>,
    /// The files holding the view's documents, opened on the first request for them (a
    /// physical sync): `Err` says why the view cannot be copied as files.
    files: std::sync::OnceLock<Result<Arc<Vec<PhysicalFile>>, String>>,
}

/// How far the dump of one collection in a batch has come.
#[derive(Default)]
pub struct DumpCursor {
    /// The last key handed out; the next page starts after it.
    pub after: Option<String>,
    /// Every document has been handed out (or read into `prefetched`).
    pub done: bool,
    /// The next chunk, read while the last one was being sent.
    pub prefetched: Option<crate::http::dump::Chunk>,
}

impl Batch {
    /// The view's files (`StoreSnapshot::physical_files`), listed and opened once per batch, so
    /// that every request reads the files the listing saw.
    pub fn files(&self) -> Result<Arc<Vec<PhysicalFile>>, String> {
        self.files
            .get_or_init(|| match self.snapshot.physical_files() {
                Ok(Ok(files)) => Ok(Arc::new(files)),
                Ok(Err(why)) => Err(why),
                Err(e) => Err(format!("cannot list the store's files: {e}")),
            })
            .clone()
    }

    /// The dump cursor of `collection`; holding its lock keeps a second request for the same
    /// collection from handing out the same page twice.
    pub fn cursor(&self, collection: u64) -> Arc<Mutex<DumpCursor>> {
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(collection)
            .or_default()
            .clone()
    }
}

/// The live batches of a server.
pub struct Batches {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Batch>>>,
}

impl Default for Batches {
    fn default() -> Batches {
        // Ids from a random base, so that a restarted server does not hand out an id a client
        // still holds from before.
        let base = u64::from_le_bytes(crate::util::random_bytes::<8>()) >> 20;
        Batches {
            next: AtomicU64::new(base.max(1)),
            live: Mutex::new(HashMap::new()),
        }
    }
}

/// The TTL a batch request asks for: `{"ttl": seconds}`, where none, null or 0 means the
/// default; anything but a non-negative number is refused.
pub fn requested_ttl(body: &Value) -> ApiResult<Duration> {
    match body.get("ttl") {
        None | Some(Value::Null) => Ok(DEFAULT_TTL),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(0.0) => Ok(DEFAULT_TTL),
            Some(s) if s.is_finite() && s > 0.0 && s <= 1e9 => Ok(Duration::from_secs_f64(s)),
            _ => Err(ApiError::bad_parameter(format!("invalid ttl {n}"))),
        },
        Some(other) => Err(ApiError::bad_parameter(format!("invalid ttl {other}"))),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        num::CURSOR_NOT_FOUND,
        format!("batch {id} not found (it may have expired)"),
    )
}

impl Batches {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Batch>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new batch over everything `store` has applied, living for `ttl`.
    pub fn create(&self, store: &Arc<DocStore>, ttl: Duration) -> ApiResult<Arc<Batch>> {
        let snapshot = store.snapshot()?;
        let now = Instant::now();
        let batch = Arc::new(Batch {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            snapshot,
            created: now,
            expires: Mutex::new(now + ttl),
            cursors: Mutex::new(HashMap::new()),
            files: std::sync::OnceLock::new(),
        });
        self.live().insert(batch.id, batch.clone());
        Ok(batch)
    }

    /// The live batch named `id` (as a client sends it).
    pub fn get(&self, id: &str) -> ApiResult<Arc<Batch>> {
        let number: u64 = id.parse().map_err(|_| not_found(id))?;
        let mut live = self.live();
        let batch = live.get(&number).cloned().ok_or_else(|| not_found(id))?;
        if *batch.expires.lock().unwrap_or_else(|p| p.into_inner()) <= Instant::now() {
            live.remove(&number);
            return Err(not_found(id));
        }
        Ok(batch)
    }

    /// Makes batch `id` live for `ttl` from now.
    pub fn extend(&self, id: &str, ttl: Duration) -> ApiResult<()> {
        let batch = self.get(id)?;
        *batch.expires.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now() + ttl;
        Ok(())
    }

    /// Ends batch `id`; its view goes once no request still reads through it.
    pub fn remove(&self, id: &str) -> ApiResult<()> {
        self.get(id)?;
        let number: u64 = id.parse().map_err(|_| not_found(id))?;
        self.live().remove(&number);
        Ok(())
    }

    /// Ends every batch whose TTL has passed; returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut live = self.live();
        let before = live.len();
        live.retain(|_, b| *b.expires.lock().unwrap_or_else(|p| p.into_inner()) > now);
        before - live.len()
    }

    /// (live batches, age of the oldest) for the metrics.
    pub fn summary(&self) -> (usize, Duration) {
        let live = self.live();
        let oldest = live.values().map(|b| b.created.elapsed()).max();
        (live.len(), oldest.unwrap_or_default())
    }
}
