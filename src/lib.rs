//! tickship: leader/follower replication of a JSON document store by shipping a tick-ordered
//! write-ahead log. This package holds the daemon (`tickshipd`): its flags, the HTTP API that
//! ArangoDB drivers speak, the leader's write path and its replication logger. The disk side is
//! `tickship_storage`, the wire side `tickship_net`.

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod docgen;
pub mod follower;
pub mod http;
pub mod json;
pub mod leader;
pub mod replication;
pub mod server;
pub mod shipper;
pub mod util;

pub use tickship_net as net;
pub use tickship_storage as storage;
