//! The store's memtables and level-0 triggers follow a follower's state (`DocStore::set_tailing`)
//! and the store's mode (documents kept in the WAL or in the store), as the public API and
//! RocksDB's OPTIONS file show them.

use std::path::Path;

use tickship_storage::docstore::{
    DocStore, Level0Triggers, StoreOptions, TAILING_MEMTABLE_BYTES,
    TAILING_MEMTABLE_BYTES_KEYS_ONLY, TAILING_WRITE_BUFFERS_KEYS_ONLY,
};

/// RocksDB's `max_write_buffer_number` of the documents' column family, as in force.
fn write_buffers_in_force(store: &DocStore) -> String {
    option_in_force(store, "docs", "max_write_buffer_number")
}

/// Option `name` of column family `family` in the store's latest OPTIONS file.
fn option_in_force(store: &DocStore, family: &str, name: &str) -> String {
    let options = std::fs::read_dir(store.path())
        .expect("list the store")
        .filter_map(|entry| {
            entry
                .ok()
                .map(|e| e.file_name().to_string_lossy().into_owned())
        })
        .filter(|name| name.starts_with("OPTIONS-"))
        .max_by_key(|name| name[8..].parse::<u64>().unwrap_or(0))
        .expect("an OPTIONS file");
    let text = std::fs::read_to_string(store.path().join(options)).expect("read OPTIONS");
    let section = text
        .split("[CFOptions \"")
        .find(|section| section.starts_with(&format!("{family}\"")))
        .expect("the column family's section");
    let prefix = format!("{name}=");
    section
        .lines()
        .find_map(|line| line.trim().strip_prefix(prefix.as_str()))
        .expect("the option")
        .to_owned()
}

/// A store at `path` with the default options, documents kept in the WAL or in the store.
fn open_in_mode(path: &Path, documents_in_wal: bool) -> DocStore {
    let options = StoreOptions {
        documents_in_wal,
        ..StoreOptions::default()
    };
    DocStore::open_with(path, &options).expect("open")
}

// Goal: a store keeping its documents in the WAL holds at most two document memtables while
// tailing (a follower far behind does not pile up four), and the configured number again
// when it stops tailing; a store of documents keeps the configured number throughout.
#[test]
fn tailing_keys_only_holds_two_memtables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in_mode(&dir.path().join("in-wal"), true);
    assert_eq!(write_buffers_in_force(&store), "4");
    assert!(store.set_tailing(true).expect("tailing"));
    assert_eq!(
        write_buffers_in_force(&store),
        TAILING_WRITE_BUFFERS_KEYS_ONLY.to_string()
    );
    assert!(store.set_tailing(false).expect("leading"));
    assert_eq!(write_buffers_in_force(&store), "4");
    let store = open_in_mode(&dir.path().join("in-store"), false);
    assert!(store.set_tailing(true).expect("tailing"));
    assert_eq!(write_buffers_in_force(&store), "4");
}

// Goal: without a size of its own, the tailing memtable follows the store's mode
// (`TAILING_MEMTABLE_BYTES` holding documents, `TAILING_MEMTABLE_BYTES_KEYS_ONLY` holding keys
// only); a store that kept documents in the WAL keeps the small ones when reopened without
// asking (the mode is sticky).
#[test]
fn tailing_memtables_default_by_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tailing = |path: &str, documents_in_wal: bool| {
        let store = open_in_mode(&dir.path().join(path), documents_in_wal);
        store.set_tailing(true).expect("tailing");
        store.write_buffer_bytes()
    };
    assert_eq!(tailing("in-store", false), TAILING_MEMTABLE_BYTES as u64);
    assert_eq!(
        tailing("in-wal", true),
        TAILING_MEMTABLE_BYTES_KEYS_ONLY as u64
    );
    assert_eq!(
        tailing("in-wal", false),
        TAILING_MEMTABLE_BYTES_KEYS_ONLY as u64
    );
}

#[test]
fn level0_triggers_scale_with_the_memtables() {
    let configured = Level0Triggers {
        compaction: 8,
        slowdown: 40,
        stop: 64,
    };
    assert_eq!(configured.scaled(1), configured);
    assert_eq!(
        configured.scaled(4),
        Level0Triggers {
            compaction: 32,
            slowdown: 64,
            stop: 96
        }
    );
    // Configured triggers stay as they are unscaled, and never pass RocksDB's range.
    let odd = Level0Triggers {
        compaction: 0,
        slowdown: 100_000,
        stop: 1,
    };
    assert_eq!(
        odd.scaled(1),
        Level0Triggers {
            compaction: 1,
            slowdown: 1 << 16,
            stop: 1
        }
    );
    assert_eq!(configured.scaled(u32::MAX).stop, 1 << 16);
}

// Goal: memtables of keys only start a compaction at no more than half the configured
// slowdown and stop writes at twice that, whatever the scale, so that a follower catching
// up waits for compactions of at most that many files; unscaled they are as configured.
#[test]
fn level0_triggers_for_keys_only_bound_level0() {
    let configured = Level0Triggers {
        compaction: 8,
        slowdown: 40,
        stop: 64,
    };
    let bounded = Level0Triggers {
        compaction: 20,
        slowdown: 30,
        stop: 40,
    };
    assert_eq!(configured.scaled_keys_only(32), bounded);
    assert_eq!(configured.scaled_keys_only(u32::MAX), bounded);
    assert_eq!(configured.scaled_keys_only(1), configured);
    assert_eq!(
        configured.scaled_keys_only(2),
        Level0Triggers {
            compaction: 16,
            slowdown: 24,
            stop: 32
        }
    );
    // Always in order, so that a compaction starts before writes wait for one.
    for slowdown in [0, 1, 2, 3, 7, 1 << 20] {
        let t = Level0Triggers {
            compaction: 1,
            slowdown,
            stop: 1,
        }
        .scaled_keys_only(64);
        assert!(t.compaction < t.slowdown && t.slowdown < t.stop, "{t:?}");
    }
}

// Goal: a store keeping its documents in the WAL bounds level 0 while tailing
// (`scaled_keys_only`); one keeping them in the store scales its triggers as before.
#[test]
fn keys_only_store_bounds_level0_while_tailing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let triggers = |path: &str, documents_in_wal: bool| {
        let store = open_in_mode(&dir.path().join(path), documents_in_wal);
        (
            store.level0_triggers_for(true),
            store.level0_triggers_for(false),
        )
    };
    let configured = StoreOptions::default();
    let configured = Level0Triggers {
        compaction: configured.level0_compaction_trigger,
        slowdown: configured.level0_slowdown_trigger,
        stop: configured.level0_stop_trigger,
    };
    let (tailing, leading) = triggers("in-wal", true);
    assert_eq!(tailing, configured.scaled_keys_only(32));
    assert_eq!(tailing.stop, 40);
    assert_eq!(leading, configured);
    let (tailing, leading) = triggers("in-store", false);
    assert_eq!(tailing, configured.scaled(4));
    assert_eq!(leading, configured);
}
