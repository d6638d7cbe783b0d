//! What one run simulates, all of it drawn from the seed: the cluster's shape, the network's
//! character, the workload and how often things fail.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One run's parameters. [`Scenario::from_seed`] draws them; a test may then pin some.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The seed everything is drawn from (the scenario, then every event of the run).
    pub seed: u64,
    /// Replicas: nodes 1 to `replicas` (the origin is node 0).
    pub replicas: usize,
    /// Each replica's holders (its upstreams, `route::Upstreams`), nearest first: node indices,
    /// 0 the origin. A replica's holders are all nodes before it, so the topology has no cycle;
    /// a replica that follows another replica is served by a relay, and chains reach 2 or 3
    /// hops. A second holder, when there is one, is where the replica fails over to.
    pub upstreams: Vec<Vec<usize>>,
    /// Replicas of the previous release: they speak protocol version 1 only, so the links they
    /// take part in carry no RECEIPTS (their subtrees' receipts stop there).
    pub old_protocol: Vec<bool>,
    /// Synchronous replicas the origin keeps (`Replicated(n)` commits wait for n ≤ this).
    pub sync_replicas: usize,
    /// Ring size of every log, in pages.
    pub ring_slots: u64,
    /// Pages of binlog the origin keeps behind its applier (`None`: all of it). A replica that
    /// needs older pages is re-seeded from a snapshot.
    pub binlog_retention: Option<u64>,
    /// One-way latency of each replica's link to its holder.
    pub latency: Vec<Duration>,
    /// Bytes per microsecond each replica's link carries.
    pub bandwidth: Vec<u64>,
    /// Bytes a direction of a connection holds (in flight plus unread) before writes block.
    pub window: usize,
    /// How often each node's applier runs, and how many pages it applies each time.
    pub apply_period: Vec<Duration>,
    /// Pages per apply step, per node.
    pub apply_pages: Vec<usize>,
    /// Concurrent writers on the origin.
    pub clients: usize,
    /// Pause between a client's transactions, at most.
    pub think_max: Duration,
    /// Largest record a client writes, in bytes.
    pub record_max: usize,
    /// Share of transactions that wait for `Replicated(n)`, in percent.
    pub replicated_percent: u32,
    /// How long the workload and the faults last; then the network heals and the run waits for
    /// every copy to converge.
    pub active: Duration,
    /// Mean time between faults (`None`: no faults).
    pub fault_every: Option<Duration>,
    /// Whether the origin itself may crash.
    pub origin_crashes: bool,
    /// How long the run may go without progress once faults stop before it counts as stuck.
    pub settle: Duration,
    /// Link heartbeat interval.
    pub heartbeat: Duration,
    /// Silence (or a blocked write) after which a link is dropped.
    pub link_timeout: Duration,
    /// How long a `Replicated(n)` commit waits before it fails.
    pub commit_timeout: Duration,
}

impl Scenario {
    /// The scenario of `seed`.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5ce7_a710);
        let replicas = rng.random_range(1..=4);
        let per_link = |rng: &mut ChaCha8Rng, f: &dyn Fn(&mut ChaCha8Rng) -> u64| {
            (0..replicas).map(|_| f(rng)).collect::<Vec<_>>()
        };
        let latency = per_link(&mut rng, &|rng| rng.random_range(20..20_000))
            .into_iter()
            .map(Duration::from_micros)
            .collect();
        let bandwidth = per_link(&mut rng, &|rng| 1 << rng.random_range(0..8));
        let apply_period = (0..=replicas)
            .map(|_| Duration::from_micros(rng.random_range(200..20_000)))
            .collect();
        let apply_pages = (0..=replicas)
            .map(|_| 1 << rng.random_range(0..7))
            .collect();
        let upstreams = (1..=replicas)
            .map(|replica| draw_upstreams(&mut rng, replica))
            .collect();
        let old_protocol = (0..replicas).map(|_| rng.random_bool(0.08)).collect();
        Self {
            seed,
            replicas,
            upstreams,
            old_protocol,
            sync_replicas: rng.random_range(0..=replicas),
            ring_slots: 1 << rng.random_range(4..=10),
            binlog_retention: rng.random_bool(0.5).then(|| rng.random_range(64..1024)),
            latency,
            bandwidth,
            window: 1 << rng.random_range(14..21),
            apply_period,
            apply_pages,
            clients: rng.random_range(1..=3),
            think_max: Duration::from_micros(rng.random_range(100..10_000)),
            record_max: 1 << rng.random_range(6..14),
            replicated_percent: [0, 20, 50, 100][rng.random_range(0..4)],
            active: Duration::from_millis(rng.random_range(500..3_000)),
            fault_every: rng
                .random_bool(0.85)
                .then(|| Duration::from_millis(rng.random_range(30..1_000))),
            origin_crashes: rng.random_bool(0.3),
            settle: Duration::from_secs(10),
            heartbeat: Duration::from_millis(100),
            link_timeout: Duration::from_millis(500),
            commit_timeout: Duration::from_millis(rng.random_range(50..2_000)),
        }
    }

    /// The same scenario with `replicas` replicas (per-link parameters repeated or cut).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        fn fit<T: Copy>(values: &mut Vec<T>, len: usize) {
            let last = *values.last().expect("at least one");
            values.resize(len, last);
        }
        fit(&mut self.latency, replicas);
        fit(&mut self.bandwidth, replicas);
        fit(&mut self.apply_period, replicas + 1);
        fit(&mut self.apply_pages, replicas + 1);
        // Holders are earlier nodes, so a cut keeps every list valid; a new replica follows the
        // one before it, then the origin.
        self.old_protocol.resize(replicas, false);
        self.upstreams.truncate(replicas);
        for replica in self.upstreams.len() + 1..=replicas {
            self.upstreams.push(vec![replica - 1, 0]);
        }
        self.replicas = replicas;
        self.sync_replicas = self.sync_replicas.min(replicas);
        self
    }
}

/// The holders of `replica` (1-based), nearest first, drawn from the nodes before it: most
/// often a replica (a relay; the later one, the longer the chain), else the origin; and, half
/// the time, a second holder to fail over to.
fn draw_upstreams(rng: &mut ChaCha8Rng, replica: usize) -> Vec<usize> {
    let first = if replica > 1 && rng.random_bool(0.7) {
        // The node just before, more often than not: chains of 2 and 3 hops.
        if rng.random_bool(0.6) {
            replica - 1
        } else {
            rng.random_range(1..replica)
        }
    } else {
        0
    };
    let mut holders = vec![first];
    if rng.random_bool(0.5) {
        let second = rng.random_range(0..replica);
        if second != first {
            holders.push(second);
        } else if first != 0 {
            holders.push(0);
        }
    }
    holders
}
