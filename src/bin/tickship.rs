//! `tickship`: see `tickship::cli`.

fn main() -> std::process::ExitCode {
    tickship::cli::main()
}
