//! Applying a backlog: how long the applier takes to apply records waiting in the log, as one
//! LMDB group, against raw heed putting the same records in one synced write transaction.
//!
//! The database first holds `records / 2` records (applied, untimed), so the backlog lands in a
//! tree of that size, as a load into a live database does. The other half is committed with
//! `Durability::Memory` while the applier's pace is an hour, so nothing of it is applied yet;
//! the timer then runs from one more commit, which waits for `Applied` and so hurries the
//! applier, until it returns: one group, everything in it applied, LMDB synced.
//!
//! The backlog's records are either plain puts ([`BacklogShape::Puts`]), which the applier
//! gathers and applies sorted by key, or the same puts in records that also create their
//! (existing) table ([`BacklogShape::Barriers`]): a table operation makes a record a barrier,
//! applied whole and in log order, and decoded twice (once to classify it, once to apply it), as
//! the records of transactions and `put_if_version` are (`pagemesh_core`'s key_order module).
//!
//! Two baselines in the same run, each into a fresh environment holding the same first half:
//! - `heed-txn`: the backlog's puts in one synced transaction, in log order, values with the
//!   8-byte version prefix pagemesh stores: what LMDB costs for the same work;
//! - `heed-txn-sorted`: the same, the puts sorted by key first (the sort timed too): the
//!   ceiling for an applier that applies a group in key order (`pagemesh_core`'s key_order
//!   module), as pagemesh's does.

use std::path::Path;
use std::time::{Duration, Instant};

use pagemesh_core::{Database, Durability, Options, WriteBatch};

use super::commit::{open_heed, versioned, TABLE};

/// Records per commit of the backlog, as in the demo.
const BATCH: usize = 50;

/// A log large enough to hold the backlog without its pace ending early (a quarter of the
/// ring ends it).
fn options() -> Options {
    Options::new()
        .ring_slots(1 << 15)
        .group_bytes_max(1 << 30)
        .apply_pace(Duration::from_secs(3600), 1 << 30)
}

/// What the backlog's records hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BacklogShape {
    /// Batches of puts: a group's puts are applied sorted by key.
    Puts,
    /// The same batches, each also creating its table, which exists already (a no-op): every
    /// record is a barrier, applied whole in log order. Set against `heed-txn` (log order
    /// too), what that path costs beyond LMDB's own work.
    Barriers,
}

/// Times the applier applying `records[records.len() / 2..]`, waiting in the log as records
/// of `shape`, into a fresh database in `dir` holding the first half.
pub fn time_apply_backlog(
    dir: &Path,
    records: &[(Vec<u8>, Vec<u8>)],
    shape: BacklogShape,
) -> pagemesh_core::Result<Duration> {
    let (first, backlog) = records.split_at(records.len() / 2);
    let db = Database::open(dir, options())?;
    commit_all(&db, first, BacklogShape::Puts, Durability::Memory)?;
    db.commit(&WriteBatch::new(), Durability::Applied)?;
    commit_all(&db, backlog, shape, Durability::Memory)?;
    let started = Instant::now();
    db.commit(&WriteBatch::new(), Durability::Applied)?;
    Ok(started.elapsed())
}

fn commit_all(
    db: &Database,
    records: &[(Vec<u8>, Vec<u8>)],
    shape: BacklogShape,
    durability: Durability,
) -> pagemesh_core::Result<()> {
    for chunk in records.chunks(BATCH) {
        let mut batch = WriteBatch::new();
        if shape == BacklogShape::Barriers {
            batch.create_table(TABLE)?;
        }
        for (key, value) in chunk {
            batch.put(TABLE, key, value)?;
        }
        db.commit(&batch, durability)?;
    }
    Ok(())
}

/// Times raw heed putting `records[records.len() / 2..]` in one synced transaction, in their
/// order or sorted by key, into a fresh environment in `dir` holding the first half.
pub fn time_heed_backlog(
    dir: &Path,
    records: &[(Vec<u8>, Vec<u8>)],
    sorted: bool,
) -> heed::Result<Duration> {
    let (first, backlog) = records.split_at(records.len() / 2);
    let (env, db) = open_heed(dir, true)?;
    let mut value = Vec::new();
    let mut wtxn = env.write_txn()?;
    for (key, bytes) in first {
        versioned(&mut value, 0, bytes);
        db.put(&mut wtxn, key, &value)?;
    }
    wtxn.commit()?;
    let started = Instant::now();
    let mut order: Vec<&(Vec<u8>, Vec<u8>)> = backlog.iter().collect();
    if sorted {
        order.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let mut wtxn = env.write_txn()?;
    for (key, bytes) in order {
        versioned(&mut value, 0, bytes);
        db.put(&mut wtxn, key, &value)?;
    }
    wtxn.commit()?;
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_applies_a_small_backlog() {
        let records = super::super::commit::records(2_000);
        let dir = tempfile::tempdir().unwrap();
        for shape in [BacklogShape::Puts, BacklogShape::Barriers] {
            let path = dir.path().join(format!("pagemesh-{shape:?}"));
            time_apply_backlog(&path, &records, shape).unwrap();
            let db = Database::open(&path, options()).unwrap();
            let snapshot = db.read().unwrap();
            for (key, value) in &records {
                let stored = snapshot.get(TABLE, key).unwrap().map(|v| v.bytes.to_vec());
                assert_eq!(stored.as_deref(), Some(&value[..]), "{shape:?}");
            }
            assert_eq!(db.tables(), [TABLE], "{shape:?}");
        }
        for sorted in [false, true] {
            time_heed_backlog(&dir.path().join(format!("heed-{sorted}")), &records, sorted)
                .unwrap();
        }
    }
}
