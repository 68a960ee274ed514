//! A leader in its own network namespace, joined to the follower's by a veth pair whose
//! leader-to-follower direction is limited to ~200 KB/s (`tc tbf`): one 1,000-document batch is
//! a block of ~1 MB, which takes ~5 s to cross, longer than the follower's requestTimeout of
//! 2 s. The follower must receive it anyway (the timeout is on silence, not on a frame) without
//! a single reconnect. Needs root (network namespaces, tc); elsewhere it says it was skipped.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, Http, PASSWORD};
use serde_json::{json, Value};

/// A network namespace with a veth pair to the test's own namespace, removed on drop.
struct Link {
    netns: String,
    /// The leader's address (inside the namespace) and the follower's (outside).
    inside: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl Link {
    /// The namespace and link, the leader's side sending at most `rate` (tc's syntax).
    fn new(rate: &str) -> Result<Link, String> {
        let id = std::process::id() % 100_000;
        let netns = format!("tsl{id}");
        let (outer, inner) = (format!("tsla{id}"), format!("tslb{id}"));
        let subnet = format!("10.213.{}", id % 250);
        let inside = format!("{subnet}.1");
        ip(&["netns", "add", &netns])?;
        let link = Link {
            netns: netns.clone(),
            inside: inside.clone(),
        };
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", &netns])?;
        ip(&["addr", "add", &format!("{subnet}.2/24"), "dev", &outer])?;
        ip(&["link", "set", &outer, "up"])?;
        let within = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &netns, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        within(&["addr", "add", &format!("{inside}/24"), "dev", &inner])?;
        within(&["link", "set", &inner, "up"])?;
        within(&["link", "set", "lo", "up"])?;
        let tc = Command::new("ip")
            .args([
                "netns", "exec", &netns, "tc", "qdisc", "add", "dev", &inner, "root",
            ])
            .args(["tbf", "rate", rate, "burst", "16kb", "latency", "400ms"])
            .output()
            .map_err(|e| format!("tc: {e}"))?;
        if !tc.status.success() {
            return Err(format!("tc: {}", String::from_utf8_lossy(&tc.stderr)));
        }
        Ok(link)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it the other end.
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

fn state(http: &Http) -> Value {
    http.get("/_api/replication/applier-state").json()["state"].clone()
}

/// ~1 KB documents that lz4 cannot squeeze much (a hash chain in hex).
fn batch(prefix: &str, count: usize) -> Value {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let docs: Vec<Value> = (0..count)
        .map(|i| {
            let text: String = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    format!("{:016x}", x)
                })
                .collect();
            json!({"_key": format!("{prefix}-{i}"), "text": text})
        })
        .collect();
    json!(docs)
}

#[test]
fn a_follower_on_a_slow_link_receives_frames_longer_than_its_request_timeout() {
    let link = match Link::new("1600kbit") {
        Ok(link) => link,
        Err(why) => {
            eprintln!("SKIPPED: this test needs root to create a network namespace: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let leader =
        Daemon::start_in_namespace(&dir.path().join("leader"), &link.netns, &link.inside, &[]);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let (lh, fh) = (leader.http(), follower.http());
    assert_eq!(
        lh.send("POST", "/_api/collection", &json!({"name": "c"}))
            .status,
        200
    );
    let answer = fh.send(
        "PUT",
        "/_api/replication/applier-config",
        &json!({
            "endpoint": leader.endpoint(),
            "username": "root",
            "password": PASSWORD,
            "requestTimeout": 2,
            "connectionRetryWaitTime": 0.5,
        }),
    );
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    for b in 0..2 {
        let answer = lh.send("POST", "/_api/document/c", &batch(&format!("b{b}"), 1000));
        assert_eq!(answer.status, 202);
    }
    let shipped = lh.metric("tickship_wal_block_bytes_total");
    assert!(
        shipped > 1_500_000,
        "{shipped} bytes of blocks: the link must take > 7 s"
    );
    let started = Instant::now();
    let answer = fh.send("PUT", "/_api/replication/applier-start?from=0", &json!({}));
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let leader_count = lh.get("/_api/collection/c/count").json()["count"].clone();
    common::wait_within(
        "the follower catches up over the slow link",
        Duration::from_secs(120),
        || {
            let count = fh.get("/_api/collection/c/count");
            count.status == 200 && count.json()["count"] == leader_count
        },
        || format!(": {}\n{}", state(&fh), follower.log()),
    );
    let seconds = started.elapsed().as_secs_f64();
    let st = state(&fh);
    eprintln!("{shipped} bytes of blocks crossed the link in {seconds:.1} s");
    assert_eq!(st["totalFailedConnects"], json!(0), "no reconnect: {st}");
    assert_eq!(st["lastError"]["errorNum"], json!(0), "{st}");
    assert!(
        seconds > 5.0,
        "the link was limited ({shipped} bytes in {seconds:.1} s)"
    );
}
