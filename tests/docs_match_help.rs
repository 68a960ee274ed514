//! docs/flags.md says what `--help` says: every long flag that `tickshipd --help`,
//! `tickship --help` and the `--help` of each `tickship` subcommand print is documented in
//! docs/flags.md under its command, under the heading `--help` groups it in, with the default
//! `--help` shows; and docs/flags.md names no flag that `--help` does not print.
//!
//! The format of docs/flags.md that this test reads is described at the top of that file.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::process::Command;

/// A flag as a `--help` page prints it.
#[derive(Debug)]
struct HelpFlag {
    /// The heading it is listed under (`Options`, `Server`, `Write-ahead log`, ...).
    heading: String,
    /// What `[default: ...]` says, with runs of whitespace as one space.
    default: Option<String>,
}

/// A `--help` page: its long flags by name (`--wal.segment-size`), and its subcommands.
#[derive(Debug, Default)]
struct HelpPage {
    flags: BTreeMap<String, HelpFlag>,
    subcommands: Vec<String>,
}

/// A flag row of docs/flags.md.
#[derive(Debug)]
struct DocFlag {
    line: usize,
    /// The `###` heading above the row within its command's section, if any.
    heading: Option<String>,
    default: Option<String>,
}

/// The `--help` page of `binary` followed by `args`.
fn help_text(binary: &str, args: &[String]) -> String {
    let output = Command::new(binary)
        .args(args)
        .arg("--help")
        .env_remove("TICKSHIP_ROOT_PASSWORD")
        .output()
        .unwrap_or_else(|e| panic!("run {binary} {args:?} --help: {e}"));
    assert!(
        output.status.success(),
        "{binary} {args:?} --help exited with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("--help prints UTF-8")
}

/// Collapses runs of whitespace (clap may wrap long help lines) into one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads a clap help page. A line at column 0 ending in `:` starts a heading; an entry starts
/// with `-` at column 2 (`-h, --help`) or `--` at column 6 (a flag without a short form); more
/// indented lines continue the entry above (clap's wrapped or next-line help text).
fn parse_help(text: &str) -> HelpPage {
    let mut page = HelpPage::default();
    let mut heading = String::new();
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            heading = line.strip_suffix(':').unwrap_or_default().to_string();
            continue;
        }
        let body = line.trim_start();
        let indent = line.len() - body.len();
        if heading == "Commands" {
            let name = body.split_whitespace().next().unwrap_or_default();
            if indent == 2 && name != "help" {
                page.subcommands.push(name.to_string());
            }
            continue;
        }
        if heading.is_empty() || heading == "Arguments" || heading == "Usage" {
            continue;
        }
        let starts_entry =
            (indent == 2 && body.starts_with('-')) || (indent == 6 && body.starts_with("--"));
        if starts_entry {
            entries.push((heading.clone(), body.to_string()));
        } else if let Some((_, entry)) = entries.last_mut() {
            entry.push(' ');
            entry.push_str(body);
        }
    }
    for (heading, entry) in entries {
        // The first `--` token of the entry is its long flag; `-h, --help` has a short one first.
        let Some(name) = entry
            .split_whitespace()
            .map(|token| token.trim_end_matches(','))
            .find(|token| token.starts_with("--"))
        else {
            continue;
        };
        let default = entry.find("[default: ").map(|start| {
            let rest = &entry[start + "[default: ".len()..];
            one_line(&rest[..rest.find(']').unwrap_or(rest.len())])
        });
        page.flags
            .insert(name.to_string(), HelpFlag { heading, default });
    }
    page
}

/// Every `--help` page: `tickshipd`, `tickship` and its subcommands, recursively, keyed by the
/// command line that prints them (`tickship replication setup`).
fn help_pages() -> BTreeMap<String, HelpPage> {
    let mut pages = BTreeMap::new();
    let tickshipd = parse_help(&help_text(env!("CARGO_BIN_EXE_tickshipd"), &[]));
    pages.insert("tickshipd".to_string(), tickshipd);
    let mut pending: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(args) = pending.pop() {
        let page = parse_help(&help_text(env!("CARGO_BIN_EXE_tickship"), &args));
        for subcommand in &page.subcommands {
            let mut deeper = args.clone();
            deeper.push(subcommand.clone());
            pending.push(deeper);
        }
        let command = std::iter::once("tickship".to_string())
            .chain(args)
            .collect::<Vec<_>>()
            .join(" ");
        pages.insert(command, page);
    }
    pages
}

/// The backticked command of a `## ` heading (`` ## `tickship replication setup` ``), if it is
/// one.
fn section_command(title: &str) -> Option<String> {
    let inner = title.trim().strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then(|| inner.to_string())
}

/// The text between the first pair of backticks of `cell` that starts with `prefix`.
fn backticked<'a>(cell: &'a str, prefix: &str) -> Option<&'a str> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .find(|inner| inner.starts_with(prefix))
}

/// The flag rows of docs/flags.md by command, then by flag; format errors go to `failures`.
fn parse_doc(
    text: &str,
    failures: &mut Vec<String>,
) -> BTreeMap<String, BTreeMap<String, DocFlag>> {
    let mut doc: BTreeMap<String, BTreeMap<String, DocFlag>> = BTreeMap::new();
    let mut command: Option<String> = None;
    let mut heading: Option<String> = None;
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if let Some(title) = line.strip_prefix("## ") {
            command = section_command(title);
            heading = None;
            continue;
        }
        if let Some(title) = line.strip_prefix("### ") {
            heading = Some(title.trim().to_string());
            continue;
        }
        if line.starts_with("# ") {
            command = None;
            heading = None;
            continue;
        }
        if !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let Some(name) = backticked(cells[0], "--") else {
            continue; // a header, separator or other table's row
        };
        let Some(command) = &command else {
            failures.push(format!(
                "docs/flags.md:{line_no}: `{name}` is in a table outside a command's section \
                 (a `## ` heading naming the command in backticks)"
            ));
            continue;
        };
        let default = match cells.get(1).copied() {
            Some("—") => None,
            Some(cell) if cell.len() >= 2 && cell.starts_with('`') && cell.ends_with('`') => {
                Some(one_line(&cell[1..cell.len() - 1]))
            }
            other => {
                failures.push(format!(
                    "docs/flags.md:{line_no}: the default of `{name}` must be `VALUE` in \
                     backticks or — (none), not {other:?}"
                ));
                continue;
            }
        };
        let row = DocFlag {
            line: line_no,
            heading: heading.clone(),
            default,
        };
        let section = doc.entry(command.clone()).or_default();
        if let Some(earlier) = section.get(name) {
            failures.push(format!(
                "docs/flags.md:{line_no}: `{name}` of `{command}` is documented twice (also on \
                 line {})",
                earlier.line
            ));
        }
        section.insert(name.to_string(), row);
    }
    doc
}

/// `line` without its code spans that quote a cargo command (`` `cargo test ... --test x` ``),
/// whose flags are cargo's.
fn without_cargo_commands(line: &str) -> String {
    line.split('`')
        .enumerate()
        .filter(|(i, part)| i % 2 == 0 || !part.starts_with("cargo "))
        .map(|(_, part)| part)
        .collect::<Vec<_>>()
        .join("`")
}

/// Every `--name` token in `text` (`--wal.segment-size`, `--server.password-file`), with the
/// number of the line it is on.
fn flag_mentions(text: &str) -> Vec<(usize, String)> {
    let mut mentions = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = without_cargo_commands(line);
        let line = line.as_str();
        let bytes = line.as_bytes();
        let mut at = 0;
        while let Some(found) = line[at..].find("--") {
            let start = at + found;
            let after = start + 2;
            // Not inside a word, `---` or `<!--`.
            let preceded_ok = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric()
                    || matches!(bytes[start - 1], b'-' | b'!' | b'<'));
            if preceded_ok && bytes.get(after).is_some_and(u8::is_ascii_lowercase) {
                let end = line[after..]
                    .find(|c: char| {
                        !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
                    })
                    .map_or(line.len(), |n| after + n);
                let name = line[start..end].trim_end_matches(['.', '-']);
                mentions.push((index + 1, name.to_string()));
                at = end;
            } else {
                at = after;
            }
        }
    }
    mentions
}

/// `tickship replication setup`, then `tickship replication`, then `tickship`.
fn command_and_ancestors(command: &str) -> Vec<String> {
    let words: Vec<&str> = command.split(' ').collect();
    (1..=words.len())
        .rev()
        .map(|n| words[..n].join(" "))
        .collect()
}

#[test]
fn docs_flags_md_matches_help() {
    let pages = help_pages();
    for (command, page) in &pages {
        assert!(
            page.flags.contains_key("--help"),
            "reading `{command} --help` found no `--help` entry: has clap's layout changed? \
             Flags read: {:?}",
            page.flags.keys().collect::<Vec<_>>()
        );
    }
    // The package's directory as cargo gives it when it runs the test, not where it was built.
    let package: std::path::PathBuf = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into);
    let text = std::fs::read_to_string(package.join("docs/flags.md")).expect("read docs/flags.md");
    let mut failures = Vec::new();
    let doc = parse_doc(&text, &mut failures);

    // Every flag of every --help page is documented, in its command's section or, for a global
    // option that the parent's --help lists too, in the nearest such ancestor's.
    for (command, page) in &pages {
        for (name, flag) in &page.flags {
            let documented = command_and_ancestors(command)
                .into_iter()
                .find_map(|section| {
                    let row = doc.get(&section)?.get(name)?;
                    pages
                        .get(&section)
                        .is_some_and(|p| p.flags.contains_key(name))
                        .then_some((section, row))
                });
            let Some((section, row)) = documented else {
                failures.push(format!(
                    "docs/flags.md lacks `{name}` of `{command}` (--help: under {}, default {})",
                    flag.heading,
                    flag.default
                        .as_deref()
                        .map_or("none".to_string(), |d| format!("`{d}`"))
                ));
                continue;
            };
            if row.default != flag.default {
                failures.push(format!(
                    "docs/flags.md:{}: `{name}` of `{command}`: --help says default {}, the \
                     file says {}",
                    row.line,
                    flag.default
                        .as_deref()
                        .map_or("none".to_string(), |d| format!("`{d}`")),
                    row.default
                        .as_deref()
                        .map_or("none (—)".to_string(), |d| format!("`{d}`")),
                ));
            }
            if let Some(heading) = &row.heading {
                if *heading != flag.heading {
                    failures.push(format!(
                        "docs/flags.md:{}: `{name}` of `{command}` is under \"### {heading}\" \
                         (in `{section}`), --help lists it under \"{}\"",
                        row.line, flag.heading
                    ));
                }
            }
        }
    }

    // Every documented flag is one that its command's --help prints.
    for (command, rows) in &doc {
        let Some(page) = pages.get(command) else {
            failures.push(format!(
                "docs/flags.md has a section for `{command}`, which is not a command --help \
                 lists; its flags: {:?}",
                rows.keys().collect::<Vec<_>>()
            ));
            continue;
        };
        for (name, row) in rows {
            if !page.flags.contains_key(name) {
                failures.push(format!(
                    "docs/flags.md:{}: `{name}` is documented for `{command}`, whose --help has \
                     no such flag",
                    row.line
                ));
            }
        }
    }

    // Every flag named anywhere in the file, prose included, exists.
    for (line, name) in flag_mentions(&text) {
        if !pages.values().any(|page| page.flags.contains_key(&name)) {
            failures.push(format!(
                "docs/flags.md:{line}: mentions `{name}`, which no --help prints"
            ));
        }
    }

    assert!(
        failures.is_empty(),
        "docs/flags.md does not match --help ({} problems):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
