//! The writer and syncer threads: pipelined group commit, rotation and sealing.
//!
//! Long for one concern: the two threads hand groups to each other, and rotation and sealing
//! happen between groups on the writer's thread; splitting them would split one protocol.
//!
//! Group commit runs as a two-stage pipeline, so the disk and the CPU both stay busy:
//!
//! 1. The **writer** owns the active segment file and the engine (with its aligned buffer). It
//!    waits for one append, takes every other queued append up to `group_bytes_max`, stamps
//!    ticks, copies the blocks into the buffer and writes them, then hands the group (its
//!    completions and index entries) to the syncer and goes on with the next group at once.
//! 2. The **syncer** takes every group handed over since its last round, makes them durable
//!    with one fdatasync (which covers everything written before it started), publishes them to
//!    readers, and completes their appends in order.
//!
//! While one fdatasync runs, the next groups are written, so each fdatasync covers as much as
//! arrived meanwhile, and an append waits for at most the fdatasync in flight plus its own.
//! Under the relaxed sync policies the syncer publishes and completes without an fdatasync and
//! syncs on its own clock (`Interval`) or never (`Never`, except on close).
//!
//! The buffer mirrors the file from the page holding the end of the data: after each write the
//! partial last page stays at the front of the buffer and is written again, unchanged, with the
//! next group. So O_DIRECT writes are always whole aligned pages, and earlier bytes of that page
//! are rewritten with their own value, which neither a torn write nor a concurrent fdatasync can
//! damage.
//!
//! Failure rules: an error writing or syncing stops the WAL for good (the content of the file is
//! then unknown, and a failed fdatasync may have dropped pages), and every pending and later
//! append fails with `WriterFailed`. An error creating the next segment (ENOSPC, say) fails only
//! the append that needed it: nothing was written for it, and the next append tries again.
//!
//! New segments come from `Spares`, a thread that prepares the next file ahead of time, so a
//! rotation costs a rename. Sealing waits until the syncer has published the whole segment.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::block::BLOCK_ALIGN;
use super::engine::Engine;
use super::recovery::RecoveredActive;
use super::segment::{self, SealedSegment, SEGMENT_HEADER_BYTES};
use super::{ActiveSegment, CompletionGuard, Payload, Request, Shared, SyncPolicy};
use crate::error::{Error, Result};
use crate::fs::{self, FileMap, DIRECT_ALIGN};
use crate::tick::{SegmentId, Tick, TickRange};
use crate::wal::tick_index::TickIndex;

const ZEROS: [u8; BLOCK_ALIGN] = [0; BLOCK_ALIGN];

/// A segment file shared by the writer (which writes it) and the syncer (which syncs it).
pub(crate) struct SegmentFile {
    id: SegmentId,
    path: PathBuf,
    file: File,
    /// The whole preallocated file, mapped for readers.
    map: FileMap,
    tick_first: Tick,
}

/// The segment the writer appends to.
struct OpenSegment {
    file: Arc<SegmentFile>,
    capacity: u64,
    tick_last: Tick,
    block_count: usize,
    data_end: u64,
}

/// Whether an error leaves the writer able to go on.
enum Failure {
    /// Nothing was written for the failed append; later ones may succeed.
    Retryable(Error),
    /// The WAL must stop.
    Fatal(Error),
}

/// What the writer hands to the syncer.
pub(crate) enum SyncJob {
    /// Blocks written to `segment` up to `data_end`, to be made durable and published.
    Written {
        segment: Arc<SegmentFile>,
        data_end: u64,
        /// The segment's last tick, and the log's (equal, but kept apart for the assertion).
        tick_last: Tick,
        index: Vec<(Tick, u64)>,
        completions: Vec<(CompletionGuard, TickRange)>,
        /// Published by the writer already (blocks from a leader, visible once written).
        published: bool,
    },
    /// Answered once every earlier job is durable (per the policy) and published.
    Drain(Sender<()>),
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    engine: Box<dyn Engine>,
    spares: Spares,
    syncer: Sender<SyncJob>,
    segment: Option<OpenSegment>,
    /// File offset of `buffer[0]`; a multiple of `DIRECT_ALIGN`.
    buf_offset: u64,
    /// Bytes of the buffer in use: `buffer[..buf_len]` mirrors the file from `buf_offset`.
    buf_len: usize,
    /// Appended bytes not yet handed to the engine.
    unwritten: bool,
    /// The last tick assigned and written (`tick_written`; the syncer publishes `tick_synced`).
    tick_written: Tick,
    /// Index entries and completions of blocks written but not yet handed to the syncer.
    unpublished: Vec<(Tick, u64)>,
    pending: Vec<(CompletionGuard, TickRange)>,
    /// Whether every block in `unpublished` came from a leader (`Payload::Verbatim`).
    verbatim_only: bool,
    /// `tick_written` at the last hand-off: once readers see it, everything handed is visible.
    tick_handed: Tick,
    /// The id the next segment opened gets. Readers learn it (`State::next_segment_id`) only
    /// once that segment's first block is published.
    next_segment_id: SegmentId,
    failed: Option<String>,
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        engine: Box<dyn Engine>,
        spares: Spares,
        syncer: Sender<SyncJob>,
        active: Option<RecoveredActive>,
    ) -> Result<Writer> {
        let (tick_written, next_segment_id) = {
            let state = shared.lock();
            (state.tick_last, state.next_segment_id)
        };
        let mut writer = Writer {
            shared,
            engine,
            spares,
            syncer,
            segment: None,
            buf_offset: 0,
            buf_len: 0,
            unwritten: false,
            tick_written,
            unpublished: Vec::new(),
            pending: Vec::new(),
            verbatim_only: true,
            tick_handed: tick_written,
            next_segment_id,
            failed: None,
        };
        if let Some(active) = active {
            // Go on appending to the recovered segment: load its partial last page.
            let file = fs::open_rw(&active.path, writer.engine.direct())?;
            writer.buf_offset = active.data_end / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64;
            writer.buf_len = (active.data_end - writer.buf_offset) as usize;
            let tail = &active.map[writer.buf_offset as usize..active.data_end as usize];
            writer.engine.buffer_mut().as_mut_slice()[..tail.len()].copy_from_slice(tail);
            writer.segment = Some(OpenSegment {
                capacity: active.map.len() as u64,
                file: Arc::new(SegmentFile {
                    id: active.id,
                    path: active.path,
                    file,
                    map: active.map,
                    tick_first: active.ticks.first,
                }),
                tick_last: active.ticks.last,
                block_count: active.index.len(),
                data_end: active.data_end,
            });
        }
        Ok(writer)
    }

    pub fn run(mut self, requests: Receiver<Box<Request>>) {
        let _guard = PanicGuard(self.shared.clone());
        raise_priority(&self.shared);
        let group_bytes_max = self.shared.options.group_bytes_max;
        loop {
            let waiting = Instant::now();
            let Ok(first) = requests.recv() else { break };
            self.shared
                .counters
                .idle_nanos
                .fetch_add(waiting.elapsed().as_nanos() as u64, Ordering::Relaxed);
            let mut group_bytes = first.credit_bytes;
            let mut group = vec![*first];
            while group_bytes < group_bytes_max {
                match requests.try_recv() {
                    Ok(request) => {
                        group_bytes += request.credit_bytes;
                        group.push(*request);
                    }
                    Err(_) => break,
                }
            }
            self.commit(group);
        }
        // Closing: everything was written and handed over group by group; dropping the syncer's
        // channel makes it sync what the relaxed policies left unsynced, then stop.
    }

    fn commit(&mut self, group: Vec<Request>) {
        self.shared.counters.groups.fetch_add(1, Ordering::Relaxed);
        for request in group {
            self.shared.credits.release(request.credit_bytes);
            if self.failed.is_none() && self.shared.failed.load(Ordering::Acquire) {
                // The syncer failed: take its reason and stop too.
                self.failed = Some(self.shared.lock().failed.clone().unwrap_or_default());
            }
            if let Some(reason) = &self.failed {
                request
                    .completion
                    .complete(Err(Error::WriterFailed(reason.clone())));
                continue;
            }
            if let Payload::Floor { tick, lower } = &request.payload {
                let result = self.floor(*tick, *lower);
                let range = TickRange {
                    first: *tick,
                    last: *tick,
                };
                match result {
                    Ok(()) => request.completion.complete(Ok(range)),
                    Err(Failure::Retryable(error)) => request.completion.complete(Err(error)),
                    Err(Failure::Fatal(error)) => {
                        self.poison(&error);
                        request.completion.complete(Err(error));
                    }
                }
                continue;
            }
            match self.append(&request.payload) {
                Ok(ticks) => self.pending.push((request.completion, ticks)),
                // Nothing was written for it; the next append tries again (a new spare segment,
                // once space is freed, for example).
                Err(Failure::Retryable(error)) => request.completion.complete(Err(error)),
                Err(Failure::Fatal(error)) => {
                    self.poison(&error);
                    request.completion.complete(Err(error));
                }
            }
        }
        if self.failed.is_none() && self.unwritten {
            if let Err(e) = self.write_out() {
                self.poison(&e);
            }
        }
        if self.failed.is_none() {
            self.hand_off();
        }
    }

    /// Stamps and buffers one block, rotating first if it does not fit.
    fn append(&mut self, payload: &Payload) -> std::result::Result<TickRange, Failure> {
        let (ticks, block_bytes) = match payload {
            Payload::Prepared(prepared) => {
                let first = self.tick_written.checked_next();
                let ticks = first
                    .and_then(|t| TickRange::with_count(t, u64::from(prepared.record_count())));
                let ticks = ticks.ok_or_else(|| {
                    Failure::Retryable(Error::InvalidRecord("tick space exhausted".into()))
                })?;
                (ticks, prepared.block_bytes())
            }
            Payload::Floor { .. } => {
                return Err(Failure::Retryable(Error::InvalidRecord(
                    "a floor is not a block".into(),
                )))
            }
            Payload::Verbatim(block) => {
                let ticks = block.ticks();
                if ticks.first <= self.tick_written {
                    return Err(Failure::Retryable(Error::TickOrder {
                        tick_first: ticks.first,
                        tick_last: self.tick_written,
                    }));
                }
                (ticks, block.bytes().len())
            }
        };
        let segment_bytes = block_bytes.next_multiple_of(BLOCK_ALIGN) as u64;
        let fits = self
            .segment
            .as_ref()
            .is_some_and(|s| segment::fits(s.capacity, s.data_end, s.block_count, segment_bytes));
        if !fits {
            self.rotate(ticks.first)?;
        }
        let offset = self
            .segment
            .as_ref()
            .map(|s| s.data_end)
            .expect("rotate opened a segment");
        let fatal = Failure::Fatal;
        match payload {
            Payload::Prepared(prepared) => {
                self.verbatim_only = false;
                self.buffer(&prepared.stamp(ticks.first)).map_err(fatal)?;
                self.buffer(prepared.payload()).map_err(fatal)?;
                self.shared
                    .counters
                    .raw_bytes
                    .fetch_add(u64::from(prepared.raw_bytes()), Ordering::Relaxed);
            }
            Payload::Floor { .. } => {}
            Payload::Verbatim(block) => {
                self.buffer(block.bytes()).map_err(fatal)?;
                let raw = u64::from(block.header().raw_bytes);
                self.shared
                    .counters
                    .raw_bytes
                    .fetch_add(raw, Ordering::Relaxed);
            }
        }
        let padding = segment_bytes as usize - block_bytes;
        self.buffer(&ZEROS[..padding]).map_err(fatal)?;
        let segment = self.segment.as_mut().expect("rotate opened a segment");
        assert_eq!(
            segment.data_end, offset,
            "block must land at the end of the data"
        );
        segment.data_end = offset + segment_bytes;
        assert_eq!(segment.data_end, self.buf_offset + self.buf_len as u64);
        if segment.block_count == 0 {
            assert_eq!(
                segment.file.tick_first, ticks.first,
                "a segment is named by its first tick"
            );
        }
        segment.block_count += 1;
        segment.tick_last = ticks.last;
        self.unpublished.push((ticks.first, offset));
        assert!(ticks.first > self.tick_written, "ticks strictly increase");
        self.tick_written = ticks.last;
        let counters = &self.shared.counters;
        counters.blocks.fetch_add(1, Ordering::Relaxed);
        counters.records.fetch_add(ticks.count(), Ordering::Relaxed);
        counters
            .block_bytes
            .fetch_add(block_bytes as u64, Ordering::Relaxed);
        Ok(ticks)
    }

    /// Copies `bytes` to the end of the buffer, writing out full buffers on the way.
    fn buffer(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let capacity = self.engine.buffer().capacity();
            if self.buf_len == capacity {
                self.write_out()?;
                continue;
            }
            let n = (capacity - self.buf_len).min(bytes.len());
            self.engine.buffer_mut().as_mut_slice()[self.buf_len..self.buf_len + n]
                .copy_from_slice(&bytes[..n]);
            self.buf_len += n;
            self.unwritten = true;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Writes the buffer (whole pages, the last one zero-padded) and keeps its partial last
    /// page for the next write.
    fn write_out(&mut self) -> Result<()> {
        let Some(segment) = &self.segment else {
            return Ok(());
        };
        if !self.unwritten {
            return Ok(());
        }
        let len = self.buf_len.next_multiple_of(DIRECT_ALIGN);
        assert!(
            self.buf_offset + len as u64 <= segment.capacity,
            "write past the preallocated segment"
        );
        self.engine.buffer_mut().as_mut_slice()[self.buf_len..len].fill(0);
        let started = Instant::now();
        self.engine
            .write(&segment.file.file, &segment.file.path, self.buf_offset, len)?;
        let counters = &self.shared.counters;
        counters
            .io_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        counters
            .write_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        self.unwritten = false;
        let keep_from = self.buf_len / DIRECT_ALIGN * DIRECT_ALIGN;
        self.engine
            .buffer_mut()
            .as_mut_slice()
            .copy_within(keep_from..self.buf_len, 0);
        self.buf_offset += keep_from as u64;
        self.buf_len -= keep_from;
        Ok(())
    }

    /// Moves the log's floor to `tick` (see `Wal::skip_to`) once everything before it is
    /// durable and visible.
    fn floor(&mut self, tick: Tick, lower: bool) -> std::result::Result<(), Failure> {
        if self.unwritten {
            self.write_out().map_err(Failure::Fatal)?;
        }
        self.hand_off();
        self.drain().map_err(Failure::Fatal)?;
        let holds_blocks = self.shared.lock().tick_first().is_some()
            || self.segment.as_ref().is_some_and(|s| s.block_count > 0);
        if tick < self.tick_written && (!lower || holds_blocks) {
            return Err(Failure::Retryable(Error::TickOrder {
                tick_first: tick,
                tick_last: self.tick_written,
            }));
        }
        super::floor::write(&self.shared.dir, tick).map_err(Failure::Retryable)?;
        self.tick_written = tick;
        self.tick_handed = tick;
        {
            let mut state = self.shared.lock();
            state.floor = tick;
            state.tick_last = tick;
            self.shared
                .tick_visible
                .store(tick.get(), Ordering::Release);
            self.shared
                .tick_durable
                .store(tick.get(), Ordering::Release);
        }
        self.shared.visible.notify_all();
        self.shared.notify.notify_waiters();
        Ok(())
    }

    /// Hands the written, not yet handed blocks and their completions to the syncer.
    fn hand_off(&mut self) {
        if self.unpublished.is_empty() && self.pending.is_empty() {
            return;
        }
        let Some(segment) = &self.segment else { return };
        assert!(
            !self.unwritten,
            "only written blocks are handed to the syncer"
        );
        let index = std::mem::take(&mut self.unpublished);
        let verbatim_only = std::mem::replace(&mut self.verbatim_only, true);
        // Blocks from a leader are made visible now, before the fdatasync, if nothing handed
        // earlier is still waiting to be published (readers see the log in order).
        let published = verbatim_only && {
            let mut state = self.shared.lock();
            let early = state.tick_last == self.tick_handed;
            if early {
                publish(
                    &mut state,
                    &segment.file,
                    segment.data_end,
                    self.tick_written,
                    &index,
                );
                self.shared
                    .tick_visible
                    .store(state.tick_last.get(), Ordering::Release);
            }
            early
        };
        if published {
            self.shared.visible.notify_all();
            self.shared.notify.notify_waiters();
        }
        self.tick_handed = self.tick_written;
        let job = SyncJob::Written {
            segment: segment.file.clone(),
            data_end: segment.data_end,
            tick_last: self.tick_written,
            index: if published { Vec::new() } else { index },
            completions: std::mem::take(&mut self.pending),
            published,
        };
        // If the syncer is gone (it panicked), the completions fail as the job is dropped.
        let _ = self.syncer.send(job);
    }

    /// Waits until the syncer has made everything handed to it durable and published.
    fn drain(&mut self) -> Result<()> {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let stopped = || Error::WriterFailed("the syncer stopped".into());
        self.syncer
            .send(SyncJob::Drain(done_tx))
            .map_err(|_| stopped())?;
        done_rx.recv().map_err(|_| stopped())?;
        match &self.shared.lock().failed {
            Some(reason) => Err(Error::WriterFailed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Seals the current segment (if any) and opens a new one whose first block starts at
    /// `tick_first`.
    fn rotate(&mut self, tick_first: Tick) -> std::result::Result<(), Failure> {
        let spare = self.spares.take().map_err(Failure::Retryable)?;
        if self.segment.is_some() {
            self.write_out().map_err(Failure::Fatal)?;
            self.hand_off();
            self.drain().map_err(Failure::Fatal)?;
            self.seal().map_err(Failure::Fatal)?;
        }
        let id = self.next_segment_id;
        let path = self.shared.dir.join(segment::file_name(id, tick_first));
        if let Err(e) = std::fs::rename(&spare, &path) {
            let _ = std::fs::remove_file(&spare);
            return Err(Failure::Retryable(Error::io(
                "rename spare segment",
                &path,
                e,
            )));
        }
        // Without this, a crash could leave the data of acknowledged appends in a file still
        // named as a spare, which recovery removes.
        fs::fsync_dir(&self.shared.dir).map_err(Failure::Fatal)?;
        self.next_segment_id = id.next();
        let file = fs::open_rw(&path, self.engine.direct()).map_err(Failure::Fatal)?;
        let capacity = self.shared.options.segment_bytes;
        let map = fs::map(&file, &path, capacity).map_err(Failure::Fatal)?;
        self.shared
            .counters
            .segments_created
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(segment = %path.display(), "wal: opened segment");
        self.segment = Some(OpenSegment {
            file: Arc::new(SegmentFile {
                id,
                path,
                file,
                map,
                tick_first,
            }),
            capacity,
            tick_last: tick_first,
            block_count: 0,
            data_end: 0,
        });
        self.buf_offset = 0;
        self.buf_len = 0;
        let header = segment::encode_header(id, tick_first, unix_millis());
        self.buffer(&header).map_err(Failure::Fatal)?;
        if let Some(segment) = &mut self.segment {
            segment.data_end = SEGMENT_HEADER_BYTES as u64;
        }
        Ok(())
    }

    /// Writes the seal block and locator after the data, syncs, cuts the file to its used
    /// length, and hands the segment to readers as sealed. The syncer must be drained.
    fn seal(&mut self) -> Result<()> {
        let Some(segment) = &self.segment else {
            return Ok(());
        };
        let (id, seal_offset, block_count) =
            (segment.file.id, segment.data_end, segment.block_count);
        let ticks = TickRange::new(segment.file.tick_first, segment.tick_last);
        let tail = {
            let state = self.shared.lock();
            let active = state
                .active
                .as_ref()
                .filter(|a| a.id == id)
                .expect("the segment to seal is published");
            assert_eq!(active.index.len(), block_count);
            assert_eq!(active.data_end, seal_offset);
            segment::seal_tail(ticks, active.index.entries(), seal_offset)
        };
        self.buffer(&tail)?;
        let file_bytes = self.buf_offset + self.buf_len as u64;
        self.write_out()?;
        let segment = self.segment.take().expect("checked above");
        let file = &segment.file;
        let started = Instant::now();
        self.engine.sync(&file.file, &file.path)?;
        self.shared
            .counters
            .io_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        fs::truncate(&file.file, &file.path, file_bytes)?;
        fs::fsync(&file.file, &file.path)?;
        let map = fs::map(&file.file, &file.path, file_bytes)?;
        let sealed = SealedSegment::new(
            id,
            file.path.clone(),
            ticks,
            seal_offset,
            block_count as u32,
            file_bytes,
            Some(map),
        );
        let mut state = self.shared.lock();
        assert!(state.active.as_ref().is_some_and(|a| a.id == id));
        state.active = None;
        state.sealed.push_back(Arc::new(sealed));
        tracing::debug!(segment = %file.path.display(), %ticks, "wal: sealed segment");
        Ok(())
    }

    fn poison(&mut self, error: &Error) {
        let reason = error_chain(error);
        self.failed = Some(reason.clone());
        poison(&self.shared, reason);
        for (completion, _) in self.pending.drain(..) {
            completion.complete(Err(Error::WriterFailed(error_chain(error))));
        }
    }
}

/// Marks the WAL failed for good and wakes every waiter.
fn poison(shared: &Shared, reason: String) {
    tracing::error!("wal: stopped for good: {reason}");
    shared.failed.store(true, Ordering::Release);
    let mut state = shared.lock();
    if state.failed.is_none() {
        state.failed = Some(reason);
    }
    drop(state);
    shared.visible.notify_all();
    shared.notify.notify_waiters();
}

/// The syncer thread: makes handed-over groups durable, publishes them, completes them.
pub(crate) fn run_syncer(shared: Arc<Shared>, jobs: Receiver<SyncJob>) {
    let _guard = PanicGuard(shared.clone());
    raise_priority(&shared);
    let mut unsynced: Option<Arc<SegmentFile>> = None;
    let mut last_sync = Instant::now();
    loop {
        let first = match shared.options.sync {
            SyncPolicy::Interval(interval) if unsynced.is_some() => {
                match jobs.recv_timeout(interval.saturating_sub(last_sync.elapsed())) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        if let Some(file) = unsynced.take() {
                            sync(&shared, &file, &mut last_sync);
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            _ => match jobs.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        let mut batch = vec![first];
        batch.extend(jobs.try_iter());
        let segment = batch.iter().rev().find_map(|job| match job {
            SyncJob::Written { segment, .. } => Some(segment.clone()),
            SyncJob::Drain(_) => None,
        });
        if let Some(segment) = segment {
            let sync_now = match shared.options.sync {
                SyncPolicy::EveryGroup => true,
                SyncPolicy::Interval(interval) => last_sync.elapsed() >= interval,
                SyncPolicy::Never => false,
            };
            if sync_now && !shared.failed.load(Ordering::Acquire) {
                sync(&shared, &segment, &mut last_sync);
                unsynced = None;
            } else {
                unsynced = Some(segment);
            }
        }
        finish(&shared, batch);
    }
    // Closing: what the relaxed policies left unsynced is synced now.
    if let Some(file) = unsynced {
        if !shared.failed.load(Ordering::Acquire) {
            sync(&shared, &file, &mut last_sync);
        }
    }
}

/// Applies `io_thread_nice` to the calling thread, best effort.
fn raise_priority(shared: &Shared) {
    fs::set_thread_nice_or_say(shared.options.io_thread_nice);
}

/// fdatasync of `file`; a failure stops the WAL for good.
fn sync(shared: &Shared, file: &SegmentFile, last_sync: &mut Instant) {
    let started = Instant::now();
    let result = fs::fdatasync(&file.file, &file.path);
    let nanos = started.elapsed().as_nanos() as u64;
    let counters = &shared.counters;
    counters.sync_latency.record(started.elapsed());
    counters.syncs.fetch_add(1, Ordering::Relaxed);
    counters.sync_nanos.fetch_add(nanos, Ordering::Relaxed);
    *last_sync = Instant::now();
    if let Err(error) = result {
        poison(shared, error_chain(&error));
    }
}

/// Publishes the written blocks of `batch` and completes its appends and drains, in order; fails
/// them all if the WAL has failed.
fn finish(shared: &Shared, batch: Vec<SyncJob>) {
    let failed = shared.lock().failed.clone();
    if failed.is_none() {
        // Durable first: a reader that sees a tick published here may rely on it being durable.
        let durable = batch.iter().rev().find_map(|job| match job {
            SyncJob::Written { tick_last, .. } => Some(tick_last.get()),
            SyncJob::Drain(_) => None,
        });
        if let Some(durable) = durable {
            shared.tick_durable.fetch_max(durable, Ordering::AcqRel);
        }
        let mut state = shared.lock();
        for job in &batch {
            let SyncJob::Written {
                segment,
                data_end,
                tick_last,
                index,
                published: false,
                ..
            } = job
            else {
                continue;
            };
            publish(&mut state, segment, *data_end, *tick_last, index);
        }
        shared
            .tick_visible
            .store(state.tick_last.get(), Ordering::Release);
        drop(state);
        shared.visible.notify_all();
        shared.notify.notify_waiters();
    }
    for job in batch {
        match job {
            SyncJob::Written { completions, .. } => {
                for (completion, ticks) in completions {
                    shared
                        .counters
                        .append_latency
                        .record(completion.submitted.elapsed());
                    completion.complete(match &failed {
                        Some(reason) => Err(Error::WriterFailed(reason.clone())),
                        None => Ok(ticks),
                    });
                }
            }
            SyncJob::Drain(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Makes blocks written to `segment` up to `data_end` (last tick `tick_last`, new index entries
/// `index`) visible to readers.
fn publish(
    state: &mut super::State,
    segment: &SegmentFile,
    data_end: u64,
    tick_last: Tick,
    index: &[(Tick, u64)],
) {
    if !index.is_empty() {
        let ticks = TickRange::new(segment.tick_first, tick_last);
        match &mut state.active {
            Some(active) if active.id == segment.id => {
                assert!(data_end >= active.data_end);
                active.data_end = data_end;
                active.ticks = ticks;
                active.index.extend_from(index);
            }
            other => {
                assert!(
                    other.is_none(),
                    "the previous segment is sealed before the next opens"
                );
                let mut entries = TickIndex::new();
                entries.extend_from(index);
                // Only now: a reader starting at the end before this takes the segment after
                // the last one it sees, which must be this one, not the one after it.
                state.next_segment_id = segment.id.next();
                *other = Some(ActiveSegment {
                    id: segment.id,
                    path: segment.path.clone(),
                    map: segment.map.clone(),
                    data_end,
                    ticks,
                    index: entries,
                    point_reads: Default::default(),
                });
            }
        }
    }
    assert!(tick_last >= state.tick_last, "visible ticks never go back");
    state.tick_last = tick_last;
}

/// Marks the WAL failed if a WAL thread unwinds, so appenders get an error instead of a WAL
/// that silently accepts nothing.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            poison(
                &self.0,
                format!(
                    "the {} thread panicked",
                    std::thread::current().name().unwrap_or("wal")
                ),
            );
        }
    }
}

/// The error and its sources, as one line.
pub(crate) fn error_chain(error: &Error) -> String {
    error.chain()
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Prepares spare segment files ahead of need on a thread of its own.
pub(crate) struct Spares {
    inner: Arc<SparesInner>,
    thread: Option<JoinHandle<()>>,
}

struct SparesInner {
    slot: Mutex<SpareSlot>,
    changed: Condvar,
}

#[derive(Default)]
struct SpareSlot {
    ready: Option<Result<PathBuf>>,
    stop: bool,
}

impl Spares {
    pub fn start(shared: Arc<Shared>) -> Result<Spares> {
        let inner = Arc::new(SparesInner {
            slot: Mutex::new(SpareSlot::default()),
            changed: Condvar::new(),
        });
        let worker = inner.clone();
        let dir = shared.dir.clone();
        let thread = std::thread::Builder::new()
            .name("wal-spares".into())
            .spawn(move || worker.run(&shared))
            .map_err(|e| Error::io("spawn spare segment thread", &dir, e))?;
        Ok(Spares {
            inner,
            thread: Some(thread),
        })
    }

    /// The join handle of the preparing thread, for the WAL to join on close.
    pub fn take_thread(&mut self) -> Option<JoinHandle<()>> {
        self.thread.take()
    }

    /// A prepared spare file, waiting for it if needed; the thread starts on the next one. An
    /// error prepared before this call is stale (space may have been freed since): it is
    /// dropped and a fresh attempt decides.
    fn take(&self) -> Result<PathBuf> {
        let mut slot = self.inner.slot.lock().unwrap_or_else(|p| p.into_inner());
        let mut fresh = false;
        loop {
            match slot.ready.take() {
                Some(Err(_)) if !fresh => fresh = true,
                Some(ready) => {
                    self.inner.changed.notify_all();
                    return ready;
                }
                None => fresh = true,
            }
            self.inner.changed.notify_all();
            slot = self
                .inner
                .changed
                .wait(slot)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        let mut slot = self.inner.slot.lock().unwrap_or_else(|p| p.into_inner());
        slot.stop = true;
        self.inner.changed.notify_all();
    }
}

impl SparesInner {
    fn run(&self, shared: &Shared) {
        let mut sequence = 0u64;
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if slot.stop {
                if let Some(Ok(path)) = slot.ready.take() {
                    let _ = std::fs::remove_file(path);
                }
                return;
            }
            if slot.ready.is_some() {
                slot = self.changed.wait(slot).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            drop(slot);
            sequence += 1;
            let path = shared.dir.join(format!("spare-{sequence}.wal.tmp"));
            let prepared = prepare_spare(&path, &shared.options).inspect_err(|e| {
                tracing::warn!(
                    "wal: failed to prepare the next segment: {}",
                    error_chain(e)
                );
                let _ = std::fs::remove_file(&path);
            });
            slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            slot.ready = Some(prepared.map(|()| path));
            self.changed.notify_all();
        }
    }
}

/// Creates a preallocated (and, by default, zero-filled) file for the next segment.
fn prepare_spare(path: &Path, options: &super::WalOptions) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let file = fs::create_new(path)?;
    fs::preallocate(&file, path, options.segment_bytes)?;
    if options.zero_fill {
        fs::zero_fill(&file, path, options.segment_bytes)?;
    } else {
        fs::fdatasync(&file, path)?;
    }
    Ok(())
}
