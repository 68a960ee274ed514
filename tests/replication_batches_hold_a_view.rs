//! `POST/PUT/DELETE /_api/replication/batch` on a real tickshipd, as ArangoDB's syncers and
//! arangodump use them: a batch names the tick of its view, is extended and ended by its client
//! or ends by itself at its TTL, and unknown or ended batches get ArangoDB's 404/1600.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::Daemon;
use serde_json::{json, Value};

fn batches(http: &common::Http) -> u64 {
    http.metric("tickship_replication_batches")
}

#[test]
fn batches_name_their_tick_and_end_by_delete_or_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let http = daemon.http();
    assert_eq!(
        http.send("POST", "/_api/collection", &json!({"name": "c"}))
            .status,
        200
    );
    let docs: Vec<Value> = (0..300).map(|i| json!({"_key": format!("k{i}")})).collect();
    assert_eq!(
        http.send("POST", "/_api/document/c", &json!(docs)).status,
        202
    );
    let last_log_tick =
        http.get("/_api/replication/logger-state").json()["state"]["lastLogTick"].clone();

    // python-arango sends {"ttl": null} by default: ArangoDB's 7200 s.
    let created = http.send("POST", "/_api/replication/batch", &json!({"ttl": null}));
    assert_eq!(created.status, 200, "{}", created.json());
    let body = created.json();
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(body["lastTick"], last_log_tick, "{body}");
    assert_eq!(batches(&http), 1);

    // Writes after it do not move its tick; extending keeps it.
    assert_eq!(
        http.send("POST", "/_api/document/c", &json!({"_key": "later"}))
            .status,
        202
    );
    let path = format!("/_api/replication/batch/{id}");
    assert_eq!(http.send("PUT", &path, &json!({"ttl": 60})).status, 204);
    http.send("PUT", &path, &json!({"ttl": "soon"}))
        .assert_error(400, 10);
    http.send("POST", "/_api/replication/batch", &json!({"ttl": -1}))
        .assert_error(400, 10);
    http.send("POST", "/_api/replication/batch?state=true", &json!({}))
        .assert_error(501, 9);
    http.send(
        "POST",
        "/_api/replication/batch",
        &json!({"patchCount": "c"}),
    )
    .assert_error(501, 9);
    assert_eq!(http.call("DELETE", &path, None, None).status, 204);
    http.call("DELETE", &path, None, None)
        .assert_error(404, 1600);
    http.send("PUT", &path, &json!({"ttl": 60}))
        .assert_error(404, 1600);
    http.send("PUT", "/_api/replication/batch/not-a-batch", &json!({}))
        .assert_error(404, 1600);
    assert_eq!(batches(&http), 0);

    // A batch its client forgets ends by itself at its TTL.
    let short = http.send("POST", "/_api/replication/batch", &json!({"ttl": 1}));
    assert_eq!(short.status, 200);
    let short_id = short.json()["id"].as_str().unwrap().to_string();
    assert_eq!(batches(&http), 1);
    // The sweeper runs in the daemon once a second.
    common::wait_within(
        "the batch ends at its TTL",
        Duration::from_secs(30),
        || batches(&http) == 0,
        String::new,
    );
    http.send(
        "PUT",
        &format!("/_api/replication/batch/{short_id}"),
        &json!({"ttl": 5}),
    )
    .assert_error(404, 1600);
}
