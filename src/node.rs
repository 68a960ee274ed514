//! The server both roles share: its WAL, its document store and the store writer that applies
//! the WAL to it, the catalog operations (databases, collections) and reads. A leader's clients
//! write through `leader::write`; a follower's store is fed by its applier (`follower`), and its
//! clients' writes are refused while it follows.

use crate::api::{num, ApiError, ApiResult};
use crate::util::{valid_collection_name, valid_database_name, valid_key};
use axum::http::StatusCode;
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tickship_storage::docstore::{
    CollectionInfo, DatabaseInfo, DocStore, KeyOptions, StoreWriter, StoredDocument,
};
use tickship_storage::wal::{Record, RecordType};
use tickship_storage::{Tick, TickRange, Wal};

use crate::leader::keys::KeyGen;
use crate::leader::locks::KeyLocks;

/// Blocks from this size on are compressed and submitted with `block_in_place`.
const BLOCKING_BLOCK_BYTES: usize = 256 << 10;

/// Counters for `/_admin/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub documents_written: AtomicU64,
    pub documents_removed: AtomicU64,
    pub write_requests: AtomicU64,
    pub read_requests: AtomicU64,
    pub http_errors: AtomicU64,
}

/// One server's data plane, whichever role it has: its log, its store and what writes to both.
pub struct Node {
    pub wal: Arc<Wal>,
    pub store: Arc<DocStore>,
    pub store_writer: StoreWriter,
    pub server_id: String,
    pub max_document_bytes: usize,
    pub shutting_down: AtomicBool,
    /// Set while this server follows a leader (its endpoint): writes are refused with 503.
    pub(crate) follower_of: Mutex<Option<String>>,
    pub metrics: Metrics,
    pub(crate) locks: KeyLocks,
    pub(crate) keygen: KeyGen,
    pub(crate) ddl: tokio::sync::Mutex<()>,
    pub(crate) tid: AtomicU64,
}

/// A document's `_rev` as clients see it.
pub fn rev_string(tick: Tick) -> String {
    tick.to_string()
}
impl Node {
    pub fn new(
        wal: Arc<Wal>,
        store: Arc<DocStore>,
        store_writer: StoreWriter,
        data_dir: &Path,
        server_id: String,
        max_document_bytes: usize,
    ) -> anyhow::Result<Node> {
        Ok(Node {
            keygen: KeyGen::open(&data_dir.join("keygen"))?,
            tid: AtomicU64::new(u64::from_le_bytes(crate::util::random_bytes::<8>()) >> 16),
            wal,
            store,
            store_writer,
            server_id,
            max_document_bytes,
            shutting_down: AtomicBool::new(false),
            follower_of: Mutex::new(None),
            metrics: Metrics::default(),
            locks: KeyLocks::new(),
            ddl: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn check_writable(&self) -> ApiResult<()> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(ApiError::unavailable("server is shutting down"));
        }
        if let Some(leader) = self.follower_of() {
            return Err(ApiError::follower_write(&leader));
        }
        // Refused before it is logged: a write logged while the store cannot apply it would be
        // answered with an error and still take effect once space is back.
        self.store_writer.check_space()?;
        Ok(())
    }

    /// Marks this server as following the leader at `leader` (or not).
    pub fn set_follower_of(&self, leader: Option<String>) {
        *self.follower_of.lock().unwrap_or_else(|p| p.into_inner()) = leader;
    }

    pub fn follower_of(&self) -> Option<String> {
        self.follower_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Appends `records` as one block, waits until it is durable and applied; returns its ticks.
    pub(crate) async fn log(&self, records: &[Record<'_>]) -> ApiResult<TickRange> {
        // Compressing a large block takes a while, and submitting waits while the WAL's queue is
        // full (backpressure): large blocks hand this worker's other tasks to another thread
        // first. For small ones that hand-off costs more than the work (two thread switches per
        // single-document insert), so they run in place.
        let raw_bytes: usize = records.iter().map(Record::encoded_bytes).sum();
        let appended = if raw_bytes >= BLOCKING_BLOCK_BYTES {
            tokio::task::block_in_place(|| self.wal.submit(self.wal.prepare(records)?))?
        } else {
            self.wal.submit(self.wal.prepare(records)?)?
        };
        let ticks = appended.await?;
        match self.store_writer.applied(ticks.last).await {
            Err(error @ tickship_storage::Error::StoreFull(_)) => {
                Err(ApiError::filesystem_full(format_args!(
                    "{error}; this write is in the log at tick {} and becomes visible once \
                     space is freed",
                    ticks.last
                )))
            }
            other => other.map(|()| ticks).map_err(ApiError::from),
        }
    }

    pub fn database(&self, name: &str) -> ApiResult<DatabaseInfo> {
        self.store
            .catalog()
            .database(name)
            .cloned()
            .ok_or_else(ApiError::database_not_found)
    }

    pub fn collection(&self, database: &str, name: &str) -> ApiResult<Arc<CollectionInfo>> {
        self.database(database)?;
        let catalog = self.store.catalog();
        // Collections are addressed by name or by id.
        catalog
            .collection(database, name)
            .or_else(|| {
                name.parse::<u64>()
                    .ok()
                    .and_then(|id| catalog.collection_by_id(id))
            })
            .filter(|c| c.database == database)
            .ok_or_else(ApiError::collection_not_found)
    }

    // ---- catalog ------------------------------------------------------------------------

    pub async fn create_collection(
        &self,
        database: &str,
        name: &str,
        kind: u8,
        wait_for_sync: bool,
        key_options: KeyOptions,
    ) -> ApiResult<Arc<CollectionInfo>> {
        self.check_writable()?;
        self.database(database)?;
        if !valid_collection_name(name) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                num::ILLEGAL_NAME,
                "illegal name",
            ));
        }
        if kind != 2 && kind != 3 {
            return Err(ApiError::bad_parameter("invalid collection type"));
        }
        let _ddl = self.ddl.lock().await;
        let catalog = self.store.catalog();
        if catalog.collection(database, name).is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                num::DUPLICATE_NAME,
                "duplicate name",
            ));
        }
        let info = CollectionInfo {
            id: catalog.max_id().max(1000) + 1,
            name: name.to_string(),
            database: database.to_string(),
            kind,
            wait_for_sync,
            key_options,
            is_system: name.starts_with('_'),
        };
        let json = serde_json::to_vec(&info).map_err(|e| ApiError::internal(e.to_string()))?;
        let id = info.id.to_string();
        let record = Record {
            kind: RecordType::CollectionCreate,
            tid: 0,
            db: database,
            collection: &id,
            key: "",
            data: &json,
        };
        self.log(&[record]).await?;
        self.collection(database, name)
    }

    /// Drops, truncates, renames or changes a collection with one record.
    pub async fn change_collection(
        &self,
        collection: &CollectionInfo,
        kind: RecordType,
        data: &[u8],
    ) -> ApiResult<()> {
        self.check_writable()?;
        let _ddl = self.ddl.lock().await;
        let id = collection.id.to_string();
        let record = Record {
            kind,
            tid: 0,
            db: &collection.database,
            collection: &id,
            key: "",
            data,
        };
        self.log(&[record]).await?;
        Ok(())
    }

    pub async fn rename_collection(
        &self,
        collection: &CollectionInfo,
        name: &str,
    ) -> ApiResult<()> {
        if !valid_collection_name(name) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                num::ILLEGAL_NAME,
                "illegal name",
            ));
        }
        if self
            .store
            .catalog()
            .collection(&collection.database, name)
            .is_some()
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                num::DUPLICATE_NAME,
                "duplicate name",
            ));
        }
        let data = serde_json::to_vec(&serde_json::json!({ "name": name })).unwrap_or_default();
        self.change_collection(collection, RecordType::CollectionRename, &data)
            .await
    }

    pub async fn create_database(&self, name: &str) -> ApiResult<()> {
        self.check_writable()?;
        if !valid_database_name(name) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                num::DATABASE_NAME_INVALID,
                "database name invalid",
            ));
        }
        let _ddl = self.ddl.lock().await;
        let catalog = self.store.catalog();
        if catalog.database(name).is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                num::DUPLICATE_NAME,
                "duplicate database name",
            ));
        }
        let info = DatabaseInfo {
            id: catalog.max_id().max(1000) + 1,
            name: name.to_string(),
        };
        let json = serde_json::to_vec(&info).map_err(|e| ApiError::internal(e.to_string()))?;
        let record = Record {
            kind: RecordType::DatabaseCreate,
            tid: 0,
            db: name,
            collection: "",
            key: "",
            data: &json,
        };
        self.log(&[record]).await?;
        Ok(())
    }

    pub async fn drop_database(&self, name: &str) -> ApiResult<()> {
        self.check_writable()?;
        if name == tickship_storage::docstore::SYSTEM_DATABASE {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                num::HTTP_FORBIDDEN,
                "cannot drop the _system database",
            ));
        }
        self.database(name)?;
        let _ddl = self.ddl.lock().await;
        let record = Record {
            kind: RecordType::DatabaseDrop,
            tid: 0,
            db: name,
            collection: "",
            key: "",
            data: b"",
        };
        self.log(&[record]).await?;
        Ok(())
    }

    // ---- reads --------------------------------------------------------------------------

    pub fn read(
        &self,
        collection: &CollectionInfo,
        key: &str,
    ) -> ApiResult<Option<StoredDocument>> {
        self.metrics.read_requests.fetch_add(1, Ordering::Relaxed);
        if !valid_key(key) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                num::DOCUMENT_KEY_BAD,
                "illegal document key",
            ));
        }
        Ok(self.store.get(collection.id, key)?)
    }

    pub fn read_many(
        &self,
        collection: &CollectionInfo,
        keys: &[&str],
    ) -> ApiResult<Vec<Option<StoredDocument>>> {
        self.metrics.read_requests.fetch_add(1, Ordering::Relaxed);
        Ok(self.store.get_many(collection.id, keys)?)
    }
}

/// A stored document of collection `name` as a JSON value with `_rev`.
pub fn document_value(doc: &StoredDocument, name: &str) -> Value {
    serde_json::from_slice(&doc.to_json_in(name)).unwrap_or(Value::Null)
}
