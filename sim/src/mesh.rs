//! The mesh simulator: one origin's pages spread over a graph of nodes by the real routing
//! decisions of `pagemesh_net::route::plumtree`, over links with WAN-like delays, with links and
//! nodes failing and partitions healing, all drawn from one seed.
//!
//! It works at the level of the routing protocol: a message is a PAGES run (origin's LSNs
//! `from..to`), a HAVE, a GRAFT or a PRUNE, delivered in order per direction of a link after the
//! link's latency. What a node does with pages once it holds them (ingest, ack, apply) is the
//! cluster simulator's business (`world.rs`); here a node holds a page once it is delivered. The
//! checker asserts that no node is ever sent a run beginning beyond what it holds (a skipped
//! page), that every node ends holding every page, and that no `Replicated(n)` commit (every
//! tenth page waits for 3 nodes) is released before n nodes hold it; it measures page transfers
//! per page and the delay to the last node. Receipts travel hop by hop
//! (`route::plumtree::Receipts`): each node reports its subtree's watermarks to its upstream,
//! and everything again when its upstream changes.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hasher};
use std::time::{Duration, Instant};

use pagemesh_net::route::plumtree::{Action, Receipts, Tree};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Every this many pages, the origin's commit waits for `Replicated(REPLICATED_N)`.
const REPLICATED_EVERY: u64 = 10;
/// Distinct nodes a `Replicated(n)` commit waits for.
const REPLICATED_N: usize = 3;
/// How long after writing stops the run waits for the last receipts.
const RECEIPTS_GRACE: Duration = Duration::from_secs(10);
/// How long a node gathers receipts before it reports them upstream.
const REPORT_DELAY: Duration = Duration::from_millis(5);

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

    fn edges(&self, rng: &mut ChaCha8Rng) -> BTreeSet<(usize, usize)> {
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
    /// Pages written.
    pub pages: u64,
    /// GRAFTs and PRUNEs sent.
    pub grafts: u64,
    /// See `grafts`.
    pub prunes: u64,
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
    Pages {
        from_lsn: u64,
        to_lsn: u64,
    },
    Have {
        lsn: u64,
    },
    Graft {
        from_lsn: u64,
    },
    Prune,
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
    Timer {
        node: usize,
        at: Duration,
    },
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

struct Node {
    tree: Tree<usize>,
    receipts: Receipts<usize>,
    report_due: bool,
    alive: bool,
    timer: Option<Duration>,
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
    prunes: u64,
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
        let nodes = (0..count)
            .map(|index| Node {
                tree: Tree::new(0, scenario.graft_timeout, scenario.have_interval),
                receipts: Receipts::new(index, count),
                report_due: false,
                alive: true,
                timer: None,
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
            appended: Vec::new(),
            reached: Vec::new(),
            transfers: Vec::new(),
            waiting: Vec::new(),
            replicated_waits: Vec::new(),
            violations: Vec::new(),
            grafts: 0,
            prunes: 0,
            faults: 0,
            trace: DefaultHasher::new(),
            done: false,
        };
        for &(a, b) in &edges {
            mesh.connect(a, b);
        }
        mesh.schedule(Duration::ZERO, Event::Append);
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
                    .filter(|(_, node)| {
                        !node.alive || node.tree.held() < self.appended.len() as u64
                    })
                    .map(|(index, node)| {
                        format!(
                            "node {index} at {} (alive: {})",
                            node.tree.held(),
                            node.alive
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
        MeshOutcome {
            seed: self.scenario.seed,
            violations: self.violations,
            nodes,
            edges: self.links.len(),
            transfers_per_page,
            flooding_per_page: (2 * self.links.len()) as f64 - (nodes as f64 - 1.0),
            last_node_p50: quantile(0.5),
            last_node_p99: quantile(0.99),
            pages: self.appended.len() as u64,
            grafts: self.grafts,
            prunes: self.prunes,
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
            Event::Timer { node, at } => {
                if self.nodes[node].timer == Some(at) && self.nodes[node].alive {
                    self.nodes[node].timer = None;
                    let mut out = Vec::new();
                    let now = self.instant();
                    self.nodes[node].tree.handle_timeout(now, &mut out);
                    self.act(node, out);
                }
            }
            Event::Fault => self.fault(),
            Event::Report { node } => self.report(node),
            Event::LinkUp { a, b } => {
                let link = self.link(a, b);
                if !link.up {
                    link.up = true;
                    self.connect(a, b);
                }
            }
            Event::NodeUp { node } => self.restart(node),
            Event::Heal => {
                let cut: Vec<(usize, usize)> = self
                    .links
                    .iter()
                    .filter(|(_, link)| !link.up)
                    .map(|(&key, _)| key)
                    .collect();
                for (a, b) in cut {
                    self.link(a, b).up = true;
                    self.connect(a, b);
                }
            }
            Event::Check => {
                let end = self.appended.len() as u64;
                // Every node: the crashed ones come back, and must catch up too; and the
                // receipts of the last commits reach the origin.
                if self
                    .nodes
                    .iter()
                    .all(|node| node.alive && node.tree.held() == end)
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
        let lsn = self.appended.len() as u64 + 1;
        self.appended.push(self.now);
        self.reached.push((0, self.now));
        self.transfers.push(0);
        self.note(0, lsn, 0);
        let mut out = Vec::new();
        let now = self.instant();
        self.nodes[0].tree.appended(lsn, now, &mut out);
        self.nodes[0].receipts.record(0, lsn);
        self.act(0, out);
        if lsn.is_multiple_of(REPLICATED_EVERY) {
            let wanted = REPLICATED_N.min(self.nodes.len() - 1);
            self.waiting.push((lsn, wanted, self.now));
        }
        let every = self.scenario.write_every;
        self.schedule(every, Event::Append);
    }

    /// A link between two live nodes comes up at both ends.
    fn connect(&mut self, a: usize, b: usize) {
        if !self.nodes[a].alive || !self.nodes[b].alive || !self.link(a, b).up {
            return;
        }
        for (node, peer) in [(a, b), (b, a)] {
            let mut out = Vec::new();
            self.nodes[node].tree.link_up(peer, &mut out);
            self.act(node, out);
        }
    }

    fn disconnect(&mut self, a: usize, b: usize) {
        let link = self.link(a, b);
        link.life += 1;
        self.nodes[a].tree.link_down(b);
        self.nodes[b].tree.link_down(a);
    }

    /// Sends what `node`'s tree asked for, and re-arms its timer.
    fn act(&mut self, node: usize, actions: Vec<Action<usize>>) {
        for action in actions {
            let (peer, message) = match action {
                Action::Push {
                    peer,
                    from_lsn,
                    to_lsn,
                } => (peer, Message::Pages { from_lsn, to_lsn }),
                Action::Have { peer, lsn } => (peer, Message::Have { lsn }),
                Action::Graft { peer, from_lsn } => {
                    self.grafts += 1;
                    (peer, Message::Graft { from_lsn })
                }
                Action::Prune { peer } => {
                    self.prunes += 1;
                    (peer, Message::Prune)
                }
            };
            self.send(node, peer, message);
        }
        let next = self.nodes[node]
            .tree
            .poll_timeout()
            .map(|at| at.saturating_duration_since(self.base).max(self.now));
        if let Some(at) = next {
            if self.nodes[node].timer != Some(at) {
                self.nodes[node].timer = Some(at);
                self.queue
                    .insert((at, self.sequence + 1), Event::Timer { node, at });
                self.sequence += 1;
            }
        }
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
            for lsn in from_lsn..to_lsn {
                if let Some(count) = self.transfers.get_mut(lsn as usize) {
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
        let now = self.instant();
        let mut out = Vec::new();
        if let Message::Pages { to_lsn, .. } = message {
            self.note(1, from as u64, to_lsn);
        }
        let upstream_before = self.nodes[to].tree.upstream();
        let tree = &mut self.nodes[to].tree;
        match message {
            Message::Pages { from_lsn, to_lsn } => {
                let before = tree.held();
                match tree.received(from, from_lsn, to_lsn, now, &mut out) {
                    None => {
                        return self.violation(format!(
                            "node {from} sent node {to} pages from {from_lsn}, beyond the {before} it holds"
                        ));
                    }
                    Some((fresh_from, fresh_to)) => {
                        for lsn in fresh_from..fresh_to {
                            let reached = &mut self.reached[lsn as usize];
                            reached.0 += 1;
                            reached.1 = self.now;
                        }
                        if fresh_to > fresh_from {
                            let held = self.nodes[to].tree.held();
                            let receipts = &mut self.nodes[to].receipts;
                            receipts.record(to, held);
                            if self.nodes[to].tree.upstream() != upstream_before {
                                // A new way to the origin: it hears the whole subtree.
                                self.nodes[to].receipts.report_all();
                            }
                            self.report_soon(to);
                        }
                    }
                }
            }
            Message::Have { lsn } => tree.have(from, lsn, now, &mut out),
            Message::Graft { from_lsn } => tree.graft(from, from_lsn, now, &mut out),
            Message::Prune => tree.prune(from, now),
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
        self.act(to, out);
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
        let Some(upstream) = self.nodes[node].tree.upstream() else {
            self.nodes[node].report_due = true;
            return self.schedule(Duration::from_millis(50), Event::Report { node });
        };
        if let Some(entries) = self.nodes[node].receipts.take_report() {
            self.send(node, upstream, Message::Receipts(entries));
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
                .filter(|node| node.tree.held() >= lsn_end)
                .count();
            if holders < wanted {
                return self.violation(format!(
                    "a Replicated({wanted}) commit ending at page {lsn_end} was released while {holders} nodes held it"
                ));
            }
            self.replicated_waits.push(self.now - since);
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

    /// A crashed node comes back holding what it held (its ring survived), with links anew.
    fn restart(&mut self, node: usize) {
        if self.nodes[node].alive {
            return;
        }
        let held = self.nodes[node].tree.held();
        // The receipts book is memory: the node starts it again from what it holds.
        let mut receipts = Receipts::new(node, self.nodes.len());
        receipts.record(node, held);
        self.nodes[node] = Node {
            tree: Tree::new(
                held,
                self.scenario.graft_timeout,
                self.scenario.have_interval,
            ),
            receipts,
            report_due: false,
            alive: true,
            timer: None,
        };
        self.report_soon(node);
        for peer in self.neighbours[node].clone() {
            self.connect(node, peer);
        }
    }
}
