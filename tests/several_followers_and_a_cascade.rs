//! Three followers of one leader, one of them following another follower (a cascade): each set
//! up with a full sync, then killed with -9 and restarted in turn while the leader takes writes.
//! All three end equal to the leader (count and checksum with revisions and data), and each
//! leader lists its followers among its logger clients.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{converged, create, fill, wait_until_or, Daemon, Http, PASSWORD};
use serde_json::{json, Value};
use std::path::Path;

/// Makes `follower` a follower of `leader` (a full sync, then tailing until level), retrying a
/// lost leader every 0.2 s.
fn follow(follower: &Daemon, leader: &Daemon) {
    let answer = follower.http().send(
        "PUT",
        "/_api/replication/make-follower?global=true",
        &json!({"endpoint": leader.endpoint(), "password": PASSWORD,
                "connectionRetryWaitTime": 0.2, "maxConnectRetries": 1000}),
    );
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

fn server_id(http: &Http) -> String {
    http.get("/_api/replication/server-id").json()["serverId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The server ids among `http`'s logger clients.
fn clients(http: &Http) -> Vec<String> {
    let state: Value = http.get("/_api/replication/logger-state").json();
    state["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["serverId"].as_str().filter(|s| !s.is_empty()))
        .map(str::to_string)
        .collect()
}

fn applied(http: &Http) -> u64 {
    let state: Value = http
        .get("/_api/replication/applier-state?global=true")
        .json();
    state["state"]["lastAppliedContinuousTick"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// Kills `daemon` with -9 once it has applied past `after`, and starts it again on its port (a
/// cascaded follower names it by its endpoint) and data directory.
fn kill_and_restart(daemon: &mut Daemon, dir: &Path, after: u64) -> Daemon {
    let http = daemon.http();
    wait_until_or(
        "the follower applies the leader's new writes before it is killed",
        || applied(&http) > after,
        || format!("applied {} of {after}", applied(&http)),
    );
    let port = daemon.port();
    daemon.kill9();
    Daemon::start_on(dir, port, &[])
}

#[test]
fn three_followers_and_a_cascade_converge_through_kill_9_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let lh = leader.http();
    create(&lh, "docs", 2);
    fill(&lh, "docs", 0, 2000, 0);
    let dirs: Vec<_> = ["f1", "f2", "f3"]
        .iter()
        .map(|name| dir.path().join(name))
        .collect();
    let mut f1 = Daemon::start(&dirs[0], &[]);
    let mut f2 = Daemon::start(&dirs[1], &[]);
    let mut f3 = Daemon::start(&dirs[2], &[]);
    follow(&f1, &leader);
    follow(&f2, &leader);
    follow(&f3, &f1); // the cascade: f3 follows f1

    // The load: eight rounds over 3,000 documents (new ones, then replacements), bounded.
    let load = {
        let http = Http::new(lh.base.clone());
        std::thread::spawn(move || {
            for version in 1..=8 {
                fill(&http, "docs", 0, 3000, version);
            }
        })
    };
    let tick = |http: &Http| -> u64 {
        http.get("/_api/replication/logger-state").json()["state"]["lastLogTick"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    f1 = kill_and_restart(&mut f1, &dirs[0], tick(&lh));
    f2 = kill_and_restart(&mut f2, &dirs[1], tick(&lh));
    f3 = kill_and_restart(&mut f3, &dirs[2], tick(&f1.http()).min(tick(&lh)));
    load.join().unwrap();
    fill(&lh, "docs", 3000, 3100, 9);

    for follower in [&f1, &f2, &f3] {
        converged(&leader, follower, &[("_system", "docs")]);
    }
    let count = lh.get("/_api/collection/docs/count").json()["count"].clone();
    assert_eq!(count, json!(3100));
    // Each leader lists its followers: the leader f1 and f2, f1 its follower f3.
    let (id1, id2, id3) = (
        server_id(&f1.http()),
        server_id(&f2.http()),
        server_id(&f3.http()),
    );
    wait_until_or(
        "the leader lists f1 and f2 and f1 lists f3",
        || {
            let (on_leader, on_f1) = (clients(&lh), clients(&f1.http()));
            on_leader.contains(&id1) && on_leader.contains(&id2) && on_f1.contains(&id3)
        },
        || {
            format!(
                "leader's clients {:?}, f1's {:?}",
                clients(&lh),
                clients(&f1.http())
            )
        },
    );
}
