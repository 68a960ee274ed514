//! Tick lookups: the in-memory index of an open segment and the on-disk index of a sealed one
//! (1M blocks each), and positioning a reader at a random tick in a WAL of 64 segments.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tickship_storage::wal::tick_index::{SealedIndex, TickIndex};
use tickship_storage::wal::{IoEngine, SyncPolicy};
use tickship_storage::{Tick, Wal, WalOptions};

fn lookups(c: &mut Criterion) {
    let blocks = 1_000_000u64;
    let mut index = TickIndex::new();
    let mut sealed = Vec::with_capacity(blocks as usize * 16);
    for i in 0..blocks {
        let (tick, offset) = (1 + i * 100, 64 + i * 4096);
        index.push(Tick::new(tick), offset);
        sealed.extend_from_slice(&tick.to_le_bytes());
        sealed.extend_from_slice(&offset.to_le_bytes());
    }
    let sealed = SealedIndex::new(&sealed);
    println!(
        "tick index: {blocks} blocks, one every 100 ticks, random probes; sealed index {} bytes",
        blocks * 16
    );
    let mut group = c.benchmark_group("tick_index_1m_blocks");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut probe = 0x1234_5678u64;
    let mut next_probe = move || {
        probe = probe
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        Tick::new(probe % (blocks * 100))
    };
    group.bench_function("open_segment_in_memory", |b| {
        b.iter(|| black_box(index.floor(next_probe())))
    });
    group.bench_function("sealed_segment_on_disk_format", |b| {
        b.iter(|| black_box(sealed.floor(next_probe())))
    });
    group.finish();

    let pool = common::documents(2_000);
    let dir = common::bench_dir("lookup");
    let options = WalOptions {
        io_engine: IoEngine::Sync,
        sync: SyncPolicy::Never,
        segment_bytes: 1 << 20,
        retention_interval: None,
        ..WalOptions::default()
    };
    let wal = Wal::open(dir.path(), options).expect("open");
    let mut start = 0;
    while wal.tick_ranges().len() < 64 {
        wal.append(&common::records(&pool, start, 10))
            .expect("append");
        start += 10;
    }
    let last = wal.last_tick().get();
    println!(
        "reader: WAL of {} segments of 1 MiB, blocks of 10 documents of ~1 KB, ticks 1..={last}, \
         positioned at a random tick then one block read",
        wal.tick_ranges().len()
    );
    let mut group = c.benchmark_group("reader_after");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("random_tick_in_64_segments", |b| {
        let mut probe = 7u64;
        b.iter(|| {
            probe = probe
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let mut reader = wal.reader_after(Tick::new(probe % last)).expect("reader");
            black_box(reader.next_block().expect("read"))
        })
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
