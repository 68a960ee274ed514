//! tickship: leader/follower replication of a JSON document store by shipping a tick-ordered
//! write-ahead log. This package holds the daemon (`tickshipd`) and the `tickship` CLI: the
//! server both roles share (`node`), the leader's write path and shipper (`leader`), the
//! follower's replication applier (`follower`), the HTTP API that ArangoDB drivers speak
//! (`http`), and the commands (`cli`). The disk side is `tickship_storage`, the wire side
//! `tickship_net`; docs/architecture.md shows how they fit.

pub mod api;
pub mod auth;
pub mod catch_up;
pub mod cli;
pub mod client;
pub mod config;
pub mod docgen;
pub mod follower;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod json;
pub mod leader;
pub mod node;
pub mod server;
pub mod util;

pub use tickship_net as net;
pub use tickship_storage as storage;
