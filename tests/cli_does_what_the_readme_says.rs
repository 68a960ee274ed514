//! The `tickship` command lines of README.md, run as a user runs them, against two real
//! `tickshipd` processes: the setup makes the follower follow and leaves the leader a leader; a
//! failed setup exits non-zero and changes nothing; `--server.*` may stand anywhere; missing and
//! wrong passwords and an unconfigured server get messages that say what to do.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{tickship_args as tickship, wait_until, Daemon, Http, PASSWORD};
use serde_json::{json, Value};

/// The `tickship` command lines README.md shows (`target/release/tickship ...`), split into
/// arguments.
fn readme_commands() -> Vec<Vec<String>> {
    let readme =
        std::fs::read_to_string(common::package_dir().join("README.md")).expect("README.md");
    readme
        .lines()
        .filter_map(|line| line.trim().strip_prefix("target/release/tickship "))
        .map(|args| args.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// `args` with the README's example endpoints and passwords replaced by the test's.
fn localise(args: &[String], leader: &Daemon, follower: &Daemon) -> Vec<String> {
    args.iter()
        .map(|arg| match arg.as_str() {
            "tcp://127.0.0.1:8529" => leader.endpoint(),
            "tcp://127.0.0.1:8530" => follower.endpoint(),
            "PW" | "LEADER-PW" => PASSWORD.to_string(),
            other => other.to_string(),
        })
        .collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn count(http: &Http, collection: &str) -> Option<u64> {
    let answer = http.get(&format!("/_api/collection/{collection}/count"));
    (answer.status == 200).then(|| answer.json()["count"].as_u64().expect("count"))
}

/// Inserts a document and says whether the server took it.
fn accepts_writes(http: &Http) -> bool {
    http.send("POST", "/_api/document/c", &json!({"written": true}))
        .status
        == 202
}

#[test]
fn readme_setup_makes_the_follower_follow_and_the_leader_lead() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let (lh, fh) = (leader.http(), follower.http());
    assert_eq!(
        lh.send("POST", "/_api/collection", &json!({"name": "c"}))
            .status,
        200
    );
    assert!(accepts_writes(&lh));

    let commands = readme_commands();
    assert!(
        commands.iter().any(|c| c.contains(&"setup".to_string())),
        "README.md shows a setup command: {commands:?}"
    );
    for command in &commands {
        let run = tickship(&localise(command, &leader, &follower));
        assert_eq!(
            run.code, 0,
            "tickship {command:?}\nstdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
    }
    wait_until("the follower has the leader's documents", || {
        count(&fh, "c") == count(&lh, "c")
    });
    // The leader is still a leader; the follower refuses writes and names its leader.
    assert!(accepts_writes(&lh));
    assert_eq!(
        lh.get("/_api/replication/applier-state").json()["state"]["running"],
        json!(false)
    );
    let refused = fh.send("POST", "/_api/document/c", &json!({}));
    refused.assert_error(503, 503);
    assert_eq!(
        refused.header("x-arango-endpoint"),
        Some(leader.endpoint().as_str())
    );
    wait_until("the follower has the leader's new document", || {
        count(&fh, "c") == count(&lh, "c")
    });
}

#[test]
fn server_options_stand_anywhere_and_a_failed_setup_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let (lh, fh) = (leader.http(), follower.http());
    assert_eq!(
        lh.send("POST", "/_api/collection", &json!({"name": "c"}))
            .status,
        200
    );

    // The leader told to follow itself: refused with 1405, exit 1, still a leader.
    let run = tickship(&strings(&[
        "--server.endpoint",
        &leader.endpoint(),
        "--server.password",
        PASSWORD,
        "replication",
        "setup",
        "--leader.endpoint",
        &leader.endpoint(),
    ]));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("1405"), "{}", run.stderr);
    assert!(run.stderr.contains("accepts writes"), "{}", run.stderr);
    assert!(accepts_writes(&lh));

    // --server.* after the subcommand, and the leader as a positional argument.
    let run = tickship(&strings(&[
        "replication",
        "setup",
        &leader.endpoint(),
        "--server.endpoint",
        &follower.endpoint(),
        "--server.password",
        PASSWORD,
    ]));
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let state: Value = serde_json::from_str(&run.stdout).expect("the state document");
    assert_eq!(state["endpoint"], json!(leader.endpoint()), "{state}");
    assert!(accepts_writes(&lh));
    wait_until("the follower has the collection", || {
        count(&fh, "c").is_some()
    });

    // `state` exits non-zero once the applier holds an error: the leader is gone.
    let mut leader = leader;
    leader.terminate();
    let state_command = strings(&[
        "--server.endpoint",
        &follower.endpoint(),
        "--server.password",
        PASSWORD,
        "replication",
        "state",
    ]);
    wait_until("`replication state` reports the lost leader", || {
        let run = tickship(&state_command);
        run.code == 1 && run.stderr.contains("the applier reports error")
    });
}

#[test]
fn passwords_and_unconfigured_servers_get_messages_that_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let server = Daemon::start(&dir.path().join("server"), &[]);
    let endpoint = server.endpoint();

    let missing = tickship(&strings(&[
        "--server.endpoint",
        &endpoint,
        "logger",
        "state",
    ]));
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("no credentials were sent")
            && missing.stderr.contains("No password was given")
            && missing.stderr.contains("--server.password-file"),
        "{}",
        missing.stderr
    );
    let wrong = tickship(&strings(&[
        "--server.endpoint",
        &endpoint,
        "--server.password",
        "wrong",
        "logger",
        "state",
    ]));
    assert_eq!(wrong.code, 1);
    assert!(
        wrong.stderr.contains("wrong username or password")
            && wrong.stderr.contains("not the one of the server"),
        "{}",
        wrong.stderr
    );
    assert_eq!(
        missing.stderr.lines().count() + wrong.stderr.lines().count(),
        4,
        "each error once, with its hint:\n{}{}",
        missing.stderr,
        wrong.stderr
    );

    // The password file tickshipd reads works here too.
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let from_file = tickship(&strings(&[
        "logger",
        "first-tick",
        "--server.endpoint",
        &endpoint,
        "--server.password-file",
        file.to_str().unwrap(),
    ]));
    assert_eq!(from_file.code, 0, "{}", from_file.stderr);

    let start = tickship(&strings(&[
        "--server.endpoint",
        &endpoint,
        "--server.password",
        PASSWORD,
        "replication",
        "start",
    ]));
    assert_eq!(start.code, 1);
    assert!(
        start.stderr.contains("1410") && start.stderr.contains("has no leader configured"),
        "{}",
        start.stderr
    );

    // The demo starts its own servers: options for another server are refused, not ignored.
    let demo = tickship(&strings(&["--server.endpoint", &endpoint, "demo"]));
    assert_eq!(demo.code, 1);
    assert!(
        demo.stderr.contains("talks to no other server"),
        "{}",
        demo.stderr
    );
    let help = tickship(&strings(&["demo", "--help"]));
    assert_eq!(help.code, 0, "{}", help.stderr);
    assert!(
        help.stdout.contains("--catch-up") && !help.stdout.contains("--server."),
        "{}",
        help.stdout
    );
}
