//! A store's documents as files, for a follower's physical full sync. A store that keeps its
//! documents in the WAL holds them in immutable files (value files, sealed WAL segments) and the
//! open segment's written blocks; its key index maps each key to the tick of the record holding
//! it. A snapshot at tick T is therefore copied as those files, cut at T, plus the key index:
//! the follower installs each file as one of its value files and ingests the keys, so nothing is
//! parsed, decompressed or compressed again on either side.
//!
//! On the leader, `StoreSnapshot::physical_files` lists the files and opens them, so that what a
//! follower reads is what the listing saw even if a value file is replaced meanwhile. On the
//! follower, `IncomingFile` takes a file's bytes as they come, checks every block (header,
//! CRC-32C, zero padding, ticks in order), writes only whole checked blocks, and seals the file
//! itself; a partial file is checked again and continued from its last whole block.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::DocStore;
use crate::error::{Error, Result};
use crate::tick::{SegmentId, Tick, TickRange};
use crate::wal::block::{BlockHeader, BLOCK_HEADER_BYTES};
use crate::wal::segment::{self, SEGMENT_HEADER_BYTES};

/// Value files installed by a physical sync are numbered from here, by their first tick (which
/// no two share): a store names the value files it collects itself after its WAL segments,
/// whose ids never come near, so neither kind can replace the other.
pub const PHYSICAL_ID_BASE: u64 = 1 << 62;

/// The id of the installed value file whose ticks start at `tick_first`.
pub fn physical_id(tick_first: Tick) -> SegmentId {
    SegmentId::new(PHYSICAL_ID_BASE | tick_first.get())
}

/// One file of a snapshot, opened.
pub struct PhysicalFile {
    /// Where the leader keeps it (for messages only: reads go through `file`).
    pub path: PathBuf,
    /// A value file (else a WAL segment).
    pub value_file: bool,
    /// Its id on this server (in its name and header).
    pub id: SegmentId,
    /// The ticks the copy is sealed as covering: from the tick in its name, through its last
    /// tick or the snapshot's, whichever is first.
    pub ticks: TickRange,
    /// The bytes to copy: header and blocks, through the last block at or before the snapshot.
    pub data_end: u64,
    /// Its inode: with `id` and the first tick, what tells a resumed copy it is the same file.
    pub inode: u64,
    file: File,
}

impl PhysicalFile {
    /// Up to `length` bytes from `offset`, within `data_end`.
    pub fn read(&self, offset: u64, length: usize) -> Result<Vec<u8>> {
        let end = self.data_end.min(offset.saturating_add(length as u64));
        let mut out = vec![0; end.saturating_sub(offset) as usize];
        self.file
            .read_exact_at(&mut out, offset)
            .map_err(|e| Error::io("read", &self.path, e))?;
        Ok(out)
    }
}

/// A file chosen for a snapshot, before it is opened.
struct Chosen {
    path: PathBuf,
    value_file: bool,
    id: SegmentId,
    ticks: TickRange,
    data_end: u64,
}

impl DocStore {
    /// The files holding every document of a snapshot at `tick`, in tick order, opened;
    /// `Ok(Err(why))` when the snapshot cannot be copied as files. Empty when the store keeps
    /// its documents itself (the key index then carries them).
    pub(super) fn physical_files(
        &self,
        tick: Tick,
    ) -> Result<std::result::Result<Vec<PhysicalFile>, String>> {
        let Some(values) = &self.values else {
            return Ok(Ok(Vec::new()));
        };
        let Some(wal) = self.wal.get() else {
            return Ok(Err("the store has no WAL attached".into()));
        };
        // A collection that finishes between the two listings moves a segment into a value
        // file: list again until both agree.
        for _ in 0..16 {
            let before = values.files();
            let segments = wal.tick_ranges();
            let after = values.files();
            let same = before.len() == after.len()
                && before
                    .iter()
                    .zip(&after)
                    .all(|(a, b)| std::sync::Arc::ptr_eq(a, b));
            if !same {
                continue;
            }
            let mut chosen = Vec::new();
            let mut covered = Tick::ZERO;
            for file in &after {
                if file.ticks.first > tick {
                    break;
                }
                chosen.push(Chosen {
                    path: file.path.clone(),
                    value_file: true,
                    id: file.id,
                    ticks: file.ticks,
                    data_end: file.data_end,
                });
                covered = file.ticks.last;
            }
            for segment in &segments {
                if segment.tick_max <= covered
                    || segment.tick_min > tick
                    || segment.data_end <= SEGMENT_HEADER_BYTES as u64
                {
                    continue;
                }
                if segment.tick_min <= covered {
                    return Ok(Err(format!(
                        "WAL segment {} overlaps the value files (through tick {covered})",
                        segment.path.display()
                    )));
                }
                chosen.push(Chosen {
                    path: segment.path.clone(),
                    value_file: false,
                    id: segment.id,
                    ticks: TickRange::new(segment.tick_min, segment.tick_max),
                    data_end: segment.data_end,
                });
                covered = segment.tick_max;
            }
            let mut files = Vec::with_capacity(chosen.len());
            for chosen in chosen {
                match open_cut(chosen, tick)? {
                    Ok(Some(file)) => files.push(file),
                    Ok(None) => {}
                    Err(why) => return Ok(Err(why)),
                }
            }
            return Ok(Ok(files));
        }
        Ok(Err("the store's value files kept changing".into()))
    }

    /// The value files a physical sync installed, as (id, ticks).
    pub fn physical_value_files(&self) -> Vec<(SegmentId, TickRange)> {
        self.values.as_ref().map_or_else(Vec::new, |values| {
            values
                .files()
                .iter()
                .filter(|f| f.id.get() >= PHYSICAL_ID_BASE)
                .map(|f| (f.id, f.ticks))
                .collect()
        })
    }

    /// Whether this store keeps documents in the WAL and has no value file of its own (only
    /// ones a physical sync installed): what installing a leader's files needs.
    pub fn takes_physical_files(&self) -> bool {
        self.values.as_ref().is_some_and(|values| {
            values
                .files()
                .iter()
                .all(|f| f.id.get() >= PHYSICAL_ID_BASE)
        })
    }

    /// Removes the value file a physical sync installed as `id`.
    pub fn remove_physical_file(&self, id: SegmentId) -> Result<()> {
        if id.get() < PHYSICAL_ID_BASE {
            return Err(Error::InvalidRecord(format!(
                "value file {id} was not installed by a physical sync"
            )));
        }
        match &self.values {
            Some(values) => values.forget(id),
            None => Ok(()),
        }
    }

    /// Makes the sealed file at `staged` (written by `IncomingFile`, named after `tick_first`)
    /// one of this store's value files: renamed into place, its seal checked, its ticks not
    /// overlapping another's.
    pub fn install_physical_file(&self, staged: &Path, tick_first: Tick) -> Result<()> {
        let Some(values) = &self.values else {
            return Err(Error::InvalidRecord(
                "this store keeps its documents itself: it has no value files".into(),
            ));
        };
        values.install(staged, physical_id(tick_first), tick_first)
    }
}

/// Opens `chosen` and cuts it at `tick`: `None` if no block of it is at or before `tick`, an
/// `Err(why)` if a block holds ticks on both sides of it.
fn open_cut(
    chosen: Chosen,
    tick: Tick,
) -> Result<std::result::Result<Option<PhysicalFile>, String>> {
    let file = File::open(&chosen.path).map_err(|e| Error::io("open", &chosen.path, e))?;
    let inode = file
        .metadata()
        .map_err(|e| Error::io("stat", &chosen.path, e))?
        .ino();
    let mut data_end = chosen.data_end;
    let mut last = chosen.ticks.last;
    if chosen.ticks.last > tick {
        // Walk the block headers up to the snapshot's tick.
        let mut offset = SEGMENT_HEADER_BYTES as u64;
        let mut header = [0u8; BLOCK_HEADER_BYTES];
        while offset < chosen.data_end {
            file.read_exact_at(&mut header, offset)
                .map_err(|e| Error::io("read", &chosen.path, e))?;
            let block = BlockHeader::decode(&header)
                .map_err(|reason| Error::Corruption {
                    segment_id: chosen.id,
                    path: chosen.path.clone(),
                    offset,
                    reason: reason.into(),
                })?
                .ok_or_else(|| Error::Corruption {
                    segment_id: chosen.id,
                    path: chosen.path.clone(),
                    offset,
                    reason: "zero block header before the end of the data".into(),
                })?;
            let ticks = block.ticks();
            if ticks.first > tick {
                break;
            }
            if ticks.last > tick {
                return Ok(Err(format!(
                    "tick {tick} is inside a block ({}..={}) of {}",
                    ticks.first,
                    ticks.last,
                    chosen.path.display()
                )));
            }
            offset += block.segment_bytes() as u64;
        }
        if offset == SEGMENT_HEADER_BYTES as u64 {
            return Ok(Ok(None));
        }
        data_end = offset;
        last = tick;
    }
    Ok(Ok(Some(PhysicalFile {
        path: chosen.path,
        value_file: chosen.value_file,
        id: chosen.id,
        ticks: TickRange::new(chosen.ticks.first, last),
        data_end,
        inode,
        file,
    })))
}

/// A leader's file arriving: checked block by block and written under this server's id for it.
pub struct IncomingFile {
    path: PathBuf,
    /// None only while a partial copy is checked again at open.
    file: Option<std::io::BufWriter<File>>,
    /// The leader's id of the file, and the tick in its name.
    leader_id: SegmentId,
    tick_first: Tick,
    /// Bytes of the leader's file checked and written (header and whole blocks); the same
    /// offsets here.
    written: u64,
    /// Bytes of the leader's file that came after `written`: a block not yet whole.
    pending: Vec<u8>,
    /// (first tick, offset) of each block, for the seal.
    entries: Vec<(Tick, u64)>,
    last_tick: Option<Tick>,
}

/// Bytes read at a time when a partial file is checked again.
const RECHECK_BYTES: usize = 1 << 20;

impl IncomingFile {
    /// Starts the copy of the leader's file `leader_id` named after `tick_first` at `path`, or
    /// continues one found there: its bytes are checked again and the copy goes on after its
    /// last whole block (anything after it, a block cut short by a crash, is dropped).
    pub fn open(path: &Path, leader_id: SegmentId, tick_first: Tick) -> Result<IncomingFile> {
        let existing = match File::open(path) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("open", path, e)),
        };
        let create = || -> Result<File> {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .map_err(|e| Error::io("create", path, e))
        };
        let mut incoming = IncomingFile {
            path: path.to_path_buf(),
            file: None,
            leader_id,
            tick_first,
            written: 0,
            pending: Vec::new(),
            entries: Vec::new(),
            last_tick: None,
        };
        let Some(mut existing) = existing else {
            incoming.file = Some(std::io::BufWriter::with_capacity(1 << 20, create()?));
            return Ok(incoming);
        };
        // Check what is there through the same steps as new bytes, writing nothing.
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        let whole_header = existing.read_exact(&mut header).is_ok()
            && segment::check_header(&header, physical_id(tick_first), tick_first).is_ok();
        if !whole_header {
            incoming.file = Some(std::io::BufWriter::with_capacity(1 << 20, create()?));
            return Ok(incoming);
        }
        incoming.written = SEGMENT_HEADER_BYTES as u64;
        let mut buffer = vec![0u8; RECHECK_BYTES];
        loop {
            let n = existing
                .read(&mut buffer)
                .map_err(|e| Error::io("read", path, e))?;
            if n == 0 || incoming.take(&buffer[..n], false).is_err() {
                break;
            }
        }
        drop(existing);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        file.set_len(incoming.written)
            .map_err(|e| Error::io("truncate", path, e))?;
        file.seek(SeekFrom::Start(incoming.written))
            .map_err(|e| Error::io("seek", path, e))?;
        incoming.pending.clear();
        incoming.file = Some(std::io::BufWriter::with_capacity(1 << 20, file));
        Ok(incoming)
    }

    /// The offset in the leader's file of the next byte wanted.
    pub fn next_offset(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Takes the leader's bytes from `next_offset()` on: whole blocks are checked and written,
    /// the rest kept until the bytes after it come. A damaged or out-of-order block is refused
    /// with what is wrong and where; nothing of it is written.
    pub fn push(&mut self, bytes: &[u8]) -> Result<()> {
        self.take(bytes, true)
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corruption {
            segment_id: self.leader_id,
            path: self.path.clone(),
            offset,
            reason: reason.into(),
        }
    }

    fn take(&mut self, mut bytes: &[u8], write: bool) -> Result<()> {
        if self.written < SEGMENT_HEADER_BYTES as u64 {
            let wanted = SEGMENT_HEADER_BYTES - self.pending.len();
            let n = wanted.min(bytes.len());
            self.pending.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.pending.len() < SEGMENT_HEADER_BYTES {
                return Ok(());
            }
            segment::check_header(&self.pending, self.leader_id, self.tick_first)
                .map_err(|reason| self.corrupt(0, format!("the leader's header: {reason}")))?;
            let created = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let header =
                segment::encode_header(physical_id(self.tick_first), self.tick_first, created);
            self.write(&header, write)?;
            self.pending.clear();
        }
        // A block begun in an earlier call is completed from the front of `bytes` first: its
        // header, then the rest of it.
        while !self.pending.is_empty() {
            let needed = self
                .block_length(&self.pending)?
                .unwrap_or(BLOCK_HEADER_BYTES);
            if self.pending.len() < needed {
                let n = (needed - self.pending.len()).min(bytes.len());
                self.pending.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                if self.pending.len() < needed {
                    return Ok(());
                }
                if needed == BLOCK_HEADER_BYTES {
                    continue; // the header is whole: now the block's length is known
                }
            }
            let pending = std::mem::take(&mut self.pending);
            let used = self.blocks(&pending, write)?;
            debug_assert_eq!(used, pending.len());
        }
        let used = self.blocks(bytes, write)?;
        self.pending.extend_from_slice(&bytes[used..]);
        Ok(())
    }

    /// The padded length of the block starting `bytes`, once its header has come.
    fn block_length(&self, bytes: &[u8]) -> Result<Option<usize>> {
        if bytes.len() < BLOCK_HEADER_BYTES {
            return Ok(None);
        }
        let header = BlockHeader::decode(bytes)
            .map_err(|reason| self.corrupt(self.written, reason))?
            .ok_or_else(|| self.corrupt(self.written, "zero block header"))?;
        Ok(Some(header.segment_bytes()))
    }

    /// Checks and writes the whole blocks at the front of `bytes`; returns the bytes used.
    fn blocks(&mut self, bytes: &[u8], write: bool) -> Result<usize> {
        let mut used = 0;
        while bytes.len() - used >= BLOCK_HEADER_BYTES {
            let rest = &bytes[used..];
            let header = BlockHeader::decode(rest)
                .map_err(|reason| self.corrupt(self.written, reason))?
                .ok_or_else(|| self.corrupt(self.written, "zero block header"))?;
            let padded = header.segment_bytes();
            if rest.len() < padded {
                break;
            }
            let block = &rest[..header.block_bytes()];
            header
                .verify_crc(block)
                .map_err(|reason| self.corrupt(self.written, reason))?;
            if rest[header.block_bytes()..padded].iter().any(|&b| b != 0) {
                return Err(self.corrupt(self.written, "padding after a block is not zero"));
            }
            if header.is_seal() {
                return Err(self.corrupt(self.written, "a seal block among the data"));
            }
            let ticks = header.ticks();
            if ticks.first < self.tick_first || self.last_tick.is_some_and(|l| ticks.first <= l) {
                return Err(self.corrupt(
                    self.written,
                    format!(
                        "block of ticks {}..={} out of order",
                        ticks.first, ticks.last
                    ),
                ));
            }
            self.write(&rest[..padded], write)?;
            self.entries
                .push((ticks.first, self.written - padded as u64));
            self.last_tick = Some(ticks.last);
            used += padded;
        }
        Ok(used)
    }

    fn write(&mut self, bytes: &[u8], write: bool) -> Result<()> {
        if let (true, Some(file)) = (write, self.file.as_mut()) {
            file.write_all(bytes)
                .map_err(|e| Error::io("write", &self.path, e))?;
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes what came so far to the file (not synced): a resumed copy finds it.
    pub fn flush(&mut self) -> Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush().map_err(|e| Error::io("write", &self.path, e)),
            None => Ok(()),
        }
    }

    /// Seals the copy, which must now hold the leader's `data_end` bytes, as covering `ticks`,
    /// and syncs it. `ticks` must start at the tick the file is named after and hold every block.
    pub fn finish(mut self, ticks: TickRange, data_end: u64) -> Result<()> {
        if self.written != data_end || !self.pending.is_empty() {
            return Err(self.corrupt(
                self.next_offset(),
                format!("the copy ends at byte {} of {data_end}", self.next_offset()),
            ));
        }
        if ticks.first != self.tick_first || self.last_tick.is_some_and(|l| l > ticks.last) {
            return Err(self.corrupt(
                self.written,
                format!(
                    "the blocks (through tick {:?}) are not within ticks {}..={}",
                    self.last_tick, ticks.first, ticks.last
                ),
            ));
        }
        let tail = segment::seal_tail(ticks, &self.entries, self.written);
        let Some(mut file) = self.file.take() else {
            return Err(self.corrupt(0, "the copy has no file"));
        };
        file.write_all(&tail)
            .map_err(|e| Error::io("write", &self.path, e))?;
        let file = file
            .into_inner()
            .map_err(|e| Error::io("write", &self.path, e.into_error()))?;
        crate::fs::fsync(&file, &self.path)
    }
}
