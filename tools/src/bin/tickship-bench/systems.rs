//! The four systems the bench runs, each as a leader and a follower on loopback in the bench's
//! own directory, behind one interface the scenarios drive: tickship, PostgreSQL 15 streaming
//! replication, MariaDB GTID replication and Redis replication. The peers' settings are those of
//! ../shared/peers (the figures there were measured with them), made durable where they were not:
//! every acknowledged write is on disk on the leader in all four.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::wire::{Http, My, Pg, Resp};

pub const PASSWORD: &str = "tickship-bench";

/// One connection of the bench to a leader or a follower.
pub trait Conn: Send {
    /// Writes documents (`_key` first, as `{"_key":"K",...}`) in one request; returns once the
    /// leader acknowledged them.
    fn insert(&mut self, docs: &[(&str, &str)]) -> Result<()>;
    fn exists(&mut self, key: &str) -> Result<bool>;
    fn count(&mut self) -> Result<u64>;
}

/// What a tool run by the bench (a dump, a restore, a base backup) used.
#[derive(Default, Clone, Copy)]
pub struct ToolUse {
    pub cpu: f64,
    pub peak_rss: u64,
}

impl ToolUse {
    pub fn add(&mut self, other: ToolUse) {
        self.cpu += other.cpu;
        self.peak_rss = self.peak_rss.max(other.peak_rss);
    }
}

/// A leader and its follower.
pub trait System {
    fn name(&self) -> &'static str;
    /// Versions and settings, for the report.
    fn describe(&self) -> String;
    /// Starts a new leader and a follower attached to it, with the `docs` table or collection
    /// created and the follower level.
    fn start(&mut self, dir: &Path) -> Result<()>;
    fn leader_port(&self) -> u16;
    fn leader_pid(&self) -> u32;
    fn follower_pid(&self) -> Option<u32>;
    fn conn(&self, follower: bool) -> Result<Box<dyn Conn>>;
    /// Empties `docs` on the leader; the follower follows.
    fn clear(&mut self) -> Result<()>;
    /// Stops the follower's replication (the follower process stays up where the system allows).
    fn pause(&mut self) -> Result<()>;
    /// Starts it again from where it stopped.
    fn resume(&mut self) -> Result<()>;
    /// Stops the follower and readies an empty one (untimed).
    fn new_follower(&mut self) -> Result<()>;
    /// Initialises the empty follower by the system's own full sync, until it streams. `None`:
    /// the system has no such thing.
    fn init(&mut self) -> Result<Option<ToolUse>>;
    /// Initialises the empty follower from a logical dump of the leader, then starts
    /// replication from the dump's position. `None`: the system cannot.
    fn dump_restore(&mut self) -> Result<Option<ToolUse>>;
    /// Why `init` or `dump_restore` has no equivalent.
    fn missing(&self, _scenario: &str) -> &'static str {
        ""
    }
    fn stop(&mut self);
}

/// Runs a tool to its end; its output, CPU and peak RSS (wait4 counts the tool and the children
/// it waited for).
pub fn run_tool(command: &mut Command) -> Result<(String, ToolUse)> {
    let described = format!("{command:?}");
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {described}"))?;
    let pid = child.id() as i32;
    let output = std::thread::spawn(move || {
        use std::io::Read;
        let mut child = child;
        let (mut out, mut err) = (String::new(), String::new());
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        (out, err)
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, which nothing else waits for; `usage` is valid to fill.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let (out, err) = output.join().unwrap_or_default();
    if waited != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{described} failed (status {status}):\n{out}\n{err}");
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    Ok((
        out,
        ToolUse {
            cpu: t(usage.ru_utime) + t(usage.ru_stime),
            peak_rss: usage.ru_maxrss as u64 * 1024,
        },
    ))
}

/// A port free on 127.0.0.1 now (the servers of the peers cannot be told to take any).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `ready` says yes, up to `seconds`.
fn wait_for(what: &str, seconds: u64, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what}: not ready after {seconds} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn stop_child(child: &mut Option<Child>, signal: i32) {
    if let Some(mut c) = child.take() {
        // SAFETY: kill takes plain integers; the pid is our own child's, not yet waited for.
        unsafe { libc::kill(c.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.exists() {
        bail!("{name} not found next to tickship-bench: build it (cargo build --release)");
    }
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// tickship

pub struct Tickship {
    daemon: PathBuf,
    cli: PathBuf,
    dir: PathBuf,
    leader: Option<tickship::cli::demo::Server>,
    follower: Option<tickship::cli::demo::Server>,
    generation: u32,
}

fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

impl Tickship {
    pub fn new() -> Result<Tickship> {
        Ok(Tickship {
            daemon: sibling("tickshipd")?,
            cli: sibling("tickship")?,
            dir: PathBuf::new(),
            leader: None,
            follower: None,
            generation: 0,
        })
    }

    fn leader_endpoint(&self) -> String {
        self.leader
            .as_ref()
            .map(|s| s.endpoint.clone())
            .unwrap_or_default()
    }

    fn follower_endpoint(&self) -> String {
        self.follower
            .as_ref()
            .map(|s| s.endpoint.clone())
            .unwrap_or_default()
    }

    fn tickship(&self, endpoint: &str, args: &[&str]) -> Result<(String, ToolUse)> {
        run_tool(
            Command::new(&self.cli)
                .args(["--server.endpoint", endpoint])
                .env("TICKSHIP_ROOT_PASSWORD", PASSWORD)
                .args(args),
        )
    }

    fn start_follower(&mut self) -> Result<()> {
        self.generation += 1;
        let dir = self.dir.join(format!("follower{}", self.generation));
        self.follower = Some(tickship::cli::demo::Server::start(
            "follower",
            &self.daemon,
            &dir,
            PASSWORD,
            &[],
        )?);
        Ok(())
    }
}

struct TickshipConn {
    http: Http,
    body: Vec<u8>,
}

impl Conn for TickshipConn {
    fn insert(&mut self, docs: &[(&str, &str)]) -> Result<()> {
        self.body.clear();
        if docs.len() == 1 {
            self.body.extend_from_slice(docs[0].1.as_bytes());
        } else {
            self.body.push(b'[');
            for (i, (_, doc)) in docs.iter().enumerate() {
                if i > 0 {
                    self.body.push(b',');
                }
                self.body.extend_from_slice(doc.as_bytes());
            }
            self.body.push(b']');
        }
        let body = std::mem::take(&mut self.body);
        let answer = self
            .http
            .call("POST", "/_api/document/docs?silent=true", &body);
        self.body = body;
        let (status, text) = answer?;
        if status >= 300 {
            bail!(
                "tickship: HTTP {status}: {}",
                String::from_utf8_lossy(&text)
            );
        }
        Ok(())
    }

    fn exists(&mut self, key: &str) -> Result<bool> {
        let (status, text) = self
            .http
            .call("GET", &format!("/_api/document/docs/{key}"), b"")?;
        match status {
            200 => Ok(true),
            404 => Ok(false),
            _ => bail!(
                "tickship: HTTP {status}: {}",
                String::from_utf8_lossy(&text)
            ),
        }
    }

    fn count(&mut self) -> Result<u64> {
        let (status, text) = self.http.call("GET", "/_api/collection/docs/count", b"")?;
        if status != 200 {
            bail!(
                "tickship: HTTP {status}: {}",
                String::from_utf8_lossy(&text)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&text)?;
        v["count"].as_u64().context("no count")
    }
}

impl System for Tickship {
    fn name(&self) -> &'static str {
        "tickship"
    }

    fn describe(&self) -> String {
        "tickship (this commit), default flags: every acknowledged write fsynced on the leader; \
         follower over QUIC"
            .into()
    }

    fn start(&mut self, dir: &Path) -> Result<()> {
        self.dir = dir.to_path_buf();
        self.leader = Some(tickship::cli::demo::Server::start(
            "leader",
            &self.daemon,
            &dir.join("leader"),
            PASSWORD,
            &[],
        )?);
        let mut http = Http::new(port_of(&self.leader_endpoint()), "root", PASSWORD)?;
        let (status, text) = http.call("POST", "/_api/collection", br#"{"name":"docs"}"#)?;
        if status >= 300 {
            bail!(
                "create collection: HTTP {status}: {}",
                String::from_utf8_lossy(&text)
            );
        }
        self.start_follower()?;
        self.tickship(
            &self.follower_endpoint(),
            &[
                "replication",
                "setup",
                "--global",
                &self.leader_endpoint(),
                "--no-progress",
            ],
        )?;
        Ok(())
    }

    fn leader_port(&self) -> u16 {
        port_of(&self.leader_endpoint())
    }

    fn leader_pid(&self) -> u32 {
        self.leader.as_ref().and_then(|s| s.pid()).unwrap_or(0)
    }

    fn follower_pid(&self) -> Option<u32> {
        self.follower.as_ref().and_then(|s| s.pid())
    }

    fn conn(&self, follower: bool) -> Result<Box<dyn Conn>> {
        let endpoint = if follower {
            self.follower_endpoint()
        } else {
            self.leader_endpoint()
        };
        Ok(Box::new(TickshipConn {
            http: Http::new(port_of(&endpoint), "root", PASSWORD)?,
            body: Vec::new(),
        }))
    }

    fn clear(&mut self) -> Result<()> {
        let mut http = Http::new(self.leader_port(), "root", PASSWORD)?;
        let (status, text) = http.call("PUT", "/_api/collection/docs/truncate", b"")?;
        if status >= 300 {
            bail!(
                "truncate: HTTP {status}: {}",
                String::from_utf8_lossy(&text)
            );
        }
        Ok(())
    }

    fn pause(&mut self) -> Result<()> {
        self.tickship(
            &self.follower_endpoint(),
            &["replication", "stop", "--global"],
        )?;
        Ok(())
    }

    fn resume(&mut self) -> Result<()> {
        self.tickship(
            &self.follower_endpoint(),
            &["replication", "start", "--global"],
        )?;
        Ok(())
    }

    fn new_follower(&mut self) -> Result<()> {
        if let Some(mut f) = self.follower.take() {
            f.stop();
        }
        self.start_follower()
    }

    fn init(&mut self) -> Result<Option<ToolUse>> {
        let (_, used) = self.tickship(
            &self.follower_endpoint(),
            &[
                "replication",
                "setup",
                "--global",
                &self.leader_endpoint(),
                "--no-progress",
            ],
        )?;
        Ok(Some(used))
    }

    fn dump_restore(&mut self) -> Result<Option<ToolUse>> {
        let dump = self.dir.join(format!("dump{}", self.generation));
        let dump_arg = dump.to_str().context("dump path")?;
        let (out, mut used) = self.tickship(
            &self.leader_endpoint(),
            &[
                "dump",
                "--output-directory",
                dump_arg,
                "--threads",
                "2",
                "--progress",
                "false",
            ],
        )?;
        let tick = out
            .lines()
            .find_map(|l| l.strip_prefix("Last tick provided by server is: "))
            .map(|t| t.trim().to_string())
            .context("no tick printed by the dump")?;
        let (_, restore) = self.tickship(
            &self.follower_endpoint(),
            &["restore", "--input-directory", dump_arg, "--threads", "2"],
        )?;
        used.add(restore);
        let config = serde_json::json!({
            "endpoint": self.leader_endpoint(), "username": "root", "password": PASSWORD,
        })
        .to_string();
        let (_, properties) = self.tickship(
            &self.follower_endpoint(),
            &["replication", "properties", "--global", &config],
        )?;
        used.add(properties);
        let (_, start) = self.tickship(
            &self.follower_endpoint(),
            &["replication", "start", "--global", "--from", &tick],
        )?;
        used.add(start);
        let _ = std::fs::remove_dir_all(&dump);
        Ok(Some(used))
    }

    fn stop(&mut self) {
        if let Some(mut f) = self.follower.take() {
            f.stop();
        }
        if let Some(mut l) = self.leader.take() {
            l.stop();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

const PGBIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Postgres {
    dir: PathBuf,
    leader_port: u16,
    follower_port: u16,
    generation: u32,
}

fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", &format!("{PGBIN}/{program}")]);
    c
}

fn postmaster_pid(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

fn escape_sql(doc: &str, backslash: bool, out: &mut String) {
    if !(doc.contains('\'') || backslash && doc.contains('\\')) {
        out.push_str(doc);
        return;
    }
    for c in doc.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' if backslash => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
}

fn values_sql(table: &str, docs: &[(&str, &str)], backslash: bool) -> String {
    let bytes: usize = docs.iter().map(|(k, d)| k.len() + d.len() + 8).sum();
    let mut sql = String::with_capacity(bytes + 64);
    sql.push_str("INSERT INTO ");
    sql.push_str(table);
    sql.push_str(" (k, doc) VALUES ");
    for (i, (key, doc)) in docs.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("('");
        sql.push_str(key);
        sql.push_str("','");
        escape_sql(doc, backslash, &mut sql);
        sql.push_str("')");
    }
    sql
}

/// A SQL server's connection as the load needs it: one statement, the first column of each row.
trait Sql {
    fn query(&mut self, sql: &str) -> Result<Vec<Option<String>>>;
}

impl Sql for Pg {
    fn query(&mut self, sql: &str) -> Result<Vec<Option<String>>> {
        Pg::query(self, sql)
    }
}

impl Sql for My {
    fn query(&mut self, sql: &str) -> Result<Vec<Option<String>>> {
        My::query(self, sql)
    }
}

/// The documents table `table` (key `k`, document `doc`) on a SQL server; `backslash`: whether
/// the server reads backslashes in string literals as escapes (MariaDB does, PostgreSQL not).
struct SqlConn<S> {
    server: S,
    table: &'static str,
    backslash: bool,
}

impl<S: Sql + Send> Conn for SqlConn<S> {
    fn insert(&mut self, docs: &[(&str, &str)]) -> Result<()> {
        self.server
            .query(&values_sql(self.table, docs, self.backslash))?;
        Ok(())
    }

    fn exists(&mut self, key: &str) -> Result<bool> {
        let sql = format!("SELECT 1 FROM {} WHERE k = '{key}'", self.table);
        Ok(!self.server.query(&sql)?.is_empty())
    }

    fn count(&mut self) -> Result<u64> {
        let rows = self
            .server
            .query(&format!("SELECT count(*) FROM {}", self.table))?;
        rows.first()
            .cloned()
            .flatten()
            .context("no count")?
            .parse()
            .context("count")
    }
}

impl Postgres {
    pub fn new() -> Result<Postgres> {
        if !Path::new(PGBIN).join("postgres").exists() {
            bail!("PostgreSQL 15 is not installed: run scripts/bench-setup");
        }
        Ok(Postgres {
            dir: PathBuf::new(),
            leader_port: 0,
            follower_port: 0,
            generation: 0,
        })
    }

    fn primary(&self) -> PathBuf {
        self.dir.join("primary")
    }

    fn standby(&self) -> PathBuf {
        self.dir.join(format!("standby{}", self.generation))
    }

    fn pg_ctl(&self, data: &Path, action: &str) -> Result<()> {
        let log = data.with_extension("log");
        let mut c = as_postgres("pg_ctl");
        c.arg("-D")
            .arg(data)
            .args(["-w", "-t", "600", "-m", "fast"]);
        if action == "start" {
            c.arg("-l").arg(&log);
        }
        c.arg(action);
        run_tool(&mut c)?;
        Ok(())
    }

    fn sql(&self, sql: &str) -> Result<Vec<Option<String>>> {
        Pg::new(self.leader_port, "postgres", "postgres")?.query(sql)
    }

    /// pg_basebackup into a new standby directory, then start it (the manual's way of making a
    /// standby, and the peers' measured one).
    fn base_backup(&mut self) -> Result<ToolUse> {
        let standby = self.standby();
        let slot = format!("standby{}", self.generation);
        let (_, used) = run_tool(
            as_postgres("pg_basebackup")
                .args(["-h", "127.0.0.1", "-p", &self.leader_port.to_string()])
                .args(["-U", "postgres", "-D"])
                .arg(&standby)
                .args(["-X", "stream", "-R", "-C", "-S", &slot, "-c", "fast"]),
        )?;
        self.follower_port = free_port()?;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(standby.join("postgresql.conf"))?;
        use std::io::Write;
        writeln!(
            conf,
            "port = {}\ncluster_name = '{slot}'",
            self.follower_port
        )?;
        self.pg_ctl(&standby, "start")?;
        Ok(used)
    }
}

impl System for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn describe(&self) -> String {
        "PostgreSQL 15 streaming replication (physical slot, asynchronous), table (k text primary \
         key, doc jsonb); synchronous_commit=on, fsync=on, full_page_writes=on, \
         shared_buffers=1GB, max_wal_size=4GB, autovacuum=off (as ../shared/peers)"
            .into()
    }

    fn start(&mut self, dir: &Path) -> Result<()> {
        self.dir = dir.join("pg");
        self.generation = 1;
        std::fs::create_dir_all(self.dir.join("sock"))?;
        run_tool(Command::new("chown").args(["-R", "postgres:"]).arg(dir))?;
        run_tool(as_postgres("initdb").arg("-D").arg(self.primary()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ]))?;
        self.leader_port = free_port()?;
        use std::io::Write;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.primary().join("postgresql.conf"))?;
        write!(
            conf,
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             shared_buffers = 1GB\nmax_wal_size = 4GB\nmin_wal_size = 1GB\n\
             checkpoint_timeout = 15min\nwal_level = replica\nmax_wal_senders = 10\n\
             max_replication_slots = 10\nhot_standby = on\nautovacuum = off\n\
             synchronous_commit = on\nfsync = on\nfull_page_writes = on\nmax_connections = 200\n",
            self.leader_port,
            self.dir.join("sock").display()
        )?;
        let mut hba = std::fs::OpenOptions::new()
            .append(true)
            .open(self.primary().join("pg_hba.conf"))?;
        writeln!(hba, "host all all {}/32 trust", crate::wire::CLIENT_ADDR)?;
        self.pg_ctl(&self.primary(), "start")?;
        self.sql("CREATE TABLE docs (k text PRIMARY KEY, doc jsonb)")?;
        self.base_backup()?;
        let port = self.follower_port;
        wait_for("the PostgreSQL standby", 120, || {
            Pg::new(port, "postgres", "postgres")
                .and_then(|mut p| p.query("SELECT count(*) FROM docs"))
                .is_ok()
        })
    }

    fn leader_port(&self) -> u16 {
        self.leader_port
    }

    fn leader_pid(&self) -> u32 {
        postmaster_pid(&self.primary()).unwrap_or(0)
    }

    fn follower_pid(&self) -> Option<u32> {
        postmaster_pid(&self.standby())
    }

    fn conn(&self, follower: bool) -> Result<Box<dyn Conn>> {
        let port = if follower {
            self.follower_port
        } else {
            self.leader_port
        };
        Ok(Box::new(SqlConn {
            server: Pg::new(port, "postgres", "postgres")?,
            table: "docs",
            backslash: false,
        }))
    }

    fn clear(&mut self) -> Result<()> {
        self.sql("TRUNCATE docs")?;
        self.sql("CHECKPOINT")?;
        Ok(())
    }

    fn pause(&mut self) -> Result<()> {
        // A standby cannot stop streaming and stay up: it is stopped (pg_ctl stop -m fast).
        self.pg_ctl(&self.standby(), "stop")
    }

    fn resume(&mut self) -> Result<()> {
        self.pg_ctl(&self.standby(), "start")
    }

    fn new_follower(&mut self) -> Result<()> {
        let old = self.standby();
        if postmaster_pid(&old).is_some() {
            let _ = self.pg_ctl(&old, "stop");
        }
        let slot = format!("standby{}", self.generation);
        self.sql(&format!(
            "SELECT pg_drop_replication_slot('{slot}') FROM pg_replication_slots \
             WHERE slot_name = '{slot}'"
        ))?;
        let _ = std::fs::remove_dir_all(&old);
        self.generation += 1;
        Ok(())
    }

    fn init(&mut self) -> Result<Option<ToolUse>> {
        Ok(Some(self.base_backup()?))
    }

    fn dump_restore(&mut self) -> Result<Option<ToolUse>> {
        Ok(None)
    }

    fn missing(&self, _scenario: &str) -> &'static str {
        "a streaming standby starts only from a physical copy (pg_basebackup, the init row); a \
         pg_dump restore cannot stream from the dump's position"
    }

    fn stop(&mut self) {
        for data in [self.standby(), self.primary()] {
            if postmaster_pid(&data).is_some() {
                let _ = self.pg_ctl(&data, "stop");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MariaDB

pub struct Mariadb {
    dir: PathBuf,
    leader: Option<Child>,
    follower: Option<Child>,
    leader_port: u16,
    follower_port: u16,
    generation: u32,
}

impl Mariadb {
    pub fn new() -> Result<Mariadb> {
        which("mariadbd")?;
        Ok(Mariadb {
            dir: PathBuf::new(),
            leader: None,
            follower: None,
            leader_port: 0,
            follower_port: 0,
            generation: 0,
        })
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    fn follower_name(&self) -> String {
        format!("replica{}", self.generation)
    }

    /// mariadb-install-db, then mariadbd with the peers' settings; returns once it answers.
    fn server(&self, name: &str, port: u16, id: u32, extra: &[&str]) -> Result<Child> {
        let data = self.dir.join(name);
        run_tool(
            Command::new("mariadb-install-db")
                .args(["--no-defaults", "--user=mysql"])
                .arg(format!("--datadir={}", data.display()))
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"]),
        )?;
        let child = Command::new("mariadbd")
            .args(["--no-defaults", "--user=mysql"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", self.socket(name).display()))
            .arg(format!("--pid-file={}/{name}.pid", self.dir.display()))
            .arg(format!("--log-error={}/{name}.err", self.dir.display()))
            .arg(format!("--server-id={id}"))
            .args([
                "--innodb-buffer-pool-size=2G",
                "--innodb-log-file-size=1G",
                "--innodb-flush-log-at-trx-commit=1",
                "--max-allowed-packet=64M",
                "--max-connections=200",
                "--gtid-strict-mode=1",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start mariadbd")?;
        let socket = self.socket(name);
        wait_for("mariadbd", 120, || {
            Command::new("mariadb")
                .arg("-S")
                .arg(&socket)
                .args(["-uroot", "-e", "SELECT 1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })?;
        self.local_sql(
            name,
            &format!(
                "SET sql_log_bin = 0; CREATE USER 'bench'@'{a}'; GRANT ALL ON *.* TO 'bench'@'{a}'; \
                 CREATE USER 'repl'@'127.0.0.1' IDENTIFIED BY 'replpw'; \
                 GRANT ALL ON *.* TO 'repl'@'127.0.0.1'; SET sql_log_bin = 1;",
                a = crate::wire::CLIENT_ADDR
            ),
        )?;
        Ok(child)
    }

    fn local_sql(&self, name: &str, sql: &str) -> Result<()> {
        run_tool(
            Command::new("mariadb")
                .arg("-S")
                .arg(self.socket(name))
                .args(["-uroot", "-e", sql]),
        )?;
        Ok(())
    }

    fn start_replica(&mut self) -> Result<()> {
        self.follower_port = free_port()?;
        self.follower = Some(self.server(
            &self.follower_name(),
            self.follower_port,
            100 + self.generation,
            &[
                "--slave-parallel-threads=2",
                "--slave-parallel-mode=optimistic",
                "--read-only=1",
            ],
        )?);
        Ok(())
    }

    fn follower_sql(&self, sql: &str) -> Result<()> {
        My::new(self.follower_port, "bench")?.query(sql)?;
        Ok(())
    }

    fn change_master(&self) -> Result<()> {
        self.follower_sql(&format!(
            "CHANGE MASTER TO master_host = '127.0.0.1', master_port = {}, master_user = 'repl', \
             master_password = 'replpw', master_use_gtid = slave_pos",
            self.leader_port
        ))?;
        self.follower_sql("START SLAVE")
    }
}

fn which(program: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).exists()))
        .unwrap_or(false);
    if !found {
        bail!("{program} is not installed: run scripts/bench-setup");
    }
    Ok(())
}

impl System for Mariadb {
    fn name(&self) -> &'static str {
        "mariadb"
    }

    fn describe(&self) -> String {
        "MariaDB GTID replication (row binlog, parallel optimistic replica with 2 threads), table \
         (k varchar(64) primary key, doc json); sync_binlog=1, \
         innodb_flush_log_at_trx_commit=1, buffer pool 2G (as ../shared/peers)"
            .into()
    }

    fn start(&mut self, dir: &Path) -> Result<()> {
        self.dir = dir.join("mariadb");
        self.generation = 1;
        std::fs::create_dir_all(&self.dir)?;
        run_tool(Command::new("chown").args(["-R", "mysql:"]).arg(dir))?;
        self.leader_port = free_port()?;
        let binlog = format!("--log-bin={}/primary/binlog", self.dir.display());
        self.leader = Some(self.server(
            "primary",
            self.leader_port,
            1,
            &[&binlog, "--binlog-format=ROW", "--sync-binlog=1"],
        )?);
        My::new(self.leader_port, "bench")?.query("CREATE DATABASE bench")?;
        My::new(self.leader_port, "bench")?
            .query("CREATE TABLE bench.docs (k varchar(64) PRIMARY KEY, doc json) ENGINE=InnoDB")?;
        self.start_replica()?;
        self.change_master()?;
        let port = self.follower_port;
        wait_for("the MariaDB replica", 120, || {
            My::new(port, "bench")
                .and_then(|mut m| m.query("SELECT COUNT(*) FROM bench.docs"))
                .is_ok()
        })
    }

    fn leader_port(&self) -> u16 {
        self.leader_port
    }

    fn leader_pid(&self) -> u32 {
        self.leader.as_ref().map(Child::id).unwrap_or(0)
    }

    fn follower_pid(&self) -> Option<u32> {
        self.follower.as_ref().map(Child::id)
    }

    fn conn(&self, follower: bool) -> Result<Box<dyn Conn>> {
        let port = if follower {
            self.follower_port
        } else {
            self.leader_port
        };
        Ok(Box::new(SqlConn {
            server: My::new(port, "bench")?,
            table: "bench.docs",
            backslash: true,
        }))
    }

    fn clear(&mut self) -> Result<()> {
        My::new(self.leader_port, "bench")?.query("TRUNCATE TABLE bench.docs")?;
        Ok(())
    }

    fn pause(&mut self) -> Result<()> {
        self.follower_sql("STOP SLAVE")
    }

    fn resume(&mut self) -> Result<()> {
        self.follower_sql("START SLAVE")
    }

    fn new_follower(&mut self) -> Result<()> {
        stop_child(&mut self.follower, libc::SIGTERM);
        let _ = std::fs::remove_dir_all(self.dir.join(self.follower_name()));
        self.generation += 1;
        self.start_replica()
    }

    fn init(&mut self) -> Result<Option<ToolUse>> {
        Ok(None)
    }

    fn missing(&self, scenario: &str) -> &'static str {
        if scenario == "init" {
            "no built-in full sync: a replica is made from a dump (the dump-restore row) or with \
             the separate mariadb-backup tool"
        } else {
            ""
        }
    }

    fn dump_restore(&mut self) -> Result<Option<ToolUse>> {
        let file = self.dir.join(format!("dump{}.sql", self.generation));
        let out = std::fs::File::create(&file)?;
        // The dump reads from the leader over TCP (the bytes the wire column counts); --gtid with
        // --master-data writes the GTID position the replica starts from.
        let mut dump = Command::new("mariadb-dump");
        dump.args(["-h", "127.0.0.1", "-P", &self.leader_port.to_string()])
            .args(["-u", "repl", "-preplpw"])
            .args([
                "--single-transaction",
                "--gtid",
                "--master-data=1",
                "--quick",
            ])
            .args(["--databases", "bench"]);
        let (_, mut used) = run_tool_to(&mut dump, out)?;
        let input = std::fs::File::open(&file)?;
        let (_, restore) = run_tool_from(
            Command::new("mariadb")
                .arg("-S")
                .arg(self.socket(&self.follower_name()))
                .arg("-uroot"),
            input,
        )?;
        used.add(restore);
        self.change_master()?;
        let _ = std::fs::remove_file(&file);
        Ok(Some(used))
    }

    fn stop(&mut self) {
        stop_child(&mut self.follower, libc::SIGTERM);
        stop_child(&mut self.leader, libc::SIGTERM);
    }
}

/// [`run_tool`] with stdout going to a file.
fn run_tool_to(command: &mut Command, out: std::fs::File) -> Result<(String, ToolUse)> {
    run_tool_io(command, Stdio::null(), Stdio::from(out))
}

/// [`run_tool`] with stdin read from a file.
fn run_tool_from(command: &mut Command, input: std::fs::File) -> Result<(String, ToolUse)> {
    run_tool_io(command, Stdio::from(input), Stdio::null())
}

fn run_tool_io(command: &mut Command, stdin: Stdio, stdout: Stdio) -> Result<(String, ToolUse)> {
    let described = format!("{command:?}");
    let mut child = command
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {described}"))?;
    let pid = child.id() as i32;
    let stderr = child.stderr.take();
    let err = std::thread::spawn(move || {
        use std::io::Read;
        let mut text = String::new();
        if let Some(mut s) = stderr {
            let _ = s.read_to_string(&mut text);
        }
        text
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, which nothing else waits for; `usage` is valid to fill.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let err = err.join().unwrap_or_default();
    if waited != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{described} failed (status {status}): {err}");
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    Ok((
        err,
        ToolUse {
            cpu: t(usage.ru_utime) + t(usage.ru_stime),
            peak_rss: usage.ru_maxrss as u64 * 1024,
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// Redis

pub struct Redis {
    dir: PathBuf,
    leader: Option<Child>,
    follower: Option<Child>,
    leader_port: u16,
    follower_port: u16,
    generation: u32,
}

struct RedisConn {
    resp: Resp,
}

impl Conn for RedisConn {
    fn insert(&mut self, docs: &[(&str, &str)]) -> Result<()> {
        let command: &[u8] = if docs.len() == 1 { b"SET" } else { b"MSET" };
        let mut args: Vec<&[u8]> = Vec::with_capacity(docs.len() * 2 + 1);
        args.push(command);
        for (key, doc) in docs {
            args.push(key.as_bytes());
            args.push(doc.as_bytes());
        }
        self.resp.call(&args)?;
        Ok(())
    }

    fn exists(&mut self, key: &str) -> Result<bool> {
        Ok(self.resp.int(&[b"EXISTS", key.as_bytes()])? == 1)
    }

    fn count(&mut self) -> Result<u64> {
        Ok(self.resp.int(&[b"DBSIZE"])? as u64)
    }
}

impl Redis {
    pub fn new() -> Result<Redis> {
        which("redis-server")?;
        Ok(Redis {
            dir: PathBuf::new(),
            leader: None,
            follower: None,
            leader_port: 0,
            follower_port: 0,
            generation: 0,
        })
    }

    fn server(&self, name: &str, port: u16, extra: &str) -> Result<Child> {
        let data = self.dir.join(name);
        std::fs::create_dir_all(&data)?;
        let conf = self.dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport {port}\ndir {}\nlogfile {}/{name}.log\n\
                 save \"\"\nappendonly yes\nappendfsync always\n\
                 repl-diskless-sync yes\nrepl-diskless-sync-delay 0\nrepl-diskless-load disabled\n\
                 repl-backlog-size 1gb\nclient-output-buffer-limit replica 4gb 4gb 0\n\
                 protected-mode no\nuser default on nopass ~* &* +@all\n\
                 user repl on >replpw ~* &* +@all\nmasteruser repl\nmasterauth replpw\n{extra}\n",
                data.display(),
                self.dir.display()
            ),
        )?;
        let child = Command::new("redis-server")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server")?;
        wait_for("redis-server", 60, || {
            Resp::new(port).and_then(|mut r| r.text(&[b"PING"])).is_ok()
        })?;
        Ok(child)
    }

    fn follower(&self) -> Result<Resp> {
        Resp::new(self.follower_port)
    }

    fn replicate(&self) -> Result<()> {
        self.follower()?.text(&[
            b"REPLICAOF",
            b"127.0.0.1",
            self.leader_port.to_string().as_bytes(),
        ])?;
        Ok(())
    }

    fn start_replica(&mut self) -> Result<()> {
        self.follower_port = free_port()?;
        self.follower = Some(self.server(
            &format!("replica{}", self.generation),
            self.follower_port,
            "replica-read-only yes",
        )?);
        Ok(())
    }
}

impl System for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn describe(&self) -> String {
        "Redis replication (diskless sync, 1 GB backlog), one string value per document; \
         appendonly yes with appendfsync always on both (../shared/peers persisted nothing: here \
         acknowledged writes are durable, as in the other three)"
            .into()
    }

    fn start(&mut self, dir: &Path) -> Result<()> {
        self.dir = dir.join("redis");
        self.generation = 1;
        self.leader_port = free_port()?;
        self.leader = Some(self.server("master", self.leader_port, "")?);
        self.start_replica()?;
        self.replicate()?;
        let port = self.follower_port;
        wait_for("the Redis replica", 60, || {
            Resp::new(port)
                .and_then(|mut r| r.text(&[b"INFO", b"replication"]))
                .map(|i| i.contains("master_link_status:up"))
                .unwrap_or(false)
        })
    }

    fn leader_port(&self) -> u16 {
        self.leader_port
    }

    fn leader_pid(&self) -> u32 {
        self.leader.as_ref().map(Child::id).unwrap_or(0)
    }

    fn follower_pid(&self) -> Option<u32> {
        self.follower.as_ref().map(Child::id)
    }

    fn conn(&self, follower: bool) -> Result<Box<dyn Conn>> {
        let port = if follower {
            self.follower_port
        } else {
            self.leader_port
        };
        Ok(Box::new(RedisConn {
            resp: Resp::new(port)?,
        }))
    }

    fn clear(&mut self) -> Result<()> {
        Resp::new(self.leader_port)?.text(&[b"FLUSHALL"])?;
        Ok(())
    }

    fn pause(&mut self) -> Result<()> {
        // Redis cannot stop a replica's link and keep it: a wrong password and a killed link keep
        // it out (as ../shared/peers measured PSYNC) until the right password is back.
        let mut f = self.follower()?;
        f.text(&[b"CONFIG", b"SET", b"masterauth", b"wrong"])?;
        f.call(&[b"CLIENT", b"KILL", b"TYPE", b"master"])?;
        Ok(())
    }

    fn resume(&mut self) -> Result<()> {
        self.follower()?
            .text(&[b"CONFIG", b"SET", b"masterauth", b"replpw"])?;
        Ok(())
    }

    fn new_follower(&mut self) -> Result<()> {
        stop_child(&mut self.follower, libc::SIGTERM);
        let _ = std::fs::remove_dir_all(self.dir.join(format!("replica{}", self.generation)));
        self.generation += 1;
        self.start_replica()
    }

    fn init(&mut self) -> Result<Option<ToolUse>> {
        self.replicate()?;
        Ok(Some(ToolUse::default()))
    }

    fn dump_restore(&mut self) -> Result<Option<ToolUse>> {
        Ok(None)
    }

    fn missing(&self, _scenario: &str) -> &'static str {
        "a replica always starts with a full sync (the init row); an RDB copied to it is \
         replaced by the next sync"
    }

    fn stop(&mut self) {
        stop_child(&mut self.follower, libc::SIGTERM);
        stop_child(&mut self.leader, libc::SIGTERM);
    }
}
