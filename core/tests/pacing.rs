//! The applier's pacing (`apply.rs`, Pacing) on real LMDB files. With a pace window of an hour,
//! far longer than any test, `Durable` commits return while nothing is applied; a commit that
//! waits for `Applied`, a transaction, a backlog of the configured bytes, or a backlog of one
//! whole group (`Options::group_bytes_max`) ends the pace; the ring's flush pace
//! (`Options::flush_pace`) holds back syncs of pages nobody waits for but never a `Durable`
//! commit; and
//! closing ends it with everything applied. A pace that is never cut short would hang a test, so
//! each such wait runs on its own thread and fails the test after a minute instead.

use std::sync::mpsc;
use std::time::Duration;

use pagemesh_core::{Database, Durability, Options, ReadOnlyDatabase, WriteBatch};

/// A pace window no test outlives.
const FOREVER: Duration = Duration::from_secs(3600);
/// How long a wait that the pace must not hold up may take before the test fails.
const STUCK_AFTER: Duration = Duration::from_secs(60);

fn put(key: &[u8]) -> WriteBatch {
    let mut batch = WriteBatch::new();
    batch.put("t", key, b"value").unwrap();
    batch
}

/// Runs `f` on its own thread; panics naming `what` if it has not returned after `STUCK_AFTER`.
fn returns<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, returned) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    returned
        .recv_timeout(STUCK_AFTER)
        .unwrap_or_else(|_| panic!("{what} never returned: a pace was not cut short"))
}

/// Polls `read` on its own thread until it returns `target` or more (failing the test after
/// `STUCK_AFTER`, naming `what`); returns what it read.
fn reaches(what: &str, target: u64, read: impl Fn() -> u64 + Send + 'static) -> u64 {
    returns(what, move || loop {
        let value = read();
        if value >= target {
            return value;
        }
        std::thread::sleep(Duration::from_millis(1));
    })
}

/// `pages` `Durable` commits (each waits for its own page to be synced, so each seals a page),
/// then waits until the applier applied `applied_min` pages despite its pace.
fn commit_pages_then_see_applied(
    db: &Database,
    prefix: u8,
    pages: u8,
    applied_min: u64,
    what: &str,
) {
    for index in 0..pages {
        db.commit(&put(&[prefix, index]), Durability::Durable)
            .unwrap();
    }
    let watcher = db.clone();
    reaches(what, applied_min, move || watcher.applied_lsn());
}

fn paced(dir: &tempfile::TempDir, pace_bytes: usize) -> Database {
    let options = Options::new()
        .ring_slots(64)
        .apply_pace(FOREVER, pace_bytes);
    Database::open(dir.path(), options).unwrap()
}

#[test]
fn an_applied_commit_or_a_transaction_cuts_the_pace_short() {
    let dir = tempfile::tempdir().unwrap();
    // A quarter of 64 slots: the pace ends at 16 pages held, and these commits take five.
    let db = paced(&dir, 1 << 30);
    for key in [b"d0", b"d1", b"d2", b"d3", b"d4"] {
        db.commit(&put(key), Durability::Durable).unwrap();
    }
    assert_eq!(
        db.stats().groups,
        0,
        "the applier paces: nothing applied yet"
    );
    assert_eq!(db.applied_lsn(), 0);
    let committer = db.clone();
    returns("an Applied commit", move || {
        committer.commit(&put(b"a"), Durability::Applied).unwrap()
    });
    let snapshot = db.read().unwrap();
    for key in [&b"d0"[..], b"d1", b"d2", b"d3", b"d4", b"a"] {
        assert!(snapshot.get("t", key).unwrap().is_some(), "{key:?} applied");
    }
    drop(snapshot);
    for key in [b"e0", b"e1"] {
        db.commit(&put(key), Durability::Durable).unwrap();
    }
    let committer = db.clone();
    let seen = returns("a transaction", move || {
        committer
            .transaction(0, |tx| {
                tx.put("t", b"tx", b"value")?;
                tx.get("t", b"d0").map(|value| value.is_some())
            })
            .unwrap()
    });
    assert!(seen.0, "the transaction read an applied key");
    let snapshot = db.read().unwrap();
    for key in [&b"e0"[..], b"e1", b"tx"] {
        assert!(snapshot.get("t", key).unwrap().is_some(), "{key:?} applied");
    }
}

#[test]
fn a_backlog_of_the_pace_bytes_ends_the_pace() {
    let dir = tempfile::tempdir().unwrap();
    let db = paced(&dir, 4 * 4096);
    commit_pages_then_see_applied(&db, b'k', 8, 4, "applying a backlog of four pages");
}

/// A group takes at most `group_bytes_max`, so a backlog of one whole group ends the pace
/// whatever the pace's bytes: with groups of two pages and a pace of a gigabyte (a quarter of this
/// ring: 16 pages), eight pages are applied without waiting out the hour.
#[test]
fn a_backlog_of_one_whole_group_ends_the_pace() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::new()
        .ring_slots(64)
        .group_bytes_max(2 * 4096)
        .apply_pace(FOREVER, 1 << 30);
    let db = Database::open(dir.path(), options).unwrap();
    commit_pages_then_see_applied(&db, b'g', 8, 8, "applying a backlog of whole groups");
}

/// The ring's flush pace (`Options::flush_pace`): pages of commits that waited for less than
/// `Durable` gather for the pace (an hour here) after the first flush, and a `Durable` commit is
/// never held up by it. The applier is paced for an hour too: it makes the pages it applies
/// durable first (the history, `binlog.rs`), which would end the flush pace's wait for them.
#[test]
fn the_flush_pace_holds_unwaited_pages_but_never_a_durable_commit() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::new()
        .ring_slots(64)
        .flush_pace(FOREVER)
        .apply_pace(FOREVER, 1 << 30);
    let db = Database::open(dir.path(), options).unwrap();
    // Memory commits of two pages each: nobody waits for them to be durable.
    let commit_memory = |index: u8| {
        let mut batch = WriteBatch::new();
        batch.put("t", &[b'm', index], &[index; 5000]).unwrap();
        db.commit(&batch, Durability::Memory).unwrap();
    };
    // The flusher's first flush is not paced: the first page is synced unasked.
    commit_memory(0);
    let watcher = db.clone();
    let durable = reaches("the flusher's first flush", 1, move || {
        watcher.durable_lsn()
    });
    for index in 1..4u8 {
        commit_memory(index);
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(db.durable_lsn(), durable, "synced within the pace");
    let watcher = db.clone();
    returns("a Durable commit under a flush pace", move || {
        watcher.commit(&put(b"f1"), Durability::Durable).unwrap()
    });
    assert!(
        db.durable_lsn() > durable + 2,
        "its sync covered the Memory commits too"
    );
}

#[test]
fn closing_ends_the_pace_and_applies_everything() {
    let dir = tempfile::tempdir().unwrap();
    let db = paced(&dir, 1 << 30);
    for key in [b"c0", b"c1", b"c2"] {
        db.commit(&put(key), Durability::Durable).unwrap();
    }
    assert_eq!(
        db.applied_lsn(),
        0,
        "paced: nothing applied before the close"
    );
    returns("closing a pacing database", move || drop(db));
    // What LMDB holds, without the recovery a read-write open would run.
    let copy = ReadOnlyDatabase::open(dir.path()).unwrap();
    let snapshot = copy.read().unwrap();
    for key in [&b"c0"[..], b"c1", b"c2"] {
        assert!(
            snapshot.get("t", key).unwrap().is_some(),
            "{key:?} applied at close"
        );
    }
}
