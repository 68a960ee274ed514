//! A second host for network-fault tests: a network namespace joined to the test's own by a veth
//! pair, with addresses that exist only on that pair. The leader runs inside, the follower (and
//! the test) outside. Faults are put on the inside end of the pair, so the leader's own traffic
//! to itself (the test's writes, see [`Link::inside`]) never crosses them. Needs root.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Links made by this test process, so that tests running in parallel get their own names.
static MADE: AtomicU32 = AtomicU32::new(0);

pub struct Link {
    pub netns: String,
    /// The end of the pair inside the namespace.
    inner: String,
    /// The leader's address (inside the namespace) and the follower's (outside).
    pub inside: String,
    pub outside: String,
    netem: Option<Netem>,
}

/// ../shared/tools/netem.py answering on an NFQUEUE inside the namespace (this kernel has no
/// sch_netem).
struct Netem {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl Link {
    /// A new namespace and veth pair, up and addressed; `Err` says why not (not root, no `ip`).
    pub fn new() -> Result<Link, String> {
        let made = MADE.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id() % 10_000) * 10 + made % 10;
        let netns = format!("tsn{id}");
        let (outer, inner) = (format!("tsa{id}"), format!("tsb{id}"));
        // One /24 per link; process id and counter keep parallel tests (and processes) apart.
        let subnet = format!("10.{}.{}", 200 + made % 50, id % 250);
        run("ip", &["netns", "add", &netns])?;
        let link = Link {
            netns: netns.clone(),
            inner: inner.clone(),
            inside: format!("{subnet}.1"),
            outside: format!("{subnet}.2"),
            netem: None,
        };
        run(
            "ip",
            &[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ],
        )?;
        run("ip", &["link", "set", &inner, "netns", &netns])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", link.outside),
                "dev",
                &outer,
            ],
        )?;
        run("ip", &["link", "set", &outer, "up"])?;
        link.within(
            "ip",
            &["addr", "add", &format!("{}/24", link.inside), "dev", &inner],
        )?;
        link.within("ip", &["link", "set", &inner, "up"])?;
        link.within("ip", &["link", "set", "lo", "up"])?;
        Ok(link)
    }

    /// Runs `program args` inside the namespace.
    pub fn within(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.netns, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Limits what the leader sends to `rate` (tc's syntax).
    pub fn limit_rate(&self, rate: &str) -> Result<(), String> {
        self.within(
            "tc",
            &[
                "qdisc",
                "add",
                "dev",
                &self.inner,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "16kb",
                "latency",
                "400ms",
            ],
        )
    }

    /// Cuts the link both ways: every packet is dropped, silently, as a partition does.
    pub fn partition(&self) {
        for rule in self.partition_rules() {
            let mut args = vec!["-I"];
            args.extend(rule.iter());
            self.within("iptables", &args).expect("iptables");
        }
    }

    /// Ends a [`Link::partition`].
    pub fn heal(&self) {
        for rule in self.partition_rules() {
            let mut args = vec!["-D"];
            args.extend(rule.iter());
            self.within("iptables", &args).expect("iptables");
        }
    }

    fn partition_rules(&self) -> [[&str; 5]; 2] {
        [
            ["INPUT", "-i", &self.inner, "-j", "DROP"],
            ["OUTPUT", "-o", &self.inner, "-j", "DROP"],
        ]
    }

    /// Where ../shared/tools/netem.py is, if this checkout sits next to it.
    pub fn netem_script() -> Option<PathBuf> {
        let path = super::package_dir().join("../shared/tools/netem.py");
        path.exists().then_some(path)
    }

    /// Delays, drops and reorders packets both ways as `config` says (netem.py's JSON line:
    /// `delay_ms`, `loss`, `reorder`, `reorder_corr`).
    pub fn impair(&mut self, config: &serde_json::Value) -> Result<(), String> {
        if self.netem.is_none() {
            let script = Link::netem_script().ok_or("../shared/tools/netem.py is missing")?;
            let mut child = Command::new("ip")
                .args(["netns", "exec", &self.netns, "python3"])
                .arg(script)
                .arg("7")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("python3: {e}"))?;
            let stdin = child.stdin.take().expect("stdin");
            let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
            // Only once it listens on the queue may packets go there: the kernel drops what a
            // queue without a listener gets.
            let mut ready = String::new();
            stdout
                .read_line(&mut ready)
                .map_err(|e| format!("netem.py: {e}"))?;
            self.netem = Some(Netem {
                child,
                stdin,
                stdout,
            });
            if !ready.contains("\"ready\": true") {
                return Err(format!("netem.py did not start: {ready:?}"));
            }
            for (chain, direction) in [("OUTPUT", "-o"), ("INPUT", "-i")] {
                let rule = [
                    chain,
                    direction,
                    &self.inner,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    "7",
                ];
                self.within("iptables", &[&["-A"][..], &rule[..]].concat())?;
            }
        }
        self.netem_call(config).map(|_| ())
    }

    /// netem.py's counters (packets seen, dropped, held, ...).
    pub fn netem_stats(&mut self) -> Result<serde_json::Value, String> {
        self.netem_call(&serde_json::json!({"stats": true}))
    }

    fn netem_call(&mut self, line: &serde_json::Value) -> Result<serde_json::Value, String> {
        let netem = self.netem.as_mut().ok_or("no impairment set")?;
        writeln!(netem.stdin, "{line}").map_err(|e| format!("netem.py: {e}"))?;
        netem.stdin.flush().map_err(|e| format!("netem.py: {e}"))?;
        let mut answer = String::new();
        netem
            .stdout
            .read_line(&mut answer)
            .map_err(|e| format!("netem.py: {e}"))?;
        let answer: serde_json::Value =
            serde_json::from_str(&answer).map_err(|e| format!("netem.py said {answer:?}: {e}"))?;
        if answer["ok"] != serde_json::json!(true) {
            return Err(format!("netem.py: {answer}"));
        }
        Ok(answer)
    }

    /// Sends a copy of every packet the leader sends to the follower (iptables TEE), so that
    /// each arrives twice. The copy is made in mangle OUTPUT, before [`Link::impair`]'s queue,
    /// so that both are impaired on their own; made in POSTROUTING, a copy coming back from the
    /// queue would be copied again, without end (TEE guards against recursion only while it
    /// sends, not across a queue).
    pub fn duplicate(&self) -> Result<(), String> {
        self.within(
            "iptables",
            &[
                "-t",
                "mangle",
                "-A",
                "OUTPUT",
                "-o",
                &self.inner,
                "-j",
                "TEE",
                "--gateway",
                &self.outside,
            ],
        )
    }

    /// Runs `work` on a thread that has entered the namespace: from there the leader's address
    /// is local and no fault on the link is in the way (the test writes to a partitioned leader).
    pub fn inside<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.netns);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let file = std::fs::File::open(&path).expect("namespace file");
                    use std::os::fd::AsRawFd;
                    // SAFETY: setns(2) on a descriptor we hold; it moves only this thread.
                    let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
                    work()
                })
                .join()
                .expect("work inside the namespace")
        })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(mut netem) = self.netem.take() {
            let _ = netem.child.kill();
            let _ = netem.child.wait();
        }
        // Deleting the namespace deletes its end of the pair, and with it the other end.
        let _ = run("ip", &["netns", "del", &self.netns]);
    }
}
