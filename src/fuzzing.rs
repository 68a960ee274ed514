//! Entry point of the document-body fuzz target (`fuzz/`, `scripts/fuzz`), also replayed over
//! the saved corpus by `tests/fuzz_corpus_replays.rs`: a write request's body, as any client may
//! send it, parsed as the document API does and each document written in its stored form, which
//! must then be valid JSON holding what was sent.

use serde_json::Value;

use crate::json::{parse_body, Item};
use crate::util::valid_key;

/// Panics if the stored form of a document in `data` is not what the client sent.
pub fn document_body(data: &[u8]) {
    let Ok((_, items)) = parse_body(data) else {
        return;
    };
    for item in items {
        let object = match item {
            Item::Object(object) => object,
            Item::Key(key) => {
                let _ = valid_key(&key);
                continue;
            }
            Item::Other => continue,
        };
        let key = match object.get_str("_key") {
            Some(Ok(key)) if valid_key(&key) => key,
            _ => "generated".to_string(),
        };
        let id = format!("c/{key}");
        let stored = object.write_document(&key, &id);
        let Ok(Value::Object(stored)) = serde_json::from_slice::<Value>(&stored) else {
            panic!(
                "stored form is not a JSON object: {}",
                String::from_utf8_lossy(&stored)
            );
        };
        let sent = object.to_value();
        let Value::Object(sent) = sent else {
            unreachable!("an object converts to an object")
        };
        assert_eq!(stored.get("_key"), Some(&Value::String(key)));
        assert_eq!(stored.get("_id"), Some(&Value::String(id)));
        assert!(!stored.contains_key("_rev"));
        // Every other field as sent (the last of duplicates), and nothing else.
        for (name, value) in &sent {
            if !matches!(name.as_str(), "_key" | "_id" | "_rev") {
                assert_eq!(stored.get(name), Some(value), "field {name:?}");
            }
        }
        let extra = stored
            .keys()
            .filter(|n| !matches!(n.as_str(), "_key" | "_id") && !sent.contains_key(*n))
            .count();
        assert_eq!(extra, 0, "fields the client did not send");
    }
}
