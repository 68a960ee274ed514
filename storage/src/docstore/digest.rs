//! Collection digests: for each collection, the XOR of a 128-bit hash of every `(key, revision)`
//! pair it holds, and the largest revision stored in it since it was created or emptied.
//!
//! Every write keeps them up to date (a put XORs the old pair out and the new one in, a removal
//! the old one out), so two stores compare a collection in constant time instead of walking its
//! keys: an initial sync skips collections whose digests are equal, and checks the result of
//! fetching only what the leader's log says changed. The largest revision is where that log is
//! read from: a store equal to its leader as of some tick T holds no revision past T.
//!
//! A digest is stored as `digest/{id}` in the `meta` column family, in the same write batch as
//! the collection's count. A collection without one (created by an older version, or restored
//! when a crash came between a store file's ingestion and the flush after it) has no known
//! digest; nothing then trusts it until a sync sets it (`DocStore::set_digest`). The XOR is not a
//! cryptographic commitment: it detects faults, not a crafted collision.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::error::{Error, IoContext, Result};
use crate::tick::Tick;

/// Bytes of a stored digest: the XOR (u128 LE) and the largest revision (u64 LE).
const DIGEST_BYTES: usize = 24;

/// File of the collections whose digest a restore is changing outside the store writer's
/// batches: ingested store files are durable at once, the digest written after them only at the
/// next flush. Those digests are forgotten at the next open if the file still names them.
pub(super) const DIGESTS_UNSURE_FILE: &str = "DIGESTS-UNSURE";

/// The digest of one collection (see the module's notes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    /// XOR of `pair_hash(key, revision)` over the documents.
    pub xor: u128,
    /// The largest revision stored since the collection was created or emptied (never lowered
    /// by a removal), or the tick as of which a sync made it equal to its leader's if later.
    pub max_rev: u64,
}

/// The 128-bit hash of one `(key, revision)` pair: XXH3-128 of the key's bytes, seeded with the
/// revision.
pub fn pair_hash(key: &[u8], rev: u64) -> u128 {
    xxh3_128_with_seed(key, rev)
}

impl Digest {
    /// The document `key` at revision `rev` was stored.
    pub fn add(&mut self, key: &[u8], rev: u64) {
        self.xor ^= pair_hash(key, rev);
        self.max_rev = self.max_rev.max(rev);
    }

    /// The document `key` at revision `rev` is gone (replaced or removed).
    pub fn remove(&mut self, key: &[u8], rev: u64) {
        self.xor ^= pair_hash(key, rev);
    }

    /// Joins the changes `other` describes (XORs are order-free).
    pub fn join(&mut self, other: &Digest) {
        self.xor ^= other.xor;
        self.max_rev = self.max_rev.max(other.max_rev);
    }

    /// The largest revision as a tick.
    pub fn max_rev(&self) -> Tick {
        Tick::new(self.max_rev)
    }

    /// 32 hex digits of the XOR: what two servers compare.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.xor)
    }

    pub(super) fn encode(&self) -> [u8; DIGEST_BYTES] {
        let mut out = [0u8; DIGEST_BYTES];
        out[..16].copy_from_slice(&self.xor.to_le_bytes());
        out[16..].copy_from_slice(&self.max_rev.to_le_bytes());
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Digest> {
        if bytes.len() != DIGEST_BYTES {
            return None;
        }
        Some(Digest {
            xor: u128::from_le_bytes(bytes[..16].try_into().ok()?),
            max_rev: u64::from_le_bytes(bytes[16..].try_into().ok()?),
        })
    }
}

/// What the unsure file names, and since when; `busy` from a restore step's ingest until its
/// digest is flushed; `forget`, the collections whose step failed after its ingest (their digest
/// on disk may be stale until a later step deletes it).
#[derive(Debug)]
pub(super) struct Unsure {
    pub ids: BTreeSet<u64>,
    pub since: std::time::Instant,
    pub busy: bool,
    pub forget: BTreeSet<u64>,
}

impl Unsure {
    /// Collections whose digest on disk may not match their documents right now.
    pub fn stale(&self) -> BTreeSet<u64> {
        let mut stale = self.forget.clone();
        if self.busy {
            stale.extend(self.ids.iter().copied());
        }
        stale
    }
}

impl Default for Unsure {
    fn default() -> Unsure {
        Unsure {
            ids: BTreeSet::new(),
            since: std::time::Instant::now(),
            busy: false,
            forget: BTreeSet::new(),
        }
    }
}

/// The `meta` key of collection `id`'s digest.
pub(super) fn digest_key(id: u64) -> String {
    format!("digest/{id}")
}

/// The collections named in the unsure file (see `DIGESTS_UNSURE_FILE`); a damaged file names
/// them all (`None`).
pub(super) fn read_unsure(dir: &Path) -> Result<Option<BTreeSet<u64>>> {
    let path = dir.join(DIGESTS_UNSURE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .map(|line| line.trim().parse::<u64>().ok())
            .collect::<Option<BTreeSet<u64>>>()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(BTreeSet::new())),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Makes the unsure file name `ids` (removes it if there are none), durably: written aside,
/// synced, renamed into place, the directory synced.
pub(super) fn write_unsure(dir: &Path, ids: &BTreeSet<u64>) -> Result<()> {
    let path: PathBuf = dir.join(DIGESTS_UNSURE_FILE);
    if ids.is_empty() {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("remove", path, e)),
        }
    } else {
        let temporary = dir.join(format!("{DIGESTS_UNSURE_FILE}.tmp"));
        let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
        std::fs::write(&temporary, text).ctx("write", &temporary)?;
        let file = std::fs::File::open(&temporary).ctx("open", &temporary)?;
        crate::fs::fsync(&file, &temporary)?;
        std::fs::rename(&temporary, &path).ctx("rename", &path)?;
    }
    crate::fs::fsync_dir(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in a test, a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn order_of_changes_does_not_matter() {
        let mut one = Digest::default();
        one.add(b"a", 1);
        one.add(b"b", 2);
        one.remove(b"a", 1);
        one.add(b"a", 3);
        let mut two = Digest::default();
        two.add(b"a", 3);
        two.add(b"b", 2);
        assert_eq!(one.xor, two.xor);
        assert_eq!(one.max_rev, 3);
        assert_ne!(pair_hash(b"a", 1), pair_hash(b"a", 2));
        assert_ne!(pair_hash(b"ab", 1), pair_hash(b"a", 1));
        assert_eq!(Digest::decode(&one.encode()), Some(one));
        assert_eq!(Digest::decode(&one.encode()[..23]), None);
    }

    #[test]
    fn unsure_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_unsure(dir.path()).unwrap(), Some(BTreeSet::new()));
        let ids: BTreeSet<u64> = [3, 17].into();
        write_unsure(dir.path(), &ids).unwrap();
        assert_eq!(read_unsure(dir.path()).unwrap(), Some(ids));
        std::fs::write(dir.path().join(DIGESTS_UNSURE_FILE), "3\nx\n").unwrap();
        assert_eq!(read_unsure(dir.path()).unwrap(), None);
        write_unsure(dir.path(), &BTreeSet::new()).unwrap();
        assert!(!dir.path().join(DIGESTS_UNSURE_FILE).exists());
    }
}
