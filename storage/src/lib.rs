//! tickship's disk side: the tick-ordered write-ahead log (`wal`) and the document store it feeds
//! (`docstore`). No sockets here; `FORMAT.md` documents every byte this crate persists.

#[cfg(feature = "docstore")]
pub mod docstore;
pub mod error;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
pub mod tick;
pub mod wal;

pub use error::{Error, Result};
pub use tick::{SegmentId, Tick, TickRange};
pub use wal::{Wal, WalOptions};
