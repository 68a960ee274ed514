//! Claim: every append the WAL acknowledged survives `kill -9` of the process at an arbitrary
//! moment, with its content and ticks, and the log goes on after each restart.
//!
//! The test re-executes its own binary as the appending child (selected by an environment
//! variable): the child appends from several threads and prints each acknowledgement; the parent
//! kills it after a varying number of them, reopens the WAL and checks every acknowledged block.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{engines, options, read_all};
use tickship_storage::wal::{IoEngine, Record};
use tickship_storage::{Tick, Wal};

const CHILD_DIR: &str = "TICKSHIP_TEST_CHILD_DIR";
const CHILD_ENGINE: &str = "TICKSHIP_TEST_CHILD_ENGINE";
const CHILD_ROUND: &str = "TICKSHIP_TEST_CHILD_ROUND";

/// The appending child. Does nothing unless started by `acknowledged_appends_survive`.
#[test]
fn child_appender() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let engine: IoEngine = std::env::var(CHILD_ENGINE)
        .expect("engine")
        .parse()
        .expect("engine name");
    let round: u32 = std::env::var(CHILD_ROUND)
        .expect("round")
        .parse()
        .expect("round number");
    let wal = Arc::new(Wal::open(&dir, options(engine)).expect("child: open"));
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..4u32)
        .map(|thread| {
            let (wal, stdout) = (wal.clone(), stdout.clone());
            std::thread::spawn(move || {
                // Bounded: the parent kills the child long before this ends.
                for sequence in 0..100_000u64 {
                    let writer = round * 100 + thread;
                    let count = 1 + (sequence % 4) as usize;
                    let docs: Vec<Vec<u8>> = (0..count)
                        .map(|i| common::document(writer, sequence * 4 + i as u64, 400))
                        .collect();
                    let records: Vec<Record<'_>> = docs
                        .iter()
                        .map(|doc| Record::put("_system", "c", "k", doc))
                        .collect();
                    let ticks = wal.append(&records).expect("child: append");
                    let mut out = stdout.lock().expect("stdout");
                    let said = writeln!(
                        out,
                        "ACK {} {} {writer} {sequence}",
                        ticks.first, ticks.last
                    )
                    .and_then(|()| out.flush());
                    // The parent stopped reading (it is about to kill this process): nothing
                    // more can be acknowledged, so stop appending.
                    if said.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("child thread");
    }
}

#[test]
fn acknowledged_appends_survive() {
    for engine in engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Every acknowledged block: first tick -> (last tick, writer, sequence).
        let mut acknowledged: BTreeMap<u64, (u64, u32, u64)> = BTreeMap::new();
        for round in 0..6u32 {
            let mut child = Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "--exact",
                    "child_appender",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CHILD_DIR, dir.path())
                .env(CHILD_ENGINE, engine.to_string())
                .env(CHILD_ROUND, round.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn child");
            let stdout = child.stdout.take().expect("child stdout");
            let kill_after = 50 + 97 * round as usize;
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut seen = 0;
            for line in BufReader::new(stdout).lines() {
                let line = line.expect("child output");
                let Some(rest) = line.strip_prefix("ACK ") else {
                    continue;
                };
                let fields: Vec<u64> = rest
                    .split(' ')
                    .map(|f| f.parse().expect("number"))
                    .collect();
                acknowledged.insert(fields[0], (fields[1], fields[2] as u32, fields[3]));
                seen += 1;
                if seen >= kill_after || Instant::now() > deadline {
                    break;
                }
            }
            child.kill().expect("kill -9");
            child.wait().expect("reap child");
            assert!(
                seen >= kill_after,
                "{engine} round {round}: child stopped early after {seen} acks"
            );

            let wal = Wal::open(dir.path(), options(engine)).expect("reopen after kill -9");
            let records: BTreeMap<u64, Vec<u8>> = read_all(&wal, Tick::ZERO)
                .into_iter()
                .map(|r| (r.tick.get(), r.data))
                .collect();
            for (&first, &(last, writer, sequence)) in &acknowledged {
                for (i, tick) in (first..=last).enumerate() {
                    let expected = common::document(writer, sequence * 4 + i as u64, 400);
                    assert_eq!(
                        records.get(&tick),
                        Some(&expected),
                        "{engine} round {round}: tick {tick}"
                    );
                }
            }
            let max_acked = acknowledged.values().map(|v| v.0).max().expect("acks");
            assert!(wal.last_tick().get() >= max_acked);
            let ticks: Vec<u64> = records.keys().copied().collect();
            assert_eq!(
                ticks,
                (1..=wal.last_tick().get()).collect::<Vec<_>>(),
                "{engine}: no holes"
            );
        }
    }
}
