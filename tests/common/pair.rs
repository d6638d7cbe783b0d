//! [`Pair`]: a primary node serving the database [`DB`], optionally behind a [`FaultProxy`], and
//! the replicas following it: the setup every replication scenario starts from.
//!
//! ```text
//! let (pair, [replica]) = Pair::builder(transport).through_proxy().start_with(["replica"]);
//! pair.proxy().cut();
//! assert_converged(&pair.db, &replica, &ledger, "after a cut");
//! ```
//!
//! Nodes live in one temporary directory, each in `NAME/`, with the tests' short liveness
//! settings ([`node`]). A [`Follower`] is a replica's node and its [`Replica`], owned by the test:
//! dropping it stops that node, and [`Pair::follower`] with the same name reopens it on its data.
//! Each follower holds the temporary directory too, so it is removed only after the last node
//! stopped, whatever order a test drops things in.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pagemesh::core::{Database, Options};
use pagemesh::net::TransportKind;
use pagemesh::{Node, Replica};
use pagemesh_tools::proxy::FaultProxy;
use tempfile::TempDir;

use super::{init_tracing, node, options, wait_attached, wait_following, LOOPBACK, PATIENCE};

/// The name of the database the primary serves, and of the replicas' copies of it.
pub const DB: &str = "db";

/// What a scenario varies; see [`Pair::builder`].
pub struct PairBuilder {
    transport: TransportKind,
    secret: Option<Vec<u8>>,
    ring_slots: u64,
    binlog_retain_bytes: Option<u64>,
    replication_timeout: Duration,
    sync_replicas: usize,
    through_proxy: bool,
}

impl PairBuilder {
    /// The cluster secret of the primary and, unless they say otherwise, of its followers.
    pub fn secret(mut self, secret: &[u8]) -> Self {
        self.secret = Some(secret.to_vec());
        self
    }

    /// Ring pages of the primary and of each replica (1024 unless set).
    pub fn ring_slots(mut self, slots: u64) -> Self {
        self.ring_slots = slots;
        self
    }

    /// Binlog kept by the primary and each replica (the database's default unless set).
    pub fn binlog_retain_bytes(mut self, bytes: u64) -> Self {
        self.binlog_retain_bytes = Some(bytes);
        self
    }

    /// How long the primary's replicated commits wait for their acks ([`PATIENCE`] unless set).
    pub fn replication_timeout(mut self, timeout: Duration) -> Self {
        self.replication_timeout = timeout;
        self
    }

    /// How many replicas are synchronous (1 unless set).
    pub fn sync_replicas(mut self, count: usize) -> Self {
        self.sync_replicas = count;
        self
    }

    /// Followers reach the primary through a [`FaultProxy`] (unless one says `direct`).
    pub fn through_proxy(mut self) -> Self {
        self.through_proxy = true;
        self
    }

    /// Opens the primary, serves [`DB`], and starts the proxy if asked for; no replica yet.
    pub fn start(self) -> Pair {
        let (pair, []) = self.start_with([]);
        pair
    }

    /// [`start`](Self::start), then one follower per name, each waited for until it is
    /// bootstrapped and connected, in order; then until the primary has them all attached and as
    /// many of them synchronous as it serves.
    pub fn start_with<const N: usize>(self, names: [&str; N]) -> (Pair, [Follower; N]) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let primary = node(
            "primary",
            dir.path(),
            self.transport,
            LOOPBACK,
            self.secret.as_deref(),
        );
        let primary_options = self
            .replica_options()
            .replication_timeout(self.replication_timeout);
        let db = primary
            .open_database(DB, primary_options)
            .expect("open the primary's database");
        primary.serve(&db, self.sync_replicas);
        let addr = primary.local_addr().expect("the primary listens");
        let proxy = self
            .through_proxy
            .then(|| FaultProxy::start(addr).expect("start the fault proxy"));
        let pair = Pair {
            proxy,
            db,
            primary,
            dir: Arc::new(dir),
            config: self,
        };
        let followers = names.map(|name| pair.follower(name).start());
        for follower in &followers {
            follower.wait_following();
        }
        wait_attached(&pair.db, N, N.min(pair.config.sync_replicas));
        (pair, followers)
    }

    fn replica_options(&self) -> Options {
        let options = options(self.ring_slots);
        match self.binlog_retain_bytes {
            Some(bytes) => options.binlog_retain_bytes(bytes),
            None => options,
        }
    }
}

/// A primary serving [`DB`], and the proxy in front of it if there is one. Fields drop in the
/// order a test's locals did: proxy, database, node, directory (once no follower holds it).
pub struct Pair {
    proxy: Option<FaultProxy>,
    /// The primary's database.
    pub db: Database,
    /// The primary's node.
    pub primary: Node,
    dir: Arc<TempDir>,
    config: PairBuilder,
}

impl Pair {
    /// A pair on `transport`: no secret, 1024-page rings, one synchronous replica, followers
    /// connected straight to the primary. Starts the tests' tracing (`RUST_LOG`).
    pub fn builder(transport: TransportKind) -> PairBuilder {
        init_tracing();
        PairBuilder {
            transport,
            secret: None,
            ring_slots: 1024,
            binlog_retain_bytes: None,
            replication_timeout: PATIENCE,
            sync_replicas: 1,
            through_proxy: false,
        }
    }

    /// The directory holding every node's data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the primary listens (not the proxy).
    pub fn addr(&self) -> SocketAddr {
        self.primary.local_addr().expect("the primary listens")
    }

    /// The proxy in front of the primary.
    pub fn proxy(&self) -> &FaultProxy {
        self.proxy
            .as_ref()
            .expect("the pair was built through_proxy()")
    }

    /// The options every replica opens its copy with.
    pub fn replica_options(&self) -> Options {
        self.config.replica_options()
    }

    /// A follower named `name`, replicating [`DB`] with the pair's secret, through the proxy if
    /// the pair has one; not started until [`FollowerBuilder::start`].
    pub fn follower<'a>(&'a self, name: &'a str) -> FollowerBuilder<'a> {
        FollowerBuilder {
            pair: self,
            name,
            secret: self.config.secret.as_deref(),
            direct: self.proxy.is_none(),
            listen: None,
            sources: Vec::new(),
        }
    }

    /// Starts the follower `name` with the pair's settings and waits until it is bootstrapped
    /// and connected.
    pub fn follow(&self, name: &str) -> Follower {
        let follower = self.follower(name).start();
        follower.wait_following();
        follower
    }

    /// Waits until the primary has `count` replicas attached, `sync` of them synchronous.
    pub fn wait_attached(&self, count: usize, sync: usize) {
        wait_attached(&self.db, count, sync);
    }

    /// The primary is lost: its database and node are dropped. What is left (the directory and
    /// the proxy) is handed back for the primary that takes its place.
    pub fn lose_primary(self) -> (Arc<TempDir>, FaultProxy) {
        let Pair {
            proxy,
            db,
            primary,
            dir,
            config: _,
        } = self;
        drop(db);
        drop(primary);
        (dir, proxy.expect("the pair was built through_proxy()"))
    }
}

/// How one follower differs from the pair's settings; see [`Pair::follower`].
pub struct FollowerBuilder<'a> {
    pair: &'a Pair,
    name: &'a str,
    secret: Option<&'a [u8]>,
    direct: bool,
    listen: Option<SocketAddr>,
    /// Holders to follow, nearest first (empty: the primary, or its proxy).
    sources: Vec<SocketAddr>,
}

impl<'a> FollowerBuilder<'a> {
    /// This follower's secret instead of the pair's (`None`: it has none).
    pub fn secret(mut self, secret: Option<&'a [u8]>) -> Self {
        self.secret = secret;
        self
    }

    /// Connects straight to the primary, past the proxy.
    pub fn direct(mut self) -> Self {
        self.direct = true;
        self
    }

    /// The follower's node listens on loopback, so other replicas may follow it (see
    /// [`Follower::addr`]).
    pub fn listen(mut self) -> Self {
        self.listen = LOOPBACK;
        self
    }

    /// The follower's node listens at `addr` (so nodes can list each other before they start).
    pub fn listen_at(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Follows the node at `source` (another follower that relays) instead of the primary.
    pub fn from(self, source: SocketAddr) -> Self {
        self.holders(vec![source])
    }

    /// Follows whichever of `sources` serves, nearest first (`Node::replicate_from_any`).
    pub fn holders(mut self, sources: Vec<SocketAddr>) -> Self {
        self.sources = sources;
        self
    }

    /// Opens the follower's node (on its data directory, if it ran before) and starts
    /// replicating; returns at once.
    pub fn start(self) -> Follower {
        let pair = self.pair;
        let node = node(
            self.name,
            pair.dir(),
            pair.config.transport,
            self.listen,
            self.secret,
        );
        let sources = match self.sources {
            sources if !sources.is_empty() => sources,
            _ if self.direct => vec![pair.addr()],
            _ => vec![pair.proxy().addr()],
        };
        let replica = node
            .replicate_from_any(&sources, pair.db.uuid(), DB, pair.replica_options())
            .unwrap_or_else(|e| panic!("{}: replicate {DB}: {e}", self.name));
        Follower {
            replica,
            node,
            name: self.name.to_string(),
            path: pair.dir().join(self.name).join(DB),
            dir: Arc::clone(&pair.dir),
        }
    }
}

/// A replica's node and the [`Replica`] it keeps (which it derefs to). Dropping it stops both,
/// the replica first.
pub struct Follower {
    replica: Replica,
    /// Kept running for the replica.
    node: Node,
    name: String,
    path: PathBuf,
    /// The pair's directory, which must outlive the node.
    dir: Arc<TempDir>,
}

impl Follower {
    /// Waits until the replica is bootstrapped and its link is up; its current database.
    pub fn wait_following(&self) -> Database {
        wait_following(&self.replica, &self.name)
    }

    /// The replica's directory (which holds its generations).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the follower's node listens (built with [`FollowerBuilder::listen`]).
    pub fn addr(&self) -> SocketAddr {
        self.node.local_addr().expect("the follower listens")
    }

    /// The follower's node uuid.
    pub fn node_uuid(&self) -> uuid::Uuid {
        self.node.uuid()
    }
}

impl Deref for Follower {
    type Target = Replica;

    fn deref(&self) -> &Replica {
        &self.replica
    }
}
