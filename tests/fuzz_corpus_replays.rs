//! Claim: the document bodies saved under `fuzz/` (the seeds the fuzzer starts from, and every
//! input it once found to fail, kept after the fix) are stored as the client sent them
//! (`tickship::fuzzing::document_body` checks it). The fuzzer itself runs with `scripts/fuzz`.

use std::path::PathBuf;

#[test]
fn saved_document_bodies_are_stored_as_sent() {
    // The package's directory as cargo gives it when it runs the test, not where it was built:
    // a target directory shared by two checkouts keeps a binary built in the other.
    let package: PathBuf = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    let fuzz = package.join("fuzz");
    let mut inputs = Vec::new();
    for kind in ["seeds", "found"] {
        if let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join("document")) {
            inputs.extend(entries.map(|e| e.expect("directory entry").path()));
        }
    }
    assert!(!inputs.is_empty(), "no saved document bodies");
    for path in inputs {
        eprintln!("{}", path.display());
        tickship::fuzzing::document_body(&std::fs::read(&path).expect("read input"));
    }
}
