//! The applier applies a group's puts and deletes in key order (`pagemesh_core`'s key_order
//! module): within one group the stored result must be what log order gives. Changes to one key
//! keep their order, and a record that reads or that creates, clears or drops a table is applied
//! in its place, after everything before it and before everything after it.
//!
//! The applier's pace is an hour, so every `Durable` commit below stays in the log until the
//! conditional put at the end, which waits for `Applied` and hurries the applier: all of them are
//! applied in one group, which the test checks through `Database::stats`.

mod common;

use common::contents;
use std::time::Duration;

use pagemesh_core::{Database, Durability, Options, WriteBatch};

fn options() -> Options {
    Options::new().apply_pace(Duration::from_secs(3600), 8 << 20)
}

fn durable(db: &Database, build: impl FnOnce(&mut WriteBatch)) -> u64 {
    let mut batch = WriteBatch::new();
    build(&mut batch);
    db.commit(&batch, Durability::Durable).unwrap()
}

/// Commits `batches` with `Memory`, without waiting on each (a wait seals its page, and the
/// records are to share pages), then an empty batch with `Applied`, which hurries the applier;
/// returns how many groups it took to apply them.
fn apply_backlog(db: &Database, batches: impl IntoIterator<Item = WriteBatch>) -> u64 {
    let groups_before = db.stats().groups;
    let tickets: Vec<_> = batches
        .into_iter()
        .map(|batch| db.commit_async(&batch, Durability::Memory).unwrap())
        .collect();
    db.commit(&WriteBatch::new(), Durability::Applied).unwrap();
    for ticket in tickets {
        ticket.wait().unwrap();
    }
    db.stats().groups - groups_before
}

#[test]
fn a_group_applied_in_key_order_stores_what_log_order_gives() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let first = db.put_if_version("t", b"k", None, b"v0").unwrap();
    let groups_before = db.stats().groups;

    // Keys out of order, and a value that spans pages (the reader assembles that record).
    let big = vec![7u8; 10_000];
    let s1 = durable(&db, |b| {
        b.put("t", b"z", b"1").unwrap();
        b.put("t", b"big", &big).unwrap();
        b.put("t", b"a", b"1").unwrap();
        b.put("t", b"m", b"1").unwrap();
    });
    // Changes `k`'s version: the conditional put at the end expects it.
    let s2 = durable(&db, |b| {
        b.put("t", b"k", b"v1").unwrap();
    });
    // Several changes to one key in a group: the last one stands.
    let s3 = durable(&db, |b| {
        b.put("t", b"a", b"2").unwrap();
        b.delete("t", b"m").unwrap();
        b.put("t", b"m", b"3").unwrap();
        b.put("t", b"z", b"2").unwrap();
        b.delete("t", b"z").unwrap();
    });
    // A clear between puts of the same record, and between records.
    durable(&db, |b| {
        b.put("u", b"x", b"1").unwrap();
    });
    let s5 = durable(&db, |b| {
        b.put("u", b"w", b"1").unwrap();
        b.clear_table("u").unwrap();
        b.put("u", b"y", b"1").unwrap();
    });
    // A drop between two records writing the table: only what came after it is left.
    durable(&db, |b| {
        b.put("w", b"p", b"1").unwrap();
    });
    durable(&db, |b| {
        b.drop_table("w").unwrap();
    });
    let s8 = durable(&db, |b| {
        b.put("w", b"q", b"1").unwrap();
    });
    // Deletes of keys that were never there, in a table that does not exist, change nothing.
    durable(&db, |b| {
        b.delete("t", b"never").unwrap();
        b.delete("nowhere", b"k").unwrap();
    });
    // Applies only if the put of `s2` was applied before its version check.
    let s10 = db.put_if_version("t", b"k", Some(s2), b"v2").unwrap();

    let stats = db.stats();
    assert_eq!(
        stats.groups,
        groups_before + 1,
        "the backlog must be one group, or this test checks nothing: {stats:?}"
    );
    let t =
        |key: &[u8], seq: u64, bytes: &[u8]| ("t".to_string(), key.to_vec(), seq, bytes.to_vec());
    let expected = vec![
        t(b"a", s3, b"2"),
        t(b"big", s1, &big),
        t(b"k", s10, b"v2"),
        t(b"m", s3, b"3"),
        ("u".into(), b"y".to_vec(), s5, b"1".to_vec()),
        ("w".into(), b"q".to_vec(), s8, b"1".to_vec()),
    ];
    let mut found = contents(&db);
    found.sort();
    assert_eq!(found, expected);
    assert!(first < s1, "versions are log positions");

    // And the same after a reopen.
    drop(db);
    let db = Database::open(dir.path(), options()).unwrap();
    let mut found = contents(&db);
    found.sort();
    assert_eq!(found, expected);
}

/// A conditional put whose expected version an earlier put of the same group changed must
/// conflict, although the key's version before the group was the one it expects.
#[test]
fn a_version_check_sees_the_changes_before_it_in_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let v0 = db.put_if_version("t", b"k", None, b"v0").unwrap();
    let groups_before = db.stats().groups;
    durable(&db, |b| {
        b.put("t", b"k", b"v1").unwrap();
    });
    let outcome = db.put_if_version("t", b"k", Some(v0), b"stale");
    assert!(
        matches!(outcome, Err(pagemesh_core::Error::Conflict { .. })),
        "{outcome:?}"
    );
    assert_eq!(db.stats().groups, groups_before + 1, "one group");
    let snapshot = db.read().unwrap();
    let value = snapshot.get("t", b"k").unwrap().map(|v| v.bytes.to_vec());
    assert_eq!(value, Some(b"v1".to_vec()));
}

/// Records of every length, some with empty values, so that records start at every offset of a
/// page, their headers and values straddle page ends, and empty values end full pages: in one
/// group, every value must come back as it was put. (The applier finds the values of records
/// that span pages again in the ring by their place in the payload stream.)
#[test]
fn values_are_found_again_wherever_records_fall_in_the_pages() {
    const RECORDS: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    db.commit(&WriteBatch::new(), Durability::Applied).unwrap();
    let value = |i: usize, j: usize| -> Vec<u8> {
        let len = (i * 7 + j * 13) % 97;
        (0..len).map(|b| (i + j + b) as u8).collect()
    };
    let groups = apply_backlog(
        &db,
        (0..RECORDS).map(|i| {
            let mut batch = WriteBatch::new();
            for j in 0..=(i % 3) {
                batch
                    .put("t", format!("k{i:06}-{j}").as_bytes(), &value(i, j))
                    .unwrap();
            }
            batch
        }),
    );
    assert_eq!(groups, 1, "one group: {:?}", db.stats());
    let snapshot = db.read().unwrap();
    for i in 0..RECORDS {
        for j in 0..=(i % 3) {
            let key = format!("k{i:06}-{j}");
            let found = snapshot.get("t", key.as_bytes()).unwrap();
            assert_eq!(found.map(|v| v.bytes.to_vec()), Some(value(i, j)), "{key}");
        }
    }
}

/// A record that began in an earlier group's pages (the group before ended inside it) is kept
/// whole by the group that completes it, since the pages it began in may be released: its
/// values must come back as they were put. Groups end inside records here because the tables
/// outgrow a small changed-pages budget (`Options::group_dirty_bytes_max`), which ends a group at
/// a run of 64 pages whatever the records, and each record is a batch of 50 puts spanning pages.
#[test]
fn a_record_that_spans_two_groups_is_applied_whole() {
    const BATCHES: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options().group_dirty_bytes_max(256 << 10)).unwrap();
    let key = |i: usize| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes();
    let value = |i: usize| -> Vec<u8> { (0..150).map(|b| (i + b) as u8).collect() };
    // First, tables larger than the budget (under it, groups are not limited).
    let mut first = WriteBatch::new();
    for i in BATCHES * 50..BATCHES * 50 + 5_000 {
        first.put("t", &key(i), &value(i)).unwrap();
    }
    db.commit(&first, Durability::Applied).unwrap();
    let groups = apply_backlog(
        &db,
        (0..BATCHES).map(|batch_index| {
            let mut batch = WriteBatch::new();
            for i in batch_index * 50..(batch_index + 1) * 50 {
                batch.put("t", &key(i), &value(i)).unwrap();
            }
            batch
        }),
    );
    assert!(
        groups >= 10,
        "the budget must split the load: {:?}",
        db.stats()
    );
    let snapshot = db.read().unwrap();
    for i in 0..BATCHES * 50 {
        let found = snapshot.get("t", &key(i)).unwrap();
        assert_eq!(found.map(|v| v.bytes.to_vec()), Some(value(i)), "{i}");
    }
}

/// More tiny puts than one round gathers (`GATHERED_MAX`, 2^18): the group applies them in
/// several rounds, in order, so a key put in an early round and again in a later one keeps the
/// later value.
#[test]
fn a_group_of_more_tiny_puts_than_a_round_gathers_keeps_the_last_value() {
    const PUTS: u32 = 400_000;
    const KEYS: u32 = 150_000;
    let dir = tempfile::tempdir().unwrap();
    // 7 MB of log: a 32 MiB ring, so that the pace's backlog (a quarter ring) holds it.
    let db = Database::open(dir.path(), options().ring_slots(1 << 13)).unwrap();
    db.commit(&WriteBatch::new(), Durability::Applied).unwrap();
    let groups = apply_backlog(
        &db,
        (0..PUTS).step_by(1_000).map(|start| {
            let mut batch = WriteBatch::new();
            for i in start..start + 1_000 {
                batch
                    .put("t", &(i % KEYS).to_be_bytes(), &i.to_le_bytes())
                    .unwrap();
            }
            batch
        }),
    );
    assert_eq!(groups, 1, "one group: {:?}", db.stats());
    let snapshot = db.read().unwrap();
    for key in 0..KEYS {
        // The last i with i % KEYS == key.
        let last = key + (PUTS - 1 - key) / KEYS * KEYS;
        let found = snapshot.get("t", &key.to_be_bytes()).unwrap();
        assert_eq!(
            found.map(|v| v.bytes.to_vec()),
            Some(last.to_le_bytes().to_vec())
        );
    }
}
