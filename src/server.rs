//! Starting and stopping `tickshipd`: data directory, WAL, document store, replay, replication
//! (the QUIC listener for followers, the applier when following), HTTP.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::http::Request;
use tickship_storage::docstore::{DocStore, StoreOptions, StoreWriter, StoreWriterOptions};
use tickship_storage::wal::{IoEngine, RetentionPolicy, SyncPolicy};
use tickship_storage::{Wal, WalOptions};

use crate::auth::{Auth, PasswordSource};
use crate::config::{parse_endpoint, DaemonArgs};
use crate::http::{self, AppState};
use crate::leader::followers::Clients;
use crate::node::Node;

fn wal_options(args: &DaemonArgs) -> Result<WalOptions> {
    let sync = match args.wal_sync_policy.as_str() {
        "group" => SyncPolicy::EveryGroup,
        "interval" => SyncPolicy::Interval(Duration::from_millis(args.wal_sync_interval_ms.max(1))),
        "never" => SyncPolicy::Never,
        other => bail!("--wal.sync-policy {other:?}: expected group, interval or never"),
    };
    let io_engine: IoEngine = args
        .wal_io_engine
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--wal.io-engine: {e}"))?;
    let seconds = |value: f64, flag: &str| {
        if value.is_finite() && value >= 0.0 {
            Ok(Duration::from_secs_f64(value))
        } else {
            bail!("{flag} must be a number of seconds >= 0")
        }
    };
    Ok(WalOptions {
        segment_bytes: args.wal_segment_size,
        sync,
        io_engine,
        retention: RetentionPolicy {
            historic_count: args.wal_historic_logfiles,
            file_timeout: seconds(args.wal_file_timeout, "--wal.file-timeout")?,
            file_timeout_initial: seconds(
                args.wal_file_timeout_initial,
                "--wal.file-timeout-initial",
            )?,
            archive_bytes_max: args.wal_archive_size_limit,
        },
        ..WalOptions::default()
    })
}

/// Raises the descriptor limit and returns the files the store may keep open
/// (`--rocksdb.max-open-files`; 0: from the limit), saying both in the log.
fn store_open_files(flag: i32) -> i32 {
    let limit = match crate::util::raise_descriptor_limit() {
        Ok((before, after)) => {
            if after > before {
                tracing::info!("file descriptors: soft limit raised from {before} to {after}");
            }
            Some(after)
        }
        Err(e) => {
            tracing::warn!("file descriptors: cannot read or raise the limit: {e}");
            None
        }
    };
    let files = match (flag, limit) {
        (0, Some(limit)) => crate::util::store_file_budget(limit),
        // Unknown limit: RocksDB's usual 1024 minus the same reserve.
        (0, None) => crate::util::store_file_budget(1024),
        (files, _) => files,
    };
    match (files, limit) {
        (-1, _) => tracing::warn!(
            "--rocksdb.max-open-files -1: the store keeps every file open; reads fail once it has \
             more files than the descriptor limit ({}) allows",
            limit.map_or("unknown".to_string(), |limit| limit.to_string())
        ),
        (files, Some(limit)) if files as u64 >= limit => tracing::warn!(
            "--rocksdb.max-open-files {files} is not below the descriptor limit ({limit}): reads \
             fail with \"Too many open files\" once the store holds that many files"
        ),
        (files, _) => tracing::info!("document store: at most {files} files open"),
    }
    files
}

/// The server id, created on first start.
fn server_id(dir: &Path) -> Result<String> {
    let path = dir.join("SERVER_ID");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        Ok(_) => bail!("{} is empty", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // 15 decimal digits, like ArangoDB's.
            let id = (u64::from_le_bytes(crate::util::random_bytes::<8>()) % 900_000_000_000_000
                + 100_000_000_000_000)
                .to_string();
            std::fs::write(&path, &id).with_context(|| format!("write {}", path.display()))?;
            std::fs::File::open(&path)?.sync_all()?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Runs the daemon until SIGTERM or SIGINT, then stops gracefully: no new writes, everything
/// acknowledged applied and synced, exit status 0.
pub async fn run(args: DaemonArgs) -> Result<()> {
    let dir = &args.directory;
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the data directory {} (--database.directory)",
            dir.display()
        )
    })?;
    let _lock = crate::util::DirectoryLock::take(dir)?;
    let address = parse_endpoint(&args.endpoint).context("--server.endpoint")?;
    // Both ports before anything slow (opening the store, replaying the WAL): a port in use
    // fails at once.
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (--server.endpoint)"))?;
    let local = listener.local_addr()?;
    // Replication: QUIC on the UDP port of the HTTP endpoint unless told otherwise.
    let quic_addr = match &args.replication_endpoint {
        Some(endpoint) => parse_endpoint(endpoint).context("--replication.endpoint")?,
        None => local,
    };
    let quic_socket = tickship_net::transport::bind_udp(quic_addr).with_context(|| {
        format!("cannot listen for followers on udp {quic_addr} (--replication.endpoint)")
    })?;
    let server_id = server_id(dir)?;
    let source = PasswordSource {
        flag: args.password.clone(),
        env: std::env::var("TICKSHIP_ROOT_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()),
        file: args.password_file.clone(),
    };
    let auth = Auth::open(dir, args.authentication, &source).context("set up authentication")?;
    if !args.authentication {
        tracing::warn!("authentication is off (--server.authentication false): anyone who can connect can read and write");
    }
    let max_open_files = store_open_files(args.rocksdb_max_open_files);
    // A scan holds every level-0 file open at once, with its blob file, whatever the budget: a
    // stop trigger above half the budget lets a scan outgrow it while compaction is behind.
    let level0_files = u64::from(args.rocksdb_level0_stop_trigger) * 2;
    if max_open_files > 0 && level0_files > max_open_files as u64 {
        tracing::warn!(
            "--rocksdb.level0-stop-trigger {} lets level 0 hold up to {level0_files} files with \
             their blob files, more than the {max_open_files} the store may keep open: a scan \
             opens them all at once and may fail with \"Too many open files\" while compaction \
             is behind; keep it below half of that",
            args.rocksdb_level0_stop_trigger
        );
    }
    let store_options = StoreOptions {
        write_buffer_bytes: args.rocksdb_write_buffer_size,
        write_buffers_max: args.rocksdb_max_write_buffer_number,
        total_write_buffer_bytes: args.rocksdb_total_write_buffer_size,
        block_cache_bytes: args.rocksdb_block_cache_size,
        blob_compression: args.rocksdb_blob_compression_type,
        blob_gc: args.rocksdb_enable_blob_garbage_collection,
        blob_gc_age_cutoff: args.rocksdb_blob_garbage_collection_age_cutoff,
        level0_compaction_trigger: args.rocksdb_level0_compaction_trigger,
        max_bytes_for_level_base: args.rocksdb_max_bytes_for_level_base,
        level0_slowdown_trigger: args.rocksdb_level0_slowdown_trigger,
        level0_stop_trigger: args.rocksdb_level0_stop_trigger,
        tailing_write_buffer_bytes: args.replication_tailing_write_buffer_size,
        max_open_files,
        low_priority_compactions: args.rocksdb_low_priority_compactions,
        documents_in_wal: args.rocksdb_documents_in_wal,
    };
    let store = Arc::new(
        DocStore::open_with(dir.join("store"), &store_options)
            .context("open the document store")?,
    );
    // A store that keeps its documents in the WAL reads them one frame at a time.
    let mut wal_options = wal_options(&args)?;
    if store.documents_in_wal() {
        wal_options.frame_bytes = tickship_storage::wal::block::FRAME_RAW_BYTES;
    }
    let wal =
        Arc::new(Wal::open(dir.join("wal"), wal_options).context("open the write-ahead log")?);
    let report = wal.recovery_report();
    if let Some(torn) = &report.torn_tail {
        tracing::warn!(?torn, "recovery cut a torn tail");
    }
    store.attach_wal(wal.clone());
    let started = std::time::Instant::now();
    let replay_from = store.applied_tick();
    if replay_from > wal.last_tick() {
        bail!(
            "the document store has applied up to tick {replay_from} but the WAL ends at tick {}: \
             the WAL in {} is missing or older than the store; refusing to start (new writes \
             would reuse ticks)",
            wal.last_tick(),
            dir.join("wal").display()
        );
    }
    // A follower's WAL holds its leader's blocks: the replay keeps only the collections its
    // applier configuration replicates.
    let saved = crate::follower::load_saved(dir)?;
    // Per-database appliers that apply their databases: the replay keeps those databases only.
    let database_filter = crate::follower::saved_filter(dir)?;
    let for_databases = database_filter.is_some();
    if let Some(filter) = database_filter {
        store.set_store_filter(Some(filter));
        store.set_ignore_conflicts(saved.0.ignore_errors);
    } else if crate::follower::is_following(&saved.1) {
        store.set_filter(Some(saved.0.filter()));
        store.set_ignore_conflicts(saved.0.ignore_errors);
    }
    let applier_options = StoreWriterOptions {
        flush_interval: Duration::from_secs_f64(args.store_flush_interval.max(0.1)),
        threads: match args.applier_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        },
        thread_nice: args.replication_thread_nice,
        ..StoreWriterOptions::default()
    };
    let applier = StoreWriter::start(wal.clone(), store.clone(), applier_options)
        .context("start the store writer")?;
    // Serve only once every durable tick is applied: reads must see every acknowledged write.
    let target = wal.last_tick();
    match tokio::task::block_in_place(|| applier.wait_applied(target, Duration::from_secs(3600))) {
        // A follower's record that conflicts with what this server holds: serve, so that its
        // applier can show the error and be started again once the conflict is resolved.
        Err(tickship_storage::Error::ApplyConflict { tick, reason }) => tracing::error!(
            "the replay stopped at tick {tick}: {reason}; start the applier once that is resolved \
             (or with ignoreErrors)"
        ),
        // A follower's copy of its leader's log with a damaged block: serve, so that its
        // applier fetches the block again from the leader (a leader has no one to ask).
        Err(error @ tickship_storage::Error::Corruption { .. })
            if for_databases || crate::follower::is_following(&saved.1) =>
        {
            tracing::error!(
                "the replay stopped before a damaged block: {error}; the applier fetches it \
                 again from the leader once it runs"
            )
        }
        other => other.context("replay the WAL into the document store")?,
    }
    tracing::info!(
        from = %replay_from,
        to = %target,
        seconds = started.elapsed().as_secs_f64(),
        "replayed the WAL into the document store"
    );
    let node = Arc::new(Node::new(
        wal.clone(),
        store.clone(),
        applier,
        dir,
        server_id,
        args.max_document_bytes,
    )?);
    let auth = Arc::new(auth);
    let clients = Arc::new(Clients::open(
        Duration::from_secs_f64(args.replication_client_ttl.max(1.0)),
        Duration::from_secs_f64(args.replication_dump_barrier_ttl),
        dir,
        &wal,
    )?);
    let identity = crate::leader::shipper::identity(
        dir,
        args.ssl_certfile.as_deref(),
        args.ssl_keyfile.as_deref(),
    )?;
    let shipping = Arc::new(crate::leader::shipper::Shipping {
        node: node.clone(),
        auth: auth.clone(),
        clients: clients.clone(),
        endpoint: format!("tcp://{local}"),
    });
    let replication = ReplicationRuntime::start(args.replication_thread_nice)?;
    let quic =
        crate::leader::shipper::listen(quic_socket, &identity, shipping, replication.handle())
            .context("listen for followers (QUIC)")?;
    let applier = crate::follower::Applier::open(
        node.clone(),
        dir.to_path_buf(),
        crate::follower::Receiving {
            leader_fingerprint: args.leader_fingerprint.clone(),
            buffer_bytes: args.replication_receive_buffer_size,
            sync_max_rate: args.replication_sync_max_rate,
            sync_copy_files: args.replication_sync_copy_files,
        },
        saved,
        replication.handle().clone(),
        for_databases,
    )?;
    let appliers = crate::follower::DatabaseAppliers::open(applier.clone(), dir)?;
    // Batches end at their TTL even when no client asks for them again: each holds segment
    // collection off while it lives.
    let batches = Arc::new(crate::leader::batches::Batches::default());
    {
        let batches = batches.clone();
        let clients = clients.clone();
        let wal = wal.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                every.tick().await;
                clients.sweep_dumps(&wal);
                let ended = batches.sweep();
                if ended > 0 {
                    tracing::info!(ended, "replication batches expired");
                }
            }
        });
    }
    let state = Arc::new(AppState {
        node: node.clone(),
        auth,
        clients,
        batches: batches.clone(),
        applier: applier.clone(),
        appliers: appliers.clone(),
        max_body_bytes: args.max_body_bytes,
        endpoint: format!("tcp://{local}"),
        jobs: Default::default(),
    });
    if args.replication_auto_start && for_databases {
        appliers.auto_start().await;
    } else if args.replication_auto_start && applier.config().auto_start {
        match applier.start(None) {
            Ok(()) => tracing::info!("replication applier started (autoStart)"),
            Err(e) => tracing::warn!("replication applier did not start: {}", e.message),
        }
    }
    // Tests and scripts read this line to learn the port.
    println!(
        "tickshipd listening on {local} (server id {}, engine {}); replication on udp {} \
         (certificate sha256 {})",
        node.server_id,
        wal.engine_name(),
        quic.local_addr()
            .map_or_else(|_| quic_addr.to_string(), |a| a.to_string()),
        identity.fingerprint()
    );
    tracing::info!("listening on http://{local}");
    let app = axum::Router::new().fallback(move |request: Request<Body>| {
        let state = state.clone();
        async move { http::handle(state, request).await }
    });
    let shutdown_node = node.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: no new writes; finishing the ones in flight");
            shutdown_node.shutting_down.store(true, Ordering::Release);
        })
        .await
        .context("serve HTTP")?;
    // Followers get a Close (30) from their shippers; the applier saves its state.
    applier.stop().await;
    quic.close(0u32.into(), b"shutting down");
    // Every acknowledged write is durable already; apply what is left, persist, sync, close.
    node.store_writer.stop();
    wal.close().context("close the write-ahead log")?;
    store.flush().context("flush the document store")?;
    store.stop_background_work();
    tracing::info!("stopped");
    Ok(())
}

/// The thread that ships the log to followers and receives it from a leader, apart from the
/// HTTP workers: a shipper waiting for a worker busy parsing a 1 MB batch waits for it to finish.
struct ReplicationRuntime(Option<tokio::runtime::Runtime>);

impl ReplicationRuntime {
    /// `nice`: the thread's nice value (`--replication.thread-nice`), 0 to leave it.
    fn start(nice: i32) -> anyhow::Result<ReplicationRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("replication")
            .on_thread_start(move || tickship_storage::fs::set_thread_nice_or_say(nice))
            .enable_all()
            .build()
            .context("start the replication runtime")?;
        Ok(ReplicationRuntime(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .map(tokio::runtime::Runtime::handle)
            .expect("the runtime lives until dropped")
    }
}

impl Drop for ReplicationRuntime {
    /// Without waiting: dropping a runtime blocks, which the server's own runtime forbids.
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
