//! `tickship-initbench`: the manual's Approach 2 timed end to end on this machine. A leader is
//! loaded with N documents of about 1 KB (the peers' documents), then `tickship dump`, `tickship
//! restore` into a new server and `tickship replication start --from N` run as a user runs them,
//! and the tool reports dump and restore rates, the time until the follower has caught up, and
//! the peak memory of every process, so that runs at two sizes show whether memory grows with the
//! data. Everything it starts stops with it; its data directory is removed unless kept.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use tickship::cli::demo::{proc_status_bytes, Server};
use tickship::client::Client;

#[derive(Parser)]
#[command(about = "Times dump -> restore -> start at the tick -> caught up, with peak memory")]
struct Args {
    /// Documents loaded into the leader.
    #[arg(long, default_value_t = 2_000_000)]
    docs: u64,
    /// Concurrent loaders.
    #[arg(long, default_value_t = 4)]
    clients: u64,
    /// Threads of dump and restore.
    #[arg(long, default_value_t = 2)]
    threads: u64,
    /// Data directory (default: a new one under /var/tmp, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the results as one JSON object too.
    #[arg(long)]
    json: bool,
    /// `dump`: the manual's Approach 2 (dump, restore, start at the tick). `setup`: Approach 1
    /// (`tickship replication setup`, a full sync, until tailing and level), then 1% of the
    /// documents changed on the leader and the same follower set up again with `--incremental`.
    #[arg(long, default_value = "dump", value_parser = ["dump", "setup"])]
    approach: String,
    /// A flag for the follower's tickshipd, e.g. `--follower-arg=--replication.sync-copy-files=false`
    /// (repeat for several).
    #[arg(long = "follower-arg", allow_hyphen_values = true)]
    follower_args: Vec<String>,
}

const PASSWORD: &str = "initbench";

fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to {}: build it (cargo build --release)",
            name,
            me.display()
        );
    }
    Ok(path)
}

/// Runs `tickship` against `endpoint`; returns its stdout, the seconds it took and its peak RSS.
fn tickship(endpoint: &str, args: &[&str]) -> Result<(String, f64, u64)> {
    let started = Instant::now();
    let mut child = Command::new(sibling("tickship")?)
        .args(["--server.endpoint", endpoint])
        .env("TICKSHIP_ROOT_PASSWORD", PASSWORD)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id() as i32;
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    // wait4 for this child's own peak RSS (getrusage(RUSAGE_CHILDREN) would take the largest of
    // all children, the daemons included).
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, which nothing else waits for; `usage` is valid to fill.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if waited != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("tickship {args:?} failed (status {status}):\n{stdout}\n{stderr}");
    }
    Ok((stdout, seconds, usage.ru_maxrss as u64 * 1024))
}

fn load(client: &Client, docs: u64, clients: u64) -> Result<()> {
    client.call("POST", "/_api/collection", Some(json!({"name": "docs"})))?;
    let per = docs.div_ceil(clients);
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..clients)
            .map(|w| {
                let client = client.clone();
                scope.spawn(move || -> Result<()> {
                    let mut generator = tickship::docgen::DocGen::new(w + 1);
                    let (from, to) = (w * per, ((w + 1) * per).min(docs));
                    let mut i = from;
                    while i < to {
                        let end = (i + 1000).min(to);
                        let mut body = String::with_capacity(1100 * 1000);
                        body.push('[');
                        for n in i..end {
                            if n > i {
                                body.push(',');
                            }
                            body.push_str(
                                &generator.doc(&tickship::docgen::DocGen::key("d", n), n),
                            );
                        }
                        body.push(']');
                        let (status, text) =
                            client.raw("POST", "/_api/document/docs?silent=true", Some(body))?;
                        if status >= 300 {
                            bail!("load: HTTP {status}: {text}");
                        }
                        i = end;
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("loader panicked"))??;
        }
        Ok(())
    })
}

/// Replaces every hundredth document (1%) with a new version.
fn change_one_percent(client: &Client, docs: u64) -> Result<u64> {
    let mut generator = tickship::docgen::DocGen::new(99);
    let keys: Vec<u64> = (0..docs).step_by(100).collect();
    for chunk in keys.chunks(1000) {
        let mut body = String::from("[");
        for (i, n) in chunk.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&generator.doc(&tickship::docgen::DocGen::key("d", *n), *n + 1));
        }
        body.push(']');
        let (status, text) = client.raw(
            "POST",
            "/_api/document/docs?silent=true&overwriteMode=replace",
            Some(body),
        )?;
        if status >= 300 {
            bail!("update: HTTP {status}: {text}");
        }
    }
    Ok(keys.len() as u64)
}

/// The manual's Approach 1: a full sync of an empty follower until it tails level with the
/// leader, then an incremental one of the same follower after 1% changed.
fn setup(args: &Args, daemon: &Path, root: &Path, mut leader: Server, lc: &Client) -> Result<()> {
    let extra: Vec<&str> = args.follower_args.iter().map(String::as_str).collect();
    let mut follower = Server::start("follower", daemon, &root.join("follower"), PASSWORD, &extra)?;
    let fc = Client::new(&follower.endpoint, "_system", "root", Some(PASSWORD))?;
    let sync_state = |c: &Client| -> Result<(u64, u64)> {
        let state = c.call("GET", "/_api/replication/applier-state?global=true", None)?;
        let sync = &state["state"]["initialSync"];
        Ok((
            sync["bytesReceived"].as_u64().unwrap_or(0),
            sync["documents"].as_u64().unwrap_or(0),
        ))
    };
    let (_, full_seconds, _) = tickship(
        &follower.endpoint,
        &[
            "replication",
            "setup",
            "--global",
            &leader.endpoint,
            "--no-progress",
        ],
    )?;
    let (full_bytes, full_docs) = sync_state(&fc)?;
    println!(
        "  full sync, tailing and level: {full_seconds:.2} s, {:.0} MB received ({:.0} MB/s), {full_docs} documents",
        full_bytes as f64 / 1e6,
        full_bytes as f64 / 1e6 / full_seconds
    );
    tickship(&follower.endpoint, &["replication", "stop", "--global"])?;
    let changed = change_one_percent(lc, args.docs)?;
    let (_, incremental_seconds, _) = tickship(
        &follower.endpoint,
        &[
            "replication",
            "setup",
            "--global",
            &leader.endpoint,
            "--incremental",
            "--no-progress",
        ],
    )?;
    let (incremental_bytes, incremental_docs) = sync_state(&fc)?;
    println!(
        "  incremental sync after {changed} documents changed (1%), tailing and level: \
         {incremental_seconds:.2} s ({:.1}% of the full), {:.1} MB received ({:.1}% of the full), \
         {incremental_docs} documents stored",
        incremental_seconds * 100.0 / full_seconds,
        incremental_bytes as f64 / 1e6,
        incremental_bytes as f64 * 100.0 / full_bytes.max(1) as f64
    );
    let count = |c: &Client| -> Result<Value> {
        Ok(c.call(
            "GET",
            "/_api/collection/docs/checksum?withRevisions=true&withData=true",
            None,
        )?["checksum"]
            .clone())
    };
    let (leader_sum, follower_sum) = (count(lc)?, count(&fc)?);
    if leader_sum != follower_sum {
        bail!("leader checksum {leader_sum}, follower {follower_sum}");
    }
    let rss = |s: &Server| {
        s.pid()
            .and_then(|p| proc_status_bytes(p, "VmHWM:"))
            .unwrap_or(0)
    };
    let (leader_rss, follower_rss) = (rss(&leader), rss(&follower));
    println!(
        "  equal checksums (with revisions and data); peak RSS leader {} MiB, follower {} MiB",
        leader_rss >> 20,
        follower_rss >> 20
    );
    if args.json {
        println!(
            "{}",
            json!({
                "docs": args.docs, "full_seconds": full_seconds, "full_bytes": full_bytes,
                "incremental_seconds": incremental_seconds, "incremental_bytes": incremental_bytes,
                "changed": changed, "leader_rss": leader_rss, "follower_rss": follower_rss,
            })
        );
    }
    follower.stop();
    leader.stop();
    Ok(())
}

fn tick(value: &Value) -> u64 {
    value.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains(".data.json"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (_temporary, root) = tickship_tools::data_dir(args.dir.as_deref(), "tickship-initbench-")?;
    let daemon = sibling("tickshipd")?;
    println!("loading {} documents into the leader...", args.docs);
    let mut leader = Server::start("leader", &daemon, &root.join("leader"), PASSWORD, &[])?;
    let lc = Client::new(&leader.endpoint, "_system", "root", Some(PASSWORD))?;
    let loading = Instant::now();
    load(&lc, args.docs, args.clients)?;
    let load_seconds = loading.elapsed().as_secs_f64();
    let leader_last =
        tick(&lc.call("GET", "/_api/replication/logger-state", None)?["state"]["lastLogTick"]);
    println!("  loaded in {load_seconds:.1} s; leader at tick {leader_last}");

    if args.approach == "setup" {
        return setup(&args, &daemon, &root, leader, &lc);
    }
    let threads = args.threads.to_string();
    let dump_dir = root.join("dump");
    let dump_arg = dump_dir.to_str().context("dump path")?;
    let whole = Instant::now();
    let (out, dump_seconds, dump_rss) = tickship(
        &leader.endpoint,
        &[
            "dump",
            "--output-directory",
            dump_arg,
            "--threads",
            &threads,
            "--progress",
            "false",
        ],
    )?;
    let dump_tick: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("Last tick provided by server is: "))
        .and_then(|t| t.trim().parse().ok())
        .context("no tick printed by the dump")?;
    let dump_bytes = dir_bytes(&dump_dir);
    println!(
        "  dump: {dump_seconds:.2} s, {:.0} MB written ({:.0} MB/s), tick {dump_tick}, peak RSS {} MiB",
        dump_bytes as f64 / 1e6,
        dump_bytes as f64 / 1e6 / dump_seconds,
        dump_rss >> 20
    );
    let extra: Vec<&str> = args.follower_args.iter().map(String::as_str).collect();
    let mut follower = Server::start(
        "follower",
        &daemon,
        &root.join("follower"),
        PASSWORD,
        &extra,
    )?;
    let (_, restore_seconds, restore_rss) = tickship(
        &follower.endpoint,
        &[
            "restore",
            "--input-directory",
            dump_arg,
            "--threads",
            &threads,
        ],
    )?;
    println!(
        "  restore: {restore_seconds:.2} s ({:.0} MB/s of data files), peak RSS {} MiB",
        dump_bytes as f64 / 1e6 / restore_seconds,
        restore_rss >> 20
    );
    let config =
        json!({"endpoint": leader.endpoint, "username": "root", "password": PASSWORD}).to_string();
    tickship(&follower.endpoint, &["replication", "properties", &config])?;
    tickship(
        &follower.endpoint,
        &["replication", "start", "--from", &dump_tick.to_string()],
    )?;
    let fc = Client::new(&follower.endpoint, "_system", "root", Some(PASSWORD))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let state = fc.call("GET", "/_api/replication/applier-state", None)?;
        if state["state"]["lastError"]["errorNum"]
            .as_u64()
            .unwrap_or(0)
            != 0
        {
            bail!("the applier stopped: {}", state["state"]["lastError"]);
        }
        if tick(&state["state"]["lastAppliedContinuousTick"]) >= leader_last {
            break;
        }
        if Instant::now() > deadline {
            bail!("the follower did not catch up in 600 s: {state}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let whole_seconds = whole.elapsed().as_secs_f64();
    let count = |c: &Client| -> Result<u64> {
        Ok(c.call("GET", "/_api/collection/docs/count", None)?["count"]
            .as_u64()
            .unwrap_or(0))
    };
    let (leader_count, follower_count) = (count(&lc)?, count(&fc)?);
    if leader_count != follower_count {
        bail!("leader has {leader_count} documents, the follower {follower_count}");
    }
    let leader_rss = leader
        .pid()
        .and_then(|p| proc_status_bytes(p, "VmHWM:"))
        .unwrap_or(0);
    let follower_rss = follower
        .pid()
        .and_then(|p| proc_status_bytes(p, "VmHWM:"))
        .unwrap_or(0);
    println!(
        "  dump + restore + start + caught up: {whole_seconds:.2} s; peak RSS leader {} MiB, follower {} MiB; {follower_count} documents on both",
        leader_rss >> 20,
        follower_rss >> 20
    );
    if args.json {
        println!(
            "{}",
            json!({
                "docs": args.docs, "load_seconds": load_seconds,
                "dump_seconds": dump_seconds, "dump_bytes": dump_bytes, "dump_rss": dump_rss,
                "restore_seconds": restore_seconds, "restore_rss": restore_rss,
                "whole_seconds": whole_seconds, "leader_rss": leader_rss, "follower_rss": follower_rss,
            })
        );
    }
    follower.stop();
    leader.stop();
    Ok(())
}
