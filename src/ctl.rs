//! `pagemesh ctl --node ADDR <command>`: asks a running node over its command channel
//! (`pagemesh_net::control`), as any authenticated peer may.
//!
//! - `status`: the node, the nodes its gossip view holds, and per database it serves: origin,
//!   whether it is a relayed copy, epoch, committed / applied / durable LSNs, ring fill, the
//!   holder it follows and its last link error, and per replica it serves: state (sync, async,
//!   down), received LSN and lag in pages, bytes and milliseconds.
//! - `members`: the nodes the node knows (itself first): uuid, name, address, databases served.
//! - `lookup UUID|NAME`: the nodes that serve a database, as the node knows them (itself, and what
//!   the gossip told it), each with its copy's role (origin or relay), epoch and committed,
//!   applied and durable LSNs, as that holder's own STATUS says (asked in parallel, at most 64).
//! - `promote UUID`: reserved for failover; the node answers "not supported yet".
//! - `status --watch [--count N] [--interval-ms MS]`: asks again every second (or MS), and
//!   redraws the table (clear screen, table) until Ctrl-C, or N times; with `--json`, one
//!   object a line.
//! - `diff UUID --with ADDR`: compares the database's copy on `--node` (A) with the one on
//!   `ADDR` (B) by DIFF's Merkle descent (`pagemesh_net::diff`): equal copies cost one round
//!   trip; otherwise every differing key is listed with both versions (seq and value, or
//!   "missing"), as text where it is printable UTF-8 and as hex otherwise (`--json` carries
//!   both: `key`, `key_hex`, `value`, `value_hex`). `--timeout-ms` bounds each request, the
//!   first digest of the whole database included: a node gives up a scan at that deadline, so
//!   raise it for databases of many millions of entries (106,179 entries digest in about 40 ms
//!   per side in a release build here).
//! - `replicate UUID --name NAME`: the node starts a copy of the database under NAME in its
//!   data directory, following whichever holders its gossip knows, and keeps it across
//!   restarts; `unreplicate UUID` stops that copy (its files stay).
//!
//! `--to UUID|NAME` asks another node of the mesh through the one at `--node` (a FORWARD: that
//! node reaches the other at the address its gossip view holds, with its own cluster secret). A
//! name is looked up in `--node`'s view first (MEMBERS); a name two nodes share is refused with
//! their uuids, so pick one.
//!
//! Wherever a command takes a database, it takes its uuid or its name: a name is resolved by the
//! node at `--node` (RESOLVE: the name it opened or replicated the database under), before any
//! `--to`.
//!
//! Tables for people by default, `--json` (one object) for scripts. Exit codes: 0 the command
//! succeeded, 1 the node answered with an error, 2 the node could not be asked (no connection,
//! refused handshake, timeout, bad arguments). `diff` exits 0 when the copies are equal, 1
//! when they differ, 2 when they could not be compared (either node unreachable, or refusing:
//! a copy mid-restore, a database it does not serve).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use pagemesh::net::control;
use pagemesh::net::diff::{DiffOptions, DiffReport, Version};
use pagemesh::net::proto::command::{Command, DatabaseStatus, Holder, Reply};
use serde_json::json;

/// Options of `pagemesh ctl`.
#[derive(clap::Args)]
pub struct CtlArgs {
    /// The node's address (its `listen`).
    #[arg(long)]
    node: SocketAddr,
    /// A file holding the cluster secret (default: env PAGEMESH_SECRET, else none).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// How long to wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// Ask this node (by uuid or name) instead, through the one at --node, which reaches it at
    /// the address its gossip view holds.
    #[arg(long)]
    to: Option<String>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(clap::Subcommand)]
enum CtlCommand {
    /// The node and the databases it serves.
    Status {
        /// Ask again every interval, redrawing, until Ctrl-C (or `--count` times).
        #[arg(long)]
        watch: bool,
        /// With `--watch`: stop after this many answers.
        #[arg(long, requires = "watch")]
        count: Option<u64>,
        /// With `--watch`: milliseconds between answers.
        #[arg(long, default_value_t = 1_000, requires = "watch")]
        interval_ms: u64,
    },
    /// Compare the database's copy on this node with the copy on another (exit 1 if they
    /// differ).
    Diff {
        /// The database's uuid, or its name on --node.
        database: String,
        /// The other node's address.
        #[arg(long)]
        with: SocketAddr,
        /// The most differing keys listed.
        #[arg(long, default_value_t = 1_000)]
        max_differences: usize,
    },
    /// The nodes this node knows (itself first), with their names and databases.
    Members,
    /// The nodes that serve a database.
    Lookup {
        /// The database's uuid, or its name on --node.
        database: String,
    },
    /// Make the node's copy the origin (reserved for failover: not supported yet).
    Promote {
        /// The database's uuid, or its name on --node.
        database: String,
    },
    /// Start a copy of a database on the node, kept across its restarts.
    Replicate {
        /// The database's uuid, or its name on --node.
        database: String,
        /// The copy's directory name in the node's data directory (default: the uuid).
        #[arg(long)]
        name: Option<String>,
    },
    /// Stop a copy that `replicate` started (its files stay).
    Unreplicate {
        /// The database's uuid, or its name on --node.
        database: String,
    },
}

impl CtlCommand {
    /// The database the command names (a uuid or a name), if it takes one.
    fn database(&self) -> Option<&str> {
        match self {
            CtlCommand::Lookup { database }
            | CtlCommand::Promote { database }
            | CtlCommand::Replicate { database, .. }
            | CtlCommand::Unreplicate { database }
            | CtlCommand::Diff { database, .. } => Some(database),
            CtlCommand::Status { .. } | CtlCommand::Members => None,
        }
    }
}

/// Runs `pagemesh ctl`.
pub fn run(args: &CtlArgs) -> ExitCode {
    let secret = match secret(args) {
        Ok(secret) => secret,
        Err(error) => {
            eprintln!("pagemesh ctl: {error}");
            return ExitCode::from(2);
        }
    };
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let to = match args
        .to
        .as_deref()
        .map(|to| node_named(args, secret.as_deref(), timeout, to))
    {
        None => None,
        Some(Ok(to)) => Some(to),
        Some(Err(error)) => {
            eprintln!("pagemesh ctl: --to: {error}");
            return ExitCode::from(2);
        }
    };
    // A database named by uuid or by name, resolved once, before the command is built.
    let database = match args.command.database() {
        None => uuid::Uuid::nil(),
        Some(text) => match database_named(args, secret.as_deref(), timeout, text) {
            Ok(database) => database,
            Err(code) => return code,
        },
    };
    let command = match &args.command {
        CtlCommand::Status { watch: false, .. } => Command::Status,
        &CtlCommand::Status {
            watch: true,
            count,
            interval_ms,
        } => {
            let interval = Duration::from_millis(interval_ms.max(1));
            return watch_status(args, secret.as_deref(), to, timeout, interval, count);
        }
        CtlCommand::Members => Command::Members,
        CtlCommand::Lookup { .. } => Command::Lookup { database },
        CtlCommand::Promote { .. } => Command::Promote { database },
        CtlCommand::Replicate { name, .. } => Command::Replicate {
            database,
            name: name.clone().unwrap_or_else(|| database.to_string()),
        },
        CtlCommand::Unreplicate { .. } => Command::Unreplicate { database },
        &CtlCommand::Diff {
            with,
            max_differences,
            ..
        } => {
            if args.to.is_some() {
                eprintln!("pagemesh ctl: diff compares --node with --with; --to does not apply");
                return ExitCode::from(2);
            }
            let options = DiffOptions {
                differences_max: max_differences,
                ..DiffOptions::default()
            };
            return diff(args, secret.as_deref(), timeout, database, with, options);
        }
    };
    ask_once(args, secret.as_deref(), timeout, forwarded(to, command))
}

/// `command`, carried to node `to` if one is given.
fn forwarded(to: Option<uuid::Uuid>, command: Command) -> Command {
    match to {
        Some(to) => Command::Forward {
            to,
            command: Box::new(command),
        },
        None => command,
    }
}

/// The node `text` names: a uuid as it is, else the one node of that name in the view of the
/// node at `--node` (MEMBERS).
fn node_named(
    args: &CtlArgs,
    secret: Option<&[u8]>,
    timeout: Duration,
    text: &str,
) -> Result<uuid::Uuid, String> {
    if let Ok(node) = text.parse() {
        return Ok(node);
    }
    let members = match control::request(args.node, secret, Command::Members, timeout) {
        Ok(Reply::Members(members)) => members,
        Ok(Reply::Error { reason }) => return Err(format!("{}: {reason}", args.node)),
        Ok(other) => return Err(format!("{}: unexpected reply {other:?}", args.node)),
        Err(error) => return Err(format!("{}: {error}", args.node)),
    };
    let named: Vec<uuid::Uuid> = (members.iter())
        .filter(|member| member.name == text)
        .map(|member| member.node)
        .collect();
    match named.as_slice() {
        [node] => Ok(*node),
        [] => Err(format!(
            "no node named {text:?} is in the view of {} ({} nodes known; `members` lists them)",
            args.node,
            members.len()
        )),
        several => Err(format!(
            "{} nodes are named {text:?}: {}; give a uuid",
            several.len(),
            several
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The database `text` names: a uuid as it is, else the one the node at `--node` knows by that
/// name (RESOLVE). On failure, says why and returns the exit code.
fn database_named(
    args: &CtlArgs,
    secret: Option<&[u8]>,
    timeout: Duration,
    text: &str,
) -> Result<uuid::Uuid, ExitCode> {
    if let Ok(database) = text.parse() {
        return Ok(database);
    }
    let command = Command::Resolve {
        name: text.to_string(),
    };
    match control::request(args.node, secret, command, timeout) {
        Ok(Reply::Resolved { database }) => Ok(database),
        Ok(Reply::Error { reason }) => {
            eprintln!("pagemesh ctl: database {text:?}: {}: {reason}", args.node);
            Err(ExitCode::from(1))
        }
        Ok(other) => {
            eprintln!("pagemesh ctl: {}: unexpected reply {other:?}", args.node);
            Err(ExitCode::from(2))
        }
        Err(error) => {
            eprintln!("pagemesh ctl: {}: {error}", args.node);
            Err(ExitCode::from(2))
        }
    }
}

/// Asks `command` once and prints the answer.
fn ask_once(
    args: &CtlArgs,
    secret: Option<&[u8]>,
    timeout: Duration,
    command: Command,
) -> ExitCode {
    let asked = match &command {
        Command::Forward { command, .. } => command.as_ref(),
        command => command,
    };
    let reply = match control::request(args.node, secret, command.clone(), timeout) {
        Ok(reply) => reply,
        Err(error) => {
            eprintln!("pagemesh ctl: {}: {error}", args.node);
            return ExitCode::from(2);
        }
    };
    let failed = matches!(reply, Reply::Error { .. });
    if let (Reply::Lookup(holders), Command::Lookup { database }) = (&reply, asked) {
        let copies = copies(holders, *database, secret, timeout);
        if args.json {
            println!("{}", lookup_json(holders, &copies));
        } else {
            print!("{}", lookup_table(holders, &copies));
        }
    } else if args.json {
        println!("{}", to_json(&reply));
    } else {
        print!("{}", to_table(&reply));
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `status --watch`: asks every `interval` and redraws (clear screen, then the table; with
/// `--json`, one object a line), `count` times or until interrupted. Exits as the last answer
/// did.
fn watch_status(
    args: &CtlArgs,
    secret: Option<&[u8]>,
    to: Option<uuid::Uuid>,
    timeout: Duration,
    interval: Duration,
    count: Option<u64>,
) -> ExitCode {
    let mut answers = 0u64;
    loop {
        let started = std::time::Instant::now();
        let command = forwarded(to, Command::Status);
        let outcome = control::request(args.node, secret, command, timeout);
        let code = match &outcome {
            Ok(Reply::Error { .. }) => 1,
            Ok(_) => 0,
            Err(_) => 2,
        };
        if args.json {
            let line = match &outcome {
                Ok(reply) => to_json(reply),
                Err(error) => json!({ "error": error.to_string() }),
            };
            println!("{line}");
        } else {
            // Clear the screen, cursor home.
            print!("\x1b[2J\x1b[H");
            let now = time_of_day();
            println!(
                "pagemesh ctl --node {} status, every {interval:?}, at {now} UTC",
                args.node
            );
            match &outcome {
                Ok(reply) => print!("{}", to_table(reply)),
                Err(error) => println!("could not ask {}: {error}", args.node),
            }
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        answers += 1;
        if count.is_some_and(|count| answers >= count) {
            return ExitCode::from(code);
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

/// `HH:MM:SS` of the wall clock, UTC.
fn time_of_day() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let day = seconds % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, day % 3600 / 60, day % 60)
}

/// `diff`: compares the two copies; exit 0 equal, 1 differ, 2 not compared.
fn diff(
    args: &CtlArgs,
    secret: Option<&[u8]>,
    timeout: Duration,
    database: uuid::Uuid,
    with: SocketAddr,
    options: DiffOptions,
) -> ExitCode {
    let started = std::time::Instant::now();
    let report = match control::diff(args.node, with, secret, database, timeout, options) {
        Ok(report) => report,
        Err(error) => {
            if args.json {
                println!("{}", json!({ "error": error.to_string() }));
            }
            eprintln!(
                "pagemesh ctl: diff {database} between {} and {with}: {error}",
                args.node
            );
            return ExitCode::from(2);
        }
    };
    let elapsed = started.elapsed();
    if args.json {
        println!("{}", diff_json(args.node, with, database, &report, elapsed));
    } else {
        print!(
            "{}",
            diff_table(args.node, with, database, &report, elapsed)
        );
    }
    if report.equal() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Bytes as text where they are printable UTF-8, else as `0x` and hex.
fn readable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_string(),
        _ => format!("0x{}", hex(bytes)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn version_json(version: Option<&Version>) -> serde_json::Value {
    match version {
        None => serde_json::Value::Null,
        Some(version) => json!({
            "seq": version.seq,
            "value": String::from_utf8_lossy(&version.value),
            "value_hex": hex(&version.value),
        }),
    }
}

fn diff_json(
    a: SocketAddr,
    b: SocketAddr,
    database: uuid::Uuid,
    report: &DiffReport,
    elapsed: Duration,
) -> serde_json::Value {
    json!({
        "database": database.to_string(),
        "a": a.to_string(),
        "b": b.to_string(),
        "equal": report.equal(),
        "entries_a": report.entries_a,
        "entries_b": report.entries_b,
        "round_trips": report.round_trips,
        "ranges_digested": report.ranges_digested,
        "elapsed_ms": elapsed.as_secs_f64() * 1e3,
        "truncated": report.truncated,
        "unsettled": report.unsettled,
        "differences": report.differences.iter().map(|d| json!({
            "table": d.table,
            "key": String::from_utf8_lossy(&d.key),
            "key_hex": hex(&d.key),
            "a": version_json(d.a.as_ref()),
            "b": version_json(d.b.as_ref()),
        })).collect::<Vec<_>>(),
    })
}

fn diff_table(
    a: SocketAddr,
    b: SocketAddr,
    database: uuid::Uuid,
    report: &DiffReport,
    elapsed: Duration,
) -> String {
    let verdict = if report.equal() {
        "equal".to_string()
    } else if report.unsettled {
        "differ, but changed while compared: compare again".to_string()
    } else if report.truncated {
        format!("differ (the first {} keys below)", report.differences.len())
    } else {
        format!("differ ({} keys)", report.differences.len())
    };
    let mut out = format!(
        "database {database}: {verdict}\n  A {a}: {} entries\n  B {b}: {} entries\n  {} round trips, {} ranges digested, {:.1} ms\n",
        report.entries_a,
        report.entries_b,
        report.round_trips,
        report.ranges_digested,
        elapsed.as_secs_f64() * 1e3,
    );
    if report.differences.is_empty() {
        return out;
    }
    let shown = |version: Option<&Version>| match version {
        None => "(missing)".to_string(),
        Some(version) => {
            let mut value = readable(&version.value);
            if value.len() > 60 {
                let mut end = 57;
                while !value.is_char_boundary(end) {
                    end -= 1;
                }
                value.truncate(end);
                value.push_str("...");
            }
            format!("seq {}: {value}", version.seq)
        }
    };
    out += &format!("{:<16}  {:<24}  {:<40}  {}\n", "table", "key", "A", "B");
    for d in &report.differences {
        out += &format!(
            "{:<16}  {:<24}  {:<40}  {}\n",
            d.table,
            readable(&d.key),
            shown(d.a.as_ref()),
            shown(d.b.as_ref())
        );
    }
    out
}

fn secret(args: &CtlArgs) -> Result<Option<Vec<u8>>, String> {
    if let Some(path) = &args.secret_file {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("reading secret file {}: {e}", path.display()))?;
        let trimmed = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
        if trimmed.is_empty() {
            return Err(format!("secret file {} is empty", path.display()));
        }
        return Ok(Some(trimmed));
    }
    Ok(std::env::var("PAGEMESH_SECRET")
        .ok()
        .filter(|secret| !secret.is_empty())
        .map(String::into_bytes))
}

/// The most holders whose copies `lookup` describes (it asks each for its STATUS).
const LOOKUP_DESCRIBED_MAX: usize = 64;

/// Each holder's copy of `database`, as its own STATUS says (asked in parallel, each within
/// `timeout`), or why it could not be asked.
fn copies(
    holders: &[Holder],
    database: uuid::Uuid,
    secret: Option<&[u8]>,
    timeout: Duration,
) -> Vec<Result<DatabaseStatus, String>> {
    std::thread::scope(|scope| {
        let asked: Vec<_> = holders
            .iter()
            .take(LOOKUP_DESCRIBED_MAX)
            .map(|holder| {
                scope.spawn(move || {
                    match control::request(holder.addr, secret, Command::Status, timeout) {
                        Ok(Reply::Status(status)) => status
                            .databases
                            .into_iter()
                            .find(|db| db.database == database)
                            .ok_or_else(|| "no longer serves it".to_string()),
                        Ok(Reply::Error { reason }) => Err(reason),
                        Ok(_) => Err("answered STATUS with something else".into()),
                        Err(error) => Err(error.to_string()),
                    }
                })
            })
            .collect();
        asked
            .into_iter()
            .map(|asked| {
                asked
                    .join()
                    .unwrap_or_else(|_| Err("asking it panicked".into()))
            })
            .collect()
    })
}

/// A LOOKUP's holders with their copies: role, epoch and positions.
fn lookup_json(holders: &[Holder], copies: &[Result<DatabaseStatus, String>]) -> serde_json::Value {
    json!({
        "holders": holders.iter().enumerate().map(|(index, h)| {
            let mut entry = json!({ "node": h.node.to_string(), "addr": h.addr.to_string() });
            match copies.get(index) {
                Some(Ok(copy)) => {
                    entry["role"] = json!(if copy.relay { "relay" } else { "origin" });
                    entry["epoch"] = json!(copy.epoch);
                    entry["committed_lsn"] = json!(copy.committed_lsn);
                    entry["applied_lsn"] = json!(copy.applied_lsn);
                    entry["durable_lsn"] = json!(copy.durable_lsn);
                }
                Some(Err(error)) => entry["error"] = json!(error),
                None => {}
            }
            entry
        }).collect::<Vec<_>>(),
    })
}

fn lookup_table(holders: &[Holder], copies: &[Result<DatabaseStatus, String>]) -> String {
    let mut out = format!(
        "{:<36}  {:<21}  {:<6}  {:>5}  {:>13}  {:>13}  {:>13}\n",
        "node", "address", "role", "epoch", "committed", "applied", "durable"
    );
    for (index, holder) in holders.iter().enumerate() {
        out += &match copies.get(index) {
            Some(Ok(copy)) => format!(
                "{:<36}  {:<21}  {:<6}  {:>5}  {:>13}  {:>13}  {:>13}\n",
                holder.node,
                holder.addr,
                if copy.relay { "relay" } else { "origin" },
                copy.epoch,
                copy.committed_lsn,
                copy.applied_lsn,
                copy.durable_lsn
            ),
            Some(Err(error)) => format!("{:<36}  {:<21}  ({error})\n", holder.node, holder.addr),
            None => format!("{:<36}  {}\n", holder.node, holder.addr),
        };
    }
    out
}

fn to_json(reply: &Reply) -> serde_json::Value {
    match reply {
        Reply::Error { reason } => json!({ "error": reason }),
        Reply::Status(status) => json!({
            "node": status.node.to_string(),
            "name": status.name,
            "members": status.members,
            "databases": status.databases.iter().map(|db| json!({
                "database": db.database.to_string(),
                "origin": db.origin.to_string(),
                "relay": db.relay,
                "committed_lsn": db.committed_lsn,
                "links": db.links,
                "epoch": db.epoch,
                "applied_lsn": db.applied_lsn,
                "durable_lsn": db.durable_lsn,
                "ring_slots": db.ring_slots,
                "ring_used": db.ring_used,
                "upstream": db.upstream.map(|addr| addr.to_string()),
                "last_error": db.last_error,
                "replicas": db.replicas.iter().map(|r| json!({
                    "node": r.node.to_string(),
                    "name": r.name,
                    "state": r.state.name(),
                    "received_lsn": r.received_lsn,
                    "lag_pages": r.lag_pages,
                    "lag_bytes": r.lag_bytes,
                    "lag_ms": r.lag_ms,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
        Reply::Lookup(holders) => json!({
            "holders": holders.iter().map(|h| json!({
                "node": h.node.to_string(),
                "addr": h.addr.to_string(),
            })).collect::<Vec<_>>(),
        }),
        // `diff` prints its own report; ctl never asks these alone.
        Reply::Digest(_) | Reply::Entries { .. } => json!({ "error": "an unexpected reply" }),
        Reply::Done { message } => json!({ "done": message }),
        Reply::Members(members) => json!({
            "members": members.iter().map(|m| json!({
                "node": m.node.to_string(),
                "name": m.name,
                "addr": m.addr.to_string(),
                "databases": m.databases.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
        Reply::Resolved { database } => json!({ "database": database.to_string() }),
    }
}

fn to_table(reply: &Reply) -> String {
    match reply {
        Reply::Error { reason } => format!("error: {reason}\n"),
        Reply::Status(status) => {
            let mut out = format!(
                "node {} ({}), {} other nodes known\n{:<36}  {:<36}  {:<7}  {:>13}  {:>5}\n",
                status.name,
                status.node,
                status.members,
                "database",
                "origin",
                "copy",
                "committed",
                "links"
            );
            for db in &status.databases {
                out += &format!(
                    "{:<36}  {:<36}  {:<7}  {:>13}  {:>5}\n",
                    db.database,
                    db.origin,
                    if db.relay { "relayed" } else { "origin" },
                    db.committed_lsn,
                    db.links
                );
                out += &format!(
                    "  epoch {}, applied {}, durable {}, ring {} of {} pages in use{}{}\n",
                    db.epoch,
                    db.applied_lsn,
                    db.durable_lsn,
                    db.ring_used,
                    db.ring_slots,
                    db.upstream
                        .map(|addr| format!(", following {addr}"))
                        .unwrap_or_default(),
                    if db.last_error.is_empty() {
                        String::new()
                    } else {
                        format!(", last error: {}", db.last_error)
                    }
                );
                for replica in &db.replicas {
                    out += &format!(
                        "  replica {} ({}) {}: received {}, behind {} pages, {} bytes, {} ms\n",
                        replica.name,
                        replica.node,
                        replica.state.name(),
                        replica.received_lsn,
                        replica.lag_pages,
                        replica.lag_bytes,
                        replica.lag_ms
                    );
                }
            }
            out
        }
        Reply::Lookup(holders) => {
            let mut out = format!("{:<36}  {}\n", "node", "address");
            for holder in holders {
                out += &format!("{:<36}  {}\n", holder.node, holder.addr);
            }
            out
        }
        Reply::Digest(_) | Reply::Entries { .. } => "error: an unexpected reply\n".into(),
        Reply::Done { message } => format!("{message}\n"),
        Reply::Members(members) => {
            let mut out = format!(
                "{:<36}  {:<20}  {:<22}  {}\n",
                "node", "name", "address", "serves"
            );
            for m in members {
                let serves: Vec<String> = m.databases.iter().map(ToString::to_string).collect();
                out += &format!(
                    "{:<36}  {:<20}  {:<22}  {}\n",
                    m.node,
                    m.name,
                    m.addr,
                    serves.join(" ")
                );
            }
            out
        }
        Reply::Resolved { database } => format!("{database}\n"),
    }
}
