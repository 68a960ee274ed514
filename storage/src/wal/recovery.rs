//! Recovery at open: account for every file, trust sealed segments, scan the rest, cut a torn
//! tail and report exactly what was cut.
//!
//! The last known-good point is the end of the last sealed segment: a sealed segment was synced
//! before its seal was written, so opening reads only its header, locator and seal block header
//! (`verify_on_open` checks every block too). Unsealed segments are scanned block by block,
//! verifying every checksum:
//!
//! - in the newest segment, data ends at the first all-zero header (the zero-filled preallocated
//!   space) or at the first block that fails its checks. If nothing valid follows, whatever
//!   non-zero bytes lie there are a torn tail, a write that a crash interrupted and that was
//!   therefore never acknowledged: they are zeroed and reported (`TornTail`). If an intact block
//!   follows, the damage is not a torn tail but corruption in the middle of the log, and opening
//!   fails naming the segment and offset: data is never skipped silently;
//! - an unsealed segment that is not the newest lost its seal to a crash while sealing: if its
//!   data ends cleanly it is sealed now, otherwise opening fails;
//! - an empty newest segment (a crash right after creating it) is removed.
//!
//! Anything else in the directory that is not a segment, the lock file or one of the WAL's own
//! temporary files is an error: the WAL refuses to guess what a foreign file means.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::block::{BlockHeader, BLOCK_ALIGN, BLOCK_MAGIC};
use super::segment::{self, SealedSegment, SEGMENT_HEADER_BYTES};
use super::tick_index::TickIndex;
use super::{ActiveSegment, WalOptions};
use crate::error::{Error, IoContext, Result};
use crate::fs::{self, FileMap};
use crate::tick::{SegmentId, Tick, TickRange};

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segment_count: usize,
    pub sealed_count: usize,
    /// Blocks whose checksum recovery verified, and their bytes.
    pub blocks_verified: u64,
    pub bytes_verified: u64,
    pub tick_first: Option<Tick>,
    pub tick_last: Tick,
    pub torn_tail: Option<TornTail>,
    /// Segments whose sealing a crash interrupted, sealed now.
    pub resealed: Vec<PathBuf>,
    /// Empty segment files removed.
    pub removed: Vec<PathBuf>,
    pub elapsed: Duration,
}

/// The bytes cut from the end of the log: a write a crash interrupted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment_id: SegmentId,
    pub path: PathBuf,
    /// Where the cut starts: the end of the last intact block.
    pub offset: u64,
    /// How many bytes were zeroed (up to the last non-zero byte).
    pub bytes: u64,
    /// The ticks the first damaged block claimed, if its header was readable.
    pub ticks: Option<TickRange>,
    pub reason: String,
}

/// The newest segment, recovered unsealed: the writer goes on appending to it.
pub(crate) struct RecoveredActive {
    pub id: SegmentId,
    pub path: PathBuf,
    pub map: FileMap,
    pub data_end: u64,
    pub ticks: TickRange,
    pub index: TickIndex,
}

impl RecoveredActive {
    pub fn to_state(&self) -> ActiveSegment {
        ActiveSegment {
            id: self.id,
            path: self.path.clone(),
            map: self.map.clone(),
            data_end: self.data_end,
            ticks: self.ticks,
            index: self.index.clone(),
            point_reads: Default::default(),
        }
    }
}

pub(crate) struct Recovered {
    pub sealed: VecDeque<Arc<SealedSegment>>,
    pub active: Option<RecoveredActive>,
    pub tick_last: Tick,
    pub next_segment_id: SegmentId,
    pub report: RecoveryReport,
    /// The log's floor (`Wal::skip_to`); `tick_last` is never below it.
    pub floor: Tick,
}

/// Creates `dir` if missing, making its entry in the parent durable.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).ctx("create directory", dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::fsync_dir(parent)?;
    }
    Ok(())
}

/// Whether `name` is one of the WAL's own temporary files, removed at open.
fn is_temporary(name: &str) -> bool {
    name == "direct-probe.tmp"
        || name == super::floor::TEMPORARY
        || (name.starts_with("spare-") && name.ends_with(".wal.tmp"))
}

/// The segment files of `dir`, ordered by id; removes temporary files; refuses foreign ones.
fn list(dir: &Path) -> Result<Vec<(SegmentId, Tick, PathBuf)>> {
    let directory_error = |reason: String| Error::Directory {
        dir: dir.to_path_buf(),
        reason,
    };
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).ctx("list directory", dir)? {
        let entry = entry.ctx("list directory", dir)?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(directory_error(format!(
                "unexpected file {}",
                path.display()
            )));
        };
        if name == "LOCK" || name == super::floor::FILE || (name == "lost+found" && path.is_dir()) {
            continue;
        }
        if is_temporary(&name) {
            std::fs::remove_file(&path).ctx("remove temporary file", &path)?;
            continue;
        }
        match segment::parse_file_name(&name) {
            Some((id, tick)) if path.is_file() => segments.push((id, tick, path)),
            _ => {
                return Err(directory_error(format!(
                    "unexpected file {name}: the WAL directory holds only segments \
                     ({{segment_id:016x}}-{{tick_first:016x}}.wal)"
                )))
            }
        }
    }
    segments.sort_by_key(|(id, _, _)| *id);
    for pair in segments.windows(2) {
        let ((id, tick, path), (next_id, next_tick, next_path)) = (&pair[0], &pair[1]);
        if id.next() != *next_id {
            return Err(directory_error(format!(
                "segments {id} and {next_id} are not consecutive: segment {} is missing",
                id.next()
            )));
        }
        if tick >= next_tick {
            return Err(directory_error(format!(
                "{} starts at tick {tick}, not before {} at tick {next_tick}",
                path.display(),
                next_path.display()
            )));
        }
    }
    Ok(segments)
}

pub(crate) fn recover(dir: &Path, options: &WalOptions) -> Result<Recovered> {
    let started = Instant::now();
    let names = list(dir)?;
    let mut report = RecoveryReport {
        segment_count: names.len(),
        ..Default::default()
    };
    let mut sealed: VecDeque<Arc<SealedSegment>> = VecDeque::new();
    let mut active = None;
    let mut next_segment_id = names
        .last()
        .map_or(SegmentId::new(0), |(id, _, _)| id.next());
    for (position, (id, tick, path)) in names.iter().enumerate() {
        let newest = position + 1 == names.len();
        if let Some(segment) = SealedSegment::open(path, *id, *tick)? {
            if options.verify_on_open {
                verify_sealed(&segment, &mut report)?;
            }
            sealed.push_back(Arc::new(segment));
            continue;
        }
        let corrupt = |offset: u64, reason: String| Error::Corruption {
            segment_id: *id,
            path: path.clone(),
            offset,
            reason,
        };
        match scan(path, *id, *tick, &mut report)? {
            Scanned::Sealed(segment) => {
                tracing::info!(
                    "wal: completed the interrupted sealing of {}",
                    path.display()
                );
                report.resealed.push(path.clone());
                sealed.push_back(Arc::new(segment));
            }
            Scanned::Blank if newest => {
                std::fs::remove_file(path).ctx("remove empty segment", path)?;
                fs::fsync_dir(dir)?;
                report.removed.push(path.clone());
                next_segment_id = *id;
            }
            Scanned::Blank => return Err(corrupt(0, "segment header is all zero".into())),
            Scanned::Open(open) => {
                if let Some(torn) = &open.torn {
                    if !newest {
                        return Err(corrupt(
                            torn.offset,
                            format!("{} in a segment that is not the newest", torn.reason),
                        ));
                    }
                    cut(&open.file, path, torn)?;
                    tracing::warn!(
                        "wal: cut a torn tail of {} bytes at offset {} of {} ({}; ticks {}): \
                         a write interrupted by a crash, never acknowledged",
                        torn.bytes,
                        torn.offset,
                        path.display(),
                        torn.reason,
                        torn.ticks
                            .map_or_else(|| "unknown".to_string(), |t| t.to_string()),
                    );
                    report.torn_tail = Some(torn.clone());
                }
                let Some(ticks) = open.ticks else {
                    if !newest {
                        return Err(corrupt(
                            SEGMENT_HEADER_BYTES as u64,
                            "segment without blocks".into(),
                        ));
                    }
                    std::fs::remove_file(path).ctx("remove empty segment", path)?;
                    fs::fsync_dir(dir)?;
                    report.removed.push(path.clone());
                    next_segment_id = *id;
                    continue;
                };
                if newest {
                    let map = restore_capacity(&open.file, path, open.map, options.segment_bytes)?;
                    active = Some(RecoveredActive {
                        id: *id,
                        path: path.clone(),
                        map,
                        data_end: open.data_end,
                        ticks,
                        index: open.index,
                    });
                } else {
                    let segment =
                        seal_in_place(&open.file, path, *id, ticks, &open.index, open.data_end)?;
                    tracing::info!(
                        "wal: sealed {}, whose sealing a crash interrupted",
                        path.display()
                    );
                    report.resealed.push(path.clone());
                    sealed.push_back(Arc::new(segment));
                }
            }
        }
    }
    let mut previous: Option<(TickRange, &Path)> = None;
    let all = sealed
        .iter()
        .map(|s| (s.ticks, s.path.as_path()))
        .chain(active.as_ref().map(|a| (a.ticks, a.path.as_path())));
    for (ticks, path) in all {
        if let Some((before, before_path)) = previous {
            if ticks.first <= before.last {
                return Err(Error::Directory {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "{} ends at tick {} but {} starts at tick {}",
                        before_path.display(),
                        before.last,
                        path.display(),
                        ticks.first
                    ),
                });
            }
        }
        previous = Some((ticks, path));
    }
    report.sealed_count = sealed.len();
    report.tick_first = sealed
        .front()
        .map(|s| s.ticks.first)
        .or(active.as_ref().map(|a| a.ticks.first));
    let tick_last = active
        .as_ref()
        .map(|a| a.ticks.last)
        .or(sealed.back().map(|s| s.ticks.last));
    let floor = super::floor::read(dir)?;
    report.tick_last = tick_last.unwrap_or(Tick::ZERO).max(floor);
    report.elapsed = started.elapsed();
    Ok(Recovered {
        sealed,
        active,
        tick_last: report.tick_last,
        next_segment_id,
        report,
        floor,
    })
}

struct OpenScan {
    file: File,
    map: FileMap,
    data_end: u64,
    ticks: Option<TickRange>,
    index: TickIndex,
    torn: Option<TornTail>,
}

enum Scanned {
    /// The header was never written: a spare renamed into place just before a crash.
    Blank,
    /// A seal block was found (the cut after it had not happened yet); now completed.
    Sealed(SealedSegment),
    Open(OpenScan),
}

/// Walks the blocks of an unsealed segment, verifying each.
fn scan(
    path: &Path,
    id: SegmentId,
    tick_first: Tick,
    report: &mut RecoveryReport,
) -> Result<Scanned> {
    let corrupt = |offset: u64, reason: String| Error::Corruption {
        segment_id: id,
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let file = fs::open_rw(path, false)?;
    let len = file.metadata().ctx("stat", path)?.len();
    if len < SEGMENT_HEADER_BYTES as u64 {
        return Err(corrupt(
            0,
            format!("file of {len} bytes is too short for a segment"),
        ));
    }
    let map = fs::map(&file, path, len)?;
    if map[..SEGMENT_HEADER_BYTES].iter().all(|&b| b == 0) {
        if let Some(offset) = nonzero_from(&map, 0) {
            return Err(corrupt(
                offset as u64,
                "data in a segment whose header is all zero".into(),
            ));
        }
        return Ok(Scanned::Blank);
    }
    segment::check_header(&map, id, tick_first).map_err(|reason| corrupt(0, reason))?;
    let mut index = TickIndex::new();
    let mut ticks: Option<TickRange> = None;
    let mut offset = SEGMENT_HEADER_BYTES;
    let (end, damage) = loop {
        let header = match BlockHeader::decode(&map[offset..]) {
            Ok(None) => break (offset, None),
            Ok(Some(header)) => header,
            Err(reason) => break (offset, Some((reason.to_string(), None))),
        };
        let block_end = offset + header.block_bytes();
        if block_end > map.len() {
            break (
                offset,
                Some((
                    "block extends past the end of the file".into(),
                    Some(header.ticks()),
                )),
            );
        }
        if let Err(reason) = header.verify_crc(&map[offset..block_end]) {
            break (offset, Some((reason.into(), Some(header.ticks()))));
        }
        if header.is_seal() {
            return complete_seal(file, path, id, &map, offset, &header, ticks, &index)
                .map(Scanned::Sealed);
        }
        match ticks {
            None if header.tick_first != tick_first => {
                return Err(corrupt(
                    offset as u64,
                    "first block's tick differs from the file name".into(),
                ));
            }
            Some(range) if header.tick_first <= range.last => {
                return Err(corrupt(offset as u64, "block ticks do not increase".into()));
            }
            _ => {}
        }
        index.push(header.tick_first, offset as u64);
        ticks = Some(TickRange::new(
            ticks.map_or(header.tick_first, |r| r.first),
            header.tick_last,
        ));
        report.blocks_verified += 1;
        report.bytes_verified += header.block_bytes() as u64;
        offset += header.segment_bytes();
    };
    if let Some(intact) = find_intact_block(&map, end + BLOCK_ALIGN) {
        let what = damage
            .as_ref()
            .map_or("end of data (zero header)", |(reason, _)| reason.as_str());
        return Err(corrupt(
            end as u64,
            format!("{what}, yet an intact block follows at offset {intact}: not a torn tail"),
        ));
    }
    let torn = nonzero_from(&map, end).map(|last| {
        let (reason, claimed) =
            damage.unwrap_or_else(|| ("bytes after the last block".into(), None));
        TornTail {
            segment_id: id,
            path: path.to_path_buf(),
            offset: end as u64,
            bytes: (last + 1 - end) as u64,
            ticks: claimed,
            reason,
        }
    });
    Ok(Scanned::Open(OpenScan {
        file,
        map,
        data_end: end as u64,
        ticks,
        index,
        torn,
    }))
}

/// Gives the newest segment back its preallocated length if it lost it (a file cut short), so
/// the writer's page-aligned writes and the seal stay inside the file; returns the new mapping.
fn restore_capacity(file: &File, path: &Path, map: FileMap, segment_bytes: u64) -> Result<FileMap> {
    let len = map.len() as u64;
    let wanted = len
        .next_multiple_of(fs::DIRECT_ALIGN as u64)
        .max(segment_bytes);
    if len == wanted {
        return Ok(map);
    }
    tracing::warn!(
        "wal: {} is {len} bytes; extending it to {wanted}",
        path.display()
    );
    drop(map);
    fs::preallocate(file, path, wanted)?;
    fs::fsync(file, path)?;
    fs::map(file, path, wanted)
}

/// The offset of the last non-zero byte at or after `from`, if any.
fn nonzero_from(map: &[u8], from: usize) -> Option<usize> {
    map.get(from..)?
        .iter()
        .rposition(|&b| b != 0)
        .map(|i| from + i)
}

/// The offset of the first intact data block at an aligned offset at or after `from`.
fn find_intact_block(map: &[u8], from: usize) -> Option<usize> {
    let from = from.next_multiple_of(BLOCK_ALIGN);
    let haystack = map.get(from..)?;
    memchr::memmem::find_iter(haystack, &BLOCK_MAGIC.to_le_bytes())
        .map(|i| from + i)
        .filter(|offset| offset % BLOCK_ALIGN == 0)
        .find(|&offset| match BlockHeader::decode(&map[offset..]) {
            Ok(Some(header)) if !header.is_seal() => map
                .get(offset..offset + header.block_bytes())
                .is_some_and(|block| header.verify_crc(block).is_ok()),
            _ => false,
        })
}

/// Zeroes a torn tail and makes that durable.
fn cut(file: &File, path: &Path, torn: &TornTail) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK as usize];
    let mut offset = torn.offset;
    let end = torn.offset + torn.bytes;
    while offset < end {
        let n = (end - offset).min(CHUNK);
        fs::write_all_at(file, path, &zeros[..n as usize], offset)?;
        offset += n;
    }
    fs::fdatasync(file, path)
}

/// A seal block was found in a file that still has its preallocated length: check it against
/// the blocks scanned, then cut the file after the locator.
#[allow(clippy::too_many_arguments)]
fn complete_seal(
    file: File,
    path: &Path,
    id: SegmentId,
    map: &[u8],
    seal_offset: usize,
    seal: &BlockHeader,
    ticks: Option<TickRange>,
    index: &TickIndex,
) -> Result<SealedSegment> {
    let corrupt = |reason: &str| Error::Corruption {
        segment_id: id,
        path: path.to_path_buf(),
        offset: seal_offset as u64,
        reason: reason.into(),
    };
    let ticks = ticks.ok_or_else(|| corrupt("seal block in a segment without blocks"))?;
    let expected = segment::seal_tail(ticks, index.entries(), seal_offset as u64);
    if map.get(seal_offset..seal_offset + expected.len()) != Some(expected.as_slice()) {
        return Err(corrupt("seal block does not match the blocks before it"));
    }
    debug_assert!(seal.is_seal());
    let file_bytes = (seal_offset + expected.len()) as u64;
    fs::truncate(&file, path, file_bytes)?;
    fs::fsync(&file, path)?;
    Ok(SealedSegment::new(
        id,
        path.to_path_buf(),
        ticks,
        seal_offset as u64,
        index.len() as u32,
        file_bytes,
        None,
    ))
}

/// Seals a complete segment whose seal a crash prevented.
fn seal_in_place(
    file: &File,
    path: &Path,
    id: SegmentId,
    ticks: TickRange,
    index: &TickIndex,
    data_end: u64,
) -> Result<SealedSegment> {
    let tail = segment::seal_tail(ticks, index.entries(), data_end);
    fs::write_all_at(file, path, &tail, data_end)?;
    fs::fdatasync(file, path)?;
    let file_bytes = data_end + tail.len() as u64;
    fs::truncate(file, path, file_bytes)?;
    fs::fsync(file, path)?;
    Ok(SealedSegment::new(
        id,
        path.to_path_buf(),
        ticks,
        data_end,
        index.len() as u32,
        file_bytes,
        None,
    ))
}

/// Verifies every block of a sealed segment (`verify_on_open`).
fn verify_sealed(segment: &SealedSegment, report: &mut RecoveryReport) -> Result<()> {
    let corrupt = |offset: u64, reason: String| Error::Corruption {
        segment_id: segment.id,
        path: segment.path.clone(),
        offset,
        reason,
    };
    let map = segment.map()?.clone();
    let index = super::tick_index::SealedIndex::new(segment.index()?);
    let mut expected_offset = SEGMENT_HEADER_BYTES as u64;
    let mut previous_last: Option<Tick> = None;
    for i in 0..index.len() {
        let (tick, offset) = index.get(i);
        if offset != expected_offset {
            return Err(corrupt(
                offset,
                "seal index does not match the blocks".into(),
            ));
        }
        let at = offset as usize;
        let header = match BlockHeader::decode(&map[at..segment.data_end as usize]) {
            Ok(Some(header)) if !header.is_seal() && header.tick_first == tick => header,
            Ok(_) => {
                return Err(corrupt(
                    offset,
                    "block does not match the seal index".into(),
                ))
            }
            Err(reason) => return Err(corrupt(offset, reason.into())),
        };
        let block = map
            .get(at..at + header.block_bytes())
            .filter(|_| offset + header.segment_bytes() as u64 <= segment.data_end)
            .ok_or_else(|| corrupt(offset, "block extends past the seal".into()))?;
        header
            .verify_crc(block)
            .map_err(|reason| corrupt(offset, reason.into()))?;
        if previous_last.is_some_and(|last| header.tick_first <= last) {
            return Err(corrupt(offset, "block ticks do not increase".into()));
        }
        previous_last = Some(header.tick_last);
        report.blocks_verified += 1;
        report.bytes_verified += header.block_bytes() as u64;
        expected_offset = offset + header.segment_bytes() as u64;
    }
    if expected_offset != segment.data_end || previous_last != Some(segment.ticks.last) {
        return Err(corrupt(
            segment.data_end,
            "blocks do not end at the seal".into(),
        ));
    }
    // Read once; the segment stays mapped for readers, but not resident for this pass.
    map.release_from(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::block::BLOCK_HEADER_BYTES;

    // Goal: only the WAL's own temporary names are removed without asking.
    #[test]
    fn temporary_names() {
        assert!(is_temporary("spare-3.wal.tmp"));
        assert!(is_temporary("direct-probe.tmp"));
        assert!(!is_temporary("important.tmp"));
        assert!(!is_temporary("0000000000000001-0000000000000001.wal"));
    }

    // Goal: the search for intact blocks ignores unaligned magic and damaged blocks.
    #[test]
    fn intact_block_search() {
        let prepared = crate::wal::block::prepare(&[crate::wal::Record::put("d", "c", "k", b"{}")])
            .expect("prepare");
        let block = prepared.to_block(Tick::new(7)).into_bytes();
        let mut map = vec![0u8; 256];
        map[64..64 + block.len()].copy_from_slice(&block);
        assert_eq!(find_intact_block(&map, 0), Some(64));
        assert_eq!(find_intact_block(&map, 72), None);
        let mut unaligned = vec![0u8; 256];
        unaligned[68..68 + block.len()].copy_from_slice(&block);
        assert_eq!(find_intact_block(&unaligned, 0), None);
        map[64 + BLOCK_HEADER_BYTES] ^= 0xff;
        assert_eq!(find_intact_block(&map, 0), None);
    }
}
