//! A failed sync of the log ring fails the `Durable` commit that waits on it with the log's
//! `Poisoned` error (naming the ring file and the pages the sync covered), every later commit
//! fails too, and reopening the database recovers: what was acknowledged `Durable` before the
//! failure is there, new commits work, and the reopen takes a new epoch (the stop was not clean).
//! A second test checks the epoch rule on its own: a clean close keeps the epoch, the files of a
//! database that was running (an unclean stop) open at a new one.
//!
//! The failure is injected with pagemesh-logpage's `fault-injection` feature (a dev-dependency
//! feature here): `LogOptions::sync_hook`, passed in through `Options::log_options_with`, fails
//! every sync of the ring once the test flips a switch, with `EIO`, as a failing disk would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pagemesh_core::{Database, Durability, Error, Options, WriteBatch};

fn batch(key: &[u8]) -> WriteBatch {
    let mut batch = WriteBatch::new();
    batch.put("t", key, b"value").unwrap();
    batch
}

/// Whether `error` is the log's poison, naming the segment of `dir` the failed sync covered.
fn is_ring_poisoned(error: &Error, dir: &std::path::Path) -> bool {
    matches!(error, Error::Log(pagemesh_logpage::Error::Poisoned { path, source, .. })
        if path == &dir.join("log-0000000000000000.seg") && source.raw_os_error() == Some(5))
}

#[test]
fn a_failed_ring_sync_fails_the_durable_commit_and_every_later_one_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    let switch = Arc::clone(&failing);
    let options = Options::new()
        .ring_slots(64)
        .log_options_with(move |log_options| {
            let switch = Arc::clone(&switch);
            log_options.sync_hook(move |_, _| {
                if switch.load(Ordering::SeqCst) {
                    Err(std::io::Error::from_raw_os_error(5)) // EIO
                } else {
                    Ok(())
                }
            })
        });
    let epoch_before;
    {
        let db = Database::open(dir.path(), options).unwrap();
        epoch_before = db.plumbing().log().epoch();
        let seq = db.commit(&batch(b"before"), Durability::Durable).unwrap();
        assert!(db.durable_lsn() > seq / 4096);
        failing.store(true, Ordering::SeqCst);
        let error = db
            .commit(&batch(b"during"), Durability::Durable)
            .unwrap_err();
        assert!(is_ring_poisoned(&error, dir.path()), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("log-0000000000000000.seg"),
            "names the segment: {message}"
        );
        for durability in [Durability::Durable, Durability::Memory, Durability::Applied] {
            let later = db.commit(&batch(b"after"), durability).unwrap_err();
            assert!(
                is_ring_poisoned(&later, dir.path()) || matches!(later, Error::Poisoned { .. }),
                "a later {durability:?} commit fails with the poison: {later}"
            );
        }
    }
    let db = Database::open(dir.path(), Options::new().ring_slots(64)).unwrap();
    assert!(
        db.plumbing().log().epoch() > epoch_before,
        "a poisoned stop is not clean: a new epoch"
    );
    db.commit(&batch(b"reopened"), Durability::Durable).unwrap();
    db.commit(&WriteBatch::new(), Durability::Applied).unwrap();
    let snapshot = db.read().unwrap();
    assert!(snapshot.get("t", b"before").unwrap().is_some());
    assert!(snapshot.get("t", b"reopened").unwrap().is_some());
    assert!(snapshot.get("t", b"after").unwrap().is_none());
}

#[test]
fn a_clean_close_keeps_the_epoch_and_an_unclean_stop_takes_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let open = || Database::open(dir.path(), Options::new().ring_slots(64)).unwrap();
    let db = open();
    assert_eq!(
        db.plumbing().log().epoch(),
        0,
        "a new database starts at epoch 0"
    );
    db.commit(&batch(b"a"), Durability::Durable).unwrap();
    drop(db);
    let db = open();
    assert_eq!(
        db.plumbing().log().epoch(),
        0,
        "a clean stop keeps the epoch"
    );
    db.commit(&batch(b"b"), Durability::Durable).unwrap();
    // An unclean stop, as a crash leaves it (the clean-stop flag cleared, never written back):
    // the files of the running database, copied. (tests/durable_crash.rs kills real processes.)
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    drop(db);
    let crashed = Database::open(copy.path(), Options::new().ring_slots(64)).unwrap();
    assert_eq!(
        crashed.plumbing().log().epoch(),
        1,
        "a copy taken while the database ran is an unclean stop: a new epoch"
    );
    crashed
        .commit(&WriteBatch::new(), Durability::Applied)
        .unwrap();
    assert!(crashed.read().unwrap().get("t", b"b").unwrap().is_some());
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
