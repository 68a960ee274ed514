//! Claim: the inputs saved under `fuzz/` (the seeds the fuzzers start from, and every input a
//! fuzzer once found to crash or hang, kept after the fix) go through the frame decoder, the
//! messages and both sides of SCRAM without a panic. The fuzzers themselves run with
//! `scripts/fuzz`.

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    // The package's directory as cargo gives it when it runs the test, not where it was built:
    // a target directory shared by two checkouts keeps a binary built in the other.
    let package: PathBuf = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    let fuzz = package.join("../fuzz");
    let mut inputs = Vec::new();
    for kind in ["seeds", "found"] {
        if let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) {
            inputs.extend(entries.map(|e| e.expect("directory entry").path()));
        }
    }
    assert!(!inputs.is_empty(), "no saved inputs for {target}");
    inputs.sort();
    for path in inputs {
        let data = std::fs::read(&path).expect("read input");
        eprintln!("{}", path.display());
        run(&data);
    }
}

#[test]
fn saved_frame_streams_decode_without_panic() {
    replay("frames", tickship_net::fuzzing::frames);
}

#[test]
fn saved_scram_exchanges_end_without_panic() {
    replay("scram", tickship_net::fuzzing::scram);
}
