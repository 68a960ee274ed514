//! The key generator: numeric keys reserved in steps from a persisted high-water mark, and moved
//! past keys that clients chose or a former leader generated.

use crate::api::{ApiError, ApiResult};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Generated keys are reserved from the persisted high-water mark in steps of this many.
pub(crate) const KEYGEN_STEP: u64 = 1_000_000;

/// Numeric keys clients choose from here on do not move the key generator (so it never nears
/// u64::MAX); the write path's read still keeps a generated key from overwriting them.
pub(crate) const TRACKED_KEY_MAX: u64 = 1 << 62;

/// Generates numeric keys, unique across restarts and crashes: ranges are reserved by writing
/// the high-water mark to a file (and syncing it) before any key of the range is handed out.
pub(crate) struct KeyGen {
    path: PathBuf,
    state: Mutex<(u64, u64)>,
}

impl KeyGen {
    pub(crate) fn open(path: &Path) -> anyhow::Result<KeyGen> {
        let start = match std::fs::read_to_string(path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .with_context(|| format!("parse {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 100_000,
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let keygen = KeyGen {
            path: path.to_path_buf(),
            state: Mutex::new((start, start)),
        };
        Ok(keygen)
    }

    pub(crate) fn next(&self) -> ApiResult<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 >= state.1 {
            let limit = state.0.max(state.1) + KEYGEN_STEP;
            let write = || -> std::io::Result<()> {
                let temp = self.path.with_extension("tmp");
                std::fs::write(&temp, limit.to_string())?;
                std::fs::File::open(&temp)?.sync_all()?;
                std::fs::rename(&temp, &self.path)?;
                if let Some(dir) = self.path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            };
            write()
                .map_err(|e| ApiError::unavailable(format!("cannot reserve document keys: {e}")))?;
            state.1 = limit;
        }
        state.0 += 1;
        Ok(state.0)
    }

    /// Moves `gap` past a generated key found taken (a document replicated from a leader, or a
    /// numeric key a client chose while this server was not tracking).
    pub(crate) fn skip_past(&self, key: u64, gap: u64) {
        self.track(key.saturating_add(gap.max(1) - 1).min(TRACKED_KEY_MAX - 1));
    }

    /// Moves past a numeric key a client chose, so generated keys do not run into it (as
    /// ArangoDB's traditional generator does). Not persisted by itself: after a restart the
    /// write path's read still refuses a generated key that exists.
    pub(crate) fn track(&self, key: u64) {
        if key >= TRACKED_KEY_MAX {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 = state.0.max(key);
    }
}
