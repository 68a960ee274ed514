//! The hot paths between a leader's WAL and a follower's store not covered elsewhere: validating
//! a received block (`Block::parse`: header and checksum), decoding its records (decompression
//! included), the replication stream's frame codec (a `Blocks` frame encoded, then cut into
//! datagram-sized pieces and decoded block by block as a follower does), and applying blocks to
//! a document store on disk. Each prints its configuration.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tickship_net::frame::{self, Decoder, Kind, Piece};
use tickship_storage::docstore::{CollectionInfo, DocStore, KeyOptions};
use tickship_storage::wal::block::prepare;
use tickship_storage::wal::{Block, Record, RecordType};
use tickship_storage::Tick;

/// Documents per block: what a leader's group commit holds under a batch load.
const PER_BLOCK: usize = 64;

/// A block of `PER_BLOCK` puts of new keys (numbered by tick) with documents of the pool.
fn block_of(pool: &[(String, String)], start: usize, tick: u64) -> Block {
    let keys: Vec<String> = (0..PER_BLOCK as u64)
        .map(|i| format!("k{:012}", tick + i))
        .collect();
    let records: Vec<Record<'_>> = (0..PER_BLOCK)
        .map(|i| {
            let (key, doc) = (&keys[i], &pool[(start + i) % pool.len()].1);
            Record {
                kind: RecordType::DocumentPut,
                tid: 0,
                db: "_system",
                collection: "1001",
                key,
                data: doc.as_bytes(),
            }
        })
        .collect();
    prepare(&records)
        .expect("prepare")
        .to_block(Tick::new(tick))
}

fn decode(c: &mut Criterion) {
    let pool = common::documents(4096);
    let block = block_of(&pool, 0, 1);
    let bytes = block.bytes().clone();
    println!(
        "block: {PER_BLOCK} documents of ~1 KB, {} bytes raw, {} bytes stored ({:?})",
        block.header().raw_bytes,
        bytes.len(),
        block.header().compression
    );
    let mut group = c.benchmark_group("block");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        // The checksum covers the stored (compressed) bytes; decoding yields the raw ones.
        .throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("parse_header_and_checksum", |b| {
        b.iter(|| black_box(Block::parse(bytes.clone()).expect("parse")))
    });
    group.throughput(Throughput::Bytes(block.header().raw_bytes as u64));
    let mut scratch = Vec::new();
    group.bench_function("decode_all_records", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for record in block.records(&mut scratch).expect("records") {
                n += record.expect("record").1.data.len();
            }
            black_box(n)
        })
    });
    group.finish();
}

fn frames(c: &mut Criterion) {
    let pool = common::documents(4096);
    let blocks: Vec<Block> = (0..16)
        .map(|i| block_of(&pool, i * PER_BLOCK, 1 + (i * PER_BLOCK) as u64))
        .collect();
    let mut payload = Vec::new();
    payload.extend_from_slice(&(16 * PER_BLOCK as u64).to_le_bytes());
    for b in &blocks {
        payload.extend_from_slice(&(b.bytes().len() as u32).to_le_bytes());
        payload.extend_from_slice(b.bytes());
    }
    let datagram = 1200;
    println!(
        "frame: one Blocks frame of 16 blocks, {} bytes, fed to the decoder {datagram} bytes at a time",
        payload.len()
    );
    let mut group = c.benchmark_group("frame");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("encode_blocks_frame", |b| {
        b.iter(|| black_box(frame::encode(Kind::Blocks, &payload)))
    });
    let encoded = frame::encode(Kind::Blocks, &payload);
    group.bench_function("decode_streaming_blocks", |b| {
        b.iter(|| {
            let mut decoder = Decoder::new(64 << 20);
            decoder.streaming_blocks();
            let mut got = 0usize;
            for piece in encoded.chunks(datagram) {
                decoder.push(piece);
                while let Some(p) = decoder.next_piece().expect("decode") {
                    if let Piece::Block {
                        block: Some(bytes), ..
                    } = p
                    {
                        got += 1;
                        black_box(bytes);
                    }
                }
            }
            assert_eq!(got, 16);
        })
    });
    group.finish();
}

fn apply(c: &mut Criterion) {
    let pool = common::documents(1 << 16);
    let dir = common::bench_dir("apply");
    let store = DocStore::open(dir.path()).expect("open store");
    let definition = serde_json::to_vec(&CollectionInfo {
        id: 1001,
        name: "docs".into(),
        database: "_system".into(),
        kind: 2,
        wait_for_sync: false,
        key_options: KeyOptions::default(),
        is_system: false,
    })
    .expect("json");
    let create = prepare(&[Record {
        kind: RecordType::CollectionCreate,
        tid: 0,
        db: "_system",
        collection: "1001",
        key: "",
        data: &definition,
    }])
    .expect("prepare")
    .to_block(Tick::new(1));
    store.apply(&[create]).expect("create collection");
    println!(
        "apply: blocks of {PER_BLOCK} new documents of ~1 KB, one at a time, to a store on disk \
         ({}), single applier thread",
        dir.path().display()
    );
    let mut next = 2u64;
    let mut group = c.benchmark_group("store");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(20)
        .throughput(Throughput::Elements(PER_BLOCK as u64));
    group.bench_function("apply_block_of_64_puts", |b| {
        b.iter_custom(|iters| {
            // The blocks are made outside the clock; each carries the next ticks.
            let blocks: Vec<Block> = (0..iters)
                .map(|_| {
                    let block = block_of(&pool, next as usize, next);
                    next += PER_BLOCK as u64;
                    block
                })
                .collect();
            let started = Instant::now();
            for block in blocks {
                store.apply(std::slice::from_ref(&block)).expect("apply");
            }
            started.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, decode, frames, apply);
criterion_main!(benches);
