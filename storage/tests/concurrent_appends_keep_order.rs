//! Claim: many threads appending concurrently each get every completion, the ticks handed out
//! are strictly increasing without gaps or overlaps, and the log holds each thread's appends in
//! the order it made them (durable order = completion order per appender).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{engines, options, read_all};
use tickship_storage::wal::Record;
use tickship_storage::{Tick, TickRange, Wal};

const THREADS: u32 = 16;
const APPENDS: u64 = 150;

#[test]
fn concurrent_appenders() {
    for engine in engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Arc::new(Wal::open(dir.path(), options(engine)).expect("open"));
        let handles: Vec<_> = (0..THREADS)
            .map(|writer| {
                let wal = wal.clone();
                std::thread::spawn(move || {
                    let mut ranges = Vec::new();
                    for sequence in 0..APPENDS {
                        // 1 to 3 records per append, so blocks differ in size.
                        let count = 1 + (sequence % 3) as usize;
                        let docs: Vec<Vec<u8>> = (0..count)
                            .map(|i| common::document(writer, sequence * 10 + i as u64, 300))
                            .collect();
                        let key = format!("{writer}:{sequence}");
                        let records: Vec<Record<'_>> = docs
                            .iter()
                            .map(|doc| Record::put("_system", "c", &key, doc))
                            .collect();
                        let ticks = wal.append(&records).expect("append");
                        assert_eq!(ticks.count(), count as u64);
                        ranges.push((sequence, ticks));
                    }
                    ranges
                })
            })
            .collect();
        let mut all: Vec<(u32, u64, TickRange)> = Vec::new();
        for (writer, handle) in handles.into_iter().enumerate() {
            let ranges = handle.join().expect("appender thread");
            assert_eq!(
                ranges.len() as u64,
                APPENDS,
                "{engine}: every append completed"
            );
            for pair in ranges.windows(2) {
                assert!(
                    pair[0].1.last < pair[1].1.first,
                    "{engine}: one appender's ticks increase"
                );
            }
            all.extend(
                ranges
                    .into_iter()
                    .map(|(seq, ticks)| (writer as u32, seq, ticks)),
            );
        }
        // The ranges tile 1..=N exactly.
        all.sort_by_key(|(_, _, ticks)| ticks.first);
        let mut next = 1u64;
        for (_, _, ticks) in &all {
            assert_eq!(ticks.first.get(), next, "{engine}: no gap or overlap");
            next = ticks.last.get() + 1;
        }
        assert_eq!(wal.last_tick(), Tick::new(next - 1));
        // The log holds each append's records at the ticks its completion reported.
        let by_tick: BTreeMap<u64, String> = read_all(&wal, Tick::ZERO)
            .into_iter()
            .map(|r| (r.tick.get(), r.key))
            .collect();
        assert_eq!(by_tick.len() as u64, next - 1);
        for (writer, sequence, ticks) in &all {
            for tick in ticks.first.get()..=ticks.last.get() {
                assert_eq!(
                    by_tick[&tick],
                    format!("{writer}:{sequence}"),
                    "{engine}: tick {tick}"
                );
            }
        }
        assert!(
            wal.counters()
                .groups
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
    }
}
