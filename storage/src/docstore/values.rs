//! Value files: the documents of WAL segments that were still live when retention let the
//! segments go, kept at their ticks for a document store that keeps its documents in the WAL
//! (see FORMAT.md, "Documents kept in the WAL"). They are the store's data, not the WAL's: only
//! the store reads and writes them; they reuse the WAL's segment format and its readers.
//!
//! A value file is a sealed segment in the WAL's format whose blocks may skip ticks (each block
//! holds a run of consecutive live ticks): `{source segment id:016x}-{first live tick:016x}.val`,
//! its seal block covering the first live tick to the source segment's last tick, so the files
//! say how far the log was collected. Files are written whole under a temporary name, synced,
//! renamed and the directory synced; a temporary file found at open is what a crash interrupted
//! and is removed. Reads check what they use as WAL reads do (`Block::record_at`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::fs::FileMap;
use crate::tick::{SegmentId, Tick, TickRange};
use crate::wal::block::{slice_data_block, Block, BLOCK_ALIGN};
use crate::wal::segment::{self, SealedSegment, SEGMENT_HEADER_BYTES};
use crate::wal::tick_index::SealedIndex;

const SUFFIX: &str = ".val";
const TEMPORARY_SUFFIX: &str = ".val.tmp";
/// Rewritten value files wait here until the store has persisted what made the dropped records
/// dead (`ValueFiles::replace`); found at open, they were never confirmed and are removed.
const NEXT_DIR: &str = "next";

/// The value files of one document store, ordered by tick.
pub struct ValueFiles {
    dir: PathBuf,
    files: RwLock<Vec<Arc<SealedSegment>>>,
}

impl ValueFiles {
    /// Opens (creating) the directory: removes interrupted temporary files, checks every value
    /// file's header, locator and seal block, and that their tick ranges do not overlap.
    pub fn open(dir: impl AsRef<Path>) -> Result<ValueFiles> {
        let dir = dir.as_ref().to_path_buf();
        let next = dir.join(NEXT_DIR);
        std::fs::create_dir_all(&next).map_err(|e| Error::io("create", &next, e))?;
        for entry in std::fs::read_dir(&next).map_err(|e| Error::io("list", &next, e))? {
            let path = entry.map_err(|e| Error::io("list", &next, e))?.path();
            std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
        }
        let mut files = Vec::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            if name == NEXT_DIR {
                continue;
            }
            if name.ends_with(TEMPORARY_SUFFIX) {
                std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
                continue;
            }
            let parsed = name.strip_suffix(SUFFIX).and_then(|stem| {
                segment::parse_file_name(&format!("{stem}{}", segment::SEGMENT_SUFFIX))
            });
            let Some((id, tick_first)) = parsed else {
                return Err(Error::Directory {
                    dir: dir.clone(),
                    reason: format!("unexpected file {name:?} among the value files"),
                });
            };
            let file = open_value_file(&path, id, tick_first, "value file")?;
            files.push(Arc::new(file));
        }
        files.sort_by_key(|f| f.ticks.first);
        for pair in files.windows(2) {
            if pair[1].ticks.first <= pair[0].ticks.last {
                return Err(Error::Directory {
                    dir: dir.clone(),
                    reason: format!(
                        "value files {} and {} overlap",
                        pair[0].path.display(),
                        pair[1].path.display()
                    ),
                });
            }
        }
        Ok(ValueFiles {
            dir,
            files: RwLock::new(files),
        })
    }

    /// Value files and their bytes.
    pub fn stats(&self) -> (usize, u64) {
        let files = self.files.read().unwrap_or_else(|p| p.into_inner());
        (files.len(), files.iter().map(|f| f.file_bytes).sum())
    }

    /// The block holding `tick`, header checked (its parts are checked by what reads them), or
    /// `None` if no value file holds it.
    pub fn block_at(&self, tick: Tick) -> Result<Option<Block>> {
        let file = {
            let files = self.files.read().unwrap_or_else(|p| p.into_inner());
            let after = files.partition_point(|f| f.ticks.first <= tick);
            match after.checked_sub(1).map(|i| &files[i]) {
                Some(file) if file.ticks.contains(tick) => file.clone(),
                _ => return Ok(None),
            }
        };
        let map = file.map()?;
        file.note_point_read();
        let Some((_, offset)) = SealedIndex::new(file.index()?).floor(tick) else {
            return Ok(None);
        };
        let block = read_block(&file, map, offset)?;
        Ok(block.ticks().contains(tick).then_some(block))
    }

    /// Hands back the pages point reads mapped in value files since the last call
    /// (`SealedSegment::hand_back_point_reads`).
    pub fn hand_back_point_reads(&self) {
        let files = self.files.read().unwrap_or_else(|p| p.into_inner()).clone();
        for file in files {
            file.hand_back_point_reads();
        }
    }

    /// Makes the sealed WAL segment at `path` (segment `source` from `tick_first`) a value file
    /// as it is, by a second name for the same file: for a segment whose documents are mostly
    /// live, copying costs as much as the segment and saves little. Its dead records stay until
    /// the value file is collected in turn.
    pub fn link(&self, path: &Path, source: SegmentId, tick_first: Tick) -> Result<()> {
        self.forget(source)?;
        let target = self
            .dir
            .join(format!("{}{SUFFIX}", value_stem(source, tick_first)));
        std::fs::hard_link(path, &target).map_err(|e| Error::io("link", &target, e))?;
        crate::fs::fsync_dir(&self.dir)?;
        let opened = open_value_file(&target, source, tick_first, "linked value file")?;
        opened.map()?;
        self.insert(opened)
    }

    /// Makes the sealed file at `staged` the value file `id` named after `tick_first`: renamed
    /// into place (the directory synced), its seal checked, refused if it overlaps another.
    pub fn install(&self, staged: &Path, id: SegmentId, tick_first: Tick) -> Result<()> {
        let target = self
            .dir
            .join(format!("{}{SUFFIX}", value_stem(id, tick_first)));
        std::fs::rename(staged, &target).map_err(|e| Error::io("rename", &target, e))?;
        crate::fs::fsync_dir(&self.dir)?;
        let installed = (|| {
            let opened = open_value_file(&target, id, tick_first, "installed value file")?;
            opened.map()?;
            self.insert(opened)
        })();
        if installed.is_err() {
            // Not left where the next open would refuse the whole store for it.
            let _ = std::fs::remove_file(&target);
        }
        installed
    }

    /// Removes the value file made from segment `source`, if any: a collection a crash kept
    /// from being recorded is done again, from the store's state then.
    pub fn forget(&self, source: SegmentId) -> Result<()> {
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = files.iter().position(|f| f.id == source) {
            let file = files.remove(i);
            std::fs::remove_file(&file.path).map_err(|e| Error::io("remove", &file.path, e))?;
            crate::fs::fsync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn insert(&self, file: SealedSegment) -> Result<()> {
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        let at = files.partition_point(|f| f.ticks.first < file.ticks.first);
        let overlaps = files
            .get(at)
            .is_some_and(|next| next.ticks.first <= file.ticks.last)
            || at
                .checked_sub(1)
                .is_some_and(|i| files[i].ticks.last >= file.ticks.first);
        if overlaps {
            return Err(Error::Directory {
                dir: self.dir.clone(),
                reason: format!("value file {} overlaps another", file.path.display()),
            });
        }
        files.insert(at, Arc::new(file));
        Ok(())
    }

    /// Starts a value file for the live blocks of segment `source`; `ValueFileWriter::finish`
    /// makes it durable and readable.
    pub fn writer(&self, source: SegmentId) -> Result<ValueFileWriter<'_>> {
        self.forget(source)?;
        Ok(ValueFileWriter {
            files: self,
            source,
            name_tick: None,
            file: None,
            entries: Vec::new(),
            written: 0,
            last_tick: None,
        })
    }

    /// The value files, oldest first.
    pub fn files(&self) -> Vec<Arc<SealedSegment>> {
        self.files.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The blocks of value file `file`, in order, headers checked (slices of its mapping).
    pub fn blocks(&self, file: &SealedSegment) -> Result<Vec<Block>> {
        let map = file.map()?;
        let index = SealedIndex::new(file.index()?);
        let mut blocks = Vec::with_capacity(index.len());
        for i in 0..index.len() {
            let (_, offset) = index.get(i);
            blocks.push(read_block(file, map, offset)?);
        }
        Ok(blocks)
    }

    /// Starts the rewrite of value file `file` with fewer records: the same name and range, in
    /// the `next` directory until `replace` puts it in place.
    pub fn rewriter(&self, file: &SealedSegment) -> ValueFileWriter<'_> {
        ValueFileWriter {
            files: self,
            source: file.id,
            name_tick: Some(file.ticks.first),
            file: None,
            entries: Vec::new(),
            written: 0,
            last_tick: None,
        }
    }

    /// Drops a rewrite that will not be put in place (`next` from `ValueFileWriter::finish_next`).
    /// Not synced: one a crash leaves behind is removed at open.
    pub fn discard(&self, next: &Path) -> Result<()> {
        std::fs::remove_file(next).map_err(|e| Error::io("remove", next, e))
    }

    /// Puts the rewrite of `old` in its place (`next` from `ValueFileWriter::finish_next`), or,
    /// with no rewrite (no record was live), removes `old`. Readers holding `old` keep reading
    /// it.
    pub fn replace(&self, old: &Arc<SealedSegment>, next: Option<PathBuf>) -> Result<()> {
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        let Some(at) = files.iter().position(|f| Arc::ptr_eq(f, old)) else {
            return Err(Error::Directory {
                dir: self.dir.clone(),
                reason: format!("value file {} is no longer there", old.path.display()),
            });
        };
        match next {
            Some(next) => {
                std::fs::rename(&next, &old.path).map_err(|e| Error::io("rename", &old.path, e))?;
                crate::fs::fsync_dir(&self.dir)?;
                crate::fs::fsync_dir(&self.dir.join(NEXT_DIR))?;
                let opened =
                    open_value_file(&old.path, old.id, old.ticks.first, "rewritten value file")?;
                opened.map()?;
                files[at] = Arc::new(opened);
            }
            None => {
                std::fs::remove_file(&old.path).map_err(|e| Error::io("remove", &old.path, e))?;
                crate::fs::fsync_dir(&self.dir)?;
                files.remove(at);
            }
        }
        Ok(())
    }
}

/// The block at `offset` of value file `file` (mapped as `map`), its header checked.
fn read_block(file: &SealedSegment, map: &FileMap, offset: u64) -> Result<Block> {
    let (header, bytes) =
        slice_data_block(map, offset, file.data_end).map_err(|reason| Error::Corruption {
            segment_id: file.id,
            path: file.path.clone(),
            offset,
            reason: reason.into(),
        })?;
    Ok(Block::from_unchecked(bytes, header).with_map(map))
}

/// Opens the value file at `path` (made from segment `id`, named after `tick_first`), which
/// must be sealed; `what` says which kind, for the error.
fn open_value_file(
    path: &Path,
    id: SegmentId,
    tick_first: Tick,
    what: &str,
) -> Result<SealedSegment> {
    SealedSegment::open_sparse(path, id, tick_first)?.ok_or_else(|| Error::Corruption {
        segment_id: id,
        path: path.to_path_buf(),
        offset: 0,
        reason: format!("{what} has no valid seal"),
    })
}

/// A value file being written: blocks go to a temporary file as they come.
pub struct ValueFileWriter<'a> {
    files: &'a ValueFiles,
    source: SegmentId,
    /// The tick the file is named after (a rewrite keeps its file's), else its first block's.
    name_tick: Option<Tick>,
    /// The temporary file, its path and the first tick, once a block came.
    file: Option<(std::io::BufWriter<std::fs::File>, PathBuf, Tick)>,
    /// (first tick, offset) of each block.
    entries: Vec<(Tick, u64)>,
    written: u64,
    last_tick: Option<Tick>,
}

impl ValueFileWriter<'_> {
    /// Appends `block`, whose ticks must follow the previous block's and every value file's.
    pub fn push(&mut self, block: &Block) -> Result<()> {
        let ticks = block.ticks();
        if self.last_tick.is_some_and(|last| ticks.first <= last) {
            return Err(Error::TickOrder {
                tick_first: ticks.first,
                tick_last: self.last_tick.unwrap_or(Tick::ZERO),
            });
        }
        if self.file.is_none() {
            let named = self.name_tick.unwrap_or(ticks.first);
            if named > ticks.first {
                return Err(Error::TickOrder {
                    tick_first: ticks.first,
                    tick_last: named,
                });
            }
            let stem = value_stem(self.source, named);
            let path = self.files.dir.join(format!("{stem}{TEMPORARY_SUFFIX}"));
            let file = std::fs::File::create(&path).map_err(|e| Error::io("create", &path, e))?;
            let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
            let created = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            file.write_all(&segment::encode_header(self.source, named, created))
                .map_err(|e| Error::io("write", &path, e))?;
            self.written = SEGMENT_HEADER_BYTES as u64;
            self.file = Some((file, path, named));
        }
        let (file, path, _) = self.file.as_mut().expect("opened above");
        self.entries.push((ticks.first, self.written));
        let padded = block.bytes().len().next_multiple_of(BLOCK_ALIGN);
        file.write_all(block.bytes())
            .and_then(|()| file.write_all(&[0; BLOCK_ALIGN][..padded - block.bytes().len()]))
            .map_err(|e| Error::io("write", &*path, e))?;
        self.written += padded as u64;
        self.last_tick = Some(ticks.last);
        Ok(())
    }

    /// Seals the file as covering its first tick to `last` (the source segment's last tick),
    /// syncs it, renames it into place, syncs the directory and makes it readable. Nothing is
    /// written if no block came.
    pub fn finish(self, last: Tick) -> Result<()> {
        let files = self.files;
        let source = self.source;
        let Some((temporary, tick_first)) = self.seal(last)? else {
            return Ok(());
        };
        let path = files
            .dir
            .join(format!("{}{SUFFIX}", value_stem(source, tick_first)));
        std::fs::rename(&temporary, &path).map_err(|e| Error::io("rename", &path, e))?;
        crate::fs::fsync_dir(&files.dir)?;
        let opened = open_value_file(&path, source, tick_first, "value file just written")?;
        opened.map()?;
        files.insert(opened)
    }

    /// Like `finish` for a rewrite (`ValueFiles::rewriter`): the file goes to the `next`
    /// directory, durably, for `ValueFiles::replace`. `None` if no block came.
    pub fn finish_next(self, last: Tick) -> Result<Option<PathBuf>> {
        let files = self.files;
        let source = self.source;
        let Some((temporary, tick_first)) = self.seal(last)? else {
            return Ok(None);
        };
        let next = files.dir.join(NEXT_DIR);
        let path = next.join(format!("{}{SUFFIX}", value_stem(source, tick_first)));
        std::fs::rename(&temporary, &path).map_err(|e| Error::io("rename", &path, e))?;
        crate::fs::fsync_dir(&next)?;
        crate::fs::fsync_dir(&files.dir)?;
        Ok(Some(path))
    }

    /// Writes the seal block and locator, syncs the temporary file; returns its path and first
    /// tick, or `None` if no block came.
    fn seal(self, last: Tick) -> Result<Option<(PathBuf, Tick)>> {
        let Some((mut file, temporary, tick_first)) = self.file else {
            return Ok(None);
        };
        if self.last_tick.is_some_and(|l| l > last) {
            return Err(Error::TickOrder {
                tick_first,
                tick_last: last,
            });
        }
        let tail = segment::seal_tail(
            TickRange::new(tick_first, last),
            &self.entries,
            self.written,
        );
        file.write_all(&tail)
            .map_err(|e| Error::io("write", &temporary, e))?;
        let file = file
            .into_inner()
            .map_err(|e| Error::io("write", &temporary, e.into_error()))?;
        crate::fs::fsync(&file, &temporary)?;
        Ok(Some((temporary, tick_first)))
    }
}

/// `{source segment id:016x}-{first tick:016x}`.
fn value_stem(source: SegmentId, tick_first: Tick) -> String {
    segment::file_name(source, tick_first)
        .trim_end_matches(segment::SEGMENT_SUFFIX)
        .to_string()
}
