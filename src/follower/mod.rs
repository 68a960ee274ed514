//! The follower's replication applier: configuration and state documents as ArangoDB keeps them
//! (ArangoDB's HTTP API documentation, "Replication applier": `applier-config`, `applier-state`),
//! and the task that pulls the leader's WAL over QUIC, stores the blocks verbatim in this server's
//! WAL (same ticks) and lets the store writer make them visible.

use crate::api::{num, ApiError, ApiResult};
use crate::node::Node;
use crate::util::iso8601 as timestamp;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tickship_net::errors;
use tickship_storage::Tick;
use tokio::sync::Notify;

use config::running;
use memtables::tailing_at;
use state::{LastError, Runtime};

mod config;
mod databases;
mod memtables;
mod receive;
mod state;
mod sync;

pub use config::ApplierConfig;
pub use databases::{saved_filter, DatabaseAppliers};
pub use receive::Receiving;
pub use state::{is_following, load_saved, ApplierMetrics, PersistedState};
use std::sync::atomic::{AtomicBool, Ordering};
pub use sync::SyncReport;
use sync::{SyncCounters, SyncMarker};

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
    /// Held by the sync that runs (one at a time).
    syncing: Mutex<()>,
    /// The figures of the last (or running) sync.
    sync_counters: SyncCounters,
    /// Set while per-database appliers drive this one (`DatabaseAppliers`): the store's filter is
    /// theirs, one rule per database, and following does not replace it.
    for_databases: AtomicBool,
}
impl Applier {
    /// The applier of this server, with the configuration and state `load_saved` read.
    pub fn open(
        node: Arc<Node>,
        dir: PathBuf,
        receiving: Receiving,
        (config, persisted): (ApplierConfig, PersistedState),
        tasks: tokio::runtime::Handle,
        for_databases: bool,
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
            syncing: Mutex::new(()),
            sync_counters: SyncCounters::default(),
            for_databases: AtomicBool::new(for_databases),
        });
        // A sync under way (or asked for) when the server stopped: its store is no leader's state,
        // so it refuses writes until the sync is done.
        if is_following(&persisted) || applier.sync_marker().is_some() {
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
        if !self.for_databases.load(Ordering::Acquire) {
            self.node.store.set_filter(Some(config.filter()));
        }
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

    /// `PUT applier-start`: starts tailing after `from` (exclusive), or where it left off.
    pub fn start(self: &Arc<Self>, from: Option<u64>) -> ApiResult<()> {
        let config = self.config();
        config.validate()?;
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_running() {
            return Ok(()); // idempotent
        }
        // A sync asked for or interrupted runs first, and tailing starts at its tick.
        if self.sync_marker().is_some() {
            self.begin_run(
                config,
                0,
                "applier started, initial sync first".into(),
                &mut task,
            );
            return Ok(());
        }
        let own_last = self.node.wal.last_tick().get();
        let saved = self
            .persisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .safe_resume_tick;
        if let Some(from) = from {
            self.check_own_ticks(from)?;
        }
        // A log that holds no block yet starts where it is told (ArangoDB's applier-start with a
        // tick: the store holds the leader's state there, say from a restored dump).
        if let Some(start) = from.filter(|&f| f > own_last) {
            if self.node.wal.first_tick().is_none() {
                let start = Tick::new(start);
                tokio::task::block_in_place(|| self.begin_at(start, start)).map_err(|e| {
                    ApiError::internal(format!(
                        "cannot begin this server's log at tick {start}: {e}"
                    ))
                })?;
                self.runtime
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .last_processed = start.get();
            }
        }
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
        self.begin_run(
            config,
            from,
            format!("applier started, tailing from tick {from}"),
            &mut task,
        );
        Ok(())
    }

    /// Refuses to tail from `from` when this server's log holds ticks of its own after it (it
    /// took writes as a leader and never followed): the leader's ticks up to there could not be
    /// stored after them, and would be silently missed.
    pub(super) fn check_own_ticks(&self, from: u64) -> ApiResult<()> {
        let own_last = self.node.wal.last_tick().get();
        let never_followed = self
            .persisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .server_id
            .is_empty();
        if never_followed && self.node.wal.first_tick().is_some() && from < own_last {
            return Err(config::invalid(&format!(
                "this server's log holds ticks up to {own_last} of its own (it took writes as a \
                 leader), past tick {from}: the leader's log from there cannot follow them. Set \
                 it up with make-follower (setupReplication), which syncs its data with the \
                 leader's first, or start it from an empty data directory"
            )));
        }
        Ok(())
    }

    /// Marks the applier running and spawns its task, tailing after `from` (or syncing first).
    fn begin_run(
        self: &Arc<Self>,
        config: ApplierConfig,
        from: u64,
        message: String,
        task: &mut Option<(tokio::task::JoinHandle<()>, Arc<Notify>)>,
    ) {
        let own_last = self.node.wal.last_tick().get();
        // ignoreErrors counts from each start, as ArangoDB's; a store writer held by a conflict
        // tries again (the user may have resolved it).
        self.node.store.set_ignore_conflicts(config.ignore_errors);
        if self.node.store_writer.conflict().is_some() {
            self.node.store_writer.retry();
        }
        {
            let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
            runtime.running = true;
            runtime.phase = "running";
            runtime.started = Some(SystemTime::now());
            runtime.failed_connects = 0;
            runtime.last_processed = runtime.last_processed.max(own_last);
            runtime.last_error = LastError::default();
            runtime.progress_time = timestamp(SystemTime::now());
            runtime.progress_message = message;
        }
        let applier = self.clone();
        let stop = Arc::new(Notify::new());
        let signal = stop.clone();
        *task = Some((
            self.tasks
                .spawn(async move { applier.run(config, Tick::new(from), signal).await }),
            stop,
        ));
    }

    fn set_phase(&self, phase: &'static str) {
        self.runtime.lock().unwrap_or_else(|p| p.into_inner()).phase = phase;
        self.runtime_changed.notify_waiters();
    }

    /// `PUT sync`: makes the store equal to a snapshot of the body's leader (ArangoDB's one-off
    /// initial sync) and begins this server's log at its tick, without tailing: `lastLogTick` is
    /// where `applier-start` continues. The server refuses writes from here on (its log is the
    /// leader's now), until it tails or its applier state is deleted.
    pub async fn sync(self: &Arc<Self>, body: &Value, local_db: &str) -> ApiResult<Value> {
        if self.is_running() {
            return Err(running());
        }
        let config = self.config().merged(body, local_db)?;
        let incremental = config.incremental;
        self.save_config(&config)?;
        if self.sync_marker().is_none() {
            self.write_sync_marker(&SyncMarker {
                endpoint: config.endpoint.clone(),
                incremental,
                ..SyncMarker::default()
            })?;
        }
        self.set_phase("initial");
        let result = self
            .clone()
            .sync_with(config, incremental, Arc::new(AtomicBool::new(false)), None)
            .await;
        self.set_phase("inactive");
        match result {
            Ok(report) => {
                let collections: Vec<Value> = report
                    .collections
                    .iter()
                    .map(|(id, name)| serde_json::json!({"id": id.to_string(), "name": name}))
                    .collect();
                Ok(serde_json::json!({
                    "collections": collections,
                    "lastLogTick": report.tick.to_string(),
                }))
            }
            Err(error) => {
                // Nothing changed yet: no sync is owed.
                if self.sync_marker().is_some_and(|m| m.tick == 0) {
                    self.remove_sync_marker()?;
                }
                Err(setup_failed(error.error_num, error.message))
            }
        }
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

    /// `make-follower`: replaces configuration and state, syncs this server with a snapshot of
    /// the leader (`sync`: incremental with `incremental`, else its collections are emptied
    /// first), starts tailing from the snapshot's tick, and waits until it has caught up with the
    /// leader's last tick at the time of the connect, or an error, or `initialSyncMaxWaitTime`
    /// after the sync.
    ///
    /// A setup that fails before anything of the leader's was stored (wrong credentials, no
    /// leader there, the leader is this server, ...) leaves this server as it was: a leader
    /// accepting writes, with no applier configured to start. The answer is the error.
    pub async fn make_follower(self: &Arc<Self>, body: &Value, local_db: &str) -> ApiResult<Value> {
        let mut config = ApplierConfig::default().merged(body, local_db)?;
        config.auto_start = true;
        // As in ArangoDB: a follower made by setup applies the leader's collection changes.
        config.skip_create_drop = false;
        self.stop().await;
        let previous = (
            self.config(),
            self.persisted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        );
        let owed = self.sync_marker();
        self.save_config(&config)?;
        *self.persisted.lock().unwrap_or_else(|p| p.into_inner()) = PersistedState::default();
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resyncs_in_a_row = 0;
        // A sync interrupted earlier is resumed (it compares); otherwise a new one is asked for.
        if owed.as_ref().is_none_or(|m| m.tick == 0) {
            // The state just forgotten named the leader this server's log follows.
            let log_of = match &owed {
                Some(owed) if !owed.log_of.is_empty() => owed.log_of.clone(),
                _ => previous.1.server_id.clone(),
            };
            self.write_sync_marker(&SyncMarker {
                endpoint: config.endpoint.clone(),
                incremental: config.incremental,
                log_of,
                ..SyncMarker::default()
            })?;
        }
        self.start(None)?;
        self.wait_caught_up(Duration::from_secs_f64(config.initial_sync_max_wait_time))
            .await;
        let error = {
            let runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
            let stopped = !runtime.running && runtime.last_error.error_num != 0;
            (stopped || runtime.waits_for_space()).then(|| {
                (
                    runtime.last_error.error_num,
                    runtime.last_error.message.clone(),
                )
            })
        };
        let Some((error_num, message)) = error else {
            return Ok(self.state_json());
        };
        // The sync began changing the store (or finished): this server is the leader's now.
        let changed = self.sync_marker().is_none_or(|m| m.tick > 0);
        if changed && error_num == num::FILESYSTEM_FULL {
            return Err(setup_failed(
                error_num,
                format!(
                    "{message}; this server stays a follower of {} (writes refused), and its \
                     applier waits for disk space: it goes on from what has arrived by itself \
                     once space is freed",
                    config.endpoint
                ),
            ));
        }
        if !changed && error_num == num::FILESYSTEM_FULL {
            self.stop().await;
        }
        if changed {
            return Err(setup_failed(
                error_num,
                format!(
                    "{message}; this server stays a follower of {} (writes refused); fix the cause \
                     and start the applier again: it goes on from what has arrived",
                    config.endpoint
                ),
            ));
        }
        self.remove_sync_marker()?;
        if let Some(owed) = owed {
            self.write_sync_marker(&owed)?;
        }
        self.roll_back(previous)?;
        Err(setup_failed(
            error_num,
            format!("{message}; this server was not made a follower and accepts writes as before"),
        ))
    }

    /// Waits until a started applier has synced (if it owed a sync) and caught up with the
    /// leader's last tick as of its connect, or stopped, or `wait` has passed after the sync.
    pub(super) async fn wait_caught_up(&self, wait: Duration) {
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            // Registered before looking, so that a change in between is not missed.
            let changed = self.runtime_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (running, phase, available, processed) = {
                let runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
                (
                    runtime.running,
                    runtime.phase,
                    runtime.last_available,
                    runtime.last_processed,
                )
            };
            let syncing = phase == "initial" || self.sync_marker().is_some();
            if !syncing && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + wait);
            }
            let applied = self.node.store_writer.applied_tick().get();
            let caught_up =
                !syncing && available.is_some_and(|a| processed >= a && applied >= processed);
            let late = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            let full = self
                .runtime
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .waits_for_space();
            if !running || caught_up || late || full {
                break;
            }
            // Wait for news from the sync or session, for the store to apply what was received,
            // or for the deadline.
            let until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + wait);
            tokio::select! {
                _ = changed => {}
                applied = self.node.store_writer.applied(Tick::new(processed)), if !syncing && applied < processed => {
                    if applied.is_err() {
                        break; // the store writer stopped: its error is in the state
                    }
                }
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Puts back the configuration and state from before a failed `make-follower`.
    fn roll_back(&self, (config, persisted): (ApplierConfig, PersistedState)) -> ApiResult<()> {
        let following = is_following(&persisted);
        self.save_config(&ApplierConfig {
            auto_start: config.auto_start && following,
            ..config
        })?;
        *self.persisted.lock().unwrap_or_else(|p| p.into_inner()) = persisted.clone();
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_processed = persisted.last_processed_continuous_tick;
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
        num::FILESYSTEM_FULL => axum::http::StatusCode::INSUFFICIENT_STORAGE,
        num::INVALID_CONFIGURATION => axum::http::StatusCode::BAD_REQUEST,
        _ => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, error_num, message)
}
