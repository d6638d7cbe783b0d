//! The gossip simulator: membership spread over a graph of nodes by the real view
//! (`pagemesh_net::route::Members`), exchanged along the graph's links with WAN-like delays,
//! with nodes crashing and restarting, links cut and the graph partitioned and healed, all drawn
//! from one seed.
//!
//! Every node gossips with its neighbours each round, as the service does over its gossip links:
//! its `gossip()` frames go out, and arrive after the link's latency unless the link or either
//! node went down meanwhile. Each node serves a few of a small set of databases. The checker
//! asserts that no view ever holds more than its bound; that a node that crashed and stayed down
//! long enough for its news to die out is no longer listed by any node it was connected to; and,
//! once the faults stop and the mesh settles, that every node knows every other, with the
//! databases each serves (so a replica asking `holders` finds every holder).
//!
//! Node names (protocol version 5): in half the seeds some nodes speak version 4, so they send
//! no names and are sent none (`PeerList::for_version`, as the service does). The checker
//! asserts that a name heard is never another node's, and, in the seeds where every node speaks
//! version 5, that once settled every node knows every other's name (commands address nodes
//! by it).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hasher};
use std::time::{Duration, Instant};

use pagemesh_net::proto::PeerList;
use pagemesh_net::route::Members;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uuid::Uuid;

use crate::mesh::Topology;

/// How often each node gossips.
const ROUND: Duration = Duration::from_millis(100);
/// A node whose heartbeat has not risen for this many rounds has left (the service's rule).
const EXPIRY_ROUNDS: u32 = 16;
/// Databases the nodes serve some of.
const DATABASES: u128 = 6;

/// One gossip run's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct GossipScenario {
    /// The seed.
    pub seed: u64,
    /// The graph.
    pub topology: Topology,
    /// Most other nodes a view holds (below the node count, some news is refused).
    pub nodes_max: usize,
    /// Faults for this long, then the mesh heals and settles.
    pub faults_for: Duration,
}

impl GossipScenario {
    /// The scenario of `seed` on `topology`: every fifth seed bounds the views below the node
    /// count.
    pub fn new(seed: u64, topology: Topology) -> Self {
        let nodes = topology.nodes();
        Self {
            seed,
            topology,
            nodes_max: if seed % 5 == 4 { nodes / 2 } else { nodes },
            faults_for: Duration::from_secs(8),
        }
    }
}

/// What a gossip run found.
#[derive(Clone, Debug, Default)]
pub struct GossipOutcome {
    /// The seed.
    pub seed: u64,
    /// Invariants that failed.
    pub violations: Vec<String>,
    /// Nodes.
    pub nodes: usize,
    /// Rounds until every node knew every other, after the faults stopped.
    pub settle_rounds: u64,
    /// Crashes long enough that the crashed node had to be forgotten, checked.
    pub departures_checked: u64,
    /// News of new nodes refused by full views.
    pub refused: u64,
    /// Faults injected.
    pub faults: u64,
    /// Nodes speaking protocol version 4 (no names in their gossip).
    pub old_nodes: usize,
    /// Named entries heard, each checked against the node it names.
    pub names_checked: u64,
    /// The largest PEERS frame list sent, in entries.
    pub largest_frame: usize,
    /// A hash of every event.
    pub trace_hash: u64,
}

/// Runs one gossip scenario.
pub fn run_gossip(scenario: &GossipScenario) -> GossipOutcome {
    let mut rng = ChaCha8Rng::seed_from_u64(scenario.seed);
    let count = scenario.topology.nodes();
    let edges = scenario.topology.edges(&mut rng);
    let mut neighbours = vec![Vec::new(); count];
    let mut latency = BTreeMap::new();
    for &(a, b) in &edges {
        neighbours[a].push(b);
        neighbours[b].push(a);
        latency.insert((a, b), Duration::from_millis(rng.random_range(10..=100)));
    }
    let base = Instant::now();
    let id = |node: usize| Uuid::from_u128(node as u128 + 1);
    let addr = |node: usize| {
        std::net::SocketAddr::from(([10, 0, (node / 250) as u8, (node % 250) as u8 + 1], 7400))
    };
    let serves: Vec<Vec<Uuid>> = (0..count)
        .map(|_| {
            (0..DATABASES)
                .filter(|_| rng.random_bool(0.3))
                .map(|d| Uuid::from_u128(1_000 + d))
                .collect()
        })
        .collect();
    // Drawn from a stream of their own, so the other draws of a seed are what they were.
    let mut old_rng = ChaCha8Rng::seed_from_u64(scenario.seed ^ 0x6f6c_645f_6e6f_6465);
    let old: Vec<bool> = if old_rng.random_bool(0.5) {
        vec![false; count]
    } else {
        (0..count).map(|_| old_rng.random_bool(0.2)).collect()
    };
    let outcome_old_nodes = old.iter().filter(|&&o| o).count();
    let name = |node: usize| format!("node-{node}");
    let fresh = |node: usize, now: Duration| {
        let mut view = Members::new(
            id(node),
            addr(node),
            // The wall clock, in the service: a restart's heartbeat is higher.
            now.as_micros() as u64,
            scenario.nodes_max,
            ROUND * EXPIRY_ROUNDS,
        );
        if !old[node] {
            view = view.with_name(&name(node));
        }
        view.set_databases(serves[node].clone());
        view
    };
    let mut views: Vec<Members> = (0..count).map(|node| fresh(node, Duration::ZERO)).collect();
    let mut alive = vec![true; count];
    let mut down_since: Vec<Option<Duration>> = vec![None; count];
    let mut cut: BTreeSet<(usize, usize)> = BTreeSet::new();
    // Messages in flight: (arrival, sequence) -> (from, to, list, sent at).
    let mut flight: BTreeMap<(Duration, u64), (usize, usize, PeerList)> = BTreeMap::new();
    let mut sequence = 0u64;
    let mut outcome = GossipOutcome {
        seed: scenario.seed,
        nodes: count,
        old_nodes: outcome_old_nodes,
        ..GossipOutcome::default()
    };
    let mut trace = DefaultHasher::new();
    let mut now = Duration::ZERO;

    let mut round = 0u64;
    let mut calm_until: Option<Duration> = None;
    let bounded = |a: usize, b: usize| (a.min(b), a.max(b));
    loop {
        // Deliver what arrives before this round.
        while let Some((&(at, seq), _)) = flight.first_key_value() {
            if at > now {
                break;
            }
            let (from, to, list) = flight.remove(&(at, seq)).expect("first");
            if alive[from] && alive[to] && !cut.contains(&bounded(from, to)) {
                for entry in list.entries.iter().filter(|e| !e.name.is_empty()) {
                    outcome.names_checked += 1;
                    let named = (entry.node.as_u128() as usize).checked_sub(1).map(name);
                    if named.as_deref() != Some(entry.name.as_str()) {
                        outcome.violations.push(format!(
                            "at {at:?}: node {from} told node {to} that {} is named {:?}",
                            entry.node, entry.name
                        ));
                    }
                }
                views[to].heard(id(from), None, &list.entries, base + at);
                trace.write_u64(seq);
            }
        }
        // Faults while they last; all healed after.
        if now < scenario.faults_for && rng.random_bool(0.15) {
            outcome.faults += 1;
            match rng.random_range(0..3) {
                0 => {
                    let node = rng.random_range(1..count);
                    if alive[node] {
                        alive[node] = false;
                        down_since[node] = Some(now);
                    } else {
                        // Back, with what it remembered forgotten (its view is memory).
                        alive[node] = true;
                        down_since[node] = None;
                        views[node] = fresh(node, now);
                    }
                }
                1 => {
                    let edge = edges.iter().nth(rng.random_range(0..edges.len())).copied();
                    if let Some(edge) = edge {
                        if !cut.remove(&edge) {
                            cut.insert(edge);
                        }
                    }
                }
                _ => {
                    if cut.is_empty() {
                        let side: BTreeSet<usize> =
                            (0..count).filter(|_| rng.random_bool(0.5)).collect();
                        cut.extend(
                            edges
                                .iter()
                                .copied()
                                .filter(|(a, b)| side.contains(a) != side.contains(b)),
                        );
                    } else {
                        cut.clear();
                    }
                }
            }
            trace.write_u64(outcome.faults);
        }
        // The faults stop: links heal, crashed nodes stay down until every view must have
        // retired them (their last news crossed what is left of the mesh, then expired).
        if now >= scenario.faults_for && calm_until.is_none() {
            cut.clear();
            let diameter = live_diameter(&neighbours, &alive) as u32;
            calm_until = Some(
                now + ROUND * (EXPIRY_ROUNDS + 1)
                    + (ROUND + Duration::from_millis(100)) * (diameter + 1),
            );
        }
        if calm_until.is_some_and(|until| now >= until) && alive.iter().any(|a| !a) {
            for node in 0..count {
                if !alive[node] {
                    check_forgotten(node, now, &down_since, &views, &alive, &id, &mut outcome);
                    alive[node] = true;
                    down_since[node] = None;
                    views[node] = fresh(node, now);
                }
            }
        }
        // A round: every live node gossips with each live neighbour.
        for node in 0..count {
            if !alive[node] {
                continue;
            }
            views[node].round(base + now);
            if views[node].len() > scenario.nodes_max {
                outcome.violations.push(format!(
                    "at {now:?}: node {node}'s view holds {} entries, beyond {}",
                    views[node].len(),
                    scenario.nodes_max
                ));
            }
            let frames = views[node].gossip(base + now);
            for &peer in &neighbours[node] {
                let link = bounded(node, peer);
                if !alive[peer] || cut.contains(&link) {
                    continue;
                }
                let version = if old[node] || old[peer] { 4 } else { 5 };
                for frame in &frames {
                    let frame = frame.for_version(version);
                    outcome.largest_frame = outcome.largest_frame.max(frame.entries.len());
                    sequence += 1;
                    flight.insert((now + latency[&link], sequence), (node, peer, frame));
                }
            }
        }
        round += 1;
        // Settled: every node knows every other, and what each serves.
        let Some(restarted_at) = calm_until.filter(|&until| now >= until) else {
            now += ROUND;
            continue;
        };
        if scenario.nodes_max < count - 1 {
            // Bounded views cannot know everyone; the bound held throughout.
            if now >= restarted_at + ROUND * EXPIRY_ROUNDS * 2 {
                break;
            }
        } else if settled(&views, &serves, &id) && (old.contains(&true) || named(&views, &name)) {
            outcome.settle_rounds = ((now - restarted_at).as_millis() / ROUND.as_millis()) as u64;
            break;
        }
        if now > restarted_at + ROUND * (EXPIRY_ROUNDS * 4 + count as u32) {
            let known = |n: usize| views[n].nodes().len();
            let named = |n: usize| {
                views[n]
                    .nodes()
                    .iter()
                    .filter(|e| !e.name.is_empty())
                    .count()
            };
            let missing: Vec<String> = (0..count)
                .filter(|&n| known(n) < count - 1 || named(n) < known(n))
                .map(|n| format!("node {n} knows {} ({} by name)", known(n), named(n)))
                .take(5)
                .collect();
            outcome.violations.push(format!(
                "not settled {:?} after every node was back ({round} rounds): {}",
                now - restarted_at,
                missing.join(", ")
            ));
            break;
        }
        if !outcome.violations.is_empty() {
            break;
        }
        now += ROUND;
    }
    outcome.refused = views.iter().map(Members::refused).sum();
    outcome.trace_hash = trace.finish();
    outcome
}

/// Node `node`, down since before the calm began, is about to come back at `now`: its last news
/// has crossed what is left of the mesh and expired, so no live node may list it.
fn check_forgotten(
    node: usize,
    now: Duration,
    down_since: &[Option<Duration>],
    views: &[Members],
    alive: &[bool],
    id: &impl Fn(usize) -> Uuid,
    outcome: &mut GossipOutcome,
) {
    let Some(since) = down_since[node] else {
        return;
    };
    outcome.departures_checked += 1;
    for (other, view) in views.iter().enumerate() {
        if alive[other] && other != node && view.nodes().iter().any(|e| e.node == id(node)) {
            outcome.violations.push(format!(
                "at {now:?}: node {other} still lists node {node}, down since {since:?}"
            ));
            return;
        }
    }
}

/// The longest shortest path, in hops, within any connected part of the live nodes.
fn live_diameter(neighbours: &[Vec<usize>], alive: &[bool]) -> usize {
    let mut longest = 0;
    for start in (0..neighbours.len()).filter(|&n| alive[n]) {
        let mut hops = vec![usize::MAX; neighbours.len()];
        hops[start] = 0;
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            for &peer in &neighbours[node] {
                if alive[peer] && hops[peer] == usize::MAX {
                    hops[peer] = hops[node] + 1;
                    longest = longest.max(hops[peer]);
                    queue.push_back(peer);
                }
            }
        }
    }
    longest
}

/// Every node knows every other's name.
fn named(views: &[Members], name: &impl Fn(usize) -> String) -> bool {
    views.iter().all(|view| {
        view.nodes()
            .iter()
            .all(|e| e.name == name(e.node.as_u128() as usize - 1))
    })
}

/// Every node knows every other, alive, with the databases it serves.
fn settled(views: &[Members], serves: &[Vec<Uuid>], id: &impl Fn(usize) -> Uuid) -> bool {
    views.iter().enumerate().all(|(node, view)| {
        let known: BTreeMap<Uuid, Vec<Uuid>> = view
            .nodes()
            .into_iter()
            .map(|e| (e.node, e.databases))
            .collect();
        known.len() == views.len() - 1
            && (0..views.len()).filter(|&o| o != node).all(|other| {
                let mut dbs = serves[other].clone();
                dbs.sort_unstable();
                known.get(&id(other)) == Some(&dbs)
            })
    })
}
