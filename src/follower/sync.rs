//! The initial synchronisation (ArangoDB's initial syncer, `sync` and the first step of
//! `make-follower`): make this server's store equal to a snapshot of the leader at tick T, then
//! begin its log at T so that tailing continues from there.
//!
//! The leader holds the snapshot in a batch. For each collection the follower asks for the
//! leader's keys in chunks with a hash of their `(key, revision)` pairs (`leader::ranges`), and
//! compares each with its own keys in the same range: a range that agrees is skipped, one that
//! differs is split into smaller chunks until they are small enough to compare key by key, and a
//! range this server holds nothing of is fetched whole. So an empty follower gets everything (in
//! ranges fetched in parallel), and one that holds most of it already (restored from a dump,
//! behind the leader's retention, or interrupted in an earlier sync) moves only what differs.
//!
//! Documents are stored as a restore stores them: sorted into store files that RocksDB ingests
//! whole, with the leader's revisions, outside the WAL. A sync interrupted at any point (either
//! side killed, link cut) leaves a marker file; the next run compares again against a new
//! snapshot, so what had arrived is kept and only the rest moves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tickship_storage::docstore::{
    without_rev, CollectionInfo, CollectionRestore, KeyRange, Restored,
};

mod copy_files;

use super::receive::{Opened, SessionError};
use super::*;
use crate::client::{Client, ServerError};
use crate::leader::ranges::{KeyChunk, RangeHash};

/// Present while a sync has not finished: the store is not the state of any one tick, so the
/// applier must sync (again) before it tails.
pub(super) const SYNC_FILE: &str = "sync-in-progress.json";
/// Seconds the leader keeps a sync's batch between two of its requests.
const BATCH_TTL: u64 = 600;
/// Keys per chunk when a collection is compared, and per range when an empty one is fetched.
/// A differing chunk is compared key by key at once: requests, not bytes, bound an incremental
/// sync, and splitting chunks further (a deeper hash tree) measured slower, since every level
/// walks the follower's keys again (docs/benchmarks/2026-12-06-initial-sync.md).
const TOP_CHUNK: u64 = 4096;
/// Chunks asked for at a time: what a compare holds of the leader's chunk list (about 400 KB).
const CHUNKS_PER_PAGE: usize = 4096;
/// This server's pairs of one chunk kept from its walk for the key-by-key compare: twice a
/// chunk, so that only a chunk where this server holds far more keys than the leader is read
/// twice.
const LOCAL_PAIRS_KEPT: u64 = 2 * TOP_CHUNK;
/// Keys named in one `range-documents` request.
const KEYS_PER_FETCH: usize = 4096;
/// Bytes of documents fetched by key that are stored together (one store file).
const STORE_BYTES: usize = 8 << 20;
/// Removals or documents stored at a time.
const INGEST_ITEMS: usize = 16_384;
/// Ranges fetched at once from an empty collection: one fetches while another is stored.
const PARALLEL_FETCHES: usize = 3;
/// Times an answer that fails its checksum is asked for before the sync gives up.
const FETCH_ATTEMPTS: u32 = 3;
/// How long a sync waits for this server's store to apply its own log before starting.
const APPLIED_WAIT: Duration = Duration::from_secs(60);

/// What the marker file records.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct SyncMarker {
    /// The leader's server id, once known.
    pub leader: String,
    pub endpoint: String,
    /// The snapshot tick of the sync under way (0: asked for, not begun; nothing changed yet).
    pub tick: u64,
    /// Whether existing data is to be compared (else collections are emptied first).
    pub incremental: bool,
    /// The leader whose log this server's log held when the sync was asked for (it had
    /// followed it), if any: a sync of that leader may continue the log (`continue_log`).
    pub log_of: String,
}

/// What a finished sync did.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    pub tick: Tick,
    pub collections: Vec<(u64, String)>,
    pub bytes: u64,
    pub documents: u64,
    pub removed: u64,
    pub requests: u64,
    pub seconds: f64,
}

/// Running totals of a sync, shown in the state's progress and in the metrics.
#[derive(Default)]
pub(super) struct SyncCounters {
    pub bytes: AtomicU64,
    pub documents: AtomicU64,
    pub removed: AtomicU64,
    pub requests: AtomicU64,
    pub ranges_compared: AtomicU64,
    pub ranges_differing: AtomicU64,
    /// Keys the leader's log named as changed that were fetched (`sync_from_log`).
    pub log_keys: AtomicU64,
    /// Ticks of the leader's log by which this server's own log was continued up to the
    /// snapshot (`Syncer::continue_log`).
    pub log_ticks: AtomicU64,
    /// Documents of the collections synced, on the leader.
    pub on_leader: AtomicU64,
}

impl SyncCounters {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn encode(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

/// A failed request as the applier handles it: the leader unreachable or restarted (its batch
/// gone) is retried like a lost connection; what the leader refuses is not.
fn request_error(endpoint: &str, error: anyhow::Error) -> SessionError {
    match error.downcast_ref::<ServerError>() {
        Some(server) => match (server.status, server.error_num) {
            (_, num::CURSOR_NOT_FOUND) | (503, _) => SessionError::connect(format!(
                "the leader at {endpoint} lost the sync's snapshot (restarted?): {error}"
            )),
            (401, _) => SessionError::fatal(
                errors::UNAUTHORIZED,
                format!(
                    "the leader at {endpoint} refused the credentials: {}",
                    server.message
                ),
            ),
            (_, 0) => SessionError::fatal(num::NO_RESPONSE, format!("{error:#}")),
            (_, error_num) => SessionError::fatal(error_num, format!("{error:#}")),
        },
        None => SessionError::connect(format!(
            "could not connect to leader at {endpoint}: {error:#}"
        )),
    }
}

impl Applier {
    fn sync_file(&self) -> PathBuf {
        self.dir.join(SYNC_FILE)
    }

    /// The marker of a sync asked for or interrupted, if there is one.
    pub(super) fn sync_marker(&self) -> Option<SyncMarker> {
        let bytes = std::fs::read(self.sync_file()).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(marker) => Some(marker),
            // A damaged marker still says a sync is owed; it starts over as a comparison.
            Err(_) => Some(SyncMarker {
                incremental: true,
                tick: 1,
                ..SyncMarker::default()
            }),
        }
    }

    pub(super) fn write_sync_marker(&self, marker: &SyncMarker) -> ApiResult<()> {
        let bytes = serde_json::to_vec_pretty(marker)
            .map_err(|e| ApiError::internal(format!("encode the sync marker: {e}")))?;
        crate::util::write_private(&self.sync_file(), &bytes)
            .map_err(|e| ApiError::internal(format!("write the sync marker: {e:#}")))
    }

    pub(super) fn remove_sync_marker(&self) -> ApiResult<()> {
        match std::fs::remove_file(self.sync_file()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ApiError::internal(format!("remove the sync marker: {e}"))),
        }
    }

    /// `sync_blocking` after the leader has passed the replication handshake (its certificate
    /// against `--replication.leader-fingerprint`, the credentials by SCRAM, not this server):
    /// the sync's HTTP requests then go to that leader only.
    pub(super) async fn sync_with(
        self: Arc<Self>,
        config: ApplierConfig,
        incremental: bool,
        cancel: Arc<AtomicBool>,
        only: Option<String>,
    ) -> Result<SyncReport, SessionError> {
        self.progress(format!("connecting to leader at {}", config.endpoint));
        let opened = self.handshake(&config).await?;
        let leader_id = opened.leader_id.clone();
        let applier = self.clone();
        tokio::task::spawn_blocking(move || {
            applier.sync_blocking(
                &config,
                incremental,
                &cancel,
                &leader_id,
                only.as_deref(),
                opened,
            )
        })
        .await
        .map_err(|e| SessionError::fatal(num::INTERNAL, format!("the sync failed: {e}")))?
    }

    /// Makes the store equal to a snapshot of `config`'s leader (the one with id `expected`)
    /// and begins the log at its tick. Blocking; `cancel` stops it between two requests.
    ///
    /// With `only`, just that database is synced (a per-database applier): the others are left
    /// as they are, no sync marker is kept (a sync cut short is run again by the user), and the
    /// log begins at the snapshot's tick only if it holds no block yet; otherwise the caller
    /// admits the database from that tick (`StoreWriter::admit_database`).
    pub(super) fn sync_blocking(
        &self,
        config: &ApplierConfig,
        incremental: bool,
        cancel: &AtomicBool,
        expected: &str,
        only: Option<&str>,
        opened: Opened,
    ) -> Result<SyncReport, SessionError> {
        if cancel.load(Ordering::Acquire) {
            return Err(SessionError::fatal(0, "the sync was stopped".into()));
        }
        let _one = self
            .syncing
            .try_lock()
            .map_err(|_| SessionError::fatal(num::RUNNING, "a sync is running already".into()))?;
        let started = Instant::now();
        let endpoint = config.endpoint.as_str();
        let client = Client::new(
            endpoint,
            tickship_storage::docstore::SYSTEM_DATABASE,
            &config.username,
            Some(&config.password),
        )
        .map_err(|e| SessionError::fatal(num::INVALID_CONFIGURATION, format!("{e:#}")))?;
        let counters = &self.sync_counters;
        for counter in [
            &counters.bytes,
            &counters.documents,
            &counters.removed,
            &counters.requests,
            &counters.ranges_compared,
            &counters.ranges_differing,
            &counters.log_keys,
            &counters.log_ticks,
            &counters.on_leader,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        self.progress(format!("fetching leader state information from {endpoint}"));
        let leader = client
            .call("GET", "/_api/replication/server-id", None)
            .map_err(|e| request_error(endpoint, e))?;
        let leader_id = leader["serverId"].as_str().unwrap_or("").to_string();
        if leader_id.is_empty() {
            return Err(SessionError::fatal(
                num::INVALID_RESPONSE,
                format!("the leader at {endpoint} answered server-id without a serverId"),
            ));
        }
        if leader_id == self.node.server_id {
            return Err(SessionError::fatal(
                num::LOOP,
                format!("loop detected: the leader at {endpoint} is this server"),
            ));
        }
        if leader_id != expected {
            return Err(SessionError::fatal(
                num::LEADER_CHANGE,
                format!(
                    "the HTTP endpoint {endpoint} is server {leader_id}, but its replication \
                     endpoint is server {expected}: they must be the same leader"
                ),
            ));
        }
        let marker = self.sync_marker().unwrap_or_default();
        // Until a sync has begun to change it, the store is the state of this server's own
        // log, which holds the log of the leader it last followed.
        let log_of = (marker.tick == 0).then(|| {
            if marker.log_of.is_empty() {
                self.persisted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .server_id
                    .clone()
            } else {
                marker.log_of.clone()
            }
        });
        // Resuming a sync of the same leader compares what arrived rather than fetching again.
        let incremental = incremental
            || (marker.tick > 0 && (marker.leader.is_empty() || marker.leader == leader_id));
        // Everything this server's own log holds is applied before the store changes under it.
        let wal = &self.node.wal;
        let applied = self
            .node
            .store
            .applied_tick()
            .max(self.node.store_writer.applied_tick());
        let wait_for = if wal.last_tick() > applied {
            wal.last_tick()
        } else {
            Tick::ZERO
        };
        self.node
            .store_writer
            .wait_applied(wait_for, APPLIED_WAIT)
            .map_err(|e| {
                SessionError::fatal(
                    errors::LEADER_ERROR,
                    format!("this server's store did not apply its own log: {e}"),
                )
            })?;
        let batch = client
            .call(
                "POST",
                &format!("/_api/replication/batch?serverId={}", self.node.server_id),
                Some(json!({ "ttl": BATCH_TTL })),
            )
            .map_err(|e| request_error(endpoint, e))?;
        let batch_id = batch["id"].as_str().unwrap_or("").to_string();
        let tick = batch["lastTick"]
            .as_str()
            .and_then(|t| t.parse::<u64>().ok())
            .map(Tick::new)
            .ok_or_else(|| {
                SessionError::fatal(
                    num::INVALID_RESPONSE,
                    format!("the leader at {endpoint} answered a batch without lastTick: {batch}"),
                )
            })?;
        let syncer = Syncer {
            applier: self,
            client,
            endpoint,
            batch: batch_id,
            extended: std::sync::Mutex::new(Instant::now()),
            reserved: AtomicU64::new(0),
            cancel,
            started,
            only,
        };
        // Only an incremental sync of all databases may continue the log (`continue_log`).
        let opened = match log_of {
            Some(log_of) if log_of == leader_id && incremental && only.is_none() => Some(opened),
            _ => {
                opened.close();
                None
            }
        };
        let result = syncer.run(config, &leader_id, tick, incremental, opened);
        // The batch is not needed any more whatever happened (it expires by itself otherwise).
        let _ = syncer.client.call(
            "DELETE",
            &format!("/_api/replication/batch/{}", syncer.batch),
            None,
        );
        let mut report = result?;
        report.seconds = started.elapsed().as_secs_f64();
        report.bytes = SyncCounters::get(&counters.bytes);
        report.documents = SyncCounters::get(&counters.documents);
        report.removed = SyncCounters::get(&counters.removed);
        report.requests = SyncCounters::get(&counters.requests);
        {
            let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
            runtime.synced_documents += report.documents;
            runtime.synced_removals += report.removed;
        }
        tracing::info!(
            tick = %report.tick,
            collections = report.collections.len(),
            bytes = report.bytes,
            documents = report.documents,
            removed = report.removed,
            seconds = report.seconds,
            keys_from_log = SyncCounters::get(&counters.log_keys),
            ranges_compared = SyncCounters::get(&counters.ranges_compared),
            incremental,
            "initial sync finished"
        );
        self.progress(format!(
            "initial sync finished at leader tick {}: {} collection(s), {} document(s) stored, {} \
             removed, {} bytes received in {:.1} s",
            report.tick,
            report.collections.len(),
            report.documents,
            report.removed,
            report.bytes,
            report.seconds
        ));
        Ok(report)
    }
}

/// One sync against one batch of the leader.
struct Syncer<'a> {
    applier: &'a Applier,
    client: Client,
    endpoint: &'a str,
    batch: String,
    extended: std::sync::Mutex<Instant>,
    /// Bytes promised to fetches of known length so far (`reserve_rate`).
    reserved: AtomicU64,
    cancel: &'a AtomicBool,
    started: Instant,
    /// The one database synced, if not all.
    only: Option<&'a str>,
}

/// A collection being synced: the leader's name and database, this server's copy, and the
/// digest of the leader's copy if it sent one (`Digest`).
struct Target {
    client: Client,
    info: Arc<CollectionInfo>,
    digest: Option<u128>,
}

impl Syncer<'_> {
    fn counters(&self) -> &SyncCounters {
        &self.applier.sync_counters
    }

    fn check_cancel(&self) -> Result<(), SessionError> {
        if self.cancel.load(Ordering::Acquire) {
            return Err(SessionError::fatal(0, "the sync was stopped".into()));
        }
        Ok(())
    }

    /// Keeps the batch alive: extended once a minute while requests go on.
    fn keep_batch(&self) -> Result<(), SessionError> {
        self.check_cancel()?;
        let mut extended = self.extended.lock().unwrap_or_else(|p| p.into_inner());
        if extended.elapsed() < Duration::from_secs(60) {
            return Ok(());
        }
        self.client
            .call(
                "PUT",
                &format!("/_api/replication/batch/{}", self.batch),
                Some(json!({ "ttl": BATCH_TTL })),
            )
            .map_err(|e| request_error(self.endpoint, e))?;
        *extended = Instant::now();
        Ok(())
    }

    /// Holds this thread back while the sync is ahead of `--replication.sync-max-rate`.
    fn limit_rate(&self) {
        let rate = self.applier.receiving.sync_max_rate;
        if rate == 0 {
            return;
        }
        let received = SyncCounters::get(&self.counters().bytes) as f64;
        let due = Duration::from_secs_f64(received / rate as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }

    /// `limit_rate` for a fetch of `bytes` known in advance, made by one of several workers: it
    /// waits until the bytes promised to earlier fetches are within `--replication.sync-max-rate`,
    /// so that workers starting together do not each take a piece at once.
    fn reserve_rate(&self, bytes: u64) {
        let rate = self.applier.receiving.sync_max_rate;
        if rate == 0 {
            return;
        }
        let before = self.reserved.fetch_add(bytes, Ordering::Relaxed);
        let due = Duration::from_secs_f64(before as f64 / rate as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }

    fn store_error(&self, what: &str, e: impl std::fmt::Display) -> SessionError {
        SessionError::fatal(
            errors::LEADER_ERROR,
            format!("initial sync: cannot {what}: {e}"),
        )
    }

    fn run(
        &self,
        config: &ApplierConfig,
        leader_id: &str,
        tick: Tick,
        incremental: bool,
        opened: Option<Opened>,
    ) -> Result<SyncReport, SessionError> {
        let applier = self.applier;
        let node = &applier.node;
        let wal = &node.wal;
        // A database synced alone joins a log that goes on (see `sync_blocking`), unless the
        // log is this server's own (it never followed): then the leader's log begins here too.
        let own_log = applier
            .persisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .server_id
            .is_empty();
        let begin_log = self.only.is_none() || wal.first_tick().is_none() || own_log;
        if begin_log && wal.first_tick().is_some() && wal.last_tick() > tick {
            return Err(SessionError::fatal(
                num::INVALID_CONFIGURATION,
                format!(
                    "this server's log holds ticks up to {}, past the leader's snapshot at tick \
                     {tick}: it has changes the leader never had (its own writes, or another \
                     leader's). Make an empty server (a new data directory) the follower",
                    wal.last_tick()
                ),
            ));
        }
        if let Some(opened) = opened {
            self.continue_log(config, opened, tick)?;
        }
        // From here on the store changes: a restart must sync again before it tails.
        if self.only.is_none() {
            applier
                .write_sync_marker(&SyncMarker {
                    leader: leader_id.to_string(),
                    endpoint: config.endpoint.clone(),
                    tick: tick.get(),
                    incremental,
                    log_of: String::new(),
                })
                .map_err(|e| SessionError::fatal(errors::LEADER_ERROR, e.message))?;
        }
        applier.follow(config);
        {
            let mut persisted = applier.persisted.lock().unwrap_or_else(|p| p.into_inner());
            persisted.server_id = leader_id.to_string();
        }
        applier.save_state();
        self.keep_batch()?;
        self.applier.progress("fetching leader inventory".into());
        SyncCounters::add(&self.counters().requests, 1);
        let inventory = self
            .client
            .call(
                "GET",
                &format!(
                    "/_api/replication/inventory?batchId={}&global=true&includeSystem={}",
                    self.batch, config.include_system
                ),
                None,
            )
            .map_err(|e| request_error(self.endpoint, e))?;
        let databases = inventory["databases"].as_object().ok_or_else(|| {
            SessionError::fatal(
                num::INVALID_RESPONSE,
                "the leader's inventory has no \"databases\"".into(),
            )
        })?;
        let store = &node.store;
        let filter = config.filter();
        // The leader's collections this server replicates, with their counts and digests.
        let mut wanted: Vec<(CollectionInfo, u64, Option<u128>)> = Vec::new();
        for (name, database) in databases {
            if self.only.is_some_and(|only| only != name) {
                continue;
            }
            let id = database["id"].as_str().and_then(|i| i.parse::<u64>().ok());
            store
                .restore_database_as(name, id)
                .map_err(|e| self.store_error(&format!("create database '{name}'"), e))?;
            for collection in database["collections"].as_array().into_iter().flatten() {
                let parameters = &collection["parameters"];
                let info = crate::http::restore::collection_info(parameters, name)
                    .map_err(|e| SessionError::fatal(num::INVALID_RESPONSE, e.message))?;
                if !filter.admits(&info.name) {
                    store.restore_left_out(&info).map_err(|e| {
                        self.store_error(&format!("record '{}' as left out", info.name), e)
                    })?;
                    continue;
                }
                let count = parameters["count"].as_u64().unwrap_or(0);
                let digest = collection["digest"]
                    .as_str()
                    .and_then(|hex| u128::from_str_radix(hex, 16).ok());
                wanted.push((info, count, digest));
            }
        }
        // What this server has of the replicated collections that the leader does not (or has
        // under another id, which its log names) goes.
        let catalog = store.catalog();
        for database in catalog.databases() {
            if self.only.is_some_and(|only| only != database.name) {
                continue;
            }
            for local in catalog.collections(&database.name) {
                let kept = wanted.iter().any(|(info, _, _)| {
                    info.database == local.database
                        && info.name == local.name
                        && info.id == local.id
                });
                if !kept && filter.admits(&local.name) {
                    store
                        .restore_drop_collection(local.id)
                        .map_err(|e| self.store_error(&format!("drop '{}'", local.name), e))?;
                    tracing::info!(collection = %local.name, id = local.id, "initial sync: dropped a collection the leader does not have");
                }
            }
        }
        let mut targets = Vec::new();
        for (info, count, digest) in wanted {
            let existing = store.catalog().collection(&info.database, &info.name);
            let info = match existing {
                Some(local) if incremental => local,
                _ => {
                    let leader_id = info.id;
                    let name = info.name.clone();
                    let created = match store
                        .restore_collection(info, true)
                        .map_err(|e| self.store_error(&format!("create '{name}'"), e))?
                    {
                        CollectionRestore::Created(created)
                        | CollectionRestore::Exists(created) => created,
                    };
                    if created.id != leader_id {
                        return Err(SessionError::fatal(
                            num::INVALID_CONFIGURATION,
                            format!(
                                "collection '{name}' has id {leader_id} on the leader, which \
                                 something else has here: make an empty server the follower"
                            ),
                        ));
                    }
                    created
                }
            };
            targets.push((
                Target {
                    client: self.client.in_database(&info.database),
                    info,
                    digest,
                },
                count,
            ));
        }
        let on_leader: u64 = targets.iter().map(|(_, count)| count).sum();
        self.counters()
            .on_leader
            .store(on_leader, Ordering::Relaxed);
        // An empty store copies the leader's files when it can, else its documents; then
        // nothing copied by an earlier, abandoned file copy is needed any more.
        if !self.copy_files(&targets, tick)? {
            let compare = self.sync_from_log(&targets)?;
            for ((target, count), compare) in targets.iter().zip(compare) {
                if compare {
                    self.sync_collection(target, *count)?;
                }
            }
            self.drop_copied_files()?;
        }
        for (target, _) in &targets {
            self.settle_digest(target, tick)?;
        }
        // The store now holds the leader's state at `tick`: the log continues from there
        // (it does already if this server's log was continued up to it).
        let continued = wal.last_tick() == tick && node.store.applied_tick() == tick;
        if begin_log {
            if !continued {
                applier.begin_at(tick, tick).map_err(|e| {
                    self.store_error(&format!("begin this server's log at tick {tick}"), e)
                })?;
            }
            let mut runtime = applier.runtime.lock().unwrap_or_else(|p| p.into_inner());
            runtime.last_processed = tick.get();
        }
        applier.save_state();
        applier
            .remove_sync_marker()
            .map_err(|e| SessionError::fatal(errors::LEADER_ERROR, e.message))?;
        Ok(SyncReport {
            tick,
            collections: targets
                .iter()
                .map(|(t, _)| (t.info.id, t.info.name.clone()))
                .collect(),
            ..SyncReport::default()
        })
    }

    /// A follower that stopped tailing this leader has a store that is the state of its own log
    /// at some tick X; if the leader's log still holds X + 1, this server's log is continued
    /// up to the snapshot's tick with the leader's blocks as they are, which the store writer
    /// applies as when tailing: no document is read, encoded, parsed or stored one by one, and
    /// the leader reads its log once. Inserts are looked up too (`assume_applied`), so a store
    /// that is not quite the state of its log (written to here) still gets exact counts and
    /// checksums; the checksums compared afterwards then decide as for any other store.
    ///
    /// Nothing is continued unless this server followed this very leader (the caller checks)
    /// and its log ends before the snapshot; a continuation cut short (a lost connection,
    /// retention) leaves the log where it got to and the sync goes on from there the usual way.
    fn continue_log(
        &self,
        config: &ApplierConfig,
        opened: Opened,
        tick: Tick,
    ) -> Result<(), SessionError> {
        let applier = self.applier;
        let node = &applier.node;
        let from = node.wal.last_tick();
        if from == Tick::ZERO
            || from >= tick
            || node.store.applied_tick() != from
            || opened.welcome.first_tick > from.get() + 1
        {
            tracing::info!(
                %from,
                %tick,
                applied = %node.store.applied_tick(),
                leader_first = opened.welcome.first_tick,
                "initial sync: this server's log does not continue into the leader's snapshot"
            );
            opened.close();
            return Ok(());
        }
        node.store
            .assume_applied(from, tick)
            .map_err(|e| self.store_error("look up the keys the leader's log inserts", e))?;
        applier.progress(format!(
            "continuing this server's log from tick {from} up to the leader's snapshot at tick \
             {tick}"
        ));
        let before = node.store_writer.totals();
        let session = applier.session_on(opened, config, from, Some(tick));
        // A session that ends by itself has waited for every block it handed to the WAL; one
        // abandoned here (the sync stopped, the batch lost) may leave blocks queued, so the
        // sync ends too rather than change the store beside them.
        let ended = tokio::runtime::Handle::current().block_on(async {
            tokio::pin!(session);
            loop {
                tokio::select! {
                    ended = &mut session => break Ok(ended),
                    () = tokio::time::sleep(Duration::from_millis(50)) => {
                        // Blocking this thread holds the session back, and the leader with it
                        // (QUIC's flow control): `--replication.sync-max-rate` as elsewhere.
                        self.limit_rate();
                        if let Err(error) = self.keep_batch() {
                            break Err(error);
                        }
                    }
                }
            }
        })?;
        // What was stored is applied before the store changes under the store writer.
        let reached = node.wal.last_tick();
        node.store_writer
            .wait_applied(reached, APPLIED_WAIT)
            .map_err(|e| self.store_error("apply the leader's log", e))?;
        let applied = node.store_writer.totals().since(before);
        SyncCounters::add(&self.counters().documents, applied.documents);
        SyncCounters::add(&self.counters().removed, applied.removals);
        SyncCounters::add(
            &self.counters().log_ticks,
            reached.get().saturating_sub(from.get()),
        );
        match ended {
            Ok(()) if reached == tick => tracing::info!(
                %from,
                %tick,
                documents = applied.documents,
                removed = applied.removals,
                "initial sync: continued this server's log up to the leader's snapshot"
            ),
            Ok(()) => tracing::info!(
                %from,
                %tick,
                %reached,
                "initial sync: the leader's blocks do not end at its snapshot's tick; syncing \
                 from where this server's log got to"
            ),
            Err(error) => {
                tracing::info!(
                    %from,
                    %tick,
                    %reached,
                    error = %error.message,
                    "initial sync: continuing this server's log stopped; syncing from where it \
                     got to"
                );
            }
        }
        Ok(())
    }

    /// Which of `targets` still need their keys compared after the digests and the leader's log
    /// did what they could:
    ///
    /// - a collection whose digest and count equal the leader's is equal already;
    /// - one that differs, with a digest known on both sides, is brought up to date with the
    ///   documents the leader's log changed since the largest revision this server holds of it
    ///   (a store equal to the leader's as of a tick holds none later), fetched by key; if the
    ///   digests then agree it is done.
    ///
    /// The log is read once for all of them. A collection whose changes in the log pass an
    /// eighth of its documents (`log_limit`), or that was truncated, is compared instead, and so
    /// are all once the log names more keys than the collections hold: reading it would cost
    /// more than the compare it saves.
    fn sync_from_log(&self, targets: &[(Target, u64)]) -> Result<Vec<bool>, SessionError> {
        let store = &self.applier.node.store;
        let mut compare = vec![true; targets.len()];
        // Collection id -> (target index, keys fetched so far).
        let mut active: HashMap<u64, (usize, u64)> = HashMap::new();
        let mut from = u64::MAX;
        for (at, (target, count)) in targets.iter().enumerate() {
            let id = target.info.id;
            let (Some(leader), Some(local)) = (target.digest, store.digest(id)) else {
                continue;
            };
            let local_count = store.count(id);
            if local_count == *count && local.xor == leader {
                compare[at] = false;
                self.applier.progress(format!(
                    "collection '{}' is equal to the leader's: {count} document(s), checksums agree",
                    target.info.name
                ));
                continue;
            }
            // The log helps where few keys changed; counts far apart say many did.
            if local_count > 0 && local_count.abs_diff(*count) <= log_limit(local_count, *count) {
                active.insert(id, (at, 0));
                from = from.min(local.max_rev);
            }
        }
        if active.is_empty() {
            return Ok(compare);
        }
        let budget = active
            .values()
            .map(|&(at, _)| targets[at].1)
            .sum::<u64>()
            .max(100_000);
        let mut named = 0u64;
        let mut after = from;
        let invalid = |why: String| SessionError::fatal(num::INVALID_RESPONSE, why);
        let tick = |value: &serde_json::Value, name: &str| {
            value[name]
                .as_str()
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(|| invalid(format!("changed-keys answer without \"{name}\"")))
        };
        loop {
            self.keep_batch()?;
            let path = format!(
                "/_api/replication/changed-keys?batchId={}&from={after}",
                self.batch
            );
            let (bytes, _) = self.fetch(&self.client, "GET", &path, Vec::new(), None)?;
            let answer: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| invalid(format!("invalid changed-keys answer: {e}")))?;
            let (began, through) = (tick(&answer, "from")?, tick(&answer, "through")?);
            if began > after {
                tracing::info!(
                    asked = after,
                    began,
                    "initial sync: the leader's log begins after the tick asked for; what it \
                     lacks shows in the checksums"
                );
            }
            if through < began || (answer["more"] == true && through <= after) {
                return Err(invalid(format!(
                    "changed-keys answer from {began} through {through} does not move on from {after}"
                )));
            }
            for id in answer["emptied"].as_array().into_iter().flatten() {
                if let Some(id) = id.as_str().and_then(|id| id.parse::<u64>().ok()) {
                    active.remove(&id);
                }
            }
            let keys = answer["keys"]
                .as_object()
                .ok_or_else(|| invalid("changed-keys answer without \"keys\"".into()))?;
            for (id, keys) in keys {
                let keys = keys
                    .as_array()
                    .ok_or_else(|| invalid(format!("changed-keys of {id} is not an array")))?;
                named += keys.len() as u64;
                let Some(id) = id.parse::<u64>().ok() else {
                    continue;
                };
                let Some(&(at, fetched)) = active.get(&id) else {
                    continue;
                };
                let (target, count) = &targets[at];
                let fetched = fetched + keys.len() as u64;
                if fetched > log_limit(store.count(id), *count) {
                    active.remove(&id);
                    continue;
                }
                active.insert(id, (at, fetched));
                let keys: Vec<String> = keys
                    .iter()
                    .map(|key| match key.as_str() {
                        Some(key) if crate::util::valid_key(key) => Ok(key.to_owned()),
                        _ => Err(invalid(format!("changed-keys names an invalid key: {key}"))),
                    })
                    .collect::<Result<_, _>>()?;
                self.applier.progress(format!(
                    "collection '{}': fetching {} document(s) the leader's log changed after \
                     tick {from}",
                    target.info.name,
                    keys.len()
                ));
                // Lots fetched and parsed in parallel, stored together: each store is a file
                // ingested and a flush, whose cost does not depend on its size.
                let lots: Vec<&[String]> = keys.chunks(KEYS_PER_FETCH).collect();
                let pending = std::sync::Mutex::new((Vec::new(), 0usize));
                self.in_parallel(&lots, |_, lot| {
                    let items = self.fetch_exact(target, lot)?;
                    let full = {
                        let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
                        pending.1 += items.iter().map(Restored::bytes).sum::<usize>();
                        pending.0.extend(items);
                        (pending.1 >= STORE_BYTES).then(|| {
                            pending.1 = 0;
                            std::mem::take(&mut pending.0)
                        })
                    };
                    match full {
                        Some(items) => self.store_items(target, items),
                        None => Ok(()),
                    }
                })?;
                let (rest, _) = pending.into_inner().unwrap_or_else(|p| p.into_inner());
                self.store_items(target, rest)?;
                SyncCounters::add(&self.counters().log_keys, keys.len() as u64);
            }
            if named > budget {
                tracing::info!(
                    named,
                    budget,
                    "initial sync: the leader's log changed too many keys; comparing instead"
                );
                active.clear();
            }
            if answer["more"] != true || active.is_empty() {
                break;
            }
            after = through;
        }
        for (id, (at, fetched)) in active {
            let (target, count) = &targets[at];
            let agree =
                store.count(id) == *count && store.digest(id).map(|d| d.xor) == target.digest;
            if agree {
                compare[at] = false;
                self.applier.progress(format!(
                    "collection '{}' is equal to the leader's after {fetched} document(s) from \
                     its log: checksums agree",
                    target.info.name
                ));
            } else {
                tracing::info!(
                    collection = %target.info.name,
                    "initial sync: the leader's log did not account for every difference; \
                     comparing keys"
                );
            }
        }
        Ok(compare)
    }

    /// Fetches the documents `keys` names: what to store, with a removal for each the leader
    /// does not hold.
    fn fetch_exact(&self, target: &Target, keys: &[String]) -> Result<Vec<Restored>, SessionError> {
        self.keep_batch()?;
        let path = format!(
            "/_api/replication/range-documents?batchId={}&collection={}",
            self.batch,
            encode(&target.info.name)
        );
        let body = serde_json::to_vec(&json!({ "keys": keys }))
            .map_err(|e| SessionError::fatal(num::INTERNAL, e.to_string()))?;
        let (bytes, _) = self.fetch(&target.client, "PUT", &path, body, None)?;
        self.parse_answer(target, &bytes, keys)
    }

    /// After a collection was synced: its digest here is the leader's. Set if it was not known
    /// here; one that disagrees (it should not) is reported and replaced, since the compare of
    /// keys and revisions is what decides.
    fn settle_digest(&self, target: &Target, tick: Tick) -> Result<(), SessionError> {
        let Some(leader) = target.digest else {
            return Ok(());
        };
        let store = &self.applier.node.store;
        let id = target.info.id;
        let local = store.digest(id);
        if local.map(|d| d.xor) == Some(leader) {
            return Ok(());
        }
        if let Some(local) = local {
            tracing::warn!(
                collection = %target.info.name,
                local = %local.hex(),
                leader = format!("{leader:032x}"),
                "initial sync: the collection's checksum differs from the leader's after the sync; \
                 taking the leader's"
            );
        }
        // The copy is the leader's as of `tick`: the log is read from there next time.
        let digest = tickship_storage::docstore::Digest {
            xor: leader,
            max_rev: local.map_or(0, |d| d.max_rev).max(tick.get()),
        };
        store.set_digest(id, digest).map_err(|e| {
            self.store_error(&format!("record the checksum of '{}'", target.info.name), e)
        })?;
        Ok(())
    }

    /// Makes collection `target` equal to the leader's, which holds `count` documents.
    fn sync_collection(&self, target: &Target, count: u64) -> Result<(), SessionError> {
        let store = &self.applier.node.store;
        let id = target.info.id;
        let local = store.count(id);
        let kind = if target.info.kind == 3 {
            "edge"
        } else {
            "document"
        };
        self.applier.progress(format!(
            "syncing collection '{}', type: {kind}, id {id}: leader has {count} document(s), \
             this server {local}",
            target.info.name
        ));
        if local == 0 {
            return self.fetch_all(target);
        }
        let mut removals = Vec::new();
        let mut fetch = Vec::new();
        self.compare(target, &mut removals, &mut fetch)?;
        self.flush_removals(target, &mut removals)?;
        self.fetch_keys(target, &mut fetch)?;
        let c = self.counters();
        self.applier.progress(format!(
            "incremental sync of collection '{}': ranges compared: {}, differing: {}, documents \
             stored: {}, removed: {}, bytes received: {}",
            target.info.name,
            SyncCounters::get(&c.ranges_compared),
            SyncCounters::get(&c.ranges_differing),
            SyncCounters::get(&c.documents),
            SyncCounters::get(&c.removed),
            SyncCounters::get(&c.bytes),
        ));
        Ok(())
    }

    /// Calls `each` with the leader's chunks of `TOP_CHUNK` keys of the collection, a page of
    /// `CHUNKS_PER_PAGE` at a time (memory does not grow with the collection), in key order, with
    /// whether more pages follow.
    fn chunk_pages(
        &self,
        target: &Target,
        mut each: impl FnMut(&[KeyChunk], bool) -> Result<(), SessionError>,
    ) -> Result<(), SessionError> {
        let mut after: Option<String> = None;
        loop {
            self.keep_batch()?;
            let mut path = format!(
                "/_api/replication/ranges?batchId={}&collection={}&chunkSize={TOP_CHUNK}\
                 &maxRanges={CHUNKS_PER_PAGE}",
                self.batch,
                encode(&target.info.name)
            );
            if let Some(after) = &after {
                path.push_str(&format!("&after={}", encode(after)));
            }
            let (bytes, _) = self.fetch(&target.client, "GET", &path, Vec::new(), None)?;
            let answer: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                SessionError::fatal(num::INVALID_RESPONSE, format!("invalid ranges answer: {e}"))
            })?;
            let page: Vec<KeyChunk> =
                serde_json::from_value(answer["ranges"].clone()).map_err(|e| {
                    SessionError::fatal(
                        num::INVALID_RESPONSE,
                        format!("invalid ranges answer: {e}"),
                    )
                })?;
            // Each page continues after the last, and chunks come in key order.
            let ordered = page.windows(2).all(|w| w[0].high < w[1].low)
                && page.iter().all(|c| c.low <= c.high)
                && match (&after, page.first()) {
                    (Some(after), Some(first)) => first.low > *after,
                    _ => true,
                };
            if !ordered {
                return Err(SessionError::fatal(
                    num::INVALID_RESPONSE,
                    "the leader's ranges are not in key order".into(),
                ));
            }
            let more = answer["more"] == json!(true) && !page.is_empty();
            each(&page, more)?;
            if !more {
                return Ok(());
            }
            after = page.last().map(|c| c.high.clone());
        }
    }

    /// Sends a request to the leader; returns the answer's bytes and its header `header`. The
    /// answer is checked against the CRC-32C the leader sent with it: one damaged on the way is
    /// refused, never stored, and asked for again (`FETCH_ATTEMPTS` in all).
    fn fetch(
        &self,
        client: &Client,
        method: &str,
        path: &str,
        body: Vec<u8>,
        header: Option<&str>,
    ) -> Result<(Vec<u8>, Option<String>), SessionError> {
        use crate::leader::ranges::{check_crc, CRC_HEADER};
        let names = [CRC_HEADER, header.unwrap_or(CRC_HEADER)];
        let mut attempt = 1;
        loop {
            let (_, bytes, mut values) = client
                .bytes_with_headers(method, path, body.clone(), &names)
                .map_err(|e| request_error(self.endpoint, e))?;
            SyncCounters::add(&self.counters().requests, 1);
            SyncCounters::add(&self.counters().bytes, bytes.len() as u64);
            match check_crc(&bytes, values[0].as_deref()) {
                Ok(()) => {
                    let wanted = header.and_then(|_| values.pop().flatten());
                    return Ok((bytes, wanted));
                }
                Err(why) if attempt < FETCH_ATTEMPTS => {
                    tracing::warn!(
                        "initial sync: refused the answer to {method} {path}: {why}; asking again"
                    );
                    attempt += 1;
                }
                Err(why) => {
                    return Err(SessionError::fatal(
                        num::INVALID_RESPONSE,
                        format!(
                            "initial sync: the answer to {method} {path} failed its check \
                             {FETCH_ATTEMPTS} times ({why}); nothing of it was stored"
                        ),
                    ))
                }
            }
        }
    }

    /// Compares the collection of the leader and of this server in chunks of `TOP_CHUNK` keys:
    /// equal chunks are left, differing ones compared key by key, or fetched whole when this
    /// server has none of their keys. Keys to remove and to fetch are collected.
    fn compare(
        &self,
        target: &Target,
        removals: &mut Vec<String>,
        fetch: &mut Vec<String>,
    ) -> Result<(), SessionError> {
        let mut after: Option<String> = None;
        self.chunk_pages(target, |chunks, more| {
            // This page's share of this server's keys: after the last page's, up to its last
            // chunk (or all that are left).
            let high = if more {
                chunks.last().map(|c| c.high.clone())
            } else {
                None
            };
            let range = KeyRange {
                low: after.as_deref(),
                after_low: true,
                high: high.as_deref(),
            };
            self.compare_page(target, chunks, range, removals, fetch)?;
            after = high;
            Ok(())
        })
    }

    /// Compares one page of the leader's chunks with this server's keys in `range`.
    ///
    /// Each chunk is one piece of work, several at once: walk this server's keys from after the
    /// previous chunk up to this one's last key (the page's `range.high` for the last chunk),
    /// hash those inside the chunk, and only if the hash differs ask the leader for the chunk's
    /// pairs and compare them with what the walk kept. Keys in the gap before a chunk (and past
    /// the last one) are this server's alone and go. So every key is read once, by several
    /// workers whose walks overlap the others' round trips to the leader (one walk over the
    /// whole page first, then a second over each differing chunk, left a core idle a third of the
    /// time).
    fn compare_page(
        &self,
        target: &Target,
        chunks: &[KeyChunk],
        range: KeyRange<'_>,
        removals: &mut Vec<String>,
        fetch: &mut Vec<String>,
    ) -> Result<(), SessionError> {
        let store = &self.applier.node.store;
        let id = target.info.id;
        if chunks.is_empty() {
            // The leader holds nothing in the range: all this server has there goes.
            let mut walk_error = None;
            store
                .key_revs(id, range, |key, _| {
                    if let Err(e) = self.remove_later(target, removals, key) {
                        walk_error = Some(e);
                        return false;
                    }
                    true
                })
                .map_err(|e| self.store_error("read this server's keys", e))?;
            return walk_error.map_or(Ok(()), Err);
        }
        SyncCounters::add(&self.counters().ranges_compared, chunks.len() as u64);
        // What the workers find, stored in bounded lots.
        let found = std::sync::Mutex::new((std::mem::take(removals), std::mem::take(fetch)));
        self.in_parallel(chunks, |at, chunk| {
            self.keep_batch()?;
            let walk = KeyRange {
                low: if at == 0 {
                    range.low
                } else {
                    Some(chunks[at - 1].high.as_str())
                },
                after_low: at > 0 || range.after_low,
                high: if at + 1 == chunks.len() {
                    range.high
                } else {
                    Some(chunk.high.as_str())
                },
            };
            let (mut mine_removed, mut mine_fetched) = (Vec::new(), Vec::new());
            // The chunk's pairs for the key-by-key compare, unless this server holds far more
            // of them than the leader (then they are read again): memory stays bounded.
            let mut local: Option<Vec<(String, Tick)>> = Some(Vec::new());
            let mut hash = RangeHash::default();
            let mut walk_error = None;
            store
                .key_revs(id, walk, |key, rev| {
                    if key < chunk.low.as_str() || key > chunk.high.as_str() {
                        if let Err(e) = self.remove_later(target, &mut mine_removed, key) {
                            walk_error = Some(e);
                            return false;
                        }
                    } else {
                        hash.add(key, rev);
                        if let Some(kept) = &mut local {
                            if kept.len() as u64 >= LOCAL_PAIRS_KEPT {
                                local = None;
                            } else {
                                kept.push((key.to_owned(), rev));
                            }
                        }
                    }
                    true
                })
                .map_err(|e| self.store_error("read this server's keys", e))?;
            if let Some(error) = walk_error {
                return Err(error);
            }
            let count = hash.count();
            if count != chunk.count || hash.finish() != chunk.hash {
                SyncCounters::add(&self.counters().ranges_differing, 1);
                if count == 0 {
                    self.fetch_range(target, &chunk.low, &chunk.high)?;
                } else {
                    self.compare_keys(target, chunk, local, &mut mine_removed, &mut mine_fetched)?;
                }
            }
            let (mut full_removals, mut full_fetch) = (Vec::new(), Vec::new());
            {
                let mut found = found.lock().unwrap_or_else(|p| p.into_inner());
                found.0.append(&mut mine_removed);
                found.1.append(&mut mine_fetched);
                if found.0.len() >= INGEST_ITEMS {
                    full_removals = std::mem::take(&mut found.0);
                }
                if found.1.len() >= KEYS_PER_FETCH {
                    full_fetch = std::mem::take(&mut found.1);
                }
            }
            self.flush_removals(target, &mut full_removals)?;
            self.fetch_keys(target, &mut full_fetch)
        })?;
        let (left_removals, left_fetch) = found.into_inner().unwrap_or_else(|p| p.into_inner());
        *removals = left_removals;
        *fetch = left_fetch;
        Ok(())
    }

    /// Runs `work` on each of `items`, `PARALLEL_FETCHES` at a time; the first error stops the
    /// others before their next item.
    fn in_parallel<T: Sync>(
        &self,
        items: &[T],
        work: impl Fn(usize, &T) -> Result<(), SessionError> + Sync,
    ) -> Result<(), SessionError> {
        self.in_parallel_n(items, PARALLEL_FETCHES, work)
    }

    /// `in_parallel` with `workers` threads.
    fn in_parallel_n<T: Sync>(
        &self,
        items: &[T],
        workers: usize,
        work: impl Fn(usize, &T) -> Result<(), SessionError> + Sync,
    ) -> Result<(), SessionError> {
        let next = AtomicU64::new(0);
        let failed = AtomicBool::new(false);
        let mut first_error = std::sync::Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..workers.min(items.len()) {
                scope.spawn(|| loop {
                    if failed.load(Ordering::Acquire) {
                        return;
                    }
                    let at = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(item) = items.get(at) else { return };
                    if let Err(e) = work(at, item) {
                        failed.store(true, Ordering::Release);
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                });
            }
        });
        match first_error
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Compares one chunk key by key: the leader's `[key, revision]` pairs against this
    /// server's pairs of the chunk, `local` if the walk kept them (in key order), else read again.
    fn compare_keys(
        &self,
        target: &Target,
        chunk: &KeyChunk,
        local: Option<Vec<(String, Tick)>>,
        removals: &mut Vec<String>,
        fetch: &mut Vec<String>,
    ) -> Result<(), SessionError> {
        let path = format!(
            "/_api/replication/range-keys?batchId={}&collection={}&low={}&high={}",
            self.batch,
            encode(&target.info.name),
            encode(&chunk.low),
            encode(&chunk.high)
        );
        let (bytes, _) = self.fetch(&target.client, "GET", &path, Vec::new(), None)?;
        let invalid = |why: String| SessionError::fatal(num::INVALID_RESPONSE, why);
        let pairs: Vec<(String, String)> = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("invalid range-keys answer: {e}")))?;
        let mut leader = Vec::with_capacity(pairs.len());
        for (key, rev) in pairs {
            let rev: u64 = rev
                .parse()
                .map_err(|_| invalid(format!("invalid revision {rev:?}")))?;
            // The merge below decides what to remove: out-of-order or out-of-range keys would
            // remove documents the leader has.
            let in_order = leader
                .last()
                .is_none_or(|(last, _): &(String, u64)| *last < key);
            if !in_order || key < chunk.low || key > chunk.high {
                return Err(invalid(format!(
                    "range-keys answer out of order or outside {}..={} at {key:?}",
                    chunk.low, chunk.high
                )));
            }
            leader.push((key, rev));
        }
        let mut merge = Merge {
            leader: leader.into_iter().peekable(),
            removals,
            fetch,
        };
        match local {
            Some(local) => local.iter().for_each(|(key, rev)| merge.local(key, *rev)),
            None => self
                .applier
                .node
                .store
                .key_revs(
                    target.info.id,
                    KeyRange::between(Some(&chunk.low), Some(&chunk.high)),
                    |key, rev| {
                        merge.local(key, rev);
                        true
                    },
                )
                .map_err(|e| self.store_error("read this server's keys", e))?,
        }
        merge.finish();
        Ok(())
    }

    /// Adds `key` to the removals, storing them once there are `INGEST_ITEMS` (so that a walk
    /// over many keys this server alone has holds a bounded lot of them).
    fn remove_later(
        &self,
        target: &Target,
        removals: &mut Vec<String>,
        key: &str,
    ) -> Result<(), SessionError> {
        removals.push(key.to_owned());
        if removals.len() >= INGEST_ITEMS {
            self.flush_removals(target, removals)?;
        }
        Ok(())
    }

    fn flush_removals(
        &self,
        target: &Target,
        removals: &mut Vec<String>,
    ) -> Result<(), SessionError> {
        if removals.is_empty() {
            return Ok(());
        }
        let items: Vec<Restored> = removals
            .drain(..)
            .map(|key| Restored::Remove { key })
            .collect();
        let stats = self
            .applier
            .node
            .store
            .restore_documents(target.info.id, items)
            .map_err(|e| self.store_error(&format!("remove from '{}'", target.info.name), e))?;
        SyncCounters::add(&self.counters().removed, stats.removed);
        Ok(())
    }

    /// Fetches the documents `keys` names and stores them.
    fn fetch_keys(&self, target: &Target, keys: &mut Vec<String>) -> Result<(), SessionError> {
        while !keys.is_empty() {
            let take = keys.len().min(KEYS_PER_FETCH);
            let batch: Vec<String> = keys.drain(..take).collect();
            let items = self.fetch_exact(target, &batch)?;
            self.store_items(target, items)?;
        }
        Ok(())
    }

    /// Fetches every document of `low..=high` and stores it.
    fn fetch_range(&self, target: &Target, low: &str, high: &str) -> Result<(), SessionError> {
        let mut after: Option<String> = None;
        loop {
            self.keep_batch()?;
            let path = format!(
                "/_api/replication/range-documents?batchId={}&collection={}",
                self.batch,
                encode(&target.info.name)
            );
            let body = match &after {
                Some(after) => json!({ "after": after, "high": high }),
                None => json!({ "low": low, "high": high }),
            };
            let body = serde_json::to_vec(&body)
                .map_err(|e| SessionError::fatal(num::INTERNAL, e.to_string()))?;
            let (bytes, last) = self.fetch(
                &target.client,
                "PUT",
                &path,
                body,
                Some("x-tickship-last-key"),
            )?;
            self.store_lines(target, &bytes)?;
            match last {
                Some(last) if after.as_deref() != Some(last.as_str()) => after = Some(last),
                _ => return Ok(()),
            }
        }
    }

    /// Every document of an empty collection: its chunks fetched by several workers at once.
    fn fetch_all(&self, target: &Target) -> Result<(), SessionError> {
        let mut done = 0usize;
        self.chunk_pages(target, |chunks, _| {
            let first = done;
            done += chunks.len();
            self.in_parallel(chunks, |at, chunk| {
                let at = first + at;
                self.fetch_range(target, &chunk.low, &chunk.high)?;
                let c = self.counters();
                self.applier.progress(format!(
                    "fetching leader collection dump for collection '{}', type: {}, id {}, \
                         batch {}, markers processed: {}, bytes received: {}",
                    target.info.name,
                    if target.info.kind == 3 {
                        "edge"
                    } else {
                        "document"
                    },
                    target.info.id,
                    at + 1,
                    SyncCounters::get(&c.documents),
                    SyncCounters::get(&c.bytes),
                ));
                Ok(())
            })
        })
    }

    /// Stores the documents of one answer (one per line), refusing the whole answer if any line
    /// is not a valid document of the collection.
    fn store_lines(&self, target: &Target, bytes: &[u8]) -> Result<(), SessionError> {
        let items = self.parse_answer(target, bytes, &[])?;
        self.store_items(target, items)
    }

    /// The documents of one answer (one per line) to store, refusing the whole answer if any
    /// line is not a valid document of the collection; and a removal for each of `asked` the
    /// answer does not hold.
    fn parse_answer(
        &self,
        target: &Target,
        bytes: &[u8],
        asked: &[String],
    ) -> Result<Vec<Restored>, SessionError> {
        self.limit_rate();
        let mut items = Vec::new();
        let fallback = self.applier.node.wal.floor().max(Tick::new(1));
        for (index, text) in bytes.split(|&b| b == b'\n').enumerate() {
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let item = crate::http::restore::parse_line(text, index + 1, &target.info, fallback)
                .map_err(|e| {
                    SessionError::fatal(
                        num::INVALID_RESPONSE,
                        format!(
                            "the leader sent a document of '{}' that cannot be stored: {}",
                            target.info.name, e.message
                        ),
                    )
                })?;
            let item = match item {
                // The leader's stored bytes as they are (attribute order included), so that the
                // two stores hold the same document, byte for byte; the line was checked above.
                Restored::Put { key, rev, json } => match without_rev(text) {
                    Some((stored, sent)) if sent == rev => Restored::Put {
                        key,
                        rev,
                        json: stored,
                    },
                    _ => Restored::Put { key, rev, json },
                },
                other => other,
            };
            if let Restored::Put { key, .. } = &item {
                if let Ok(number) = key.parse::<u64>() {
                    self.applier.node.keygen.track(number);
                }
            }
            items.push(item);
        }
        if !asked.is_empty() {
            let sent: std::collections::HashSet<&str> = items
                .iter()
                .filter_map(|item| match item {
                    Restored::Put { key, .. } => Some(key.as_str()),
                    Restored::Remove { .. } => None,
                })
                .collect();
            let gone: Vec<Restored> = asked
                .iter()
                .filter(|key| !sent.contains(key.as_str()))
                .map(|key| Restored::Remove { key: key.clone() })
                .collect();
            items.extend(gone);
        }
        Ok(items)
    }

    /// Stores `items` in `target` (one store file).
    fn store_items(&self, target: &Target, items: Vec<Restored>) -> Result<(), SessionError> {
        if items.is_empty() {
            return Ok(());
        }
        let stats = self
            .applier
            .node
            .store
            .restore_documents(target.info.id, items)
            .map_err(|e| {
                self.store_error(&format!("store documents of '{}'", target.info.name), e)
            })?;
        SyncCounters::add(&self.counters().documents, stats.created + stats.replaced);
        SyncCounters::add(&self.counters().removed, stats.removed);
        Ok(())
    }
}

/// Keys changed in the leader's log past which a collection holding `local` documents here and
/// `leader` there is compared instead (`Syncer::sync_from_log`).
fn log_limit(local: u64, leader: u64) -> u64 {
    local.max(leader) / 8 + 1000
}

/// Merges this server's pairs of a chunk (fed in key order) with the leader's: a key only here
/// is removed, one only there or with another revision is fetched.
struct Merge<'a> {
    leader: std::iter::Peekable<std::vec::IntoIter<(String, u64)>>,
    removals: &'a mut Vec<String>,
    fetch: &'a mut Vec<String>,
}

impl Merge<'_> {
    fn local(&mut self, key: &str, rev: Tick) {
        while let Some((leader_key, _)) = self.leader.peek() {
            if leader_key.as_str() >= key {
                break;
            }
            let (leader_key, _) = self.leader.next().expect("peeked");
            self.fetch.push(leader_key);
        }
        match self.leader.peek() {
            Some((leader_key, leader_rev)) if leader_key == key => {
                if *leader_rev != rev.get() {
                    self.fetch.push(key.to_owned());
                }
                self.leader.next();
            }
            _ => self.removals.push(key.to_owned()),
        }
    }

    fn finish(self) {
        self.fetch.extend(self.leader.map(|(key, _)| key));
    }
}
