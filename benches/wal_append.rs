//! Append throughput and append-to-durable latency of the WAL: 64 concurrent appenders of ~1 KB
//! JSON-like records, with 1, 100 and 10,000 records per append call, per I/O engine, with the
//! default group commit (one fdatasync per group; lz4 on the appending threads).
//!
//! Criterion reports raw record MB/s; after each configuration a line gives records/s and the
//! WAL's own submit-to-durable and fdatasync latency percentiles (`WalCounters`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tickship_storage::{Wal, WalOptions};

const APPENDERS: usize = 64;

fn append(c: &mut Criterion) {
    let pool = Arc::new(common::documents(20_000));
    let doc_bytes = pool.iter().map(|(_, d)| d.len()).sum::<usize>() / pool.len();
    let mut group = c.benchmark_group("wal_append");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for engine in common::engines() {
        // Appends per appender per iteration: about 64 MB of raw records per iteration in all.
        // Under `cargo test` each shape runs once with far fewer records.
        let shapes: &[(usize, usize)] = if common::under_test() {
            &[(1, 1), (100, 1), (1_000, 1)]
        } else {
            &[(1, 100), (100, 10), (10_000, 1)]
        };
        for &(records_per_call, calls) in shapes {
            let dir = common::bench_dir("append");
            let options = WalOptions {
                io_engine: engine,
                retention_interval: None,
                ..WalOptions::default()
            };
            let wal = Arc::new(Wal::open(dir.path(), options).expect("open"));
            let records_per_iter = (APPENDERS * calls * records_per_call) as u64;
            group.throughput(Throughput::Bytes(records_per_iter * doc_bytes as u64));
            let id = BenchmarkId::new(
                format!("{}/64-appenders", wal.engine_name()),
                format!("{records_per_call}-records-per-call"),
            );
            let mut elapsed_total = Duration::ZERO;
            let mut records_total = 0u64;
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let threads: Vec<_> = (0..APPENDERS)
                            .map(|thread| {
                                let (wal, pool) = (wal.clone(), pool.clone());
                                std::thread::spawn(move || {
                                    for call in 0..calls {
                                        let start = (thread * calls + call) * records_per_call;
                                        wal.append(&common::records(
                                            &pool,
                                            start,
                                            records_per_call,
                                        ))
                                        .expect("append");
                                    }
                                })
                            })
                            .collect();
                        for thread in threads {
                            thread.join().expect("appender");
                        }
                    }
                    let elapsed = started.elapsed();
                    elapsed_total += elapsed;
                    records_total += iters * records_per_iter;
                    elapsed
                })
            });
            let counters = wal.counters();
            println!(
                "    {} {records_per_call} records/call: {:.0} records/s; submit-to-durable p50 {:?} p99 {:?}; fdatasync p50 {:?} p99 {:?} mean {:?}",
                wal.engine_name(),
                records_total as f64 / elapsed_total.as_secs_f64(),
                counters.append_latency.quantile(0.5),
                counters.append_latency.quantile(0.99),
                counters.sync_latency.quantile(0.5),
                counters.sync_latency.quantile(0.99),
                counters.sync_latency.mean(),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
