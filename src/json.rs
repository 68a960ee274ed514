//! Documents as they arrive: top-level fields borrowed from the request body.
//!
//! Insert and replace need only a document's top-level field names (for `_key`, `_id`, `_rev`,
//! `_from`, `_to`); its values can be copied through as the exact JSON text the client sent.
//! Parsing into `serde_json::Value` instead allocated every nested value and re-serialised it,
//! which cost most of the server's CPU under batch inserts. `scan` still checks every byte, in
//! one pass, for everything a later parse of the stored document would refuse.

pub mod scan;

use serde_json::Value;

use crate::api::{ApiError, ApiResult};
pub use scan::ScanError;

/// A JSON object's top-level fields, in order, values unparsed.
#[derive(Debug)]
pub struct RawObject<'a> {
    fields: Vec<scan::Field<'a>>,
}

impl<'a> RawObject<'a> {
    /// The object `text` is (whitespace around it allowed), checked whole.
    pub fn parse(text: &'a str) -> Result<RawObject<'a>, ScanError> {
        scan::object(text).map(|fields| RawObject { fields })
    }

    /// The JSON text of the last value of field `name` (as serde_json keeps the last of
    /// duplicates).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.fields
            .iter()
            .rev()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
    }

    /// Field `name` as a string: `None` if absent, `Some(Err)` if not a string.
    pub fn get_str(&self, name: &str) -> Option<Result<String, ()>> {
        self.get(name).map(|raw| {
            if raw.starts_with('"') {
                Ok(scan::string_value(raw).into_owned())
            } else {
                Err(())
            }
        })
    }

    /// The object as a `Value` (for merges).
    pub fn to_value(&self) -> Value {
        let mut map = serde_json::Map::new();
        for (name, _, raw) in &self.fields {
            map.insert(
                name.to_string(),
                serde_json::from_str(raw).unwrap_or(Value::Null),
            );
        }
        Value::Object(map)
    }

    /// The stored form: `{"_key":..,"_id":..,` then every field but `_key`, `_id` and `_rev`
    /// (the last of duplicates), names and values as sent.
    pub fn write_document(&self, key: &str, id: &str) -> Vec<u8> {
        let size: usize = self
            .fields
            .iter()
            .map(|(_, n, v)| n.len() + v.len() + 2)
            .sum();
        let mut out = Vec::with_capacity(size + key.len() + id.len() + 24);
        out.extend_from_slice(b"{\"_key\":");
        write_string(&mut out, key);
        out.extend_from_slice(b",\"_id\":");
        write_string(&mut out, id);
        // The last occurrence of a name wins; find it by scanning, or by a map when there are
        // many fields.
        let last_index: Option<std::collections::HashMap<&str, usize>> = (self.fields.len() > 32)
            .then(|| {
                self.fields
                    .iter()
                    .enumerate()
                    .map(|(i, (n, _, _))| (n.as_ref(), i))
                    .collect()
            });
        for (i, (name, raw_name, value)) in self.fields.iter().enumerate() {
            if matches!(name.as_ref(), "_key" | "_id" | "_rev") {
                continue;
            }
            let is_last = match &last_index {
                Some(last) => last.get(name.as_ref()) == Some(&i),
                None => !self.fields[i + 1..].iter().any(|(n, _, _)| n == name),
            };
            if !is_last {
                continue;
            }
            out.push(b',');
            out.extend_from_slice(raw_name.as_bytes());
            out.push(b':');
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'}');
        out
    }
}

/// Appends `text` as a JSON string.
pub fn write_string(out: &mut Vec<u8>, text: &str) {
    // serde_json escapes exactly as JSON requires; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// One item of a write request body.
#[derive(Debug)]
pub enum Item<'a> {
    Object(RawObject<'a>),
    /// A bare string: a key, as removes accept.
    Key(String),
    /// Anything else: not a document.
    Other,
}

/// A write body: one item, or an array of items (`is_array`).
pub fn parse_body(body: &[u8]) -> ApiResult<(bool, Vec<Item<'_>>)> {
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::corrupted_json("body is not UTF-8"))?;
    if text.trim_start().is_empty() {
        return Err(ApiError::corrupted_json("empty body"));
    }
    let (array, elements) = scan::elements(text).map_err(ApiError::corrupted_json)?;
    let items = elements
        .into_iter()
        .map(|element| match element {
            scan::Element::Object(fields) => Item::Object(RawObject { fields }),
            scan::Element::String(raw) => Item::Key(scan::string_value(raw).into_owned()),
            scan::Element::Other => Item::Other,
        })
        .collect();
    Ok((array, items))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: documents are rewritten with `_key`/`_id` first, system attributes dropped,
    // duplicates resolved to the last value, values byte for byte, names re-escaped.
    #[test]
    fn write_document_shapes() {
        let object = RawObject::parse(
            r#"{"a": [1, {"b":2}], "_key":"x", "_rev":"9", "q\"uote": "v", "a": 3}"#,
        )
        .expect("object");
        let out = object.write_document("k1", "c/k1");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            r#"{"_key":"k1","_id":"c/k1","q\"uote":"v","a":3}"#
        );
        assert_eq!(object.get_str("_key"), Some(Ok("x".to_string())));
        assert_eq!(object.get_str("a"), Some(Err(())));
        assert_eq!(object.get_str("nope"), None);
        let value: Value =
            serde_json::from_slice(&object.write_document("k", "c/k")).expect("valid JSON");
        assert_eq!(value["a"], serde_json::json!(3));
    }

    // Goal: bodies parse into items of the right kind; malformed JSON is refused whole.
    #[test]
    fn bodies() {
        let (array, items) = parse_body(br#"[{"a":1}, "key", 5]"#).expect("array");
        assert!(array);
        assert!(
            matches!(items.as_slice(), [Item::Object(_), Item::Key(k), Item::Other] if k == "key")
        );
        let (array, items) = parse_body(br#" {"a":1} "#).expect("object");
        assert!(!array && matches!(items.as_slice(), [Item::Object(_)]));
        assert!(parse_body(b"{\"a\":").is_err());
        assert!(parse_body(b"[1,").is_err());
        assert!(parse_body(b"").is_err());
        assert!(parse_body(&[0xff, b'{']).is_err());
    }

    // Goal: numbers that do not fit a double are refused (ArangoDB's 600), anywhere in a
    // document; those that fit, and number-like text in strings, are taken.
    #[test]
    fn numbers_must_fit_a_double() {
        for bad in [
            r#"{"x": 1e400}"#,
            r#"{"x": [1, {"y": -2.5E+309}]}"#,
            r#"{"a\"": "q", "x": 22222222222222222E2222222}"#,
            // A string ending in an escaped backslash ends at the quote after it.
            r#"{"s": "a\\", "x": 1e400}"#,
            r#"{"b": [true, false, 1E999]}"#,
        ] {
            let error = parse_body(bad.as_bytes()).expect_err(bad);
            assert!(
                error.message.contains("number out of range"),
                "{bad}: {}",
                error.message
            );
        }
        let big = format!(r#"{{"x": {}}}"#, "9".repeat(400));
        assert!(parse_body(big.as_bytes()).is_err());
        for good in [
            r#"{"x": 1e308, "y": -0.5e-400, "z": 18446744073709551615, "w": -12}"#,
            r#"{"s": "1e400 \" 1e999", "t": ["9e9999"]}"#,
            r#"{"n": 222222222222222222222222222}"#,
            r#"{"s": "a\\\"1e400", "t": true, "f": false, "e": 2.5e-3}"#,
        ] {
            assert!(parse_body(good.as_bytes()).is_ok(), "{good}");
        }
    }
}
