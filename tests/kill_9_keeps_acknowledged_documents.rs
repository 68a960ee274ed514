//! Claim: every document write tickshipd acknowledged survives `kill -9` during a concurrent
//! batch-insert load, with its content, and no batch is ever half present: each batch is one
//! WAL block, applied all or nothing. Repeated kills at random points, same data directory; a
//! follower tails the leader throughout and after each round equals it (count and checksum with
//! revisions and data). Rounds: 5, or `TICKSHIP_KILL_ROUNDS` (the long suite runs 50); the
//! kill points come from a seed that is printed and can be given back with `TICKSHIP_SEED`.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{applier_body, collection_state, Daemon};
use serde_json::{json, Value};

const WRITERS: usize = 4;
const BATCH: usize = 50;

fn batch_docs(round: usize, writer: usize, batch: usize) -> Vec<Value> {
    (0..BATCH)
        .map(|i| json!({ "_key": format!("r{round}-w{writer}-b{batch}-{i}"), "round": round, "writer": writer, "batch": batch, "i": i, "pad": "x".repeat(200) }))
        .collect()
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

#[test]
fn acknowledged_batches_survive_kill_9() {
    let rounds = env_number("TICKSHIP_KILL_ROUNDS").unwrap_or(5) as usize;
    let seed = env_number("TICKSHIP_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos()
            .into()
    });
    eprintln!("{rounds} rounds, TICKSHIP_SEED={seed}");
    let mut random = seed | 1;
    let mut next = move |below: usize| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        (random % below as u64) as usize
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let leader_dir = dir.path().join("leader");
    let mut daemon = Daemon::start(&leader_dir, &[]);
    let port = daemon.port();
    daemon
        .http()
        .send("POST", "/_api/collection", &json!({ "name": "load" }));
    // A follower that keeps retrying while the leader is down.
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let fh = follower.http();
    let body = applier_body(
        &daemon,
        json!({"maxConnectRetries": 100_000, "connectionRetryWaitTime": 0.1, "connectTimeout": 1}),
    );
    assert_eq!(
        fh.send("PUT", "/_api/replication/applier-config", &body)
            .status,
        200
    );
    assert_eq!(
        fh.send("PUT", "/_api/replication/applier-start?from=0", &json!({}))
            .status,
        200
    );
    // (round, writer, batch) -> acknowledged?
    let mut attempted: BTreeMap<(usize, usize, usize), bool> = BTreeMap::new();
    // (round, writer, batch) -> documents found after its round's restart.
    let mut settled: BTreeMap<(usize, usize, usize), usize> = BTreeMap::new();
    for round in 0..rounds {
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
        // Kill after a random number of acknowledged batches: 1 to 200.
        let target = 1 + next(200);
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
        daemon = Daemon::start_on(&leader_dir, port, &[]);
        let http = daemon.http();
        // This round's batches all, earlier ones a sample of 20: they were checked after their
        // own round, and what a restart found then must still be there (the count adds up all).
        let sample = 20.0 / attempted.len().max(1) as f64;
        for (&(r, writer, batch), &acked) in &attempted {
            let earlier = settled.get(&(r, writer, batch)).copied();
            if earlier.is_some() && next(1_000_000) as f64 >= sample * 1e6 {
                continue;
            }
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
            if let Some(earlier) = earlier {
                assert_eq!(
                    present.len(),
                    earlier,
                    "round {round}: batch {r}/{writer}/{batch} changed since its round"
                );
            }
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
            settled.insert((r, writer, batch), present.len());
        }
        let present_total: u64 = settled.values().map(|&n| n as u64).sum();
        let count = http.get("/_api/collection/load/count").json()["count"]
            .as_u64()
            .expect("count");
        assert_eq!(
            count, present_total,
            "round {round}: count matches the documents present"
        );
        let want = collection_state(&http, "load");
        common::wait_until_or(
            &format!("round {round}: the follower equals the restarted leader"),
            || collection_state(&fh, "load") == want,
            || {
                format!(
                    ": leader {want:?}, follower {:?}\n{}",
                    collection_state(&fh, "load"),
                    fh.get("/_api/replication/applier-state").json()
                )
            },
        );
    }
}
