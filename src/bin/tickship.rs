//! `tickship`: the command line for replication, in the role of arangosh's replication commands,
//! and `tickship demo`, which runs a real leader and follower on this machine.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "tickship",
    version,
    about = "Replication commands for tickshipd (as arangosh's replication module), and the demo",
    after_help = "The --server.* options name the tickshipd this command talks to and may stand \
                  anywhere on the line.\nExample: tickship --server.endpoint tcp://127.0.0.1:8530 \
                  --server.password PW replication setup --leader.endpoint tcp://127.0.0.1:8529 \
                  --leader.password LEADER-PW"
)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: Top,
}

/// The server the CLI talks to. Every id starts with `server_`, so that no argument of a
/// subcommand can shadow one of these.
#[derive(clap::Args)]
struct ServerArgs {
    /// The tickshipd to talk to: tcp://HOST:PORT.
    #[arg(
        id = "server_endpoint",
        long = "server.endpoint",
        global = true,
        value_name = "ENDPOINT",
        default_value = "tcp://127.0.0.1:8529",
        help_heading = "Server"
    )]
    endpoint: String,
    /// User name on that server.
    #[arg(
        id = "server_username",
        long = "server.username",
        global = true,
        value_name = "USER",
        default_value = "root",
        help_heading = "Server"
    )]
    username: String,
    /// Password on that server [default: $TICKSHIP_ROOT_PASSWORD, else --server.password-file].
    #[arg(
        id = "server_password",
        long = "server.password",
        global = true,
        value_name = "PASSWORD",
        help_heading = "Server"
    )]
    password: Option<String>,
    /// File whose first line is the password (as tickshipd's --server.password-file; a
    /// tickshipd started without a password wrote one to DIR/ROOT_PASSWORD).
    #[arg(
        id = "server_password_file",
        long = "server.password-file",
        global = true,
        value_name = "FILE",
        help_heading = "Server"
    )]
    password_file: Option<PathBuf>,
    /// Database whose applier and logger to use.
    #[arg(
        id = "server_database",
        long = "server.database",
        global = true,
        value_name = "NAME",
        default_value = "_system",
        help_heading = "Server"
    )]
    database: String,
}

/// The ids of `ServerArgs`, which the demo refuses (it starts its own servers).
const SERVER_ARG_IDS: [&str; 5] = [
    "server_endpoint",
    "server_username",
    "server_password",
    "server_password_file",
    "server_database",
];

#[derive(Subcommand)]
enum Top {
    /// The replication applier of the server (a follower): set up, start, stop, state,
    /// properties.
    #[command(subcommand)]
    Replication(ReplicationCommand),
    /// The replication logger of the server (a leader): state, first tick, tick ranges.
    #[command(subcommand)]
    Logger(LoggerCommand),
    /// Runs a leader and a follower on this machine with a live load, shows the applier
    /// following, and checks that the follower's documents equal the leader's.
    #[command(disable_help_flag = true)]
    Demo(DemoArgs),
}

#[derive(Subcommand)]
enum ReplicationCommand {
    /// Makes the server a follower of a leader (make-follower) and waits until it has caught up;
    /// exits non-zero, with the error, if it could not.
    Setup(SetupArgs),
    /// Starts the applier: after tick FROM, or where it left off.
    Start {
        /// Tick to start after (as printed by a dump: "Last tick provided by server is: N").
        #[arg(long, value_name = "TICK")]
        from: Option<u64>,
    },
    /// Stops the applier.
    Stop,
    /// Prints the applier state document; exits non-zero if it holds an error.
    State,
    /// Prints the applier configuration, or changes it with a JSON object.
    Properties {
        /// Attributes to change, e.g. '{"endpoint":"tcp://127.0.0.1:8529","password":"PW"}'.
        #[arg(value_name = "JSON")]
        json: Option<String>,
    },
}

#[derive(clap::Args)]
struct SetupArgs {
    /// The leader: tcp://HOST:PORT (or --leader.endpoint).
    #[arg(
        id = "leader_positional",
        value_name = "LEADER",
        conflicts_with = "leader_endpoint",
        required_unless_present = "leader_endpoint"
    )]
    leader: Option<String>,
    /// The leader: tcp://HOST:PORT.
    #[arg(id = "leader_endpoint", long = "leader.endpoint", value_name = "ENDPOINT")]
    leader_endpoint: Option<String>,
    /// User name on the leader.
    #[arg(
        long = "leader.username",
        alias = "leader-username",
        value_name = "USER",
        default_value = "root"
    )]
    leader_username: String,
    /// Password on the leader [default: the server's password].
    #[arg(
        long = "leader.password",
        alias = "leader-password",
        value_name = "PASSWORD"
    )]
    leader_password: Option<String>,
    /// File whose first line is the password on the leader.
    #[arg(long = "leader.password-file", value_name = "FILE")]
    leader_password_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum LoggerCommand {
    /// Prints the logger state: last tick, and the replication clients holding the log.
    State,
    /// Prints the first tick the server can still serve.
    FirstTick,
    /// Prints the WAL segments and the ticks each holds.
    TickRanges,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Data directory for both servers (default: a fresh one under /var/tmp, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds of load.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Documents per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Most documents written in all.
    #[arg(long, default_value_t = 5_000_000)]
    max_docs: u64,
    /// Catch-up run: the follower's applier is stopped during the load and started after it;
    /// the figures then include the catch-up rate.
    #[arg(long)]
    catch_up: bool,
    /// `--rocksdb.documents-in-wal` of both servers: `true` (their default) keeps each document
    /// only in the WAL, `false` stores it in the document store as well.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    documents_in_wal: bool,
    /// Print help.
    #[arg(short, long)]
    help: bool,
}

/// `tickship demo --help`: the demo's own options only (it talks to no existing server).
#[derive(Parser)]
#[command(
    name = "tickship demo",
    disable_help_flag = true,
    about = "Runs a leader and a follower on this machine with a live load, shows the applier \
             following, and checks that the follower's documents equal the leader's"
)]
struct DemoHelp {
    #[command(flatten)]
    args: DemoArgs,
}

fn main() {
    let matches = Cli::command().get_matches();
    let result = Cli::from_arg_matches(&matches)
        .map_err(anyhow::Error::from)
        .and_then(|cli| {
            if let Top::Demo(_) = cli.command {
                refuse_server_args(&matches)?;
            }
            run(cli)
        });
    if let Err(e) = result {
        eprintln!("tickship: {e:#}");
        std::process::exit(1);
    }
}

/// The demo starts its own servers: a `--server.*` option would be ignored, so it is refused.
fn refuse_server_args(matches: &clap::ArgMatches) -> Result<()> {
    let given = |m: &clap::ArgMatches, id: &str| {
        m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    };
    let demo = matches.subcommand_matches("demo");
    for id in SERVER_ARG_IDS {
        if given(matches, id) || demo.is_some_and(|d| given(d, id)) {
            bail!(
                "--{}: the demo starts its own leader and follower and talks to no other server",
                id.replacen('_', ".", 1).replace('_', "-")
            );
        }
    }
    Ok(())
}

/// A password from a flag, else the environment, else a file (as tickshipd reads its own).
fn resolve_password(
    flag: Option<String>,
    env: Option<&str>,
    file: Option<PathBuf>,
) -> Result<Option<String>> {
    tickship::auth::PasswordSource {
        flag,
        env: env.and_then(|name| std::env::var(name).ok()).filter(|p| !p.is_empty()),
        file,
    }
    .resolve()
}

fn run(cli: Cli) -> Result<()> {
    let server = cli.server;
    let password = resolve_password(
        server.password,
        Some("TICKSHIP_ROOT_PASSWORD"),
        server.password_file,
    )?;
    let client = Client::new(
        &server.endpoint,
        &server.database,
        &server.username,
        password.as_deref(),
    )?;
    let print = |value: &Value| println!("{}", serde_json::to_string_pretty(value).expect("JSON"));
    match cli.command {
        Top::Replication(command) => {
            let state = match command {
                ReplicationCommand::Start { from } => {
                    let path = match from {
                        Some(from) => format!("/_api/replication/applier-start?from={from}"),
                        None => "/_api/replication/applier-start".into(),
                    };
                    client
                        .call("PUT", &path, Some(json!({})))
                        .map_err(|e| unconfigured_hint(e, &server.endpoint))?
                }
                ReplicationCommand::Stop => {
                    client.call("PUT", "/_api/replication/applier-stop", Some(json!({})))?
                }
                ReplicationCommand::State => {
                    client.call("GET", "/_api/replication/applier-state", None)?
                }
                ReplicationCommand::Properties { json: None } => {
                    let config = client.call("GET", "/_api/replication/applier-config", None)?;
                    print(&config);
                    return Ok(());
                }
                ReplicationCommand::Properties { json: Some(text) } => {
                    let body: Value =
                        serde_json::from_str(&text).context("properties must be a JSON object")?;
                    let config = client.call("PUT", "/_api/replication/applier-config", Some(body))?;
                    print(&config);
                    return Ok(());
                }
                ReplicationCommand::Setup(setup) => {
                    let leader = setup
                        .leader_endpoint
                        .or(setup.leader)
                        .context("name the leader: --leader.endpoint tcp://HOST:PORT")?;
                    let leader_password =
                        match resolve_password(setup.leader_password, None, setup.leader_password_file)? {
                            Some(p) => p,
                            None => password.clone().unwrap_or_default(),
                        };
                    let body = json!({
                        "endpoint": leader,
                        "username": setup.leader_username,
                        "password": leader_password,
                    });
                    client.call("PUT", "/_api/replication/make-follower", Some(body))?
                }
            };
            print(&state);
            let error = &state["state"]["lastError"];
            if error["errorNum"].as_u64().unwrap_or(0) != 0 {
                bail!(
                    "the applier reports error {}: {}",
                    error["errorNum"],
                    error["errorMessage"].as_str().unwrap_or("")
                );
            }
        }
        Top::Logger(command) => {
            let path = match command {
                LoggerCommand::State => "/_api/replication/logger-state",
                LoggerCommand::FirstTick => "/_api/replication/logger-first-tick",
                LoggerCommand::TickRanges => "/_api/replication/logger-tick-ranges",
            };
            print(&client.call("GET", path, None)?)
        }
        Top::Demo(args) if args.help => {
            DemoHelp::command().print_help()?;
        }
        Top::Demo(args) => demo(args)?,
    }
    Ok(())
}

/// `applier-start` refused for want of an endpoint (1410) means the server was never set up.
fn unconfigured_hint(error: anyhow::Error, endpoint: &str) -> anyhow::Error {
    if error.to_string().contains("(error 1410,") && error.to_string().contains("<endpoint>") {
        anyhow::anyhow!(
            "{error:#}\nThe server at {endpoint} has no leader configured. Make it a follower \
             first with `tickship --server.endpoint {endpoint} replication setup \
             --leader.endpoint tcp://LEADER:PORT`, or name the leader with `tickship \
             replication properties '{{\"endpoint\":\"tcp://LEADER:PORT\",\"password\":\"...\"}}'`."
        )
    } else {
        error
    }
}

/// An HTTP client for one server.
#[derive(Clone)]
struct Client {
    base: String,
    endpoint: String,
    /// `None`: no password was given, and none is sent.
    auth: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn new(
        endpoint: &str,
        database: &str,
        username: &str,
        password: Option<&str>,
    ) -> Result<Client> {
        use base64::Engine;
        let host = endpoint
            .strip_prefix("tcp://")
            .or_else(|| endpoint.strip_prefix("http+tcp://"))
            .or_else(|| endpoint.strip_prefix("http://"))
            .ok_or_else(|| {
                anyhow::anyhow!("--server.endpoint {endpoint:?}: expected tcp://HOST:PORT")
            })?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(600)))
            .build()
            .into();
        Ok(Client {
            base: format!("http://{}/_db/{database}", host.trim_end_matches('/')),
            endpoint: endpoint.to_string(),
            auth: password.map(|password| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"))
                )
            }),
            agent,
        })
    }

    /// Sends a request; an ArangoDB error answer becomes an error with its number and message.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, text) = self.raw(method, path, body.map(|b| b.to_string()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{method} {path} answered {status} with non-JSON: {text}"))?;
        if status == 401 {
            bail!(
                "{method} {path}: {} (error {}, HTTP 401)\n{}",
                value["errorMessage"].as_str().unwrap_or(&text),
                value["errorNum"],
                if self.auth.is_none() {
                    format!(
                        "No password was given for {}: pass --server.password PW or \
                         --server.password-file FILE, or set TICKSHIP_ROOT_PASSWORD (a \
                         tickshipd started without a password wrote one to \
                         DIR/ROOT_PASSWORD).",
                        self.endpoint
                    )
                } else {
                    format!("The password given is not the one of the server at {}.", self.endpoint)
                }
            );
        }
        if status >= 400 {
            bail!(
                "{method} {path}: {} (error {}, HTTP {status})",
                value["errorMessage"].as_str().unwrap_or(&text),
                value["errorNum"]
            );
        }
        Ok(value)
    }

    fn raw(&self, method: &str, path: &str, body: Option<String>) -> Result<(u16, String)> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(auth) = &self.auth {
            request = request.header("authorization", auth);
        }
        let request = request
            .body(body.unwrap_or_default())
            .context("build request")?;
        let response = self
            .agent
            .run(request)
            .with_context(|| format!("{method} {}{path}", self.base))?;
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string()?;
        Ok((status, text))
    }
}

/// A field of `/proc/PID/status` given in kB, in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(field))?;
    let kb: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// A `tickshipd` child process.
struct Server {
    name: &'static str,
    child: Option<Child>,
    endpoint: String,
}

impl Server {
    fn start(
        name: &'static str,
        binary: &Path,
        dir: &Path,
        password: &str,
        extra: &[&str],
    ) -> Result<Server> {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::File::create(dir.join("tickshipd.log"))?;
        let mut child = Command::new(binary)
            .args([
                "--server.endpoint",
                "tcp://127.0.0.1:0",
                "--database.directory",
            ])
            .arg(dir)
            .args(["--server.password", password])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("tickshipd listening on ") {
                        println!("  {name}: {line}");
                        break rest
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string();
                    }
                }
                _ => bail!(
                    "the {name} exited before listening; see {}",
                    dir.join("tickshipd.log").display()
                ),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Server {
            name,
            child: Some(child),
            endpoint: format!("tcp://{address}"),
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: a graceful stop.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("  {} did not stop in 30 s; killing it", self.name);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tick(value: &Value) -> u64 {
    value.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn demo(args: DemoArgs) -> Result<()> {
    let binary = std::env::current_exe()?
        .parent()
        .map(|d| d.join("tickshipd"))
        .filter(|p| p.exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "tickshipd is not next to tickship: cargo build --release -p tickship --bins"
            )
        })?;
    let (dir, _temp) = match &args.dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("tickship-demo.")
                .tempdir_in("/var/tmp")?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let password = format!("demo-{}", std::process::id());
    println!(
        "== tickship demo: a leader and a follower on this machine (data in {})",
        dir.display()
    );
    let documents_in_wal = args.documents_in_wal.to_string();
    let extra = &["--rocksdb.documents-in-wal", documents_in_wal.as_str()];
    let mut leader = Server::start("leader", &binary, &dir.join("leader"), &password, extra)?;
    let mut follower = Server::start("follower", &binary, &dir.join("follower"), &password, extra)?;
    let lc = Client::new(&leader.endpoint, "_system", "root", Some(&password))?;
    let fc = Client::new(&follower.endpoint, "_system", "root", Some(&password))?;
    lc.call("POST", "/_api/collection", Some(json!({"name": "demo"})))?;
    let setup = fc.call(
        "PUT",
        "/_api/replication/make-follower",
        Some(json!({"endpoint": leader.endpoint, "username": "root", "password": password})),
    )?;
    println!(
        "== follower set up: phase {}, following {}",
        setup["state"]["phase"], setup["endpoint"]
    );
    if args.catch_up {
        fc.call("PUT", "/_api/replication/applier-stop", Some(json!({})))?;
        println!("== catch-up run: the follower's applier is stopped during the load");
    }
    // The load: batches of ~1 KB documents from several writers, bounded in time and count.
    println!(
        "== load: {} writers x {} documents per request for {} s (at most {} documents)",
        args.clients, args.batch, args.seconds, args.max_docs
    );
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let writers: Vec<_> = (0..args.clients)
        .map(|writer| {
            let (lc, written, stop) = (lc.clone(), written.clone(), stop.clone());
            let (batch, max_docs) = (args.batch.max(1), args.max_docs);
            std::thread::spawn(move || -> Result<()> {
                let mut generator = tickship_tools::docgen::DocGen::new(writer as u64 + 1);
                let mut n = 0u64;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    if written.load(Ordering::Relaxed) >= max_docs {
                        break;
                    }
                    let docs: Vec<String> = (0..batch)
                        .map(|_| {
                            n += 1;
                            generator.doc(&format!("w{writer}-{n}"), n)
                        })
                        .collect();
                    let body = format!("[{}]", docs.join(","));
                    let (status, text) =
                        lc.raw("POST", "/_api/document/demo?silent=true", Some(body))?;
                    if status >= 300 {
                        bail!("insert answered {status}: {}", &text[..text.len().min(300)]);
                    }
                    written.fetch_add(batch as u64, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    // Live view, twice a second.
    let mut out = std::io::stdout();
    let mut max_behind = 0u64;
    // The follower's anonymous memory (heap, buffers; not the file pages of its mapped WAL
    // segments, which the kernel reclaims at will): it must not grow with how far behind it is.
    let follower_pid = follower.pid().unwrap_or(0);
    let mut peak_anon = 0u64;
    let mut sample_memory = || {
        let anon = proc_status_bytes(follower_pid, "RssAnon:").unwrap_or(0);
        peak_anon = peak_anon.max(anon);
    };
    let mut last_written = 0u64;
    let mut last_time = Instant::now();
    while writers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_millis(500));
        sample_memory();
        let state = fc.call("GET", "/_api/replication/applier-state", None)?;
        let s = &state["state"];
        // How far what is visible on the follower trails what the leader has acknowledged.
        let leader_tick = tick(&lc.call("GET", "/_api/wal/lastTick", None)?["tick"]);
        let behind = leader_tick.saturating_sub(tick(&s["lastAppliedContinuousTick"]));
        max_behind = max_behind.max(behind);
        let now_written = written.load(Ordering::Relaxed);
        let rate = (now_written - last_written) as f64 / last_time.elapsed().as_secs_f64();
        (last_written, last_time) = (now_written, Instant::now());
        print!(
            "\r  {:5.1}s  written {:>9}  {:>8.0} docs/s  leader tick {:>10}  follower applied {:>10}  behind {:>8} ticks  phase {}   ",
            started.elapsed().as_secs_f64(),
            now_written,
            rate,
            leader_tick,
            tick(&s["lastAppliedContinuousTick"]),
            behind,
            s["phase"].as_str().unwrap_or("?"),
        );
        out.flush()?;
    }
    println!();
    let load_seconds = started.elapsed().as_secs_f64();
    for writer in writers {
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
    }
    let total = written.load(Ordering::Relaxed);
    // Catch-up: until the follower has applied the leader's last tick.
    let leader_last = tick(&lc.call("GET", "/_api/wal/lastTick", None)?["tick"]);
    let catch_up = Instant::now();
    if args.catch_up {
        let applied = tick(
            &fc.call("GET", "/_api/replication/applier-state", None)?["state"]
                ["lastAppliedContinuousTick"],
        );
        println!(
            "== load done; starting the follower's applier {} ticks behind",
            leader_last.saturating_sub(applied)
        );
        fc.call("PUT", "/_api/replication/applier-start", Some(json!({})))?;
    }
    loop {
        sample_memory();
        let state = fc.call("GET", "/_api/replication/applier-state", None)?;
        let s = &state["state"];
        if tick(&s["lastAppliedContinuousTick"]) >= leader_last {
            break;
        }
        if s["running"] != json!(true) {
            bail!("the applier stopped: {}", s["lastError"]);
        }
        if catch_up.elapsed() > Duration::from_secs(300) {
            bail!("the follower did not catch up within 300 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let catch_up = catch_up.elapsed().as_secs_f64();
    // Equality: checksum over every document's key, revision and content, and the counts.
    let path = "/_api/collection/demo/checksum?withRevisions=true&withData=true";
    let (lsum, fsum) = (lc.call("GET", path, None)?, fc.call("GET", path, None)?);
    let count = |c: &Client| -> Result<u64> {
        Ok(c.call("GET", "/_api/collection/demo/count", None)?["count"]
            .as_u64()
            .unwrap_or(0))
    };
    let (lcount, fcount) = (count(&lc)?, count(&fc)?);
    let state = fc.call("GET", "/_api/replication/applier-state", None)?;
    // What crossed the wire: the leader's WAL blocks, verbatim (lz4-compressed records).
    let (_, metrics) = lc.raw("GET", "/_admin/metrics", None)?;
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    let (raw_bytes, block_bytes) = (
        metric("tickship_wal_raw_bytes_total "),
        metric("tickship_wal_block_bytes_total "),
    );
    println!("== figures");
    println!("  documents written (durable on the leader): {total} in {load_seconds:.1} s = {:.0} docs/s", total as f64 / load_seconds);
    println!("  most ticks the follower's visible data trailed the leader while loading (sampled every 0.5 s): {max_behind}");
    println!("  follower caught up {catch_up:.3} s after the load ended (leader's last tick {leader_last})");
    if args.catch_up {
        println!(
            "  catch-up: {total} documents applied in {catch_up:.2} s = {:.0} docs/s",
            total as f64 / catch_up.max(1e-9)
        );
    }
    println!(
        "  follower memory: peak anonymous RSS {:.0} MiB while {} (peak resident incl. mapped WAL pages, VmHWM: {:.0} MiB)",
        peak_anon as f64 / 1048576.0,
        if args.catch_up { "loading and catching up" } else { "following" },
        proc_status_bytes(follower_pid, "VmHWM:").unwrap_or(0) as f64 / 1048576.0
    );
    println!(
        "  applier totals: {} events, {} documents, {} requests, fetch {:.2} s, apply {:.2} s",
        state["state"]["totalEvents"],
        state["state"]["totalDocuments"],
        state["state"]["totalRequests"],
        state["state"]["totalFetchTime"].as_f64().unwrap_or(0.0),
        state["state"]["totalApplyTime"].as_f64().unwrap_or(0.0)
    );
    if raw_bytes > 0.0 {
        println!(
            "  shipped as the leader's WAL blocks: {:.1} MB for {:.1} MB of records = {:.2}x",
            block_bytes / 1e6,
            raw_bytes / 1e6,
            block_bytes / raw_bytes
        );
    }
    println!(
        "  leader:   {lcount} documents, checksum {}",
        lsum["checksum"]
    );
    println!(
        "  follower: {fcount} documents, checksum {}",
        fsum["checksum"]
    );
    let equal = lcount == fcount && lsum["checksum"] == fsum["checksum"];
    follower.stop();
    leader.stop();
    if !equal {
        bail!("MISMATCH: the follower's documents differ from the leader's");
    }
    println!("== OK: the follower's documents equal the leader's");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap checks its definitions only when a command is built: build every one.
    #[test]
    fn argument_definitions_are_consistent() {
        Cli::command().debug_assert();
        DemoHelp::command().debug_assert();
    }
}
