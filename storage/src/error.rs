//! The storage crate's error type: one variant per action a caller can take.
//!
//! Bytes read from disk that fail validation become `Corruption` (naming the file and offset);
//! bytes handed in from elsewhere (a block received from a peer) become `InvalidBlock`. Neither
//! ever reaches an `unwrap` or an `assert!`.

use std::path::PathBuf;

use crate::tick::{SegmentId, Tick};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the WAL wrote holds bytes that fail validation: stop and repair, never skip.
    #[error("segment {segment_id} ({path}): corrupt at offset {offset}: {reason}")]
    Corruption {
        segment_id: SegmentId,
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    /// The WAL directory holds something it cannot account for.
    #[error("wal directory {dir}: {reason}")]
    Directory { dir: PathBuf, reason: String },

    /// A block from outside the WAL (for example from a leader) is malformed.
    #[error("invalid block: {0}")]
    InvalidBlock(&'static str),

    /// A record cannot be logged as given (too large, a field too long).
    #[error("invalid record: {0}")]
    InvalidRecord(String),

    /// The records of one append do not fit in one block, which must fit in one segment.
    #[error(
        "block of {bytes} bytes exceeds the maximum of {bytes_max} bytes for this segment size"
    )]
    BlockTooLarge { bytes: u64, bytes_max: u64 },

    /// A verbatim block does not follow the log: its first tick is not after the last tick.
    #[error("block starting at tick {tick_first} does not follow the log's last tick {tick_last}")]
    TickOrder { tick_first: Tick, tick_last: Tick },

    /// The ticks after this one were removed by retention: resync from a snapshot.
    #[error("tick {0} is below retention; resync from a snapshot")]
    TickCompacted(Tick),

    /// The writer stopped for good after a failed write or fdatasync; nothing more is accepted,
    /// and nothing that was not reported durable may be assumed durable.
    #[error("wal writer has failed: {0}")]
    WriterFailed(String),

    /// The WAL is closing or closed.
    #[error("wal is closed")]
    Closed,

    /// A record cannot be applied to this store as it is (a follower's collection named like
    /// one of its leader's): nothing of its group was applied, and the store writer waits until
    /// the conflict is allowed to be skipped (`DocStore::set_ignore_conflicts`) or resolved.
    #[error("tick {tick}: {reason}")]
    ApplyConflict { tick: Tick, reason: String },

    /// The document store cannot write for want of disk space: the store writer waits, and
    /// goes on by itself once space is freed. Writes are refused meanwhile.
    #[error("the document store cannot write, its disk is full ({0}); writes are refused until space is freed")]
    StoreFull(String),

    /// The document store (RocksDB) failed.
    #[error("document store: {op}: {reason}")]
    Store { op: &'static str, reason: String },

    /// An invalid option.
    #[error("invalid wal option: {0}")]
    Config(String),

    /// A file operation failed. The display ends with what the system said (not kept as the
    /// error's `source`, so that `{e}` alone tells the whole story: "No space left on device").
    #[error("{op} {path}: {cause}")]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
}

impl Error {
    /// Whether this failed for want of disk space (ENOSPC or a quota, from the WAL's files or
    /// from the document store): the server stays up and goes on once space is freed.
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::Io { cause, .. } => matches!(
                cause.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            ),
            // RocksDB reports its status as text: "IO error: No space left on device: ...".
            Error::Store { reason, .. } | Error::StoreFull(reason) => Error::names_no_space(reason),
            _ => false,
        }
    }

    /// Whether an error text says a disk was full (RocksDB's statuses, a chained io::Error).
    pub fn names_no_space(text: &str) -> bool {
        text.contains("No space left on device") || text.contains("Disk quota exceeded")
    }

    /// The error with its causes, joined by ": " (an `Io` error's display names only what was
    /// done and the path; its cause says why).
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            cause: source,
        }
    }
}

/// Adds the operation and path to an `std::io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::io(op, path, source))
    }
}
