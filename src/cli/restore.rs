//! `tickship restore`: arangorestore for tickship. Reads a dump directory (tickship's, or
//! arangodump's of ArangoDB 3.x: plain or gzip, bare documents or `{"type":2300,"data":…}`
//! lines, 2302 removals) and sends each collection's structure and then its data in chunks cut
//! at line ends to `restore-collection` and `restore-data`, several collections at once. The
//! server stores the data without taking ticks, so a follower restored from its leader's dump can
//! start from the dump's tick. Memory stays at one chunk per thread.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::client::Client;

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The dump directory to read.
    #[arg(long = "input-directory", value_name = "DIR", default_value = "dump")]
    pub input_directory: PathBuf,
    /// Restore only this collection (repeatable).
    #[arg(long = "collection", value_name = "NAME")]
    pub collections: Vec<String>,
    /// Restore system collections (names starting with `_`) too.
    #[arg(long = "include-system-collections", num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub include_system: bool,
    /// Create the database (--server.database) if it does not exist.
    #[arg(long = "create-database", num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub create_database: bool,
    /// Replace collections that exist (without it an existing collection stops the restore).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub overwrite: bool,
    /// Create the collections (false: load data into collections that exist).
    #[arg(long = "create-collection", num_args = 0..=1, default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub create_collection: bool,
    /// Load the data files (false: structure only).
    #[arg(long = "import-data", num_args = 0..=1, default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub import_data: bool,
    /// Collections restored at once.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub threads: usize,
    /// Bytes of data sent in one request (cut at a line end).
    #[arg(long = "batch-size", default_value = "8MiB", value_parser = crate::config::size_usize, value_name = "BYTES")]
    pub batch_size: usize,
}

/// One collection of the dump.
struct Planned {
    name: String,
    structure_path: PathBuf,
    structure: Value,
    data: Option<PathBuf>,
}

#[derive(Default)]
struct Totals {
    read: AtomicU64,
    sent: AtomicU64,
    batches: AtomicU64,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

pub fn run(client: &Client, database: &str, args: RestoreArgs) -> Result<()> {
    let started = Instant::now();
    let dir = &args.input_directory;
    if !dir.is_dir() {
        bail!("input directory '{}' does not exist", dir.display());
    }
    match std::fs::read_to_string(dir.join("ENCRYPTION")) {
        Ok(cipher) if cipher.trim() != "none" && !cipher.trim().is_empty() => bail!(
            "the dump in '{}' is encrypted ({}/ENCRYPTION says '{}'); tickship cannot decrypt \
             it: dump again without --encryption.keyfile",
            dir.display(),
            dir.display(),
            cipher.trim()
        ),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("read {}/ENCRYPTION", dir.display())),
    }
    let dump_json = dir.join("dump.json");
    let (tick, unique_keys) = if dump_json.exists() {
        let meta = read_json(&dump_json)?;
        (
            meta["lastTickAtDumpStart"].as_str().map(str::to_owned),
            meta["snapshot"] == json!(true),
        )
    } else {
        (None, false)
    };
    println!(
        "Connected to ArangoDB '{}', database: '{database}'",
        client.endpoint()
    );
    let plan = plan(dir, &args)?;
    let threads = args.threads.clamp(1, 64);
    let totals = Totals::default();
    let next = AtomicUsize::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let done: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // System collections, then document before edge collections, each group by name.
    std::thread::scope(|scope| {
        for _ in 0..threads.min(plan.len().max(1)) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(planned) = plan.get(index) else {
                    break;
                };
                if !failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty()
                {
                    break;
                }
                match restore_collection(client, &args, planned, &totals, unique_keys) {
                    Ok(()) => done
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(planned.name.clone()),
                    Err(e) => failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("collection '{}': {e:#}", planned.name)),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    done.sort();
    if !failures.is_empty() {
        bail!(
            "{}\ncomplete: {} of {} collection(s){}; the others are missing or partly loaded: \
             mend the dump and restore them again with --overwrite true",
            failures.join("\n"),
            done.len(),
            plan.len(),
            if done.is_empty() {
                String::new()
            } else {
                format!(" ({})", done.join(", "))
            }
        );
    }
    println!(
        "Processed {} collection(s) in {:.3} s, read {} byte(s) from datafiles, sent {} data batch(es) of {} byte(s) total size",
        plan.len(),
        started.elapsed().as_secs_f64(),
        totals.read.load(Ordering::Relaxed),
        totals.batches.load(Ordering::Relaxed),
        totals.sent.load(Ordering::Relaxed)
    );
    if let Some(tick) = tick {
        println!("The dump was taken at tick {tick}: a follower restored from it starts there (tickship replication start --from {tick}).");
    }
    Ok(())
}

/// The collections to restore, in the order they are restored, each with its data file.
fn plan(dir: &Path, args: &RestoreArgs) -> Result<Vec<Planned>> {
    let mut structures = Vec::new();
    let mut data_files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("read {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".structure.json") {
            structures.push((stem.to_string(), entry.path()));
        } else if let Some(stem) = name
            .strip_suffix(".data.json.gz")
            .or_else(|| name.strip_suffix(".data.json"))
        {
            data_files.push((stem.to_string(), entry.path()));
        }
    }
    for (stem, path) in &data_files {
        if !structures.iter().any(|(s, _)| s == stem) {
            bail!(
                "data file {} has no structure file {stem}.structure.json beside it: the dump is \
                 incomplete",
                path.display()
            );
        }
    }
    let mut plan = Vec::new();
    for (stem, structure_path) in structures {
        let structure = read_json(&structure_path)?;
        let name = structure["parameters"]["name"]
            .as_str()
            .with_context(|| format!("{} has no parameters.name", structure_path.display()))?
            .to_string();
        let wanted = args.collections.is_empty() || args.collections.contains(&name);
        let system_ok =
            !name.starts_with('_') || args.include_system || args.collections.contains(&name);
        if !wanted || !system_ok {
            continue;
        }
        // arangodump's names first, then the older ones without the hash.
        let data = [
            format!("{stem}.data.json"),
            format!("{stem}.data.json.gz"),
            format!("{name}.data.json"),
            format!("{name}.data.json.gz"),
        ]
        .into_iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file());
        plan.push(Planned {
            name,
            structure_path,
            structure,
            data,
        });
    }
    for wanted in &args.collections {
        if !plan.iter().any(|p| &p.name == wanted) {
            bail!(
                "collection '{wanted}': no structure file for it in '{}'",
                dir.display()
            );
        }
    }
    plan.sort_by_key(|p| {
        (
            !p.name.starts_with('_'),
            p.structure["parameters"]["type"].as_u64() == Some(3),
            p.name.clone(),
        )
    });
    Ok(plan)
}

fn restore_collection(
    client: &Client,
    args: &RestoreArgs,
    planned: &Planned,
    totals: &Totals,
    unique_keys: bool,
) -> Result<()> {
    let name = &planned.name;
    let edge = planned.structure["parameters"]["type"].as_u64() == Some(3);
    let kind = if edge { "edge" } else { "document" };
    if args.create_collection {
        println!("# Re-creating {kind} collection '{name}'...");
        client.call(
            "PUT",
            &format!(
                "/_api/replication/restore-collection?overwrite={}&createDatabase={}",
                args.overwrite, args.create_database
            ),
            Some(json!({
                "parameters": planned.structure["parameters"],
                "indexes": [],
            })),
        )?;
    }
    let secondary: Vec<&Value> = planned.structure["indexes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| !matches!(i["type"].as_str(), Some("primary" | "edge")))
        .collect();
    if !secondary.is_empty() {
        println!(
            "# Collection '{name}': {} index(es) in {} not restored: tickship serves documents \
             by key and keeps no secondary indexes",
            secondary.len(),
            planned.structure_path.display()
        );
    }
    if !args.import_data {
        return Ok(());
    }
    let Some(path) = &planned.data else {
        bail!(
            "no data file for it beside {} (an empty collection has an empty one)",
            planned.structure_path.display()
        );
    };
    println!("# Loading data into {kind} collection '{name}'...");
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let counted = file;
    let gzip = path.extension().is_some_and(|e| e == "gz");
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(counted))
    } else {
        Box::new(counted)
    };
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let query = format!(
        "/_api/replication/restore-data?collection={}&useEnvelope=false",
        crate::util::percent_encode(name)
    );
    // A snapshot dump of tickship has each key once, so its chunks may be stored in any order
    // and several go at once; another dump may hold a key twice (a 2302 removal after it), so
    // its chunks go one after the other, in order.
    let in_flight = if unique_keys { 2 } else { 1 };
    let (sender, receiver) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(in_flight);
    let receiver = Mutex::new(receiver);
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let read_result = std::thread::scope(|scope| -> Result<()> {
        for _ in 0..in_flight {
            scope.spawn(|| loop {
                let next = receiver.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok((chunk, first_line)) = next else { break };
                // After a failure the rest is drained unsent, so the reader never waits on a
                // full channel that nobody empties.
                if failed.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                    continue;
                }
                if let Err(e) = send(client, &query, chunk, path, first_line, totals) {
                    failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                }
            });
        }
        let mut chunk: Vec<u8> = Vec::with_capacity(args.batch_size + (1 << 16));
        let mut first_line = 1usize;
        let mut lines_in_chunk = 0usize;
        let mut offset: u64 = 0;
        let result = loop {
            if failed.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                break Ok(());
            }
            let before = chunk.len();
            let read = match reader.read_until(b'\n', &mut chunk) {
                Ok(read) => read,
                Err(e) => {
                    break Err(anyhow::anyhow!(
                        "{}: cannot read past byte {} (line {}) of its {}: {e}",
                        path.display(),
                        offset + before as u64,
                        first_line + lines_in_chunk,
                        if gzip { "uncompressed data" } else { "data" }
                    ))
                }
            };
            if read > 0 {
                lines_in_chunk += 1;
                totals.read.fetch_add(read as u64, Ordering::Relaxed);
            }
            if (read == 0 && !chunk.is_empty()) || chunk.len() >= args.batch_size {
                offset += chunk.len() as u64;
                let full =
                    std::mem::replace(&mut chunk, Vec::with_capacity(args.batch_size + (1 << 16)));
                if sender.send((full, first_line)).is_err() {
                    break Ok(());
                }
                first_line += lines_in_chunk;
                lines_in_chunk = 0;
            }
            if read == 0 {
                break Ok(());
            }
        };
        drop(sender);
        result
    });
    if let Some(error) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(error);
    }
    read_result
}

/// Sends one chunk; a bad line is reported by its line in the file.
fn send(
    client: &Client,
    query: &str,
    chunk: Vec<u8>,
    path: &Path,
    first_line: usize,
    totals: &Totals,
) -> Result<()> {
    totals.batches.fetch_add(1, Ordering::Relaxed);
    totals.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    client
        .bytes("PUT", query, chunk, "application/x-arango-dump")
        .map(|_| ())
        .map_err(|e| {
            let text = format!("{e:#}");
            // The server numbers the lines of the chunk: name the line of the file.
            if let Some((line, rest)) = text
                .split_once("line ")
                .and_then(|(_, after)| after.split_once(" of the data: "))
                .and_then(|(n, rest)| n.parse::<usize>().ok().map(|n| (n, rest)))
            {
                anyhow::anyhow!("{} line {}: {rest}", path.display(), first_line + line - 1)
            } else {
                anyhow::anyhow!("{}: {text}", path.display())
            }
        })
}
