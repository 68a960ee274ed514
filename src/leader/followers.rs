//! The leader's registry of replication clients: who reads the log, from where, until when.
//!
//! Two kinds register. A `wal/tail` call that names a `syncerId` or `serverId` registers (or
//! refreshes) its client with `lastServedTick = from`; a QUIC follower registers when its session
//! starts and again with every acknowledgement, with `lastServedTick` = the tick it holds durably
//! (and what its store shows). Each registration holds a WAL barrier at `lastServedTick` with an
//! expiry `client_ttl` ahead, so retention keeps every tick the client still needs until it
//! expires (ArangoDB's soft barriers, but enforced by the WAL's retention rather than best
//! effort). `logger-state` and `/_admin/metrics` list them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tickship_storage::{Tick, Wal};

/// One replication client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub syncer_id: String,
    pub server_id: String,
    pub client_info: String,
    pub time: SystemTime,
    pub expires: SystemTime,
    pub last_served_tick: Tick,
    /// What a QUIC follower last acknowledged as visible in its store, and when.
    pub applied: Option<(Tick, SystemTime)>,
    /// How its distance to this log's last tick moved over its last acknowledgements.
    pub catch_up: crate::catch_up::CatchUpClock,
}

/// How far a replication client is behind this leader's log, and how soon retention would take
/// what it still needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lag {
    /// Ticks after the client's position.
    pub ticks: u64,
    /// Bytes of WAL blocks after it: whole segments after the one holding its next tick, and of
    /// that one the share of its ticks not yet held (blocks are not indexed by byte here).
    pub bytes: u64,
    /// Seconds until retention may take its next tick: until its registration expires (each
    /// ack renews it), or sooner under `--wal.archive-size-limit` at the append rate of the last
    /// minute, when the segments from its own on would outgrow the limit.
    pub seconds_to_falloff: f64,
    /// Seconds until it holds this log's last tick at the rate its distance shrank over its
    /// last acknowledgements: 0 when level, `None` when it is not catching up (a stall, a
    /// partition, a down follower: no acknowledgement shrinks it).
    pub seconds_to_catch_up: Option<f64>,
}

impl Client {
    /// This client's lag, from the WAL's segments (`Wal::tick_ranges`) and append rate.
    pub fn lag(
        &self,
        wal: &Wal,
        ranges: &[tickship_storage::wal::SegmentRange],
        now: SystemTime,
        append_rate: Option<f64>,
    ) -> Lag {
        let last = wal.last_tick();
        let mut lag = lag_at(
            self.last_served_tick,
            last,
            ranges,
            self.expires.duration_since(now).unwrap_or_default(),
            wal.options().retention.archive_bytes_max,
            append_rate,
        );
        lag.seconds_to_catch_up = self
            .catch_up
            .eta_seconds(std::time::Instant::now(), lag.ticks);
        lag
    }
}

/// `Client::lag` of a client at `tick`, registered for `ttl_left` more.
fn lag_at(
    tick: Tick,
    last: Tick,
    ranges: &[tickship_storage::wal::SegmentRange],
    ttl_left: Duration,
    archive_bytes_max: u64,
    append_rate: Option<f64>,
) -> Lag {
    let header = tickship_storage::wal::segment::SEGMENT_HEADER_BYTES as u64;
    let (mut bytes, mut from_own) = (0u64, 0u64);
    for range in ranges.iter().filter(|r| r.tick_max > tick) {
        let data = range.data_end.saturating_sub(header);
        bytes += if range.tick_min > tick {
            data
        } else {
            let span = range.tick_max.get() - range.tick_min.get() + 1;
            (u128::from(data) * u128::from(range.tick_max.get() - tick.get()) / u128::from(span))
                as u64
        };
        from_own += range.data_end;
    }
    let by_limit = match append_rate {
        Some(rate) if archive_bytes_max > 0 && rate > 0.0 => {
            Some(archive_bytes_max.saturating_sub(from_own) as f64 / rate)
        }
        _ => None,
    };
    let by_ttl = ttl_left.as_secs_f64();
    Lag {
        ticks: last.get().saturating_sub(tick.get()),
        bytes,
        seconds_to_falloff: by_limit.map_or(by_ttl, |s| s.min(by_ttl)),
        seconds_to_catch_up: None,
    }
}

/// A dump's hold on the log: every tick after `tick` is kept until a follower reads from `tick`
/// or later (one restored from the dump has started) or `expires` passes. Kept in
/// `DIR/dump-barriers.json`, so a leader restart does not let go of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpBarrier {
    /// The batch the dump read through.
    pub batch: String,
    pub tick: String,
    /// Unix milliseconds.
    pub created: u64,
    pub expires: u64,
    /// The server whose sync created the batch (`serverId` of `POST batch`), if one said so.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_id: String,
}

impl DumpBarrier {
    fn tick(&self) -> Tick {
        Tick::new(self.tick.parse().unwrap_or(0))
    }

    fn wal_name(&self) -> String {
        format!("dump:{}", self.batch)
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

pub struct Clients {
    ttl: Duration,
    clients: Mutex<BTreeMap<String, Client>>,
    /// `--replication.dump-barrier-ttl`; zero: dumps hold nothing past their batch.
    dump_ttl: Duration,
    /// Where the dump barriers are kept (none: in memory only, for tests of the registry).
    dump_path: Option<PathBuf>,
    dumps: Mutex<Vec<DumpBarrier>>,
}

impl Clients {
    pub fn new(ttl: Duration) -> Clients {
        Clients {
            ttl,
            clients: Mutex::new(BTreeMap::new()),
            dump_ttl: Duration::ZERO,
            dump_path: None,
            dumps: Mutex::new(Vec::new()),
        }
    }

    /// The registry of a server whose data directory is `dir`: the dump barriers kept there are
    /// put back on `wal` (those it can no longer hold are reported and dropped).
    pub fn open(
        ttl: Duration,
        dump_ttl: Duration,
        dir: &Path,
        wal: &Wal,
    ) -> anyhow::Result<Clients> {
        let path = dir.join("dump-barriers.json");
        let mut dumps: Vec<DumpBarrier> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not a list of dump barriers; remove it to let go of them (followers                      restored from those dumps may then find their tick gone: 1414)",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let now = SystemTime::now();
        dumps.retain(|d| {
            if from_unix_ms(d.expires) <= now {
                return false;
            }
            match wal.set_barrier(&d.wal_name(), d.tick(), from_unix_ms(d.expires)) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(batch = %d.batch, tick = %d.tick, "dump barrier lost: {e}");
                    false
                }
            }
        });
        for d in &dumps {
            if d.tick.parse::<u64>().is_err() {
                bail!(
                    "{}: barrier of batch {} has no tick",
                    path.display(),
                    d.batch
                );
            }
        }
        let clients = Clients {
            ttl,
            clients: Mutex::new(BTreeMap::new()),
            dump_ttl,
            dump_path: Some(path),
            dumps: Mutex::new(dumps),
        };
        clients.save_dumps(&clients.lock_dumps())?;
        Ok(clients)
    }

    fn lock_dumps(&self) -> std::sync::MutexGuard<'_, Vec<DumpBarrier>> {
        self.dumps.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save_dumps(&self, dumps: &[DumpBarrier]) -> anyhow::Result<()> {
        let Some(path) = &self.dump_path else {
            return Ok(());
        };
        let temporary = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(dumps)?;
        std::fs::write(&temporary, bytes)
            .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
            .and_then(|()| std::fs::rename(&temporary, path))
            .with_context(|| format!("write {}", path.display()))?;
        if let Some(dir) = path.parent() {
            crate::util::fsync_dir(dir)?;
        }
        Ok(())
    }

    /// Holds the log after `tick` for the dump reading through batch `batch`, until a follower
    /// reads from there or `--replication.dump-barrier-ttl` passes; durable when it returns.
    /// A batch named by `server_id` (a follower's sync) replaces that server's earlier dump
    /// barriers: a sync that failed and starts again would otherwise leave one behind for
    /// `--replication.dump-barrier-ttl`, holding the log.
    pub fn hold_for_dump(
        &self,
        wal: &Wal,
        batch: u64,
        tick: Tick,
        server_id: &str,
    ) -> anyhow::Result<()> {
        if self.dump_ttl.is_zero() {
            return Ok(());
        }
        let now = SystemTime::now();
        let barrier = DumpBarrier {
            batch: batch.to_string(),
            tick: tick.to_string(),
            created: unix_ms(now),
            expires: unix_ms(now + self.dump_ttl),
            server_id: server_id.to_string(),
        };
        wal.set_barrier(&barrier.wal_name(), tick, now + self.dump_ttl)?;
        let mut dumps = self.lock_dumps();
        if !server_id.is_empty() {
            dumps.retain(|d| {
                let earlier = d.server_id == server_id;
                if earlier {
                    wal.drop_barrier(&d.wal_name());
                    tracing::info!(batch = %d.batch, tick = %d.tick, server_id, "dump barrier of an earlier sync released");
                }
                !earlier
            });
        }
        dumps.push(barrier);
        self.save_dumps(&dumps)
    }

    /// Lets go of the dump barriers at `started` (a client reads from exactly that tick: a
    /// follower restored from that dump has started, and its own registration holds the log
    /// now), and of expired ones.
    fn release_dumps(&self, wal: &Wal, started: Option<Tick>) {
        let now = unix_ms(SystemTime::now());
        let mut dumps = self.lock_dumps();
        let before = dumps.len();
        dumps.retain(|d| {
            let keep = Some(d.tick()) != started && d.expires > now;
            if !keep {
                wal.drop_barrier(&d.wal_name());
                tracing::info!(batch = %d.batch, tick = %d.tick, "dump barrier released");
            }
            keep
        });
        if dumps.len() != before {
            if let Err(e) = self.save_dumps(&dumps) {
                tracing::warn!("{e:#}");
            }
        }
    }

    /// Ends expired dump barriers (the server's sweeper calls it).
    pub fn sweep_dumps(&self, wal: &Wal) {
        self.release_dumps(wal, None);
    }

    /// The live dump barriers.
    pub fn dumps(&self) -> Vec<DumpBarrier> {
        self.lock_dumps().clone()
    }

    /// Registers a read from `from` by the client with these ids; returns the WAL's verdict on
    /// the barrier (an error if ticks after `from` are already gone).
    pub fn register(
        &self,
        wal: &Wal,
        syncer_id: &str,
        server_id: &str,
        client_info: &str,
        from: Tick,
    ) -> tickship_storage::Result<()> {
        self.register_ack(wal, syncer_id, server_id, client_info, from, None)
    }

    /// `register`, for a follower's acknowledgement: `from` is what it holds durably, `applied`
    /// what it shows.
    pub fn register_ack(
        &self,
        wal: &Wal,
        syncer_id: &str,
        server_id: &str,
        client_info: &str,
        from: Tick,
        applied: Option<Tick>,
    ) -> tickship_storage::Result<()> {
        if applied.is_none() {
            self.release_dumps(wal, Some(from));
        }
        let id = Clients::id(syncer_id, server_id);
        let now = SystemTime::now();
        let expires = now + self.ttl;
        wal.set_barrier(&id, from, expires)?;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut catch_up = clients.remove(&id).map(|c| c.catch_up).unwrap_or_default();
        catch_up.note(
            std::time::Instant::now(),
            wal.last_tick().get().saturating_sub(from.get()),
        );
        let client = Client {
            syncer_id: syncer_id.to_string(),
            server_id: server_id.to_string(),
            client_info: client_info.to_string(),
            time: now,
            expires,
            last_served_tick: from,
            applied: applied.map(|tick| (tick, now)),
            catch_up,
        };
        clients.insert(id, client);
        Ok(())
    }

    /// The registry's name of a client.
    pub fn id(syncer_id: &str, server_id: &str) -> String {
        if !syncer_id.is_empty() {
            format!("syncer:{syncer_id}")
        } else {
            format!("server:{server_id}")
        }
    }

    /// The unexpired clients.
    pub fn list(&self) -> Vec<Client> {
        let now = SystemTime::now();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain(|_, c| c.expires > now);
        clients.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickship_storage::wal::SegmentRange;

    fn range(id: u64, ticks: (u64, u64), data_end: u64, sealed: bool) -> SegmentRange {
        SegmentRange {
            id: tickship_storage::SegmentId::new(id),
            path: PathBuf::new(),
            sealed,
            tick_min: Tick::new(ticks.0),
            tick_max: Tick::new(ticks.1),
            file_bytes: data_end,
            data_end,
        }
    }

    // Goal: bytes behind count whole later segments and a share of the current one; the time to
    // falloff is the TTL, or sooner what the archive limit leaves at the append rate.
    #[test]
    fn lag_counts_bytes_and_time_to_falloff() {
        let ranges = [
            range(0, (1, 100), 64 + 1000, true),
            range(1, (101, 200), 64 + 2000, true),
            range(2, (201, 250), 64 + 500, false),
        ];
        let ttl = Duration::from_secs(60);
        let at = |tick: u64, limit: u64, rate: f64| {
            lag_at(
                Tick::new(tick),
                Tick::new(250),
                &ranges,
                ttl,
                limit,
                Some(rate),
            )
        };
        let lag = at(150, 0, 100.0);
        assert_eq!((lag.ticks, lag.bytes), (100, 1000 + 500));
        assert_eq!(lag.seconds_to_falloff, 60.0);
        // 10,000 bytes allowed, 2,064 + 564 from its segment on: 7,372 left, 73.72 s at 100 B/s,
        // later than the TTL; at 1,000 B/s, 7.372 s.
        assert_eq!(at(150, 10_000, 100.0).seconds_to_falloff, 60.0);
        assert!((at(150, 10_000, 1000.0).seconds_to_falloff - 7.372).abs() < 1e-9);
        let level = at(250, 1_000, 100.0);
        assert_eq!((level.ticks, level.bytes), (0, 0));
        assert_eq!(level.seconds_to_falloff, 10.0);
        let far = at(0, 1_000, 100.0);
        assert_eq!(far.bytes, 3500);
        assert_eq!(far.seconds_to_falloff, 0.0, "already over the limit");
    }
}
