//! Claim: the leader's WAL retention keeps what a registered follower still needs until the
//! follower's client TTL runs out, then lets it go; `--wal.archive-size-limit` takes it sooner.
//! Either way the follower, back, is told 1414 (never a silent gap), with the archive size limit
//! named when that is why. Without autoResync the applier stops; with it, the follower resyncs
//! by itself and converges.
//!
//! The follower is down (kill -9) while the leader writes a few 1 MiB segments. A follower that
//! only stalls (SIGSTOP) keeps its session, whose reader holds the segments it had mapped: it
//! often catches up through them after they were deleted, losing nothing, and is then rightly
//! told nothing (the shipper says 1414 only when its reader finds a segment gone).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::{Duration, SystemTime};

use common::{applier_body, converged, fill, first_tick, wait_until_or, Daemon, Http, PRUNING};
use serde_json::{json, Value};

fn applier_state(http: &Http) -> Value {
    http.get("/_api/replication/applier-state").json()["state"].clone()
}

/// The leader's registered client for follower `server_id`: (lastServedTick, expires).
fn client(leader: &Http, server_id: &str) -> Option<(u64, String)> {
    let state = leader.get("/_api/replication/logger-state").json();
    state["clients"].as_array().unwrap().iter().find_map(|c| {
        (c["serverId"] == json!(server_id)).then(|| {
            (
                c["lastServedTick"].as_str().unwrap().parse().unwrap(),
                c["expires"].as_str().unwrap().to_string(),
            )
        })
    })
}

/// A leader with `leader_flags`, collection `docs` with 1,000 documents, and a follower tailing
/// it with `applier` on top of the tests' defaults, level with it.
fn pair(dir: &std::path::Path, leader_flags: &[&str], applier: Value) -> (Daemon, Daemon, String) {
    let leader = Daemon::start(&dir.join("leader"), leader_flags);
    let lh = leader.http();
    common::create(&lh, "docs", 2);
    fill(&lh, "docs", 0, 1000, 1);
    let follower = Daemon::start(&dir.join("follower"), &[]);
    let fh = follower.http();
    common::accepted(
        fh.send(
            "PUT",
            "/_api/replication/applier-config",
            &applier_body(&leader, applier),
        ),
        "applier-config",
    );
    common::accepted(
        fh.send("PUT", "/_api/replication/applier-start?from=0", &json!({})),
        "applier-start",
    );
    converged(&leader, &follower, &[("_system", "docs")]);
    let server_id = fh.get("/_api/replication/server-id").json()["serverId"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until_or(
        "the leader lists the follower",
        || client(&lh, &server_id).is_some(),
        || format!("{}", lh.get("/_api/replication/logger-state").json()),
    );
    (leader, follower, server_id)
}

#[test]
fn a_down_followers_position_is_kept_until_its_ttl_then_it_is_told_1414() {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = PRUNING.to_vec();
    flags.extend(["--replication.client-ttl", "4"]);
    let (leader, mut follower, server_id) = pair(
        dir.path(),
        &flags,
        json!({"autoResync": false, "autoStart": true}),
    );
    let lh = leader.http();
    follower.kill9();
    fill(&lh, "docs", 1000, 5000, 2);

    // While the follower is registered, nothing after its tick goes; polled over its TTL, which
    // spans several retention passes (one a second).
    let (mut checks, mut held) = (0, 0);
    common::wait_within(
        "the follower's registration ends",
        Duration::from_secs(60),
        || {
            let Some((tick, expires)) = client(&lh, &server_id) else {
                return true;
            };
            let first = first_tick(&lh);
            assert!(
                first <= tick + 1,
                "the leader's log starts at {first}, past the down follower's tick {tick} \
                 (registered until {expires})"
            );
            checks += 1;
            held = tick;
            common::iso8601_reached(&expires, SystemTime::now())
        },
        String::new,
    );
    // 4 s at one check per ~25 ms.
    assert!(
        checks > 20,
        "only {checks} checks while the follower was registered"
    );
    // Then its hold ends and retention takes what it still needed.
    wait_until_or(
        "the leader lets the expired follower's ticks go",
        || first_tick(&lh) > held + 1,
        || format!("first tick {}, follower at {held}", first_tick(&lh)),
    );

    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let fh = follower.http();
    wait_until_or(
        "the applier stops with 1414",
        || {
            let state = applier_state(&fh);
            state["running"] == json!(false) && state["lastError"]["errorNum"] != json!(0)
        },
        || format!("{}", applier_state(&fh)),
    );
    let state = applier_state(&fh);
    assert_eq!(state["lastError"]["errorNum"], json!(1414), "{state}");
    let message = state["lastError"]["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("is not present (anymore?) on leader"),
        "{message}"
    );
    assert!(!message.contains("archive-size-limit"), "{message}");
    assert_eq!(state["totalResyncs"], json!(0));
}

#[test]
fn the_archive_size_limit_takes_a_down_followers_position_and_auto_resync_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = PRUNING.to_vec();
    flags.extend(["--wal.archive-size-limit", "2MiB"]);
    let (leader, mut follower, server_id) = pair(
        dir.path(),
        &flags,
        json!({"autoResync": true, "autoResyncRetries": 2, "autoStart": true}),
    );
    let lh = leader.http();
    let (held, _) = client(&lh, &server_id).unwrap();
    follower.kill9();
    // 8 MB: 1 MiB segments, of which the limit keeps two; the follower's next one goes.
    fill(&lh, "docs", 1000, 9000, 2);
    wait_until_or(
        "the archive size limit takes the down follower's ticks",
        || first_tick(&lh) > held + 1,
        || format!("first tick {}, follower at {held}", first_tick(&lh)),
    );
    // The follower is still registered (its TTL is hours): only the limit let them go.
    assert!(client(&lh, &server_id).is_some());
    // The retention pass moves the first tick before it logs whom it cost.
    wait_until_or(
        "the leader logs the follower's lost position",
        || {
            leader
                .log()
                .contains(&format!("lost its position at tick {held}"))
        },
        || leader.log(),
    );

    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let fh = follower.http();
    converged(&leader, &follower, &[("_system", "docs")]);
    wait_until_or(
        "the follower tails again after its resync",
        || {
            let state = applier_state(&fh);
            state["running"] == json!(true)
                && state["phase"] == json!("running")
                && state["totalResyncs"] == json!(1)
        },
        || format!("{}", applier_state(&fh)),
    );
    let log = follower.log();
    assert!(
        log.contains("autoResync")
            && log.contains("is not present (anymore?)")
            && log.contains("outgrew --wal.archive-size-limit"),
        "the follower's log says why it resynced:\n{log}"
    );
    fill(&lh, "docs", 10_000, 10_100, 1);
    converged(&leader, &follower, &[("_system", "docs")]);
}
