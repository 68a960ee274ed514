//! Shared by the benchmarks: the ~1 KB JSON-like documents, and where benchmark WALs live.
#![allow(dead_code)]

use std::path::PathBuf;

use tickship_storage::wal::{IoEngine, Record};
use tickship_storage::{Error, Wal, WalOptions};
use tickship_tools::docgen::DocGen;

/// `count` (key, document) pairs of ~1 KB, shaped like the peer benchmarks' documents.
pub fn documents(count: usize) -> Vec<(String, String)> {
    let mut generator = DocGen::new(1);
    (0..count as u64)
        .map(|i| {
            let key = DocGen::key("d", i);
            let doc = generator.doc(&key, i);
            (key, doc)
        })
        .collect()
}

pub fn records(pool: &[(String, String)], start: usize, count: usize) -> Vec<Record<'_>> {
    (0..count)
        .map(|i| {
            let (key, doc) = &pool[(start + i) % pool.len()];
            Record::put("_system", "docs", key, doc.as_bytes())
        })
        .collect()
}

/// Whether the binary runs under `cargo test` (criterion's test mode: each benchmark once, to
/// show it still works) rather than `cargo bench`, which passes `--bench`. Benchmarks with a big
/// setup shrink it then, so that the test suite stays fast.
pub fn under_test() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// A fresh directory on the real disk (not tmpfs).
pub fn bench_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("tickship-bench-{name}-"))
        .tempdir_in("/var/tmp")
        .expect("bench dir")
}

/// The engines this machine runs: the portable one, and io_uring unless the kernel refuses it.
pub fn engines() -> Vec<IoEngine> {
    let dir = bench_dir("probe");
    let options = WalOptions {
        io_engine: IoEngine::Uring,
        retention_interval: None,
        ..WalOptions::default()
    };
    match Wal::open(dir.path(), options) {
        Ok(_) => vec![IoEngine::Sync, IoEngine::Uring],
        Err(Error::Config(reason)) => {
            eprintln!("io_uring benchmarks skipped: {reason}");
            vec![IoEngine::Sync]
        }
        Err(e) => panic!("open: {e}"),
    }
}

pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

pub fn path_of(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().to_path_buf()
}
