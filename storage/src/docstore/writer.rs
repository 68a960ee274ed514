//! The store writer: the one thread that applies the WAL to the document store, in tick order
//! (with `StoreWriterOptions::threads` helpers for each group).
//!
//! It reads durable blocks from the store's applied tick on (so a restart replays exactly what
//! RocksDB did not persist), applies whatever is available as one group, and publishes the new
//! applied tick to waiters: a leader answers a write once its ticks are applied, so a client
//! reads its own writes. After each group it tells the WAL how far RocksDB has persisted the
//! store (`Wal::set_store_tick`), so retention never deletes what a restart would need, and it
//! starts a flush when the unpersisted part grows past `flush_ticks_max` or `flush_interval`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::{ApplyContext, DocStore, PreparedCollection, PreparedRewrite};
use super::{CollectionFilter, DatabaseRule, StoreFilter};
use crate::error::{Error, Result};
use crate::tick::{SegmentId, Tick};
use crate::wal::segment::SealedSegment;
use crate::wal::{SegmentRange, Wal};
use std::collections::BTreeMap;

/// When the store writer asks RocksDB to persist the store.
#[derive(Clone, Debug)]
pub struct StoreWriterOptions {
    /// Start a flush once this many ticks are applied but not persisted.
    pub flush_ticks_max: u64,
    /// Start a flush at least this often while anything is unpersisted.
    pub flush_interval: Duration,
    /// Bytes of blocks applied as one group at most (a group holds at least one block). Each
    /// block of a group is decompressed into its own buffer, so this bounds the apply buffers of
    /// a follower behind its leader. The default, about one block of a 1,000-document batch,
    /// held the least memory of the sizes tried, and a follower caught up no slower with it; a
    /// follower keeping up applies groups that small anyway.
    pub group_bytes_max: usize,
    /// Threads that apply a group (`--replication.applier-threads`); 1 applies on the store
    /// writer's own thread.
    pub threads: usize,
    /// Nice value of the store writer's thread, which makes logged changes visible; 0 leaves
    /// it as it is. Best effort: lowering it needs root or CAP_SYS_NICE.
    pub thread_nice: i32,
}

impl Default for StoreWriterOptions {
    fn default() -> StoreWriterOptions {
        StoreWriterOptions {
            flush_ticks_max: 1_000_000,
            flush_interval: Duration::from_secs(30),
            group_bytes_max: 256 << 10,
            threads: 1,
            thread_nice: 0,
        }
    }
}

/// What the store writer applied since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreWriterTotals {
    /// Document puts.
    pub documents: u64,
    /// Document removals.
    pub removals: u64,
    /// Records left out by the store's collection filter.
    pub excluded: u64,
    /// Conflicting records skipped as allowed (`DocStore::set_ignore_conflicts`).
    pub ignored: u64,
}

impl StoreWriterTotals {
    /// The totals since `base` was taken.
    pub fn since(self, base: StoreWriterTotals) -> StoreWriterTotals {
        StoreWriterTotals {
            documents: self.documents.saturating_sub(base.documents),
            removals: self.removals.saturating_sub(base.removals),
            excluded: self.excluded.saturating_sub(base.excluded),
            ignored: self.ignored.saturating_sub(base.ignored),
        }
    }
}

struct Shared {
    applied: AtomicU64,
    /// The store's persisted tick, as the thread last read it.
    persisted: AtomicU64,
    documents: AtomicU64,
    removals: AtomicU64,
    excluded: AtomicU64,
    ignored: AtomicU64,
    failed: Mutex<Option<String>>,
    /// Why the store writer waits for disk space (`Error::StoreFull`), while it does.
    full: Mutex<Option<String>>,
    /// The damaged block of the WAL the store writer cannot read past (`Error::Corruption`):
    /// it waits for `retry` (the block repaired, say with a follower's leader's copy).
    damaged: Mutex<Option<Damage>>,
    /// The conflict the store writer waits on (`Error::ApplyConflict`): its tick and reason.
    conflict: Mutex<Option<(Tick, String)>>,
    /// Set to make the store writer try the group that conflicted again.
    retry: AtomicBool,
    /// Changes of which databases the store keeps, done by the thread between two groups.
    requests: Mutex<Vec<Request>>,
    stop: AtomicBool,
    changed: Condvar,
    lock: Mutex<()>,
    notify: tokio::sync::Notify,
}

impl Shared {
    /// Wakes whoever waits for the store writer (`wait_until`, `applied`).
    fn wake(&self) {
        {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.changed.notify_all();
        }
        self.notify.notify_waiters();
    }

    /// Publishes the persisted tick `upkeep` last read, if it moved.
    fn publish_persisted(&self, upkeep: &Upkeep) {
        if self
            .persisted
            .swap(upkeep.persisted.get(), Ordering::AcqRel)
            != upkeep.persisted.get()
        {
            self.wake();
        }
    }
}

/// Where the store writer found a block of the WAL that fails its checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub segment: SegmentId,
    pub path: std::path::PathBuf,
    pub offset: u64,
    pub reason: String,
}

impl Damage {
    fn of(error: &Error) -> Option<Damage> {
        match error {
            Error::Corruption {
                segment_id,
                path,
                offset,
                reason,
            } => Some(Damage {
                segment: *segment_id,
                path: path.clone(),
                offset: *offset,
                reason: reason.clone(),
            }),
            _ => None,
        }
    }

    /// As the error the reader gave.
    pub fn error(&self) -> Error {
        Error::Corruption {
            segment_id: self.segment,
            path: self.path.clone(),
            offset: self.offset,
            reason: self.reason.clone(),
        }
    }
}

/// A change of which databases the store keeps, with where its outcome goes.
enum Request {
    Admit {
        db: String,
        collections: CollectionFilter,
        after: Tick,
        done: std::sync::mpsc::Sender<Result<Tick>>,
    },
    LeaveOut {
        db: String,
        done: std::sync::mpsc::Sender<Result<Tick>>,
    },
}

/// Handle of the store writer thread.
pub struct StoreWriter {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl StoreWriter {
    /// Starts applying `wal` to `store` from the store's applied tick.
    pub fn start(
        wal: Arc<Wal>,
        store: Arc<DocStore>,
        options: StoreWriterOptions,
    ) -> Result<StoreWriter> {
        let shared = Arc::new(Shared {
            applied: AtomicU64::new(store.applied_tick().get()),
            persisted: AtomicU64::new(store.persisted_tick()?.get()),
            documents: AtomicU64::new(0),
            removals: AtomicU64::new(0),
            excluded: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            failed: Mutex::new(None),
            full: Mutex::new(None),
            damaged: Mutex::new(None),
            conflict: Mutex::new(None),
            retry: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            changed: Condvar::new(),
            lock: Mutex::new(()),
            notify: tokio::sync::Notify::new(),
        });
        let mut reader = wal.reader_after(store.applied_tick())?;
        let mut context = ApplyContext::with_threads_at_nice(options.threads, options.thread_nice)?;
        let worker = shared.clone();
        let path = store.path().to_path_buf();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                crate::fs::set_thread_nice_or_say(options.thread_nice);
                if let Err(error) = run(&wal, &store, &mut reader, &mut context, &worker, &options)
                {
                    let reason = crate::wal::error_chain(&error);
                    tracing::error!("store writer stopped: {reason}");
                    *worker.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                }
                worker.stop.store(true, Ordering::Release);
                worker.wake();
            })
            .map_err(|e| Error::io("spawn store writer", path, e))?;
        Ok(StoreWriter {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn applied_tick(&self) -> Tick {
        Tick::new(self.shared.applied.load(Ordering::Acquire))
    }

    /// Takes `tick` as applied without a block (the store was declared to hold the log through
    /// it: `DocStore::assume_applied`), waking those waiting for it.
    pub fn note_applied(&self, tick: Tick) {
        self.shared.applied.fetch_max(tick.get(), Ordering::AcqRel);
        self.shared.wake();
    }

    /// What was applied since this store writer started.
    pub fn totals(&self) -> StoreWriterTotals {
        StoreWriterTotals {
            documents: self.shared.documents.load(Ordering::Relaxed),
            removals: self.shared.removals.load(Ordering::Relaxed),
            excluded: self.shared.excluded.load(Ordering::Relaxed),
            ignored: self.shared.ignored.load(Ordering::Relaxed),
        }
    }

    /// The damaged WAL block that holds the store writer, if any.
    pub fn damage(&self) -> Option<Damage> {
        self.shared
            .damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The conflict that holds the store writer before a group, if any: its tick and reason.
    pub fn conflict(&self) -> Option<(Tick, String)> {
        self.shared
            .conflict
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes the store keep database `db` (under `collections`) from the state after tick
    /// `after`: if the store applied the log past `after` while leaving `db` out, its records
    /// from there on are applied from this server's WAL first (a catch-up, then a flush); if
    /// not, its records up to `after` will be skipped. The store's filter must keep databases
    /// one by one (`StoreFilter::Databases`). Answers the applied tick at which `db` joined.
    /// Blocking: the store writer does it between two groups.
    pub fn admit_database(
        &self,
        db: &str,
        collections: CollectionFilter,
        after: Tick,
    ) -> Result<Tick> {
        let (done, outcome) = std::sync::mpsc::channel();
        self.request(Request::Admit {
            db: db.to_string(),
            collections,
            after,
            done,
        })?;
        self.wait_request(&outcome)
    }

    /// Makes the store leave database `db` out from the next group on, and flushes it: answers
    /// the tick through which its records are applied and persisted (applying the log again
    /// from there, with `admit_database`, loses nothing).
    pub fn leave_out_database(&self, db: &str) -> Result<Tick> {
        let (done, outcome) = std::sync::mpsc::channel();
        self.request(Request::LeaveOut {
            db: db.to_string(),
            done,
        })?;
        self.wait_request(&outcome)
    }

    fn request(&self, request: Request) -> Result<()> {
        self.check()?;
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(request);
        self.shared.wake();
        Ok(())
    }

    fn wait_request(&self, outcome: &std::sync::mpsc::Receiver<Result<Tick>>) -> Result<Tick> {
        loop {
            match outcome.recv_timeout(Duration::from_millis(200)) {
                Ok(result) => return result,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    self.check()?;
                    return Err(Error::Closed);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => self.check()?,
            }
        }
    }

    /// Makes a store writer held by a conflict try its group again (after the conflict was
    /// resolved, or allowed to be skipped).
    pub fn retry(&self) {
        self.shared.retry.store(true, Ordering::Release);
        self.shared.wake();
    }

    fn check(&self) -> Result<()> {
        match &*self.shared.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(reason) => Err(Error::WriterFailed(format!("store writer: {reason}"))),
            None if self.shared.stop.load(Ordering::Acquire) => Err(Error::Closed),
            None => self.check_space(),
        }
    }

    /// The conflict or damaged block that holds the store writer, as an error.
    fn check_held(&self) -> Result<()> {
        if let Some((tick, reason)) = self.conflict() {
            return Err(Error::ApplyConflict { tick, reason });
        }
        match self.damage() {
            Some(damage) => Err(damage.error()),
            None => Ok(()),
        }
    }

    /// `Error::StoreFull` while the store writer waits for disk space.
    pub fn check_space(&self) -> Result<()> {
        match &*self.shared.full.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(reason) => Err(Error::StoreFull(reason.clone())),
            None => Ok(()),
        }
    }

    /// Waits until `tick` is applied (or the store writer stops, or `timeout` passes).
    pub fn wait_applied(&self, tick: Tick, timeout: Duration) -> Result<()> {
        self.wait_until(
            |shared| shared.applied.load(Ordering::Acquire) >= tick.get(),
            timeout,
        )
    }

    /// Waits until the store has persisted `tick` (or the store writer stops, or `timeout` passes).
    pub fn wait_persisted(&self, tick: Tick, timeout: Duration) -> Result<()> {
        self.wait_until(
            |shared| shared.persisted.load(Ordering::Acquire) >= tick.get(),
            timeout,
        )
    }

    fn wait_until(&self, reached: impl Fn(&Shared) -> bool, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.shared.lock.lock().unwrap_or_else(|p| p.into_inner());
        while !reached(&self.shared) {
            self.check()?;
            self.check_held()?;
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Closed);
            }
            guard = self
                .shared
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Waits, asynchronously, until `tick` is applied, or the store writer stops or is held by a
    /// conflict.
    pub async fn applied(&self, tick: Tick) -> Result<()> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.applied_tick() >= tick {
                return Ok(());
            }
            self.check()?;
            self.check_held()?;
            notified.await;
        }
    }

    /// Stops the thread once it has applied everything durable, and joins it.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    wal: &Arc<Wal>,
    store: &Arc<DocStore>,
    reader: &mut crate::wal::Reader,
    context: &mut ApplyContext,
    shared: &Shared,
    options: &StoreWriterOptions,
) -> Result<()> {
    let mut upkeep = Upkeep::new(wal, store)?;
    loop {
        serve_requests(wal, store, context, shared, options);
        // Wait for at least one block, then take what else is there, up to the group size.
        let next = match reader.wait_next(Duration::from_millis(200)) {
            Err(error) => match Damage::of(&error) {
                // The reader stays at the damaged block: once repaired, it is read again.
                Some(damage) => {
                    if !hold_damaged(wal, store, context, shared, options, damage) {
                        break; // stopping while held
                    }
                    continue;
                }
                None => return Err(error),
            },
            Ok(next) => next,
        };
        let first = match next {
            Some(block) => block,
            None => {
                if shared.stop.load(Ordering::Acquire) && wal.last_tick() <= store.applied_tick() {
                    break;
                }
                settle_before_write(wal, store)?;
                let kept = hold_while_full(shared, || {
                    store.record_applied(wal.durable_tick())?;
                    upkeep.run(wal, store, options)
                })?;
                if kept.is_none() {
                    break; // stopping while the disk is full
                }
                shared.publish_persisted(&upkeep);
                continue;
            }
        };
        let mut bytes = first.bytes().len();
        let mut group = vec![first];
        while bytes < options.group_bytes_max {
            match reader.next_block() {
                Ok(Some(block)) => {
                    bytes += block.bytes().len();
                    group.push(block);
                }
                Ok(None) => break,
                // A damaged block ends the group; the next `wait_next` meets it again.
                Err(error) if Damage::of(&error).is_some() => break,
                Err(error) => return Err(error),
            }
        }
        settle_before_write(wal, store)?;
        let Some(stats) = apply_or_hold(wal, store, &group, context, shared, options)? else {
            break; // stopping while held by a conflict
        };
        shared
            .documents
            .fetch_add(stats.documents, Ordering::Relaxed);
        shared.removals.fetch_add(stats.removals, Ordering::Relaxed);
        shared.excluded.fetch_add(stats.excluded, Ordering::Relaxed);
        shared.ignored.fetch_add(stats.ignored, Ordering::Relaxed);
        let applied = store.applied_tick();
        shared.applied.store(applied.get(), Ordering::Release);
        shared.wake();
        if hold_while_full(shared, || upkeep.run(wal, store, options))?.is_none() {
            break;
        }
        shared.publish_persisted(&upkeep);
    }
    // Closing: persist the store so the next start replays nothing (or only what is not yet
    // durable in the WAL).
    settle_before_write(wal, store)?;
    store.record_applied(wal.durable_tick())?;
    store.flush()?;
    report_store_tick(wal, store, store.persisted_tick()?);
    Ok(())
}

/// Does the requests waiting (between two groups, so that each takes effect at one tick).
fn serve_requests(
    wal: &Wal,
    store: &DocStore,
    context: &mut ApplyContext,
    shared: &Shared,
    options: &StoreWriterOptions,
) {
    let requests = std::mem::take(&mut *shared.requests.lock().unwrap_or_else(|p| p.into_inner()));
    for request in requests {
        match request {
            Request::Admit {
                db,
                collections,
                after,
                done,
            } => {
                let _ = done.send(admit(wal, store, context, options, &db, collections, after));
            }
            Request::LeaveOut { db, done } => {
                let _ = done.send(leave_out(store, &db));
            }
        }
    }
}

/// The databases `store` keeps one by one, or an error if it keeps every database.
fn database_rules(store: &DocStore) -> Result<BTreeMap<String, DatabaseRule>> {
    match store.filter().as_deref() {
        Some(StoreFilter::Databases(rules)) => Ok(rules.clone()),
        _ => Err(Error::Store {
            op: "change the databases kept",
            reason: "the store keeps every database (a server-level applier), not some".into(),
        }),
    }
}

fn admit(
    wal: &Wal,
    store: &DocStore,
    context: &mut ApplyContext,
    options: &StoreWriterOptions,
    db: &str,
    collections: CollectionFilter,
    after: Tick,
) -> Result<Tick> {
    let mut rules = database_rules(store)?;
    let applied = store.applied_tick();
    // Ticks at or below the log's floor were never in this log (the store got their state from
    // a restore or a sync): there is nothing of them to catch up.
    let from = after.max(wal.floor());
    let floor = if from < applied && wal.first_tick().is_some() {
        let only = Arc::new(StoreFilter::Databases(BTreeMap::from([(
            db.to_string(),
            DatabaseRule {
                collections: collections.clone(),
                floor: Tick::ZERO,
            },
        )])));
        let mut reader = wal.reader_after(from)?;
        let mut group = Vec::new();
        let mut bytes = 0;
        loop {
            let block = reader.next_block()?;
            let end = block.as_ref().is_none_or(|b| b.ticks().first > applied);
            if let Some(block) = block.filter(|_| !end) {
                bytes += block.bytes().len();
                group.push(block);
            }
            if (end || bytes >= options.group_bytes_max) && !group.is_empty() {
                store.catch_up(&group, context, from, applied, only.clone())?;
                group.clear();
                bytes = 0;
            }
            if end {
                break;
            }
        }
        // The caught-up records are older than the store's recorded tick: a replay would not
        // bring them back, so they are persisted before the database counts as kept.
        store.flush()?;
        tracing::info!(database = db, from = %from, through = %applied, "caught a database up from this server's log");
        Tick::ZERO
    } else {
        after
    };
    rules.insert(db.to_string(), DatabaseRule { collections, floor });
    store.set_store_filter(Some(StoreFilter::Databases(rules)));
    Ok(applied)
}

fn leave_out(store: &DocStore, db: &str) -> Result<Tick> {
    let mut rules = database_rules(store)?;
    rules.remove(db);
    store.set_store_filter(Some(StoreFilter::Databases(rules)));
    store.flush()?;
    store.persisted_tick()
}

/// Applies `group`; on a conflict, holds it (publishing the conflict) and tries again each time
/// `StoreWriter::retry` asks. `None`: the store writer is stopping while held.
fn apply_or_hold(
    wal: &Wal,
    store: &DocStore,
    group: &[crate::wal::Block],
    context: &mut ApplyContext,
    shared: &Shared,
    options: &StoreWriterOptions,
) -> Result<Option<super::ApplyStats>> {
    loop {
        // A full disk holds it inside (nothing of the group was written: one batch).
        match hold_while_full(shared, || {
            store.apply_with(group, context, wal.durable_tick())
        }) {
            Err(Error::ApplyConflict { tick, reason }) => {
                tracing::error!("store writer held at tick {tick}: {reason}");
                *shared.conflict.lock().unwrap_or_else(|p| p.into_inner()) = Some((tick, reason));
                shared.wake();
                // Databases may be admitted or left out while held (the conflict may be in one
                // of them).
                let retried = wait_for_retry(wal, store, context, shared, options);
                *shared.conflict.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if !retried {
                    return Ok(None);
                }
            }
            other => return other,
        }
    }
}

/// Holds the store writer before the damaged block `damage` until `retry` (false if it is asked
/// to stop meanwhile); databases may still be admitted or left out.
fn hold_damaged(
    wal: &Wal,
    store: &DocStore,
    context: &mut ApplyContext,
    shared: &Shared,
    options: &StoreWriterOptions,
    damage: Damage,
) -> bool {
    tracing::error!(
        "store writer held before a damaged block of the WAL: {}; a follower fetches it again \
         from its leader, a leader cannot go on past it",
        damage.error()
    );
    *shared.damaged.lock().unwrap_or_else(|p| p.into_inner()) = Some(damage);
    shared.wake();
    let retried = wait_for_retry(wal, store, context, shared, options);
    *shared.damaged.lock().unwrap_or_else(|p| p.into_inner()) = None;
    shared.wake();
    retried
}

/// Waits, serving requests to admit or leave out databases meanwhile, until `retry` is asked
/// for (true) or the store writer is asked to stop (false).
fn wait_for_retry(
    wal: &Wal,
    store: &DocStore,
    context: &mut ApplyContext,
    shared: &Shared,
    options: &StoreWriterOptions,
) -> bool {
    let mut guard = shared.lock.lock().unwrap_or_else(|p| p.into_inner());
    while !shared.retry.swap(false, Ordering::AcqRel) {
        if shared.stop.load(Ordering::Acquire) {
            return false;
        }
        drop(guard);
        serve_requests(wal, store, context, shared, options);
        guard = shared.lock.lock().unwrap_or_else(|p| p.into_inner());
        guard = shared
            .changed
            .wait_timeout(guard, Duration::from_millis(200))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    true
}

/// How often a store writer waiting for disk space tries again. RocksDB clears its own
/// background error once space is back (its file manager looks every 5 s), so a try may fail a
/// few times after space is freed.
const FULL_RETRY_EVERY: Duration = Duration::from_secs(1);

/// Runs `step` until it does not fail for want of disk space: each such failure holds the store
/// writer (writes are refused with `Error::StoreFull` meanwhile) for `FULL_RETRY_EVERY`. `None`
/// if the store writer is asked to stop while it waits. `step` must leave nothing half done
/// when it fails (RocksDB writes are one batch; a failed flush leaves the memtables).
fn hold_while_full<T>(shared: &Shared, mut step: impl FnMut() -> Result<T>) -> Result<Option<T>> {
    loop {
        match step() {
            Err(error) if error.is_no_space() => {
                if !wait_for_space(shared, &error) {
                    return Ok(None);
                }
            }
            other => {
                space_back(shared);
                return other.map(Some);
            }
        }
    }
}

/// Marks the store writer as waiting for disk space because of `error`, wakes its waiters (who
/// are told), and waits `FULL_RETRY_EVERY`; false if it is asked to stop.
fn wait_for_space(shared: &Shared, error: &Error) -> bool {
    {
        let mut full = shared.full.lock().unwrap_or_else(|p| p.into_inner());
        if full.is_none() {
            let reason = error.chain();
            tracing::error!(
                "store writer waits for disk space (writes are refused until it is freed): {reason}"
            );
            *full = Some(reason);
        }
    }
    shared.wake();
    let guard = shared.lock.lock().unwrap_or_else(|p| p.into_inner());
    if shared.stop.load(Ordering::Acquire) {
        return false;
    }
    let _ = shared
        .changed
        .wait_timeout(guard, FULL_RETRY_EVERY)
        .unwrap_or_else(|p| p.into_inner());
    !shared.stop.load(Ordering::Acquire)
}

/// Clears the store writer's wait for disk space, if it waited.
fn space_back(shared: &Shared) {
    let was = shared.full.lock().unwrap_or_else(|p| p.into_inner()).take();
    if was.is_some() {
        tracing::info!("store writer: disk space is back, writes go on");
        shared.wake();
    }
}

/// How long the store writer waits for its WAL to make applied ticks durable before it fails.
const DURABLE_WAIT_MAX: Duration = Duration::from_secs(60);

/// For a store keeping its documents in the WAL: waits until every tick already applied is
/// durable in the WAL. A follower applies its leader's blocks before they are durable here, and
/// RocksDB may persist a memtable at the start of any write (a full memtable, the shared memory
/// budget) or at a flush: persisted, a value naming a tick that a crash then takes out of the
/// WAL would name nothing. Waiting before each write (and flush) keeps persisted values to
/// durable ticks. A store keeping documents itself needs no wait: a restart replays from its
/// recorded tick, which never passes the durable one.
fn settle_before_write(wal: &Wal, store: &DocStore) -> Result<()> {
    if !store.documents_in_wal() || wal.wait_durable(store.applied_tick(), DURABLE_WAIT_MAX) {
        return Ok(());
    }
    Err(Error::Store {
        op: "wait for the WAL",
        reason: format!(
            "tick {} was not durable after {} s, so the store cannot persist it",
            store.applied_tick(),
            DURABLE_WAIT_MAX.as_secs()
        ),
    })
}

/// Tells the WAL how far the store is persisted, so retention keeps what a restart replays.
/// A store that keeps its documents in the WAL also needs every segment that may hold a live
/// one: only those whose live documents were moved to value files may go.
fn report_store_tick(wal: &Wal, store: &DocStore, persisted: Tick) {
    wal.set_store_tick(if store.documents_in_wal() {
        persisted.min(store.collected_through())
    } else {
        persisted
    });
}

/// For a store keeping its documents in the WAL: once the last collection is persisted, moves
/// the live documents of the oldest WAL segment retention would otherwise delete into a value
/// file (`DocStore::prepare_collection`, `finish_collection`) and starts a flush; the segment is let go once that is
/// persisted (`DocStore::settle_collection`, `report_store_tick`). Skipped while a scan runs:
/// its snapshot may name a tick this would drop. Returns whether it collected a segment. The
/// store writer calls it between groups (reading the segment on another thread, see
/// `Preparer`); anyone else only while no store writer runs.
pub fn collect_wal_segment(wal: &Wal, store: &DocStore, now: SystemTime) -> Result<bool> {
    collect_next(wal, store, now, &mut AtOnce { wal, store })
}

/// How `collect_next` has the segment to collect, or the value file to rewrite, read.
trait Prepare {
    /// The segment read and its value file written (`DocStore::prepare_collection`), or `None`
    /// if that is not done yet.
    fn prepare(&mut self, segment: &SegmentRange) -> Result<Option<PreparedCollection>>;
    /// The value file's rewrite looked at and written (`DocStore::prepare_rewrite`): `None` if
    /// that is not done yet, `Some(None)` if it was not worth rewriting.
    fn rewrite(&mut self, file: &Arc<SealedSegment>) -> Result<Option<Option<PreparedRewrite>>>;
    /// A value file's rewrite that has ended since it was started, if any.
    fn ended_rewrite(&mut self) -> Option<Result<Option<PreparedRewrite>>>;
    /// Whether nothing is being prepared, so that a value file's collection may start; a
    /// segment's preparation done but no longer wanted is dropped.
    fn idle(&mut self) -> bool;
}

/// Reads on the calling thread.
struct AtOnce<'a> {
    wal: &'a Wal,
    store: &'a DocStore,
}

impl Prepare for AtOnce<'_> {
    fn prepare(&mut self, segment: &SegmentRange) -> Result<Option<PreparedCollection>> {
        self.store.prepare_collection(self.wal, segment).map(Some)
    }

    fn rewrite(&mut self, file: &Arc<SealedSegment>) -> Result<Option<Option<PreparedRewrite>>> {
        self.store.prepare_rewrite(self.wal, file).map(Some)
    }

    fn ended_rewrite(&mut self) -> Option<Result<Option<PreparedRewrite>>> {
        None
    }

    fn idle(&mut self) -> bool {
        true
    }
}

/// `collect_wal_segment`, with the segment to collect (or the value file to rewrite) read by
/// `prepare`; nothing is done this time while that is under way.
fn collect_next(
    wal: &Wal,
    store: &DocStore,
    now: SystemTime,
    prepare: &mut dyn Prepare,
) -> Result<bool> {
    let persisted = store.persisted_tick()?;
    if store.settle_collection(persisted)? {
        return Ok(false);
    }
    // A value file's rewrite written meanwhile is recorded first (or dropped if a scan runs).
    if let Some(prepared) = prepare.ended_rewrite() {
        return match prepared? {
            Some(prepared) => finish_rewrite(wal, store, prepared),
            None => Ok(false),
        };
    }
    if store.scans_running() {
        return Ok(false);
    }
    let Some(segment) = wal.next_collectable(persisted, store.collected_through(), now) else {
        // No segment to collect: look at a value file instead, unless something is being
        // read already.
        if !prepare.idle() {
            return Ok(false);
        }
        let Some(file) = store.value_file_to_look_at() else {
            return Ok(false);
        };
        return match prepare.rewrite(&file)? {
            Some(Some(prepared)) => finish_rewrite(wal, store, prepared),
            Some(None) | None => Ok(false),
        };
    };
    let Some(prepared) = prepare.prepare(&segment)? else {
        return Ok(false);
    };
    let started = Instant::now();
    settle_before_write(wal, store)?;
    let moved = store.finish_collection(&segment, prepared)?;
    store.record_applied(wal.durable_tick())?;
    store.start_flush()?;
    tracing::debug!(
        segment = %segment.path.display(),
        sampled = prepared.sample.puts,
        live = prepared.sample.live,
        moved,
        seconds = started.elapsed().as_secs_f64(),
        "moved the live documents of a WAL segment to the value files"
    );
    Ok(true)
}

/// Records a value file's rewrite (`DocStore::finish_rewrite`) and starts the flush that
/// persists the state it was decided at. Returns whether it was recorded.
fn finish_rewrite(wal: &Wal, store: &DocStore, prepared: PreparedRewrite) -> Result<bool> {
    let started = Instant::now();
    settle_before_write(wal, store)?;
    if !store.finish_rewrite(prepared)? {
        return Ok(false);
    }
    store.record_applied(wal.durable_tick())?;
    store.start_flush()?;
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        "recorded the rewrite of a value file"
    );
    Ok(true)
}

/// Reads the next WAL segment to collect, or the value file to rewrite, on a thread of its own
/// (`DocStore::prepare_collection`: the sample of every sixteenth block, and for a segment
/// mostly dead the copy of its live documents; `DocStore::prepare_rewrite` likewise), so that
/// the store writer goes on applying meanwhile and only records the result. On the writer's
/// own thread, the sample and the copy stopped it, and nothing became visible meanwhile: each
/// collection showed in a tailing follower's lag. One job at a time: both write value files.
struct Preparer {
    wal: Arc<Wal>,
    store: Arc<DocStore>,
    running: Option<(Job, JoinHandle<Result<Prepared>>)>,
}

/// What a `Preparer` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Job {
    Segment(SegmentId),
    Rewrite,
}

/// What it made.
enum Prepared {
    Segment(PreparedCollection),
    Rewrite(Option<PreparedRewrite>),
}

/// The preparing thread's nice value.
const PREPARER_NICE: i32 = 10;

impl Preparer {
    fn new(wal: &Arc<Wal>, store: &Arc<DocStore>) -> Preparer {
        Preparer {
            wal: wal.clone(),
            store: store.clone(),
            running: None,
        }
    }

    /// The job that has ended, if it is of the kind `wanted` says, with what it made; `None`
    /// if none is under way, it is still running, or it is of another kind.
    fn take_ended(&mut self, wanted: impl Fn(Job) -> bool) -> Option<(Job, Result<Prepared>)> {
        let (job, handle) = self
            .running
            .take_if(|(job, handle)| handle.is_finished() && wanted(*job))?;
        let prepared = handle.join().unwrap_or_else(|_| {
            Err(Error::Store {
                op: "read a WAL segment or value file to collect",
                reason: "its thread panicked".into(),
            })
        });
        Some((job, prepared))
    }

    /// Starts `job` on a thread of its own.
    fn start(
        &mut self,
        job: Job,
        what: &Path,
        read: impl FnOnce(&Wal, &DocStore) -> Result<Prepared> + Send + 'static,
    ) -> Result<()> {
        let (wal, store) = (self.wal.clone(), self.store.clone());
        let handle = std::thread::Builder::new()
            .name("segment-collect".into())
            .spawn(move || {
                // Below everything that serves writes: created by the store writer, the thread
                // would otherwise inherit its raised priority.
                crate::fs::set_thread_nice_or_say(PREPARER_NICE);
                read(&wal, &store)
            })
            .map_err(|e| Error::io("spawn a segment collector", what, e))?;
        self.running = Some((job, handle));
        Ok(())
    }
}

impl Prepare for Preparer {
    /// The preparation of `segment` if it is done; otherwise starts it (once the job under way,
    /// if any, is done) and returns `None`.
    fn prepare(&mut self, segment: &SegmentRange) -> Result<Option<PreparedCollection>> {
        match self.take_ended(|job| matches!(job, Job::Segment(_))) {
            Some((Job::Segment(id), Ok(Prepared::Segment(prepared)))) if id == segment.id => {
                return Ok(Some(prepared))
            }
            Some((_, prepared)) => {
                prepared?;
            }
            None if self.running.is_some() => return Ok(None),
            None => {}
        }
        let target = segment.clone();
        self.start(
            Job::Segment(segment.id),
            &segment.path,
            move |wal, store| {
                store
                    .prepare_collection(wal, &target)
                    .map(Prepared::Segment)
            },
        )?;
        Ok(None)
    }

    /// Starts the rewrite of `file` (nothing is under way: `idle` said so) and returns `None`;
    /// `ended_rewrite` hands over what it made.
    fn rewrite(&mut self, file: &Arc<SealedSegment>) -> Result<Option<Option<PreparedRewrite>>> {
        let target = file.clone();
        self.start(Job::Rewrite, &file.path, move |wal, store| {
            store.prepare_rewrite(wal, &target).map(Prepared::Rewrite)
        })?;
        Ok(None)
    }

    fn ended_rewrite(&mut self) -> Option<Result<Option<PreparedRewrite>>> {
        let (_, prepared) = self.take_ended(|job| job == Job::Rewrite)?;
        Some(prepared.and_then(|prepared| match prepared {
            Prepared::Rewrite(rewrite) => Ok(rewrite),
            Prepared::Segment(_) => Err(Error::Store {
                op: "collect a value file",
                reason: "a segment's collection came back instead".into(),
            }),
        }))
    }

    fn idle(&mut self) -> bool {
        if let Some((job, Err(error))) = self.take_ended(|job| matches!(job, Job::Segment(_))) {
            tracing::warn!("reading {job:?} to collect it failed: {error}");
        }
        self.running.is_none()
    }
}

impl Drop for Preparer {
    /// Waits for a preparation under way: it holds the store and the WAL open.
    fn drop(&mut self) {
        if let Some((_, handle)) = self.running.take() {
            let _ = handle.join();
        }
    }
}

/// How often the store writer looks whether blob garbage collection is worth running.
const GC_CHECK_EVERY: Duration = Duration::from_secs(1);

/// At most this often the store writer hands freed memory back to the kernel, after a flush.
/// A follower catching up with small memtables flushes several times a second; trimming after
/// nearly each flush, rather than once a second, lowered its peak memory a little and cost
/// nothing in catch-up time, CPU or lag.
const TRIM_EVERY: Duration = Duration::from_millis(100);

/// Returns the free pages inside glibc's heaps to the kernel. RocksDB allocates its memtables
/// (blocks of several MiB) and write batches through glibc's malloc from several threads; freed,
/// they stay in the per-thread heaps, fragmented: a follower catching up held more such free
/// memory than live memtables and cache together (`/proc/PID/smaps` shows it).
/// `malloc_trim` walks the heaps and releases whole free pages; once per flush, at most every
/// `TRIM_EVERY`, it costs little.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the heaps' locks itself and only releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What the store writer keeps between groups to look after the store.
struct Upkeep {
    /// The store's persisted tick, as last told to the WAL.
    persisted: Tick,
    last_flush: Instant,
    last_trim: Instant,
    last_gc_check: Instant,
    /// When the value files' pages that point reads mapped were last handed back.
    last_hand_back: Instant,
    preparer: Preparer,
}

impl Upkeep {
    fn new(wal: &Arc<Wal>, store: &Arc<DocStore>) -> Result<Upkeep> {
        let persisted = store.persisted_tick()?;
        report_store_tick(wal, store, persisted);
        Ok(Upkeep {
            persisted,
            last_flush: Instant::now(),
            last_trim: Instant::now(),
            last_gc_check: Instant::now(),
            last_hand_back: Instant::now(),
            preparer: Preparer::new(wal, store),
        })
    }

    /// Reports the persisted tick to the WAL and starts a flush when one is due.
    fn run(
        &mut self,
        wal: &Arc<Wal>,
        store: &Arc<DocStore>,
        options: &StoreWriterOptions,
    ) -> Result<()> {
        let persisted = store.persisted_tick()?;
        if persisted != self.persisted {
            self.persisted = persisted;
            report_store_tick(wal, store, persisted);
            // A flush finished and freed its memtables.
            if self.last_trim.elapsed() >= TRIM_EVERY {
                release_free_memory();
                self.last_trim = Instant::now();
            }
        }
        if self.last_hand_back.elapsed() >= crate::wal::POINT_READS_HANDED_BACK_EVERY {
            self.last_hand_back = Instant::now();
            store.hand_back_point_reads();
        }
        if self.last_gc_check.elapsed() >= GC_CHECK_EVERY {
            self.last_gc_check = Instant::now();
            // Tuning only: a failure leaves collection as it was and the store working.
            if let Err(error) = store.tune_blob_gc() {
                tracing::warn!("blob garbage collection not tuned: {error}");
            }
            if store.documents_in_wal() {
                // Upkeep: a failure (a full disk, say) keeps the segment in the WAL, where its
                // documents are read from, and is tried again a second later.
                let collected = collect_next(wal, store, SystemTime::now(), &mut self.preparer);
                if let Err(error) = collected {
                    tracing::warn!("moving live documents out of a WAL segment failed: {error}");
                }
                report_store_tick(wal, store, store.persisted_tick()?);
            }
        }
        let behind = store.applied_tick().get().saturating_sub(persisted.get());
        if behind > 0
            && (behind >= options.flush_ticks_max
                || self.last_flush.elapsed() >= options.flush_interval)
        {
            settle_before_write(wal, store)?;
            store.start_flush()?;
            self.last_flush = Instant::now();
        }
        Ok(())
    }
}
