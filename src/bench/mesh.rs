//! `bench mesh`: what routing one origin's pages over a mesh costs, from the mesh simulator
//! (`pagemesh-sim mesh`, the service's own routing decisions over simulated WAN links of
//! 10–100 ms), beside flooding on the same graphs and seeds.
//!
//! For each graph (a 3×3 grid, and random graphs of degree 4 with 25 and 100 nodes) and seed,
//! the origin appends a page every 10 ms for 6 s; pages after a 2 s warm-up are counted. The
//! tree's cost is page transfers per page (N − 1 is the least: each node gets each page once);
//! flooding with visited lists costs 2E − (N − 1) on the same graph. Delay is from the append to
//! the last node holding the page; flooding's is the longest shortest path (the best any
//! flooding can do). A row aggregates its seeds: mean transfers, median of the seeds' p50
//! delays, the largest p99. *Stretch* is how much longer than the shortest path each node's way
//! from the origin is at the end (mean over nodes and seeds; 1.0 is the best), with the
//! routing's speed grafts (`route::Graft::Faster`) and, the baseline on the same seeds, without
//! them. These are simulated figures, so they are the same on any machine.

use std::time::Duration;

use pagemesh_sim::mesh::{run_mesh, MeshOutcome, MeshScenario, Topology};
use serde::Serialize;

/// One graph's figures over its seeds.
#[derive(Clone, Debug, Serialize)]
pub struct MeshMeasurement {
    /// `grid-3x3`, `random-25` or `random-100`.
    pub graph: String,
    /// Nodes.
    pub nodes: usize,
    /// Links, averaged over the seeds.
    pub links: f64,
    /// Seeds run.
    pub seeds: u64,
    /// The tree's page transfers per page.
    pub tree_transfers_per_page: f64,
    /// Flooding's: 2E − (N − 1).
    pub flooding_transfers_per_page: f64,
    /// The tree's transfers per page over N − 1 (1.0 is the least possible; the target is ≤ 1.2).
    pub tree_over_n_minus_1: f64,
    /// Delay to the last node, p50 (median over the seeds), milliseconds.
    pub tree_last_node_p50_ms: f64,
    /// Delay to the last node, p99 (largest over the seeds), milliseconds.
    pub tree_last_node_p99_ms: f64,
    /// Flooding's delay to the last node (the longest shortest path; median over the seeds).
    pub flooding_last_node_ms: f64,
    /// The tree's way from the origin over the shortest path's, mean over nodes and seeds.
    pub stretch: f64,
    /// The same without grafts for speed (only off stalls), on the same seeds.
    pub stretch_without_speed_grafts: f64,
    /// Delay to the last node, p50, without grafts for speed, milliseconds.
    pub last_node_p50_without_speed_grafts_ms: f64,
    /// Moves for speed per seed.
    pub speed_grafts_per_seed: f64,
    /// Invariants the simulator found broken (0 when routing is right).
    pub violations: usize,
}

/// The graphs `bench mesh` measures.
pub fn graphs() -> Vec<(String, Topology)> {
    vec![
        (
            "grid-3x3".into(),
            Topology::Grid {
                width: 3,
                height: 3,
            },
        ),
        (
            "random-25".into(),
            Topology::Random {
                nodes: 25,
                degree: 4,
            },
        ),
        (
            "random-100".into(),
            Topology::Random {
                nodes: 100,
                degree: 4,
            },
        ),
    ]
}

/// Runs `seeds` seeds of `topology` without faults and aggregates them.
pub fn measure(graph: &str, topology: Topology, seeds: u64) -> MeshMeasurement {
    let outcomes: Vec<_> = (0..seeds.max(1))
        .map(|seed| run_mesh(&MeshScenario::new(seed, topology, false)))
        .collect();
    let baseline: Vec<_> = (0..seeds.max(1))
        .map(|seed| {
            run_mesh(&MeshScenario {
                switch_lead: Duration::MAX,
                ..MeshScenario::new(seed, topology, false)
            })
        })
        .collect();
    let count = outcomes.len() as f64;
    let mean_of = |outcomes: &[MeshOutcome], f: fn(&MeshOutcome) -> f64| {
        outcomes.iter().map(f).sum::<f64>() / count
    };
    let mean = |f: fn(&MeshOutcome) -> f64| mean_of(&outcomes, f);
    let median_of = |outcomes: &[MeshOutcome], f: fn(&MeshOutcome) -> Duration| {
        let mut values: Vec<Duration> = outcomes.iter().map(f).collect();
        values.sort_unstable();
        values[values.len() / 2].as_secs_f64() * 1e3
    };
    let median = |f: fn(&MeshOutcome) -> Duration| median_of(&outcomes, f);
    let nodes = topology.nodes();
    let tree = mean(|o| o.transfers_per_page);
    MeshMeasurement {
        graph: graph.into(),
        nodes,
        links: mean(|o| o.edges as f64),
        seeds: outcomes.len() as u64,
        tree_transfers_per_page: tree,
        flooding_transfers_per_page: mean(|o| o.flooding_per_page),
        tree_over_n_minus_1: tree / (nodes as f64 - 1.0),
        tree_last_node_p50_ms: median(|o| o.last_node_p50),
        tree_last_node_p99_ms: outcomes
            .iter()
            .map(|o| o.last_node_p99.as_secs_f64() * 1e3)
            .fold(0.0, f64::max),
        flooding_last_node_ms: median(|o| o.flooding_last_node),
        stretch: mean(|o| o.stretch),
        stretch_without_speed_grafts: mean_of(&baseline, |o| o.stretch),
        last_node_p50_without_speed_grafts_ms: median_of(&baseline, |o| o.last_node_p50),
        speed_grafts_per_seed: mean(|o| o.faster as f64),
        violations: outcomes
            .iter()
            .chain(&baseline)
            .map(|o| o.violations.len())
            .sum(),
    }
}
