//! Collection: moving the documents still live in the WAL segments that retention would let go
//! into value files, and rewriting value files that became mostly dead, for a store keeping its
//! documents in the WAL (FORMAT.md, "Value files"). Each is done in two halves: `prepare_*` only
//! reads the store, so it may run on a thread of its own beside the store writer; `finish_*`
//! records the result on the store writer's thread; `settle_collection` lets it count once the
//! store has persisted the tick it was decided at.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::document::doc_key;
use super::values::{ValueFileWriter, ValueFiles};
use super::{store_error, DocStore, COLLECTED_THROUGH};
use crate::error::{Error, Result};
use crate::tick::Tick;
use crate::wal::segment::SealedSegment;
use crate::wal::{Block, Record, SegmentRange, Wal};

/// A segment or value file is sampled every this many blocks to tell how much of it is live.
const SAMPLE_EVERY_BLOCKS: usize = 16;

/// Records of consecutive ticks written to a value file as one block, at most.
const RUN_BYTES_MAX: usize = 1 << 20;

/// What a sample of a WAL segment found (`DocStore::prepare_collection`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentSample {
    /// Document puts in the sampled blocks.
    pub puts: usize,
    /// Those whose key still names their tick.
    pub live: usize,
}

impl SegmentSample {
    /// Half or more live: the segment becomes a value file as it is, a second name for the file
    /// and nothing copied; otherwise its live documents are copied out.
    pub fn mostly_live(&self) -> bool {
        self.live * 2 >= self.puts
    }
}

/// A collection of a WAL segment read and written, not yet recorded
/// (`DocStore::prepare_collection`, `DocStore::finish_collection`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreparedCollection {
    pub sample: SegmentSample,
    /// Documents copied into the segment's value file; `None` if it is to become one as it is.
    pub copied: Option<u64>,
}

/// A value file's rewrite written and waiting to be recorded (`DocStore::prepare_rewrite`,
/// `finish_rewrite`).
pub struct PreparedRewrite {
    file: Arc<SealedSegment>,
    /// The rewrite in the `next` directory, or `None` if no record was live.
    next: Option<PathBuf>,
}

/// A value file's rewrite recorded but not yet in place (`DocStore::finish_rewrite`): the file,
/// its rewrite (none if nothing was live) and the tick applied when it was recorded.
pub(super) type PendingRewrite = Option<(Arc<SealedSegment>, Option<PathBuf>, Tick)>;

impl DocStore {
    /// The last tick of the newest WAL segment whose live documents were moved to the value
    /// files, as persisted: retention may delete the segments up to it.
    pub fn collected_through(&self) -> Tick {
        Tick::new(self.collected_through.load(Ordering::Acquire))
    }

    /// Value files and their bytes (documents kept in the WAL only).
    pub fn value_files(&self) -> Option<(usize, u64)> {
        self.values.as_ref().map(ValueFiles::stats)
    }

    /// The first half of moving the documents of WAL segment `segment` that are live into a
    /// value file (`finish_collection` is the second): the sample of every sixteenth block, and
    /// for a segment mostly dead the value file of its live documents, copied at their ticks
    /// (written and in place, so reads may use it: it holds exact copies). It only reads the
    /// store, so any thread may run it beside the store writer: a document of a written
    /// segment can only die, never come back, so every document still live when the collection
    /// is finished was live when it was looked at here and is in the file; one that died
    /// meanwhile is garbage for the value files' own collection. A value file whose collection
    /// is never finished (a crash) is made again by the next (`ValueFiles::writer` and `link`
    /// drop it first).
    pub fn prepare_collection(
        &self,
        wal: &Wal,
        segment: &SegmentRange,
    ) -> Result<PreparedCollection> {
        let values = self.values.as_ref().ok_or_else(|| Error::Store {
            op: "collect",
            reason: "the store keeps its documents itself".into(),
        })?;
        // Every `SAMPLE_EVERY_BLOCKS`-th block says how much of the segment is live.
        let mut sample = SegmentSample::default();
        self.for_live_records(wal, segment, SAMPLE_EVERY_BLOCKS, |_, all, alive| {
            sample.puts += all;
            sample.live += alive.len();
            Ok(())
        })?;
        if sample.mostly_live() {
            return Ok(PreparedCollection {
                sample,
                copied: None,
            });
        }
        let frame_bytes = value_frame_bytes(wal);
        let mut writer = values.writer(segment.id)?;
        let mut copied = 0u64;
        self.for_live_records(wal, segment, 1, |records, _, alive| {
            copied += alive.len() as u64;
            write_runs(&mut writer, records, alive, frame_bytes)
        })?;
        writer.finish(segment.tick_max)?;
        Ok(PreparedCollection {
            sample,
            copied: Some(copied),
        })
    }

    /// The second half of a segment's collection, on the store writer's thread between groups
    /// (or any thread while no store writer runs): a segment mostly live becomes a value file
    /// as it is (a second name for the file, nothing copied), and the store writes (unflushed)
    /// that the WAL is collected through the segment's last tick. The collection counts once
    /// persisted (`settle_collection`): the replacements and removals that made the rest dead
    /// must survive a crash before the segment may go. Returns the documents copied (0 when
    /// linked).
    pub fn finish_collection(
        &self,
        segment: &SegmentRange,
        prepared: PreparedCollection,
    ) -> Result<u64> {
        let values = self.values.as_ref().ok_or_else(|| Error::Store {
            op: "collect",
            reason: "the store keeps its documents itself".into(),
        })?;
        let moved = match prepared.copied {
            Some(copied) => copied,
            None => {
                values.link(&segment.path, segment.id, segment.tick_min)?;
                0
            }
        };
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            self.meta(),
            COLLECTED_THROUGH,
            segment.tick_max.get().to_le_bytes(),
        );
        self.write(batch)?;
        *self
            .pending_collection
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((segment.tick_max, self.applied_tick()));
        Ok(moved)
    }

    /// Calls `visit(records, puts, live)` for every `every`-th block of `segment`: its records,
    /// how many are document puts, and the indexes of those whose key still names their tick.
    fn for_live_records(
        &self,
        wal: &Wal,
        segment: &SegmentRange,
        every: usize,
        mut visit: impl FnMut(&[(Tick, Record<'_>)], usize, &[usize]) -> Result<()>,
    ) -> Result<()> {
        let mut reader = wal.reader_after(segment.tick_min.saturating_prev())?;
        let mut scratch = Vec::new();
        let mut index = 0usize;
        while let Some(block) = reader.next_block()? {
            if block.ticks().first > segment.tick_max {
                break;
            }
            index += 1;
            if (index - 1) % every != 0 {
                continue;
            }
            let (records, puts, live) = self.live_records(&block, &mut scratch)?;
            visit(&records, puts, &live)?;
        }
        Ok(())
    }

    /// The records of `block`, how many are document puts, and the indexes of the puts whose
    /// key still names their tick (live).
    #[allow(clippy::type_complexity)]
    fn live_records<'a>(
        &self,
        block: &'a Block,
        scratch: &'a mut Vec<u8>,
    ) -> Result<(Vec<(Tick, Record<'a>)>, usize, Vec<usize>)> {
        let records: Vec<(Tick, Record<'_>)> = block
            .records(scratch)?
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::InvalidBlock)?;
        let puts: Vec<(usize, Vec<u8>)> = records
            .iter()
            .enumerate()
            .filter(|(_, (_, r))| r.kind.is_put())
            .filter_map(|(i, (_, r))| {
                let id = r.collection.parse::<u64>().ok()?;
                Some((i, doc_key(id, r.key)))
            })
            .collect();
        let found = self
            .db
            .batched_multi_get_cf(self.docs(), puts.iter().map(|(_, k)| k), false);
        let mut live = Vec::new();
        for ((i, _), value) in puts.iter().zip(found) {
            let value = value.map_err(|e| store_error("read before collect", e))?;
            if value.is_some_and(|v| v.as_ref() == records[*i].0.get().to_le_bytes()) {
                live.push(*i);
            }
        }
        Ok((records, puts.len(), live))
    }

    /// The value file whose collection is due next, in turn (one per call); `None` if none is:
    /// documents kept in the store, a collection pending, a scan running (its snapshot may
    /// name a record the rewrite would drop), or no replacement or removal since the last round
    /// over the files began (an insert-only load costs no sampling). On the store writer's
    /// thread (or any while none runs).
    pub fn value_file_to_look_at(&self) -> Option<Arc<SealedSegment>> {
        let values = self.values.as_ref()?;
        if self.collection_pending() || self.scans_running() {
            return None;
        }
        let files = values.files();
        if files.is_empty() {
            return None;
        }
        let at = self.value_cursor.load(Ordering::Relaxed) % files.len();
        if at == 0 && self.dead_since_look.swap(0, Ordering::AcqRel) == 0 {
            return None;
        }
        self.value_cursor.store(at + 1, Ordering::Relaxed);
        Some(files[at].clone())
    }

    /// The first half of a value file's collection (`finish_rewrite` is the second): samples
    /// every sixteenth block of `file` and, if less than half of the documents sampled are
    /// live, writes its rewrite with the records live now (`None` if it keeps more than half).
    /// It only reads the store, so any thread may run it beside the store writer: a record of
    /// a value file can only die, never come back, so every record still live when the rewrite
    /// is recorded was live when its block was looked at here and is in the rewrite.
    pub fn prepare_rewrite(
        &self,
        wal: &Wal,
        file: &Arc<SealedSegment>,
    ) -> Result<Option<PreparedRewrite>> {
        let Some(values) = &self.values else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let blocks = values.blocks(file)?;
        let mut scratch = Vec::new();
        let (mut sampled, mut live) = (0usize, 0usize);
        for block in blocks.iter().step_by(SAMPLE_EVERY_BLOCKS) {
            let (_, puts, alive) = self.live_records(block, &mut scratch)?;
            sampled += puts;
            live += alive.len();
        }
        if live * 2 >= sampled && sampled > 0 {
            return Ok(None);
        }
        let frame_bytes = value_frame_bytes(wal);
        let mut writer = values.rewriter(file);
        for block in &blocks {
            let (records, _, alive) = self.live_records(block, &mut scratch)?;
            write_runs(&mut writer, &records, &alive, frame_bytes)?;
        }
        let next = writer.finish_next(file.ticks.last)?;
        tracing::debug!(
            file = %file.path.display(),
            sampled,
            live,
            seconds = started.elapsed().as_secs_f64(),
            "wrote the rewrite of a value file"
        );
        Ok(Some(PreparedRewrite {
            file: file.clone(),
            next,
        }))
    }

    /// The second half of a value file's collection, on the store writer's thread between
    /// groups (or any thread while none runs): the rewrite waits to replace the file until
    /// the store has persisted the tick applied now (`settle_collection`), so that the
    /// replacements and removals that made the dropped records dead survive a crash first.
    /// Dropped instead if a scan runs: it may have begun while the rewrite was being written
    /// and name a record that died since. Returns whether the rewrite was kept.
    pub fn finish_rewrite(&self, prepared: PreparedRewrite) -> Result<bool> {
        let Some(values) = &self.values else {
            return Ok(false);
        };
        if self.scans_running() || self.collection_pending() {
            if let Some(next) = &prepared.next {
                values.discard(next)?;
            }
            return Ok(false);
        }
        *self
            .pending_rewrite
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            Some((prepared.file, prepared.next, self.applied_tick()));
        Ok(true)
    }

    /// Whether a collection or a value file's rewrite waits to be persisted
    /// (`settle_collection`).
    pub fn collection_pending(&self) -> bool {
        self.pending_collection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
            || self
                .pending_rewrite
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
    }

    /// Counts the last collection once the store has persisted the tick it was decided at:
    /// retention may then delete the segments up to it. Returns whether one was pending still.
    pub fn settle_collection(&self, persisted: Tick) -> Result<bool> {
        {
            let mut rewrite = self
                .pending_rewrite
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match rewrite.take() {
                Some((old, next, decided)) if persisted >= decided => {
                    if let Some(values) = &self.values {
                        values.replace(&old, next)?;
                    }
                }
                Some(waiting) => {
                    *rewrite = Some(waiting);
                    return Ok(true);
                }
                None => {}
            }
        }
        let mut pending = self
            .pending_collection
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match *pending {
            Some((through, decided)) if persisted >= decided => {
                self.collected_through
                    .fetch_max(through.get(), Ordering::AcqRel);
                *pending = None;
                Ok(false)
            }
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }
}

/// The frame size of the blocks value files are written in: the WAL's, or the default for
/// documents kept in the WAL if it writes blocks whole.
fn value_frame_bytes(wal: &Wal) -> usize {
    match wal.options().frame_bytes {
        0 => crate::wal::block::FRAME_RAW_BYTES,
        bytes => bytes,
    }
}

/// Writes the `live` records of `records` to `writer`: each run of consecutive ticks, at most
/// `RUN_BYTES_MAX` of records, as one block in frames of `frame_bytes`.
fn write_runs(
    writer: &mut ValueFileWriter<'_>,
    records: &[(Tick, Record<'_>)],
    live: &[usize],
    frame_bytes: usize,
) -> Result<()> {
    let mut run: Vec<Record<'_>> = Vec::new();
    let mut run_first = Tick::ZERO;
    let mut run_bytes = 0usize;
    let mut cut = |run: &mut Vec<Record<'_>>, first: Tick| -> Result<()> {
        if !run.is_empty() {
            let block = crate::wal::block::prepare_framed(run, frame_bytes)?;
            writer.push(&block.to_block(first))?;
            run.clear();
        }
        Ok(())
    };
    for &i in live {
        let (tick, record) = records[i];
        let continues = !run.is_empty()
            && run_first.get() + run.len() as u64 == tick.get()
            && run_bytes + record.encoded_bytes() <= RUN_BYTES_MAX;
        if !continues {
            cut(&mut run, run_first)?;
            run_first = tick;
            run_bytes = 0;
        }
        run_bytes += record.encoded_bytes();
        run.push(record);
    }
    cut(&mut run, run_first)
}
