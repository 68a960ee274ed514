//! Shared parts of tickship's tools. The document generator lives in the product (the demo uses
//! it); it is re-exported here for the tools and benchmarks.

pub use tickship::docgen;

/// Where a tool keeps its data: `dir` if given, else a new directory under `/var/tmp` (on the real
/// disk, not tmpfs) named `prefix…`, removed when the returned guard is dropped.
pub fn data_dir(
    dir: Option<&std::path::Path>,
    prefix: &str,
) -> std::io::Result<(Option<tempfile::TempDir>, std::path::PathBuf)> {
    match dir {
        Some(dir) => Ok((None, dir.to_path_buf())),
        None => {
            let temporary = tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in("/var/tmp")?;
            let path = temporary.path().to_path_buf();
            Ok((Some(temporary), path))
        }
    }
}
