//! `tickship-bench`: tickship's headline figures measured end to end on this machine, and with
//! `--peers` beside PostgreSQL, MariaDB and Redis doing the same job in the same run, interleaved
//! (tickship, then each peer, repetition after repetition) so that the machine's drift hits all
//! of them and the ratios hold even where the absolute figures do not. Every server is a real
//! process on loopback in the bench's own directory; everything stops by itself.

mod load;
mod procs;
mod report;
mod systems;
mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use systems::System;

#[derive(Parser, Clone)]
#[command(about = "tickship's headline figures, beside PostgreSQL, MariaDB and Redis with --peers")]
pub struct Args {
    /// Also run PostgreSQL 15, MariaDB and Redis replication (installed by scripts/bench-setup,
    /// which this runs when they are missing).
    #[arg(long)]
    peers: bool,
    /// Measured repetitions (after one warm-up run that is not counted).
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Scenarios, comma-separated: ingest, steady, catch-up, init, dump-restore.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ingest,steady,catch-up,init,dump-restore"
    )]
    scenarios: Vec<String>,
    /// Concurrent clients of the load.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Seconds of each timed load (ingest of batches, ingest of single documents, steady).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Documents written while the follower is stopped (catch-up), which are then the leader's
    /// whole content for init and dump-restore (about 1 KB each).
    #[arg(long, default_value_t = 200_000)]
    docs: u64,
    /// Print all results as JSON too.
    #[arg(long)]
    json: bool,
    /// Where to write the dated markdown report [default: docs/benchmarks/DATE-tickship-bench.md
    /// when ./docs/benchmarks exists].
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write no markdown report.
    #[arg(long)]
    no_markdown: bool,
    /// Directory for the servers' data [default: a new one under /var/tmp, removed at the end].
    #[arg(long)]
    dir: Option<PathBuf>,
}

const SCENARIOS: [&str; 5] = ["ingest", "steady", "catch-up", "init", "dump-restore"];

/// One measured row of one repetition.
#[derive(Clone, serde::Serialize)]
pub struct Sample {
    pub system: &'static str,
    pub scenario: &'static str,
    pub rep: u32,
    pub values: BTreeMap<&'static str, f64>,
    /// Why the row has no figures (no equivalent, or an error).
    pub note: Option<String>,
}

/// CPU and memory of leader and follower over one row, and the replication bytes on the wire.
struct Meter {
    leader: (u32, f64),
    follower: Option<(u32, f64)>,
    started: Instant,
}

impl Meter {
    fn start(system: &dyn System, wire: Option<&procs::Wire>) -> Result<Meter> {
        if let Some(w) = wire {
            w.take()?;
        }
        let leader = system.leader_pid();
        procs::reset_peak(leader);
        let follower = system.follower_pid();
        if let Some(f) = follower {
            procs::reset_peak(f);
        }
        Ok(Meter {
            leader: (leader, procs::tree_cpu(leader)),
            follower: follower.map(|f| (f, procs::tree_cpu(f))),
            started: Instant::now(),
        })
    }

    fn finish(
        self,
        system: &dyn System,
        wire: Option<&procs::Wire>,
        values: &mut BTreeMap<&'static str, f64>,
    ) -> Result<()> {
        values.insert("seconds", self.started.elapsed().as_secs_f64());
        values.insert("leader_cpu", procs::tree_cpu(self.leader.0) - self.leader.1);
        values.insert("leader_rss", procs::tree_peak_rss(self.leader.0) as f64);
        if let Some(pid) = system.follower_pid() {
            // A follower started during the row (a restarted standby, a new one) used nothing
            // before it.
            let before = match self.follower {
                Some((p, cpu)) if p == pid => cpu,
                _ => 0.0,
            };
            values.insert("follower_cpu", procs::tree_cpu(pid) - before);
            values.insert("follower_rss", procs::tree_peak_rss(pid) as f64);
        }
        if let Some(w) = wire {
            values.insert("wire_bytes", w.take()? as f64);
        }
        Ok(())
    }
}

/// Waits until the follower holds every key of `keys` and `count` documents; the seconds it took.
fn wait_level(system: &dyn System, keys: &[String], count: u64, seconds: u64) -> Result<f64> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut follower = loop {
        match system.conn(true) {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    for key in keys {
        while !follower.exists(key).unwrap_or(false) {
            if Instant::now() > deadline {
                bail!("{key} not on the follower after {seconds} s");
            }
            std::thread::yield_now();
        }
    }
    loop {
        let have = follower.count()?;
        if have == count {
            return Ok(started.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("the follower holds {have} documents, the leader {count}, after {seconds} s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn leader_count(system: &dyn System) -> Result<u64> {
    system.conn(false)?.count()
}

fn quantiles(
    values: &mut BTreeMap<&'static str, f64>,
    prefix: &str,
    h: &hdrhistogram::Histogram<u64>,
) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let name = |s: &str| -> &'static str { Box::leak(format!("{prefix}_{s}").into_boxed_str()) };
    values.insert(name("p50_ms"), ms(0.5));
    values.insert(name("p99_ms"), ms(0.99));
    values.insert(name("p999_ms"), ms(0.999));
    values.insert(name("max_ms"), h.max() as f64 / 1000.0);
}

struct Run<'a> {
    args: &'a Args,
    wire: Option<&'a procs::Wire>,
    rep: u32,
    next_run: u32,
    samples: Vec<Sample>,
}

impl Run<'_> {
    fn wants(&self, scenario: &str) -> bool {
        self.args.scenarios.iter().any(|s| s == scenario)
    }

    fn push(
        &mut self,
        system: &dyn System,
        scenario: &'static str,
        values: BTreeMap<&'static str, f64>,
        note: Option<String>,
    ) {
        let line = report::one_line(scenario, &values, note.as_deref());
        println!("  {:<9} {:<14} {line}", system.name(), scenario);
        self.samples.push(Sample {
            system: system.name(),
            scenario,
            rep: self.rep,
            values,
            note,
        });
    }

    fn spec(
        &mut self,
        batch: usize,
        seconds: f64,
        max_docs: u64,
        rate: f64,
        probe: bool,
    ) -> load::Spec {
        self.next_run += 1;
        load::Spec {
            clients: self.args.clients,
            batch,
            seconds,
            max_docs,
            rate,
            probe,
            run: self.rep * 100 + self.next_run,
        }
    }

    /// A timed load with the follower attached; the row's values, and the documents per second.
    fn ingest(
        &mut self,
        system: &dyn System,
        spec: load::Spec,
    ) -> Result<(BTreeMap<&'static str, f64>, f64)> {
        let meter = Meter::start(system, self.wire)?;
        let out = load::run(system, &spec)?;
        let mut values = BTreeMap::new();
        meter.finish(system, self.wire, &mut values)?;
        let rate = out.docs as f64 / out.seconds.max(1e-9);
        values.insert("docs", out.docs as f64);
        values.insert("doc_bytes", out.bytes as f64);
        values.insert("docs_per_s", rate);
        values.insert("mb_per_s", out.bytes as f64 / 1e6 / out.seconds.max(1e-9));
        values.insert("client_cpu", out.cpu);
        if let Some(h) = out.latency.as_ref() {
            quantiles(&mut values, "latency", h);
        }
        if spec.probe {
            if let Some(h) = out.lag.as_ref() {
                quantiles(&mut values, "lag", h);
                values.insert("lag_samples", h.len() as f64);
            }
        }
        // Not part of the row: the follower is level and holds what the leader holds.
        let count = leader_count(system)?;
        wait_level(system, &out.last_keys, count, 300)?;
        Ok((values, rate))
    }

    fn all(&mut self, system: &mut dyn System, dir: &std::path::Path) -> Result<()> {
        system.start(dir)?;
        let port = system.leader_port();
        if let Some(w) = self.wire {
            w.watch(port)?;
        }
        let (seconds, clients) = (self.args.seconds, self.args.clients);
        let mut single_rate = 0.0;
        if self.wants("ingest") {
            let spec = self.spec(1000, seconds, u64::MAX / 2, 0.0, false);
            let (values, _) = self.ingest(system, spec)?;
            self.push(system, "ingest-batch", values, None);
            let spec = self.spec(1, seconds, u64::MAX / 2, 0.0, false);
            let (values, rate) = self.ingest(system, spec)?;
            single_rate = rate;
            self.push(system, "ingest-single", values, None);
        }
        if self.wants("steady") {
            if single_rate == 0.0 {
                let spec = self.spec(1, seconds.min(3.0), u64::MAX / 2, 0.0, false);
                single_rate = self.ingest(system, spec)?.1;
            }
            let per_client = single_rate * 0.5 / clients as f64;
            let spec = self.spec(1, seconds, u64::MAX / 2, per_client, true);
            let (mut values, _) = self.ingest(system, spec)?;
            values.insert("target_docs_per_s", single_rate * 0.5);
            self.push(system, "steady", values, None);
        }
        let data = ["catch-up", "init", "dump-restore"]
            .iter()
            .any(|s| self.wants(s));
        if !data {
            return Ok(());
        }
        // The leader's content from here on: exactly --docs documents.
        system.clear()?;
        wait_level(system, &[], 0, 300)?;
        let docs = self.args.docs;
        let catch_up = self.wants("catch-up");
        if catch_up {
            system.pause()?;
        }
        let spec = self.spec(1000, 3600.0, docs, 0.0, false);
        let loaded = load::run(system, &spec)?;
        if loaded.docs != docs {
            bail!("loaded {} documents of {docs} in an hour", loaded.docs);
        }
        let keys = loaded.last_keys.clone();
        if catch_up {
            let meter = Meter::start(system, self.wire)?;
            system.resume()?;
            wait_level(system, &keys, docs, 600)?;
            let mut values = BTreeMap::new();
            meter.finish(system, self.wire, &mut values)?;
            let s = values["seconds"];
            values.insert("docs", docs as f64);
            values.insert("doc_bytes", loaded.bytes as f64);
            values.insert("docs_per_s", docs as f64 / s);
            values.insert("mb_per_s", loaded.bytes as f64 / 1e6 / s);
            self.push(system, "catch-up", values, None);
        } else {
            wait_level(system, &keys, docs, 600)?;
        }
        for scenario in ["init", "dump-restore"] {
            if !self.wants(scenario) {
                continue;
            }
            system.new_follower()?;
            let meter = Meter::start(system, self.wire)?;
            let used = if scenario == "init" {
                system.init()?
            } else {
                system.dump_restore()?
            };
            let Some(used) = used else {
                self.push(
                    system,
                    scenario,
                    BTreeMap::new(),
                    Some(system.missing(scenario).to_string()),
                );
                continue;
            };
            wait_level(system, &keys, docs, 900)?;
            let mut values = BTreeMap::new();
            meter.finish(system, self.wire, &mut values)?;
            let s = values["seconds"];
            values.insert("docs", docs as f64);
            values.insert("doc_bytes", loaded.bytes as f64);
            values.insert("mb_per_s", loaded.bytes as f64 / 1e6 / s);
            values.insert("client_cpu", used.cpu);
            values.insert("client_rss", used.peak_rss as f64);
            self.push(
                system,
                if scenario == "init" {
                    "init"
                } else {
                    "dump-restore"
                },
                values,
                None,
            );
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    for s in &args.scenarios {
        if !SCENARIOS.contains(&s.as_str()) {
            bail!("unknown scenario {s:?}: one of {}", SCENARIOS.join(", "));
        }
    }
    if args.reps == 0 || args.clients == 0 || args.seconds <= 0.0 || args.docs == 0 {
        bail!("--reps, --clients, --seconds and --docs must be positive");
    }
    if args.peers {
        let setup = std::env::current_dir()?.join("scripts/bench-setup");
        let status = std::process::Command::new(&setup)
            .status()
            .with_context(|| format!("run {} (from the repository's root)", setup.display()))?;
        if !status.success() {
            bail!("{} failed", setup.display());
        }
    }
    let mut systems: Vec<Box<dyn System>> = vec![Box::new(systems::Tickship::new()?)];
    if args.peers {
        systems.push(Box::new(systems::Postgres::new()?));
        systems.push(Box::new(systems::Mariadb::new()?));
        systems.push(Box::new(systems::Redis::new()?));
    }
    let wire = match procs::Wire::new() {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!(
                "tickship-bench: no bytes-on-the-wire column ({e:#}); it needs root and iptables"
            );
            None
        }
    };
    let (_temporary, root) = tickship_tools::data_dir(args.dir.as_deref(), "tickship-bench-")?;
    // The peers' servers run as their own users and must reach their directories.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
    let started = Instant::now();
    let mut samples = Vec::new();
    for rep in 0..=args.reps {
        println!(
            "{} {rep} of {}",
            if rep == 0 { "warm-up" } else { "repetition" },
            args.reps
        );
        for system in systems.iter_mut() {
            let dir = root.join(format!("{}-{rep}", system.name()));
            let mut run = Run {
                args: &args,
                wire: wire.as_ref(),
                rep,
                next_run: 0,
                samples: Vec::new(),
            };
            let result = run.all(system.as_mut(), &dir);
            system.stop();
            let _ = std::fs::remove_dir_all(&dir);
            if let Err(e) = result {
                eprintln!("  {}: repetition {rep} failed: {e:#}", system.name());
                run.samples.push(Sample {
                    system: system.name(),
                    scenario: "error",
                    rep,
                    values: BTreeMap::new(),
                    note: Some(format!("{e:#}")),
                });
            }
            if rep > 0 {
                samples.extend(run.samples);
            }
        }
    }
    let descriptions: Vec<String> = systems.iter().map(|s| s.describe()).collect();
    report::finish(&args, &samples, &descriptions, started.elapsed())
}
