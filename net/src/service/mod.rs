//! The replication service: one runtime thread that serves source databases to the replicas that
//! connect, and keeps this node's replicas subscribed to their sources.
//!
//! # Links
//!
//! An accepted connection is admitted by [`admission`] (a cap on authenticated links, a memory
//! budget and a per-address cap on unauthenticated ones, the oldest evicted first) and may only
//! handshake until it has authenticated.
//!
//! A replica *subscribes*: it connects to the source's node, authenticates (HELLO / WELCOME /
//! AUTH, `proto::handshake`) and sends RESUME with the LSN it has received up to (or
//! [`BOOTSTRAP`] when it has no database yet). The link then belongs to that one database (links
//! are one database each; multiplexing many over one connection is not done yet). A subscription
//! names one or more *holders* of the database, nearest first (the origin, or replicas that relay
//! it: see below), and follows one at a time, chosen by `route::Upstreams`.
//!
//! On the source side a link has a *shipper* and an *ack reader*:
//!
//! - The shipper catches the replica up from the binlog in batches of up to
//!   [`HISTORY_BATCH_PAGES`] pages, then opens a ring cursor and streams pages as they seal: every
//!   ready run goes out in one write (one PAGES frame per run), and the cursor releases the run
//!   once written. If the replica falls more than half a ring behind, the shipper drops its cursor
//!   and goes back to the binlog, so a slow replica never holds the ring; if it asks for pages the
//!   binlog no longer has (or has no database), it gets a full snapshot first, in SNAPSHOT chunks,
//!   and continues from the LSN the snapshot names.
//! - The ack reader hands every ACK to the database's [`AckSink`] (the replicated watermark).
//!
//! On the replica side the reader copies every PAGES frame into the replica's ring
//! (`Log::poll_ingest`: crc and epoch checked there) and queues an ACK at once, before
//! replay; a writer task sends the latest ACK (acks coalesce: only the newest matters) and
//! heartbeats. A link that fails in any way (I/O, a frame that does not decode, a page that does
//! not validate, silence beyond the link timeout) is closed with a logged reason, and the
//! subscription follows the next holder at once, backing off exponentially only after every
//! holder failed in a round; the RESUME after a reconnect starts from what the replica holds. A
//! REFUSE is the source's decision (logged there at `info`): the replica moves on.
//!
//! # Relaying: any node serves what it holds
//!
//! A replica is served onward as soon as it exists: other nodes may subscribe to it exactly as
//! to the origin, and its ring and binlog feed them (pages relayed as they are: never re-logged,
//! and a receiver checks each run's origin and epoch, `ReplicaLink`). When a re-bootstrap
//! replaces the replica with a new generation, the links reading the old one are closed, so
//! their replicas come back and are admitted against the new one (never left on a stale log).
//! A relay refuses a replica that is ahead of its copy (`route::admit`) rather than re-seed it:
//! the replica follows another holder, or comes back once the relay has caught up.
//!
//! What happens when a relaying node dies: the links it served fail, each of its replicas
//! follows its next holder at once and reports its whole receipts book there, so the origin
//! hears of the subtree again through the new path. A `Replicated(n)` commit waiting meanwhile
//! keeps waiting, and returns once n nodes are heard of again, or fails at its timeout (the
//! write stays committed locally).
//!
//! Receipts travel hop by hop, so `Replicated(n)` counts nodes anywhere downstream: a source
//! books every ACK and RECEIPTS frame it hears (`route::Receipts`, one book per
//! database, bounded in nodes) and hands them to the database's [`AckSink`]; the node's
//! subscription to that database reports the book's news upstream in RECEIPTS frames, and
//! everything again on each new link (its new upstream may have heard none of it).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pagemesh_logpage::Log;
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

pub mod admission;
mod control;
mod gossip;
mod link;
pub mod metrics;
mod replica;
pub mod replica_link;
pub mod shipper;
mod snapshot;
mod source;
pub mod source_link;
mod watch;

use self::admission::{
    Admission, AdmissionLimits, Reason, RefusalCounts, Refusals, Verdict, REFUSAL_LOG_INTERVAL,
    UNAUTHENTICATED_LINK_BYTES,
};
use self::link::LinkControl;
use self::metrics::{NetMetrics, NetMetricsSnapshot};
use self::replica::follow;
pub use self::shipper::HISTORY_BATCH_PAGES;
use self::source::serve_link;
use crate::diff::ScanEntry;
use crate::error::{BoxError, Error, Result};
use crate::proto::command::{Command, KeyRange, Reply};
use crate::proto::frame::{PeerEntry, PATH_MAX};
use crate::proto::handshake::HandshakeConfig;
use crate::route::Receipts;
pub use crate::route::{History, BOOTSTRAP};
use crate::route::{Members, Upstreams, GRAFT_TIMEOUT_DEFAULT, SWITCH_LEAD_DEFAULT};
use crate::transport::{
    sleep, sleep_until, spawn_local, spawn_runtime, Listener, RuntimeKind, TransportKind,
};

/// Most authenticated links open at once by default. A source's link from a replica holds a
/// 4 KiB read buffer (a replica sends only small frames) and write batches of up to
/// [`HISTORY_BATCH_PAGES`] pages (1 MiB).
pub const LINKS_MAX_DEFAULT: usize = 1024;
/// Memory all unauthenticated connections together may hold by default: 512 of them.
pub const HANDSHAKE_BUDGET_DEFAULT: usize = 512 * UNAUTHENTICATED_LINK_BYTES;
/// Most unauthenticated connections from one address by default.
pub const HANDSHAKES_PER_ADDRESS_DEFAULT: usize = 64;

/// What every replicated database has: an identity and a log. The root crate implements it (and
/// the two traits below) for its store.
pub trait DatabaseLog: Send + Sync + 'static {
    /// The database's uuid (what replicas subscribe to).
    fn uuid(&self) -> Uuid;
    /// The uuid of the log its pages come from.
    fn origin(&self) -> Uuid;
    /// The log: a source's ring cursors read it; a replica's pages go in with `Log::poll_ingest`
    /// (crc and epoch checked there).
    fn log(&self) -> &Log;
}

/// A database this node ships to replicas (every replica is one too: see "Relaying" above).
pub trait SourceDatabase: DatabaseLog {
    /// Appends to `out`, in full form, the binlog's pages from `from_lsn` on, at most `pages_max`.
    fn history(
        &self,
        from_lsn: u64,
        pages_max: usize,
        out: &mut Vec<u8>,
    ) -> Result<History, BoxError>;
    /// Writes a full snapshot to `out` (runs on a thread of its own); returns the LSN a replica
    /// restored from it resumes at.
    fn snapshot(&self, out: &mut dyn Write) -> Result<u64, BoxError>;
    /// A replica named `peer`, on node `node`, attached, holding every page below
    /// `received_lsn`.
    fn attach(&self, peer: &str, node: Uuid, received_lsn: u64) -> Box<dyn AckSink>;
    /// Visits, in one consistent read, this copy's entries whose composite keys
    /// (`crate::diff::composite_key`) are in `range`, in key order, until `visit` breaks (for
    /// DIFF's DIGEST and ENTRIES commands; runs on a thread of its own and may take long).
    fn scan(
        &self,
        range: &KeyRange,
        visit: &mut dyn FnMut(ScanEntry<'_>) -> ControlFlow<()>,
    ) -> Result<(), BoxError>;
    /// Why this copy cannot be compared now (a restore into a new generation is under way, or
    /// it was replaced by one), if so.
    fn unfit_to_compare(&self) -> Option<&'static str> {
        None
    }
    /// Its positions and its replicas' lag, for STATUS (default: nothing known).
    fn report(&self) -> CopyReport {
        CopyReport::default()
    }
}

/// What STATUS reports of a served copy beyond its log: see [`SourceDatabase::report`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CopyReport {
    /// Every page below this is applied (visible to readers).
    pub applied_lsn: u64,
    /// Every page below this is on disk in the ring.
    pub durable_lsn: u64,
    /// Pages the ring holds.
    pub ring_slots: u64,
    /// Pages of the ring in use.
    pub ring_used_pages: u64,
    /// Its replicas, attached ones first.
    pub replicas: Vec<ReplicaReport>,
}

/// One replica in a [`CopyReport`].
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaReport {
    /// The name it attached with.
    pub name: String,
    /// Its node.
    pub node: Uuid,
    /// Attached and counted for `Replicated(n)`.
    pub sync: bool,
    /// Attached at all (a detached one is remembered with what it had received).
    pub attached: bool,
    /// Every page below this is received there.
    pub received_lsn: u64,
    /// Pages it lacks.
    pub lag_pages: u64,
    /// The same in bytes.
    pub lag_bytes: u64,
    /// How long ago the first page it lacks was applied here, in seconds.
    pub lag_seconds: f64,
}

/// What a node does on the command channel's REPLICATE and UNREPLICATE: the root crate opens
/// the copy's store, subscribes it, and keeps the list across restarts. Each call runs on a
/// thread of its own (it may open files and block), one at a time per node. The answer is a
/// sentence for the operator either way.
pub trait Controller: Send + Sync + 'static {
    /// Start a copy of `database` named `name`, following the holders gossip knows.
    fn replicate(&self, database: Uuid, name: &str) -> Result<String, String>;
    /// Stop the copy of `database` that [`replicate`](Self::replicate) started.
    fn unreplicate(&self, database: Uuid) -> Result<String, String>;
    /// The database this node knows by `name` (opened or replicated under it), for RESOLVE.
    /// Called on the network thread: it must answer at once, without waiting on I/O.
    fn resolve(&self, name: &str) -> Option<Uuid> {
        let _ = name;
        None
    }
}

/// Where a source reports a replica's acks; dropping it detaches the replica.
pub trait AckSink {
    /// Every page below `received_lsn` is in the replica's ring; below `durable_lsn`, on disk in
    /// it (its durable watermark when it last acked; a replica syncs by its own flush pace).
    fn ack(&self, received_lsn: u64, durable_lsn: u64);
    /// `node`, which the replica feeds (directly or not), holds every page below
    /// `received_lsn`. Returns `false` if the replica's subtree would grow past its bound: the
    /// link is then dropped.
    fn report(&self, node: Uuid, received_lsn: u64) -> bool;
}

/// A replica database, as the network feeds it (and, relaying, serves it onward).
pub trait ReplicaDatabase: SourceDatabase {
    /// Every page below this is received.
    fn received_lsn(&self) -> u64;
    /// Every page below this is on disk in the replica's ring (its durable watermark), so it
    /// survives a power loss of the replica; sent upstream as the ACK's `durable_lsn`.
    fn durable_lsn(&self) -> u64;
}

/// Where a subscription keeps its replica: the root crate opens, restores and replaces databases.
pub trait ReplicaStore: Send + Sync + 'static {
    /// The replica, if one exists.
    fn current(&self) -> Option<Arc<dyn ReplicaDatabase>>;
    /// Restores a snapshot stream read from `input` into a fresh replica, replacing any there, and
    /// opens it; returns it and the LSN to resume at. Runs on a thread of its own and may block.
    fn restore(&self, input: &mut dyn Read) -> Result<(Arc<dyn ReplicaDatabase>, u64), BoxError>;
}

/// How to run a [`Service`]. Defaults are safe: loopback only, heartbeats every second, links
/// dropped after 5 s of silence.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    name: String,
    node: Uuid,
    listen: Option<SocketAddr>,
    secret: Option<Vec<u8>>,
    transport: TransportKind,
    heartbeat: Duration,
    link_timeout: Duration,
    backoff_max: Duration,
    graft_timeout: Duration,
    switch_lead: Duration,
    handshake_timeout: Duration,
    handshake_budget: usize,
    handshakes_per_address: usize,
    links_max: usize,
    peers: Vec<SocketAddr>,
    gossip_interval: Duration,
    members_max: usize,
}

/// How often a node gossips with its peers, by default.
pub const GOSSIP_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Most other nodes a node's membership view holds, by default.
pub const MEMBERS_MAX_DEFAULT: usize = 1024;
/// A node whose gossip heartbeat has not risen for this many gossip intervals has left (the
/// gossip simulator settles 100-node meshes with news ageing about one round a hop).
const MEMBER_EXPIRY_ROUNDS: u32 = 16;

impl ServiceConfig {
    /// A node named `name` with a new uuid, not listening.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            node: Uuid::new_v4(),
            listen: None,
            secret: None,
            transport: TransportKind::Auto,
            heartbeat: crate::proto::liveness::HEARTBEAT_INTERVAL_DEFAULT,
            link_timeout: crate::proto::liveness::LINK_TIMEOUT_DEFAULT,
            backoff_max: Duration::from_secs(2),
            graft_timeout: GRAFT_TIMEOUT_DEFAULT,
            switch_lead: SWITCH_LEAD_DEFAULT,
            handshake_timeout: crate::proto::HANDSHAKE_TIMEOUT_DEFAULT,
            handshake_budget: HANDSHAKE_BUDGET_DEFAULT,
            handshakes_per_address: HANDSHAKES_PER_ADDRESS_DEFAULT,
            links_max: LINKS_MAX_DEFAULT,
            peers: Vec::new(),
            gossip_interval: GOSSIP_INTERVAL_DEFAULT,
            members_max: MEMBERS_MAX_DEFAULT,
        }
    }
    /// Nodes to keep a gossip link with (the seed list): through them this node learns the rest
    /// of the mesh, where each node listens and which databases it serves (`route::Members`).
    pub fn peers(mut self, peers: Vec<SocketAddr>) -> Self {
        self.peers = peers;
        self
    }
    /// How often this node gossips (default 1 s): news of a node crosses the mesh in about its
    /// diameter times this, and a node silent for sixteen of them has left.
    pub fn gossip_interval(mut self, interval: Duration) -> Self {
        self.gossip_interval = interval.max(Duration::from_millis(10));
        self
    }
    /// Most other nodes the membership view holds (default 1024): news of more is refused.
    pub fn members_max(mut self, count: usize) -> Self {
        self.members_max = count;
        self
    }
    /// The node's uuid.
    pub fn node(mut self, node: Uuid) -> Self {
        self.node = node;
        self
    }
    /// Accept links on `addr` (port 0: any free port; see [`Service::local_addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }
    /// The cluster secret every peer must share. Without one the node refuses to listen anywhere
    /// but loopback.
    pub fn secret(mut self, secret: Option<Vec<u8>>) -> Self {
        self.secret = secret;
        self
    }
    /// io_uring, epoll, or io_uring with an epoll fallback (the default).
    pub fn transport(mut self, transport: TransportKind) -> Self {
        self.transport = transport;
        self
    }
    /// Heartbeat interval and link timeout.
    pub fn liveness(mut self, heartbeat: Duration, link_timeout: Duration) -> Self {
        self.heartbeat = heartbeat;
        self.link_timeout = link_timeout.max(heartbeat * 2);
        self
    }
    /// Longest wait between reconnection attempts (the backoff doubles from 50 ms up to it).
    pub fn backoff_max(mut self, backoff_max: Duration) -> Self {
        self.backoff_max = backoff_max.max(Duration::from_millis(50));
        self
    }
    /// How long pages that another holder offered (HAVE) may stay undelivered by a replica's
    /// current holder before the replica moves to the one that offered them (default 1 s; see
    /// `route::Upstreams`). Longer than the lag of a healthy path, or the tree moves needlessly.
    pub fn graft_timeout(mut self, timeout: Duration) -> Self {
        self.graft_timeout = timeout.max(Duration::from_millis(1));
        self
    }
    /// How much sooner than its current holder's path another holder must have pages, each of
    /// three times in a row, for a replica to move there (default 20 ms; see
    /// `route::Upstreams`): the tree settles on faster paths. `Duration::MAX` never moves for
    /// speed, only off stalls.
    pub fn switch_lead(mut self, lead: Duration) -> Self {
        self.switch_lead = lead.max(Duration::from_millis(1));
        self
    }
    /// How long a new connection has to complete its handshake, either side (default 3 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }
    /// The memory all unauthenticated connections together may hold (default 6 MiB): one costs
    /// at most [`UNAUTHENTICATED_LINK_BYTES`] (12 KiB), so this admits `bytes / 12 KiB` of them
    /// (at least one) before the oldest is evicted ([`admission`] explains the policy).
    pub fn handshake_budget(mut self, bytes: usize) -> Self {
        self.handshake_budget = bytes;
        self
    }
    /// Most unauthenticated connections from one address (default 64, at least 1); a new one
    /// evicts that address's oldest.
    pub fn handshakes_per_address(mut self, count: usize) -> Self {
        self.handshakes_per_address = count.max(1);
        self
    }
    /// Most authenticated links open at once (default 1024); while reached, new connections are
    /// closed at accept.
    pub fn links_max(mut self, count: usize) -> Self {
        self.links_max = count;
        self
    }

    /// The admission bounds these settings make.
    pub fn admission_limits(&self) -> AdmissionLimits {
        AdmissionLimits {
            links_max: self.links_max,
            handshakes_max: (self.handshake_budget / UNAUTHENTICATED_LINK_BYTES).max(1),
            per_address_max: self.handshakes_per_address,
        }
    }
}

/// What the [`Service`] handle asks of its runtime thread (its mailbox; not the command channel
/// between nodes).
enum Instruction {
    Serve(Arc<dyn SourceDatabase>),
    Withdraw(Uuid),
    Subscribe {
        id: u64,
        upstreams: Box<Upstreams<SocketAddr>>,
        database: Uuid,
        store: Arc<dyn ReplicaStore>,
        status: Arc<Mutex<SubscriptionStatus>>,
    },
    /// Like `Subscribe`, from the holders the membership view knows.
    SubscribeDiscovered {
        id: u64,
        database: Uuid,
        store: Arc<dyn ReplicaStore>,
        status: Arc<Mutex<SubscriptionStatus>>,
    },
    Unsubscribe(u64),
    /// Who carries out REPLICATE and UNREPLICATE (see [`Controller`]).
    Control(Arc<dyn Controller>),
    Stop,
}

/// The network side of a node: a runtime thread owning every socket. `Send + Sync`; dropping it
/// stops the thread and closes every link.
pub struct Service {
    instructions: mpsc::UnboundedSender<Instruction>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    local_addr: Option<SocketAddr>,
    runtime: RuntimeKind,
    next_subscription: std::sync::atomic::AtomicU64,
    node: Uuid,
    backoff_max: Duration,
    graft_timeout: Duration,
    switch_lead: Duration,
    metrics: Arc<NetMetrics>,
    /// The membership view as of the last gossip round or news.
    members: Arc<Mutex<Vec<PeerEntry>>>,
    /// The cluster secret, for [`ask`](Self::ask).
    secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("node", &self.node)
            .field("local_addr", &self.local_addr)
            .field("runtime", &self.runtime)
            .finish()
    }
}

/// What a subscription has done so far; see [`Subscription::status`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionStatus {
    /// A link is up and RESUMEd.
    pub connected: bool,
    /// Links established so far.
    pub links: u64,
    /// Snapshots restored so far.
    pub restores: u64,
    /// A snapshot is being received and restored now (the previous replica, if any, stays
    /// readable meanwhile).
    pub restoring: bool,
    /// Every page below this is received.
    pub received_lsn: u64,
    /// Pages that arrived in PAGES frames, duplicates included: what routing cost this replica.
    pub pages_received: u64,
    /// Times the replica moved to another holder because its own stalled (GRAFT).
    pub grafts: u64,
    /// Times a holder's way to the origin passed through this replica (a loop of replicas
    /// following one another): it refused the replica, or the replica left it.
    pub loops: u64,
    /// Links on which the holder served: answered the RESUME with something other than a
    /// refusal (a snapshot, pages, a heartbeat).
    pub served: u64,
    /// Why the last link ended, if one did.
    pub last_error: Option<String>,
    /// The same, typed: what a caller can act on (nothing listening, a refusal and its code).
    pub last_failure: Option<LinkFailure>,
    /// The holder followed now (or tried next).
    pub upstream: Option<SocketAddr>,
}

/// Why a replica's link to a holder ended, typed ([`SubscriptionStatus::last_failure`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkFailure {
    /// The connection could not be made (nothing listening, no route, …).
    Unreachable {
        /// The holder.
        addr: SocketAddr,
        /// The OS error's kind (`ConnectionRefused` when nothing listens there).
        kind: std::io::ErrorKind,
    },
    /// The holder refused the link with a REFUSE frame.
    Refused {
        /// The holder.
        addr: SocketAddr,
        /// The refusal code ([`crate::proto::frame::RefuseCode`] as u16).
        code: u16,
        /// The holder's reason.
        reason: String,
    },
    /// Anything else: a timeout, a broken link, a protocol error (see `last_error`).
    Other {
        /// The holder.
        addr: SocketAddr,
    },
}

impl LinkFailure {
    /// What `error`, ending a link to `addr`, was.
    pub(crate) fn of(addr: SocketAddr, error: &Error) -> Self {
        match error {
            Error::Io {
                op: "connect",
                source,
                ..
            } => Self::Unreachable {
                addr,
                kind: source.kind(),
            },
            Error::Refused { code, reason } => Self::Refused {
                addr,
                code: *code,
                reason: reason.clone(),
            },
            _ => Self::Other { addr },
        }
    }
}

/// A replica's subscription to its source; dropping it unsubscribes (closing the link).
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    instructions: mpsc::UnboundedSender<Instruction>,
    status: Arc<Mutex<SubscriptionStatus>>,
}

impl Subscription {
    /// A copy of the subscription's status.
    pub fn status(&self) -> SubscriptionStatus {
        lock(&self.status).clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.instructions.send(Instruction::Unsubscribe(self.id));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Service {
    /// Starts the runtime thread and, if configured, the listener.
    pub fn start(config: ServiceConfig) -> Result<Self> {
        if let Some(addr) = config.listen {
            if config.secret.is_none() && !addr.ip().is_loopback() {
                return Err(Error::InsecureListen { addr });
            }
            if config.secret.is_none() {
                tracing::warn!(%addr, "no cluster secret configured: listening on loopback only, peers are not authenticated");
            }
        }
        let (instructions, receiver) = mpsc::unbounded_channel();
        let (addr_tx, addr_rx) = std::sync::mpsc::sync_channel(1);
        let node = config.node;
        let (backoff_max, graft_timeout, switch_lead) =
            (config.backoff_max, config.graft_timeout, config.switch_lead);
        let secret = config.secret.clone();
        let thread_name = format!("pagemesh-net-{}", config.name);
        let metrics = Arc::new(NetMetrics::default());
        let counted = Arc::clone(&metrics);
        let members = Arc::new(Mutex::new(Vec::new()));
        let published = Arc::clone(&members);
        let (runtime, thread) = spawn_runtime(&thread_name, config.transport, move |kind| {
            run(kind, config, receiver, addr_tx, counted, published)
        })?;
        let local_addr = addr_rx
            .recv()
            .map_err(|_| Error::ThreadEnded { thread: "network" })??;
        tracing::info!(?runtime, ?local_addr, %node, "network service started");
        Ok(Self {
            instructions,
            thread: Mutex::new(Some(thread)),
            local_addr,
            runtime,
            next_subscription: std::sync::atomic::AtomicU64::new(0),
            node,
            backoff_max,
            graft_timeout,
            switch_lead,
            metrics,
            members,
            secret,
        })
    }

    /// Asks the node at `addr` `command` over the command channel, with this node's cluster
    /// secret, and returns its reply; blocks the calling thread for at most `timeout` (a
    /// [`crate::control::request`], not on the network thread).
    pub fn ask(&self, addr: SocketAddr, command: Command, timeout: Duration) -> Result<Reply> {
        crate::control::request(addr, self.secret.as_deref(), command, timeout)
    }

    /// The network's counters now: bytes in and out, refusals, link errors (see
    /// [`metrics`]).
    pub fn metrics(&self) -> NetMetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Where the service listens, if it does.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The runtime the sockets run on.
    pub fn runtime(&self) -> RuntimeKind {
        self.runtime
    }

    /// This node's uuid.
    pub fn node(&self) -> Uuid {
        self.node
    }

    /// Ships `database` to every replica that subscribes to its uuid.
    pub fn serve(&self, database: Arc<dyn SourceDatabase>) {
        let _ = self.instructions.send(Instruction::Serve(database));
    }

    /// Lets commands start and stop copies on this node: REPLICATE and UNREPLICATE go to
    /// `controller` (without one they are answered with an error).
    pub fn set_controller(&self, controller: Arc<dyn Controller>) {
        let _ = self.instructions.send(Instruction::Control(controller));
    }

    /// Stops serving a database (its links close).
    pub fn withdraw(&self, database: Uuid) {
        let _ = self.instructions.send(Instruction::Withdraw(database));
    }

    /// Keeps the replica in `store` subscribed to `database`, following one of the nodes at
    /// `upstreams` (any node that holds a copy: the origin or a relay), nearest first, and
    /// re-syncing by itself after any disconnect, from whichever of them still serves (see
    /// [`Upstreams`]), until the returned handle is dropped. Fails if `upstreams` is empty.
    pub fn subscribe(
        &self,
        upstreams: &[SocketAddr],
        database: Uuid,
        store: Arc<dyn ReplicaStore>,
    ) -> Result<Subscription> {
        let upstreams = Upstreams::new(upstreams.to_vec(), SUBSCRIBE_BACKOFF_MIN, self.backoff_max)
            .ok_or(Error::NoUpstreams { database })?
            .with_graft_timeout(self.graft_timeout)
            .with_switch_lead(self.switch_lead);
        let id = self
            .next_subscription
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let status = Arc::new(Mutex::new(SubscriptionStatus::default()));
        let _ = self.instructions.send(Instruction::Subscribe {
            id,
            upstreams: Box::new(upstreams),
            database,
            store,
            status: Arc::clone(&status),
        });
        Ok(Subscription {
            id,
            instructions: self.instructions.clone(),
            status,
        })
    }

    /// Keeps the replica in `store` subscribed to `database`, following the nodes that the
    /// membership gossip says serve it (see [`ServiceConfig::peers`]): a node can replicate a
    /// database it has never seen, knowing only its uuid and one peer. Until a holder is known
    /// the subscription waits (its status says so).
    pub fn subscribe_discovered(
        &self,
        database: Uuid,
        store: Arc<dyn ReplicaStore>,
    ) -> Subscription {
        let id = self
            .next_subscription
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let status = Arc::new(Mutex::new(SubscriptionStatus::default()));
        let _ = self.instructions.send(Instruction::SubscribeDiscovered {
            id,
            database,
            store,
            status: Arc::clone(&status),
        });
        Subscription {
            id,
            instructions: self.instructions.clone(),
            status,
        }
    }

    /// The other nodes this node knows of (its membership view): each one's uuid, where it
    /// listens and the databases it serves.
    pub fn members(&self) -> Vec<PeerEntry> {
        lock(&self.members).clone()
    }

    /// Stops the runtime thread, closing every link; waits for it.
    pub fn stop(&self) {
        let _ = self.instructions.send(Instruction::Stop);
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                tracing::error!("network thread panicked");
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The most nodes one database's receipt book holds (see "Relaying" above).
pub const RECEIPT_NODES_MAX: usize = 4096;

/// The first wait of a subscription whose every upstream failed; it doubles up to
/// [`ServiceConfig::backoff_max`].
const SUBSCRIBE_BACKOFF_MIN: Duration = Duration::from_millis(50);

/// One database's receipts, on their way upstream: the book, and a wake-up for the
/// subscription that reports it.
pub(super) struct ReceiptBook {
    book: RefCell<Receipts<Uuid>>,
    news: Notify,
}

impl ReceiptBook {
    /// Books that `node` holds every page below `lsn`; `false` if the book is full.
    fn record(&self, node: Uuid, lsn: u64) -> bool {
        let mut book = self.book.borrow_mut();
        if !book.knows(node) && book.is_full() {
            return false;
        }
        if book.record(node, lsn) {
            self.news.notify_one();
        }
        true
    }
}

/// State of the runtime thread.
struct Runtime {
    kind: RuntimeKind,
    config: ServiceConfig,
    handshake: HandshakeConfig,
    sources: RefCell<HashMap<Uuid, Arc<dyn SourceDatabase>>>,
    /// Open links, to shut down on stop (and per database on withdraw).
    /// By link id: the database it ships (once known) and its control.
    links: RefCell<HashMap<u64, LinkEntry>>,
    subscriptions: RefCell<HashMap<u64, Rc<LinkControl>>>,
    next_link: Cell<u64>,
    /// Who may hold a connection open (accepted links only).
    admission: RefCell<Admission>,
    /// Refused and failed connections, logged once an interval.
    refusals: RefCell<Refusals>,
    /// Receipts heard per database, to report upstream.
    receipts: RefCell<HashMap<Uuid, Rc<ReceiptBook>>>,
    /// This node's way to each database's origin, where it follows a holder (see
    /// [`Runtime::path`]).
    paths: RefCell<HashMap<Uuid, Vec<Uuid>>>,
    /// Who is in the mesh, learned by gossip.
    members: RefCell<Members>,
    /// A copy of `members` for [`Service::members`].
    published_members: Arc<Mutex<Vec<PeerEntry>>>,
    /// What [`Service::metrics`] reports.
    metrics: Arc<NetMetrics>,
    /// DIFF scans running on threads of their own (`control.rs` bounds them).
    scans: Cell<usize>,
    /// Who carries out REPLICATE and UNREPLICATE, if anyone.
    controller: RefCell<Option<Arc<dyn Controller>>>,
    /// A controller call is under way (one at a time: a flood of commands holds one thread).
    controlling: Cell<bool>,
    /// Forwarded commands under way (at most `control::FORWARDS_MAX`).
    forwarding: Cell<usize>,
    /// The state of the subscription following each database, for STATUS.
    following: RefCell<HashMap<Uuid, Arc<Mutex<SubscriptionStatus>>>>,
}

impl Runtime {
    /// The receipt book of `database`, created empty on first use.
    fn receipt_book(&self, database: Uuid) -> Rc<ReceiptBook> {
        let node = self.config.node;
        Rc::clone(
            self.receipts
                .borrow_mut()
                .entry(database)
                .or_insert_with(|| {
                    Rc::new(ReceiptBook {
                        book: RefCell::new(Receipts::new(node, RECEIPT_NODES_MAX)),
                        news: Notify::new(),
                    })
                }),
        )
    }

    /// Copies the membership view where [`Service::members`] reads it.
    fn publish_members(&self) {
        *lock(&self.published_members) = self.members.borrow().nodes();
    }

    /// The membership view learns which databases this node serves now.
    fn advertise_databases(&self) {
        let served = self.sources.borrow().keys().copied().collect();
        self.members.borrow_mut().set_databases(served);
    }

    /// This node's way to `database`'s origin: the node it follows, the node that one follows,
    /// and so on, nearest first, as far as it has heard (at most `PATH_MAX`); empty at the
    /// origin and while it follows nobody. HAVE frames carry it to watchers, and a RESUME from
    /// a node on it is refused (`route::refuse_loop`).
    fn path(&self, database: Uuid) -> Vec<Uuid> {
        self.paths
            .borrow()
            .get(&database)
            .cloned()
            .unwrap_or_default()
    }

    /// Sets [`path`](Self::path) (empty: follows nobody now).
    fn set_path(&self, database: Uuid, mut path: Vec<Uuid>) {
        path.truncate(PATH_MAX);
        let mut paths = self.paths.borrow_mut();
        if path.is_empty() {
            paths.remove(&database);
        } else {
            paths.insert(database, path);
        }
    }

    /// Serves `database` (replacing what was served under its uuid). If that was another log (a
    /// replica's earlier generation), the links reading it close: their replicas come back and
    /// are admitted against this one.
    fn serve(&self, database: Arc<dyn SourceDatabase>) {
        let uuid = database.uuid();
        let previous = self
            .sources
            .borrow_mut()
            .insert(uuid, Arc::clone(&database));
        match previous {
            Some(previous) if std::ptr::eq(previous.log(), database.log()) => {}
            Some(_) => {
                tracing::info!(database = %uuid, "serving a new generation; closing the links that read the old one");
                self.close_links(uuid);
            }
            None => tracing::info!(database = %uuid, "serving database"),
        }
        self.advertise_databases();
    }

    /// Stops serving `uuid` if what is served is `log`'s database; closes its links.
    fn withdraw(&self, uuid: Uuid, log: Option<&Log>) {
        let mut sources = self.sources.borrow_mut();
        let served = sources.get(&uuid);
        if served.is_some_and(|served| log.is_none_or(|log| std::ptr::eq(served.log(), log))) {
            sources.remove(&uuid);
            drop(sources);
            tracing::info!(database = %uuid, "no longer serving database");
            self.close_links(uuid);
            self.advertise_databases();
        }
    }

    fn close_links(&self, uuid: Uuid) {
        for (db, control) in self.links.borrow().values() {
            if *db == Some(uuid) {
                control.close();
            }
        }
    }

    /// Counts a connection refused, evicted or failed before it authenticated; logs the counts
    /// at most once per [`REFUSAL_LOG_INTERVAL`].
    fn refused(&self, reason: Reason) {
        self.metrics.refused(reason);
        let report = self.refusals.borrow_mut().record(reason, Instant::now());
        if let Some(counts) = report {
            log_refusals(&counts, &self.admission.borrow());
        }
    }
}

fn log_refusals(counts: &RefusalCounts, admission: &Admission) {
    tracing::warn!(
        connections = counts.total(),
        reasons = %counts.summary(),
        unauthenticated = admission.pending(),
        links = admission.links(),
        "connections refused or closed before they authenticated"
    );
}

type LinkEntry = (Option<Uuid>, Rc<LinkControl>);

async fn run(
    kind: RuntimeKind,
    config: ServiceConfig,
    mut instructions: mpsc::UnboundedReceiver<Instruction>,
    addr_tx: std::sync::mpsc::SyncSender<Result<Option<SocketAddr>>>,
    metrics: Arc<NetMetrics>,
    published_members: Arc<Mutex<Vec<PeerEntry>>>,
) {
    self::metrics::install(Arc::clone(&metrics));
    let mut handshake =
        HandshakeConfig::new(config.node, config.name.clone(), config.secret.clone());
    handshake.timeout = config.handshake_timeout;
    let admission = Admission::new(config.admission_limits());
    let listener = match config
        .listen
        .map(|addr| Listener::bind(kind, addr))
        .transpose()
    {
        Ok(listener) => listener,
        Err(error) => {
            let _ = addr_tx.send(Err(error));
            return;
        }
    };
    let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
    let _ = addr_tx.send(Ok(local_addr));
    // The wall clock starts the heartbeat, so a restarted node's news is newer than its old.
    let heartbeat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64);
    let members = Members::new(
        config.node,
        local_addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        heartbeat,
        config.members_max,
        config.gossip_interval * MEMBER_EXPIRY_ROUNDS,
    )
    .with_peers(config.peers.clone())
    .with_name(&config.name);
    let runtime = Rc::new(Runtime {
        kind,
        config,
        handshake,
        sources: RefCell::new(HashMap::new()),
        links: RefCell::new(HashMap::new()),
        subscriptions: RefCell::new(HashMap::new()),
        next_link: Cell::new(0),
        admission: RefCell::new(admission),
        refusals: RefCell::new(Refusals::new(REFUSAL_LOG_INTERVAL)),
        receipts: RefCell::new(HashMap::new()),
        paths: RefCell::new(HashMap::new()),
        members: RefCell::new(members),
        published_members,
        metrics,
        scans: Cell::new(0),
        controller: RefCell::new(None),
        controlling: Cell::new(false),
        forwarding: Cell::new(0),
        following: RefCell::new(HashMap::new()),
    });
    let accepting = LinkControl::new();
    // Gossip runs until the service stops.
    let gossiping = LinkControl::new();
    spawn_local(gossip::rounds(Rc::clone(&runtime), Rc::clone(&gossiping)));
    for &peer in &runtime.config.peers {
        spawn_local(gossip::gossip_with(
            Rc::clone(&runtime),
            peer,
            Rc::clone(&gossiping),
        ));
    }
    if let Some(listener) = listener {
        let runtime = Rc::clone(&runtime);
        let accepting = Rc::clone(&accepting);
        spawn_local(async move { accept(&runtime, &listener, &accepting).await });
    }
    while let Some(instruction) = instructions.recv().await {
        match instruction {
            Instruction::Serve(database) => runtime.serve(database),
            Instruction::Withdraw(uuid) => runtime.withdraw(uuid, None),
            Instruction::Control(controller) => *runtime.controller.borrow_mut() = Some(controller),
            Instruction::Subscribe {
                id,
                upstreams,
                database,
                store,
                status,
            } => {
                let control = LinkControl::new();
                runtime
                    .subscriptions
                    .borrow_mut()
                    .insert(id, Rc::clone(&control));
                spawn_local(follow(
                    Rc::clone(&runtime),
                    control,
                    *upstreams,
                    database,
                    store,
                    status,
                    true,
                ));
            }
            Instruction::SubscribeDiscovered {
                id,
                database,
                store,
                status,
            } => {
                let control = LinkControl::new();
                runtime
                    .subscriptions
                    .borrow_mut()
                    .insert(id, Rc::clone(&control));
                spawn_local(gossip::follow_discovered(
                    Rc::clone(&runtime),
                    control,
                    database,
                    store,
                    status,
                ));
            }
            Instruction::Unsubscribe(id) => {
                if let Some(control) = runtime.subscriptions.borrow_mut().remove(&id) {
                    control.close();
                }
            }
            Instruction::Stop => break,
        }
    }
    accepting.close();
    gossiping.close();
    for control in runtime.subscriptions.borrow().values() {
        control.close();
    }
    for (_, control) in runtime.links.borrow().values() {
        control.close();
    }
    // Let the link tasks see their sockets shut and finish (drop their cursors and sinks).
    for _ in 0..100 {
        if runtime.links.borrow().is_empty() {
            break;
        }
        sleep(Duration::from_millis(5)).await;
    }
    tracing::info!("network service stopped");
}

/// Accepts connections until `accepting` closes, admitting each by the runtime's [`Admission`].
async fn accept(runtime: &Rc<Runtime>, listener: &Listener, accepting: &LinkControl) {
    loop {
        let report_due = runtime.refusals.borrow().deadline();
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = accepting.closed() => return,
            () = sleep_until(report_due.unwrap_or_else(far_future)), if report_due.is_some() => {
                let report = runtime.refusals.borrow_mut().poll(Instant::now());
                if let Some(counts) = report {
                    log_refusals(&counts, &runtime.admission.borrow());
                }
                continue;
            }
        };
        let (connection, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let id = runtime.next_link.get();
        runtime.next_link.set(id + 1);
        let verdict = runtime.admission.borrow_mut().admit(id, peer.ip());
        match verdict {
            Verdict::Refuse(reason) => {
                tracing::debug!(%peer, reason = reason.name(), "connection refused");
                runtime.refused(reason);
                continue;
            }
            Verdict::AdmitEvicting { link, reason } => {
                let evicted = runtime.links.borrow().get(&link).map(|(_, c)| Rc::clone(c));
                if let Some(control) = evicted {
                    control.close();
                }
                tracing::debug!(%peer, evicted = link, reason = reason.name(), "unauthenticated connection evicted");
                runtime.refused(reason);
            }
            Verdict::Admit => {}
        }
        let control = LinkControl::new();
        runtime
            .links
            .borrow_mut()
            .insert(id, (None, Rc::clone(&control)));
        spawn_local(serve_link(
            Rc::clone(runtime),
            id,
            control,
            connection,
            peer,
        ));
    }
}

/// An instant no timer reaches (for a `select!` arm that is disabled anyway).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}
