//! The physical full sync: an empty follower copies the files that hold the leader's documents
//! at the batch's tick (its value files, its WAL segments not yet collected, the open segment up
//! to the tick: `GET files` and `GET file`), checks every block as it comes, installs each file
//! as one of its own value files, and then ingests the leader's key index (`GET key-values`).
//! Nothing is parsed, decompressed or compressed again on either side.
//!
//! Resumable: files arrive in `sync-files/` in the data directory, under names that say which
//! file of the leader they copy (its id, first tick and inode). A sync started again (after a
//! crash, a cut link, a restarted leader) keeps every file whose leader file is still the same:
//! whole ones as they are, a partial one from its last whole block (checked again). Installed
//! files are recorded in `sync-files/installed.json`, and kept when the new snapshot lists them
//! unchanged; any other file a physical sync installed is removed first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;

use serde::{Deserialize, Serialize};
use tickship_storage::docstore::{IncomingFile, Restored};
use tickship_storage::{SegmentId, TickRange};

use super::*;

/// Where a physical sync keeps the files it copies.
const FILES_DIR: &str = "sync-files";
/// What was installed, by the leader file it copies.
const INSTALLED_FILE: &str = "installed.json";
/// Bytes asked for per `file` request.
const FILE_PIECE: u64 = 8 << 20;
/// Files copied at once.
const PARALLEL_FILES: usize = 4;
/// Keys ingested at a time (one store file each).
const KEYS_PER_INGEST: usize = 262_144;

/// One file of the leader's list.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaderFile {
    index: usize,
    id: String,
    tick_first: String,
    tick_last: String,
    bytes: u64,
    inode: String,
}

/// A leader file, checked and parsed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Wanted {
    index: usize,
    id: u64,
    first: u64,
    last: u64,
    bytes: u64,
    inode: u64,
}

impl Wanted {
    /// The leader's file it copies, whatever its length: a partial copy continues if this is
    /// the same.
    fn identity(&self) -> String {
        format!("{:016x}-{:016x}-{}", self.id, self.first, self.inode)
    }
    fn partial_name(&self) -> String {
        format!("{}.part", self.identity())
    }
    /// A whole copy: also its length and last tick, which the open segment's grow.
    fn done_name(&self) -> String {
        format!("{}-{}-{:016x}.done", self.identity(), self.bytes, self.last)
    }
    fn ticks(&self) -> TickRange {
        TickRange::new(Tick::new(self.first), Tick::new(self.last))
    }
}

fn invalid(what: impl std::fmt::Display) -> SessionError {
    SessionError::fatal(
        num::INVALID_RESPONSE,
        format!("invalid answer from the leader: {what}"),
    )
}

fn parse_files(answer: &serde_json::Value, tick: Tick) -> Result<Vec<Wanted>, SessionError> {
    let files: Vec<LeaderFile> = serde_json::from_value(answer["files"].clone())
        .map_err(|e| invalid(format!("files: {e}")))?;
    let number = |text: &str, what: &str| -> Result<u64, SessionError> {
        text.parse()
            .map_err(|_| invalid(format!("file {what} {text:?}")))
    };
    let mut wanted = Vec::with_capacity(files.len());
    for (at, f) in files.iter().enumerate() {
        let w = Wanted {
            index: f.index,
            id: number(&f.id, "id")?,
            first: number(&f.tick_first, "first tick")?,
            last: number(&f.tick_last, "last tick")?,
            bytes: f.bytes,
            inode: number(&f.inode, "inode")?,
        };
        // In order, apart, within the snapshot, and at least a header long.
        let ordered = w.index == at
            && w.first >= 1
            && w.first <= w.last
            && w.last <= tick.get()
            && w.bytes > 64
            && wanted.last().is_none_or(|p: &Wanted| p.last < w.first);
        if !ordered {
            return Err(invalid(format!("file {at} of the list: {f:?}")));
        }
        wanted.push(w);
    }
    Ok(wanted)
}

impl Syncer<'_> {
    fn files_dir(&self) -> PathBuf {
        self.applier.dir.join(FILES_DIR)
    }

    /// Removes what an earlier file copy left in `sync-files/` (the documents were copied
    /// instead). Files it installed stay: the store's keys may name them now.
    pub(super) fn drop_copied_files(&self) -> Result<(), SessionError> {
        let dir = self.files_dir();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.store_error(&format!("remove {}", dir.display()), full(&e))),
        }
    }

    /// Copies the leader's store as files into this (empty) store, for `targets`. `Ok(false)`
    /// when it cannot (this server or the leader keeps documents itself, this server has value
    /// files of its own, the leader's snapshot is not at a block's end): the caller then copies
    /// documents.
    pub(super) fn copy_files(
        &self,
        targets: &[(Target, u64)],
        tick: Tick,
    ) -> Result<bool, SessionError> {
        let node = &self.applier.node;
        let store = &node.store;
        if !self.applier.receiving.sync_copy_files
            || self.only.is_some()
            || !store.takes_physical_files()
            || node.wal.first_tick().is_some()
            || targets.iter().any(|(t, _)| store.count(t.info.id) > 0)
        {
            return Ok(false);
        }
        self.keep_batch()?;
        self.applier
            .progress("fetching the list of the leader's files".into());
        let (bytes, _) = self.fetch(
            &self.client,
            "GET",
            &format!("/_api/replication/files?batchId={}", self.batch),
            Vec::new(),
            None,
        )?;
        let answer: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("files: {e}")))?;
        if answer["files"].is_null() {
            tracing::info!(
                reason = answer["reason"].as_str().unwrap_or(""),
                "initial sync: the leader's snapshot cannot be copied as files; copying documents"
            );
            return Ok(false);
        }
        let wanted = parse_files(&answer, tick)?;
        let dir = self.files_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| self.store_error(&format!("create {}", dir.display()), full(&e)))?;
        let installed = self.keep_installed(&wanted)?;
        self.drop_stale(&dir, &wanted)?;
        let total: u64 = wanted.iter().map(|w| w.bytes).sum();
        let missing: Vec<&Wanted> = wanted
            .iter()
            .filter(|w| !installed.contains_key(&w.first))
            .collect();
        let started = Instant::now();
        let copied_bytes = AtomicU64::new(
            wanted
                .iter()
                .filter(|w| installed.contains_key(&w.first))
                .map(|w| w.bytes)
                .sum(),
        );
        let copied_files = AtomicUsize::new(wanted.len() - missing.len());
        let resumed_from = copied_bytes.load(Ordering::Relaxed);
        self.in_parallel_n(&missing, PARALLEL_FILES, |_, w| {
            self.copy_one(&dir, w, &copied_bytes)?;
            let files = copied_files.fetch_add(1, Ordering::Relaxed) + 1;
            let done = copied_bytes.load(Ordering::Relaxed);
            let seconds = started.elapsed().as_secs_f64().max(1e-3);
            let rate = (done - resumed_from) as f64 / seconds;
            let eta = if rate > 0.0 {
                format!(", about {:.0} s left", (total - done) as f64 / rate)
            } else {
                String::new()
            };
            self.applier.progress(format!(
                "copying the leader's files: {files} of {} file(s), {done} of {total} bytes \
                 ({:.0} MB/s{eta})",
                wanted.len(),
                rate / 1e6
            ));
            Ok(())
        })?;
        // Installed in tick order, each recorded as it is.
        let mut installed = installed;
        for w in &wanted {
            if installed.contains_key(&w.first) {
                continue;
            }
            let path = dir.join(w.done_name());
            store
                .install_physical_file(&path, Tick::new(w.first))
                .map_err(|e| self.store_error(&format!("install {}", path.display()), full(&e)))?;
            installed.insert(w.first, w.clone());
            self.save_installed(&installed)?;
        }
        let files_seconds = started.elapsed().as_secs_f64();
        let ranges: Vec<TickRange> = wanted.iter().map(Wanted::ticks).collect();
        for (target, _) in targets {
            self.copy_keys(target, tick, &ranges)?;
        }
        // Everything is in the store: the copies are its value files now.
        std::fs::remove_dir_all(&dir)
            .map_err(|e| self.store_error(&format!("remove {}", dir.display()), full(&e)))?;
        tracing::info!(
            files = wanted.len(),
            bytes = total,
            resumed_bytes = resumed_from,
            files_seconds,
            keys_seconds = started.elapsed().as_secs_f64() - files_seconds,
            "initial sync: copied the leader's files"
        );
        Ok(true)
    }

    /// The files a physical sync installed earlier that the leader's list still holds
    /// unchanged, by first tick; every other one is removed.
    fn keep_installed(&self, wanted: &[Wanted]) -> Result<HashMap<u64, Wanted>, SessionError> {
        let store = &self.applier.node.store;
        let recorded: HashMap<u64, Wanted> = std::fs::read(self.files_dir().join(INSTALLED_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Vec<Wanted>>(&bytes).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|w| (w.first, w))
            .collect();
        let mut kept = HashMap::new();
        for (id, ticks) in store.physical_value_files() {
            let same = recorded.get(&ticks.first.get()).and_then(|was| {
                wanted
                    .iter()
                    .find(|w| *w == was && w.ticks() == ticks)
                    .cloned()
            });
            match same {
                Some(w) => {
                    kept.insert(w.first, w);
                }
                None => store.remove_physical_file(id).map_err(|e| {
                    self.store_error(
                        &format!("remove value file {id} of an earlier sync"),
                        full(&e),
                    )
                })?,
            }
        }
        self.save_installed(&kept)?;
        Ok(kept)
    }

    fn save_installed(&self, installed: &HashMap<u64, Wanted>) -> Result<(), SessionError> {
        let mut list: Vec<&Wanted> = installed.values().collect();
        list.sort_by_key(|w| w.first);
        let bytes = serde_json::to_vec(&list)
            .map_err(|e| SessionError::fatal(num::INTERNAL, e.to_string()))?;
        crate::util::write_private(&self.files_dir().join(INSTALLED_FILE), &bytes)
            .map_err(|e| self.store_error("record the installed files", format!("{e:#}")))
    }

    /// Removes copies in `dir` of files the leader's list no longer holds as they were.
    fn drop_stale(&self, dir: &Path, wanted: &[Wanted]) -> Result<(), SessionError> {
        let keep: std::collections::HashSet<String> = wanted
            .iter()
            .flat_map(|w| [w.partial_name(), w.done_name()])
            .chain([INSTALLED_FILE.to_string()])
            .collect();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| self.store_error(&format!("list {}", dir.display()), full(&e)))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|e| {
                    self.store_error(&format!("remove {}", path.display()), full(&e))
                })?;
            }
        }
        Ok(())
    }

    /// Copies one leader file into `dir`: continues a partial copy, checks every block as it
    /// comes, seals and syncs it, and renames it as whole.
    fn copy_one(&self, dir: &Path, w: &Wanted, copied: &AtomicU64) -> Result<(), SessionError> {
        let done = dir.join(w.done_name());
        if done.exists() {
            copied.fetch_add(w.bytes, Ordering::Relaxed);
            return Ok(());
        }
        let partial = dir.join(w.partial_name());
        let mut incoming =
            IncomingFile::open(&partial, SegmentId::new(w.id), Tick::new(w.first))
                .map_err(|e| self.store_error(&format!("open {}", partial.display()), full(&e)))?;
        let mut offset = incoming.next_offset();
        copied.fetch_add(offset, Ordering::Relaxed);
        while offset < w.bytes {
            self.keep_batch()?;
            let length = FILE_PIECE.min(w.bytes - offset);
            self.reserve_rate(length);
            let (bytes, _) = self.fetch(
                &self.client,
                "GET",
                &format!(
                    "/_api/replication/file?batchId={}&index={}&offset={offset}&length={length}",
                    self.batch, w.index
                ),
                Vec::new(),
                None,
            )?;
            if bytes.len() as u64 != length {
                return Err(invalid(format!(
                    "file {} from byte {offset}: {} bytes, asked for {length}",
                    w.index,
                    bytes.len()
                )));
            }
            // A damaged block is refused here and never written; the copy so far stays.
            if let Err(e) = incoming.push(&bytes) {
                let _ = incoming.flush();
                return Err(match e {
                    tickship_storage::Error::Corruption { .. } => SessionError::fatal(
                        num::INVALID_RESPONSE,
                        format!("the leader's file {} failed its checks: {e}", w.index),
                    ),
                    other => {
                        self.store_error(&format!("write {}", partial.display()), full(&other))
                    }
                });
            }
            offset += length;
            copied.fetch_add(length, Ordering::Relaxed);
        }
        incoming
            .finish(w.ticks(), w.bytes)
            .map_err(|e| self.store_error(&format!("seal {}", partial.display()), full(&e)))?;
        std::fs::rename(&partial, &done)
            .map_err(|e| self.store_error(&format!("rename {}", done.display()), full(&e)))?;
        crate::util::sync_dir(dir)
            .map_err(|e| self.store_error("sync the files' directory", full(&e)))
    }

    /// Ingests the leader's key index of `target`: every key with its stored value. Each
    /// revision must be within the snapshot, and a document kept in the WAL must be in one of
    /// the copied files (`ranges`, in tick order).
    fn copy_keys(
        &self,
        target: &Target,
        tick: Tick,
        ranges: &[TickRange],
    ) -> Result<(), SessionError> {
        // Pages are fetched by one thread while this one checks and ingests the page before:
        // a connection left idle while a page is ingested restarts TCP's slow start, which over
        // a 10 ms round trip cost more time than the transfer itself.
        let (pages, received) = std::sync::mpsc::sync_channel::<(Vec<u8>, Option<String>)>(1);
        std::thread::scope(|scope| {
            let fetcher = scope.spawn(move || -> Result<(), SessionError> {
                let mut after: Option<String> = None;
                loop {
                    self.keep_batch()?;
                    let mut path = format!(
                        "/_api/replication/key-values?batchId={}&collection={}",
                        self.batch,
                        encode(&target.info.name)
                    );
                    if let Some(after) = &after {
                        path.push_str(&format!("&after={}", encode(after)));
                    }
                    let (bytes, last) = self.fetch(
                        &target.client,
                        "GET",
                        &path,
                        Vec::new(),
                        Some("x-tickship-last-key"),
                    )?;
                    let more = last.is_some();
                    after.clone_from(&last);
                    if pages.send((bytes, last)).is_err() || !more {
                        // The checker stopped (it reports why), or the collection ended.
                        return Ok(());
                    }
                }
            });
            let checked = self.check_and_ingest_keys(target, tick, ranges, &received);
            // Ends the fetcher's next send if the checker stopped first.
            drop(received);
            let fetched = fetcher.join().unwrap_or_else(|_| {
                Err(SessionError::fatal(
                    num::INTERNAL,
                    "the key-values fetcher panicked".into(),
                ))
            });
            checked.and(fetched)
        })
    }

    /// The checking half of `copy_keys`: each page as it comes, in order.
    fn check_and_ingest_keys(
        &self,
        target: &Target,
        tick: Tick,
        ranges: &[TickRange],
        pages: &std::sync::mpsc::Receiver<(Vec<u8>, Option<String>)>,
    ) -> Result<(), SessionError> {
        let mut last_key = String::new();
        let mut items: Vec<Restored> = Vec::new();
        // The fetcher's error, if it stopped early, is the one reported (the channel closes).
        while let Ok((bytes, last)) = pages.recv() {
            let mut at = 0;
            while at < bytes.len() {
                let (key, value, next) = key_value_at(&bytes, at)
                    .ok_or_else(|| invalid(format!("key-values cut short at byte {at}")))?;
                at = next;
                if !crate::util::valid_key(key) || key <= last_key.as_str() {
                    return Err(invalid(format!(
                        "key {key:?} of collection '{}' (invalid or out of order)",
                        target.info.name
                    )));
                }
                let rev = u64::from_le_bytes(value[..8].try_into().expect("8 bytes"));
                let in_files = value.len() > 8 || {
                    let i = ranges.partition_point(|r| r.first.get() <= rev);
                    i > 0 && ranges[i - 1].contains(Tick::new(rev))
                };
                if rev == 0 || rev > tick.get() || !in_files {
                    return Err(invalid(format!(
                        "key {key:?} names tick {rev}, which no copied file holds"
                    )));
                }
                last_key.clear();
                last_key.push_str(key);
                items.push(Restored::Put {
                    key: key.to_string(),
                    rev: Tick::new(rev),
                    json: value[8..].to_vec(),
                });
                if items.len() >= KEYS_PER_INGEST {
                    self.ingest_keys(target, &mut items)?;
                }
            }
            match last {
                Some(last) if last == last_key => {}
                Some(last) => {
                    return Err(invalid(format!(
                        "key-values page ends with {last_key:?}, its header says {last:?}"
                    )))
                }
                None => break,
            }
        }
        self.ingest_keys(target, &mut items)
    }

    fn ingest_keys(&self, target: &Target, items: &mut Vec<Restored>) -> Result<(), SessionError> {
        if items.is_empty() {
            return Ok(());
        }
        let count = items.len() as u64;
        let batch = std::mem::take(items);
        self.applier
            .node
            .store
            .restore_new_documents(target.info.id, batch)
            .map_err(|e| {
                self.store_error(
                    &format!("store the keys of '{}'", target.info.name),
                    full(&e),
                )
            })?;
        SyncCounters::add(&self.counters().documents, count);
        self.applier.progress(format!(
            "copying the leader's keys of collection '{}': {} document(s) stored",
            target.info.name,
            SyncCounters::get(&self.counters().documents)
        ));
        Ok(())
    }
}

/// The key and value at `at` of a `key-values` page, and where the next starts.
fn key_value_at(bytes: &[u8], at: usize) -> Option<(&str, &[u8], usize)> {
    let key_len = u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(bytes.get(at + 2..at + 2 + key_len)?).ok()?;
    let at = at + 2 + key_len;
    let value_len = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
    let value = bytes.get(at + 4..at + 4 + value_len)?;
    (value.len() >= 8).then_some((key, value, at + 4 + value_len))
}

/// An error with its causes: a file error names the file and then what the system said.
fn full(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
