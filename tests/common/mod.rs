//! Real `tickshipd` processes for whole-process tests: started on 127.0.0.1 with an ephemeral
//! port and a fresh data directory, stopped (or killed) by the test. The daemon's log is kept in
//! the data directory and printed when a test fails.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

pub mod netns;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "test-password";

/// Leader flags for retention tests: small segments, deleted as soon as nothing needs them.
pub const PRUNING: [&str; 10] = [
    "--wal.segment-size",
    "1MiB",
    "--wal.historic-logfiles",
    "0",
    "--wal.file-timeout",
    "0",
    "--wal.file-timeout-initial",
    "0",
    "--store.flush-interval",
    "1",
];

/// The package's directory as cargo gives it when it runs the test, not where the test was
/// built: a target directory shared by two checkouts keeps a binary built in the other.
pub fn package_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from)
}

pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub url: String,
    log: PathBuf,
}

impl Daemon {
    /// Starts `tickshipd` on `dir` with `extra` flags and waits until it listens.
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_on(dir, 0, extra)
    }

    /// Starts `tickshipd` on `dir` listening on 127.0.0.1:`port` (0: any free port).
    pub fn start_on(dir: &Path, port: u16, extra: &[&str]) -> Daemon {
        Daemon::spawn(dir, port, extra, None)
    }

    /// Starts `tickshipd` inside network namespace `netns`, listening on `host` (an address of
    /// that namespace) and any free port.
    pub fn start_in_namespace(dir: &Path, netns: &str, host: &str, extra: &[&str]) -> Daemon {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(env!("CARGO_BIN_EXE_tickshipd"));
        Daemon::spawn_command(command, dir, &format!("tcp://{host}:0"), extra)
    }

    /// Starts `tickshipd` on `dir` with at most `files` descriptors (soft and hard limit, so the
    /// daemon cannot raise it).
    pub fn start_with_descriptor_limit(dir: &Path, files: u64, extra: &[&str]) -> Daemon {
        Daemon::spawn(dir, 0, extra, Some(files))
    }

    fn spawn(dir: &Path, port: u16, extra: &[&str], descriptors: Option<u64>) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tickshipd"));
        if let Some(files) = descriptors {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: files,
                rlim_max: files,
            };
            // SAFETY: setrlimit is async-signal-safe; it runs in the child between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Daemon::spawn_command(command, dir, &format!("tcp://127.0.0.1:{port}"), extra)
    }

    /// Runs `command` (tickshipd, or something that execs it) with the test's flags.
    fn spawn_command(mut command: Command, dir: &Path, endpoint: &str, extra: &[&str]) -> Daemon {
        std::fs::create_dir_all(dir).expect("data dir");
        let log = dir.join(format!("tickshipd-{}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut child = command
            .arg("--server.endpoint")
            .arg(endpoint)
            .arg("--database.directory")
            .arg(dir)
            .arg("--server.password")
            .arg(PASSWORD)
            .args(if extra.contains(&"--wal.segment-size") {
                vec![]
            } else {
                vec!["--wal.segment-size".to_string(), (4u64 << 20).to_string()]
            })
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn tickshipd");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        let address = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("tickshipd listening on ") {
                        break rest.split_whitespace().next().expect("address").to_string();
                    }
                }
                _ => {
                    let status = child.wait().expect("wait");
                    panic!(
                        "tickshipd exited ({status}) before listening; log:\n{}",
                        read(&log)
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "tickshipd did not start in time; log:\n{}",
                read(&log)
            );
        };
        // Keep draining stdout so the daemon never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Daemon {
            child: Some(child),
            dir: dir.to_path_buf(),
            url: format!("http://{address}"),
            log,
        }
    }

    pub fn log(&self) -> String {
        read(&self.log)
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id() as i32;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let (sender, exited) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(child.wait());
        });
        match exited.recv_timeout(Duration::from_secs(60)) {
            Ok(status) => status.expect("wait"),
            Err(_) => {
                // SAFETY: as above; the waiting thread then reaps it.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("tickshipd did not stop after SIGTERM; log:\n{}", self.log());
            }
        }
    }

    /// The endpoint as a follower's applier configuration names it.
    pub fn endpoint(&self) -> String {
        self.url.replace("http://", "tcp://")
    }

    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    pub fn http(&self) -> Http {
        Http {
            base: self.url.clone(),
            agent: agent(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- tickshipd log ----\n{}", self.log());
        }
    }
}

fn read(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// A response: status, headers we look at, body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an ArangoDB error with this status and errorNum.
    pub fn assert_error(&self, status: u16, error_num: u64) {
        let body = self.json();
        assert_eq!(
            (self.status, body["errorNum"].as_u64()),
            (status, Some(error_num)),
            "{body}"
        );
        assert_eq!(body["error"], serde_json::json!(true));
        assert_eq!(body["code"].as_u64(), Some(u64::from(status)));
        assert!(body["errorMessage"].is_string());
    }
}

pub struct Http {
    pub base: String,
    agent: ureq::Agent,
}

impl Http {
    pub fn new(base: String) -> Http {
        Http {
            base,
            agent: agent(),
        }
    }

    /// A request with root's Basic credentials (or `auth`, as the whole Authorization value;
    /// `Some("")` sends none).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        auth: Option<&str>,
    ) -> Answer {
        self.try_call(method, path, body, auth)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Like `send`, but a transport failure (the server died) is an error, not a panic.
    pub fn try_send(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Answer, String> {
        self.try_call(method, path, Some(body.to_string().as_bytes()), None)
    }

    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        auth: Option<&str>,
    ) -> Result<Answer, String> {
        let url = format!("{}{path}", self.base);
        let basic = format!(
            "Basic {}",
            base64_encode(format!("root:{PASSWORD}").as_bytes())
        );
        let authorization = auth.unwrap_or(&basic);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        // An empty `auth` sends no credentials at all.
        if !authorization.is_empty() {
            request = request.header("authorization", authorization);
        }
        let request = request
            .header("content-type", "application/json")
            .body(body.map(<[u8]>::to_vec).unwrap_or_default())
            .expect("request");
        let response = self.agent.run(request).map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = response
            .into_body()
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    pub fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None, None)
    }

    pub fn send(&self, method: &str, path: &str, body: &serde_json::Value) -> Answer {
        self.call(method, path, Some(body.to_string().as_bytes()), None)
    }

    /// The server's unlabelled metric `name` from `/_admin/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let text = String::from_utf8_lossy(&self.get("/_admin/metrics").body).into_owned();
        metric_value(&text, name).unwrap_or_else(|| panic!("no {name} in {text}"))
    }
}

/// The value of the unlabelled metric `name` in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

pub fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Waits until `check` holds, failing after `limit` with `what` and what `describe` says. The
/// conditions are other processes' state, read over HTTP or from files (nothing pushes them), so
/// this polls every 25 ms: the one polling loop of the whole-process tests.
pub fn wait_within(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> bool,
    describe: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}{}",
            describe()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `wait_within` a minute, adding what `describe` says to the failure.
pub fn wait_until_or(what: &str, check: impl FnMut() -> bool, describe: impl Fn() -> String) {
    wait_within(what, Duration::from_secs(60), check, describe);
}

/// `wait_within` a minute.
pub fn wait_until(what: &str, check: impl FnMut() -> bool) {
    wait_within(what, Duration::from_secs(60), check, String::new);
}

/// What a `tickship` command did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tickship --server.endpoint E --server.password P ARGS` against `server`, without
/// TICKSHIP_ROOT_PASSWORD from the test's environment.
pub fn tickship_on(server: &Daemon, password: &str, args: &[&str]) -> Run {
    let mut all = vec![
        "--server.endpoint".to_string(),
        server.endpoint(),
        "--server.password".to_string(),
        password.to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    tickship_args(&all)
}

/// Runs `tickship` with exactly `args`, without TICKSHIP_ROOT_PASSWORD from the environment.
pub fn tickship_args(args: &[String]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_tickship"))
        .args(args)
        .env_remove("TICKSHIP_ROOT_PASSWORD")
        .output()
        .expect("run tickship");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Mounts a tmpfs of `size` on `dir`; false if this process may not (not root).
pub fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            dir.to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// (count, checksum over keys, revisions and data) of `collection`, or None if it is missing.
pub fn collection_state(http: &Http, collection: &str) -> Option<(u64, String)> {
    let answer = http.get(&format!(
        "/_api/collection/{collection}/checksum?withRevisions=true&withData=true"
    ));
    if answer.status == 404 {
        return None;
    }
    let checksum = answer.json()["checksum"].as_str().unwrap().to_string();
    let count = http
        .get(&format!("/_api/collection/{collection}/count"))
        .json()["count"]
        .as_u64()
        .unwrap();
    Some((count, checksum))
}

/// The stdout of `run`, which must have exited 0 (`what` names it in the failure).
pub fn ok(run: Run, what: &str) -> String {
    assert_eq!(
        run.code, 0,
        "{what}\nstdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    run.stdout
}

/// The JSON of an answer that succeeded (status below 300), or a failure naming `what`.
pub fn accepted(answer: Answer, what: &str) -> serde_json::Value {
    assert!(
        answer.status < 300,
        "{what}: {} {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    answer.json()
}

/// An applier configuration for following `leader` as a test does (root, quick retries), with
/// the attributes of `extra` on top.
pub fn applier_body(leader: &Daemon, extra: serde_json::Value) -> serde_json::Value {
    let mut body = serde_json::json!({
        "endpoint": leader.endpoint(),
        "username": "root",
        "password": PASSWORD,
        "connectionRetryWaitTime": 0.1,
        "maxConnectRetries": 3,
        "initialSyncMaxWaitTime": 30,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

/// `words` hex words of xorshift noise, going on from `state`: text that compresses little.
pub fn noise_text(state: &mut u64, words: usize) -> String {
    (0..words)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            format!("{:016x}", *state)
        })
        .collect()
}

/// Creates collection `name` of type `kind` (2 document, 3 edge).
pub fn create(http: &Http, name: &str, kind: u64) {
    let answer = http.send(
        "POST",
        "/_api/collection",
        &json!({"name": name, "type": kind}),
    );
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

/// Documents `from..to` of about 1 KB that compress little, with `version` in them.
pub fn fill(http: &Http, collection: &str, from: u64, to: u64, version: u64) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (from * 7919 + version);
    let mut start = from;
    while start < to {
        let end = (start + 500).min(to);
        let docs: Vec<Value> = (start..end)
            .map(|i| {
                let text: String = noise_text(&mut state, 60);
                json!({"_key": format!("k{i:06}"), "v": version, "text": text})
            })
            .collect();
        let answer = http.send(
            "POST",
            &format!("/_api/document/{collection}?overwriteMode=replace"),
            &json!(docs),
        );
        assert!(
            answer.status == 201 || answer.status == 202,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        start = end;
    }
}

/// `daemon`'s HTTP API in database `db`.
pub fn in_database(daemon: &Daemon, db: &str) -> Http {
    let mut http = daemon.http();
    http.base = format!("{}/_db/{db}", daemon.url);
    http
}

/// Waits until each of `collections` (database, name) is equal on both (count and checksum with
/// revisions and data).
pub fn converged(leader: &Daemon, follower: &Daemon, collections: &[(&str, &str)]) {
    for (db, collection) in collections {
        let (lh, fh) = (in_database(leader, db), in_database(follower, db));
        wait_until_or(
            &format!("{db}/{collection} on the follower equals the leader's"),
            || collection_state(&lh, collection) == collection_state(&fh, collection),
            || {
                format!(
                    "\nleader {:?}, follower {:?}\nfollower state {}",
                    collection_state(&lh, collection),
                    collection_state(&fh, collection),
                    fh.get("/_api/replication/applier-state?global=true").json()
                )
            },
        );
    }
}

/// Whether `now` has reached `time`, an ArangoDB state document's `YYYY-MM-DDTHH:MM:SSZ` (whole
/// seconds: up to a second before the instant it stands for).
pub fn iso8601_reached(time: &str, now: std::time::SystemTime) -> bool {
    let field = |range: std::ops::Range<usize>| -> i64 {
        time.get(range)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not YYYY-MM-DDTHH:MM:SSZ: {time:?}"))
    };
    let (year, month, day) = (field(0..4), field(5..7), field(8..10));
    // Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm, as the server's).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + field(11..13) * 3600 + field(14..16) * 60 + field(17..19);
    let now = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    now >= secs
}

/// The WAL segment files in data directory `dir`, oldest first (the active one last).
pub fn wal_segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    segments
}

/// The first tick `http`'s server can serve (`logger-first-tick`).
pub fn first_tick(http: &Http) -> u64 {
    http.get("/_api/replication/logger-first-tick").json()["firstTick"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}
