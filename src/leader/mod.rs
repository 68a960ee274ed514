//! The leader's side: replication batches (read views for dumps and syncs), key-range hashes
//! (incremental sync), the write path of document requests (`write`: plan, lock, decide, log,
//! answer), the key generator and per-key locks it uses, the shipper that streams the WAL to
//! followers over QUIC, and the registry of followers and `wal/tail` clients the logger reports.

pub mod batches;
pub mod changes;
pub mod followers;
pub(crate) mod keys;
pub(crate) mod locks;
pub mod ranges;
pub mod shipper;
pub mod write;

pub use write::{ItemResult, OverwriteMode, WriteInput, WriteKind, WriteOptions};
