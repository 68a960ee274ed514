//! The writer thread: group commit into the active segment, rotation and sealing.
//!
//! The writer owns the active segment file and the engine (with its aligned buffer). It waits
//! for one append, takes every other queued append up to `group_bytes_max`, stamps ticks,
//! copies the blocks into the buffer, writes them with as few writes as the buffer allows and
//! ends the group with one fdatasync; then it publishes the new blocks to readers and completes
//! every append of the group, in order.
//!
//! The buffer mirrors the file from the page holding the end of the data: after each write the
//! partial last page stays at the front of the buffer and is written again, unchanged, with the
//! next group. So O_DIRECT writes are always whole aligned pages and earlier bytes of that page
//! are rewritten with their own value, which a torn write cannot damage.
//!
//! Failure rules: an error writing or syncing stops the writer for good (the content of the
//! file is then unknown, and a failed fdatasync may have dropped pages), and every pending and
//! later append fails with `WriterFailed`. An error creating the next segment (ENOSPC, say)
//! fails only the appends that needed it: nothing was written for them, and the next append
//! tries again.
//!
//! New segments come from `Spares`, a thread that prepares the next file ahead of time
//! (preallocate, zero-fill, sync) so rotation costs a rename instead of a 64 MiB write.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::block::BLOCK_ALIGN;
use super::engine::Engine;
use super::recovery::RecoveredActive;
use super::segment::{self, SealedSegment, SEGMENT_HEADER_BYTES};
use super::{ActiveSegment, CompletionGuard, Payload, Request, Shared, SyncPolicy};
use crate::error::{Error, Result};
use crate::fs::{self, DIRECT_ALIGN};
use crate::tick::{SegmentId, Tick, TickRange};
use crate::wal::tick_index::TickIndex;

const ZEROS: [u8; BLOCK_ALIGN] = [0; BLOCK_ALIGN];

/// The segment the writer appends to.
struct OpenSegment {
    id: SegmentId,
    path: PathBuf,
    file: File,
    map: Bytes,
    capacity: u64,
    tick_first: Tick,
    tick_last: Tick,
    block_count: usize,
    data_end: u64,
}

/// Whether an error leaves the writer able to go on.
enum Failure {
    /// Nothing was written for the failed appends; later ones may succeed.
    Retryable(Error),
    /// The writer must stop.
    Fatal(Error),
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    engine: Box<dyn Engine>,
    spares: Spares,
    segment: Option<OpenSegment>,
    /// File offset of `buffer[0]`; a multiple of `DIRECT_ALIGN`.
    buf_offset: u64,
    /// Bytes of the buffer in use: `buffer[..buf_len]` mirrors the file from `buf_offset`.
    buf_len: usize,
    /// Appended bytes not yet handed to the engine.
    unwritten: bool,
    /// Written bytes not yet synced.
    unsynced: bool,
    last_sync: Instant,
    /// The last tick assigned and written.
    tick_written: Tick,
    /// Index entries of the active segment not yet published.
    unpublished: Vec<(Tick, u64)>,
    failed: Option<String>,
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        engine: Box<dyn Engine>,
        spares: Spares,
        active: Option<RecoveredActive>,
    ) -> Result<Writer> {
        let tick_written = shared.lock().tick_last;
        let mut writer = Writer {
            shared,
            engine,
            spares,
            segment: None,
            buf_offset: 0,
            buf_len: 0,
            unwritten: false,
            unsynced: false,
            last_sync: Instant::now(),
            tick_written,
            unpublished: Vec::new(),
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
                id: active.id,
                capacity: active.map.len() as u64,
                map: active.map,
                path: active.path,
                file,
                tick_first: active.ticks.first,
                tick_last: active.ticks.last,
                block_count: active.index.len(),
                data_end: active.data_end,
            });
        }
        Ok(writer)
    }

    pub fn run(mut self, requests: Receiver<Request>) {
        let _guard = PanicGuard(self.shared.clone());
        let group_bytes_max = self.shared.options.group_bytes_max;
        loop {
            let first = match self.next_request(&requests) {
                Some(first) => first,
                None => break,
            };
            let mut group_bytes = first.credit_bytes;
            let mut group = vec![first];
            while group_bytes < group_bytes_max {
                match requests.try_recv() {
                    Ok(request) => {
                        group_bytes += request.credit_bytes;
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.commit(group);
        }
        // Closing: make everything written durable, whatever the policy.
        if self.failed.is_none() && (self.unwritten || self.unsynced) {
            if let Err(e) = self.write_out(true) {
                self.poison(&e);
            }
        }
    }

    /// The next request, syncing on time under `SyncPolicy::Interval` while idle; `None` once
    /// the WAL is closed and the queue is drained.
    fn next_request(&mut self, requests: &Receiver<Request>) -> Option<Request> {
        loop {
            let interval = match self.shared.options.sync {
                SyncPolicy::Interval(interval) if self.unsynced && self.failed.is_none() => interval,
                _ => return requests.recv().ok(),
            };
            let wait = interval.saturating_sub(self.last_sync.elapsed());
            match requests.recv_timeout(wait) {
                Ok(request) => return Some(request),
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.sync_segment() {
                        self.poison(&e);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    fn commit(&mut self, group: Vec<Request>) {
        self.shared.counters.groups.fetch_add(1, Ordering::Relaxed);
        let mut written: Vec<(CompletionGuard, TickRange)> = Vec::with_capacity(group.len());
        for request in group {
            self.shared.credits.release(request.credit_bytes);
            if let Some(reason) = &self.failed {
                request.completion.complete(Err(Error::WriterFailed(reason.clone())));
                continue;
            }
            match self.append(&request.payload) {
                Ok(ticks) => written.push((request.completion, ticks)),
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
            let sync = match self.shared.options.sync {
                SyncPolicy::EveryGroup => true,
                SyncPolicy::Interval(interval) => self.last_sync.elapsed() >= interval,
                SyncPolicy::Never => false,
            };
            match self.write_out(sync) {
                Ok(()) => self.publish(),
                Err(e) => self.poison(&e),
            }
        }
        for (completion, ticks) in written {
            let result = match &self.failed {
                Some(reason) => Err(Error::WriterFailed(reason.clone())),
                None => Ok(ticks),
            };
            completion.complete(result);
        }
    }

    /// Stamps and buffers one block, rotating first if it does not fit.
    fn append(&mut self, payload: &Payload) -> std::result::Result<TickRange, Failure> {
        let (ticks, block_bytes) = match payload {
            Payload::Prepared(prepared) => {
                let first = self.tick_written.checked_next();
                let ticks = first.and_then(|t| TickRange::with_count(t, u64::from(prepared.record_count())));
                let ticks = ticks.ok_or_else(|| Failure::Retryable(Error::InvalidRecord("tick space exhausted".into())))?;
                (ticks, prepared.block_bytes())
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
        let offset = self.segment.as_ref().map(|s| s.data_end).expect("rotate opened a segment");
        let fatal = Failure::Fatal;
        match payload {
            Payload::Prepared(prepared) => {
                self.buffer(&prepared.stamp(ticks.first)).map_err(fatal)?;
                self.buffer(prepared.payload()).map_err(fatal)?;
                self.shared.counters.raw_bytes.fetch_add(u64::from(prepared.raw_bytes()), Ordering::Relaxed);
            }
            Payload::Verbatim(block) => {
                self.buffer(block.bytes()).map_err(fatal)?;
                let raw = u64::from(block.header().raw_bytes);
                self.shared.counters.raw_bytes.fetch_add(raw, Ordering::Relaxed);
            }
        }
        let padding = segment_bytes as usize - block_bytes;
        self.buffer(&ZEROS[..padding]).map_err(fatal)?;
        let segment = self.segment.as_mut().expect("rotate opened a segment");
        assert_eq!(segment.data_end, offset, "block must land at the end of the data");
        segment.data_end = offset + segment_bytes;
        assert_eq!(segment.data_end, self.buf_offset + self.buf_len as u64);
        if segment.block_count == 0 {
            assert_eq!(segment.tick_first, ticks.first, "a segment is named by its first tick");
        }
        segment.block_count += 1;
        segment.tick_last = ticks.last;
        self.unpublished.push((ticks.first, offset));
        assert!(ticks.first > self.tick_written, "ticks strictly increase");
        self.tick_written = ticks.last;
        let counters = &self.shared.counters;
        counters.blocks.fetch_add(1, Ordering::Relaxed);
        counters.records.fetch_add(ticks.count(), Ordering::Relaxed);
        counters.block_bytes.fetch_add(block_bytes as u64, Ordering::Relaxed);
        Ok(ticks)
    }

    /// Copies `bytes` to the end of the buffer, writing out full buffers on the way.
    fn buffer(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let capacity = self.engine.buffer().capacity();
            if self.buf_len == capacity {
                self.write_out(false)?;
                continue;
            }
            let n = (capacity - self.buf_len).min(bytes.len());
            self.engine.buffer_mut().as_mut_slice()[self.buf_len..self.buf_len + n].copy_from_slice(&bytes[..n]);
            self.buf_len += n;
            self.unwritten = true;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Writes the buffer (whole pages, the last one zero-padded) and keeps its partial last
    /// page for the next write; syncs too if `sync`.
    fn write_out(&mut self, sync: bool) -> Result<()> {
        let Some(segment) = &self.segment else { return Ok(()) };
        if !self.unwritten {
            if sync && self.unsynced {
                return self.sync_segment();
            }
            return Ok(());
        }
        let len = self.buf_len.next_multiple_of(DIRECT_ALIGN);
        assert!(self.buf_offset + len as u64 <= segment.capacity, "write past the preallocated segment");
        self.engine.buffer_mut().as_mut_slice()[self.buf_len..len].fill(0);
        let started = Instant::now();
        self.engine.write(&segment.file, &segment.path, self.buf_offset, len, sync)?;
        let counters = &self.shared.counters;
        counters.write_bytes.fetch_add(len as u64, Ordering::Relaxed);
        if sync {
            counters.syncs.fetch_add(1, Ordering::Relaxed);
            counters.sync_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.last_sync = Instant::now();
        }
        self.unsynced = !sync;
        self.unwritten = false;
        let keep_from = self.buf_len / DIRECT_ALIGN * DIRECT_ALIGN;
        self.engine.buffer_mut().as_mut_slice().copy_within(keep_from..self.buf_len, 0);
        self.buf_offset += keep_from as u64;
        self.buf_len -= keep_from;
        Ok(())
    }

    fn sync_segment(&mut self) -> Result<()> {
        let Some(segment) = &self.segment else { return Ok(()) };
        let started = Instant::now();
        self.engine.sync(&segment.file, &segment.path)?;
        let counters = &self.shared.counters;
        counters.syncs.fetch_add(1, Ordering::Relaxed);
        counters.sync_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.last_sync = Instant::now();
        self.unsynced = false;
        Ok(())
    }

    /// Makes the written blocks visible to readers.
    fn publish(&mut self) {
        let mut state = self.shared.lock();
        if let Some(segment) = &self.segment {
            if segment.block_count > 0 {
                let ticks = TickRange::new(segment.tick_first, segment.tick_last);
                match &mut state.active {
                    Some(active) if active.id == segment.id => {
                        assert!(segment.data_end >= active.data_end);
                        active.data_end = segment.data_end;
                        active.ticks = ticks;
                        active.index.extend_from(&self.unpublished);
                    }
                    other => {
                        assert!(other.is_none(), "the previous segment is sealed before the next opens");
                        let mut index = TickIndex::new();
                        index.extend_from(&self.unpublished);
                        *other = Some(ActiveSegment {
                            id: segment.id,
                            path: segment.path.clone(),
                            map: segment.map.clone(),
                            data_end: segment.data_end,
                            ticks,
                            index,
                        });
                    }
                }
            }
        }
        self.unpublished.clear();
        assert!(self.tick_written >= state.tick_last, "visible ticks never go back");
        state.tick_last = self.tick_written;
        self.shared.tick_visible.store(self.tick_written.get(), Ordering::Release);
        drop(state);
        self.shared.visible.notify_all();
        self.shared.notify.notify_waiters();
    }

    /// Seals the current segment (if any) and opens a new one whose first block starts at
    /// `tick_first`.
    fn rotate(&mut self, tick_first: Tick) -> std::result::Result<(), Failure> {
        let spare = self.spares.take().map_err(Failure::Retryable)?;
        if self.segment.is_some() {
            self.write_out(true).map_err(Failure::Fatal)?;
            self.publish();
            self.seal().map_err(Failure::Fatal)?;
        }
        let id = self.shared.lock().next_segment_id;
        let path = self.shared.dir.join(segment::file_name(id, tick_first));
        if let Err(e) = std::fs::rename(&spare, &path) {
            let _ = std::fs::remove_file(&spare);
            return Err(Failure::Retryable(Error::io("rename spare segment", &path, e)));
        }
        // Without this, a crash could leave the data of acknowledged appends in a file still
        // named as a spare, which recovery removes.
        fs::fsync_dir(&self.shared.dir).map_err(Failure::Fatal)?;
        self.shared.lock().next_segment_id = id.next();
        let file = fs::open_rw(&path, self.engine.direct()).map_err(Failure::Fatal)?;
        let capacity = self.shared.options.segment_bytes;
        let map = fs::map(&file, &path, capacity).map_err(Failure::Fatal)?;
        self.shared.counters.segments_created.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(segment = %path.display(), "wal: opened segment");
        self.segment = Some(OpenSegment {
            id,
            path,
            file,
            map,
            capacity,
            tick_first,
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
    /// length, and hands the segment to readers as sealed.
    fn seal(&mut self) -> Result<()> {
        let Some(segment) = &self.segment else { return Ok(()) };
        let (id, seal_offset, block_count) = (segment.id, segment.data_end, segment.block_count);
        let ticks = TickRange::new(segment.tick_first, segment.tick_last);
        let tail = {
            let state = self.shared.lock();
            let active = state.active.as_ref().filter(|a| a.id == id).expect("the segment to seal is published");
            assert_eq!(active.index.len(), block_count);
            segment::seal_tail(ticks, active.index.entries(), seal_offset)
        };
        self.buffer(&tail)?;
        let file_bytes = self.buf_offset + self.buf_len as u64;
        self.write_out(true)?;
        let segment = self.segment.take().expect("checked above");
        fs::truncate(&segment.file, &segment.path, file_bytes)?;
        fs::fsync(&segment.file, &segment.path)?;
        let map = fs::map(&segment.file, &segment.path, file_bytes)?;
        let sealed = SealedSegment::new(
            id,
            segment.path.clone(),
            ticks,
            seal_offset,
            segment.block_count as u32,
            file_bytes,
            Some(map),
        );
        let mut state = self.shared.lock();
        assert!(state.active.as_ref().is_some_and(|a| a.id == id));
        state.active = None;
        state.sealed.push_back(Arc::new(sealed));
        tracing::debug!(segment = %segment.path.display(), %ticks, "wal: sealed segment");
        Ok(())
    }

    fn poison(&mut self, error: &Error) {
        let reason = error_chain(error);
        tracing::error!("wal: writer stopped for good: {reason}");
        self.failed = Some(reason.clone());
        self.shared.failed.store(true, Ordering::Release);
        self.shared.lock().failed = Some(reason);
        self.shared.visible.notify_all();
        self.shared.notify.notify_waiters();
    }
}

/// Marks the WAL failed if the writer thread unwinds, so appenders get an error instead of a
/// WAL that silently accepts nothing.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let reason = "the writer thread panicked".to_string();
            self.0.failed.store(true, Ordering::Release);
            self.0.lock().failed = Some(reason);
            self.0.visible.notify_all();
            self.0.notify.notify_waiters();
        }
    }
}

/// The error and its sources, as one line.
pub(crate) fn error_chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
        let inner = Arc::new(SparesInner { slot: Mutex::new(SpareSlot::default()), changed: Condvar::new() });
        let worker = inner.clone();
        let dir = shared.dir.clone();
        let thread = std::thread::Builder::new()
            .name("wal-spares".into())
            .spawn(move || worker.run(&shared))
            .map_err(|e| Error::io("spawn spare segment thread", &dir, e))?;
        Ok(Spares { inner, thread: Some(thread) })
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
            slot = self.inner.changed.wait(slot).unwrap_or_else(|p| p.into_inner());
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
                tracing::warn!("wal: failed to prepare the next segment: {}", error_chain(e));
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
