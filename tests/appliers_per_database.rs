//! Per-database appliers on two real `tickshipd` processes, as the manual shows them: the
//! databases are created on the server that is to follow, then each is set up in its own
//! database (`/_db/{db}/_api/replication/make-follower`). Only those databases arrive; each
//! applier has its own state and totals; stopping one leaves the others running, and starting
//! it again catches its database up from this server's log.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{accepted as ok, applier_body, tickship_on, wait_until_or, Daemon, Http, PASSWORD};
use serde_json::{json, Value};

fn in_db(daemon: &Daemon, db: &str) -> Http {
    let mut http = daemon.http();
    http.base = format!("{}/_db/{db}", http.base);
    http
}

fn insert(http: &Http, prefix: &str, count: usize) {
    let docs: Vec<Value> = (0..count)
        .map(|i| json!({"_key": format!("{prefix}{i}"), "i": i}))
        .collect();
    ok(
        http.send("POST", "/_api/document/c", &json!(docs)),
        "insert",
    );
}

/// (count, checksum with revisions) of collection `c`, None if it (or its database) is missing.
fn fingerprint(http: &Http) -> Option<(u64, String)> {
    let answer = http.get("/_api/collection/c/checksum?withRevisions=true&withData=true");
    if answer.status != 200 {
        return None;
    }
    let count = http.get("/_api/collection/c/count").json()["count"].as_u64()?;
    Some((count, answer.json()["checksum"].as_str()?.to_string()))
}

fn converge(leader: &Http, follower: &Http, what: &str) {
    let expected = fingerprint(leader).unwrap();
    wait_until_or(
        what,
        || fingerprint(follower).as_ref() == Some(&expected),
        || format!("leader {expected:?}, follower {:?}", fingerprint(follower)),
    );
}

fn state(http: &Http) -> Value {
    http.get("/_api/replication/applier-state").json()
}

fn setup(follower: &Http, leader: &Daemon) -> Value {
    ok(
        follower.send(
            "PUT",
            "/_api/replication/make-follower",
            &applier_body(leader, json!({"maxConnectRetries": 5})),
        ),
        "make-follower",
    )
}

// Goal: a follower replicating two of a leader's three databases, each with its own applier:
// the third never arrives; stopping one database's applier leaves the other running; starting it
// again catches it up; states and totals are per database; another leader is refused (1410);
// writes to any database of the follower get 503.
#[test]
fn each_database_has_its_own_applier() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let mut follower = Daemon::start(&dir.path().join("follower"), &[]);
    let (lh, fh) = (leader.http(), follower.http());
    for db in ["a", "b", "c"] {
        ok(
            lh.send("POST", "/_api/database", &json!({"name": db})),
            "create db",
        );
        let l = in_db(&leader, db);
        ok(
            l.send("POST", "/_api/collection", &json!({"name": "c"})),
            "create c",
        );
        insert(&l, "s", 50);
    }
    // The flow users know: the databases first, on the server that is to follow.
    for db in ["a", "b"] {
        ok(
            fh.send("POST", "/_api/database", &json!({"name": db})),
            "create db here",
        );
    }
    for db in ["a", "b"] {
        let doc = setup(&in_db(&follower, db), &leader);
        assert_eq!(doc["database"], json!(db), "{doc}");
        assert_eq!(doc["state"]["running"], json!(true), "{doc}");
        assert_eq!(doc["state"]["lastError"]["errorNum"], json!(0), "{doc}");
    }
    for db in ["a", "b", "c"] {
        insert(&in_db(&leader, db), "t", 30);
    }
    converge(&in_db(&leader, "a"), &in_db(&follower, "a"), "a arrives");
    converge(&in_db(&leader, "b"), &in_db(&follower, "b"), "b arrives");
    assert_eq!(
        fh.get("/_api/database").json()["result"],
        json!(["_system", "a", "b"]),
        "c never arrives"
    );
    let written = in_db(&follower, "a").send("POST", "/_api/document/c", &json!({"x": 1}));
    assert_eq!(
        written.status, 503,
        "a follower refuses writes to any database"
    );

    // Stopping b's applier leaves a's running.
    let stopped = ok(
        in_db(&follower, "b").send("PUT", "/_api/replication/applier-stop", &json!({})),
        "stop b",
    );
    assert_eq!(stopped["state"]["running"], json!(false), "{stopped}");
    let left_at = stopped["state"]["lastAppliedContinuousTick"].clone();
    let a_before = state(&in_db(&follower, "a"))["state"]["totalDocuments"]
        .as_u64()
        .unwrap();
    insert(&in_db(&leader, "a"), "u", 20);
    insert(&in_db(&leader, "b"), "u", 20);
    converge(&in_db(&leader, "a"), &in_db(&follower, "a"), "a goes on");
    let b_state = state(&in_db(&follower, "b"));
    assert_eq!(b_state["state"]["running"], json!(false), "{b_state}");
    assert_eq!(b_state["state"]["lastAppliedContinuousTick"], left_at);
    assert_eq!(
        fingerprint(&in_db(&follower, "b")).unwrap().0,
        80,
        "b stays where it stopped"
    );
    let a_state = state(&in_db(&follower, "a"));
    assert_eq!(a_state["state"]["running"], json!(true), "{a_state}");
    assert_eq!(
        a_state["state"]["totalDocuments"].as_u64().unwrap(),
        a_before + 20,
        "a's totals count a's documents: {a_state}"
    );
    let all = fh.get("/_api/replication/applier-state-all").json();
    assert_eq!(all["a"]["state"]["running"], json!(true), "{all}");
    assert_eq!(all["b"]["state"]["running"], json!(false), "{all}");
    assert_eq!(all["b"]["database"], json!("b"), "{all}");

    // Started again, b catches up from this server's log.
    let started = ok(
        in_db(&follower, "b").send("PUT", "/_api/replication/applier-start", &json!({})),
        "start b",
    );
    assert_eq!(started["state"]["running"], json!(true), "{started}");
    converge(&in_db(&leader, "b"), &in_db(&follower, "b"), "b catches up");
    insert(&in_db(&leader, "b"), "v", 5);
    converge(
        &in_db(&leader, "b"),
        &in_db(&follower, "b"),
        "b follows again",
    );

    // The CLI follows the database, and shows them all.
    let run = tickship_on(
        &follower,
        PASSWORD,
        &["--server.database", "b", "replication", "state"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("\"database\": \"b\""), "{}", run.stdout);
    let run = tickship_on(&follower, PASSWORD, &["replication", "state", "--all"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let all: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(all["a"]["state"]["running"], json!(true), "{all}");
    assert_eq!(all["b"]["state"]["running"], json!(true), "{all}");

    // Killed while the leader writes to all three, the follower restarts with its appliers
    // (autoStart), replays its log keeping a and b only, and goes on.
    follower.kill9();
    for db in ["a", "b", "c"] {
        insert(&in_db(&leader, db), "w", 40);
    }
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let fh = follower.http();
    converge(
        &in_db(&leader, "a"),
        &in_db(&follower, "a"),
        "a after the restart",
    );
    converge(
        &in_db(&leader, "b"),
        &in_db(&follower, "b"),
        "b after the restart",
    );
    assert_eq!(
        fh.get("/_api/database").json()["result"],
        json!(["_system", "a", "b"]),
        "c never arrives"
    );

    // Another leader for a third database (`_system`'s): refused, naming the leader this server
    // follows.
    let other = in_db(&follower, "_system");
    ok(
        other.send(
            "PUT",
            "/_api/replication/applier-config",
            &json!({"endpoint": "tcp://127.0.0.1:9", "password": PASSWORD}),
        ),
        "configure other",
    );
    let refused = other.send("PUT", "/_api/replication/applier-start?from=1", &json!({}));
    refused.assert_error(400, 1410);
    let message = refused.json()["errorMessage"].as_str().unwrap().to_string();
    assert!(message.contains(&leader.endpoint()), "{message}");
    // `database` naming another database is refused with the reason.
    let refused = other.send(
        "PUT",
        "/_api/replication/applier-config",
        &json!({"endpoint": leader.endpoint(), "database": "a"}),
    );
    refused.assert_error(400, 1410);

    // The server-level applier cannot start while database appliers apply.
    let refused = fh.send(
        "PUT",
        "/_api/replication/applier-start?global=true",
        &json!({}),
    );
    refused.assert_error(400, 1411);
    // global is for _system only.
    in_db(&follower, "a")
        .send(
            "PUT",
            "/_api/replication/applier-state?global=true",
            &json!({}),
        )
        .assert_error(403, 403);
}

// Goal: a server that took writes as a leader is told what to do when started at a tick before
// its own (never a 1401 later, never a silent gap), and a setup in the database (which syncs
// first) makes it follow.
#[test]
fn a_server_with_writes_of_its_own_is_set_up_by_a_sync_not_a_start() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let (lh, fh) = (leader.http(), follower.http());
    ok(
        lh.send("POST", "/_api/collection", &json!({"name": "c"})),
        "create c",
    );
    insert(&lh, "s", 30);
    ok(
        fh.send("POST", "/_api/collection", &json!({"name": "mine"})),
        "create mine",
    );
    ok(
        fh.send(
            "PUT",
            "/_api/replication/applier-config",
            &json!({"endpoint": leader.endpoint(), "password": PASSWORD}),
        ),
        "configure",
    );
    let refused = fh.send("PUT", "/_api/replication/applier-start?from=0", &json!({}));
    refused.assert_error(400, 1410);
    let message = refused.json()["errorMessage"].as_str().unwrap().to_string();
    assert!(
        message.contains("of its own") && message.contains("make-follower"),
        "{message}"
    );
    // Refused before anything changed: it still takes writes.
    ok(
        fh.send("POST", "/_api/collection", &json!({"name": "mine2"})),
        "still a leader",
    );
    let doc = setup(&fh, &leader);
    assert_eq!(doc["state"]["lastError"]["errorNum"], json!(0), "{doc}");
    converge(&lh, &fh, "c arrives");
    insert(&lh, "t", 10);
    converge(&lh, &fh, "and follows");
}
