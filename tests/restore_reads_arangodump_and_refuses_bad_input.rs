//! `tickship restore` reads an arangodump directory written by hand as §7.2 of the reference
//! describes it (plain and gzip data files, bare and enveloped lines, 2302 removals, ArangoDB's
//! own `_rev` strings), and each bad input stops it with a message naming the file and line or
//! byte and what to do: a malformed line, a truncated gzip file, a missing structure file, an
//! encrypted dump, an existing collection without --overwrite, a wrong password; `tickship dump`
//! refuses a directory that exists and, where this test may mount a small file system, a full
//! disk.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::{mount_tmpfs, tickship_on as tickship, Daemon, Run, PASSWORD};
use serde_json::json;

fn fails_with(run: &Run, words: &[&str]) {
    assert_ne!(run.code, 0, "stdout: {}", run.stdout);
    for word in words {
        assert!(
            run.stderr.contains(word),
            "{word:?} in stderr: {}",
            run.stderr
        );
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn stem(name: &str) -> String {
    use md5::Digest;
    let digest = md5::Md5::digest(name.as_bytes());
    format!(
        "{name}_{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// A dump as ArangoDB 3.x's arangodump writes it: `people` plain with envelopes and a removal,
/// `friends` (edges) gzip with bare documents, `empty` with an empty data file.
fn arangodump_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ENCRYPTION"), "none").unwrap();
    std::fs::write(
        dir.join("dump.json"),
        json!({"database": "_system", "lastTickAtDumpStart": "37276350", "properties": {"name": "_system"}}).to_string(),
    )
    .unwrap();
    let structure = |name: &str, kind: u64, id: &str| {
        json!({
            "parameters": {"name": name, "type": kind, "id": id, "cid": id, "waitForSync": false,
                           "keyOptions": {"type": "traditional", "allowUserKeys": true, "lastValue": 0}},
            "indexes": []
        })
        .to_string()
    };
    std::fs::write(
        dir.join(format!("{}.structure.json", stem("people"))),
        structure("people", 2, "9001"),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{}.structure.json", stem("friends"))),
        structure("friends", 3, "9002"),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{}.structure.json", stem("empty"))),
        structure("empty", 2, "9003"),
    )
    .unwrap();
    let mut people = String::new();
    for i in 0..100 {
        people.push_str(&format!(
            "{{\"type\":2300,\"data\":{{\"_key\":\"p{i}\",\"_id\":\"people/p{i}\",\"_rev\":\"_fhX{i:03}---\",\"name\":\"n{i}\"}}}}\n"
        ));
    }
    // An older dump's removal of a document written earlier in the file.
    people.push_str("{\"type\":2302,\"data\":{\"_key\":\"p7\",\"_rev\":\"_fhZ---\"}}\n");
    std::fs::write(dir.join(format!("{}.data.json", stem("people"))), people).unwrap();
    let mut friends = String::new();
    for i in 0..50 {
        friends.push_str(&format!(
            "{{\"_key\":\"f{i}\",\"_id\":\"friends/f{i}\",\"_from\":\"people/p{i}\",\"_to\":\"people/p{}\",\"_rev\":\"_fhY---\"}}\n",
            i + 1
        ));
    }
    std::fs::write(
        dir.join(format!("{}.data.json.gz", stem("friends"))),
        gzip(friends.as_bytes()),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{}.data.json", stem("empty"))), "").unwrap();
}

fn count(server: &Daemon, collection: &str) -> u64 {
    server
        .http()
        .get(&format!("/_api/collection/{collection}/count"))
        .json()["count"]
        .as_u64()
        .unwrap()
}

#[test]
fn an_arangodump_directory_restores_and_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = Daemon::start(&dir.path().join("server"), &[]);
    let dump = dir.path().join("arangodump");
    arangodump_dir(&dump);
    let dump_arg = dump.to_str().unwrap();
    let run = tickship(
        &server,
        PASSWORD,
        &["restore", "--input-directory", dump_arg],
    );
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout.contains("Processed 3 collection(s)"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("tick 37276350"), "{}", run.stdout);
    assert_eq!(count(&server, "people"), 99, "100 documents, one removed");
    assert_eq!(count(&server, "friends"), 50);
    assert_eq!(count(&server, "empty"), 0);
    let edge = server.http().get("/_api/document/friends/f3").json();
    assert_eq!(edge["_from"], json!("people/p3"));
    assert_eq!(server.http().get("/_api/document/people/p7").status, 404);
    // New writes work and their generated keys do not run into restored ones.
    let written = server
        .http()
        .send("POST", "/_api/document/people", &json!({"x": 1}));
    assert_eq!(written.status, 202);

    // An existing collection without --overwrite: 1207, and what to do.
    let again = tickship(
        &server,
        PASSWORD,
        &["restore", "--input-directory", dump_arg],
    );
    fails_with(&again, &["duplicate name", "1207", "overwrite"]);
    let replaced = tickship(
        &server,
        PASSWORD,
        &[
            "restore",
            "--input-directory",
            dump_arg,
            "--overwrite",
            "true",
        ],
    );
    assert_eq!(replaced.code, 0, "{}", replaced.stderr);
    assert_eq!(count(&server, "people"), 99);

    // A wrong password.
    let wrong = tickship(
        &server,
        "not-it",
        &["restore", "--input-directory", dump_arg],
    );
    fails_with(&wrong, &["401", "password"]);

    // A malformed line, and a number no double holds (refused as the document API refuses it):
    // the file and the line in it.
    for (name, line, says) in [
        (
            "bad-line",
            "{\"_key\":\"x\", this is not json}",
            "invalid JSON",
        ),
        (
            "huge-number",
            "{\"_key\":\"h\",\"n\":1e400}",
            "number out of range: 1e400",
        ),
    ] {
        let bad = dir.path().join(name);
        arangodump_dir(&bad);
        let people = bad.join(format!("{}.data.json", stem("people")));
        let mut text = std::fs::read_to_string(&people).unwrap();
        text.push_str(line);
        text.push('\n');
        std::fs::write(&people, text).unwrap();
        let run = tickship(
            &server,
            PASSWORD,
            &[
                "restore",
                "--input-directory",
                bad.to_str().unwrap(),
                "--overwrite",
            ],
        );
        fails_with(
            &run,
            &[&format!("{} line 102", people.display()), says, "complete:"],
        );
    }

    // A bad key.
    let bad_key = dir.path().join("bad-key");
    arangodump_dir(&bad_key);
    let people = bad_key.join(format!("{}.data.json", stem("people")));
    std::fs::write(&people, "{\"_key\":\"a b/c\"}\n").unwrap();
    let run = tickship(
        &server,
        PASSWORD,
        &[
            "restore",
            "--input-directory",
            bad_key.to_str().unwrap(),
            "--overwrite",
        ],
    );
    fails_with(&run, &["line 1", "illegal document key"]);

    // A truncated gzip file: the file and how far it could be read.
    let truncated = dir.path().join("truncated");
    arangodump_dir(&truncated);
    let friends = truncated.join(format!("{}.data.json.gz", stem("friends")));
    let bytes = std::fs::read(&friends).unwrap();
    std::fs::write(&friends, &bytes[..bytes.len() / 2]).unwrap();
    let run = tickship(
        &server,
        PASSWORD,
        &[
            "restore",
            "--input-directory",
            truncated.to_str().unwrap(),
            "--overwrite",
        ],
    );
    fails_with(
        &run,
        &[
            &friends.display().to_string(),
            "cannot read past byte",
            "complete:",
        ],
    );

    // A data file without its structure file.
    let missing = dir.path().join("missing");
    arangodump_dir(&missing);
    std::fs::remove_file(missing.join(format!("{}.structure.json", stem("people")))).unwrap();
    let run = tickship(
        &server,
        PASSWORD,
        &["restore", "--input-directory", missing.to_str().unwrap()],
    );
    fails_with(&run, &["has no structure file", "people_"]);

    // An encrypted dump.
    let encrypted = dir.path().join("encrypted");
    arangodump_dir(&encrypted);
    std::fs::write(encrypted.join("ENCRYPTION"), "aes-256-ctr").unwrap();
    let run = tickship(
        &server,
        PASSWORD,
        &["restore", "--input-directory", encrypted.to_str().unwrap()],
    );
    fails_with(&run, &["encrypted", "aes-256-ctr"]);

    // Restore-data over HTTP with a bad edge: 400 with errorNum 1233 and the line.
    let answer = server.http().call(
        "PUT",
        "/_api/replication/restore-data?collection=friends",
        Some(b"{\"_key\":\"ok\",\"_from\":\"people/p1\",\"_to\":\"people/p2\"}\n{\"_key\":\"bad\"}\n"),
        None,
    );
    answer.assert_error(400, 1233);
    assert!(answer.json()["errorMessage"]
        .as_str()
        .unwrap()
        .contains("line 2"));
    // All or nothing: the good line before it was not stored either.
    assert_eq!(server.http().get("/_api/document/friends/ok").status, 404);
}

#[test]
fn dump_refuses_an_existing_directory_and_a_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    let server = Daemon::start(&dir.path().join("server"), &[]);
    let http = server.http();
    assert_eq!(
        http.send("POST", "/_api/collection", &json!({"name": "c"}))
            .status,
        200
    );
    let docs: Vec<_> = (0..2000)
        .map(|i| json!({"_key": format!("k{i}"), "pad": "y".repeat(1000)}))
        .collect();
    assert_eq!(
        http.send("POST", "/_api/document/c", &json!(docs)).status,
        202
    );
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("something"), "x").unwrap();
    let run = tickship(
        &server,
        PASSWORD,
        &["dump", "--output-directory", out.to_str().unwrap()],
    );
    fails_with(&run, &["already exists", "--overwrite true"]);

    // A full disk: a 1 MiB tmpfs for a 2 MB dump (needs root to mount; skipped otherwise).
    let small = dir.path().join("small");
    let mounted = mount_tmpfs(&small, "1m");
    if !mounted {
        eprintln!("skipping the full-disk case: cannot mount a tmpfs (not root)");
        return;
    }
    let run = tickship(
        &server,
        PASSWORD,
        &[
            "dump",
            "--output-directory",
            small.join("d").to_str().unwrap(),
        ],
    );
    let _ = Command::new("umount").arg(&small).status();
    fails_with(
        &run,
        &["collection 'c'", "No space left on device", "complete in"],
    );
}

#[test]
fn restore_into_a_full_disk_stops_with_the_error_and_names_what_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    if !mount_tmpfs(&small, "48m") {
        eprintln!("skipping: cannot mount a tmpfs (not root)");
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let leader = Daemon::start(&dir.path().join("leader"), &[]);
        let http = leader.http();
        for name in ["a_small", "b_big"] {
            assert_eq!(
                http.send("POST", "/_api/collection", &json!({"name": name}))
                    .status,
                200
            );
        }
        assert_eq!(
            http.send("POST", "/_api/document/a_small", &json!([{"_key": "x"}]))
                .status,
            202
        );
        // About 80 MB that compress little: more than the follower's disk holds.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for batch in 0..80 {
            let docs: Vec<_> = (0..100)
                .map(|i| {
                    let text: String = common::noise_text(&mut state, 640);
                    json!({"_key": format!("k{batch}-{i}"), "t": text})
                })
                .collect();
            assert_eq!(
                http.send("POST", "/_api/document/b_big", &json!(docs))
                    .status,
                202
            );
        }
        let dump = dir.path().join("dump");
        let run = tickship(
            &leader,
            PASSWORD,
            &["dump", "--output-directory", dump.to_str().unwrap()],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        let follower = Daemon::start(&small.join("follower"), &[]);
        let run = tickship(
            &follower,
            PASSWORD,
            &["restore", "--input-directory", dump.to_str().unwrap()],
        );
        fails_with(
            &run,
            &[
                "collection 'b_big'",
                "No space left on device",
                "complete: 1 of 2 collection(s) (a_small)",
            ],
        );
        // The server stays up and says what it holds.
        let count = follower.http().get("/_api/collection/a_small/count");
        assert_eq!(count.json()["count"], json!(1));
    });
    let _ = Command::new("umount").arg(&small).status();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
