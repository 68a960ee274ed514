//! `tickship dump`: arangodump for tickship. A batch holds a read view of the leader at one
//! tick; each collection's documents as of that tick go to `<name>_<md5>.data.json[.gz]` beside
//! its `.structure.json`, several collections at once, in arangodump's directory layout and with
//! its printed lines, so that `Last tick provided by server is: N` is the tick a follower restored
//! from the dump starts from. Memory stays at one chunk per thread whatever the data's size.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::client::Client;

#[derive(clap::Args)]
pub struct DumpArgs {
    /// Directory to write the dump to (created; an existing one only with --overwrite).
    #[arg(long = "output-directory", value_name = "DIR", default_value = "dump")]
    pub output_directory: PathBuf,
    /// Dump only this collection (repeatable). Naming a system collection includes it.
    #[arg(long = "collection", value_name = "NAME")]
    pub collections: Vec<String>,
    /// Dump system collections (names starting with `_`) too.
    #[arg(long = "include-system-collections", num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub include_system: bool,
    /// Collections dumped at once.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub threads: usize,
    /// gzip the data files (`.data.json.gz`).
    #[arg(long = "compress-output", num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub compress: bool,
    /// Write into an existing output directory, replacing the files of the dump there.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub overwrite: bool,
    /// Largest chunk asked for in one request; chunks grow to it from --initial-batch-size.
    #[arg(long = "batch-size", default_value = "64MiB", value_parser = crate::config::size_usize, value_name = "BYTES")]
    pub batch_size: usize,
    /// First chunk asked for.
    #[arg(long = "initial-batch-size", default_value = "8MiB", value_parser = crate::config::size_usize, value_name = "BYTES")]
    pub initial_batch_size: usize,
    /// A progress bar on a terminal (plain lines otherwise).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub progress: bool,
}

/// arangodump's name of a collection's files: `<name>_<md5 of name>`.
pub fn file_stem(name: &str) -> String {
    use md5::Digest;
    let digest = md5::Md5::digest(name.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{name}_{hex}")
}

/// Writes `bytes` to `path` and syncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

/// Totals shared by the threads.
#[derive(Default)]
struct Totals {
    bytes: AtomicU64,
    documents: AtomicU64,
    batches: AtomicU64,
}

pub fn run(client: &Client, database: &str, username: &str, args: DumpArgs) -> Result<()> {
    let started = Instant::now();
    let version = client.call("GET", "/_api/version", None)?;
    println!(
        "Connected to ArangoDB '{}', version: {}, database: '{database}', username: '{username}'",
        client.endpoint(),
        version["version"].as_str().unwrap_or("?")
    );
    let dir = &args.output_directory;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("read {}", dir.display()))?
            .next()
            .is_none();
        if !empty && !args.overwrite {
            bail!(
                "output directory '{}' already exists. use \"--overwrite true\" to overwrite data in it",
                dir.display()
            );
        }
    } else {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let threads = args.threads.clamp(1, 64);
    println!(
        "Writing dump to output directory '{}' with {threads} thread(s)",
        dir.display()
    );
    let server_id = u64::from_le_bytes(crate::util::random_bytes::<8>()) >> 12;
    let batch = client.call(
        "POST",
        &format!("/_api/replication/batch?serverId={server_id}&clientInfo=tickship-dump"),
        Some(json!({"ttl": 600})),
    )?;
    let batch_id = batch["id"]
        .as_str()
        .context("the server's batch has no id")?
        .to_string();
    let result = dump_batch(client, database, &args, threads, &batch_id, started);
    // The batch goes whatever happened; its TTL ends it otherwise.
    let _ = client.raw(
        "DELETE",
        &format!("/_api/replication/batch/{batch_id}"),
        None,
    );
    result
}

fn dump_batch(
    client: &Client,
    database: &str,
    args: &DumpArgs,
    threads: usize,
    batch_id: &str,
    started: Instant,
) -> Result<()> {
    let dir = &args.output_directory;
    let include_system = args.include_system || args.collections.iter().any(|c| c.starts_with('_'));
    let inventory = client.call(
        "GET",
        &format!("/_api/replication/inventory?batchId={batch_id}&includeSystem={include_system}"),
        None,
    )?;
    let tick = inventory["tick"]
        .as_str()
        .context("the inventory has no tick")?
        .to_string();
    println!("Last tick provided by server is: {tick}");
    write_synced(&dir.join("ENCRYPTION"), b"none")?;
    let dump_json = json!({
        "database": database,
        "lastTickAtDumpStart": tick,
        "properties": inventory["properties"],
        "useEnvelope": false,
        // Every key once per data file (a snapshot's scan): a restore may load chunks in any
        // order. Not written by arangodump.
        "snapshot": true,
    });
    write_synced(&dir.join("dump.json"), dump_json.to_string().as_bytes())?;
    let mut collections: Vec<Value> = inventory["collections"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| {
            let name = c["parameters"]["name"].as_str().unwrap_or("");
            (args.collections.is_empty() || args.collections.iter().any(|n| n == name))
                && (include_system || !name.starts_with('_'))
        })
        .collect();
    for wanted in &args.collections {
        if !collections
            .iter()
            .any(|c| c["parameters"]["name"].as_str() == Some(wanted))
        {
            bail!("collection '{wanted}' not found in database '{database}'");
        }
    }
    // Big first is not known; by name keeps runs comparable.
    collections.sort_by(|a, b| {
        a["parameters"]["name"]
            .as_str()
            .cmp(&b["parameters"]["name"].as_str())
    });
    let total_docs: u64 = collections
        .iter()
        .map(|c| c["parameters"]["count"].as_u64().unwrap_or(0))
        .sum();
    let bar = progress_bar(args.progress, total_docs);
    let totals = Totals::default();
    let next = AtomicUsize::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let done: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.min(collections.len().max(1)) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(collection) = collections.get(index) else {
                    break;
                };
                if !failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty()
                {
                    break;
                }
                let name = collection["parameters"]["name"].as_str().unwrap_or("");
                match dump_collection(client, args, batch_id, collection, &totals, &bar) {
                    Ok(()) => done
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(name.to_string()),
                    Err(e) => failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("collection '{name}': {e:#}")),
                }
            });
        }
    });
    bar.finish_and_clear();
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    let done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    if !failures.is_empty() {
        let mut done = done;
        done.sort();
        bail!(
            "{}\ncomplete in '{}': {} of {} collection(s){}",
            failures.join("\n"),
            dir.display(),
            done.len(),
            collections.len(),
            if done.is_empty() {
                String::new()
            } else {
                format!(" ({})", done.join(", "))
            }
        );
    }
    crate::util::fsync_dir(dir)?;
    println!(
        "Processed {} collection(s) in {:.3} s total time. Wrote {} byte(s) into datafiles, sent {} batch(es) in total.",
        collections.len(),
        started.elapsed().as_secs_f64(),
        totals.bytes.load(Ordering::Relaxed),
        totals.batches.load(Ordering::Relaxed)
    );
    Ok(())
}

pub(super) fn progress_bar(wanted: bool, total_docs: u64) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if !wanted || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total_docs), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:30} {human_pos}/{human_len} docs  {msg}  {per_sec}  ETA {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// The data file's writer: plain or gzip, buffered, synced when finished.
enum DataFile {
    Plain(BufWriter<File>),
    Gzip(flate2::write::GzEncoder<BufWriter<File>>),
}

impl DataFile {
    fn create(path: &Path, gzip: bool) -> Result<DataFile> {
        let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
        let writer = BufWriter::with_capacity(1 << 20, file);
        Ok(if gzip {
            DataFile::Gzip(flate2::write::GzEncoder::new(
                writer,
                flate2::Compression::fast(),
            ))
        } else {
            DataFile::Plain(writer)
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            DataFile::Plain(w) => w.write_all(bytes),
            DataFile::Gzip(w) => w.write_all(bytes),
        }
    }

    fn finish(self) -> std::io::Result<()> {
        let writer = match self {
            DataFile::Plain(w) => w,
            DataFile::Gzip(w) => w.finish()?,
        };
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

fn dump_collection(
    client: &Client,
    args: &DumpArgs,
    batch_id: &str,
    collection: &Value,
    totals: &Totals,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let parameters = &collection["parameters"];
    let name = parameters["name"]
        .as_str()
        .context("a collection without a name")?;
    let edge = parameters["type"].as_u64() == Some(3);
    client.call(
        "PUT",
        &format!("/_api/replication/batch/{batch_id}"),
        Some(json!({"ttl": 600})),
    )?;
    let stem = file_stem(name);
    let dir = &args.output_directory;
    let structure = json!({"parameters": parameters, "indexes": collection["indexes"]});
    write_synced(
        &dir.join(format!("{stem}.structure.json")),
        structure.to_string().as_bytes(),
    )?;
    let message = format!(
        "# Dumping {} collection '{name}'...",
        if edge { "edge" } else { "document" }
    );
    if bar.is_hidden() {
        println!("{message}");
    } else {
        bar.println(message);
    }
    let path = dir.join(format!(
        "{stem}.data.json{}",
        if args.compress { ".gz" } else { "" }
    ));
    // The other form of the data file, from an earlier dump into this directory, would be
    // restored instead of this one.
    let other = dir.join(format!(
        "{stem}.data.json{}",
        if args.compress { "" } else { ".gz" }
    ));
    let _ = std::fs::remove_file(other);
    let mut file = DataFile::create(&path, args.compress)?;
    let batch_max = args.batch_size.max(128 << 10);
    let mut chunk = args.initial_batch_size.clamp(128 << 10, batch_max);
    let query = format!(
        "/_api/replication/dump?collection={}&batchId={batch_id}&useEnvelope=false",
        crate::util::percent_encode(name)
    );
    loop {
        let mut documents = 0u64;
        let (status, bytes, more) =
            client.get_streamed(&format!("{query}&chunkSize={chunk}"), &mut |piece| {
                file.write_all(piece)
                    .with_context(|| format!("write {}", path.display()))?;
                documents += memchr_count(piece);
                Ok(())
            })?;
        totals.batches.fetch_add(1, Ordering::Relaxed);
        if status == 204 || bytes == 0 {
            break;
        }
        totals.bytes.fetch_add(bytes, Ordering::Relaxed);
        totals.documents.fetch_add(documents, Ordering::Relaxed);
        bar.inc(documents);
        bar.set_message(format!(
            "{} written",
            indicatif::HumanBytes(totals.bytes.load(Ordering::Relaxed))
        ));
        if !more {
            break;
        }
        chunk = (chunk + chunk / 2).min(batch_max);
    }
    file.finish()
        .with_context(|| format!("write {}", path.display()))
}

fn memchr_count(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}
