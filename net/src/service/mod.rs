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
//! [`BOOTSTRAP`] when it has no database yet). The link then belongs to that one database; this
//! issue's links are one database each (multiplexing many over one connection, and relaying, come
//! with the mesh, `route/`).
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
//! not validate, silence beyond the link timeout) is closed with a logged reason and reconnected
//! with exponential backoff; the RESUME after a reconnect starts from what the replica holds.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pagemesh_logpage::{Log, PAGE_SIZE};
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

pub mod admission;

use self::admission::{
    Admission, AdmissionLimits, Reason, RefusalCounts, Refusals, Verdict, REFUSAL_LOG_INTERVAL,
    UNAUTHENTICATED_LINK_BYTES,
};
use crate::error::{Error, Result};
use crate::proto::frame::{
    encode, encode_pages, Ack, Frame, Heartbeat, PagesHeader, Refuse, RefuseCode, Resume,
    SnapshotChunk,
};
use crate::proto::handshake::{Handshake, HandshakeConfig, PeerInfo};
use crate::route::{admit, Feed, FeedPlan, Served};
pub use crate::route::{History, BOOTSTRAP};
use crate::transport::{
    sleep, sleep_until, spawn_local, spawn_runtime, timeout, timeout_at, Connection, FrameReader,
    FrameWriter, Listener, RuntimeKind, Shutdown, TransportKind,
};

/// Most pages one binlog catch-up read (and one PAGES frame) carries: 1 MiB.
pub const HISTORY_BATCH_PAGES: usize = 256;
/// Most pages one ring write carries.
const RING_BATCH_PAGES: usize = 256;
/// Most authenticated links open at once by default. A source's link from a replica holds a
/// 4 KiB read buffer (a replica sends only small frames) and write batches of up to
/// [`HISTORY_BATCH_PAGES`] pages (1 MiB).
pub const LINKS_MAX_DEFAULT: usize = 1024;
/// Memory all unauthenticated connections together may hold by default: 512 of them.
pub const HANDSHAKE_BUDGET_DEFAULT: usize = 512 * UNAUTHENTICATED_LINK_BYTES;
/// Most unauthenticated connections from one address by default.
pub const HANDSHAKES_PER_ADDRESS_DEFAULT: usize = 64;
/// Bytes per SNAPSHOT chunk.
const SNAPSHOT_CHUNK: usize = 1 << 20;

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

/// A database this node ships to replicas.
pub trait SourceDatabase: DatabaseLog {
    /// Appends to `out`, in full form, the binlog's pages from `from_lsn` on, at most `pages_max`.
    fn history(
        &self,
        from_lsn: u64,
        pages_max: usize,
        out: &mut Vec<u8>,
    ) -> Result<History, String>;
    /// Writes a full snapshot to `out` (runs on a thread of its own); returns the LSN a replica
    /// restored from it resumes at.
    fn snapshot(&self, out: &mut dyn Write) -> Result<u64, String>;
    /// A replica named `peer` attached, holding every page below `received_lsn`.
    fn attach(&self, peer: &str, received_lsn: u64) -> Box<dyn AckSink>;
}

/// Where a source reports a replica's acks; dropping it detaches the replica.
pub trait AckSink {
    /// Every page below `received_lsn` is in the replica's ring; below `durable_lsn`, applied.
    fn ack(&self, received_lsn: u64, durable_lsn: u64);
}

/// A replica database, as the network feeds it.
pub trait ReplicaDatabase: DatabaseLog {
    /// Every page below this is received.
    fn received_lsn(&self) -> u64;
    /// Every page below this is applied and synced.
    fn durable_lsn(&self) -> u64;
}

/// Where a subscription keeps its replica: the root crate opens, restores and replaces databases.
pub trait ReplicaStore: Send + Sync + 'static {
    /// The replica, if one exists.
    fn current(&self) -> Option<Arc<dyn ReplicaDatabase>>;
    /// Restores a snapshot stream read from `input` into a fresh replica, replacing any there, and
    /// opens it; returns it and the LSN to resume at. Runs on a thread of its own and may block.
    fn restore(&self, input: &mut dyn Read) -> Result<(Arc<dyn ReplicaDatabase>, u64), String>;
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
    handshake_timeout: Duration,
    handshake_budget: usize,
    handshakes_per_address: usize,
    links_max: usize,
}

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
            handshake_timeout: crate::proto::HANDSHAKE_TIMEOUT_DEFAULT,
            handshake_budget: HANDSHAKE_BUDGET_DEFAULT,
            handshakes_per_address: HANDSHAKES_PER_ADDRESS_DEFAULT,
            links_max: LINKS_MAX_DEFAULT,
        }
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

enum Command {
    Serve(Arc<dyn SourceDatabase>),
    Withdraw(Uuid),
    Subscribe {
        id: u64,
        addr: SocketAddr,
        database: Uuid,
        store: Arc<dyn ReplicaStore>,
        status: Arc<Mutex<SubscriptionStatus>>,
    },
    Unsubscribe(u64),
    Stop,
}

/// The network side of a node: a runtime thread owning every socket. `Send + Sync`; dropping it
/// stops the thread and closes every link.
pub struct Service {
    commands: mpsc::UnboundedSender<Command>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    local_addr: Option<SocketAddr>,
    runtime: RuntimeKind,
    next_subscription: std::sync::atomic::AtomicU64,
    node: Uuid,
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
    /// Why the last link ended, if one did.
    pub last_error: Option<String>,
}

/// A replica's subscription to its source; dropping it unsubscribes (closing the link).
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    commands: mpsc::UnboundedSender<Command>,
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
        let _ = self.commands.send(Command::Unsubscribe(self.id));
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
                return Err(Error::Runtime(format!(
                    "refusing to listen on {addr} without a cluster secret: configure one, or listen on loopback"
                )));
            }
            if config.secret.is_none() {
                tracing::warn!(%addr, "no cluster secret configured: listening on loopback only, peers are not authenticated");
            }
        }
        let (commands, receiver) = mpsc::unbounded_channel();
        let (addr_tx, addr_rx) = std::sync::mpsc::sync_channel(1);
        let node = config.node;
        let thread_name = format!("pagemesh-net-{}", config.name);
        let (runtime, thread) = spawn_runtime(&thread_name, config.transport, move |kind| {
            run(kind, config, receiver, addr_tx)
        })?;
        let local_addr = addr_rx
            .recv()
            .map_err(|_| Error::Runtime("network thread died while binding".into()))??;
        tracing::info!(?runtime, ?local_addr, %node, "network service started");
        Ok(Self {
            commands,
            thread: Mutex::new(Some(thread)),
            local_addr,
            runtime,
            next_subscription: std::sync::atomic::AtomicU64::new(0),
            node,
        })
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
        let _ = self.commands.send(Command::Serve(database));
    }

    /// Stops serving a database (its links close).
    pub fn withdraw(&self, database: Uuid) {
        let _ = self.commands.send(Command::Withdraw(database));
    }

    /// Keeps the replica in `store` subscribed to `database` on the node at `addr`, reconnecting
    /// and re-syncing by itself, until the returned handle is dropped.
    pub fn subscribe(
        &self,
        addr: SocketAddr,
        database: Uuid,
        store: Arc<dyn ReplicaStore>,
    ) -> Subscription {
        let id = self
            .next_subscription
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let status = Arc::new(Mutex::new(SubscriptionStatus::default()));
        let _ = self.commands.send(Command::Subscribe {
            id,
            addr,
            database,
            store,
            status: Arc::clone(&status),
        });
        Subscription {
            id,
            commands: self.commands.clone(),
            status,
        }
    }

    /// Stops the runtime thread, closing every link; waits for it.
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
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
}

impl Runtime {
    /// Counts a connection refused, evicted or failed before it authenticated; logs the counts
    /// at most once per [`REFUSAL_LOG_INTERVAL`].
    fn refused(&self, reason: Reason) {
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

/// A restore in progress: where its chunks go, and its verdict (the replica and its resume LSN).
type RestoreJob = (
    mpsc::Sender<Vec<u8>>,
    oneshot::Receiver<Result<(Arc<dyn ReplicaDatabase>, u64), String>>,
);

/// Closes a link from outside: shuts its socket and wakes its tasks.
struct LinkControl {
    closed: Cell<bool>,
    wake: Notify,
    shutdown: RefCell<Option<Shutdown>>,
}

impl LinkControl {
    fn new() -> Rc<Self> {
        Rc::new(Self {
            closed: Cell::new(false),
            wake: Notify::new(),
            shutdown: RefCell::new(None),
        })
    }

    fn close(&self) {
        self.closed.set(true);
        if let Some(shutdown) = self.shutdown.borrow().as_ref() {
            shutdown.shutdown();
        }
        self.wake.notify_waiters();
    }

    async fn closed(&self) {
        while !self.closed.get() {
            self.wake.notified().await;
        }
    }
}

async fn run(
    kind: RuntimeKind,
    config: ServiceConfig,
    mut commands: mpsc::UnboundedReceiver<Command>,
    addr_tx: std::sync::mpsc::SyncSender<Result<Option<SocketAddr>>>,
) {
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
    });
    let accepting = LinkControl::new();
    if let Some(listener) = listener {
        let runtime = Rc::clone(&runtime);
        let accepting = Rc::clone(&accepting);
        spawn_local(async move { accept(&runtime, &listener, &accepting).await });
    }
    while let Some(command) = commands.recv().await {
        match command {
            Command::Serve(database) => {
                tracing::info!(database = %database.uuid(), "serving database");
                runtime
                    .sources
                    .borrow_mut()
                    .insert(database.uuid(), database);
            }
            Command::Withdraw(uuid) => {
                runtime.sources.borrow_mut().remove(&uuid);
                for (db, control) in runtime.links.borrow().values() {
                    if *db == Some(uuid) {
                        control.close();
                    }
                }
            }
            Command::Subscribe {
                id,
                addr,
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
                    addr,
                    database,
                    store,
                    status,
                ));
            }
            Command::Unsubscribe(id) => {
                if let Some(control) = runtime.subscriptions.borrow_mut().remove(&id) {
                    control.close();
                }
            }
            Command::Stop => break,
        }
    }
    accepting.close();
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

fn nonce() -> [u8; 32] {
    rand::random()
}

/// Runs the handshake on a fresh connection; returns the peer once established.
async fn handshake(
    runtime: &Runtime,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    connector: bool,
) -> Result<PeerInfo> {
    let now = Instant::now();
    let mut out = writer.buffer();
    let mut state = if connector {
        Handshake::connect(&runtime.handshake, nonce(), now, &mut out)
    } else {
        Handshake::accept(&runtime.handshake, nonce(), now)
    };
    writer.write(out).await?;
    let deadline = state.deadline();
    loop {
        let frame = match timeout_at(deadline, reader.next()).await {
            Err(_) => return Err(Error::HandshakeTimeout),
            Ok(frame) => frame?,
        };
        let Some(frame) = frame else {
            return Err(Error::Runtime(
                "peer closed the link during the handshake".into(),
            ));
        };
        let mut out = writer.buffer();
        let outcome = state.on_frame(&frame, &mut out);
        writer.write(out).await?;
        if let Some(peer) = outcome? {
            return Ok(peer);
        }
    }
}

/// Source side of an accepted link, booked in `runtime.links` and admitted as `id`.
async fn serve_link(
    runtime: Rc<Runtime>,
    id: u64,
    control: Rc<LinkControl>,
    connection: Connection,
    peer: SocketAddr,
) {
    let outcome = match authenticate(&runtime, &control, id, connection, peer).await {
        Ok((reader, writer, info)) => serve_replica(&runtime, &control, id, reader, writer, info)
            .await
            .map_err(Some),
        Err(error) => {
            // An evicted connection was counted when it was evicted.
            if !control.closed.get() {
                runtime.refused(match error {
                    Error::HandshakeTimeout => Reason::HandshakeTimeout,
                    _ => Reason::HandshakeFailed,
                });
            }
            tracing::debug!(%peer, %error, "connection closed before it authenticated");
            Err(None)
        }
    };
    control.close();
    runtime.links.borrow_mut().remove(&id);
    runtime.admission.borrow_mut().closed(id);
    match outcome {
        Ok(()) => tracing::debug!(%peer, "link closed"),
        Err(Some(error)) => tracing::warn!(%peer, %error, "link closed"),
        // Counted and logged with the other refusals.
        Err(None) => {}
    }
}

/// Runs the acceptor's handshake under the handshake's limits, then books the link as
/// authenticated; returns its halves and the peer.
async fn authenticate(
    runtime: &Runtime,
    control: &LinkControl,
    id: u64,
    connection: Connection,
    peer: SocketAddr,
) -> Result<(FrameReader, FrameWriter, PeerInfo)> {
    let (mut reader, mut writer, shutdown) = connection.split(peer)?;
    *control.shutdown.borrow_mut() = Some(shutdown);
    let info = handshake(runtime, &mut reader, &mut writer, false).await?;
    if !runtime.admission.borrow_mut().authenticated(id) {
        runtime.refused(Reason::LinksFull);
        return Err(Error::Runtime(format!(
            "{} links are open already, the most allowed",
            runtime.config.links_max
        )));
    }
    // A replica sends only RESUME, acks and heartbeats: nothing it sends may be large.
    reader.expect_control();
    Ok((reader, writer, info))
}

/// Serves an authenticated replica: RESUME, then pages until the link ends.
async fn serve_replica(
    runtime: &Rc<Runtime>,
    control: &Rc<LinkControl>,
    id: u64,
    mut reader: FrameReader,
    mut writer: FrameWriter,
    info: PeerInfo,
) -> Result<()> {
    let peer = reader.peer();
    let resume = match timeout(runtime.config.link_timeout, reader.next()).await {
        Err(_) => {
            return Err(Error::LinkTimeout {
                silent_for: runtime.config.link_timeout,
            })
        }
        Ok(frame) => match frame? {
            Some(Frame::Resume(resume)) => resume,
            Some(other) => {
                return Err(Error::UnexpectedFrame {
                    state: "awaiting RESUME",
                    frame: other.kind(),
                })
            }
            None => return Ok(()),
        },
    };
    let source = runtime.sources.borrow().get(&resume.database).cloned();
    let served = source.as_ref().map(|source| Served {
        origin: source.origin(),
        committed_lsn: source.log().committed_lsn(),
    });
    let (source, admitted) = match (source, admit(served, resume.origin, resume.from_lsn)) {
        (Some(source), Ok(admitted)) => (source, admitted),
        (_, outcome) => {
            let reason = format!(
                "database {}: {}",
                resume.database,
                outcome.err().unwrap_or_default()
            );
            return refuse(&mut writer, reason).await;
        }
    };
    if let Some(entry) = runtime.links.borrow_mut().get_mut(&id) {
        entry.0 = Some(resume.database);
    }
    if admitted.reseeded {
        let end = served.map_or(0, |served| served.committed_lsn);
        tracing::warn!(%peer, replica = %info.name, from_lsn = resume.from_lsn, end, "replica claims pages beyond this log; re-seeding it from a snapshot");
    }
    let from_lsn = admitted.from_lsn;
    tracing::info!(%peer, replica = %info.name, database = %resume.database, from_lsn, "replica subscribed");
    let received = if from_lsn == BOOTSTRAP { 0 } else { from_lsn };
    let sink = source.attach(&info.name, received);
    let progress = LinkProgress::new(received);
    spawn_local(watchdog(
        Rc::clone(control),
        Rc::clone(&progress),
        runtime.config.link_timeout,
        Some(source.log().clone()),
    ));
    // The ack reader.
    let acks = {
        let control = Rc::clone(control);
        let progress = Rc::clone(&progress);
        let database = resume.database;
        spawn_local(async move {
            let outcome = read_acks(&mut reader, database, &*sink, &progress).await;
            control.close();
            outcome
        })
    };
    let shipped = ship(runtime, control, &source, &mut writer, from_lsn, &progress).await;
    control.close();
    let acked = acks.await.unwrap_or(Ok(()));
    shipped.and(acked)
}

/// Tells a peer why its subscription is refused, and fails the link with it.
async fn refuse(writer: &mut FrameWriter, reason: String) -> Result<()> {
    let mut out = writer.buffer();
    encode(
        &Frame::Refuse(Refuse::new(RefuseCode::UnknownDatabase, &reason)),
        &mut out,
    );
    writer.write(out).await?;
    Err(Error::Refused {
        code: RefuseCode::UnknownDatabase as u16,
        reason,
    })
}

async fn read_acks(
    reader: &mut FrameReader,
    database: Uuid,
    sink: &dyn AckSink,
    progress: &LinkProgress,
) -> Result<()> {
    loop {
        let Some(frame) = reader.next().await? else {
            return Ok(());
        };
        progress.last_heard.set(Instant::now());
        match frame {
            // Never count more than was shipped: a peer's word is not proof of receipt.
            Frame::Ack(ack) if ack.database == database => {
                let shipped = progress.shipped.get();
                sink.ack(ack.received_lsn.min(shipped), ack.durable_lsn.min(shipped))
            }
            Frame::Heartbeat(_) => {}
            other => {
                return Err(Error::UnexpectedFrame {
                    state: "shipping",
                    frame: other.kind(),
                })
            }
        }
    }
}

/// What woke the shipper.
enum Wake {
    Ready(pagemesh_logpage::Result<()>),
    Tick,
    Closed,
}

/// Sends `source`'s pages from `from_lsn` on, forever: binlog catch-up, ring streaming, snapshots.
async fn ship(
    runtime: &Runtime,
    control: &LinkControl,
    source: &Arc<dyn SourceDatabase>,
    writer: &mut FrameWriter,
    from_lsn: u64,
    progress: &LinkProgress,
) -> Result<()> {
    let log = source.log().clone();
    let (database, origin) = (source.uuid(), source.origin());
    let header = |first_lsn| PagesHeader {
        database,
        origin,
        epoch: log.epoch(),
        visited: &[],
        first_lsn,
    };
    let heartbeat = runtime.config.heartbeat;
    let mut plan = FeedPlan::new(from_lsn, log.slots());
    let mut scratch = Vec::new();
    let mut last_sent = Instant::now();
    loop {
        if control.closed.get() {
            return Ok(());
        }
        let next = match plan.feed() {
            Feed::Snapshot => {
                let lsn = send_snapshot(control, source, writer, progress).await?;
                plan.snapshot_sent(lsn);
                progress.shipped.set(lsn);
                last_sent = Instant::now();
                continue;
            }
            Feed::Binlog { from_lsn } => {
                scratch.clear();
                let history = source
                    .history(from_lsn, HISTORY_BATCH_PAGES, &mut scratch)
                    .map_err(|reason| Error::Source { database, reason })?;
                plan.binlog_read(history);
                if let History::Pages(count @ 1..) = history {
                    let mut batch = writer.buffer();
                    encode_pages(&header(from_lsn), &[&scratch], &mut batch);
                    progress.shipped.set(from_lsn + count as u64);
                    progress.write(writer, batch).await?;
                    last_sent = Instant::now();
                }
                continue;
            }
            Feed::Ring { from_lsn } => from_lsn,
        };
        // Caught up with the binlog: stream from the ring, if it still holds `next`.
        let mut cursor = match log.cursor(next) {
            Ok(cursor) => cursor,
            Err(pagemesh_logpage::Error::BelowHorizon { .. }) => {
                plan.ring_below_horizon();
                continue;
            }
            Err(error) => return Err(Error::Log(error)),
        };
        tracing::debug!(lsn = next, "streaming from the ring");
        loop {
            let wake = tokio::select! {
                ready = poll_fn(|cx| cursor.poll_ready(cx)) => Wake::Ready(ready),
                () = sleep(heartbeat) => Wake::Tick,
                () = control.closed() => Wake::Closed,
            };
            match wake {
                Wake::Closed => return Ok(()),
                Wake::Ready(Err(pagemesh_logpage::Error::Closed)) => return Ok(()),
                Wake::Ready(Err(error)) => return Err(Error::Log(error)),
                Wake::Tick => {
                    if last_sent.elapsed() >= heartbeat {
                        let mut batch = writer.buffer();
                        encode(&Frame::Heartbeat(Heartbeat { sent_micros: 0 }), &mut batch);
                        progress.write(writer, batch).await?;
                        last_sent = Instant::now();
                    }
                }
                Wake::Ready(Ok(())) => {
                    let mut batch = writer.buffer();
                    let mut pages = 0;
                    while pages < RING_BATCH_PAGES {
                        let Some(run) = cursor.next_run(RING_BATCH_PAGES - pages)? else {
                            break;
                        };
                        encode_pages(&header(run.first_lsn), &[run.bytes], &mut batch);
                        pages += run.count();
                    }
                    // The pages are copied into the batch: the ring may have their slots back
                    // now, whatever the socket does.
                    let position = cursor.position();
                    cursor.release(position);
                    progress.shipped.set(position);
                    progress.write(writer, batch).await?;
                    last_sent = Instant::now();
                    if plan.ring_shipped(position, cursor.lag_pages()) {
                        tracing::info!(
                            lsn = position,
                            lag_pages = cursor.lag_pages(),
                            "replica lags: back to the binlog"
                        );
                        break;
                    }
                }
            }
        }
    }
}

/// What a link's tasks share with its watchdog.
struct LinkProgress {
    /// When the peer last sent anything.
    last_heard: Cell<Instant>,
    /// When the write in flight began, if one is.
    writing_since: Cell<Option<Instant>>,
    /// Source side: every page below this has been handed to the socket (acks are capped here).
    shipped: Cell<u64>,
}

impl LinkProgress {
    fn new(shipped: u64) -> Rc<Self> {
        Rc::new(Self {
            last_heard: Cell::new(Instant::now()),
            writing_since: Cell::new(None),
            shipped: Cell::new(shipped),
        })
    }

    /// `writer.write`, timed for the watchdog.
    async fn write(&self, writer: &mut FrameWriter, batch: Vec<u8>) -> Result<()> {
        self.writing_since.set(Some(Instant::now()));
        let outcome = writer.write(batch).await;
        self.writing_since.set(None);
        outcome
    }
}

/// How often a watchdog looks at its link.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(20);

/// Closes the link when the peer has been silent, or one write blocked, for longer than
/// `link_timeout`, or (source side, with `ring`) when a blocked write lets the replica fall more
/// than half the ring behind. Reads and writes cannot be raced against a timer (io_uring
/// operations are not safely cancellable), so the watchdog shuts the socket down instead, which
/// completes them with an error. So a replica that stops reading never holds the primary's ring.
async fn watchdog(
    control: Rc<LinkControl>,
    progress: Rc<LinkProgress>,
    link_timeout: Duration,
    ring: Option<Log>,
) {
    loop {
        tokio::select! {
            () = sleep(WATCHDOG_PERIOD) => {}
            () = control.closed() => return,
        }
        let silent_for = progress.last_heard.get().elapsed();
        let blocked_for = progress.writing_since.get().map(|since| since.elapsed());
        let lag = ring.as_ref().map_or(0, |log| {
            log.committed_lsn().saturating_sub(progress.shipped.get())
        });
        let why = if silent_for > link_timeout {
            Some(format!("peer silent for {silent_for:?}"))
        } else if blocked_for.is_some_and(|blocked| blocked > link_timeout) {
            Some(format!("a write blocked for {blocked_for:?}"))
        } else if blocked_for.is_some() && ring.as_ref().is_some_and(|log| lag > log.slots() / 2) {
            Some(format!(
                "replica {lag} pages behind while its link is blocked"
            ))
        } else {
            None
        };
        if let Some(why) = why {
            tracing::warn!(%why, "closing link");
            control.close();
            return;
        }
    }
}

/// Streams a full snapshot of `source`; returns the LSN to continue from.
async fn send_snapshot(
    control: &LinkControl,
    source: &Arc<dyn SourceDatabase>,
    writer: &mut FrameWriter,
    progress: &LinkProgress,
) -> Result<u64> {
    let (database, origin) = (source.uuid(), source.origin());
    tracing::info!(%database, "sending a full snapshot");
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<Vec<u8>>(4);
    let (done_tx, done_rx) = oneshot::channel();
    let exporter = Arc::clone(source);
    std::thread::Builder::new()
        .name("pagemesh-snapshot".into())
        .spawn(move || {
            let mut out = ChunkWriter {
                chunks: chunks_tx,
                buf: Vec::with_capacity(SNAPSHOT_CHUNK),
            };
            let outcome = exporter.snapshot(&mut out).and_then(|lsn| {
                out.flush_chunk().map_err(|e| e.to_string())?;
                Ok(lsn)
            });
            let _ = done_tx.send(outcome);
        })
        .map_err(|error| Error::Runtime(format!("spawn snapshot thread: {error}")))?;
    let mut offset = 0u64;
    while let Some(chunk) = chunks_rx.recv().await {
        if control.closed.get() {
            return Err(Error::Runtime("link closed during a snapshot".into()));
        }
        let mut batch = writer.buffer();
        encode(
            &Frame::Snapshot(SnapshotChunk {
                database,
                origin,
                snapshot_lsn: 0,
                offset,
                last: false,
                data: &chunk,
            }),
            &mut batch,
        );
        progress.write(writer, batch).await?;
        offset += chunk.len() as u64;
    }
    let lsn = done_rx
        .await
        .map_err(|_| Error::Runtime("snapshot thread died".into()))?
        .map_err(|reason| Error::Source { database, reason })?;
    let mut batch = writer.buffer();
    encode(
        &Frame::Snapshot(SnapshotChunk {
            database,
            origin,
            snapshot_lsn: lsn,
            offset,
            last: true,
            data: &[],
        }),
        &mut batch,
    );
    progress.write(writer, batch).await?;
    tracing::info!(%database, bytes = offset, lsn, "snapshot sent");
    Ok(lsn)
}

/// A `Write` that hands fixed-size chunks to the link task (blocking the exporter while the link
/// is behind: bounded memory).
struct ChunkWriter {
    chunks: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK));
        self.chunks
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "link closed"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = SNAPSHOT_CHUNK - self.buf.len();
        let n = room.min(bytes.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == SNAPSHOT_CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `Read` over chunks arriving from the link task (blocking the restorer until they come).
struct ChunkReader {
    chunks: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.chunks.blocking_recv() {
                Some(chunk) => {
                    self.current = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Replica side: keeps one subscription alive, reconnecting with backoff, until unsubscribed.
async fn follow(
    runtime: Rc<Runtime>,
    control: Rc<LinkControl>,
    addr: SocketAddr,
    database: Uuid,
    store: Arc<dyn ReplicaStore>,
    status: Arc<Mutex<SubscriptionStatus>>,
) {
    let mut backoff = Duration::from_millis(50);
    while !control.closed.get() {
        let link = LinkControl::new();
        let outcome = tokio::select! {
            outcome = follow_link(&runtime, &link, addr, database, &store, &status) => outcome,
            () = control.closed() => Ok(()),
        };
        link.close();
        let was_connected = {
            let mut state = lock(&status);
            if let Err(error) = &outcome {
                tracing::warn!(%addr, %database, %error, "replication link ended; reconnecting");
                state.last_error = Some(error.to_string());
            }
            state.restoring = false;
            std::mem::replace(&mut state.connected, false)
        };
        if was_connected {
            backoff = Duration::from_millis(50);
        }
        tokio::select! {
            () = sleep(backoff) => {}
            () = control.closed() => {}
        }
        backoff = (backoff * 2).min(runtime.config.backoff_max);
    }
}

/// Latest ack to send, shared by a replica link's reader and writer.
struct AckState {
    pending: Cell<Option<(u64, u64)>>,
    due: Notify,
}

async fn follow_link(
    runtime: &Rc<Runtime>,
    control: &Rc<LinkControl>,
    addr: SocketAddr,
    database: Uuid,
    store: &Arc<dyn ReplicaStore>,
    status: &Arc<Mutex<SubscriptionStatus>>,
) -> Result<()> {
    let connection = Connection::connect(runtime.kind, addr).await?;
    let (mut reader, mut writer, shutdown) = connection.split(addr)?;
    *control.shutdown.borrow_mut() = Some(shutdown);
    let peer = handshake(runtime, &mut reader, &mut writer, true).await?;
    reader.expect_bulk();
    let mut replica = store.current();
    let resume = match &replica {
        Some(db) => Resume {
            database,
            origin: db.origin(),
            epoch: db.log().epoch(),
            from_lsn: db.received_lsn(),
        },
        None => Resume {
            database,
            origin: Uuid::nil(),
            epoch: 0,
            from_lsn: BOOTSTRAP,
        },
    };
    tracing::info!(%addr, source = %peer.name, %database, from_lsn = resume.from_lsn, "subscribing");
    let mut out = writer.buffer();
    encode(&Frame::Resume(resume), &mut out);
    writer.write(out).await?;
    {
        let mut state = lock(status);
        state.connected = true;
        state.links += 1;
    }
    let acks = Rc::new(AckState {
        pending: Cell::new(None),
        due: Notify::new(),
    });
    let progress = LinkProgress::new(0);
    spawn_local(watchdog(
        Rc::clone(control),
        Rc::clone(&progress),
        runtime.config.link_timeout,
        None,
    ));
    let sender = {
        let (acks, control, progress) =
            (Rc::clone(&acks), Rc::clone(control), Rc::clone(&progress));
        let heartbeat = runtime.config.heartbeat;
        spawn_local(async move {
            let outcome =
                send_acks(&mut writer, database, &acks, &control, &progress, heartbeat).await;
            control.close();
            outcome
        })
    };
    let received = receive(
        &mut reader,
        database,
        store,
        &mut replica,
        &acks,
        &progress,
        status,
    )
    .await;
    control.close();
    let sent = sender.await.unwrap_or(Ok(()));
    received.and(sent)
}

/// The replica link's writer: the newest ack as soon as there is one, heartbeats when idle (the
/// watchdog enforces the link timeout).
async fn send_acks(
    writer: &mut FrameWriter,
    database: Uuid,
    acks: &AckState,
    control: &LinkControl,
    progress: &LinkProgress,
    heartbeat: Duration,
) -> Result<()> {
    let mut last_sent = Instant::now();
    loop {
        tokio::select! {
            () = acks.due.notified() => {}
            () = sleep(heartbeat) => {}
            () = control.closed() => return Ok(()),
        }
        let mut batch = writer.buffer();
        if let Some((received_lsn, durable_lsn)) = acks.pending.take() {
            encode(
                &Frame::Ack(Ack {
                    database,
                    origin: Uuid::nil(),
                    received_lsn,
                    durable_lsn,
                }),
                &mut batch,
            );
        } else if last_sent.elapsed() >= heartbeat {
            encode(&Frame::Heartbeat(Heartbeat { sent_micros: 0 }), &mut batch);
        }
        if !batch.is_empty() {
            progress.write(writer, batch).await?;
            last_sent = Instant::now();
        }
    }
}

/// The replica link's reader: pages into the ring (ack queued at once), snapshots into a restore.
async fn receive(
    reader: &mut FrameReader,
    database: Uuid,
    store: &Arc<dyn ReplicaStore>,
    replica: &mut Option<Arc<dyn ReplicaDatabase>>,
    acks: &AckState,
    progress: &LinkProgress,
    status: &Arc<Mutex<SubscriptionStatus>>,
) -> Result<()> {
    let mut restore: Option<RestoreJob> = None;
    loop {
        let Some(frame) = reader.next().await? else {
            return Ok(());
        };
        progress.last_heard.set(Instant::now());
        match frame {
            Frame::Pages(pages) if pages.database == database => {
                let Some(db) = replica.as_ref() else {
                    return Err(Error::UnexpectedFrame {
                        state: "bootstrapping (no replica yet)",
                        frame: "PAGES",
                    });
                };
                let mut offered = pages.pages;
                while !offered.is_empty() {
                    // Pending only while the ring is full: the replica's applier frees it.
                    let ingested = poll_fn(|cx| db.log().poll_ingest(cx, offered))
                        .await
                        .map_err(|error| Error::Replica {
                            database,
                            reason: error.to_string(),
                        })?;
                    offered = &offered[ingested.pages * PAGE_SIZE..];
                }
                let received = db.received_lsn();
                acks.pending
                    .set(Some((received, db.durable_lsn().min(received))));
                acks.due.notify_one();
                lock(status).received_lsn = received;
            }
            Frame::Snapshot(chunk) if chunk.database == database => {
                if restore.is_none() {
                    tracing::info!(%database, "receiving a full snapshot");
                    lock(status).restoring = true;
                    *replica = None;
                    let (chunks_tx, chunks_rx) = mpsc::channel(4);
                    let (done_tx, done_rx) = oneshot::channel();
                    let store = Arc::clone(store);
                    std::thread::Builder::new()
                        .name("pagemesh-restore".into())
                        .spawn(move || {
                            let mut input = ChunkReader {
                                chunks: chunks_rx,
                                current: Vec::new(),
                                at: 0,
                            };
                            let _ = done_tx.send(store.restore(&mut input));
                        })
                        .map_err(|error| {
                            Error::Runtime(format!("spawn restore thread: {error}"))
                        })?;
                    restore = Some((chunks_tx, done_rx));
                }
                let Some((chunks, _)) = restore.as_ref() else {
                    continue;
                };
                let stopped_early =
                    !chunk.data.is_empty() && chunks.send(chunk.data.to_vec()).await.is_err();
                if chunk.last || stopped_early {
                    let Some((chunks, done)) = restore.take() else {
                        continue;
                    };
                    drop(chunks);
                    let (db, lsn) = done
                        .await
                        .map_err(|_| Error::Runtime("restore thread died".into()))?
                        .map_err(|reason| Error::Replica { database, reason })?;
                    tracing::info!(%database, lsn, "snapshot restored; following from it");
                    {
                        let mut state = lock(status);
                        state.restores += 1;
                        state.restoring = false;
                        state.received_lsn = db.received_lsn();
                    }
                    acks.pending
                        .set(Some((db.received_lsn(), db.durable_lsn())));
                    acks.due.notify_one();
                    *replica = Some(db);
                }
            }
            Frame::Heartbeat(_) => {}
            Frame::Refuse(refuse) => {
                return Err(Error::Refused {
                    code: refuse.code as u16,
                    reason: refuse.reason,
                })
            }
            other => {
                return Err(Error::UnexpectedFrame {
                    state: "following",
                    frame: other.kind(),
                })
            }
        }
    }
}
