//! A node: databases, the network, and the wiring between them.
//!
//! `pagemesh-core` (the store) and `pagemesh-net` (the network) never import each other
//! (DESIGN.md); this module is where they meet. It implements the network's
//! [`SourceDatabase`], [`ReplicaDatabase`] and [`ReplicaStore`] for core's [`Database`]:
//!
//! - a source's binlog catch-up reads [`pagemesh_core::Snapshot::binlog_range`], its snapshots are
//!   [`pagemesh_core::Snapshot::export`], and every replica link attaches a
//!   [`pagemesh_core::ReplicaLink`], whose acks release `Replicated(n)` commits;
//! - a replica lives in `data_dir/NAME/generation-N`: a bootstrap (or a re-bootstrap after the
//!   source's binlog moved past it) restores the snapshot into the next generation and switches to
//!   it, so handles to the old one stay valid until dropped.
//!
//! ```
//! use pagemesh::{Durability, Node, Options, WriteBatch};
//!
//! let dir = tempfile::tempdir()?;
//! let loopback = "127.0.0.1:0".parse()?;
//! let primary = Node::builder("primary", dir.path().join("a")).listen(loopback).open()?;
//! let replica_node = Node::builder("replica", dir.path().join("b")).open()?;
//!
//! let db = primary.open_database("prices", Options::new())?;
//! primary.serve(&db, 1);
//! let replica = replica_node.replicate(primary.local_addr().unwrap(), db.uuid(), "prices", Options::new())?;
//!
//! let mut batch = WriteBatch::new();
//! batch.put("sales", b"{A1}", b"250000")?;
//! // Received by the replica when it returns; applied there a moment later.
//! let receipt = db.commit_with_receipt(&batch, Durability::Replicated(1))?;
//!
//! let copy = replica.wait_for(&receipt, std::time::Duration::from_secs(30))?;
//! assert_eq!(copy.read()?.get("sales", b"{A1}")?.map(|v| v.seq), Some(receipt.version()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use pagemesh_core::{Database, DatabaseMetrics, Options, Receipt, ReplicaLink, ReplicaState};
use pagemesh_logpage::Log;
use pagemesh_net::diff::{self, ScanEntry};
use pagemesh_net::proto::command::{Command, KeyRange, Reply};
use pagemesh_net::proto::PeerEntry;
use pagemesh_net::Controller;
use pagemesh_net::{
    AckSink, BoxError, CopyReport, DatabaseLog, History, LinkFailure, NetMetricsSnapshot,
    ReplicaDatabase, ReplicaReport, ReplicaStore, RuntimeKind, Service, ServiceConfig,
    SourceDatabase, Subscription, SubscriptionStatus, TransportKind,
};
use uuid::Uuid;

/// What can go wrong at the node level.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] pagemesh_core::Error),
    /// The network failed.
    #[error(transparent)]
    Net(#[from] pagemesh_net::Error),
    /// A file operation in the data directory failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A replica did not reach what was waited for in time.
    #[error("replica {name}: {what} not reached within {waited:?}")]
    Timeout {
        /// The replica's name.
        name: String,
        /// What was waited for.
        what: String,
        /// How long.
        waited: Duration,
    },
    /// The same database name was opened twice.
    #[error("database {name} is already open on this node")]
    AlreadyOpen {
        /// The name.
        name: String,
    },
    /// The node's identity file exists but does not hold a uuid.
    #[error("node identity {path}: {reason} (delete the file only if this node should become a new node)")]
    Identity {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The list of commanded copies ([`COMMANDED_REPLICAS_FILE`]) has a line that is not
    /// `uuid name`.
    #[error("{path} line {line}: {reason} (fix or remove the line to start the node)")]
    CommandedReplicas {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// [`Node::replicate`]: nothing listens at the source's address (the connection was
    /// refused). Nothing is kept following it.
    #[error("cannot replicate from {addr}: nothing is listening there ({kind})")]
    Unreachable {
        /// The source's address.
        addr: SocketAddr,
        /// The connection's error (`ConnectionRefused`).
        kind: std::io::ErrorKind,
    },
    /// [`Node::replicate`]: the node at `addr` holds no copy of `database` (it does not serve
    /// it, or not yet: serve it there first). Nothing is kept following it.
    #[error(
        "cannot replicate database {database} from {addr}: that node does not hold it ({reason})"
    )]
    UnknownDatabase {
        /// The source's address.
        addr: SocketAddr,
        /// The database asked for.
        database: Uuid,
        /// The node's reason.
        reason: String,
    },
    /// [`Node::replicate`]: the node at `addr` refused the link for a reason a retry does not
    /// mend (another cluster secret, no common protocol version). Nothing is kept following it.
    #[error("cannot replicate from {addr}: refused (code {code}): {reason}")]
    Refused {
        /// The source's address.
        addr: SocketAddr,
        /// The refusal code (`pagemesh::net::proto::frame::RefuseCode` as u16).
        code: u16,
        /// The node's reason.
        reason: String,
    },
    /// [`Node::replicate`] by name: the node at `addr` could not say which database it calls
    /// `name` (it knows none by that name, or could not be asked). Nothing is kept following.
    #[error("cannot replicate database {name:?} from {addr}: {reason}")]
    UnknownName {
        /// The source's address.
        addr: SocketAddr,
        /// The name asked for.
        name: String,
        /// Why it could not be resolved.
        reason: String,
    },
    /// The binlog skipped a page: a source never ships a gap.
    #[error("binlog gap: expected page {expected}, found {found}")]
    BinlogGap {
        /// The LSN that should have come next.
        expected: u64,
        /// The LSN that did.
        found: u64,
    },
}

mod commanded;

use commanded::Commanded;
pub use commanded::{COMMANDED_REPLICAS_FILE, COMMANDED_REPLICAS_MAX};

/// The file in a node's data directory that holds its uuid: created once, on the node's first
/// open, and read on every open after, so a node keeps its identity across restarts (peers,
/// links and acks name it by this uuid).
pub const NODE_ID_FILE: &str = "node.uuid";

/// The node uuid kept in `data_dir`, created (written to a temporary file, synced, renamed and
/// the directory synced) if there is none yet.
fn node_identity(data_dir: &Path) -> Result<Uuid, NodeError> {
    let path = data_dir.join(NODE_ID_FILE);
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| NodeError::Io { op, path, source }
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<Uuid>()
            .map_err(|error| NodeError::Identity {
                path: path.clone(),
                reason: format!("not a uuid ({error})"),
            }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let uuid = Uuid::new_v4();
            let temporary = data_dir.join(format!("{NODE_ID_FILE}.tmp"));
            {
                let mut file =
                    std::fs::File::create(&temporary).map_err(io("create", &temporary))?;
                writeln!(file, "{uuid}").map_err(io("write", &temporary))?;
                file.sync_all().map_err(io("sync", &temporary))?;
            }
            std::fs::rename(&temporary, &path).map_err(io("rename", &path))?;
            std::fs::File::open(data_dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io("sync", data_dir))?;
            tracing::info!(%uuid, path = %path.display(), "created this node's identity");
            Ok(uuid)
        }
        Err(source) => Err(NodeError::Io {
            op: "read",
            path,
            source,
        }),
    }
}

/// Builds a [`Node`]; see [`Node::builder`].
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    data_dir: PathBuf,
    config: ServiceConfig,
}

impl NodeBuilder {
    /// Accept replica links on `addr` (port 0 picks a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config = self.config.listen(addr);
        self
    }
    /// Nodes to gossip with (see [`ServiceConfig::peers`]): through them this node learns the
    /// rest of the mesh, and which nodes serve which database, so that
    /// [`Node::replicate_discovered`] needs no address.
    pub fn peers(mut self, peers: Vec<SocketAddr>) -> Self {
        self.config = self.config.peers(peers);
        self
    }
    /// How often this node gossips (see [`ServiceConfig::gossip_interval`]).
    pub fn gossip_interval(mut self, interval: Duration) -> Self {
        self.config = self.config.gossip_interval(interval);
        self
    }
    /// The cluster secret (see [`ServiceConfig::secret`]).
    pub fn secret(mut self, secret: Option<Vec<u8>>) -> Self {
        self.config = self.config.secret(secret);
        self
    }
    /// io_uring, epoll or auto (default).
    pub fn transport(mut self, transport: TransportKind) -> Self {
        self.config = self.config.transport(transport);
        self
    }
    /// Heartbeat interval and link timeout.
    pub fn liveness(mut self, heartbeat: Duration, link_timeout: Duration) -> Self {
        self.config = self.config.liveness(heartbeat, link_timeout);
        self
    }
    /// Longest wait between reconnection attempts.
    pub fn backoff_max(mut self, backoff_max: Duration) -> Self {
        self.config = self.config.backoff_max(backoff_max);
        self
    }
    /// Adjusts the network settings the methods above do not cover: the admission bounds and the
    /// handshake timeout (see [`ServiceConfig::links_max`], [`ServiceConfig::handshake_budget`],
    /// [`ServiceConfig::handshakes_per_address`], [`ServiceConfig::handshake_timeout`]).
    pub fn network(mut self, configure: impl FnOnce(ServiceConfig) -> ServiceConfig) -> Self {
        self.config = configure(self.config);
        self
    }
    /// Creates the data directory if needed, takes the node's identity from it (created on the
    /// first open: see [`NODE_ID_FILE`]) and starts the network.
    pub fn open(self) -> Result<Node, NodeError> {
        std::fs::create_dir_all(&self.data_dir).map_err(|source| NodeError::Io {
            op: "create",
            path: self.data_dir.clone(),
            source,
        })?;
        let node = node_identity(&self.data_dir)?;
        let service = Arc::new(Service::start(self.config.node(node))?);
        let open = Arc::new(Mutex::new(HashMap::new()));
        let watched = Arc::new(Mutex::new(Watched::default()));
        let commanded = Arc::new(Commanded::new(
            Arc::downgrade(&service),
            self.data_dir.clone(),
            Arc::clone(&open),
            Arc::clone(&watched),
        ));
        commanded.restore()?;
        service.set_controller(Arc::clone(&commanded) as Arc<dyn Controller>);
        Ok(Node {
            service,
            data_dir: self.data_dir,
            open,
            watched,
            commanded,
        })
    }
}

/// A pagemesh node: it opens databases under its data directory, serves them to replicas and
/// keeps replicas of other nodes' databases. `Send + Sync`.
#[derive(Debug)]
pub struct Node {
    /// Shared with the controller, which holds it weakly.
    service: Arc<Service>,
    data_dir: PathBuf,
    /// Directories in use (databases and replicas), to refuse opening one twice. Shared with each
    /// [`Replica`], which gives its directory back when dropped.
    open: Arc<Mutex<HashMap<PathBuf, ()>>>,
    /// What [`Node::metrics`] reports on.
    watched: Arc<Mutex<Watched>>,
    /// The copies REPLICATE commands started.
    commanded: Arc<Commanded>,
}

/// A database as [`Node::replicate`] names it: by uuid, or by the name the source node knows
/// it by (the name it was opened or replicated under there), which the source resolves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseRef {
    /// The database's uuid ([`Database::uuid`] on its origin).
    Uuid(Uuid),
    /// Its name on the source node.
    Name(String),
}

impl From<Uuid> for DatabaseRef {
    fn from(database: Uuid) -> Self {
        DatabaseRef::Uuid(database)
    }
}

impl From<&str> for DatabaseRef {
    fn from(name: &str) -> Self {
        DatabaseRef::Name(name.to_string())
    }
}

impl From<String> for DatabaseRef {
    fn from(name: String) -> Self {
        DatabaseRef::Name(name)
    }
}

/// The databases [`Node::metrics`] reports: names by uuid (from [`Node::open_database`]), the
/// served ones (the network holds them open anyway), and the replicas, weakly (a dropped
/// [`Replica`] disappears from the report).
#[derive(Debug, Default)]
struct Watched {
    names: HashMap<Uuid, String>,
    served: Vec<Database>,
    replicas: Vec<(String, Weak<ReplicaSlot>, Weak<Subscription>)>,
}

impl Watched {
    /// The database known here by `name`: one opened under it, or a replica kept under it (once
    /// its bootstrap has made its database).
    fn resolve(&self, name: &str) -> Option<Uuid> {
        let opened = self.names.iter().find(|(_, n)| n.as_str() == name);
        if let Some((&uuid, _)) = opened {
            return Some(uuid);
        }
        (self.replicas.iter())
            .filter(|(n, _, _)| n == name)
            .filter_map(|(_, slot, _)| slot.upgrade()?.current_database())
            .map(|database| database.uuid())
            .next()
    }
}

/// A node's figures at one moment, from [`Node::metrics`]: plain values.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeMetrics {
    /// The node's uuid.
    pub node: Uuid,
    /// Bytes in and out, refusals and link errors.
    pub network: NetMetricsSnapshot,
    /// The databases the node serves ([`Node::serve`]), then its replicas (a replica appears
    /// once its bootstrap has made its database).
    pub databases: Vec<DatabaseReport>,
}

/// One database in [`NodeMetrics`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DatabaseReport {
    /// The name it was opened or replicated under.
    pub name: String,
    /// `source` or `replica`.
    pub role: &'static str,
    /// The store's figures (for a source, each of its replicas' lag).
    pub metrics: DatabaseMetrics,
    /// For a replica: its subscription (connected, upstream, restores, grafts).
    pub subscription: Option<SubscriptionStatus>,
}

impl Node {
    /// The node's figures now: the network's counters, and for every database it serves or
    /// replicates, [`Database::metrics`] (commits and latency by durability, groups, ring fill,
    /// applied LSN, each replica's lag in pages, bytes and seconds, and its state). This is what
    /// `pagemesh node` serves on `/metrics`; an application that embeds pagemesh reads the same
    /// numbers here.
    ///
    /// ```
    /// use pagemesh::{Durability, Node, Options, WriteBatch};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let node = Node::builder("a", dir.path()).listen("127.0.0.1:0".parse()?).open()?;
    /// let db = node.open_database("prices", Options::new())?;
    /// node.serve(&db, 0);
    /// let mut batch = WriteBatch::new();
    /// batch.put("sales", b"{A1}", b"250000")?;
    /// db.commit(&batch, Durability::Durable)?;
    ///
    /// let metrics = node.metrics();
    /// let prices = &metrics.databases[0];
    /// assert_eq!((prices.name.as_str(), prices.role), ("prices", "source"));
    /// let durable = prices.metrics.commits.iter().find(|c| c.durability == "durable").unwrap();
    /// assert_eq!(durable.commits, 1);
    /// assert!(prices.metrics.replicas.is_empty(), "nobody replicates it yet");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn metrics(&self) -> NodeMetrics {
        let mut watched = lock(&self.watched);
        watched.replicas.retain(|(_, slot, subscription)| {
            slot.strong_count() > 0 && subscription.strong_count() > 0
        });
        let mut databases: Vec<DatabaseReport> = (watched.served.iter())
            .map(|db| DatabaseReport {
                name: (watched.names.get(&db.uuid()).cloned())
                    .unwrap_or_else(|| db.uuid().to_string()),
                role: "source",
                metrics: db.metrics(),
                subscription: None,
            })
            .collect();
        for (name, slot, subscription) in &watched.replicas {
            let (Some(slot), Some(subscription)) = (slot.upgrade(), subscription.upgrade()) else {
                continue;
            };
            if let Some(db) = slot.current_database() {
                databases.push(DatabaseReport {
                    name: name.clone(),
                    role: "replica",
                    metrics: db.metrics(),
                    subscription: Some(subscription.status()),
                });
            }
        }
        NodeMetrics {
            node: self.uuid(),
            network: self.service.metrics(),
            databases,
        }
    }

    /// A node named `name` keeping its databases in `data_dir`. Defaults: not listening, no
    /// secret (loopback only), io_uring with an epoll fallback.
    pub fn builder(name: &str, data_dir: impl Into<PathBuf>) -> NodeBuilder {
        NodeBuilder {
            data_dir: data_dir.into(),
            config: ServiceConfig::new(name),
        }
    }

    /// The node's uuid, kept in its data directory ([`NODE_ID_FILE`]).
    pub fn uuid(&self) -> Uuid {
        self.service.node()
    }

    /// Where the node listens, if it does.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.service.local_addr()
    }

    /// The event loop the node's sockets run on.
    pub fn runtime(&self) -> RuntimeKind {
        self.service.runtime()
    }

    fn claim(&self, name: &str) -> Result<PathBuf, NodeError> {
        claim(&self.data_dir, &self.open, name)
    }

    /// Opens (or creates) the database `name` in the data directory (or at `name`, if it is an
    /// absolute path).
    pub fn open_database(&self, name: &str, options: Options) -> Result<Database, NodeError> {
        let path = self.claim(name)?;
        let database = Database::open(path, options)?;
        (lock(&self.watched).names).insert(database.uuid(), name.to_string());
        Ok(database)
    }

    /// Makes `database` a source: replicas may subscribe to it, and `sync_replicas` of them are
    /// synchronous (their acks count for `Replicated(n)`).
    pub fn serve(&self, database: &Database, sync_replicas: usize) {
        database.plumbing().replication().enable(sync_replicas);
        let mut watched = lock(&self.watched);
        if !watched.served.iter().any(|db| db.uuid() == database.uuid()) {
            watched.served.push(database.clone());
        }
        drop(watched);
        self.service.serve(Arc::new(Wired(database.clone(), None)));
    }

    /// Keeps a read-only replica of the database `database` served by the node at `source`, in
    /// the directory `name` under the data directory (or at `name`, if it is an absolute path).
    /// `database` is its uuid, or the name the source knows it by (a `&str`: the source resolves
    /// it on its command channel, and a name it does not know fails with
    /// [`NodeError::UnknownName`]). The replica is
    /// bootstrapped from a snapshot if it does not exist yet, then following, and re-syncing by
    /// itself after any disconnect. Dropping the [`Replica`] stops following and frees `name`
    /// (its link closes on the network thread a moment later; until then the directory's ring is
    /// still locked, so replicating into it again at once may fail with a lock error).
    ///
    /// **Fails fast** when the first link says following cannot work: nothing listens at
    /// `source` ([`NodeError::Unreachable`]), that node holds no copy of `database`
    /// ([`NodeError::UnknownDatabase`]), or it refuses this node for good (another cluster
    /// secret or protocol version: [`NodeError::Refused`]); nothing is kept following then.
    /// It waits for the first link's outcome at most [`REPLICATE_PROBE`]: once the source has
    /// served the link, or that time has passed without a verdict (a slow network, a link cut
    /// mid-handshake), it returns the replica, which reconnects by itself after any later
    /// failure with randomized backoff that doubles up to the node's bound
    /// (`ServiceConfig::backoff_max`); [`Replica::status`] reports each attempt's typed outcome
    /// (`last_failure`). [`replicate_from_any`](Self::replicate_from_any) never fails fast: a
    /// holder that cannot serve yet (a relay still bootstrapping) is a normal state there.
    ///
    /// ```
    /// use pagemesh::{Node, NodeError, Options, Uuid};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let primary = Node::builder("primary", dir.path().join("a"))
    ///     .listen("127.0.0.1:0".parse()?)
    ///     .open()?;
    /// let follower = Node::builder("replica", dir.path().join("b")).open()?;
    /// let addr = primary.local_addr().expect("listening");
    /// let unknown = Uuid::from_u128(7);
    /// match follower.replicate(addr, unknown, "copy", Options::new()) {
    ///     Err(NodeError::UnknownDatabase { database, .. }) => assert_eq!(database, unknown),
    ///     other => panic!("expected UnknownDatabase, got {other:?}"),
    /// }
    /// // By the name the primary knows it by:
    /// let orders = primary.open_database("orders", Options::new())?;
    /// primary.serve(&orders, 0);
    /// let copy = follower.replicate(addr, "orders", "orders-copy", Options::new())?;
    /// # let _ = copy;
    /// assert!(matches!(
    ///     follower.replicate(addr, "nothing", "other", Options::new()),
    ///     Err(NodeError::UnknownName { .. })
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn replicate(
        &self,
        source: SocketAddr,
        database: impl Into<DatabaseRef>,
        name: &str,
        options: Options,
    ) -> Result<Replica, NodeError> {
        let database = match database.into() {
            DatabaseRef::Uuid(database) => database,
            DatabaseRef::Name(wanted) => self.resolve(source, &wanted)?,
        };
        let replica = self.replicate_from_any(&[source], database, name, options)?;
        replica.first_outcome(database, Instant::now() + REPLICATE_PROBE)?;
        Ok(replica)
    }

    /// The uuid of the database the node at `source` calls `name` (a RESOLVE on its command
    /// channel, with this node's cluster secret).
    fn resolve(&self, source: SocketAddr, name: &str) -> Result<Uuid, NodeError> {
        let unknown = |reason: String| NodeError::UnknownName {
            addr: source,
            name: name.to_string(),
            reason,
        };
        let command = Command::Resolve {
            name: name.to_string(),
        };
        match self.service.ask(source, command, REPLICATE_PROBE) {
            Ok(Reply::Resolved { database }) => Ok(database),
            Ok(Reply::Error { reason }) => Err(unknown(reason)),
            Ok(other) => Err(unknown(format!("unexpected reply {other:?}"))),
            Err(pagemesh_net::Error::Io { source: error, .. })
                if error.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                Err(NodeError::Unreachable {
                    addr: source,
                    kind: error.kind(),
                })
            }
            Err(error) => Err(unknown(error.to_string())),
        }
    }

    /// As [`replicate`](Self::replicate), from whichever of `holders` serves: any node holding
    /// a copy of `database` (its origin, or a replica relaying it), nearest first. The replica
    /// follows one holder at a time; when that link fails or is refused (a relay that is behind
    /// this replica refuses it) it moves on to the next at once, backing off only after every
    /// holder failed, so the loss of a relay is routed around by the holders that remain
    /// (`pagemesh_net::route::Upstreams`).
    ///
    /// With more than one holder the replica also watches the others (a lazy link each, HAVE
    /// frames) and moves to one that offers pages its current holder has not delivered within
    /// the graft timeout, so a relay that is alive but stalled is routed around as well
    /// (`ServiceConfig::graft_timeout`); and to one whose pages keep coming sooner than its
    /// current holder delivers them, by the switch lead, so the tree settles on faster paths
    /// (`ServiceConfig::switch_lead`, 20 ms: on a LAN it moves only off stalls).
    ///
    /// List holders nearer the origin than this node, nearest first. Two replicas that list each
    /// other never follow one another: a holder refuses a replica on its own way to the origin,
    /// and a replica leaves a holder whose way comes to pass through it (`route::refuse_loop`).
    pub fn replicate_from_any(
        &self,
        holders: &[SocketAddr],
        database: Uuid,
        name: &str,
        options: Options,
    ) -> Result<Replica, NodeError> {
        self.replicate_with(name, options, |service, slot| {
            service.subscribe(holders, database, slot)
        })
    }

    /// Keeps a local replica `name` of `database` (by uuid) following whichever nodes the
    /// membership gossip says serve it (see [`NodeBuilder::peers`]): a node can replicate a
    /// database it has never seen, knowing one peer and the uuid. Until a holder is known the
    /// replica waits (its [`Replica::status`] says so); it then follows them as
    /// [`replicate_from_any`](Self::replicate_from_any) does, and takes the mesh's newer list
    /// whenever it has no link.
    pub fn replicate_discovered(
        &self,
        database: Uuid,
        name: &str,
        options: Options,
    ) -> Result<Replica, NodeError> {
        self.replicate_with(name, options, |service, slot| {
            Ok(service.subscribe_discovered(database, slot))
        })
    }

    /// The other nodes this node knows of through gossip: uuid, address, databases served.
    pub fn members(&self) -> Vec<PeerEntry> {
        self.service.members()
    }

    fn replicate_with(
        &self,
        name: &str,
        options: Options,
        subscribe: impl FnOnce(&Service, Arc<ReplicaSlot>) -> Result<Subscription, pagemesh_net::Error>,
    ) -> Result<Replica, NodeError> {
        start_replica(
            &self.service,
            &self.data_dir,
            &self.open,
            &self.watched,
            name,
            options,
            subscribe,
        )
    }

    /// The copies that REPLICATE commands started on this node and that UNREPLICATE has not
    /// stopped (kept across restarts in [`COMMANDED_REPLICAS_FILE`]): database and name.
    pub fn commanded_replicas(&self) -> Vec<(Uuid, String)> {
        self.commanded.list()
    }
}

/// `name` under `data_dir` (or `name` itself if it is an absolute path), unless it is already
/// in use on this node (`open`).
fn claim(
    data_dir: &Path,
    open: &Mutex<HashMap<PathBuf, ()>>,
    name: &str,
) -> Result<PathBuf, NodeError> {
    let path = data_dir.join(name);
    if lock(open).insert(path.clone(), ()).is_some() {
        return Err(NodeError::AlreadyOpen { name: name.into() });
    }
    Ok(path)
}

/// Claims `name`, opens its replica slot and subscribes it with `subscribe`; the node's
/// metrics watch it from then on.
fn start_replica(
    service: &Service,
    data_dir: &Path,
    open: &Arc<Mutex<HashMap<PathBuf, ()>>>,
    watched: &Mutex<Watched>,
    name: &str,
    options: Options,
    subscribe: impl FnOnce(&Service, Arc<ReplicaSlot>) -> Result<Subscription, pagemesh_net::Error>,
) -> Result<Replica, NodeError> {
    let path = claim(data_dir, open, name)?;
    let claim = Claim {
        open: Arc::clone(open),
        path: path.clone(),
    };
    let slot = Arc::new(ReplicaSlot::open(name, &path, options)?);
    let subscription = Arc::new(subscribe(service, slot.clone())?);
    lock(watched).replicas.push((
        name.to_string(),
        Arc::downgrade(&slot),
        Arc::downgrade(&subscription),
    ));
    Ok(Replica {
        name: name.to_string(),
        slot,
        subscription,
        _claim: claim,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Gives a claimed directory back when dropped.
#[derive(Debug)]
struct Claim {
    open: Arc<Mutex<HashMap<PathBuf, ()>>>,
    path: PathBuf,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.path);
    }
}

/// The longest [`Node::replicate`] waits for its first link's outcome before it returns the
/// replica (which keeps trying): a verdict normally takes one round trip or a refused connect.
pub const REPLICATE_PROBE: Duration = Duration::from_secs(10);

/// What the first links' failures mean for [`Node::replicate`]: `Some` if retrying cannot help.
fn fatal(failure: &LinkFailure, database: Uuid) -> Option<NodeError> {
    use pagemesh_net::proto::frame::RefuseCode;
    match failure {
        LinkFailure::Unreachable { addr, kind }
            if *kind == std::io::ErrorKind::ConnectionRefused =>
        {
            Some(NodeError::Unreachable {
                addr: *addr,
                kind: *kind,
            })
        }
        LinkFailure::Refused { addr, code, reason } => match RefuseCode::from_u16(*code) {
            Some(RefuseCode::UnknownDatabase) => Some(NodeError::UnknownDatabase {
                addr: *addr,
                database,
                reason: reason.clone(),
            }),
            Some(RefuseCode::Auth | RefuseCode::Version | RefuseCode::DuplicateNode) => {
                Some(NodeError::Refused {
                    addr: *addr,
                    code: *code,
                    reason: reason.clone(),
                })
            }
            _ => None,
        },
        _ => None,
    }
}

/// How long [`Replica::wait_for`] waits on one database before it looks for a newer one.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// A replica kept by a node; dropping it stops following (the database stays on disk).
#[derive(Debug)]
pub struct Replica {
    name: String,
    slot: Arc<ReplicaSlot>,
    subscription: Arc<Subscription>,
    /// Last: the directory is given back after the subscription is dropped.
    _claim: Claim,
}

impl Replica {
    /// The replica database, once it exists (after its bootstrap). A handle is of one copy: if
    /// the replica re-bootstraps (its source's history moved past it), the node switches to a
    /// new copy and the old handle keeps reading the old one, which no longer moves;
    /// [`Database::is_superseded`] then says so. Call this again rather than keeping a handle
    /// for long, or wait with [`wait_for`](Self::wait_for), which always reads the current one.
    pub fn database(&self) -> Option<Database> {
        self.slot.current_database()
    }

    /// Waits until the source served a link (`Ok`), a link failed in a way retrying cannot
    /// mend (`Err`, see [`Node::replicate`]), or `deadline` passed (`Ok`: it keeps trying).
    fn first_outcome(&self, database: Uuid, deadline: Instant) -> Result<(), NodeError> {
        loop {
            let status = self.status();
            if status.served > 0 {
                return Ok(());
            }
            if let Some(error) = status
                .last_failure
                .as_ref()
                .and_then(|f| fatal(f, database))
            {
                return Err(error);
            }
            if Instant::now() >= deadline {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The subscription's state: connected, received LSN, restores, last error.
    pub fn status(&self) -> SubscriptionStatus {
        self.subscription.status()
    }

    /// Waits until the replica holds the commit of `receipt` (from the primary's
    /// [`Database::commit_with_receipt`] or [`pagemesh_core::CommitTicket::receipt`], in this
    /// process or sent from another as text or bytes), at most `timeout`; returns the database,
    /// whose reads then see the write. Waits through a bootstrap that has not made the database
    /// yet, and through a re-bootstrap. On [`NodeError::Timeout`] the message carries the
    /// subscription's last link error, if it had one; a receipt of another log than the one this
    /// replica follows fails at once ([`pagemesh_core::Error::ForeignReceipt`]).
    pub fn wait_for(&self, receipt: &Receipt, timeout: Duration) -> Result<Database, NodeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            // In slices, so that a re-bootstrap's new database is picked up.
            let slice = deadline.saturating_duration_since(now).min(WAIT_SLICE);
            match self.database() {
                Some(db) => match db.wait_for(receipt, slice) {
                    Ok(()) => return Ok(db),
                    Err(pagemesh_core::Error::ReceiptTimeout { .. }) => {}
                    Err(error) => return Err(error.into()),
                },
                None => std::thread::sleep(slice.min(Duration::from_millis(2))),
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(format!("receipt {receipt}"), timeout));
            }
        }
    }

    /// A wait for `what` that gave up after `waited`, with the subscription's last link error
    /// (a refused connection, a database the peer does not hold): the cause, not just the
    /// symptom.
    fn timeout(&self, what: String, waited: Duration) -> NodeError {
        let what = match self.status().last_error {
            Some(error) => format!("{what} (last link error: {error})"),
            None => what,
        };
        NodeError::Timeout {
            name: self.name.clone(),
            what,
            waited,
        }
    }

    /// Waits until the replica has applied every page below `lsn`; returns the database. A
    /// commit's position is easier to wait for with its receipt ([`wait_for`](Self::wait_for)).
    /// On [`NodeError::Timeout`] the message carries the subscription's last link error.
    pub fn wait_applied(&self, lsn: u64, timeout: Duration) -> Result<Database, NodeError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(db) = self.database() {
                if db.applied_lsn() >= lsn {
                    return Ok(db);
                }
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(format!("applied lsn {lsn}"), timeout));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A database as the network sees it: the source and the replica side of the same store; for a
/// replica, its slot's restore flag (set while a new generation is being restored).
struct Wired(Database, Option<Arc<AtomicBool>>);

impl DatabaseLog for Wired {
    fn uuid(&self) -> Uuid {
        self.0.uuid()
    }
    fn origin(&self) -> Uuid {
        self.0.origin_uuid()
    }
    fn log(&self) -> &Log {
        self.0.plumbing().log()
    }
}

impl SourceDatabase for Wired {
    fn history(
        &self,
        from_lsn: u64,
        pages_max: usize,
        out: &mut Vec<u8>,
    ) -> Result<History, BoxError> {
        let snapshot = self.0.read()?;
        let pages = match snapshot.binlog_range(from_lsn) {
            Ok(pages) => pages,
            Err(pagemesh_core::Error::Purged { oldest, .. }) => {
                return Ok(History::Purged { oldest })
            }
            Err(error) => return Err(error.into()),
        };
        let mut count = 0;
        let out_len = out.len();
        for (expected, page) in (from_lsn..).zip(pages.take(pages_max)) {
            let page = match page {
                Ok(page) => page,
                // Retention overtook the read: what was read is not sent.
                Err(pagemesh_core::Error::Purged { oldest, .. }) => {
                    out.truncate(out_len);
                    return Ok(History::Purged { oldest });
                }
                Err(error) => return Err(error.into()),
            };
            let page = page.page();
            if page.lsn() != expected {
                return Err(NodeError::BinlogGap {
                    expected,
                    found: page.lsn(),
                }
                .into());
            }
            page.extend_full(out);
            count += 1;
        }
        Ok(History::Pages(count))
    }

    fn snapshot(&self, out: &mut dyn Write) -> Result<u64, BoxError> {
        let snapshot = self.0.read()?;
        let stats = snapshot.export(out)?;
        Ok(stats.replica_resume_lsn)
    }

    fn attach(&self, peer: &str, node: Uuid, received_lsn: u64) -> Box<dyn AckSink> {
        Box::new(Acks(self.0.plumbing().replication().attach(
            peer,
            node,
            received_lsn,
        )))
    }

    /// One read snapshot, table by table in the key space's order (`pagemesh_net::diff`); a
    /// table whose name is over 255 bytes has no composite keys and is not scanned.
    fn scan(
        &self,
        range: &KeyRange,
        visit: &mut dyn FnMut(ScanEntry<'_>) -> ControlFlow<()>,
    ) -> Result<(), BoxError> {
        let snapshot = self.0.read()?;
        let mut tables = self.0.tables();
        diff::sort_tables(&mut tables);
        for (table, start, end) in diff::table_ranges(&tables, range) {
            for entry in snapshot.range::<Vec<u8>>(table, (start, end))? {
                let (key, value) = entry?;
                let entry = ScanEntry {
                    table,
                    key,
                    seq: value.seq,
                    value: value.bytes,
                };
                if visit(entry).is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn unfit_to_compare(&self) -> Option<&'static str> {
        if self.0.is_superseded() {
            Some("it was replaced by a newer generation restored from a snapshot")
        } else if self
            .1
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Acquire))
        {
            Some("a restore from a snapshot (re-bootstrap) is under way")
        } else {
            None
        }
    }

    fn report(&self) -> CopyReport {
        let metrics = self.0.metrics();
        CopyReport {
            applied_lsn: metrics.applied_lsn,
            durable_lsn: metrics.durable_lsn,
            ring_slots: metrics.ring_slots,
            ring_used_pages: metrics.ring_used_pages,
            replicas: metrics
                .replicas
                .into_iter()
                .map(|replica| ReplicaReport {
                    attached: replica.state != ReplicaState::Down,
                    sync: replica.state == ReplicaState::Sync,
                    name: replica.name,
                    node: replica.node,
                    received_lsn: replica.received_lsn,
                    lag_pages: replica.lag_pages,
                    lag_bytes: replica.lag_bytes,
                    lag_seconds: replica.lag_seconds,
                })
                .collect(),
        }
    }
}

struct Acks(ReplicaLink);

impl AckSink for Acks {
    fn ack(&self, received_lsn: u64, durable_lsn: u64) {
        self.0.ack(received_lsn, durable_lsn);
    }
    fn report(&self, node: Uuid, received_lsn: u64) -> bool {
        self.0.report(node, received_lsn)
    }
}

impl ReplicaDatabase for Wired {
    fn received_lsn(&self) -> u64 {
        self.0.plumbing().received_lsn()
    }
    fn durable_lsn(&self) -> u64 {
        // The replica ring's durable watermark: its own flusher moves it (issue 16).
        self.0.durable_lsn()
    }
}

/// Where a replica's generations live; see the module docs.
#[derive(Debug)]
struct ReplicaSlot {
    name: String,
    path: PathBuf,
    options: Options,
    current: Mutex<Option<(u64, Database)>>,
    /// Set while `restore` runs: the current generation is about to be replaced.
    restoring: Arc<AtomicBool>,
}

/// Clears a flag when dropped (however the scope ends).
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Marks a generation whose restore completed: written (and synced) after the restore's LMDB
/// transaction committed, so a crash mid-restore leaves a generation without it, which is
/// discarded on the next open.
const COMPLETE: &str = "restored";

impl ReplicaSlot {
    fn generations(path: &Path) -> std::io::Result<Vec<u64>> {
        let mut generations = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let name = entry?.file_name();
            if let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_prefix("generation-"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                generations.push(n);
            }
        }
        generations.sort_unstable();
        Ok(generations)
    }

    fn generation_dir(&self, generation: u64) -> PathBuf {
        self.path.join(format!("generation-{generation}"))
    }

    fn remove_generation(&self, generation: u64) {
        let dir = self.generation_dir(generation);
        if let Err(error) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(path = %dir.display(), %error, "could not remove a replica generation");
        }
    }

    fn open(name: &str, path: &Path, options: Options) -> Result<Self, NodeError> {
        let io = |op, source| NodeError::Io {
            op,
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path).map_err(|e| io("create", e))?;
        let slot = Self {
            name: name.to_string(),
            path: path.to_path_buf(),
            options,
            current: Mutex::new(None),
            restoring: Arc::new(AtomicBool::new(false)),
        };
        // The newest completed generation is the replica; everything else is an interrupted
        // restore or a generation it replaced.
        let generations = Self::generations(path).map_err(|e| io("list", e))?;
        let current = generations
            .iter()
            .rev()
            .copied()
            .find(|&g| slot.generation_dir(g).join(COMPLETE).exists());
        for &generation in &generations {
            if Some(generation) != current {
                tracing::info!(
                    replica = name,
                    generation,
                    "removing an unused replica generation"
                );
                slot.remove_generation(generation);
            }
        }
        if let Some(generation) = current {
            let database = Database::open(slot.generation_dir(generation), slot.options.clone())?;
            tracing::info!(
                replica = name,
                generation,
                received_lsn = database.plumbing().received_lsn(),
                "opened replica"
            );
            *slot
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((generation, database));
        }
        Ok(slot)
    }

    fn current_database(&self) -> Option<Database> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(_, db)| db.clone())
    }
}

impl ReplicaStore for ReplicaSlot {
    fn current(&self) -> Option<Arc<dyn ReplicaDatabase>> {
        self.current_database().map(|database| {
            Arc::new(Wired(database, Some(Arc::clone(&self.restoring)))) as Arc<dyn ReplicaDatabase>
        })
    }

    /// Restores into a new generation while the current one stays readable; switches only once
    /// the restore completed. A failed restore leaves the current generation as it was.
    fn restore(&self, input: &mut dyn Read) -> Result<(Arc<dyn ReplicaDatabase>, u64), BoxError> {
        let generation = Self::generations(&self.path)
            .map_err(|source| NodeError::Io {
                op: "list",
                path: self.path.clone(),
                source,
            })?
            .last()
            .map_or(0, |g| g + 1);
        let dir = self.generation_dir(generation);
        self.restoring.store(true, Ordering::Release);
        let _restoring = ClearOnDrop(&self.restoring);
        let restored = pagemesh_core::Plumbing::restore_replica(&dir, input, self.options.clone())
            .map_err(BoxError::from)
            .and_then(|(database, stats)| {
                let marker = std::fs::File::create(dir.join(COMPLETE))
                    .and_then(|file| file.sync_all())
                    .and_then(|()| std::fs::File::open(&dir)?.sync_all());
                marker.map_err(|source| NodeError::Io {
                    op: "mark restored",
                    path: dir.clone(),
                    source,
                })?;
                Ok((database, stats))
            });
        let (database, stats) = match restored {
            Ok(restored) => restored,
            Err(error) => {
                self.remove_generation(generation);
                return Err(error);
            }
        };
        tracing::info!(replica = %self.name, generation, entries = stats.entries, lsn = stats.lsn, "replica restored from a snapshot");
        let previous = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace((generation, database.clone()));
        if let Some((old, old_db)) = previous {
            // Handles the application still holds keep the old files alive until dropped; they
            // say they are stale (`is_superseded`, a warning on their next read).
            old_db.plumbing().supersede();
            drop(old_db);
            self.remove_generation(old);
        }
        Ok((
            Arc::new(Wired(database, Some(Arc::clone(&self.restoring)))),
            stats.lsn,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wait that runs out says why the replica is not getting there: the link's last error
    /// (here a database the source does not hold), not a bare timeout.
    #[test]
    fn a_replica_wait_that_runs_out_carries_the_last_link_error() {
        let dir = tempfile::tempdir().unwrap();
        let primary = Node::builder("primary", dir.path().join("a"))
            .listen("127.0.0.1:0".parse().unwrap())
            .open()
            .unwrap();
        let follower = Node::builder("replica", dir.path().join("b"))
            .open()
            .unwrap();
        let addr = primary.local_addr().unwrap();
        let unknown = Uuid::from_u128(0xdead);
        // (`replicate` would fail fast on it: see the test below)
        let replica = follower
            .replicate_from_any(&[addr], unknown, "db", Options::new())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while replica.status().last_error.is_none() {
            assert!(Instant::now() < deadline, "the refusal is reported");
            std::thread::sleep(Duration::from_millis(5));
        }
        let error = replica.wait_applied(1, Duration::ZERO).unwrap_err();
        assert!(
            matches!(&error, NodeError::Timeout { what, .. } if what.contains("last link error")),
            "{error}"
        );
    }

    /// Before, `replicate` returned Ok whatever the source said, and the cause surfaced only
    /// as a timeout's message later. Now a database the peer does not hold, and an address
    /// where nothing listens, are typed errors at once, and nothing is left following.
    #[test]
    fn replicate_fails_fast_on_an_unknown_database_and_on_a_refused_connection() {
        let dir = tempfile::tempdir().unwrap();
        let primary = Node::builder("primary", dir.path().join("a"))
            .listen("127.0.0.1:0".parse().unwrap())
            .open()
            .unwrap();
        let follower = Node::builder("replica", dir.path().join("b"))
            .open()
            .unwrap();
        let addr = primary.local_addr().unwrap();
        let unknown = Uuid::from_u128(0xdead);
        let started = Instant::now();
        match follower.replicate(addr, unknown, "db", Options::new()) {
            Err(NodeError::UnknownDatabase {
                addr: at, database, ..
            }) => assert_eq!((at, database), (addr, unknown)),
            other => panic!("expected UnknownDatabase, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        // A port nothing listens on: bound, then closed.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nowhere = closed.local_addr().unwrap();
        drop(closed);
        let started = Instant::now();
        match follower.replicate(nowhere, unknown, "db", Options::new()) {
            Err(NodeError::Unreachable { addr: at, kind }) => {
                assert_eq!((at, kind), (nowhere, std::io::ErrorKind::ConnectionRefused))
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        // The name was given back: a good source can be followed under it.
        let db = primary.open_database("db", Options::new()).unwrap();
        primary.serve(&db, 0);
        let replica = follower
            .replicate(addr, db.uuid(), "db", Options::new())
            .unwrap();
        assert!(
            replica.status().served > 0,
            "returned once the source served"
        );
    }

    /// A replica waits for a primary's commit by its receipt, sent as text as another process
    /// would receive it; a receipt of another database is refused at once.
    #[test]
    fn a_replica_waits_for_a_primary_commit_by_its_receipt() {
        let dir = tempfile::tempdir().unwrap();
        let loopback = "127.0.0.1:0".parse().unwrap();
        let primary = Node::builder("primary", dir.path().join("a"))
            .listen(loopback)
            .open()
            .unwrap();
        let follower = Node::builder("replica", dir.path().join("b"))
            .open()
            .unwrap();
        let db = primary.open_database("db", Options::new()).unwrap();
        primary.serve(&db, 0);
        let addr = primary.local_addr().unwrap();
        let replica = follower
            .replicate(addr, db.uuid(), "db", Options::new())
            .unwrap();
        // Once bootstrapped (the first commit may come with the snapshot), then streamed.
        for value in [&b"first"[..], b"second"] {
            let mut batch = db.batch();
            batch.put("t", b"k", value).unwrap();
            let receipt = db
                .commit_with_receipt(&batch, pagemesh_core::Durability::Memory)
                .unwrap();
            let text = receipt.to_string();

            let received: Receipt = text.parse().unwrap();
            let copy = replica
                .wait_for(&received, Duration::from_secs(60))
                .unwrap();
            let read = copy.read().unwrap();
            let held = read.get("t", b"k").unwrap().map(|v| (v.seq, v.bytes));
            assert_eq!(held, Some((receipt.version(), value)));
        }

        let other = primary.open_database("other", Options::new()).unwrap();
        let mut batch = other.batch();
        batch.put("t", b"k", b"v").unwrap();
        let foreign =
            (other.commit_with_receipt(&batch, pagemesh_core::Durability::Memory)).unwrap();
        let refused = replica
            .wait_for(&foreign, Duration::from_secs(60))
            .unwrap_err();
        assert!(
            matches!(
                refused,
                NodeError::Store(pagemesh_core::Error::ForeignReceipt { .. })
            ),
            "{refused}"
        );
    }

    /// A replica's re-bootstrap (a second snapshot restored into its slot, as when it fell
    /// behind its source's binlog) tells a handle the app still holds to the old copy that it
    /// is stale, while that handle keeps reading what it held; the slot's current copy is the
    /// new one. Handles used to go stale silently.
    #[test]
    fn a_handle_held_across_a_replica_re_bootstrap_says_it_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let primary = Database::open(dir.path().join("primary"), Options::new()).unwrap();
        let export = |value: &[u8]| {
            let mut batch = primary.batch();
            batch.put("t", b"k", value).unwrap();
            primary
                .commit(&batch, pagemesh_core::Durability::Applied)
                .unwrap();
            let mut stream = Vec::new();
            primary.read().unwrap().export(&mut stream).unwrap();
            stream
        };
        let slot = ReplicaSlot::open("r", &dir.path().join("replica"), Options::new()).unwrap();
        slot.restore(&mut &export(b"first")[..]).unwrap();
        let held = slot.current_database().unwrap();
        assert!(!held.is_superseded());

        // DIFF refuses the old copy while the restore runs (seen from inside the restore's
        // own read of the snapshot stream), and after it, the copy being replaced.
        let old = Wired(held.clone(), Some(Arc::clone(&slot.restoring)));
        assert_eq!(old.unfit_to_compare(), None);
        struct Watching<'a> {
            stream: &'a [u8],
            old: &'a Wired,
            seen: Option<Option<&'static str>>,
        }
        impl Read for Watching<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.seen.get_or_insert_with(|| self.old.unfit_to_compare());
                self.stream.read(buf)
            }
        }
        let stream = export(b"second");
        let mut watching = Watching {
            stream: &stream,
            old: &old,
            seen: None,
        };
        slot.restore(&mut watching).unwrap();
        assert_eq!(
            watching.seen,
            Some(Some(
                "a restore from a snapshot (re-bootstrap) is under way"
            )),
            "mid-restore"
        );
        assert!(old.unfit_to_compare().is_some(), "replaced");
        assert!(held.is_superseded(), "the old copy's handle says so");
        let value = |db: &Database| {
            let read = db.read().unwrap();
            read.get("t", b"k").unwrap().map(|v| v.bytes.to_vec())
        };
        assert_eq!(
            value(&held),
            Some(b"first".to_vec()),
            "and reads what it held"
        );
        let current = slot.current_database().unwrap();
        assert!(!current.is_superseded());
        assert_eq!(value(&current), Some(b"second".to_vec()));
    }

    #[test]
    fn a_node_keeps_its_uuid_across_opens_and_refuses_a_garbled_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = Node::builder("a", dir.path().join("a")).open().unwrap();
        let uuid = first.uuid();
        assert!(!uuid.is_nil());
        drop(first);
        let again = Node::builder("renamed", dir.path().join("a"))
            .open()
            .unwrap();
        assert_eq!(
            again.uuid(),
            uuid,
            "the identity is the directory's, not the name's"
        );
        let other = Node::builder("b", dir.path().join("b")).open().unwrap();
        assert_ne!(other.uuid(), uuid);
        drop((again, other));
        std::fs::write(dir.path().join("a").join(NODE_ID_FILE), "not a uuid\n").unwrap();
        let refused = Node::builder("a", dir.path().join("a")).open().unwrap_err();
        assert!(matches!(refused, NodeError::Identity { .. }), "{refused}");
    }
}

/// DIFF's scan over a real store (the descent itself is tested in `pagemesh_net::diff`).
#[cfg(test)]
mod scan_tests {
    use super::*;

    fn count(wired: &Wired, range: &KeyRange) -> u64 {
        let mut n = 0;
        wired
            .scan(range, &mut |_| {
                n += 1;
                ControlFlow::Continue(())
            })
            .expect("scan");
        n
    }

    /// The split keys of a digest of everything cut the key space into parts that hold every
    /// entry exactly once, across both tables; a copy being restored refuses comparison.
    #[test]
    fn split_ranges_cover_the_scan_and_a_restoring_copy_is_unfit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(dir.path(), Options::new()).expect("open");
        let mut batch = db.batch();
        for i in 0..3000u32 {
            batch
                .put("sales", format!("k-{i:06}").as_bytes(), b"v")
                .expect("put");
            if i % 2 == 0 {
                batch
                    .put("people", format!("p-{i:06}").as_bytes(), b"v")
                    .expect("put");
            }
        }
        db.commit(&batch, pagemesh_core::Durability::Applied)
            .expect("commit");
        let restoring = Arc::new(AtomicBool::new(false));
        let wired = Wired(db, Some(Arc::clone(&restoring)));
        let far = Instant::now() + Duration::from_secs(60);
        let mut scan =
            |r: &KeyRange, v: &mut dyn FnMut(ScanEntry<'_>) -> ControlFlow<()>| wired.scan(r, v);
        let root = diff::digest_ranges(&mut scan, &[KeyRange::all()], 16, far).expect("digest");
        assert_eq!(root[0].entries, 4500);
        assert_eq!(root[0].splits.len(), 15);
        let mut lo = Vec::new();
        let mut parts = Vec::new();
        for split in root[0].splits.iter().chain([&Vec::new()]) {
            parts.push(count(
                &wired,
                &KeyRange {
                    lo,
                    hi: split.clone(),
                },
            ));
            lo = split.clone();
        }
        assert_eq!(parts.iter().sum::<u64>(), 4500);
        assert!(
            parts.iter().all(|&n| n > 0 && n <= 4500 / 16 * 3),
            "{parts:?}"
        );
        assert_eq!(wired.unfit_to_compare(), None);
        restoring.store(true, Ordering::Release);
        assert!(wired
            .unfit_to_compare()
            .is_some_and(|why| why.contains("restore")));
    }
}
