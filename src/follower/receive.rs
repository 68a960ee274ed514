//! The receive session: one QUIC connection to the leader, its handshake, and the loop that
//! asks for the log from a tick, stores each whole block in this server's WAL (same ticks) as it
//! arrives, acknowledges what is durable, and counts sessions that bring nothing as failures.

use crate::api::num;
use crate::util::iso8601 as timestamp;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tickship_net::frame::{Kind, Piece};
use tickship_net::session::{self, FollowerSide};
use tickship_net::stream::{AckDue, BlockSpan, FollowerStream, FrameEnd, Placement};
use tickship_net::transport::{client_endpoint, connect};
use tickship_net::{errors, Ack, Close, Control, Error as NetError, FramedStream, Idle, Tail};
use tickship_storage::docstore::Damage;
use tickship_storage::wal::{Appended, Block};
use tickship_storage::Tick;
use tokio::sync::Notify;

use super::*;

/// A resync whose tailing failed sooner than this after it counts as short-term (ArangoDB's).
const SHORT_TERM_RESYNC: Duration = Duration::from_secs(120);

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
    /// Bytes per second an initial sync receives at most (0: no limit;
    /// `--replication.sync-max-rate`).
    pub sync_max_rate: u64,
    /// Whether a full sync into an empty store copies the leader's files
    /// (`--replication.sync-copy-files`).
    pub sync_copy_files: bool,
}

impl Receiving {
    /// Bytes of received blocks queued for the WAL's writer at most: a quarter of the buffer
    /// (the default frame size), so that one frame is queued while the next is read. Only blocks
    /// the writer has not yet taken are held in memory, so this bounds memory without slowing a
    /// catch-up, which gating blocks not yet durable did
    /// (docs/benchmarks/2026-11-24-follower-memory.md, run 11).
    pub(super) fn ahead_bytes(&self) -> usize {
        (self.buffer_bytes as usize / 4).max(64 << 10)
    }
}

/// Bytes of the leader's log written to this server's WAL but not yet durable, at most.
pub(super) const DURABLE_AHEAD_BYTES: usize = 8 << 20;

/// The frame size a follower asks for: its applier's chunkSize, or without one (0) a quarter
/// of its receive buffer, from 64 KiB to the leader's default of 4 MiB. A frame is allocated
/// whole once its header arrives, besides what is buffered, so a smaller one adds less to it.
pub(super) fn chunk_bytes(chunk_size: u64, buffer_bytes: u32) -> u64 {
    match chunk_size {
        0 => u64::from(buffer_bytes / 4).clamp(64 << 10, 4 << 20),
        bytes => bytes,
    }
}

/// A block as the leader sent it, checked (header, CRC-32C).
fn leader_block(payload: bytes::Bytes) -> Result<Block, SessionError> {
    Block::parse(payload).map_err(|e| {
        SessionError::fatal(
            num::INVALID_RESPONSE,
            format!("invalid block from the leader: {e}"),
        )
    })
}

/// A connection to the leader after the handshake.
pub(super) struct Opened {
    pub(super) connection: tickship_net::quinn::Connection,
    pub(super) stream: FramedStream,
    pub(super) leader_id: String,
    pub(super) welcome: tickship_net::Welcome,
    /// Kept for as long as the connection: dropping the endpoint closes it.
    _endpoint: tickship_net::quinn::Endpoint,
}

impl Opened {
    /// Closes a connection the sync used only to learn who the leader is.
    pub(super) fn close(self) {
        self.connection.close(0u32.into(), b"sync over HTTP");
    }
}

/// Why a session ended: `retry` errors count towards `maxConnectRetries` when `connect` is set.
pub(super) struct SessionError {
    pub(super) error_num: u32,
    pub(super) message: String,
    pub(super) retry: bool,
    pub(super) connect: bool,
    /// The store writer is held before this damaged block of this server's log: the applier
    /// fetches it again from the leader (`repair`) and goes on.
    pub(super) damage: Option<Damage>,
}

impl SessionError {
    pub(super) fn connect(message: String) -> SessionError {
        SessionError {
            error_num: num::NO_RESPONSE,
            message,
            retry: true,
            connect: true,
            damage: None,
        }
    }

    /// An error that retrying cannot fix, which stops the applier; except that one whose
    /// message names a full disk (the storage errors' messages end with what the system said)
    /// becomes a wait for space (`disk_full`), whatever step met it.
    pub(super) fn fatal(error_num: u32, message: String) -> SessionError {
        if tickship_storage::Error::names_no_space(&message) {
            return SessionError::disk_full(message);
        }
        SessionError {
            error_num,
            message,
            retry: false,
            connect: false,
            damage: None,
        }
    }

    /// This server's disk is full: the applier keeps its place, says so (1104) and tries again
    /// every `DISK_FULL_RETRY_EVERY` until space is freed, without counting it as a failed
    /// connect (a full disk is no reason to give up on the leader).
    pub(super) fn disk_full(message: String) -> SessionError {
        SessionError {
            error_num: num::FILESYSTEM_FULL,
            message,
            retry: true,
            connect: false,
            damage: None,
        }
    }

    /// The store writer met `damage` in this server's log.
    fn damaged(damage: Damage) -> SessionError {
        SessionError {
            error_num: errors::LEADER_ERROR,
            message: format!(
                "this server's copy of the leader's log is damaged: {}",
                damage.error()
            ),
            retry: false,
            connect: false,
            damage: Some(damage),
        }
    }

    fn is_disk_full(&self) -> bool {
        self.retry && self.error_num == num::FILESYSTEM_FULL
    }
}

/// How often an applier waiting for disk space tries again. The document store clears its own
/// error once space is back (RocksDB looks every 5 s).
const DISK_FULL_RETRY_EVERY: Duration = Duration::from_secs(2);

impl Applier {
    /// Moves an empty log to `start` (down too) and has the store take its contents as the
    /// state through `start` with data up to `through`.
    pub(super) fn begin_at(&self, start: Tick, through: Tick) -> tickship_storage::Result<()> {
        self.node.wal.skip_to(start, true)?;
        self.node.store.assume_applied(start, through)?;
        self.node
            .store_writer
            .note_applied(self.node.store.applied_tick());
        Ok(())
    }

    /// Makes an empty log begin just before `first`, the first tick of the first block received,
    /// which holds `from + 1`: the log's floor goes there (down, if a restore had raised it) and
    /// the store takes its contents as the state through it, with data up to `from` (a restore
    /// from a dump at `from`; replaying the block's ticks up to `from` over it changes nothing).
    /// Returns where the log now ends.
    fn begin_log(&self, first: Tick, from: Tick) -> Result<Tick, SessionError> {
        let start = first.saturating_prev();
        let wal = &self.node.wal;
        if wal.last_tick() == start && self.node.store.applied_max() >= from {
            return Ok(start);
        }
        tokio::task::block_in_place(|| self.begin_at(start, from)).map_err(|e| {
            SessionError::fatal(
                errors::LEADER_ERROR,
                format!("cannot begin this server's log at tick {start}: {e}"),
            )
        })?;
        tracing::info!(%start, %from, "follower: this server's log begins with the leader's tick after {start}");
        Ok(wal.last_tick())
    }

    /// The applier task: connect, tail, retry; ends on stop or on an error that retrying cannot
    /// fix.
    pub(super) async fn run(
        self: Arc<Self>,
        config: ApplierConfig,
        mut from: Tick,
        stop: Arc<Notify>,
    ) {
        // Freed memory goes back to the system at once while following (see `PurgeAtOnce`).
        let mut purge = Some(crate::util::PurgeAtOnce::new());
        let stopped = stop.notified();
        tokio::pin!(stopped);
        // Whether the wait for disk space under way was logged already (once per wait).
        let mut space_wait_logged = false;
        let outcome = loop {
            let result = if let Some(marker) = self.sync_marker() {
                // A sync is owed: this server's store is no state of the leader's log yet.
                self.set_phase("initial");
                // But not while syncing: a sync frees its answers (megabytes each) as fast as it
                // receives them, and handing each back at once cost it a sixth of its time in
                // page faults and madvise; the process's purge delay bounds what it holds to
                // that delay's worth (docs/benchmarks/2026-12-06-initial-sync.md).
                drop(purge.take());
                let incremental = config.incremental || marker.incremental || marker.tick > 0;
                let cancel = Arc::new(AtomicBool::new(false));
                let sync =
                    self.clone()
                        .sync_with(config.clone(), incremental, cancel.clone(), None);
                tokio::pin!(sync);
                let synced = tokio::select! {
                    _ = stopped.as_mut() => {
                        // Stopped between two requests; what arrived stays for the next run.
                        cancel.store(true, Ordering::Release);
                        let _ = sync.await;
                        break None;
                    }
                    synced = &mut sync => synced,
                };
                self.set_phase("running");
                purge.get_or_insert_with(crate::util::PurgeAtOnce::new);
                match synced {
                    Ok(report) => {
                        from = report.tick;
                        self.made_progress();
                        self.runtime
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .last_sync = Some(Instant::now());
                        continue;
                    }
                    Err(error) => Err(error),
                }
            } else {
                let session = self.session(&config, from);
                tokio::select! {
                    _ = stopped.as_mut() => break None,
                    result = session => result,
                }
            };
            from = Tick::new(
                self.runtime
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .last_processed
                    .max(from.get()),
            );
            self.save_state();
            let mut error = match result {
                Ok(()) => break None,
                Err(error) => error,
            };
            if let Some(damage) = error.damage.take() {
                match self.repair(&config, &damage).await {
                    Ok(()) => continue,
                    Err(failed) => error = failed,
                }
            }
            if error.error_num == errors::START_TICK_NOT_PRESENT {
                self.runtime
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .follow_tick_failures += 1;
                if config.auto_resync && config.auto_resync_retries > 0 {
                    match self.owe_resync(&config, &error) {
                        Ok(()) => continue,
                        Err(stop) => break Some(stop),
                    }
                }
                if !config.require_from_present {
                    match self.continue_from_leader_first(&config, from).await {
                        Ok(first) => {
                            from = first;
                            continue;
                        }
                        Err(error) => break Some((error.error_num, error.message)),
                    }
                }
            }
            // Errors that retrying cannot fix stop the applier.
            if !error.retry {
                break Some((error.error_num, error.message));
            }
            if error.is_disk_full() {
                self.runtime
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .last_error = LastError {
                    error_num: error.error_num,
                    time: timestamp(SystemTime::now()),
                    message: error.message.clone(),
                };
                if !std::mem::replace(&mut space_wait_logged, true) {
                    tracing::warn!(
                        "replication applier waits for disk space, trying again every {} s: {}",
                        DISK_FULL_RETRY_EVERY.as_secs(),
                        error.message
                    );
                }
                self.progress(format!(
                    "waiting for disk space: {}; trying again every {} s",
                    error.message,
                    DISK_FULL_RETRY_EVERY.as_secs()
                ));
                // A setup waiting for this applier answers now (`wait_caught_up`).
                self.runtime_changed.notify_waiters();
                tokio::select! {
                    _ = stopped.as_mut() => break None,
                    _ = tokio::time::sleep(DISK_FULL_RETRY_EVERY) => {}
                }
                continue;
            }
            space_wait_logged = false;
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

    /// autoResync: the leader no longer has the tick to follow from, so a sync (incremental) is
    /// owed, unless the last ones failed at once `autoResyncRetries` times in a row.
    fn owe_resync(
        &self,
        config: &ApplierConfig,
        error: &SessionError,
    ) -> Result<(), (u32, String)> {
        let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        // A resync whose tailing ran for two minutes worked: the count in a row starts over.
        if runtime
            .last_sync
            .is_some_and(|at| at.elapsed() >= SHORT_TERM_RESYNC)
        {
            runtime.resyncs_in_a_row = 0;
        }
        if runtime.resyncs_in_a_row >= config.auto_resync_retries {
            return Err((
                error.error_num,
                format!(
                    "{}; aborting automatic resynchronization after {} short-term retries",
                    error.message, runtime.resyncs_in_a_row
                ),
            ));
        }
        runtime.resyncs_in_a_row += 1;
        runtime.total_resyncs += 1;
        let attempt = runtime.resyncs_in_a_row;
        drop(runtime);
        let message = format!(
            "restarting initial synchronization because autoResync option is set. retry #{attempt} of {} ({})",
            config.auto_resync_retries, error.message
        );
        tracing::warn!("replication: {message}");
        self.progress(message);
        self.write_sync_marker(&SyncMarker {
            endpoint: config.endpoint.clone(),
            incremental: true,
            ..SyncMarker::default()
        })
        .map_err(|e| (e.error_num, e.message))
    }

    /// `requireFromPresent: false`: the leader's log starts after `from`, so this server goes on
    /// from the leader's first tick, missing the changes in between (ArangoDB accepts the gap
    /// silently; here it is logged as an error, with the ticks missed).
    async fn continue_from_leader_first(
        &self,
        config: &ApplierConfig,
        from: Tick,
    ) -> Result<Tick, SessionError> {
        let (endpoint, username, password) = (
            config.endpoint.clone(),
            config.username.clone(),
            config.password.clone(),
        );
        let first = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            let client = crate::client::Client::new(
                &endpoint,
                tickship_storage::docstore::SYSTEM_DATABASE,
                &username,
                Some(&password),
            )?;
            let answer = client.call("GET", "/_api/replication/logger-first-tick", None)?;
            answer["firstTick"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("logger-first-tick answered without firstTick"))
        })
        .await
        .map_err(|e| SessionError::fatal(num::INTERNAL, e.to_string()))?
        .map_err(|e| {
            SessionError::connect(format!(
                "could not ask the leader at {} for its first tick: {e:#}",
                config.endpoint
            ))
        })?;
        let start = Tick::new(first).saturating_prev().max(from);
        tracing::error!(
            "replication: the leader at {} no longer has the ticks after {from} (its log starts at {first}); requireFromPresent is false, so this server goes on from tick {start} WITHOUT the changes of ticks {} to {start}: its data may differ from the leader's until a sync",
            config.endpoint,
            from.get() + 1,
        );
        tokio::task::block_in_place(|| self.begin_at(start, start)).map_err(|e| {
            SessionError::fatal(
                errors::LEADER_ERROR,
                format!("cannot move this server's log to tick {start}: {e}"),
            )
        })?;
        self.progress(format!(
            "the leader's log starts at tick {first}: going on from there without ticks {} to {start} (requireFromPresent is false)",
            from.get() + 1
        ));
        Ok(start)
    }

    /// Connects to `config`'s leader over QUIC and completes the handshake (the leader's
    /// certificate checked against `--replication.leader-fingerprint`, the credentials by SCRAM):
    /// the connection, its stream, and the leader's id and welcome. Refuses a leader that is this
    /// server (1405).
    pub(super) async fn handshake(&self, config: &ApplierConfig) -> Result<Opened, SessionError> {
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
            addr,
            self.receiving.leader_fingerprint.as_deref(),
            self.receiving.buffer_bytes,
        )
        .map_err(connect_failed)?;
        let timeout = Duration::from_secs_f64(config.connect_timeout);
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
        let mut stream = FramedStream::new(send, recv, config.frame_bytes_max());
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
        Ok(Opened {
            connection,
            stream,
            leader_id,
            welcome,
            _endpoint: endpoint,
        })
    }

    /// One session with the leader, until it fails or ends.
    pub(super) async fn session(
        &self,
        config: &ApplierConfig,
        from: Tick,
    ) -> Result<(), SessionError> {
        let opened = self.handshake(config).await?;
        self.session_on(opened, config, from, None).await
    }

    /// A session on a connection `opened` already, storing the leader's blocks after `from`.
    /// With `until`, it ends once the block ending at `until` is stored and durable, and stores
    /// no block that goes past it (a sync continuing this server's log into the leader's
    /// snapshot at that tick); it ends early, without an error, if the leader's blocks do not
    /// end there.
    pub(super) async fn session_on(
        &self,
        opened: Opened,
        config: &ApplierConfig,
        from: Tick,
        until: Option<Tick>,
    ) -> Result<(), SessionError> {
        let Opened {
            connection: _connection,
            mut stream,
            leader_id,
            welcome,
            ..
        } = opened;
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
            .heard_from_leader(welcome.last_tick);
        self.track_distance(welcome.last_tick);
        let chunk = chunk_bytes(config.chunk_size, self.receiving.buffer_bytes)
            .min(config.frame_bytes_max() as u64);
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
        // A setup waiting for the applier to be level learns the leader's last tick now, not at
        // the leader's next idle message a second later.
        self.runtime_changed.notify_waiters();
        // requestTimeout bounds the leader's silence, never a frame still arriving: on a slow
        // link one block can take longer than any timeout that catches a dead leader.
        let silence = Duration::from_secs_f64(config.request_timeout);
        // What the session does with each block, when it acknowledges and whether it reads on
        // is `FollowerStream`'s (net::stream, driven without I/O by its simulated tests); this
        // loop does the I/O. A log that holds no block yet (an empty server, or one restored
        // from a dump) begins with the first block received, wherever in the leader's log that
        // is. What the session holds is bounded: past `receive_ahead` bytes of blocks not yet
        // taken by the WAL's writer (which drops each once copied into its buffer) nothing more
        // is read and the leader waits on QUIC's flow control; bytes written but not yet durable
        // cost no memory and are bounded (`durable_ahead`) only so that acks keep coming.
        let receive_ahead = self.receiving.ahead_bytes();
        let mut machine = FollowerStream::new(
            from.get(),
            self.node.wal.last_tick().get(),
            self.node.wal.first_tick().is_none(),
            self.node.wal.durable_tick().get(),
            receive_ahead,
            DURABLE_AHEAD_BYTES.max(receive_ahead),
        );
        // The appends of the blocks the machine counts as in flight, in the same order, with
        // the arrival time of a frame's last new block (for the apply time). Receiving goes on
        // while they are synced: the store writer sees a leader's blocks once written, so the
        // fdatasync is not between the leader and visibility here.
        let mut inflight: VecDeque<(Appended, Option<Instant>)> = VecDeque::new();
        let mut waiting_since = Instant::now();
        let mut frame_events = 0u64;
        // A connection counts as working (failedConnects back to 0) only once it brings a new
        // block or shows this server level with the leader (the machine's progress): one that
        // connects and then stalls must not look healthy however often it reconnects.
        let progressed = |machine: &mut FollowerStream| {
            if machine.take_progress() {
                self.made_progress();
            }
        };
        // The loop ends only with the session (an error, or the leader closing it).
        let ended: Result<(), SessionError> = async {
            loop {
                let next_taken = inflight.len() - machine.untaken();
                let taken = inflight.get(next_taken).map(|(appended, _)| appended.taken());
                let taken = async {
                    match taken {
                        Some(taken) => taken.await,
                        None => std::future::pending().await,
                    }
                };
                let synced = async {
                    match inflight.front_mut() {
                        Some((appended, _)) => appended.await,
                        None => std::future::pending().await,
                    }
                };
                let piece = tokio::select! {
                    biased;
                    result = synced => {
                        let Some((_, received)) = inflight.pop_front() else {
                            continue;
                        };
                        let due = machine.on_durable(result.is_ok());
                        result.map_err(|e| {
                            SessionError::fatal(
                                errors::LEADER_ERROR,
                                format!("cannot store the leader's block: {e}"),
                            )
                        })?;
                        {
                            let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
                            runtime.last_processed = runtime.last_processed.max(machine.durable());
                        }
                        if let Some(AckDue(tick)) = due {
                            if let Some(received) = received {
                                self.runtime
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .total_apply_time += received.elapsed().as_secs_f64();
                            }
                            self.ack(&mut stream, Tick::new(tick)).await?;
                        }
                        continue;
                    }
                    () = taken => {
                        machine.on_taken();
                        continue;
                    }
                    held = self.node.store_writer.applied(Tick::new(u64::MAX)) => {
                        return Err(match held {
                            Err(tickship_storage::Error::ApplyConflict { tick, reason }) => {
                                SessionError::fatal(
                                    num::DUPLICATE_NAME,
                                    format!(
                                        "cannot apply the leader's tick {tick}: {reason}; resolve the \
                                         conflict (or set ignoreErrors) and start the applier again"
                                    ),
                                )
                            }
                            Err(error) if error.is_no_space() => SessionError::disk_full(format!(
                                "this server's document store cannot write: {error}"
                            )),
                            Err(error @ tickship_storage::Error::Corruption { .. }) => {
                                match self.node.store_writer.damage() {
                                    Some(damage) => SessionError::damaged(damage),
                                    None => SessionError::fatal(
                                        errors::LEADER_ERROR,
                                        format!("this server's store writer stopped: {error}"),
                                    ),
                                }
                            }
                            other => SessionError::fatal(
                                errors::LEADER_ERROR,
                                format!("this server's store writer stopped: {other:?}"),
                            ),
                        });
                    }
                    piece = stream.recv_piece(silence), if machine.can_receive() => piece,
                };
                let piece = piece.map_err(|e| match e {
                    // A leader that sends what the protocol (or maxPacketSize) does not allow will
                    // send it again on a new connection.
                    NetError::Protocol(message) => SessionError::fatal(
                        num::INVALID_RESPONSE,
                        format!(
                            "invalid frame from the leader at {}: {message} (maxPacketSize is {})",
                            config.endpoint, config.max_packet_size
                        ),
                    ),
                    e => SessionError::connect(format!(
                        "connection to leader at {} lost: {e}",
                        config.endpoint
                    )),
                })?;
                let leader_last = match piece {
                    Piece::Block {
                        leader_last,
                        block,
                        frame_end,
                    } => {
                        if let Some(payload) = block {
                            let bytes = payload.len();
                            let block = leader_block(payload)?;
                            let ticks = block.ticks();
                            let span = BlockSpan {
                                first: ticks.first.get(),
                                last: ticks.last.get(),
                                bytes,
                            };
                            if until.is_some_and(|until| span.last > until.get()) {
                                return Ok(());
                            }
                            let invalid = |m| SessionError::fatal(num::INVALID_RESPONSE, m);
                            let mut placement = machine.on_block(span).map_err(invalid)?;
                            if let Placement::Begin { start, from } = placement {
                                let last = self.begin_log(Tick::new(start + 1), Tick::new(from))?;
                                machine.begun(last.get());
                                placement = machine.on_block(span).map_err(invalid)?;
                            }
                            {
                                let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
                                runtime.total_bytes_received += bytes as u64;
                                runtime.heard_from_leader(leader_last);
                                runtime.last_received = runtime.last_received.max(machine.last_stored());
                            }
                            if placement == Placement::Store {
                                // Documents and removals are counted by the store writer, which
                                // decodes the records anyway; here only the record count is needed.
                                frame_events += u64::from(block.record_count());
                                // `last_processed` (where a retry or restart resumes) moves once
                                // the block is durable: one whose append fails (a full disk)
                                // must be asked for again, or the log would have a gap.
                                let appended = self.node.wal.submit_block(block).map_err(|e| {
                                    SessionError::fatal(
                                        errors::LEADER_ERROR,
                                        format!("cannot store the leader's block: {e}"),
                                    )
                                })?;
                                inflight.push_back((appended, None));
                                progressed(&mut machine);
                                if let Some(until) = until {
                                    SyncCounters::add(&self.sync_counters.bytes, bytes as u64);
                                    if span.last == until.get() {
                                        return Ok(());
                                    }
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
                                .heard_from_leader(idle.last_tick);
                            let AckDue(durable) = machine.on_idle(idle.last_tick);
                            progressed(&mut machine);
                            self.runtime_changed.notify_waiters();
                            self.track_distance(idle.last_tick);
                            self.ack(&mut stream, Tick::new(durable)).await?;
                            // The leader has sent all it has, and `until` was not among it
                            // (else the session would have ended): waiting would never end.
                            if until.is_some() {
                                return Ok(());
                            }
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
                match machine.on_frame_end() {
                    FrameEnd::Nothing => {}
                    FrameEnd::AckNow(AckDue(tick)) => self.ack(&mut stream, Tick::new(tick)).await?,
                    FrameEnd::AckWhenDurable => {
                        if let Some((_, at)) = inflight.back_mut() {
                            *at = Some(received);
                        }
                    }
                }
                let fetch_time = waiting_since.elapsed().as_secs_f64();
                waiting_since = received;
                let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
                runtime.heard_from_leader(leader_last);
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
        .await;
        // Blocks handed to the WAL before the session ended are stored, or fail, on their own:
        // wait for each, so that `last_processed`, where the next session resumes, names exactly
        // the last block stored (not one still queued, nor one whose append failed).
        for (appended, _) in inflight.drain(..) {
            let stored = appended.await.is_ok();
            machine.on_durable(stored);
            if !stored {
                break;
            }
            let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
            runtime.last_processed = runtime.last_processed.max(machine.durable());
        }
        ended
    }

    /// Fetches the block at `damage` of this server's log again from the leader, writes it
    /// over the damaged copy and lets the store writer go on. The follower's log holds the
    /// leader's blocks byte for byte, so the leader's block starting at the same tick is the
    /// same bytes; the WAL checks it is the block its seal index names there.
    async fn repair(&self, config: &ApplierConfig, damage: &Damage) -> Result<(), SessionError> {
        let wal = self.node.wal.clone();
        let failed = |why: String| {
            SessionError::fatal(
                errors::LEADER_ERROR,
                format!(
                    "this server's copy of the leader's log is damaged ({}), and {why}; set this \
                     follower up again",
                    damage.error()
                ),
            )
        };
        let (first, bytes) = wal
            .expected_block(damage.segment, damage.offset)
            .map_err(|e| failed(format!("its block cannot be located: {e}")))?;
        self.progress(format!(
            "fetching the block at tick {first} again from the leader: this server's copy is \
             damaged ({})",
            damage.error()
        ));
        tracing::warn!(%first, "fetching a damaged block again from the leader: {}", damage.error());
        let block = self.fetch_block(config, first, bytes).await.map_err(|e| {
            if e.retry {
                e // the leader is unreachable now: retried like any connection failure
            } else {
                failed(format!("the leader did not give it again: {}", e.message))
            }
        })?;
        let (segment, offset) = (damage.segment, damage.offset);
        tokio::task::block_in_place(|| wal.repair_block(segment, offset, &block))
            .map_err(|e| failed(format!("the leader's copy could not be written: {e}")))?;
        self.node.store_writer.retry();
        Ok(())
    }

    /// The leader's block that starts at tick `first` (`bytes` long in a segment, at most).
    async fn fetch_block(
        &self,
        config: &ApplierConfig,
        first: Tick,
        bytes: u64,
    ) -> Result<Block, SessionError> {
        let Opened {
            connection: _connection,
            mut stream,
            ..
        } = self.handshake(config).await?;
        stream.streaming_blocks();
        let chunk = bytes.clamp(64 << 10, config.frame_bytes_max() as u64);
        stream
            .send(&Tail {
                from: first.get().saturating_sub(1),
                chunk_bytes: chunk,
            })
            .await
            .map_err(|e| SessionError::connect(e.to_string()))?;
        let silence = Duration::from_secs_f64(config.request_timeout);
        loop {
            let piece = stream.recv_piece(silence).await.map_err(|e| {
                SessionError::connect(format!(
                    "connection to leader at {} lost: {e}",
                    config.endpoint
                ))
            })?;
            match piece {
                Piece::Block {
                    block: Some(payload),
                    ..
                } => {
                    let block = leader_block(payload)?;
                    let ticks = block.ticks();
                    if ticks.first == first {
                        return Ok(block);
                    }
                    if ticks.last >= first {
                        return Err(SessionError::fatal(
                            num::INVALID_RESPONSE,
                            format!(
                                "the leader's log has no block starting at tick {first} (its \
                                 block holding it is {ticks})"
                            ),
                        ));
                    }
                }
                Piece::Block { block: None, .. } => {}
                Piece::Frame(frame) if frame.kind == Kind::Close => {
                    let close = Close::from_frame(&frame)
                        .map_err(|e| SessionError::fatal(num::INVALID_RESPONSE, e.to_string()))?;
                    return Err(SessionError::fatal(close.error_num, close.error_message));
                }
                Piece::Frame(frame) if frame.kind == Kind::Idle => {
                    let idle = Idle::from_frame(&frame)
                        .map_err(|e| SessionError::fatal(num::INVALID_RESPONSE, e.to_string()))?;
                    if idle.last_tick < first.get() {
                        return Err(SessionError::fatal(
                            num::INVALID_RESPONSE,
                            format!("the leader's log ends at tick {} before it", idle.last_tick),
                        ));
                    }
                }
                Piece::Frame(_) => {}
            }
        }
    }

    /// This session brought something: connecting works again.
    pub(super) fn made_progress(&self) {
        let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        runtime.failed_connects = 0;
        runtime.last_error = LastError::default();
    }

    /// Sizes the memtables by how far the applied tick is behind `leader_last`: small while
    /// tailing (short flushes, low lag), large far behind (faster catch-up). A store keeping its
    /// documents in the WAL keeps the small ones (`TAILING_MEMTABLE_BYTES_KEYS_ONLY`): its
    /// memtables hold keys only, and small ones catch up as fast for far less memory
    /// (docs/benchmarks/2026-11-23-follower-memory.md, runs 2 and 6). Far behind, such a store
    /// holds one memtable at a time instead (`DocStore::set_far_behind`).
    pub(super) fn track_distance(&self, leader_last: u64) {
        let applied = self.node.store_writer.applied_tick().get();
        let behind = leader_last.saturating_sub(applied);
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note_distance(applied);
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

    /// Tells the leader what is durable (`stored`) and visible here.
    pub(super) async fn ack(
        &self,
        stream: &mut FramedStream,
        stored: Tick,
    ) -> Result<(), SessionError> {
        let ack = Ack {
            durable: stored.get(),
            applied: self.node.store_writer.applied_tick().get(),
        };
        stream
            .send(&ack)
            .await
            .map_err(|e| SessionError::connect(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in a test, a panic is the failure report
mod tests {
    use super::*;

    // Goal: without a chunkSize a follower asks for frames a quarter of its receive buffer,
    // within 64 KiB..4 MiB; a chunkSize of its own is kept as it is (the leader caps it).
    #[test]
    fn chunk_follows_the_receive_buffer() {
        assert_eq!(chunk_bytes(0, 4 << 20), 1 << 20);
        assert_eq!(chunk_bytes(0, 64 << 10), 64 << 10);
        assert_eq!(chunk_bytes(0, 1 << 30), 4 << 20);
        assert_eq!(chunk_bytes(300_000, 64 << 10), 300_000);
    }
}
