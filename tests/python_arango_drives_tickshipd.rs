//! Claim: the unmodified python-arango 8.x driver works against a real tickshipd for every call
//! of reference/arango-clients.md sections 2-4 and the logger/WAL calls, errors included
//! (`tests/python/arango_suite.py`). The test builds its own virtualenv with the driver from
//! PyPI under the target directory and reuses it on later runs.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Daemon, PASSWORD};

const DRIVER: &str = "python-arango==8.3.7";

/// A virtualenv with the driver, created once (guarded by a lock file against parallel runs).
fn virtualenv() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-arango-8.3.7");
    let python = root.join("bin/python");
    let ready = root.join(".ready");
    if ready.exists() {
        return python;
    }
    std::fs::create_dir_all(root.parent().expect("parent")).expect("target tmp dir");
    let lock_path = root.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&lock_path)
        .expect("lock file");
    // SAFETY: flock(2) on an open descriptor.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(locked, 0, "lock {}", lock_path.display());
    if !ready.exists() {
        let run = |cmd: &mut Command, what: &str| {
            let output = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                output.status.success(),
                "{what} failed:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let _ = std::fs::remove_dir_all(&root);
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&root),
            "python3 -m venv",
        );
        run(
            Command::new(root.join("bin/pip")).args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                DRIVER,
            ]),
            "pip install python-arango",
        );
        std::fs::write(&ready, DRIVER).expect("mark ready");
    }
    python
}

#[test]
fn python_arango_suite_passes() {
    let python = virtualenv();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &[]);
    let package = common::package_dir();
    let script = package.join("tests/python/arango_suite.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(&daemon.url)
        .arg(PASSWORD)
        .output()
        .expect("run the suite");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("ALL CHECKS PASSED"),
        "python-arango suite failed ({}):\n{stdout}\n{stderr}\n---- tickshipd log ----\n{}",
        output.status,
        daemon.log()
    );
    println!("{stdout}");
}

// Goal: python-arango's `synchronize` then `set_applier_config` + `start_applier(last_tick)`
// make a real follower of a real leader (tests/python/synchronize.py).
#[test]
fn python_arango_synchronize_then_start_applier_follows() {
    let python = virtualenv();
    let dir = tempfile::tempdir().expect("tempdir");
    let leader = Daemon::start(&dir.path().join("leader"), &[]);
    let follower = Daemon::start(&dir.path().join("follower"), &[]);
    let package = common::package_dir();
    let output = Command::new(&python)
        .arg(package.join("tests/python/synchronize.py"))
        .arg(&leader.url)
        .arg(&follower.url)
        .arg(leader.endpoint())
        .arg(PASSWORD)
        .output()
        .expect("run the script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("ALL CHECKS PASSED"),
        "synchronize.py failed ({}):\n{stdout}\n{stderr}\n---- follower log ----\n{}",
        output.status,
        follower.log()
    );
}
