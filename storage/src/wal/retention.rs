//! Which sealed segments may be deleted, and why the others are kept.
//!
//! A sealed segment holding ticks `first..=last` is deleted only when all of these hold, checked
//! oldest segment first (deletion always removes a prefix of the log, never a hole):
//!
//! 1. the WAL has been open for at least `file_timeout_initial`, so followers of a restarted
//!    leader get time to reconnect before anything goes;
//! 2. the local store no longer needs it for recovery: `last <= store_tick`, the tick up to which
//!    the store has made everything durable itself (until the store reports one, nothing goes);
//! 3. it is older than the newest `historic_count` sealed segments;
//! 4. no unexpired client barrier needs it: `last <= barrier.tick` for every barrier (a client at
//!    tick T reads from T + 1);
//! 5. 2–4 have held for at least `file_timeout` without interruption.
//!
//! `archive_bytes_max` (0 = unlimited) overrides 3–5: while the sealed segments together are
//! larger, the oldest ones are deleted even if clients need them, but never while rule 1 or
//! rule 2 forbids it. Every client whose barrier pointed into a segment deleted that way has lost
//! its position; the plan names it, so the client is told (ArangoDB error 1414) instead of
//! silently missing data.
//!
//! The planner is a pure function of its inputs and the time it is given, so tests drive it with
//! chosen times.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use crate::tick::{SegmentId, Tick};

/// The retention options of the WAL (`--wal.*` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// `--wal.historic-logfiles`: sealed segments always kept, newest first.
    pub historic_count: usize,
    /// `--wal.file-timeout`: how long a segment must have been unneeded before deletion.
    pub file_timeout: Duration,
    /// `--wal.file-timeout-initial`: no deletion this long after the WAL was opened.
    pub file_timeout_initial: Duration,
    /// `--wal.archive-size-limit` in bytes; 0 means unlimited.
    pub archive_bytes_max: u64,
}

impl Default for RetentionPolicy {
    /// ArangoDB's defaults: 10 historic logfiles, 10 s file timeout, 180 s initial timeout,
    /// no archive size limit.
    fn default() -> RetentionPolicy {
        RetentionPolicy {
            historic_count: 10,
            file_timeout: Duration::from_secs(10),
            file_timeout_initial: Duration::from_secs(180),
            archive_bytes_max: 0,
        }
    }
}

/// A client's hold on the log: it will read the ticks after `tick`, until `expires`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Barrier {
    pub tick: Tick,
    pub expires: SystemTime,
}

/// What the planner needs to know of one sealed segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentFacts {
    pub id: SegmentId,
    pub tick_last: Tick,
    pub file_bytes: u64,
}

/// Why the oldest kept segment was kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepReason {
    InitialTimeout,
    NoStoreTick,
    StoreRecovery { store_tick: Tick },
    Historic,
    Barrier { client: String, tick: Tick },
    FileTimeout { unneeded_for: Duration },
}

/// The outcome of one retention pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Segments to delete, oldest first: always a prefix of the sealed segments.
    pub delete: Vec<SegmentId>,
    /// Of `delete`, those deleted only because of the archive size limit.
    pub forced: Vec<SegmentId>,
    /// Clients that lost their position to forced deletion, with their barrier tick.
    pub lost_clients: Vec<(String, Tick)>,
    /// Clients whose barrier expired and was dropped.
    pub expired_clients: Vec<String>,
    /// Why the oldest remaining sealed segment stays, if any remains.
    pub kept: Option<KeepReason>,
}

/// The retention state that persists between passes.
#[derive(Clone, Debug, Default)]
pub struct RetentionState {
    pub barriers: BTreeMap<String, Barrier>,
    pub store_tick: Option<Tick>,
    /// When each segment was first seen unneeded (rules 2–4) in an unbroken run of passes.
    pub unneeded_since: HashMap<SegmentId, SystemTime>,
}

impl RetentionState {
    /// Plans one pass over `sealed` (oldest first) at time `now`, for a WAL opened at `opened`,
    /// and updates the state: drops expired barriers and those of lost clients, and remembers
    /// when segments became unneeded.
    pub fn plan(
        &mut self,
        policy: &RetentionPolicy,
        sealed: &[SegmentFacts],
        opened: SystemTime,
        now: SystemTime,
    ) -> Plan {
        let mut plan = Plan::default();
        let expired: Vec<String> = self
            .barriers
            .iter()
            .filter(|(_, b)| b.expires <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for client in &expired {
            self.barriers.remove(client);
        }
        plan.expired_clients = expired;

        let mut unneeded_since = HashMap::new();
        let initial_over = now
            .duration_since(opened)
            .is_ok_and(|d| d >= policy.file_timeout_initial);
        let historic_from = sealed.len().saturating_sub(policy.historic_count);
        let mut archive_bytes: u64 = sealed.iter().map(|s| s.file_bytes).sum();
        let over_archive =
            |bytes: u64| policy.archive_bytes_max > 0 && bytes > policy.archive_bytes_max;

        // Deletion stops at the first kept segment (deletion removes a prefix); the walk goes on
        // past a segment kept only by its timer, so the timers of the unneeded segments behind
        // it start now too.
        let mut deleting = true;
        for (position, segment) in sealed.iter().enumerate() {
            let hard = if !initial_over {
                Some(KeepReason::InitialTimeout)
            } else {
                match self.store_tick {
                    None => Some(KeepReason::NoStoreTick),
                    Some(store_tick) if segment.tick_last > store_tick => {
                        Some(KeepReason::StoreRecovery { store_tick })
                    }
                    Some(_) => None,
                }
            };
            if deleting && hard.is_none() && over_archive(archive_bytes) {
                plan.delete.push(segment.id);
                plan.forced.push(segment.id);
                archive_bytes -= segment.file_bytes;
                continue;
            }
            let keep = hard.or_else(|| {
                if position >= historic_from {
                    return Some(KeepReason::Historic);
                }
                self.barriers
                    .iter()
                    .find(|(_, b)| segment.tick_last > b.tick)
                    .map(|(client, b)| KeepReason::Barrier {
                        client: client.clone(),
                        tick: b.tick,
                    })
            });
            // Every later segment ends at a higher tick and is newer, so it is kept too.
            if let Some(reason) = keep {
                if deleting {
                    plan.kept = Some(reason);
                }
                break;
            }
            let since = self.unneeded_since.get(&segment.id).copied().unwrap_or(now);
            let unneeded_for = now.duration_since(since).unwrap_or_default();
            if deleting && unneeded_for >= policy.file_timeout {
                plan.delete.push(segment.id);
                continue;
            }
            unneeded_since.insert(segment.id, since);
            if deleting {
                deleting = false;
                plan.kept = Some(KeepReason::FileTimeout { unneeded_for });
            }
        }
        // Segments not found unneeded in this pass lose their timer: it counts an unbroken run.
        self.unneeded_since = unneeded_since;

        if let Some(last_forced) = plan.forced.last() {
            let floor = sealed
                .iter()
                .find(|s| s.id == *last_forced)
                .map(|s| s.tick_last);
            if let Some(floor) = floor {
                let lost: Vec<(String, Tick)> = self
                    .barriers
                    .iter()
                    .filter(|(_, b)| b.tick < floor)
                    .map(|(c, b)| (c.clone(), b.tick))
                    .collect();
                for (client, _) in &lost {
                    self.barriers.remove(client);
                }
                plan.lost_clients = lost;
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn segments(count: u64) -> Vec<SegmentFacts> {
        // Segment i holds ticks 100*i+1 ..= 100*(i+1).
        (0..count)
            .map(|i| SegmentFacts {
                id: SegmentId::new(i),
                tick_last: Tick::new(100 * (i + 1)),
                file_bytes: MB,
            })
            .collect()
    }

    fn policy() -> RetentionPolicy {
        RetentionPolicy {
            historic_count: 2,
            file_timeout: Duration::from_secs(10),
            file_timeout_initial: Duration::from_secs(180),
            archive_bytes_max: 0,
        }
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + seconds)
    }

    fn ids(list: &[SegmentId]) -> Vec<u64> {
        list.iter().map(|id| id.get()).collect()
    }

    // Goal: nothing is deleted during the initial timeout, whatever else holds.
    #[test]
    fn initial_timeout_protects_everything() {
        let mut state = RetentionState {
            store_tick: Some(Tick::new(10_000)),
            ..Default::default()
        };
        let plan = state.plan(&policy(), &segments(6), at(0), at(179));
        assert!(plan.delete.is_empty());
        assert_eq!(plan.kept, Some(KeepReason::InitialTimeout));
        let mut limited = policy();
        limited.archive_bytes_max = MB;
        let plan = state.plan(&limited, &segments(6), at(0), at(179));
        assert!(
            plan.delete.is_empty(),
            "the archive limit waits for the initial timeout too"
        );
    }

    // Goal: segments become deletable only after being unneeded for the file timeout, and the
    // newest `historic_count` sealed segments stay.
    #[test]
    fn file_timeout_then_historic_count() {
        let mut state = RetentionState {
            store_tick: Some(Tick::new(10_000)),
            ..Default::default()
        };
        let plan = state.plan(&policy(), &segments(6), at(0), at(200));
        assert!(plan.delete.is_empty());
        assert!(matches!(plan.kept, Some(KeepReason::FileTimeout { .. })));
        let plan = state.plan(&policy(), &segments(6), at(0), at(209));
        assert!(plan.delete.is_empty());
        let plan = state.plan(&policy(), &segments(6), at(0), at(210));
        assert_eq!(ids(&plan.delete), vec![0, 1, 2, 3]);
        assert_eq!(plan.kept, Some(KeepReason::Historic));
    }

    // Goal: the store's recovery tick is a hard floor, even for the archive limit.
    #[test]
    fn store_tick_is_hard() {
        let mut state = RetentionState::default();
        let mut limited = policy();
        limited.archive_bytes_max = MB;
        let plan = state.plan(&limited, &segments(6), at(0), at(500));
        assert!(plan.delete.is_empty());
        assert_eq!(plan.kept, Some(KeepReason::NoStoreTick));
        state.store_tick = Some(Tick::new(250));
        let plan = state.plan(&limited, &segments(6), at(0), at(500));
        assert_eq!(ids(&plan.delete), vec![0, 1], "segment 2 ends at 300 > 250");
        assert_eq!(
            plan.kept,
            Some(KeepReason::StoreRecovery {
                store_tick: Tick::new(250)
            })
        );
    }

    // Goal: an unexpired barrier keeps the segments holding ticks after it; once it expires,
    // it is dropped and reported, and the file timeout starts counting.
    #[test]
    fn barriers_hold_until_expiry() {
        let mut state = RetentionState {
            store_tick: Some(Tick::new(10_000)),
            ..Default::default()
        };
        state.barriers.insert(
            "f1".into(),
            Barrier {
                tick: Tick::new(200),
                expires: at(300),
            },
        );
        let plan = state.plan(&policy(), &segments(6), at(0), at(200));
        assert!(plan.delete.is_empty());
        let plan = state.plan(&policy(), &segments(6), at(0), at(211));
        assert_eq!(
            ids(&plan.delete),
            vec![0, 1],
            "ticks up to 200 are no longer needed"
        );
        assert_eq!(
            plan.kept,
            Some(KeepReason::Barrier {
                client: "f1".into(),
                tick: Tick::new(200)
            })
        );
        let remaining = &segments(6)[2..];
        let plan = state.plan(&policy(), remaining, at(0), at(300));
        assert_eq!(plan.expired_clients, vec!["f1".to_string()]);
        assert!(
            plan.delete.is_empty(),
            "the timeout starts when the barrier lapses"
        );
        let plan = state.plan(&policy(), remaining, at(0), at(310));
        assert_eq!(ids(&plan.delete), vec![2, 3]);
    }

    // Goal: a barrier exactly at a segment's last tick does not keep that segment.
    #[test]
    fn barrier_at_last_tick_releases_segment() {
        let mut state = RetentionState {
            store_tick: Some(Tick::new(10_000)),
            ..Default::default()
        };
        state.barriers.insert(
            "f1".into(),
            Barrier {
                tick: Tick::new(100),
                expires: at(1000),
            },
        );
        state.plan(&policy(), &segments(6), at(0), at(200));
        let plan = state.plan(&policy(), &segments(6), at(0), at(210));
        assert_eq!(ids(&plan.delete), vec![0]);
    }

    // Goal: the archive limit deletes the oldest segments past barriers, historic count and
    // timeout, and names the clients that lost their position.
    #[test]
    fn archive_limit_overrides_barriers_and_reports_lost_clients() {
        let mut state = RetentionState {
            store_tick: Some(Tick::new(10_000)),
            ..Default::default()
        };
        state.barriers.insert(
            "slow".into(),
            Barrier {
                tick: Tick::new(50),
                expires: at(10_000),
            },
        );
        state.barriers.insert(
            "edge".into(),
            Barrier {
                tick: Tick::new(300),
                expires: at(10_000),
            },
        );
        state.barriers.insert(
            "fast".into(),
            Barrier {
                tick: Tick::new(600),
                expires: at(10_000),
            },
        );
        let mut limited = policy();
        limited.archive_bytes_max = 3 * MB;
        let plan = state.plan(&limited, &segments(6), at(0), at(200));
        assert_eq!(ids(&plan.delete), vec![0, 1, 2]);
        assert_eq!(ids(&plan.forced), vec![0, 1, 2]);
        assert_eq!(plan.lost_clients, vec![("slow".to_string(), Tick::new(50))]);
        assert!(
            state.barriers.contains_key("edge"),
            "ticks after 300 are all still there"
        );
        assert!(!state.barriers.contains_key("slow"));
    }

    // Goal: a segment whose need comes back (a new barrier) restarts its timeout.
    #[test]
    fn timeout_restarts_when_needed_again() {
        let mut state = RetentionState {
            store_tick: Some(Tick::new(10_000)),
            ..Default::default()
        };
        state.plan(&policy(), &segments(4), at(0), at(200));
        state.barriers.insert(
            "f".into(),
            Barrier {
                tick: Tick::new(0),
                expires: at(205),
            },
        );
        let plan = state.plan(&policy(), &segments(4), at(0), at(204));
        assert!(plan.delete.is_empty());
        let plan = state.plan(&policy(), &segments(4), at(0), at(210));
        assert!(plan.delete.is_empty(), "unneeded again only since 210");
        let plan = state.plan(&policy(), &segments(4), at(0), at(220));
        assert_eq!(ids(&plan.delete), vec![0, 1]);
    }
}
