//! `tickshipd`'s command-line flags, with ArangoDB's names where one exists.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Parser};
use tickship_storage::docstore::BlobCompression;

/// tickshipd: a JSON document store that ArangoDB's drivers speak to, whose write-ahead log
/// followers replicate over QUIC. Sizes take units: 64MiB, 1GiB, 512KiB (binary), 64MB (decimal)
/// or plain bytes.
#[derive(Parser, Debug, Clone)]
#[command(name = "tickshipd", version, about, long_about = None)]
pub struct DaemonArgs {
    /// HTTP address, tcp://HOST:PORT (port 0: any free one, printed at start); replication
    /// listens on the same port over UDP unless --replication.endpoint says otherwise.
    #[arg(
        long = "server.endpoint",
        default_value = "tcp://127.0.0.1:8529",
        help_heading = "Server"
    )]
    pub endpoint: String,

    /// Data directory: WAL (wal/), document store (store/), credentials, server id.
    #[arg(
        long = "database.directory",
        default_value = "./tickship-data",
        help_heading = "Server"
    )]
    pub directory: PathBuf,

    /// Require authentication (HTTP Basic, or a JWT from /_open/auth).
    #[arg(long = "server.authentication", default_value_t = true, action = ArgAction::Set, help_heading = "Server")]
    pub authentication: bool,

    /// Password of user root [default: $TICKSHIP_ROOT_PASSWORD, else --server.password-file, else
    /// the stored one, else one generated into DIR/ROOT_PASSWORD on first start].
    #[arg(long = "server.password", help_heading = "Server")]
    pub password: Option<String>,

    /// File whose first line is the password of user root.
    #[arg(long = "server.password-file", help_heading = "Server")]
    pub password_file: Option<PathBuf>,

    /// Largest document accepted (larger: 413, error 1216).
    #[arg(long = "server.maximal-document-size", default_value = "16MiB", value_parser = size_usize, help_heading = "Server")]
    pub max_document_bytes: usize,

    /// Largest request body accepted (larger: 413).
    #[arg(long = "server.maximal-body-size", default_value = "256MiB", value_parser = size_usize, help_heading = "Server")]
    pub max_body_bytes: usize,

    /// Log level: error, warn, info, debug, trace.
    #[arg(long = "log.level", default_value = "info", help_heading = "Server")]
    pub log_level: String,

    /// Size of a WAL segment file (preallocated).
    #[arg(long = "wal.segment-size", default_value = "64MiB", value_parser = size_u64, help_heading = "Write-ahead log")]
    pub wal_segment_size: u64,

    /// When writes become durable: group (fdatasync per group commit, acknowledge after it),
    /// interval (acknowledge after the write, fdatasync every --wal.sync-interval), never.
    #[arg(
        long = "wal.sync-policy",
        default_value = "group",
        help_heading = "Write-ahead log"
    )]
    pub wal_sync_policy: String,

    /// Milliseconds between fdatasyncs with --wal.sync-policy interval.
    #[arg(
        long = "wal.sync-interval",
        default_value_t = 100,
        help_heading = "Write-ahead log"
    )]
    pub wal_sync_interval_ms: u64,

    /// WAL I/O engine: sync (buffered pwrite + fdatasync), uring (io_uring, O_DIRECT), or auto
    /// (uring where the kernel allows it).
    #[arg(
        long = "wal.io-engine",
        default_value = "sync",
        help_heading = "Write-ahead log"
    )]
    pub wal_io_engine: String,

    /// Sealed WAL segments always kept.
    #[arg(
        long = "wal.historic-logfiles",
        default_value_t = 10,
        help_heading = "Write-ahead log"
    )]
    pub wal_historic_logfiles: usize,

    /// Seconds a WAL segment must have been unneeded before it is deleted.
    #[arg(
        long = "wal.file-timeout",
        default_value_t = 10.0,
        help_heading = "Write-ahead log"
    )]
    pub wal_file_timeout: f64,

    /// Seconds after start during which no WAL segment is deleted.
    #[arg(
        long = "wal.file-timeout-initial",
        default_value_t = 180.0,
        help_heading = "Write-ahead log"
    )]
    pub wal_file_timeout_initial: f64,

    /// Most bytes of sealed WAL segments, overriding replication clients' needs (they then get
    /// error 1414); 0: no limit.
    #[arg(long = "wal.archive-size-limit", default_value = "0", value_parser = size_u64, help_heading = "Write-ahead log")]
    pub wal_archive_size_limit: u64,

    /// UDP address for replication (QUIC), HOST:PORT [default: --server.endpoint's, over UDP].
    #[arg(long = "replication.endpoint", help_heading = "Replication")]
    pub replication_endpoint: Option<String>,

    /// Seconds a replication client keeps its hold on the WAL after its last request.
    #[arg(
        long = "replication.client-ttl",
        default_value_t = 7200.0,
        help_heading = "Replication"
    )]
    pub replication_client_ttl: f64,

    /// Seconds a dump's tick stays servable (the leader keeps every WAL segment after it) unless
    /// a follower starts from it first; kept across restarts. 0: only while the dump's batch
    /// lives. --wal.archive-size-limit still overrides it (the follower then gets 1414).
    #[arg(
        long = "replication.dump-barrier-ttl",
        default_value_t = 86400.0,
        value_parser = non_negative_seconds,
        help_heading = "Replication"
    )]
    pub replication_dump_barrier_ttl: f64,

    /// Start the replication applier at server start when its configuration says autoStart.
    #[arg(long = "replication.auto-start", default_value_t = true, action = clap::ArgAction::Set, help_heading = "Replication")]
    pub replication_auto_start: bool,

    /// As a follower: accept only a leader whose certificate has this SHA-256 fingerprint (hex,
    /// as the leader prints it at start).
    #[arg(long = "replication.leader-fingerprint", help_heading = "Replication")]
    pub leader_fingerprint: Option<String>,

    /// As a follower: bytes of the leader's log held in memory at most (QUIC's stream window,
    /// plus a quarter of it read but not yet written); must cover the link's bandwidth × round
    /// trip.
    #[arg(long = "replication.receive-buffer-size", default_value = "1MiB", value_parser = receive_buffer_size, help_heading = "Replication")]
    pub replication_receive_buffer_size: u32,

    /// As a follower: bytes per second an initial sync receives from the leader at most, so
    /// that it leaves the leader's disk and the link to its clients (as pg_basebackup's
    /// --max-rate); 0: no limit.
    #[arg(long = "replication.sync-max-rate", default_value = "0", value_parser = size_u64, help_heading = "Replication")]
    pub replication_sync_max_rate: u64,

    /// As a follower: a full sync into an empty store copies the leader's files (value files,
    /// WAL segments, checked block by block) and its key index, instead of its documents, when
    /// this server keeps documents in the WAL; false: always copy documents.
    #[arg(long = "replication.sync-copy-files", default_value_t = true, action = ArgAction::Set, help_heading = "Replication")]
    pub replication_sync_copy_files: bool,

    /// As a follower: memtable size while less than ~8k ticks behind the leader (0: always
    /// --rocksdb.write-buffer-size) [default: 2MiB with documents in the WAL, else 16MiB].
    #[arg(long = "replication.tailing-write-buffer-size", value_parser = size_usize, help_heading = "Replication")]
    pub replication_tailing_write_buffer_size: Option<usize>,

    /// Threads that apply WAL blocks to the document store (received from a leader, or
    /// replayed at start); 0: one per core.
    #[arg(
        long = "replication.applier-threads",
        default_value_t = 0,
        value_parser = applier_threads,
        help_heading = "Replication"
    )]
    pub applier_threads: usize,

    /// Nice value of the threads between a logged change and its visibility (replication,
    /// store applier); best effort, needs CAP_SYS_NICE; 0 leaves them.
    #[arg(long = "replication.thread-nice", default_value_t = -5, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-20..=19), help_heading = "Replication")]
    pub replication_thread_nice: i32,

    /// PEM certificate (chain) for replication's TLS [default: one generated into DIR/tls/].
    #[arg(long = "ssl.certfile", help_heading = "Replication")]
    pub ssl_certfile: Option<std::path::PathBuf>,

    /// PEM private key (PKCS#8) for --ssl.certfile.
    #[arg(long = "ssl.keyfile", help_heading = "Replication")]
    pub ssl_keyfile: Option<std::path::PathBuf>,

    /// Keep each document only in the WAL (the store maps keys to ticks); sticky once used.
    /// false, on a new data directory only, stores documents in the store as well.
    #[arg(long = "rocksdb.documents-in-wal", default_value_t = true, action = ArgAction::Set, help_heading = "Document store")]
    pub rocksdb_documents_in_wal: bool,

    /// Seconds between flushes of the document store while it has unflushed changes (bounds
    /// what a restart replays).
    #[arg(
        long = "store.flush-interval",
        default_value_t = 30.0,
        help_heading = "Document store"
    )]
    pub store_flush_interval: f64,

    /// Size of one memtable of the document store.
    #[arg(long = "rocksdb.write-buffer-size", default_value = "64MiB", value_parser = size_usize, help_heading = "Document store")]
    pub rocksdb_write_buffer_size: usize,

    /// Memtables per column family, the active one included (2..64).
    #[arg(
        long = "rocksdb.max-write-buffer-number",
        default_value_t = 4,
        value_parser = write_buffer_number,
        help_heading = "Document store"
    )]
    pub rocksdb_max_write_buffer_number: usize,

    /// All memtables together (0: no shared limit); past it the store flushes early.
    #[arg(long = "rocksdb.total-write-buffer-size", default_value = "128MiB", value_parser = size_usize, help_heading = "Document store")]
    pub rocksdb_total_write_buffer_size: usize,

    /// Store files kept open at most; 0: from the descriptor limit, -1: all (reads then fail
    /// past the limit).
    #[arg(long = "rocksdb.max-open-files", default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-1..), help_heading = "Document store")]
    pub rocksdb_max_open_files: i32,

    /// Size of the document store's block cache.
    #[arg(long = "rocksdb.block-cache-size", default_value = "256MiB", value_parser = size_usize, help_heading = "Document store")]
    pub rocksdb_block_cache_size: usize,

    /// Compression of each document in the store's blob files and in the files a restore or a
    /// sync writes: none, lz4 or zstd.
    #[arg(
        long = "rocksdb.blob-compression-type",
        default_value = "none",
        help_heading = "Document store"
    )]
    pub rocksdb_blob_compression_type: BlobCompression,

    /// Whether compactions reclaim the space of replaced and removed documents.
    #[arg(long = "rocksdb.enable-blob-garbage-collection", default_value_t = true, action = ArgAction::Set, help_heading = "Document store")]
    pub rocksdb_enable_blob_garbage_collection: bool,

    /// The oldest fraction of blob files whose live documents compactions rewrite (0..=1).
    #[arg(long = "rocksdb.blob-garbage-collection-age-cutoff", default_value_t = 0.25, value_parser = fraction, help_heading = "Document store")]
    pub rocksdb_blob_garbage_collection_age_cutoff: f64,

    /// Level-0 files of the document store that start a compaction.
    #[arg(long = "rocksdb.level0-compaction-trigger", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=65536), help_heading = "Document store")]
    pub rocksdb_level0_compaction_trigger: u32,

    /// Level-0 files past which writes to the document store are slowed down.
    #[arg(long = "rocksdb.level0-slowdown-trigger", default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=65536), help_heading = "Document store")]
    pub rocksdb_level0_slowdown_trigger: u32,

    /// Level-0 files past which writes to the document store wait for compaction.
    #[arg(long = "rocksdb.level0-stop-trigger", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536), help_heading = "Document store")]
    pub rocksdb_level0_stop_trigger: u32,

    /// Size of the document store's first level below level 0; each level below is ten times
    /// larger.
    #[arg(long = "rocksdb.max-bytes-for-level-base", default_value = "8MiB", value_parser = level_base, help_heading = "Document store")]
    pub rocksdb_max_bytes_for_level_base: u64,

    /// Run the document store's compactions at the lowest CPU priority (nice 19).
    #[arg(long = "rocksdb.low-priority-compactions", default_value_t = true, action = ArgAction::Set, help_heading = "Document store")]
    pub rocksdb_low_priority_compactions: bool,
}

/// A size in bytes: a number with an optional unit, in any case: `KiB`, `MiB`, `GiB`, `TiB`
/// (binary), `KB`, `MB`, `GB`, `TB` or `k`, `m`, `g`, `t` (decimal, as ArangoDB reads them), `B`.
pub fn size_u64(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
            ))
        }
    };
    let invalid = || format!("{text:?} is not a size (e.g. 4096, 64MiB, 1.5GiB)");
    if number.is_empty() {
        return Err(invalid());
    }
    let bytes = if number.contains('.') {
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let bytes = value * multiplier as f64;
        if bytes.fract() != 0.0 && multiplier == 1 {
            return Err(invalid());
        }
        if !(0.0..1.8e19).contains(&bytes) {
            return Err(format!("{text:?} is too large"));
        }
        bytes.round() as u64
    } else {
        number
            .parse::<u64>()
            .map_err(|_| invalid())?
            .checked_mul(multiplier)
            .ok_or_else(|| format!("{text:?} is too large"))?
    };
    Ok(bytes)
}

fn non_negative_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=1e9).contains(&s) => Ok(s),
        _ => Err(format!("{text:?} is not a number of seconds from 0 to 1e9")),
    }
}

pub(crate) fn size_usize(text: &str) -> Result<usize, String> {
    usize::try_from(size_u64(text)?).map_err(|_| format!("{text:?} is too large"))
}

/// `--replication.receive-buffer-size`: 64 KiB (QUIC's least stream window here) to 1 GiB.
fn receive_buffer_size(text: &str) -> Result<u32, String> {
    let bytes = size_u64(text)?;
    let min = u64::from(tickship_net::transport::STREAM_WINDOW_MIN);
    if !(min..=1 << 30).contains(&bytes) {
        return Err(format!("{text:?}: must be from 64KiB to 1GiB"));
    }
    Ok(bytes as u32)
}

/// `--rocksdb.max-bytes-for-level-base`: at least a table file's least size.
fn level_base(text: &str) -> Result<u64, String> {
    let bytes = size_u64(text)?;
    let min = tickship_storage::docstore::MIN_TABLE_FILE_BYTES;
    if bytes < min {
        return Err(format!("{text:?}: must be at least {min} bytes"));
    }
    Ok(bytes)
}

/// A whole number from `low` to `high`.
fn number_in(text: &str, low: usize, high: usize) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(value) if (low..=high).contains(&value) => Ok(value),
        _ => Err(format!(
            "{text:?} is not a whole number from {low} to {high}"
        )),
    }
}

/// `--replication.applier-threads`: 0 (one per core) to 1024.
fn applier_threads(text: &str) -> Result<usize, String> {
    number_in(text, 0, 1024)
}

/// `--rocksdb.max-write-buffer-number`: the range the store can use
/// (`tickship_storage::docstore` holds at least 2 memtables and at most 64).
fn write_buffer_number(text: &str) -> Result<usize, String> {
    number_in(text, 2, 64)
}

/// A number from 0 to 1.
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text:?} is not a number from 0 to 1")),
    }
}

/// Endpoint schemes in ArangoDB's spellings, and whether each asks for TLS. The one list: the
/// daemon's flags, the CLI and the follower's leader endpoint all parse endpoints here.
const ENDPOINT_SCHEMES: [(&str, bool); 7] = [
    ("tcp://", false),
    ("http+tcp://", false),
    ("http://", false),
    ("udp://", false),
    ("ssl://", true),
    ("http+ssl://", true),
    ("https://", true),
];

/// The `HOST:PORT` of an endpoint, and whether its scheme asks for TLS.
pub fn endpoint_parts(endpoint: &str) -> anyhow::Result<(&str, bool)> {
    ENDPOINT_SCHEMES
        .iter()
        .find_map(|(scheme, tls)| Some((endpoint.strip_prefix(scheme)?, *tls)))
        .map(|(host, tls)| (host.trim_end_matches('/'), tls))
        .ok_or_else(|| {
            anyhow::anyhow!("unsupported endpoint {endpoint:?}: expected tcp://HOST:PORT")
        })
}

/// The `HOST:PORT` of an endpoint served or reached over plain HTTP: tickshipd's HTTP has no
/// TLS, so `ssl://` is refused rather than served in clear.
pub fn plain_endpoint_host(endpoint: &str) -> anyhow::Result<&str> {
    match endpoint_parts(endpoint)? {
        (host, false) => Ok(host),
        (_, true) => anyhow::bail!(
            "endpoint {endpoint:?}: tickshipd's HTTP has no TLS; use tcp://HOST:PORT \
             (replication between servers is encrypted by QUIC whatever the scheme)"
        ),
    }
}

/// `HOST:PORT` resolved to its first socket address.
pub fn resolve(host: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    host.to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host} resolves to no address"))
}

/// A plain endpoint (`tcp://HOST:PORT`, also `http://`, `http+tcp://`) as a socket address.
pub fn parse_endpoint(endpoint: &str) -> anyhow::Result<SocketAddr> {
    resolve(plain_endpoint_host(endpoint)?)
        .map_err(|e| anyhow::anyhow!("endpoint {endpoint:?}: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in a test, a panic is the failure report
mod tests {
    use super::*;

    // Goal: endpoints in ArangoDB's spelling parse; others are refused with a reason.
    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("tcp://127.0.0.1:8529").expect("tcp").port(),
            8529
        );
        assert_eq!(
            parse_endpoint("http://127.0.0.1:0").expect("http").port(),
            0
        );
        assert!(parse_endpoint("ssl://127.0.0.1:8529").is_err());
        assert!(parse_endpoint("127.0.0.1:8529").is_err());
    }

    // Goal: the blob flags take ArangoDB's spellings and refuse anything else with a reason.
    #[test]
    fn blob_flags() {
        let args = defaults();
        assert_eq!(args.rocksdb_blob_compression_type, BlobCompression::None);
        assert!(args.rocksdb_enable_blob_garbage_collection);
        let args = DaemonArgs::try_parse_from([
            "tickshipd",
            "--rocksdb.blob-compression-type",
            "zstd",
            "--rocksdb.enable-blob-garbage-collection",
            "false",
            "--rocksdb.blob-garbage-collection-age-cutoff",
            "0.5",
        ])
        .expect("flags");
        assert_eq!(args.rocksdb_blob_compression_type, BlobCompression::Zstd);
        assert!(!args.rocksdb_enable_blob_garbage_collection);
        assert_eq!(args.rocksdb_blob_garbage_collection_age_cutoff, 0.5);
        let refused =
            DaemonArgs::try_parse_from(["tickshipd", "--rocksdb.blob-compression-type", "gzip"])
                .expect_err("gzip");
        assert!(
            refused
                .to_string()
                .contains("expected one of none, lz4, zstd"),
            "{refused}"
        );
        assert!(DaemonArgs::try_parse_from([
            "tickshipd",
            "--rocksdb.blob-garbage-collection-age-cutoff",
            "1.5"
        ])
        .is_err());
    }

    // Goal: counts the store cannot use are refused with the range, not moved into it.
    #[test]
    fn counts_out_of_range_are_refused() {
        for (flag, low, high) in [
            ("--rocksdb.max-write-buffer-number", "2", "64"),
            ("--replication.applier-threads", "0", "1024"),
        ] {
            for fine in [low, high] {
                assert!(DaemonArgs::try_parse_from(["tickshipd", flag, fine]).is_ok());
            }
            let below = low.parse::<i64>().unwrap() - 1;
            let above = high.parse::<i64>().unwrap() + 1;
            for wrong in [below.to_string(), above.to_string(), "many".to_string()] {
                let refused = DaemonArgs::try_parse_from(["tickshipd", &format!("{flag}={wrong}")])
                    .expect_err("out of range");
                assert!(
                    refused
                        .to_string()
                        .contains(&format!("is not a whole number from {low} to {high}")),
                    "{flag} {wrong}: {refused}"
                );
            }
        }
        let args = DaemonArgs::try_parse_from([
            "tickshipd",
            "--rocksdb.max-write-buffer-number",
            "64",
            "--replication.applier-threads",
            "1024",
        ])
        .unwrap();
        assert_eq!(args.rocksdb_max_write_buffer_number, 64);
        assert_eq!(args.applier_threads, 1024);
    }

    // Goal: the level-0 triggers take ArangoDB's spellings, default to the store's defaults and
    // refuse 0.
    #[test]
    fn level0_flags() {
        let args = defaults();
        let defaults = tickship_storage::docstore::StoreOptions::default();
        assert_eq!(
            (
                args.rocksdb_level0_compaction_trigger,
                args.rocksdb_level0_slowdown_trigger,
                args.rocksdb_level0_stop_trigger
            ),
            (
                defaults.level0_compaction_trigger,
                defaults.level0_slowdown_trigger,
                defaults.level0_stop_trigger
            )
        );
        let args = DaemonArgs::try_parse_from([
            "tickshipd",
            "--rocksdb.level0-compaction-trigger",
            "2",
            "--rocksdb.level0-slowdown-trigger",
            "16",
            "--rocksdb.level0-stop-trigger",
            "256",
        ])
        .expect("flags");
        assert_eq!(args.rocksdb_level0_compaction_trigger, 2);
        assert_eq!(args.rocksdb_level0_slowdown_trigger, 16);
        assert_eq!(args.rocksdb_level0_stop_trigger, 256);
        assert!(DaemonArgs::try_parse_from([
            "tickshipd",
            "--rocksdb.level0-compaction-trigger",
            "0"
        ])
        .is_err());
    }

    /// The arguments with every flag at its default.
    fn defaults() -> DaemonArgs {
        DaemonArgs::try_parse_from(["tickshipd"]).expect("defaults")
    }

    /// `flag` set to `value`, as `pick` reads it from the parsed arguments.
    fn parse_flag<T>(
        flag: &str,
        value: &str,
        pick: impl Fn(DaemonArgs) -> T,
    ) -> Result<T, clap::Error> {
        DaemonArgs::try_parse_from(["tickshipd", flag, value]).map(pick)
    }

    #[test]
    fn max_open_files_takes_auto_unlimited_or_a_count() {
        let parse = |value: &str| {
            parse_flag("--rocksdb.max-open-files", value, |a| {
                a.rocksdb_max_open_files
            })
        };
        let args = defaults();
        assert_eq!(args.rocksdb_max_open_files, 0);
        assert_eq!(parse("-1").expect("-1"), -1);
        assert_eq!(parse("5000").expect("5000"), 5000);
        assert!(parse("-2").is_err());
        assert!(parse("many").is_err());
    }

    // Goal: the level base takes ArangoDB's spelling, defaults to the store's default and
    // refuses levels too small to hold a table file.
    #[test]
    fn level_base_flag() {
        let parse = |value: &str| {
            parse_flag("--rocksdb.max-bytes-for-level-base", value, |a| {
                a.rocksdb_max_bytes_for_level_base
            })
        };
        let args = defaults();
        assert_eq!(
            args.rocksdb_max_bytes_for_level_base,
            tickship_storage::docstore::StoreOptions::default().max_bytes_for_level_base
        );
        assert_eq!(parse("268435456").expect("256 MiB"), 256 << 20);
        assert!(parse("1024").is_err());
        assert!(parse("big").is_err());
    }

    // Goal: sizes take binary and decimal units in any case, plain bytes and fractions, and
    // refuse anything else with the units it knows.
    #[test]
    fn sizes_take_units() {
        assert_eq!(size_u64("4096"), Ok(4096));
        assert_eq!(size_u64("64MiB"), Ok(64 << 20));
        assert_eq!(size_u64("64mib"), Ok(64 << 20));
        assert_eq!(size_u64("1GiB"), Ok(1 << 30));
        assert_eq!(size_u64("1.5GiB"), Ok(3 << 29));
        assert_eq!(size_u64("512 KiB"), Ok(512 << 10));
        assert_eq!(size_u64("64MB"), Ok(64_000_000));
        assert_eq!(size_u64("2k"), Ok(2000));
        assert_eq!(size_u64("7b"), Ok(7));
        assert!(size_u64("64 MiBs").unwrap_err().contains("unknown unit"));
        assert!(size_u64("MiB").is_err());
        assert!(size_u64("-1").is_err());
        assert!(size_u64("1.5").is_err());
        assert!(size_u64("99999999999TiB")
            .unwrap_err()
            .contains("too large"));
        let args = DaemonArgs::try_parse_from(["tickshipd", "--rocksdb.block-cache-size", "1GiB"])
            .expect("units");
        assert_eq!(args.rocksdb_block_cache_size, 1 << 30);
        assert_eq!(defaults().max_document_bytes, 16 << 20);
        assert_eq!(defaults().replication_receive_buffer_size, 1 << 20);
        assert!(DaemonArgs::try_parse_from([
            "tickshipd",
            "--replication.receive-buffer-size",
            "1KiB"
        ])
        .is_err());
    }

    #[test]
    fn documents_in_wal_flag() {
        let args = defaults();
        assert!(args.rocksdb_documents_in_wal);
        let parse = |value: &str| {
            parse_flag("--rocksdb.documents-in-wal", value, |a| {
                a.rocksdb_documents_in_wal
            })
        };
        assert!(parse("true").expect("true"));
        assert!(!parse("false").expect("false"));
        assert!(parse("yes please").is_err());
    }

    #[test]
    fn low_priority_compactions_flag() {
        let parse = |value: &str| {
            parse_flag("--rocksdb.low-priority-compactions", value, |a| {
                a.rocksdb_low_priority_compactions
            })
        };
        let args = defaults();
        assert!(args.rocksdb_low_priority_compactions);
        assert!(!parse("false").expect("false"));
        assert!(parse("true").expect("true"));
        assert!(parse("maybe").is_err());
    }

    #[test]
    fn replication_thread_nice_flag() {
        let parse = |value: &str| {
            parse_flag("--replication.thread-nice", value, |a| {
                a.replication_thread_nice
            })
        };
        let args = defaults();
        assert_eq!(args.replication_thread_nice, -5);
        assert_eq!(parse("0").expect("0"), 0);
        assert_eq!(parse("-20").expect("-20"), -20);
        assert_eq!(parse("19").expect("19"), 19);
        assert!(parse("-21").is_err());
        assert!(parse("20").is_err());
    }
}
