//! `tickshipd`'s command-line flags, with ArangoDB's names where one exists.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Parser};
use tickship_storage::docstore::BlobCompression;

/// tickshipd: a document store whose write-ahead log followers replicate (leader role).
#[derive(Parser, Debug, Clone)]
#[command(name = "tickshipd", version, about, long_about = None)]
pub struct DaemonArgs {
    /// Where to listen for HTTP (and, later, QUIC replication on the same port over UDP):
    /// tcp://HOST:PORT. Port 0 picks a free port; the chosen address is printed at start.
    #[arg(long = "server.endpoint", default_value = "tcp://127.0.0.1:8529")]
    pub endpoint: String,

    /// Data directory: the WAL (wal/), the document store (store/), credentials, server id.
    #[arg(long = "database.directory", default_value = "./tickship-data")]
    pub directory: PathBuf,

    /// Require authentication (HTTP Basic or JWT from /_open/auth). Turn off explicitly.
    #[arg(long = "server.authentication", default_value_t = true, action = ArgAction::Set)]
    pub authentication: bool,

    /// Password of user root. Also TICKSHIP_ROOT_PASSWORD, or --server.password-file. With none
    /// given on first start, one is generated into DIR/ROOT_PASSWORD (mode 0600).
    #[arg(long = "server.password")]
    pub password: Option<String>,

    /// File holding the password of user root (first line).
    #[arg(long = "server.password-file")]
    pub password_file: Option<PathBuf>,

    /// Largest document accepted, in bytes (error 1216 above it).
    #[arg(long = "server.maximal-document-size", default_value_t = 16 << 20)]
    pub max_document_bytes: usize,

    /// Largest request body accepted, in bytes.
    #[arg(long = "server.maximal-body-size", default_value_t = 256 << 20)]
    pub max_body_bytes: usize,

    /// Size of a WAL segment file in bytes (preallocated).
    #[arg(long = "wal.segment-size", default_value_t = 64 << 20)]
    pub wal_segment_size: u64,

    /// When writes are made durable: group (fdatasync per group commit, acknowledge after it),
    /// interval (acknowledge after the write, fdatasync every --wal.sync-interval ms), never.
    #[arg(long = "wal.sync-policy", default_value = "group")]
    pub wal_sync_policy: String,

    /// Milliseconds between fdatasyncs with --wal.sync-policy interval.
    #[arg(long = "wal.sync-interval", default_value_t = 100)]
    pub wal_sync_interval_ms: u64,

    /// WAL I/O engine: sync (buffered pwrite + fdatasync), uring (io_uring with O_DIRECT), or
    /// auto (uring where the kernel allows it, else sync). The default is sync: the store applier
    /// and followers read what was just written, which stays in the page cache with buffered
    /// writes but must come back from disk after O_DIRECT ones (measured: +15% single-document
    /// inserts, and no re-reads).
    #[arg(long = "wal.io-engine", default_value = "sync")]
    pub wal_io_engine: String,

    /// Sealed WAL segments always kept.
    #[arg(long = "wal.historic-logfiles", default_value_t = 10)]
    pub wal_historic_logfiles: usize,

    /// Seconds a WAL segment must have been unneeded before it is deleted.
    #[arg(long = "wal.file-timeout", default_value_t = 10.0)]
    pub wal_file_timeout: f64,

    /// Seconds after start during which no WAL segment is deleted.
    #[arg(long = "wal.file-timeout-initial", default_value_t = 180.0)]
    pub wal_file_timeout_initial: f64,

    /// Largest total size of sealed WAL segments in bytes, overriding replication clients'
    /// needs (they then get error 1414); 0 = unlimited.
    #[arg(long = "wal.archive-size-limit", default_value_t = 0)]
    pub wal_archive_size_limit: u64,

    /// Seconds a replication client keeps its hold on the WAL after its last request.
    #[arg(long = "replication.client-ttl", default_value_t = 7200.0)]
    pub replication_client_ttl: f64,

    /// Seconds between flushes of the document store while it has unflushed changes (bounds
    /// the WAL a restart replays).
    #[arg(long = "store.flush-interval", default_value_t = 30.0)]
    pub store_flush_interval: f64,

    /// Bytes of one memtable of the document store (RocksDB).
    #[arg(long = "rocksdb.write-buffer-size", default_value_t = 64 << 20)]
    pub rocksdb_write_buffer_size: usize,

    /// Bytes of one memtable while this server follows a leader and is less than ~8k ticks
    /// behind it (0: --rocksdb.write-buffer-size always). Smaller memtables flush in shorter
    /// bursts, which keeps the follower's lag low; more than 64k ticks behind, the follower
    /// switches to --rocksdb.write-buffer-size, which catches up faster. A store keeping its
    /// documents in the WAL keeps these memtables however far behind (they hold keys only).
    /// Default: 2 MiB with documents in the WAL, 16 MiB without.
    #[arg(long = "replication.tailing-write-buffer-size")]
    pub replication_tailing_write_buffer_size: Option<usize>,

    /// Memtables per column family: the active one and those waiting to be flushed (2..64).
    /// A follower keeping its documents in the WAL holds at most 2 document memtables while it
    /// follows (writes wait for a flush rather than fill a third).
    #[arg(long = "rocksdb.max-write-buffer-number", default_value_t = 4)]
    pub rocksdb_max_write_buffer_number: usize,

    /// Bytes of all memtables together (0: no limit but the two above). Past it the store
    /// flushes early; far past it writes wait for flushes. Bounds the memory of a follower far
    /// behind its leader.
    #[arg(long = "rocksdb.total-write-buffer-size", default_value_t = 128 << 20)]
    pub rocksdb_total_write_buffer_size: usize,

    /// Files (SSTs and blob files) the document store keeps open at most; the least recently
    /// used one is closed to open another. 0: derived from the process's descriptor limit
    /// (raised to its hard limit at start), leaving half of it, at most 4096, to the rest of the
    /// server. -1: every file stays open, as RocksDB's default, which fails reads with "Too many
    /// open files" once the store has more files than the limit allows.
    #[arg(long = "rocksdb.max-open-files", default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-1..))]
    pub rocksdb_max_open_files: i32,

    /// Bytes of the document store's block cache (index, filter and data blocks).
    #[arg(long = "rocksdb.block-cache-size", default_value_t = 256 << 20)]
    pub rocksdb_block_cache_size: usize,

    /// Compression of each document in the store's blob files: none, lz4 or zstd. The WAL and
    /// replication compress whole blocks either way.
    #[arg(long = "rocksdb.blob-compression-type", default_value = "none")]
    pub rocksdb_blob_compression_type: BlobCompression,

    /// Whether compactions reclaim the space of replaced and removed documents.
    #[arg(long = "rocksdb.enable-blob-garbage-collection", default_value_t = true, action = ArgAction::Set)]
    pub rocksdb_enable_blob_garbage_collection: bool,

    /// The oldest fraction of blob files whose live documents compactions rewrite (0..=1).
    #[arg(long = "rocksdb.blob-garbage-collection-age-cutoff", default_value_t = 0.25, value_parser = fraction)]
    pub rocksdb_blob_garbage_collection_age_cutoff: f64,

    /// Level-0 files of the document store (one per memtable flush) that start a compaction.
    #[arg(long = "rocksdb.level0-compaction-trigger", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub rocksdb_level0_compaction_trigger: u32,

    /// Bytes of the document store's first level below level 0 (its tables hold keys and
    /// blob references, ~10 bytes a document); each level below is ten times larger. A level-0
    /// compaction rewrites up to this much, so RocksDB's 256 MiB made each one rewrite every
    /// key of a store of up to ~28M documents.
    #[arg(long = "rocksdb.max-bytes-for-level-base", default_value_t = 8 << 20, value_parser = clap::value_parser!(u64).range(tickship_storage::docstore::MIN_TABLE_FILE_BYTES..))]
    pub rocksdb_max_bytes_for_level_base: u64,

    /// Level-0 files past which writes to the document store are slowed down.
    #[arg(long = "rocksdb.level0-slowdown-trigger", default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub rocksdb_level0_slowdown_trigger: u32,

    /// Level-0 files past which writes to the document store wait for compaction.
    #[arg(long = "rocksdb.level0-stop-trigger", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub rocksdb_level0_stop_trigger: u32,

    /// Run the document store's compactions at the lowest CPU priority (nice 19), so that they
    /// take what receiving, logging and applying writes leave on a busy machine.
    #[arg(long = "rocksdb.low-priority-compactions", default_value_t = true, action = ArgAction::Set)]
    pub rocksdb_low_priority_compactions: bool,

    /// Keep each document only in the WAL: the document store maps a key to the tick of its
    /// last write and reads the document from the WAL (compressed in 64 KiB frames), instead of
    /// storing it a second time. Before retention deletes a WAL segment, its live documents move
    /// to value files next to the store. Sticky once used: a store that kept documents in the
    /// WAL goes on doing so. `false` on a new data directory stores every document in the store
    /// (RocksDB blob files) as well.
    #[arg(long = "rocksdb.documents-in-wal", default_value_t = true, action = ArgAction::Set)]
    pub rocksdb_documents_in_wal: bool,

    /// Nice value of the threads between a logged change and its visibility: the replication
    /// thread (shipping the log to followers, receiving it from a leader) and the store applier.
    /// They take the CPU before request handling, flushes and compactions; best effort (needs
    /// root or CAP_SYS_NICE); 0 leaves them as they are.
    #[arg(long = "replication.thread-nice", default_value_t = -5, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub replication_thread_nice: i32,

    /// Threads that apply WAL blocks to the document store (received from the leader, or
    /// replayed at start), partitioned by collection and key. 0 = one per core.
    #[arg(long = "replication.applier-threads", default_value_t = 0)]
    pub applier_threads: usize,

    /// UDP address for replication (QUIC): HOST:PORT. Default: the host and port of
    /// --server.endpoint, over UDP.
    #[arg(long = "replication.endpoint")]
    pub replication_endpoint: Option<String>,

    /// Start the replication applier at server start when its configuration says autoStart.
    #[arg(long = "replication.auto-start", default_value_t = true, action = clap::ArgAction::Set)]
    pub replication_auto_start: bool,

    /// As a follower: accept only a leader whose certificate has this SHA-256 fingerprint (hex,
    /// as the leader prints it at start).
    #[arg(long = "replication.leader-fingerprint")]
    pub leader_fingerprint: Option<String>,

    /// As a follower: bytes of the leader's log held in memory at most, once and a quarter: in
    /// QUIC's stream window (sent by the leader, not yet read), and a quarter of it read but
    /// not yet written to this server's WAL. A follower far behind fills both however far
    /// behind it is, so this bounds its memory. The window must cover the link's
    /// bandwidth-delay product: 1 MiB is 84 Mbit/s at 100 ms of round trip and 42 Gbit/s at
    /// 0.2 ms; raise it for a long link.
    /// 1 MiB rather than 4: a follower 1M documents behind peaked at 37 MiB instead of 49–59
    /// and caught up no slower (1.97–2.08 s against 1.89–2.45 s), lag the same.
    #[arg(long = "replication.receive-buffer-size", default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(i64::from(tickship_net::transport::STREAM_WINDOW_MIN)..=(1 << 30)))]
    pub replication_receive_buffer_size: u32,

    /// PEM certificate (chain) for replication's TLS; default: one generated into DIR/tls/.
    #[arg(long = "ssl.certfile")]
    pub ssl_certfile: Option<std::path::PathBuf>,

    /// PEM private key (PKCS#8) for --ssl.certfile.
    #[arg(long = "ssl.keyfile")]
    pub ssl_keyfile: Option<std::path::PathBuf>,

    /// Log level: error, warn, info, debug, trace.
    #[arg(long = "log.level", default_value = "info")]
    pub log_level: String,
}

/// A number from 0 to 1.
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text:?} is not a number from 0 to 1")),
    }
}

/// `tcp://HOST:PORT` (also `http://`, `http+tcp://`) as a socket address.
pub fn parse_endpoint(endpoint: &str) -> anyhow::Result<SocketAddr> {
    let address = ["tcp://", "http+tcp://", "http://", "udp://"]
        .iter()
        .find_map(|scheme| endpoint.strip_prefix(scheme))
        .ok_or_else(|| {
            anyhow::anyhow!("unsupported endpoint {endpoint:?}: expected tcp://HOST:PORT")
        })?;
    let address = address.trim_end_matches('/');
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("cannot resolve endpoint {endpoint:?}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("endpoint {endpoint:?} resolves to no address"))
}

#[cfg(test)]
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
