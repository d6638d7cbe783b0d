//! One simulated run: the origin, its replicas, the connections between them and the event
//! queue, advanced one event at a time on a virtual clock.
//!
//! Nodes are real: each holds real `pagemesh-logpage` logs in files (an origin log; a follower
//! log per replica generation), a model [`Store`] applying records in log order with the binlog
//! its applier keeps, and, per link, the real I/O-free machines of `pagemesh-net` (the
//! handshake, `route::admit`, `SourceLink`, `Shipper`, `ReplicaLink`) and `pagemesh-core`'s
//! `Replication` counting acks and receipts for `Replicated(n)` commits. What the drivers of the
//! real node do (move bytes, read the binlog, ingest, restore, keep timers) this module does in
//! their place, deterministically.
//!
//! # Relays
//!
//! Any replica that holds a copy serves it onward, as `net/src/service` does ("Relaying"):
//!
//! - Each replica follows one holder at a time from the list its scenario drew (the origin or
//!   earlier replicas, nearest first), through the real `route::Upstreams` with this module's
//!   backoff: a failed or refused attempt tries the next holder at once, a whole round that
//!   failed backs off, a link that was up and ended starts a new round from the nearest other
//!   holder.
//! - The source end of a link is the origin or a relay. A relay admits through `route::admit`
//!   with `relay: true` (its follower log) at its log's committed LSN, so it refuses a replica
//!   ahead of it; it ships its ring, its own binlog (what its applier applied, trimmed by the
//!   same retention) and snapshots of its store. Re-seeded into a new generation, it closes the
//!   links it serves, which come back and are admitted against the new copy (`Runtime::serve`).
//! - Receipts go hop by hop: a relay books the acks and RECEIPTS of the links it serves in its
//!   `route::Receipts` book and reports the news upstream in RECEIPTS frames through
//!   its own `ReplicaLink` (everything again, `report_all`, on each new upstream), only to a
//!   source whose handshake version has them (`RECEIPTS_SINCE_VERSION`); the origin hands them
//!   to `Replication` through `ReplicaLink::report`, as the service's `Receipted` does.
//!
//! # What the checker allows a restore to take back
//!
//! A crash never takes back pages a replica held. A snapshot restore may land below what the
//! replica held in one case only: the origin admitted it with `reseeded` (it claimed pages
//! beyond the origin's log). Every other snapshot (a bootstrap, or a binlog purged below the
//! replica, at the origin or at a relay) starts at the source store's resume page, at or above
//! the oldest page its binlog still holds, so above the replica; and a relay never re-seeds a
//! replica ahead of it (checked at admission and at the restore).
//!
//! This file holds the world's state, the event loop, the faults and the end of a run; the
//! origin's commits and every applier are in `world/origin.rs`, connections, holders and link
//! timers in `world/links.rs`, and each end of a link in `world/source_end.rs` and
//! `world/replica_end.rs`.
//!
//! Everything random comes from one `ChaCha8Rng` seeded with the scenario's seed, and events at
//! the same instant run in the order they were scheduled, so a seed replays the same run.
//!
//! Departures from the real node, each deliberate: a closed connection is torn down at both ends
//! at once (no FIN in flight), and a refusal closes it without a REFUSE frame (the replica sees a
//! link that never served, as it would); the admission of `service::admission` is not simulated
//! (it has its own tests); crashes are process crashes (the ring's mapped pages survive, the
//! store and binlog keep what was applied, the receipt book is lost); power loss and epochs
//! belong to the durable-commit work. A replica's link has its path (latency, bandwidth)
//! whichever holder it follows; a partition cuts a replica off from every peer; the topology is
//! fixed for a run (holders are earlier nodes, so it has no cycle), and the origin keeps no
//! receipt book of its own (it has no upstream).

use std::collections::{BTreeMap, VecDeque};
use std::hash::{DefaultHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagemesh_core::{ReplicaLink as AckLink, Replication};
use pagemesh_logpage::page::{validate, PAGE_SIZE};
use pagemesh_logpage::{Cursor, Log, LogOptions};
use pagemesh_net::proto::frame::{
    decode, encode, Decoded, Frame, Resume, SnapshotChunk, RECEIPTS_SINCE_VERSION,
};
use pagemesh_net::proto::handshake::{Handshake, HandshakeConfig};
use pagemesh_net::route::Receipts;
use pagemesh_net::route::{admit, Feed, History, Served, Upstreams, BOOTSTRAP};
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

mod links;
mod origin;
mod replica_end;
mod source_end;

const DATABASE: Uuid = Uuid::from_u128(0x7061_6765_6d65_7368_0000_0000_0000_0d0b);
const ORIGIN: Uuid = Uuid::from_u128(0x7061_6765_6d65_7368_0000_0000_0000_0001);
/// Bytes per SNAPSHOT chunk (small, so snapshots take several writes).
const SNAPSHOT_CHUNK: usize = 16 << 10;
/// First and longest reconnect backoff (the service's are 50 ms and a configured maximum).
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(400);
/// How often a replica with several holders hears each other holder's HAVE (the lazy links'
/// heartbeat), and how long an offered page may go undelivered before it grafts (the service's
/// `graft_timeout`, scaled to the simulated links).
const WATCH_PERIOD: Duration = Duration::from_millis(50);
const GRAFT_TIMEOUT: Duration = Duration::from_millis(300);
/// How often convergence is checked once faults stop.
const CHECK_EVERY: Duration = Duration::from_millis(20);
/// The longest a run may take to converge after the faults stop, progressing or not.
const SETTLE_MAX: Duration = Duration::from_secs(600);
/// Timer events one side may take at one instant before it counts as spinning.
const SPINS_MAX: u32 = 64;
/// Nodes a replica's receipt book holds (the service's bound is larger; a run has at most 16).
const RECEIPT_NODES_MAX: usize = 64;

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
    /// A replica (1-based) connects to its current holder, if this is its latest attempt.
    Connect { replica: usize, dial: u64 },
    /// A replica hears HAVE from each holder it does not follow, and grafts one if due.
    Watch { replica: usize },
    /// Something fails.
    Fault,
    /// A node comes back (0: the origin), if this is its restart of generation `life`.
    Restart { node: usize, life: u64 },
    /// A partition that cut `replica` off from every peer heals.
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

/// A node's binlog: the pages its applier applied, oldest first, trimmed by retention. Durable.
#[derive(Debug, Default)]
struct Binlog {
    pages: VecDeque<(u64, Box<[u8]>)>,
    /// Every page below this was applied (and is here, unless trimmed or before `start`).
    next: u64,
}

impl Binlog {
    /// An empty binlog of a copy that begins at `lsn` (a restored snapshot's LSN).
    fn starting_at(lsn: u64) -> Self {
        Self {
            pages: VecDeque::new(),
            next: lsn,
        }
    }

    /// The oldest page it can serve.
    fn start(&self) -> u64 {
        self.pages.front().map_or(self.next, |(lsn, _)| *lsn)
    }

    /// Keeps `page` if it is the next one (pages re-read after a crash are already here).
    fn append(&mut self, page: pagemesh_logpage::page::PageRef<'_>) {
        if page.lsn() != self.next {
            return;
        }
        let mut full = Vec::with_capacity(PAGE_SIZE);
        page.extend_full(&mut full);
        self.pages.push_back((page.lsn(), full.into()));
        self.next = page.lsn() + 1;
    }

    /// Trims the pages more than `retention` below `applied`.
    fn trim(&mut self, retention: Option<u64>, applied: u64) {
        let Some(retention) = retention else {
            return;
        };
        let keep_from = applied.saturating_sub(retention);
        while self.pages.front().is_some_and(|(lsn, _)| *lsn < keep_from) {
            self.pages.pop_front();
        }
    }

    /// The pages from `from_lsn` on, appended to `out` (at most a batch).
    fn history(&self, from_lsn: u64, out: &mut Vec<u8>) -> History {
        let oldest = self.start();
        if from_lsn < oldest {
            return History::Purged { oldest };
        }
        let skip = (from_lsn - oldest) as usize;
        let mut count = 0;
        for (_, page) in self.pages.iter().skip(skip).take(HISTORY_BATCH_PAGES) {
            out.extend_from_slice(page);
            count += 1;
        }
        History::Pages(count)
    }
}

struct Origin {
    db: Option<OriginDb>,
    dir: PathBuf,
    /// Durable: applied state.
    store: Store,
    /// Durable: its `next` is what the log continues from.
    binlog: Binlog,
    clients: Vec<Client>,
    paused_until: Duration,
    /// Bumped by each crash, so a stale restart is ignored.
    life: u64,
}

struct ReplicaDb {
    log: Log,
    applier: Cursor,
}

/// A replica's durable copy: one generation (a snapshot restore starts the next).
struct Generation {
    dir: PathBuf,
    store: Store,
    binlog: Binlog,
}

struct ReplicaNode {
    name: String,
    uuid: Uuid,
    up: bool,
    life: u64,
    /// The database, once bootstrapped (or while it runs).
    db: Option<ReplicaDb>,
    /// Durable: its current generation.
    generation: Option<Generation>,
    generations: u32,
    /// Ground truth: every page below this is in its ring.
    held: u64,
    /// Its link to the holder it follows.
    conn: Option<u64>,
    /// The holders it may follow (node indices), and the one it follows now: the real
    /// `route::Upstreams`.
    upstreams: Upstreams<usize>,
    /// The holder (index into its `Upstreams`) its link is being closed for: a graft.
    grafting: Option<usize>,
    /// Bytes delivered from its holder since the graft clocks last restarted.
    moved: u64,
    /// Until then it is cut off from its own holders, still serving its copy: a stalled relay.
    stalled_until: Duration,
    /// Bumped by every attempt scheduled, so only the latest `Connect` runs.
    dial: u64,
    /// The receipts of the nodes it feeds, on their way upstream (in memory: a crash loses it).
    receipts: Receipts<Uuid>,
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
    /// At the origin: reports acks and receipts to its `Replication` (dropping it detaches the
    /// replica). At a relay, `None`: they go to the relay's receipt book.
    acks: Option<AckLink>,
    /// A snapshot being sent: its resume LSN and the chunks left.
    snapshot: Option<(u64, VecDeque<Vec<u8>>)>,
}

enum ReplicaEnd {
    Handshake(Box<Handshake>),
    Linked(Box<Following>),
}

struct Following {
    link: ReplicaLink,
    /// The source served this link (a frame came back after the handshake): when it ends, the
    /// replica starts a new round of its holders rather than trying the next.
    heard: bool,
    /// The source speaks RECEIPTS (`RECEIPTS_SINCE_VERSION`).
    receipts: bool,
    /// Pages offered while the ring was full: ingested once the applier frees slots.
    stalled: Option<Vec<u8>>,
    /// A snapshot arriving.
    restore: Option<Vec<u8>>,
    /// `stalled` holds pages (the machine was told).
    waiting_for_ring: bool,
}

struct Conn {
    /// The following end's node (1-based).
    replica: usize,
    /// The serving end's node: 0, the origin; else a replica relaying its copy.
    source_node: usize,
    /// The source admitted the replica by re-seeding it (it claimed pages beyond the log).
    reseeded: bool,
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
    /// Per node (0: the origin): cut off from every peer until then.
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
        let mut replicas = Vec::with_capacity(scenario.replicas);
        for r in 1..=scenario.replicas {
            let holders = scenario.upstreams.get(r - 1).cloned().unwrap_or_default();
            let holders = holders.into_iter().filter(|&h| h < r).collect();
            let upstreams = Upstreams::new(holders, BACKOFF_MIN, BACKOFF_MAX)
                .unwrap_or_else(|| Upstreams::new(vec![0], BACKOFF_MIN, BACKOFF_MAX).expect("one"))
                .with_graft_timeout(GRAFT_TIMEOUT);
            let uuid = replica_uuid(r);
            replicas.push(ReplicaNode {
                name: format!("replica-{r}"),
                uuid,
                up: true,
                life: 0,
                db: None,
                generation: None,
                generations: 0,
                held: 0,
                conn: None,
                upstreams,
                grafting: None,
                moved: 0,
                stalled_until: Duration::ZERO,
                dial: 0,
                receipts: Receipts::new(uuid, RECEIPT_NODES_MAX),
                paused_until: Duration::ZERO,
            });
        }
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
                binlog: Binlog::default(),
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
            world.redial(replica, Duration::ZERO);
            if world.replicas[replica - 1].upstreams.holders().len() > 1 {
                let at = world.jitter(WATCH_PERIOD);
                world.schedule(at, Event::Watch { replica });
            }
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
            Event::Connect { replica, dial } => self.connect(replica, dial),
            Event::Watch { replica } => self.watch(replica),
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

    // ---------------------------------------------------------------- faults

    fn fault(&mut self) {
        if !self.active {
            return;
        }
        if let Some(every) = self.scenario.fault_every {
            let next = self.jitter(every);
            self.schedule(next, Event::Fault);
        }
        // Half the node faults and resets hit a relay that serves links, if there is one: its
        // replicas must fail over to their other holder (or wait for it) and converge.
        let relays: Vec<usize> = (1..=self.scenario.replicas)
            .filter(|&node| !self.conns_served_by(node).is_empty())
            .collect();
        let replica = if !relays.is_empty() && self.rng.random_bool(0.5) {
            relays[self.rng.random_range(0..relays.len())]
        } else {
            self.rng.random_range(1..=self.scenario.replicas)
        };
        match self.rng.random_range(0..100) {
            0..30 => {
                let relayed: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, conn)| conn.source_node != 0)
                    .map(|(&id, _)| id)
                    .collect();
                let ids: Vec<u64> = if !relayed.is_empty() && self.rng.random_bool(0.5) {
                    relayed
                } else {
                    self.conns.keys().copied().collect()
                };
                if !ids.is_empty() {
                    let id = ids[self.rng.random_range(0..ids.len())];
                    if self
                        .conns
                        .get(&id)
                        .is_some_and(|conn| conn.source_node != 0)
                    {
                        self.stats.relay_faults += 1;
                    }
                    self.stats.resets += 1;
                    self.close(id, "connection reset");
                }
            }
            30..40 if !relays.is_empty() => {
                // A relay loses its own holders but keeps serving: its replicas must graft.
                let relay = relays[self.rng.random_range(0..relays.len())];
                let length = Duration::from_millis(self.rng.random_range(200..1_500));
                self.stats.relay_faults += 1;
                self.stats.stalls += 1;
                self.note("stall", relay as u64, length.as_millis() as u64);
                let node = &mut self.replicas[relay - 1];
                node.stalled_until = node.stalled_until.max(self.now + length);
                if let Some(id) = node.conn {
                    self.close(id, "its upstream is cut off (stall)");
                }
            }
            30..55 => {
                if relays.contains(&replica) {
                    self.stats.relay_faults += 1;
                }
                let length = Duration::from_millis(self.rng.random_range(20..1_500));
                self.partitioned[replica] = self.partitioned[replica].max(self.now + length);
                self.stats.partitions += 1;
                self.note("partition", replica as u64, length.as_millis() as u64);
                self.schedule(length, Event::Heal { replica });
            }
            55..80 => {
                if relays.contains(&replica) {
                    self.stats.relay_faults += 1;
                }
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
            for id in self.conns_served_by(0) {
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
        for id in self.conns_served_by(node) {
            self.close(id, "relay crashed");
        }
        let replica = &mut self.replicas[node - 1];
        replica.db = None;
        replica.receipts = Receipts::new(replica.uuid, RECEIPT_NODES_MAX);
        if let Some(generation) = &mut replica.generation {
            generation.store.crash();
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
        // A new process: it follows its holders afresh, nearest first, with no backoff.
        if let Some(fresh) = Upstreams::new(
            replica.upstreams.holders().to_vec(),
            BACKOFF_MIN,
            BACKOFF_MAX,
        ) {
            replica.upstreams = fresh.with_graft_timeout(GRAFT_TIMEOUT);
        }
        replica.grafting = None;
        let held_before = replica.held;
        if let Some(Generation { dir, store, .. }) = &replica.generation {
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
        self.redial(node, Duration::ZERO);
    }

    /// The links `node` serves (0: the origin).
    fn conns_served_by(&self, node: usize) -> Vec<u64> {
        self.conns
            .iter()
            .filter(|(_, conn)| conn.source_node == node)
            .map(|(&id, _)| id)
            .collect()
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
                    replica.generation.as_ref().is_some_and(|generation| {
                        generation.store.next_lsn() == end
                            && generation.store.map() == self.origin.store.map()
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
                            .map_or(0, |generation| generation.store.next_lsn())
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
                .map(
                    |replica| match replica.generation.as_ref().map(|g| &g.store) {
                        Some(store) => format!(
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
                    },
                )
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

/// What a node serves onward: its log, store and binlog.
struct ServedDb<'a> {
    log: &'a Log,
    store: &'a Store,
    binlog: &'a Binlog,
}

/// What `node` serves (0: the origin), if it runs and holds a copy.
fn served<'a>(
    origin: &'a Origin,
    replicas: &'a [ReplicaNode],
    node: usize,
) -> Option<ServedDb<'a>> {
    if node == 0 {
        let db = origin.db.as_ref()?;
        return Some(ServedDb {
            log: &db.log,
            store: &origin.store,
            binlog: &origin.binlog,
        });
    }
    let replica = replicas.get(node - 1)?;
    let (db, generation) = (replica.db.as_ref()?, replica.generation.as_ref()?);
    Some(ServedDb {
        log: &db.log,
        store: &generation.store,
        binlog: &generation.binlog,
    })
}

/// The uuid of replica `r` (1-based).
fn replica_uuid(r: usize) -> Uuid {
    Uuid::from_u128(0x1000 + r as u128)
}

fn hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}
