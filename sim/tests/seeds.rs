//! The simulator in `cargo test`: 200 seeds hold every invariant, a seed replays identically,
//! and the seeds exercise what they must (a run without faults or snapshots proves little).

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
        let s = &outcome.stats;
        sum.commits += s.commits;
        sum.replicated_released += s.replicated_released;
        sum.replicated_timeouts += s.replicated_timeouts;
        sum.resets += s.resets;
        sum.partitions += s.partitions;
        sum.crashes += s.crashes;
        sum.ring_lag_drops += s.ring_lag_drops;
        sum.write_timeouts += s.write_timeouts;
        sum.ring_to_binlog += s.ring_to_binlog;
        sum.binlog_batches += s.binlog_batches;
        sum.restores += s.restores;
        sum.ingest_stalls += s.ingest_stalls;
        sum.commits_deferred += s.commits_deferred;
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
