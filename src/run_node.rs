//! `pagemesh node --config node.toml`: a long-lived node. `pagemesh node --check-config
//! node.toml` validates a configuration without starting anything (exit 0, or 1 with the
//! problem: an unknown key is named with its line).
//!
//! ```toml
//! name = "primary"
//! listen = "127.0.0.1:7400"        # optional: omit for a node that only follows
//! data_dir = "/var/lib/pagemesh"
//! secret_file = "/etc/pagemesh/secret"   # or: secret = "...", or env PAGEMESH_SECRET
//! transport = "auto"                # auto | uring | epoll
//! metrics_listen = "127.0.0.1:9400" # optional: Prometheus text on http://ADDR/metrics
//! log_level = "info"                # a tracing filter (RUST_LOG, when set, wins); default info
//! log_format = "text"               # text | json (or --log-format)
//! peers = ["10.0.0.2:7400"]         # nodes to gossip with: through them the node learns the
//!                                   # rest of the mesh and who serves which database
//!
//! [admission]                        # optional; these are the defaults (see
//! links_max = 1024                   # pagemesh_net::service::admission)
//! handshake_budget_bytes = 6291456   # memory of all unauthenticated connections: 512 of them
//! handshakes_per_address = 64
//! handshake_timeout_ms = 3000
//!
//! [[databases]]
//! name = "land-registry"
//! role = "source"
//! sync_replicas = 1                  # replicas whose acks count for `replicated:N`
//! durability = "durable"             # memory | applied | durable | replicated:N |
//!                                    # durable_replicated:N: what commit_default waits for
//! ring_pages = 4096                  # log ring size in 4 KiB pages: a power of two, 4..=2^24
//! retain_bytes = 268435456           # binlog history kept for replicas that fall behind
//! retain_age_seconds = 86400         # and/or trimmed by age (default: no age limit)
//! apply_nice = 10                    # nice steps the LMDB applier runs below the node (0..=19;
//!                                    # 0 on a machine that does nothing else)
//! flush_pace_ms = 10                 # how long pages no commit waits to see durable gather
//!                                    # between syncs of the log ring (0..=60000; default 10 on
//!                                    # a source, 1000 on a replica, whose syncs nobody awaits)
//! apply_pace_ms = 20                 # how long ready pages gather into one LMDB group while
//!                                    # nobody waits for `applied` (0..=60000; default 20 on a
//!                                    # source, 50 on a replica): longer groups sync LMDB less
//!                                    # often on the ring's disk, and readers that do not wait
//!                                    # see a commit up to this much later
//! group_dirty_bytes = 134217728     # about the most memory LMDB keeps for one applied
//!                                    # group's changed pages, in a database larger than this
//!                                    # (4096..; default 128 MiB; smaller slows bulk loads)
//! replication_timeout_ms = 10000     # how long a replicated:N commit waits for its replicas
//! on_replication_timeout = "fail"    # fail | degrade (return Ok with a warning)
//!
//! [[databases]]
//! name = "land-registry-copy"
//! role = "replica"
//! sources = ["127.0.0.1:7401", "127.0.0.1:7402"]   # holders, nearest first (or: source = "…";
//!                                    # or neither: whichever nodes the gossip says hold it)
//! uuid = "…"                         # the source database's uuid (printed by its node)
//! ring_pages = 4096                  # ring_pages, retain_*, apply_nice, the paces and
//!                                    # group_dirty_bytes apply to replicas too
//! ```
//!
//! Keys that apply to one role only (`sync_replicas`, `durability`, the replication timeout and
//! degrade rule to sources; `source`, `sources` and `uuid` to replicas) are refused on the other,
//! as is any unknown key: a configuration never means something it does not say.
//!
//! A replica follows one of its `sources` at a time: any node holding a copy, the origin or a
//! replica, since every node that listens relays what it holds. When that link fails it follows
//! the next at once (`pagemesh::Node::replicate_from_any`), so a mesh can be drawn as a tree in
//! the configs, each node listing its neighbours nearer the origin, and a failed relay is
//! routed around. A replica with neither `source` nor `sources` follows the holders the node
//! learns of by gossip through its `peers` (`pagemesh::Node::replicate_discovered`).
//!
//! On start the node prints its identity, `node NAME uuid UUID` (created once and kept in
//! `data_dir/node.uuid`), then `node NAME listening on ADDR` if it listens, then one line per
//! database, `database NAME uuid UUID role ROLE`, so scripts and tests can pick up a source's
//! uuid, then `node NAME metrics on http://ADDR/metrics` if it serves metrics (`crate::metrics`).
//! It then runs until SIGINT or SIGTERM and shuts
//! down cleanly (links closed, appliers drained). Without a secret it listens on loopback only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pagemesh::core::{Durability, Options, APPLY_PACE, REPLICA_APPLY_PACE};
use pagemesh::log::PAGE_SIZE;
use pagemesh::net::{ServiceConfig, TransportKind};
use pagemesh::Node;
use serde::Deserialize;

use crate::metrics::MetricsServer;

/// Options of `pagemesh node`.
#[derive(clap::Args)]
pub struct Args {
    /// The node's TOML configuration.
    #[arg(
        long,
        required_unless_present = "check_config",
        conflicts_with = "check_config"
    )]
    config: Option<PathBuf>,
    /// Validate this configuration and exit (0: valid; 1: the problem is printed).
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// Log format: text or json (overrides the configuration's `log_format`).
    #[arg(long)]
    log_format: Option<LogFormat>,
}

/// How the node writes its log (to stderr).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event, for log collectors.
    Json,
}

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML for a node's configuration: toml's message names the key and its line.
    #[error("{path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: toml::de::Error,
    },
    /// A node-level key has a value that cannot work.
    #[error("{path}: `{key}`: {problem}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A database's entry cannot work.
    #[error("{path}: database {database:?}: {problem}")]
    Database {
        /// The file.
        path: PathBuf,
        /// The database's name.
        database: String,
        /// What is wrong.
        problem: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: String,
    listen: Option<SocketAddr>,
    data_dir: PathBuf,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    #[serde(default = "auto")]
    transport: String,
    metrics_listen: Option<SocketAddr>,
    log_level: Option<String>,
    #[serde(default)]
    log_format: LogFormat,
    #[serde(default)]
    peers: Vec<SocketAddr>,
    #[serde(default)]
    admission: Admission,
    #[serde(default)]
    databases: Vec<DatabaseConfig>,
}

/// Who may connect: `[admission]` (any key left out keeps its default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Admission {
    links_max: Option<usize>,
    handshake_budget_bytes: Option<usize>,
    handshakes_per_address: Option<usize>,
    handshake_timeout_ms: Option<u64>,
}

impl Admission {
    fn configure(&self, mut config: ServiceConfig) -> ServiceConfig {
        if let Some(count) = self.links_max {
            config = config.links_max(count);
        }
        if let Some(bytes) = self.handshake_budget_bytes {
            config = config.handshake_budget(bytes);
        }
        if let Some(count) = self.handshakes_per_address {
            config = config.handshakes_per_address(count);
        }
        if let Some(ms) = self.handshake_timeout_ms {
            config = config.handshake_timeout(Duration::from_millis(ms));
        }
        config
    }
}

fn auto() -> String {
    "auto".into()
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Role {
    Source,
    Replica,
}

/// One `[[databases]]` entry. A flat struct (not an enum tagged by `role`), so that toml's
/// errors keep the line of the offending key; the role's own keys are checked in [`plan`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseConfig {
    name: String,
    role: Role,
    // Sources only.
    sync_replicas: Option<usize>,
    durability: Option<String>,
    replication_timeout_ms: Option<u64>,
    on_replication_timeout: Option<OnTimeout>,
    // Replicas only.
    source: Option<SocketAddr>,
    #[serde(default)]
    sources: Vec<SocketAddr>,
    uuid: Option<uuid::Uuid>,
    // Both.
    ring_pages: Option<u64>,
    retain_bytes: Option<u64>,
    retain_age_seconds: Option<u64>,
    apply_nice: Option<i32>,
    apply_pace_ms: Option<u64>,
    flush_pace_ms: Option<u64>,
    group_dirty_bytes: Option<usize>,
}

/// What a `replicated:N` commit does when too few replicas acked in time.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum OnTimeout {
    /// Fail with a replication timeout (the write stays committed locally).
    Fail,
    /// Return Ok with a warning.
    Degrade,
}

/// A database to open, as the configuration says.
#[derive(Debug)]
enum Database {
    Source {
        name: String,
        sync_replicas: usize,
        options: Options,
    },
    Replica {
        name: String,
        holders: Vec<SocketAddr>,
        uuid: uuid::Uuid,
        options: Options,
    },
}

/// A configuration that passed every check: what `run` starts.
#[derive(Debug)]
struct Plan {
    config: Config,
    transport: TransportKind,
    filter: tracing_subscriber::EnvFilter,
    databases: Vec<Database>,
}

/// Reads and checks the configuration at `path`.
fn plan(path: &Path) -> Result<Plan, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Toml {
        path: path.into(),
        source,
    })?;
    let key = |key, problem: String| ConfigError::Key {
        path: path.into(),
        key,
        problem,
    };
    let transport: TransportKind = config.transport.parse().map_err(|e| key("transport", e))?;
    let level = config.log_level.as_deref().unwrap_or("info");
    tracing_subscriber::EnvFilter::try_new(level).map_err(|e| key("log_level", e.to_string()))?;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => tracing_subscriber::EnvFilter::new(directives),
        _ => tracing_subscriber::EnvFilter::new(level),
    };
    if let Some(addr) = config.listen {
        let has_secret = config.secret.is_some()
            || config.secret_file.is_some()
            || std::env::var("PAGEMESH_SECRET").is_ok_and(|s| !s.is_empty());
        if !has_secret && !addr.ip().is_loopback() {
            return Err(key("listen", format!("{addr} is not loopback, and no secret is configured (secret_file, secret or PAGEMESH_SECRET): peers could not be authenticated")));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    let mut databases = Vec::new();
    for database in &config.databases {
        let problem = |problem: String| ConfigError::Database {
            path: path.into(),
            database: database.name.clone(),
            problem,
        };
        if !names.insert(database.name.as_str()) {
            return Err(problem("named twice".into()));
        }
        databases.push(database_plan(database, &config.peers).map_err(problem)?);
    }
    Ok(Plan {
        transport,
        filter,
        databases,
        config,
    })
}

/// The longest pace a node takes (`flush_pace_ms`, `apply_pace_ms`): a minute of pages nobody
/// waits for off the disk is already more than a power loss should take, and a minute is more
/// than any reader that does not wait should lag.
const PACE_MS_MAX: u64 = 60_000;

/// The pace `key` sets, if it is within 0..=[`PACE_MS_MAX`]; `zero` says what 0 means.
fn pace(key: &str, ms: u64, zero: &str) -> Result<Duration, String> {
    if ms > PACE_MS_MAX {
        return Err(format!(
            "`{key}` = {ms}: from 0 ({zero}) to {PACE_MS_MAX} is needed"
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// The bytes of `role`'s default apply pace: a configured `apply_pace_ms` replaces the window
/// and keeps them.
fn role_apply_pace_bytes(role: Role) -> usize {
    match role {
        Role::Source => APPLY_PACE.1,
        Role::Replica => REPLICA_APPLY_PACE.1,
    }
}

/// Checks one database entry and makes its options.
fn database_plan(database: &DatabaseConfig, peers: &[SocketAddr]) -> Result<Database, String> {
    let mut options = Options::new();
    if let Some(pages) = database.ring_pages {
        if !(4..=1 << 24).contains(&pages) || !pages.is_power_of_two() {
            return Err(format!(
                "`ring_pages` = {pages}: a power of two from 4 to 16777216 is needed"
            ));
        }
        options = options.ring_slots(pages);
    }
    if let Some(bytes) = database.retain_bytes {
        options = options.binlog_retain_bytes(bytes);
    }
    if let Some(seconds) = database.retain_age_seconds {
        options = options.binlog_retain_age(Duration::from_secs(seconds));
    }
    if let Some(steps) = database.apply_nice {
        if !(0..=19).contains(&steps) {
            return Err(format!(
                "`apply_nice` = {steps}: from 0 (the node's priority) to 19 (the lowest) is needed"
            ));
        }
        options = options.apply_nice(steps);
    }
    if let Some(ms) = database.flush_pace_ms {
        options = options.flush_pace(pace("flush_pace_ms", ms, "a sync a page")?);
    }
    if let Some(ms) = database.apply_pace_ms {
        let window = pace("apply_pace_ms", ms, "apply each ready page at once")?;
        options = options.apply_pace(window, role_apply_pace_bytes(database.role));
    }
    if let Some(bytes) = database.group_dirty_bytes {
        if bytes < PAGE_SIZE {
            return Err(format!(
                "`group_dirty_bytes` = {bytes}: at least one {PAGE_SIZE}-byte page is needed"
            ));
        }
        options = options.group_dirty_bytes_max(bytes);
    }
    let only = |key: &str, present: bool, role: &str| {
        if present {
            Err(format!("`{key}` applies to a {role} only"))
        } else {
            Ok(())
        }
    };
    let name = database.name.clone();
    match database.role {
        Role::Source => {
            only("source", database.source.is_some(), "replica")?;
            only("sources", !database.sources.is_empty(), "replica")?;
            only("uuid", database.uuid.is_some(), "replica")?;
            let sync_replicas = database.sync_replicas.unwrap_or(0);
            if let Some(text) = &database.durability {
                let durability = parse_durability(text)?;
                let wanted = durability.replicas().unwrap_or(0) as usize;
                if wanted > sync_replicas {
                    return Err(format!("`durability` = {text:?} waits for {wanted} replicas, but `sync_replicas` is {sync_replicas}: every such commit would time out"));
                }
                options = options.durability(durability);
            }
            if let Some(ms) = database.replication_timeout_ms {
                options = options.replication_timeout(Duration::from_millis(ms));
            }
            if let Some(rule) = database.on_replication_timeout {
                options = options.degrade_on_timeout(rule == OnTimeout::Degrade);
            }
            Ok(Database::Source {
                name,
                sync_replicas,
                options,
            })
        }
        Role::Replica => {
            only("sync_replicas", database.sync_replicas.is_some(), "source")?;
            only("durability", database.durability.is_some(), "source")?;
            only(
                "replication_timeout_ms",
                database.replication_timeout_ms.is_some(),
                "source",
            )?;
            only(
                "on_replication_timeout",
                database.on_replication_timeout.is_some(),
                "source",
            )?;
            let holders: Vec<SocketAddr> = database
                .source
                .iter()
                .chain(&database.sources)
                .copied()
                .collect();
            if holders.is_empty() && peers.is_empty() {
                return Err(
                    "a replica needs `source`, `sources`, or `peers` to learn its holders from"
                        .into(),
                );
            }
            let uuid = database
                .uuid
                .ok_or("a replica needs `uuid`: the source database's, printed by its node")?;
            Ok(Database::Replica {
                name,
                holders,
                uuid,
                options,
            })
        }
    }
}

/// `memory`, `applied`, `durable`, `replicated:N` or `durable_replicated:N`.
fn parse_durability(text: &str) -> Result<Durability, String> {
    let replicas = |n: &str| {
        n.parse::<u32>().ok().filter(|&n| n > 0).ok_or_else(|| {
            format!("`durability` = {text:?}: the replica count must be a number above 0")
        })
    };
    match text.split_once(':') {
        None => match text {
            "memory" => Ok(Durability::Memory),
            "applied" => Ok(Durability::Applied),
            "durable" => Ok(Durability::Durable),
            _ => Err(format!("`durability` = {text:?}: expected memory, applied, durable, replicated:N or durable_replicated:N")),
        },
        Some(("replicated", n)) => Ok(Durability::Replicated(replicas(n)?)),
        Some(("durable_replicated", n)) => Ok(Durability::DurableReplicated(replicas(n)?)),
        Some(_) => Err(format!("`durability` = {text:?}: expected memory, applied, durable, replicated:N or durable_replicated:N")),
    }
}

type BoxError = Box<dyn std::error::Error>;

fn secret(config: &Config) -> Result<Option<Vec<u8>>, BoxError> {
    if let Some(path) = &config.secret_file {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("reading secret file {}: {e}", path.display()))?;
        let trimmed = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
        if trimmed.is_empty() {
            return Err(format!("secret file {} is empty", path.display()).into());
        }
        return Ok(Some(trimmed));
    }
    if let Some(secret) = &config.secret {
        return Ok(Some(secret.as_bytes().to_vec()));
    }
    Ok(std::env::var("PAGEMESH_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .map(String::into_bytes))
}

/// Starts the log: the plan's filter, in `format`, to stderr.
fn init_logging(filter: tracing_subscriber::EnvFilter, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `--check-config FILE`, or runs the node until SIGINT or SIGTERM.
pub fn run(args: &Args) -> Result<(), BoxError> {
    if let Some(path) = &args.check_config {
        let plan = plan(path)?;
        secret(&plan.config)?;
        println!(
            "{}: valid: node {}, {} database(s)",
            path.display(),
            plan.config.name,
            plan.databases.len()
        );
        return Ok(());
    }
    let Some(path) = &args.config else {
        return Err("--config or --check-config is needed".into());
    };
    let plan = plan(path)?;
    init_logging(
        plan.filter,
        args.log_format.unwrap_or(plan.config.log_format),
    );
    serve(plan.config, plan.transport, plan.databases)
}

fn serve(
    config: Config,
    transport: TransportKind,
    databases: Vec<Database>,
) -> Result<(), BoxError> {
    let mut builder = Node::builder(&config.name, &config.data_dir)
        .secret(secret(&config)?)
        .transport(transport)
        .peers(config.peers.clone())
        .network(|network| config.admission.configure(network));
    if let Some(listen) = config.listen {
        builder = builder.listen(listen);
    }
    let node = Arc::new(builder.open()?);
    println!("node {} uuid {}", config.name, node.uuid());
    if let Some(addr) = node.local_addr() {
        println!("node {} listening on {addr}", config.name);
    }

    let mut sources = Vec::new();
    let mut replicas = Vec::new();
    for database in databases {
        match database {
            Database::Source {
                name,
                sync_replicas,
                options,
            } => {
                let db = node.open_database(&name, options)?;
                node.serve(&db, sync_replicas);
                println!("database {name} uuid {} role source", db.uuid());
                sources.push(db);
            }
            Database::Replica {
                name,
                holders,
                uuid,
                options,
            } => {
                let replica = if holders.is_empty() {
                    node.replicate_discovered(uuid, &name, options)?
                } else {
                    node.replicate_from_any(&holders, uuid, &name, options)?
                };
                println!("database {name} uuid {uuid} role replica");
                replicas.push(replica);
            }
        }
    }
    let metrics = match config.metrics_listen {
        Some(addr) => {
            let scraped = Arc::clone(&node);
            let server = MetricsServer::start(
                addr,
                Arc::new(move || crate::metrics::encode(scraped.metrics())),
            )
            .map_err(|e| format!("metrics_listen {addr}: {e}"))?;
            println!(
                "node {} metrics on http://{}/metrics",
                config.name,
                server.local_addr()
            );
            Some(server)
        }
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("stopping");
    drop(metrics);
    drop(replicas);
    drop(node);
    drop(sources);
    println!("node {} stopped", config.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{database_plan, Database, DatabaseConfig};
    use pagemesh::core::{APPLY_PACE, REPLICA_APPLY_PACE};

    /// A source entry, to which a test appends its keys.
    const SOURCE: &str = "name = \"db\"\nrole = \"source\"\n";
    /// A replica entry, to which a test appends its keys.
    const REPLICA: &str = "name = \"copy\"\nrole = \"replica\"\nsource = \"127.0.0.1:7400\"\n\
                           uuid = \"6f1c1f7e-0d4b-4a43-9a0e-6c1b8c9b2a11\"\n";

    /// The options `database_plan` makes of `entry`, as their `Debug` shows them (`Options`
    /// keeps its fields private), and whether they are a source's.
    fn planned(entry: &str) -> (bool, String) {
        let config: DatabaseConfig = toml::from_str(entry).unwrap();
        match database_plan(&config, &[]) {
            Ok(Database::Source { options, .. }) => (true, format!("{options:?}")),
            Ok(Database::Replica { options, .. }) => (false, format!("{options:?}")),
            Err(error) => panic!("{entry}: {error}"),
        }
    }

    /// The error `database_plan` gives for `entry`.
    fn plan_error(entry: &str) -> String {
        let config: DatabaseConfig = toml::from_str(entry).unwrap();
        match database_plan(&config, &[]) {
            Ok(_) => panic!("{entry}: accepted"),
            Err(error) => error,
        }
    }

    #[test]
    fn flush_pace_ms_reaches_the_options_of_both_roles() {
        let (source, options) = planned(&format!("{SOURCE}flush_pace_ms = 250\n"));
        assert!(source);
        assert!(options.contains("flush_pace: Some(250ms)"), "{options}");

        let (source, options) = planned(&format!("{REPLICA}flush_pace_ms = 0\n"));
        assert!(!source);
        assert!(options.contains("flush_pace: Some(0ns)"), "{options}");
    }

    #[test]
    fn group_dirty_bytes_reaches_the_options_of_both_roles_and_less_than_a_page_is_refused() {
        let (_, options) = planned(&format!("{SOURCE}group_dirty_bytes = 67108864\n"));
        assert!(
            options.contains("group_dirty_bytes_max: 67108864"),
            "{options}"
        );
        let (_, options) = planned(&format!("{REPLICA}group_dirty_bytes = 8192\n"));
        assert!(options.contains("group_dirty_bytes_max: 8192"), "{options}");
        let (_, options) = planned(SOURCE);
        let default = pagemesh::core::GROUP_DIRTY_BYTES_MAX_DEFAULT;
        assert!(
            options.contains(&format!("group_dirty_bytes_max: {default}")),
            "{options}"
        );

        let error = plan_error(&format!("{SOURCE}group_dirty_bytes = 100\n"));
        assert!(error.contains("`group_dirty_bytes` = 100"), "{error}");
    }

    /// The window is the configuration's; the bytes stay the role's default.
    #[test]
    fn apply_pace_ms_reaches_the_options_of_both_roles_with_their_bytes() {
        let (source, options) = planned(&format!("{SOURCE}apply_pace_ms = 50\n"));
        assert!(source);
        let bytes = APPLY_PACE.1;
        assert!(
            options.contains(&format!("apply_pace: Some((50ms, {bytes}))")),
            "{options}"
        );

        let (source, options) = planned(&format!("{REPLICA}apply_pace_ms = 0\n"));
        assert!(!source);
        let bytes = REPLICA_APPLY_PACE.1;
        assert!(
            options.contains(&format!("apply_pace: Some((0ns, {bytes}))")),
            "{options}"
        );
    }
}
