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
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

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
}

pub struct Clients {
    ttl: Duration,
    clients: Mutex<BTreeMap<String, Client>>,
}

impl Clients {
    pub fn new(ttl: Duration) -> Clients {
        Clients {
            ttl,
            clients: Mutex::new(BTreeMap::new()),
        }
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
        let id = Clients::id(syncer_id, server_id);
        let now = SystemTime::now();
        let expires = now + self.ttl;
        wal.set_barrier(&id, from, expires)?;
        let client = Client {
            syncer_id: syncer_id.to_string(),
            server_id: server_id.to_string(),
            client_info: client_info.to_string(),
            time: now,
            expires,
            last_served_tick: from,
            applied: applied.map(|tick| (tick, now)),
        };
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, client);
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
