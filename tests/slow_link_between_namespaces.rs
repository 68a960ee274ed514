//! A leader in its own network namespace, joined to the follower's by a veth pair whose
//! leader-to-follower direction is limited to ~200 KB/s (`tc tbf`): one 1,000-document batch is
//! a block of ~1 MB, which takes ~5 s to cross, longer than the follower's requestTimeout of
//! 2 s. The follower must receive it anyway (the timeout is on silence, not on a frame) without
//! a single reconnect. Needs root (network namespaces, tc); elsewhere it says it was skipped.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::netns::Link;
use common::{Daemon, Http, PASSWORD};
use serde_json::{json, Value};

fn state(http: &Http) -> Value {
    http.get("/_api/replication/applier-state").json()["state"].clone()
}

/// ~1 KB documents that lz4 cannot squeeze much (a hash chain in hex).
fn batch(prefix: &str, count: usize) -> Value {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let docs: Vec<Value> = (0..count)
        .map(|i| {
            let text: String = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    format!("{:016x}", x)
                })
                .collect();
            json!({"_key": format!("{prefix}-{i}"), "text": text})
        })
        .collect();
    json!(docs)
}

#[test]
fn a_follower_on_a_slow_link_receives_frames_longer_than_its_request_timeout() {
    let link = match Link::new().and_then(|link| link.limit_rate("1600kbit").map(|()| link)) {
        Ok(link) => link,
        Err(why) => {
            eprintln!("SKIPPED: this test needs root to create a network namespace: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let leader =
        Daemon::start_in_namespace(&dir.path().join("leader"), &link.netns, &link.inside, &[]);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let (lh, fh) = (leader.http(), follower.http());
    assert_eq!(
        lh.send("POST", "/_api/collection", &json!({"name": "c"}))
            .status,
        200
    );
    let answer = fh.send(
        "PUT",
        "/_api/replication/applier-config",
        &json!({
            "endpoint": leader.endpoint(),
            "username": "root",
            "password": PASSWORD,
            "requestTimeout": 2,
            "connectionRetryWaitTime": 0.5,
        }),
    );
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    for b in 0..2 {
        let answer = lh.send("POST", "/_api/document/c", &batch(&format!("b{b}"), 1000));
        assert_eq!(answer.status, 202);
    }
    let shipped = lh.metric("tickship_wal_block_bytes_total");
    assert!(
        shipped > 1_500_000,
        "{shipped} bytes of blocks: the link must take > 7 s"
    );
    let started = Instant::now();
    let answer = fh.send("PUT", "/_api/replication/applier-start?from=0", &json!({}));
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let leader_count = lh.get("/_api/collection/c/count").json()["count"].clone();
    common::wait_within(
        "the follower catches up over the slow link",
        Duration::from_secs(120),
        || {
            let count = fh.get("/_api/collection/c/count");
            count.status == 200 && count.json()["count"] == leader_count
        },
        || format!(": {}\n{}", state(&fh), follower.log()),
    );
    let seconds = started.elapsed().as_secs_f64();
    let st = state(&fh);
    eprintln!("{shipped} bytes of blocks crossed the link in {seconds:.1} s");
    assert_eq!(st["totalFailedConnects"], json!(0), "no reconnect: {st}");
    assert_eq!(st["lastError"]["errorNum"], json!(0), "{st}");
    assert!(
        seconds > 5.0,
        "the link was limited ({shipped} bytes in {seconds:.1} s)"
    );
}
