//! One segment file: its name, header, capacity, seal, and read access through a memory map.
//!
//! A segment is named `{segment_id:016x}-{tick_first:016x}.wal`, where `tick_first` is the first
//! tick of its first block, so a directory listing is enough to order segments and find the one
//! holding a tick. Its layout:
//!
//! ```text
//! 0        segment header (64 bytes)
//! 64       block, block, ... (each at a multiple of 8, padded with zeros)
//! data_end seal block: a block with FLAG_SEAL whose payload is the block index
//!          (tick_first, segment_offset) per data block          <- sealed segments only
//!          locator (16 bytes): where the seal block starts      <- the last 16 bytes of the file
//! ```
//!
//! An active segment is preallocated to the configured size and zero-filled, so the first all-zero
//! block header after the last block marks the end of its data. Sealing writes the seal block
//! and locator after the data, syncs, then cuts the file to its used length.
//!
//! Invariants: blocks never span segments; a segment always has room for its seal block and
//! locator (the writer seals before a block would not fit); ids of the segments in a directory
//! are contiguous and their ticks increase strictly from one segment to the next.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::fs::{self, FileMap};
use crate::tick::{SegmentId, Tick, TickRange};
use crate::wal::block::{BlockHeader, Version, BLOCK_ALIGN, BLOCK_HEADER_BYTES};

pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const LOCATOR_BYTES: usize = 16;
/// Bytes per entry of a seal block's index.
pub const INDEX_ENTRY_BYTES: usize = 16;
const SEGMENT_MAGIC: [u8; 8] = *b"TICKSWAL";
/// "TSSL" read as a little-endian u32.
const LOCATOR_MAGIC: u32 = u32::from_le_bytes(*b"TSSL");
pub const SEGMENT_SUFFIX: &str = ".wal";

/// Smallest and largest accepted `--wal.segment-size`.
pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;
pub const SEGMENT_BYTES_MAX: u64 = 16 << 30;

/// Format: { magic: [u8; 8] "TICKSWAL" | version: u16 LE | reserved: u16 | header_bytes: u32 LE |
///           segment_id: u64 LE | tick_first: u64 LE | created_unix_ms: u64 LE |
///           reserved: [u8; 20] | crc32c: u32 LE over bytes 0..60 }
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct RawSegmentHeader {
    magic: [u8; 8],
    version: u16,
    reserved0: u16,
    header_bytes: u32,
    segment_id: u64,
    tick_first: u64,
    created_unix_ms: u64,
    reserved1: [u8; 20],
    crc32c: u32,
}

/// Format: { seal_offset: u64 LE | magic: u32 LE "TSSL" | crc32c: u32 LE over bytes 0..12 }
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct RawLocator {
    seal_offset: u64,
    magic: u32,
    crc32c: u32,
}

const _: () = assert!(std::mem::size_of::<RawSegmentHeader>() == SEGMENT_HEADER_BYTES);
const _: () = assert!(std::mem::size_of::<RawLocator>() == LOCATOR_BYTES);
const _: () = assert!(SEGMENT_HEADER_BYTES % BLOCK_ALIGN == 0);

/// The file name of a segment.
pub fn file_name(id: SegmentId, tick_first: Tick) -> String {
    format!(
        "{:016x}-{:016x}{SEGMENT_SUFFIX}",
        id.get(),
        tick_first.get()
    )
}

/// Parses a segment file name; `None` if `name` is not one.
pub fn parse_file_name(name: &str) -> Option<(SegmentId, Tick)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let (id, tick) = stem.split_once('-')?;
    let hex = |s: &str| {
        (s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
    };
    Some((SegmentId::new(hex(id)?), Tick::new(hex(tick)?)))
}

/// The 64-byte header of segment `id` whose first block starts at `tick_first`.
pub fn encode_header(
    id: SegmentId,
    tick_first: Tick,
    created_unix_ms: u64,
) -> [u8; SEGMENT_HEADER_BYTES] {
    let raw = RawSegmentHeader {
        magic: SEGMENT_MAGIC,
        version: Version::CURRENT as u16,
        reserved0: 0,
        header_bytes: SEGMENT_HEADER_BYTES as u32,
        segment_id: id.get(),
        tick_first: tick_first.get(),
        created_unix_ms,
        reserved1: [0; 20],
        crc32c: 0,
    };
    let mut out = [0u8; SEGMENT_HEADER_BYTES];
    out.copy_from_slice(bytemuck::bytes_of(&raw));
    let crc = crc32c::crc32c(&out[..SEGMENT_HEADER_BYTES - 4]);
    out[SEGMENT_HEADER_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a segment header against the id and tick its file name claims.
pub fn check_header(
    bytes: &[u8],
    id: SegmentId,
    tick_first: Tick,
) -> std::result::Result<(), String> {
    let bytes = bytes
        .get(..SEGMENT_HEADER_BYTES)
        .ok_or("segment header cut short")?;
    if bytes.iter().all(|&b| b == 0) {
        return Err("segment header is all zero".into());
    }
    let raw: RawSegmentHeader = bytemuck::pod_read_unaligned(bytes);
    if raw.magic != SEGMENT_MAGIC {
        return Err("not a tickship WAL segment (bad magic)".into());
    }
    if crc32c::crc32c(&bytes[..SEGMENT_HEADER_BYTES - 4]) != raw.crc32c {
        return Err("segment header checksum mismatch".into());
    }
    if Version::from_u16(raw.version).is_none() {
        return Err(format!(
            "unsupported segment format version {}",
            raw.version
        ));
    }
    if raw.header_bytes as usize != SEGMENT_HEADER_BYTES {
        return Err(format!(
            "unexpected segment header size {}",
            raw.header_bytes
        ));
    }
    if raw.segment_id != id.get() || raw.tick_first != tick_first.get() {
        return Err(format!(
            "header says segment {} from tick {}, file name says segment {id} from tick {tick_first}",
            raw.segment_id, raw.tick_first
        ));
    }
    Ok(())
}

/// Bytes a seal block with `block_count` index entries takes, padded to `BLOCK_ALIGN`.
pub fn seal_bytes(block_count: usize) -> u64 {
    (BLOCK_HEADER_BYTES + block_count * INDEX_ENTRY_BYTES).next_multiple_of(BLOCK_ALIGN) as u64
}

/// Whether a block taking `block_segment_bytes` fits at `data_end` in a segment of
/// `segment_bytes` that already holds `block_count` blocks, leaving room for the seal.
pub fn fits(
    segment_bytes: u64,
    data_end: u64,
    block_count: usize,
    block_segment_bytes: u64,
) -> bool {
    data_end + block_segment_bytes + seal_bytes(block_count + 1) + LOCATOR_BYTES as u64
        <= segment_bytes
}

/// The largest block (header and payload) an empty segment of `segment_bytes` can hold.
pub fn block_bytes_max(segment_bytes: u64) -> u64 {
    let overhead = SEGMENT_HEADER_BYTES as u64 + seal_bytes(1) + LOCATOR_BYTES as u64;
    // A block is padded to BLOCK_ALIGN; round the room down so the padded size still fits.
    (segment_bytes - overhead) / BLOCK_ALIGN as u64 * BLOCK_ALIGN as u64
}

/// The locator that ends a sealed file whose seal block starts at `seal_offset`.
pub fn encode_locator(seal_offset: u64) -> [u8; LOCATOR_BYTES] {
    let mut out = [0u8; LOCATOR_BYTES];
    out[..8].copy_from_slice(&seal_offset.to_le_bytes());
    out[8..12].copy_from_slice(&LOCATOR_MAGIC.to_le_bytes());
    let crc = crc32c::crc32c(&out[..12]);
    out[12..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode_locator(bytes: &[u8]) -> Option<u64> {
    let raw: RawLocator = bytemuck::pod_read_unaligned(bytes.get(..LOCATOR_BYTES)?);
    (raw.magic == LOCATOR_MAGIC && crc32c::crc32c(&bytes[..12]) == raw.crc32c)
        .then_some(raw.seal_offset)
}

/// Where a sealed file's locator must start for a seal block at `seal_offset`.
pub fn sealed_file_bytes(seal_offset: u64, seal: &BlockHeader) -> u64 {
    seal_offset + seal.segment_bytes() as u64 + LOCATOR_BYTES as u64
}

/// The bytes that seal a segment whose data ends at `seal_offset`: the seal block (its index
/// of `entries`), padding, and the locator. The sealed file ends right after them.
pub fn seal_tail(ticks: TickRange, entries: &[(Tick, u64)], seal_offset: u64) -> Vec<u8> {
    assert!(seal_offset % BLOCK_ALIGN as u64 == 0);
    let mut tail = crate::wal::block::encode_seal(ticks, entries);
    tail.resize(tail.len().next_multiple_of(BLOCK_ALIGN), 0);
    tail.extend_from_slice(&encode_locator(seal_offset));
    tail
}

/// A sealed segment: immutable, read through a mapping made on first use.
pub struct SealedSegment {
    pub id: SegmentId,
    pub path: PathBuf,
    /// Ticks of its first and last block.
    pub ticks: TickRange,
    /// End of the last data block = offset of the seal block.
    pub data_end: u64,
    pub block_count: u32,
    pub file_bytes: u64,
    /// A value file (`docstore::values`): its blocks may skip ticks, and the first may start
    /// after the tick its name and seal block give.
    sparse: bool,
    /// The whole file, mapped, with the seal block's checksum verified.
    map: OnceLock<FileMap>,
    /// Whether a point read mapped pages of it since `hand_back_point_reads` last ran.
    point_reads: PointReads,
}

/// Whether reads of single documents (by tick) mapped pages of a file since the pages were last
/// handed back (`Wal::hand_back_point_reads`): such reads take a few pages here and there, and
/// over a large store those would stay mapped, the process's resident set growing with what
/// clients ever read.
#[derive(Default)]
pub(crate) struct PointReads(AtomicBool);

impl PointReads {
    /// Notes a point read; a load first, so that reads of a file already noted write nothing.
    pub(crate) fn note(&self) {
        if !self.0.load(Ordering::Relaxed) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a point read was noted since the last call.
    pub(crate) fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

impl SealedSegment {
    /// A segment the writer has just sealed, with the mapping it wrote through.
    pub(crate) fn new(
        id: SegmentId,
        path: PathBuf,
        ticks: TickRange,
        data_end: u64,
        block_count: u32,
        file_bytes: u64,
        map: Option<FileMap>,
    ) -> SealedSegment {
        let lock = OnceLock::new();
        if let Some(map) = map {
            let _ = lock.set(map);
        }
        SealedSegment {
            id,
            path,
            ticks,
            data_end,
            block_count,
            file_bytes,
            sparse: false,
            map: lock,
            point_reads: PointReads::default(),
        }
    }

    /// Notes that a point read (one document by its tick) mapped pages of this file.
    pub(crate) fn note_point_read(&self) {
        self.point_reads.note();
    }

    /// Hands back the pages of the file, if point reads mapped any since the last call
    /// (`PointReads`); a sequential reader in the file then maps its few pages again from the
    /// page cache.
    pub(crate) fn hand_back_point_reads(&self) {
        if self.point_reads.take() {
            if let Some(map) = self.map.get() {
                map.release_from(0);
            }
        }
    }

    /// `open` for a value file, whose blocks may skip ticks (see `docstore::values`).
    #[cfg(feature = "docstore")]
    pub(crate) fn open_sparse(
        path: &Path,
        id: SegmentId,
        tick_first: Tick,
    ) -> Result<Option<SealedSegment>> {
        Ok(
            SealedSegment::open(path, id, tick_first)?.map(|mut segment| {
                segment.sparse = true;
                segment
            }),
        )
    }

    /// Reads what a sealed file says about itself: header, locator and seal block header, a few
    /// dozen bytes however large the file. `Ok(None)` if the file has no valid locator (it was
    /// never sealed, or sealing was interrupted before the cut).
    pub(crate) fn open(
        path: &Path,
        id: SegmentId,
        tick_first: Tick,
    ) -> Result<Option<SealedSegment>> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let file_bytes = file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        let corrupt = |offset: u64, reason: String| Error::Corruption {
            segment_id: id,
            path: path.to_path_buf(),
            offset,
            reason,
        };
        if file_bytes < (SEGMENT_HEADER_BYTES + LOCATOR_BYTES) as u64 {
            return Err(corrupt(
                0,
                format!("file of {file_bytes} bytes is too short for a segment"),
            ));
        }
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        fs::read_exact_at(&file, path, &mut header, 0)?;
        if header.iter().all(|&b| b == 0) {
            // Never written: not sealed; the scan decides what it is.
            return Ok(None);
        }
        check_header(&header, id, tick_first).map_err(|reason| corrupt(0, reason))?;
        let mut locator = [0u8; LOCATOR_BYTES];
        let locator_offset = file_bytes - LOCATOR_BYTES as u64;
        fs::read_exact_at(&file, path, &mut locator, locator_offset)?;
        let Some(seal_offset) = decode_locator(&locator) else {
            return Ok(None);
        };
        if seal_offset < SEGMENT_HEADER_BYTES as u64
            || seal_offset % BLOCK_ALIGN as u64 != 0
            || seal_offset + BLOCK_HEADER_BYTES as u64 > locator_offset
        {
            return Err(corrupt(
                locator_offset,
                format!("locator points outside the file: {seal_offset}"),
            ));
        }
        let mut seal = [0u8; BLOCK_HEADER_BYTES];
        fs::read_exact_at(&file, path, &mut seal, seal_offset)?;
        let seal = match BlockHeader::decode(&seal) {
            Ok(Some(seal)) if seal.is_seal() => seal,
            Ok(_) => {
                return Err(corrupt(
                    seal_offset,
                    "locator does not point at a seal block".into(),
                ))
            }
            Err(reason) => return Err(corrupt(seal_offset, format!("seal block: {reason}"))),
        };
        if sealed_file_bytes(seal_offset, &seal) != file_bytes {
            return Err(corrupt(
                seal_offset,
                "seal block and file size disagree".into(),
            ));
        }
        if seal.tick_first != tick_first {
            return Err(corrupt(
                seal_offset,
                "seal block's first tick differs from the file name".into(),
            ));
        }
        Ok(Some(SealedSegment::new(
            id,
            path.to_path_buf(),
            seal.ticks(),
            seal_offset,
            seal.record_count,
            file_bytes,
            None,
        )))
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corruption {
            segment_id: self.id,
            path: self.path.clone(),
            offset,
            reason: reason.into(),
        }
    }

    /// The file's bytes, mapping the file and verifying its seal block on first use.
    pub(crate) fn map(&self) -> Result<&FileMap> {
        if let Some(map) = self.map.get() {
            return Ok(map);
        }
        let file = File::open(&self.path).map_err(|e| Error::io("open", &self.path, e))?;
        let map = fs::map(&file, &self.path, self.file_bytes)?;
        self.verify_seal(&map)?;
        Ok(self.map.get_or_init(|| map))
    }

    /// Checks the seal block's checksum and that its index is ordered and inside the data.
    fn verify_seal(&self, map: &[u8]) -> Result<()> {
        let seal_offset = self.data_end as usize;
        let header = BlockHeader::decode(&map[seal_offset..])
            .ok()
            .flatten()
            .ok_or_else(|| self.corrupt(self.data_end, "seal block changed since open"))?;
        let seal = &map[seal_offset..seal_offset + header.block_bytes()];
        header
            .verify_crc(seal)
            .map_err(|reason| self.corrupt(self.data_end, reason))?;
        let mut previous: Option<(u64, u64)> = None;
        for (tick, offset) in index_entries(&seal[BLOCK_HEADER_BYTES..]) {
            let ordered = match previous {
                None => {
                    let first = if self.sparse {
                        tick >= self.ticks.first.get()
                    } else {
                        tick == self.ticks.first.get()
                    };
                    first && offset == SEGMENT_HEADER_BYTES as u64
                }
                Some((t, o)) => tick > t && offset > o,
            };
            let inside = !self.sparse || tick <= self.ticks.last.get();
            if !ordered || !inside || offset >= self.data_end || offset % BLOCK_ALIGN as u64 != 0 {
                return Err(self.corrupt(self.data_end, "seal index out of order"));
            }
            previous = Some((tick, offset));
        }
        if header.record_count != self.block_count || previous.is_none() {
            return Err(self.corrupt(self.data_end, "seal index is empty"));
        }
        Ok(())
    }

    /// The seal block's index entries.
    pub(crate) fn index(&self) -> Result<&[u8]> {
        let map = self.map()?;
        let start = self.data_end as usize + BLOCK_HEADER_BYTES;
        Ok(&map[start..start + self.block_count as usize * INDEX_ENTRY_BYTES])
    }
}

/// Iterates (tick_first, segment_offset) pairs of a seal index.
pub(crate) fn index_entries(index: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    index.chunks_exact(INDEX_ENTRY_BYTES).map(index_entry)
}

pub(crate) fn index_entry(entry: &[u8]) -> (u64, u64) {
    let mut tick = [0u8; 8];
    let mut offset = [0u8; 8];
    tick.copy_from_slice(&entry[..8]);
    offset.copy_from_slice(&entry[8..16]);
    (u64::from_le_bytes(tick), u64::from_le_bytes(offset))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        // Goal: every segment name parses back to its id and tick.
        #[test]
        fn file_name_round_trip(id in any::<u64>(), tick in any::<u64>()) {
            let name = file_name(SegmentId::new(id), Tick::new(tick));
            prop_assert_eq!(parse_file_name(&name), Some((SegmentId::new(id), Tick::new(tick))));
        }
    }

    // Goal: names that are almost segment names are not mistaken for one.
    #[test]
    fn foreign_names_are_not_segments() {
        for name in [
            "notes.txt",
            "0000000000000001-0000000000000001.wal.tmp",
            "0000000000000001-000000000000001.wal",
            "0000000000000001_0000000000000001.wal",
            "000000000000000G-0000000000000001.wal",
            "000000000000000A-0000000000000001.wal",
        ] {
            assert_eq!(parse_file_name(name), None, "{name}");
        }
    }

    // Goal: the header is checked against the file name, and corruption is refused.
    #[test]
    fn header_checks() {
        let header = encode_header(SegmentId::new(3), Tick::new(100), 1);
        assert_eq!(
            check_header(&header, SegmentId::new(3), Tick::new(100)),
            Ok(())
        );
        assert!(check_header(&header, SegmentId::new(4), Tick::new(100)).is_err());
        assert!(check_header(&header, SegmentId::new(3), Tick::new(101)).is_err());
        let mut flipped = header;
        flipped[40] ^= 1;
        assert!(check_header(&flipped, SegmentId::new(3), Tick::new(100)).is_err());
        assert!(check_header(&[0; 64], SegmentId::new(3), Tick::new(100)).is_err());
    }

    // Goal: capacity arithmetic leaves room for the seal, and the largest block fits exactly.
    #[test]
    fn capacity() {
        let size = SEGMENT_BYTES_MIN;
        let max = block_bytes_max(size);
        assert!(fits(size, SEGMENT_HEADER_BYTES as u64, 0, max));
        assert!(!fits(
            size,
            SEGMENT_HEADER_BYTES as u64,
            0,
            max + BLOCK_ALIGN as u64
        ));
        assert_eq!(seal_bytes(1), 56);
        assert_eq!(decode_locator(&encode_locator(4096)), Some(4096));
        assert_eq!(decode_locator(&[0; 16]), None);
    }
}
