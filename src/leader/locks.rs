//! Per-key locks of the write path: a request locks exactly its keys, in one global order, so
//! writers to different keys never wait on each other.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Exact locks on (collection, key). A writer takes all its keys at once or waits for all of
/// them: no false conflicts between large batches (with striped locks, batches that merely hash
/// to shared stripes wait on each other), and no lock-order cycles.
pub(crate) struct KeyLocks {
    held: Mutex<HashMap<u64, HashSet<Box<str>>>>,
    released: tokio::sync::Notify,
}

/// Holds keys until dropped.
pub(crate) struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    collection: u64,
    keys: Vec<Box<str>>,
}

impl KeyLocks {
    pub(crate) fn new() -> KeyLocks {
        KeyLocks {
            held: Mutex::new(HashMap::new()),
            released: tokio::sync::Notify::new(),
        }
    }

    pub(crate) async fn lock(&self, collection: u64, keys: &[&str]) -> KeyGuard<'_> {
        let mut wanted: Vec<Box<str>> = keys.iter().map(|k| Box::from(*k)).collect();
        wanted.sort_unstable();
        wanted.dedup();
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            // Registered before looking, so a release in between is not missed.
            notified.as_mut().enable();
            {
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                let set = held.entry(collection).or_default();
                if wanted.iter().all(|k| !set.contains(k)) {
                    set.extend(wanted.iter().cloned());
                    return KeyGuard {
                        locks: self,
                        collection,
                        keys: wanted,
                    };
                }
            }
            notified.await;
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = held.get_mut(&self.collection) {
            for key in &self.keys {
                set.remove(key);
            }
            if set.is_empty() {
                held.remove(&self.collection);
            }
        }
        drop(held);
        self.locks.released.notify_waiters();
    }
}
