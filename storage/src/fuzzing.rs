//! Entry points of the fuzz targets (`fuzz/`, `scripts/fuzz`), also replayed over the saved
//! corpus by `tests/fuzz_corpus_replays.rs`. Each takes arbitrary bytes and must return without
//! panicking, hanging or allocating without bound, whatever they are: every byte the WAL reads
//! from disk or a follower receives goes through these decoders.
//!
//! A fuzzer cannot guess a CRC-32C, so when the input's first byte is odd the checksums the format
//! puts in front of the interesting parts (segment header, block, seal locator) are made right
//! first; an even first byte leaves the bytes as they are.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::wal::block::{Block, BlockHeader, BLOCK_HEADER_BYTES};
use crate::wal::segment::{LOCATOR_BYTES, SEGMENT_HEADER_BYTES};
use crate::wal::{IoEngine, SyncPolicy, Wal, WalOptions};
use crate::Tick;

/// Byte offset of a block header's CRC (it covers the payload, then header bytes 0..36).
const BLOCK_CRC_AT: usize = BLOCK_HEADER_BYTES - 4;
/// Byte offset of a segment header's CRC (over bytes 0..60).
const SEGMENT_CRC_AT: usize = SEGMENT_HEADER_BYTES - 4;

/// Sets the CRC of the block at the start of `bytes` if its header decodes and its payload is
/// there; returns the bytes it takes in a segment.
fn fix_block_crc(bytes: &mut [u8]) -> Option<usize> {
    let header = BlockHeader::decode(bytes).ok()??;
    let end = header.block_bytes();
    if end > bytes.len() {
        return None;
    }
    let payload = crc32c::crc32c(&bytes[BLOCK_HEADER_BYTES..end]);
    let crc = crc32c::crc32c_append(payload, &bytes[..BLOCK_CRC_AT]);
    bytes[BLOCK_CRC_AT..BLOCK_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    Some(header.segment_bytes())
}

/// One block as a follower receives it or a reader finds it: parsed, then every record read,
/// then records read one by one by tick (the first 64).
pub fn block(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 {
        fix_block_crc(&mut bytes);
    }
    let Ok(block) = Block::parse(Bytes::from(bytes)) else {
        return;
    };
    let mut scratch = Vec::new();
    if let Ok(records) = block.records(&mut scratch) {
        for record in records {
            if record.is_err() {
                break;
            }
        }
    }
    let ticks = block.ticks();
    for tick in ticks.first.get()..=ticks.last.get().min(ticks.first.get().saturating_add(63)) {
        let mut scratch = Vec::new();
        let _ = block.record_at(Tick::new(tick), &mut scratch);
    }
}

/// Directories made by `segment`, so that runs in one process do not collide.
static OPENED: AtomicU64 = AtomicU64::new(0);

/// One segment file as a restart finds it: the WAL is opened over it (recovery: header, blocks,
/// seal, torn tail) and, if that succeeds, read from its first tick to its last.
pub fn segment(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 {
        if bytes.len() >= SEGMENT_HEADER_BYTES {
            let crc = crc32c::crc32c(&bytes[..SEGMENT_CRC_AT]);
            bytes[SEGMENT_CRC_AT..SEGMENT_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        }
        let mut at = SEGMENT_HEADER_BYTES;
        while at < bytes.len() {
            match fix_block_crc(&mut bytes[at..]) {
                Some(taken) => at += taken,
                None => break,
            }
        }
        if let Some(at) = bytes.len().checked_sub(LOCATOR_BYTES) {
            if at >= SEGMENT_HEADER_BYTES {
                let crc = crc32c::crc32c(&bytes[at..at + 12]);
                bytes[at + 12..].copy_from_slice(&crc.to_le_bytes());
            }
        }
    }
    // Named as its header says (id at 16, first tick at 24), so that a consistent input gets
    // past the check of name against header.
    let field = |at: usize| {
        bytes
            .get(at..at + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let (id, first) = (field(16) % 1024, field(24).max(1));
    let dir = std::env::temp_dir().join(format!(
        "tickship-fuzz-{}-{}",
        std::process::id(),
        OPENED.fetch_add(1, Ordering::Relaxed)
    ));
    let _gone = RemoveOnDrop(dir.clone());
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let name = format!("{id:016x}-{first:016x}.wal");
    if std::fs::write(dir.join(name), &bytes).is_err() {
        return;
    }
    let options = WalOptions {
        segment_bytes: crate::wal::segment::SEGMENT_BYTES_MIN,
        sync: SyncPolicy::Never,
        io_engine: IoEngine::Sync,
        retention_interval: None,
        verify_on_open: true,
        io_thread_nice: 0,
        ..WalOptions::default()
    };
    let Ok(wal) = Wal::open(&dir, options) else {
        return;
    };
    if let Ok(mut reader) = wal.reader_after(Tick::new(0)) {
        let mut scratch = Vec::new();
        while let Ok(Some(block)) = reader.next_block() {
            if let Ok(records) = block.records(&mut scratch) {
                for record in records {
                    if record.is_err() {
                        break;
                    }
                }
            }
        }
    }
    let _ = wal.close();
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
