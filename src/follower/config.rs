//! The applier's configuration: ArangoDB's options with their names and defaults, merged from
//! `applier-config`/`make-follower` bodies and validated. `OPTIONS` says what each option does
//! in this design; docs/http-api.md "Applier options" is the same table for users.

use crate::api::{num, ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use tickship_storage::docstore::{CollectionFilter, Restrict};

/// What an applier option does here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// It acts as ArangoDB documents it (the text says how, where that differs in form).
    Acts(&'static str),
    /// It has no effect in this design, for the reason given; any valid value is accepted.
    NoEffect(&'static str),
}

/// Every option of the applier configuration with what it does here. A test checks that this
/// table and `ApplierConfig` name the same options, and that docs/http-api.md lists them all.
pub(crate) const OPTIONS: &[(&str, Effect)] = &[
    ("endpoint", Effect::Acts("the leader; tcp://, http+tcp://, http:// and udp:// with HOST:PORT, [IPv6]:PORT; ssl:// and other schemes are refused (1410)")),
    ("database", Effect::Acts("the leader's database a database applier replicates: its own name (another is refused, 1410: the log names databases); for the server-level applier, a database of the leader, checked at connect")),
    ("username", Effect::Acts("SCRAM-SHA-256-PLUS on the QUIC session, Basic on the sync's HTTP")),
    ("password", Effect::Acts("never echoed")),
    ("maxConnectRetries", Effect::Acts("failed connects in a row before the applier stops with 1400")),
    ("connectTimeout", Effect::Acts("per connect (QUIC handshake); at least 0.1 s, else refused")),
    ("requestTimeout", Effect::Acts("how long the leader may stay silent; at least 1 s (it sends Idle every second), else refused")),
    ("chunkSize", Effect::Acts("bytes per Blocks frame asked of the leader (0: a quarter of the receive buffer), at most maxPacketSize")),
    ("autoStart", Effect::Acts("start the applier with the server")),
    ("adaptivePolling", Effect::NoEffect("the leader pushes its log; nothing polls, so there is no polling interval to adapt")),
    ("autoResync", Effect::Acts("a 1414 from the leader starts an incremental resync")),
    ("autoResyncRetries", Effect::Acts("resyncs in a row, each within 120 s of the last, before the applier stops")),
    ("includeSystem", Effect::Acts("system collections (names starting with _) are applied")),
    ("includeFoxxQueues", Effect::Acts("_jobs and _queues are applied (left out by default, as in ArangoDB)")),
    ("requireFromPresent", Effect::Acts("false: a leader that lacks the tick asked for is followed from its first tick, the gap logged")),
    ("verbose", Effect::Acts("every applied operation is logged at info")),
    ("incremental", Effect::Acts("the initial sync compares key ranges and keeps what is equal")),
    ("restrictType", Effect::Acts("include or exclude restrictCollections; records left out count in totalOperationsExcluded (the leader ships whole blocks, the follower leaves them out)")),
    ("restrictCollections", Effect::Acts("the collections restrictType names")),
    ("connectionRetryWaitTime", Effect::Acts("wait before reconnecting after a failed connect")),
    ("initialSyncMaxWaitTime", Effect::Acts("how long make-follower waits after the sync for the follower to catch up before it answers")),
    ("idleMinWaitTime", Effect::NoEffect("the leader pushes new blocks as they become durable and sends Idle every second; a follower never sleeps between requests")),
    ("idleMaxWaitTime", Effect::NoEffect("as idleMinWaitTime: there is no polling back-off; requestTimeout bounds a silent leader")),
    ("maxPacketSize", Effect::Acts("largest Blocks frame accepted (at least 64 KiB; above 96 MiB, the protocol's largest frame, it changes nothing); a larger frame stops the applier with 1401")),
    ("ignoreErrors", Effect::Acts("conflicts (a collection named like one of the leader's) skipped and counted in totalErrorsIgnored, up to the count (true: all); then the applier stops with 1207")),
    ("lockTimeoutRetries", Effect::NoEffect("the store writer is the only writer of a follower's store and takes no lock that can time out")),
    ("sslProtocol", Effect::Acts("the QUIC session speaks TLS 1.3 only: 0, 2 (SSLv23), 6 (TLSv1.3) and 9 (generic) are accepted, older protocols and unknown values refused (1410)")),
    ("skipCreateDrop", Effect::Acts("collection create, drop and rename records are left out (counted as excluded); make-follower sets it to false")),
];

/// The applier configuration, with ArangoDB's names and defaults. Durations are seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ApplierConfig {
    pub endpoint: String,
    pub database: String,
    pub username: String,
    pub password: String,
    pub max_connect_retries: u64,
    pub connect_timeout: f64,
    pub request_timeout: f64,
    pub chunk_size: u64,
    pub auto_start: bool,
    pub adaptive_polling: bool,
    pub auto_resync: bool,
    pub auto_resync_retries: u64,
    pub include_system: bool,
    pub include_foxx_queues: bool,
    pub require_from_present: bool,
    pub verbose: bool,
    pub incremental: bool,
    pub restrict_type: String,
    pub restrict_collections: Vec<String>,
    pub connection_retry_wait_time: f64,
    pub initial_sync_max_wait_time: f64,
    pub idle_min_wait_time: f64,
    pub idle_max_wait_time: f64,
    pub max_packet_size: u64,
    pub ignore_errors: u64,
    pub lock_timeout_retries: u64,
    pub ssl_protocol: u64,
    pub skip_create_drop: bool,
}

impl Default for ApplierConfig {
    fn default() -> ApplierConfig {
        ApplierConfig {
            endpoint: String::new(),
            database: String::new(),
            username: "root".into(),
            password: String::new(),
            max_connect_retries: 100,
            connect_timeout: 10.0,
            request_timeout: 600.0,
            chunk_size: 0,
            auto_start: false,
            adaptive_polling: true,
            auto_resync: false,
            auto_resync_retries: 2,
            include_system: true,
            include_foxx_queues: false,
            require_from_present: true,
            verbose: false,
            incremental: false,
            restrict_type: String::new(),
            restrict_collections: Vec::new(),
            connection_retry_wait_time: 15.0,
            initial_sync_max_wait_time: 300.0,
            idle_min_wait_time: 1.0,
            idle_max_wait_time: 2.5,
            max_packet_size: 536_870_912,
            ignore_errors: 0,
            lock_timeout_retries: 0,
            ssl_protocol: 0,
            skip_create_drop: false,
        }
    }
}

impl ApplierConfig {
    /// The configuration as `applier-config` answers it: never the password.
    pub fn public_json(&self) -> Value {
        let mut value = serde_json::to_value(self)
            .expect("ApplierConfig holds only strings, numbers and booleans, which serialise");
        if let Value::Object(map) = &mut value {
            map.remove("password");
        }
        value
    }

    /// `self` with the attributes of `body` merged on, validated.
    pub fn merged(&self, body: &Value, local_db: &str) -> ApiResult<ApplierConfig> {
        let Value::Object(updates) = body else {
            return Err(invalid("body must be a JSON object"));
        };
        let mut map: Map<String, Value> = match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        for (key, value) in updates {
            if !map.contains_key(key) {
                continue; // ArangoDB ignores attributes it does not know
            }
            if let Some(why) = no_effect(key).filter(|_| map.get(key) != Some(value)) {
                tracing::warn!("applier option {key} = {value} has no effect in tickship: {why}");
            }
            let value = match (key.as_str(), value) {
                // `ignoreErrors: true` means "all".
                ("ignoreErrors", Value::Bool(true)) => json!(u64::MAX),
                ("ignoreErrors", Value::Bool(false)) => json!(0),
                ("restrictType", Value::String(t)) if t == "none" => json!(""),
                _ => value.clone(),
            };
            map.insert(key.clone(), value);
        }
        let mut config: ApplierConfig = serde_json::from_value(Value::Object(map))
            .map_err(|e| invalid(&format!("invalid value in applier configuration: {e}")))?;
        if config.database.is_empty() {
            config.database = local_db.to_string();
        }
        config.validate()?;
        Ok(config)
    }

    /// The collections this configuration replicates.
    pub fn filter(&self) -> CollectionFilter {
        let restrict = match self.restrict_type.as_str() {
            "include" => Restrict::Include,
            "exclude" => Restrict::Exclude,
            _ => Restrict::None,
        };
        let mut filter = CollectionFilter::new(
            restrict,
            self.restrict_collections.iter().cloned(),
            self.include_system,
        )
        .with_foxx_queues(self.include_foxx_queues);
        filter.skip_create_drop = self.skip_create_drop;
        filter.verbose = self.verbose;
        filter
    }

    pub fn validate(&self) -> ApiResult<()> {
        if self.endpoint.is_empty() {
            return Err(invalid("invalid value for <endpoint>"));
        }
        leader_host(&self.endpoint)
            .map_err(|m| invalid(&format!("invalid value for <endpoint>: {m}")))?;
        match self.ssl_protocol {
            0 | 2 | 6 | 9 => {}
            1 | 3 | 4 | 5 => {
                return Err(invalid(&format!(
                    "invalid value for <sslProtocol>: {} asks for SSLv2, SSLv3, TLSv1 or TLSv1.2; \
                     replication speaks TLS 1.3 only (use 0, 2, 6 or 9)",
                    self.ssl_protocol
                )))
            }
            other => {
                return Err(invalid(&format!(
                    "invalid value for <sslProtocol>: {other} is no protocol (0, 2, 6 or 9)"
                )))
            }
        }
        if self.max_packet_size < MAX_PACKET_SIZE_MIN {
            return Err(invalid(&format!(
                "invalid value for <maxPacketSize>: at least {MAX_PACKET_SIZE_MIN} bytes, the \
                 smallest frame a follower asks for"
            )));
        }
        if !matches!(self.restrict_type.as_str(), "" | "include" | "exclude") {
            return Err(invalid("invalid value for <restrictType>"));
        }
        if self.restrict_type.is_empty() != self.restrict_collections.is_empty() {
            return Err(invalid(
                "invalid value for <restrictCollections> or <restrictType>",
            ));
        }
        for (name, value) in [
            ("connectTimeout", self.connect_timeout),
            ("requestTimeout", self.request_timeout),
            ("connectionRetryWaitTime", self.connection_retry_wait_time),
            ("idleMinWaitTime", self.idle_min_wait_time),
            ("idleMaxWaitTime", self.idle_max_wait_time),
            ("initialSyncMaxWaitTime", self.initial_sync_max_wait_time),
        ] {
            if !value.is_finite() || !(0.0..=DURATION_MAX).contains(&value) {
                return Err(invalid(&format!(
                    "invalid value for <{name}>: from 0 to {DURATION_MAX} seconds"
                )));
            }
        }
        if self.connect_timeout < 0.1 {
            return Err(invalid(
                "invalid value for <connectTimeout>: at least 0.1 seconds",
            ));
        }
        if self.request_timeout < 1.0 {
            return Err(invalid(
                "invalid value for <requestTimeout>: at least 1 second (the leader sends Idle \
                 every second, so a shorter timeout would drop a healthy leader)",
            ));
        }
        Ok(())
    }

    /// The largest `Blocks` frame this applier accepts.
    pub(super) fn frame_bytes_max(&self) -> usize {
        usize::try_from(self.max_packet_size)
            .unwrap_or(usize::MAX)
            .min(tickship_net::frame::BLOCKS_BYTES_MAX)
    }

    /// The leader's QUIC address: the endpoint's host and port (UDP), unless overridden.
    pub(super) fn leader_addr(&self) -> Result<SocketAddr, String> {
        crate::config::resolve(leader_host(&self.endpoint)?).map_err(|e| e.to_string())
    }
}

/// Why option `name` has no effect here, if it has none.
fn no_effect(name: &str) -> Option<&'static str> {
    OPTIONS.iter().find_map(|(option, effect)| match effect {
        Effect::NoEffect(why) if *option == name => Some(*why),
        _ => None,
    })
}

/// Smallest `maxPacketSize`: the smallest frame a follower asks for.
const MAX_PACKET_SIZE_MIN: u64 = 64 << 10;

/// Longest duration option, in seconds (a year): longer ones are refused, never clamped.
const DURATION_MAX: f64 = 365.0 * 86_400.0;

/// The `HOST:PORT` of a leader endpoint. The sync reaches the leader's HTTP API in clear
/// (tickshipd serves no TLS there), so a scheme that asks for TLS is refused rather than
/// quietly not given; the log itself always travels over QUIC's TLS 1.3.
fn leader_host(endpoint: &str) -> Result<&str, String> {
    let (host, tls) = crate::config::endpoint_parts(endpoint).map_err(|_| {
        format!(
            "unsupported endpoint '{endpoint}': use tcp://HOST:PORT (also http+tcp://, http://; \
             IPv6 as tcp://[::1]:8529)"
        )
    })?;
    if tls {
        return Err(format!(
            "'{endpoint}' asks for TLS, which tickshipd's HTTP API (used by the initial sync) does \
             not serve: use tcp://HOST:PORT; the replication log travels over QUIC with TLS 1.3 \
             whatever the scheme"
        ));
    }
    let port = host
        .rsplit_once(':')
        .filter(|(name, _)| !name.is_empty())
        .and_then(|(_, port)| port.parse::<u16>().ok());
    if port.is_none() {
        return Err(format!("endpoint '{endpoint}' names no HOST:PORT"));
    }
    Ok(host)
}

pub(super) fn invalid(message: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        num::INVALID_CONFIGURATION,
        message,
    )
}

pub(super) fn running() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        num::RUNNING,
        "cannot perform operation while applier is running",
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in a test, a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn config_merges_validates_and_hides_the_password() {
        let base = ApplierConfig::default();
        let merged = base
            .merged(&json!({"endpoint": "tcp://127.0.0.1:8529", "password": "pw", "ignoreErrors": true, "unknown": 1}), "_system")
            .unwrap();
        assert_eq!(merged.database, "_system");
        assert_eq!(merged.ignore_errors, u64::MAX);
        assert_eq!(merged.max_connect_retries, 100);
        assert!(merged.public_json().get("password").is_none());
        assert_eq!(merged.public_json()["endpoint"], "tcp://127.0.0.1:8529");
        let err = base
            .merged(&json!({"database": "x"}), "_system")
            .unwrap_err();
        assert_eq!(err.error_num, num::INVALID_CONFIGURATION);
        assert_eq!(err.message, "invalid value for <endpoint>");
        let err = base
            .merged(
                &json!({"endpoint": "tcp://a:1", "restrictType": "include"}),
                "_system",
            )
            .unwrap_err();
        assert!(err.message.contains("restrictCollections"));
        assert!(base
            .merged(
                &json!({"endpoint": "tcp://a:1", "connectTimeout": "x"}),
                "_system"
            )
            .is_err());
        assert!(base.merged(&json!([1]), "_system").is_err());
    }

    #[test]
    fn the_option_table_names_every_option_and_the_docs_list_them() {
        let Value::Object(fields) = serde_json::to_value(ApplierConfig::default()).unwrap() else {
            panic!("the configuration is an object");
        };
        let table: Vec<&str> = OPTIONS.iter().map(|(name, _)| *name).collect();
        let mut fields: Vec<&str> = fields.keys().map(String::as_str).collect();
        let mut sorted = table.clone();
        fields.sort_unstable();
        sorted.sort_unstable();
        assert_eq!(fields, sorted, "OPTIONS and ApplierConfig differ");
        // The package's directory as cargo gives it when it runs the test, not where it was
        // built (a target directory shared by two checkouts).
        let package: std::path::PathBuf = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into);
        let docs = std::fs::read_to_string(package.join("docs/http-api.md")).unwrap();
        for name in table {
            assert!(
                docs.contains(&format!("| `{name}` |")),
                "docs/http-api.md has no row for {name}"
            );
        }
        assert!(no_effect("lockTimeoutRetries").is_some() && no_effect("verbose").is_none());
    }

    #[test]
    fn out_of_range_values_are_refused_never_clamped() {
        let base = ApplierConfig::default();
        let refused = |body: Value, needle: &str| {
            let mut full = json!({"endpoint": "tcp://127.0.0.1:8529"});
            full.as_object_mut()
                .unwrap()
                .extend(body.as_object().unwrap().clone());
            let err = base.merged(&full, "_system").unwrap_err();
            assert_eq!(err.error_num, num::INVALID_CONFIGURATION, "{body}");
            assert!(err.message.contains(needle), "{body}: {}", err.message);
        };
        refused(json!({"requestTimeout": 0.5}), "requestTimeout");
        refused(json!({"connectTimeout": 0}), "connectTimeout");
        refused(
            json!({"connectionRetryWaitTime": 1e30}),
            "connectionRetryWaitTime",
        );
        refused(json!({"maxPacketSize": 1000}), "maxPacketSize");
        refused(json!({"sslProtocol": 5}), "TLS 1.3 only");
        refused(json!({"sslProtocol": 7}), "no protocol");
        refused(json!({"endpoint": "ssl://127.0.0.1:8529"}), "asks for TLS");
        refused(
            json!({"endpoint": "vst://127.0.0.1:8529"}),
            "unsupported endpoint",
        );
        refused(
            json!({"endpoint": "127.0.0.1:8529"}),
            "unsupported endpoint",
        );
        refused(json!({"endpoint": "tcp://127.0.0.1"}), "HOST:PORT");
        for endpoint in ["tcp://[::1]:8529", "http+tcp://h:1", "http://127.0.0.1:9/"] {
            let config = base
                .merged(&json!({"endpoint": endpoint, "sslProtocol": 6}), "_system")
                .unwrap();
            assert_eq!(config.ssl_protocol, 6);
        }
        let config = base
            .merged(
                &json!({"endpoint": "tcp://a:1", "maxPacketSize": 70000, "skipCreateDrop": true, "verbose": true}),
                "_system",
            )
            .unwrap();
        assert_eq!(config.frame_bytes_max(), 70000);
        let filter = config.filter();
        assert!(filter.skip_create_drop && filter.verbose && !filter.admits("_jobs"));
    }

    #[test]
    fn endpoint_names_the_udp_address() {
        let config = ApplierConfig {
            endpoint: "tcp://127.0.0.1:8529".into(),
            ..ApplierConfig::default()
        };
        assert_eq!(
            config.leader_addr().unwrap(),
            "127.0.0.1:8529".parse().unwrap()
        );
    }
}
