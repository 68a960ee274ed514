//! `tickship`: the command line for replication, in the role of arangosh's replication commands,
//! and `tickship demo`, which runs a real leader and follower on this machine.

pub mod demo;
pub mod dump;
pub mod restore;
mod setup;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::{json, Value};

use crate::client::Client;

#[derive(Parser)]
#[command(
    name = "tickship",
    version,
    about = "Replication commands for tickshipd (as arangosh's replication module), and the demo",
    after_help = "The --server.* options name the tickshipd this command talks to and may stand \
                  anywhere on the line.\nExample: tickship --server.endpoint tcp://127.0.0.1:8530 \
                  --server.password PW replication setup --leader.endpoint tcp://127.0.0.1:8529 \
                  --leader.password LEADER-PW"
)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: Top,
}

/// The server the CLI talks to. Every id starts with `server_`, so that no argument of a
/// subcommand can shadow one of these.
#[derive(clap::Args)]
struct ServerArgs {
    /// The tickshipd to talk to: tcp://HOST:PORT.
    #[arg(
        id = "server_endpoint",
        long = "server.endpoint",
        global = true,
        value_name = "ENDPOINT",
        default_value = "tcp://127.0.0.1:8529",
        help_heading = "Server"
    )]
    endpoint: String,
    /// User name on that server.
    #[arg(
        id = "server_username",
        long = "server.username",
        global = true,
        value_name = "USER",
        default_value = "root",
        help_heading = "Server"
    )]
    username: String,
    /// Password on that server [default: $TICKSHIP_ROOT_PASSWORD, else --server.password-file].
    #[arg(
        id = "server_password",
        long = "server.password",
        global = true,
        value_name = "PASSWORD",
        help_heading = "Server"
    )]
    password: Option<String>,
    /// File whose first line is the password (as tickshipd's --server.password-file; a
    /// tickshipd started without a password wrote one to DIR/ROOT_PASSWORD).
    #[arg(
        id = "server_password_file",
        long = "server.password-file",
        global = true,
        value_name = "FILE",
        help_heading = "Server"
    )]
    password_file: Option<PathBuf>,
    /// Database whose applier and logger to use.
    #[arg(
        id = "server_database",
        long = "server.database",
        global = true,
        value_name = "NAME",
        default_value = "_system",
        help_heading = "Server"
    )]
    database: String,
}

/// The ids of `ServerArgs`, which the demo refuses (it starts its own servers).
const SERVER_ARG_IDS: [&str; 5] = [
    "server_endpoint",
    "server_username",
    "server_password",
    "server_password_file",
    "server_database",
];

#[derive(Subcommand)]
enum Top {
    /// The replication applier of a database of the server (a follower), or with --global the
    /// server's: set up, start, stop, state, properties.
    Replication(ReplicationArgs),
    /// The replication logger of the server (a leader): state, first tick, tick ranges.
    #[command(subcommand)]
    Logger(LoggerCommand),
    /// Writes the documents of a database as of one tick to a directory, as arangodump does;
    /// prints the tick a follower restored from it starts from.
    Dump(dump::DumpArgs),
    /// Loads a dump directory (tickship's or arangodump's) into the server without taking
    /// ticks, as arangorestore does.
    Restore(restore::RestoreArgs),
    /// Runs a leader and a follower on this machine with a live load, shows the applier
    /// following, and checks that the follower's documents equal the leader's.
    #[command(disable_help_flag = true)]
    Demo(demo::DemoArgs),
}

#[derive(clap::Args)]
struct ReplicationArgs {
    /// The server-level applier, which replicates every database (ArangoDB's global=true);
    /// without it, the applier of --server.database, which replicates that database only.
    #[arg(long, global = true)]
    global: bool,
    #[command(subcommand)]
    command: ReplicationCommand,
}

#[derive(Subcommand)]
enum ReplicationCommand {
    /// Makes the server a follower of a leader (make-follower): syncs it with a snapshot of the
    /// leader (all of it, or with --incremental what differs), then tails the leader's log from
    /// the snapshot's tick; prints progress while it syncs and waits until it has caught up;
    /// exits non-zero, with the error, if it could not.
    Setup(SetupArgs),
    /// Starts the applier: after tick FROM, or where it left off.
    Start {
        /// Tick to start after (as printed by a dump: "Last tick provided by server is: N").
        #[arg(long, value_name = "TICK")]
        from: Option<u64>,
    },
    /// Stops the applier.
    Stop,
    /// Prints the applier state document; exits non-zero if it holds an error.
    State {
        /// The state of every database's applier (applier-state-all), by database.
        #[arg(long, conflicts_with = "global")]
        all: bool,
    },
    /// Prints the applier configuration, or changes it with a JSON object.
    Properties {
        /// Attributes to change, e.g. '{"endpoint":"tcp://127.0.0.1:8529","password":"PW"}'.
        #[arg(value_name = "JSON")]
        json: Option<String>,
    },
}

#[derive(clap::Args)]
struct SetupArgs {
    /// The leader: tcp://HOST:PORT (or --leader.endpoint).
    #[arg(
        id = "leader_positional",
        value_name = "LEADER",
        conflicts_with = "leader_endpoint",
        required_unless_present = "leader_endpoint"
    )]
    leader: Option<String>,
    /// The leader: tcp://HOST:PORT.
    #[arg(
        id = "leader_endpoint",
        long = "leader.endpoint",
        value_name = "ENDPOINT"
    )]
    leader_endpoint: Option<String>,
    /// User name on the leader.
    #[arg(
        long = "leader.username",
        alias = "leader-username",
        value_name = "USER",
        default_value = "root"
    )]
    leader_username: String,
    /// Password on the leader [default: the server's password].
    #[arg(
        long = "leader.password",
        alias = "leader-password",
        value_name = "PASSWORD"
    )]
    leader_password: Option<String>,
    /// File whose first line is the password on the leader.
    #[arg(long = "leader.password-file", value_name = "FILE")]
    leader_password_file: Option<PathBuf>,
    /// Compare the server's data with the leader's and move only what differs (by key ranges),
    /// instead of emptying its collections first.
    #[arg(long)]
    incremental: bool,
    /// Sync again by itself (incrementally) when the leader no longer has the tick to follow
    /// from, at most --auto-resync-retries times in a row.
    #[arg(long)]
    auto_resync: bool,
    /// Resyncs in a row that autoResync tries before it gives up.
    #[arg(long, value_name = "N", default_value_t = 2)]
    auto_resync_retries: u64,
    /// Replicate system collections (names starting with '_') too.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value_t = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    include_system: bool,
    /// With include, only --restrict-collections are replicated; with exclude, all but them.
    #[arg(long, value_name = "include|exclude", value_parser = ["include", "exclude"], requires = "restrict_collections")]
    restrict_type: Option<String>,
    /// The collections --restrict-type names.
    #[arg(long, value_name = "C", num_args = 1.., requires = "restrict_type")]
    restrict_collections: Vec<String>,
    /// Stop with 1414 when the leader no longer has the tick to follow from (false: go on from
    /// its first tick, missing what was between, and log it).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    require_from_present: bool,
    /// No progress bar (plain lines are printed when not on a terminal anyway).
    #[arg(long)]
    no_progress: bool,
}

#[derive(Subcommand)]
enum LoggerCommand {
    /// Prints the logger state: last tick, and the replication clients holding the log.
    State,
    /// Prints the first tick the server can still serve.
    FirstTick,
    /// Prints the WAL segments and the ticks each holds.
    TickRanges,
}

/// The `tickship` command: parses the command line, runs it, prints an error once.
pub fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let result = Cli::from_arg_matches(&matches)
        .map_err(anyhow::Error::from)
        .and_then(|cli| {
            if let Top::Demo(_) = cli.command {
                refuse_server_args(&matches)?;
            }
            run(cli)
        });
    if let Err(e) = result {
        eprintln!("tickship: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

/// The demo starts its own servers: a `--server.*` option would be ignored, so it is refused.
fn refuse_server_args(matches: &clap::ArgMatches) -> Result<()> {
    let given = |m: &clap::ArgMatches, id: &str| {
        m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    };
    let demo = matches.subcommand_matches("demo");
    for id in SERVER_ARG_IDS {
        if given(matches, id) || demo.is_some_and(|d| given(d, id)) {
            bail!(
                "--{}: the demo starts its own leader and follower and talks to no other server",
                id.replacen('_', ".", 1).replace('_', "-")
            );
        }
    }
    Ok(())
}

/// A password from a flag, else the environment, else a file (as tickshipd reads its own).
fn resolve_password(
    flag: Option<String>,
    env: Option<&str>,
    file: Option<PathBuf>,
) -> Result<Option<String>> {
    crate::auth::PasswordSource {
        flag,
        env: env
            .and_then(|name| std::env::var(name).ok())
            .filter(|p| !p.is_empty()),
        file,
    }
    .resolve()
}

fn run(cli: Cli) -> Result<()> {
    let server = cli.server;
    let password = resolve_password(
        server.password,
        Some("TICKSHIP_ROOT_PASSWORD"),
        server.password_file,
    )?;
    let client = Client::new(
        &server.endpoint,
        &server.database,
        &server.username,
        password.as_deref(),
    )?;
    let print = |value: &Value| {
        let text = serde_json::to_string_pretty(value)
            .expect("a serde_json::Value (string keys only) always serialises");
        println!("{text}");
    };
    match cli.command {
        Top::Replication(ReplicationArgs { global, command }) => {
            // `?global=true` (or `&` after another parameter) for the server-level applier.
            let scope = |first: bool| match (global, first) {
                (false, _) => "",
                (true, true) => "?global=true",
                (true, false) => "&global=true",
            };
            let state = match command {
                ReplicationCommand::Start { from } => {
                    let path = match from {
                        Some(from) => {
                            format!(
                                "/_api/replication/applier-start?from={from}{}",
                                scope(false)
                            )
                        }
                        None => format!("/_api/replication/applier-start{}", scope(true)),
                    };
                    client
                        .call("PUT", &path, Some(json!({})))
                        .map_err(|e| unconfigured_hint(e, &server.endpoint))?
                }
                ReplicationCommand::Stop => client.call(
                    "PUT",
                    &format!("/_api/replication/applier-stop{}", scope(true)),
                    Some(json!({})),
                )?,
                ReplicationCommand::State { all: true } => {
                    let all = client.call("GET", "/_api/replication/applier-state-all", None)?;
                    print(&all);
                    let failed: Vec<String> = all
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(_, s)| {
                            s["state"]["lastError"]["errorNum"].as_u64().unwrap_or(0) != 0
                        })
                        .map(|(db, s)| {
                            format!(
                                "{db}: {}",
                                s["state"]["lastError"]["errorMessage"]
                                    .as_str()
                                    .unwrap_or("")
                            )
                        })
                        .collect();
                    if !failed.is_empty() {
                        bail!("appliers report errors: {}", failed.join("; "));
                    }
                    return Ok(());
                }
                ReplicationCommand::State { all: false } => client.call(
                    "GET",
                    &format!("/_api/replication/applier-state{}", scope(true)),
                    None,
                )?,
                ReplicationCommand::Properties { json: None } => {
                    let config = client.call(
                        "GET",
                        &format!("/_api/replication/applier-config{}", scope(true)),
                        None,
                    )?;
                    print(&config);
                    return Ok(());
                }
                ReplicationCommand::Properties { json: Some(text) } => {
                    let body: Value =
                        serde_json::from_str(&text).context("properties must be a JSON object")?;
                    let config = client.call(
                        "PUT",
                        &format!("/_api/replication/applier-config{}", scope(true)),
                        Some(body),
                    )?;
                    print(&config);
                    return Ok(());
                }
                ReplicationCommand::Setup(setup) => {
                    let leader = setup
                        .leader_endpoint
                        .clone()
                        .or(setup.leader.clone())
                        .context("name the leader: --leader.endpoint tcp://HOST:PORT")?;
                    let leader_password = match resolve_password(
                        setup.leader_password.clone(),
                        None,
                        setup.leader_password_file.clone(),
                    )? {
                        Some(p) => p,
                        None => password.clone().unwrap_or_default(),
                    };
                    let mut body = json!({
                        "endpoint": leader,
                        "username": setup.leader_username,
                        "password": leader_password,
                        "incremental": setup.incremental,
                        "autoResync": setup.auto_resync,
                        "autoResyncRetries": setup.auto_resync_retries,
                        "includeSystem": setup.include_system,
                        "requireFromPresent": setup.require_from_present,
                    });
                    if let Some(restrict) = &setup.restrict_type {
                        body["restrictType"] = json!(restrict);
                        body["restrictCollections"] = json!(setup.restrict_collections);
                    }
                    setup::run(&client, body, !setup.no_progress, scope(true))?
                }
            };
            print(&state);
            let error = &state["state"]["lastError"];
            if error["errorNum"].as_u64().unwrap_or(0) != 0 {
                bail!(
                    "the applier reports error {}: {}",
                    error["errorNum"],
                    error["errorMessage"].as_str().unwrap_or("")
                );
            }
        }
        Top::Logger(command) => {
            let path = match command {
                LoggerCommand::State => "/_api/replication/logger-state",
                LoggerCommand::FirstTick => "/_api/replication/logger-first-tick",
                LoggerCommand::TickRanges => "/_api/replication/logger-tick-ranges",
            };
            print(&client.call("GET", path, None)?)
        }
        Top::Dump(args) => dump::run(&client, &server.database, &server.username, args)?,
        Top::Restore(args) => restore::run(&client, &server.database, args)?,
        Top::Demo(args) if args.help => {
            demo::DemoHelp::command().print_help()?;
        }
        Top::Demo(args) => demo::run(args)?,
    }
    Ok(())
}

/// `applier-start` refused for want of an endpoint (1410) means the server was never set up.
fn unconfigured_hint(error: anyhow::Error, endpoint: &str) -> anyhow::Error {
    if error.to_string().contains("(error 1410,") && error.to_string().contains("<endpoint>") {
        anyhow::anyhow!(
            "{error:#}\nThe server at {endpoint} has no leader configured. Make it a follower \
             first with `tickship --server.endpoint {endpoint} replication setup \
             --leader.endpoint tcp://LEADER:PORT`, or name the leader with `tickship \
             replication properties '{{\"endpoint\":\"tcp://LEADER:PORT\",\"password\":\"...\"}}'`."
        )
    } else {
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap checks its definitions only when a command is built: build every one.
    #[test]
    fn argument_definitions_are_consistent() {
        Cli::command().debug_assert();
        demo::DemoHelp::command().debug_assert();
    }
}
