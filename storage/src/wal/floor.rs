//! The log's floor: a tick at or below which the log does not describe the store it belongs to
//! (a restore loaded data that came through no WAL, or a restored follower starts its leader's
//! log part-way). Ticks at or before it are never served to a replication client, and the next
//! tick appended is after it. Kept in the WAL directory's `FLOOR` file (see FORMAT.md).

use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::fs;
use crate::tick::Tick;

pub(crate) const FILE: &str = "FLOOR";
pub(crate) const TEMPORARY: &str = "FLOOR.tmp";
const MAGIC: &[u8; 8] = b"TICKFLOR";
const BYTES: usize = 20;

/// The floor recorded in `dir`, or zero if none was.
pub(crate) fn read(dir: &Path) -> Result<Tick> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tick::ZERO),
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    let corrupt = |reason: &str| Error::Directory {
        dir: dir.to_path_buf(),
        reason: format!("{}: {reason}", path.display()),
    };
    if bytes.len() != BYTES {
        return Err(corrupt(&format!(
            "{} bytes, a floor file has {BYTES}",
            bytes.len()
        )));
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt("not a floor file (bad magic)"));
    }
    let crc = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    if crc32c::crc32c(&bytes[..16]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let mut tick = [0u8; 8];
    tick.copy_from_slice(&bytes[8..16]);
    Ok(Tick::new(u64::from_le_bytes(tick)))
}

/// Records `tick` as the floor of `dir`, durably: written aside, synced, renamed into place.
pub(crate) fn write(dir: &Path, tick: Tick) -> Result<()> {
    let mut bytes = Vec::with_capacity(BYTES);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&tick.get().to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
    let temporary = dir.join(TEMPORARY);
    let path = dir.join(FILE);
    std::fs::write(&temporary, &bytes).ctx("write", &temporary)?;
    let file = std::fs::File::open(&temporary).ctx("open", &temporary)?;
    fs::fsync(&file, &temporary)?;
    std::fs::rename(&temporary, &path).ctx("rename", &path)?;
    fs::fsync_dir(dir)
}
