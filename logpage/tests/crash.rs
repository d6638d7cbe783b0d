//! The ring survives SIGKILL: nothing committed is lost, nothing torn is kept.
//!
//! This test binary is its own child (the harness is `pagemesh-testkit`). The parent runs rounds:
//! it starts a copy of itself in writer mode on a ring file, lets it append for a random 20–250 ms,
//! and kills it with SIGKILL. The child
//! runs two writer threads appending records of 1 B to 20 KB whose content derives from
//! `(round, thread, index)`, and a consumer that releases pages lagging 16 behind, so the 64-page
//! ring wraps many times. After `wait_committed` returns for a record, the child reports it.
//!
//! After each kill the parent reopens the ring and checks that every recovered page validates,
//! every record read from it is intact, each thread's records are in order, and every record the
//! child reported committed is present unless its page was released (below the recovered start).
//! The next round's child continues the same log, so recovery is also checked to leave a log that
//! can be appended to and recovered again. `PAGEMESH_CRASH_SEED` picks the seed.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::{check_record, make_record};
use pagemesh_logpage::{Log, LogOptions, RecordReader};
use rand::{rngs::SmallRng, Rng, SeedableRng};

const CHILD_ENV: &str = "PAGEMESH_CRASH_CHILD";
const SLOTS: u64 = 64;
const ROUNDS: u32 = 24;
const THREADS: u32 = 2;

fn main() -> ExitCode {
    if let Some(args) = pagemesh_testkit::child_args(CHILD_ENV) {
        let [dir, round] = &args[..] else {
            panic!("child arguments: DIR ROUND, not {args:?}")
        };
        child(dir, round.parse().expect("round number"));
        return ExitCode::SUCCESS;
    }
    pagemesh_testkit::run_tests([("committed_records_survive_sigkill", rounds as fn())])
}

/// The parent: kill rounds on one ring file, each verified.
fn rounds() {
    let seed = pagemesh_testkit::seed();
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let mut checked = 0usize;
    for round in 0..ROUNDS {
        let reported = run_child(
            dir.path(),
            round,
            Duration::from_millis(rng.random_range(20..250)),
        );
        checked += verify(dir.path(), round, &reported);
    }
    assert!(
        checked > ROUNDS as usize,
        "too few commits verified ({checked}) for the test to mean anything"
    );
    println!(
        "crash: {ROUNDS} rounds, {checked} reported commits verified, seed {seed}, {:?}",
        started.elapsed()
    );
}

/// Writer mode: append until killed.
fn child(dir: &str, round: u32) {
    let log = Log::open(dir, LogOptions::new().slots(SLOTS)).expect("child opens log");
    let mut cursor = log.cursor(log.recovered().start_lsn).expect("cursor");
    std::thread::scope(|s| {
        for thread in 0..THREADS {
            let log = log.clone();
            s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(u64::from(round * 16 + thread));
                let writer = round * 16 + thread;
                for index in 0.. {
                    let len = if rng.random_ratio(1, 8) {
                        rng.random_range(4_000..20_000)
                    } else {
                        rng.random_range(8..400)
                    };
                    let pos = log
                        .append(&make_record(writer, index, len))
                        .expect("append");
                    if rng.random_ratio(1, 4) {
                        log.wait_committed(pos, None).expect("wait");
                        let (writer, index) = (u64::from(writer), u64::from(index));
                        pagemesh_testkit::report([writer, index, pos.lsn_last]);
                    }
                }
            });
        }
        loop {
            cursor.wait_ready(None).expect("consumer");
            while cursor.next_ready().expect("page").is_some() {}
            let lag_end = cursor.position().saturating_sub(16);
            cursor.release(lag_end);
        }
    });
}

/// Runs one child for `life`, kills it, and returns what it reported committed.
fn run_child(dir: &Path, round: u32, life: Duration) -> Vec<(u32, u32, u64)> {
    let args = [dir.display().to_string(), round.to_string()];
    pagemesh_testkit::run_child(CHILD_ENV, args, life)
        .into_iter()
        .map(|[writer, index, lsn]| (writer as u32, index as u32, lsn))
        .collect()
}

/// Reopens the ring after a kill and checks it against what the child reported.
fn verify(dir: &Path, round: u32, reported: &[(u32, u32, u64)]) -> usize {
    let log = Log::open(dir, LogOptions::new().slots(SLOTS)).expect("reopen after kill");
    let recovered = log.recovered();
    let mut cursor = log
        .cursor(recovered.start_lsn)
        .expect("cursor at recovered start");
    let mut reader = RecordReader::new();
    let mut found: HashSet<(u32, u32)> = HashSet::new();
    let mut last_index: HashMap<u32, u32> = HashMap::new();
    while let Some(page) = cursor.next_ready().expect("recovered pages validate") {
        reader
            .feed(page, |record| {
                let (writer, index) = check_record(&record.bytes);
                if let Some(previous) = last_index.insert(writer, index) {
                    assert!(
                        index > previous,
                        "round {round}: writer {writer} out of order"
                    );
                }
                found.insert((writer, index));
            })
            .unwrap_or_else(|e| panic!("round {round}: recovered log does not decode: {e}"));
    }
    assert_eq!(cursor.position(), recovered.end_lsn);
    let mut checked = 0;
    for &(writer, index, lsn_last) in reported {
        assert!(
            lsn_last < recovered.end_lsn,
            "round {round}: record {writer}/{index} on page {lsn_last} reported committed, \
             log recovered only to {}",
            recovered.end_lsn
        );
        // A record whose first page was released may be partly gone; one wholly retained must be there.
        if lsn_last >= recovered.start_lsn + (20_000 / 4048 + 1) {
            assert!(
                found.contains(&(writer, index)),
                "round {round}: committed record {writer}/{index} lost"
            );
            checked += 1;
        }
    }
    checked
}
