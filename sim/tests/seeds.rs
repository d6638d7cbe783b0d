//! The simulator in `cargo test`: 200 seeds hold every invariant, a seed replays identically,
//! and the seeds exercise what they must (a run without faults or snapshots proves little),
//! relays included: pages relayed, relays refusing replicas ahead of them, failovers to another
//! holder, RECEIPTS carried hop by hop and `Replicated(n)` released by nodes the origin has no
//! link to.

use std::collections::BTreeSet;

use pagemesh_sim::{run, Outcome, Scenario, Stats};

/// Seeds `cargo test` runs (CI runs 1,000 more with the release binary).
const SEEDS: u64 = 200;

/// Seeds that once failed, kept with what they found. Each must pass for good.
const REGRESSIONS: &[(u64, &str)] = &[
    // A 1 MiB PAGES frame over a 1 MB/s link took longer than the link timeout: links that
    // counted only whole frames as life timed out and re-sent the same batch forever.
    (14, "partial frames count as life"),
    // A replica whose ring was full stopped reading, heard nothing, and dropped its own link.
    (63, "a replica waiting for ring space keeps its link"),
];

fn failures(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|outcome| !outcome.violations.is_empty())
        .map(|outcome| {
            format!(
                "seed {}: {}\n  replay: cargo run --release -p pagemesh-sim -- --seed {} --verbose",
                outcome.seed,
                outcome.violations.join("; "),
                outcome.seed
            )
        })
        .collect()
}

#[test]
fn two_hundred_seeds_hold_every_invariant_and_exercise_every_path() {
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let halves: Vec<_> = [0, 1]
            .map(|half| {
                scope.spawn(move || {
                    (0..SEEDS)
                        .filter(|seed| seed % 2 == half)
                        .map(|seed| run(Scenario::from_seed(seed)))
                        .collect::<Vec<_>>()
                })
            })
            .into_iter()
            .collect();
        halves
            .into_iter()
            .flat_map(|half| half.join().expect("a simulator thread panicked"))
            .collect()
    });
    let failed = failures(&outcomes);
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // What the seeds covered, together: each of these must have happened somewhere.
    let total = outcomes.iter().fold(Stats::default(), |mut sum, outcome| {
        sum.add(&outcome.stats);
        sum
    });
    let uncovered: Vec<&str> = [
        ("commits", total.commits),
        (
            "Replicated(n) commits released by acks",
            total.replicated_released,
        ),
        ("Replicated(n) commits timed out", total.replicated_timeouts),
        ("connection resets", total.resets),
        ("partitions", total.partitions),
        ("crashes", total.crashes),
        ("links dropped by the ring-lag rule", total.ring_lag_drops),
        ("links dropped for a blocked write", total.write_timeouts),
        (
            "shippers back from the ring to the binlog",
            total.ring_to_binlog,
        ),
        ("binlog catch-up batches", total.binlog_batches),
        ("snapshots restored", total.restores),
        ("replica rings full mid-ingest", total.ingest_stalls),
        (
            "commits held back by a full origin ring",
            total.commits_deferred,
        ),
        ("pages relayed by a replica", total.relayed_pages),
        (
            "relays refusing a replica ahead of them",
            total.relay_refusals,
        ),
        ("failovers to another holder", total.failovers),
        (
            "links closed by a relay re-seeded into a new generation",
            total.relay_generation_closes,
        ),
        ("RECEIPTS frames carried upstream", total.receipts_frames),
        (
            "links of an old node, without RECEIPTS",
            total.links_without_receipts,
        ),
        ("faults that hit a serving relay", total.relay_faults),
        (
            "Replicated(n) commits released by subtree nodes",
            total.replicated_by_subtree,
        ),
        ("relays stalled (cut off, still serving)", total.stalls),
        (
            "grafts to a holder offering what the followed one lacks",
            total.grafts,
        ),
    ]
    .into_iter()
    .filter(|(_, count)| *count == 0)
    .map(|(what, _)| what)
    .collect();
    assert!(
        uncovered.is_empty(),
        "no seed exercised: {uncovered:?}; totals {total:?}"
    );
}

#[test]
fn a_seed_replays_identically() {
    // Seeds with faults of every kind, run twice each: the same trace, event for event.
    for seed in [3, 14, 63] {
        let (first, second) = (
            run(Scenario::from_seed(seed)),
            run(Scenario::from_seed(seed)),
        );
        assert_eq!(first.trace_hash, second.trace_hash, "seed {seed}");
        assert_eq!(first.stats, second.stats, "seed {seed}");
        assert!(first.stats.commits > 0);
    }
    // And different seeds are different runs.
    let hashes: BTreeSet<u64> = (100..110)
        .map(|seed| run(Scenario::from_seed(seed)).trace_hash)
        .collect();
    assert_eq!(hashes.len(), 10);
}

#[test]
fn regression_seeds_pass() {
    let outcomes: Vec<Outcome> = REGRESSIONS
        .iter()
        .map(|&(seed, _)| run(Scenario::from_seed(seed)))
        .collect();
    let failed = failures(&outcomes);
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
