//! Readers: the blocks after a tick, as zero-copy `Bytes` slices of the segment mappings.
//!
//! A reader holds a position (segment id, offset) and the tick it reads after. It sees only what
//! the writer has published (durable blocks, under the default sync policy), moves from a sealed
//! segment to the next by id, and verifies every block it returns: header, checksum, and that
//! ticks increase from one block to the next. A segment deleted by retention under a reader
//! turns into `TickCompacted`, never into skipped data.
//!
//! A sequential reader (the store writer, a shipper, a segment's collection) hands back the
//! pages of the mapping it has read past, `RELEASE_BEHIND` behind its position: otherwise every
//! page it ever read stays mapped, and a follower that catches up 10 GB counted ~2 GB of its WAL
//! in its resident set (page cache, reclaimable, but shown as the process's memory).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::block::{slice_data_block, Block};
use super::segment::{SealedSegment, SEGMENT_HEADER_BYTES};
use super::tick_index::SealedIndex;
use super::{Shared, State};
use crate::error::{Error, Result};
use crate::fs::{FileMap, MAPPED_AROUND};
use crate::tick::{SegmentId, Tick};

/// Bytes of a mapping a sequential reader leaves mapped behind its position, for the blocks it
/// returned and its caller still holds (a shipper's chunk, the blocks being applied); pages
/// released under a holder are only mapped again from the page cache.
const RELEASE_BEHIND: u64 = 2 << 20;

/// The least a sequential reader hands back at once.
const RELEASE_STEP: u64 = 1 << 20;

/// The smallest `after` a reader may start from: the tick before the first block, or the last
/// tick when the WAL holds no block.
pub(crate) fn floor(state: &State) -> Tick {
    match state.tick_first() {
        Some(first) => first.saturating_prev(),
        None => state.tick_last,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    segment: SegmentId,
    offset: u64,
}

/// What one step of reading found under the state lock.
enum Step {
    Sealed(Arc<SealedSegment>),
    Active {
        map: FileMap,
        data_end: u64,
        path: PathBuf,
    },
    /// Nothing published at the position yet.
    Wait,
}

/// Reads the blocks holding ticks after a given tick, in order, waiting for new ones on demand.
pub struct Reader {
    shared: Arc<Shared>,
    after: Tick,
    position: Position,
    /// The last tick of the last block returned (or `after`).
    tick_read: Tick,
    /// The last tick of the last block read, returned or skipped.
    tick_last_block: Option<Tick>,
    /// Whether blocks are checked whole before they are returned (see `for_point_reads`).
    check_blocks: bool,
    /// The mapping this reader reads from, if it reads sequentially.
    passed: Option<Passed>,
    /// Mappings it has moved on from, oldest first: their last blocks are handed back as the
    /// reader goes on, `RELEASE_BEHIND` behind it counted across mappings, for the caller still
    /// holds them.
    left: VecDeque<Left>,
    /// Bytes of blocks read in all.
    read: u64,
}

/// The mapping a sequential reader reads from (a segment's, or the active segment's before it
/// was sealed), and the offset below which it has handed its pages back.
struct Passed {
    map: FileMap,
    released: u64,
    /// The end of the last block read in it.
    read_to: u64,
}

/// A mapping a sequential reader has moved on from, and where its last block ended in the
/// reader's count of bytes read (`Reader::read`).
struct Left {
    passed: Passed,
    read_at: u64,
}

impl Reader {
    pub(crate) fn new(shared: Arc<Shared>, after: Tick) -> Result<Reader> {
        enum Start {
            At(Position),
            Sealed(Arc<SealedSegment>),
        }
        let start = {
            let state = shared.lock();
            if floor(&state) > after {
                return Err(Error::TickCompacted(after));
            }
            if after >= state.tick_last {
                Start::At(end_position(&state))
            } else {
                // The last segment starting at or before `after`, else the first one.
                let sealed_before = state.sealed.partition_point(|s| s.ticks.first <= after);
                match &state.active {
                    Some(active) if active.ticks.first <= after || state.sealed.is_empty() => {
                        let offset = active
                            .index
                            .floor(after)
                            .map_or(SEGMENT_HEADER_BYTES as u64, |(_, o)| o);
                        Start::At(Position {
                            segment: active.id,
                            offset,
                        })
                    }
                    _ => match state.sealed.get(sealed_before.saturating_sub(1)) {
                        Some(segment) => Start::Sealed(segment.clone()),
                        None => Start::At(end_position(&state)),
                    },
                }
            }
        };
        let position = match start {
            Start::At(position) => position,
            Start::Sealed(segment) => {
                let index = SealedIndex::new(map_sealed(&segment, after)?.1);
                let offset = index
                    .floor(after)
                    .map_or(SEGMENT_HEADER_BYTES as u64, |(_, o)| o);
                Position {
                    segment: segment.id,
                    offset,
                }
            }
        };
        Ok(Reader {
            shared,
            after,
            position,
            tick_read: after,
            tick_last_block: None,
            check_blocks: true,
            passed: None,
            left: VecDeque::new(),
            read: 0,
        })
    }

    /// Returns blocks whose headers are checked but whose checksums are not: for reading one
    /// record back, which checks the frame it decompresses (`Block::record_at`) instead of the
    /// whole block, a ~1 MB block for a 1 KB document.
    pub(crate) fn for_point_reads(mut self) -> Reader {
        self.check_blocks = false;
        self
    }

    /// The last tick of the last block returned, or the starting tick.
    pub fn tick_read(&self) -> Tick {
        self.tick_read
    }

    /// The next block holding ticks after the starting tick, or `None` if no such block is
    /// visible yet.
    pub fn next_block(&mut self) -> Result<Option<Block>> {
        loop {
            let step = {
                let state = self.shared.lock();
                let first_id = state
                    .sealed
                    .front()
                    .map(|s| s.id)
                    .or(state.active.as_ref().map(|a| a.id));
                match &state.active {
                    Some(active) if active.id == self.position.segment => {
                        if !self.check_blocks {
                            active.point_reads.note();
                        }
                        Step::Active {
                            map: active.map.clone(),
                            data_end: active.data_end,
                            path: active.path.clone(),
                        }
                    }
                    _ => {
                        let sealed = first_id.and_then(|first| {
                            let i = self.position.segment.get().checked_sub(first.get())?;
                            state.sealed.get(usize::try_from(i).ok()?)
                        });
                        match sealed {
                            Some(segment) => Step::Sealed(segment.clone()),
                            None if first_id.is_some_and(|first| self.position.segment < first) => {
                                return Err(Error::TickCompacted(self.tick_read));
                            }
                            None => Step::Wait,
                        }
                    }
                }
            };
            let block = match step {
                Step::Wait => return Ok(None),
                Step::Active {
                    map,
                    data_end,
                    path,
                } => {
                    if self.position.offset >= data_end {
                        return Ok(None);
                    }
                    self.read_block(&map, data_end, self.position.segment, &path)?
                }
                Step::Sealed(segment) => {
                    if self.position.offset >= segment.data_end {
                        self.position = Position {
                            segment: segment.id.next(),
                            offset: SEGMENT_HEADER_BYTES as u64,
                        };
                        continue;
                    }
                    let map = map_sealed(&segment, self.tick_read)?.0;
                    if !self.check_blocks {
                        segment.note_point_read();
                    }
                    self.read_block(&map, segment.data_end, segment.id, &segment.path)?
                }
            };
            if block.ticks().last <= self.after {
                continue;
            }
            self.tick_read = block.ticks().last;
            return Ok(Some(block));
        }
    }

    /// Like `next_block`, but waits up to `timeout` for a block to become visible. Returns
    /// `None` on timeout or when the WAL closes.
    pub fn wait_next(&mut self, timeout: Duration) -> Result<Option<Block>> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.shared.lock().tick_last;
            if let Some(block) = self.next_block()? {
                return Ok(Some(block));
            }
            if self.shared.wait_after(seen, deadline) == seen {
                return Ok(None);
            }
        }
    }

    /// Verifies and slices the block at the reader's position, and moves past it.
    fn read_block(
        &mut self,
        map: &FileMap,
        data_end: u64,
        id: SegmentId,
        path: &Path,
    ) -> Result<Block> {
        let offset = self.position.offset;
        let corrupt = |reason: &str| Error::Corruption {
            segment_id: id,
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
        };
        let (header, bytes) = slice_data_block(map, offset, data_end).map_err(corrupt)?;
        if self.check_blocks {
            header.verify_crc(&bytes).map_err(corrupt)?;
        }
        if self
            .tick_last_block
            .is_some_and(|last| header.tick_first <= last)
        {
            return Err(corrupt("block ticks do not increase"));
        }
        self.tick_last_block = Some(header.tick_last);
        self.position.offset = offset + header.segment_bytes() as u64;
        if !self.check_blocks {
            return Ok(Block::from_unchecked(bytes, header).with_map(map));
        }
        self.read += header.segment_bytes() as u64;
        self.release_behind(map, offset);
        Ok(Block::from_verified(bytes, header))
    }

    /// Hands back the pages read more than `RELEASE_BEHIND` bytes ago: in the mapping read
    /// now, and in those the reader has moved on from (to the next segment, or to the sealed
    /// mapping of the segment it read while active). Pages more than `MAPPED_AROUND` before the
    /// first block it read in a mapping are other readers' business.
    fn release_behind(&mut self, map: &FileMap, block_start: u64) {
        let block_end = self.position.offset;
        match &mut self.passed {
            // The same mapping: its address cannot be reused while `passed` holds it.
            Some(passed) if passed.map.as_ptr() == map.as_ptr() => {
                passed.read_to = block_end;
                let behind = block_end.saturating_sub(RELEASE_BEHIND);
                if behind >= passed.released + RELEASE_STEP {
                    passed.map.release(passed.released, behind);
                    passed.released = behind;
                }
            }
            _ => {
                if let Some(old) = self.passed.take() {
                    self.left.push_back(Left {
                        passed: old,
                        read_at: self.read - (block_end - block_start),
                    });
                }
                self.passed = Some(Passed {
                    map: map.clone(),
                    released: block_start - block_start % MAPPED_AROUND,
                    read_to: block_end,
                });
            }
        }
        // The mappings left behind, as if they and this one were one: only the oldest can be
        // partly behind, the bytes read after it all being further on.
        let behind = self.read.saturating_sub(RELEASE_BEHIND);
        while let Some(Left { passed, read_at }) = self.left.front_mut() {
            if behind >= *read_at {
                passed.map.release_from(passed.released);
                self.left.pop_front();
                continue;
            }
            let upto = passed.read_to.saturating_sub(*read_at - behind);
            if upto >= passed.released + RELEASE_STEP {
                passed.map.release(passed.released, upto);
                passed.released = upto;
            }
            break;
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        for Left { passed, .. } in self.left.drain(..) {
            passed.map.release_from(passed.released);
        }
        if let Some(passed) = self.passed.take() {
            passed.map.release_from(passed.released);
        }
    }
}

/// Where a reader starts when it wants only blocks not written yet.
fn end_position(state: &State) -> Position {
    match &state.active {
        Some(active) => Position {
            segment: active.id,
            offset: active.data_end,
        },
        None => Position {
            segment: state.next_segment_id,
            offset: SEGMENT_HEADER_BYTES as u64,
        },
    }
}

/// A sealed segment's mapping and index; a file retention removed meanwhile is `TickCompacted`.
fn map_sealed(segment: &SealedSegment, tick: Tick) -> Result<(FileMap, &[u8])> {
    match segment
        .map()
        .and_then(|map| Ok((map.clone(), segment.index()?)))
    {
        Err(Error::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::TickCompacted(tick))
        }
        other => other,
    }
}
