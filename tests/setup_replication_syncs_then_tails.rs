//! The manual's Approach 1, as a user runs it: `tickship replication setup --global LEADER` (make-follower
//! with a sync) on an empty follower of a leader whose WAL was pruned, on a follower restored from
//! a dump (`--incremental`: only what changed moves), after a kill -9 in the middle of a sync,
//! and on a follower that fell behind the leader's retention (1414, or autoResync). Equality is
//! the collection checksum with revisions and data, and the count, on both servers.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{tickship_on, wait_until_or, wait_within, Daemon, Http, Run, PASSWORD};
use serde_json::{json, Value};
use std::time::Duration;

/// A leader that deletes WAL segments as soon as it may, and forgets stopped followers at once.
const PRUNING: [&str; 10] = [
    "--wal.historic-logfiles",
    "0",
    "--wal.file-timeout",
    "1",
    "--wal.file-timeout-initial",
    "0",
    "--store.flush-interval",
    "1",
    "--replication.client-ttl",
    "1",
];

fn tickship(server: &Daemon, args: &[&str]) -> Run {
    tickship_on(server, PASSWORD, args)
}

use common::ok;

fn remove(http: &Http, collection: &str, keys: impl Iterator<Item = u64>) {
    let keys: Vec<String> = keys.map(|i| format!("k{i:06}")).collect();
    let answer = http.send(
        "DELETE",
        &format!("/_api/document/{collection}"),
        &json!(keys),
    );
    assert!(answer.status == 200 || answer.status == 202);
}

use common::collection_state as state_of;
use common::{converged, create, fill, first_tick, in_database};

/// `tickship replication setup --global` on `follower` from `leader`.
fn setup(follower: &Daemon, leader: &Daemon) -> Run {
    tickship(
        follower,
        &["replication", "setup", "--global", &leader.endpoint()],
    )
}

/// `tickship dump` of `leader` into `dir`/dump, restored into a new server in `dir`/restored.
fn dumped_and_restored(leader: &Daemon, dir: &std::path::Path) -> Daemon {
    let dump_dir = dir.join("dump");
    ok(
        tickship(
            leader,
            &["dump", "--output-directory", dump_dir.to_str().unwrap()],
        ),
        "dump",
    );
    let restored = Daemon::start(&dir.join("restored"), &[]);
    ok(
        tickship(
            &restored,
            &["restore", "--input-directory", dump_dir.to_str().unwrap()],
        ),
        "restore",
    );
    restored
}

/// `tickship replication setup --global --incremental` on `follower` from `leader`.
fn setup_incremental(follower: &Daemon, leader: &Daemon) -> Run {
    tickship(
        follower,
        &[
            "replication",
            "setup",
            "--global",
            &leader.endpoint(),
            "--incremental",
        ],
    )
}

/// Value files in the store of the server with data directory `dir` whose names start with
/// `prefix` (`4000`: installed by a physical sync).
fn value_files(dir: &std::path::Path, prefix: &str) -> usize {
    std::fs::read_dir(dir.join("store-values"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with(prefix) && name.ends_with(".val")
        })
        .count()
}

fn applier_state(http: &Http) -> Value {
    http.get("/_api/replication/applier-state?global=true")
        .json()["state"]
        .clone()
}

fn sync_bytes(http: &Http) -> u64 {
    applier_state(http)["initialSync"]["bytesReceived"]
        .as_u64()
        .unwrap()
}

#[test]
fn an_empty_follower_of_a_pruned_leader_syncs_then_tails() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &PRUNING);
    let lh = leader.http();
    create(&lh, "docs", 2);
    create(&lh, "links", 3);
    assert_eq!(
        lh.send("POST", "/_api/database", &json!({"name": "other"}))
            .status,
        201
    );
    let oh = in_database(&leader, "other");
    create(&oh, "o", 2);
    fill(&lh, "docs", 0, 9000, 1);
    fill(&oh, "o", 0, 300, 1);
    let edges: Vec<Value> = (0..300)
        .map(|i| json!({"_key": format!("e{i}"), "_from": format!("docs/k{i:06}"), "_to": "docs/k000000"}))
        .collect();
    assert_eq!(
        lh.send("POST", "/_api/document/links", &json!(edges))
            .status,
        202
    );
    fill(&lh, "docs", 100, 400, 2);
    remove(&lh, "docs", 500..600);
    wait_until_or(
        "retention deletes the leader's first WAL segments",
        || first_tick(&lh) > 1,
        || format!("first tick {}", first_tick(&lh)),
    );

    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let fh = follower.http();
    let stdout = ok(setup(&follower, &leader), "replication setup");
    let state: Value = serde_json::from_str(
        &stdout[stdout
            .find("{\n")
            .unwrap_or_else(|| panic!("no state in {stdout}"))..],
    )
    .unwrap();
    assert_eq!(state["state"]["running"], json!(true), "{state}");
    assert_eq!(state["state"]["phase"], json!("running"), "{state}");
    assert_eq!(state["state"]["lastError"]["errorNum"], json!(0), "{state}");
    let all = [("_system", "docs"), ("_system", "links"), ("other", "o")];
    for (db, collection) in all {
        let (l, f) = (in_database(&leader, db), in_database(&follower, db));
        assert_eq!(
            state_of(&l, collection),
            state_of(&f, collection),
            "{db}/{collection} equal when setup returns"
        );
    }
    let stored = fh.metric("tickship_replication_initial_sync_documents");
    assert_eq!(stored, 8900 + 300 + 300, "documents the sync stored");
    assert!(fh.metric("tickship_replication_initial_sync_bytes") > 8_900_000);
    // The sync copied the leader's files (`--replication.sync-copy-files`, on by default): they
    // are the follower's value files now, named in the range kept for them, and the copies'
    // staging directory is gone.
    let follower_dir = dir.path().join("follower");
    let installed = value_files(&follower_dir, "4000");
    assert!(
        installed >= 2,
        "{installed} value files copied from the leader"
    );
    assert!(!follower_dir.join("sync-files").exists());

    // It tails: new writes, removals, a new collection.
    fill(&lh, "docs", 9000, 9500, 3);
    remove(&lh, "docs", 0..50);
    create(&lh, "later", 2);
    fill(&lh, "later", 0, 20, 1);
    converged(
        &leader,
        &follower,
        &[("_system", "docs"), ("_system", "later")],
    );
    // Its writes are refused: it is a follower.
    let refused = fh.send("POST", "/_api/document/docs", &json!({"_key": "mine"}));
    assert!(refused.status >= 400, "a follower refuses writes");
    assert_eq!(applier_state(&fh)["totalResyncs"], json!(0));

    // Cascading: a follower of the follower syncs from it and tails it.
    let second = Daemon::start(&dir.path().join("second"), &[]);
    ok(setup(&second, &follower), "setup from a follower");
    fill(&lh, "docs", 9500, 9600, 4);
    converged(&leader, &follower, &[("_system", "docs")]);
    converged(&follower, &second, &[("_system", "docs"), ("other", "o")]);
}

#[test]
fn a_follower_restored_from_a_dump_moves_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let lh = leader.http();
    create(&lh, "docs", 2);
    fill(&lh, "docs", 0, 6000, 1);
    // A collection the leader empties after the dump: the follower must empty it too.
    create(&lh, "emptied", 2);
    fill(&lh, "emptied", 0, 300, 1);
    let restored = dumped_and_restored(&leader, dir.path());
    // 1% of the documents change after the dump: new versions, removals, new ones.
    fill(&lh, "docs", 1000, 1040, 2);
    remove(&lh, "docs", 3000..3010);
    fill(&lh, "docs", 6000, 6010, 1);
    // And at the edges of the compare's chunks of 4,096 keys: before the leader's first key,
    // and right after its first chunk (whose last key is then k004110), so that this server
    // holds keys outside every chunk of the leader's.
    remove(&lh, "docs", 0..5);
    remove(&lh, "docs", 4111..4112);
    remove(&lh, "emptied", 0..300);

    ok(setup_incremental(&restored, &leader), "setup --incremental");
    converged(
        &leader,
        &restored,
        &[("_system", "docs"), ("_system", "emptied")],
    );
    let incremental = sync_bytes(&restored.http());
    // The changes came from the leader's log (the keys it changed after the dump, checked by the
    // collections' digests), without comparing key ranges.
    let sync = &applier_state(&restored.http())["initialSync"];
    assert_eq!(
        sync["keysFromLog"],
        json!(40 + 10 + 10 + 5 + 1 + 300),
        "{sync}"
    );
    assert_eq!(sync["rangesCompared"], json!(0), "{sync}");

    let empty = Daemon::start(&dir.path().join("empty"), &[]);
    ok(setup(&empty, &leader), "full setup");
    converged(&leader, &empty, &[("_system", "docs")]);
    let full = sync_bytes(&empty.http());
    println!("bytes received: incremental {incremental}, full {full}");
    assert!(full > 6_000_000, "a full sync moves the documents: {full}");
    assert!(
        incremental * 10 < full,
        "an incremental sync after 1% changed moves under a tenth of a full one: {incremental} \
         vs {full}"
    );
    assert_eq!(
        restored
            .http()
            .metric("tickship_replication_initial_sync_removed"),
        316
    );
    // Both tail.
    fill(&lh, "docs", 7000, 7100, 1);
    converged(&leader, &restored, &[("_system", "docs")]);
    converged(&leader, &empty, &[("_system", "docs")]);
}

// Goal: the leader's log and the digests are a shortcut, never a shortcut past a difference: a
// restored server that also took a write of its own (which no log of the leader's names) ends
// equal to the leader, by comparing keys where the digests disagree.
#[test]
fn a_restored_follower_with_a_write_of_its_own_is_compared_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let lh = leader.http();
    create(&lh, "docs", 2);
    fill(&lh, "docs", 0, 3000, 1);
    create(&lh, "still", 2);
    fill(&lh, "still", 0, 100, 1);
    let restored = dumped_and_restored(&leader, dir.path());
    // The restored server is still a leader of its own: it takes a write.
    let rh = restored.http();
    let answer = rh.send("PUT", "/_api/document/docs/k000007", &json!({"v": "mine"}));
    assert!(
        answer.status == 201 || answer.status == 202,
        "{}",
        answer.status
    );
    fill(&lh, "docs", 2000, 2030, 2);
    ok(setup_incremental(&restored, &leader), "setup --incremental");
    converged(
        &leader,
        &restored,
        &[("_system", "docs"), ("_system", "still")],
    );
    let sync = &applier_state(&rh)["initialSync"];
    assert_eq!(sync["keysFromLog"], json!(30), "{sync}");
    assert!(sync["rangesCompared"].as_u64().unwrap() > 0, "{sync}");
    // `still` was equal by its digest: nothing of it moved, and it was not compared.
    assert_eq!(
        sync["documents"],
        json!(30 + 1),
        "the 30 changed on the leader, and the one written here: {sync}"
    );
    fill(&lh, "docs", 5000, 5010, 1);
    converged(&leader, &restored, &[("_system", "docs")]);
}

// Goal: a follower set up again after it stopped tailing the same leader (the benchmark's
// incremental setup, and the common case in production) takes the leader's log as it is rather
// than fetching documents, collection changes included, and still ends equal, checked by digests.
#[test]
fn a_follower_set_up_again_continues_its_log_from_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let lh = leader.http();
    create(&lh, "docs", 2);
    fill(&lh, "docs", 0, 4000, 1);
    create(&lh, "gone", 2);
    fill(&lh, "gone", 0, 50, 1);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let fh = follower.http();
    ok(setup(&follower, &leader), "full setup");
    converged(
        &leader,
        &follower,
        &[("_system", "docs"), ("_system", "gone")],
    );
    ok(
        tickship(&follower, &["replication", "stop", "--global"]),
        "replication stop",
    );
    // While it is stopped: new versions, removals, new documents, a collection dropped and one
    // created.
    fill(&lh, "docs", 1000, 1040, 2);
    remove(&lh, "docs", 3000..3010);
    fill(&lh, "docs", 4000, 4020, 1);
    assert_eq!(
        lh.send("DELETE", "/_api/collection/gone", &json!({}))
            .status,
        200
    );
    create(&lh, "fresh", 2);
    fill(&lh, "fresh", 0, 30, 1);
    let leader_tick = lh.get("/_api/replication/logger-state").json()["state"]["lastLogTick"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();

    ok(setup_incremental(&follower, &leader), "setup --incremental");
    converged(
        &leader,
        &follower,
        &[("_system", "docs"), ("_system", "fresh")],
    );
    assert_eq!(
        fh.get("/_api/collection/gone").status,
        404,
        "the drop came with the log"
    );
    let sync = &applier_state(&fh)["initialSync"];
    let ticks = sync["ticksFromLog"].as_u64().unwrap();
    assert!(
        ticks > 0 && ticks <= leader_tick,
        "the log was continued: {sync}"
    );
    assert_eq!(
        sync["keysFromLog"],
        json!(0),
        "no document fetched by key: {sync}"
    );
    assert_eq!(sync["rangesCompared"], json!(0), "nothing compared: {sync}");
    assert_eq!(
        sync["documents"],
        json!(40 + 20 + 30),
        "documents applied from the log: {sync}"
    );
    assert_eq!(sync["removed"], json!(10), "{sync}");
    // It tails on.
    fill(&lh, "docs", 5000, 5010, 1);
    converged(&leader, &follower, &[("_system", "docs")]);
    assert_eq!(applier_state(&fh)["lastError"]["errorNum"], json!(0));
}

#[test]
fn a_sync_killed_half_way_on_either_side_resumes_with_what_arrived() {
    killed_half_way_resumes("true");
}

// The same with the leader's documents copied rather than its files.
#[test]
fn a_sync_copying_documents_killed_half_way_resumes_with_what_arrived() {
    killed_half_way_resumes("false");
}

/// A sync (`--replication.sync-copy-files` as `copy_files`) killed on the follower's side, then
/// on the leader's, goes on with what had arrived and ends equal.
fn killed_half_way_resumes(copy_files: &str) {
    let dir = tempfile::tempdir().unwrap();
    let leader_dir = dir.path().join("leader");
    let mut leader = Daemon::start(&leader_dir, &[]);
    let port = leader.port();
    let lh = leader.http();
    create(&lh, "docs", 2);
    fill(&lh, "docs", 0, 24_000, 1);
    // About 24 MB in pieces of at most 8 MB at 4 MB/s: seconds to stop it part-way, twice.
    let limited = [
        "--replication.sync-max-rate",
        "4MB",
        "--replication.sync-copy-files",
        copy_files,
    ];
    let follower_dir = dir.path().join("follower");
    let mut follower = Daemon::start(&follower_dir, &limited);
    let fh = follower.http();
    let body = json!({"endpoint": leader.endpoint(), "password": PASSWORD,
                      "connectionRetryWaitTime": 0.2, "maxConnectRetries": 100});
    // make-follower answers once the sync is done; the follower dies before that.
    let setup = {
        let http = Http::new(fh.base.clone());
        std::thread::spawn(move || {
            http.try_send("PUT", "/_api/replication/make-follower?global=true", &body)
        })
    };
    wait_until_or(
        "a sixth of the bytes arrived",
        || sync_bytes(&fh) >= 4_000_000,
        || format!("{}", applier_state(&fh)),
    );
    follower.kill9();
    assert!(setup.join().unwrap().is_err(), "the follower died mid-sync");
    let follower = Daemon::start(&follower_dir, &limited);
    let fh = follower.http();
    // The restarted follower goes on by itself (make-follower set autoStart).
    wait_until_or(
        "the resumed sync received a sixth more",
        || sync_bytes(&fh) >= 4_000_000 && applier_state(&fh)["phase"] == json!("initial"),
        || format!("{}", applier_state(&fh)),
    );
    let before_leader_kill = sync_bytes(&fh);
    leader.kill9();
    let leader = Daemon::start_on(&leader_dir, port, &[]);
    wait_within(
        "the sync completes after the leader's restart",
        Duration::from_secs(120),
        || {
            applier_state(&fh)["phase"] == json!("running")
                && applier_state(&fh)["lastAvailableContinuousTick"].is_string()
        },
        || format!("{}\n{}", applier_state(&fh), follower.log()),
    );
    converged(&leader, &follower, &[("_system", "docs")]);
    // Resuming compared what had arrived: the resumed sync moved less than a whole one would.
    let resumed = sync_bytes(&fh);
    println!("bytes received by the last resumed sync: {resumed} (before the leader's kill: {before_leader_kill})");
    assert!(
        resumed < 24_000_000,
        "a resumed sync moves less than the whole collection: {resumed}"
    );
    fill(&leader.http(), "docs", 20_000, 20_100, 1);
    converged(&leader, &follower, &[("_system", "docs")]);
}

#[test]
fn a_follower_behind_retention_stops_with_1414_or_resyncs_with_auto_resync() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &PRUNING);
    let lh = leader.http();
    create(&lh, "docs", 2);
    fill(&lh, "docs", 0, 1000, 1);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let fh = follower.http();
    ok(setup(&follower, &leader), "setup");
    converged(&leader, &follower, &[("_system", "docs")]);
    ok(
        tickship(&follower, &["replication", "stop", "--global"]),
        "stop",
    );
    let stopped_at: u64 = applier_state(&fh)["lastProcessedContinuousTick"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    fill(&lh, "docs", 1000, 10_000, 2);
    wait_until_or(
        "the leader's log no longer holds the follower's tick",
        || first_tick(&lh) > stopped_at + 1,
        || format!("first tick {}, follower at {stopped_at}", first_tick(&lh)),
    );

    // Without autoResync: 1414, stopped.
    ok(
        tickship(&follower, &["replication", "start", "--global"]),
        "start",
    );
    wait_until_or(
        "the applier stops with 1414",
        || {
            let state = applier_state(&fh);
            state["running"] == json!(false) && state["lastError"]["errorNum"] == json!(1414)
        },
        || format!("{}", applier_state(&fh)),
    );
    assert_eq!(applier_state(&fh)["totalResyncs"], json!(0));

    // With it: a resync, then tailing.
    ok(
        tickship(
            &follower,
            &[
                "replication",
                "properties",
                "--global",
                r#"{"autoResync": true}"#,
            ],
        ),
        "properties",
    );
    ok(
        tickship(&follower, &["replication", "start", "--global"]),
        "start again",
    );
    converged(&leader, &follower, &[("_system", "docs")]);
    wait_until_or(
        "the follower tails after its resync",
        || {
            let state = applier_state(&fh);
            state["running"] == json!(true) && state["phase"] == json!("running")
        },
        || format!("{}", applier_state(&fh)),
    );
    let state = applier_state(&fh);
    assert_eq!(state["totalResyncs"], json!(1), "{state}");
    assert!(
        sync_bytes(&fh) < 9_500_000,
        "the resync compared what the follower had: {}",
        sync_bytes(&fh)
    );
    fill(&lh, "docs", 20_000, 20_100, 1);
    converged(&leader, &follower, &[("_system", "docs")]);
}

#[test]
fn setup_refuses_wrong_credentials_and_this_server_and_leaves_it_writable() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    create(&leader.http(), "docs", 2);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let fh = follower.http();
    let wrong = fh.send(
        "PUT",
        "/_api/replication/make-follower?global=true",
        &json!({"endpoint": leader.endpoint(), "password": "wrong"}),
    );
    wrong.assert_error(401, 11);
    let itself = fh.send(
        "PUT",
        "/_api/replication/make-follower?global=true",
        &json!({"endpoint": follower.endpoint(), "password": PASSWORD}),
    );
    itself.assert_error(500, 1405);
    let synced = fh.send(
        "PUT",
        "/_api/replication/sync?global=true",
        &json!({"endpoint": leader.endpoint(), "password": "wrong"}),
    );
    synced.assert_error(401, 11);
    // Nothing changed: it still takes writes.
    create(&fh, "mine", 2);
    assert_eq!(
        fh.send("POST", "/_api/document/mine", &json!({"_key": "a"}))
            .status,
        202
    );
}

#[test]
fn a_sync_into_a_full_disk_says_so_and_goes_on_by_itself_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    if !common::mount_tmpfs(&small, "40m") {
        eprintln!("skipping: cannot mount a tmpfs (not root)");
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let leader = Daemon::start(&dir.path().join("leader"), &[]);
        let lh = leader.http();
        create(&lh, "docs", 2);
        // About 60 MB that compress little: more than the follower's disk holds.
        fill(&lh, "docs", 0, 60_000, 1);
        let follower = Daemon::start(&small.join("follower"), &[]);
        let fh = follower.http();
        let run = setup(&follower, &leader);
        assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("No space left on device")
                && run.stderr.contains("1104")
                && run.stderr.contains("stays a follower")
                && run.stderr.contains("waits for disk space"),
            "{}",
            run.stderr
        );
        // The applier keeps running, waiting, and says why.
        let state = applier_state(&fh);
        assert_eq!(state["running"], json!(true), "{state}");
        assert_eq!(state["lastError"]["errorNum"], json!(1104), "{state}");
        let arrived = state["initialSync"]["documents"].as_u64().unwrap();
        // Space freed: the sync goes on from what had arrived, without a restart.
        let grown = std::process::Command::new("mount")
            .args(["-o", "remount,size=400m"])
            .arg(&small)
            .status()
            .unwrap();
        assert!(grown.success());
        converged(&leader, &follower, &[("_system", "docs")]);
        assert_eq!(applier_state(&fh)["lastError"]["errorNum"], json!(0));
        println!("stored before the disk was full: {arrived}");
    });
    let _ = std::process::Command::new("umount").arg(&small).status();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

// Goal: a leader file whose bytes fail their checks (damaged on the leader's disk) is refused
// with the file and offset: the sync stops, nothing of it is installed, no document stored.
#[test]
fn a_damaged_leader_file_is_refused_and_nothing_installed() {
    let dir = tempfile::tempdir().unwrap();
    let leader_dir = dir.path().join("leader");
    let leader = Daemon::start(&leader_dir, &[]);
    let lh = leader.http();
    create(&lh, "docs", 2);
    fill(&lh, "docs", 0, 3000, 1);
    // One byte in the middle of the open segment's written blocks (the WAL maps the file; the
    // write goes through the same page cache).
    let segment = std::fs::read_dir(leader_dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .expect("a segment");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .unwrap();
    let at = 1_000_000;
    let mut byte = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, at).unwrap();
    byte[0] ^= 0x5a;
    std::os::unix::fs::FileExt::write_all_at(&file, &byte, at).unwrap();

    let follower_dir = dir.path().join("follower");
    let follower = Daemon::start(&follower_dir, &[]);
    let run = setup(&follower, &leader);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("failed its checks") && run.stderr.contains("corrupt at offset"),
        "{}",
        run.stderr
    );
    let installed = value_files(&follower_dir, "");
    assert_eq!(installed, 0, "nothing of the damaged copy is installed");
    let count = follower
        .http()
        .send("GET", "/_api/collection/docs/count", &json!(null));
    assert_eq!(count.json()["count"], json!(0));
    assert!(
        follower_dir.join("sync-files").exists(),
        "the copies that arrived are kept"
    );

    // The byte repaired, the follower restarted to copy documents instead: the sync completes,
    // and what the file copy left behind is gone.
    byte[0] ^= 0x5a;
    std::os::unix::fs::FileExt::write_all_at(&file, &byte, at).unwrap();
    let mut follower = follower;
    follower.terminate();
    let follower = Daemon::start(&follower_dir, &["--replication.sync-copy-files", "false"]);
    ok(setup(&follower, &leader), "setup copying documents");
    converged(&leader, &follower, &[("_system", "docs")]);
    assert!(!follower_dir.join("sync-files").exists());
}

// Goal: a leader that keeps its documents in its store (no value files, documents beside their
// keys) is copied by its key index alone, documents included: equal, then tailing.
#[test]
fn a_leader_keeping_documents_in_its_store_is_copied_by_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(
        &dir.path().join("leader"),
        &["--rocksdb.documents-in-wal", "false"],
    );
    let lh = leader.http();
    create(&lh, "docs", 2);
    fill(&lh, "docs", 0, 2000, 1);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    ok(setup(&follower, &leader), "setup");
    converged(&leader, &follower, &[("_system", "docs")]);
    fill(&lh, "docs", 1500, 2500, 2);
    converged(&leader, &follower, &[("_system", "docs")]);
    assert!(
        follower.log().contains("copied the leader's files files=0"),
        "the key index carried the documents: {}",
        follower.log()
    );
}
