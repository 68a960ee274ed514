//! A real `tickshipd` follower against a leader made for the test over real QUIC on 127.0.0.1:
//! one that lets the follower in and then sends nothing, and one that cuts a frame short. The
//! follower must count connections that bring nothing (and stop after `maxConnectRetries`), keep
//! the whole blocks of a frame that never finished, and ask again only for what it lacks.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Daemon, Http, PASSWORD};
use serde_json::{json, Value};
use tickship::net::frame::{self, Kind, BLOCKS_BYTES_MAX};
use tickship::net::scram::{salted_password, StoredCredential};
use tickship::net::session::{self, LeaderSide};
use tickship::net::transport::{bind_udp, server_endpoint};
use tickship::net::{Control, FramedStream, Identity, Idle, Tail};
use tickship::storage::wal::{block, Record, RecordType};
use tickship::storage::Tick;

/// What the leader made for the test does once a follower has sent `Tail`.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Nothing at all: the connection stays open and silent.
    Silent,
    /// The first session: one whole block and half of the next, in one frame, then silence.
    /// Later sessions: every block after the follower's `from`, then `Idle`.
    CutShort,
}

fn credential() -> StoredCredential {
    let salt = b"salt-of-the-stalling-leader".to_vec();
    StoredCredential {
        salted_password: salted_password(PASSWORD, &salt, 4096),
        salt,
        iterations: 4096,
    }
}

/// Two blocks of the leader's log: ticks 1..=40 and 41..=80 (document puts into a collection
/// the follower does not have, so applying skips them).
fn blocks() -> Vec<Bytes> {
    let padding = "x".repeat(400);
    (0..2u64)
        .map(|b| {
            let docs: Vec<(String, Vec<u8>)> = (0..40)
                .map(|i| {
                    let key = format!("k{b}-{i}");
                    let data = format!(r#"{{"_key":"{key}","p":"{padding}{i}"}}"#).into_bytes();
                    (key, data)
                })
                .collect();
            let records: Vec<Record<'_>> = docs
                .iter()
                .map(|(key, data)| Record {
                    kind: RecordType::DocumentPut,
                    tid: 0,
                    db: "_system",
                    collection: "424242",
                    key,
                    data,
                })
                .collect();
            block::prepare(&records)
                .expect("block")
                .to_block(Tick::new(1 + 40 * b))
                .into_bytes()
        })
        .collect()
}

/// Starts the leader; returns its address and the `from` of every `Tail` it was sent.
fn start_leader(
    runtime: &tokio::runtime::Runtime,
    behaviour: Behaviour,
) -> (SocketAddr, Arc<Mutex<Vec<u64>>>) {
    let identity = Identity::generate(vec!["localhost".into()]).expect("identity");
    let endpoint = {
        let _entered = runtime.enter();
        server_endpoint(bind_udp("127.0.0.1:0".parse().unwrap()).unwrap(), &identity).unwrap()
    };
    let addr = endpoint.local_addr().unwrap();
    let tails = Arc::new(Mutex::new(Vec::new()));
    let seen = tails.clone();
    runtime.spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                let Ok((send, recv)) = connection.accept_bi().await else {
                    return;
                };
                let mut stream = FramedStream::new(send, recv, BLOCKS_BYTES_MAX);
                let lookup = |name: &str| (name == "root").then(credential);
                let side = LeaderSide {
                    server_id: "999000999000999",
                    credentials: Some(&lookup),
                    database_exists: &|db| db == "_system",
                    log_range: &|| (1, 80),
                };
                if session::accept(&connection, &mut stream, &side)
                    .await
                    .is_err()
                {
                    return;
                }
                let Ok(tail) = stream.recv_message::<Tail>(Duration::from_secs(10)).await else {
                    return;
                };
                let session = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(tail.from);
                    seen.len()
                };
                let (mut send, _recv, _) = stream.into_inner();
                let blocks = blocks();
                match behaviour {
                    Behaviour::Silent => {}
                    Behaviour::CutShort if session == 1 => {
                        let payload_len = 8 + blocks.iter().map(|b| 4 + b.len()).sum::<usize>();
                        let mut bytes = frame::header(Kind::Blocks, payload_len).to_vec();
                        bytes.extend_from_slice(&80u64.to_le_bytes());
                        bytes.extend_from_slice(&(blocks[0].len() as u32).to_le_bytes());
                        bytes.extend_from_slice(&blocks[0]);
                        bytes.extend_from_slice(&(blocks[1].len() as u32).to_le_bytes());
                        bytes.extend_from_slice(&blocks[1][..blocks[1].len() / 2]);
                        let _ = send.write_all(&bytes).await;
                    }
                    Behaviour::CutShort => {
                        let wanted: Vec<Bytes> = blocks
                            .into_iter()
                            .enumerate()
                            .filter(|(i, _)| 40 * (*i as u64 + 1) > tail.from)
                            .map(|(_, b)| b)
                            .collect();
                        let payload_len = 8 + wanted.iter().map(|b| 4 + b.len()).sum::<usize>();
                        let mut bytes = frame::header(Kind::Blocks, payload_len).to_vec();
                        bytes.extend_from_slice(&80u64.to_le_bytes());
                        for block in &wanted {
                            bytes.extend_from_slice(&(block.len() as u32).to_le_bytes());
                            bytes.extend_from_slice(block);
                        }
                        bytes.extend_from_slice(&Idle { last_tick: 80 }.to_frame());
                        let _ = send.write_all(&bytes).await;
                    }
                }
                // Hold the connection until the follower goes.
                connection.closed().await;
            });
        }
    });
    (addr, tails)
}

fn state(http: &Http) -> Value {
    http.get("/_api/replication/applier-state").json()["state"].clone()
}

fn follow(http: &Http, leader: SocketAddr) {
    let config = json!({
        "endpoint": format!("tcp://{leader}"),
        "username": "root",
        "password": PASSWORD,
        "requestTimeout": 1,
        "connectionRetryWaitTime": 0.1,
        "maxConnectRetries": 3,
    });
    let answer = http.send("PUT", "/_api/replication/applier-config", &config);
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let answer = http.send("PUT", "/_api/replication/applier-start?from=0", &json!({}));
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

#[test]
fn a_leader_that_lets_the_follower_in_and_sends_nothing_is_counted_as_failing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (leader, tails) = start_leader(&runtime, Behaviour::Silent);
    let dir = tempfile::tempdir().unwrap();
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let fh = follower.http();
    follow(&fh, leader);
    // While it retries, the state says it is failing, not healthy.
    common::wait_until_or(
        "the applier counts sessions that brought nothing",
        || state(&fh)["progress"]["failedConnects"].as_u64() >= Some(2),
        || state(&fh).to_string(),
    );
    let st = state(&fh);
    assert_ne!(st["lastError"]["errorNum"], json!(0), "{st}");
    common::wait_until_or(
        "the applier gives up after maxConnectRetries",
        || state(&fh)["running"] == json!(false),
        || state(&fh).to_string(),
    );
    let st = state(&fh);
    assert_eq!(st["lastError"]["errorNum"], json!(1400), "{st}");
    let message = st["lastError"]["errorMessage"].as_str().unwrap();
    assert!(message.contains("nothing received for"), "{message}");
    assert_eq!(st["totalFailedConnects"], json!(4), "{st}");
    assert_eq!(tails.lock().unwrap().as_slice(), &[0, 0, 0, 0]);
    assert_eq!(fh.metric("arangodb_replication_failed_connects_total"), 4);
    assert_eq!(fh.metric("tickship_replication_applier_running"), 0);
}

#[test]
fn the_whole_blocks_of_a_frame_cut_short_are_kept() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (leader, tails) = start_leader(&runtime, Behaviour::CutShort);
    let dir = tempfile::tempdir().unwrap();
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let fh = follower.http();
    follow(&fh, leader);
    let last_tick = || {
        fh.get("/_api/wal/lastTick").json()["tick"]
            .as_str()
            .unwrap()
            .to_string()
    };
    common::wait_until_or(
        "the follower holds the leader's whole log",
        || last_tick() == "80",
        || format!("{} / {}", last_tick(), state(&fh)),
    );
    // The second session asked only for what the first did not bring whole.
    assert_eq!(tails.lock().unwrap().as_slice(), &[0, 40]);
    common::wait_until_or(
        "the applier is level and healthy",
        || {
            let st = state(&fh);
            st["lastError"]["errorNum"] == json!(0)
                && st["progress"]["failedConnects"] == json!(0)
                && st["lastProcessedContinuousTick"] == json!("80")
        },
        || state(&fh).to_string(),
    );
    let st = state(&fh);
    assert_eq!(st["running"], json!(true), "{st}");
    assert_eq!(st["totalFailedConnects"], json!(1), "{st}");
    assert!(fh.metric("arangodb_replication_tailing_bytes_received_total") > 0);
}
