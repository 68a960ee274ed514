//! Per-database appliers: ArangoDB's `/_db/{db}/_api/replication/applier-*` (without
//! `global`), each with its own configuration, state, totals and last error, replicating only
//! its database.
//!
//! This server keeps one copy of its leader's log, under the leader's ticks, so all appliers of
//! one server follow the same leader through one session: the server-level `Applier` (the
//! *link*), driven with `for_databases` set. What a database applier decides is which databases
//! the store applies. Starting it admits its database to the store's filter from the tick its
//! data is at (`StoreWriter::admit_database`: caught up from this server's WAL if the store went
//! on without it, or skipping its records up to that tick if its data is newer); stopping it
//! leaves its database out at a tick it records. The link runs while any of them runs.
//!
//! A database is replicated into the database of the same name (the log names databases), so
//! `database` must be the applier's own; an applier pointed at another leader than the one the
//! link follows is refused (1410).

use crate::api::{num, ApiError, ApiResult};
use crate::util::{iso8601 as timestamp, write_private};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tickship_storage::docstore::{DatabaseRule, StoreFilter};
use tickship_storage::Tick;

use super::config::{invalid, running};
use super::{setup_failed, Applier, ApplierConfig};

/// Where the appliers' files are, in the data directory: one per database.
const DIR: &str = "appliers";

/// What a database applier keeps on disk (mode 0600: the configuration holds the password).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Saved {
    database: String,
    config: ApplierConfig,
    /// Its database is applied (the applier runs whenever the link does).
    enabled: bool,
    /// The tick through which its database was applied and persisted when it was left out.
    left_at: u64,
    /// Its database's records up to this tick are skipped (its data was synced there).
    floor: u64,
    started: String,
    stopped_message: String,
    /// Documents stored and removed by the syncs of its database.
    synced_documents: u64,
    synced_removals: u64,
    error_num: u32,
    error_message: String,
    error_time: String,
}

/// The file of database `db`'s applier (names are hex-encoded: any database name is a file).
fn file_of(dir: &Path, db: &str) -> PathBuf {
    let hex: String = db.bytes().map(|b| format!("{b:02x}")).collect();
    dir.join(DIR).join(format!("{hex}.json"))
}

fn load(dir: &Path) -> anyhow::Result<BTreeMap<String, Saved>> {
    use anyhow::Context;
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(dir.join(DIR)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).context("read the appliers directory"),
    };
    for entry in entries {
        let path = entry.context("read the appliers directory")?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue; // a temporary file of a write that did not finish
        }
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let saved: Saved = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "parse {} (error 1407: invalid applier state)",
                path.display()
            )
        })?;
        out.insert(saved.database.clone(), saved);
    }
    Ok(out)
}

fn rules(saved: &BTreeMap<String, Saved>) -> StoreFilter {
    StoreFilter::Databases(
        saved
            .values()
            .filter(|s| s.enabled)
            .map(|s| {
                (
                    s.database.clone(),
                    DatabaseRule {
                        collections: s.config.filter(),
                        floor: Tick::new(s.floor),
                    },
                )
            })
            .collect(),
    )
}

/// The store filter of the database appliers saved in `dir` that apply their database, if any
/// does: a restart replays the log with it.
pub fn saved_filter(dir: &Path) -> anyhow::Result<Option<StoreFilter>> {
    let saved = load(dir)?;
    Ok(saved.values().any(|s| s.enabled).then(|| rules(&saved)))
}

/// The appliers of this server's databases.
pub struct DatabaseAppliers {
    link: Arc<Applier>,
    dir: PathBuf,
    saved: Mutex<BTreeMap<String, Saved>>,
    /// One start, stop or setup at a time.
    changing: tokio::sync::Mutex<()>,
}

impl DatabaseAppliers {
    pub fn open(link: Arc<Applier>, dir: &Path) -> anyhow::Result<Arc<DatabaseAppliers>> {
        let saved = load(dir)?;
        if saved.values().any(|s| s.enabled) {
            link.for_databases.store(true, Ordering::Release);
        }
        Ok(Arc::new(DatabaseAppliers {
            link,
            dir: dir.to_path_buf(),
            saved: Mutex::new(saved),
            changing: tokio::sync::Mutex::new(()),
        }))
    }

    fn get(&self, db: &str) -> Saved {
        self.saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(db)
            .cloned()
            .unwrap_or_else(|| Saved {
                database: db.to_string(),
                ..Saved::default()
            })
    }

    fn save(&self, saved: Saved) -> ApiResult<()> {
        let path = file_of(&self.dir, &saved.database);
        let bytes = serde_json::to_vec_pretty(&saved)
            .map_err(|e| ApiError::internal(format!("applier state: {e}")))?;
        std::fs::create_dir_all(self.dir.join(DIR))
            .and_then(|()| crate::util::sync_dir(&self.dir))
            .map_err(|e| ApiError::internal(format!("create the appliers directory: {e}")))?;
        write_private(&path, &bytes).map_err(|e| {
            ApiError::internal(format!("save the applier of '{}': {e:#}", saved.database))
        })?;
        self.saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(saved.database.clone(), saved);
        Ok(())
    }

    /// Whether any database applier applies its database (the link then serves them, not the
    /// server-level applier).
    pub fn any_enabled(&self) -> bool {
        self.saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|s| s.enabled)
    }

    /// The databases whose appliers apply them.
    fn enabled(&self) -> Vec<String> {
        self.saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.enabled)
            .map(|s| s.database.clone())
            .collect()
    }

    pub fn is_running(&self, db: &str) -> bool {
        self.get(db).enabled
            && self.link.is_running()
            && self.link.for_databases.load(Ordering::Acquire)
    }

    pub fn config(&self, db: &str) -> ApplierConfig {
        self.get(db).config
    }

    /// `PUT applier-config` of database `db`.
    pub fn configure(&self, db: &str, body: &Value) -> ApiResult<ApplierConfig> {
        if self.is_running(db) {
            return Err(running());
        }
        let mut saved = self.get(db);
        let config = saved.config.merged(body, db)?;
        own_database(&config, db)?;
        saved.config = config.clone();
        self.save(saved)?;
        Ok(config)
    }

    /// Refuses what would make two leaders' logs meet in this server's one log.
    fn check_link(&self, config: &ApplierConfig) -> ApiResult<()> {
        if !self.link.is_running() {
            return Ok(());
        }
        if !self.link.for_databases.load(Ordering::Acquire) {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                num::RUNNING,
                "the server-level applier is running and replicates every database; stop it \
                 (applier-stop?global=true) before starting the applier of one database",
            ));
        }
        let link = self.link.config();
        if link.endpoint != config.endpoint {
            return Err(invalid(&format!(
                "invalid value for <endpoint>: this server follows {} already, and all appliers \
                 of one server follow the same leader (it keeps one copy of the leader's log)",
                link.endpoint
            )));
        }
        Ok(())
    }

    /// Makes the store keep databases one by one (those enabled), if it did not yet.
    fn databases_mode(&self) {
        self.link.for_databases.store(true, Ordering::Release);
        let store = &self.link.node.store;
        if !matches!(store.filter().as_deref(), Some(StoreFilter::Databases(_))) {
            let rules = rules(&self.saved.lock().unwrap_or_else(|p| p.into_inner()));
            store.set_store_filter(Some(rules));
        }
    }

    /// Undoes `databases_mode` when no database applier is left applying: a server that does
    /// not follow applies everything again, one that follows with the server-level applier
    /// its filter.
    fn leave_databases_mode(&self) {
        if self.any_enabled() || self.link.is_running() {
            return;
        }
        self.link.for_databases.store(false, Ordering::Release);
        let store = &self.link.node.store;
        if self.link.node.follower_of().is_none() {
            store.set_store_filter(None);
        } else {
            store.set_filter(Some(self.link.config().filter()));
        }
    }

    /// Admits `db` to the store from the state after `after`; answers the floor it gets.
    fn admit(&self, db: &str, config: &ApplierConfig, after: Tick) -> ApiResult<u64> {
        let writer = &self.link.node.store_writer;
        let joined =
            tokio::task::block_in_place(|| writer.admit_database(db, config.filter(), after))
                .map_err(|e| match e {
                    tickship_storage::Error::TickCompacted(_) => ApiError::new(
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        num::START_TICK_NOT_PRESENT,
                        format!(
                    "database '{db}' was applied through tick {after}, and this server's log no \
                     longer holds what followed: set it up again (make-follower in '{db}'), \
                     which syncs it"
                ),
                    ),
                    e => ApiError::internal(format!("admit database '{db}' to the store: {e}")),
                })?;
        Ok(if after >= joined { after.get() } else { 0 })
    }

    /// The link follows with `config` (autoStart is the database appliers' own).
    fn start_link(&self, config: &ApplierConfig, from: Option<u64>) -> ApiResult<()> {
        if self.link.is_running() {
            return Ok(());
        }
        self.link.save_config(&ApplierConfig {
            auto_start: false,
            ..config.clone()
        })?;
        self.link.start(from)
    }

    /// `PUT applier-start` of database `db`: applies `db` from the state after `from` (or
    /// where it was left out) and makes sure the link runs.
    pub async fn start(&self, db: &str, from: Option<u64>) -> ApiResult<()> {
        let _one = self.changing.lock().await;
        let mut saved = self.get(db);
        let config = saved.config.clone();
        config.validate()?;
        own_database(&config, db)?;
        self.check_link(&config)?;
        if saved.enabled && self.link.is_running() {
            return Ok(()); // idempotent
        }
        let after = match from {
            Some(from) => from,
            None if saved.left_at > 0 || saved.enabled => saved.left_at,
            None => {
                return Err(ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    num::NO_START_TICK,
                    "no start tick",
                ))
            }
        };
        if !saved.enabled {
            self.link.check_own_ticks(after)?;
        }
        // A server that does not follow yet takes writes until the leader is verified (its
        // certificate, the credentials, not this server); from then on it refuses them, before
        // the store starts leaving databases out.
        if self.link.node.follower_of().is_none() {
            let opened = self.link.handshake(&config).await.map_err(|e| {
                setup_failed(
                    e.error_num,
                    format!("{}; this server accepts writes as before", e.message),
                )
            })?;
            opened.connection.close(0u32.into(), b"leader checked");
            self.link.follow(&config);
        }
        self.databases_mode();
        if !saved.enabled {
            saved.floor = match self.admit(db, &config, Tick::new(after)) {
                Ok(floor) => floor,
                Err(e) => {
                    self.leave_databases_mode();
                    return Err(e);
                }
            };
            saved.enabled = true;
        }
        saved.started = timestamp(SystemTime::now());
        saved.error_num = 0;
        self.save(saved.clone())?;
        // A log with no block yet begins where the first database's data is.
        let from = self
            .link
            .node
            .wal
            .first_tick()
            .is_none()
            .then(|| from.unwrap_or(saved.left_at));
        self.start_link(&config, from)
    }

    /// `PUT applier-stop` of database `db`: leaves `db` out from the next group on; the link
    /// stops when no database applier is left.
    pub async fn stop(&self, db: &str) -> ApiResult<()> {
        let _one = self.changing.lock().await;
        self.leave_out(db)?;
        if self.enabled().is_empty() {
            self.link.stop().await;
        }
        Ok(())
    }

    fn leave_out(&self, db: &str) -> ApiResult<()> {
        let mut saved = self.get(db);
        if !saved.enabled {
            return Ok(());
        }
        let writer = &self.link.node.store_writer;
        let left = tokio::task::block_in_place(|| writer.leave_out_database(db))
            .map_err(|e| ApiError::internal(format!("leave database '{db}' out: {e}")))?;
        saved.enabled = false;
        saved.left_at = left.get();
        saved.stopped_message = format!("applier stopped at tick {left}");
        self.save(saved)
    }

    /// `DELETE applier-state` of database `db`: forgets where it was left out. When no database
    /// applier applies anything any more, the server stops following (as the server-level
    /// applier's `DELETE applier-state` does).
    pub fn forget(&self, db: &str) -> ApiResult<()> {
        let mut saved = self.get(db);
        if saved.enabled {
            return Err(running());
        }
        saved.left_at = 0;
        saved.floor = 0;
        saved.error_num = 0;
        saved.stopped_message.clear();
        self.save(saved)?;
        if !self.any_enabled() && !self.link.is_running() {
            self.link.for_databases.store(false, Ordering::Release);
            self.link.forget_state()?;
        }
        Ok(())
    }

    /// `PUT sync` in database `db`: syncs that database alone with a snapshot of the body's
    /// leader; `lastLogTick` is where its `applier-start` continues.
    pub async fn sync(&self, db: &str, body: &Value) -> ApiResult<Value> {
        let _one = self.changing.lock().await;
        let mut saved = self.get(db);
        if saved.enabled {
            return Err(running());
        }
        let config = saved.config.merged(body, db)?;
        own_database(&config, db)?;
        self.check_link(&config)?;
        saved.config = config.clone();
        self.save(saved)?;
        let report = self.sync_database(db, &config).await?;
        let mut saved = self.get(db);
        saved.synced_documents += report.documents;
        saved.synced_removals += report.removed;
        self.save(saved)?;
        let collections: Vec<Value> = report
            .collections
            .iter()
            .map(|(id, name)| json!({"id": id.to_string(), "name": name}))
            .collect();
        Ok(json!({"collections": collections, "lastLogTick": report.tick.to_string()}))
    }

    /// Syncs database `db` alone. A failure says whether this server still takes writes (it
    /// failed before anything of the leader's was stored) or follows the leader already.
    async fn sync_database(
        &self,
        db: &str,
        config: &ApplierConfig,
    ) -> ApiResult<super::SyncReport> {
        let result = self
            .link
            .clone()
            .sync_with(
                config.clone(),
                config.incremental,
                Arc::new(AtomicBool::new(false)),
                Some(db.to_string()),
            )
            .await;
        result.map_err(|e| {
            // The failure is the applier's last error; a setup that failed starts nothing.
            let mut saved = self.get(db);
            saved.error_num = e.error_num;
            saved.error_message = e.message.clone();
            saved.error_time = timestamp(SystemTime::now());
            saved.config.auto_start = false;
            if let Err(save) = self.save(saved) {
                tracing::warn!("cannot save the applier of '{db}': {}", save.message);
            }
            let outcome = match self.link.node.follower_of() {
                None => "this server was not made a follower and accepts writes as before".into(),
                Some(leader) => format!(
                    "this server follows {leader} (writes refused); fix the cause and set \
                     database '{db}' up again: an incremental sync keeps what has arrived"
                ),
            };
            setup_failed(e.error_num, format!("{}; {outcome}", e.message))
        })
    }

    /// `make-follower` in database `db`: syncs `db` with a snapshot of the leader, applies it
    /// from the snapshot's tick on, and waits until it has caught up (or
    /// `initialSyncMaxWaitTime`).
    pub async fn make_follower(&self, db: &str, body: &Value) -> ApiResult<Value> {
        let mut config = ApplierConfig::default().merged(body, db)?;
        config.auto_start = true;
        config.skip_create_drop = false;
        own_database(&config, db)?;
        {
            let _one = self.changing.lock().await;
            self.check_link(&config)?;
            self.leave_out(db)?;
            let mut saved = self.get(db);
            saved.config = config.clone();
            self.save(saved)?;
            let report = self.sync_database(db, &config).await?;
            self.databases_mode();
            let mut saved = self.get(db);
            saved.synced_documents += report.documents;
            saved.synced_removals += report.removed;
            saved.floor = match self.admit(db, &config, report.tick) {
                Ok(floor) => floor,
                Err(e) => {
                    self.leave_databases_mode();
                    return Err(e);
                }
            };
            saved.enabled = true;
            saved.left_at = 0;
            saved.started = timestamp(SystemTime::now());
            saved.error_num = 0;
            self.save(saved)?;
            self.start_link(&config, None)?;
        }
        self.link
            .wait_caught_up(Duration::from_secs_f64(config.initial_sync_max_wait_time))
            .await;
        Ok(self.state_json(db))
    }

    /// Starts the appliers that were applying their databases when the server stopped and
    /// have autoStart.
    pub async fn auto_start(&self) {
        let starting: Vec<String> = self
            .saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.enabled && s.config.auto_start)
            .map(|s| s.database.clone())
            .collect();
        for db in starting {
            match self.start(&db, None).await {
                Ok(()) => tracing::info!(database = %db, "replication applier started (autoStart)"),
                Err(e) => {
                    tracing::warn!(database = %db, "replication applier did not start: {}", e.message)
                }
            }
        }
    }

    /// The state document of database `db`'s applier: the link's figures while it applies its
    /// database, its own otherwise; totals of its database only.
    pub fn state_json(&self, db: &str) -> Value {
        let saved = self.get(db);
        let running = self.is_running(db);
        let mut doc = self.link.state_json();
        let totals = self.link.node.store.database_totals(db);
        let tick = |t: u64| {
            if t == 0 {
                Value::Null
            } else {
                Value::String(t.to_string())
            }
        };
        if let Some(state) = doc.get_mut("state").and_then(Value::as_object_mut) {
            state.insert("running".into(), json!(running));
            state.insert(
                "totalDocuments".into(),
                json!(totals.documents + saved.synced_documents),
            );
            state.insert(
                "totalRemovals".into(),
                json!(totals.removals + saved.synced_removals),
            );
            state.insert("totalOperationsExcluded".into(), json!(totals.excluded));
            if !saved.started.is_empty() {
                state.insert("started".into(), json!(saved.started));
            }
            if !saved.enabled {
                state.insert("phase".into(), json!("inactive"));
                state.remove("ticksBehind");
                for name in [
                    "lastAppliedContinuousTick",
                    "lastProcessedContinuousTick",
                    "safeResumeTick",
                ] {
                    state.insert(name.into(), tick(saved.left_at));
                }
                let message = if saved.stopped_message.is_empty() {
                    "applier inactive".to_string()
                } else {
                    saved.stopped_message.clone()
                };
                state.insert(
                    "progress".into(),
                    json!({"time": timestamp(SystemTime::now()), "message": message, "failedConnects": 0}),
                );
                let mut error = json!({"errorNum": saved.error_num});
                if saved.error_num != 0 {
                    error["errorMessage"] = json!(saved.error_message);
                    error["time"] = json!(saved.error_time);
                }
                state.insert("lastError".into(), error);
            } else if !running {
                state.insert("phase".into(), json!("inactive"));
            }
        }
        if saved.config.endpoint.is_empty() {
            if let Some(doc) = doc.as_object_mut() {
                doc.remove("endpoint");
            }
        } else {
            doc["endpoint"] = json!(saved.config.endpoint);
        }
        doc["database"] = json!(db);
        doc
    }
}

/// A database applier replicates the leader's database of its own name.
fn own_database(config: &ApplierConfig, db: &str) -> ApiResult<()> {
    if config.database != db {
        return Err(invalid(&format!(
            "invalid value for <database>: the applier of database '{db}' replicates the \
             leader's '{db}' (this server keeps one copy of the leader's log, which names \
             databases), not '{}': use that database's applier",
            config.database
        )));
    }
    Ok(())
}
