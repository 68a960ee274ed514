//! `/_admin/metrics` of a real leader and follower, read the way Prometheus reads it: clean for
//! `promtool check metrics`, histograms with the same bucket bounds in every scrape and on every
//! server, and a follower that counts what it applied.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{metric_value, Daemon, Http, PASSWORD};
use serde_json::{json, Value};

fn scrape(http: &Http) -> String {
    let answer = http.get("/_admin/metrics");
    assert_eq!(answer.status, 200);
    String::from_utf8(answer.body).expect("metrics are UTF-8")
}

/// Runs `promtool check metrics` on `text`; fails (never skips) when promtool is missing, since
/// `scripts/setup` installs it.
fn promtool_check(server: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: run scripts/setup (it installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool finds problems in the {server}'s metrics ({}):\n{report}",
        out.status
    );
}

/// The `le` bounds of histogram `name`, in the order served.
fn bounds(text: &str, name: &str) -> Vec<String> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix)?.split('"').next())
        .map(str::to_string)
        .collect()
}

fn float(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name}"))
}

fn insert(http: &Http, count: usize) {
    for start in (0..count).step_by(500) {
        let docs: Vec<Value> = (start..start + 500)
            .map(|i| json!({"_key": format!("k{i}"), "i": i}))
            .collect();
        assert_eq!(
            http.send("POST", "/_api/document/c", &json!(docs)).status,
            202
        );
    }
}

#[test]
fn metrics_pass_promtool_and_keep_their_shape() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let (lh, fh) = (leader.http(), follower.http());

    // Before any write: every histogram already has its full, fixed set of buckets.
    let empty = scrape(&lh);
    let layout = bounds(&empty, "tickship_wal_append_seconds");
    assert!(layout.len() > 10, "{empty}");
    assert_eq!(layout.last().map(String::as_str), Some("+Inf"));
    assert_eq!(bounds(&empty, "tickship_wal_fsync_seconds"), layout);

    assert_eq!(
        lh.send("POST", "/_api/collection", &json!({"name": "c"}))
            .status,
        200
    );
    insert(&lh, 2_000);
    let made = fh.send(
        "PUT",
        "/_api/replication/make-follower",
        &json!({"endpoint": leader.endpoint(), "username": "root", "password": PASSWORD,
                "connectionRetryWaitTime": 0.1}),
    );
    assert_eq!(made.status, 200, "{}", made.json());
    insert_more_and_wait(&lh, &fh);

    let (leader_text, follower_text) = (scrape(&lh), scrape(&fh));
    promtool_check("leader", &leader_text);
    promtool_check("follower", &follower_text);
    for text in [&leader_text, &follower_text] {
        for histogram in ["tickship_wal_append_seconds", "tickship_wal_fsync_seconds"] {
            assert_eq!(bounds(text, histogram), layout, "{histogram}");
            let count = metric_value(text, &format!("{histogram}_count")).unwrap();
            assert!(count > 0, "{histogram}_count");
            assert!(
                float(text, &format!("{histogram}_sum")) > 0.0,
                "{histogram}_sum"
            );
        }
    }

    // The follower counts the documents its sync stored (those before make-follower) and those
    // it applied from the log after, and shows its applier.
    assert_eq!(
        metric_value(
            &follower_text,
            "tickship_replication_initial_sync_documents"
        ),
        Some(2_000)
    );
    assert_eq!(
        metric_value(&follower_text, "tickship_replication_initial_sync_running"),
        Some(0)
    );
    let applied = metric_value(
        &follower_text,
        "arangodb_replication_tailing_documents_total",
    );
    assert!(applied >= Some(2_000), "{applied:?}");
    assert!(metric_value(&follower_text, "tickship_documents_written_total") >= Some(2_000));
    assert_eq!(
        metric_value(&follower_text, "tickship_replication_applier_running"),
        Some(1)
    );
    assert_eq!(
        metric_value(&follower_text, "tickship_replication_applier_last_error"),
        Some(0)
    );
    assert!(
        metric_value(
            &follower_text,
            "arangodb_replication_tailing_bytes_received_total"
        ) > Some(0)
    );
    assert!(metric_value(&follower_text, "process_resident_memory_bytes") > Some(0));
    assert!(metric_value(&follower_text, "process_open_fds") > Some(0));
    // The leader shows the follower, by id, with its lag.
    assert!(
        leader_text
            .lines()
            .any(|l| l.starts_with("tickship_replication_follower_ticks_behind{")),
        "{leader_text}"
    );
    // Counts only grow between scrapes; bounds stay the same.
    let again = scrape(&fh);
    assert_eq!(bounds(&again, "tickship_wal_append_seconds"), layout);
    assert!(
        metric_value(&again, "tickship_wal_append_seconds_count")
            >= metric_value(&follower_text, "tickship_wal_append_seconds_count")
    );
}

/// Writes 2,000 more documents and waits until the follower has all 4,000.
fn insert_more_and_wait(lh: &Http, fh: &Http) {
    for start in (2_000..4_000).step_by(500) {
        let docs: Vec<Value> = (start..start + 500)
            .map(|i| json!({"_key": format!("k{i}"), "i": i}))
            .collect();
        assert_eq!(
            lh.send("POST", "/_api/document/c", &json!(docs)).status,
            202
        );
    }
    common::wait_until("the follower holds 4,000 documents", || {
        let count = fh.get("/_api/collection/c/count");
        count.status == 200 && count.json()["count"] == json!(4_000)
    });
}
