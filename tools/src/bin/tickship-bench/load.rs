//! The load the scenarios put on a leader: N clients, each on its own connection, writing ~1 KB
//! documents (`tickship::docgen`, the peers' document shape) one request at a time, bounded in
//! time and count; optionally paced, and optionally probing the follower after each acknowledged
//! request until the request's last document is visible there (the replication lag).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use tickship_tools::docgen::DocGen;

use crate::procs::thread_cpu;
use crate::systems::System;

pub struct Spec {
    pub clients: usize,
    /// Documents per request.
    pub batch: usize,
    pub seconds: f64,
    pub max_docs: u64,
    /// Requests per second per client; 0: as fast as acknowledged.
    pub rate: f64,
    /// Probe the follower after each of client 0's requests.
    pub probe: bool,
    /// Makes the keys of this load unique.
    pub run: u32,
}

#[derive(Default)]
pub struct Out {
    pub docs: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Request latency, µs.
    pub latency: Option<Histogram<u64>>,
    /// Acknowledgement → visible on the follower, µs.
    pub lag: Option<Histogram<u64>>,
    /// CPU seconds of the loader threads (generation, encoding, I/O, probing).
    pub cpu: f64,
    /// Each client's last key.
    pub last_keys: Vec<String>,
}

/// `{"_key":"` comes first in every generated document.
const KEY_AT: usize = 9;

fn key(run: u32, client: usize, n: u64) -> String {
    format!("k{run:04}c{client:03}n{n:010}")
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram")
}

pub fn run(system: &dyn System, spec: &Spec) -> Result<Out> {
    let per_client = spec.max_docs.div_ceil(spec.clients as u64);
    let barrier = std::sync::Barrier::new(spec.clients + 1);
    let results = std::thread::scope(|scope| -> Result<Vec<Out>> {
        let mut workers = Vec::new();
        for client in 0..spec.clients {
            let barrier = &barrier;
            let leader = system.conn(false);
            let follower = if spec.probe && client == 0 {
                Some(system.conn(true))
            } else {
                None
            };
            workers.push(scope.spawn(move || -> Result<Out> {
                // Templates made before the clock starts: a request's documents are copies with
                // the key overwritten, so that the loader's CPU stays small beside the servers'.
                let mut generator = DocGen::new(spec.run as u64 * 1000 + client as u64 + 1);
                let pool: Vec<String> = (0..(spec.batch * 2).clamp(64, 4096) as u64)
                    .map(|i| generator.doc(&key(spec.run, client, i), i))
                    .collect();
                let width = key(spec.run, client, 0).len();
                barrier.wait();
                let mut leader = leader?;
                let mut follower = follower.transpose()?;
                let cpu0 = thread_cpu();
                let started = Instant::now();
                let deadline = started + Duration::from_secs_f64(spec.seconds);
                let mut out = Out {
                    latency: Some(histogram()?),
                    lag: Some(histogram()?),
                    ..Out::default()
                };
                let mut docs: Vec<(String, String)> = Vec::with_capacity(spec.batch);
                let mut n = 0u64;
                let mut request = 0u64;
                while n < per_client && Instant::now() < deadline {
                    if spec.rate > 0.0 {
                        let due = started + Duration::from_secs_f64(request as f64 / spec.rate);
                        let now = Instant::now();
                        if due > now {
                            // Pacing to the target rate, not synchronisation.
                            std::thread::sleep(due - now);
                        }
                    }
                    docs.clear();
                    let count = (spec.batch as u64).min(per_client - n);
                    for i in 0..count {
                        let k = key(spec.run, client, n + i);
                        let mut doc = pool[((n + i) % pool.len() as u64) as usize].clone();
                        doc.replace_range(KEY_AT..KEY_AT + width, &k);
                        out.bytes += doc.len() as u64;
                        docs.push((k, doc));
                    }
                    let refs: Vec<(&str, &str)> =
                        docs.iter().map(|(k, d)| (k.as_str(), d.as_str())).collect();
                    let sent = Instant::now();
                    leader.insert(&refs)?;
                    let acked = Instant::now();
                    if let Some(h) = out.latency.as_mut() {
                        h.saturating_record((acked - sent).as_micros() as u64);
                    }
                    n += count;
                    request += 1;
                    if let Some(f) = follower.as_mut() {
                        let last = &docs[docs.len() - 1].0;
                        let give_up = acked + Duration::from_secs(60);
                        while !f.exists(last)? {
                            if Instant::now() > give_up {
                                bail!("{last} not visible on the follower 60 s after it was acknowledged");
                            }
                            std::thread::yield_now();
                        }
                        if let Some(h) = out.lag.as_mut() {
                            h.saturating_record(acked.elapsed().as_micros() as u64);
                        }
                    }
                }
                out.seconds = started.elapsed().as_secs_f64();
                out.docs = n;
                out.cpu = thread_cpu() - cpu0;
                if n > 0 {
                    out.last_keys.push(key(spec.run, client, n - 1));
                }
                Ok(out)
            }));
        }
        barrier.wait();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| anyhow::anyhow!("a loader panicked"))?)
            .collect()
    })?;
    let mut total = Out {
        latency: Some(histogram()?),
        lag: Some(histogram()?),
        ..Out::default()
    };
    for r in results {
        total.docs += r.docs;
        total.bytes += r.bytes;
        total.seconds = total.seconds.max(r.seconds);
        total.cpu += r.cpu;
        total.last_keys.extend(r.last_keys);
        if let (Some(t), Some(h)) = (total.latency.as_mut(), r.latency.as_ref()) {
            t.add(h)?;
        }
        if let (Some(t), Some(h)) = (total.lag.as_mut(), r.lag.as_ref()) {
            t.add(h)?;
        }
    }
    Ok(total)
}
