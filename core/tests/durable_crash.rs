//! `Durable` commits survive a power loss: the ring is the write-ahead log, so every commit that
//! returned `Durable` is in the store after a kill that also damages the ring beyond the durable
//! watermark, and the restart takes a new epoch.
//!
//! This test binary is its own child (the harness is `pagemesh-testkit`). The parent runs 60
//! rounds on one database directory: it starts a copy of itself in writer mode, lets it run for a
//! random 20–120 ms, and kills it with SIGKILL. The child opens the database with a 64-page ring
//! (so the ring wraps and the applier's release rule matters), reports the epoch its log took,
//! and runs two threads that commit one record each, `Durable`, one after another: key
//! `r{round}-t{thread}-{index}`, a value derived from the key (16 B to 20 KB, so some records span
//! pages). After each commit returns, the thread reports `thread index seq durable_lsn` in one
//! write.
//!
//! SIGKILL keeps the page cache, so the parent then plays the power loss on the log's segments:
//! each page that is not a page below the highest durable watermark the child reported, nor
//! below what LMDB holds as applied after the power loss (the applier makes those pages durable
//! before it commits them: they are the history), is, with probability 1/2, garbled, zeroed or
//! torn (its tail zeroed: a write cut short).
//!
//! And on LMDB: each LMDB commit syncs its data pages but not its meta page (`MDB_NOMETASYNC`),
//! so a power loss may undo the newest transaction, unless an explicit sync of the environment
//! covered it. The child reports each explicit sync with the newest transaction it covered
//! (`Options::on_lmdb_sync`, called before the applier releases any ring page on its strength).
//! When the newest meta page of `data.mdb` is of a later transaction, the parent, with
//! probability 1/2, rolls LMDB back to the transaction before it, as the power loss would: it
//! lowers that meta page's transaction id below the other's, so LMDB opens at the other (LMDB
//! never reuses the pages of the transaction before the newest, so that tree is intact). This
//! is what the applier's release rule answers for: recovery then starts at the older group's
//! `binlog_next_lsn`, and every ring page from there on must still be there.
//!
//! The parent reopens the database and checks:
//!
//! - the reopen succeeds and takes an epoch above the child's (the child never stopped cleanly);
//! - after an `Applied` commit (everything recovery replays is applied before it), the applied
//!   watermark is past every reported durable watermark;
//! - every reported commit is present with its value and the `seq` its commit returned; of each
//!   thread, the keys present are a prefix of its commits (a lost page loses a suffix, never a
//!   hole), and every key of earlier rounds is still as it was.
//!
//! Then it closes the database (a clean stop), and the next child must take the parent's epoch
//! again (no new epoch after a clean stop). `PAGEMESH_CRASH_SEED` picks the seed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pagemesh_core::{Database, Durability, Options, ReadOnlyDatabase, WriteBatch};
use pagemesh_logpage::{validate, PAGE_SIZE};
use rand::{rngs::SmallRng, Rng, SeedableRng};

const CHILD_ENV: &str = "PAGEMESH_CORE_DURABLE_CRASH_CHILD";
const SLOTS: u64 = 64;
const ROUNDS: u32 = 60;
const THREADS: u64 = 2;
const TABLE: &str = "durable";
/// The first field of the child's epoch report (a thread number never is this).
const EPOCH_REPORT: u64 = u64::MAX;
/// The first field of the child's report of an explicit LMDB sync: `[LMDB_SYNC_REPORT, txn, 0, 0]`.
const LMDB_SYNC_REPORT: u64 = u64::MAX - 1;

/// `key` → `(value, seq)`.
type State = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

fn main() -> ExitCode {
    if let Some(args) = pagemesh_testkit::child_args(CHILD_ENV) {
        let [dir, round] = &args[..] else {
            panic!("child arguments: DIR ROUND, not {args:?}")
        };
        child(Path::new(dir), round.parse().expect("round"));
        return ExitCode::SUCCESS;
    }
    pagemesh_testkit::run_tests([("durable_commits_survive_a_power_loss", rounds as fn())])
}

/// The parent: kill rounds on one directory, each followed by the power loss it plays and a check.
fn rounds() {
    let seed = pagemesh_testkit::seed();
    let mut rng = SmallRng::seed_from_u64(seed);
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let started = Instant::now();
    let mut model = State::new();
    let mut parent_epoch = None;
    let (mut checked, mut damaged, mut unreported_found, mut rolled_back) = (0, 0, 0, 0);
    // Created and closed cleanly once, so that every round starts from an environment whose
    // newest transaction is on disk (a clean close syncs).
    drop(Database::open(dir, Options::new().ring_slots(SLOTS)).expect("create"));
    for round in 0..ROUNDS {
        let synced_before = newest_lmdb_txn(dir);
        let life = Duration::from_millis(rng.random_range(20..120));
        let reports: Vec<[u64; 4]> = pagemesh_testkit::run_child(
            CHILD_ENV,
            [dir.display().to_string(), round.to_string()],
            life,
        );
        let child_epoch = reports.iter().find(|r| r[0] == EPOCH_REPORT).map(|r| r[1]);
        let synced = (reports.iter())
            .filter(|r| r[0] == LMDB_SYNC_REPORT)
            .map(|r| r[1])
            .fold(synced_before, u64::max);
        if let (Some(child), Some(parent)) = (child_epoch, parent_epoch) {
            assert_eq!(
                child, parent,
                "round {round}: the child took a new epoch after the parent's clean stop"
            );
        }
        let commits: Vec<[u64; 4]> = reports
            .into_iter()
            .filter(|r| r[0] != EPOCH_REPORT && r[0] != LMDB_SYNC_REPORT)
            .collect();
        let durable_lsn = commits.iter().map(|r| r[3]).max().unwrap_or(0);
        if rng.random_bool(0.5) && roll_back_unsynced_lmdb_txn(dir, synced) {
            rolled_back += 1;
        }
        // What LMDB holds after the power loss was made durable in the log's segments (the
        // history) before LMDB committed it, though no commit reported that watermark: a power
        // loss keeps those pages too.
        let applied_on_disk = {
            let view = ReadOnlyDatabase::open(dir).expect("a read-only view of the store");
            let stat = view
                .read()
                .and_then(|s| s.stat())
                .expect("the store's state");
            stat.binlog_next_lsn
        };
        damaged += damage_beyond(dir, durable_lsn.max(applied_on_disk), &mut rng);
        let epoch = {
            let db = Database::open(dir, Options::new().ring_slots(SLOTS))
                .unwrap_or_else(|e| panic!("round {round}: reopen after the power loss: {e}"));
            let epoch = db.plumbing().log().epoch();
            if let Some(child) = child_epoch {
                assert!(
                    epoch > child,
                    "round {round}: reopened after an unclean stop at epoch {epoch}, not above \
                     the child's {child}"
                );
            }
            db.commit(&WriteBatch::new(), Durability::Applied)
                .unwrap_or_else(|e| panic!("round {round}: applied commit after reopen: {e}"));
            assert!(
                db.applied_lsn() >= durable_lsn,
                "round {round}: applied {} below the reported durable watermark {durable_lsn}",
                db.applied_lsn()
            );
            let found = read_all(&db);
            let (reported, unreported) = check_round(round, &commits, &model, &found);
            checked += reported;
            unreported_found += unreported;
            model = found;
            epoch
        };
        parent_epoch = Some(epoch);
    }
    assert!(
        checked > ROUNDS as usize,
        "too few durable commits verified ({checked}) for the test to mean anything"
    );
    assert!(
        rolled_back >= ROUNDS as usize / 8,
        "LMDB was rolled back in only {rolled_back} of {ROUNDS} rounds: too few to mean anything"
    );
    println!(
        "durable_crash: {ROUNDS} rounds, {checked} durable commits verified, {damaged} log pages \
         damaged beyond the durable watermark, LMDB's newest transaction undone in {rolled_back} \
         rounds, {unreported_found} unreported commits found, seed {seed}, {:?}",
        started.elapsed()
    );
}

fn key(round: u32, thread: u64, index: u64) -> Vec<u8> {
    format!("r{round:03}-t{thread}-{index:07}").into_bytes()
}

/// The value of `key`: its bytes repeated, 16 B to 20 KB (one in eight above 4 KB).
fn value(key: &[u8]) -> Vec<u8> {
    let hash = crc32c::crc32c(key);
    let len = if hash.is_multiple_of(8) {
        4_096 + (hash as usize % 16_000)
    } else {
        16 + (hash as usize % 400)
    };
    key.iter().copied().cycle().take(len).collect()
}

/// Writer mode: commit `Durable` until killed, reporting each commit once it returned.
fn child(dir: &Path, round: u32) {
    let options = Options::new()
        .ring_slots(SLOTS)
        .on_lmdb_sync(|txn| pagemesh_testkit::report([LMDB_SYNC_REPORT, txn, 0, 0]));
    let db = Database::open(dir, options).expect("child opens");
    pagemesh_testkit::report([EPOCH_REPORT, db.plumbing().log().epoch(), 0, 0]);
    std::thread::scope(|s| {
        for thread in 0..THREADS {
            let db = &db;
            s.spawn(move || {
                for index in 0..u64::from(u32::MAX) {
                    let key = key(round, thread, index);
                    let mut batch = WriteBatch::new();
                    batch.put(TABLE, &key, &value(&key)).expect("batch");
                    let seq = db.commit(&batch, Durability::Durable).expect("commit");
                    pagemesh_testkit::report([thread, index, seq, db.durable_lsn()]);
                }
            });
        }
    });
}

/// Damages each page of the log's segments that is not a valid page below `durable_lsn`, with
/// probability 1/2: garbled, zeroed or torn. Returns how many it damaged.
fn damage_beyond(dir: &Path, durable_lsn: u64, rng: &mut SmallRng) -> usize {
    let mut damaged = 0;
    let segments = pagemesh_logpage::Log::files(dir).expect("list the log's files");
    // Spares hold no page of the log where it lies, and one a kill cut off while it was
    // being built has the wrong length (the next open deletes it).
    let is_spare = |path: &Path| {
        path.file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("log-spare-"))
    };
    for path in segments
        .iter()
        .filter(|path| path.extension().is_some_and(|e| e == "seg") && !is_spare(path))
    {
        damaged += damage_segment(path, durable_lsn, rng);
    }
    damaged
}

/// Damages the pages of one segment file as [`damage_beyond`] says.
fn damage_segment(path: &Path, durable_lsn: u64, rng: &mut SmallRng) -> usize {
    let mut bytes = std::fs::read(path).expect("read a segment");
    assert_eq!(
        bytes.len() as u64,
        SLOTS / 4 * PAGE_SIZE as u64,
        "a quarter-ring segment"
    );
    let mut damaged = 0;
    for page in bytes.chunks_exact_mut(PAGE_SIZE) {
        let below = validate(page).is_ok_and(|page| page.lsn() < durable_lsn);
        if below || !rng.random_bool(0.5) {
            continue;
        }
        match rng.random_range(0..3) {
            0 => rng.fill(page),
            1 => page.fill(0),
            _ => {
                let kept = rng.random_range(1..PAGE_SIZE);
                page[kept..].fill(0);
            }
        }
        damaged += 1;
    }
    std::fs::write(path, bytes).expect("write a segment back");
    damaged
}

/// Where a meta page of `data.mdb` keeps what this test reads and writes (LMDB 0.9's
/// `MDB_meta` behind a 16-byte page header, 64-bit build): the magic, the page size
/// (`mm_dbs[FREE_DBI].md_pad`) and the transaction id.
const META_MAGIC_AT: u64 = 16;
const META_PAGE_SIZE_AT: u64 = 40;
const META_TXNID_AT: u64 = 144;
const LMDB_MAGIC: u32 = 0xBEEF_C0DE;

/// `data.mdb`'s two meta pages: each one's offset in the file and transaction id.
fn lmdb_metas(file: &File) -> [(u64, u64); 2] {
    let read = |at: u64, len: usize| {
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, at).expect("read data.mdb");
        bytes
    };
    let u32_of = |bytes: &[u8]| u32::from_le_bytes(bytes.try_into().expect("4 bytes"));
    let page_size = u32_of(&read(META_PAGE_SIZE_AT, 4));
    assert!(
        page_size.is_power_of_two(),
        "data.mdb: page size {page_size}"
    );
    [0, u64::from(page_size)].map(|at| {
        let magic = u32_of(&read(at + META_MAGIC_AT, 4));
        assert_eq!(magic, LMDB_MAGIC, "data.mdb: meta page at {at}");
        let txnid = u64::from_le_bytes(read(at + META_TXNID_AT, 8).try_into().expect("8 bytes"));
        (at, txnid)
    })
}

fn open_lmdb_file(dir: &Path) -> File {
    (OpenOptions::new().read(true).write(true))
        .open(dir.join("lmdb/data.mdb"))
        .expect("open lmdb/data.mdb")
}

/// The id of the newest transaction in `dir`'s LMDB environment.
fn newest_lmdb_txn(dir: &Path) -> u64 {
    let [(_, a), (_, b)] = lmdb_metas(&open_lmdb_file(dir));
    a.max(b)
}

/// Undoes LMDB's newest transaction, as a power loss may when its meta page was not synced:
/// only if it is newer than `synced`. Returns whether it did.
fn roll_back_unsynced_lmdb_txn(dir: &Path, synced: u64) -> bool {
    let file = open_lmdb_file(dir);
    let [first, second] = lmdb_metas(&file);
    let (newest, older) = if first.1 > second.1 {
        (first, second)
    } else {
        (second, first)
    };
    if newest.1 <= synced {
        return false;
    }
    assert_eq!(
        older.1 + 1,
        newest.1,
        "LMDB writes its two meta pages in turn: transactions {} and {}",
        older.1,
        newest.1
    );
    // Below the other's, so LMDB opens at the other; the next commit overwrites this page.
    file.write_all_at(&(older.1 - 1).to_le_bytes(), newest.0 + META_TXNID_AT)
        .expect("write data.mdb");
    assert_eq!(newest_lmdb_txn(dir), older.1, "the rollback took");
    true
}

fn read_all(db: &Database) -> State {
    let snapshot = db.read().expect("snapshot");
    if !db.tables().iter().any(|t| t == TABLE) {
        return State::new();
    }
    snapshot
        .prefix(TABLE, b"")
        .expect("scan")
        .map(|entry| {
            let (key, value) = entry.expect("entry");
            (key.to_vec(), (value.bytes.to_vec(), value.seq))
        })
        .collect()
}

/// Checks what the store holds after round `round` (see the module docs). Returns the reported
/// commits found and the unreported ones found.
fn check_round(round: u32, commits: &[[u64; 4]], before: &State, found: &State) -> (usize, usize) {
    let prefix = format!("r{round:03}-").into_bytes();
    for (key, entry) in before {
        assert_eq!(
            found.get(key),
            Some(entry),
            "round {round}: {} of an earlier round changed or vanished",
            String::from_utf8_lossy(key)
        );
    }
    let mut reported = 0;
    for &[thread, index, seq, _] in commits {
        let key = key(round, thread, index);
        let Some((bytes, found_seq)) = found.get(&key) else {
            panic!(
                "round {round}: durable commit {} (seq {seq}) lost",
                String::from_utf8_lossy(&key)
            );
        };
        assert_eq!(*found_seq, seq, "round {round}: seq of {key:?}");
        assert!(*bytes == value(&key), "round {round}: value of {key:?}");
        reported += 1;
    }
    let mut per_thread: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (key, (bytes, _)) in found.range(prefix.clone()..) {
        if !key.starts_with(&prefix) {
            break;
        }
        assert!(*bytes == value(key), "round {round}: value of {key:?}");
        let text = std::str::from_utf8(key).expect("utf-8 key");
        let mut parts = text.split('-').skip(1);
        let thread: u64 = parts
            .next()
            .and_then(|t| t[1..].parse().ok())
            .expect("thread");
        let index: u64 = parts.next().and_then(|i| i.parse().ok()).expect("index");
        per_thread.entry(thread).or_default().push(index);
    }
    let mut total = 0;
    for (thread, indices) in &per_thread {
        assert!(
            indices
                .iter()
                .enumerate()
                .all(|(i, &index)| i as u64 == index),
            "round {round}: thread {thread} has a hole in its commits: {indices:?}"
        );
        total += indices.len();
    }
    (reported, total - reported)
}
