//! History: full snapshots (export, restore), binlog ranges, and retention.
//!
//! A database is exported mid-life and restored into an empty directory: the copy holds exactly
//! the same entries with the same versions and identity, and continues the log where the snapshot
//! stood. A damaged stream restores nothing. The binlog reads back every record committed;
//! retention trims it by size but never past a registered cursor, and asking below what it kept
//! is a `Purged` error.

mod common;

use common::contents;
use pagemesh_core::{Database, Durability, Error, Options, WriteBatch};
use pagemesh_logpage::RecordReader;
use std::time::Duration;

fn fill(db: &Database, from: u32, to: u32) {
    for i in from..to {
        let mut batch = WriteBatch::new();
        batch
            .put(
                "a",
                &i.to_be_bytes(),
                &vec![i as u8; 100 + i as usize % 500],
            )
            .unwrap();
        if i % 7 == 0 {
            batch.delete("a", &(i / 2).to_be_bytes()).unwrap();
            batch.put("b", &i.to_le_bytes(), b"other").unwrap();
        }
        db.commit(&batch, Durability::Applied).unwrap();
    }
}

#[test]
fn a_restored_snapshot_is_the_same_database_and_continues_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("src"), Options::new().ring_slots(64)).unwrap();
    fill(&db, 0, 300);
    let at_snapshot = contents(&db); // commits are Applied and sequential: this is the snapshot
    let mut stream = Vec::new();
    let exported = db.read().unwrap().export(&mut stream).unwrap();
    fill(&db, 300, 320); // after the snapshot: not in it
    let (copy, restored) = Database::restore(
        dir.path().join("copy"),
        &stream[..],
        Options::new().ring_slots(64),
    )
    .unwrap();
    assert_eq!(
        (restored.entries, restored.lsn),
        (exported.entries, exported.lsn)
    );
    assert_eq!(copy.uuid(), db.uuid());
    let copy_contents = contents(&copy);
    assert_eq!(copy_contents.len(), at_snapshot.len());
    assert!(
        copy_contents == at_snapshot,
        "the copy equals the original at the snapshot"
    );
    assert!(
        contents(&db) != at_snapshot,
        "the original moved on after the snapshot"
    );
    let mut batch = WriteBatch::new();
    batch.put("a", b"new", b"after restore").unwrap();
    let seq = copy.commit(&batch, Durability::Applied).unwrap();
    assert!(
        seq >= exported.lsn * 4096,
        "the copy continues the log past the snapshot"
    );
}

#[test]
fn a_damaged_or_truncated_stream_restores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("src"), Options::new().ring_slots(64)).unwrap();
    fill(&db, 0, 50);
    let mut stream = Vec::new();
    db.read().unwrap().export(&mut stream).unwrap();
    let mut flipped = stream.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    for (name, bad) in [
        ("flipped", &flipped[..]),
        ("truncated", &stream[..stream.len() - 9]),
    ] {
        let target = dir.path().join(name);
        let err = Database::restore(&target, bad, Options::new().ring_slots(64)).unwrap_err();
        assert!(matches!(err, Error::SnapshotDecode { .. }), "{name}: {err}");
        assert!(
            !target.join("lmdb").exists(),
            "{name}: nothing half-restored is left"
        );
        // And the directory can take a good restore afterwards.
        Database::restore(&target, &stream[..], Options::new().ring_slots(64)).unwrap();
    }
}

/// `stream` with its trailing crc32c computed again, as a peer that forges a stream would send it.
fn resealed(mut stream: Vec<u8>) -> Vec<u8> {
    let body = stream.len() - 4;
    let crc = crc32c::crc32c(&stream[..body]);
    stream[body..].copy_from_slice(&crc.to_le_bytes());
    stream
}

/// A stream whose crc holds but whose header cannot be true is refused before anything is
/// written, and leaves the directory as it was. The `snapshot_restore` fuzz target found the
/// first (its input is kept here as it came): an LSN beyond the page format's limit restored,
/// then failed the database's open, and the LMDB environment it had written stayed behind, so
/// the directory could take no restore again. An `applied_seq_end` beyond the snapshot's LSN
/// would have opened, and crash recovery would then have skipped the records committed after
/// the restore as already applied.
#[test]
fn a_stream_whose_header_cannot_be_true_restores_nothing() {
    let found_by_fuzzing = resealed(vec![
        80, 77, 83, 78, 65, 80, 0, 2, 214, 0, 214, 214, 214, 242, 122, 6, 142, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 214, 242, 122, 6, 142, 0, 0, 0, 0,
        0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 214, 0, 0, 0, 0, 0,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("src"), Options::new().ring_slots(64)).unwrap();
    fill(&db, 0, 20);
    let mut stream = Vec::new();
    db.read().unwrap().export(&mut stream).unwrap();
    // Header: magic 8, two uuids 32, binlog_next_lsn 8, replay_lsn 8, applied_seq_end 8.
    let (lsn_at, seq_at) = (40, 56);
    let leftovers = |dir: &std::path::Path| -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .map(|entries| entries.map(|entry| entry.unwrap().file_name()).collect())
            .unwrap_or_default()
    };
    let field = |at: usize| u64::from_le_bytes(stream[at..at + 8].try_into().unwrap());
    assert!(
        field(lsn_at) > 0 && field(seq_at) > 0,
        "a snapshot of a live database"
    );
    let with = |at: usize, value: u64| {
        let mut forged = stream.clone();
        forged[at..at + 8].copy_from_slice(&value.to_le_bytes());
        resealed(forged)
    };
    let lsn_beyond = with(lsn_at, pagemesh_logpage::page::LSN_LIMIT);
    let seq_beyond = with(
        seq_at,
        (field(lsn_at) + 1) * pagemesh_logpage::PAGE_SIZE as u64,
    );
    for (name, bad) in [
        ("found by fuzzing", &found_by_fuzzing),
        ("lsn beyond the format", &lsn_beyond),
        ("applied seq beyond the lsn", &seq_beyond),
    ] {
        for replica in [false, true] {
            let target = dir.path().join(format!("{name} {replica}"));
            let options = Options::new().ring_slots(64);
            let restored = match replica {
                false => Database::restore(&target, &bad[..], options).map(drop),
                true => {
                    pagemesh_core::Plumbing::restore_replica(&target, &bad[..], options).map(drop)
                }
            };
            let err = restored.unwrap_err();
            assert!(
                matches!(err, Error::SnapshotDecode { .. }),
                "{name}, replica {replica}: {err}"
            );
            let left = leftovers(&target);
            assert!(left.is_empty(), "{name}, replica {replica}: left {left:?}");
            Database::restore(&target, &stream[..], Options::new().ring_slots(64)).unwrap();
        }
    }

    // A good stream whose database then fails to open (here: a ring the log refuses) leaves
    // nothing either.
    let target = dir.path().join("open fails");
    let err = Database::restore(&target, &stream[..], Options::new().ring_slots(3)).unwrap_err();
    assert!(matches!(err, Error::Log(_)), "{err}");
    let left = leftovers(&target);
    assert!(left.is_empty(), "left {left:?}");
    Database::restore(&target, &stream[..], Options::new().ring_slots(64)).unwrap();
}

#[test]
fn the_binlog_reads_back_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::new().ring_slots(64)).unwrap();
    fill(&db, 0, 200);
    let snapshot = db.read().unwrap();
    let mut reader = RecordReader::new();
    let mut records = 0;
    for page in snapshot.binlog_range(0).unwrap() {
        reader.feed(page.unwrap().page(), |_| records += 1).unwrap();
    }
    assert_eq!(records, 200);
}

#[test]
fn retention_trims_by_size_but_never_past_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let options = || Options::new().ring_slots(64).binlog_retain_bytes(64 << 10);
    {
        let db = Database::open(dir.path().join("kept"), options()).unwrap();
        db.plumbing().set_cursor("replica-1", 0).unwrap();
        fill(&db, 0, 400);
        assert!(
            db.read().unwrap().binlog_range(0).unwrap().count() > 0,
            "cursor at 0 keeps it all"
        );
    }
    let db = Database::open(dir.path().join("trimmed"), options()).unwrap();
    fill(&db, 0, 400);
    let snapshot = db.read().unwrap();
    let whole = snapshot.binlog_range(0).map(Iterator::count);
    match whole {
        Err(Error::Purged {
            requested: 0,
            oldest,
        }) => {
            assert!(oldest > 0);
            let pages = snapshot.binlog_range(oldest).unwrap().count();
            assert!(pages > 0, "what is retained reads back");
        }
        Err(other) => panic!("expected Purged, got {other}"),
        Ok(pages) => panic!("expected Purged, got the whole binlog ({pages} pages)"),
    }
}

#[test]
fn retention_trims_by_age_but_never_past_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    // A byte budget that never binds: only age trims here.
    let options = |age| {
        Options::new()
            .ring_slots(64)
            .binlog_retain_bytes(1 << 30)
            .binlog_retain_age(age)
    };
    let young =
        Database::open(dir.path().join("young"), options(Duration::from_secs(3600))).unwrap();
    fill(&young, 0, 200);
    assert!(
        young.read().unwrap().binlog_range(0).unwrap().count() > 0,
        "nothing is an hour old"
    );

    let old = Database::open(dir.path().join("old"), options(Duration::ZERO)).unwrap();
    old.plumbing().set_cursor("replica-1", 3).unwrap();
    fill(&old, 0, 200);
    let held = old.plumbing().binlog_oldest_lsn().unwrap();
    // History is retired a segment at a time (16 pages with 64 slots): the cursor at 3 keeps
    // the first segment.
    assert!(
        held <= 3,
        "every segment is too old, but the cursor at 3 holds the first (oldest {held})"
    );
    old.plumbing().remove_cursor("replica-1").unwrap();
    fill(&old, 200, 400);
    let oldest = old.plumbing().binlog_oldest_lsn().unwrap();
    assert!(
        oldest > 3,
        "without the cursor, age trims on (oldest {oldest})"
    );
    let snapshot = old.read().unwrap();
    assert!(
        snapshot.binlog_range(oldest).unwrap().count() > 0,
        "the pages the log still holds are kept"
    );
}

#[test]
fn a_history_read_that_retention_overtakes_ends_in_purged() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::new().ring_slots(64).binlog_retain_bytes(64 << 10);
    let db = Database::open(dir.path(), options).unwrap();
    fill(&db, 0, 200);
    let oldest = db.plumbing().binlog_oldest_lsn().unwrap();
    let snapshot = db.read().unwrap();
    let mut pages = snapshot.binlog_range(oldest).unwrap();
    let first = pages.next().unwrap().unwrap();
    assert_eq!(first.lsn(), oldest);
    // Retention retires the segments the read is in while it goes on (from another thread:
    // this one holds a read transaction, and LMDB gives a thread one at a time).
    let applied = snapshot.stat().unwrap().binlog_next_lsn;
    std::thread::scope(|s| {
        s.spawn(|| {
            fill(&db, 200, 800);
            let now = db.plumbing().binlog_oldest_lsn().unwrap();
            assert!(
                now > applied,
                "retention passed the snapshot ({now} <= {applied})"
            );
        });
    });
    let mut next = oldest + 1;
    let ended = loop {
        match pages.next() {
            Some(Ok(page)) => {
                // A page handed out is the one asked for, never a reused file's bytes.
                assert_eq!(page.lsn(), next);
                next += 1;
            }
            Some(Err(error)) => break error,
            None => panic!("the read outlived a retirement of every page it had left"),
        }
    };
    assert!(
        matches!(ended, Error::Purged { requested, .. } if requested == next),
        "expected Purged at {next}, got {ended}"
    );
    assert!(pages.next().is_none(), "nothing after the error");
}

#[test]
fn a_table_name_with_a_nul_is_refused_in_batches_and_in_snapshot_streams() {
    let mut batch = WriteBatch::new();
    assert!(matches!(
        batch.put("a\0b", b"k", b"v"),
        Err(Error::InvalidTable { .. })
    ));

    // A stream whose table name is damaged into one with a NUL, crc re-sealed: a decode error,
    // not a panic (LMDB names are C strings). Found by the snapshot_restore fuzz target.
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("src"), Options::new()).unwrap();
    let mut batch = WriteBatch::new();
    batch.put("ab", b"k", b"v").unwrap();
    db.commit(&batch, Durability::Applied).unwrap();
    let mut stream = Vec::new();
    db.read().unwrap().export(&mut stream).unwrap();
    let at = stream
        .windows(3)
        .position(|w| w == [2, b'a', b'b'])
        .expect("the entry's table name");
    stream[at + 2] = 0;
    let body = stream.len() - 4;
    let crc = crc32c::crc32c(&stream[..body]);
    stream[body..].copy_from_slice(&crc.to_le_bytes());
    let restored = Database::restore(dir.path().join("copy"), &stream[..], Options::new());
    assert!(
        matches!(
            restored,
            Err(Error::SnapshotDecode {
                what: "table name",
                ..
            })
        ),
        "{:?}",
        restored.err()
    );
}
