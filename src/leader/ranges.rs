//! Key ranges of a collection and their hashes: how a follower that already holds data finds what
//! differs from its leader's snapshot without moving the documents (incremental sync). Both sides
//! walk the `(key, revision)` pairs of a range in key order, which the store gives without
//! reading a document, and hash them; a range whose hash and count agree is equal. Unlike
//! ArangoDB's XOR of per-key hashes, the hash is of the ordered sequence (SHA-256), so two
//! ranges that differ in a way that cancels out under XOR still differ here.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tickship_storage::Tick;

/// The header in which the leader sends the CRC-32C of a sync answer's body (hex), so that the
/// follower refuses an answer damaged on the way, end to end.
pub const CRC_HEADER: &str = "x-tickship-crc32c";

/// The value of `CRC_HEADER` for `body`.
pub fn crc_of(body: &[u8]) -> String {
    format!("{:08x}", crc32c::crc32c(body))
}

/// Whether `body` is what `header` (the leader's `CRC_HEADER`) says it is.
pub fn check_crc(body: &[u8], header: Option<&str>) -> Result<(), String> {
    match header {
        None => Err(format!("the answer has no {CRC_HEADER} header")),
        Some(sent) if sent.eq_ignore_ascii_case(&crc_of(body)) => Ok(()),
        Some(sent) => Err(format!(
            "the answer's {} bytes have CRC-32C {}, the leader sent {sent}",
            body.len(),
            crc_of(body)
        )),
    }
}

/// The hash of the `(key, revision)` pairs of one range, fed in key order.
pub struct RangeHash {
    hasher: Sha256,
    count: u64,
}

impl Default for RangeHash {
    fn default() -> RangeHash {
        RangeHash {
            hasher: Sha256::new(),
            count: 0,
        }
    }
}

impl RangeHash {
    pub fn add(&mut self, key: &str, rev: Tick) {
        // Keys never hold a zero byte, so `key 0 rev` cannot be read two ways.
        self.hasher.update(key.as_bytes());
        self.hasher.update([0u8]);
        self.hasher.update(rev.get().to_le_bytes());
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The first 128 bits of the digest, in hex.
    pub fn finish(self) -> String {
        let digest = self.hasher.finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `count` consecutive keys from `low` to `high` (both included) and the hash of their pairs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChunk {
    pub low: String,
    pub high: String,
    pub count: u64,
    pub hash: String,
}

/// Cuts the pairs `walk` visits (in key order) into chunks of `size` keys, at most
/// `max_chunks` of them; `walk` is told to stop once that many are full. Returns the chunks and
/// whether keys remain after the last one.
pub fn chunk_pairs<E>(
    size: u64,
    max_chunks: usize,
    walk: impl FnOnce(&mut dyn FnMut(&str, Tick) -> bool) -> Result<(), E>,
) -> Result<(Vec<KeyChunk>, bool), E> {
    let size = size.max(1);
    let mut chunks = Vec::new();
    let mut current: Option<(String, String, RangeHash)> = None;
    let mut more = false;
    walk(&mut |key, rev| {
        if chunks.len() >= max_chunks {
            more = true;
            return false;
        }
        let (_, high, hash) =
            current.get_or_insert_with(|| (key.to_owned(), String::new(), RangeHash::default()));
        hash.add(key, rev);
        high.clear();
        high.push_str(key);
        if hash.count() >= size {
            chunks.extend(current.take().map(KeyChunk::of));
        }
        true
    })?;
    chunks.extend(current.take().map(KeyChunk::of));
    Ok((chunks, more))
}

impl KeyChunk {
    /// The chunk from `low` to `high` whose pairs `hash` took.
    fn of((low, high, hash): (String, String, RangeHash)) -> KeyChunk {
        KeyChunk {
            low,
            high,
            count: hash.count(),
            hash: hash.finish(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in a test, a panic is the failure report
mod tests {
    use super::*;

    fn pairs(n: u64) -> Vec<(String, Tick)> {
        (0..n)
            .map(|i| (format!("k{i:04}"), Tick::new(i + 1)))
            .collect()
    }

    fn chunked(pairs: &[(String, Tick)], size: u64, max: usize) -> (Vec<KeyChunk>, bool) {
        chunk_pairs::<()>(size, max, |visit| {
            for (key, rev) in pairs {
                if !visit(key, *rev) {
                    break;
                }
            }
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn chunks_cover_every_key_once_and_hash_what_they_hold() {
        let all = pairs(10);
        let (chunks, more) = chunked(&all, 4, 100);
        assert!(!more);
        let counts: Vec<u64> = chunks.iter().map(|c| c.count).collect();
        assert_eq!(counts, [4, 4, 2]);
        assert_eq!(
            (chunks[0].low.as_str(), chunks[0].high.as_str()),
            ("k0000", "k0003")
        );
        assert_eq!(
            (chunks[2].low.as_str(), chunks[2].high.as_str()),
            ("k0008", "k0009")
        );
        // Same pairs, same hash; one revision changed, another hash.
        assert_eq!(chunked(&all, 4, 100).0, chunks);
        let mut changed = all.clone();
        changed[5].1 = Tick::new(99);
        let other = chunked(&changed, 4, 100).0;
        assert_eq!(other[0], chunks[0]);
        assert_ne!(other[1].hash, chunks[1].hash);
        // Swapping revisions between two keys changes the hash (an XOR would not notice).
        let mut swapped = all.clone();
        swapped.swap(4, 5);
        swapped[4].0 = "k0004".into();
        swapped[5].0 = "k0005".into();
        assert_ne!(chunked(&swapped, 4, 100).0[1].hash, chunks[1].hash);
    }

    #[test]
    fn a_damaged_or_unchecked_answer_is_refused() {
        let body = b"{\"_key\":\"a\"}\n";
        assert_eq!(check_crc(body, Some(&crc_of(body))), Ok(()));
        let mut damaged = body.to_vec();
        damaged[3] ^= 1;
        assert!(check_crc(&damaged, Some(&crc_of(body))).is_err());
        assert!(check_crc(body, None).is_err());
    }

    #[test]
    fn chunks_stop_at_the_limit_and_say_more_remains() {
        let (chunks, more) = chunked(&pairs(10), 3, 2);
        assert!(more);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1].high, "k0005");
        let (chunks, more) = chunked(&pairs(6), 3, 2);
        assert_eq!((chunks.len(), more), (2, false));
        assert_eq!(chunked(&[], 3, 2), (vec![], false));
    }
}
