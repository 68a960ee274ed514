//! Claim: bad input gets ArangoDB's status and errorNum and changes nothing; authentication is
//! on by default; SIGTERM stops the daemon with status 0 and a restart serves the same data.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{Daemon, PASSWORD};
use serde_json::json;

/// An HS256 JWT of `claims` signed with `key`, as a client holding the secret would make it.
fn jwt_token(key: &[u8], claims: &serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::Mac;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[test]
fn bad_input_gets_precise_errors_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &["--server.maximal-document-size", "2000"]);
    let http = daemon.http();
    http.send("POST", "/_api/collection", &json!({ "name": "c" }))
        .assert_status(200);
    http.send(
        "POST",
        "/_db/_system/_api/document/c",
        &json!({ "_key": "k", "v": 1 }),
    )
    .assert_status(202);
    let tick = http.get("/_api/wal/lastTick").json()["tick"].clone();

    // Authentication.
    http.call("GET", "/_api/version", None, Some(""))
        .assert_error(401, 11);
    let wrong = format!("Basic {}", common::base64_encode(b"root:nope"));
    http.call("GET", "/_api/version", None, Some(&wrong))
        .assert_error(401, 11);
    http.call("GET", "/_api/version", None, Some("Bearer not.a.token"))
        .assert_error(401, 11);
    http.call(
        "POST",
        "/_open/auth",
        Some(br#"{"username":"root","password":"nope"}"#),
        Some(""),
    )
    .assert_error(401, 11);
    let token = http.call(
        "POST",
        "/_open/auth",
        Some(format!(r#"{{"username":"root","password":"{PASSWORD}"}}"#).as_bytes()),
        Some(""),
    );
    let jwt = token.json()["jwt"].as_str().expect("jwt").to_string();
    assert_eq!(
        http.call("GET", "/_api/version", None, Some(&format!("bearer {jwt}")))
            .status,
        200
    );
    // A token signed with this server's own secret but expired a second ago is refused, and so
    // is one signed with another secret.
    let secret = std::fs::read(dir.path().join("jwt-secret")).expect("jwt-secret");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (key, exp) in [(&secret[..], now - 1), (&b"another secret"[..], now + 3600)] {
        let token = jwt_token(
            key,
            &json!({"iss": "arangodb", "preferred_username": "root",
                                             "iat": now - 60, "exp": exp}),
        );
        http.call(
            "GET",
            "/_api/version",
            None,
            Some(&format!("bearer {token}")),
        )
        .assert_error(401, 11);
    }
    let fresh = jwt_token(
        &secret,
        &json!({"iss": "arangodb", "preferred_username": "root", "iat": now, "exp": now + 60}),
    );
    let answer = http.call(
        "GET",
        "/_api/version",
        None,
        Some(&format!("bearer {fresh}")),
    );
    assert_eq!(answer.status, 200, "the same token, not expired, is taken");

    // Malformed JSON, wrong shapes, bad keys, oversized documents.
    http.call("POST", "/_api/document/c", Some(b"{\"_key\": "), None)
        .assert_error(400, 600);
    http.call("POST", "/_api/document/c", Some(b"[1, 2"), None)
        .assert_error(400, 600);
    // A number no double holds (found by fuzzing: it was stored, then failed every parse).
    http.call("POST", "/_api/document/c", Some(br#"{"x": [1e400]}"#), None)
        .assert_error(400, 600);
    http.send("POST", "/_api/document/c", &json!(42))
        .assert_error(400, 1227);
    http.send("PUT", "/_api/document/c/k", &json!([1]))
        .assert_error(400, 1227);
    http.send("POST", "/_api/document/c", &json!({ "_key": "a b" }))
        .assert_error(400, 1221);
    http.send("POST", "/_api/document/c", &json!({ "_key": 7 }))
        .assert_error(400, 1221);
    http.send(
        "POST",
        "/_api/document/c",
        &json!({ "_key": "x".repeat(255) }),
    )
    .assert_error(400, 1221);
    http.send(
        "POST",
        "/_api/document/c",
        &json!({ "_key": "big", "blob": "x".repeat(3000) }),
    )
    .assert_error(413, 1216);
    http.send("POST", "/_api/document/c", &json!({ "_key": "k" }))
        .assert_error(409, 1210);
    http.send("PUT", "/_api/document/c/missing", &json!({ "v": 1 }))
        .assert_error(404, 1202);
    http.call("PATCH", "/_api/document/c/k", Some(b"{\"v\":2}"), None)
        .assert_status(202);
    let mut stale = http.call("PUT", "/_api/document/c/k", Some(b"{\"v\":3}"), None);
    stale.assert_status(202);
    stale = http.call(
        "DELETE",
        "/_api/document/c/k?ignoreRevs=false",
        Some(b"{\"_rev\":\"1\"}"),
        None,
    );
    stale.assert_error(412, 1200);
    let conditional = http.call("DELETE", "/_api/document/c/k", None, None);
    assert_eq!(conditional.status, 202);
    http.send("POST", "/_api/document/c", &json!({ "_key": "k", "v": 1 }))
        .assert_status(202);
    let tick = {
        let _ = tick;
        http.get("/_api/wal/lastTick").json()["tick"].clone()
    };

    // Unknown things.
    http.get("/_db/nope/_api/collection")
        .assert_error(404, 1228);
    http.get("/_api/document/nope/k").assert_error(404, 1203);
    http.send("POST", "/_api/document/nope", &json!({}))
        .assert_error(404, 1203);
    http.get("/_api/document/c/nokey").assert_error(404, 1202);
    http.send("POST", "/_api/collection", &json!({ "name": "c" }))
        .assert_error(409, 1207);
    http.send("POST", "/_api/collection", &json!({ "name": "bad name" }))
        .assert_error(400, 1208);
    http.call("DELETE", "/_api/version", None, None)
        .assert_error(405, 405);
    http.get("/_api/nothing/here").assert_error(404, 404);
    http.send(
        "POST",
        "/_api/cursor",
        &json!({ "query": "FOR d IN c RETURN d" }),
    )
    .assert_error(501, 9);
    http.get("/_api/wal/tail?from=abc").assert_error(400, 400);

    // Nothing changed: same tick, same document, same count.
    assert_eq!(http.get("/_api/wal/lastTick").json()["tick"], tick);
    assert_eq!(
        http.get("/_api/collection/c/count").json()["count"],
        json!(1)
    );
    assert_eq!(http.get("/_api/document/c/k").json()["v"], json!(1));
}

// Goal: a generated key never overwrites a document whose key a client chose: the generator
// moves past numeric keys it sees, and after a restart (which forgets that) the insert is
// refused with 1210 and the document is kept.
#[test]
fn generated_keys_never_overwrite_chosen_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(dir.path(), &[]);
    let http = daemon.http();
    http.send("POST", "/_api/collection", &json!({ "name": "c" }))
        .assert_status(200);
    let generated = |http: &common::Http| {
        let answer = http.send("POST", "/_api/document/c", &json!({ "g": true }));
        answer.assert_status(202);
        let key = answer.json()["_key"].as_str().expect("key").to_string();
        key.parse::<u64>().expect("numeric key")
    };
    let first = generated(&http);
    // The next generated key, and one far ahead (past the range reserved on disk).
    let near = first + 1;
    let far = first + 5_000_000;
    for key in [near, far] {
        http.send(
            "POST",
            "/_api/document/c",
            &json!({ "_key": key.to_string(), "chosen": true }),
        )
        .assert_status(202);
    }
    assert!(generated(&http) > far, "the generator moved past {far}");
    assert!(daemon.terminate().success(), "log:\n{}", daemon.log());

    // Restarted, the generator continues after the range it reserved on disk (DIR/keygen) and
    // forgets the keys it saw: put a run of chosen keys where it will generate next after a
    // restart (as a leader's generated keys are on a server that followed it).
    let mut daemon = Daemon::start(dir.path(), &[]);
    let http = daemon.http();
    generated(&http);
    let reserved: u64 = std::fs::read_to_string(dir.path().join("keygen"))
        .expect("keygen file")
        .trim()
        .parse()
        .expect("reserved key");
    let run: Vec<u64> = (reserved + 1..=reserved + 300).collect();
    let docs: Vec<_> = run
        .iter()
        .map(|key| json!({ "_key": key.to_string(), "chosen": true }))
        .collect();
    http.send("POST", "/_api/document/c", &json!(docs))
        .assert_status(202);
    assert!(daemon.terminate().success(), "log:\n{}", daemon.log());

    // The generated key meets the run: it is neither refused nor overwrites anything; the
    // generator crosses the run and goes on from there.
    let daemon = Daemon::start(dir.path(), &[]);
    let http = daemon.http();
    let after = generated(&http);
    assert!(
        after > reserved + 300,
        "generated {after} inside the run of chosen keys"
    );
    assert_eq!(generated(&http), after + 1);
    for key in [near, far].into_iter().chain(run) {
        let doc = http.get(&format!("/_api/document/c/{key}")).json();
        assert_eq!(doc["chosen"], json!(true), "document {key}: {doc}");
    }
    let count = http.get("/_api/collection/c/count").json();
    assert_eq!(count["count"], json!(2 + 300 + 5), "{count}");
}

#[test]
fn sigterm_stops_cleanly_and_restart_serves_the_same_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(dir.path(), &[]);
    let http = daemon.http();
    http.send("POST", "/_api/collection", &json!({ "name": "c" }))
        .assert_status(200);
    let docs: Vec<_> = (0..200)
        .map(|i| json!({ "_key": format!("d{i}"), "i": i }))
        .collect();
    let answer = http.send("POST", "/_api/document/c", &json!(docs));
    assert_eq!(answer.status, 202);
    let metrics = String::from_utf8(http.get("/_admin/metrics").body).expect("text");
    for name in [
        "tickship_wal_last_tick",
        "tickship_wal_fsync_seconds_bucket",
        "tickship_documents_written_total 200",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
    // The 200 documents are in the store's memtables (nothing flushed them yet).
    let memtables = common::metric_value(&metrics, "rocksdb_size_all_mem_tables")
        .expect("rocksdb_size_all_mem_tables");
    assert!(memtables > 200 * 8, "memtables hold {memtables} bytes");
    assert!(metrics.contains("rocksdb_block_cache_usage "), "{metrics}");
    let status = daemon.terminate();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        daemon.log()
    );
    let daemon = Daemon::start(dir.path(), &[]);
    let http = daemon.http();
    assert_eq!(
        http.get("/_api/collection/c/count").json()["count"],
        json!(200)
    );
    assert_eq!(http.get("/_api/document/c/d117").json()["i"], json!(117));
}

#[test]
fn generated_password_when_none_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tickshipd"))
        .args(["--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--server.endpoint",
        "--database.directory",
        "--wal.segment-size",
        "--wal.historic-logfiles",
        "--log.level",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    // Started without any password: one is generated into a 0600 file and works.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tickshipd"))
        .args([
            "--server.endpoint",
            "tcp://127.0.0.1:0",
            "--database.directory",
        ])
        .arg(dir.path())
        .env_remove("TICKSHIP_ROOT_PASSWORD")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut printed = Vec::new();
    let mut url = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.expect("line");
        if let Some(rest) = line.strip_prefix("tickshipd listening on ") {
            url = rest
                .split_whitespace()
                .next()
                .map(|a| format!("http://{a}"));
            break;
        }
        printed.push(line);
    }
    let path = dir.path().join("ROOT_PASSWORD");
    assert!(
        printed
            .iter()
            .any(|l| l.contains(&path.display().to_string())),
        "where is it? {printed:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).expect("file").permissions().mode() & 0o777,
        0o600
    );
    let password = std::fs::read_to_string(&path)
        .expect("password")
        .trim()
        .to_string();
    let http = common::Http::new(url.expect("listening"));
    let basic = format!(
        "Basic {}",
        common::base64_encode(format!("root:{password}").as_bytes())
    );
    assert_eq!(
        http.call("GET", "/_api/version", None, Some(&basic)).status,
        200
    );
    http.call("GET", "/_api/version", None, None)
        .assert_error(401, 11);
    let _ = child.kill();
    let _ = child.wait();
}

// Goal: what a newcomer hits at the HTTP door says what is wrong: which credential problem,
// which routes are served, which exist in ArangoDB but not here, and which do not exist at all.
#[test]
fn refusals_say_why_and_unserved_routes_answer_like_arangodb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &[]);
    let http = daemon.http();
    let missing = http.call("GET", "/_api/version", None, Some(""));
    missing.assert_error(401, 11);
    let wrong = http.call(
        "GET",
        "/_api/version",
        None,
        Some(&format!("Basic {}", common::base64_encode(b"root:not-it"))),
    );
    wrong.assert_error(401, 11);
    let (missing, wrong) = (missing.json(), wrong.json());
    assert!(
        missing["errorMessage"]
            .as_str()
            .unwrap()
            .contains("no credentials"),
        "{missing}"
    );
    assert!(
        wrong["errorMessage"]
            .as_str()
            .unwrap()
            .contains("wrong username or password"),
        "{wrong}"
    );

    http.send("POST", "/_api/collection", &json!({"name": "e", "type": 3}))
        .assert_status(200);
    let edges = json!([
        {"_key": "ab", "_from": "v/a", "_to": "v/b"},
        {"_key": "ca", "_from": "v/c", "_to": "v/a"},
        {"_key": "bc", "_from": "v/b", "_to": "v/c"},
    ]);
    http.send("POST", "/_api/document/e", &edges)
        .assert_status(202);
    let keys = |direction: &str| -> Vec<String> {
        let answer = http.get(&format!("/_api/edges/e?vertex=v/a{direction}"));
        answer.assert_status(200);
        let mut keys: Vec<String> = answer.json()["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .map(|e| e["_key"].as_str().unwrap().to_string())
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(""), ["ab", "ca"]);
    assert_eq!(keys("&direction=out"), ["ab"]);
    assert_eq!(keys("&direction=in"), ["ca"]);

    // ArangoDB serves these; tickship does not: 501 with errorNum 9, not 405.
    http.get("/_api/collection/e/figures").assert_error(501, 9);
    http.send("POST", "/_api/cursor", &json!({"query": "RETURN 1"}))
        .assert_error(501, 9);
    // A served route with a method it does not take: 405; a path nobody serves: 404.
    http.call("PATCH", "/_api/version", None, None)
        .assert_error(405, 405);
    http.get("/_api/no-such-thing").assert_error(404, 404);
}

/// Runs tickshipd on `dir` with `extra` flags, expecting it to fail; returns its stderr.
fn refused_start(dir: &std::path::Path, endpoint: &str, extra: &[&str]) -> String {
    let started = std::time::Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tickshipd"))
        .args(["--server.endpoint", endpoint, "--server.password", "pw"])
        .arg("--database.directory")
        .arg(dir)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tickshipd");
    assert!(
        !output.status.success(),
        "tickshipd started on {}",
        dir.display()
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // Said once, plainly: one line naming the cause, no colour codes.
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    stderr
}

// Goal: a daemon that cannot start says why in one line that names the flag or the other
// process, and a port in use is found before the data directory is opened.
#[test]
fn startup_refusals_name_the_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = Daemon::start(&dir.path().join("data"), &[]);
    let stderr = refused_start(&dir.path().join("data"), "tcp://127.0.0.1:0", &[]);
    let pid = running.child.as_ref().unwrap().id();
    assert!(
        stderr.contains(&format!("is in use by another tickshipd (pid {pid})")),
        "{stderr}"
    );
    assert_eq!(stderr.matches("in use by another").count(), 1, "{stderr}");

    // The running daemon's port: refused before the store or the WAL is opened.
    let address = running.url.trim_start_matches("http://");
    let fresh = dir.path().join("fresh");
    let stderr = refused_start(&fresh, &format!("tcp://{address}"), &[]);
    assert!(
        stderr.contains(&format!("cannot listen on {address} (--server.endpoint)")),
        "{stderr}"
    );
    // Nothing was opened: the directory holds only the lock the refused daemon took.
    let entries: Vec<_> = std::fs::read_dir(&fresh)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["tickshipd.lock"], "{stderr}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let stderr = refused_start(&file.join("data"), "tcp://127.0.0.1:0", &[]);
    assert!(
        stderr.contains("cannot create the data directory")
            && stderr.contains("(--database.directory)"),
        "{stderr}"
    );
}

trait AssertStatus {
    fn assert_status(&self, status: u16);
}

impl AssertStatus for common::Answer {
    fn assert_status(&self, status: u16) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
    }
}
