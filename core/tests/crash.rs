//! The store survives SIGKILL: no acknowledged commit is lost, no commit is half applied, and
//! recovery is idempotent.
//!
//! This test binary is its own child (the harness is `pagemesh-testkit`). The parent runs 20 rounds on one database directory: it
//! starts a copy of itself in writer mode, lets it run for a random 30–300 ms, and kills it with
//! SIGKILL. The child opens the database with a 64-page ring (so the ring wraps many times) and
//! runs two threads that commit `WriteBatch`es, one after another, thread 0 with `Durable` and
//! thread 1 with `Memory` (which also promises to survive a process crash). Each
//! batch puts or deletes 1–4 keys of the thread's own (keys start with `t{thread}-`, over two
//! tables, with few enough keys that overwrites are common); values are 1 B to 20 KB, sometimes
//! 100 KB so one record spans many pages. A batch's content derives from
//! `(seed, round, thread, index)`. After each commit returns, the child reports
//! `thread index seq` in one short write.
//!
//! After a kill the parent reopens the database, waits for recovery to apply what was only in the
//! ring (one `Applied` commit to a table of its own), and checks each thread's keys against a
//! model: the state it checked last plus a prefix of each round's batches since. A thread commits
//! its next batch only after the previous one returned and was printed, so of each round the
//! prefix is either the `n` batches it reported or `n + 1` (one acknowledged, or only in the ring,
//! but not yet printed). The keys, value bytes and `seq`s must match exactly: a reported batch's
//! values carry the `seq` its commit returned; an unreported one's all carry one `seq`, above the
//! last reported. Then it drops and reopens the database twice more and checks the state is
//! unchanged, both at once and after another `Applied` commit (recovery is idempotent).
//!
//! A third of the time the parent skips that check, up to two rounds in a row, so the next child
//! starts on a ring nobody recovered and recovers it itself; half of those children are killed
//! after only 2–30 ms, while they recover. The check that follows covers all their rounds.
//!
//! Before the rounds, one round each is run on 80 fresh directories with the kill at 0–6 ms, so
//! that it lands while the database's files are being created: the parent must still open each
//! one and find a prefix of what the child committed.
//!
//! `PAGEMESH_CRASH_SEED` picks the seed; a watchdog aborts if a round hangs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagemesh_core::{Database, Durability, Options, WriteBatch};
use rand::{rngs::SmallRng, Rng, SeedableRng};

const CHILD_ENV: &str = "PAGEMESH_CORE_CRASH_CHILD";
const SLOTS: u64 = 64;
const ROUNDS: u32 = 20;
/// Kills within the child's first milliseconds, each on a fresh directory.
const CREATION_ROUNDS: u32 = 80;
const THREADS: u32 = 2;
/// The tables the children write.
const TABLES: [&str; 2] = ["alpha", "beta"];
/// The parent's table: its sync commits land here, outside the model.
const SYNC_TABLE: &str = "sync";
/// Keys per thread and table: few, so batches overwrite and delete earlier values.
const KEYS_PER_THREAD: u32 = 24;
/// Most value bytes in one batch: keeps a record under the 64-page ring's limit (half the ring).
const BATCH_VALUE_BYTES_MAX: usize = 110_000;
/// Batches per child thread: far more than fit in a child's life; bounds the loop anyway.
const INDEX_MAX: u32 = 1_000_000;
/// The longest one round may take before the watchdog declares a hang.
const ROUND_TIME_MAX: Duration = Duration::from_secs(30);
/// Most children run one after another before the parent recovers and checks.
const CHAIN_MAX: usize = 3;
/// `SEQ_UNKNOWN - j` stands for the `seq` of the one batch per thread and run `j` that may be
/// applied but was not reported.
const SEQ_UNKNOWN: u64 = u64::MAX;

/// A thread's keys, `(table, key)` → `(value, seq)`.
type State = BTreeMap<(String, Vec<u8>), (Vec<u8>, u64)>;

fn main() -> ExitCode {
    if let Some(args) = pagemesh_testkit::child_args(CHILD_ENV) {
        let [dir, round, seed] = &args[..] else {
            panic!("child arguments: DIR ROUND SEED, not {args:?}")
        };
        child(
            Path::new(dir),
            round.parse().expect("round"),
            seed.parse().expect("seed"),
        );
        return ExitCode::SUCCESS;
    }
    pagemesh_testkit::run_tests([("acknowledged_commits_survive_sigkill", rounds as fn())])
}

/// The parent: kill rounds on a fresh directory each, then chained rounds on one, each verified.
fn rounds() {
    let seed = pagemesh_testkit::seed();
    let mut rng = SmallRng::seed_from_u64(seed);
    let temp = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let deadline = watchdog(started);
    for attempt in 0..CREATION_ROUNDS {
        deadline.store(deadline_ms(started, ROUND_TIME_MAX), Ordering::SeqCst);
        let fresh = temp.path().join(format!("created-{attempt}"));
        let round = ROUNDS + attempt; // the batches differ from every main round's
        let life = Duration::from_micros(rng.random_range(0..6_000));
        let run = Run {
            round,
            reported: run_child(&fresh, round, seed, life),
        };
        let mut model = vec![Model::default(); THREADS as usize];
        verify(&fresh, seed, &[run], &mut model);
    }
    let dir = temp.path().join("rounds");
    let mut model = vec![Model::default(); THREADS as usize];
    let (mut reported_total, mut unreported_total, mut chained) = (0, 0, 0);
    let mut pending: Vec<Run> = Vec::new();
    for round in 0..ROUNDS {
        deadline.store(deadline_ms(started, ROUND_TIME_MAX), Ordering::SeqCst);
        // A child that starts on a ring nobody recovered recovers it itself: kill some early.
        let life = if !pending.is_empty() && rng.random_ratio(1, 2) {
            Duration::from_millis(rng.random_range(2..30))
        } else {
            Duration::from_millis(rng.random_range(30..300))
        };
        let reported = run_child(&dir, round, seed, life);
        pending.push(Run { round, reported });
        if round + 1 == ROUNDS || pending.len() == CHAIN_MAX || rng.random_ratio(2, 3) {
            let (reported, unreported) = verify(&dir, seed, &pending, &mut model);
            reported_total += reported;
            unreported_total += unreported;
            chained += pending.len() - 1;
            pending.clear();
        }
    }
    deadline.store(u64::MAX, Ordering::SeqCst);
    assert!(
        reported_total > 10 * ROUNDS as usize,
        "too few commits verified ({reported_total}) for the test to mean anything"
    );
    println!(
        "crash: {CREATION_ROUNDS} kills while creating, {ROUNDS} rounds ({chained} started \
         unrecovered), {reported_total} reported commits verified, {unreported_total} \
         unreported found applied, seed {seed}, {:?}",
        started.elapsed()
    );
}

/// One change of a batch.
#[derive(Clone, Debug)]
enum Change {
    Put {
        table: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: &'static str,
        key: Vec<u8>,
    },
}

/// The changes of batch `index` of `thread` in `round`: 1–4 puts and deletes of the thread's keys.
fn changes(seed: u64, round: u32, thread: u32, index: u32) -> Vec<Change> {
    let stream = u64::from(round) << 40 | u64::from(thread) << 32 | u64::from(index);
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream);
    let mut value_bytes_left = BATCH_VALUE_BYTES_MAX;
    let mut out = Vec::new();
    for _ in 0..rng.random_range(1..=4) {
        let table = TABLES[rng.random_range(0..TABLES.len())];
        let key = format!("t{thread}-k{:02}", rng.random_range(0..KEYS_PER_THREAD)).into_bytes();
        if rng.random_ratio(1, 5) {
            out.push(Change::Delete { table, key });
            continue;
        }
        let len: usize = if rng.random_ratio(1, 24) {
            100_000
        } else if rng.random_ratio(1, 6) {
            rng.random_range(400..=20_000)
        } else {
            rng.random_range(1..400)
        };
        let len = len.min(value_bytes_left).max(1);
        value_bytes_left = value_bytes_left.saturating_sub(len);
        let mut value = vec![0u8; len];
        rng.fill(&mut value[..]);
        out.push(Change::Put { table, key, value });
    }
    out
}

fn batch_of(changes: &[Change]) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for change in changes {
        match change {
            Change::Put { table, key, value } => batch.put(table, key, value),
            Change::Delete { table, key } => batch.delete(table, key),
        }
        .expect("valid change");
    }
    batch
}

/// Applies `changes` to `state` as the store does: in order, values carrying `seq`.
fn apply(state: &mut State, changes: &[Change], seq: u64) {
    for change in changes {
        match change {
            Change::Put { table, key, value } => {
                state.insert((table.to_string(), key.clone()), (value.clone(), seq));
            }
            Change::Delete { table, key } => {
                state.remove(&(table.to_string(), key.clone()));
            }
        }
    }
}

/// Thread 0 commits `Durable`, thread 1 `Memory`: both promise to survive a process crash, and
/// `Memory` returns before the record is applied, racing ahead of the applier through the ring.
fn durability_of(thread: u32) -> Durability {
    if thread.is_multiple_of(2) {
        Durability::Durable
    } else {
        Durability::Memory
    }
}

/// Writer mode: commit batches until killed.
fn child(dir: &Path, round: u32, seed: u64) {
    let db = Database::open(dir, Options::new().ring_slots(SLOTS)).expect("child opens database");
    std::thread::scope(|s| {
        for thread in 0..THREADS {
            let db = &db;
            s.spawn(move || {
                for index in 0..INDEX_MAX {
                    let batch = batch_of(&changes(seed, round, thread, index));
                    let seq = db.commit(&batch, durability_of(thread)).expect("commit");
                    pagemesh_testkit::report([u64::from(thread), u64::from(index), seq]);
                }
            });
        }
    });
}

/// Runs one child for `life`, kills it, and returns what each thread reported committed:
/// `(index, seq)` in order.
fn run_child(dir: &Path, round: u32, seed: u64, life: Duration) -> Vec<Vec<(u32, u64)>> {
    let args = [
        dir.display().to_string(),
        round.to_string(),
        seed.to_string(),
    ];
    let mut reported: Vec<Vec<(u32, u64)>> = vec![Vec::new(); THREADS as usize];
    for [thread, index, seq] in pagemesh_testkit::run_child(CHILD_ENV, args, life) {
        reported[thread as usize].push((index as u32, seq));
    }
    reported
}

/// What one child reported committed: per thread, `(index, seq)` of each batch, in order.
struct Run {
    round: u32,
    reported: Vec<Vec<(u32, u64)>>,
}

/// What the parent knows of one thread: its keys, and the highest `seq` it was told of.
#[derive(Clone, Debug, Default)]
struct Model {
    state: State,
    /// `None` before the first commit (whose `seq` may be 0).
    seq_floor: Option<u64>,
}

/// Reopens the database after the kills of `runs` (children that ran one after another with no
/// recovery by the parent in between) and checks every thread's keys against the model; moves the
/// model to the state found. Returns (reported commits checked, unreported commits found).
fn verify(dir: &Path, seed: u64, runs: &[Run], model: &mut [Model]) -> (usize, usize) {
    let round = runs.last().expect("a run to verify").round;
    let found = {
        let db = Database::open(dir, Options::new().ring_slots(SLOTS)).expect("reopen after kill");
        let sync_seq = sync(&db, round);
        let found = read_threads(&db, round);
        for (key, (_, seq)) in found.iter().flat_map(|state| state.iter()) {
            assert!(
                *seq < sync_seq,
                "round {round}: {key:?} has seq {seq}, after the parent's sync commit {sync_seq}"
            );
        }
        let tables = db.tables();
        assert!(
            tables
                .iter()
                .all(|t| t == SYNC_TABLE || TABLES.contains(&t.as_str())),
            "round {round}: unexpected tables {tables:?}"
        );
        found
    };
    let (mut checked, mut unreported) = (0, 0);
    for thread in 0..THREADS as usize {
        let (next, found_unreported) =
            match_thread(seed, thread, runs, &model[thread], &found[thread]);
        checked += runs
            .iter()
            .map(|run| run.reported[thread].len())
            .sum::<usize>();
        unreported += found_unreported;
        model[thread] = next;
    }
    check_reopen_idempotent(dir, round, &found);
    (checked, unreported)
}

/// Finds which of `thread`'s batches `found` holds: of each run, the `n` reported or `n + 1`.
/// Returns the model moved there and how many unreported batches (with a visible effect) it holds.
/// Panics if no combination matches.
fn match_thread(
    seed: u64,
    thread: usize,
    runs: &[Run],
    before: &Model,
    found: &State,
) -> (Model, usize) {
    let rounds: Vec<u32> = runs.iter().map(|run| run.round).collect();
    let mut seq_floor = before.seq_floor;
    for run in runs {
        for (expected_index, &(index, seq)) in run.reported[thread].iter().enumerate() {
            assert_eq!(
                index as usize, expected_index,
                "round {}: thread {thread} reported out of order",
                run.round
            );
            assert!(
                seq_floor.is_none_or(|floor| seq > floor),
                "round {}: thread {thread} batch {index} has seq {seq}, not above {seq_floor:?}",
                run.round
            );
            seq_floor = Some(seq);
        }
    }
    for with_unreported in (0..1u32 << runs.len()).rev() {
        let (state, floors) = model_state(seed, thread, runs, before, with_unreported);
        if let Some(learned) = matches(found, &state, &floors) {
            let model = Model {
                state: found.clone(),
                seq_floor: learned.iter().copied().chain(seq_floor).max(),
            };
            return (model, learned.len());
        }
    }
    let reported: Vec<usize> = runs.iter().map(|run| run.reported[thread].len()).collect();
    panic!(
        "rounds {rounds:?}: thread {thread} reported {reported:?} batches; the store matches \
         neither them nor them with the next unreported one. Differences from the reported \
         state: {}",
        describe_diff(found, &model_state(seed, thread, runs, before, 0).0)
    );
}

/// The model after `runs`: each run's reported batches, then its next one too if its bit is set
/// in `with_unreported`, with the marker `SEQ_UNKNOWN - j` for run `j`. Returns it, and for each
/// run the `seq` that marker's must exceed.
fn model_state(
    seed: u64,
    thread: usize,
    runs: &[Run],
    before: &Model,
    with_unreported: u32,
) -> (State, Vec<Option<u64>>) {
    let mut state = before.state.clone();
    let mut seq_floor = before.seq_floor;
    let mut floors = Vec::with_capacity(runs.len());
    for (j, run) in runs.iter().enumerate() {
        let reported = &run.reported[thread];
        for &(index, seq) in reported {
            apply(
                &mut state,
                &changes(seed, run.round, thread as u32, index),
                seq,
            );
            seq_floor = Some(seq);
        }
        floors.push(seq_floor);
        if with_unreported & (1 << j) != 0 {
            let next = changes(seed, run.round, thread as u32, reported.len() as u32);
            apply(&mut state, &next, SEQ_UNKNOWN - j as u64);
        }
    }
    (state, floors)
}

/// Whether `found` equals `model`, where the marker `SEQ_UNKNOWN - j` stands for one `seq` above
/// `floors[j]`, shared by every value so marked. Returns the `seq`s the markers stood for.
fn matches(found: &State, model: &State, floors: &[Option<u64>]) -> Option<Vec<u64>> {
    if found.len() != model.len() {
        return None;
    }
    let markers = SEQ_UNKNOWN - floors.len() as u64 + 1..=SEQ_UNKNOWN;
    let mut learned: BTreeMap<u64, u64> = BTreeMap::new();
    for ((found_key, (found_value, found_seq)), (key, (value, seq))) in found.iter().zip(model) {
        if found_key != key || found_value != value {
            return None;
        }
        if markers.contains(seq) {
            let floor = floors[(SEQ_UNKNOWN - seq) as usize];
            let above_floor = floor.is_none_or(|floor| *found_seq > floor);
            if !above_floor || *learned.entry(*seq).or_insert(*found_seq) != *found_seq {
                return None;
            }
        } else if found_seq != seq {
            return None;
        }
    }
    Some(learned.into_values().collect())
}

/// The first few keys where `found` and `expected` differ.
fn describe_diff(found: &State, expected: &State) -> String {
    let show = |entry: Option<&(Vec<u8>, u64)>| match entry {
        Some((value, seq)) => format!("{} B at seq {seq}", value.len()),
        None => "absent".to_string(),
    };
    let mut keys: Vec<&(String, Vec<u8>)> = found.keys().chain(expected.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|key| found.get(*key) != expected.get(*key))
        .take(6)
        .map(|key| {
            format!(
                "\n  {}/{}: found {}, expected {}",
                key.0,
                String::from_utf8_lossy(&key.1),
                show(found.get(key)),
                show(expected.get(key))
            )
        })
        .collect()
}

/// Commits to the parent's own table with `Applied`: once it returns, everything before it in the
/// log (all that recovery found in the ring) is applied too. Returns its `seq`.
fn sync(db: &Database, round: u32) -> u64 {
    let mut batch = WriteBatch::new();
    batch
        .put(SYNC_TABLE, b"round", &round.to_le_bytes())
        .expect("sync batch");
    db.commit(&batch, Durability::Applied)
        .unwrap_or_else(|e| panic!("round {round}: sync commit after reopen failed: {e}"))
}

/// Every key of the children's tables, by thread.
fn read_threads(db: &Database, round: u32) -> Vec<State> {
    let mut threads = vec![State::new(); THREADS as usize];
    let snapshot = db.read().expect("snapshot");
    for table in TABLES {
        for entry in snapshot.prefix(table, b"").expect("scan") {
            let (key, value) = entry.expect("entry");
            let thread = std::str::from_utf8(key)
                .ok()
                .and_then(|k| {
                    k.strip_prefix('t')?
                        .split_once('-')?
                        .0
                        .parse::<usize>()
                        .ok()
                })
                .filter(|&t| t < THREADS as usize)
                .unwrap_or_else(|| panic!("round {round}: stray key {key:?} in {table}"));
            threads[thread].insert(
                (table.to_string(), key.to_vec()),
                (value.bytes.to_vec(), value.seq),
            );
        }
    }
    threads
}

/// Reopens the database twice more: the state must be what the first reopen recovered, right after
/// opening and after another applied commit.
fn check_reopen_idempotent(dir: &Path, round: u32, recovered: &[State]) {
    for reopen in 0..2 {
        let db = Database::open(dir, Options::new().ring_slots(SLOTS)).expect("reopen again");
        assert!(
            read_threads(&db, round) == recovered,
            "round {round}: reopen {reopen} after recovery shows a different state at once"
        );
        sync(&db, round);
        assert!(
            read_threads(&db, round) == recovered,
            "round {round}: reopen {reopen} after recovery shows a different state after a commit"
        );
    }
}

/// Aborts the process if the deadline it watches (milliseconds since the start) passes.
fn watchdog(started: Instant) -> Arc<AtomicU64> {
    let deadline = Arc::new(AtomicU64::new(u64::MAX));
    let watched = Arc::clone(&deadline);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed().as_millis() as u64 > watched.load(Ordering::SeqCst) {
            eprintln!("crash: a round took longer than {ROUND_TIME_MAX:?}: hang");
            std::process::abort();
        }
    });
    deadline
}

fn deadline_ms(started: Instant, after: Duration) -> u64 {
    (started.elapsed() + after).as_millis() as u64
}
