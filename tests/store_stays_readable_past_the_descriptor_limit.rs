//! Claim: a store with more files than the process may open stays readable and writable: the
//! daemon keeps at most a budget of them open (`--rocksdb.max-open-files`, by default derived
//! from the descriptor limit), closing the least recently used, instead of failing reads with
//! "Too many open files" once the store outgrows the limit (a blob file per flush: at the usual
//! soft limit of 1024, ~60 GB of documents).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::Daemon;
use serde_json::{json, Value};

/// Descriptors the daemon may hold: soft and hard, so it cannot raise them.
const DESCRIPTORS: u64 = 64;
/// Requests of ~1 MiB; with 1 MiB memtables each one ends in about one flush, one blob file.
const BATCHES: usize = 120;
const PER_BATCH: usize = 64;

fn doc(batch: usize, i: usize) -> Value {
    json!({ "_key": format!("b{batch}-{i}"), "batch": batch, "i": i, "pad": format!("{batch}/{i}").repeat(3000) })
}

fn store_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("store"))
        .expect("store dir")
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".blob") || name.ends_with(".sst")
        })
        .count()
}

fn checksum(daemon: &Daemon) -> String {
    let answer = daemon
        .http()
        .get("/_api/collection/load/checksum?withData=true");
    assert_eq!(answer.status, 200, "checksum: {}", answer.json());
    answer.json()["checksum"]
        .as_str()
        .expect("checksum")
        .to_string()
}

fn assert_documents(daemon: &Daemon) {
    let http = daemon.http();
    for batch in [0, BATCHES / 2, BATCHES - 1] {
        for i in [0, PER_BATCH - 1] {
            let answer = http.get(&format!("/_api/document/load/b{batch}-{i}"));
            assert_eq!(answer.status, 200, "b{batch}-{i}: {}", answer.json());
            let got = answer.json();
            let want = doc(batch, i);
            for field in ["_key", "batch", "i", "pad"] {
                assert_eq!(got[field], want[field], "b{batch}-{i}.{field}");
            }
        }
    }
    let count = http.get("/_api/collection/load/count");
    assert_eq!(count.json()["count"], json!(BATCHES * PER_BATCH));
}

#[test]
fn more_store_files_than_descriptors() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Documents in the store's blob files (not kept in the WAL only): those are the files that
    // outgrow the descriptors here.
    // A scan opens every level-0 file (and its blob file) at once: level 0 is kept below half
    // the store's budget of 20, else a scan while compaction is behind (a busy machine) outgrows
    // it, as the daemon warns.
    let flags = [
        "--rocksdb.write-buffer-size",
        "1048576",
        "--rocksdb.documents-in-wal",
        "false",
        "--rocksdb.level0-compaction-trigger",
        "4",
        "--rocksdb.level0-slowdown-trigger",
        "6",
        "--rocksdb.level0-stop-trigger",
        "8",
    ];
    let mut daemon = Daemon::start_with_descriptor_limit(dir.path(), DESCRIPTORS, &flags);
    let budget = "document store: at most 20 files open";
    assert!(daemon.log().contains(budget), "log:\n{}", daemon.log());
    assert!(
        !daemon.log().contains("level0-stop-trigger"),
        "no warning: {}",
        daemon.log()
    );
    let http = daemon.http();
    let created = http.send("POST", "/_api/collection", &json!({ "name": "load" }));
    assert_eq!(created.status, 200, "{}", created.json());
    for batch in 0..BATCHES {
        let docs: Vec<Value> = (0..PER_BATCH).map(|i| doc(batch, i)).collect();
        let answer = http.send("POST", "/_api/document/load", &Value::Array(docs));
        assert_eq!(answer.status, 202, "batch {batch}: {}", answer.json());
    }
    let files = store_files(dir.path());
    assert!(
        files as u64 > DESCRIPTORS,
        "the store has {files} files, not more than the {DESCRIPTORS} descriptors: the test \
         proves nothing"
    );
    // Every document is read: every blob file opened, most of them closed again to do so.
    let first = checksum(&daemon);
    assert_documents(&daemon);
    // Still writable after reading through every file.
    let put = http.send("POST", "/_api/document/load", &json!({ "_key": "after" }));
    assert_eq!(put.status, 202, "{}", put.json());
    let removed = http.call("DELETE", "/_api/document/load/after", None, None);
    assert_eq!(removed.status, 202, "{}", removed.json());
    assert!(daemon.terminate().success(), "log:\n{}", daemon.log());

    // A restart under the same limit opens the store and reads it again.
    let daemon = Daemon::start_with_descriptor_limit(dir.path(), DESCRIPTORS, &flags);
    assert_eq!(checksum(&daemon), first);
    assert_documents(&daemon);
}
