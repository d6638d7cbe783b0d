//! Tables as explicit operations and transactions that scan (issue 17): `create_table`,
//! `drop_table` and `clear_table` go through the log, so a replica fed the origin's pages does
//! the same; a transaction's scans are validated at apply, so a write into a scanned range makes
//! it run again; `get_versioned` reports the version `put_if_version` expects.

mod common;

use common::contents;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use pagemesh_core::{Database, Durability, Error, Options};

fn keys(db: &Database, table: &str) -> Vec<Vec<u8>> {
    let snapshot = db.read().unwrap();
    let entries = snapshot.prefix(table, b"").unwrap();
    entries.map(|entry| entry.unwrap().0.to_vec()).collect()
}

/// Before: a table existed only once something was put in it, and could be neither dropped
/// nor cleared (short of deleting each key). Now each is one logged operation.
#[test]
fn tables_are_created_cleared_and_dropped_explicitly_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::new()).unwrap();
    db.create_table("audit").unwrap();
    assert_eq!(
        db.tables(),
        ["audit"],
        "an explicitly created table exists empty"
    );
    db.create_table("audit").unwrap(); // a no-op

    let mut batch = db.batch();
    batch.put("users", b"ada", b"1").unwrap();
    batch.put("users", b"alan", b"2").unwrap();
    batch.put("cache", b"k", b"v").unwrap();
    db.commit(&batch, Durability::Applied).unwrap();
    assert_eq!(
        db.tables(),
        ["audit", "cache", "users"],
        "a put still creates its table"
    );

    let mut batch = db.batch();
    batch.delete("ghosts", b"k").unwrap();
    db.commit(&batch, Durability::Applied).unwrap();
    assert!(
        !db.tables().contains(&"ghosts".to_string()),
        "a delete creates no table"
    );

    db.clear_table("cache").unwrap();
    assert!(keys(&db, "cache").is_empty());
    assert_eq!(
        db.tables(),
        ["audit", "cache", "users"],
        "a cleared table stays"
    );

    let before_drop = db.read().unwrap();
    db.drop_table("users").unwrap();
    assert_eq!(
        db.tables(),
        ["audit", "cache"],
        "listed while a snapshot is held"
    );
    // A snapshot begun before the drop still reads what it saw.
    assert_eq!(before_drop.prefix("users", b"").unwrap().count(), 2);
    assert_eq!(before_drop.tables().unwrap(), ["audit", "cache", "users"]);
    drop(before_drop);
    assert!(keys(&db, "users").is_empty());
    assert_eq!(db.read().unwrap().tables().unwrap(), ["audit", "cache"]);
    db.drop_table("never-made").unwrap(); // a no-op

    // A put after a drop makes the table again, holding only what came after.
    let mut batch = db.batch();
    batch.put("users", b"grace", b"3").unwrap();
    db.commit(&batch, Durability::Applied).unwrap();
    assert_eq!(keys(&db, "users"), [b"grace".to_vec()]);

    // Drop and re-create in one batch: one atomic record.
    let mut batch = db.batch();
    batch
        .drop_table("cache")
        .unwrap()
        .create_table("cache")
        .unwrap();
    batch.put("cache", b"fresh", b"").unwrap();
    db.commit(&batch, Durability::Applied).unwrap();
    assert_eq!(keys(&db, "cache"), [b"fresh".to_vec()]);

    let expected = contents(&db);
    let tables = db.tables();
    drop(db);
    let db = Database::open(dir.path(), Options::new()).unwrap();
    assert_eq!(db.tables(), tables);
    assert_eq!(contents(&db), expected);
    db.drop_table("users").unwrap();
    assert_eq!(db.tables(), ["audit", "cache"], "a drop after a reopen");
}

/// Every page of `primary` from `from` on, in full form: from the binlog, then the ring.
fn pages_from(primary: &Database, from: u64) -> Vec<u8> {
    let mut pages = Vec::new();
    let mut next = from;
    {
        let snapshot = primary.read().unwrap();
        for page in snapshot.binlog_range(from).unwrap() {
            let page = page.unwrap();
            page.page().extend_full(&mut pages);
            next = page.lsn() + 1;
        }
    }
    let mut cursor = primary.plumbing().log().cursor(next).unwrap();
    while let Some(run) = cursor.next_run(64).unwrap() {
        pages.extend_from_slice(run.bytes);
    }
    pages
}

/// A replica applies table operations from the log, at the same point as its origin.
#[test]
fn table_operations_replicate_to_a_replica() {
    let dir = tempfile::tempdir().unwrap();
    let primary = Database::open(dir.path().join("p"), Options::new()).unwrap();
    let mut batch = primary.batch();
    batch
        .put("a", b"1", b"x")
        .unwrap()
        .put("b", b"1", b"y")
        .unwrap();
    primary.commit(&batch, Durability::Applied).unwrap();
    let mut stream = Vec::new();
    primary.read().unwrap().export(&mut stream).unwrap();
    let (replica, stats) =
        pagemesh_core::Plumbing::restore_replica(dir.path().join("r"), &stream[..], Options::new())
            .unwrap();
    assert!(matches!(
        replica.create_table("t"),
        Err(Error::ReadOnlyReplica { .. })
    ));

    primary.create_table("empty").unwrap();
    primary.drop_table("a").unwrap();
    primary.clear_table("b").unwrap();
    let mut batch = primary.batch();
    batch
        .put("b", b"2", b"z")
        .unwrap()
        .put("a", b"again", b"")
        .unwrap();
    primary.commit(&batch, Durability::Applied).unwrap();
    primary.plumbing().log().seal();

    replica
        .plumbing()
        .ingest(&pages_from(&primary, stats.lsn))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while replica.applied_lsn() < primary.plumbing().received_lsn() {
        assert!(
            std::time::Instant::now() < deadline,
            "replica did not apply"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(replica.tables(), ["a", "b", "empty"]);
    assert_eq!(replica.tables(), primary.tables());
    assert_eq!(contents(&replica), contents(&primary));
    assert_eq!(keys(&replica, "a"), [b"again".to_vec()]);
}

/// Before: a transaction could only `get` single keys, so "sum a range, then write" missed a
/// key inserted into the range meanwhile. Now the scan is validated: the insertion conflicts.
#[test]
fn an_insert_into_a_scanned_range_conflicts_and_the_transaction_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::new()).unwrap();
    for day in ["01-01", "01-02", "02-01"] {
        db.put_if_version("sales", day.as_bytes(), None, b"1")
            .unwrap();
    }
    let runs = AtomicU32::new(0);
    let (count, _) = db
        .transaction(5, |tx| {
            let january = tx.range("sales", "01".."02")?;
            if runs.fetch_add(1, Ordering::Relaxed) == 0 {
                // Another writer inserts into the range after the scan, before the commit.
                db.put_if_version("sales", b"01-15", None, b"1")?;
                // and writes outside it, which must not matter.
                db.put_if_version("sales", b"02-02", None, b"1")?;
            }
            tx.put("totals", b"01", &(january.len() as u64).to_le_bytes())?;
            Ok::<_, Error>(january.len())
        })
        .unwrap();
    assert_eq!(runs.load(Ordering::Relaxed), 2, "the stale scan ran again");
    assert_eq!(count, 3, "the second run saw the insertion");

    // Without retries the conflict comes back to the caller, and nothing is written.
    let outcome = db.transaction(0, |tx| {
        let entries = tx.prefix("sales", b"01-")?;
        // (this thread holds the transaction's snapshot: no second one, so a plain overwrite)
        let mut batch = db.batch();
        batch.put("sales", b"01-02", b"2")?;
        db.commit(&batch, Durability::Applied)?;
        tx.put("totals", b"01", &(entries.len() as u64).to_le_bytes())?;
        Ok::<_, Error>(())
    });
    assert!(
        matches!(outcome, Err(Error::Conflict { .. })),
        "{outcome:?}"
    );

    // A write outside every range read does not conflict: one run.
    let runs = AtomicU32::new(0);
    db.transaction(0, |tx| {
        tx.prefix("sales", b"02-")?;
        if runs.fetch_add(1, Ordering::Relaxed) == 0 {
            db.put_if_version("sales", b"03-01", None, b"1")?;
            db.put_if_version("other", b"01-01", None, b"1")?;
        }
        tx.put("totals", b"02", b"")
    })
    .unwrap();
    assert_eq!(runs.load(Ordering::Relaxed), 1);

    // A delete in a scanned range conflicts too.
    let outcome = db.transaction(0, |tx| {
        tx.range::<&[u8]>("sales", ..)?;
        let mut batch = db.batch();
        batch.delete("sales", b"03-01")?;
        db.commit(&batch, Durability::Applied)?;
        tx.put("totals", b"all", b"")
    });
    assert!(
        matches!(outcome, Err(Error::Conflict { .. })),
        "{outcome:?}"
    );
}

/// A scan sees the transaction's own writes, and its reverse is the iterator's.
#[test]
fn a_scan_in_a_transaction_sees_its_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::new()).unwrap();
    let mut batch = db.batch();
    for key in ["a", "b", "c"] {
        batch.put("t", key.as_bytes(), b"old").unwrap();
    }
    db.commit(&batch, Durability::Applied).unwrap();
    let (seen, _) = db
        .transaction(0, |tx| {
            tx.delete("t", b"b")?;
            tx.put("t", b"bb", b"new")?;
            tx.put("t", b"c", b"new")?;
            tx.put("u", b"b", b"other table")?;
            let forward = tx.range("t", "a"..="c")?;
            let backward: Vec<_> = tx.prefix("t", b"")?.into_iter().rev().collect();
            Ok::<_, Error>((forward, backward))
        })
        .unwrap();
    let pairs = |list: &[(&str, &str)]| -> Vec<(Vec<u8>, Vec<u8>)> {
        list.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    };
    assert_eq!(seen.0, pairs(&[("a", "old"), ("bb", "new"), ("c", "new")]));
    assert_eq!(seen.1, pairs(&[("c", "new"), ("bb", "new"), ("a", "old")]));
}

/// `get_versioned` reports the version `put_if_version` returned and expects; a transaction
/// that read it conflicts once the key moves on.
#[test]
fn a_versioned_get_matches_put_if_version() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::new()).unwrap();
    let (absent, _) = db
        .transaction(0, |tx| tx.get_versioned("docs", b"readme"))
        .unwrap();
    assert_eq!(absent, None, "absent: what put_if_version expects as None");
    let v1 = db.put_if_version("docs", b"readme", None, b"one").unwrap();
    let (seen, _) = db
        .transaction(0, |tx| tx.get_versioned("docs", b"readme"))
        .unwrap();
    let seen = seen.unwrap();
    assert_eq!((seen.bytes.as_slice(), seen.version), (&b"one"[..], v1));
    assert_eq!(
        db.read()
            .unwrap()
            .get("docs", b"readme")
            .unwrap()
            .unwrap()
            .seq,
        v1
    );
    let v2 = db
        .put_if_version("docs", b"readme", Some(seen.version), b"two")
        .unwrap();
    match db.put_if_version("docs", b"readme", Some(seen.version), b"three") {
        Err(Error::Conflict { current, .. }) => assert_eq!(current, Some(v2)),
        other => panic!("{other:?}"),
    }
    let outcome = db.transaction(0, |tx| {
        let read = tx.get_versioned("docs", b"readme")?.unwrap();
        db.put_if_version("docs", b"readme", Some(read.version), b"four")?;
        tx.put("docs", b"copy", &read.bytes)
    });
    assert!(
        matches!(outcome, Err(Error::Conflict { .. })),
        "{outcome:?}"
    );
}

/// A snapshot carries a table that exists with nothing in it, so a restore (a backup, a
/// replica's bootstrap) lists the same tables as its origin.
#[test]
fn an_empty_table_survives_export_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let primary = Database::open(dir.path().join("p"), Options::new()).unwrap();
    primary.create_table("empty").unwrap();
    let mut batch = primary.batch();
    batch
        .put("full", b"k", b"v")
        .unwrap()
        .put("cleared", b"k", b"v")
        .unwrap();
    primary.commit(&batch, Durability::Applied).unwrap();
    primary.clear_table("cleared").unwrap();
    let mut stream = Vec::new();
    let snapshot = primary.read().unwrap();
    primary.drop_table("full").unwrap();
    snapshot.export(&mut stream).unwrap(); // what the snapshot saw, before the drop
    drop(snapshot);
    let (copy, stats) =
        Database::restore(dir.path().join("c"), &stream[..], Options::new()).unwrap();
    assert_eq!(stats.entries, 1);
    assert_eq!(copy.tables(), ["cleared", "empty", "full"]);
}

/// Every table's entries as `(table, key, value)`, versions left out.
fn entries(db: &Database) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let snapshot = db.read().unwrap();
    let mut out = Vec::new();
    for table in db.tables() {
        for entry in snapshot.prefix(&table, b"").unwrap() {
            let (key, value) = entry.unwrap();
            out.push((table.clone(), key.to_vec(), value.bytes.to_vec()));
        }
    }
    out
}

/// Before: only a batch could create, drop or clear a table, so "move the staged rows, then
/// drop the staging table" was two commits, and a crash between them left both. Now a
/// transaction does it in one record, sees its own table operations in its reads, and a
/// replica fed the log ends up with the same tables and entries.
#[test]
fn a_transaction_creates_drops_and_clears_tables_and_a_replica_follows() {
    let dir = tempfile::tempdir().unwrap();
    let primary = Database::open(dir.path().join("p"), Options::new()).unwrap();
    let mut batch = primary.batch();
    for (table, key) in [
        ("staging", "r1"),
        ("staging", "r2"),
        ("cache", "c1"),
        ("live", "r0"),
    ] {
        batch.put(table, key.as_bytes(), b"v").unwrap();
    }
    primary.commit(&batch, Durability::Applied).unwrap();
    let mut stream = Vec::new();
    primary.read().unwrap().export(&mut stream).unwrap();
    let (replica, _) =
        pagemesh_core::Plumbing::restore_replica(dir.path().join("r"), &stream[..], Options::new())
            .unwrap();
    let on_replica = replica.transaction(0, |tx| tx.create_table("t"));
    assert!(
        matches!(on_replica, Err(Error::ReadOnlyReplica { .. })),
        "{on_replica:?}"
    );

    let (seen, _) = primary
        .transaction(0, |tx| {
            let staged = tx.prefix("staging", b"")?;
            for (key, value) in &staged {
                tx.put("live", key, value)?;
            }
            tx.drop_table("staging")?;
            let after_drop = (tx.get("staging", b"r1")?, tx.prefix("staging", b"")?);
            tx.put("cache", b"c2", b"before the clear")?;
            tx.clear_table("cache")?;
            tx.put("cache", b"c3", b"after the clear")?;
            let cache = tx.range::<&[u8]>("cache", ..)?;
            tx.create_table("audit")?;
            tx.create_table("live")?; // exists: a no-op
            Ok::<_, Error>((staged.len(), after_drop, cache))
        })
        .unwrap();
    assert_eq!(seen.0, 2);
    assert_eq!(seen.1, (None, Vec::new()), "its own drop hides the table");
    assert_eq!(
        seen.2,
        [(b"c3".to_vec(), b"after the clear".to_vec())],
        "its own clear hides what came before it"
    );
    assert_eq!(primary.tables(), ["audit", "cache", "live"]);
    let expected = |table: &str, key: &str, value: &str| {
        (
            table.to_string(),
            key.as_bytes().to_vec(),
            value.as_bytes().to_vec(),
        )
    };
    assert_eq!(
        entries(&primary),
        [
            expected("cache", "c3", "after the clear"),
            expected("live", "r0", "v"),
            expected("live", "r1", "v"),
            expected("live", "r2", "v"),
        ]
    );

    // A batch after it, whose receipt the replica waits for: it holds the transaction too.
    let mut marker = primary.batch();
    marker.put("audit", b"published", b"").unwrap();
    let receipt = primary
        .commit_with_receipt(&marker, Durability::Applied)
        .unwrap();
    primary.plumbing().log().seal();
    let from = replica.applied_lsn();
    replica
        .plumbing()
        .ingest(&pages_from(&primary, from))
        .unwrap();
    replica.wait_for(&receipt, Duration::from_secs(30)).unwrap();
    assert_eq!(replica.tables(), primary.tables());
    assert_eq!(contents(&replica), contents(&primary));
}

/// A transaction that read a key of a table another commit drops (here another transaction,
/// on another thread) conflicts: the drop deleted what it read. With retries it runs again
/// and sees the table gone; its put then makes the table again.
#[test]
fn a_transaction_that_read_a_table_another_transaction_dropped_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::new()).unwrap();
    let mut batch = db.batch();
    batch.put("jobs", b"j1", b"queued").unwrap();
    batch.put("jobs", b"j2", b"queued").unwrap();
    db.commit(&batch, Durability::Applied).unwrap();
    // Another transaction drops the table (on its own thread: this one holds a snapshot).
    let drop_jobs = || {
        std::thread::scope(|s| {
            s.spawn(|| {
                db.transaction(0, |tx| {
                    tx.get("jobs", b"j2")?;
                    tx.drop_table("jobs")
                })
            })
            .join()
            .unwrap()
        })
        .unwrap();
    };

    let outcome = db.transaction(0, |tx| {
        let job = tx.get("jobs", b"j1")?;
        drop_jobs();
        tx.put("jobs", b"j1", b"running")?;
        tx.put("log", b"j1", b"started")?;
        Ok::<_, Error>(job)
    });
    assert!(
        matches!(outcome, Err(Error::Conflict { .. })),
        "{outcome:?}"
    );
    assert_eq!(db.tables(), Vec::<String>::new(), "nothing of it applied");

    // A scan that saw entries conflicts with a clear the same way; with retries the body runs
    // again on the cleared table.
    let mut batch = db.batch();
    batch.put("jobs", b"j3", b"queued").unwrap();
    db.commit(&batch, Durability::Applied).unwrap();
    let runs = AtomicU32::new(0);
    let (seen, _) = db
        .transaction(3, |tx| {
            let queued = tx.prefix("jobs", b"")?;
            if runs.fetch_add(1, Ordering::Relaxed) == 0 {
                let mut clear = db.batch();
                clear.clear_table("jobs")?;
                db.commit(&clear, Durability::Applied)?;
            }
            tx.put("counts", b"queued", &(queued.len() as u64).to_le_bytes())?;
            Ok::<_, Error>(queued.len())
        })
        .unwrap();
    assert_eq!((runs.load(Ordering::Relaxed), seen), (2, 0));

    // Documented: an absent key and an empty scan still read the same after a drop, so they
    // do not conflict, and a put into the dropped table creates it again.
    let runs = AtomicU32::new(0);
    db.transaction(0, |tx| {
        assert_eq!(tx.get("jobs", b"j9")?, None);
        assert!(tx.prefix("jobs", b"")?.is_empty());
        if runs.fetch_add(1, Ordering::Relaxed) == 0 {
            let mut drop = db.batch();
            drop.drop_table("jobs")?;
            db.commit(&drop, Durability::Applied)?;
            assert!(!db.tables().contains(&"jobs".to_string()));
        }
        tx.put("jobs", b"j9", b"queued")
    })
    .unwrap();
    assert_eq!(runs.load(Ordering::Relaxed), 1);
    assert_eq!(keys(&db, "jobs"), [b"j9".to_vec()]);
}
