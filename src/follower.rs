//! The follower's replication applier: configuration and state documents as ArangoDB keeps them
//! (reference/arangodb.md §3, §4.1), and the task that pulls the leader's WAL over QUIC, stores
//! the blocks verbatim in this server's WAL (same ticks) and lets the store applier make them
//! visible.

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tickship_net::frame::{Kind, Piece, BLOCKS_BYTES_MAX};
use tickship_net::session::{self, FollowerSide};
use tickship_net::transport::{client_endpoint, connect};
use tickship_net::{errors, Ack, Close, Control, Error as NetError, FramedStream, Idle, Tail};
use tickship_storage::docstore::{CollectionFilter, Restrict, StoreWriterTotals};
use tickship_storage::wal::{Appended, Block};
use tickship_storage::{Tick, TickRange};
use tokio::sync::Notify;

use crate::api::{ApiError, ApiResult};
use crate::leader::Node;
use crate::util::{iso8601 as timestamp, write_private};

pub mod num {
    pub const NO_RESPONSE: u32 = 1400;
    pub const INVALID_RESPONSE: u32 = 1401;
    pub const LEADER_CHANGE: u32 = 1404;
    pub const LOOP: u32 = 1405;
    pub const INVALID_CONFIGURATION: u32 = 1410;
    pub const RUNNING: u32 = 1411;
    pub const STOPPED: u32 = 1412;
    pub const NO_START_TICK: u32 = 1413;
}

/// The applier configuration, with ArangoDB's names and defaults. Durations are seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ApplierConfig {
    pub endpoint: String,
    pub database: String,
    pub username: String,
    pub password: String,
    pub max_connect_retries: u64,
    pub connect_timeout: f64,
    pub request_timeout: f64,
    pub chunk_size: u64,
    pub auto_start: bool,
    pub adaptive_polling: bool,
    pub auto_resync: bool,
    pub auto_resync_retries: u64,
    pub include_system: bool,
    pub include_foxx_queues: bool,
    pub require_from_present: bool,
    pub verbose: bool,
    pub incremental: bool,
    pub restrict_type: String,
    pub restrict_collections: Vec<String>,
    pub connection_retry_wait_time: f64,
    pub initial_sync_max_wait_time: f64,
    pub idle_min_wait_time: f64,
    pub idle_max_wait_time: f64,
    pub max_packet_size: u64,
    pub ignore_errors: u64,
    pub lock_timeout_retries: u64,
    pub ssl_protocol: u64,
    pub skip_create_drop: bool,
}

impl Default for ApplierConfig {
    fn default() -> ApplierConfig {
        ApplierConfig {
            endpoint: String::new(),
            database: String::new(),
            username: "root".into(),
            password: String::new(),
            max_connect_retries: 100,
            connect_timeout: 10.0,
            request_timeout: 600.0,
            chunk_size: 0,
            auto_start: false,
            adaptive_polling: true,
            auto_resync: false,
            auto_resync_retries: 2,
            include_system: true,
            include_foxx_queues: false,
            require_from_present: true,
            verbose: false,
            incremental: false,
            restrict_type: String::new(),
            restrict_collections: Vec::new(),
            connection_retry_wait_time: 15.0,
            initial_sync_max_wait_time: 300.0,
            idle_min_wait_time: 1.0,
            idle_max_wait_time: 2.5,
            max_packet_size: 536_870_912,
            ignore_errors: 0,
            lock_timeout_retries: 0,
            ssl_protocol: 0,
            skip_create_drop: false,
        }
    }
}

impl ApplierConfig {
    /// The configuration as `applier-config` answers it: never the password.
    pub fn public_json(&self) -> Value {
        let mut value = serde_json::to_value(self).expect("config serialises");
        if let Value::Object(map) = &mut value {
            map.remove("password");
        }
        value
    }

    /// `self` with the attributes of `body` merged on, validated.
    pub fn merged(&self, body: &Value, local_db: &str) -> ApiResult<ApplierConfig> {
        let Value::Object(updates) = body else {
            return Err(invalid("body must be a JSON object"));
        };
        let mut map: Map<String, Value> = match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        for (key, value) in updates {
            if !map.contains_key(key) {
                continue; // ArangoDB ignores attributes it does not know
            }
            let value = match (key.as_str(), value) {
                // `ignoreErrors: true` means "all".
                ("ignoreErrors", Value::Bool(true)) => json!(u64::MAX),
                ("ignoreErrors", Value::Bool(false)) => json!(0),
                ("restrictType", Value::String(t)) if t == "none" => json!(""),
                _ => value.clone(),
            };
            map.insert(key.clone(), value);
        }
        let mut config: ApplierConfig = serde_json::from_value(Value::Object(map))
            .map_err(|e| invalid(&format!("invalid value in applier configuration: {e}")))?;
        if config.database.is_empty() {
            config.database = local_db.to_string();
        }
        config.validate()?;
        Ok(config)
    }

    /// The collections this configuration replicates.
    pub fn filter(&self) -> CollectionFilter {
        let restrict = match self.restrict_type.as_str() {
            "include" => Restrict::Include,
            "exclude" => Restrict::Exclude,
            _ => Restrict::None,
        };
        CollectionFilter::new(
            restrict,
            self.restrict_collections.iter().cloned(),
            self.include_system,
        )
    }

    pub fn validate(&self) -> ApiResult<()> {
        if self.endpoint.is_empty() {
            return Err(invalid("invalid value for <endpoint>"));
        }
        if !matches!(self.restrict_type.as_str(), "" | "include" | "exclude") {
            return Err(invalid("invalid value for <restrictType>"));
        }
        if self.restrict_type.is_empty() != self.restrict_collections.is_empty() {
            return Err(invalid(
                "invalid value for <restrictCollections> or <restrictType>",
            ));
        }
        for (name, value) in [
            ("connectTimeout", self.connect_timeout),
            ("requestTimeout", self.request_timeout),
            ("connectionRetryWaitTime", self.connection_retry_wait_time),
            ("idleMinWaitTime", self.idle_min_wait_time),
            ("idleMaxWaitTime", self.idle_max_wait_time),
            ("initialSyncMaxWaitTime", self.initial_sync_max_wait_time),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(invalid(&format!("invalid value for <{name}>")));
            }
        }
        Ok(())
    }

    /// The leader's QUIC address: the endpoint's host and port (UDP), unless overridden.
    fn leader_addr(&self) -> Result<SocketAddr, String> {
        let rest = self
            .endpoint
            .strip_prefix("tcp://")
            .or_else(|| self.endpoint.strip_prefix("ssl://"))
            .or_else(|| self.endpoint.strip_prefix("http://"))
            .or_else(|| self.endpoint.strip_prefix("https://"))
            .unwrap_or(&self.endpoint)
            .trim_end_matches('/');
        rest.to_socket_addrs()
            .map_err(|e| format!("cannot resolve {rest}: {e}"))?
            .next()
            .ok_or_else(|| format!("cannot resolve {rest}"))
    }
}

fn invalid(message: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        num::INVALID_CONFIGURATION,
        message,
    )
}

/// What survives a restart besides the configuration (ArangoDB persists the same four).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PersistedState {
    /// The leader's server id, checked on every connect (1404 when it differs).
    pub server_id: String,
    pub last_processed_continuous_tick: u64,
    pub last_applied_continuous_tick: u64,
    pub safe_resume_tick: u64,
}

#[derive(Clone, Debug, Default)]
struct LastError {
    error_num: u32,
    time: String,
    message: String,
}

/// The in-memory state document.
#[derive(Clone, Debug, Default)]
struct Runtime {
    started: Option<SystemTime>,
    running: bool,
    phase: &'static str,
    last_processed: u64,
    last_available: Option<u64>,
    progress_time: String,
    progress_message: String,
    failed_connects: u64,
    total_requests: u64,
    total_failed_connects: u64,
    total_events: u64,
    /// The store applier's totals when this applier was opened (after the startup replay).
    store_totals_base: StoreWriterTotals,
    total_apply_time: f64,
    apply_batches: u64,
    total_fetch_time: f64,
    fetch_batches: u64,
    /// Bytes of blocks received from the leader (stored or already held).
    total_bytes_received: u64,
    /// Times the leader no longer had the tick to follow from (1414).
    follow_tick_failures: u64,
    last_error: LastError,
}

/// The applier's figures for `/_admin/metrics`.
#[derive(Clone, Debug, Default)]
pub struct ApplierMetrics {
    pub running: bool,
    pub failed_connects: u64,
    pub total_failed_connects: u64,
    pub requests: u64,
    pub markers: u64,
    pub documents: u64,
    pub removals: u64,
    pub excluded: u64,
    pub bytes_received: u64,
    pub follow_tick_failures: u64,
    pub fetch_seconds: f64,
    pub apply_seconds: f64,
    pub ticks_behind: u64,
    pub last_error_num: u32,
    pub last_applied: u64,
    pub last_processed: u64,
    pub last_available: u64,
}

/// The applier of one server (the global applier; ArangoDB's per-database appliers collapse
/// into it because the log is shared by all databases).
pub struct Applier {
    node: Arc<Node>,
    dir: PathBuf,
    receiving: Receiving,
    config: Mutex<ApplierConfig>,
    persisted: Mutex<PersistedState>,
    runtime: Mutex<Runtime>,
    /// Woken when the leader's last tick or what was received changes, or the applier stops.
    runtime_changed: Notify,
    /// The running task and the signal that stops it (one per start, so that a stop can never
    /// leak into the next run).
    task: Mutex<Option<(tokio::task::JoinHandle<()>, Arc<Notify>)>>,
    /// Where the applier's task (its QUIC connection, receiving, storing) runs.
    tasks: tokio::runtime::Handle,
}

const CONFIG_FILE: &str = "applier-config.json";
const STATE_FILE: &str = "applier-state.json";

/// How this server receives a leader's log (its command-line flags).
#[derive(Clone, Debug)]
pub struct Receiving {
    /// Accept only a leader whose certificate has this SHA-256 fingerprint
    /// (`--replication.leader-fingerprint`).
    pub leader_fingerprint: Option<String>,
    /// Bytes of the leader's log held in memory at most, once and a quarter: QUIC's stream
    /// window (sent, not yet read) and a quarter of it in blocks read but not yet written to
    /// this server's WAL (`--replication.receive-buffer-size`). A follower far behind fills
    /// both, one close behind does not; so this is what separates their memory.
    pub buffer_bytes: u32,
}

impl Receiving {
    /// Bytes of received blocks queued for the WAL's writer at most: a quarter of the buffer
    /// (the default frame size), so that one frame is queued while the next is read. Blocks
    /// once written are no longer held, so catching up is no slower than when a whole buffer
    /// of blocks not yet durable was held (10.01M behind, 5 runs alternating: 19.95–27.21 s
    /// against 20.83–27.37 s; gating blocks not yet durable at a quarter instead: 26.8 s
    /// against 22.9–23.0 s).
    fn ahead_bytes(&self) -> usize {
        (self.buffer_bytes as usize / 4).max(64 << 10)
    }
}

/// Bytes of the leader's log written to this server's WAL but not yet durable, at most.
const DURABLE_AHEAD_BYTES: usize = 8 << 20;

/// Ticks behind the leader past which a tailing follower switches to its catch-up memtables
/// (`DocStore::set_tailing`), and below which it switches back. Apart, so that a follower near
/// either one does not switch at every frame.
const FAR_BEHIND_TICKS: u64 = 64 << 10;
const CAUGHT_UP_TICKS: u64 = 8 << 10;

/// The frame size a follower asks for: its applier's chunkSize, or without one (0) a quarter
/// of its receive buffer, from 64 KiB to the leader's default of 4 MiB. A frame is allocated
/// whole once its header arrives, besides what is buffered, so a smaller one adds less to it.
fn chunk_bytes(chunk_size: u64, buffer_bytes: u32) -> u64 {
    match chunk_size {
        0 => u64::from(buffer_bytes / 4).clamp(64 << 10, 4 << 20),
        bytes => bytes,
    }
}

/// Whether a follower `behind` ticks behind its leader should have tailing memtables (`None`:
/// keep what it has).
fn tailing_at(behind: u64) -> Option<bool> {
    if behind >= FAR_BEHIND_TICKS {
        Some(false)
    } else if behind < CAUGHT_UP_TICKS {
        Some(true)
    } else {
        None
    }
}

/// A leader's block stored in this server's WAL and not yet durable there.
struct Inflight {
    appended: Appended,
    /// Its last tick.
    tick: Tick,
    bytes: usize,
    /// Set on the last block of a frame: when the frame arrived.
    received: Option<Instant>,
}

/// The applier configuration and state saved in `dir` (defaults where nothing is saved).
pub fn load_saved(dir: &std::path::Path) -> anyhow::Result<(ApplierConfig, PersistedState)> {
    let load = |name: &str| -> anyhow::Result<Option<Vec<u8>>> {
        match std::fs::read(dir.join(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", dir.join(name).display())),
        }
    };
    let config: ApplierConfig = match load(CONFIG_FILE)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("parse {}", dir.join(CONFIG_FILE).display()))?,
        None => ApplierConfig::default(),
    };
    let persisted: PersistedState = match load(STATE_FILE)? {
        Some(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "parse {} (error 1407: invalid applier state)",
                dir.join(STATE_FILE).display()
            )
        })?,
        None => PersistedState::default(),
    };
    Ok((config, persisted))
}

/// Whether a server with this saved state follows a leader (it has connected to one and its
/// state was not deleted since).
pub fn is_following(persisted: &PersistedState) -> bool {
    !persisted.server_id.is_empty()
}

impl Applier {
    /// The applier of this server, with the configuration and state `load_saved` read.
    pub fn open(
        node: Arc<Node>,
        dir: PathBuf,
        receiving: Receiving,
        (config, persisted): (ApplierConfig, PersistedState),
        tasks: tokio::runtime::Handle,
    ) -> anyhow::Result<Arc<Applier>> {
        let runtime = Runtime {
            phase: "inactive",
            store_totals_base: node.store_writer.totals(),
            last_processed: persisted.last_processed_continuous_tick,
            ..Runtime::default()
        };
        let applier = Arc::new(Applier {
            node: node.clone(),
            dir,
            receiving,
            config: Mutex::new(config),
            persisted: Mutex::new(persisted.clone()),
            runtime: Mutex::new(runtime),
            runtime_changed: Notify::new(),
            task: Mutex::new(None),
            tasks,
        });
        if is_following(&persisted) {
            applier.follow(&applier.config());
        }
        Ok(applier)
    }

    /// Refuses clients' writes (they go to `config`'s leader) and keeps only the collections
    /// `config` restricts replication to.
    fn follow(&self, config: &ApplierConfig) {
        if self.node.follower_of().is_none() {
            // A leader becoming a follower: what its store applied so far were its clients' writes.
            self.runtime
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .store_totals_base = self.node.store_writer.totals();
        }
        self.node.set_follower_of(Some(config.endpoint.clone()));
        self.node.store.set_filter(Some(config.filter()));
    }

    /// What the store applied from a leader: nothing on a leader, whose store applies only its
    /// own clients' writes.
    fn applied_from_leader(&self, runtime: &Runtime) -> StoreWriterTotals {
        if self.node.follower_of().is_none() {
            return StoreWriterTotals::default();
        }
        self.node.store_writer.totals().since(runtime.store_totals_base)
    }

    pub fn config(&self) -> ApplierConfig {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn is_running(&self) -> bool {
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running
    }

    /// `PUT applier-config`: merges, validates, saves. Refused while running (1411).
    pub fn configure(&self, body: &Value, local_db: &str) -> ApiResult<ApplierConfig> {
        if self.is_running() {
            return Err(running());
        }
        let config = self.config().merged(body, local_db)?;
        self.save_config(&config)?;
        Ok(config)
    }

    fn save_config(&self, config: &ApplierConfig) -> ApiResult<()> {
        let bytes = serde_json::to_vec_pretty(config).expect("config serialises");
        // The password is in it: owner-readable only.
        write_private(&self.dir.join(CONFIG_FILE), &bytes)
            .map_err(|e| ApiError::internal(format!("save the applier configuration: {e:#}")))?;
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config.clone();
        Ok(())
    }

    fn save_state(&self) {
        let state = {
            let mut persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
            let runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
            persisted.last_processed_continuous_tick = runtime.last_processed;
            persisted.last_applied_continuous_tick = self.node.store_writer.applied_tick().get();
            persisted.safe_resume_tick = runtime.last_processed;
            persisted.clone()
        };
        let bytes = serde_json::to_vec_pretty(&state).expect("state serialises");
        if let Err(e) = write_private(&self.dir.join(STATE_FILE), &bytes) {
            tracing::warn!("cannot save the applier state: {e:#}");
        }
    }

    /// `DELETE applier-state`: forgets the saved state (not while running).
    pub fn forget_state(&self) -> ApiResult<()> {
        if self.is_running() {
            return Err(running());
        }
        *self.persisted.lock().unwrap_or_else(|p| p.into_inner()) = PersistedState::default();
        {
            let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
            runtime.last_processed = 0;
            runtime.last_error = LastError::default();
        }
        match std::fs::remove_file(self.dir.join(STATE_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ApiError::internal(format!("remove the applier state: {e}"))),
        }
        self.node.set_follower_of(None);
        self.node.store.set_filter(None);
        Ok(())
    }

    /// `PUT applier-start`: starts tailing after `from` (exclusive), or where it left off.
    pub fn start(self: &Arc<Self>, from: Option<u64>) -> ApiResult<()> {
        let config = self.config();
        config.validate()?;
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_running() {
            return Ok(()); // idempotent
        }
        let own_last = self.node.wal.last_tick().get();
        let saved = self
            .persisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .safe_resume_tick;
        // Blocks up to our WAL's last tick are stored already: never ask for them again.
        let from = match from {
            Some(from) => from.max(own_last),
            None if saved > 0 || own_last > 0 => saved.max(own_last),
            None if self
                .persisted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .server_id
                .is_empty() =>
            {
                return Err(ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    num::NO_START_TICK,
                    "no start tick",
                ))
            }
            None => 0,
        };
        {
            let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
            runtime.running = true;
            runtime.phase = "running";
            runtime.started = Some(SystemTime::now());
            runtime.failed_connects = 0;
            runtime.last_processed = runtime.last_processed.max(own_last);
            runtime.last_error = LastError::default();
            runtime.progress_time = timestamp(SystemTime::now());
            runtime.progress_message = format!("applier started, tailing from tick {from}");
        }
        let applier = self.clone();
        let stop = Arc::new(Notify::new());
        let signal = stop.clone();
        *task = Some((
            self.tasks
                .spawn(async move { applier.run(config, Tick::new(from), signal).await }),
            stop,
        ));
        Ok(())
    }

    /// `PUT applier-stop`: stops and waits for the task.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((handle, stop)) = task {
            // A permit: the run sees it even if it has not started waiting yet.
            stop.notify_one();
            let _ = handle.await;
        }
        self.save_state();
    }

    fn finish(&self, error: Option<(u32, String)>) {
        let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        runtime.running = false;
        runtime.phase = "inactive";
        runtime.progress_time = timestamp(SystemTime::now());
        match error {
            Some((error_num, message)) => {
                runtime.progress_message = format!("applier stopped: {message}");
                runtime.last_error = LastError {
                    error_num,
                    time: timestamp(SystemTime::now()),
                    message,
                };
            }
            None => runtime.progress_message = "applier shut down".into(),
        }
        drop(runtime);
        self.runtime_changed.notify_waiters();
    }

    fn progress(&self, message: String) {
        let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        runtime.progress_time = timestamp(SystemTime::now());
        runtime.progress_message = message;
    }

    /// The applier task: connect, tail, retry; ends on stop or on an error that retrying cannot
    /// fix.
    async fn run(self: Arc<Self>, config: ApplierConfig, mut from: Tick, stop: Arc<Notify>) {
        // Freed memory goes back to the system at once while following (see `PurgeAtOnce`).
        let _purge = crate::util::PurgeAtOnce::new();
        let stopped = stop.notified();
        tokio::pin!(stopped);
        let outcome = loop {
            let session = self.session(&config, from);
            let result = tokio::select! {
                _ = stopped.as_mut() => break None,
                result = session => result,
            };
            from = Tick::new(
                self.runtime
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .last_processed
                    .max(from.get()),
            );
            self.save_state();
            let error = match result {
                Ok(()) => break None,
                Err(error) => error,
            };
            if error.error_num == errors::START_TICK_NOT_PRESENT {
                self.runtime
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .follow_tick_failures += 1;
            }
            // Errors that retrying cannot fix stop the applier.
            if !error.retry {
                break Some((error.error_num, error.message));
            }
            let (failed, retries_left) = {
                let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
                if error.connect {
                    runtime.failed_connects += 1;
                    runtime.total_failed_connects += 1;
                }
                runtime.last_error = LastError {
                    error_num: error.error_num,
                    time: timestamp(SystemTime::now()),
                    message: error.message.clone(),
                };
                (
                    runtime.failed_connects,
                    config
                        .max_connect_retries
                        .saturating_sub(runtime.failed_connects),
                )
            };
            if failed > config.max_connect_retries {
                break Some((error.error_num, error.message));
            }
            self.progress(format!(
                "fetching leader state information failed. will retry now. retries left: {retries_left}"
            ));
            let wait = Duration::from_secs_f64(if config.connection_retry_wait_time > 0.0 {
                config.connection_retry_wait_time
            } else {
                30.0
            });
            tokio::select! {
                _ = stopped.as_mut() => break None,
                _ = tokio::time::sleep(wait) => {}
            }
        };
        // Not following now: the memtables of a leader (this server may be promoted).
        self.size_memtables(false, || "the applier stopped".into());
        self.node.store.set_far_behind(false);
        match &outcome {
            Some((num, message)) => {
                tracing::warn!("replication applier stopped: {message} (error {num})")
            }
            None => tracing::info!("replication applier stopped"),
        }
        self.finish(outcome);
        self.save_state();
        // Forget this run's handle unless a newer run already replaced it.
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if task
            .as_ref()
            .is_some_and(|(_, signal)| Arc::ptr_eq(signal, &stop))
        {
            task.take();
        }
    }

    /// One session with the leader, until it fails or ends.
    async fn session(&self, config: &ApplierConfig, from: Tick) -> Result<(), SessionError> {
        let addr = config.leader_addr().map_err(|m| {
            SessionError::connect(format!(
                "could not connect to leader at {}: {m}",
                config.endpoint
            ))
        })?;
        let connect_failed = |e: NetError| {
            SessionError::connect(format!(
                "could not connect to leader at {}: {e}",
                config.endpoint
            ))
        };
        let (endpoint, client) = client_endpoint(
            self.receiving.leader_fingerprint.as_deref(),
            self.receiving.buffer_bytes,
        )
        .map_err(connect_failed)?;
        let timeout = Duration::from_secs_f64(config.connect_timeout.max(0.1));
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .total_requests += 1;
        let connection = connect(&endpoint, &client, addr, timeout)
            .await
            .map_err(connect_failed)?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| connect_failed(NetError::Transport(e.to_string())))?;
        let mut stream = FramedStream::new(send, recv, BLOCKS_BYTES_MAX);
        let client_info = format!("tickship follower {}", self.node.server_id);
        let side = FollowerSide {
            server_id: &self.node.server_id,
            database: &config.database,
            client_info: &client_info,
            username: &config.username,
            password: &config.password,
        };
        let (leader_id, welcome) = session::connect(&connection, &mut stream, &side)
            .await
            .map_err(|e| match e {
                NetError::Transport(_) => connect_failed(e),
                other => SessionError::fatal(other.error_num(), other.to_string()),
            })?;
        if leader_id == self.node.server_id {
            return Err(SessionError::fatal(
                num::LOOP,
                format!(
                    "loop detected: the leader at {} is this server",
                    config.endpoint
                ),
            ));
        }
        {
            let mut persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
            if persisted.server_id.is_empty() {
                persisted.server_id = leader_id.clone();
            } else if persisted.server_id != leader_id {
                return Err(SessionError::fatal(
                    num::LEADER_CHANGE,
                    format!(
                        "encountered wrong leader id in replication state file. found: {}, \
                         expected: {}",
                        leader_id, persisted.server_id
                    ),
                ));
            }
        }
        self.save_state();
        // Only now, with a leader that is not this server, does this server refuse writes.
        self.follow(config);
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_available = Some(welcome.last_tick);
        self.track_distance(welcome.last_tick);
        let chunk = chunk_bytes(config.chunk_size, self.receiving.buffer_bytes);
        stream.streaming_blocks();
        stream
            .send(&Tail {
                from: from.get(),
                chunk_bytes: chunk,
            })
            .await
            .map_err(|e| SessionError::connect(e.to_string()))?;
        self.progress(format!(
            "fetching leader log from tick {from}, leader's last tick {}",
            welcome.last_tick
        ));
        // requestTimeout bounds the leader's silence, never a frame still arriving: on a slow
        // link one block can take longer than any timeout that catches a dead leader.
        let silence = Duration::from_secs_f64(config.request_timeout.max(1.0));
        let mut last_stored = self.node.wal.last_tick();
        // A connection counts as working (failedConnects back to 0) only once it brings a new
        // block or shows this server level with the leader: one that connects and then stalls
        // must not look healthy however often it reconnects.
        let mut progressed = false;
        // Blocks stored but not yet durable, in order; `Some(received)` marks the last block of a
        // frame. Receiving goes on while they are synced: the store applier sees a leader's
        // blocks once written, so the fdatasync is not between the leader and visibility here.
        let mut inflight: VecDeque<Inflight> = VecDeque::new();
        // Of those, the first `untaken` on are still queued for the WAL's writer, `queued_bytes`
        // of them: the only ones this server holds in memory (the writer drops each block once
        // it has copied it into its buffer). Past `receive_ahead` queued bytes nothing more is
        // read, and the leader waits on QUIC's flow control, so a follower far behind holds no
        // more received blocks than that, however far behind it is. Bytes written but not yet
        // durable cost no memory; they are bounded (`durable_ahead`) only so that acks keep
        // coming, and each fdatasync covers what was written meanwhile.
        let receive_ahead = self.receiving.ahead_bytes();
        let durable_ahead = DURABLE_AHEAD_BYTES.max(receive_ahead);
        let mut untaken = 0usize;
        let mut queued_bytes = 0usize;
        let mut inflight_bytes = 0usize;
        let mut waiting_since = Instant::now();
        // Whether the frame being received brought a block this server did not have.
        let mut frame_stored = false;
        let mut frame_events = 0u64;
        loop {
            let taken = inflight.get(untaken).map(|block| block.appended.taken());
            let taken = async {
                match taken {
                    Some(taken) => taken.await,
                    None => std::future::pending().await,
                }
            };
            let synced = async {
                match inflight.front_mut() {
                    Some(block) => (&mut block.appended).await,
                    None => std::future::pending().await,
                }
            };
            let piece = tokio::select! {
                biased;
                result = synced => {
                    let Some(Inflight { tick, bytes, received, .. }) = inflight.pop_front() else {
                        continue;
                    };
                    inflight_bytes -= bytes;
                    if untaken == 0 {
                        // Completed before it was seen taken (a failed append, say).
                        queued_bytes -= bytes;
                    } else {
                        untaken -= 1;
                    }
                    result.map_err(|e| {
                        SessionError::fatal(
                            errors::LEADER_ERROR,
                            format!("cannot store the leader's block: {e}"),
                        )
                    })?;
                    if let Some(received) = received {
                        self.runtime
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .total_apply_time += received.elapsed().as_secs_f64();
                        self.ack(&mut stream, tick).await?;
                    }
                    continue;
                }
                () = taken => {
                    queued_bytes -= inflight[untaken].bytes;
                    untaken += 1;
                    continue;
                }
                piece = stream.recv_piece(silence),
                    if queued_bytes < receive_ahead && inflight_bytes < durable_ahead => piece,
            };
            let piece = piece.map_err(|e| {
                SessionError::connect(format!(
                    "connection to leader at {} lost: {e}",
                    config.endpoint
                ))
            })?;
            let leader_last = match piece {
                Piece::Block {
                    leader_last,
                    block,
                    frame_end,
                } => {
                    if let Some(payload) = block {
                        let bytes = payload.len();
                        let block = Block::parse(payload).map_err(|e| {
                            SessionError::fatal(
                                num::INVALID_RESPONSE,
                                format!("invalid block from the leader: {e}"),
                            )
                        })?;
                        let new = place_block(block.ticks(), last_stored, from)
                            .map_err(|m| SessionError::fatal(num::INVALID_RESPONSE, m))?;
                        let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
                        runtime.total_bytes_received += bytes as u64;
                        runtime.last_available = Some(leader_last);
                        if new {
                            // Documents and removals are counted by the store applier, which
                            // decodes the records anyway; here only the record count is needed.
                            frame_events += u64::from(block.record_count());
                            last_stored = block.ticks().last;
                            runtime.last_processed = last_stored.get();
                            drop(runtime);
                            let appended = self.node.wal.submit_block(block).map_err(|e| {
                                SessionError::fatal(
                                    errors::LEADER_ERROR,
                                    format!("cannot store the leader's block: {e}"),
                                )
                            })?;
                            inflight.push_back(Inflight {
                                appended,
                                tick: last_stored,
                                bytes,
                                received: None,
                            });
                            inflight_bytes += bytes;
                            queued_bytes += bytes;
                            frame_stored = true;
                            if !progressed {
                                progressed = true;
                                self.made_progress();
                            }
                        }
                    }
                    if !frame_end {
                        continue;
                    }
                    leader_last
                }
                Piece::Frame(frame) => match frame.kind {
                    Kind::Idle => {
                        let idle = Idle::from_frame(&frame).map_err(|e| {
                            SessionError::fatal(num::INVALID_RESPONSE, e.to_string())
                        })?;
                        self.runtime
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .last_available = Some(idle.last_tick);
                        if !progressed && idle.last_tick <= last_stored.get() {
                            // Level with the leader: nothing to fetch is progress too.
                            progressed = true;
                            self.made_progress();
                        }
                        self.runtime_changed.notify_waiters();
                        self.track_distance(idle.last_tick);
                        self.ack(&mut stream, self.node.wal.durable_tick()).await?;
                        continue;
                    }
                    Kind::Close => {
                        let close = Close::from_frame(&frame).map_err(|e| {
                            SessionError::fatal(num::INVALID_RESPONSE, e.to_string())
                        })?;
                        return Err(match close.error_num {
                            // The leader going away is worth retrying; everything else is not.
                            errors::SHUTTING_DOWN | 0 => SessionError::connect(format!(
                                "leader at {} closed the connection: {}",
                                config.endpoint, close.error_message
                            )),
                            num => SessionError::fatal(num, close.error_message),
                        });
                    }
                    other => {
                        return Err(SessionError::fatal(
                            num::INVALID_RESPONSE,
                            format!("unexpected {other:?} frame from the leader"),
                        ))
                    }
                },
            };
            // A whole frame has arrived: its last new block acks once durable (or now, if it is
            // durable already).
            let received = Instant::now();
            if std::mem::take(&mut frame_stored) {
                match inflight.back_mut() {
                    Some(last) if last.tick == last_stored => last.received = Some(received),
                    _ => self.ack(&mut stream, last_stored).await?,
                }
            }
            let fetch_time = waiting_since.elapsed().as_secs_f64();
            waiting_since = received;
            let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
            runtime.last_available = Some(leader_last);
            runtime.total_events += std::mem::take(&mut frame_events);
            runtime.total_fetch_time += fetch_time;
            runtime.fetch_batches += 1;
            runtime.apply_batches += 1;
            runtime.total_requests += 1;
            drop(runtime);
            self.runtime_changed.notify_waiters();
            self.track_distance(leader_last);
        }
    }

    /// This session brought something: connecting works again.
    fn made_progress(&self) {
        let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        runtime.failed_connects = 0;
        runtime.last_error = LastError::default();
    }

    /// Sizes the memtables by how far the applied tick is behind `leader_last`: small while
    /// tailing (short flushes, low lag), large far behind (faster catch-up). A store keeping its
    /// documents in the WAL keeps the small ones: its memtables hold keys only, and catching up
    /// with 16 MiB ones was as fast as with 64 MiB (1M behind, 3 runs alternating: 1.92–2.22 s
    /// against 1.78–2.19 s) for 21 MiB of memtable at the peak instead of 55 MiB (heaptrack);
    /// with 4 and then 2 MiB ones (`TAILING_MEMTABLE_BYTES_KEYS_ONLY`) as fast again.
    /// Such a store instead holds one memtable at a time far behind (`DocStore::set_far_behind`).
    fn track_distance(&self, leader_last: u64) {
        let behind = leader_last.saturating_sub(self.node.store_writer.applied_tick().get());
        let store = &self.node.store;
        if store.documents_in_wal() {
            self.size_memtables(true, || format!("{behind} ticks behind the leader"));
            let far = tailing_at(behind).map(|near| !near);
            if far.is_some_and(|far| store.set_far_behind(far)) {
                let total = store.total_write_buffer_budget();
                tracing::info!(
                    "replication: memtables of {} together ({behind} ticks behind the leader)",
                    total.map_or_else(|| "any size".into(), |t| format!("{t} bytes at most"))
                );
            }
        } else if let Some(tailing) = tailing_at(behind) {
            self.size_memtables(tailing, || format!("{behind} ticks behind the leader"));
        }
    }

    /// `why` is called only when the size changes (this runs for every frame).
    fn size_memtables(&self, tailing: bool, why: impl FnOnce() -> String) {
        match self.node.store.set_tailing(tailing) {
            Ok(true) => tracing::info!(
                "replication: memtables of {} bytes ({})",
                self.node.store.write_buffer_bytes(),
                why()
            ),
            Ok(false) => {}
            // The old size stays; applying goes on.
            Err(e) => tracing::warn!("replication: cannot resize the memtables: {e}"),
        }
    }

    /// Tells the leader what is durable (`stored`) and visible here.
    async fn ack(&self, stream: &mut FramedStream, stored: Tick) -> Result<(), SessionError> {
        let ack = Ack {
            durable: stored.get(),
            applied: self.node.store_writer.applied_tick().get(),
        };
        stream
            .send(&ack)
            .await
            .map_err(|e| SessionError::connect(e.to_string()))
    }

    /// The figures `/_admin/metrics` shows.
    pub fn metrics(&self) -> ApplierMetrics {
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let applied = self.node.store_writer.applied_tick().get();
        let store = self.applied_from_leader(&runtime);
        let available = runtime.last_available.unwrap_or(0);
        ApplierMetrics {
            running: runtime.running,
            failed_connects: runtime.failed_connects,
            total_failed_connects: runtime.total_failed_connects,
            requests: runtime.total_requests,
            markers: runtime.total_events,
            documents: store.documents,
            removals: store.removals,
            excluded: store.excluded,
            bytes_received: runtime.total_bytes_received,
            follow_tick_failures: runtime.follow_tick_failures,
            fetch_seconds: runtime.total_fetch_time,
            apply_seconds: runtime.total_apply_time,
            ticks_behind: if runtime.running {
                available.saturating_sub(applied.max(runtime.last_processed))
            } else {
                0
            },
            last_error_num: runtime.last_error.error_num,
            last_applied: applied,
            last_processed: runtime.last_processed,
            last_available: available,
        }
    }

    /// The state document (§4.1).
    pub fn state_json(&self) -> Value {
        let config = self.config();
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let applied = self.node.store_writer.applied_tick().get();
        let store_totals = self.applied_from_leader(&runtime);
        let tick = |t: u64| {
            if t == 0 {
                Value::Null
            } else {
                Value::String(t.to_string())
            }
        };
        let mut last_error = json!({ "errorNum": runtime.last_error.error_num });
        if runtime.last_error.error_num != 0 {
            last_error["time"] = json!(runtime.last_error.time);
            last_error["errorMessage"] = json!(runtime.last_error.message);
        }
        let mut state = json!({
            "started": runtime.started.map(timestamp).unwrap_or_default(),
            "running": runtime.running,
            "phase": runtime.phase,
            "lastAppliedContinuousTick": tick(applied.min(runtime.last_processed.max(applied))),
            "lastProcessedContinuousTick": tick(runtime.last_processed),
            "lastAvailableContinuousTick": runtime.last_available.map_or(Value::Null, |t| Value::String(t.to_string())),
            "safeResumeTick": tick(runtime.last_processed),
        });
        if runtime.running {
            let behind = runtime
                .last_available
                .unwrap_or(0)
                .saturating_sub(applied.max(runtime.last_processed));
            state["ticksBehind"] = json!(behind);
        }
        let mut progress = json!({
            "time": runtime.progress_time,
            "failedConnects": runtime.failed_connects,
        });
        if !runtime.progress_message.is_empty() {
            progress["message"] = json!(runtime.progress_message);
        }
        let average = |total: f64, count: u64| {
            if count == 0 {
                0.0
            } else {
                total / count as f64
            }
        };
        let more = json!({
            "progress": progress,
            "totalRequests": runtime.total_requests,
            "totalFailedConnects": runtime.total_failed_connects,
            "totalEvents": runtime.total_events,
            "totalDocuments": store_totals.documents,
            "totalRemovals": store_totals.removals,
            "totalResyncs": 0,
            "totalOperationsExcluded": store_totals.excluded,
            "totalApplyTime": runtime.total_apply_time,
            "averageApplyTime": average(runtime.total_apply_time, runtime.apply_batches),
            "totalFetchTime": runtime.total_fetch_time,
            "averageFetchTime": average(runtime.total_fetch_time, runtime.fetch_batches),
            "lastError": last_error,
            "time": timestamp(SystemTime::now()),
        });
        if let (Value::Object(state), Value::Object(more)) = (&mut state, more) {
            state.extend(more);
        }
        let mut out = json!({
            "state": state,
            "server": { "version": crate::http::admin::ARANGO_VERSION, "serverId": self.node.server_id },
        });
        if !config.endpoint.is_empty() {
            out["endpoint"] = json!(config.endpoint);
            out["database"] = json!(config.database);
        }
        out
    }

    /// `make-follower`: replaces configuration and state, starts tailing from what this server
    /// already has (the leader's whole log for an empty server), and waits until it has caught up
    /// with the leader's last tick at the time of the connect, or an error, or
    /// `initialSyncMaxWaitTime`.
    ///
    /// A setup that fails before anything of the leader's log was stored (wrong credentials, no
    /// leader there, the leader is this server, ...) leaves this server as it was: a leader
    /// accepting writes, with no applier configured to start. The answer is the error.
    pub async fn make_follower(self: &Arc<Self>, body: &Value, local_db: &str) -> ApiResult<Value> {
        self.stop().await;
        let mut config = ApplierConfig::default().merged(body, local_db)?;
        config.auto_start = true;
        let previous = (self.config(), self.persisted.lock().unwrap_or_else(|p| p.into_inner()).clone());
        self.save_config(&config)?;
        *self.persisted.lock().unwrap_or_else(|p| p.into_inner()) = PersistedState::default();
        let from = self.node.wal.last_tick().get();
        self.start(Some(from))?;
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs_f64(config.initial_sync_max_wait_time);
        loop {
            // Registered before looking, so that a change in between is not missed.
            let changed = self.runtime_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (running, available, processed) = {
                let runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
                (
                    runtime.running,
                    runtime.last_available,
                    runtime.last_processed,
                )
            };
            let applied = self.node.store_writer.applied_tick().get();
            let caught_up = available.is_some_and(|a| processed >= a && applied >= processed);
            if !running || caught_up || tokio::time::Instant::now() >= deadline {
                break;
            }
            // Wait for news from the session, for the store to apply what was received, or
            // for the deadline.
            tokio::select! {
                _ = changed => {}
                applied = self.node.store_writer.applied(Tick::new(processed)), if applied < processed => {
                    if applied.is_err() {
                        break; // the store applier stopped: its error is in the state
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        let (error, stored) = {
            let runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
            (
                (!runtime.running && runtime.last_error.error_num != 0)
                    .then(|| (runtime.last_error.error_num, runtime.last_error.message.clone())),
                runtime.last_processed > from,
            )
        };
        let Some((error_num, message)) = error else {
            return Ok(self.state_json());
        };
        if stored {
            // Some of the leader's log is stored: this server is its follower now, stopped.
            return Err(setup_failed(error_num, format!(
                "{message}; this server stays a follower of {} (writes refused); fix the cause \
                 and start the applier again",
                config.endpoint
            )));
        }
        self.roll_back(previous)?;
        Err(setup_failed(error_num, format!(
            "{message}; this server was not made a follower and accepts writes as before"
        )))
    }

    /// Puts back the configuration and state from before a failed `make-follower`.
    fn roll_back(&self, (config, persisted): (ApplierConfig, PersistedState)) -> ApiResult<()> {
        let following = is_following(&persisted);
        self.save_config(&ApplierConfig {
            auto_start: config.auto_start && following,
            ..config
        })?;
        *self.persisted.lock().unwrap_or_else(|p| p.into_inner()) = persisted.clone();
        self.runtime.lock().unwrap_or_else(|p| p.into_inner()).last_processed =
            persisted.last_processed_continuous_tick;
        self.save_state();
        if !following {
            self.node.set_follower_of(None);
            self.node.store.set_filter(None);
        }
        Ok(())
    }
}

/// The answer to a failed `make-follower`: the applier's error number, with the HTTP status
/// ArangoDB gives it.
fn setup_failed(error_num: u32, message: String) -> ApiError {
    let status = match error_num {
        errors::UNAUTHORIZED => axum::http::StatusCode::UNAUTHORIZED,
        num::INVALID_CONFIGURATION => axum::http::StatusCode::BAD_REQUEST,
        _ => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, error_num, message)
}

/// Where a block received from the leader goes: `Ok(false)` if this server's log holds it
/// already (the leader resends from the tick asked for) or it ends at or before the `from`
/// asked for, `Ok(true)` if it is the next one.
/// The leader's log has no gaps, so a new block holds the tick after the last one stored, or
/// after `from` while that is past this server's log (a gap would be changes this follower
/// silently never has): it may start before such a `from`, as the block holding `from + 1`
/// does, but never inside what is stored.
fn place_block(ticks: TickRange, last_stored: Tick, from: Tick) -> Result<bool, String> {
    let continues_after = last_stored.max(from);
    if ticks.last <= continues_after {
        return Ok(false);
    }
    if ticks.first <= last_stored {
        return Err(format!(
            "block {ticks} from the leader overlaps this server's log ending at {last_stored}"
        ));
    }
    let expected = continues_after.get().saturating_add(1);
    if ticks.first.get() > expected {
        return Err(format!(
            "block {ticks} from the leader does not continue the log from tick {continues_after}"
        ));
    }
    Ok(true)
}

fn running() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        num::RUNNING,
        "cannot perform operation while applier is running",
    )
}

/// Why a session ended: `retry` errors count towards `maxConnectRetries` when `connect` is set.
struct SessionError {
    error_num: u32,
    message: String,
    retry: bool,
    connect: bool,
}

impl SessionError {
    fn connect(message: String) -> SessionError {
        SessionError {
            error_num: num::NO_RESPONSE,
            message,
            retry: true,
            connect: true,
        }
    }

    fn fatal(error_num: u32, message: String) -> SessionError {
        SessionError {
            error_num,
            message,
            retry: false,
            connect: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_merges_validates_and_hides_the_password() {
        let base = ApplierConfig::default();
        let merged = base
            .merged(&json!({"endpoint": "tcp://127.0.0.1:8529", "password": "pw", "ignoreErrors": true, "unknown": 1}), "_system")
            .unwrap();
        assert_eq!(merged.database, "_system");
        assert_eq!(merged.ignore_errors, u64::MAX);
        assert_eq!(merged.max_connect_retries, 100);
        assert!(merged.public_json().get("password").is_none());
        assert_eq!(merged.public_json()["endpoint"], "tcp://127.0.0.1:8529");
        let err = base
            .merged(&json!({"database": "x"}), "_system")
            .unwrap_err();
        assert_eq!(err.error_num, num::INVALID_CONFIGURATION);
        assert_eq!(err.message, "invalid value for <endpoint>");
        let err = base
            .merged(
                &json!({"endpoint": "tcp://a:1", "restrictType": "include"}),
                "_system",
            )
            .unwrap_err();
        assert!(err.message.contains("restrictCollections"));
        assert!(base
            .merged(
                &json!({"endpoint": "tcp://a:1", "connectTimeout": "x"}),
                "_system"
            )
            .is_err());
        assert!(base.merged(&json!([1]), "_system").is_err());
    }

    #[test]
    fn memtables_switch_with_a_gap_between_far_and_near() {
        assert_eq!(tailing_at(0), Some(true));
        assert_eq!(tailing_at(CAUGHT_UP_TICKS - 1), Some(true));
        assert_eq!(tailing_at(CAUGHT_UP_TICKS), None);
        assert_eq!(tailing_at(FAR_BEHIND_TICKS - 1), None);
        assert_eq!(tailing_at(FAR_BEHIND_TICKS), Some(false));
        assert_eq!(tailing_at(u64::MAX), Some(false));
    }

    // Goal: without a chunkSize a follower asks for frames a quarter of its receive buffer,
    // within 64 KiB..4 MiB; a chunkSize of its own is kept as it is (the leader caps it).
    #[test]
    fn chunk_follows_the_receive_buffer() {
        assert_eq!(chunk_bytes(0, 4 << 20), 1 << 20);
        assert_eq!(chunk_bytes(0, 64 << 10), 64 << 10);
        assert_eq!(chunk_bytes(0, 1 << 30), 4 << 20);
        assert_eq!(chunk_bytes(300_000, 64 << 10), 300_000);
    }

    #[test]
    fn received_blocks_continue_the_log_without_gaps() {
        let range = |a, b| TickRange::new(Tick::new(a), Tick::new(b));
        let t = Tick::new;
        // Resent blocks are skipped; the next one is taken.
        assert_eq!(place_block(range(1, 10), t(10), t(10)), Ok(false));
        assert_eq!(place_block(range(11, 12), t(10), t(10)), Ok(true));
        // Straddling what is stored, or leaving ticks out: refused, naming the ticks.
        let overlap = place_block(range(5, 12), t(10), t(10)).unwrap_err();
        assert!(
            overlap.contains("5..=12") && overlap.contains("ending at 10"),
            "{overlap}"
        );
        let gap = place_block(range(12, 15), t(10), t(10)).unwrap_err();
        assert!(
            gap.contains("12..=15") && gap.contains("from tick 10"),
            "{gap}"
        );
        // Started with `from` past this server's log: the block holding `from + 1` is taken,
        // even if it starts earlier; one after it is a gap, one ending at `from` is not wanted.
        assert_eq!(place_block(range(15, 30), t(10), t(20)), Ok(true));
        assert_eq!(place_block(range(21, 30), t(10), t(20)), Ok(true));
        assert!(place_block(range(22, 30), t(10), t(20)).is_err());
        assert_eq!(place_block(range(15, 20), t(10), t(20)), Ok(false));
    }

    #[test]
    fn endpoint_names_the_udp_address() {
        let config = ApplierConfig {
            endpoint: "tcp://127.0.0.1:8529".into(),
            ..ApplierConfig::default()
        };
        assert_eq!(
            config.leader_addr().unwrap(),
            "127.0.0.1:8529".parse().unwrap()
        );
    }
}
