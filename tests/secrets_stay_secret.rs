//! The root password a follower uses to reach its leader, and a wrong one tried, appear in none
//! of what the servers show: applier configuration and state, logger state, metrics, the CLI's
//! output, the servers' logs and error answers. The applier's saved configuration, which must keep
//! the password to reconnect after a restart, is readable by its owner only; and the servers
//! `tickship demo` starts (and the bench tools, through the same code) get the password in their
//! environment, never on a command line that any user's `ps` shows.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{create, fill, tickship_on, Daemon, PASSWORD};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;

const WRONG: &str = "a-wrong-password-9f3e";

#[test]
fn passwords_appear_in_nothing_the_servers_show() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let lh = leader.http();
    create(&lh, "docs", 2);
    fill(&lh, "docs", 0, 100, 1);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let fh = follower.http();
    let made = fh.send(
        "PUT",
        "/_api/replication/make-follower?global=true",
        &json!({"endpoint": leader.endpoint(), "password": PASSWORD}),
    );
    assert_eq!(made.status, 200, "{}", String::from_utf8_lossy(&made.body));
    // A wrong password, tried from a third server: refused, and not repeated back.
    let other = Daemon::start(&dir.path().join("other"), &[]);
    let refused = other.http().send(
        "PUT",
        "/_api/replication/sync?global=true",
        &json!({"endpoint": leader.endpoint(), "password": WRONG}),
    );
    refused.assert_error(401, 11);

    let mut shown = vec![
        String::from_utf8_lossy(&made.body).into_owned(),
        String::from_utf8_lossy(&refused.body).into_owned(),
    ];
    for path in [
        "/_api/replication/applier-config?global=true",
        "/_api/replication/applier-state?global=true",
        "/_api/replication/applier-state-all",
        "/_admin/metrics",
        "/_admin/metrics/v2",
        "/_api/replication/logger-state",
    ] {
        for http in [&lh, &fh, &other.http()] {
            shown.push(String::from_utf8_lossy(&http.get(path).body).into_owned());
        }
    }
    let state = tickship_on(&follower, PASSWORD, &["replication", "state", "--global"]);
    shown.push(state.stdout);
    shown.push(state.stderr);
    shown.push(leader.log());
    shown.push(follower.log());
    shown.push(other.log());
    for text in &shown {
        assert!(
            !text.contains(PASSWORD) && !text.contains(WRONG),
            "a password is shown: {}",
            &text[..text.len().min(2000)]
        );
    }
    assert!(shown
        .iter()
        .any(|t| t.contains("lastAppliedContinuousTick")));

    // Saved for the restart, readable by its owner only.
    let saved = dir.path().join("follower/applier-config.json");
    let text = std::fs::read_to_string(&saved).unwrap();
    assert!(text.contains(PASSWORD), "kept to reconnect after a restart");
    let mode = std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", saved.display());
}

#[test]
fn servers_started_for_the_demo_get_the_password_outside_their_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tickshipd"));
    let mut server =
        tickship::cli::demo::Server::start("leader", &daemon, &dir.path().join("s"), WRONG, &[])
            .unwrap();
    let pid = server.pid().unwrap();
    let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let environment = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    server.stop();
    assert!(
        !String::from_utf8_lossy(&command_line).contains(WRONG),
        "{}",
        String::from_utf8_lossy(&command_line).replace('\0', " ")
    );
    assert!(
        String::from_utf8_lossy(&environment).contains(&format!("TICKSHIP_ROOT_PASSWORD={WRONG}"))
    );
}
