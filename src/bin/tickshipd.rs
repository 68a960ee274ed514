//! tickshipd: parse flags, run the server until SIGTERM/SIGINT, exit 0 after a clean stop.

use clap::Parser;
use tickship::config::DaemonArgs;

// Request handling allocates many small JSON values from several threads; glibc's malloc spent
// a fifth of the server's CPU on them under batch inserts (perf), mimalloc much less.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `mi_option_purge_delay` (the crate names no constant for it).
#[cfg(not(feature = "system-allocator"))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Milliseconds mimalloc keeps freed memory before handing it back, unless
/// `MIMALLOC_PURGE_DELAY` says otherwise. Its default of 1 s kept a second's worth of what a
/// follower catching up frees as fast as it receives (~250 MB/s): 1M behind, peak anonymous RSS
/// 60–65 MiB at 1 s, 50–53 MiB at 100 ms, 45–48 MiB at 25 ms, with follower CPU 2.34–2.81,
/// 2.27–2.46 and 2.46–3.01 s (3 runs each, alternating). A lone leader's batch ingest at 100 ms:
/// 167–191k against 178–186k docs/s (3 × 15 s each, alternating). 0 (purge on every free) cost
/// the leader 15–20%.
#[cfg(not(feature = "system-allocator"))]
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Sets mimalloc's purge delay. Runs first in `main`, while this is the only thread.
fn purge_sooner() {
    #[cfg(not(feature = "system-allocator"))]
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: plain integers; no other thread exists yet to read the option meanwhile. The
        // index is mimalloc 3's, which the version check guards.
        unsafe {
            if libmimalloc_sys::mi_version() >= 30000 {
                libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    purge_sooner();
    // Before anything allocates much: see `no_transparent_huge_pages`.
    let huge_pages = tickship::util::no_transparent_huge_pages();
    let args = DaemonArgs::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = huge_pages {
        tracing::warn!("cannot turn transparent huge pages off, memory use may be higher: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tickshipd: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tickship::server::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("failed to run: {e:#}");
            eprintln!("tickshipd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
