//! tickshipd: parse flags, run the server until SIGTERM/SIGINT, exit 0 after a clean stop.

use clap::Parser;
use tickship::config::DaemonArgs;

// Request handling allocates many small JSON values from several threads, which glibc's malloc
// serves at a large share of the server's CPU under batch inserts, and mimalloc far more cheaply.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tickship::util::purge_sooner();
    let glibc_releases = tickship::util::release_large_frees();
    let glibc_arenas = tickship::util::fewer_malloc_arenas();
    // Before anything allocates much: see `no_transparent_huge_pages`.
    let huge_pages = tickship::util::no_transparent_huge_pages();
    let args = DaemonArgs::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never into a log file.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    if !glibc_releases {
        tracing::debug!("glibc's malloc thresholds left as the environment sets them");
    }
    if !glibc_arenas {
        tracing::debug!("glibc's malloc arenas left as the environment sets them");
    }
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
            // Once, on stderr with the log: the log's own line would repeat it.
            eprintln!("tickshipd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
