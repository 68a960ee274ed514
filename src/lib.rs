//! tickship: leader/follower replication of a JSON document store by shipping a tick-ordered
//! write-ahead log. The daemon (`tickshipd`) and the CLI (`tickship`) live in this package; the
//! disk side is `tickship_storage`, the wire side `tickship_net`.

pub use tickship_net as net;
pub use tickship_storage as storage;
