//! The mesh simulator: one origin's pages spread over a graph of nodes by the routing the
//! service runs (`pagemesh_net::route`: [`Upstreams`] and [`admit`]), over links with WAN-like
//! delays, with links and nodes failing and partitions healing, all drawn from one seed.
//!
//! Each node but the origin follows one holder at a time, chosen by its `Upstreams` among its
//! neighbours, nearest the origin first (what an operator lists in its config): it sends a
//! RESUME from what it holds, the holder admits it (or refuses it as behind, as `route::admit`
//! does for a relay) and pushes pages eagerly as it gets them. Every node tells each neighbour
//! on their lazy link what it holds (HAVE, every `have_interval`); a replica that hears of pages
//! it lacks and makes no progress for the graft timeout grafts that neighbour (a RESUME there,
//! and the old link's close is the PRUNE). A failed link or holder moves the replica to the next
//! holder at once. Loops of replicas following one another are prevented as the service does:
//! each HAVE carries the sender's way to the origin, a holder refuses a RESUME from a node on its
//! own way (`route::refuse_loop`), and a replica leaves a holder whose way has come to pass
//! through it; a loop that forms anyway (a way heard late) stalls until a HAVE from outside
//! grafts one of its nodes away. The run counts each of these.
//!
//! It works at the level of routing: a message is a PAGES run (page indices `from..to`), a
//! RESUME, its answer, a HAVE, a close or RECEIPTS, delivered in order per direction of a link
//! after the link's latency. What a node does with pages once it holds them (ingest, ack, apply)
//! is the cluster simulator's business (`world.rs`); here a node holds a page once it is
//! delivered. The checker asserts that no node is ever sent a run beginning beyond what it holds
//! (a skipped page), that no holder would re-seed a replica, that every node ends holding every
//! page, and that no `Replicated(n)` commit (every tenth page waits for 3 nodes) is released
//! before n nodes hold it; it measures page transfers per page and the delay to the last node,
//! beside what flooding costs on the same graph: 2E − (N − 1) transfers, and the shortest-path
//! delay. Receipts travel hop by hop (`route::Receipts`): each node reports its
//! subtree's watermarks to the holder it follows, and everything again when it follows another.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hasher};
use std::time::{Duration, Instant};

use pagemesh_net::proto::PATH_MAX;
use pagemesh_net::route::Receipts;
use pagemesh_net::route::{
    admit, refuse_loop, Graft, Served, Upstreams, BOOTSTRAP, SWITCH_LEAD_DEFAULT,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uuid::Uuid;

/// Every this many pages, the origin's commit waits for `Replicated(REPLICATED_N)`.
const REPLICATED_EVERY: u64 = 10;
/// Distinct nodes a `Replicated(n)` commit waits for.
const REPLICATED_N: usize = 3;
/// How long after writing stops the run waits for the last receipts.
const RECEIPTS_GRACE: Duration = Duration::from_secs(10);
/// How long a node gathers receipts before it reports them upstream.
const REPORT_DELAY: Duration = Duration::from_millis(5);
/// A replica's reconnection backoff after a whole round of holders failed, as the service's.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// See [`BACKOFF_MIN`] (the service's default `backoff_max`).
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The origin's log, as RESUMEs name it.
const ORIGIN: Uuid = Uuid::from_u128(0x0f1e_2d3c);

/// How the nodes are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// A ring with random chords, `degree` links per node on average.
    Random {
        /// Nodes.
        nodes: usize,
        /// Links per node, on average (at least 2).
        degree: usize,
    },
    /// A `width` × `height` grid, each node linked to its neighbours.
    Grid {
        /// Columns.
        width: usize,
        /// Rows.
        height: usize,
    },
}

impl Topology {
    /// Nodes in the graph.
    pub fn nodes(&self) -> usize {
        match *self {
            Topology::Random { nodes, .. } => nodes,
            Topology::Grid { width, height } => width * height,
        }
    }

    /// The graph's links drawn from `rng`, each as (lower, higher) node.
    pub fn edges(&self, rng: &mut ChaCha8Rng) -> BTreeSet<(usize, usize)> {
        let mut edges = BTreeSet::new();
        match *self {
            Topology::Grid { width, height } => {
                for y in 0..height {
                    for x in 0..width {
                        let node = y * width + x;
                        if x + 1 < width {
                            edges.insert((node, node + 1));
                        }
                        if y + 1 < height {
                            edges.insert((node, node + width));
                        }
                    }
                }
            }
            Topology::Random { nodes, degree } => {
                for node in 0..nodes {
                    let next = (node + 1) % nodes;
                    if node != next {
                        edges.insert((node.min(next), node.max(next)));
                    }
                }
                let wanted = (nodes * degree.max(2) / 2).min(nodes * (nodes - 1) / 2);
                while edges.len() < wanted {
                    let (a, b) = (rng.random_range(0..nodes), rng.random_range(0..nodes));
                    if a != b {
                        edges.insert((a.min(b), a.max(b)));
                    }
                }
            }
        }
        edges
    }
}

/// One mesh run's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshScenario {
    /// The seed.
    pub seed: u64,
    /// The graph.
    pub topology: Topology,
    /// One-way link delays are drawn from this range.
    pub latency: (Duration, Duration),
    /// The origin (node 0) appends a page this often.
    pub write_every: Duration,
    /// How long the origin writes.
    pub writing: Duration,
    /// Pages written before this are warm-up: transfers are counted for the pages after it.
    pub warmup: Duration,
    /// Faults while writing: links cut and restored, nodes crashed and restarted, the graph
    /// partitioned in two and healed.
    pub faults: bool,
    /// A lazy offer of missing pages is grafted after this.
    pub graft_timeout: Duration,
    /// A holder whose pages come this much sooner, three times in a row, is grafted for speed
    /// (`Duration::MAX`: never, the routing without `route::Graft::Faster`).
    pub switch_lead: Duration,
    /// Lazy links hear HAVE at most this often.
    pub have_interval: Duration,
}

impl MeshScenario {
    /// The scenario of `seed` on `topology`.
    pub fn new(seed: u64, topology: Topology, faults: bool) -> Self {
        Self {
            seed,
            topology,
            latency: (Duration::from_millis(10), Duration::from_millis(100)),
            write_every: Duration::from_millis(10),
            writing: Duration::from_secs(6),
            warmup: Duration::from_secs(2),
            faults,
            graft_timeout: Duration::from_millis(300),
            switch_lead: SWITCH_LEAD_DEFAULT,
            have_interval: Duration::from_millis(50),
        }
    }
}

/// What a mesh run found.
#[derive(Clone, Debug)]
pub struct MeshOutcome {
    /// The seed.
    pub seed: u64,
    /// Invariants that failed.
    pub violations: Vec<String>,
    /// Nodes and links.
    pub nodes: usize,
    /// Links in the graph.
    pub edges: usize,
    /// Page transfers per page written after the warm-up (each page reaches N − 1 nodes).
    pub transfers_per_page: f64,
    /// What flooding with visited lists costs on the same graph: 2E − (N − 1).
    pub flooding_per_page: f64,
    /// Delay from the origin's append to the last node holding the page (after the warm-up):
    /// p50 and p99.
    pub last_node_p50: Duration,
    /// See `last_node_p50`.
    pub last_node_p99: Duration,
    /// What flooding would take to the last node: the longest of the shortest-path delays.
    pub flooding_last_node: Duration,
    /// Pages written.
    pub pages: u64,
    /// Moves to a holder that offered pages the followed one did not deliver (GRAFTs).
    pub grafts: u64,
    /// Moves to a holder whose pages came steadily sooner than the followed path's
    /// (`route::Graft::Faster`).
    pub faster: u64,
    /// How much longer than the shortest path the tree's way from the origin is, once writing
    /// stopped: the mean over nodes of (followed path's delay / shortest path's delay); 1.0 is
    /// the best any routing can do.
    pub stretch: f64,
    /// Attempts at a holder that ended: failed, refused, or a link that went down.
    pub moves: u64,
    /// Attempts refused by a holder behind the replica.
    pub refusals: u64,
    /// Grafts out of a loop: the replica's followed holders led back to it (what path-vector
    /// detection missed).
    pub loops: u64,
    /// Replicas that left the holder they followed when its HAVE showed its way to the origin
    /// passing through them.
    pub loops_left: u64,
    /// RESUMEs refused because the replica was on the holder's way to the origin.
    pub loops_refused: u64,
    /// Faults injected.
    pub faults: u64,
    /// `Replicated(3)` commits (every 10th page) released by receipts that travelled hop by
    /// hop, and how long they waited (p50).
    pub replicated_released: usize,
    /// See `replicated_released`.
    pub replicated_wait_p50: Duration,
    /// `Replicated(3)` commits still waiting at the end (their last receipts were lost with a
    /// link: a real commit would time out).
    pub replicated_pending: usize,
    /// A hash of every event.
    pub trace_hash: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Message {
    /// "Send me pages from `from_lsn` on": the replica's attempt number `attempt` at this holder.
    Resume { from_lsn: u64, attempt: u64 },
    /// The holder admitted the attempt: pages follow.
    Admitted { attempt: u64 },
    /// The holder refused the attempt (`route::admit`: this copy is behind the replica).
    Refused { attempt: u64 },
    /// Pages `from_lsn..to_lsn`, pushed down an eager link.
    Pages { from_lsn: u64, to_lsn: u64 },
    /// On a lazy link: the sender holds every page below `lsn`, and its way to the origin.
    Have { lsn: u64, path: Vec<Uuid> },
    /// The replica no longer follows the sender (it grafted elsewhere): Plumtree's PRUNE.
    Close,
    /// Receipt watermarks of the sender's subtree, per node.
    Receipts(Vec<(usize, u64)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    /// A node reports its subtree's receipts upstream.
    Report {
        node: usize,
    },
    Append,
    Deliver {
        from: usize,
        to: usize,
        message: Message,
        /// The link's life when it was sent: a message of an earlier life is lost.
        life: u64,
    },
    /// A replica tries its current holder (unless it has moved on since: `attempt`).
    Attempt {
        node: usize,
        attempt: u64,
    },
    /// A replica checks whether a graft is due.
    GraftCheck {
        node: usize,
        at: Duration,
    },
    /// Every node tells each neighbour, on their lazy link, what it holds.
    HaveTick,
    Fault,
    LinkUp {
        a: usize,
        b: usize,
    },
    NodeUp {
        node: usize,
    },
    Heal,
    Check,
}

struct Link {
    latency: Duration,
    /// Down while cut, or partitioned.
    up: bool,
    /// Bumped when the link goes down, so what was in flight is lost.
    life: u64,
    /// When the last message each way arrives (messages stay in order).
    arrives: [Duration; 2],
}

/// The holder a replica follows, and whether it has admitted the replica yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Follow {
    peer: usize,
    admitted: bool,
}

struct Node {
    /// Every page below this is held.
    held: u64,
    alive: bool,
    receipts: Receipts<usize>,
    report_due: bool,
    /// Which holder to follow (every neighbour, nearest the origin first); `None` at the origin.
    upstreams: Option<Upstreams<usize>>,
    following: Option<Follow>,
    /// Bumped at every move, so a stale refusal or timer is ignored.
    attempt: u64,
    /// Its way to the origin: the node it follows, then that node's way as its HAVE said
    /// (`Runtime::path` in the service).
    path: Vec<Uuid>,
    /// Replicas this node serves, and how far each has been sent.
    downstreams: BTreeMap<usize, u64>,
    /// The pending graft check, if one is scheduled.
    graft_check: Option<Duration>,
}

/// Runs one mesh scenario.
pub fn run_mesh(scenario: &MeshScenario) -> MeshOutcome {
    Mesh::new(scenario).run()
}

struct Mesh<'a> {
    scenario: &'a MeshScenario,
    rng: ChaCha8Rng,
    base: Instant,
    now: Duration,
    queue: BTreeMap<(Duration, u64), Event>,
    sequence: u64,
    nodes: Vec<Node>,
    links: BTreeMap<(usize, usize), Link>,
    neighbours: Vec<Vec<usize>>,
    /// Each node's holders, nearest the origin first (what its configuration would list).
    holders: Vec<Vec<usize>>,
    /// When each page was appended.
    appended: Vec<Duration>,
    /// How many nodes hold each page, and when the last got it.
    reached: Vec<(usize, Duration)>,
    transfers: Vec<u32>,
    /// `Replicated(n)` commits waiting: (lsn_end, n, appended at).
    waiting: Vec<(u64, usize, Duration)>,
    /// How long released `Replicated(n)` commits waited.
    replicated_waits: Vec<Duration>,
    violations: Vec<String>,
    grafts: u64,
    faster: u64,
    moves: u64,
    refusals: u64,
    loops: u64,
    loops_left: u64,
    loops_refused: u64,
    faults: u64,
    trace: DefaultHasher,
    done: bool,
}

impl<'a> Mesh<'a> {
    fn new(scenario: &'a MeshScenario) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(scenario.seed);
        let count = scenario.topology.nodes();
        let edges = scenario.topology.edges(&mut rng);
        let mut neighbours = vec![Vec::new(); count];
        let mut links = BTreeMap::new();
        for &(a, b) in &edges {
            neighbours[a].push(b);
            neighbours[b].push(a);
            let (low, high) = scenario.latency;
            let latency = rng.random_range(low..=high);
            links.insert(
                (a, b),
                Link {
                    latency,
                    up: true,
                    life: 0,
                    arrives: [Duration::ZERO; 2],
                },
            );
        }
        let hops = hops_from_origin(&neighbours);
        let holders: Vec<Vec<usize>> = neighbours
            .iter()
            .map(|peers| {
                let mut peers = peers.clone();
                peers.sort_by_key(|&peer| (hops[peer], peer));
                peers
            })
            .collect();
        let nodes = (0..count)
            .map(|index| Node {
                held: 0,
                alive: true,
                receipts: Receipts::new(index, count),
                report_due: false,
                upstreams: (index != 0)
                    .then(|| upstreams(&holders[index], scenario))
                    .flatten(),
                following: None,
                attempt: 0,
                path: Vec::new(),
                downstreams: BTreeMap::new(),
                graft_check: None,
            })
            .collect();
        let mut mesh = Self {
            scenario,
            rng,
            base: Instant::now(),
            now: Duration::ZERO,
            queue: BTreeMap::new(),
            sequence: 0,
            nodes,
            links,
            neighbours,
            holders,
            appended: Vec::new(),
            reached: Vec::new(),
            transfers: Vec::new(),
            waiting: Vec::new(),
            replicated_waits: Vec::new(),
            violations: Vec::new(),
            grafts: 0,
            faster: 0,
            moves: 0,
            refusals: 0,
            loops: 0,
            loops_left: 0,
            loops_refused: 0,
            faults: 0,
            trace: DefaultHasher::new(),
            done: false,
        };
        for node in 1..count {
            mesh.schedule(Duration::ZERO, Event::Attempt { node, attempt: 0 });
        }
        mesh.schedule(Duration::ZERO, Event::Append);
        mesh.schedule(scenario.have_interval, Event::HaveTick);
        if scenario.faults {
            mesh.schedule(scenario.warmup, Event::Fault);
        }
        mesh.schedule(scenario.writing, Event::Check);
        mesh
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        self.sequence += 1;
        self.queue.insert((self.now + after, self.sequence), event);
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn link(&mut self, a: usize, b: usize) -> &mut Link {
        self.links
            .get_mut(&(a.min(b), a.max(b)))
            .expect("a link of the graph")
    }

    fn run(mut self) -> MeshOutcome {
        let limit = self.scenario.writing + Duration::from_secs(120);
        while !self.done {
            let Some(((at, _), event)) = self.queue.pop_first() else {
                break;
            };
            self.now = at;
            if self.now > limit {
                let behind = self
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, node)| !node.alive || node.held < self.appended.len() as u64)
                    .map(|(index, node)| {
                        format!(
                            "node {index} at {} (alive: {}, following {:?})",
                            node.held, node.alive, node.following
                        )
                    })
                    .collect::<Vec<_>>();
                self.violation(format!(
                    "no convergence 120 s after writing stopped: {} pages written; {}",
                    self.appended.len(),
                    behind.join(", ")
                ));
                break;
            }
            self.handle(event);
            if !self.violations.is_empty() {
                break;
            }
        }
        self.outcome()
    }

    /// The mean over nodes of (delay along the holders they follow / shortest-path delay), for
    /// the nodes whose followed holders lead to the origin now.
    fn stretch(&self, latencies: &BTreeMap<(usize, usize), Duration>) -> f64 {
        let shortest = shortest_delays(&self.neighbours, latencies);
        let mut ratios = Vec::new();
        for (start, &best) in shortest.iter().enumerate().skip(1) {
            let (mut at, mut delay) = (start, Duration::ZERO);
            for _ in 0..self.nodes.len() {
                let Some(Follow { peer, .. }) = self.nodes[at].following else {
                    break;
                };
                delay += latencies[&(at.min(peer), at.max(peer))];
                at = peer;
                if at == 0 {
                    break;
                }
            }
            if at == 0 && best > Duration::ZERO && best != Duration::MAX {
                ratios.push(delay.as_secs_f64() / best.as_secs_f64());
            }
        }
        if ratios.is_empty() {
            0.0
        } else {
            ratios.iter().sum::<f64>() / ratios.len() as f64
        }
    }

    fn outcome(self) -> MeshOutcome {
        let nodes = self.nodes.len();
        let warm = self
            .appended
            .iter()
            .position(|at| *at >= self.scenario.warmup)
            .unwrap_or(self.appended.len());
        let counted = &self.transfers[warm..];
        let transfers_per_page = if counted.is_empty() {
            0.0
        } else {
            counted.iter().map(|&t| f64::from(t)).sum::<f64>() / counted.len() as f64
        };
        let mut delays: Vec<Duration> = self.reached[warm..]
            .iter()
            .zip(&self.appended[warm..])
            .filter(|((count, _), _)| *count + 1 >= nodes)
            .map(|((_, last), appended)| *last - *appended)
            .collect();
        delays.sort_unstable();
        let quantile = |q: f64| {
            delays
                .get(((delays.len() as f64 * q) as usize).min(delays.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        let latencies: BTreeMap<(usize, usize), Duration> = self
            .links
            .iter()
            .map(|(&key, link)| (key, link.latency))
            .collect();
        let stretch = self.stretch(&latencies);
        MeshOutcome {
            seed: self.scenario.seed,
            violations: self.violations,
            nodes,
            edges: self.links.len(),
            transfers_per_page,
            flooding_per_page: (2 * self.links.len()) as f64 - (nodes as f64 - 1.0),
            last_node_p50: quantile(0.5),
            last_node_p99: quantile(0.99),
            flooding_last_node: shortest_delays(&self.neighbours, &latencies)
                .into_iter()
                .filter(|delay| *delay != Duration::MAX)
                .max()
                .unwrap_or_default(),
            stretch,
            pages: self.appended.len() as u64,
            grafts: self.grafts,
            faster: self.faster,
            moves: self.moves,
            refusals: self.refusals,
            loops: self.loops,
            loops_left: self.loops_left,
            loops_refused: self.loops_refused,
            faults: self.faults,
            replicated_released: self.replicated_waits.len(),
            replicated_wait_p50: {
                let mut waits = self.replicated_waits.clone();
                waits.sort_unstable();
                waits.get(waits.len() / 2).copied().unwrap_or_default()
            },
            replicated_pending: self.waiting.len(),
            trace_hash: self.trace.finish(),
        }
    }

    fn note(&mut self, what: u8, a: u64, b: u64) {
        self.trace.write_u128(self.now.as_nanos());
        self.trace.write_u8(what);
        self.trace.write_u64(a);
        self.trace.write_u64(b);
    }

    fn violation(&mut self, what: String) {
        self.violations.push(format!("at {:?}: {what}", self.now));
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Append => self.append(),
            Event::Deliver {
                from,
                to,
                message,
                life,
            } => self.deliver(from, to, message, life),
            Event::Attempt { node, attempt } => {
                if self.nodes[node].alive && self.nodes[node].attempt == attempt {
                    self.attempt(node);
                }
            }
            Event::GraftCheck { node, at } => {
                if self.nodes[node].graft_check == Some(at) && self.nodes[node].alive {
                    self.nodes[node].graft_check = None;
                    self.graft_check(node);
                }
            }
            Event::HaveTick => {
                for node in 0..self.nodes.len() {
                    if !self.nodes[node].alive {
                        continue;
                    }
                    let lsn = self.nodes[node].held;
                    for peer in self.neighbours[node].clone() {
                        // The origin follows nobody: it watches no one.
                        if peer != 0 {
                            let path = self.nodes[node].path.clone();
                            self.send(node, peer, Message::Have { lsn, path });
                        }
                    }
                }
                let every = self.scenario.have_interval;
                if !self.done {
                    self.schedule(every, Event::HaveTick);
                }
            }
            Event::Fault => self.fault(),
            Event::Report { node } => self.report(node),
            Event::LinkUp { a, b } => self.link(a, b).up = true,
            Event::NodeUp { node } => self.restart(node),
            Event::Heal => {
                for link in self.links.values_mut() {
                    link.up = true;
                }
            }
            Event::Check => {
                let end = self.appended.len() as u64;
                // Every node: the crashed ones come back, and must catch up too; and the
                // receipts of the last commits reach the origin.
                if self.nodes.iter().all(|node| node.alive && node.held == end)
                    && (self.waiting.is_empty()
                        || self.now >= self.scenario.writing + RECEIPTS_GRACE)
                {
                    self.done = true;
                } else {
                    self.schedule(Duration::from_millis(100), Event::Check);
                }
            }
        }
    }

    fn append(&mut self) {
        if self.now >= self.scenario.writing {
            return;
        }
        let page = self.appended.len() as u64;
        self.appended.push(self.now);
        self.reached.push((0, self.now));
        self.transfers.push(0);
        self.note(0, page, 0);
        self.nodes[0].held = page + 1;
        self.nodes[0].receipts.record(0, page + 1);
        self.push(0);
        if (page + 1).is_multiple_of(REPLICATED_EVERY) {
            let wanted = REPLICATED_N.min(self.nodes.len() - 1);
            self.waiting.push((page + 1, wanted, self.now));
        }
        let every = self.scenario.write_every;
        self.schedule(every, Event::Append);
    }

    /// Sends `node`'s replicas the pages they have not been sent yet.
    fn push(&mut self, node: usize) {
        let held = self.nodes[node].held;
        let behind: Vec<(usize, u64)> = self.nodes[node]
            .downstreams
            .iter()
            .filter(|(_, sent)| **sent < held)
            .map(|(&peer, &sent)| (peer, sent))
            .collect();
        for (peer, sent) in behind {
            self.nodes[node].downstreams.insert(peer, held);
            let pages = Message::Pages {
                from_lsn: sent,
                to_lsn: held,
            };
            self.send(node, peer, pages);
        }
    }

    /// `node` tries the holder its `Upstreams` names now: a RESUME from what it holds.
    fn attempt(&mut self, node: usize) {
        let Some(upstreams) = &self.nodes[node].upstreams else {
            return;
        };
        let peer = *upstreams.current();
        self.nodes[node].following = Some(Follow {
            peer,
            admitted: false,
        });
        self.nodes[node].path = vec![node_id(peer)];
        if self.link(node, peer).up && self.nodes[peer].alive {
            let resume = Message::Resume {
                from_lsn: self.nodes[node].held,
                attempt: self.nodes[node].attempt,
            };
            self.send(node, peer, resume);
        } else {
            // No connection: the attempt fails at once.
            self.ended(node, false);
        }
    }

    /// `node`'s attempt at its holder ended (`was_up`: the holder had admitted it); it tries the
    /// next when its `Upstreams` says.
    fn ended(&mut self, node: usize, was_up: bool) {
        let Some(upstreams) = &mut self.nodes[node].upstreams else {
            return;
        };
        let wait = upstreams.ended(was_up);
        self.nodes[node].following = None;
        self.nodes[node].path.clear();
        self.nodes[node].attempt += 1;
        self.moves += 1;
        let attempt = self.nodes[node].attempt;
        self.schedule(wait, Event::Attempt { node, attempt });
    }

    /// Schedules `node`'s next graft check at its `Upstreams`' deadline.
    fn arm_graft_check(&mut self, node: usize) {
        let Some(deadline) = self.nodes[node]
            .upstreams
            .as_ref()
            .and_then(Upstreams::graft_deadline)
        else {
            return;
        };
        let at = deadline.saturating_duration_since(self.base).max(self.now);
        if self.nodes[node].graft_check.is_none_or(|due| due > at) {
            self.nodes[node].graft_check = Some(at);
            self.sequence += 1;
            self.queue
                .insert((at, self.sequence), Event::GraftCheck { node, at });
        }
    }

    fn graft_check(&mut self, node: usize) {
        let (held, now) = (self.nodes[node].held, self.instant());
        let Some(upstreams) = &mut self.nodes[node].upstreams else {
            return;
        };
        let Some(graft) = upstreams.graft_due(held, now) else {
            if upstreams.graft_deadline().is_some_and(|at| at <= now) {
                // The driver would be woken again and again at this instant.
                return self.violation(format!(
                    "node {node}: a graft deadline passed, yet no graft is due"
                ));
            }
            return self.arm_graft_check(node);
        };
        let holder = graft.holder();
        upstreams.graft(holder);
        match graft {
            Graft::Stalled { .. } => self.grafts += 1,
            Graft::Faster { .. } => self.faster += 1,
        }
        if self.follows_in_a_loop(node) {
            self.loops += 1;
        }
        if let Some(Follow { peer, .. }) = self.nodes[node].following.take() {
            self.send(node, peer, Message::Close);
        }
        self.note(5, node as u64, holder as u64);
        self.nodes[node].attempt += 1;
        self.attempt(node);
    }

    /// Whether following holders from `node` on comes back to `node`: replicas that follow one
    /// another, cut off from the origin (each admitted the other while neither was behind).
    fn follows_in_a_loop(&self, node: usize) -> bool {
        let mut at = node;
        for _ in 0..self.nodes.len() {
            match self.nodes[at].following {
                Some(Follow {
                    peer,
                    admitted: true,
                }) if peer == node => return true,
                Some(Follow {
                    peer,
                    admitted: true,
                }) => at = peer,
                _ => return false,
            }
        }
        false
    }

    fn send(&mut self, from: usize, to: usize, message: Message) {
        let now = self.now;
        let direction = usize::from(from > to);
        let link = self.link(from, to);
        if !link.up {
            return;
        }
        let at = (now + link.latency).max(link.arrives[direction]);
        link.arrives[direction] = at;
        let life = link.life;
        if let Message::Pages { from_lsn, to_lsn } = message {
            for page in from_lsn..to_lsn {
                if let Some(count) = self.transfers.get_mut(page as usize) {
                    *count += 1;
                }
            }
        }
        self.sequence += 1;
        self.queue.insert(
            (at, self.sequence),
            Event::Deliver {
                from,
                to,
                message,
                life,
            },
        );
    }

    fn deliver(&mut self, from: usize, to: usize, message: Message, life: u64) {
        let link = self.link(from, to);
        if link.life != life || !link.up || !self.nodes[to].alive || !self.nodes[from].alive {
            return;
        }
        match message {
            Message::Resume { from_lsn, attempt } => self.resume(to, from, from_lsn, attempt),
            Message::Admitted { attempt } => {
                if self.nodes[to].attempt == attempt
                    && self.nodes[to].following.map(|f| f.peer) == Some(from)
                {
                    self.nodes[to].following = Some(Follow {
                        peer: from,
                        admitted: true,
                    });
                    // A new way to the origin: it hears the whole subtree.
                    self.nodes[to].receipts.report_all();
                    self.report_soon(to);
                }
            }
            Message::Refused { attempt } => {
                if self.nodes[to].attempt == attempt {
                    self.refusals += 1;
                    self.ended(to, false);
                }
            }
            Message::Pages { from_lsn, to_lsn } => self.pages(to, from, from_lsn, to_lsn),
            Message::Have { lsn, path } => {
                let (held, now) = (self.nodes[to].held, self.instant());
                let through_me = path.contains(&node_id(to));
                let Some(upstreams) = &mut self.nodes[to].upstreams else {
                    return;
                };
                let Some(index) = self.holders[to].iter().position(|&h| h == from) else {
                    return;
                };
                upstreams.heard_path(index, through_me);
                upstreams.heard_have(index, lsn, held, now);
                if self.nodes[to].following.map(|f| f.peer) == Some(from) {
                    if through_me {
                        // Following `from` closes a loop: leave it (the service's Move::Leave).
                        self.loops_left += 1;
                        let admitted = self.nodes[to].following.is_some_and(|f| f.admitted);
                        self.send(to, from, Message::Close);
                        return self.ended(to, admitted);
                    }
                    let mut way = vec![node_id(from)];
                    way.extend(path);
                    way.truncate(PATH_MAX);
                    self.nodes[to].path = way;
                }
                self.arm_graft_check(to);
            }
            Message::Close => {
                self.nodes[to].downstreams.remove(&from);
            }
            Message::Receipts(entries) => {
                let mut news = false;
                for (node, lsn) in entries {
                    news |= self.nodes[to].receipts.record(node, lsn);
                }
                if news {
                    if to == 0 {
                        self.release();
                    } else {
                        self.report_soon(to);
                    }
                }
            }
        }
    }

    /// `holder` hears a RESUME from `replica`: `route::admit` decides, as the service's does.
    fn resume(&mut self, holder: usize, replica: usize, from_lsn: u64, attempt: u64) {
        let served = Served {
            origin: ORIGIN,
            committed_lsn: self.nodes[holder].held,
            relay: holder != 0,
        };
        let admission = admit(Some(served), Uuid::nil(), from_lsn).and_then(|admitted| {
            refuse_loop(&self.nodes[holder].path, node_id(replica))
                .inspect_err(|_| self.loops_refused += 1)
                .map(|()| admitted)
        });
        match admission {
            Ok(admitted) if admitted.from_lsn != BOOTSTRAP => {
                self.nodes[holder].downstreams.insert(replica, from_lsn);
                self.send(holder, replica, Message::Admitted { attempt });
                self.push(holder);
            }
            Ok(_) => self.violation(format!(
                "node {holder} would re-seed node {replica}, which claims {from_lsn} pages"
            )),
            Err(_) => self.send(holder, replica, Message::Refused { attempt }),
        }
    }

    fn pages(&mut self, node: usize, from: usize, from_lsn: u64, to_lsn: u64) {
        let following = self.nodes[node].following;
        if following
            != Some(Follow {
                peer: from,
                admitted: true,
            })
        {
            // Sent before the replica moved on: its link is closed, the pages are dropped.
            return;
        }
        let held = self.nodes[node].held;
        if from_lsn > held {
            return self.violation(format!(
                "node {from} sent node {node} pages from {from_lsn}, beyond the {held} it holds"
            ));
        }
        if to_lsn <= held {
            return;
        }
        self.note(1, from as u64, to_lsn);
        for page in held..to_lsn {
            let reached = &mut self.reached[page as usize];
            reached.0 += 1;
            reached.1 = self.now;
        }
        self.nodes[node].held = to_lsn;
        self.nodes[node].receipts.record(node, to_lsn);
        self.report_soon(node);
        self.push(node);
        let now = self.instant();
        if let Some(upstreams) = &mut self.nodes[node].upstreams {
            upstreams.progressed(now);
            if upstreams.received(to_lsn, now) {
                self.arm_graft_check(node);
            }
        }
    }

    /// Schedules `node`'s next receipt report, unless one is due already.
    fn report_soon(&mut self, node: usize) {
        if node != 0 && !self.nodes[node].report_due {
            self.nodes[node].report_due = true;
            self.schedule(REPORT_DELAY, Event::Report { node });
        }
    }

    /// `node` sends what changed in its receipts to its upstream (later, if it has none now).
    fn report(&mut self, node: usize) {
        self.nodes[node].report_due = false;
        if !self.nodes[node].alive {
            return;
        }
        let Some(Follow {
            peer,
            admitted: true,
        }) = self.nodes[node].following
        else {
            self.nodes[node].report_due = true;
            return self.schedule(Duration::from_millis(50), Event::Report { node });
        };
        if let Some(entries) = self.nodes[node].receipts.take_report() {
            self.send(node, peer, Message::Receipts(entries));
        }
    }

    /// Releases the `Replicated(n)` commits the origin's receipts now cover, checking each
    /// against what the nodes really hold.
    fn release(&mut self) {
        let mut index = 0;
        while index < self.waiting.len() {
            let (lsn_end, wanted, since) = self.waiting[index];
            if self.nodes[0].receipts.holders(lsn_end) < wanted {
                index += 1;
                continue;
            }
            self.waiting.swap_remove(index);
            let holders = self.nodes[1..]
                .iter()
                .filter(|node| node.held >= lsn_end)
                .count();
            if holders < wanted {
                return self.violation(format!(
                    "a Replicated({wanted}) commit ending at page {lsn_end} was released while {holders} nodes held it"
                ));
            }
            self.replicated_waits.push(self.now - since);
        }
    }

    /// The link between `a` and `b` went down: each end loses what it had over it.
    fn disconnect(&mut self, a: usize, b: usize) {
        self.link(a, b).life += 1;
        for (node, peer) in [(a, b), (b, a)] {
            self.nodes[node].downstreams.remove(&peer);
            if let Some(Follow {
                peer: followed,
                admitted,
            }) = self.nodes[node].following
            {
                if followed == peer && self.nodes[node].alive {
                    self.ended(node, admitted);
                }
            }
        }
    }

    fn fault(&mut self) {
        if self.now >= self.scenario.writing {
            return;
        }
        self.faults += 1;
        let gap = Duration::from_millis(self.rng.random_range(200..1_500));
        self.schedule(gap, Event::Fault);
        let count = self.nodes.len();
        match self.rng.random_range(0..3) {
            0 => {
                let keys: Vec<(usize, usize)> = self.links.keys().copied().collect();
                let (a, b) = keys[self.rng.random_range(0..keys.len())];
                if self.link(a, b).up {
                    self.note(2, a as u64, b as u64);
                    self.link(a, b).up = false;
                    self.disconnect(a, b);
                    let down = Duration::from_millis(self.rng.random_range(100..2_000));
                    self.schedule(down, Event::LinkUp { a, b });
                }
            }
            1 if count > 2 => {
                let node = self.rng.random_range(1..count);
                if self.nodes[node].alive {
                    self.note(3, node as u64, 0);
                    self.nodes[node].alive = false;
                    for peer in self.neighbours[node].clone() {
                        self.disconnect(node, peer);
                    }
                    let down = Duration::from_millis(self.rng.random_range(100..2_000));
                    self.schedule(down, Event::NodeUp { node });
                }
            }
            _ => {
                // Cut the graph in two around a random half of its nodes; heal it later.
                let side: BTreeSet<usize> =
                    (0..count).filter(|_| self.rng.random_bool(0.5)).collect();
                self.note(4, side.len() as u64, 0);
                let cut: Vec<(usize, usize)> = self
                    .links
                    .keys()
                    .copied()
                    .filter(|(a, b)| side.contains(a) != side.contains(b))
                    .collect();
                for (a, b) in cut {
                    if self.link(a, b).up {
                        self.link(a, b).up = false;
                        self.disconnect(a, b);
                    }
                }
                let length = Duration::from_millis(self.rng.random_range(200..3_000));
                self.schedule(length, Event::Heal);
            }
        }
    }

    /// A crashed node comes back holding what it held (its ring survived), and follows anew.
    fn restart(&mut self, node: usize) {
        if self.nodes[node].alive {
            return;
        }
        let held = self.nodes[node].held;
        // The receipts book is memory: the node starts it again from what it holds.
        let mut receipts = Receipts::new(node, self.nodes.len());
        receipts.record(node, held);
        let attempt = self.nodes[node].attempt + 1;
        self.nodes[node] = Node {
            held,
            alive: true,
            receipts,
            report_due: false,
            upstreams: upstreams(&self.holders[node], self.scenario),
            following: None,
            attempt,
            path: Vec::new(),
            downstreams: BTreeMap::new(),
            graft_check: None,
        };
        self.report_soon(node);
        self.attempt(node);
    }
}

/// Node `index`'s uuid, as paths and `route::refuse_loop` name it.
fn node_id(index: usize) -> Uuid {
    Uuid::from_u128(index as u128 + 1)
}

/// A replica's `Upstreams` over `holders`, with the service's backoff.
fn upstreams(holders: &[usize], scenario: &MeshScenario) -> Option<Upstreams<usize>> {
    Upstreams::new(holders.to_vec(), BACKOFF_MIN, BACKOFF_MAX).map(|upstreams| {
        upstreams
            .with_graft_timeout(scenario.graft_timeout)
            .with_switch_lead(scenario.switch_lead)
    })
}

/// Hops from the origin (node 0) to each node, by breadth-first search.
fn hops_from_origin(neighbours: &[Vec<usize>]) -> Vec<usize> {
    let mut hops = vec![usize::MAX; neighbours.len()];
    let mut queue = std::collections::VecDeque::from([0]);
    hops[0] = 0;
    while let Some(node) = queue.pop_front() {
        for &peer in &neighbours[node] {
            if hops[peer] == usize::MAX {
                hops[peer] = hops[node] + 1;
                queue.push_back(peer);
            }
        }
    }
    hops
}

/// The delay of the shortest path from the origin to each node (Dijkstra over the link
/// latencies; `Duration::MAX` for a node it cannot reach): what flooding delivers at best.
fn shortest_delays(
    neighbours: &[Vec<usize>],
    latencies: &BTreeMap<(usize, usize), Duration>,
) -> Vec<Duration> {
    let mut best = vec![Duration::MAX; neighbours.len()];
    let mut queue = BTreeSet::from([(Duration::ZERO, 0)]);
    best[0] = Duration::ZERO;
    while let Some((delay, node)) = queue.pop_first() {
        if delay > best[node] {
            continue;
        }
        for &peer in &neighbours[node] {
            let through = delay + latencies[&(node.min(peer), node.max(peer))];
            if through < best[peer] {
                best[peer] = through;
                queue.insert((through, peer));
            }
        }
    }
    best
}
