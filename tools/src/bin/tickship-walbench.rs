//! Sustained WAL append benchmark: N appender threads append blocks of ~1 KB JSON documents
//! (`tickship::docgen`, shaped like the peer benchmarks' data) for a bounded time, each waiting
//! for durability; prints throughput, compression, fsync figures and append-to-durable latency
//! percentiles.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use tickship_storage::wal::{IoEngine, Record, SyncPolicy};
use tickship_storage::{Wal, WalOptions};
use tickship_tools::docgen::DocGen;

#[derive(Parser, Debug)]
#[command(about = "Sustained append benchmark of the tickship WAL")]
struct Args {
    /// WAL directory (default: a fresh temporary directory under /var/tmp, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// auto, uring or sync.
    #[arg(long, default_value = "auto")]
    engine: IoEngine,
    /// Concurrent appender threads.
    #[arg(long, default_value_t = 64)]
    appenders: usize,
    /// Records per append call (one block each).
    #[arg(long, default_value_t = 100)]
    records_per_append: usize,
    /// Stop after this many seconds...
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// ...or after this many records in all, whichever comes first.
    #[arg(long, default_value_t = 50_000_000)]
    max_records: u64,
    /// Distinct documents generated up front and cycled through.
    #[arg(long, default_value_t = 20_000)]
    pool: usize,
    /// --wal.segment-size in MiB.
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
    /// Largest group the writer takes at once, in KiB.
    #[arg(long, default_value_t = 16384)]
    group_kib: usize,
    /// group (fdatasync per group) or never.
    #[arg(long, default_value = "group")]
    sync: String,
    /// Instead of appending: open the existing WAL in --dir and read all its blocks from tick 0,
    /// printing the rates (drop the page cache first for cold figures).
    #[arg(long, requires = "dir")]
    scan: bool,
    /// With --scan: verify every block's checksum while opening (`verify_on_open`).
    #[arg(long, requires = "scan")]
    verify: bool,
    /// Zero-fill new segments in the background.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    zero_fill: bool,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let temp;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("tickship-walbench-")
                .tempdir_in("/var/tmp")?;
            temp.path().to_path_buf()
        }
    };
    if args.scan {
        return scan(&dir, args.engine, args.verify);
    }
    let sync = match args.sync.as_str() {
        "group" => SyncPolicy::EveryGroup,
        "never" => SyncPolicy::Never,
        other => anyhow::bail!("unknown sync policy {other}; expected group or never"),
    };
    let options = WalOptions {
        segment_bytes: args.segment_mib << 20,
        io_engine: args.engine,
        sync,
        zero_fill: args.zero_fill,
        group_bytes_max: args.group_kib << 10,
        retention_interval: None,
        ..WalOptions::default()
    };
    let wal = Arc::new(Wal::open(&dir, options).context("open wal")?);
    let mut generator = DocGen::new(1);
    let pool: Arc<Vec<(String, String)>> = Arc::new(
        (0..args.pool as u64)
            .map(|i| {
                let key = DocGen::key("d", i);
                let doc = generator.doc(&key, i);
                (key, doc)
            })
            .collect(),
    );
    let mean_doc = pool.iter().map(|(_, d)| d.len()).sum::<usize>() / pool.len();
    println!(
        "engine={} appenders={} records/append={} doc={}B seconds={} segment={}MiB sync={} zero_fill={}",
        wal.engine_name(),
        args.appenders,
        args.records_per_append,
        mean_doc,
        args.seconds,
        args.segment_mib,
        args.sync,
        args.zero_fill
    );
    let stop = Arc::new(AtomicBool::new(false));
    let per_thread_max = args.max_records / args.appenders as u64;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let threads: Vec<_> = (0..args.appenders)
        .map(|thread| {
            let (wal, pool, stop) = (wal.clone(), pool.clone(), stop.clone());
            let per_append = args.records_per_append;
            std::thread::spawn(
                move || -> Result<(u64, u64, Histogram<u64>, Histogram<u64>)> {
                    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                    let mut durable = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                    let (mut records, mut bytes) = (0u64, 0u64);
                    let mut next = thread * 7919;
                    while !stop.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                        && records < per_thread_max
                    {
                        let batch: Vec<Record<'_>> = (0..per_append)
                            .map(|i| {
                                let (key, doc) = &pool[(next + i) % pool.len()];
                                Record::put("_system", "docs", key, doc.as_bytes())
                            })
                            .collect();
                        next += per_append;
                        let t = Instant::now();
                        let prepared = tickship_storage::wal::block::prepare(&batch)?;
                        let submitted = Instant::now();
                        wal.submit(prepared)?.wait()?;
                        latency.record(t.elapsed().as_micros() as u64)?;
                        durable.record(submitted.elapsed().as_micros() as u64)?;
                        records += per_append as u64;
                        bytes += batch.iter().map(|r| r.data.len() as u64).sum::<u64>();
                    }
                    Ok((records, bytes, latency, durable))
                },
            )
        })
        .collect();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut durable = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut records, mut bytes) = (0u64, 0u64);
    for thread in threads {
        let (r, b, h, d) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("appender panicked"))??;
        records += r;
        bytes += b;
        latency.add(h)?;
        durable.add(d)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let c = wal.counters();
    let syncs = c.syncs.load(Ordering::Relaxed).max(1);
    let mean_sync_us = c.sync_nanos.load(Ordering::Relaxed) as f64 / syncs as f64 / 1000.0;
    let groups = c.groups.load(Ordering::Relaxed).max(1);
    println!(
        "records={records} raw={:.1}MB elapsed={elapsed:.2}s => {:.1} MB/s raw, {:.0} records/s",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / elapsed,
        records as f64 / elapsed
    );
    println!(
        "blocks={} groups={groups} ({:.1} appends/group) syncs={} mean_sync={mean_sync_us:.0}us write={:.1}MB ratio={:.2}",
        c.blocks.load(Ordering::Relaxed),
        c.blocks.load(Ordering::Relaxed) as f64 / groups as f64,
        c.syncs.load(Ordering::Relaxed),
        c.write_bytes.load(Ordering::Relaxed) as f64 / 1e6,
        c.raw_bytes.load(Ordering::Relaxed) as f64 / c.block_bytes.load(Ordering::Relaxed).max(1) as f64,
    );
    println!(
        "writer: idle {:.0}% io {:.0}% other {:.0}% of {elapsed:.2}s",
        c.idle_nanos.load(Ordering::Relaxed) as f64 / 1e7 / elapsed,
        c.io_nanos.load(Ordering::Relaxed) as f64 / 1e7 / elapsed,
        100.0
            - (c.idle_nanos.load(Ordering::Relaxed) + c.io_nanos.load(Ordering::Relaxed)) as f64
                / 1e7
                / elapsed,
    );
    let (append, fsync) = (&c.append_latency, &c.sync_latency);
    println!(
        "inside the WAL: submit to durable p50={:?} p99={:?} p999={:?}; fdatasync p50={:?} p99={:?} mean={:?}; p99/mean fsync = {:.1}",
        append.quantile(0.5),
        append.quantile(0.99),
        append.quantile(0.999),
        fsync.quantile(0.5),
        fsync.quantile(0.99),
        fsync.mean(),
        append.quantile(0.99).as_secs_f64() / fsync.mean().as_secs_f64().max(1e-9),
    );
    for (what, h) in [
        ("appender thread: encode+lz4+submit to durable", &latency),
        ("appender thread: submit to durable", &durable),
    ] {
        println!(
            "{what}: p50={}us p99={}us p999={}us max={}us (p99 = {:.1} mean fsyncs)",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            h.value_at_quantile(0.99) as f64 / mean_sync_us
        );
    }
    Ok(())
}

/// Opens the WAL in `dir` (verifying every block if `verify`), then reads every block from tick 0.
fn scan(dir: &std::path::Path, engine: IoEngine, verify: bool) -> Result<()> {
    let options = WalOptions {
        io_engine: engine,
        retention_interval: None,
        verify_on_open: verify,
        ..WalOptions::default()
    };
    let started = Instant::now();
    let wal = Wal::open(dir, options).context("open wal")?;
    let opened = started.elapsed().as_secs_f64();
    let report = wal.recovery_report();
    println!(
        "open (blocks verified: {} blocks, {:.1} MB) in {opened:.3}s => {:.0} MB/s verified",
        report.blocks_verified,
        report.bytes_verified as f64 / 1e6,
        report.bytes_verified as f64 / 1e6 / opened
    );
    let started = Instant::now();
    let mut reader = wal
        .reader_after(tickship_storage::Tick::ZERO)
        .context("reader")?;
    let (mut blocks, mut bytes) = (0u64, 0u64);
    while let Some(block) = reader.next_block().context("read")? {
        blocks += 1;
        bytes += block.bytes().len() as u64;
    }
    let read = started.elapsed().as_secs_f64();
    println!(
        "read from tick 0: {blocks} blocks, {:.1} MB in {read:.3}s => {:.0} MB/s",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / read
    );
    Ok(())
}
