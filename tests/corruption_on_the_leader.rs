//! Claim: a block that rots on the leader's disk after it was sealed is never shipped: the
//! leader's reader checks every block's CRC-32C, names segment and offset in its log, and the
//! follower stops with that message, holding exactly the leader's documents up to the block
//! before (nothing garbled, nothing skipped).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{applier_body, fill, wait_until_or, Daemon};
use serde_json::{json, Value};

#[test]
fn a_rotten_sealed_block_on_the_leader_is_refused_with_its_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let leader_dir = dir.path().join("leader");
    let mut leader = Daemon::start(&leader_dir, &["--wal.segment-size", "1MiB"]);
    let port = leader.port();
    common::create(&leader.http(), "docs", 2);
    fill(&leader.http(), "docs", 0, 4000, 1);
    assert_eq!(leader.terminate().code(), Some(0));

    // One bit of the second segment's first block payload flips.
    let segments = common::wal_segments(&leader_dir);
    assert!(segments.len() >= 3, "{segments:?}");
    let rotten = &segments[1];
    let mut bytes = std::fs::read(rotten).unwrap();
    let at = 64 + 40 + 100;
    bytes[at] ^= 0x10;
    std::fs::write(rotten, &bytes).unwrap();

    let leader = Daemon::start_on(&leader_dir, port, &["--wal.segment-size", "1MiB"]);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let fh = follower.http();
    common::accepted(
        fh.send(
            "PUT",
            "/_api/replication/applier-config",
            &applier_body(&leader, json!({"maxConnectRetries": 2})),
        ),
        "applier-config",
    );
    common::accepted(
        fh.send("PUT", "/_api/replication/applier-start?from=0", &json!({})),
        "applier-start",
    );
    let state = || -> Value { fh.get("/_api/replication/applier-state").json()["state"].clone() };
    wait_until_or(
        "the applier stops",
        || state()["running"] == json!(false),
        || format!("{}", state()),
    );
    // The store applies what was stored before the stop on its own time.
    wait_until_or(
        "the store has applied every block stored",
        || {
            let s = state();
            s["lastAppliedContinuousTick"] == s["lastProcessedContinuousTick"]
        },
        || format!("{}", state()),
    );
    let stopped = state();
    let message = stopped["lastError"]["errorMessage"].as_str().unwrap();
    let name = rotten.file_name().unwrap().to_str().unwrap();
    assert!(
        message.contains(name) && message.contains("corrupt at offset 64"),
        "the follower says which file and where: {stopped}"
    );
    assert!(
        leader.log().contains(name) && leader.log().contains("checksum"),
        "the leader's log says it too:\n{}",
        leader.log()
    );
    // What the follower holds is the leader's up to the last good tick: every document it has
    // is the leader's, version for version.
    let applied: u64 = stopped["lastAppliedContinuousTick"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let first_rotten: u64 = u64::from_str_radix(&name[17..33], 16).unwrap();
    assert_eq!(applied + 1, first_rotten, "{stopped}");
    let count = fh.get("/_api/collection/docs/count").json()["count"]
        .as_u64()
        .unwrap();
    assert!(count > 0 && count < 4000, "{count}");
    // Asked for the documents the follower holds (the leader cannot read those in the rotten
    // block either), the leader answers the same.
    let keys: Vec<String> = (0..4000).map(|i| format!("k{i:06}")).collect();
    let ours = fh
        .send("PUT", "/_api/document/docs?onlyget=true", &json!(keys))
        .json();
    let ours: Vec<Value> = ours
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d.get("_key").is_some())
        .cloned()
        .collect();
    assert_eq!(ours.len() as u64, count);
    let held: Vec<&Value> = ours.iter().map(|d| &d["_key"]).collect();
    let theirs = leader
        .http()
        .send("PUT", "/_api/document/docs?onlyget=true", &json!(held))
        .json();
    assert_eq!(theirs.as_array().unwrap(), &ours);
}
