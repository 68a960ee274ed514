//! `tickship demo`: a real leader and follower on this machine (child processes of the
//! `tickshipd` next to this binary), a live insert load on the leader, the follower's applier
//! state while it tails, and a check that both hold the same documents.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

use crate::client::Client;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Data directory for both servers (default: a fresh one under /var/tmp, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Seconds of load.
    #[arg(long, default_value_t = 15.0)]
    pub seconds: f64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Documents per request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Most documents written in all.
    #[arg(long, default_value_t = 5_000_000)]
    pub max_docs: u64,
    /// Catch-up run: the follower's applier is stopped during the load and started after it;
    /// the figures then include the catch-up rate.
    #[arg(long)]
    pub catch_up: bool,
    /// `--rocksdb.documents-in-wal` of both servers: `true` (their default) keeps each document
    /// only in the WAL, `false` stores it in the document store as well.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub documents_in_wal: bool,
    /// Print help.
    #[arg(short, long)]
    pub help: bool,
}

/// `tickship demo --help`: the demo's own options only (it talks to no existing server).
#[derive(Parser)]
#[command(
    name = "tickship demo",
    disable_help_flag = true,
    about = "Runs a leader and a follower on this machine with a live load, shows the applier \
             following, and checks that the follower's documents equal the leader's"
)]
pub struct DemoHelp {
    #[command(flatten)]
    args: DemoArgs,
}

/// A field of `/proc/PID/status` given in kB, in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(field))?;
    let kb: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// A `tickshipd` child process.
pub struct Server {
    name: &'static str,
    child: Option<Child>,
    pub endpoint: String,
}

impl Server {
    pub fn start(
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
            // In the environment, not on the command line, where any user's `ps` would show it.
            .env("TICKSHIP_ROOT_PASSWORD", password)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let stdout = child
            .stdout
            .take()
            .expect("the child's stdout is piped (Stdio::piped above)");
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

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: a graceful stop.
            // SAFETY: kill takes plain integers; the pid is our own child's, not yet waited for,
            // so it names no other process.
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

/// Runs the demo: a leader and a follower under a live load, then the comparison.
pub fn run(args: DemoArgs) -> Result<()> {
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
        "/_api/replication/make-follower?global=true",
        Some(json!({"endpoint": leader.endpoint, "username": "root", "password": password})),
    )?;
    println!(
        "== follower set up: phase {}, following {}",
        setup["state"]["phase"], setup["endpoint"]
    );
    if args.catch_up {
        fc.call(
            "PUT",
            "/_api/replication/applier-stop?global=true",
            Some(json!({})),
        )?;
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
                let mut generator = crate::docgen::DocGen::new(writer as u64 + 1);
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
        let state = fc.call("GET", "/_api/replication/applier-state?global=true", None)?;
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
            &fc.call("GET", "/_api/replication/applier-state?global=true", None)?["state"]
                ["lastAppliedContinuousTick"],
        );
        println!(
            "== load done; starting the follower's applier {} ticks behind",
            leader_last.saturating_sub(applied)
        );
        fc.call(
            "PUT",
            "/_api/replication/applier-start?global=true",
            Some(json!({})),
        )?;
    }
    loop {
        sample_memory();
        let state = fc.call("GET", "/_api/replication/applier-state?global=true", None)?;
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
    let state = fc.call("GET", "/_api/replication/applier-state?global=true", None)?;
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
