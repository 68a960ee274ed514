//! Claim: a block that rots on a follower's disk is caught when it is read (its CRC-32C), never
//! applied, and fetched again from the leader: the follower's log holds its leader's blocks byte
//! for byte, so the leader's copy repairs the file in place, and the follower goes on to equal
//! the leader exactly. If the leader no longer has it, the applier stops and says so.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{applier_body, converged, fill, wait_until_or, Daemon};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The sealed segments of the WAL in `dir`, oldest first.
fn sealed_segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments = common::wal_segments(dir);
    segments.pop(); // the active one
    segments
}

/// The follower's flags: its store is not flushed while a test runs, so a restart replays
/// (reads) its whole log again.
const FOLLOWER: [&str; 4] = [
    "--wal.segment-size",
    "1MiB",
    "--store.flush-interval",
    "3600",
];

/// A leader started with `leader_flags` holding 4,000 documents in `docs`, and a follower level
/// with it, killed (-9) with one bit flipped in the payload of the first block of its second
/// sealed segment, then started again. Returns them, the damaged file and its good bytes.
fn rotten_follower(dir: &Path, leader_flags: &[&str]) -> (Daemon, Daemon, PathBuf, Vec<u8>) {
    let leader = Daemon::start(&dir.join("leader"), leader_flags);
    let lh = leader.http();
    common::create(&lh, "docs", 2);
    fill(&lh, "docs", 0, 4000, 1);
    let follower_dir = dir.join("follower");
    let mut follower = Daemon::start(&follower_dir, &FOLLOWER);
    let fh = follower.http();
    common::accepted(
        fh.send(
            "PUT",
            "/_api/replication/applier-config",
            &applier_body(&leader, json!({})),
        ),
        "applier-config",
    );
    common::accepted(
        fh.send("PUT", "/_api/replication/applier-start?from=0", &json!({})),
        "applier-start",
    );
    converged(&leader, &follower, &[("_system", "docs")]);
    follower.kill9();

    let segments = sealed_segments(&follower_dir);
    assert!(segments.len() >= 3, "{segments:?}");
    let rotten = segments[1].clone();
    let good = std::fs::read(&rotten).unwrap();
    let mut bytes = good.clone();
    bytes[64 + 40 + 100] ^= 0x10;
    std::fs::write(&rotten, &bytes).unwrap();

    let follower = Daemon::start(&follower_dir, &FOLLOWER);
    let log = follower.log();
    let name = rotten.file_name().unwrap().to_str().unwrap();
    assert!(
        log.contains("damaged block") && log.contains(name) && log.contains("offset 64"),
        "the replay says which block it stopped before:\n{log}"
    );
    (leader, follower, rotten, good)
}

#[test]
fn a_rotten_block_on_a_follower_is_fetched_again_from_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (leader, follower, rotten, good) =
        rotten_follower(dir.path(), &["--wal.segment-size", "1MiB"]);
    let (lh, fh) = (leader.http(), follower.http());
    common::accepted(
        fh.send("PUT", "/_api/replication/applier-start", &json!({})),
        "applier-start",
    );
    converged(&leader, &follower, &[("_system", "docs")]);
    assert_eq!(
        std::fs::read(&rotten).unwrap(),
        good,
        "the file holds the leader's bytes again"
    );
    let log = follower.log();
    assert!(
        log.contains("repaired a damaged block with a copy from the leader"),
        "{log}"
    );
    // It goes on following.
    fill(&lh, "docs", 4000, 4500, 1);
    converged(&leader, &follower, &[("_system", "docs")]);
    let state = fh.get("/_api/replication/applier-state").json()["state"].clone();
    assert_eq!(state["running"], json!(true), "{state}");
    assert_eq!(state["lastError"]["errorNum"], json!(0), "{state}");
}

// Goal: a leader that no longer has the damaged block (retention took it) cannot repair it:
// the applier stops, names the block and says to set the follower up again; nothing of the
// damaged block is applied.
#[test]
fn a_rotten_block_the_leader_no_longer_has_stops_the_applier_with_why() {
    let dir = tempfile::tempdir().unwrap();
    let (leader, follower, rotten, good) = rotten_follower(dir.path(), &common::PRUNING);
    let (lh, fh) = (leader.http(), follower.http());
    let damaged_first: u64 =
        u64::from_str_radix(&rotten.file_name().unwrap().to_str().unwrap()[17..33], 16).unwrap();
    // The follower is down (its registration aside, which a restart renews): more writes let
    // the leader's retention take the damaged block's segment.
    fill(&lh, "docs", 4000, 6000, 2);
    wait_until_or(
        "the leader's log no longer holds the damaged block",
        || common::first_tick(&lh) > damaged_first,
        || format!("first tick {}", common::first_tick(&lh)),
    );
    let count_before = fh.get("/_api/collection/docs/count").json()["count"].clone();
    common::accepted(
        fh.send("PUT", "/_api/replication/applier-start", &json!({})),
        "applier-start",
    );
    let state = || fh.get("/_api/replication/applier-state").json()["state"].clone();
    wait_until_or(
        "the applier stops",
        || state()["running"] == json!(false),
        || format!("{}", state()),
    );
    let stopped = state();
    let message = stopped["lastError"]["errorMessage"].as_str().unwrap();
    let name = rotten.file_name().unwrap().to_str().unwrap();
    assert!(
        message.contains("damaged")
            && message.contains(name)
            && message.contains("set this follower up again"),
        "{stopped}"
    );
    assert_ne!(
        std::fs::read(&rotten).unwrap(),
        good,
        "nothing wrote over it"
    );
    // Nothing past the damaged block was applied.
    assert_eq!(
        fh.get("/_api/collection/docs/count").json()["count"],
        count_before
    );
}
