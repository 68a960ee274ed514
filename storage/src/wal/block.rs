//! Blocks: the unit of the WAL on disk and on the wire.
//!
//! A block is a 40-byte header and a payload: the block's records (see `record`), lz4-compressed
//! unless that would not make them smaller. The payload is compressed once, by the thread that
//! builds the block, before ticks are known; the writer then stamps the header with the first
//! tick and the checksum. Blocks are stored and shipped exactly as they were stamped.
//!
//! Invariants a valid block satisfies (checked by `BlockHeader::decode` and `Block::parse`, for
//! every block read from disk or received from a peer):
//! - magic, version, compression and flags are known values;
//! - a data block has `record_count >= 1` and `tick_last - tick_first + 1 == record_count`;
//! - `stored_bytes` fits the bytes at hand and `raw_bytes <= BLOCK_RAW_BYTES_MAX`;
//! - the CRC-32C matches (payload first, then the first 36 header bytes);
//! - the payload decompresses to exactly `raw_bytes` bytes holding exactly `record_count` records.

use bytemuck::{Pod, Zeroable};
use bytes::Bytes;

use crate::error::{Error, Result};
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
    Lz4 = 1,
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

/// Collects records and encodes them into one block's payload.
#[derive(Default)]
pub struct BlockBuilder {
    raw: Vec<u8>,
    record_count: u32,
}

impl BlockBuilder {
    pub fn new() -> BlockBuilder {
        BlockBuilder::default()
    }

    pub fn with_capacity(raw_bytes: usize) -> BlockBuilder {
        BlockBuilder {
            raw: Vec::with_capacity(raw_bytes),
            record_count: 0,
        }
    }

    pub fn push(&mut self, record: &Record<'_>) -> Result<()> {
        if self.raw.len() + record.encoded_bytes() > BLOCK_RAW_BYTES_MAX {
            return Err(Error::BlockTooLarge {
                bytes: (self.raw.len() + record.encoded_bytes()) as u64,
                bytes_max: BLOCK_RAW_BYTES_MAX as u64,
            });
        }
        record.encode_into(&mut self.raw)?;
        self.record_count += 1;
        Ok(())
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Uncompressed payload bytes so far.
    pub fn raw_bytes(&self) -> usize {
        self.raw.len()
    }

    /// Compresses the payload and computes its checksum. Fails if no record was pushed.
    pub fn finish(self) -> Result<PreparedBlock> {
        if self.record_count == 0 {
            return Err(Error::InvalidRecord(
                "a block needs at least one record".into(),
            ));
        }
        Ok(compress(&self.raw, self.record_count))
    }
}

thread_local! {
    /// Per-thread scratch for encoding and compressing, reused across blocks: a fresh buffer per
    /// block costs a memset and page faults for every block.
    static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Scratch buffers larger than this are not kept between blocks.
const SCRATCH_BYTES_KEPT: usize = 8 << 20;

/// Compresses `raw` (the encoded records) into a prepared block, storing it uncompressed if
/// lz4 does not make it smaller.
fn compress(raw: &[u8], record_count: u32) -> PreparedBlock {
    let raw_bytes = raw.len() as u32;
    let payload = SCRATCH.with(|scratch| {
        let compressed = &mut scratch.borrow_mut().1;
        let bound = lz4_flex::block::get_maximum_output_size(raw.len());
        if compressed.len() < bound {
            compressed.resize(bound, 0);
        }
        let result = match lz4_flex::block::compress_into(raw, &mut compressed[..bound]) {
            Ok(n) if n < raw.len() => (Compression::Lz4, compressed[..n].to_vec()),
            _ => (Compression::None, raw.to_vec()),
        };
        if compressed.len() > SCRATCH_BYTES_KEPT {
            *compressed = Vec::new();
        }
        result
    });
    let (compression, payload) = payload;
    let payload_crc = crc32c::crc32c(&payload);
    PreparedBlock {
        payload,
        compression,
        raw_bytes,
        record_count,
        payload_crc,
    }
}

/// Builds and finishes a block from `records`, encoding them into per-thread scratch.
pub fn prepare(records: &[Record<'_>]) -> Result<PreparedBlock> {
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
    let record_count = u32::try_from(records.len())
        .map_err(|_| Error::InvalidRecord("too many records".into()))?;
    let mut raw = SCRATCH.with(|scratch| std::mem::take(&mut scratch.borrow_mut().0));
    raw.clear();
    let encoded = records
        .iter()
        .try_for_each(|record| record.encode_into(&mut raw));
    let prepared = encoded.map(|()| compress(&raw, record_count));
    if raw.capacity() <= SCRATCH_BYTES_KEPT {
        SCRATCH.with(|scratch| scratch.borrow_mut().0 = raw);
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
        Block { bytes, header }
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
        Ok(Block { bytes, header })
    }

    /// A block whose header and checksum the caller has already verified.
    pub(crate) fn from_verified(bytes: Bytes, header: BlockHeader) -> Block {
        debug_assert_eq!(bytes.len(), header.block_bytes());
        Block { bytes, header }
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
        let stored = &self.bytes[BLOCK_HEADER_BYTES..];
        let raw: &[u8] = match self.header.compression {
            Compression::None => stored,
            Compression::Lz4 => {
                let raw_bytes = self.header.raw_bytes as usize;
                // Only growth is zeroed: decompression overwrites the first `raw_bytes`, and
                // only those are read.
                if scratch.len() < raw_bytes {
                    scratch.resize(raw_bytes, 0);
                }
                let out = &mut scratch[..raw_bytes];
                match lz4_flex::block::decompress_into(stored, out) {
                    Ok(n) if n == raw_bytes => out,
                    Ok(_) => {
                        return Err(Error::InvalidBlock(
                            "payload decompresses to the wrong size",
                        ))
                    }
                    Err(_) => return Err(Error::InvalidBlock("payload does not decompress")),
                }
            }
        };
        Ok(Records::new(
            raw,
            self.header.tick_first,
            self.header.record_count,
        ))
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
