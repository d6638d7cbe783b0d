//! pagemesh's deterministic cluster simulator.
//!
//! A run is one origin and its replicas over a simulated network, every choice drawn from one
//! `u64` seed: the cluster's shape and the network's character ([`Scenario`]), the workload, and
//! the faults (connections reset, replicas partitioned from every peer and healed, nodes crashed
//! and restarted, appliers stalled; half of them aimed at relays). Replicas relay: each follows
//! one of its holders (the origin or earlier replicas, drawn from the seed: chains of 2 and 3
//! hops, and nodes with a second holder to fail over to), any replica that holds a copy serves
//! it onward, and receipts travel hop by hop in RECEIPTS frames so that `Replicated(n)` counts
//! nodes the origin has no link to. The nodes run pagemesh's real code wherever it decides
//! something: real `pagemesh-logpage` logs in real files, the I/O-free link machines of
//! `pagemesh-net` (handshake, `SourceLink`, `Shipper`, `ReplicaLink`, `route::admit`,
//! `route::Upstreams`, `route::Receipts`) and `pagemesh-core`'s `Replication` counting
//! acks and receipts; only the store is a model (a map applying records in log order, with its
//! binlog; LMDB is covered by core's own tests). See `world.rs` for what the simulator does in
//! place of the node's drivers, and where it departs from them.
//!
//! After the faults stop the network heals, every node comes back, and the run waits for every
//! copy to equal the origin's. Throughout, the checker asserts:
//!
//! - every page a replica receives or applies, from the origin or a relay, is the page the origin
//!   wrote at that LSN, and the origin never writes an LSN twice with different bytes (no LSN
//!   reused after a restart);
//! - a replica's applier sees every page in order, each once (a gap or a repeat fails the run);
//! - no ACK covers a page its sender does not hold, and no RECEIPTS entry covers a page the node
//!   it names does not hold (checked against that node's ring); RECEIPTS go only to a source
//!   whose protocol version has them;
//! - no `Replicated(n)` commit returns before n distinct replicas hold its pages;
//! - a crash never takes back pages a replica held, nor does a snapshot restore, unless the
//!   origin re-seeded the replica for claiming pages beyond its log;
//! - a relay never admits (or re-seeds) a replica that is ahead of its copy: it refuses it;
//! - no link timer fires again and again at one instant (a machine handing out a deadline it
//!   has passed would spin its driver);
//! - at quiescence every copy equals the origin, within the settle time.
//!
//! The same seed gives the same run: [`Outcome::trace_hash`] hashes every event.
//!
//! Two narrower simulators sit beside it: [`mesh`] routes one origin's pages over graphs of up
//! to thousands of nodes with the service's routing decisions, and [`gossip`] spreads the
//! membership view over them; each checks its own invariants and replays from its seed.
//!
//! ```
//! let outcome = pagemesh_sim::run(pagemesh_sim::Scenario::from_seed(7));
//! assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
//! assert_eq!(outcome.trace_hash, pagemesh_sim::run(pagemesh_sim::Scenario::from_seed(7)).trace_hash);
//! ```
#![deny(unsafe_code)]

pub mod gossip;
pub mod mesh;
mod network;
mod scenario;
mod store;
mod world;

use std::time::Duration;

pub use scenario::Scenario;

/// What a run did and found.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The seed it ran.
    pub seed: u64,
    /// Every invariant that failed (the run stops at the first).
    pub violations: Vec<String>,
    /// A hash of every event, in order: equal for equal runs.
    pub trace_hash: u64,
    /// Counts of what happened.
    pub stats: Stats,
    /// The events, one per line, when the run was verbose.
    pub trace: Vec<String>,
}

/// Counts of what happened in a run (what a seed exercised).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Virtual time at the end.
    pub end: Duration,
    /// Transactions committed on the origin.
    pub commits: u64,
    /// Transactions deferred because the ring was full.
    pub commits_deferred: u64,
    /// Commits that waited for `Replicated(n)`.
    pub replicated_commits: u64,
    /// Of those, released by acks.
    pub replicated_released: u64,
    /// Of those, timed out.
    pub replicated_timeouts: u64,
    /// Connections opened.
    pub connections: u64,
    /// Links closed, for any reason.
    pub links_closed: u64,
    /// Connections reset by the fault injector.
    pub resets: u64,
    /// Partitions.
    pub partitions: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Applier pauses.
    pub pauses: u64,
    /// Links dropped by the ring-lag rule.
    pub ring_lag_drops: u64,
    /// Links dropped for a blocked write or the ring-lag rule at a timer.
    pub write_timeouts: u64,
    /// Times a shipper left the ring for the binlog.
    pub ring_to_binlog: u64,
    /// Binlog batches shipped.
    pub binlog_batches: u64,
    /// Snapshots started.
    pub snapshots: u64,
    /// Snapshots restored.
    pub restores: u64,
    /// Replicas re-seeded because they claimed pages beyond the origin's log.
    pub reseeds: u64,
    /// Pages ingested by replicas.
    pub pages_ingested: u64,
    /// Times a replica's ring was full mid-run of pages.
    pub ingest_stalls: u64,
    /// Pages replicas ingested from a relay (another replica), not from the origin.
    pub relayed_pages: u64,
    /// Subscriptions a relay refused because the replica was ahead of its copy.
    pub relay_refusals: u64,
    /// Times a replica moved on to another of its holders (`Upstreams`).
    pub failovers: u64,
    /// Links a relay closed because it was re-seeded into a new generation.
    pub relay_generation_closes: u64,
    /// RECEIPTS frames replicas sent upstream.
    pub receipts_frames: u64,
    /// Links established at protocol version 1 (a node of the previous release): no RECEIPTS.
    pub links_without_receipts: u64,
    /// Crashes, partitions and connection resets that hit a relay while it served links.
    pub relay_faults: u64,
    /// `Replicated(n)` commits whose release needed the receipts of nodes not linked to the
    /// origin (fewer than n of its direct links had acked the pages).
    pub replicated_by_subtree: u64,
    /// Relays cut off from their own holders while they kept serving.
    pub stalls: u64,
    /// Times a replica moved to a holder whose HAVE offered pages its own did not deliver.
    pub grafts: u64,
}

impl Stats {
    /// Adds `other`'s counts to these (the end time is the later of the two): what many seeds
    /// exercised together.
    pub fn add(&mut self, other: &Stats) {
        self.end = self.end.max(other.end);
        self.commits += other.commits;
        self.commits_deferred += other.commits_deferred;
        self.replicated_commits += other.replicated_commits;
        self.replicated_released += other.replicated_released;
        self.replicated_timeouts += other.replicated_timeouts;
        self.connections += other.connections;
        self.links_closed += other.links_closed;
        self.resets += other.resets;
        self.partitions += other.partitions;
        self.crashes += other.crashes;
        self.pauses += other.pauses;
        self.ring_lag_drops += other.ring_lag_drops;
        self.write_timeouts += other.write_timeouts;
        self.ring_to_binlog += other.ring_to_binlog;
        self.binlog_batches += other.binlog_batches;
        self.snapshots += other.snapshots;
        self.restores += other.restores;
        self.reseeds += other.reseeds;
        self.pages_ingested += other.pages_ingested;
        self.ingest_stalls += other.ingest_stalls;
        self.relayed_pages += other.relayed_pages;
        self.relay_refusals += other.relay_refusals;
        self.failovers += other.failovers;
        self.relay_generation_closes += other.relay_generation_closes;
        self.receipts_frames += other.receipts_frames;
        self.links_without_receipts += other.links_without_receipts;
        self.relay_faults += other.relay_faults;
        self.replicated_by_subtree += other.replicated_by_subtree;
        self.stalls += other.stalls;
        self.grafts += other.grafts;
    }
}

/// Runs `scenario` to its end.
pub fn run(scenario: Scenario) -> Outcome {
    run_with(scenario, false)
}

/// Runs `scenario`, keeping the trace's lines if `verbose`.
pub fn run_with(scenario: Scenario, verbose: bool) -> Outcome {
    let seed = scenario.seed;
    match world::World::new(scenario, verbose) {
        Ok(world) => world.run(),
        Err(error) => Outcome {
            seed,
            violations: vec![format!("cannot create the run's directory: {error}")],
            trace_hash: 0,
            stats: Stats::default(),
            trace: Vec::new(),
        },
    }
}
