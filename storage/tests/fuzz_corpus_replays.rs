//! Claim: the inputs saved under `fuzz/` (the seeds the fuzzers start from, and every input a
//! fuzzer once found to crash or hang, kept after the fix) go through the block decoder and WAL
//! recovery without a panic. The fuzzers themselves run with `scripts/fuzz`.

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<PathBuf> {
    // The package's directory as cargo gives it when it runs the test, not where it was built:
    // a target directory shared by two checkouts keeps a binary built in the other.
    let package: PathBuf = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    let fuzz = package.join("../fuzz");
    let mut all = Vec::new();
    for kind in ["seeds", "found"] {
        if let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) {
            all.extend(entries.map(|e| e.expect("directory entry").path()));
        }
    }
    all.sort();
    all
}

fn replay(target: &str, run: fn(&[u8])) {
    let inputs = inputs(target);
    assert!(!inputs.is_empty(), "no saved inputs for {target}");
    for path in inputs {
        let data = std::fs::read(&path).expect("read input");
        eprintln!("{}", path.display());
        run(&data);
    }
}

#[test]
fn saved_block_inputs_decode_without_panic() {
    replay("block", tickship_storage::fuzzing::block);
}

#[test]
fn saved_segment_inputs_recover_without_panic() {
    replay("segment", tickship_storage::fuzzing::segment);
}
