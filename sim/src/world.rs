//! One simulated run: the origin, its replicas, the connections between them and the event
//! queue, advanced one event at a time on a virtual clock.
//!
//! Nodes are real: each holds real `pagemesh-logpage` logs in files (an origin log; a follower
//! log per replica generation), a model [`Store`] applying records in log order, and, per link,
//! the real I/O-free machines of `pagemesh-net` (the handshake, `SourceLink`, `Shipper`,
//! `ReplicaLink`) and `pagemesh-core`'s `Replication` counting acks for `Replicated(n)` commits.
//! What the drivers of the real node do (move bytes, read the binlog, ingest, restore, keep
//! timers) this module does in their place, deterministically.
//!
//! Everything random comes from one `ChaCha8Rng` seeded with the scenario's seed, and events at
//! the same instant run in the order they were scheduled, so a seed replays the same run.
//!
//! Departures from the real node, each deliberate: a closed connection is torn down at both ends
//! at once (no FIN in flight); the admission of `service::admission` is not simulated (it has its
//! own tests); crashes are process crashes (the ring's mapped pages survive, the store keeps what
//! it applied); power loss and epochs belong to the durable-commit work.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{DefaultHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagemesh_core::{ReplicaLink as AckLink, Replication};
use pagemesh_logpage::page::{validate, PAGE_SIZE};
use pagemesh_logpage::{Cursor, Log, LogOptions};
use pagemesh_net::proto::frame::{decode, encode, Decoded, Frame, Resume, SnapshotChunk};
use pagemesh_net::proto::handshake::{Handshake, HandshakeConfig};
use pagemesh_net::route::{admit, Feed, History, Served, BOOTSTRAP};
use pagemesh_net::service::replica_link::{Received, ReplicaLink};
use pagemesh_net::service::shipper::{Shipper, HISTORY_BATCH_PAGES};
use pagemesh_net::service::source_link::SourceLink;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uuid::Uuid;

use crate::network::{Path, Pipe, Sent};
use crate::scenario::Scenario;
use crate::store::{self, Store};
use crate::{Outcome, Stats};

const DATABASE: Uuid = Uuid::from_u128(0x7061_6765_6d65_7368_0000_0000_0000_0d0b);
const ORIGIN: Uuid = Uuid::from_u128(0x7061_6765_6d65_7368_0000_0000_0000_0001);
/// Bytes per SNAPSHOT chunk (small, so snapshots take several writes).
const SNAPSHOT_CHUNK: usize = 16 << 10;
/// First and longest reconnect backoff (the service's are 50 ms and a configured maximum).
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(400);
/// How often convergence is checked once faults stop.
const CHECK_EVERY: Duration = Duration::from_millis(20);
/// The longest a run may take to converge after the faults stop, progressing or not.
const SETTLE_MAX: Duration = Duration::from_secs(600);
/// Timer events one side may take at one instant before it counts as spinning.
const SPINS_MAX: u32 = 64;

/// Which end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    /// The origin's end: it ships.
    Source,
    /// The replica's end: it follows.
    Replica,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A client of the origin starts a transaction.
    Commit { client: usize },
    /// A `Replicated(n)` commit's wait ends.
    CommitTimeout { client: usize, id: u64 },
    /// A node's applier runs (0: the origin).
    Apply { node: usize },
    /// Bytes may have arrived at `to`'s end.
    Deliver { conn: u64, to: Side },
    /// `from`'s write has left.
    WriteDone { conn: u64, from: Side },
    /// A link timer of `side`, set for `at`.
    Timer { conn: u64, side: Side, at: Duration },
    /// A replica (1-based) connects to the origin.
    Connect { replica: usize },
    /// Something fails.
    Fault,
    /// A node comes back (0: the origin), if this is its restart of generation `life`.
    Restart { node: usize, life: u64 },
    /// A partition between the origin and `replica` heals.
    Heal { replica: usize },
    /// The workload and the faults end; the network heals.
    Quiesce,
    /// Is every copy equal to the origin yet?
    Check,
}

/// A pending `Replicated(n)` commit.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    id: u64,
    lsn_end: u64,
    wanted: u32,
}

#[derive(Debug, Default)]
struct Client {
    waiting: Option<Waiting>,
}

/// The origin's running state (gone while it is down).
struct OriginDb {
    log: Log,
    applier: Cursor,
    /// Reads every page as it is committed, for the checker's page registry.
    audit: Cursor,
    replication: Arc<Replication>,
}

struct Origin {
    db: Option<OriginDb>,
    dir: PathBuf,
    /// Durable: applied state.
    store: Store,
    /// Durable: applied pages, oldest first (the binlog).
    binlog: VecDeque<(u64, Box<[u8]>)>,
    /// Durable: every page below this is in the binlog (what the log continues from).
    binlog_next: u64,
    clients: Vec<Client>,
    paused_until: Duration,
    /// Bumped by each crash, so a stale restart is ignored.
    life: u64,
}

struct ReplicaDb {
    log: Log,
    applier: Cursor,
}

struct ReplicaNode {
    name: String,
    uuid: Uuid,
    up: bool,
    life: u64,
    /// The database, once bootstrapped (or while it runs).
    db: Option<ReplicaDb>,
    /// Durable: where its current generation lives, and its store.
    generation: Option<(PathBuf, Store)>,
    generations: u32,
    /// Ground truth: every page below this is in its ring.
    held: u64,
    conn: Option<u64>,
    backoff: Duration,
    paused_until: Duration,
}

enum SourceEnd {
    Handshake(Box<Handshake>),
    AwaitResume { since: Duration },
    Shipping(Box<Shipping>),
}

struct Shipping {
    link: SourceLink,
    shipper: Shipper,
    cursor: Option<Cursor>,
    /// Reports acks to the origin's `Replication`; dropping it detaches the replica.
    acks: AckLink,
    /// A snapshot being sent: its resume LSN and the chunks left.
    snapshot: Option<(u64, VecDeque<Vec<u8>>)>,
}

enum ReplicaEnd {
    Handshake(Box<Handshake>),
    Linked(Box<Following>),
}

struct Following {
    link: ReplicaLink,
    /// Pages offered while the ring was full: ingested once the applier frees slots.
    stalled: Option<Vec<u8>>,
    /// A snapshot arriving.
    restore: Option<Vec<u8>>,
    /// `stalled` holds pages (the machine was told).
    waiting_for_ring: bool,
}

struct Conn {
    replica: usize,
    path: Path,
    to_replica: Pipe,
    to_source: Pipe,
    source: SourceEnd,
    replica_end: ReplicaEnd,
    source_out: Vec<u8>,
    replica_out: Vec<u8>,
    timers: [Option<Duration>; 2],
    spins: [(Duration, u32); 2],
    linked: bool,
}

impl Conn {
    fn pipe_from(&mut self, side: Side) -> &mut Pipe {
        match side {
            Side::Source => &mut self.to_replica,
            Side::Replica => &mut self.to_source,
        }
    }
}

fn slot(side: Side) -> usize {
    match side {
        Side::Source => 0,
        Side::Replica => 1,
    }
}

/// One run; see the module docs.
pub struct World {
    scenario: Scenario,
    base: Instant,
    now: Duration,
    rng: ChaCha8Rng,
    queue: BTreeMap<(Duration, u64), Event>,
    sequence: u64,
    origin: Origin,
    replicas: Vec<ReplicaNode>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    partitioned: Vec<Duration>,
    active: bool,
    done: bool,
    /// What the origin wrote at each LSN (a hash of the page), whenever it wrote it.
    registry: BTreeMap<u64, u64>,
    /// Sum of every node's applied and held LSNs after the faults stopped, and when it last
    /// changed.
    progress: (u64, Duration),
    violations: Vec<String>,
    stats: Stats,
    trace: DefaultHasher,
    lines: Option<Vec<String>>,
    _dir: tempfile::TempDir,
}

impl World {
    /// A world for `scenario`, its files under a fresh temporary directory.
    pub fn new(scenario: Scenario, verbose: bool) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("pagemesh-sim-{}-", scenario.seed))
            .tempdir()?;
        let origin_dir = dir.path().join("origin");
        std::fs::create_dir_all(&origin_dir)?;
        let replicas = (1..=scenario.replicas)
            .map(|r| ReplicaNode {
                name: format!("replica-{r}"),
                uuid: Uuid::from_u128(0x1000 + r as u128),
                up: true,
                life: 0,
                db: None,
                generation: None,
                generations: 0,
                held: 0,
                conn: None,
                backoff: BACKOFF_MIN,
                paused_until: Duration::ZERO,
            })
            .collect();
        let mut world = Self {
            rng: ChaCha8Rng::seed_from_u64(scenario.seed),
            base: Instant::now(),
            now: Duration::ZERO,
            queue: BTreeMap::new(),
            sequence: 0,
            origin: Origin {
                db: None,
                dir: origin_dir,
                store: Store::new(0),
                binlog: VecDeque::new(),
                binlog_next: 0,
                clients: (0..scenario.clients).map(|_| Client::default()).collect(),
                paused_until: Duration::ZERO,
                life: 0,
            },
            replicas,
            conns: BTreeMap::new(),
            next_conn: 0,
            partitioned: vec![Duration::ZERO; scenario.replicas + 1],
            active: true,
            done: false,
            registry: BTreeMap::new(),
            progress: (0, Duration::ZERO),
            violations: Vec::new(),
            stats: Stats::default(),
            trace: DefaultHasher::new(),
            lines: verbose.then(Vec::new),
            _dir: dir,
            scenario,
        };
        world.start_origin();
        for client in 0..world.scenario.clients {
            world.schedule(Duration::ZERO, Event::Commit { client });
        }
        for node in 0..=world.scenario.replicas {
            let jitter = world.jitter(world.scenario.apply_period[node]);
            world.schedule(jitter, Event::Apply { node });
        }
        for replica in 1..=world.scenario.replicas {
            world.schedule(Duration::ZERO, Event::Connect { replica });
        }
        if let Some(every) = world.scenario.fault_every {
            let at = world.jitter(every);
            world.schedule(at, Event::Fault);
        }
        let active = world.scenario.active;
        world.schedule(active, Event::Quiesce);
        Ok(world)
    }

    /// Runs to the end: until every copy converged after the faults stopped, a violation, or
    /// the settle time passed.
    pub fn run(mut self) -> Outcome {
        while !self.done {
            let Some(((at, _), event)) = self.queue.pop_first() else {
                self.violation("nothing left to do, yet the run has not converged".into());
                break;
            };
            debug_assert!(at >= self.now, "time runs forward");
            self.now = at;
            self.handle(event);
            if !self.violations.is_empty() {
                break;
            }
        }
        self.stats.end = self.now;
        Outcome {
            seed: self.scenario.seed,
            violations: self.violations,
            trace_hash: self.trace.finish(),
            stats: self.stats,
            trace: self.lines.unwrap_or_default(),
        }
    }

    // ---------------------------------------------------------------- plumbing

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        self.sequence += 1;
        self.queue.insert((self.now + after, self.sequence), event);
    }

    fn schedule_at(&mut self, at: Duration, event: Event) {
        let at = at.max(self.now);
        self.schedule(at - self.now, event);
    }

    /// A duration between half and one and a half times `mean`.
    fn jitter(&mut self, mean: Duration) -> Duration {
        mean.mul_f64(self.rng.random_range(0.5..1.5))
    }

    fn note(&mut self, what: &str, a: u64, b: u64) {
        self.trace.write_u128(self.now.as_nanos());
        self.trace.write(what.as_bytes());
        self.trace.write_u64(a);
        self.trace.write_u64(b);
        if let Some(lines) = &mut self.lines {
            lines.push(format!("{:>12?} {what} {a} {b}", self.now));
        }
    }

    fn violation(&mut self, what: String) {
        self.note("VIOLATION", 0, 0);
        self.violations.push(format!("at {:?}: {what}", self.now));
    }

    fn cuts(&mut self) -> Vec<f64> {
        let count = self.rng.random_range(0..3);
        (0..count)
            .map(|_| self.rng.random_range(0.0..1.0))
            .collect()
    }

    // ---------------------------------------------------------------- events

    fn handle(&mut self, event: Event) {
        match event {
            Event::Commit { client } => self.commit(client),
            Event::CommitTimeout { client, id } => self.commit_timeout(client, id),
            Event::Apply { node } => self.apply(node),
            Event::Deliver { conn, to } => self.deliver(conn, to),
            Event::WriteDone { conn, from } => self.write_done(conn, from),
            Event::Timer { conn, side, at } => self.timer(conn, side, at),
            Event::Connect { replica } => self.connect(replica),
            Event::Fault => self.fault(),
            Event::Restart { node, life } => self.restart(node, life),
            Event::Heal { replica } => {
                if self.partitioned[replica] <= self.now {
                    self.note("heal", replica as u64, 0);
                }
            }
            Event::Quiesce => self.quiesce(),
            Event::Check => self.check_convergence(),
        }
    }

    // ---------------------------------------------------------------- the origin

    fn start_origin(&mut self) {
        let options = LogOptions::new()
            .slots(self.scenario.ring_slots)
            .next_lsn_min(self.origin.binlog_next);
        let log = match Log::open(&self.origin.dir, options) {
            Ok(log) => log,
            Err(error) => return self.violation(format!("origin log does not reopen: {error}")),
        };
        let resume = self.origin.store.resume_lsn();
        let applier = match log.cursor(resume) {
            Ok(cursor) => cursor,
            Err(error) => {
                return self.violation(format!(
                    "origin's ring lost pages its store needs (from {resume}): {error}"
                ))
            }
        };
        let recovered = log.recovered();
        let audit = match log.cursor(recovered.start_lsn) {
            Ok(cursor) => cursor,
            Err(error) => return self.violation(format!("origin audit cursor: {error}")),
        };
        let replication = Arc::new(Replication::default());
        replication.enable(self.scenario.sync_replicas);
        self.note("origin up", recovered.end_lsn, resume);
        self.origin.db = Some(OriginDb {
            log,
            applier,
            audit,
            replication,
        });
        self.audit();
    }

    /// Registers every page the origin committed: an LSN written twice with other bytes is a
    /// violation (an LSN reused).
    fn audit(&mut self) {
        let Some(db) = &mut self.origin.db else {
            return;
        };
        let mut pages = Vec::new();
        loop {
            match db.audit.next_ready() {
                Ok(Some(page)) => pages.push((page.lsn(), hash(page.compact_bytes()))),
                Ok(None) => break,
                Err(error) => {
                    let error = format!("origin page does not read back: {error}");
                    return self.violation(error);
                }
            }
        }
        let position = db.audit.position();
        db.audit.release(position);
        for (lsn, digest) in pages {
            match self.registry.insert(lsn, digest) {
                Some(before) if before != digest => {
                    return self.violation(format!(
                        "LSN {lsn} reused: the origin wrote it twice with different bytes"
                    ))
                }
                _ => {}
            }
        }
    }

    fn commit(&mut self, client: usize) {
        if !self.active {
            return;
        }
        let think = self
            .rng
            .random_range(Duration::ZERO..self.scenario.think_max);
        let Some(db) = &self.origin.db else {
            return self.schedule(
                think.max(Duration::from_millis(1)),
                Event::Commit { client },
            );
        };
        if self.origin.clients[client].waiting.is_some() {
            return;
        }
        let records = self.rng.random_range(1..=4);
        let mut lsn_end = None;
        for _ in 0..records {
            let key = [self.rng.random_range(0..64u8)];
            let len = self.rng.random_range(1..=self.scenario.record_max);
            let fill = self.rng.random::<u8>();
            let record = store::encode(&key, &vec![fill; len]);
            if !db.log.has_room(record.len()) {
                break;
            }
            match db.log.append(&record) {
                Ok(pos) => lsn_end = Some(pos.lsn_last + 1),
                Err(error) => return self.violation(format!("origin append: {error}")),
            }
        }
        let Some(lsn_end) = lsn_end else {
            // The ring is full: the applier or a shipper holds it. Try again soon.
            self.stats.commits_deferred += 1;
            return self.schedule(Duration::from_millis(1), Event::Commit { client });
        };
        db.log.seal();
        let committed = db.log.committed_lsn();
        if committed < lsn_end {
            return self.violation(format!(
                "a sealed commit ending at page {lsn_end} is not committed ({committed})"
            ));
        }
        self.stats.commits += 1;
        self.note("commit", client as u64, lsn_end);
        self.audit();
        self.watch_rings();
        self.pump_all_sources();
        let replicated = self.scenario.sync_replicas > 0
            && self.rng.random_range(0..100) < self.scenario.replicated_percent;
        if !replicated {
            return self.schedule(think, Event::Commit { client });
        }
        let wanted = self.rng.random_range(1..=self.scenario.sync_replicas) as u32;
        self.stats.replicated_commits += 1;
        let id = self.sequence;
        self.origin.clients[client].waiting = Some(Waiting {
            id,
            lsn_end,
            wanted,
        });
        let timeout = self.scenario.commit_timeout;
        self.schedule(timeout, Event::CommitTimeout { client, id });
        self.release_commits();
    }

    /// Completes every waiting commit whose replicas have acked it, checking each against what
    /// the replicas really hold.
    fn release_commits(&mut self) {
        let Some(db) = &self.origin.db else {
            return;
        };
        let mut released = Vec::new();
        for (client, state) in self.origin.clients.iter_mut().enumerate() {
            if let Some(waiting) = state.waiting {
                if db.replication.reached(waiting.lsn_end, waiting.wanted) {
                    state.waiting = None;
                    released.push((client, waiting));
                }
            }
        }
        for (client, waiting) in released {
            let holders = self
                .replicas
                .iter()
                .filter(|replica| replica.held >= waiting.lsn_end)
                .count() as u32;
            if holders < waiting.wanted {
                return self.violation(format!(
                    "a Replicated({}) commit ending at page {} returned while {holders} replica(s) held it",
                    waiting.wanted, waiting.lsn_end
                ));
            }
            self.stats.replicated_released += 1;
            self.note("replicated", client as u64, waiting.lsn_end);
            let think = self
                .rng
                .random_range(Duration::ZERO..self.scenario.think_max);
            self.schedule(think, Event::Commit { client });
        }
    }

    fn commit_timeout(&mut self, client: usize, id: u64) {
        let state = &mut self.origin.clients[client];
        if state.waiting.is_some_and(|waiting| waiting.id == id) {
            state.waiting = None;
            self.stats.replicated_timeouts += 1;
            self.note("replication timeout", client as u64, id);
            self.schedule(Duration::ZERO, Event::Commit { client });
        }
    }

    /// The ring-lag rule: a shipper blocked on a write while holding a ring cursor more than
    /// half a ring behind is dropped, checked as the log grows.
    fn watch_rings(&mut self) {
        let Some(db) = &self.origin.db else {
            return;
        };
        let (now, committed) = (self.instant(), db.log.committed_lsn());
        let dropped: Vec<(u64, String)> = self
            .conns
            .iter()
            .filter_map(|(&id, conn)| match &conn.source {
                SourceEnd::Shipping(shipping) if shipping.link.watching_ring() => shipping
                    .link
                    .handle_timeout(now, committed)
                    .err()
                    .map(|error| (id, error.to_string())),
                _ => None,
            })
            .collect();
        for (id, error) in dropped {
            self.stats.ring_lag_drops += 1;
            self.close(id, &error);
        }
    }

    // ---------------------------------------------------------------- appliers

    fn apply(&mut self, node: usize) {
        let period = self.jitter(self.scenario.apply_period[node]);
        self.schedule(period, Event::Apply { node });
        let pages_max = self.scenario.apply_pages[node];
        if node == 0 {
            if self.origin.paused_until <= self.now {
                self.apply_origin(pages_max);
            }
        } else if self.replicas[node - 1].paused_until <= self.now {
            self.apply_replica(node, pages_max);
        }
    }

    fn apply_origin(&mut self, pages_max: usize) {
        let Some(db) = &mut self.origin.db else {
            return;
        };
        let store = &mut self.origin.store;
        let mut failure = None;
        for _ in 0..pages_max {
            match db.applier.next_ready() {
                Ok(Some(page)) => {
                    if page.lsn() >= self.origin.binlog_next {
                        let mut full = Vec::with_capacity(PAGE_SIZE);
                        page.extend_full(&mut full);
                        self.origin.binlog.push_back((page.lsn(), full.into()));
                        self.origin.binlog_next = page.lsn() + 1;
                    }
                    if let Err(error) = store.apply(page) {
                        failure = Some(error);
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    failure = Some(error.to_string());
                    break;
                }
            }
        }
        db.applier.release(store.resume_lsn());
        if let Some(retention) = self.scenario.binlog_retention {
            let keep_from = store.next_lsn().saturating_sub(retention);
            while self
                .origin
                .binlog
                .front()
                .is_some_and(|(lsn, _)| *lsn < keep_from)
            {
                self.origin.binlog.pop_front();
            }
        }
        if let Some(error) = failure {
            self.violation(format!("origin applier: {error}"));
        }
    }

    fn apply_replica(&mut self, node: usize, pages_max: usize) {
        let replica = &mut self.replicas[node - 1];
        let (Some(db), Some((_, store))) = (&mut replica.db, &mut replica.generation) else {
            return;
        };
        let mut failure = None;
        let mut applied = Vec::new();
        for _ in 0..pages_max {
            match db.applier.next_ready() {
                Ok(Some(page)) => {
                    applied.push((page.lsn(), hash(page.compact_bytes())));
                    if let Err(error) = store.apply(page) {
                        failure = Some(error);
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    failure = Some(error.to_string());
                    break;
                }
            }
        }
        db.applier.release(store.resume_lsn());
        if let Some(error) = failure {
            let error = format!("{} applier: {error}", replica.name);
            return self.violation(error);
        }
        for (lsn, digest) in applied {
            if self.registry.get(&lsn) != Some(&digest) {
                return self.violation(format!(
                    "replica {node} applied page {lsn}, which is not the page the origin wrote there"
                ));
            }
        }
        // Slots were freed: a link waiting for ring space may go on.
        if let Some(id) = self.replicas[node - 1].conn {
            self.read(id, Side::Replica);
        }
    }

    // ---------------------------------------------------------------- connections

    fn path(&self, replica: usize) -> Path {
        Path {
            latency: self.scenario.latency[replica - 1],
            bandwidth: self.scenario.bandwidth[replica - 1],
            window: self.scenario.window,
        }
    }

    fn handshake_config(&self, node: Uuid, name: &str) -> HandshakeConfig {
        let mut config = HandshakeConfig::new(node, name, Some(b"sim".to_vec()));
        config.timeout = self.scenario.link_timeout;
        config
    }

    fn nonce(&mut self) -> [u8; 32] {
        self.rng.random()
    }

    fn connect(&mut self, replica: usize) {
        let node = &self.replicas[replica - 1];
        if !node.up || node.conn.is_some() {
            return;
        }
        if self.origin.db.is_none() || self.partitioned[replica] > self.now {
            // Refused, or no answer: try again later.
            self.note("connect failed", replica as u64, 0);
            return self.backoff(replica);
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let (uuid, name) = (node.uuid, node.name.clone());
        let now = self.instant();
        let mut replica_out = Vec::new();
        let connector = Handshake::connect(
            &self.handshake_config(uuid, &name),
            self.nonce(),
            now,
            &mut replica_out,
        );
        let acceptor =
            Handshake::accept(&self.handshake_config(ORIGIN, "origin"), self.nonce(), now);
        self.conns.insert(
            id,
            Conn {
                replica,
                path: self.path(replica),
                to_replica: Pipe::default(),
                to_source: Pipe::default(),
                source: SourceEnd::Handshake(Box::new(acceptor)),
                replica_end: ReplicaEnd::Handshake(Box::new(connector)),
                source_out: Vec::new(),
                replica_out,
                timers: [None, None],
                spins: [(Duration::ZERO, 0); 2],
                linked: false,
            },
        );
        self.replicas[replica - 1].conn = Some(id);
        self.stats.connections += 1;
        self.note("connect", replica as u64, id);
        self.send(id, Side::Replica);
        self.arm(id, Side::Source);
        self.arm(id, Side::Replica);
    }

    fn backoff(&mut self, replica: usize) {
        let node = &mut self.replicas[replica - 1];
        let wait = node.backoff;
        node.backoff = (node.backoff * 2).min(BACKOFF_MAX);
        self.schedule(wait, Event::Connect { replica });
    }

    /// Tears a connection down at both ends; the replica reconnects after its backoff.
    fn close(&mut self, id: u64, reason: &str) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.stats.links_closed += 1;
        self.note("close", conn.replica as u64, id);
        if let Some(lines) = &mut self.lines {
            lines.push(format!("             link {id} closed: {reason}"));
        }
        let replica = conn.replica;
        drop(conn);
        let node = &mut self.replicas[replica - 1];
        node.conn = None;
        if node.up {
            self.backoff(replica);
        }
    }

    /// Hands `side`'s outgoing bytes to its pipe, if the pipe is free.
    fn send(&mut self, id: u64, side: Side) {
        let now = self.now;
        let started = self.instant();
        let cuts = self.cuts();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let path = conn.path;
        let out = std::mem::take(match side {
            Side::Source => &mut conn.source_out,
            Side::Replica => &mut conn.replica_out,
        });
        if out.is_empty() {
            return;
        }
        let pipe = conn.pipe_from(side);
        if pipe.busy() {
            debug_assert!(false, "send while the pipe is busy");
            return;
        }
        match &mut conn.source {
            SourceEnd::Shipping(shipping) if side == Side::Source => {
                shipping.link.write_started(started)
            }
            _ => {}
        }
        if let (Side::Replica, ReplicaEnd::Linked(following)) = (side, &mut conn.replica_end) {
            following.link.write_started(started);
        }
        let sent = conn.pipe_from(side).write(now, path, out, &cuts);
        self.sent(id, side, sent);
    }

    fn sent(&mut self, id: u64, from: Side, sent: Option<Sent>) {
        let Some(sent) = sent else {
            self.note("write blocked", id, 0);
            return self.arm(id, from);
        };
        let to = match from {
            Side::Source => Side::Replica,
            Side::Replica => Side::Source,
        };
        for at in sent.arrivals {
            self.schedule_at(at, Event::Deliver { conn: id, to });
        }
        self.schedule_at(sent.done_at, Event::WriteDone { conn: id, from });
        self.arm(id, from);
    }

    fn write_done(&mut self, id: u64, from: Side) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.pipe_from(from).write_done();
        match (from, &mut conn.source, &mut conn.replica_end) {
            (Side::Source, SourceEnd::Shipping(shipping), _) => shipping.link.write_finished(),
            (Side::Replica, _, ReplicaEnd::Linked(following)) => following.link.write_finished(),
            _ => {}
        }
        self.send(id, from);
        match from {
            Side::Source => self.pump(id),
            Side::Replica => self.transmit(id),
        }
        self.arm(id, from);
    }

    fn deliver(&mut self, id: u64, to: Side) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let heal = self.partitioned[conn.replica];
        if heal > self.now {
            return self.schedule_at(heal, Event::Deliver { conn: id, to });
        }
        let pipe = match to {
            Side::Source => &mut conn.to_source,
            Side::Replica => &mut conn.to_replica,
        };
        if pipe.deliver(self.now) == 0 {
            return;
        }
        // Bytes moved: the reader hears life, the writer's write is making progress.
        let now = self.base + self.now;
        match (&mut conn.source, &mut conn.replica_end, to) {
            (SourceEnd::Shipping(shipping), _, Side::Source) => shipping.link.bytes_received(now),
            (SourceEnd::Shipping(shipping), _, Side::Replica) => shipping.link.bytes_sent(now),
            _ => {}
        }
        if let ReplicaEnd::Linked(following) = &mut conn.replica_end {
            match to {
                Side::Replica => following.link.bytes_received(now),
                Side::Source => following.link.bytes_sent(now),
            }
        }
        self.read(id, to);
    }

    /// `side` read what arrived: frames through its machines; then the peer's blocked write may
    /// fit.
    fn read(&mut self, id: u64, side: Side) {
        match side {
            Side::Source => self.read_at_source(id),
            Side::Replica => self.read_at_replica(id),
        }
        let cuts = self.cuts();
        let now = self.now;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let path = conn.path;
        let (peer, pipe) = match side {
            Side::Source => (Side::Replica, &mut conn.to_source),
            Side::Replica => (Side::Source, &mut conn.to_replica),
        };
        if let Some(sent) = pipe.unblock(now, path, &cuts) {
            self.note("write unblocked", id, 0);
            self.sent(id, peer, Some(sent));
        }
    }

    // ---------------------------------------------------------------- the source end

    fn read_at_source(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let unread = std::mem::take(&mut conn.to_source.unread);
        let mut consumed = 0;
        let mut failure = None;
        while failure.is_none() {
            let (frame, len) = match decode(&unread[consumed..]) {
                Ok(Decoded::Frame { frame, len }) => (frame, len),
                Ok(Decoded::Incomplete { .. }) => break,
                Err(error) => {
                    failure = Some(format!("frame from the replica does not decode: {error}"));
                    self.violation(format!("link {id}: frame does not decode: {error}"));
                    break;
                }
            };
            consumed += len;
            failure = self.source_frame(id, frame).err();
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.to_source.unread = unread[consumed..].to_vec();
        }
        match failure {
            Some(reason) => self.close(id, &reason),
            None => {
                self.send(id, Side::Source);
                self.pump(id);
                self.arm(id, Side::Source);
            }
        }
    }

    fn source_frame(&mut self, id: u64, frame: Frame<'_>) -> Result<(), String> {
        let now = self.instant();
        let conn = self.conns.get_mut(&id).ok_or("closed")?;
        match &mut conn.source {
            SourceEnd::Handshake(handshake) => {
                let established = handshake
                    .on_frame(&frame, &mut conn.source_out)
                    .map_err(|error| error.to_string())?;
                if established.is_some() {
                    conn.source = SourceEnd::AwaitResume { since: self.now };
                }
                Ok(())
            }
            SourceEnd::AwaitResume { .. } => {
                let Frame::Resume(resume) = frame else {
                    return Err(format!("{} before RESUME", frame.kind()));
                };
                self.admit(id, resume)
            }
            SourceEnd::Shipping(shipping) => {
                let acked = shipping
                    .link
                    .handle_frame(now, &frame)
                    .map_err(|error| error.to_string())?;
                if let Some((received, durable)) = acked {
                    shipping.acks.ack(received, durable);
                    self.note("ack", id, received);
                    self.release_commits();
                }
                Ok(())
            }
        }
    }

    fn admit(&mut self, id: u64, resume: Resume) -> Result<(), String> {
        let Some(db) = &self.origin.db else {
            return Err("origin is down".into());
        };
        let served = Served {
            origin: ORIGIN,
            committed_lsn: db.log.committed_lsn(),
        };
        let admitted = admit(Some(served), resume.origin, resume.from_lsn)?;
        let received = if admitted.from_lsn == BOOTSTRAP {
            0
        } else {
            admitted.from_lsn
        };
        let conn = self.conns.get_mut(&id).ok_or("closed")?;
        let name = format!("replica-{}", conn.replica);
        let slots = db.log.slots();
        conn.source = SourceEnd::Shipping(Box::new(Shipping {
            link: SourceLink::new(
                self.base + self.now,
                DATABASE,
                received,
                slots,
                self.scenario.heartbeat,
                self.scenario.link_timeout,
            ),
            shipper: Shipper::new(DATABASE, ORIGIN, admitted.from_lsn, slots),
            cursor: None,
            acks: db.replication.attach(&name, received),
            snapshot: None,
        }));
        if admitted.reseeded {
            self.stats.reseeds += 1;
        }
        self.note("admitted", id, admitted.from_lsn);
        self.release_commits();
        Ok(())
    }

    fn pump_all_sources(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.pump(id);
        }
    }

    /// The shipper's loop, one write at a time: what goes next is the `Shipper`'s decision.
    fn pump(&mut self, id: u64) {
        loop {
            match self.ship_once(id) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(reason) => return self.close(id, &reason),
            }
        }
        let queued = self.conns.get(&id).map_or(0, |conn| conn.source_out.len());
        if queued > 0 {
            self.note("ship", id, queued as u64);
        }
        self.send(id, Side::Source);
        self.arm(id, Side::Source);
    }

    /// Puts the next batch in the source's outbox, if the pipe is free; `Ok(true)` to go on.
    fn ship_once(&mut self, id: u64) -> Result<bool, String> {
        let Some(db) = &self.origin.db else {
            return Ok(false);
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return Ok(false);
        };
        if conn.to_replica.busy() || !conn.source_out.is_empty() {
            return Ok(false);
        }
        let SourceEnd::Shipping(shipping) = &mut conn.source else {
            return Ok(false);
        };
        let epoch = db.log.epoch();
        match shipping.shipper.feed() {
            Feed::Snapshot => {
                if shipping.snapshot.is_none() {
                    let snapshot = self.origin.store.snapshot();
                    let lsn = self.origin.store.resume_lsn();
                    let mut chunks = VecDeque::new();
                    let pieces: Vec<&[u8]> = snapshot.chunks(SNAPSHOT_CHUNK).collect();
                    for (index, data) in pieces.iter().enumerate() {
                        let mut frame = Vec::new();
                        encode(
                            &Frame::Snapshot(SnapshotChunk {
                                database: DATABASE,
                                origin: ORIGIN,
                                snapshot_lsn: lsn,
                                offset: (index * SNAPSHOT_CHUNK) as u64,
                                last: index + 1 == pieces.len(),
                                data,
                            }),
                            &mut frame,
                        );
                        chunks.push_back(frame);
                    }
                    shipping.snapshot = Some((lsn, chunks));
                    self.stats.snapshots += 1;
                }
                let Some((lsn, chunks)) = &mut shipping.snapshot else {
                    return Ok(false);
                };
                let lsn = *lsn;
                match chunks.pop_front() {
                    Some(chunk) => conn.source_out = chunk,
                    None => {
                        shipping.snapshot = None;
                        shipping.shipper.snapshot_sent(lsn);
                        shipping.link.shipped(lsn);
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Feed::Binlog { from_lsn } => {
                let history = history(&self.origin.binlog, from_lsn, &mut conn.source_out);
                let pages = std::mem::take(&mut conn.source_out);
                let shipped =
                    shipping
                        .shipper
                        .ship_history(epoch, history, &pages, &mut conn.source_out);
                if let Some(lsn) = shipped {
                    shipping.link.shipped(lsn);
                    self.stats.binlog_batches += 1;
                }
                Ok(shipped.is_none())
            }
            Feed::Ring { from_lsn } => {
                if shipping.cursor.is_none() {
                    match db.log.cursor(from_lsn) {
                        Ok(cursor) => {
                            shipping.cursor = Some(cursor);
                            shipping.link.set_holds_ring(true);
                        }
                        Err(pagemesh_logpage::Error::BelowHorizon { .. }) => {
                            shipping.shipper.ring_below_horizon();
                            return Ok(true);
                        }
                        Err(error) => return Err(error.to_string()),
                    }
                }
                let Some(cursor) = &mut shipping.cursor else {
                    return Ok(false);
                };
                let batch = shipping
                    .shipper
                    .ship_ring(cursor, epoch, &mut conn.source_out)
                    .map_err(|error| error.to_string())?;
                let Some(batch) = batch else {
                    return Ok(false);
                };
                shipping.link.shipped(batch.shipped_lsn);
                if batch.leave_ring {
                    shipping.cursor = None;
                    shipping.link.set_holds_ring(false);
                    self.stats.ring_to_binlog += 1;
                }
                Ok(false)
            }
        }
    }

    // ---------------------------------------------------------------- the replica end

    fn read_at_replica(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let replica = conn.replica;
        if let ReplicaEnd::Linked(following) = &mut conn.replica_end {
            if let Some(pages) = following.stalled.take() {
                match self.ingest(id, replica, &pages) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(reason) => return self.close(id, &reason),
                }
            }
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let unread = std::mem::take(&mut conn.to_replica.unread);
        let mut consumed = 0;
        let mut failure = None;
        let mut stalled = false;
        while failure.is_none() && !stalled {
            let (frame, len) = match decode(&unread[consumed..]) {
                Ok(Decoded::Frame { frame, len }) => (frame, len),
                Ok(Decoded::Incomplete { .. }) => break,
                Err(error) => {
                    failure = Some(format!("frame from the source does not decode: {error}"));
                    self.violation(format!("link {id}: frame does not decode: {error}"));
                    break;
                }
            };
            consumed += len;
            match self.replica_frame(id, replica, frame) {
                Ok(true) => {}
                Ok(false) => stalled = true,
                Err(reason) => failure = Some(reason),
            }
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.to_replica.unread = unread[consumed..].to_vec();
        }
        match failure {
            Some(reason) => self.close(id, &reason),
            None => {
                self.transmit(id);
                self.arm(id, Side::Replica);
            }
        }
    }

    /// One frame at the replica; `Ok(false)` when its pages wait for ring space.
    fn replica_frame(&mut self, id: u64, replica: usize, frame: Frame<'_>) -> Result<bool, String> {
        let now = self.instant();
        let conn = self.conns.get_mut(&id).ok_or("closed")?;
        let following = match &mut conn.replica_end {
            ReplicaEnd::Handshake(handshake) => {
                let established = handshake
                    .on_frame(&frame, &mut conn.replica_out)
                    .map_err(|error| error.to_string())?;
                if established.is_some() {
                    let node = &self.replicas[replica - 1];
                    let resume = match &node.db {
                        Some(db) => Resume {
                            database: DATABASE,
                            origin: ORIGIN,
                            epoch: db.log.epoch(),
                            from_lsn: db.log.committed_lsn(),
                        },
                        None => Resume {
                            database: DATABASE,
                            origin: Uuid::nil(),
                            epoch: 0,
                            from_lsn: BOOTSTRAP,
                        },
                    };
                    conn.linked = true;
                    self.replicas[replica - 1].backoff = BACKOFF_MIN;
                    conn.replica_end = ReplicaEnd::Linked(Box::new(Following {
                        link: ReplicaLink::new(
                            now,
                            resume,
                            self.scenario.heartbeat,
                            self.scenario.link_timeout,
                        ),
                        stalled: None,
                        restore: None,
                        waiting_for_ring: false,
                    }));
                }
                return Ok(true);
            }
            ReplicaEnd::Linked(following) => following,
        };
        match following
            .link
            .handle_frame(now, frame)
            .map_err(|error| error.to_string())?
        {
            Received::Nothing => Ok(true),
            Received::Pages(pages) => {
                if self.replicas[replica - 1].db.is_none() {
                    return Err("pages before any snapshot".into());
                }
                self.ingest(id, replica, pages)
            }
            Received::SnapshotChunk { data, last } => {
                let restore = following.restore.get_or_insert_with(Vec::new);
                restore.extend_from_slice(data);
                if last {
                    let bytes = following.restore.take().unwrap_or_default();
                    self.restore(id, replica, &bytes)?;
                }
                Ok(true)
            }
        }
    }

    /// Ingests pages into the replica's ring; `Ok(false)` (the rest kept) when it is full.
    fn ingest(&mut self, id: u64, replica: usize, pages: &[u8]) -> Result<bool, String> {
        let now = self.instant();
        let node = &mut self.replicas[replica - 1];
        let (Some(db), Some((_, store))) = (&node.db, &node.generation) else {
            return Err("no replica to ingest into".into());
        };
        let before = db.log.committed_lsn();
        let ingested = match db.log.ingest(pages) {
            Ok(ingested) => ingested,
            Err(error) => {
                let error = format!("replica {replica} refused pages from its source: {error}");
                self.violation(error.clone());
                return Err(error);
            }
        };
        let held = db.log.committed_lsn();
        let applied = store.next_lsn();
        node.held = held;
        for page in pages[..ingested.pages * PAGE_SIZE].chunks_exact(PAGE_SIZE) {
            let Ok(page) = validate(page) else { continue };
            if page.lsn() >= before
                && self.registry.get(&page.lsn()) != Some(&hash(page.compact_bytes()))
            {
                let lsn = page.lsn();
                self.violation(format!(
                    "replica {replica} received page {lsn}, which is not the page the origin wrote there"
                ));
                return Err("foreign page".into());
            }
        }
        self.stats.pages_ingested += held - before;
        self.note("ingest", replica as u64, held);
        let rest = &pages[ingested.pages * PAGE_SIZE..];
        let conn = self.conns.get_mut(&id).ok_or("closed")?;
        let ReplicaEnd::Linked(following) = &mut conn.replica_end else {
            return Err("not linked".into());
        };
        if held > before {
            following.link.ingested(held, applied.min(held));
        }
        if rest.is_empty() {
            if following.waiting_for_ring {
                following.waiting_for_ring = false;
                following.link.set_waiting_for_ring(now, false);
            }
            return Ok(true);
        }
        if !following.waiting_for_ring {
            self.stats.ingest_stalls += 1;
            following.waiting_for_ring = true;
            following.link.set_waiting_for_ring(now, true);
        }
        following.stalled = Some(rest.to_vec());
        Ok(false)
    }

    /// A whole snapshot arrived: a new generation replaces the replica's database.
    fn restore(&mut self, id: u64, replica: usize, bytes: &[u8]) -> Result<(), String> {
        let store = Store::restore(bytes)?;
        let lsn = store.next_lsn();
        let node = &mut self.replicas[replica - 1];
        node.generations += 1;
        let dir = self
            ._dir
            .path()
            .join(format!("{}-gen{}", node.name, node.generations));
        std::fs::create_dir_all(&dir).map_err(|error| error.to_string())?;
        node.db = None;
        let options = LogOptions::new()
            .slots(self.scenario.ring_slots)
            .follower(true)
            .next_lsn_min(lsn);
        let log = Log::open(&dir, options).map_err(|error| error.to_string())?;
        let applier = log.cursor(lsn).map_err(|error| error.to_string())?;
        node.db = Some(ReplicaDb { log, applier });
        node.generation = Some((dir, store));
        node.held = lsn;
        self.stats.restores += 1;
        self.note("restored", replica as u64, lsn);
        let conn = self.conns.get_mut(&id).ok_or("closed")?;
        if let ReplicaEnd::Linked(following) = &mut conn.replica_end {
            following.link.restored(lsn, lsn);
        }
        Ok(())
    }

    /// The replica end's writer: what its machine has due, once the pipe is free.
    fn transmit(&mut self, id: u64) {
        let now = self.instant();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.to_source.busy() || !conn.replica_out.is_empty() {
            return self.send(id, Side::Replica);
        }
        let ReplicaEnd::Linked(following) = &mut conn.replica_end else {
            return;
        };
        if !following.link.poll_transmit(now, &mut conn.replica_out) {
            return;
        }
        // No ack may cover a page the replica does not hold.
        let held = self.replicas[conn.replica - 1].held;
        let mut rest = &conn.replica_out[..];
        while let Ok(Decoded::Frame { frame, len }) = decode(rest) {
            if let Frame::Ack(ack) = frame {
                if ack.received_lsn > held {
                    let replica = conn.replica;
                    return self.violation(format!(
                        "replica {replica} acked pages below {} holding only those below {held}",
                        ack.received_lsn
                    ));
                }
            }
            rest = &rest[len..];
        }
        self.send(id, Side::Replica);
    }

    // ---------------------------------------------------------------- timers

    /// (Re)sets `side`'s timer to what its machine says.
    fn arm(&mut self, id: u64, side: Side) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let busy = conn.pipe_from(side).busy();
        let deadline = match side {
            Side::Source => match &conn.source {
                SourceEnd::Handshake(handshake) => handshake.deadline(),
                SourceEnd::AwaitResume { since } => self.base + *since + self.scenario.link_timeout,
                SourceEnd::Shipping(shipping) if busy => shipping.link.timeout_deadline(),
                SourceEnd::Shipping(shipping) => shipping
                    .link
                    .timeout_deadline()
                    .min(shipping.link.heartbeat_deadline()),
            },
            Side::Replica => match &conn.replica_end {
                ReplicaEnd::Handshake(handshake) => handshake.deadline(),
                ReplicaEnd::Linked(following) if busy => following.link.timeout_deadline(),
                ReplicaEnd::Linked(following) => following.link.poll_timeout(),
            },
        };
        let at = deadline.saturating_duration_since(self.base);
        if conn.timers[slot(side)] == Some(at) {
            return;
        }
        conn.timers[slot(side)] = Some(at);
        self.schedule_at(at, Event::Timer { conn: id, side, at });
    }

    fn timer(&mut self, id: u64, side: Side, at: Duration) {
        let now = self.instant();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.timers[slot(side)] != Some(at) {
            return; // superseded
        }
        conn.timers[slot(side)] = None;
        let spins = &mut conn.spins[slot(side)];
        if spins.0 == self.now {
            spins.1 += 1;
            if spins.1 > SPINS_MAX {
                return self.violation(format!(
                    "link {id}'s {side:?} timer fires again and again at one instant"
                ));
            }
        } else {
            *spins = (self.now, 0);
        }
        let committed = self
            .origin
            .db
            .as_ref()
            .map_or(0, |db| db.log.committed_lsn());
        let busy = conn.pipe_from(side).busy();
        let verdict: Result<(), String> = match side {
            Side::Source => match &mut conn.source {
                SourceEnd::Handshake(handshake) => {
                    handshake.check_deadline(now).map_err(|e| e.to_string())
                }
                SourceEnd::AwaitResume { since } => {
                    if self.now >= *since + self.scenario.link_timeout {
                        Err("no RESUME".into())
                    } else {
                        Ok(())
                    }
                }
                SourceEnd::Shipping(shipping) => shipping
                    .link
                    .handle_timeout(now, committed)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        if busy || !conn.source_out.is_empty() {
                            return Ok(());
                        }
                        shipping
                            .link
                            .poll_heartbeat(now, &mut conn.source_out)
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }),
            },
            Side::Replica => match &mut conn.replica_end {
                ReplicaEnd::Handshake(handshake) => {
                    handshake.check_deadline(now).map_err(|e| e.to_string())
                }
                ReplicaEnd::Linked(following) => following
                    .link
                    .handle_timeout(now)
                    .map_err(|e| e.to_string()),
            },
        };
        if let Err(reason) = verdict {
            if reason.contains("blocked") || reason.contains("ring") {
                self.stats.write_timeouts += 1;
            }
            return self.close(id, &format!("{side:?} end: {reason}"));
        }
        match side {
            Side::Source => self.send(id, Side::Source),
            Side::Replica => self.transmit(id),
        }
        self.arm(id, side);
    }

    // ---------------------------------------------------------------- faults

    fn fault(&mut self) {
        if !self.active {
            return;
        }
        if let Some(every) = self.scenario.fault_every {
            let next = self.jitter(every);
            self.schedule(next, Event::Fault);
        }
        let replica = self.rng.random_range(1..=self.scenario.replicas);
        match self.rng.random_range(0..100) {
            0..30 => {
                let ids: Vec<u64> = self.conns.keys().copied().collect();
                if !ids.is_empty() {
                    let id = ids[self.rng.random_range(0..ids.len())];
                    self.stats.resets += 1;
                    self.close(id, "connection reset");
                }
            }
            30..55 => {
                let length = Duration::from_millis(self.rng.random_range(20..1_500));
                self.partitioned[replica] = self.partitioned[replica].max(self.now + length);
                self.stats.partitions += 1;
                self.note("partition", replica as u64, length.as_millis() as u64);
                self.schedule(length, Event::Heal { replica });
            }
            55..80 => {
                let down = Duration::from_millis(self.rng.random_range(5..1_000));
                self.crash(replica, down);
            }
            80..90 if self.scenario.origin_crashes => {
                let down = Duration::from_millis(self.rng.random_range(5..500));
                self.crash(0, down);
            }
            _ => {
                let length = Duration::from_millis(self.rng.random_range(50..1_000));
                let node = self.rng.random_range(0..=self.scenario.replicas);
                self.stats.pauses += 1;
                self.note("pause applier", node as u64, length.as_millis() as u64);
                if node == 0 {
                    self.origin.paused_until = self.now + length;
                } else {
                    self.replicas[node - 1].paused_until = self.now + length;
                }
            }
        }
    }

    /// A process crash of `node` (0: the origin): its links drop, its memory is lost, its files
    /// (ring pages, store) stay.
    fn crash(&mut self, node: usize, down: Duration) {
        self.stats.crashes += 1;
        self.note("crash", node as u64, down.as_millis() as u64);
        if node == 0 {
            if self.origin.db.is_none() {
                return;
            }
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            for id in ids {
                self.close(id, "origin crashed");
            }
            self.origin.db = None;
            self.origin.store.crash();
            for client in &mut self.origin.clients {
                client.waiting = None;
            }
            self.origin.life += 1;
            let life = self.origin.life;
            self.schedule(down, Event::Restart { node, life });
            return;
        }
        let replica = &mut self.replicas[node - 1];
        if !replica.up {
            return;
        }
        replica.up = false;
        replica.life += 1;
        let life = replica.life;
        if let Some(id) = replica.conn {
            self.close(id, "replica crashed");
        }
        let replica = &mut self.replicas[node - 1];
        replica.db = None;
        if let Some((_, store)) = &mut replica.generation {
            store.crash();
        }
        self.schedule(down, Event::Restart { node, life });
    }

    fn restart(&mut self, node: usize, life: u64) {
        if node == 0 {
            if self.origin.life != life || self.origin.db.is_some() {
                return;
            }
            self.start_origin();
            // Clients waiting on the dead process are gone; their successors start over.
            for client in 0..self.scenario.clients {
                self.schedule(Duration::ZERO, Event::Commit { client });
            }
            return;
        }
        let replica = &mut self.replicas[node - 1];
        if replica.life != life || replica.up {
            return;
        }
        replica.up = true;
        replica.backoff = BACKOFF_MIN;
        let held_before = replica.held;
        if let Some((dir, store)) = &replica.generation {
            let options = LogOptions::new()
                .slots(self.scenario.ring_slots)
                .follower(true)
                .next_lsn_min(store.next_lsn());
            let reopened = Log::open(dir, options).and_then(|log| {
                let applier = log.cursor(store.resume_lsn())?;
                Ok(ReplicaDb { log, applier })
            });
            match reopened {
                Ok(db) => {
                    replica.held = db.log.committed_lsn();
                    replica.db = Some(db);
                }
                Err(error) => {
                    return self.violation(format!("replica {node} does not reopen: {error}"));
                }
            }
        }
        let held = self.replicas[node - 1].held;
        self.note("replica up", node as u64, held);
        if held < held_before {
            return self.violation(format!(
                "replica {node} held pages below {held_before} before its crash, only below {held} after"
            ));
        }
        self.schedule(Duration::ZERO, Event::Connect { replica: node });
    }

    // ---------------------------------------------------------------- the end

    fn quiesce(&mut self) {
        self.active = false;
        self.note("quiesce", 0, 0);
        for replica in 1..=self.scenario.replicas {
            self.partitioned[replica] = self.now;
        }
        self.origin.paused_until = self.now;
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            // Held bytes flow again.
            self.schedule(
                Duration::ZERO,
                Event::Deliver {
                    conn: id,
                    to: Side::Source,
                },
            );
            self.schedule(
                Duration::ZERO,
                Event::Deliver {
                    conn: id,
                    to: Side::Replica,
                },
            );
        }
        if self.origin.db.is_none() {
            let life = self.origin.life;
            self.schedule(Duration::ZERO, Event::Restart { node: 0, life });
        }
        for node in 1..=self.scenario.replicas {
            let replica = &mut self.replicas[node - 1];
            replica.paused_until = self.now;
            if !replica.up {
                let life = replica.life;
                self.schedule(Duration::ZERO, Event::Restart { node, life });
            }
        }
        self.schedule(CHECK_EVERY, Event::Check);
    }

    fn check_convergence(&mut self) {
        let end = self.origin.db.as_ref().map(|db| db.log.committed_lsn());
        let converged = end.is_some_and(|end| {
            self.origin.store.next_lsn() == end
                && self.replicas.iter().all(|replica| {
                    replica.generation.as_ref().is_some_and(|(_, store)| {
                        store.next_lsn() == end && store.map() == self.origin.store.map()
                    })
                })
        });
        if converged {
            self.note("converged", 0, 0);
            self.done = true;
            return;
        }
        // Slow appliers may take long to catch up; what must not happen is no progress at all.
        let progress: u64 = self.origin.store.next_lsn()
            + self
                .replicas
                .iter()
                .map(|replica| {
                    replica.held
                        + replica
                            .generation
                            .as_ref()
                            .map_or(0, |(_, store)| store.next_lsn())
                })
                .sum::<u64>();
        if progress != self.progress.0 {
            self.progress = (progress, self.now);
        }
        let stuck = self.now - self.progress.1 >= self.scenario.settle;
        if stuck || self.now >= self.scenario.active + SETTLE_MAX {
            let end = end.unwrap_or(0);
            let states: Vec<String> = self
                .replicas
                .iter()
                .map(|replica| match &replica.generation {
                    Some((_, store)) => format!(
                        "{} applied below {} held below {} ({})",
                        replica.name,
                        store.next_lsn(),
                        replica.held,
                        if store.next_lsn() == end && store.map() != self.origin.store.map() {
                            "diverged"
                        } else {
                            "behind"
                        }
                    ),
                    None => format!("{} has no database", replica.name),
                })
                .collect();
            return self.violation(format!(
                "no convergence: {} after the faults stopped; origin committed below {end}, applied below {}; {}",
                if stuck { "no progress for the settle time" } else { "still behind long" },
                self.origin.store.next_lsn(),
                states.join("; ")
            ));
        }
        self.schedule(CHECK_EVERY, Event::Check);
    }
}

/// The binlog's pages from `from_lsn` on, appended to `out` (at most a batch).
fn history(binlog: &VecDeque<(u64, Box<[u8]>)>, from_lsn: u64, out: &mut Vec<u8>) -> History {
    let Some(&(oldest, _)) = binlog.front() else {
        return History::Pages(0);
    };
    if from_lsn < oldest {
        return History::Purged { oldest };
    }
    let start = (from_lsn - oldest) as usize;
    let mut count = 0;
    for (_, page) in binlog.iter().skip(start).take(HISTORY_BATCH_PAGES) {
        out.extend_from_slice(page);
        count += 1;
    }
    History::Pages(count)
}

fn hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}
