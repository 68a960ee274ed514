//! What the bench reads off the processes it measures and the traffic between them: CPU time and
//! peak RSS of a server's whole process tree (PostgreSQL is many processes), the CPU of the
//! bench's own loader threads, and the bytes that cross loopback between leader and follower.

use std::process::Command;

use anyhow::{bail, Context, Result};

fn clock_ticks() -> f64 {
    // SAFETY: sysconf takes a plain integer and reads nothing of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (ppid, utime + stime + cutime + cstime in ticks) of a process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let cpu: u64 = (11..=14)
        .map(|i| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    Some((ppid, cpu))
}

/// `root` and all its descendants alive now.
pub fn tree(root: u32) -> Vec<u32> {
    let mut all = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Some((ppid, _)) = stat(pid) {
                    all.push((pid, ppid));
                }
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(all.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// CPU seconds used so far by `root`'s tree, the children it has reaped included (cutime), so
/// that the difference of two readings counts processes that ran and exited in between.
pub fn tree_cpu(root: u32) -> f64 {
    let ticks: u64 = tree(root)
        .iter()
        .filter_map(|p| stat(*p))
        .map(|s| s.1)
        .sum();
    ticks as f64 / clock_ticks()
}

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = text.lines().find_map(|l| l.strip_prefix(field))?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Resets the peak RSS (VmHWM) of every process of `root`'s tree to its current RSS
/// (`clear_refs` 5), so that a later [`tree_peak_rss`] is the peak of one scenario alone.
pub fn reset_peak(root: u32) {
    for pid in tree(root) {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
}

/// The sum of the peak RSS of every process of `root`'s tree alive now, in bytes. Exact for one
/// process; for several (PostgreSQL) an upper bound, since shared buffers count in each process
/// that touched them.
pub fn tree_peak_rss(root: u32) -> u64 {
    tree(root)
        .iter()
        .filter_map(|p| status_kb(*p, "VmHWM:"))
        .sum::<u64>()
        * 1024
}

/// CPU seconds of the calling thread.
pub fn thread_cpu() -> f64 {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct, which getrusage fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD on the calling thread; `usage` is valid to write.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// Counts the bytes of every IP packet to or from one port on loopback (TCP and UDP) that does
/// not come from or go to the bench's clients' address: the replication traffic between leader
/// and follower, headers included. Needs root and iptables; [`Wire::new`] says why not otherwise.
pub struct Wire {
    chain: String,
}

fn iptables(args: &[&str]) -> Result<String> {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .context("run iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Wire {
    pub fn new() -> Result<Wire> {
        let chain = format!("TSBENCH{}", std::process::id());
        iptables(&["-N", &chain])?;
        let wire = Wire { chain };
        iptables(&["-I", "OUTPUT", "-o", "lo", "-j", &wire.chain])?;
        Ok(wire)
    }

    /// Counts the traffic of `port` from now on (and nothing else).
    pub fn watch(&self, port: u16) -> Result<()> {
        let c = self.chain.as_str();
        iptables(&["-F", c])?;
        iptables(&["-A", c, "-s", crate::wire::CLIENT_ADDR, "-j", "RETURN"])?;
        iptables(&["-A", c, "-d", crate::wire::CLIENT_ADDR, "-j", "RETURN"])?;
        let port = port.to_string();
        for proto in ["tcp", "udp"] {
            for side in ["--sport", "--dport"] {
                iptables(&["-A", c, "-p", proto, side, &port])?;
            }
        }
        Ok(())
    }

    /// Bytes counted since the last call (or [`Wire::watch`]); zeroes the counters.
    pub fn take(&self) -> Result<u64> {
        let text = iptables(&["-L", &self.chain, "-n", "-v", "-x", "-Z"])?;
        Ok(text
            .lines()
            .skip(2)
            .filter(|l| !l.contains("RETURN"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum())
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        let _ = iptables(&["-D", "OUTPUT", "-o", "lo", "-j", &self.chain]);
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}
