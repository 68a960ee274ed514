//! The bench's table: one row per scenario and system, medians with [min–max] over the
//! repetitions, and for each peer the ratio tickship ÷ peer taken repetition by repetition (the
//! two ran minutes apart, so drift cancels in the ratio); printed, as JSON, and as a dated
//! markdown file with the machine, the commit and the command.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::{Args, Sample};

const ROWS: [&str; 6] = [
    "ingest-batch",
    "ingest-single",
    "steady",
    "catch-up",
    "init",
    "dump-restore",
];
const SYSTEMS: [&str; 4] = ["tickship", "postgres", "mariadb", "redis"];

/// The figure a row is judged by, and whether more of it is better.
fn main_metric(scenario: &str) -> (&'static str, bool) {
    match scenario {
        "ingest-batch" | "ingest-single" | "catch-up" => ("docs_per_s", true),
        "steady" => ("lag_p99_ms", false),
        _ => ("seconds", false),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// median [min–max] of one value over the samples, or None when no sample has it.
fn spread(samples: &[&Sample], key: &str) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.values.get(key).copied())
        .collect();
    if v.is_empty() {
        return None;
    }
    let m = median(&mut v);
    Some((m, v[0], v[v.len() - 1]))
}

/// A number with about three significant digits, thousands separated.
fn num(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let a = x.abs();
    if a >= 1000.0 {
        let s = format!("{:.0}", x);
        let (sign, digits) = s.split_at(if x < 0.0 { 1 } else { 0 });
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn with_range(s: Option<(f64, f64, f64)>) -> String {
    match s {
        Some((m, lo, hi)) if lo != hi => format!("{} [{}–{}]", num(m), num(lo), num(hi)),
        Some((m, _, _)) => num(m),
        None => "–".into(),
    }
}

/// The result column of one row, from the samples of its repetitions.
fn result_text(scenario: &str, s: &[&Sample]) -> String {
    let v = |k: &str| spread(s, k).map(|x| x.0).unwrap_or(f64::NAN);
    match scenario {
        "ingest-batch" | "ingest-single" => format!(
            "{} docs/s, {} MB/s; latency p50 {} / p99 {} / p99.9 {} ms",
            with_range(spread(s, "docs_per_s")),
            num(v("mb_per_s")),
            num(v("latency_p50_ms")),
            num(v("latency_p99_ms")),
            num(v("latency_p999_ms"))
        ),
        "steady" => format!(
            "at {} docs/s: lag p50 {} / p99 {} / p99.9 {} / max {} ms",
            num(v("docs_per_s")),
            num(v("lag_p50_ms")),
            with_range(spread(s, "lag_p99_ms")),
            num(v("lag_p999_ms")),
            num(v("lag_max_ms"))
        ),
        "catch-up" => format!(
            "{} docs in {} s: {} docs/s, {} MB/s",
            num(v("docs")),
            num(v("seconds")),
            with_range(spread(s, "docs_per_s")),
            num(v("mb_per_s"))
        ),
        _ => format!(
            "{} MB in {} s ({} MB/s)",
            num(v("doc_bytes") / 1e6),
            with_range(spread(s, "seconds")),
            num(v("mb_per_s"))
        ),
    }
}

/// The progress line of one sample.
pub fn one_line(
    scenario: &str,
    values: &BTreeMap<&'static str, f64>,
    note: Option<&str>,
) -> String {
    if let Some(n) = note {
        return format!("n/a: {n}");
    }
    let sample = Sample {
        system: "",
        scenario: "",
        rep: 0,
        values: values.clone(),
        note: None,
    };
    result_text(scenario, &[&sample])
}

fn per_gb(s: &[&Sample], key: &str) -> String {
    let mut v: Vec<f64> = s
        .iter()
        .filter_map(|x| {
            let cpu = x.values.get(key)?;
            let gb = x.values.get("doc_bytes")? / 1e9;
            (gb > 0.0).then(|| cpu / gb)
        })
        .collect();
    if v.is_empty() {
        "–".into()
    } else {
        num(median(&mut v))
    }
}

fn mib(s: &[&Sample], key: &str) -> String {
    spread(s, key)
        .map(|x| format!("{:.0}", x.0 / 1048576.0))
        .unwrap_or_else(|| "–".into())
}

/// The load generator's CPU as a share of the servers' in the row. In the init and dump-restore
/// rows there is no load generator: the client column is the system's own tools (setup, dump,
/// restore, pg_basebackup, ...), whose work is part of the figure, not noise in it.
fn client_share(scenario: &str, s: &[&Sample]) -> String {
    if matches!(scenario, "init" | "dump-restore") {
        return "n/a: the tools' CPU is the system's".into();
    }
    let mut v: Vec<f64> = s
        .iter()
        .filter_map(|x| {
            let c = x.values.get("client_cpu")?;
            let servers = x.values.get("leader_cpu").copied().unwrap_or(0.0)
                + x.values.get("follower_cpu").copied().unwrap_or(0.0);
            (servers > 0.0).then(|| c / servers * 100.0)
        })
        .collect();
    if v.is_empty() {
        return "–".into();
    }
    let m = median(&mut v);
    if m < 5.0 {
        format!("{m:.1}%")
    } else {
        format!("{m:.0}% (over 5%: the figure is partly the client's)")
    }
}

fn wire_ratio(s: &[&Sample]) -> String {
    let mut v: Vec<f64> = s
        .iter()
        .filter_map(|x| Some(x.values.get("wire_bytes")? / x.values.get("doc_bytes")?))
        .collect();
    if v.is_empty() {
        "–".into()
    } else {
        format!("{:.2}", median(&mut v))
    }
}

/// tickship ÷ peer of the row's figure, repetition by repetition: median [min–max].
fn ratio(tickship: &[&Sample], peer: &[&Sample], key: &str) -> String {
    let mut v: Vec<f64> = tickship
        .iter()
        .filter_map(|t| {
            let p = peer.iter().find(|p| p.rep == t.rep)?;
            Some(t.values.get(key)? / p.values.get(key)?)
        })
        .filter(|r| r.is_finite())
        .collect();
    if v.is_empty() {
        return "–".into();
    }
    let m = median(&mut v);
    if v.len() > 1 {
        format!("{m:.2} [{:.2}–{:.2}]", v[0], v[v.len() - 1])
    } else {
        format!("{m:.2}")
    }
}

fn table(samples: &[Sample]) -> String {
    let mut out = String::from(
        "| scenario | system | result: median [min–max] | tickship ÷ peer | CPU s per GB: leader / follower / client (loader or tools) | peak RSS MiB: leader / follower / client | wire bytes per doc byte | client CPU ÷ servers' |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for scenario in ROWS {
        let of = |system: &str| -> Vec<&Sample> {
            samples
                .iter()
                .filter(|s| s.scenario == scenario && s.system == system)
                .collect()
        };
        let tickship = of("tickship");
        let (key, higher) = main_metric(scenario);
        for system in SYSTEMS {
            let rows = of(system);
            if rows.is_empty() {
                continue;
            }
            if let Some(note) = rows.iter().find_map(|s| s.note.as_ref()) {
                let _ = writeln!(out, "| {scenario} | {system} | n/a: {note} | | | | | |");
                continue;
            }
            let r = if system == "tickship" {
                format!(
                    "({} 1: tickship ahead)",
                    if higher { "above" } else { "below" }
                )
            } else {
                ratio(&tickship, &rows, key)
            };
            let _ = writeln!(
                out,
                "| {scenario} | {system} | {} | {r} | {} / {} / {} | {} / {} / {} | {} | {} |",
                result_text(scenario, &rows),
                per_gb(&rows, "leader_cpu"),
                per_gb(&rows, "follower_cpu"),
                per_gb(&rows, "client_cpu"),
                mib(&rows, "leader_rss"),
                mib(&rows, "follower_rss"),
                mib(&rows, "client_rss"),
                wire_ratio(&rows),
                client_share(scenario, &rows),
            );
        }
    }
    let errors: Vec<&Sample> = samples.iter().filter(|s| s.scenario == "error").collect();
    for e in errors {
        let _ = writeln!(
            out,
            "\nRepetition {} of {} failed: {}",
            e.rep,
            e.system,
            e.note.as_deref().unwrap_or("")
        );
    }
    out
}

fn shell(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    format!(
        "{} cores ({}), {} GiB memory, kernel {}, disk: {}",
        shell("nproc"),
        shell("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'"),
        shell("awk '/MemTotal/ {printf \"%.0f\", $2/1048576}' /proc/meminfo"),
        shell("uname -r"),
        shell("findmnt -no SOURCE,FSTYPE -T /var/tmp | tr -s ' '")
    )
}

pub fn finish(
    args: &Args,
    samples: &[Sample],
    descriptions: &[String],
    took: Duration,
) -> Result<()> {
    let table = table(samples);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let commit = shell("git rev-parse --short HEAD 2>/dev/null");
    let dirty = !shell("git status --porcelain --untracked-files=no 2>/dev/null").is_empty();
    let commit = format!(
        "{commit}{}",
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    );
    let machine = machine();
    println!("\n{table}");
    println!(
        "{} measured repetitions after a warm-up; {} clients; {:.0} s in all.",
        args.reps,
        args.clients,
        took.as_secs_f64()
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "command": command, "commit": commit, "machine": machine,
                "systems": descriptions, "samples": samples,
            })
        );
    }
    if args.no_markdown {
        return Ok(());
    }
    let path = match &args.markdown {
        Some(p) => p.clone(),
        None => {
            let dir = std::path::Path::new("docs/benchmarks");
            if !dir.is_dir() {
                return Ok(());
            }
            dir.join(format!("{}-tickship-bench.md", shell("date +%Y-%m-%d")))
        }
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# tickship-bench, {}\n",
        shell("date -u '+%Y-%m-%d %H:%M UTC'")
    );
    let _ = writeln!(md, "- Command: `{command}`");
    let _ = writeln!(md, "- Commit: {commit}");
    let _ = writeln!(md, "- Machine: {machine}");
    let _ = writeln!(
        md,
        "- {} measured repetitions after one warm-up, systems interleaved in each; {} clients; \
         {:.0} s in all.\n",
        args.reps,
        args.clients,
        took.as_secs_f64()
    );
    md.push_str(&table);
    md.push_str(
        "\nHow to read it: each figure is the median of the repetitions with [min–max]; the \
         ratio is tickship's figure divided by the peer's, repetition by repetition. CPU is \
         user + system seconds of the whole process tree per GB of documents in the row (client: \
         the bench's loader threads, or the tools a row runs: dump, restore, pg_basebackup). \
         Peak RSS is VmHWM after a reset at the row's start, summed over a server's processes \
         (an upper bound for PostgreSQL, whose shared buffers count in every process). Wire bytes \
         are IP packets to or from the leader's port on loopback, the clients' own traffic left \
         out, per byte of JSON document.\n\nSystems:\n",
    );
    for d in descriptions {
        let _ = writeln!(md, "- {d}");
    }
    std::fs::write(&path, md)?;
    println!("written to {}", path.display());
    Ok(())
}
