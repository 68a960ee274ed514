//! Blocks: the unit of the WAL on disk and on the wire.
//!
//! Long for one concern: encoding, decoding with every check a byte from disk or a peer needs,
//! and the compression paths are one format and change together; a third of it is its tests.
//!
//! A block is a 40-byte header and a payload: the block's records (see `record`), lz4-compressed
//! unless that would not make them smaller. Prepared with a frame size (`prepare_framed`), a
//! block holding more records than fit in one frame is compressed in frames, each on its own, so
//! one record can be read back by its tick without decompressing the whole block
//! (`Block::record_at`). The payload is
//! compressed once, by the thread that builds the block, before ticks are known; the writer then
//! stamps the header with the first tick and the checksum. Blocks are stored and shipped exactly
//! as they were stamped.
//!
//! Invariants a valid block satisfies (checked by `BlockHeader::decode` and `Block::parse`, for
//! every block read from disk or received from a peer):
//! - magic, version, compression and flags are known values;
//! - a data block has `record_count >= 1` and `tick_last - tick_first + 1 == record_count`;
//! - `stored_bytes` fits the bytes at hand and `raw_bytes <= BLOCK_RAW_BYTES_MAX`;
//! - the CRC-32C matches (payload first, then the first 36 header bytes);
//! - the payload decompresses to exactly `raw_bytes` bytes holding exactly `record_count` records;
//! - a framed payload's frame table is consistent: the frames' first records start at 0 and
//!   increase, their sizes add up to the block's, and each frame holds exactly its records.

use bytemuck::{Pod, Zeroable};
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::fs::FileMap;
use crate::tick::{Tick, TickRange};
use crate::wal::record::{Record, Records};

#[cfg(not(target_endian = "little"))]
compile_error!("the WAL's on-disk structs are little-endian and mapped directly");

/// "TSBK" read as a little-endian u32.
pub const BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"TSBK");
pub const BLOCK_HEADER_BYTES: usize = 40;
/// Blocks start at multiples of this offset in a segment, so a scan can look for headers at
/// aligned offsets only.
pub const BLOCK_ALIGN: usize = 8;
/// Decoders refuse blocks claiming a larger uncompressed payload: it bounds the memory that a
/// corrupt or hostile block can make a reader allocate.
pub const BLOCK_RAW_BYTES_MAX: usize = 256 << 20;

/// The frame size of a WAL that stores documents for the store (`WalOptions::frame_bytes`):
/// reading one record back decompresses at most this much (a record larger than it is a frame
/// of its own). lz4 matches reach at most 64 KiB back, so a frame restarts with less history
/// than a whole block has: measured with `tickship-load`'s ~1 KB documents, a WAL of 1,000-
/// document blocks was 5.1% larger in 64 KiB frames (2.0% in 128 KiB, 9.0% in 32 KiB).
pub const FRAME_RAW_BYTES: usize = 64 << 10;

/// Bytes of a framed payload's table before its entries: frame count and table checksum.
const FRAME_TABLE_HEAD_BYTES: usize = 8;
/// Bytes of one frame table entry: first record, raw bytes, stored bytes, checksum.
const FRAME_ENTRY_BYTES: usize = 16;

/// Flag of the block that seals a segment: its payload is the segment's block index.
pub(crate) const FLAG_SEAL: u8 = 0x01;

/// Format versions of blocks and segments. A format change adds a variant and keeps reading
/// the old ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Version {
    V1 = 1,
}

impl Version {
    pub const CURRENT: Version = Version::V1;

    pub fn from_u16(value: u16) -> Option<Version> {
        match value {
            1 => Some(Version::V1),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    None = 0,
    /// The whole payload is one lz4 block.
    Lz4 = 1,
    /// A frame table, then frames compressed with lz4 each on its own (`FRAME_RAW_BYTES`).
    Lz4Frames = 2,
}

/// The header as it lies on disk.
///
/// Format: { magic: u32 LE "TSBK" | version: u16 LE | compression: u8 | flags: u8 |
///           record_count: u32 LE | raw_bytes: u32 LE | tick_first: u64 LE | tick_last: u64 LE |
///           stored_bytes: u32 LE | crc32c: u32 LE }
/// `crc32c` covers the stored payload, then header bytes 0..36.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
struct RawHeader {
    magic: u32,
    version: u16,
    compression: u8,
    flags: u8,
    record_count: u32,
    raw_bytes: u32,
    tick_first: u64,
    tick_last: u64,
    stored_bytes: u32,
    crc32c: u32,
}

const _: () = assert!(std::mem::size_of::<RawHeader>() == BLOCK_HEADER_BYTES);
const _: () = assert!(BLOCK_HEADER_BYTES % BLOCK_ALIGN == 0);
const CRC_COVERED_HEADER_BYTES: usize = BLOCK_HEADER_BYTES - 4;

/// A header whose fields passed the structural checks (not yet the checksum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub compression: Compression,
    pub(crate) flags: u8,
    pub record_count: u32,
    pub raw_bytes: u32,
    pub tick_first: Tick,
    pub tick_last: Tick,
    pub stored_bytes: u32,
    pub crc32c: u32,
}

impl BlockHeader {
    /// Decodes and checks a header. `Ok(None)` means the 40 bytes are all zero: the clean end of
    /// a segment's data, where preallocated space begins.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Option<BlockHeader>, &'static str> {
        let bytes = bytes
            .get(..BLOCK_HEADER_BYTES)
            .ok_or("block header cut short")?;
        if bytes.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let raw: RawHeader = bytemuck::pod_read_unaligned(bytes);
        if raw.magic != BLOCK_MAGIC {
            return Err("bad block magic");
        }
        Version::from_u16(raw.version).ok_or("unsupported block version")?;
        let compression = match raw.compression {
            0 => Compression::None,
            1 => Compression::Lz4,
            2 => Compression::Lz4Frames,
            _ => return Err("unknown block compression"),
        };
        if raw.flags & !FLAG_SEAL != 0 {
            return Err("unknown block flags");
        }
        if raw.raw_bytes as usize > BLOCK_RAW_BYTES_MAX {
            return Err("block claims more than the maximum uncompressed size");
        }
        if raw.tick_first == 0 || raw.tick_last < raw.tick_first {
            return Err("block tick range is invalid");
        }
        if raw.flags & FLAG_SEAL != 0 {
            if compression != Compression::None || raw.stored_bytes != raw.raw_bytes {
                return Err("seal block must be uncompressed");
            }
        } else {
            if raw.record_count == 0 {
                return Err("block holds no records");
            }
            if raw.tick_last - raw.tick_first != u64::from(raw.record_count) - 1 {
                return Err("block tick range does not match its record count");
            }
            if compression == Compression::None && raw.stored_bytes != raw.raw_bytes {
                return Err("uncompressed block sizes differ");
            }
        }
        Ok(Some(BlockHeader {
            compression,
            flags: raw.flags,
            record_count: raw.record_count,
            raw_bytes: raw.raw_bytes,
            tick_first: Tick::new(raw.tick_first),
            tick_last: Tick::new(raw.tick_last),
            stored_bytes: raw.stored_bytes,
            crc32c: raw.crc32c,
        }))
    }

    fn encode_without_crc(&self) -> [u8; BLOCK_HEADER_BYTES] {
        let raw = RawHeader {
            magic: BLOCK_MAGIC,
            version: Version::CURRENT as u16,
            compression: self.compression as u8,
            flags: self.flags,
            record_count: self.record_count,
            raw_bytes: self.raw_bytes,
            tick_first: self.tick_first.get(),
            tick_last: self.tick_last.get(),
            stored_bytes: self.stored_bytes,
            crc32c: 0,
        };
        let mut out = [0u8; BLOCK_HEADER_BYTES];
        out.copy_from_slice(bytemuck::bytes_of(&raw));
        out
    }

    /// The header bytes with the checksum over `payload_crc` (CRC-32C of the stored payload).
    fn encode(&mut self, payload_crc: u32) -> [u8; BLOCK_HEADER_BYTES] {
        let mut out = self.encode_without_crc();
        self.crc32c = crc32c::crc32c_append(payload_crc, &out[..CRC_COVERED_HEADER_BYTES]);
        out[CRC_COVERED_HEADER_BYTES..].copy_from_slice(&self.crc32c.to_le_bytes());
        out
    }

    pub fn is_seal(&self) -> bool {
        self.flags & FLAG_SEAL != 0
    }

    pub fn ticks(&self) -> TickRange {
        TickRange::new(self.tick_first, self.tick_last)
    }

    /// Header plus payload: the bytes that are checksummed and shipped.
    pub fn block_bytes(&self) -> usize {
        BLOCK_HEADER_BYTES + self.stored_bytes as usize
    }

    /// Bytes the block takes in a segment, including padding to `BLOCK_ALIGN`.
    pub fn segment_bytes(&self) -> usize {
        self.block_bytes().next_multiple_of(BLOCK_ALIGN)
    }

    /// Checks the CRC against `block` (header and payload, exactly `block_bytes()` long).
    pub fn verify_crc(&self, block: &[u8]) -> std::result::Result<(), &'static str> {
        if block.len() != self.block_bytes() {
            return Err("block cut short");
        }
        let payload_crc = crc32c::crc32c(&block[BLOCK_HEADER_BYTES..]);
        let crc = crc32c::crc32c_append(payload_crc, &block[..CRC_COVERED_HEADER_BYTES]);
        if crc != self.crc32c {
            return Err("block checksum mismatch");
        }
        Ok(())
    }
}

/// Encoded records and where the frames of their block start: a frame is cut before a record
/// that would take it past `frame_bytes` (0: the block is one frame).
#[derive(Default)]
struct Encoded {
    raw: Vec<u8>,
    record_count: u32,
    frame_bytes: usize,
    /// (first record, first raw byte) of each frame after the first.
    cuts: Vec<(u32, usize)>,
}

impl Encoded {
    fn clear(&mut self, frame_bytes: usize) {
        self.raw.clear();
        self.record_count = 0;
        self.frame_bytes = frame_bytes;
        self.cuts.clear();
    }

    fn push(&mut self, record: &Record<'_>) -> Result<()> {
        let frame_start = self.cuts.last().map_or(0, |&(_, at)| at);
        if self.frame_bytes > 0
            && self.raw.len() > frame_start
            && self.raw.len() - frame_start + record.encoded_bytes() > self.frame_bytes
        {
            self.cuts.push((self.record_count, self.raw.len()));
        }
        record.encode_into(&mut self.raw)?;
        self.record_count = self
            .record_count
            .checked_add(1)
            .ok_or_else(|| Error::InvalidRecord("too many records".into()))?;
        Ok(())
    }
}

/// Collects records and encodes them into one block's payload.
#[derive(Default)]
pub struct BlockBuilder {
    encoded: Encoded,
}

impl BlockBuilder {
    pub fn new() -> BlockBuilder {
        BlockBuilder::default()
    }

    pub fn with_capacity(raw_bytes: usize) -> BlockBuilder {
        let mut builder = BlockBuilder::default();
        builder.encoded.raw.reserve(raw_bytes);
        builder
    }

    /// A builder that compresses in frames of `frame_bytes` (0: one frame).
    pub fn framed(frame_bytes: usize) -> BlockBuilder {
        let mut builder = BlockBuilder::default();
        builder.encoded.frame_bytes = frame_bytes;
        builder
    }

    pub fn push(&mut self, record: &Record<'_>) -> Result<()> {
        let raw_bytes = self.encoded.raw.len();
        if raw_bytes + record.encoded_bytes() > BLOCK_RAW_BYTES_MAX {
            return Err(Error::BlockTooLarge {
                bytes: (raw_bytes + record.encoded_bytes()) as u64,
                bytes_max: BLOCK_RAW_BYTES_MAX as u64,
            });
        }
        self.encoded.push(record)
    }

    pub fn record_count(&self) -> u32 {
        self.encoded.record_count
    }

    /// Uncompressed payload bytes so far.
    pub fn raw_bytes(&self) -> usize {
        self.encoded.raw.len()
    }

    /// Compresses the payload and computes its checksum. Fails if no record was pushed.
    pub fn finish(self) -> Result<PreparedBlock> {
        if self.encoded.record_count == 0 {
            return Err(Error::InvalidRecord(
                "a block needs at least one record".into(),
            ));
        }
        Ok(compress(&self.encoded))
    }
}

thread_local! {
    /// Per-thread scratch for encoding and compressing, reused across blocks: a fresh buffer per
    /// block costs a memset and page faults for every block.
    static SCRATCH: std::cell::RefCell<(Encoded, Vec<u8>)> = std::cell::RefCell::new((Encoded::default(), Vec::new()));
}

/// Scratch buffers larger than this are not kept between blocks.
const SCRATCH_BYTES_KEPT: usize = 8 << 20;

/// Compresses `encoded` into a prepared block: in frames if it has more than one, as one lz4
/// block otherwise, uncompressed if lz4 does not make it smaller.
fn compress(encoded: &Encoded) -> PreparedBlock {
    let raw = encoded.raw.as_slice();
    let raw_bytes = raw.len() as u32;
    let (compression, payload) = SCRATCH.with(|scratch| {
        let compressed = &mut scratch.borrow_mut().1;
        let bound = lz4_flex::block::get_maximum_output_size(raw.len());
        if compressed.len() < bound {
            compressed.resize(bound, 0);
        }
        let result = if encoded.cuts.is_empty() {
            match lz4_flex::block::compress_into(raw, &mut compressed[..bound]) {
                Ok(n) if n < raw.len() => (Compression::Lz4, compressed[..n].to_vec()),
                _ => (Compression::None, raw.to_vec()),
            }
        } else {
            compress_frames(encoded, compressed)
        };
        if compressed.len() > SCRATCH_BYTES_KEPT {
            *compressed = Vec::new();
        }
        result
    });
    let payload_crc = crc32c::crc32c(&payload);
    PreparedBlock {
        payload,
        compression,
        raw_bytes,
        record_count: encoded.record_count,
        payload_crc,
    }
}

/// A framed payload for `encoded` (which has at least one cut), or the raw bytes when that is
/// not smaller. `compressed` is scratch of at least lz4's bound for the whole payload.
///
/// Format: { frame_count: u32 | table_crc32c: u32 over the entries |
///           entries: [{ record_first: u32 | raw_bytes: u32 | stored_bytes: u32 |
///                       crc32c: u32 over the stored frame }; frame_count] |
///           the stored frames, in order }
/// A frame whose `stored_bytes` equals its `raw_bytes` is stored uncompressed.
fn compress_frames(encoded: &Encoded, compressed: &mut [u8]) -> (Compression, Vec<u8>) {
    let raw = encoded.raw.as_slice();
    let starts = std::iter::once((0u32, 0usize)).chain(encoded.cuts.iter().copied());
    let ends = encoded.cuts.iter().map(|&(_, at)| at).chain([raw.len()]);
    let frames = encoded.cuts.len() + 1;
    let table_bytes = FRAME_TABLE_HEAD_BYTES + frames * FRAME_ENTRY_BYTES;
    let mut table = Vec::with_capacity(table_bytes);
    table.extend_from_slice(&(frames as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]);
    let mut used = 0;
    for ((record_first, start), end) in starts.zip(ends) {
        let frame = &raw[start..end];
        let out = &mut compressed[used..];
        let stored = match lz4_flex::block::compress_into(frame, out) {
            Ok(n) if n < frame.len() => n,
            _ => {
                out[..frame.len()].copy_from_slice(frame);
                frame.len()
            }
        };
        table.extend_from_slice(&record_first.to_le_bytes());
        table.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        table.extend_from_slice(&(stored as u32).to_le_bytes());
        table.extend_from_slice(&crc32c::crc32c(&out[..stored]).to_le_bytes());
        used += stored;
    }
    if table_bytes + used >= raw.len() {
        return (Compression::None, raw.to_vec());
    }
    let table_crc = crc32c::crc32c(&table[FRAME_TABLE_HEAD_BYTES..]);
    table[4..8].copy_from_slice(&table_crc.to_le_bytes());
    let mut payload = table;
    payload.extend_from_slice(&compressed[..used]);
    (Compression::Lz4Frames, payload)
}

/// Builds and finishes a block from `records`, encoding them into per-thread scratch; the
/// payload is compressed as a whole.
pub fn prepare(records: &[Record<'_>]) -> Result<PreparedBlock> {
    prepare_framed(records, 0)
}

/// Like `prepare`, compressing in frames of `frame_bytes` (0: as a whole) so that records can be
/// read back one by one (`Block::record_at`).
pub fn prepare_framed(records: &[Record<'_>], frame_bytes: usize) -> Result<PreparedBlock> {
    if records.is_empty() {
        return Err(Error::InvalidRecord(
            "a block needs at least one record".into(),
        ));
    }
    let raw_bytes: usize = records.iter().map(Record::encoded_bytes).sum();
    if raw_bytes > BLOCK_RAW_BYTES_MAX {
        return Err(Error::BlockTooLarge {
            bytes: raw_bytes as u64,
            bytes_max: BLOCK_RAW_BYTES_MAX as u64,
        });
    }
    u32::try_from(records.len()).map_err(|_| Error::InvalidRecord("too many records".into()))?;
    let mut encoded = SCRATCH.with(|scratch| std::mem::take(&mut scratch.borrow_mut().0));
    encoded.clear(frame_bytes);
    let pushed = records.iter().try_for_each(|record| encoded.push(record));
    let prepared = pushed.map(|()| compress(&encoded));
    if encoded.raw.capacity() <= SCRATCH_BYTES_KEPT {
        SCRATCH.with(|scratch| scratch.borrow_mut().0 = encoded);
    }
    prepared
}

/// A block whose payload is compressed and checksummed but whose ticks are not assigned yet.
pub struct PreparedBlock {
    payload: Vec<u8>,
    compression: Compression,
    raw_bytes: u32,
    record_count: u32,
    payload_crc: u32,
}

impl PreparedBlock {
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Header plus payload.
    pub fn block_bytes(&self) -> usize {
        BLOCK_HEADER_BYTES + self.payload.len()
    }

    pub fn raw_bytes(&self) -> u32 {
        self.raw_bytes
    }

    pub(crate) fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The header for this block starting at `tick_first`.
    ///
    /// # Panics
    /// If the ticks would overflow; the writer checks that before stamping.
    pub(crate) fn stamp(&self, tick_first: Tick) -> [u8; BLOCK_HEADER_BYTES] {
        let ticks = TickRange::with_count(tick_first, u64::from(self.record_count))
            .expect("tick overflow checked by the writer");
        let mut header = BlockHeader {
            compression: self.compression,
            flags: 0,
            record_count: self.record_count,
            raw_bytes: self.raw_bytes,
            tick_first: ticks.first,
            tick_last: ticks.last,
            stored_bytes: self.payload.len() as u32,
            crc32c: 0,
        };
        header.encode(self.payload_crc)
    }

    /// The complete block bytes for `tick_first`, as the writer would store them.
    pub fn to_block(&self, tick_first: Tick) -> Block {
        let mut bytes = Vec::with_capacity(self.block_bytes());
        bytes.extend_from_slice(&self.stamp(tick_first));
        bytes.extend_from_slice(&self.payload);
        let bytes = Bytes::from(bytes);
        let header = BlockHeader::decode(&bytes)
            .ok()
            .flatten()
            .expect("a freshly stamped header decodes");
        Block {
            bytes,
            header,
            checked: true,
            map: None,
        }
    }
}

/// Encodes a seal block: an uncompressed payload of `entries` (tick_first, segment_offset) pairs,
/// 16 bytes each.
pub(crate) fn encode_seal(ticks: TickRange, entries: &[(Tick, u64)]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(entries.len() * 16);
    for (tick, offset) in entries {
        payload.extend_from_slice(&tick.get().to_le_bytes());
        payload.extend_from_slice(&offset.to_le_bytes());
    }
    let mut header = BlockHeader {
        compression: Compression::None,
        flags: FLAG_SEAL,
        record_count: entries.len() as u32,
        raw_bytes: payload.len() as u32,
        tick_first: ticks.first,
        tick_last: ticks.last,
        stored_bytes: payload.len() as u32,
        crc32c: 0,
    };
    let header_bytes = header.encode(crc32c::crc32c(&payload));
    let mut out = Vec::with_capacity(BLOCK_HEADER_BYTES + payload.len());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&payload);
    out
}

/// A complete, validated data block: header and payload in one `Bytes`, sliced from a segment's
/// mapping (no copy) or received from a peer.
#[derive(Clone, Debug)]
pub struct Block {
    bytes: Bytes,
    header: BlockHeader,
    /// Whether the block's checksum was verified; if not, what reads it checks its parts first
    /// (`from_unchecked`).
    checked: bool,
    /// The mapping `bytes` is a slice of, for a block read back by its tick (`with_map`).
    map: Option<FileMap>,
}

impl Block {
    /// Validates `bytes` as exactly one data block: header fields, length and checksum.
    pub fn parse(bytes: Bytes) -> Result<Block> {
        let header = BlockHeader::decode(&bytes)
            .map_err(Error::InvalidBlock)?
            .ok_or(Error::InvalidBlock("block header is all zero"))?;
        if header.is_seal() {
            return Err(Error::InvalidBlock("seal blocks are not data"));
        }
        header.verify_crc(&bytes).map_err(Error::InvalidBlock)?;
        Ok(Block {
            bytes,
            header,
            checked: true,
            map: None,
        })
    }

    /// A block whose header and checksum the caller has already verified.
    pub(crate) fn from_verified(bytes: Bytes, header: BlockHeader) -> Block {
        debug_assert_eq!(bytes.len(), header.block_bytes());
        Block {
            bytes,
            header,
            checked: true,
            map: None,
        }
    }

    /// A block whose header the caller has decoded but whose checksum it has not verified:
    /// `record_at` then checks the frame table and the frame it reads (a framed block) or the
    /// whole block (the others), and `records` the whole block.
    pub(crate) fn from_unchecked(bytes: Bytes, header: BlockHeader) -> Block {
        debug_assert_eq!(bytes.len(), header.block_bytes());
        Block {
            bytes,
            header,
            checked: false,
            map: None,
        }
    }

    /// Records that the block's bytes are a slice of `map`, so that `release_pages` can hand
    /// them back.
    pub(crate) fn with_map(mut self, map: &FileMap) -> Block {
        self.map = Some(map.clone());
        self
    }

    /// Hands the pages around the block back to the kernel if it was read back from a mapped
    /// segment (`FileMap::release`): for a reader done with it, such as a scan going through
    /// the documents kept in the WAL. They stay in the page cache; a later read maps them again.
    /// The whole `MAPPED_AROUND` window around it goes, for a fault in it may have mapped that
    /// much: handing back the block's own pages only, a follower's checksum of 1.8M documents
    /// had 65 MiB of its WAL mapped at once.
    pub fn release_pages(&self) {
        if let Some(map) = &self.map {
            let from = (self.bytes.as_ptr() as usize).wrapping_sub(map.as_ptr() as usize) as u64;
            let to = from + self.bytes.len() as u64;
            let window = crate::fs::MAPPED_AROUND;
            map.release(from - from % window, to.div_ceil(window) * window);
        }
    }

    /// Verifies the whole block's checksum unless that was done.
    fn check(&self) -> Result<()> {
        if self.checked {
            return Ok(());
        }
        self.header
            .verify_crc(&self.bytes)
            .map_err(Error::InvalidBlock)
    }

    pub fn header(&self) -> &BlockHeader {
        &self.header
    }

    pub fn ticks(&self) -> TickRange {
        self.header.ticks()
    }

    pub fn record_count(&self) -> u32 {
        self.header.record_count
    }

    /// Header and payload: what is stored and shipped.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Decompresses the payload (into `scratch` if compressed) and iterates its records.
    pub fn records<'a>(&'a self, scratch: &'a mut Vec<u8>) -> Result<Records<'a>> {
        self.check()?;
        let stored = &self.bytes[BLOCK_HEADER_BYTES..];
        let raw_bytes = self.header.raw_bytes as usize;
        let raw: &[u8] = match self.header.compression {
            Compression::None => stored,
            Compression::Lz4 => decompress(stored, raw_bytes, scratch)?,
            Compression::Lz4Frames => {
                let table = FrameTable::parse(stored, &self.header)?;
                // Only growth is zeroed: the frames overwrite the first `raw_bytes`, and only
                // those are read.
                grow_scratch(scratch, raw_bytes);
                let mut at = 0;
                for frame in table.frames() {
                    let out = &mut scratch[at..at + frame.raw_bytes];
                    frame.decompress_into(table.stored(stored, &frame), out)?;
                    at += frame.raw_bytes;
                }
                &scratch[..raw_bytes]
            }
        };
        Ok(Records::new(
            raw,
            self.header.tick_first,
            self.header.record_count,
        ))
    }

    /// The record at `tick` (which the block must hold), decompressing only the frame holding
    /// it: a point read of a document by its tick. The frame's checksum is checked and it must
    /// hold exactly the records its table entry claims.
    pub fn record_at<'a>(&'a self, tick: Tick, scratch: &'a mut Vec<u8>) -> Result<Record<'a>> {
        let mut wanted = None;
        for item in self.frame_records(tick, scratch)? {
            let (at, record) = item.map_err(Error::InvalidBlock)?;
            if at == tick {
                wanted = Some(record);
            }
        }
        wanted.ok_or(Error::InvalidBlock("frame does not hold the record"))
    }

    /// The records of the frame holding `tick` (which the block must hold), with their ticks,
    /// decompressing that frame only (the whole payload of a block without frames). The frame's
    /// checksum is checked; the iterator fails unless the frame holds exactly the records its
    /// table entry claims. For reading many records of the same frames (a scan in tick order).
    pub fn frame_records<'a>(
        &'a self,
        tick: Tick,
        scratch: &'a mut Vec<u8>,
    ) -> Result<Records<'a>> {
        if !self.ticks().contains(tick) {
            return Err(Error::InvalidBlock("tick outside the block"));
        }
        let index = (tick.get() - self.header.tick_first.get()) as u32;
        if self.header.compression != Compression::Lz4Frames {
            self.check()?;
        }
        let stored = &self.bytes[BLOCK_HEADER_BYTES..];
        let (raw, first, count): (&[u8], u32, u32) = match self.header.compression {
            Compression::None => (stored, 0, self.header.record_count),
            Compression::Lz4 => (
                decompress(stored, self.header.raw_bytes as usize, scratch)?,
                0,
                self.header.record_count,
            ),
            Compression::Lz4Frames => {
                let table = FrameTable::parse(stored, &self.header)?;
                let frame = table.frame_of(index);
                let bytes = table.stored(stored, &frame);
                if crc32c::crc32c(bytes) != frame.crc32c {
                    return Err(Error::InvalidBlock("frame checksum mismatch"));
                }
                if scratch.len() < frame.raw_bytes {
                    scratch.resize(frame.raw_bytes, 0);
                }
                let out = &mut scratch[..frame.raw_bytes];
                frame.decompress_into(bytes, out)?;
                (&*out, frame.record_first, frame.record_count)
            }
        };
        let first_tick = Tick::new(self.header.tick_first.get() + u64::from(first));
        Ok(Records::new(raw, first_tick, count))
    }
}

/// The data block at `offset` of a segment mapped as `map` whose data ends at `data_end`: its
/// checked header and its bytes (a slice of the mapping), or why there is none. Its checksum
/// is left to the caller.
pub(crate) fn slice_data_block(
    map: &Bytes,
    offset: u64,
    data_end: u64,
) -> std::result::Result<(BlockHeader, Bytes), &'static str> {
    let data = map
        .get(offset as usize..data_end as usize)
        .ok_or("position outside the data")?;
    let header = match BlockHeader::decode(data)? {
        Some(header) if !header.is_seal() => header,
        _ => return Err("no data block at this position"),
    };
    if header.segment_bytes() > data.len() {
        return Err("block extends past the data");
    }
    let bytes = map.slice(offset as usize..offset as usize + header.block_bytes());
    Ok((header, bytes))
}

/// Decompresses a whole-payload lz4 block of `raw_bytes` into `scratch`.
/// Makes `scratch` at least `bytes` long, allocating exactly that much when it grows: a
/// follower keeps one buffer per block of an apply group, and doubling a 1 MiB buffer for a
/// block a little larger held ~2 MiB per buffer (heaptrack: 6.7 MiB of them catching up).
fn grow_scratch(scratch: &mut Vec<u8>, bytes: usize) {
    if scratch.len() < bytes {
        scratch.reserve_exact(bytes - scratch.len());
        scratch.resize(bytes, 0);
    }
}

fn decompress<'a>(stored: &[u8], raw_bytes: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
    // Only growth is zeroed: decompression overwrites the first `raw_bytes`, and only those are
    // read.
    grow_scratch(scratch, raw_bytes);
    let out = &mut scratch[..raw_bytes];
    match lz4_flex::block::decompress_into(stored, out) {
        Ok(n) if n == raw_bytes => Ok(out),
        Ok(_) => Err(Error::InvalidBlock(
            "payload decompresses to the wrong size",
        )),
        Err(_) => Err(Error::InvalidBlock("payload does not decompress")),
    }
}

/// One frame of a framed payload, from its table entry.
#[derive(Clone, Copy, Debug)]
struct Frame {
    record_first: u32,
    record_count: u32,
    raw_bytes: usize,
    /// Offset of the stored frame after the table, and its length.
    stored_at: usize,
    stored_bytes: usize,
    crc32c: u32,
}

impl Frame {
    fn decompress_into(&self, stored: &[u8], out: &mut [u8]) -> Result<()> {
        if self.stored_bytes == self.raw_bytes {
            out.copy_from_slice(stored);
            return Ok(());
        }
        match lz4_flex::block::decompress_into(stored, out) {
            Ok(n) if n == self.raw_bytes => Ok(()),
            Ok(_) => Err(Error::InvalidBlock("frame decompresses to the wrong size")),
            Err(_) => Err(Error::InvalidBlock("frame does not decompress")),
        }
    }
}

/// The validated frame table of a framed payload (see `compress_frames` for the layout).
struct FrameTable {
    frames: Vec<Frame>,
    table_bytes: usize,
}

impl FrameTable {
    /// Parses and checks the table against the block's header: the table's checksum, first
    /// records starting at 0 and increasing below the record count, raw sizes adding up to the
    /// block's, stored sizes to the payload's, no frame stored larger than it is raw.
    fn parse(stored: &[u8], header: &BlockHeader) -> Result<FrameTable> {
        let bad = |reason| Err(Error::InvalidBlock(reason));
        let head = match stored.get(..FRAME_TABLE_HEAD_BYTES) {
            Some(head) => head,
            None => return bad("frame table cut short"),
        };
        let u32_at = |bytes: &[u8], at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let count = u32_at(head, 0) as usize;
        if count < 2 || count > header.record_count as usize {
            return bad("frame count is invalid");
        }
        let table_bytes = FRAME_TABLE_HEAD_BYTES + count * FRAME_ENTRY_BYTES;
        let entries = match stored.get(FRAME_TABLE_HEAD_BYTES..table_bytes) {
            Some(entries) => entries,
            None => return bad("frame table cut short"),
        };
        if crc32c::crc32c(entries) != u32_at(head, 4) {
            return bad("frame table checksum mismatch");
        }
        let mut frames: Vec<Frame> = Vec::with_capacity(count);
        let (mut raw_total, mut stored_total) = (0usize, 0usize);
        for entry in entries.chunks_exact(FRAME_ENTRY_BYTES) {
            let record_first = u32_at(entry, 0);
            let raw_bytes = u32_at(entry, 4) as usize;
            let stored_bytes = u32_at(entry, 8) as usize;
            let expected_first = frames.last().map_or(Some(0), |f| {
                (record_first > f.record_first).then_some(record_first)
            });
            if expected_first != Some(record_first) || record_first >= header.record_count {
                return bad("frame first records do not increase from 0");
            }
            if raw_bytes == 0 || stored_bytes == 0 || stored_bytes > raw_bytes {
                return bad("frame sizes are invalid");
            }
            if let Some(previous) = frames.last_mut() {
                previous.record_count = record_first - previous.record_first;
            }
            frames.push(Frame {
                record_first,
                record_count: header.record_count - record_first,
                raw_bytes,
                stored_at: stored_total,
                stored_bytes,
                crc32c: u32_at(entry, 12),
            });
            raw_total += raw_bytes;
            stored_total += stored_bytes;
        }
        if raw_total != header.raw_bytes as usize {
            return bad("frame sizes do not add up to the block's");
        }
        if table_bytes + stored_total != stored.len() {
            return bad("frame sizes do not add up to the payload's");
        }
        Ok(FrameTable {
            frames,
            table_bytes,
        })
    }

    fn frames(&self) -> impl Iterator<Item = Frame> + '_ {
        self.frames.iter().copied()
    }

    /// The frame holding the record at `index` (below the block's record count).
    fn frame_of(&self, index: u32) -> Frame {
        let after = self.frames.partition_point(|f| f.record_first <= index);
        self.frames[after.max(1) - 1]
    }

    /// The stored bytes of `frame` in `stored` (the payload this table was parsed from).
    fn stored<'a>(&self, stored: &'a [u8], frame: &Frame) -> &'a [u8] {
        let start = self.table_bytes + frame.stored_at;
        &stored[start..start + frame.stored_bytes]
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::wal::record::RecordType;

    fn arb_record() -> impl Strategy<Value = (u16, u64, String, String, String, Vec<u8>)> {
        (
            0..RecordType::ALL.len() as u16,
            any::<u64>(),
            "[a-z_]{0,12}",
            "[a-zA-Z0-9]{0,16}",
            "[a-zA-Z0-9_:.@-]{0,40}",
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                "[a-z ]{0,600}".prop_map(String::into_bytes),
            ],
        )
    }

    // Goal: a decompression buffer grows to exactly what a block needs, not to the next
    // doubling, and is not shrunk or reallocated for a smaller block.
    #[test]
    fn scratch_grows_exactly() {
        let mut scratch = Vec::new();
        grow_scratch(&mut scratch, 1000);
        assert_eq!((scratch.len(), scratch.capacity()), (1000, 1000));
        grow_scratch(&mut scratch, 1500);
        assert_eq!((scratch.len(), scratch.capacity()), (1500, 1500));
        grow_scratch(&mut scratch, 700);
        assert_eq!((scratch.len(), scratch.capacity()), (1500, 1500));
    }

    proptest! {
        // Goal: any records survive encode -> compress -> stamp -> parse -> decompress -> decode
        // unchanged, with consecutive ticks from the stamped first tick.
        #[test]
        fn block_round_trip(
            records in proptest::collection::vec(arb_record(), 1..40),
            tick_first in 1u64..u64::MAX / 2,
        ) {
            let records: Vec<Record<'_>> = records
                .iter()
                .map(|(kind, tid, db, collection, key, data)| Record {
                    kind: RecordType::ALL[*kind as usize],
                    tid: *tid,
                    db,
                    collection,
                    key,
                    data,
                })
                .collect();
            let prepared = prepare(&records).expect("prepare");
            let block = prepared.to_block(Tick::new(tick_first));
            let parsed = Block::parse(block.bytes().clone()).expect("parse");
            prop_assert_eq!(parsed.ticks().first, Tick::new(tick_first));
            prop_assert_eq!(parsed.ticks().count(), records.len() as u64);
            let mut scratch = Vec::new();
            let decoded: Vec<_> = parsed
                .records(&mut scratch)
                .expect("records")
                .collect::<std::result::Result<_, _>>()
                .expect("decode");
            let expected: Vec<_> = records
                .iter()
                .enumerate()
                .map(|(i, r)| (Tick::new(tick_first + i as u64), *r))
                .collect();
            prop_assert_eq!(decoded, expected);
        }

        // Goal: flipping any bit of a block is detected by parse (checksum or header checks).
        #[test]
        fn any_bit_flip_is_detected(bit in 0usize..8 * 200, seed in any::<u8>()) {
            let data = vec![seed; 100];
            let prepared = prepare(&[Record::put("_system", "c", "k", &data)]).expect("prepare");
            let bytes = prepared.to_block(Tick::new(5)).into_bytes().to_vec();
            let bit = bit % (bytes.len() * 8);
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Block::parse(Bytes::from(flipped)).is_err());
        }

        // Goal: arbitrary bytes never make the parser or the record decoder panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(block) = Block::parse(Bytes::from(bytes)) {
                let mut scratch = Vec::new();
                if let Ok(records) = block.records(&mut scratch) {
                    for record in records {
                        let _ = record;
                    }
                }
            }
        }
    }

    // Goal: repetitive JSON is stored compressed, and incompressible bytes are stored raw.
    #[test]
    fn compression_is_chosen_by_result() {
        let json = br#"{"name":"alice","tags":["a","b"],"address":{"city":"Berlin"}}"#.repeat(20);
        let prepared = prepare(&[Record::put("_system", "c", "k", &json)]).expect("prepare");
        assert_eq!(
            prepared.to_block(Tick::new(1)).header().compression,
            Compression::Lz4
        );
        assert!(prepared.block_bytes() < json.len() / 2);

        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..2000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 56) as u8
            })
            .collect();
        let prepared = prepare(&[Record::put("_system", "c", "k", &noise)]).expect("prepare");
        assert_eq!(
            prepared.to_block(Tick::new(1)).header().compression,
            Compression::None
        );
    }

    /// Documents like the load tool's: ~1 KB of JSON, words drawn at random from a vocabulary.
    fn documents(count: usize, bytes: usize) -> Vec<(String, Vec<u8>)> {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        (0..count)
            .map(|i| {
                let mut doc = format!(r#"{{"_key":"k{i}","n":{i},"text":""#).into_bytes();
                while doc.len() < bytes {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    doc.extend_from_slice(format!("word{} ", state % 997).as_bytes());
                }
                doc.extend_from_slice(b"\"}");
                (format!("k{i}"), doc)
            })
            .collect()
    }

    fn noise(bytes: usize, mut state: u64) -> Vec<u8> {
        (0..bytes)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 56) as u8
            })
            .collect()
    }

    // Goal: a block larger than a frame is stored in frames of at most FRAME_RAW_BYTES (a
    // larger record in a frame of its own), compresses about as well as one lz4 block, decodes
    // whole to its records, and reads back each record by its tick.
    #[test]
    fn large_blocks_are_framed_and_read_back_by_tick() {
        let mut docs = documents(300, 1000);
        docs.insert(
            100,
            (
                "big".into(),
                b"{\"big\":\""
                    .iter()
                    .chain(&[b'x'; 100_000])
                    .chain(b"\"}")
                    .copied()
                    .collect(),
            ),
        );
        docs.insert(200, ("noise".into(), noise(5_000, 7)));
        let records: Vec<Record<'_>> = docs
            .iter()
            .map(|(key, doc)| Record::put("_system", "c", key, doc))
            .collect();
        assert_eq!(
            prepare(&records)
                .expect("prepare")
                .to_block(Tick::new(1))
                .header()
                .compression,
            Compression::Lz4,
            "without a frame size a block is one lz4 block"
        );
        let block = prepare_framed(&records, FRAME_RAW_BYTES)
            .expect("prepare")
            .to_block(Tick::new(1000));
        assert_eq!(block.header().compression, Compression::Lz4Frames);
        let stored = &block.bytes()[BLOCK_HEADER_BYTES..];
        let table = FrameTable::parse(stored, block.header()).expect("table");
        for frame in table.frames() {
            assert!(
                frame.raw_bytes <= FRAME_RAW_BYTES || frame.record_count == 1,
                "{frame:?}"
            );
        }
        let whole = {
            let mut encoded = Encoded::default();
            encoded.clear(0);
            records.iter().for_each(|r| encoded.push(r).expect("push"));
            lz4_flex::block::compress(&encoded.raw).len()
        };
        // Each frame costs its table entry and the matches it cannot make into the previous one.
        assert!(
            block.bytes().len() < whole + whole / 25 + 64 * table.frames.len(),
            "framed {} bytes against {whole} as one lz4 block",
            block.bytes().len()
        );

        let parsed = Block::parse(block.bytes().clone()).expect("parse");
        let mut scratch = Vec::new();
        let decoded: Vec<_> = parsed
            .records(&mut scratch)
            .expect("records")
            .collect::<std::result::Result<_, _>>()
            .expect("decode");
        assert_eq!(decoded.len(), records.len());
        for (i, record) in records.iter().enumerate() {
            let tick = Tick::new(1000 + i as u64);
            assert_eq!(decoded[i], (tick, *record));
            let mut scratch = Vec::new();
            assert_eq!(parsed.record_at(tick, &mut scratch).expect("read"), *record);
        }
        let mut scratch = Vec::new();
        assert!(parsed.record_at(Tick::new(999), &mut scratch).is_err());
        assert!(parsed
            .record_at(Tick::new(1000 + records.len() as u64), &mut scratch)
            .is_err());

        // Single-frame blocks keep the old layouts, and read back by tick too.
        let noisy = noise(3000, 9);
        let small = [
            Record::put("_system", "c", "a", &docs[0].1),
            Record::remove("_system", "c", "b", b""),
        ];
        for (records, compression) in [
            (&small[..], Compression::Lz4),
            (
                &[Record::put("_system", "c", "n", &noisy)][..],
                Compression::None,
            ),
        ] {
            let block = prepare_framed(records, FRAME_RAW_BYTES)
                .expect("prepare")
                .to_block(Tick::new(5));
            assert_eq!(block.header().compression, compression);
            let last = records.len() - 1;
            let mut scratch = Vec::new();
            let read = block.record_at(Tick::new(5 + last as u64), &mut scratch);
            assert_eq!(read.expect("read"), records[last]);
        }
    }

    /// `block` with its payload replaced and its checksum stamped again: what a peer that
    /// computes checksums over garbage would send.
    fn restamped(block: &Block, payload: Vec<u8>) -> Bytes {
        let mut header = *block.header();
        header.stored_bytes = payload.len() as u32;
        let mut bytes = header.encode(crc32c::crc32c(&payload)).to_vec();
        bytes.extend_from_slice(&payload);
        Bytes::from(bytes)
    }

    // Goal: a damaged frame is refused by a point read (its own checksum) and by parse (the
    // block's); a frame table that lies, even under a valid block checksum, is refused with a
    // clear error by whole decoding and by point reads, never read past or trusted.
    #[test]
    fn damaged_frames_and_tables_are_refused() {
        let docs = documents(200, 1000);
        let records: Vec<Record<'_>> = docs
            .iter()
            .map(|(key, doc)| Record::put("_system", "c", key, doc))
            .collect();
        let block = prepare_framed(&records, FRAME_RAW_BYTES)
            .expect("prepare")
            .to_block(Tick::new(1));
        let stored = block.bytes()[BLOCK_HEADER_BYTES..].to_vec();
        let table = FrameTable::parse(&stored, block.header()).expect("table");
        let second = table.frames().nth(1).expect("two frames");

        // A flipped byte inside the second frame, the block checksum left as it was.
        let mut bytes = block.bytes().to_vec();
        bytes[BLOCK_HEADER_BYTES + table.table_bytes + second.stored_at + 3] ^= 0x40;
        assert!(Block::parse(Bytes::from(bytes.clone())).is_err());
        let unchecked = Block::from_verified(Bytes::from(bytes), *block.header());
        let mut scratch = Vec::new();
        let tick = Tick::new(1 + u64::from(second.record_first));
        assert!(matches!(
            unchecked.record_at(tick, &mut scratch),
            Err(Error::InvalidBlock("frame checksum mismatch"))
        ));
        assert!(unchecked.record_at(Tick::new(1), &mut scratch).is_ok());

        // Lying tables under a valid block checksum.
        let entry = |frame: usize, field: usize| {
            FRAME_TABLE_HEAD_BYTES + frame * FRAME_ENTRY_BYTES + field * 4
        };
        // (what, which byte of the table, added to it)
        let lies = [
            ("count", 0, 255u8),
            ("first record", entry(1, 0), 1),
            ("raw size", entry(0, 1), 1),
            ("stored size", entry(0, 2), 1),
        ];
        for (what, at, add) in lies {
            let mut payload = stored.clone();
            payload[at] = payload[at].wrapping_add(add);
            // Fix the table's own checksum, so only the consistency checks can catch the lie.
            let count = u32::from_le_bytes(payload[0..4].try_into().expect("4 bytes")) as usize;
            let end = (FRAME_TABLE_HEAD_BYTES + count * FRAME_ENTRY_BYTES).min(payload.len());
            let crc = crc32c::crc32c(&payload[FRAME_TABLE_HEAD_BYTES..end]);
            payload[4..8].copy_from_slice(&crc.to_le_bytes());
            let parsed = Block::parse(restamped(&block, payload)).expect("valid checksum");
            let mut scratch = Vec::new();
            let whole = parsed.records(&mut scratch).and_then(|records| {
                records
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(Error::InvalidBlock)
            });
            let mut scratch = Vec::new();
            let points: Vec<_> = (1..=records.len() as u64)
                .map(|t| {
                    parsed
                        .record_at(Tick::new(t), &mut scratch)
                        .map(|r| r.key.to_owned())
                })
                .collect();
            assert!(
                whole.is_err() || points.iter().any(Result::is_err),
                "a lying {what} was accepted"
            );
            for (i, point) in points.iter().enumerate() {
                if let Ok(key) = point {
                    assert_eq!(
                        key,
                        &format!("k{i}"),
                        "a lying {what} returned the wrong record"
                    );
                }
            }
        }
    }

    // Goal: a seal block is recognised as such and is never accepted as data.
    #[test]
    fn seal_block_is_not_data() {
        let ticks = TickRange::new(Tick::new(1), Tick::new(9));
        let bytes = encode_seal(ticks, &[(Tick::new(1), 64), (Tick::new(5), 512)]);
        let header = BlockHeader::decode(&bytes)
            .expect("decode")
            .expect("not zero");
        assert!(header.is_seal());
        header.verify_crc(&bytes).expect("crc");
        assert!(matches!(
            Block::parse(Bytes::from(bytes)),
            Err(Error::InvalidBlock(_))
        ));
    }

    // Goal: an all-zero header reads as the clean end of data, not as an error.
    #[test]
    fn zero_header_is_clean_end() {
        assert_eq!(BlockHeader::decode(&[0u8; BLOCK_HEADER_BYTES]), Ok(None));
        assert!(BlockHeader::decode(&[0u8; 10]).is_err());
    }
}
