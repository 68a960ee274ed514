//! Claim: a full disk under a running leader or follower costs writes, never data, and never a
//! restart. The leader refuses writes with 507 and errorNum 1104 ("filesystem full", naming the
//! file and what the system said) while its WAL or its document store has no room; a follower
//! whose disk fills keeps its applier running, says 1104 in its state and waits; once space is
//! freed both go on by themselves, every acknowledged write is there, and the follower converges
//! to exactly the leader's content.
//!
//! The small disks are tmpfs mounts the tests make (root only; skipped with a message
//! otherwise), grown with a remount to free space.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    applier_body, collection_state, converged, create, fill, mount_tmpfs, noise_text, wait_within,
    Daemon, Http,
};
use serde_json::{json, Value};

/// Runs `body` with a tmpfs of `size` mounted on `dir`, unmounting it whatever happens; false
/// (after saying so) if this process may not mount.
fn on_small_disk(dir: &Path, size: &str, body: impl FnOnce() + std::panic::UnwindSafe) -> bool {
    if !mount_tmpfs(dir, size) {
        eprintln!("skipping: cannot mount a tmpfs (not root), so no small disk to fill");
        return false;
    }
    let result = std::panic::catch_unwind(body);
    let _ = Command::new("umount").arg("-l").arg(dir).status();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    true
}

/// Frees space on the tmpfs at `dir` by growing it to `size`.
fn grow(dir: &Path, size: &str) {
    let grown = Command::new("mount")
        .args(["-o", &format!("remount,size={size}")])
        .arg(dir)
        .status()
        .unwrap();
    assert!(grown.success(), "remount {}", dir.display());
}

/// 100 documents of about 1 KB that compress little, keys `b{batch}-{i}`.
fn batch_of(batch: u64, state: &mut u64) -> Value {
    let docs: Vec<Value> = (0..100)
        .map(|i| json!({"_key": format!("b{batch}-{i}"), "batch": batch, "t": noise_text(state, 64)}))
        .collect();
    json!(docs)
}

fn applier_state(http: &Http) -> Value {
    http.get("/_api/replication/applier-state?global=true")
        .json()["state"]
        .clone()
}

/// Asserts that `answer` is the full-disk refusal: 507, errorNum 1104, the system's words.
fn assert_full(status: u16, body: &Value) {
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["errorNum"], json!(1104), "{body}");
    let message = body["errorMessage"].as_str().unwrap();
    assert!(
        message.starts_with("filesystem full: ") && message.contains("No space left on device"),
        "{message}"
    );
}

// Goal: the leader's disk fills under writes (documents kept in the store too, flushed often,
// so both the WAL's next segment and the store's files meet it): each refused write is told 1104,
// nothing acknowledged is lost, and once space is freed writes go on without a restart.
#[test]
fn a_full_leader_refuses_writes_with_1104_and_takes_them_again_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    on_small_disk(&small.clone(), "48m", move || {
        let leader = Daemon::start(
            &small.join("leader"),
            &[
                "--rocksdb.documents-in-wal",
                "false",
                "--store.flush-interval",
                "0.2",
            ],
        );
        let http = leader.http();
        create(&http, "docs", 2);
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut acknowledged = Vec::new();
        let mut refused = None;
        // 48 MB holds fewer than 250 batches of 100 KB twice (WAL and store).
        for batch in 0..400u64 {
            let answer = http.send("POST", "/_api/document/docs", &batch_of(batch, &mut state));
            if answer.status == 202 {
                acknowledged.push(batch);
                continue;
            }
            assert_full(answer.status, &answer.json());
            refused = Some(batch);
            break;
        }
        let refused = refused.expect("the disk never filled");
        // While full, writes of any kind are refused alike, and reads go on.
        let answer = http.send("POST", "/_api/document/docs", &json!({"_key": "late"}));
        assert_full(answer.status, &answer.json());
        let count = http.get("/_api/collection/docs/count").json()["count"]
            .as_u64()
            .unwrap();
        assert!(count >= acknowledged.len() as u64 * 100, "{count}");

        grow(&small, "400m");
        // The store clears its error on its own (it looks for space every few seconds).
        wait_within(
            "a write is taken again after space was freed",
            Duration::from_secs(60),
            || {
                http.send("POST", "/_api/document/docs", &json!({"_key": "after"}))
                    .status
                    == 202
            },
            || format!("\nlog:\n{}", leader.log()),
        );
        for batch in refused + 1..refused + 20 {
            let answer = http.send("POST", "/_api/document/docs", &batch_of(batch, &mut state));
            assert_eq!(
                answer.status,
                202,
                "{}",
                String::from_utf8_lossy(&answer.body)
            );
            acknowledged.push(batch);
        }
        // Every acknowledged batch is whole. The refused one was logged before the store said
        // it was full, so it is either all there or all missing, never half.
        for batch in &acknowledged {
            let keys: Vec<String> = (0..100).map(|i| format!("b{batch}-{i}")).collect();
            let found = http.send("PUT", "/_api/document/docs?onlyget=true", &json!(keys));
            let docs = found.json();
            let missing = docs
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["error"] == json!(true));
            assert_eq!(missing.count(), 0, "batch {batch} lost documents");
        }
        let keys: Vec<String> = (0..100).map(|i| format!("b{refused}-{i}")).collect();
        let found = http
            .send("PUT", "/_api/document/docs?onlyget=true", &json!(keys))
            .json();
        let present = found
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["error"] != json!(true))
            .count();
        assert!(
            present == 0 || present == 100,
            "the refused batch is half there: {present}"
        );
        println!(
            "acknowledged {} batches before the disk was full; the refused one is {}",
            refused,
            if present == 0 { "absent" } else { "present" }
        );
        // A restart finds the same.
        let before = collection_state(&http, "docs");
        drop(http);
        let mut leader = leader;
        leader.terminate();
        let leader = Daemon::start(
            &small.join("leader"),
            &["--rocksdb.documents-in-wal", "false"],
        );
        assert_eq!(collection_state(&leader.http(), "docs"), before);
    });
}

// Goal: a follower's disk fills while it tails: its applier keeps running and says 1104 (not
// failedConnects, never a stop), the leader goes on taking writes, and once space is freed the
// follower catches up by itself to exactly the leader's content.
#[test]
fn a_full_follower_waits_with_1104_and_catches_up_by_itself_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let small = dir.path().join("small");
    let leader_ref = &leader;
    let small_ref = small.clone();
    on_small_disk(&small, "40m", move || {
        let leader = leader_ref;
        let small = small_ref;
        let lh = leader.http();
        create(&lh, "docs", 2);
        fill(&lh, "docs", 0, 1000, 1);
        let follower = Daemon::start(&small.join("follower"), &[]);
        let fh = follower.http();
        let body = applier_body(leader, json!({"autoStart": true}));
        assert_eq!(
            fh.send("PUT", "/_api/replication/applier-config?global=true", &body)
                .status,
            200
        );
        let started = fh.send(
            "PUT",
            "/_api/replication/applier-start?global=true&from=0",
            &json!({}),
        );
        assert_eq!(
            started.status,
            200,
            "{}",
            String::from_utf8_lossy(&started.body)
        );
        converged(leader, &follower, &[("_system", "docs")]);
        // About 60 MB more than the follower's 40 MB hold.
        fill(&lh, "docs", 1000, 61_000, 1);
        wait_within(
            "the follower's applier says its disk is full",
            Duration::from_secs(60),
            || applier_state(&fh)["lastError"]["errorNum"] == json!(1104),
            || format!("\nstate {}", applier_state(&fh)),
        );
        let state = applier_state(&fh);
        assert_eq!(state["running"], json!(true), "{state}");
        assert_eq!(state["progress"]["failedConnects"], json!(0), "{state}");
        let message = state["lastError"]["errorMessage"].as_str().unwrap();
        assert!(message.contains("No space left on device"), "{message}");
        assert!(
            state["progress"]["message"]
                .as_str()
                .unwrap()
                .starts_with("waiting for disk space: "),
            "{state}"
        );
        // The leader is not held back, and the lag shows the wait on both sides: the follower
        // is behind and not catching up (no time to catch up is given), and so says the leader.
        fill(&lh, "docs", 61_000, 62_000, 1);
        wait_within(
            "the follower says it is not catching up",
            Duration::from_secs(60),
            || {
                let state = applier_state(&fh);
                state["secondsToCatchUp"].is_null() && state["ticksBehind"].as_u64() > Some(0)
            },
            || format!("\nstate {}", applier_state(&fh)),
        );
        let client = || {
            lh.get("/_api/replication/logger-state").json()["clients"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["serverId"] != json!(""))
                .cloned()
                .unwrap()
        };
        // Received, durable and applied each stop short of the leader's last tick.
        let state = applier_state(&fh);
        let tick = |name: &str| state[name].as_str().unwrap().parse::<u64>().unwrap();
        let available = tick("lastAvailableContinuousTick");
        assert!(tick("lastReceivedContinuousTick") < available, "{state}");
        assert!(
            tick("lastProcessedContinuousTick") <= tick("lastReceivedContinuousTick"),
            "{state}"
        );
        assert!(tick("lastAppliedContinuousTick") < available, "{state}");
        let seen = client();
        assert!(seen["secondsToCatchUp"].is_null(), "{seen}");
        assert!(seen["bytesBehind"].as_u64().unwrap() > 1 << 20, "{seen}");

        grow(&small, "400m");
        converged(leader, &follower, &[("_system", "docs")]);
        let state = applier_state(&fh);
        assert_eq!(state["running"], json!(true), "{state}");
        assert_eq!(state["lastError"]["errorNum"], json!(0), "{state}");
        assert_eq!(state["secondsToCatchUp"], json!(0.0), "{state}");
        wait_within(
            "the leader sees the follower level",
            Duration::from_secs(30),
            || client()["secondsToCatchUp"] == json!(0.0),
            || format!("\nclient {}", client()),
        );
    });
}
