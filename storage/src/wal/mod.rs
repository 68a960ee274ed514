//! The write-ahead log: segmented, tick-indexed, group-committed, crash-safe.
//!
//! Every change becomes records with increasing ticks, grouped into blocks that the appending
//! thread compresses once (see `block`). A writer thread owns the active segment file: it takes
//! whatever appends are queued, stamps their ticks and writes them with one write; a syncer
//! thread makes each written group durable with one fdatasync and completes its callers (group
//! commit, pipelined: see `writer`). Readers see a block once it is visible (below) and read it
//! straight from the segment's memory map, as `Bytes`.
//!
//! This file is long because it is the WAL's one public surface: the options, the shared state
//! the writer, syncer and readers coordinate through, the completion futures of appends, and the
//! `Wal` handle; each part only makes sense with the others.
//!
//! Invariants this module owns:
//! - ticks are strictly increasing across the whole log and never reused, across restarts too:
//!   the newest segment is never deleted, so the last tick is always recoverable;
//! - `tick_synced <= tick_written`; readers see `tick_synced` (with `SyncPolicy::EveryGroup`) or
//!   `tick_written` (with the relaxed policies, which trade durability for latency); a group made
//!   only of blocks from a leader (`submit_block`) is visible once written, if everything before
//!   it is visible: those blocks are durable on the leader already, and a follower that loses
//!   them in a crash fetches them again (`durable_tick` says how far the WAL is durable);
//! - an append is acknowledged only after its block is durable (per the sync policy), and a
//!   failed write or fdatasync stops the writer for good;
//! - memory is bounded: the queue holds at most `queue_bytes_max` bytes of blocks (appenders
//!   wait beyond that), the writer buffers at most `write_buffer_bytes`.

pub mod block;
mod engine;
mod floor;
mod reader;
pub mod record;
mod recovery;
pub mod retention;
pub mod segment;
pub mod stats;
pub mod tick_index;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

pub use self::block::{Block, BlockBuilder, BlockHeader, Compression, PreparedBlock};
pub use self::engine::IoEngine;
pub use self::reader::Reader;
pub use self::record::{Record, RecordType, Records};
pub use self::recovery::{RecoveryReport, TornTail};
pub use self::retention::{Barrier, KeepReason, RetentionPolicy};
use self::retention::{RetentionState, SegmentFacts};
use self::segment::{PointReads, SealedSegment};
use self::tick_index::TickIndex;
#[cfg(feature = "docstore")]
pub(crate) use self::writer::error_chain;
use crate::error::{Error, Result};
use crate::fs::{DirLock, FileMap};
use crate::tick::{SegmentId, Tick, TickRange};

/// When the writer makes appended data durable (`--wal.sync-policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fdatasync after every group; appends complete when durable. The default.
    #[default]
    EveryGroup,
    /// fdatasync at most this often; appends complete when written to the kernel, so a machine
    /// crash (not a process crash) can lose up to one interval of acknowledged appends.
    Interval(Duration),
    /// Never fdatasync (the kernel writes back eventually); for tests and throwaway data.
    Never,
}

/// Options of a WAL; the defaults are those of `tickshipd`.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// `--wal.segment-size`: bytes per segment file (preallocated). Default 64 MiB.
    pub segment_bytes: u64,
    /// `--wal.sync-policy`.
    pub sync: SyncPolicy,
    /// `--wal.io-engine`.
    pub io_engine: IoEngine,
    /// Zero-fill new segments (in the background) after preallocating them, so that later
    /// fdatasyncs need no extent conversion. Off by default: measured here it doubles the bytes
    /// written and, under load, cost ~20% of the append throughput and 5x the p99 latency, while
    /// idle appends were no faster.
    pub zero_fill: bool,
    /// A group stops taking queued appends once it holds this many bytes. Default 16 MiB.
    pub group_bytes_max: usize,
    /// The writer's I/O buffer. Default 4 MiB.
    pub write_buffer_bytes: usize,
    /// Appenders wait while this many bytes of blocks are queued. Default 64 MiB.
    pub queue_bytes_max: usize,
    /// Retention rules (`--wal.historic-logfiles`, `--wal.file-timeout`, ...).
    pub retention: RetentionPolicy,
    /// How often the background retention pass runs; `None` runs it only on `run_retention`.
    pub retention_interval: Option<Duration>,
    /// Verify every block of sealed segments at open too, not only the unsealed tail.
    pub verify_on_open: bool,
    /// Nice value for the writer and syncer threads, so that appends become durable promptly
    /// even when the appending threads keep every core busy (measured here: ~40% more appends
    /// and half the median latency with 64 appenders on 2 cores). Best effort: it needs root or
    /// CAP_SYS_NICE, and without them the threads stay at normal priority. 0 leaves them alone.
    pub io_thread_nice: i32,
    /// Blocks built by `append` (and by `prepare`) are compressed in frames of this many raw
    /// bytes, so a record can be read back by its tick decompressing one frame (`block_at`,
    /// `Block::record_at`); 0 compresses each block as a whole. Default 0; a WAL that holds the
    /// document store's documents uses `block::FRAME_RAW_BYTES`.
    pub frame_bytes: usize,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions {
            segment_bytes: 64 << 20,
            sync: SyncPolicy::EveryGroup,
            io_engine: IoEngine::Auto,
            zero_fill: false,
            group_bytes_max: 16 << 20,
            write_buffer_bytes: 4 << 20,
            queue_bytes_max: 64 << 20,
            retention: RetentionPolicy::default(),
            retention_interval: Some(Duration::from_secs(1)),
            verify_on_open: false,
            io_thread_nice: -10,
            frame_bytes: 0,
        }
    }
}

impl WalOptions {
    fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::Config(message));
        if !(segment::SEGMENT_BYTES_MIN..=segment::SEGMENT_BYTES_MAX).contains(&self.segment_bytes)
        {
            return bad(format!(
                "segment size {} is outside {}..={}",
                self.segment_bytes,
                segment::SEGMENT_BYTES_MIN,
                segment::SEGMENT_BYTES_MAX
            ));
        }
        if self.segment_bytes % crate::fs::DIRECT_ALIGN as u64 != 0 {
            return bad(format!(
                "segment size {} is not a multiple of 4096",
                self.segment_bytes
            ));
        }
        if self.write_buffer_bytes < 2 * crate::fs::DIRECT_ALIGN
            || self.write_buffer_bytes > 1 << 30
        {
            return bad(format!(
                "write buffer of {} bytes is outside 8 KiB..=1 GiB",
                self.write_buffer_bytes
            ));
        }
        if self.group_bytes_max == 0 || self.queue_bytes_max == 0 {
            return bad("group and queue sizes must be positive".into());
        }
        if !(-20..=19).contains(&self.io_thread_nice) {
            return bad(format!(
                "nice value {} is outside -20..=19",
                self.io_thread_nice
            ));
        }
        if let SyncPolicy::Interval(interval) = self.sync {
            if interval.is_zero() {
                return bad("sync interval must be positive".into());
            }
        }
        Ok(())
    }
}

/// One segment as `logger-tick-ranges` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRange {
    pub id: SegmentId,
    /// The segment file (ArangoDB's `datafile`).
    pub path: PathBuf,
    pub sealed: bool,
    pub tick_min: Tick,
    pub tick_max: Tick,
    pub file_bytes: u64,
    /// Where its data ends: the seal block of a sealed segment, the end of the last block
    /// published of the open one.
    pub data_end: u64,
}

impl SegmentRange {
    /// ArangoDB's `status` value: `"sealed"` or `"open"`.
    pub fn status(&self) -> &'static str {
        if self.sealed {
            "sealed"
        } else {
            "open"
        }
    }
}

/// What a client that lost its position to the archive size limit needs to be told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostPosition {
    pub tick: Tick,
    pub when: SystemTime,
}

/// Outcome of one retention pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted: Vec<PathBuf>,
    pub forced: Vec<PathBuf>,
    pub lost_clients: Vec<(String, Tick)>,
    pub expired_clients: Vec<String>,
    pub kept: Option<KeepReason>,
}

/// Counters of the writer, for metrics.
#[derive(Debug, Default)]
pub struct WalCounters {
    pub groups: AtomicU64,
    pub syncs: AtomicU64,
    /// Time in writes that ended with an fdatasync (write and sync together).
    pub sync_nanos: AtomicU64,
    /// Time in all engine calls (writes and syncs).
    pub io_nanos: AtomicU64,
    /// Time the writer waited for appends.
    pub idle_nanos: AtomicU64,
    pub blocks: AtomicU64,
    pub records: AtomicU64,
    /// Bytes of blocks appended (headers and stored payloads).
    pub block_bytes: AtomicU64,
    /// Uncompressed record bytes appended.
    pub raw_bytes: AtomicU64,
    /// Bytes handed to the engine, counting rewritten tail pages and padding.
    pub write_bytes: AtomicU64,
    pub segments_created: AtomicU64,
    pub segments_deleted: AtomicU64,
    /// From `submit` to the append's completion (durable under the default policy).
    pub append_latency: stats::LatencyHistogram,
    /// Of each fdatasync.
    pub sync_latency: stats::LatencyHistogram,
}

/// The active segment as readers see it: only its durable part.
pub(crate) struct ActiveSegment {
    pub id: SegmentId,
    pub path: PathBuf,
    /// The whole preallocated file.
    pub map: FileMap,
    pub data_end: u64,
    pub ticks: TickRange,
    pub index: TickIndex,
    /// Whether a point read mapped pages of it since `Wal::hand_back_point_reads` last ran.
    pub point_reads: PointReads,
}

pub(crate) struct State {
    /// Oldest first; ids are contiguous and the active segment, if any, follows the last.
    pub sealed: VecDeque<Arc<SealedSegment>>,
    pub active: Option<ActiveSegment>,
    /// The last tick readers may see.
    pub tick_last: Tick,
    /// The id of the segment after the last one readers see (sealed or active): where a reader
    /// waiting at the end starts. The writer may have opened that segment already; it becomes
    /// the active one, and this moves past it, when its first block is published.
    pub next_segment_id: SegmentId,
    pub failed: Option<String>,
    pub closed: bool,
    pub retention: RetentionState,
    pub lost: HashMap<String, LostPosition>,
    /// The log's floor (`Wal::skip_to`): no tick at or before it is served.
    pub floor: Tick,
}

impl State {
    pub fn tick_first(&self) -> Option<Tick> {
        self.sealed
            .front()
            .map(|s| s.ticks.first)
            .or(self.active.as_ref().map(|a| a.ticks.first))
    }
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub options: WalOptions,
    pub state: Mutex<State>,
    /// Signalled when `tick_last` advances or the WAL closes or fails.
    pub visible: Condvar,
    /// The same, for async waiters. Nothing a waiter holds can block the writer.
    pub notify: tokio::sync::Notify,
    /// `tick_last`, readable without the lock.
    pub tick_visible: AtomicU64,
    /// The last tick whose append completed (durable per the sync policy). Equal to
    /// `tick_visible` except while blocks from a leader are visible before they are durable.
    pub tick_durable: AtomicU64,
    /// Set once the WAL is closed, for async waiters.
    pub closed: AtomicBool,
    pub credits: Credits,
    pub failed: AtomicBool,
    pub counters: WalCounters,
    /// (when, `counters.block_bytes`) once per retention pass, the last `RATE_SAMPLES`: the
    /// recent append rate, from which a leader tells how soon a follower falls off retention.
    pub appended: Mutex<VecDeque<(Instant, u64)>>,
    pub opened_at: SystemTime,
    pub block_bytes_max: u64,
    pub engine_name: &'static str,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until the last visible tick is after `after`, the WAL closes or fails, or
    /// `deadline` passes; returns the last visible tick then.
    pub fn wait_durable(&self, tick: Tick, deadline: Instant) -> bool {
        // The store writer asks before every group; it is nearly always durable already.
        if self.tick_durable.load(Ordering::Acquire) >= tick.get() {
            return true;
        }
        let mut state = self.lock();
        loop {
            if self.tick_durable.load(Ordering::Acquire) >= tick.get() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || state.closed || state.failed.is_some() {
                return false;
            }
            // The syncer raises the durable tick, then takes this lock and notifies: a raise
            // between the check above and this wait is not missed.
            state = self
                .visible
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub fn wait_after(&self, after: Tick, deadline: Instant) -> Tick {
        let mut state = self.lock();
        while state.tick_last <= after && !state.closed && state.failed.is_none() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .visible
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.tick_last
    }
}

/// Byte budget of the append queue: appenders wait while it is spent.
pub(crate) struct Credits {
    used: Mutex<usize>,
    freed: Condvar,
    capacity: usize,
}

impl Credits {
    fn new(capacity: usize) -> Credits {
        Credits {
            used: Mutex::new(0),
            freed: Condvar::new(),
            capacity,
        }
    }

    /// Takes `bytes` of the budget, waiting while it is spent. A request larger than the whole
    /// budget is let through alone, so it cannot wait forever.
    fn acquire(&self, bytes: usize) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used > 0 && *used + bytes > self.capacity {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += bytes;
    }

    pub fn release(&self, bytes: usize) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        assert!(*used >= bytes, "released more queue credit than taken");
        *used -= bytes;
        self.freed.notify_all();
    }
}

/// The state of one append shared with the writer: whether it has taken the block
/// (`Appended::taken`), and the result once it completes.
pub(crate) struct Completion {
    slot: Mutex<Slot>,
    done: Condvar,
}

#[derive(Default)]
struct Slot {
    result: Option<Result<TickRange>>,
    waker: Option<Waker>,
    taken: bool,
    taken_waker: Option<Waker>,
}

impl Completion {
    fn new() -> Arc<Completion> {
        Arc::new(Completion {
            slot: Mutex::new(Slot::default()),
            done: Condvar::new(),
        })
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn complete(&self, result: Result<TickRange>) {
        let mut slot = self.slot();
        assert!(slot.result.is_none(), "an append completed twice");
        slot.result = Some(result);
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
        self.done.notify_all();
    }
}

/// A pending append: wait for it (`wait`) or await it. Resolves to the block's ticks once the
/// block is durable (per the sync policy), or to the error that kept it from being so.
#[must_use = "an append is only acknowledged once its handle resolves"]
pub struct Appended {
    completion: Arc<Completion>,
}

impl Appended {
    /// Resolves once the writer has taken the block from the queue and copied it into its
    /// buffer, that is once the appender's bytes are no longer held for it (long before they
    /// are durable). Also resolves if the writer stopped without taking it.
    pub fn taken(&self) -> TakenFuture {
        TakenFuture(self.completion.clone())
    }

    pub fn wait(self) -> Result<TickRange> {
        let mut slot = self.completion.slot();
        loop {
            if let Some(result) = slot.result.take() {
                return result;
            }
            slot = self
                .completion
                .done
                .wait(slot)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Future for Appended {
    type Output = Result<TickRange>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<TickRange>> {
        let mut slot = self.completion.slot();
        match slot.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

pub(crate) enum Payload {
    /// Records from this node: the writer assigns the ticks.
    Prepared(PreparedBlock),
    /// A block from a leader: stored verbatim with its own ticks.
    Verbatim(Block),
    /// Moves the log's floor (`Wal::skip_to`).
    Floor { tick: Tick, lower: bool },
}

pub(crate) struct Request {
    pub payload: Payload,
    pub completion: CompletionGuard,
    pub credit_bytes: usize,
    /// Declared after `payload`: dropped once the payload is, which is what it signals.
    pub _taken: TakenSignal,
}

/// Marks its append taken when dropped: the writer drops a request's payload and this
/// together, once it has copied the payload, and a request dropped unwritten (a stopped
/// writer) marks it too, so no appender waits forever.
pub(crate) struct TakenSignal(Arc<Completion>);

impl Drop for TakenSignal {
    fn drop(&mut self) {
        let mut slot = self.0.slot();
        slot.taken = true;
        if let Some(waker) = slot.taken_waker.take() {
            waker.wake();
        }
    }
}

/// Resolves when its append has been taken by the writer (`Appended::taken`).
pub struct TakenFuture(Arc<Completion>);

impl Future for TakenFuture {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = self.0.slot();
        if slot.taken {
            Poll::Ready(())
        } else {
            slot.taken_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Completes its append exactly once: explicitly, or with an error if dropped unanswered (a
/// writer that panicked, say), so no appender ever waits forever. Remembers when the append was
/// submitted, for the append latency histogram.
pub(crate) struct CompletionGuard {
    /// `None` once completed.
    completion: Option<Arc<Completion>>,
    pub submitted: Instant,
}

impl CompletionGuard {
    pub fn complete(mut self, result: Result<TickRange>) {
        if let Some(completion) = self.completion.take() {
            completion.complete(result);
        }
    }
}

impl Drop for CompletionGuard {
    fn drop(&mut self) {
        if let Some(completion) = self.completion.take() {
            completion.complete(Err(Error::WriterFailed(
                "the writer stopped before completing this append".into(),
            )));
        }
    }
}

/// Bounds the number of queued requests; bytes are bounded by `Credits`. The queue holds them
/// boxed: its slots are allocated and written when it is made, and 16k slots of a whole
/// `Request` (~150 bytes) were 2.5 MiB of every server's resident memory (heaptrack).
const QUEUE_REQUESTS_MAX: usize = 16_384;

/// The write-ahead log. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Wal {
    shared: Arc<Shared>,
    sender: Mutex<Option<Sender<Box<Request>>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop_background: Mutex<Option<Sender<()>>>,
    recovery: RecoveryReport,
    /// Released by `close`, so the directory can be opened again at once.
    lock: Mutex<Option<DirLock>>,
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`: recovers its segments, cuts a torn tail,
    /// and starts the writer. Fails with a precise error on anything it cannot account for.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<Wal> {
        let dir = dir.as_ref().to_path_buf();
        options.validate()?;
        recovery::create_dir(&dir)?;
        let lock = DirLock::acquire(&dir.join("LOCK"))?;
        let recovered = recovery::recover(&dir, &options)?;
        let buffer_bytes = options.write_buffer_bytes;
        let (engine, fallback) = engine::create(options.io_engine, buffer_bytes, &dir)?;
        if let Some(reason) = fallback {
            tracing::info!("wal: {reason}; using the portable pwrite+fdatasync engine");
        }
        let recovery = recovered.report.clone();
        let (sender, receiver) = crossbeam_channel::bounded(QUEUE_REQUESTS_MAX);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let tick_last = recovered.tick_last;
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            block_bytes_max: segment::block_bytes_max(options.segment_bytes),
            credits: Credits::new(options.queue_bytes_max),
            options,
            state: Mutex::new(State {
                sealed: recovered.sealed,
                active: recovered.active.as_ref().map(|a| a.to_state()),
                tick_last,
                next_segment_id: recovered.next_segment_id,
                failed: None,
                closed: false,
                retention: RetentionState::default(),
                lost: HashMap::new(),
                floor: recovered.floor,
            }),
            visible: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            tick_visible: AtomicU64::new(tick_last.get()),
            tick_durable: AtomicU64::new(tick_last.get()),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            counters: WalCounters::default(),
            appended: Mutex::new(VecDeque::with_capacity(RATE_SAMPLES + 1)),
            opened_at: SystemTime::now(),
            engine_name: engine.name(),
        });
        let mut spares = writer::Spares::start(shared.clone())?;
        let mut threads: Vec<JoinHandle<()>> = spares.take_thread().into_iter().collect();
        // Bounded by the append queue: each job holds at most one group's completions.
        let (sync_tx, sync_rx) = crossbeam_channel::unbounded();
        let writer =
            writer::Writer::new(shared.clone(), engine, spares, sync_tx, recovered.active)?;
        threads.push(
            std::thread::Builder::new()
                .name("wal-writer".into())
                .spawn(move || writer.run(receiver))
                .map_err(|e| Error::io("spawn writer thread", &dir, e))?,
        );
        let syncer_shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("wal-syncer".into())
                .spawn(move || writer::run_syncer(syncer_shared, sync_rx))
                .map_err(|e| Error::io("spawn syncer thread", &dir, e))?,
        );
        if let Some(interval) = shared.options.retention_interval {
            let shared = shared.clone();
            let stop_rx = stop_rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("wal-retention".into())
                    .spawn(move || retention_loop(&shared, interval, &stop_rx))
                    .map_err(|e| Error::io("spawn retention thread", &dir, e))?,
            );
        }
        tracing::info!(
            dir = %shared.dir.display(),
            engine = shared.engine_name,
            tick_last = %tick_last,
            "wal open"
        );
        Ok(Wal {
            shared,
            sender: Mutex::new(Some(sender)),
            threads: Mutex::new(threads),
            stop_background: Mutex::new(Some(stop_tx)),
            recovery,
            lock: Mutex::new(Some(lock)),
        })
    }

    /// What recovery found and did when this WAL was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The I/O engine in use: `"io_uring"` or `"sync"`.
    pub fn engine_name(&self) -> &'static str {
        self.shared.engine_name
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn options(&self) -> &WalOptions {
        &self.shared.options
    }

    pub fn counters(&self) -> &WalCounters {
        &self.shared.counters
    }

    /// When this WAL was opened (retention's initial timeout counts from here).
    pub fn opened_at(&self) -> SystemTime {
        self.shared.opened_at
    }

    /// The largest block (header and payload) one append may produce.
    pub fn block_bytes_max(&self) -> u64 {
        self.shared.block_bytes_max
    }

    /// Appends `records` as one block and waits until they are durable; returns their ticks.
    pub fn append(&self, records: &[Record<'_>]) -> Result<TickRange> {
        self.submit(self.prepare(records)?)?.wait()
    }

    /// Builds a block of `records` for `submit`, in the WAL's frames (`WalOptions::frame_bytes`).
    pub fn prepare(&self, records: &[Record<'_>]) -> Result<PreparedBlock> {
        block::prepare_framed(records, self.shared.options.frame_bytes)
    }

    /// Queues a prepared block (waiting only while the queue is full) and returns its pending
    /// completion. Blocks complete in the order they were submitted.
    pub fn submit(&self, block: PreparedBlock) -> Result<Appended> {
        let bytes = block.block_bytes();
        self.enqueue(Payload::Prepared(block), bytes)
    }

    /// Queues a block received from a leader, stored verbatim with its own ticks, which must
    /// follow the log's last tick.
    pub fn submit_block(&self, block: Block) -> Result<Appended> {
        let bytes = block.bytes().len();
        self.enqueue(Payload::Verbatim(block), bytes)
    }

    fn enqueue(&self, payload: Payload, bytes: usize) -> Result<Appended> {
        if bytes as u64 > self.shared.block_bytes_max {
            return Err(Error::BlockTooLarge {
                bytes: bytes as u64,
                bytes_max: self.shared.block_bytes_max,
            });
        }
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(self.failure());
        }
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(Error::Closed)?;
        let credit_bytes = bytes.min(self.shared.options.queue_bytes_max);
        self.shared.credits.acquire(credit_bytes);
        let completion = Completion::new();
        let guard = CompletionGuard {
            completion: Some(completion.clone()),
            submitted: Instant::now(),
        };
        let request = Box::new(Request {
            payload,
            completion: guard,
            credit_bytes,
            _taken: TakenSignal(completion.clone()),
        });
        if sender.send(request).is_err() {
            self.shared.credits.release(credit_bytes);
            return Err(Error::Closed);
        }
        Ok(Appended { completion })
    }

    fn failure(&self) -> Error {
        match &self.shared.lock().failed {
            Some(reason) => Error::WriterFailed(reason.clone()),
            None => Error::Closed,
        }
    }

    /// The first tick the WAL still holds, or `None` if it holds no block.
    pub fn first_tick(&self) -> Option<Tick> {
        self.shared.lock().tick_first()
    }

    /// The last tick readers can see: durable under the default sync policy, except for blocks
    /// from a leader (`submit_block`), which readers see once written (see `durable_tick`).
    pub fn last_tick(&self) -> Tick {
        self.shared.lock().tick_last
    }

    /// Waits until every tick up to `tick` is durable (per the sync policy), the WAL closes or
    /// fails, or `timeout` passes; returns whether it is durable. Wakes on change, never polls.
    pub fn wait_durable(&self, tick: Tick, timeout: Duration) -> bool {
        self.shared.wait_durable(tick, Instant::now() + timeout)
    }

    /// The last tick whose append has completed, durable per the sync policy: what a restart
    /// after a crash finds in the WAL.
    pub fn durable_tick(&self) -> Tick {
        Tick::new(self.shared.tick_durable.load(Ordering::Acquire))
    }

    /// Whether the ticks after `after` are all still in the WAL (ArangoDB's `fromPresent`).
    pub fn contains_after(&self, after: Tick) -> bool {
        let state = self.shared.lock();
        reader::floor(&state).max(state.floor) <= after
    }

    /// The earliest tick after which the WAL holds every tick: `contains_after` is true from it
    /// on.
    pub fn complete_after(&self) -> Tick {
        let state = self.shared.lock();
        reader::floor(&state).max(state.floor)
    }

    /// The log's floor: ticks at or before it are not served (`skip_to`); zero if none was set.
    pub fn floor(&self) -> Tick {
        self.shared.lock().floor
    }

    /// Moves the log past `tick` without appending: the next tick is after it, and no client is
    /// served from a tick before it (they get `contains_after` false, ArangoDB's 1414), because
    /// the store holds data the log before it does not describe (a restore). With `lower` and a
    /// log that holds no block, the floor may also go down (a restored follower starting in its
    /// leader's log where the first block it receives begins). Durable when it returns.
    pub fn skip_to(&self, tick: Tick, lower: bool) -> Result<()> {
        self.enqueue(Payload::Floor { tick, lower }, 0)?
            .wait()
            .map(|_| ())
    }

    /// Every segment with its tick range, oldest first, as `logger-tick-ranges` lists them.
    pub fn tick_ranges(&self) -> Vec<SegmentRange> {
        let state = self.shared.lock();
        let mut ranges: Vec<SegmentRange> = state
            .sealed
            .iter()
            .map(|s| SegmentRange {
                id: s.id,
                path: s.path.clone(),
                sealed: true,
                tick_min: s.ticks.first,
                tick_max: s.ticks.last,
                file_bytes: s.file_bytes,
                data_end: s.data_end,
            })
            .collect();
        if let Some(active) = &state.active {
            ranges.push(SegmentRange {
                id: active.id,
                path: active.path.clone(),
                sealed: false,
                tick_min: active.ticks.first,
                tick_max: active.ticks.last,
                file_bytes: active.map.len() as u64,
                data_end: active.data_end,
            });
        }
        ranges
    }

    /// A reader of the blocks holding ticks after `after` (exclusive). The first block it
    /// returns may start at or before `after`; callers skip those records. Fails with
    /// `TickCompacted` if retention already removed ticks after `after`.
    pub fn reader_after(&self, after: Tick) -> Result<Reader> {
        Reader::new(self.shared.clone(), after)
    }

    /// Hands back the pages of segments, sealed or active, that point reads (`block_at`)
    /// mapped since the last call (`PointReads`). The retention thread calls it every
    /// `POINT_READS_HANDED_BACK_EVERY`.
    pub fn hand_back_point_reads(&self) {
        hand_back_point_reads(&self.shared);
    }

    /// The visible block holding `tick`, or `None` if `tick` is not visible yet (or is zero). Its
    /// header is checked; its checksum is checked in parts by what reads it (a framed block's
    /// `record_at` checks the one frame it decompresses). Fails with `TickCompacted` if retention removed it. With `Block::record_at` this
    /// reads one record back by its tick, decompressing one frame of the block.
    pub fn block_at(&self, tick: Tick) -> Result<Option<Block>> {
        if tick == Tick::ZERO {
            return Ok(None);
        }
        let block = self
            .reader_after(tick.saturating_prev())?
            .for_point_reads()
            .next_block()?;
        Ok(block.filter(|block| block.ticks().contains(tick)))
    }

    /// Waits until the last visible tick is after `after`, the WAL closes or fails, or
    /// `timeout` passes; returns the last visible tick then. Wakes on change, never polls.
    pub fn wait_after(&self, after: Tick, timeout: Duration) -> Tick {
        self.shared.wait_after(after, Instant::now() + timeout)
    }

    /// Waits until the last visible tick is after `after`, or the WAL closes or fails; returns
    /// the last visible tick then. For async tasks (a shipper, say): wakes on change, never
    /// polls, and holds nothing the writer waits for.
    pub async fn changed_after(&self, after: Tick) -> Tick {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a publish between check and await is not missed.
            notified.as_mut().enable();
            let tick = Tick::new(self.shared.tick_visible.load(Ordering::Acquire));
            if tick > after
                || self.shared.closed.load(Ordering::Acquire)
                || self.shared.failed.load(Ordering::Acquire)
            {
                return tick;
            }
            notified.await;
        }
    }

    /// Registers or moves client `client`'s barrier: the WAL keeps every tick after `tick` until
    /// `expires`. Fails with `TickCompacted` if those ticks are already gone.
    pub fn set_barrier(&self, client: &str, tick: Tick, expires: SystemTime) -> Result<()> {
        let mut state = self.shared.lock();
        if reader::floor(&state).max(state.floor) > tick {
            return Err(Error::TickCompacted(tick));
        }
        state.lost.remove(client);
        state
            .retention
            .barriers
            .insert(client.to_string(), Barrier { tick, expires });
        Ok(())
    }

    /// Extends client `client`'s barrier to `expires`; false if it has none.
    pub fn extend_barrier(&self, client: &str, expires: SystemTime) -> bool {
        let mut state = self.shared.lock();
        match state.retention.barriers.get_mut(client) {
            Some(barrier) => {
                barrier.expires = expires;
                true
            }
            None => false,
        }
    }

    /// Drops client `client`'s barrier; false if it had none.
    pub fn drop_barrier(&self, client: &str) -> bool {
        self.shared
            .lock()
            .retention
            .barriers
            .remove(client)
            .is_some()
    }

    /// The unexpired and not yet collected barriers, by client.
    pub fn barriers(&self) -> Vec<(String, Barrier)> {
        let state = self.shared.lock();
        state
            .retention
            .barriers
            .iter()
            .map(|(c, b)| (c.clone(), b.clone()))
            .collect()
    }

    /// Bytes of blocks appended per second over the last minute (the retention passes sample
    /// it); `None` until two samples a second apart exist, or without background retention.
    pub fn append_rate(&self) -> Option<f64> {
        let appended = self
            .shared
            .appended
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (first, last) = (appended.front()?, appended.back()?);
        let seconds = last.0.duration_since(first.0).as_secs_f64();
        (seconds >= 1.0).then(|| last.1.saturating_sub(first.1) as f64 / seconds)
    }

    /// What the block at `offset` of sealed segment `segment` should be, by the segment's seal
    /// index (checked when the segment was opened): its first tick and the bytes it takes in
    /// the segment, padding included. For a block whose own bytes fail their checks.
    pub fn expected_block(&self, segment: SegmentId, offset: u64) -> Result<(Tick, u64)> {
        let sealed = self.sealed_segment(segment)?;
        let index = sealed.index()?;
        let entries: Vec<(u64, u64)> = segment::index_entries(index).collect();
        let at = entries
            .iter()
            .position(|&(_, o)| o == offset)
            .ok_or_else(|| Error::Corruption {
                segment_id: segment,
                path: sealed.path.clone(),
                offset,
                reason: "no block of the seal index starts here".into(),
            })?;
        let end = entries.get(at + 1).map_or(sealed.data_end, |&(_, o)| o);
        Ok((Tick::new(entries[at].0), end - offset))
    }

    /// Writes `block` over the damaged block at `offset` of sealed segment `segment`, and makes
    /// it durable. `block` must be the one the seal index names there (same first tick, same
    /// size): a follower's log holds its leader's blocks byte for byte, so the leader's copy
    /// repairs it. Readers map the file shared, so they see the repaired bytes at once.
    pub fn repair_block(&self, segment: SegmentId, offset: u64, block: &Block) -> Result<()> {
        let sealed = self.sealed_segment(segment)?;
        let (tick_first, bytes) = self.expected_block(segment, offset)?;
        let header = block.header();
        if block.ticks().first != tick_first || header.segment_bytes() as u64 != bytes {
            return Err(Error::InvalidBlock(
                "the replacement is not the block the seal index names at this offset",
            ));
        }
        let mut image = block.bytes().to_vec();
        image.resize(bytes as usize, 0);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&sealed.path)
            .map_err(|e| Error::io("open to repair", &sealed.path, e))?;
        std::os::unix::fs::FileExt::write_all_at(&file, &image, offset)
            .map_err(|e| Error::io("repair a block of", &sealed.path, e))?;
        file.sync_data()
            .map_err(|e| Error::io("sync the repaired", &sealed.path, e))?;
        // Read back through the mapping readers use.
        let map = sealed.map()?;
        let (header, bytes) = block::slice_data_block(map, offset, sealed.data_end)
            .and_then(|(header, bytes)| header.verify_crc(&bytes).map(|()| (header, bytes)))
            .map_err(|reason| Error::Corruption {
                segment_id: segment,
                path: sealed.path.clone(),
                offset,
                reason: format!("still damaged after the repair: {reason}"),
            })?;
        debug_assert_eq!(bytes.len(), header.block_bytes());
        tracing::warn!(
            segment = %segment,
            offset,
            ticks = %header.ticks(),
            "wal: repaired a damaged block with a copy from the leader"
        );
        Ok(())
    }

    fn sealed_segment(&self, segment: SegmentId) -> Result<Arc<SealedSegment>> {
        let state = self.shared.lock();
        state
            .sealed
            .iter()
            .find(|s| s.id == segment)
            .cloned()
            .ok_or_else(|| Error::Directory {
                dir: self.shared.dir.clone(),
                reason: format!("segment {segment} is not a sealed segment of this log"),
            })
    }

    /// If the archive size limit removed ticks client `client` still needed: where it stood.
    pub fn lost_position(&self, client: &str) -> Option<LostPosition> {
        self.shared.lock().lost.get(client).cloned()
    }

    /// The local store has made every tick up to `tick` durable on its own: retention may delete
    /// segments ending at or before it. Until this is called, retention deletes nothing.
    pub fn set_store_tick(&self, tick: Tick) {
        self.shared.lock().retention.store_tick = Some(tick);
    }

    /// The oldest sealed segment ending after `after` that retention would delete as of `now`
    /// if the store were persisted through `store_tick` and unneeded segments had no time to
    /// wait (`--wal.file-timeout`): the next segment whose live documents a store keeping them
    /// in the WAL moves to its value files. Retention itself still deletes it only when every
    /// rule holds, timers included.
    pub fn next_collectable(
        &self,
        store_tick: Tick,
        after: Tick,
        now: SystemTime,
    ) -> Option<SegmentRange> {
        let state = self.shared.lock();
        let facts = retention_facts(&state);
        let mut retention = state.retention.clone();
        retention.store_tick = Some(store_tick);
        retention.unneeded_since.clear();
        let policy = RetentionPolicy {
            file_timeout: Duration::ZERO,
            ..self.shared.options.retention.clone()
        };
        let plan = retention.plan(&policy, &facts, self.shared.opened_at, now);
        let segment = state
            .sealed
            .iter()
            .take_while(|s| plan.delete.contains(&s.id))
            .find(|s| s.ticks.last > after)?;
        Some(SegmentRange {
            id: segment.id,
            path: segment.path.clone(),
            sealed: true,
            tick_min: segment.ticks.first,
            tick_max: segment.ticks.last,
            file_bytes: segment.file_bytes,
            data_end: segment.data_end,
        })
    }

    /// Runs one retention pass as of `now` and deletes what it allows.
    pub fn run_retention(&self, now: SystemTime) -> Result<RetentionReport> {
        run_retention(&self.shared, now)
    }

    /// Stops accepting appends, lets the writer finish and sync what was queued, and joins the
    /// background threads. Returns the writer's failure, if it failed.
    pub fn close(&self) -> Result<()> {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        drop(
            self.stop_background
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("wal: a background thread panicked");
            }
        }
        let mut state = self.shared.lock();
        state.closed = true;
        self.shared.closed.store(true, Ordering::Release);
        self.shared.visible.notify_all();
        self.shared.notify.notify_waiters();
        drop(self.lock.lock().unwrap_or_else(|p| p.into_inner()).take());
        match &state.failed {
            Some(reason) => Err(Error::WriterFailed(reason.clone())),
            None => Ok(()),
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!("wal: closed after failure: {e}");
        }
    }
}

/// How often the pages that reads of single documents mapped are handed back
/// (`Wal::hand_back_point_reads`), in the WAL's segments and in the value files. Reads then map
/// them again from the page cache: random reads of 1M documents over HTTP, handed back every
/// second, had a p50 of 141–168 µs against 135–142 µs, and kept 24–26 MiB of files mapped
/// against 468 MiB (4 runs each). Every 10 s, what stays mapped is what was read in 10 s.
pub const POINT_READS_HANDED_BACK_EVERY: Duration = Duration::from_secs(10);

/// Samples of the appended bytes kept for `Wal::append_rate`: a minute at the default interval.
const RATE_SAMPLES: usize = 60;

fn retention_loop(shared: &Shared, interval: Duration, stop: &Receiver<()>) {
    let mut handed_back = Instant::now();
    loop {
        match stop.recv_timeout(interval) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        {
            let mut appended = shared
                .appended
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            appended.push_back((
                Instant::now(),
                shared.counters.block_bytes.load(Ordering::Relaxed),
            ));
            if appended.len() > RATE_SAMPLES {
                appended.pop_front();
            }
        }
        if let Err(e) = run_retention(shared, SystemTime::now()) {
            tracing::error!("wal: failed to run retention: {e}");
        }
        if handed_back.elapsed() >= POINT_READS_HANDED_BACK_EVERY {
            hand_back_point_reads(shared);
            handed_back = Instant::now();
        }
    }
}

/// `Wal::hand_back_point_reads`.
fn hand_back_point_reads(shared: &Shared) {
    let (sealed, active): (Vec<Arc<SealedSegment>>, Option<FileMap>) = {
        let state = shared.lock();
        let active = state
            .active
            .as_ref()
            .filter(|a| a.point_reads.take())
            .map(|a| a.map.clone());
        (state.sealed.iter().cloned().collect(), active)
    };
    for segment in sealed {
        segment.hand_back_point_reads();
    }
    if let Some(map) = active {
        map.release_from(0);
    }
}

/// What retention plans over: the sealed segments it may delete. The newest segment carries
/// the last tick across restarts: it is never deleted.
fn retention_facts(state: &State) -> Vec<SegmentFacts> {
    let mut facts: Vec<SegmentFacts> = state
        .sealed
        .iter()
        .map(|s| SegmentFacts {
            id: s.id,
            tick_last: s.ticks.last,
            file_bytes: s.file_bytes,
        })
        .collect();
    if state.active.is_none() {
        facts.pop();
    }
    facts
}

fn run_retention(shared: &Shared, now: SystemTime) -> Result<RetentionReport> {
    let (plan, doomed) = {
        let mut state = shared.lock();
        let facts = retention_facts(&state);
        let plan = state
            .retention
            .plan(&shared.options.retention, &facts, shared.opened_at, now);
        let mut doomed = Vec::with_capacity(plan.delete.len());
        for id in &plan.delete {
            let segment = state
                .sealed
                .pop_front()
                .expect("the plan deletes a prefix of the sealed segments");
            assert_eq!(segment.id, *id, "retention must delete oldest first");
            doomed.push(segment);
        }
        for (client, tick) in &plan.lost_clients {
            state.lost.insert(
                client.clone(),
                LostPosition {
                    tick: *tick,
                    when: now,
                },
            );
        }
        (plan, doomed)
    };
    let mut report = RetentionReport {
        lost_clients: plan.lost_clients.clone(),
        expired_clients: plan.expired_clients.clone(),
        kept: plan.kept.clone(),
        ..Default::default()
    };
    for segment in &doomed {
        if plan.forced.contains(&segment.id) {
            tracing::warn!(
                "wal: forcing removal of WAL segment {} because of overflowing archive; \
                 try to increase the value of the startup option --wal.archive-size-limit",
                segment.path.display()
            );
            report.forced.push(segment.path.clone());
        }
        match std::fs::remove_file(&segment.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove segment", &segment.path, e)),
        }
        shared
            .counters
            .segments_deleted
            .fetch_add(1, Ordering::Relaxed);
        report.deleted.push(segment.path.clone());
    }
    if !doomed.is_empty() {
        crate::fs::fsync_dir(&shared.dir)?;
        tracing::debug!(count = doomed.len(), "wal: retention deleted segments");
    }
    for (client, tick) in &plan.lost_clients {
        tracing::warn!(
            "wal: client {client} lost its position at tick {tick} to the archive size limit"
        );
    }
    Ok(report)
}
