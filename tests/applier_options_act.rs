//! ArangoDB's applier options on two real `tickshipd` processes: each one set is read back and
//! shown to act (`verbose`, `skipCreateDrop`, `includeFoxxQueues`, `maxPacketSize`,
//! `ignoreErrors`), or is refused with 1410 naming it; none is accepted and ignored.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{accepted as ok, applier_body, wait_until, wait_until_or, Daemon, Http};
use serde_json::{json, Value};

fn state(http: &Http) -> Value {
    http.get("/_api/replication/applier-state").json()["state"].clone()
}

/// Configures the follower's applier for `leader` with `extra`, checks that each attribute of
/// `extra` reads back as set, and starts it from tick 0.
fn follow(follower: &Http, leader: &Daemon, extra: Value) {
    let body = applier_body(leader, extra.clone());
    let answer = follower.send("PUT", "/_api/replication/applier-config", &body);
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let config = follower.get("/_api/replication/applier-config").json();
    for (name, value) in extra.as_object().unwrap() {
        assert_eq!(&config[name], value, "{name} reads back as set: {config}");
    }
    let answer = follower.send("PUT", "/_api/replication/applier-start?from=0", &json!({}));
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

/// Waits until the applier stops by itself, with error `error_num` and a message naming
/// `needle`.
fn stops_with(follower: &Http, error_num: u64, needle: &str) {
    wait_until("the applier stops with an error", || {
        state(follower)["running"] == json!(false)
    });
    let st = state(follower);
    assert_eq!(st["lastError"]["errorNum"], json!(error_num), "{st}");
    let message = st["lastError"]["errorMessage"].as_str().unwrap();
    assert!(message.contains(needle), "{message}");
}

fn stop(follower: &Http) {
    let answer = follower.send("PUT", "/_api/replication/applier-stop", &json!({}));
    assert_eq!(answer.status, 200);
}

fn create(http: &Http, name: &str) {
    let answer = http.send(
        "POST",
        "/_api/collection",
        &json!({"name": name, "isSystem": name.starts_with('_')}),
    );
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

fn insert(http: &Http, collection: &str, keys: &[&str]) {
    let docs: Vec<Value> = keys.iter().map(|k| json!({"_key": k, "v": 1})).collect();
    ok(
        http.send(
            "POST",
            &format!("/_api/document/{collection}"),
            &json!(docs),
        ),
        "insert",
    );
}

fn count(http: &Http, collection: &str) -> Option<u64> {
    let answer = http.get(&format!("/_api/collection/{collection}/count"));
    (answer.status == 200).then(|| answer.json()["count"].as_u64().unwrap())
}

/// Waits until the follower has applied the leader's last tick.
fn level(leader: &Http, follower: &Http) {
    let last = leader.get("/_api/replication/logger-state").json()["state"]["lastLogTick"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    wait_until_or(
        "the follower applies the leader's last tick",
        || {
            state(follower)["lastAppliedContinuousTick"]
                .as_str()
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|t| t >= last)
        },
        || state(follower).to_string(),
    );
}

// Goal: verbose logs every applied operation; skipCreateDrop leaves collection creations (and so
// their documents) out, counted as excluded; Foxx's queues stay out unless includeFoxxQueues.
#[test]
fn verbose_skip_create_drop_and_foxx_queues_act() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let (lh, fh) = (leader.http(), follower.http());
    create(&lh, "c");
    insert(&lh, "c", &["verbose-key-1", "verbose-key-2"]);
    create(&lh, "_jobs");
    insert(&lh, "_jobs", &["j1"]);
    follow(
        &fh,
        &leader,
        json!({"verbose": true, "includeFoxxQueues": false, "idleMinWaitTime": 5.0}),
    );
    level(&lh, &fh);
    assert_eq!(count(&fh, "c"), Some(2));
    assert_eq!(count(&fh, "_jobs"), None, "Foxx's queue stays out");
    let log = follower.log();
    assert!(
        log.contains("verbose-key-2") && log.contains("applied"),
        "verbose logs each applied operation"
    );
    assert!(
        log.contains("idleMinWaitTime = 5.0 has no effect"),
        "an option without effect says so when set"
    );

    stop(&fh);
    follow(
        &fh,
        &leader,
        json!({"verbose": false, "skipCreateDrop": true}),
    );
    let excluded_before = state(&fh)["totalOperationsExcluded"].as_u64().unwrap();
    create(&lh, "later");
    insert(&lh, "later", &["l1", "l2"]);
    insert(&lh, "c", &["quiet-key"]);
    level(&lh, &fh);
    assert_eq!(count(&fh, "later"), None, "its creation was skipped");
    assert_eq!(
        count(&fh, "c"),
        Some(3),
        "documents of known collections still apply"
    );
    let st = state(&fh);
    assert!(
        st["totalOperationsExcluded"].as_u64().unwrap() > excluded_before,
        "{st}"
    );
    assert!(
        !follower.log().contains("quiet-key"),
        "verbose is off again"
    );
    assert!(fh.metric("tickship_replication_tailing_excluded_total") > 0);
}

// Goal: a frame larger than maxPacketSize stops the applier with 1401 naming the option, and
// values out of range are refused with 1410 naming the option, never clamped.
#[test]
fn max_packet_size_limits_frames_and_bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let (lh, fh) = (leader.http(), follower.http());
    for (body, name) in [
        (json!({"sslProtocol": 4}), "sslProtocol"),
        (json!({"requestTimeout": 0.2}), "requestTimeout"),
        (json!({"maxPacketSize": 10}), "maxPacketSize"),
        (json!({"endpoint": "ssl://127.0.0.1:1"}), "endpoint"),
        (json!({"endpoint": "h2://127.0.0.1:1"}), "endpoint"),
    ] {
        let mut full = json!({"endpoint": leader.endpoint()});
        full.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let answer = fh.send("PUT", "/_api/replication/applier-config", &full);
        answer.assert_error(400, 1410);
        let message = answer.json()["errorMessage"].as_str().unwrap().to_string();
        assert!(message.contains(name), "{body}: {message}");
    }
    create(&lh, "c");
    // One document of ~300 KB of noise that lz4 cannot shrink much: a block above 64 KiB.
    let mut state: u64 = 88172645463325252;
    let text = common::noise_text(&mut state, 300_000 / 16);
    let answer = lh.send(
        "POST",
        "/_api/document/c",
        &json!({"_key": "big", "text": text}),
    );
    assert_eq!(answer.status, 202);
    follow(&fh, &leader, json!({"maxPacketSize": 65536}));
    stops_with(&fh, 1401, "maxPacketSize");
    // With the default it arrives.
    follow(&fh, &leader, json!({"maxPacketSize": 536870912}));
    level(&lh, &fh);
    assert_eq!(count(&fh, "c"), Some(1));
}

// Goal: ignoreErrors skips conflicts (a collection of this server named like one the leader
// creates) up to its count and counts them; at the count the applier stops with 1207 and
// applies nothing past the conflict; a larger count lets it go on.
#[test]
fn ignore_errors_skips_conflicts_up_to_the_count_then_stops() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let (lh, fh) = (leader.http(), follower.http());
    // This server holds c1 and c2 of its own (restored, so without ticks of its own).
    for name in ["c1", "c2"] {
        let answer = fh.send(
            "PUT",
            "/_api/replication/restore-collection",
            // Ids of this server's own, as a dump of another server would give them.
            &json!({"parameters": {"name": name, "type": 2, "id": format!("9{}", &name[1..])}, "indexes": []}),
        );
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    let answer = fh.call(
        "PUT",
        "/_api/replication/restore-data?collection=c1",
        Some(b"{\"_key\":\"mine\"}\n"),
        None,
    );
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    // The restore moved this server's log floor to tick 1: the leader's tick 1 is never asked
    // for, so it is a collection of no interest.
    create(&lh, "c0");
    for name in ["c1", "c2", "c3"] {
        create(&lh, name);
        insert(&lh, name, &["a", "b"]);
    }
    follow(&fh, &leader, json!({"ignoreErrors": 1}));
    stops_with(&fh, 1207, "'c2'");
    assert_eq!(
        count(&fh, "c3"),
        None,
        "nothing past the conflict is applied"
    );
    // A count that covers both: the leader's c1 and c2 are skipped, c3 arrives.
    follow(&fh, &leader, json!({"ignoreErrors": 2}));
    level(&lh, &fh);
    let st = state(&fh);
    assert_eq!(st["running"], json!(true), "{st}");
    assert_eq!(st["totalErrorsIgnored"], json!(2), "{st}");
    assert_eq!(count(&fh, "c3"), Some(2));
    assert_eq!(
        count(&fh, "c1"),
        Some(1),
        "this server's c1 is kept as it was"
    );
    assert_eq!(
        fh.metric("tickship_replication_tailing_errors_ignored_total"),
        2
    );
}
