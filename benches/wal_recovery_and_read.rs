//! Recovery and reading of a 1 GiB WAL (16 segments of 64 MiB, ~1 KB JSON-like records, 100 per
//! block): opening it with every block's CRC verified (`verify_on_open`, the scan rate), opening
//! it by default (sealed segments trusted, the open one scanned), and reading all its blocks
//! from tick 0 (CRC verified, no decompression). Throughput is WAL bytes.

mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tickship_storage::wal::{IoEngine, SyncPolicy};
use tickship_storage::{Tick, Wal, WalOptions};

const WAL_BYTES: u64 = 1 << 30;
/// Under `cargo test`: enough for two segments and a partial one.
const WAL_BYTES_UNDER_TEST: u64 = 160 << 20;

fn options() -> WalOptions {
    WalOptions {
        io_engine: IoEngine::Sync,
        retention_interval: None,
        ..WalOptions::default()
    }
}

fn recovery_and_read(c: &mut Criterion) {
    let pool = common::documents(20_000);
    let dir = common::bench_dir("recovery");
    {
        let fill = WalOptions {
            sync: SyncPolicy::Never,
            ..options()
        };
        let wal = Wal::open(dir.path(), fill).expect("open");
        let mut start = 0;
        let target = if common::under_test() {
            WAL_BYTES_UNDER_TEST
        } else {
            WAL_BYTES
        };
        while common::dir_bytes(dir.path()) < target {
            for _ in 0..100 {
                wal.append(&common::records(&pool, start, 100))
                    .expect("append");
                start += 100;
            }
        }
        wal.close().expect("close");
    }
    let bytes = common::dir_bytes(dir.path());
    println!(
        "    WAL of {} MiB in {} files",
        bytes >> 20,
        std::fs::read_dir(dir.path()).expect("dir").count()
    );

    let mut group = c.benchmark_group("wal_1gib");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("open_verify_every_block", |b| {
        b.iter(|| {
            let wal = Wal::open(
                dir.path(),
                WalOptions {
                    verify_on_open: true,
                    ..options()
                },
            )
            .expect("open");
            assert!(wal.recovery_report().bytes_verified > bytes / 2);
        })
    });
    group.bench_function("open_default", |b| {
        b.iter(|| Wal::open(dir.path(), options()).expect("open"))
    });
    let wal = Wal::open(dir.path(), options()).expect("open");
    group.bench_function("read_all_blocks_from_tick_0", |b| {
        b.iter(|| {
            let mut reader = wal.reader_after(Tick::ZERO).expect("reader");
            let mut read = 0u64;
            while let Some(block) = reader.next_block().expect("read") {
                read += block.bytes().len() as u64;
            }
            // `bytes` counts the open segment's preallocated tail too.
            assert!(read > bytes / 2);
            read
        })
    });
    group.finish();
}

criterion_group!(benches, recovery_and_read);
criterion_main!(benches);
