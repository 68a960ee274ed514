//! Small helpers: ArangoDB's name and key rules, time stamps, random ids.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// ArangoDB's document key rule: 1 to 254 bytes of `[A-Za-z0-9_\-:.@()+,=;$!*'%]`.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 254
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-:.@()+,=;$!*'%".contains(&b))
}

/// ArangoDB's traditional collection name rule: a letter (or `_` for system collections)
/// followed by letters, digits, `_` and `-`, at most 256 bytes.
pub fn valid_collection_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_');
    first_ok
        && name.len() <= 256
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// ArangoDB's traditional database name rule (as for collections, at most 64 bytes).
pub fn valid_database_name(name: &str) -> bool {
    valid_collection_name(name) && name.len() <= 64
}

/// `YYYY-MM-DDTHH:MM:SSZ`, as ArangoDB prints times in state documents.
pub fn iso8601(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .expect("the operating system gives random bytes (getrandom(2), else /dev/urandom)");
    bytes
}

/// Lenient boolean query parameter: `1`/`true`/`yes` (any case) is true, `0`/`false`/`no` false,
/// anything else (including arangojs' `undefined`) the default.
pub fn query_bool(value: Option<&str>, default: bool) -> bool {
    match value.map(str::to_ascii_lowercase).as_deref() {
        Some("1" | "true" | "yes" | "on") => true,
        Some("0" | "false" | "no" | "off") => false,
        _ => default,
    }
}

/// Writes `contents` to `path` readable by the owner only, atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("create {}", temp.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temp, path).with_context(|| format!("rename {}", path.display()))?;
    // The rename is durable only once its directory is.
    sync_dir(path.parent().unwrap_or(Path::new(".")))
        .with_context(|| format!("sync the directory of {}", path.display()))?;
    Ok(())
}

/// Makes `dir`'s entries (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A data directory held by this process: an exclusive `flock` on `DIR/tickshipd.lock`, which
/// names the holder's pid. The kernel releases it when the process ends, however it ends.
pub struct DirectoryLock(#[allow(dead_code)] std::fs::File);

impl DirectoryLock {
    pub fn take(dir: &Path) -> Result<DirectoryLock> {
        use std::io::{Read, Seek};
        use std::os::fd::AsRawFd;
        let path = dir.join("tickshipd.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                anyhow::bail!(
                    "the data directory {} is in use by another tickshipd (pid {}); stop it \
                     first, or give this one its own --database.directory",
                    dir.display(),
                    pid.trim()
                );
            }
            return Err(error).with_context(|| format!("lock {}", path.display()));
        }
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(std::process::id().to_string().as_bytes())?;
        Ok(DirectoryLock(file))
    }
}

/// The process's limit on open file descriptors: the soft limit is raised to the hard one (or to
/// the kernel's `fs.nr_open` if the hard one is unlimited), as a database holding many files
/// needs; returns the soft limit before and after.
pub fn raise_descriptor_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let wanted = limit.rlim_max.min(ceiling);
    if wanted > limit.rlim_cur {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit.rlim_cur = wanted;
    }
    Ok((before, limit.rlim_cur))
}

/// Files the document store may keep open under a descriptor limit of `limit`: what is left
/// after half of the limit, at least 48 and at most 4096, for the rest of the server (WAL
/// segments while they are mapped, clients' and followers' sockets, the runtime's own, and the
/// store's files outside its cache: flush and compaction outputs, its log, manifest and locks);
/// at least 20, RocksDB's minimum. A server at rest holds 27 descriptors; with half of 64 left
/// to it, a scan during a compaction ran out of them.
pub fn store_file_budget(limit: u64) -> i32 {
    let reserve = (limit / 2).clamp(48, 4096);
    limit.saturating_sub(reserve).clamp(20, i32::MAX as u64) as i32
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`). mimalloc asks for
/// them on its arenas (`madvise`), and a huge page is resident in full as soon as one byte of
/// it is touched, and goes back to the system only whole: with them a follower holds far more
/// memory, catching up or idle, and a leader ingests no faster
/// (docs/benchmarks/2026-11-23-follower-memory.md, runs 1 and 2). RocksDB asks for none; the
/// flag affects this process only.
pub fn no_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only this process's flag.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// mimalloc 3's `mi_option_purge_delay` (the crate names no constant for it).
#[cfg(not(feature = "system-allocator"))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Milliseconds mimalloc keeps freed memory before handing it back, unless
/// `MIMALLOC_PURGE_DELAY` says otherwise. mimalloc's default of a second keeps a second's worth of
/// what a follower catching up frees as fast as it receives; purging much sooner slows a leader's
/// batch ingest. This delay holds far less than the default and ingests as fast
/// (docs/benchmarks/2026-11-23-follower-memory.md, runs 1 and 2). A follower's applier purges at
/// once instead (`PurgeAtOnce`).
const PURGE_DELAY_MS: i64 = 100;

/// Sets mimalloc's purge delay to `PURGE_DELAY_MS` unless `MIMALLOC_PURGE_DELAY` is set. Called
/// first in `main`, while that is the only thread.
pub fn purge_sooner() {
    set_purge_delay(PURGE_DELAY_MS);
}

/// Sets mimalloc's purge delay, unless the environment sets it (`MIMALLOC_PURGE_DELAY`), or
/// mimalloc is not 3 (whose option index this is), or not built in (`system-allocator`).
fn set_purge_delay(#[allow(unused_variables)] milliseconds: i64) {
    #[cfg(not(feature = "system-allocator"))]
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: plain integers. mimalloc reads the option each time it schedules a purge, one
        // aligned word: a write while other threads allocate is seen by the next purge.
        unsafe {
            if libmimalloc_sys::mi_version() >= 30000 {
                libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, milliseconds as _);
            }
        }
    }
}

/// mimalloc's purge delay in force; `None` without mimalloc 3 (`system-allocator`).
#[cfg(test)]
fn purge_delay() -> Option<i64> {
    #[cfg(not(feature = "system-allocator"))]
    // SAFETY: reads a plain integer option.
    unsafe {
        if libmimalloc_sys::mi_version() >= 30000 {
            return Some(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64);
        }
    }
    None
}

/// Bytes from which glibc's malloc gives a buffer a mapping of its own, unmapped when freed, and
/// free bytes at the top of a heap above which a free hands them back: 128 KiB, glibc's
/// starting values, made fixed (`release_large_frees`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const GLIBC_RELEASE_BYTES: i32 = 128 << 10;

/// Makes glibc's malloc, which RocksDB allocates through, hand freed buffers of 128 KiB and more
/// back to the system when they are freed. By default glibc raises its mapping threshold to the
/// size of every mapped buffer freed (up to 32 MiB), so after the first flush or compaction its
/// buffers (memtable blocks, table builders, read-ahead) come from the heaps and stay there once
/// freed, scattered among small live allocations until the next `malloc_trim`. Fixed, a far
/// follower's memory peaks lower at about the same speed, and a leader ingests as fast
/// (docs/benchmarks/2026-11-23-follower-memory.md, run 5). Left alone when the environment sets
/// glibc's malloc itself (`GLIBC_TUNABLES` naming `glibc.malloc.`, `MALLOC_MMAP_THRESHOLD_`,
/// `MALLOC_TRIM_THRESHOLD_`). Returns whether it set them. Call it early in `main`.
pub fn release_large_frees() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."))
            || std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
            || std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some();
        if tuned {
            return false;
        }
        // SAFETY: mallopt takes plain integers and glibc's own lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, GLIBC_RELEASE_BYTES) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, GLIBC_RELEASE_BYTES) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// glibc malloc arenas allowed (`M_ARENA_MAX`): one per core of the machines tickship is
/// measured on. glibc's default is eight per core.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const GLIBC_ARENAS: i32 = 2;

/// Limits glibc's malloc, which RocksDB allocates through, to `GLIBC_ARENAS` arenas. Each thread
/// that allocates while the others hold their arenas gets one of its own, up to eight per core,
/// and an arena's freed memory stays with it: an incremental sync's compare, which turns the
/// whole block cache over from several threads, left a 20 GB follower at 709–797 MiB where a
/// 10 GB one peaked at 380 MiB (docs/benchmarks/2026-12-06-initial-sync.md). Left alone when the
/// environment sets it (`MALLOC_ARENA_MAX`, or `GLIBC_TUNABLES` naming `glibc.malloc.arena_max`).
/// Returns whether it set it. Call it first in `main`, before other threads start.
pub fn fewer_malloc_arenas() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"));
        if tuned {
            return false;
        }
        // SAFETY: mallopt takes plain integers and glibc's own lock.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, GLIBC_ARENAS) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Appliers running, each holding a `PurgeAtOnce`.
static PURGING_AT_ONCE: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// While one lives (a follower's applier runs), mimalloc hands freed memory back to the system
/// as it is freed instead of `PURGE_DELAY_MS` later. A follower catching up frees received
/// frames, decoded blocks and apply batches as fast as the leader ships them, and even a short
/// delay holds a sizeable part of its memory; unlike a leader's ingest, it runs no slower for
/// purging at once (docs/benchmarks/2026-11-23-follower-memory.md, run 4).
pub struct PurgeAtOnce(());

impl PurgeAtOnce {
    pub fn new() -> PurgeAtOnce {
        let mut holders = PURGING_AT_ONCE.lock().unwrap_or_else(|p| p.into_inner());
        if *holders == 0 {
            set_purge_delay(0);
        }
        *holders += 1;
        PurgeAtOnce(())
    }
}

impl Default for PurgeAtOnce {
    fn default() -> PurgeAtOnce {
        PurgeAtOnce::new()
    }
}

impl Drop for PurgeAtOnce {
    fn drop(&mut self) {
        let mut holders = PURGING_AT_ONCE.lock().unwrap_or_else(|p| p.into_inner());
        *holders -= 1;
        if *holders == 0 {
            set_purge_delay(PURGE_DELAY_MS);
        }
    }
}

/// `text` encoded for a URL's path segment or query value.
pub fn percent_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Makes the entries of directory `dir` durable.
pub fn fsync_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set for the child process of `large_frees_go_back_to_the_system`: "fixed" or "default".
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    const RELEASE_CHILD: &str = "TICKSHIP_TEST_RELEASE_CHILD";

    /// Runs child test `test` in a process of its own (glibc's state is per process, and other
    /// tests allocate beside it) with `variable` set to `mode` and glibc's own settings removed
    /// from its environment; returns the number it prints after `marker`.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn child_figure(test: &str, variable: &str, mode: &str, marker: &str) -> i64 {
        let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", test, "--nocapture", "--test-threads", "1"])
            .env(variable, mode)
            .env_remove("GLIBC_TUNABLES")
            .env_remove("MALLOC_MMAP_THRESHOLD_")
            .env_remove("MALLOC_TRIM_THRESHOLD_")
            .env_remove("MALLOC_ARENA_MAX")
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "child failed: {stdout}");
        stdout
            .lines()
            .find_map(|line| line.split(marker).nth(1))
            .unwrap_or_else(|| panic!("no figure from the child: {stdout}"))
            .trim()
            .parse()
            .expect("a number")
    }

    /// The KiB `child_frees_large_buffers` gave back.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn released_kib(mode: &str) -> i64 {
        child_figure(
            "util::tests::child_frees_large_buffers",
            RELEASE_CHILD,
            mode,
            "RELEASED KIB ",
        )
    }

    // Goal: with the thresholds fixed, 40 MiB of large buffers freed among small allocations
    // still live go back to the system at once, even after a large buffer was freed first
    // (which by default raises glibc's threshold, so that the later ones stay in its heap).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn large_frees_go_back_to_the_system() {
        let fixed = released_kib("fixed");
        let default = released_kib("default");
        println!("released {fixed} KiB fixed, {default} KiB by default");
        assert!(
            fixed >= 36 << 10,
            "released {fixed} KiB of 40 MiB (default: {default})"
        );
    }

    /// The child of `large_frees_go_back_to_the_system`; does nothing in a normal test run.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn child_frees_large_buffers() {
        let Ok(mode) = std::env::var(RELEASE_CHILD) else {
            return;
        };
        if mode == "fixed" {
            assert!(release_large_frees(), "thresholds not set");
        }
        let anon_kib = || -> i64 {
            let status = std::fs::read_to_string("/proc/self/status").expect("status");
            let line = status
                .lines()
                .find(|l| l.starts_with("RssAnon:"))
                .expect("RssAnon");
            line.split_whitespace()
                .nth(1)
                .expect("kB")
                .parse()
                .expect("number")
        };
        const MIB: usize = 1 << 20;
        // SAFETY: each buffer is written within its size and freed once, by glibc's free.
        unsafe {
            let first = libc::malloc(MIB);
            std::ptr::write_bytes(first.cast::<u8>(), 1, MIB);
            libc::free(first);
            let mut large = Vec::new();
            let mut small = Vec::new();
            for _ in 0..40 {
                let buffer = libc::malloc(MIB);
                assert!(!buffer.is_null());
                std::ptr::write_bytes(buffer.cast::<u8>(), 1, MIB);
                large.push(buffer);
                small.push(libc::malloc(64));
            }
            let before = anon_kib();
            for buffer in large {
                libc::free(buffer);
            }
            println!("RELEASED KIB {}", before - anon_kib());
            for buffer in small {
                libc::free(buffer);
            }
        }
    }

    /// Set for the child process of `malloc_arenas_are_limited`: "limited" or "default".
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    const ARENA_CHILD: &str = "TICKSHIP_TEST_ARENA_CHILD";

    /// The arenas `child_counts_arenas` ended with.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn arenas_used(mode: &str) -> usize {
        child_figure(
            "util::tests::child_counts_arenas",
            ARENA_CHILD,
            mode,
            "ARENAS ",
        ) as usize
    }

    // Goal: with the limit set, eight threads allocating at the same time share at most
    // `GLIBC_ARENAS` arenas, where glibc alone gives them more.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn malloc_arenas_are_limited() {
        let limited = arenas_used("limited");
        let default = arenas_used("default");
        println!("{limited} arenas limited, {default} by default");
        assert!(limited <= GLIBC_ARENAS as usize, "{limited} arenas");
        assert!(limited >= 1);
    }

    /// The child of `malloc_arenas_are_limited`; does nothing in a normal test run.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn child_counts_arenas() {
        let Ok(mode) = std::env::var(ARENA_CHILD) else {
            return;
        };
        if mode == "limited" {
            assert!(fewer_malloc_arenas(), "limit not set");
        }
        // Eight threads hold allocations while all of them allocate more, so that glibc meets
        // contended arenas and would hand out new ones.
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    // SAFETY: each buffer is freed once, by glibc's free.
                    unsafe {
                        let buffers: Vec<_> = (0..20_000).map(|_| libc::malloc(256)).collect();
                        barrier.wait();
                        for buffer in buffers {
                            libc::free(buffer);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        let mut text: *mut libc::c_char = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        // SAFETY: open_memstream fills `text` and `size` at fclose; the buffer is freed after.
        let info = unsafe {
            let stream = libc::open_memstream(&mut text, &mut size);
            assert!(!stream.is_null());
            assert_eq!(libc::malloc_info(0, stream), 0);
            libc::fclose(stream);
            let info = std::slice::from_raw_parts(text.cast::<u8>(), size).to_vec();
            libc::free(text.cast());
            String::from_utf8(info).expect("malloc_info writes text")
        };
        println!("ARENAS {}", info.matches("<heap nr=").count());
    }

    // Goal: freed memory is purged at once while any applier runs, and after the last one
    // stops with the usual delay again.
    #[test]
    fn purge_at_once_while_an_applier_runs() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() || purge_delay().is_none() {
            return; // the environment decides, or mimalloc is not built in
        }
        purge_sooner();
        assert_eq!(purge_delay(), Some(PURGE_DELAY_MS));
        let first = PurgeAtOnce::new();
        let second = PurgeAtOnce::new();
        assert_eq!(purge_delay(), Some(0));
        drop(first);
        assert_eq!(purge_delay(), Some(0), "one applier still runs");
        drop(second);
        assert_eq!(purge_delay(), Some(PURGE_DELAY_MS));
    }

    // Goal: the key and name rules accept exactly ArangoDB's alphabet and lengths.
    #[test]
    fn key_and_name_rules() {
        assert!(valid_key("alice"));
        assert!(valid_key("a:b.c@d(e)+f,g=h;i$j!k*l'm%n_o-p"));
        assert!(valid_key(&"k".repeat(254)));
        assert!(!valid_key(&"k".repeat(255)));
        assert!(!valid_key(""));
        assert!(!valid_key("a/b"));
        assert!(!valid_key("a b"));
        assert!(!valid_key("ä"));
        assert!(valid_collection_name("users"));
        assert!(valid_collection_name("_system_things"));
        assert!(!valid_collection_name("1users"));
        assert!(!valid_collection_name("us.ers"));
        assert!(!valid_collection_name(""));
    }

    // Goal: times print as ArangoDB prints them.
    #[test]
    fn iso8601_format() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_329_486);
        assert_eq!(iso8601(t), "2026-11-22T06:38:06Z");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(iso8601(leap), "2000-02-29T00:00:00Z");
    }

    // Goal: booleans parse in every spelling the drivers send, falling back on junk.
    #[test]
    fn lenient_booleans() {
        assert!(query_bool(Some("1"), false));
        assert!(query_bool(Some("TRUE"), false));
        assert!(!query_bool(Some("0"), true));
        assert!(query_bool(Some("undefined"), true));
        assert!(!query_bool(None, false));
    }

    #[test]
    fn store_file_budget_leaves_the_server_its_share() {
        // The usual soft limit: half for the store.
        assert_eq!(store_file_budget(1024), 512);
        // A raised limit: all but 4096.
        assert_eq!(store_file_budget(1 << 20), (1 << 20) - 4096);
        assert_eq!(store_file_budget(20_000), 20_000 - 4096);
        // Small limits leave the server at least 48; tiny ones still give RocksDB its minimum.
        assert_eq!(store_file_budget(128), 64);
        assert_eq!(store_file_budget(80), 32);
        assert_eq!(store_file_budget(64), 20);
        assert_eq!(store_file_budget(30), 20);
        assert_eq!(store_file_budget(0), 20);
        // Past i32: capped.
        assert_eq!(store_file_budget(u64::MAX), i32::MAX);
    }

    #[test]
    fn descriptor_limit_is_raised_to_the_hard_one() {
        let (before, after) = raise_descriptor_limit().expect("rlimit");
        assert!(after >= before);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, after);
        // Raised as far as the hard limit and the kernel allow.
        let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .expect("nr_open")
            .trim()
            .parse()
            .expect("number");
        assert_eq!(after, limit.rlim_max.min(nr_open));
    }
}
