//! A stored document as clients read it: `_rev` spliced in first, `_id` naming the collection's
//! current name.

use tickship_storage::docstore::{with_rev, StoredDocument};
use tickship_storage::Tick;

// Goal: `_rev` is spliced in as the first attribute of any object, including an empty one.
#[test]
fn rev_is_spliced_into_objects() {
    assert_eq!(
        with_rev(br#"{"_key":"a","v":1}"#, Tick::new(17)),
        br#"{"_rev":"17","_key":"a","v":1}"#
    );
    assert_eq!(with_rev(b"{}", Tick::new(3)), br#"{"_rev":"3"}"#);
}

// Goal: `_id` names the collection's current name, whichever of the first two attributes
// holds it; documents without one, or of another shape, are left as they are.
#[test]
fn id_follows_the_collection_name() {
    let doc = |json: &str| StoredDocument {
        rev: Tick::new(5),
        json: json.as_bytes().to_vec(),
    };
    let stored = doc(r#"{"_key":"a","_id":"before/a","v":"before/a"}"#);
    assert_eq!(
        stored.to_json_in("after"),
        br#"{"_rev":"5","_key":"a","_id":"after/a","v":"before/a"}"#
    );
    assert!(matches!(
        stored.json_in("before"),
        std::borrow::Cow::Borrowed(_)
    ));
    let sorted = doc(r#"{ "_id" : "old/k", "_key":"k", "x":1}"#);
    assert_eq!(
        &sorted.json_in("new")[..],
        br#"{ "_id" : "new/k", "_key":"k", "x":1}"#
    );
    for unchanged in [
        r#"{"_key":"a","v":1,"_id":"c/a"}"#,
        r#"{}"#,
        r#"{"_key":"a"}"#,
        "[1]",
    ] {
        assert_eq!(&doc(unchanged).json_in("other")[..], unchanged.as_bytes());
    }
}
