//! A write request's body as the document API reads it (`tickship::json::parse_body`): the
//! array split into documents, each checked (numbers that fit a double included) and its top
//! level parsed. One body of 1,000 ~1 KB documents of the peer benchmarks' shape
//! (`tickship::docgen`), as `tickship-load` sends them.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tickship_tools::docgen::DocGen;

fn body() -> String {
    let mut generator = DocGen::new(7);
    let docs: Vec<String> = (0..1000)
        .map(|i| generator.doc(&DocGen::key("d", i), i))
        .collect();
    format!("[{}]", docs.join(","))
}

fn parse(c: &mut Criterion) {
    let body = body();
    println!(
        "document_parse: one body of 1,000 documents, {} bytes",
        body.len()
    );
    let mut group = c.benchmark_group("document_parse");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse_body_1000_docs", |b| {
        b.iter(|| {
            let (array, items) =
                tickship::json::parse_body(black_box(body.as_bytes())).expect("a valid body");
            black_box((array, items.len()))
        })
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
