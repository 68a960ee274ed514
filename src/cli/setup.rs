//! `tickship replication setup`: sends `make-follower` as an async job (as arangosh's
//! `setupReplication` does) and, while the sync runs, prints the applier's progress: the seed's
//! `still synchronizing... last received status: <time>: <message>` lines and the figures
//! (documents, bytes, rate, ETA) when stderr is not a terminal, a bar when it is. Progress goes to
//! stderr so that stdout holds only the resulting state document, for scripts.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;

use crate::client::Client;

/// How often the job and the applier state are asked for: every `POLL_FIRST` for the first
/// `FIRST_SECONDS` (a short sync is then reported at most that late), then every `POLL`.
const POLL_FIRST: Duration = Duration::from_millis(10);
const FIRST_SECONDS: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(100);

/// `scope` is `"?global=true"` for the server-level applier, else empty (the database's).
pub(super) fn run(client: &Client, body: Value, bar_wanted: bool, scope: &str) -> Result<Value> {
    let job = client.start_job(
        "PUT",
        &format!("/_api/replication/make-follower{scope}"),
        Some(body),
    )?;
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = super::dump::progress_bar(bar_wanted && on_terminal, 0);
    let started = Instant::now();
    let mut last_line = String::new();
    loop {
        let pause = if started.elapsed() < FIRST_SECONDS {
            POLL_FIRST
        } else {
            POLL
        };
        let answer = client.call("PUT", &format!("/_api/job/{job}"), None);
        match answer {
            Ok(Value::Null) => {}
            Ok(answer) => {
                bar.finish_and_clear();
                return Ok(answer);
            }
            Err(e) => {
                bar.finish_and_clear();
                return Err(e);
            }
        }
        let state = client.call(
            "GET",
            &format!("/_api/replication/applier-state{scope}"),
            None,
        )?;
        let state = &state["state"];
        let progress = &state["progress"];
        let sync = &state["initialSync"];
        let number = |v: &Value| v.as_u64().unwrap_or(0);
        let (documents, bytes, on_leader) = (
            number(&sync["documents"]),
            number(&sync["bytesReceived"]),
            number(&sync["documentsOnLeader"]),
        );
        let seconds = started.elapsed().as_secs_f64().max(0.001);
        let rate = bytes as f64 / seconds / 1e6;
        let eta = (documents > 0 && on_leader > documents)
            .then(|| (on_leader - documents) as f64 * seconds / documents as f64);
        let message = progress["message"].as_str().unwrap_or("");
        if !bar.is_hidden() {
            bar.set_length(on_leader.max(documents));
            bar.set_position(documents);
            bar.set_message(format!("{:.1} MB", bytes as f64 / 1e6));
            continue_after(pause);
            continue;
        }
        let line = format!(
            "still synchronizing... last received status: {}: {message}",
            progress["time"].as_str().unwrap_or("")
        );
        // Before the applier has said anything there is no status to report.
        if line != last_line && !message.is_empty() {
            eprintln!("{line}");
            if sync["running"] == Value::Bool(true) {
                eprintln!(
                    "  {documents} of {on_leader} document(s), {:.1} MB received, {rate:.1} MB/s{}",
                    bytes as f64 / 1e6,
                    eta.map(|s| format!(", ETA {s:.0} s")).unwrap_or_default()
                );
            }
            last_line = line;
        }
        continue_after(pause);
    }
}

/// The pause between two polls of a job that runs on the server (not a wait for a condition
/// this process could observe otherwise).
fn continue_after(pause: Duration) {
    std::thread::sleep(pause);
}
