//! The applier's state: what survives a restart (its file), the in-memory state document
//! ArangoDB's `applier-state` shows, and the figures `/_admin/metrics` exports.

use crate::api::{ApiError, ApiResult};
use crate::util::{iso8601 as timestamp, write_private};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::SystemTime;
use tickship_storage::docstore::StoreWriterTotals;

use super::*;

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
pub(super) struct LastError {
    pub(super) error_num: u32,
    pub(super) time: String,
    pub(super) message: String,
}

/// The in-memory state document.
#[derive(Clone, Debug, Default)]
pub(super) struct Runtime {
    pub(super) started: Option<SystemTime>,
    pub(super) running: bool,
    pub(super) phase: &'static str,
    pub(super) last_processed: u64,
    pub(super) last_available: Option<u64>,
    /// The last tick received and handed to this server's log (durable or not yet).
    pub(super) last_received: u64,
    /// When the leader last said anything (a frame of blocks, idle, or the welcome): a partition
    /// shows here first, as `lastAvailableContinuousTick` stops where the leader was last heard.
    pub(super) leader_heard: Option<std::time::Instant>,
    pub(super) progress_time: String,
    pub(super) progress_message: String,
    pub(super) failed_connects: u64,
    pub(super) total_requests: u64,
    pub(super) total_failed_connects: u64,
    pub(super) total_events: u64,
    /// The store writer's totals when this applier was opened (after the startup replay).
    pub(super) store_totals_base: StoreWriterTotals,
    pub(super) total_apply_time: f64,
    pub(super) apply_batches: u64,
    pub(super) total_fetch_time: f64,
    pub(super) fetch_batches: u64,
    /// Bytes of blocks received from the leader (stored or already held).
    pub(super) total_bytes_received: u64,
    /// Times the leader no longer had the tick to follow from (1414).
    pub(super) follow_tick_failures: u64,
    /// Syncs run by autoResync since the start, and in a row (each within two minutes of the
    /// last: the tailing that followed failed at once).
    pub(super) total_resyncs: u64,
    pub(super) resyncs_in_a_row: u64,
    /// Documents stored and removed by the syncs of this run (beside those applied from the log).
    pub(super) synced_documents: u64,
    pub(super) synced_removals: u64,
    /// When the last sync finished.
    pub(super) last_sync: Option<std::time::Instant>,
    /// How the distance to the leader's last tick moved lately (`secondsToCatchUp`).
    pub(super) catch_up: crate::catch_up::CatchUpClock,
    pub(super) last_error: LastError,
}

impl Runtime {
    /// Whether the applier runs but waits for this server's disk to have space (1104).
    pub(super) fn waits_for_space(&self) -> bool {
        self.running && self.last_error.error_num == crate::api::num::FILESYSTEM_FULL
    }

    /// The leader said its last tick is `last`, just now.
    pub(super) fn heard_from_leader(&mut self, last: u64) {
        self.last_available = Some(last);
        self.leader_heard = Some(std::time::Instant::now());
    }

    /// Notes the distance from `applied` to the leader's last tick as last heard (for
    /// `seconds_to_catch_up`).
    pub(super) fn note_distance(&mut self, applied: u64) {
        if let Some(available) = self.last_available {
            let behind = available.saturating_sub(applied);
            self.catch_up.note(std::time::Instant::now(), behind);
        }
    }

    /// Seconds until `applied` reaches the leader's last tick at the rate the distance shrank
    /// lately: 0 when level, `None` when not catching up, not running, or when the leader has
    /// been silent for longer than its idle messages allow (its last tick is not known then).
    pub(super) fn seconds_to_catch_up(&mut self, applied: u64) -> Option<f64> {
        let available = self.last_available.filter(|_| self.running)?;
        if self.leader_silent_seconds()? > LEADER_SILENCE_UNKNOWN {
            return None;
        }
        let behind = available.saturating_sub(applied);
        let now = std::time::Instant::now();
        self.catch_up.note(now, behind);
        self.catch_up.eta_seconds(now, behind)
    }

    /// Seconds since the leader was last heard, while running and once it has been.
    pub(super) fn leader_silent_seconds(&self) -> Option<f64> {
        self.leader_heard
            .filter(|_| self.running)
            .map(|at| at.elapsed().as_secs_f64())
    }
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
    pub errors_ignored: u64,
    pub bytes_received: u64,
    pub follow_tick_failures: u64,
    pub total_resyncs: u64,
    /// Of the last (or running) initial sync.
    pub sync_running: bool,
    pub sync_bytes: u64,
    pub sync_documents: u64,
    pub sync_removed: u64,
    pub sync_requests: u64,
    pub fetch_seconds: f64,
    pub apply_seconds: f64,
    pub ticks_behind: u64,
    pub last_error_num: u32,
    pub last_applied: u64,
    pub last_processed: u64,
    pub last_available: u64,
    /// The last tick received from the leader (handed to the log, durable or not).
    pub last_received: u64,
    /// Seconds since the leader was last heard (while running).
    pub leader_silent_seconds: Option<f64>,
    /// Seconds until level at the rate of late (while running and catching up).
    pub seconds_to_catch_up: Option<f64>,
}

/// Seconds of silence after which a follower no longer knows the leader's last tick: the leader
/// says it at least every second while idle.
const LEADER_SILENCE_UNKNOWN: f64 = 3.0;

pub(super) const CONFIG_FILE: &str = "applier-config.json";
pub(super) const STATE_FILE: &str = "applier-state.json";

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
    /// What the store applied from a leader: nothing on a leader, whose store applies only its
    /// own clients' writes.
    pub(super) fn applied_from_leader(&self, runtime: &Runtime) -> StoreWriterTotals {
        if self.node.follower_of().is_none() {
            return StoreWriterTotals::default();
        }
        self.node
            .store_writer
            .totals()
            .since(runtime.store_totals_base)
    }

    pub(super) fn save_config(&self, config: &ApplierConfig) -> ApiResult<()> {
        let bytes = serde_json::to_vec_pretty(config)
            .expect("ApplierConfig holds only strings, numbers and booleans, which serialise");
        // The password is in it: owner-readable only.
        write_private(&self.dir.join(CONFIG_FILE), &bytes)
            .map_err(|e| ApiError::internal(format!("save the applier configuration: {e:#}")))?;
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config.clone();
        Ok(())
    }

    pub(super) fn save_state(&self) {
        let state = {
            let mut persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
            let runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
            persisted.last_processed_continuous_tick = runtime.last_processed;
            persisted.last_applied_continuous_tick = self.node.store_writer.applied_tick().get();
            persisted.safe_resume_tick = runtime.last_processed;
            persisted.clone()
        };
        let bytes = serde_json::to_vec_pretty(&state)
            .expect("PersistedState holds only a string and integers, which serialise");
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
        // A sync left unfinished is given up: the data stays as it is, a leader's to write to.
        self.remove_sync_marker()?;
        self.node.set_follower_of(None);
        self.node.store.set_filter(None);
        Ok(())
    }

    /// The store's applied tick and the time to catch up with the leader from it.
    fn applied_and_eta(&self) -> (u64, Option<f64>) {
        let applied = self.node.store_writer.applied_tick().get();
        let eta = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seconds_to_catch_up(applied);
        (applied, eta)
    }

    /// A copy of the in-memory state, so that no lock is held while it is formatted.
    fn runtime_now(&self) -> Runtime {
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The figures `/_admin/metrics` shows.
    pub fn metrics(&self) -> ApplierMetrics {
        let (applied, seconds_to_catch_up) = self.applied_and_eta();
        let runtime = self.runtime_now();
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
            errors_ignored: store.ignored,
            bytes_received: runtime.total_bytes_received,
            follow_tick_failures: runtime.follow_tick_failures,
            total_resyncs: runtime.total_resyncs,
            sync_running: runtime.phase == "initial",
            sync_bytes: self.sync_counters.bytes.load(Ordering::Relaxed),
            sync_documents: self.sync_counters.documents.load(Ordering::Relaxed),
            sync_removed: self.sync_counters.removed.load(Ordering::Relaxed),
            sync_requests: self.sync_counters.requests.load(Ordering::Relaxed),
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
            last_received: runtime.last_received.max(runtime.last_processed),
            leader_silent_seconds: runtime.leader_silent_seconds(),
            seconds_to_catch_up,
        }
    }

    /// The state document of `GET applier-state`, in the shape ArangoDB's HTTP API documentation
    /// gives it ("Replication applier").
    pub fn state_json(&self) -> Value {
        let config = self.config();
        let (applied, seconds_to_catch_up) = self.applied_and_eta();
        let runtime = self.runtime_now();
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
            // What the store shows, as it is: `applied <= lastProcessed` is not kept (a server that
            // wrote as a leader, or whose state was deleted, has applied ticks this applier never
            // received).
            "lastAppliedContinuousTick": tick(applied),
            "lastProcessedContinuousTick": tick(runtime.last_processed),
            "lastAvailableContinuousTick": runtime.last_available.map_or(Value::Null, |t| Value::String(t.to_string())),
            "lastReceivedContinuousTick": tick(runtime.last_received.max(runtime.last_processed)),
            "safeResumeTick": tick(runtime.last_processed),
        });
        if runtime.running {
            let behind = runtime
                .last_available
                .unwrap_or(0)
                .saturating_sub(applied.max(runtime.last_processed));
            state["ticksBehind"] = json!(behind);
            if let Some(silent) = runtime.leader_silent_seconds() {
                state["secondsSinceLeaderContact"] = json!(silent);
                state["secondsToCatchUp"] = json!(seconds_to_catch_up);
            }
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
            "totalDocuments": store_totals.documents + runtime.synced_documents,
            "totalRemovals": store_totals.removals + runtime.synced_removals,
            "totalResyncs": runtime.total_resyncs,
            "totalOperationsExcluded": store_totals.excluded,
            "totalErrorsIgnored": store_totals.ignored,
            "totalApplyTime": runtime.total_apply_time,
            "averageApplyTime": average(runtime.total_apply_time, runtime.apply_batches),
            "totalFetchTime": runtime.total_fetch_time,
            "averageFetchTime": average(runtime.total_fetch_time, runtime.fetch_batches),
            "lastError": last_error,
            "initialSync": {
                "running": runtime.phase == "initial",
                "bytesReceived": self.sync_counters.bytes.load(Ordering::Relaxed),
                "documents": self.sync_counters.documents.load(Ordering::Relaxed),
                "removed": self.sync_counters.removed.load(Ordering::Relaxed),
                "requests": self.sync_counters.requests.load(Ordering::Relaxed),
                "documentsOnLeader": self.sync_counters.on_leader.load(Ordering::Relaxed),
                "keysFromLog": self.sync_counters.log_keys.load(Ordering::Relaxed),
                "ticksFromLog": self.sync_counters.log_ticks.load(Ordering::Relaxed),
                "rangesCompared": self.sync_counters.ranges_compared.load(Ordering::Relaxed),
            },
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
}
