//! The keys the leader's log says changed after a tick, per collection: what an incremental sync
//! fetches instead of comparing key ranges when the follower holds an earlier state of the
//! leader's data (restored from a dump, or a follower that fell behind). The follower checks the
//! result against the collection's digest, so a log that does not tell everything (a restore on
//! the leader, retention) costs time, never correctness.

use std::collections::{BTreeMap, BTreeSet};

use std::collections::{HashMap, HashSet};
use tickship_storage::wal::{RecordType, Wal};
use tickship_storage::Tick;

/// What one read of the log found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChangedKeys {
    /// The log was read after this tick: the one asked for, or a later one if the log no longer
    /// holds every tick after it.
    pub from: Tick,
    /// Read through this tick.
    pub through: Tick,
    /// Whether ticks up to the end asked for remain (ask again from `through`).
    pub more: bool,
    /// The keys of documents put or removed, per collection id, each once per answer.
    pub keys: BTreeMap<u64, Vec<String>>,
    /// Collections truncated or dropped in the range: their keys are not all named.
    pub emptied: BTreeSet<u64>,
    /// Document records read.
    pub records: u64,
}

/// Reads the log after `from` through `until`, whole blocks at a time, until about `max_keys`
/// keys are named. Retention deleting what it was about to read makes it begin later (three
/// times at most), as if the log had not held it.
pub fn changed_keys(
    wal: &Wal,
    from: Tick,
    until: Tick,
    max_keys: usize,
) -> tickship_storage::Result<ChangedKeys> {
    let mut attempts = 0;
    loop {
        match read(wal, from, until, max_keys) {
            Err(tickship_storage::Error::TickCompacted(_)) if attempts < 2 => attempts += 1,
            other => return other,
        }
    }
}

fn read(
    wal: &Wal,
    from: Tick,
    until: Tick,
    max_keys: usize,
) -> tickship_storage::Result<ChangedKeys> {
    let mut out = ChangedKeys {
        from: from.max(wal.complete_after()),
        ..ChangedKeys::default()
    };
    out.through = out.from;
    if out.from >= until {
        return Ok(out);
    }
    let mut reader = wal.reader_after(out.from)?;
    let mut keys: HashMap<u64, HashSet<String>> = HashMap::new();
    let mut named = 0usize;
    let mut scratch = Vec::new();
    let done = |out: &mut ChangedKeys, keys: HashMap<u64, HashSet<String>>| {
        out.keys = keys
            .into_iter()
            .map(|(id, set)| (id, set.into_iter().collect()))
            .collect();
    };
    while let Some(block) = reader.next_block()? {
        for item in block.records(&mut scratch)? {
            let (tick, record) = item.map_err(|reason| {
                tickship_storage::Error::InvalidRecord(format!("damaged WAL record: {reason}"))
            })?;
            if tick <= out.from || tick > until {
                continue;
            }
            let Ok(id) = record.collection.parse::<u64>() else {
                continue;
            };
            match record.kind {
                RecordType::DocumentPut
                | RecordType::DocumentInsert
                | RecordType::DocumentRemove => {
                    out.records += 1;
                    let set = keys.entry(id).or_default();
                    if !set.contains(record.key) {
                        set.insert(record.key.to_owned());
                        named += 1;
                    }
                }
                RecordType::CollectionTruncate | RecordType::CollectionDrop => {
                    out.emptied.insert(id);
                }
                _ => {}
            }
        }
        out.through = block.ticks().last.min(until);
        if out.through >= until {
            break;
        }
        if named >= max_keys {
            out.more = true;
            break;
        }
    }
    if !out.more {
        // Read to `until`, or to the last visible block before it: nothing more is there.
        out.through = until;
    }
    done(&mut out, keys);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in a test, a panic is the failure report
mod tests {
    use super::*;
    use tickship_storage::wal::Record;
    use tickship_storage::WalOptions;

    fn record<'a>(kind: RecordType, collection: &'a str, key: &'a str) -> Record<'a> {
        Record {
            kind,
            tid: 0,
            db: "_system",
            collection,
            key,
            data: if kind == RecordType::DocumentRemove {
                b""
            } else {
                b"{}"
            },
        }
    }

    #[test]
    fn names_each_changed_key_once_per_answer_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let before = wal
            .append(&[record(RecordType::DocumentPut, "7", "old")])
            .unwrap()
            .last;
        wal.append(&[
            record(RecordType::DocumentPut, "7", "a"),
            record(RecordType::DocumentPut, "7", "b"),
        ])
        .unwrap();
        wal.append(&[record(RecordType::DocumentRemove, "7", "a")])
            .unwrap();
        wal.append(&[record(RecordType::DocumentInsert, "8", "a")])
            .unwrap();
        let truncated = wal
            .append(&[record(RecordType::CollectionTruncate, "9", "")])
            .unwrap()
            .last;
        wal.append(&[record(RecordType::DocumentPut, "7", "late")])
            .unwrap();

        let all = changed_keys(&wal, before, truncated, 1000).unwrap();
        assert_eq!(
            (all.from, all.through, all.more),
            (before, truncated, false)
        );
        let mut seven = all.keys[&7].clone();
        seven.sort();
        assert_eq!(
            seven,
            ["a", "b"],
            "once each, nothing before `from` or after `until`"
        );
        assert_eq!(all.keys[&8], ["a"]);
        assert_eq!(all.emptied, [9].into());
        assert_eq!(all.records, 4);

        // Pages end with a block once enough keys are named; the next goes on from `through`.
        let first = changed_keys(&wal, before, truncated, 1).unwrap();
        assert!(first.more);
        assert_eq!(
            first.through,
            before.checked_add(2).unwrap(),
            "the block of a and b"
        );
        let second = changed_keys(&wal, first.through, truncated, 1).unwrap();
        assert_eq!(second.keys[&7], ["a"]);
        assert!(second.more);

        // Nothing to read past `until`.
        let none = changed_keys(&wal, truncated, truncated, 10).unwrap();
        assert!(none.keys.is_empty() && !none.more);
    }
}
