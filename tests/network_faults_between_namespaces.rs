//! Claim: a follower survives the network between it and its leader failing the ways networks
//! fail. The leader runs in its own network namespace, joined to the follower's by a veth pair
//! (tests/common/netns.rs); the faults sit on that pair:
//! - a partition while tailing: failedConnects climbs, then the follower reconnects by itself
//!   and converges;
//! - a partition longer than maxConnectRetries × connectionRetryWaitTime: the applier stops
//!   with 1400 and, once started again, converges;
//! - 5% loss with 20 ms delay each way, and reordering with every packet duplicated: the
//!   follower receives a bounded load and converges; the throughput is printed.
//!
//! Converged means count and checksum (keys, revisions, data) equal the leader's. Needs root
//! (namespaces, iptables) and, for loss and reordering, ../shared/tools/netem.py (the kernel has
//! no sch_netem); without them each test says it was skipped.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::netns::Link;
use common::{applier_body, collection_state, Daemon, Http};
use serde_json::{json, Value};

fn state(http: &Http) -> Value {
    http.get("/_api/replication/applier-state").json()["state"].clone()
}

fn link_or_skip(test: &str) -> Option<Link> {
    match Link::new() {
        Ok(link) => Some(link),
        Err(why) => {
            eprintln!("SKIPPED {test}: it needs root to create a network namespace: {why}");
            None
        }
    }
}

/// A leader inside `link`'s namespace and a follower outside, with collection `c` on the leader.
fn pair(link: &Link, dir: &std::path::Path) -> (Daemon, Daemon) {
    let leader = Daemon::start_in_namespace(&dir.join("leader"), &link.netns, &link.inside, &[]);
    let follower = Daemon::start(&dir.join("follower"), &[]);
    common::create(&leader.http(), "c", 2);
    (leader, follower)
}

/// Configures and starts the follower's applier with `extra` on top of the tests' defaults,
/// from tick 0 the first time, from where it stopped after that.
fn follow(leader: &Daemon, follower: &Daemon, extra: Value) {
    let fh = follower.http();
    common::accepted(
        fh.send(
            "PUT",
            "/_api/replication/applier-config",
            &applier_body(leader, extra),
        ),
        "applier-config",
    );
    let from = if state(&fh)["started"] == json!("") {
        "?from=0"
    } else {
        ""
    };
    common::accepted(
        fh.send(
            "PUT",
            &format!("/_api/replication/applier-start{from}"),
            &json!({}),
        ),
        "applier-start",
    );
}

/// Waits until the follower's `c` equals the leader's, reading the leader from inside its
/// namespace (the link may be impaired); returns how long that took.
fn converges(link: &Link, leader: &Daemon, follower: &Daemon, within: Duration) -> Duration {
    let started = Instant::now();
    let fh = follower.http();
    // A client made inside: one made outside may hold a connection across the link.
    let want = link.inside(|| collection_state(&leader.http(), "c"));
    common::wait_within(
        "the follower's c equals the leader's",
        within,
        || collection_state(&fh, "c") == want,
        || {
            format!(
                ": leader {want:?}, follower {:?}\n{}\n{}",
                collection_state(&fh, "c"),
                state(&fh),
                follower.log()
            )
        },
    );
    started.elapsed()
}

#[test]
fn a_partition_is_survived_and_a_long_one_stops_the_applier_until_started() {
    let Some(link) = link_or_skip("partitions") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (leader, follower) = pair(&link, dir.path());
    let (lh, fh) = (leader.http(), follower.http());
    follow(
        &leader,
        &follower,
        json!({"maxConnectRetries": 1000, "connectionRetryWaitTime": 0.2,
               "connectTimeout": 0.5, "requestTimeout": 1}),
    );
    common::fill(&lh, "c", 0, 500, 1);
    converges(&link, &leader, &follower, Duration::from_secs(60));

    // A partition while tailing: writes go on on the leader, the follower cannot reach it.
    link.partition();
    link.inside(|| common::fill(&leader.http(), "c", 500, 1500, 1));
    common::wait_within(
        "failedConnects climbs during the partition",
        Duration::from_secs(60),
        || state(&fh)["progress"]["failedConnects"].as_u64() >= Some(3),
        || format!(": {}", state(&fh)),
    );
    let during = state(&fh);
    assert_eq!(during["running"], json!(true), "still retrying: {during}");
    // The leader shows the follower falling behind, and its time to falloff shrinking (no ack
    // renews its registration).
    let follower_id = fh.get("/_api/replication/server-id").json()["serverId"].clone();
    let lag = || {
        let clients = link.inside(|| {
            leader.http().get("/_api/replication/logger-state").json()["clients"].clone()
        });
        let client = clients
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["serverId"] == follower_id)
            .cloned()
            .unwrap_or_else(|| panic!("the leader lists the follower: {clients}"));
        (
            client["ticksBehind"].as_u64().unwrap(),
            client["bytesBehind"].as_u64().unwrap(),
            client["secondsToFalloff"].as_f64().unwrap(),
        )
    };
    // The follower shows its leader silent.
    common::wait_within(
        "the follower shows its leader silent",
        Duration::from_secs(10),
        || state(&fh)["secondsSinceLeaderContact"].as_f64() > Some(2.0),
        || format!(": {}", state(&fh)),
    );
    let metrics = String::from_utf8(fh.get("/_admin/metrics").body).unwrap();
    let silent: Option<f64> = metrics.lines().find_map(|l| {
        l.strip_prefix("tickship_replication_applier_leader_silent_seconds ")?
            .parse()
            .ok()
    });
    assert!(silent > Some(2.0), "{silent:?}");
    let (ticks, bytes, falloff) = lag();
    assert!(
        ticks >= 1000 && bytes > 500_000,
        "{ticks} ticks, {bytes} bytes behind"
    );
    common::wait_within(
        "the follower's time to falloff shrinks",
        Duration::from_secs(10),
        || lag().2 < falloff - 1.0,
        || format!(": {:?}, was {falloff}", lag()),
    );
    link.heal();
    converges(&link, &leader, &follower, Duration::from_secs(60));
    common::wait_within(
        "the leader shows the follower level again",
        Duration::from_secs(10),
        || lag().0 == 0,
        || format!(": {:?}", lag()),
    );
    let after = state(&fh);
    assert_eq!(after["running"], json!(true), "{after}");
    assert!(
        after["secondsSinceLeaderContact"].as_f64() < Some(2.0),
        "heard again: {after}"
    );
    assert_eq!(
        after["progress"]["failedConnects"],
        json!(0),
        "reset on reconnect: {after}"
    );
    assert!(
        after["totalFailedConnects"].as_u64() >= Some(3),
        "the partition is counted: {after}"
    );

    // A partition longer than 3 retries 0.2 s apart: the applier gives up with 1400 ...
    common::accepted(
        fh.send("PUT", "/_api/replication/applier-stop", &json!({})),
        "applier-stop",
    );
    follow(
        &leader,
        &follower,
        json!({"maxConnectRetries": 3, "connectionRetryWaitTime": 0.2,
               "connectTimeout": 0.5, "requestTimeout": 1}),
    );
    link.partition();
    link.inside(|| common::fill(&leader.http(), "c", 1000, 2000, 2));
    common::wait_within(
        "the applier stops with 1400",
        Duration::from_secs(60),
        || state(&fh)["running"] == json!(false),
        || format!(": {}", state(&fh)),
    );
    let stopped = state(&fh);
    assert_eq!(stopped["lastError"]["errorNum"], json!(1400), "{stopped}");
    assert!(
        stopped["totalFailedConnects"].as_u64() > after["totalFailedConnects"].as_u64(),
        "{stopped}"
    );
    // ... and stays stopped once the link is back, until it is started: then it converges.
    link.heal();
    assert_eq!(state(&fh)["running"], json!(false));
    common::accepted(
        fh.send("PUT", "/_api/replication/applier-start", &json!({})),
        "applier-start",
    );
    converges(&link, &leader, &follower, Duration::from_secs(60));
    assert_eq!(state(&fh)["lastError"]["errorNum"], json!(0));
}

/// Writes `batches` batches of 250 ~1 KB documents to the leader from inside its namespace,
/// then waits for the follower to converge; returns (bytes written, seconds from the first
/// write to convergence).
fn load_then_converge(link: &Link, leader: &Daemon, follower: &Daemon, batches: u64) -> (u64, f64) {
    let started = Instant::now();
    let written = link.inside(|| {
        let lh = leader.http();
        common::fill(&lh, "c", 0, batches * 250, 1);
        lh.metric("tickship_wal_block_bytes_total")
    });
    converges(link, leader, follower, Duration::from_secs(180));
    (written, started.elapsed().as_secs_f64())
}

/// A pair across a link impaired by netem.py as `config` says (and every leader packet
/// duplicated if `duplicate`): a bounded load converges without an error, and netem's counter
/// `counted` shows the impairment happened. Skipped, saying so, where it cannot be set up.
fn impaired_load_converges(test: &str, config: Value, duplicate: bool, counted: &str) {
    let Some(mut link) = link_or_skip(test) else {
        return;
    };
    let duplicated = if duplicate { link.duplicate() } else { Ok(()) };
    if let Err(why) = duplicated {
        eprintln!("SKIPPED {test}: iptables TEE: {why}");
        return;
    }
    if let Err(why) = link.impair(&config) {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (leader, follower) = pair(&link, dir.path());
    follow(
        &leader,
        &follower,
        json!({"maxConnectRetries": 100, "requestTimeout": 5}),
    );
    let (bytes, seconds) = load_then_converge(&link, &leader, &follower, 12);
    let stats = link.netem_stats().unwrap();
    eprintln!(
        "{test} ({config}): {bytes} bytes of blocks in {seconds:.1} s = {:.2} MB/s; netem {stats}",
        bytes as f64 / seconds / 1e6
    );
    assert!(stats[counted].as_u64() > Some(0), "{counted}: {stats}");
    assert_eq!(state(&follower.http())["lastError"]["errorNum"], json!(0));
}

#[test]
fn five_percent_loss_with_20_ms_delay_is_kept_up_with() {
    impaired_load_converges(
        "loss",
        json!({"delay_ms": 20, "loss": 0.05}),
        false,
        "dropped",
    );
}

#[test]
fn reordered_and_duplicated_packets_are_kept_up_with() {
    impaired_load_converges(
        "reordering and duplication",
        json!({"delay_ms": 10, "reorder": 0.25, "reorder_corr": 0.5}),
        true,
        "reordered",
    );
}
