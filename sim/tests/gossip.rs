//! The gossip simulator in `cargo test`: membership views fed by `route::Members` stay within
//! their bound, forget nodes that left (their last heartbeat is never passed round as fresh),
//! and once the faults stop every node knows every other and what it serves (and its name,
//! where every node speaks protocol version 5).

use pagemesh_sim::gossip::{run_gossip, GossipScenario};
use pagemesh_sim::mesh::Topology;

#[test]
fn views_stay_bounded_forget_departed_nodes_and_converge() {
    let (mut departures, mut refused, mut settled) = (0, 0, 0);
    let (mut mixed, mut names) = (0, 0);
    for seed in 0..60 {
        let nodes = if seed % 10 == 0 { 100 } else { 25 };
        let topology = Topology::Random { nodes, degree: 4 };
        let outcome = run_gossip(&GossipScenario::new(seed, topology));
        assert!(
            outcome.violations.is_empty(),
            "seed {seed}: {:?}\n  replay: cargo run --release -p pagemesh-sim -- gossip --nodes {nodes} --first {seed} --seeds 1",
            outcome.violations
        );
        assert!(outcome.largest_frame <= pagemesh_net::proto::PEERS_MAX);
        departures += outcome.departures_checked;
        refused += outcome.refused;
        settled += u64::from(outcome.settle_rounds > 0);
        mixed += u64::from(outcome.old_nodes > 0);
        names += outcome.names_checked;
    }
    // What the seeds exercised: nodes that left and had to be forgotten, views too small for
    // the mesh, and meshes that settled after the faults.
    assert!(departures > 20, "departures checked: {departures}");
    assert!(refused > 0, "news refused by full views");
    assert!(settled > 30, "seeds that settled: {settled}");
    // Meshes where some nodes speak protocol version 4 (no names), and names checked.
    assert!(
        (10..50).contains(&mixed),
        "seeds with version 4 nodes: {mixed}"
    );
    assert!(names > 10_000, "named entries checked: {names}");
}

#[test]
fn a_gossip_seed_replays_identically() {
    let topology = Topology::Random {
        nodes: 25,
        degree: 4,
    };
    let first = run_gossip(&GossipScenario::new(3, topology));
    let second = run_gossip(&GossipScenario::new(3, topology));
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_ne!(
        first.trace_hash,
        run_gossip(&GossipScenario::new(4, topology)).trace_hash
    );
}
