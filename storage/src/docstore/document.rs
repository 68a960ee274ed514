//! A document as the store keeps it: under `collection id: u64 BE | _key` in the `docs` column
//! family, its value the tick that wrote it (`u64 LE`, the revision) followed by its JSON without
//! `_rev`, or by nothing when the document is kept in the WAL at that tick. `_rev` is spliced in,
//! and `_id` made to name the collection's current name, when a client reads it.

use crate::tick::Tick;

/// A stored document: the tick that wrote it and its JSON without `_rev`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDocument {
    pub rev: Tick,
    pub json: Vec<u8>,
}

impl StoredDocument {
    /// The document as clients of collection `collection` (its current name) see it: with
    /// `_rev` (the revision as a decimal string) and an `_id` naming `collection`.
    pub fn to_json_in(&self, collection: &str) -> Vec<u8> {
        with_rev(&self.json_in(collection), self.rev)
    }

    /// The stored JSON with its `_id` naming `collection`. A document keeps the `_id` it was
    /// written with, so after a rename the name in it is the old one; ArangoDB builds `_id` from
    /// the current name.
    pub fn json_in(&self, collection: &str) -> std::borrow::Cow<'_, [u8]> {
        let Some(span) = id_value_span(&self.json) else {
            return std::borrow::Cow::Borrowed(&self.json);
        };
        let id = &self.json[span.clone()];
        let Some(slash) = id.iter().position(|&b| b == b'/') else {
            return std::borrow::Cow::Borrowed(&self.json);
        };
        if &id[..slash] == collection.as_bytes() {
            return std::borrow::Cow::Borrowed(&self.json);
        }
        let mut out = Vec::with_capacity(self.json.len() + collection.len());
        out.extend_from_slice(&self.json[..span.start]);
        out.extend_from_slice(collection.as_bytes());
        out.extend_from_slice(&id[slash..]);
        out.extend_from_slice(&self.json[span.end..]);
        std::borrow::Cow::Owned(out)
    }
}

/// The bytes inside the quotes of the top-level `_id` of a stored document, looked for among its
/// first two attributes: stored documents begin with `_key` and `_id` (in either order), whose
/// values are strings without escapes (the key and name rules allow none).
fn id_value_span(json: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut at = 0;
    let skip_ws = |at: &mut usize| {
        while json.get(*at).is_some_and(u8::is_ascii_whitespace) {
            *at += 1;
        }
    };
    // A string without escapes starting at `at`: the range inside its quotes.
    let string = |at: &mut usize| -> Option<std::ops::Range<usize>> {
        if json.get(*at) != Some(&b'"') {
            return None;
        }
        let start = *at + 1;
        let len = json
            .get(start..)?
            .iter()
            .position(|&b| b == b'"' || b == b'\\')?;
        if json[start + len] != b'"' {
            return None;
        }
        *at = start + len + 1;
        Some(start..start + len)
    };
    skip_ws(&mut at);
    if json.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    for member in 0..2 {
        skip_ws(&mut at);
        if member == 1 {
            if json.get(at) != Some(&b',') {
                return None;
            }
            at += 1;
            skip_ws(&mut at);
        }
        let name = string(&mut at)?;
        skip_ws(&mut at);
        if json.get(at) != Some(&b':') {
            return None;
        }
        at += 1;
        skip_ws(&mut at);
        let value = string(&mut at)?;
        if &json[name] == b"_id" {
            return Some(value);
        }
    }
    None
}

/// Splices `"_rev":"<rev>"` into a JSON object as its first attribute.
pub fn with_rev(json: &[u8], rev: Tick) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 32);
    out.extend_from_slice(b"{\"_rev\":\"");
    out.extend_from_slice(rev.to_string().as_bytes());
    out.push(b'"');
    match json.get(1..) {
        Some(rest) if rest.first().is_some_and(|&b| b != b'}') => {
            out.push(b',');
            out.extend_from_slice(rest);
        }
        _ => out.push(b'}'),
    }
    out
}

/// The inverse of `with_rev`: `json` without its first attribute when that is `"_rev"` with a
/// decimal string value, and that revision; `None` for any other shape.
pub fn without_rev(json: &[u8]) -> Option<(Vec<u8>, Tick)> {
    let rest = json.strip_prefix(b"{\"_rev\":\"")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let rev: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b"\"")?;
    let mut out = Vec::with_capacity(json.len());
    out.push(b'{');
    match rest.first()? {
        b',' => out.extend_from_slice(&rest[1..]),
        b'}' => out.extend_from_slice(rest),
        _ => return None,
    }
    Some((out, Tick::new(rev)))
}

/// Key of document `key` of collection `collection` in the `docs` column family.
pub(crate) fn doc_key(collection: u64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&collection.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// Bytes of the value of a document kept in the WAL: its tick alone. A document kept in the
/// store has its tick and then at least `{}`.
pub(super) const DOCUMENT_IN_WAL_BYTES: usize = 8;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in a test, a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn without_rev_undoes_with_rev_and_refuses_other_shapes() {
        for json in [&br#"{"_id":"c/a","_key":"a","x":1}"#[..], b"{}"] {
            let spliced = with_rev(json, Tick::new(42));
            assert_eq!(without_rev(&spliced), Some((json.to_vec(), Tick::new(42))));
        }
        assert_eq!(without_rev(br#"{"_key":"a","_rev":"1"}"#), None);
        assert_eq!(without_rev(br#"{"_rev":"x1","a":1}"#), None);
        assert_eq!(without_rev(br#"{"_rev":"1" ,"a":1}"#), None);
        assert_eq!(without_rev(br#"{"_rev":""}"#), None);
    }
}
