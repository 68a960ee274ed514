//! Two real `tickshipd` processes on 127.0.0.1: a follower tails the leader over QUIC and ends up
//! with exactly the leader's documents (checksum over keys, revisions and content) through
//! stops, restarts with and without `from`, `kill -9` during apply, and a leader outage; wrong
//! credentials, a wrong pinned certificate and following itself are refused with clear errors.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{wait_until, wait_until_or, Daemon, Http, PASSWORD};
use serde_json::{json, Value};

/// The memtable size a server has in force.
const WRITE_BUFFER_BYTES: &str = "tickship_store_write_buffer_bytes";

/// Collection `c` with 1,500 documents, `a-1` updated and `a-2` removed.
fn seed(lh: &Http) {
    assert_eq!(
        lh.send("POST", "/_api/collection", &json!({"name": "c"}))
            .status,
        200
    );
    insert(lh, "c", "a", 1500);
    assert_eq!(
        lh.send("PATCH", "/_api/document/c/a-1", &json!({"patched": true}))
            .status,
        202
    );
    assert_eq!(
        lh.call("DELETE", "/_api/document/c/a-2", None, None).status,
        202
    );
}

fn insert(http: &Http, collection: &str, prefix: &str, count: usize) {
    for start in (0..count).step_by(100) {
        let docs: Vec<Value> = (start..(start + 100).min(count))
            .map(|i| json!({"_key": format!("{prefix}-{i}"), "i": i, "text": "x".repeat(i % 200)}))
            .collect();
        let answer = http.send(
            "POST",
            &format!("/_api/document/{collection}"),
            &json!(docs),
        );
        assert_eq!(
            answer.status,
            202,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    }
}

/// (count, checksum over keys + revisions + data) of `collection`, or None if it does not exist.
fn fingerprint(http: &Http, collection: &str) -> Option<(u64, String)> {
    let answer = http.get(&format!(
        "/_api/collection/{collection}/checksum?withRevisions=true&withData=true"
    ));
    if answer.status == 404 {
        return None;
    }
    let checksum = answer.json()["checksum"]
        .as_str()
        .expect("checksum")
        .to_string();
    let count = http
        .get(&format!("/_api/collection/{collection}/count"))
        .json()["count"]
        .as_u64()
        .expect("count");
    Some((count, checksum))
}

fn converge(leader: &Http, follower: &Http, collection: &str) {
    let expected = fingerprint(leader, collection).expect("leader has the collection");
    wait_until("the follower has the leader's documents", || {
        fingerprint(follower, collection).as_ref() == Some(&expected)
    });
}

/// `converge`, showing the follower's applier state and both logs if it does not.
fn converge_daemons(leader: &Daemon, follower: &Daemon, collection: &str) {
    let (lh, fh) = (leader.http(), follower.http());
    let expected = fingerprint(&lh, collection).expect("leader has the collection");
    wait_until_or(
        "the follower has the leader's documents",
        || fingerprint(&fh, collection).as_ref() == Some(&expected),
        || {
            format!(
                ": {:?} against {expected:?}; applier state {}\nfollower log:\n{}\nleader log:\n{}",
                fingerprint(&fh, collection),
                state(&fh),
                follower.log(),
                leader.log()
            )
        },
    );
}

fn state(follower: &Http) -> Value {
    follower.get("/_api/replication/applier-state").json()["state"].clone()
}

fn make_follower(follower: &Http, leader: &Daemon, extra: Value) -> Value {
    let body = common::applier_body(leader, extra);
    let answer = follower.send("PUT", "/_api/replication/make-follower", &body);
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    answer.json()
}

/// Runs `write(leader, batch)` for up to `batches` batches on another thread, `kill -9`s the
/// follower once it visibly applies them, stops the writes and starts the follower again (on the
/// same data directory, so its applier starts itself).
fn kill9_while_writing(
    follower: &mut Daemon,
    leader: &Daemon,
    batches: usize,
    write: impl Fn(&Http, usize) + Send + 'static,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, http) = (stop.clone(), leader.http());
        std::thread::spawn(move || {
            for batch in 0..batches {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                write(&http, batch);
            }
        })
    };
    let before = state(&follower.http())["lastAppliedContinuousTick"].clone();
    wait_until("the follower applies new writes", || {
        state(&follower.http())["lastAppliedContinuousTick"] != before
    });
    follower.kill9();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let dir = follower.dir.clone();
    *follower = Daemon::start(&dir, &[]);
}

/// SHA-256 of the DER certificate in a PEM file, hex: what the leader prints at start.
fn certificate_fingerprint(path: &std::path::Path) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let pem = std::fs::read_to_string(path).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn follower_converges_through_stops_restarts_and_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    // The smallest receive buffer: QUIC's window (64 KiB) is smaller than many of the leader's
    // blocks, so frames arrive across several window updates (until the kill -9 rounds below,
    // which restart it with the default).
    let mut follower = Daemon::start(
        &dir.path().join("follower"),
        &["--replication.receive-buffer-size", "65536"],
    );
    let (lh, fh) = (leader.http(), follower.http());
    // Updates and removals travel too.
    seed(&lh);

    // make-follower from an empty follower: the leader's whole log.
    let doc = make_follower(&fh, &leader, json!({}));
    assert_eq!(doc["endpoint"], json!(leader.endpoint()));
    assert_eq!(doc["state"]["lastError"]["errorNum"], json!(0), "{doc}");
    converge(&lh, &fh, "c");
    let st = state(&fh);
    assert_eq!(st["running"], json!(true));
    assert_eq!(st["phase"], json!("running"));
    // The sync stored what the leader holds (1499 documents); a removal after it is applied
    // from the log.
    assert!(st["totalDocuments"].as_u64().unwrap() >= 1499, "{st}");
    assert_eq!(st["totalRemovals"], json!(0));
    assert_eq!(
        lh.call("DELETE", "/_api/document/c/a-3", None, None).status,
        202
    );
    converge(&lh, &fh, "c");
    assert_eq!(state(&fh)["totalRemovals"], json!(1));
    // The leader lists the follower as a client.
    let logger = lh.get("/_api/replication/logger-state").json();
    let clients = logger["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "{logger}");
    let follower_id = fh.get("/_api/replication/server-id").json()["serverId"].clone();
    assert_eq!(clients[0]["serverId"], follower_id);
    // Writes on the follower are refused and point at the leader.
    let refused = fh.send("POST", "/_api/document/c", &json!({"x": 1}));
    refused.assert_error(503, 503);
    assert_eq!(
        refused.header("x-arango-endpoint"),
        Some(leader.endpoint().as_str())
    );
    // The password never comes back.
    let config = fh.get("/_api/replication/applier-config").json();
    assert!(config.get("password").is_none(), "{config}");
    assert_eq!(config["autoStart"], json!(true));

    // Caught up: the follower's memtables are the small tailing ones (2 MiB, as it keeps its
    // documents in the WAL); the leader's and a stopped follower's are
    // --rocksdb.write-buffer-size.
    wait_until("the follower sizes its memtables for tailing", || {
        fh.metric(WRITE_BUFFER_BYTES) == 2 << 20
    });
    // Neither uses transparent huge pages (`util::no_transparent_huge_pages`).
    for daemon in [&leader, &follower] {
        let pid = daemon.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        // Kernels before 6.0 do not show the flag.
        if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
            assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
        }
    }
    assert_eq!(lh.metric(WRITE_BUFFER_BYTES), 64 << 20);

    // Stop, write, start again without `from`: resumes from safeResumeTick.
    let stopped = fh
        .send("PUT", "/_api/replication/applier-stop", &json!({}))
        .json();
    assert_eq!(stopped["state"]["running"], json!(false));
    assert_eq!(fh.metric(WRITE_BUFFER_BYTES), 64 << 20);
    insert(&lh, "c", "b", 300);
    let resume = stopped["state"]["safeResumeTick"]
        .as_str()
        .unwrap()
        .to_string();
    let started = fh
        .send("PUT", "/_api/replication/applier-start", &json!({}))
        .json();
    assert_eq!(started["state"]["running"], json!(true), "{started}");
    converge(&lh, &fh, "c");

    // Stop, write, start with an explicit `from`.
    let stopped = fh
        .send("PUT", "/_api/replication/applier-stop", &json!({}))
        .json();
    let from = stopped["state"]["lastProcessedContinuousTick"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(from.parse::<u64>().unwrap() > resume.parse::<u64>().unwrap());
    insert(&lh, "c", "c", 300);
    let answer = fh.send(
        "PUT",
        &format!("/_api/replication/applier-start?from={from}"),
        &json!({}),
    );
    assert_eq!(answer.status, 200);
    converge(&lh, &fh, "c");

    // kill -9 the follower while the leader takes a load; it restarts (autoStart) and converges.
    for round in 0..3 {
        kill9_while_writing(&mut follower, &leader, 200, move |http, batch| {
            insert(http, "c", &format!("k{round}-{batch}"), 100);
        });
        converge(&lh, &follower.http(), "c");
    }
    let fh = follower.http();
    let st = state(&fh);
    assert_eq!(st["running"], json!(true), "{st}");
    assert_eq!(st["ticksBehind"], json!(0), "{st}");
}

// Also a follower storing its documents itself behind a leader keeping them in its WAL.
#[test]
fn applier_stops_after_max_connect_retries_and_resumes_when_the_leader_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Daemon::start(&dir.path().join("leader"), &[]);
    let follower = Daemon::start(
        &dir.path().join("follower"),
        &["--rocksdb.documents-in-wal", "false"],
    );
    let (lh, fh) = (leader.http(), follower.http());
    assert_eq!(
        lh.send("POST", "/_api/collection", &json!({"name": "c"}))
            .status,
        200
    );
    insert(&lh, "c", "a", 500);
    make_follower(&fh, &leader, json!({}));
    converge(&lh, &fh, "c");
    let before = fingerprint(&lh, "c");

    let port = leader.port();
    assert!(leader.terminate().success());
    // failedConnects climbs, then the applier gives up with 1400.
    wait_until("failed connects are counted", || {
        state(&fh)["progress"]["failedConnects"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
    wait_until("the applier stops after maxConnectRetries", || {
        state(&fh)["running"] == json!(false)
    });
    let st = state(&fh);
    assert_eq!(st["lastError"]["errorNum"], json!(1400), "{st}");
    assert!(
        st["lastError"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("could not connect to leader"),
        "{st}"
    );
    assert!(st["totalFailedConnects"].as_u64().unwrap() >= 4, "{st}");
    assert!(
        st["progress"]["failedConnects"].as_u64().unwrap() >= 4,
        "{st}"
    );

    // The leader comes back on the same port with more data; start resumes and converges.
    let leader = Daemon::start_on(&dir.path().join("leader"), port, &[]);
    let lh = leader.http();
    assert_eq!(fingerprint(&lh, "c"), before);
    insert(&lh, "c", "b", 500);
    let started = fh
        .send("PUT", "/_api/replication/applier-start", &json!({}))
        .json();
    assert_eq!(started["state"]["running"], json!(true), "{started}");
    converge(&lh, &fh, "c");
    assert_eq!(state(&fh)["lastError"]["errorNum"], json!(0));
}

/// `make-follower` that fails with `status` and `error_num`: the answer is the error, the
/// applier state shows it, and the server stays a leader that accepts writes (also after a
/// restart, as its applier is not left to start itself).
fn make_follower_fails(
    follower: &mut Daemon,
    leader: &str,
    extra: Value,
    (status, error_num): (u16, u64),
    message: &str,
) {
    let mut body = json!({
        "endpoint": leader,
        "username": "root",
        "password": PASSWORD,
        "connectionRetryWaitTime": 0.1,
        "maxConnectRetries": 3,
        "initialSyncMaxWaitTime": 30,
    });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    let fh = follower.http();
    let answer = fh.send("PUT", "/_api/replication/make-follower", &body);
    answer.assert_error(status, error_num);
    let text = answer.json()["errorMessage"].as_str().unwrap().to_string();
    assert!(text.contains(message), "{text}");
    assert!(text.contains("accepts writes as before"), "{text}");
    let st = state(&fh);
    assert_eq!(st["running"], json!(false), "{st}");
    assert_eq!(st["lastError"]["errorNum"], json!(error_num), "{st}");
    assert_eq!(
        fh.get("/_api/replication/applier-config").json()["autoStart"],
        json!(false)
    );
    let name = format!("local{error_num}");
    let accepts_writes = |fh: &Http| {
        let answer = fh.send("POST", "/_api/collection", &json!({"name": name}));
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        fh.call("DELETE", &format!("/_api/collection/{name}"), None, None);
    };
    accepts_writes(&fh);
    follower.terminate();
    *follower = Daemon::start(&follower.dir.clone(), &[]);
    let fh = follower.http();
    assert_eq!(state(&fh)["running"], json!(false));
    accepts_writes(&fh);
}

#[test]
fn wrong_password_wrong_fingerprint_and_self_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let lh = leader.http();
    assert_eq!(
        lh.send("POST", "/_api/collection", &json!({"name": "c"}))
            .status,
        200
    );
    insert(&lh, "c", "a", 10);

    let mut follower = Daemon::start(&dir.path().join("follower"), &[]);
    make_follower_fails(
        &mut follower,
        &leader.endpoint(),
        json!({"password": "wrong"}),
        (401, 11),
        "wrong username or password",
    );
    assert_eq!(
        fingerprint(&follower.http(), "c"),
        None,
        "nothing was replicated"
    );

    let pinned = "00".repeat(32);
    let mut pinning = Daemon::start(
        &dir.path().join("pinning"),
        &["--replication.leader-fingerprint", &pinned],
    );
    make_follower_fails(
        &mut pinning,
        &leader.endpoint(),
        json!({}),
        (500, 1400),
        "not the pinned",
    );
    assert_eq!(fingerprint(&pinning.http(), "c"), None);

    // A follower pinning the right certificate follows.
    let right = certificate_fingerprint(&dir.path().join("leader/tls/cert.pem"));
    let trusting = Daemon::start(
        &dir.path().join("trusting"),
        &["--replication.leader-fingerprint", &right],
    );
    let doc = make_follower(&trusting.http(), &leader, json!({}));
    assert_eq!(doc["state"]["lastError"]["errorNum"], json!(0), "{doc}");
    converge(&lh, &trusting.http(), "c");

    // Following itself: the leader it was pointed at is this server.
    let mut lone = Daemon::start(&dir.path().join("lone"), &[]);
    let itself = lone.endpoint();
    make_follower_fails(&mut lone, &itself, json!({}), (500, 1405), "loop detected");

    // Invalid configurations; and none at all while the applier runs.
    let answer = lone.http().send(
        "PUT",
        "/_api/replication/applier-config",
        &json!({"endpoint": ""}),
    );
    answer.assert_error(400, 1410);
    let answer = trusting.http().send(
        "PUT",
        "/_api/replication/applier-config",
        &json!({"endpoint": ""}),
    );
    answer.assert_error(400, 1411);
}

// Also a follower keeping its documents in the WAL (the default) behind a leader that stores
// them itself: the leader's blocks are compressed whole, and the follower keeps their
// documents in its store.
#[test]
fn restricted_follower_keeps_only_the_listed_collections() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(
        &dir.path().join("leader"),
        &["--rocksdb.documents-in-wal", "false"],
    );
    let mut follower = Daemon::start(&dir.path().join("follower"), &[]);
    let lh = leader.http();
    for name in ["kept", "left"] {
        assert_eq!(
            lh.send("POST", "/_api/collection", &json!({"name": name}))
                .status,
            200
        );
    }
    insert(&lh, "kept", "a", 300);
    insert(&lh, "left", "a", 200);
    let doc = make_follower(
        &follower.http(),
        &leader,
        json!({"restrictType": "include", "restrictCollections": ["kept"]}),
    );
    assert_eq!(doc["state"]["lastError"]["errorNum"], json!(0), "{doc}");
    converge(&lh, &follower.http(), "kept");
    assert_eq!(fingerprint(&follower.http(), "left"), None);
    let config = follower
        .http()
        .get("/_api/replication/applier-config")
        .json();
    assert_eq!(config["restrictType"], json!("include"), "{config}");
    assert_eq!(config["restrictCollections"], json!(["kept"]), "{config}");
    // The sync left `left` out; its writes after the sync are excluded from the log.
    insert(&lh, "left", "b", 20);
    insert(&lh, "kept", "b", 1);
    converge(&lh, &follower.http(), "kept");
    let excluded = state(&follower.http())["totalOperationsExcluded"]
        .as_u64()
        .unwrap();
    assert_eq!(excluded, 20);

    // Killed while both collections take writes, the follower replays its WAL with the same
    // restriction and goes on following `kept` only.
    kill9_while_writing(&mut follower, &leader, 100, |http, batch| {
        insert(http, "kept", &format!("k{batch}"), 100);
        insert(http, "left", &format!("k{batch}"), 100);
    });
    converge(&lh, &follower.http(), "kept");
    assert_eq!(fingerprint(&follower.http(), "left"), None);
}

// Goal: leader and follower keeping their documents only in their WALs
// (`--rocksdb.documents-in-wal`, the default) replicate with value files being made while they
// run: the follower converges, reads single documents, survives `kill -9` during apply, and
// both read every document back after a restart that turns the flag off (it is sticky).
#[test]
fn documents_kept_in_the_wal_replicate_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // Segments (4 MiB in tests) that retention lets go at once: their live documents move to
    // value files while the test runs.
    let flags = [
        "--rocksdb.documents-in-wal",
        "true",
        "--wal.historic-logfiles",
        "1",
        "--wal.file-timeout",
        "0",
        "--wal.file-timeout-initial",
        "0",
        "--store.flush-interval",
        "1",
    ];
    let mut leader = Daemon::start(&dir.path().join("leader"), &flags);
    let mut follower = Daemon::start(&dir.path().join("follower"), &flags);
    let (lh, fh) = (leader.http(), follower.http());
    seed(&lh);
    make_follower(&fh, &leader, json!({}));
    converge_daemons(&leader, &follower, "c");
    let patched = fh.get("/_api/document/c/a-1").json();
    assert_eq!(patched["patched"], json!(true), "{patched}");
    assert_eq!(
        patched["_rev"],
        lh.get("/_api/document/c/a-1").json()["_rev"]
    );
    assert_eq!(fh.get("/_api/document/c/a-2").status, 404);

    kill9_while_writing(&mut follower, &leader, 200, |http, batch| {
        insert(http, "c", &format!("k-{batch}"), 100);
    });
    converge_daemons(&leader, &follower, "c");

    // Enough for a few segments (documents that compress little); they go, and their live
    // documents are in value files.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for batch in 0..60 {
        let docs: Vec<Value> = (0..100)
            .map(|i| {
                let text: String = common::noise_text(&mut state, 256);
                json!({"_key": format!("big-{batch}-{i}"), "text": text})
            })
            .collect();
        assert_eq!(
            lh.send("POST", "/_api/document/c", &json!(docs)).status,
            202
        );
    }
    converge_daemons(&leader, &follower, "c");
    wait_until("the leader moves live documents to value files", || {
        std::fs::read_dir(dir.path().join("leader").join("store-values"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().ends_with(".val"))
            })
            .unwrap_or(false)
    });
    assert_eq!(fingerprint(&lh, "c"), fingerprint(&follower.http(), "c"));

    // Restarted with the flag off, both still read their documents from their WALs.
    let expected = fingerprint(&lh, "c");
    let leader_dir = dir.path().join("leader");
    let follower_dir = dir.path().join("follower");
    assert!(leader.terminate().success(), "{}", leader.log());
    assert!(follower.terminate().success(), "{}", follower.log());
    // Any port: this checks what each reads back, not that they find each other again.
    let off = ["--rocksdb.documents-in-wal", "false"];
    let leader = Daemon::start(&leader_dir, &off);
    let follower = Daemon::start(&follower_dir, &off);
    assert_eq!(fingerprint(&leader.http(), "c"), expected);
    assert_eq!(fingerprint(&follower.http(), "c"), expected);
    assert_eq!(
        follower.http().get("/_api/document/c/a-1").json()["patched"],
        json!(true)
    );
}

/// `_id` of `key` read every way a client reads it: GET, `onlyget`, and `returnOld` of a patch.
fn ids_read_back(http: &Http, collection: &str, key: &str) -> [Value; 3] {
    let get = http
        .get(&format!("/_api/document/{collection}/{key}"))
        .json()["_id"]
        .clone();
    let onlyget = http
        .send(
            "PUT",
            &format!("/_api/document/{collection}?onlyget=true"),
            &json!([key]),
        )
        .json()[0]["_id"]
        .clone();
    let old = http
        .send(
            "PATCH",
            &format!("/_api/document/{collection}/{key}?returnOld=true"),
            &json!({"touched": true}),
        )
        .json()["old"]["_id"]
        .clone();
    [get, onlyget, old]
}

// Goal: after a rename, `_id` names the collection's current name for documents written before
// it, on the leader and on a follower, whether documents live in the WAL or in the store.
#[test]
fn ids_name_the_current_collection_after_a_rename() {
    for in_wal in ["true", "false"] {
        let dir = tempfile::tempdir().unwrap();
        let flags = ["--rocksdb.documents-in-wal", in_wal];
        let leader = Daemon::start(&dir.path().join("leader"), &flags);
        let follower = Daemon::start(&dir.path().join("follower"), &flags);
        let (lh, fh) = (leader.http(), follower.http());
        assert_eq!(
            lh.send("POST", "/_api/collection", &json!({"name": "before"}))
                .status,
            200
        );
        insert(&lh, "before", "a", 10);
        make_follower(&fh, &leader, json!({}));
        converge_daemons(&leader, &follower, "before");
        let renamed = lh.send(
            "PUT",
            "/_api/collection/before/rename",
            &json!({"name": "after"}),
        );
        assert_eq!(renamed.status, 200, "{}", renamed.json());
        insert(&lh, "after", "b", 10);
        converge_daemons(&leader, &follower, "after");
        let expected = [json!("after/a-1"), json!("after/a-1"), json!("after/a-1")];
        assert_eq!(
            ids_read_back(&lh, "after", "a-1"),
            expected,
            "leader, in_wal={in_wal}"
        );
        assert_eq!(
            fh.get("/_api/document/after/a-2").json()["_id"],
            json!("after/a-2"),
            "follower, in_wal={in_wal}"
        );
        // The follower refuses the PATCH, so read GET and onlyget there.
        let onlyget = fh
            .send(
                "PUT",
                "/_api/document/after?onlyget=true",
                &json!(["a-3", "b-3"]),
            )
            .json();
        assert_eq!(onlyget[0]["_id"], json!("after/a-3"), "{onlyget}");
        assert_eq!(onlyget[1]["_id"], json!("after/b-3"), "{onlyget}");
        assert_eq!(fh.get("/_api/document/before/a-2").status, 404);
    }
}
