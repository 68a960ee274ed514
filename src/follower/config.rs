//! The applier's configuration: ArangoDB's options with their names and defaults, merged from
//! `applier-config`/`make-follower` bodies and validated.

use crate::api::{num, ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use tickship_storage::docstore::{CollectionFilter, Restrict};

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
        CollectionFilter::new(
            restrict,
            self.restrict_collections.iter().cloned(),
            self.include_system,
        )
    }

    pub fn validate(&self) -> ApiResult<()> {
        if self.endpoint.is_empty() {
            return Err(invalid("invalid value for <endpoint>"));
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
            if !value.is_finite() || value < 0.0 {
                return Err(invalid(&format!("invalid value for <{name}>")));
            }
        }
        Ok(())
    }

    /// The leader's QUIC address: the endpoint's host and port (UDP), unless overridden.
    pub(super) fn leader_addr(&self) -> Result<SocketAddr, String> {
        // Any scheme: QUIC brings its own TLS. A bare HOST:PORT is taken as it is.
        let host = crate::config::endpoint_parts(&self.endpoint)
            .map(|(host, _)| host)
            .unwrap_or(self.endpoint.trim_end_matches('/'));
        crate::config::resolve(host).map_err(|e| e.to_string())
    }
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
