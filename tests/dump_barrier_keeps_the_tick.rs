//! The manual's warning about WAL files removed before a restored follower starts does not apply:
//! a dump's tick stays servable on a leader that deletes segments as fast as it can
//! (`--wal.historic-logfiles 0 --wal.file-timeout 1`) under heavy writes, and after a leader
//! restart; the barrier shows in logger-state and the metrics; a follower starting from the tick
//! releases it, and so does its TTL, after which the tick is gone (1414, never a silent gap).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{first_tick, wait_until, wait_until_or, Daemon, Http};
use serde_json::{json, Value};

const FLAGS: [&str; 8] = [
    "--wal.historic-logfiles",
    "0",
    "--wal.file-timeout",
    "1",
    "--wal.file-timeout-initial",
    "0",
    "--store.flush-interval",
    "1",
];

/// Writes about `megabytes` MB of documents that compress little.
fn write_heavily(http: &Http, tag: &str, megabytes: usize) {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for batch in 0..megabytes {
        let docs: Vec<Value> = (0..16)
            .map(|i| {
                let text: String = common::noise_text(&mut state, 4096)
                    .chars()
                    .take(65_000)
                    .collect();
                json!({"_key": format!("{tag}-{batch}-{i}"), "text": text})
            })
            .collect();
        let answer = http.send("POST", "/_api/document/c", &json!(docs));
        assert_eq!(
            answer.status,
            202,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    }
}

fn from_present(http: &Http, tick: u64) -> bool {
    let answer = http.get(&format!("/_api/wal/tail?from={tick}&chunkSize=1"));
    answer.header("x-arango-replication-frompresent") == Some("true")
}

fn dump_tick(http: &Http) -> u64 {
    let batch = http.send("POST", "/_api/replication/batch", &json!({"ttl": 30}));
    assert_eq!(batch.status, 200);
    let body = batch.json();
    // Only the dump barrier holds the log from here on.
    let id = body["id"].as_str().unwrap();
    assert_eq!(
        http.call(
            "DELETE",
            &format!("/_api/replication/batch/{id}"),
            None,
            None
        )
        .status,
        204
    );
    body["lastTick"].as_str().unwrap().parse().unwrap()
}

#[test]
fn a_dump_tick_survives_heavy_writes_and_a_restart_until_a_follower_starts_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Daemon::start(&dir.path().join("leader"), &FLAGS);
    let lh = leader.http();
    assert_eq!(
        lh.send("POST", "/_api/collection", &json!({"name": "c"}))
            .status,
        200
    );
    write_heavily(&lh, "before", 12);
    let tick = dump_tick(&lh);
    write_heavily(&lh, "after", 24);
    // Retention is at work: the segments before the dump's tick go…
    wait_until_or(
        "retention deletes the segments before the dump's tick",
        || first_tick(&lh) > 1,
        || format!("first tick {}, dump tick {tick}", first_tick(&lh)),
    );
    // …but not the one holding the tick after it.
    assert!(
        first_tick(&lh) <= tick + 1,
        "first {} > {}",
        first_tick(&lh),
        tick + 1
    );
    assert!(from_present(&lh, tick));
    assert_eq!(lh.metric("tickship_replication_dump_barriers"), 1);
    let clients = lh.get("/_api/replication/logger-state").json()["clients"].clone();
    assert!(
        clients
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["lastServedTick"] == json!(tick.to_string())
                && c["clientInfo"].as_str().unwrap().contains("dump barrier")),
        "{clients}"
    );

    // A restart keeps it.
    assert!(leader.terminate().success(), "{}", leader.log());
    let leader = Daemon::start(&dir.path().join("leader"), &FLAGS);
    let lh = leader.http();
    assert_eq!(lh.metric("tickship_replication_dump_barriers"), 1);
    write_heavily(&lh, "restarted", 12);
    assert!(from_present(&lh, tick));

    // A follower starting from the tick releases it (its own registration holds the log now).
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let fh = follower.http();
    let start = fh.send(
        "PUT",
        "/_api/replication/applier-config",
        &json!({"endpoint": leader.endpoint(), "password": common::PASSWORD}),
    );
    assert_eq!(start.status, 200);
    assert_eq!(
        fh.send(
            "PUT",
            &format!("/_api/replication/applier-start?from={tick}"),
            &json!({})
        )
        .status,
        200
    );
    wait_until("the follower's start releases the dump barrier", || {
        lh.metric("tickship_replication_dump_barriers") == 0
    });
}

#[test]
fn a_dump_barrier_ends_with_its_ttl_and_the_tick_is_then_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = FLAGS.to_vec();
    flags.extend(["--replication.dump-barrier-ttl", "2"]);
    let leader = Daemon::start(&dir.path().join("leader"), &flags);
    let lh = leader.http();
    assert_eq!(
        lh.send("POST", "/_api/collection", &json!({"name": "c"}))
            .status,
        200
    );
    write_heavily(&lh, "before", 6);
    let tick = dump_tick(&lh);
    assert_eq!(lh.metric("tickship_replication_dump_barriers"), 1);
    wait_until("the barrier's TTL passes", || {
        lh.metric("tickship_replication_dump_barriers") == 0
    });
    write_heavily(&lh, "after", 24);
    wait_until_or(
        "retention deletes the segment after the tick",
        || first_tick(&lh) > tick + 1,
        || format!("first tick {}, dump tick {tick}", first_tick(&lh)),
    );
    assert!(!from_present(&lh, tick));
    // A follower asking for it is told 1414, with ArangoDB's text.
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let fh = follower.http();
    fh.send(
        "PUT",
        "/_api/replication/applier-config",
        &json!({"endpoint": leader.endpoint(), "password": common::PASSWORD}),
    );
    fh.send(
        "PUT",
        &format!("/_api/replication/applier-start?from={tick}"),
        &json!({}),
    );
    wait_until_or(
        "the applier stops with 1414",
        || {
            fh.get("/_api/replication/applier-state").json()["state"]["lastError"]["errorNum"]
                == json!(1414)
        },
        || fh.get("/_api/replication/applier-state").json().to_string(),
    );
    let state = fh.get("/_api/replication/applier-state").json();
    let message = state["state"]["lastError"]["errorMessage"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("is not present (anymore?) on leader"),
        "{message}"
    );
}

// Goal: a batch that names the server it syncs (`serverId`, as a follower's sync sends it)
// replaces that server's earlier barrier, so a sync started again after a failure holds the log
// once, not once per attempt; batches without it (dumps) each keep their own.
#[test]
fn a_sync_started_again_replaces_its_earlier_barrier() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let lh = leader.http();
    let batch = |query: &str| {
        let answer = lh.send(
            "POST",
            &format!("/_api/replication/batch{query}"),
            &json!({"ttl": 30}),
        );
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    };
    batch("?serverId=42");
    batch("?serverId=42");
    assert_eq!(
        lh.metric("tickship_replication_dump_barriers"),
        1,
        "one per syncing server"
    );
    batch("?serverId=43");
    batch("");
    batch("");
    assert_eq!(lh.metric("tickship_replication_dump_barriers"), 4);
}
