//! The store behaves like a `BTreeMap`: random sequences of batch commits, reads and reopens give
//! the same answers as a model, and every value carries the `seq` of the commit that wrote it.
//!
//! proptest generates up to 40 steps per case over three tables and a handful of keys (some
//! prefixes of others, so prefix scans have something to tell apart, and few enough that puts
//! overwrite and deletes hit). A step is one of:
//!
//! - a commit of a `WriteBatch` of 0–4 puts and deletes (values empty to 48 B, sometimes up to
//!   12 KB so records span pages of the 64-slot ring), with `Memory`, `Applied` or `Durable`;
//!   the model applies it in order with the `seq` the commit returned, and `seq`s must increase;
//! - a check: `get` of a few keys and one prefix scan, compared with the model;
//! - a reopen: drop the database and open the same directory again.
//!
//! `Memory` and `Durable` commits are applied asynchronously (`Durable` waits for the ring's
//! flush, not for LMDB), so the store is compared with the model only when the last commit was
//! `Applied` (applying in log order, it implies every earlier record is applied); a check or
//! reopen that follows another commit first commits an empty batch with `Applied`. After every applied commit and every reopen, every table is scanned in
//! full and compared, `seq`s included, and `tables()` must name every table holding a key and none
//! that was never written. A reopen right after `Memory` or `Durable` commits checks that closing
//! the database loses none of them. Each case ends with a comparison and a reopen.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use pagemesh_core::{Database, Durability, Options, WriteBatch};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const TABLES: [&str; 3] = ["alpha", "beta", "gamma"];
/// Keys, some prefixes of others.
const KEYS: [&[u8]; 7] = [b"a", b"aa", b"ab", b"b", b"ba", b"bab", b"c"];
/// Prefixes scanned by checks, besides the empty one every full comparison scans.
const PREFIXES: [&[u8]; 5] = [b"a", b"b", b"ba", b"bab", b"z"];
const SLOTS: u64 = 64;

/// `(table, key)` → `(value, seq)`.
type Model = BTreeMap<(String, Vec<u8>), (Vec<u8>, u64)>;

/// One put (`Some` value) or delete, by index into `TABLES` and `KEYS`.
#[derive(Clone, Debug)]
struct Change {
    table: usize,
    key: usize,
    value: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
enum Step {
    Commit {
        changes: Vec<Change>,
        durability: Durability,
    },
    Check {
        keys: Vec<(usize, usize)>,
        prefix: (usize, usize),
    },
    Reopen,
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..48),
        1 => (1usize..12_000, any::<u8>())
            .prop_map(|(len, start)| (0..len).map(|i| start.wrapping_add(i as u8)).collect()),
    ]
}

fn change() -> impl Strategy<Value = Change> {
    (
        0..TABLES.len(),
        0..KEYS.len(),
        prop_oneof![1 => Just(None), 3 => value().prop_map(Some)],
    )
        .prop_map(|(table, key, value)| Change { table, key, value })
}

fn step() -> impl Strategy<Value = Step> {
    let durability = prop_oneof![
        3 => Just(Durability::Memory),
        3 => Just(Durability::Applied),
        1 => Just(Durability::Durable),
    ];
    let key = (0..TABLES.len(), 0..KEYS.len());
    prop_oneof![
        8 => (proptest::collection::vec(change(), 0..5), durability)
            .prop_map(|(changes, durability)| Step::Commit { changes, durability }),
        3 => (proptest::collection::vec(key, 1..6), (0..TABLES.len(), 0..PREFIXES.len()))
            .prop_map(|(keys, prefix)| Step::Check { keys, prefix }),
        1 => Just(Step::Reopen),
    ]
}

/// The database under test, the model, and what the comparison needs to know.
struct Harness<'d> {
    dir: &'d Path,
    db: Option<Database>,
    model: Model,
    /// Tables some committed change named: `tables()` may list these and no others.
    tables_written: BTreeSet<String>,
    /// Whether every commit so far is known to be applied.
    settled: bool,
    seq_last: Option<u64>,
}

impl Harness<'_> {
    fn db(&self) -> &Database {
        self.db.as_ref().expect("database open")
    }

    fn commit(&mut self, changes: &[Change], durability: Durability) -> TestResult {
        let mut batch = WriteBatch::new();
        for change in changes {
            let (table, key) = (TABLES[change.table], KEYS[change.key]);
            match &change.value {
                Some(value) => batch.put(table, key, value),
                None => batch.delete(table, key),
            }
            .map_err(fail("batch"))?;
        }
        let seq = self
            .db()
            .commit(&batch, durability)
            .map_err(fail("commit"))?;
        prop_assert!(
            self.seq_last.is_none_or(|last| seq > last),
            "seq {seq} after {:?}",
            self.seq_last
        );
        self.seq_last = Some(seq);
        for change in changes {
            let key = (TABLES[change.table].to_string(), KEYS[change.key].to_vec());
            self.tables_written.insert(key.0.clone());
            match &change.value {
                Some(value) => self.model.insert(key, (value.clone(), seq)),
                None => self.model.remove(&key),
            };
        }
        self.settled = durability == Durability::Applied;
        if self.settled {
            self.compare_all()?;
        }
        Ok(())
    }

    /// Makes every earlier commit applied: an empty batch committed with `Applied`.
    fn settle(&mut self) -> TestResult {
        if !self.settled {
            self.commit(&[], Durability::Applied)?;
        }
        Ok(())
    }

    fn check(&mut self, keys: &[(usize, usize)], prefix: (usize, usize)) -> TestResult {
        self.settle()?;
        let snapshot = self.db().read().map_err(fail("snapshot"))?;
        for &(table, key) in keys {
            let (table, key) = (TABLES[table], KEYS[key]);
            let found = snapshot.get(table, key).map_err(fail("get"))?;
            let expected = self.model.get(&(table.to_string(), key.to_vec()));
            prop_assert_eq!(
                found.map(|v| (v.bytes.to_vec(), v.seq)),
                expected.cloned(),
                "get {}/{:?}",
                table,
                key
            );
        }
        let (table, prefix) = (TABLES[prefix.0], PREFIXES[prefix.1]);
        let found = scan(&snapshot, table, prefix)?;
        let expected: Entries = self
            .model
            .range((table.to_string(), prefix.to_vec())..)
            .take_while(|((t, k), _)| t == table && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        prop_assert_eq!(found, expected, "prefix {}/{:?}", table, prefix);
        Ok(())
    }

    fn reopen(&mut self) -> TestResult {
        drop(self.db.take());
        self.db = Some(
            Database::open(self.dir, Options::new().ring_slots(SLOTS)).map_err(fail("reopen"))?,
        );
        // The last commits may still be in the ring: recovery applies them asynchronously.
        self.settled = false;
        self.settle()?;
        self.compare_all()
    }

    /// Every table scanned in full against the model, and the table list.
    fn compare_all(&self) -> TestResult {
        let snapshot = self.db().read().map_err(fail("snapshot"))?;
        for table in TABLES {
            let found = scan(&snapshot, table, b"")?;
            let expected: Entries = self
                .model
                .iter()
                .filter(|((t, _), _)| t == table)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            prop_assert_eq!(found, expected, "full scan of {}", table);
        }
        let tables: BTreeSet<String> = self.db().tables().into_iter().collect();
        let holding: BTreeSet<String> = self.model.keys().map(|(t, _)| t.clone()).collect();
        prop_assert!(
            holding.is_subset(&tables) && tables.is_subset(&self.tables_written),
            "tables() = {:?}; holding keys {:?}; ever written {:?}",
            tables,
            holding,
            self.tables_written
        );
        Ok(())
    }
}

type TestResult = Result<(), TestCaseError>;

fn fail<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> TestCaseError {
    move |e| TestCaseError::fail(format!("{what}: {e}"))
}

/// A table's entries in key order: `(key, (value, seq))`.
type Entries = Vec<(Vec<u8>, (Vec<u8>, u64))>;

/// Entries of `table` under `prefix`.
fn scan(
    snapshot: &pagemesh_core::Snapshot<'_>,
    table: &str,
    prefix: &[u8],
) -> Result<Entries, TestCaseError> {
    snapshot
        .prefix(table, prefix)
        .map_err(fail("prefix"))?
        .map(|entry| {
            let (key, value) = entry.map_err(fail("iterate"))?;
            Ok((key.to_vec(), (value.bytes.to_vec(), value.seq)))
        })
        .collect()
}

fn run(steps: &[Step]) -> TestResult {
    let dir = tempfile::tempdir().map_err(fail("temp dir"))?;
    let db = Database::open(dir.path(), Options::new().ring_slots(SLOTS)).map_err(fail("open"))?;
    let mut harness = Harness {
        dir: dir.path(),
        db: Some(db),
        model: Model::new(),
        tables_written: BTreeSet::new(),
        settled: true,
        seq_last: None,
    };
    for step in steps {
        match step {
            Step::Commit {
                changes,
                durability,
            } => harness.commit(changes, *durability)?,
            Step::Check { keys, prefix } => harness.check(keys, *prefix)?,
            Step::Reopen => harness.reopen()?,
        }
    }
    harness.settle()?;
    harness.compare_all()?;
    harness.reopen()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_a_btreemap(steps in proptest::collection::vec(step(), 1..40)) {
        run(&steps)?;
    }
}
