//! Claim: every document write tickshipd acknowledged survives `kill -9` during a concurrent
//! batch-insert load, with its content, and no batch is ever half present: each batch is one
//! WAL block, applied all or nothing. Repeated kills at varying points, same data directory.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Daemon;
use serde_json::{json, Value};

const WRITERS: usize = 4;
const BATCH: usize = 50;

fn batch_docs(round: usize, writer: usize, batch: usize) -> Vec<Value> {
    (0..BATCH)
        .map(|i| json!({ "_key": format!("r{round}-w{writer}-b{batch}-{i}"), "round": round, "writer": writer, "batch": batch, "i": i, "pad": "x".repeat(200) }))
        .collect()
}

#[test]
fn acknowledged_batches_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(dir.path(), &[]);
    daemon
        .http()
        .send("POST", "/_api/collection", &json!({ "name": "load" }));
    // (round, writer, batch) -> acknowledged?
    let mut attempted: BTreeMap<(usize, usize, usize), bool> = BTreeMap::new();
    for round in 0..4 {
        // Writers push acknowledged batches and signal; the killer waits on that signal.
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let progress = Arc::new(std::sync::Condvar::new());
        let in_flight = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (http, acknowledged, progress, in_flight, stop) = (
                    daemon.http(),
                    acknowledged.clone(),
                    progress.clone(),
                    in_flight.clone(),
                    stop.clone(),
                );
                std::thread::spawn(move || {
                    for batch in 0..10_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        in_flight.lock().expect("lock").push((round, writer, batch));
                        let body = Value::Array(batch_docs(round, writer, batch));
                        match http.try_send("POST", "/_api/document/load", &body) {
                            Ok(answer) if answer.status == 202 => {
                                acknowledged
                                    .lock()
                                    .expect("lock")
                                    .push((round, writer, batch));
                                progress.notify_all();
                            }
                            // The server died under us: this batch may or may not be there.
                            _ => break,
                        }
                    }
                })
            })
            .collect();
        // Kill after a varying number of acknowledged batches.
        let target = 20 + round * 37;
        let (acked, waited) = progress
            .wait_timeout_while(
                acknowledged.lock().expect("lock"),
                Duration::from_secs(60),
                |acked| acked.len() < target,
            )
            .expect("lock");
        drop(acked);
        assert!(!waited.timed_out(), "load made no progress");
        daemon.kill9();
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            let _ = writer.join();
        }
        for key in in_flight.lock().expect("lock").iter() {
            attempted.insert(*key, false);
        }
        for key in acknowledged.lock().expect("lock").iter() {
            attempted.insert(*key, true);
        }
        daemon = Daemon::start(dir.path(), &[]);
        let http = daemon.http();
        let mut present_total = 0u64;
        for (&(r, writer, batch), &acked) in &attempted {
            let keys: Vec<String> = (0..BATCH)
                .map(|i| format!("r{r}-w{writer}-b{batch}-{i}"))
                .collect();
            let found = http
                .send("PUT", "/_api/document/load?onlyget=true", &json!(keys))
                .json();
            let docs = found.as_array().expect("array");
            let present: Vec<&Value> = docs.iter().filter(|d| d.get("_key").is_some()).collect();
            assert!(
                present.is_empty() || present.len() == BATCH,
                "round {round}: batch {r}/{writer}/{batch} is half present ({} of {BATCH})",
                present.len()
            );
            if acked {
                assert_eq!(
                    present.len(),
                    BATCH,
                    "round {round}: acknowledged batch {r}/{writer}/{batch} lost"
                );
                for (i, doc) in present.iter().enumerate() {
                    assert_eq!(doc["i"], json!(i));
                    assert_eq!(doc["batch"], json!(batch));
                    assert_eq!(doc["pad"].as_str().map(str::len), Some(200));
                }
            }
            present_total += present.len() as u64;
        }
        let count = http.get("/_api/collection/load/count").json()["count"]
            .as_u64()
            .expect("count");
        assert_eq!(
            count, present_total,
            "round {round}: count matches the documents present"
        );
    }
}
