//! Durable commits survive a crash and a power loss: every record below the durable watermark the
//! child last reported is recovered intact, whatever happened to the pages beyond it.
//!
//! This test binary is its own child (the harness is `pagemesh-testkit`). The parent runs 50
//! rounds: it starts a copy of itself in writer mode on a ring file, lets it run for a random
//! 20–100 ms, and kills it with SIGKILL. The child runs a `Flusher`, two writer threads appending
//! self-checking records of 8 B to 20 KB, and a consumer that releases pages only below the durable
//! watermark and 16 behind its reads, so the 64-page ring wraps. After `wait_durable` returns for
//! a record (one in three), the child reports the record and the durable watermark it reads then.
//!
//! SIGKILL keeps the page cache, so everything the child wrote is still in the file. The parent
//! then plays the power loss: each slot that holds no page below the last reported durable
//! watermark is, with probability 1/2, garbled, zeroed or torn (the sync that would have covered
//! it may not have run). It reopens the ring and checks that every recovered page validates, every
//! record in it is intact, each writer's records are in order and without holes, the recovered log
//! reaches the reported watermark, and every reported record is present unless the page it started
//! on was released. The next round's child continues the same log, so recovery must also leave a
//! log that can be appended to, made durable and recovered again. `PAGEMESH_CRASH_SEED` picks the
//! seed.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::{check_record, damage_beyond, make_record, Damage};
use pagemesh_logpage::{Log, LogOptions, RecordReader, PAYLOAD_SIZE};
use rand::{rngs::SmallRng, Rng, SeedableRng};

const CHILD_ENV: &str = "PAGEMESH_DURABLE_CRASH_CHILD";
const SLOTS: u64 = 64;
const ROUNDS: u32 = 50;
const THREADS: u32 = 2;
const RECORD_LEN_MAX: usize = 20_000;

fn main() -> ExitCode {
    if let Some(args) = pagemesh_testkit::child_args(CHILD_ENV) {
        let [dir, round] = &args[..] else {
            panic!("child arguments: DIR ROUND, not {args:?}")
        };
        child(dir, round.parse().expect("round number"));
        return ExitCode::SUCCESS;
    }
    pagemesh_testkit::run_tests([("durable_records_survive_a_power_loss", rounds as fn())])
}

/// The parent: kill rounds on one log, each followed by the power loss it plays and a check.
fn rounds() {
    let seed = pagemesh_testkit::seed();
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let (mut checked, mut damaged) = (0, 0);
    for round in 0..ROUNDS {
        let life = Duration::from_millis(rng.random_range(20..100));
        let reported = run_child(dir.path(), round, life);
        let durable_lsn = reported.iter().map(|r| r.durable_lsn).max().unwrap_or(0);
        damaged += damage_beyond(dir.path(), SLOTS, durable_lsn, &Damage::ALL, 0.5, &mut rng);
        checked += verify(dir.path(), round, durable_lsn, &reported);
    }
    assert!(
        checked > ROUNDS as usize,
        "too few durable commits verified ({checked}) for the test to mean anything"
    );
    println!(
        "durable_crash: {ROUNDS} rounds, {checked} durable commits verified, {damaged} pages \
         damaged beyond the durable watermark, seed {seed}, {:?}",
        started.elapsed()
    );
}

/// Writer mode: append, flush and report until killed.
fn child(dir: &str, round: u32) {
    let log = Log::open(dir, LogOptions::new().slots(SLOTS)).expect("child opens log");
    let _flusher = log.spawn_flusher().expect("flusher");
    let mut cursor = log.cursor(log.recovered().start_lsn).expect("cursor");
    std::thread::scope(|s| {
        for thread in 0..THREADS {
            let log = log.clone();
            s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(u64::from(round * 16 + thread));
                let writer = round * 16 + thread;
                for index in 0.. {
                    let len = if rng.random_ratio(1, 8) {
                        rng.random_range(4_000..RECORD_LEN_MAX)
                    } else {
                        rng.random_range(8..400)
                    };
                    let pos = log
                        .append(&make_record(writer, index, len))
                        .expect("append");
                    if rng.random_ratio(1, 3) {
                        assert!(log.wait_durable(pos, None).expect("wait_durable"));
                        let durable_lsn = log.durable_lsn();
                        assert!(durable_lsn > pos.lsn_last);
                        pagemesh_testkit::report([
                            u64::from(writer),
                            u64::from(index),
                            pos.lsn_last,
                            durable_lsn,
                        ]);
                    }
                }
            });
        }
        loop {
            cursor.wait_ready(None).expect("consumer");
            while cursor.next_ready().expect("page").is_some() {}
            let release = cursor.position().saturating_sub(16).min(log.durable_lsn());
            cursor.release(release);
        }
    });
}

/// One record the child reported durable.
struct Reported {
    writer: u32,
    index: u32,
    lsn_last: u64,
    durable_lsn: u64,
}

/// Runs one child for `life`, kills it, and returns what it reported durable.
fn run_child(dir: &Path, round: u32, life: Duration) -> Vec<Reported> {
    let args = [dir.display().to_string(), round.to_string()];
    pagemesh_testkit::run_child(CHILD_ENV, args, life)
        .into_iter()
        .map(|[writer, index, lsn_last, durable_lsn]| Reported {
            writer: writer as u32,
            index: index as u32,
            lsn_last,
            durable_lsn,
        })
        .collect()
}

/// Reopens the ring after the kill and the damage, and checks it against what the child reported.
fn verify(dir: &Path, round: u32, durable_lsn: u64, reported: &[Reported]) -> usize {
    let log = Log::open(dir, LogOptions::new().slots(SLOTS)).expect("reopen after the damage");
    let recovered = log.recovered();
    assert!(
        recovered.end_lsn >= durable_lsn,
        "round {round}: the child reported pages below {durable_lsn} durable, the log recovered \
         only {recovered:?}"
    );
    let mut cursor = log.cursor(recovered.start_lsn).expect("cursor");
    let mut reader = RecordReader::new();
    let mut found: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    while let Some(page) = cursor.next_ready().expect("recovered pages validate") {
        reader
            .feed(page, |record| {
                let (writer, index) = check_record(&record.bytes);
                found.entry(writer).or_default().push(index);
            })
            .unwrap_or_else(|e| panic!("round {round}: recovered log does not decode: {e}"));
    }
    assert_eq!(cursor.position(), recovered.end_lsn);
    for (writer, indexes) in &found {
        for pair in indexes.windows(2) {
            assert_eq!(
                pair[1],
                pair[0] + 1,
                "round {round}: writer {writer}'s records out of order or with a hole"
            );
        }
    }
    let present: HashSet<(u32, u32)> = found
        .iter()
        .flat_map(|(&writer, indexes)| indexes.iter().map(move |&index| (writer, index)))
        .collect();
    // A record whose first page was released may be partly gone; one wholly retained must be there.
    let pages_max = (RECORD_LEN_MAX / PAYLOAD_SIZE + 1) as u64;
    let mut checked = 0;
    for record in reported {
        assert!(record.durable_lsn > record.lsn_last);
        if record.lsn_last >= recovered.start_lsn + pages_max {
            assert!(
                present.contains(&(record.writer, record.index)),
                "round {round}: durable record {}/{} on page {} lost (recovered {recovered:?})",
                record.writer,
                record.index,
                record.lsn_last
            );
            checked += 1;
        }
    }
    checked
}
