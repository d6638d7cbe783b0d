//! `pagemesh node --config node.toml`: a long-lived node.
//!
//! ```toml
//! name = "primary"
//! listen = "127.0.0.1:7400"        # optional: omit for a node that only follows
//! data_dir = "/var/lib/pagemesh"
//! secret_file = "/etc/pagemesh/secret"   # or: secret = "...", or env PAGEMESH_SECRET
//! transport = "auto"                # auto | uring | epoll
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
//! sync_replicas = 1
//!
//! [[databases]]
//! name = "land-registry-copy"
//! role = "replica"
//! sources = ["127.0.0.1:7401", "127.0.0.1:7402"]   # holders, nearest first (or: source = "…")
//! uuid = "…"                         # the source database's uuid (printed by its node)
//! ```
//!
//! A replica follows one of its `sources` at a time: any node holding a copy, the origin or a
//! replica, since every node that listens relays what it holds. When that link fails it follows
//! the next at once (`pagemesh::Node::replicate_from_any`), so a mesh can be drawn as a tree in
//! the configs, each node listing its neighbours nearer the origin, and a failed relay is
//! routed around.
//!
//! On start the node prints its identity, `node NAME uuid UUID` (created once and kept in
//! `data_dir/node.uuid`), then `node NAME listening on ADDR` if it listens, then one line per
//! database, `database NAME uuid UUID role ROLE`, so scripts and tests can pick up a source's
//! uuid. It then runs until SIGINT or SIGTERM and shuts
//! down cleanly (links closed, appliers drained). Without a secret it listens on loopback only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pagemesh::core::Options;
use pagemesh::net::{ServiceConfig, TransportKind};
use pagemesh::Node;
use serde::Deserialize;

/// Options of `pagemesh node`.
#[derive(clap::Args)]
pub struct Args {
    /// The node's TOML configuration.
    #[arg(long)]
    config: PathBuf,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "role")]
enum DatabaseConfig {
    Source {
        name: String,
        #[serde(default)]
        sync_replicas: usize,
    },
    Replica {
        name: String,
        source: Option<SocketAddr>,
        #[serde(default)]
        sources: Vec<SocketAddr>,
        uuid: uuid::Uuid,
    },
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

/// Runs the node until SIGINT or SIGTERM.
pub fn run(args: &Args) -> Result<(), BoxError> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("reading {}: {e}", args.config.display()))?;
    let config: Config =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", args.config.display()))?;
    let transport: TransportKind = config.transport.parse()?;
    let mut builder = Node::builder(&config.name, &config.data_dir)
        .secret(secret(&config)?)
        .transport(transport)
        .network(|network| config.admission.configure(network));
    if let Some(listen) = config.listen {
        builder = builder.listen(listen);
    }
    let node = builder.open()?;
    println!("node {} uuid {}", config.name, node.uuid());
    if let Some(addr) = node.local_addr() {
        println!("node {} listening on {addr}", config.name);
    }
    let mut sources = Vec::new();
    let mut replicas = Vec::new();
    for database in &config.databases {
        match database {
            DatabaseConfig::Source {
                name,
                sync_replicas,
            } => {
                let db = node.open_database(name, Options::new())?;
                node.serve(&db, *sync_replicas);
                println!("database {name} uuid {} role source", db.uuid());
                sources.push(db);
            }
            DatabaseConfig::Replica {
                name,
                source,
                sources,
                uuid,
            } => {
                let holders: Vec<SocketAddr> = source.iter().chain(sources).copied().collect();
                if holders.is_empty() {
                    return Err(format!(
                        "{}: database {name}: a replica needs `source` or `sources`",
                        args.config.display()
                    )
                    .into());
                }
                let replica = node.replicate_from_any(&holders, *uuid, name, Options::new())?;
                println!("database {name} uuid {uuid} role replica");
                replicas.push(replica);
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("stopping");
    drop(replicas);
    drop(node);
    drop(sources);
    println!("node {} stopped", config.name);
    Ok(())
}
