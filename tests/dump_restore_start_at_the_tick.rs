//! The manual's Approach 2, as a user runs it: `tickship dump` of a leader taking writes, `tickship
//! restore` into a new server, `tickship replication properties` and `start --from N` with the
//! printed tick; the follower then holds exactly the leader's documents — keys, revisions and
//! data — including what was inserted, updated and removed during and after the dump, and
//! collections created and dropped after it. Also: python-free checks of the dump directory
//! (arangodump's layout) and of inventory/dump answers through a batch.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{tickship_on, wait_until_or, Daemon, Http, Run, PASSWORD};

fn tickship(server: &Daemon, args: &[&str]) -> Run {
    tickship_on(server, PASSWORD, args)
}
use serde_json::{json, Value};

use common::ok;

use common::collection_state as state_of;

fn insert(http: &Http, collection: &str, docs: Value) {
    let answer = http.send("POST", &format!("/_api/document/{collection}"), &docs);
    assert!(
        answer.status == 201 || answer.status == 202,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

fn users(from: u64, to: u64, version: u64) -> Value {
    Value::Array(
        (from..to)
            .map(|i| json!({"_key": format!("u{i:05}"), "v": version, "pad": "x".repeat(200)}))
            .collect(),
    )
}

fn tick_printed(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Last tick provided by server is: "))
        .unwrap_or_else(|| panic!("no tick line in {stdout}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn dump_restore_and_start_from_the_tick_converge_with_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let lh = leader.http();
    for (name, kind) in [("users", 2), ("knows", 3), ("dropped", 2)] {
        let answer = lh.send(
            "POST",
            "/_api/collection",
            &json!({"name": name, "type": kind}),
        );
        assert_eq!(answer.status, 200);
    }
    for start in (0..3000).step_by(500) {
        insert(&lh, "users", users(start, start + 500, 1));
    }
    let edges: Vec<Value> = (0..400)
        .map(|i| json!({"_key": format!("e{i}"), "_from": format!("users/u{i:05}"), "_to": format!("users/u{:05}", i + 1)}))
        .collect();
    insert(&lh, "knows", Value::Array(edges));
    insert(&lh, "dropped", json!([{"_key": "a"}]));

    // Writes go on while the dump runs: new documents, new versions, removals.
    let dump_dir = dir.path().join("dump");
    let dumping = AtomicBool::new(true);
    let dump = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut round = 0u64;
            while dumping.load(Ordering::Acquire) && round < 200 {
                insert(&lh, "users", users(5000 + round * 10, 5010 + round * 10, 1));
                insert(&lh, "users", users(round * 10, round * 10 + 5, 2));
                lh.call(
                    "DELETE",
                    &format!("/_api/document/users/u{:05}", 2000 + round),
                    None,
                    None,
                );
                round += 1;
            }
            round
        });
        let run = tickship(
            &leader,
            &[
                "dump",
                "--output-directory",
                dump_dir.to_str().unwrap(),
                "--threads",
                "2",
                "--initial-batch-size",
                "128KiB",
                "--batch-size",
                "256KiB",
            ],
        );
        dumping.store(false, Ordering::Release);
        let rounds = writer.join().unwrap();
        assert!(rounds > 0, "writes ran during the dump");
        run
    });
    let stdout = ok(dump, "tickship dump");
    let tick = tick_printed(&stdout);
    assert!(tick > 0);
    for line in [
        "Connected to ArangoDB '",
        "Writing dump to output directory '",
        "# Dumping document collection 'users'...",
        "# Dumping edge collection 'knows'...",
        "Processed 3 collection(s)",
    ] {
        assert!(stdout.contains(line), "{line:?} in {stdout}");
    }
    check_layout(&dump_dir, tick);

    // After the dump: more versions, removals, a new collection, a dropped one.
    insert(&lh, "users", users(100, 300, 3));
    for i in 300..320 {
        lh.call(
            "DELETE",
            &format!("/_api/document/users/u{i:05}"),
            None,
            None,
        );
    }
    assert_eq!(
        lh.send("POST", "/_api/collection", &json!({"name": "later"}))
            .status,
        200
    );
    insert(&lh, "later", json!([{"_key": "l1"}, {"_key": "l2"}]));
    assert_eq!(
        lh.call("DELETE", "/_api/collection/dropped", None, None)
            .status,
        200
    );

    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let fh = follower.http();
    let restored = ok(
        tickship(
            &follower,
            &["restore", "--input-directory", dump_dir.to_str().unwrap()],
        ),
        "tickship restore",
    );
    assert!(restored.contains("Processed 3 collection(s)"), "{restored}");
    assert_eq!(
        fh.get("/_api/replication/logger-state").json()["state"]["lastLogTick"],
        json!("1"),
        "the restore took no tick; the log's floor moved past its empty start"
    );
    let config = json!({"endpoint": leader.endpoint(), "username": "root", "password": PASSWORD});
    ok(
        tickship(
            &follower,
            &["replication", "properties", &config.to_string()],
        ),
        "replication properties",
    );
    ok(
        tickship(
            &follower,
            &["replication", "start", "--from", &tick.to_string()],
        ),
        "replication start --from",
    );
    for collection in ["users", "knows", "later", "dropped"] {
        wait_until_or(
            &format!("the follower's '{collection}' equals the leader's"),
            || state_of(&fh, collection) == state_of(&lh, collection),
            || {
                format!(
                    "leader {:?}, follower {:?}, applier {}",
                    state_of(&lh, collection),
                    state_of(&fh, collection),
                    fh.get("/_api/replication/applier-state").json()
                )
            },
        );
    }
    // Revisions came from the leader, also of documents only the dump brought.
    let leader_doc = lh.get("/_api/document/users/u02900").json();
    let follower_doc = fh.get("/_api/document/users/u02900").json();
    assert_eq!(leader_doc, follower_doc);
    let state = fh.get("/_api/replication/applier-state").json();
    assert_eq!(state["state"]["lastError"]["errorNum"], json!(0), "{state}");
}

/// arangodump's layout: dump.json with the tick, ENCRYPTION, per collection a structure file
/// and a data file named `<name>_<md5>`.
fn check_layout(dir: &Path, tick: u64) {
    let dump: Value =
        serde_json::from_slice(&std::fs::read(dir.join("dump.json")).unwrap()).unwrap();
    assert_eq!(dump["lastTickAtDumpStart"], json!(tick.to_string()));
    assert_eq!(dump["database"], json!("_system"));
    assert_eq!(
        std::fs::read_to_string(dir.join("ENCRYPTION")).unwrap(),
        "none"
    );
    // md5("users") = 9bc65c2abec141778ffaa729489f3e87
    let stem = dir.join("users_9bc65c2abec141778ffaa729489f3e87");
    let structure: Value =
        serde_json::from_slice(&std::fs::read(stem.with_extension("structure.json")).unwrap())
            .unwrap();
    assert_eq!(structure["parameters"]["name"], json!("users"));
    assert!(structure["indexes"].is_array());
    let data = std::fs::read_to_string(stem.with_extension("data.json")).unwrap();
    let first: Value = serde_json::from_str(data.lines().next().unwrap()).unwrap();
    assert!(
        first["_key"].is_string() && first["_rev"].is_string(),
        "{first}"
    );
    // md5("knows"); edges keep _from and _to.
    let knows =
        std::fs::read_to_string(dir.join("knows_6047cc85618dc1f4307e80ecfb65e5a6.data.json"))
            .unwrap();
    assert!(knows.contains("\"_from\":\"users/") && knows.contains("\"_to\":"));
}

/// A restore whose server is killed half way, run again with `--overwrite`, leaves exactly the
/// dump's documents (keys, revisions, data); a follower restored so then tails from the tick.
#[test]
fn a_restore_killed_half_way_and_run_again_holds_exactly_the_dump() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let lh = leader.http();
    common::create(&lh, "docs", 2);
    common::fill(&lh, "docs", 0, 20_000, 1);
    let dump_dir = dir.path().join("dump");
    let stdout = ok(
        tickship(
            &leader,
            &["dump", "--output-directory", dump_dir.to_str().unwrap()],
        ),
        "tickship dump",
    );
    let tick = tick_printed(&stdout);

    let target_dir = dir.path().join("target");
    let mut target = Daemon::start(&target_dir, &[]);
    let port = target.port();
    let restore = |target: &Daemon, overwrite: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tickship"))
            .args(["--server.endpoint", &target.endpoint()])
            .args(["--server.password", PASSWORD])
            .args(["restore", "--input-directory", dump_dir.to_str().unwrap()])
            .args(["--batch-size", "64KiB", "--overwrite", overwrite])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = restore(&target, "false");
    let th = target.http();
    wait_until_or(
        "the restore is a quarter through",
        || {
            let count = th.get("/_api/collection/docs/count");
            count.status == 200 && count.json()["count"].as_u64() > Some(5_000)
        },
        String::new,
    );
    target.kill9();
    let cut = first.wait_with_output().unwrap();
    assert!(
        !cut.status.success(),
        "the restore fails with its server: {}",
        String::from_utf8_lossy(&cut.stdout)
    );

    let target = Daemon::start_on(&target_dir, port, &[]);
    let th = target.http();
    let (count, _) = state_of(&th, "docs").unwrap();
    assert!(count < 20_000, "the kill cut the restore short: {count}");
    let again = restore(&target, "true").wait_with_output().unwrap();
    assert!(
        again.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(state_of(&th, "docs"), state_of(&lh, "docs"));

    // Writes after the dump reach it from the dump's tick.
    common::fill(&lh, "docs", 19_000, 21_000, 2);
    ok(
        tickship(
            &target,
            &[
                "replication",
                "properties",
                &format!(
                    r#"{{"endpoint": "{}", "username": "root", "password": "{PASSWORD}"}}"#,
                    leader.endpoint()
                ),
            ],
        ),
        "replication properties",
    );
    ok(
        tickship(
            &target,
            &["replication", "start", "--from", &tick.to_string()],
        ),
        "replication start",
    );
    common::converged(&leader, &target, &[("_system", "docs")]);
}
