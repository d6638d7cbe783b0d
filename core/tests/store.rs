//! The store end to end on real LMDB files: commits at each durability, reads from snapshots,
//! reopen, and recovery of records that were only in the log ring when the process stopped.

use pagemesh_core::{Database, Durability, Error, Options, WriteBatch};

fn batch(table: &str, pairs: &[(&[u8], &[u8])]) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for (key, value) in pairs {
        batch.put(table, key, value).unwrap();
    }
    batch
}

#[test]
fn applied_commits_are_visible_with_their_version() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::new().ring_slots(64)).unwrap();
    let seq1 = db
        .commit(
            &batch("t", &[(b"a", b"1"), (b"b", b"2")]),
            Durability::Applied,
        )
        .unwrap();
    let mut delete = WriteBatch::new();
    delete
        .delete("t", b"a")
        .unwrap()
        .put("u", b"a", b"other table")
        .unwrap();
    let seq2 = db.commit(&delete, Durability::Applied).unwrap();
    assert!(seq2 > seq1);
    let snapshot = db.read().unwrap();
    assert_eq!(snapshot.get("t", b"a").unwrap(), None);
    let b = snapshot.get("t", b"b").unwrap().unwrap();
    assert_eq!((b.seq, b.bytes), (seq1, &b"2"[..]));
    assert_eq!(snapshot.get("u", b"a").unwrap().unwrap().seq, seq2);
    assert_eq!(snapshot.get("missing", b"a").unwrap(), None);
    assert_eq!(db.tables(), ["t", "u"]);
}

#[test]
fn many_concurrent_commits_are_all_applied_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::open(dir.path(), Options::new().ring_slots(64)).unwrap();
        std::thread::scope(|s| {
            for t in 0..8u32 {
                let db = db.clone();
                s.spawn(move || {
                    for i in 0..200u32 {
                        let key = format!("{t:02}-{i:04}");
                        let value = vec![t as u8; 50 + (i as usize % 300)];
                        let durability = if i % 2 == 0 {
                            Durability::Applied
                        } else {
                            Durability::Memory
                        };
                        db.commit(&batch("load", &[(key.as_bytes(), &value)]), durability)
                            .unwrap();
                    }
                });
            }
        });
    }
    let db = Database::open(dir.path(), Options::new().ring_slots(64)).unwrap();
    // Memory commits may still be in the ring at reopen: wait for one applied commit after them.
    db.commit(&batch("sync", &[(b"x", b"y")]), Durability::Applied)
        .unwrap();
    let snapshot = db.read().unwrap();
    let entries: Vec<_> = snapshot
        .prefix("load", b"")
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(entries.len(), 8 * 200);
    for (key, value) in entries {
        let key = std::str::from_utf8(key).unwrap();
        let (t, i): (u8, usize) = (key[..2].parse().unwrap(), key[3..].parse().unwrap());
        assert_eq!(value.bytes, vec![t; 50 + i % 300], "{key}");
    }
}

#[test]
fn a_large_record_spanning_many_pages_applies() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::new().ring_slots(64)).unwrap();
    let big = vec![7u8; 100_000];
    db.commit(&batch("blobs", &[(b"big", &big)]), Durability::Applied)
        .unwrap();
    assert_eq!(
        db.read()
            .unwrap()
            .get("blobs", b"big")
            .unwrap()
            .unwrap()
            .bytes,
        &big[..]
    );
}

#[test]
fn replicated_durability_without_replicas_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::new().ring_slots(16)).unwrap();
    let err = db
        .commit(&batch("t", &[(b"k", b"v")]), Durability::Replicated(1))
        .unwrap_err();
    assert!(matches!(err, Error::NoReplicas { replicas: 1 }), "{err}");
}

#[test]
fn a_directory_of_another_lmdb_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lmdb = dir.path().join("lmdb");
    std::fs::create_dir_all(&lmdb).unwrap();
    // SAFETY: a fresh directory nobody else opens.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(4).open(&lmdb) }.unwrap();
    let wtxn = env.write_txn().unwrap();
    env.create_databases_and_commit(wtxn, |wdo, wtxn| -> Result<_, heed::Error> {
        let meta: heed::Database<heed::types::Bytes, heed::types::Bytes> =
            wdo.create_database(wtxn, Some("__meta"))?;
        meta.put(wtxn, b"someone", b"else")?;
        Ok(heed::CommitOrAbort::<_, ()>::Commit(()))
    })
    .unwrap();
    drop(env);
    let err = Database::open(dir.path(), Options::new().ring_slots(16)).unwrap_err();
    assert!(matches!(err, Error::NotADatabase { .. }), "{err}");
}

#[test]
fn records_spanning_group_boundaries_apply_and_survive_reopen() {
    // One page per group: every record spanning pages is still open when a group commits and is
    // finished by a later group; a clean close applies everything, and reopening keeps it all.
    // (Replay of a record left open by a crash is covered by tests/crash.rs.)
    let dir = tempfile::tempdir().unwrap();
    let options = || Options::new().ring_slots(64).group_bytes_max(4096);
    let value = |i: u32| vec![i as u8; 3_000 + i as usize * 700];
    for round in 0..3u32 {
        let db = Database::open(dir.path(), options()).unwrap();
        for i in round * 10..round * 10 + 10 {
            let durability = if i % 3 == 0 {
                Durability::Applied
            } else {
                Durability::Memory
            };
            db.commit(
                &batch("spans", &[(&i.to_be_bytes(), &value(i))]),
                durability,
            )
            .unwrap();
        }
    }
    let db = Database::open(dir.path(), options()).unwrap();
    db.commit(&batch("sync", &[(b"x", b"y")]), Durability::Applied)
        .unwrap();
    let snapshot = db.read().unwrap();
    for i in 0..30u32 {
        let stored = snapshot.get("spans", &i.to_be_bytes()).unwrap();
        assert_eq!(
            stored.map(|v| v.bytes.to_vec()),
            Some(value(i)),
            "record {i}"
        );
    }
}

#[test]
fn a_full_map_poisons_with_a_clear_error_and_corrupts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let small = || Options::new().ring_slots(64).map_size(1 << 20);
    let mut acknowledged = Vec::new();
    {
        let db = Database::open(dir.path(), small()).unwrap();
        let failure = (0..10_000u32).find_map(|i| {
            let result = db.commit(
                &batch("fill", &[(&i.to_be_bytes(), &[7u8; 2000])]),
                Durability::Durable,
            );
            match result {
                Ok(_) => {
                    acknowledged.push(i);
                    None
                }
                Err(error) => Some(error),
            }
        });
        let error = failure.expect("a 1 MiB map fills up");
        assert!(matches!(error, Error::Poisoned { .. }), "{error}");
        assert!(
            error.to_string().contains("MDB_MAP_FULL") || error.to_string().contains("MapFull"),
            "{error}"
        );
        // Poisoned: every later write is refused too, not silently dropped.
        assert!(db
            .commit(&batch("fill", &[(b"late", b"x")]), Durability::Memory)
            .is_err());
    }
    let db = Database::open(dir.path(), Options::new().ring_slots(64)).unwrap();
    // `Durable` commits are acknowledged once the ring has them on disk: those the full map kept
    // out of LMDB are applied from the ring on reopen, before this `Applied` commit.
    db.commit(&WriteBatch::new(), Durability::Applied).unwrap();
    let snapshot = db.read().unwrap();
    for i in &acknowledged {
        assert!(
            snapshot.get("fill", &i.to_be_bytes()).unwrap().is_some(),
            "acknowledged commit {i} lost"
        );
    }
    assert!(
        acknowledged.len() > 100,
        "the map held a fair amount before filling"
    );
}

#[test]
fn range_and_prefix_iterate_in_key_order_within_bounds() {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::new().ring_slots(16)).unwrap();
    let keys: [&[u8]; 6] = [b"a", b"ab", b"abc", b"b", b"ba", b"c"];
    let pairs: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (*k, &b"v"[..])).collect();
    db.commit(&batch("t", &pairs), Durability::Applied).unwrap();
    let snapshot = db.read().unwrap();
    let collect = |it: pagemesh_core::Entries<'_>| -> Vec<Vec<u8>> {
        it.map(|e| e.unwrap().0.to_vec()).collect()
    };
    assert_eq!(
        collect(snapshot.prefix("t", b"ab").unwrap()),
        [b"ab".to_vec(), b"abc".to_vec()]
    );
    assert_eq!(
        collect(
            snapshot
                .range::<&[u8; 2]>("t", (Included(b"ab"), Excluded(b"ba")))
                .unwrap()
        ),
        [b"ab".to_vec(), b"abc".to_vec(), b"b".to_vec()]
    );
    assert_eq!(
        collect(
            snapshot
                .range::<&[u8; 1]>("t", (Excluded(b"b"), Unbounded))
                .unwrap()
        ),
        [b"ba".to_vec(), b"c".to_vec()]
    );
    assert_eq!(collect(snapshot.range::<&[u8]>("t", ..).unwrap()).len(), 6);
    assert!(collect(snapshot.range("none", "a"..).unwrap()).is_empty());
}
