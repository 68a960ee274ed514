//! HTTP load generator for tickshipd: N clients insert ~1 KB JSON documents (`tickship::docgen`,
//! shaped like the peer benchmarks' data), one per request or in batches, for a bounded time and
//! count; prints documents/s and request latency percentiles. Every request waits for the
//! server's answer, so every document counted was acknowledged (durable, with the default sync
//! policy).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use tickship_tools::docgen::DocGen;

#[derive(Parser, Debug)]
#[command(about = "Insert load against a tickshipd leader")]
struct Args {
    /// Server URL.
    #[arg(long, default_value = "http://127.0.0.1:8529")]
    url: String,
    #[arg(long, default_value = "root")]
    username: String,
    /// Password (default: $TICKSHIP_ROOT_PASSWORD).
    #[arg(long)]
    password: Option<String>,
    #[arg(long, default_value = "_system")]
    database: String,
    /// Collection (created if missing).
    #[arg(long, default_value = "load")]
    collection: String,
    /// Concurrent clients (one connection each).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Documents per request: 1 sends single documents, more sends JSON arrays.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Stop after this many seconds...
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// ...or this many documents in all.
    #[arg(long, default_value_t = 10_000_000)]
    max_docs: u64,
    /// Key prefix, so repeated runs do not collide.
    #[arg(long)]
    prefix: Option<String>,
    /// A follower's URL: after each acknowledged request, poll the follower until the request's
    /// last document is visible there and record the lag (acknowledgement → visible).
    #[arg(long)]
    follower: Option<String>,
    /// The follower's root password (default: --password).
    #[arg(long)]
    follower_password: Option<String>,
    /// Requests per second per client (0: as fast as acknowledged).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// With --follower: also write every lag sample to this file, one line each:
    /// `seconds_since_start lag_us client` (to see when the slow ones happen).
    #[arg(long)]
    lag_samples: Option<std::path::PathBuf>,
}

fn basic(username: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
    )
}

fn new_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        // No global timeout: with one, ureq resolves every request's address on a new thread,
        // which with many clients takes a large share of the machine from the server measured.
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .timeout_recv_body(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let password = args
        .password
        .clone()
        .or_else(|| std::env::var("TICKSHIP_ROOT_PASSWORD").ok())
        .unwrap_or_default();
    let auth = basic(&args.username, &password);
    let base = format!("{}/_db/{}", args.url.trim_end_matches('/'), args.database);
    let agent = new_agent();
    let created = agent
        .post(&format!("{base}/_api/collection"))
        .header("authorization", &auth)
        .send(format!(r#"{{"name":"{}"}}"#, args.collection))
        .context("create collection")?;
    match created.status().as_u16() {
        200 | 409 => {}
        other => bail!("creating the collection answered {other}"),
    }
    let prefix = args.prefix.clone().unwrap_or_else(|| {
        format!(
            "{}-",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        )
    });
    // Documents are generated before the clock starts.
    let per_client = (args.max_docs / args.clients as u64).max(args.batch as u64);
    let pool_docs = 20_000usize.max(args.batch);
    let mut generator = DocGen::new(7);
    let pool: Arc<Vec<String>> = Arc::new(
        (0..pool_docs as u64)
            .map(|i| generator.doc("KEY", i))
            .collect(),
    );
    let url = format!("{base}/_api/document/{}", args.collection);
    let follower = args.follower.as_ref().map(|f| {
        let password = args
            .follower_password
            .clone()
            .unwrap_or_else(|| password.clone());
        (
            format!(
                "{}/_db/{}/_api/document/{}",
                f.trim_end_matches('/'),
                args.database,
                args.collection
            ),
            basic(&args.username, &password),
        )
    });
    let lags = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        600_000_000,
        3,
    )?));
    let samples = Arc::new(std::sync::Mutex::new(Vec::<(f64, u64, usize)>::new()));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let threads: Vec<_> = (0..args.clients)
        .map(|client| {
            let (pool, url, auth, prefix, done) = (
                pool.clone(),
                url.clone(),
                auth.clone(),
                prefix.clone(),
                done.clone(),
            );
            let (follower, lags, rate) = (follower.clone(), lags.clone(), args.rate);
            let samples = args.lag_samples.is_some().then(|| samples.clone());
            let (batch, clients) = (args.batch, args.clients);
            std::thread::spawn(move || -> Result<Histogram<u64>> {
                let agent = new_agent();
                let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
                let mut sent = 0u64;
                let mut body = String::with_capacity(batch * 1100);
                let mut lag = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
                // Paced clients start a fraction of a period apart, so that together they make
                // an even stream instead of all sending at the same instants.
                let paced_from = Instant::now()
                    + if rate > 0.0 {
                        Duration::from_secs_f64(client as f64 / (rate * clients as f64))
                    } else {
                        Duration::ZERO
                    };
                let mut mine = Vec::new();
                let mut requests = 0u64;
                while Instant::now() < deadline && sent < per_client {
                    if rate > 0.0 {
                        // Pacing (load shape, not synchronisation): request n at n/rate.
                        let due = paced_from + Duration::from_secs_f64(requests as f64 / rate);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    requests += 1;
                    body.clear();
                    if batch > 1 {
                        body.push('[');
                    }
                    for i in 0..batch {
                        let n = sent + i as u64;
                        if i > 0 {
                            body.push(',');
                        }
                        let doc = &pool[(client * 7919 + n as usize) % pool.len()];
                        body.push_str(&doc.replacen("KEY", &format!("{prefix}c{client}-{n}"), 1));
                    }
                    if batch > 1 {
                        body.push(']');
                    }
                    let t = Instant::now();
                    let answer = agent
                        .post(&url)
                        .header("authorization", &auth)
                        .header("content-type", "application/json")
                        .send(&body)?;
                    let status = answer.status().as_u16();
                    let text = answer.into_body().read_to_string()?;
                    latency.record(t.elapsed().as_micros() as u64)?;
                    if status >= 300 || (batch > 1 && text.contains("\"error\":true")) {
                        bail!("insert answered {status}: {}", &text[..text.len().min(300)]);
                    }
                    let acknowledged = Instant::now();
                    if let Some((follower_url, follower_auth)) = &follower {
                        let key = format!("{prefix}c{client}-{}", sent + batch as u64 - 1);
                        let visible_by = acknowledged + Duration::from_secs(60);
                        loop {
                            let answer = agent
                                .head(&format!("{follower_url}/{key}"))
                                .header("authorization", follower_auth)
                                .call()?;
                            if answer.status().as_u16() == 200 {
                                break;
                            }
                            if Instant::now() > visible_by {
                                bail!("document {key} not visible on the follower after 60 s");
                            }
                        }
                        let micros = acknowledged.elapsed().as_micros().max(1) as u64;
                        lag.record(micros)?;
                        if samples.is_some() {
                            mine.push((
                                acknowledged.duration_since(started).as_secs_f64(),
                                micros,
                                client,
                            ));
                        }
                    }
                    sent += batch as u64;
                    done.fetch_add(batch as u64, Ordering::Relaxed);
                }
                lags.lock().unwrap_or_else(|p| p.into_inner()).add(&lag)?;
                if let Some(samples) = samples {
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(mine);
                }
                Ok(latency)
            })
        })
        .collect();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for thread in threads {
        latency.add(
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("client panicked"))??,
        )?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let docs = done.load(Ordering::Relaxed);
    println!(
        "clients={} batch={} docs={docs} elapsed={elapsed:.2}s => {:.0} docs/s, {:.1} MB/s of JSON",
        args.clients,
        args.batch,
        docs as f64 / elapsed,
        docs as f64 * pool.iter().map(String::len).sum::<usize>() as f64
            / pool.len() as f64
            / elapsed
            / 1e6
    );
    println!(
        "request latency: p50={}us p99={}us p999={}us max={}us ({} requests)",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.value_at_quantile(0.999),
        latency.max(),
        latency.len()
    );
    if let Some(path) = &args.lag_samples {
        let mut samples = samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        let text: String = samples
            .iter()
            .map(|(at, lag, client)| format!("{at:.4} {lag} {client}\n"))
            .collect();
        std::fs::write(path, text)
            .with_context(|| format!("write lag samples to {}", path.display()))?;
    }
    let lags = lags.lock().unwrap_or_else(|p| p.into_inner());
    if !lags.is_empty() {
        println!(
            "follower lag (acknowledged on the leader -> visible on the follower, one HEAD round trip of resolution): p50={}us p99={}us p999={}us max={}us ({} samples)",
            lags.value_at_quantile(0.5),
            lags.value_at_quantile(0.99),
            lags.value_at_quantile(0.999),
            lags.max(),
            lags.len()
        );
    }
    Ok(())
}
