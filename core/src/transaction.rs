//! An optimistic transaction: reads from one [`Snapshot`], buffered writes, and the versions it
//! read, committed as one log record.
//!
//! The applier applies the record only if every version read is still current, and skips it
//! otherwise (the same way on every replica); [`Database::transaction`] then runs the body again
//! on a fresh snapshot. Nothing here takes a lock or touches LMDB's write side.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::read::Snapshot;
use crate::record::RecordBuilder;
#[cfg(doc)]
use crate::Database;

/// A transaction whose body returned: its record and the versions it read.
pub(crate) struct Finished {
    pub(crate) record: RecordBuilder,
    read_set: BTreeMap<(String, Vec<u8>), Option<u64>>,
}

impl Finished {
    /// Whether a version this transaction read is no longer the one `now` holds: the applier
    /// would skip it, so it need not be logged.
    pub(crate) fn is_stale(&self, now: &Snapshot<'_>) -> Result<bool> {
        for ((table, key), version) in &self.read_set {
            if now.get(table, key)?.map(|v| v.seq) != *version {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// An optimistic transaction; see [`Database::transaction`].
pub struct Transaction<'db> {
    snapshot: Snapshot<'db>,
    record: RecordBuilder,
    /// Buffered writes by `(table, key)`: `None` is a delete. Reads see them first.
    writes: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
    /// Keys whose version is already in `record` (each is recorded once), with that version.
    read_set: BTreeMap<(String, Vec<u8>), Option<u64>>,
    /// The log's largest record: a put past it is refused at once.
    record_len_max: usize,
}

impl<'db> Transaction<'db> {
    /// A transaction reading from `snapshot`, with nothing read or written yet.
    pub(crate) fn begin(snapshot: Snapshot<'db>, record_len_max: usize) -> Self {
        Self {
            record_len_max,
            snapshot,
            record: RecordBuilder::default(),
            writes: BTreeMap::new(),
            read_set: BTreeMap::new(),
        }
    }

    /// Ends the body: the snapshot is released (a thread holds one LMDB read transaction at a
    /// time) and what is left is the record to commit.
    pub(crate) fn finish(self) -> Finished {
        Finished {
            record: self.record,
            read_set: self.read_set,
        }
    }

    /// The value of `key` in `table` as this transaction sees it: its own write if it made one,
    /// else the snapshot's (and the version read is recorded).
    pub fn get(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let id = (table.to_string(), key.to_vec());
        if let Some(write) = self.writes.get(&id) {
            return Ok(write.clone());
        }
        let value = self.snapshot.get(table, key)?;
        let version = value.map(|v| v.seq);
        if let std::collections::btree_map::Entry::Vacant(entry) = self.read_set.entry(id) {
            self.record.read(table, key, version)?;
            entry.insert(version);
        }
        Ok(value.map(|v| v.bytes.to_vec()))
    }

    /// Buffers a put; refuses a value that would make the transaction's record larger than the
    /// log takes ([`crate::Error::ValueTooLarge`]).
    pub fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<()> {
        (self.record).check_put_fits(table, key, value, self.record_len_max)?;
        self.record.put(table, key, value)?;
        self.writes
            .insert((table.to_string(), key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    /// Buffers a delete.
    pub fn delete(&mut self, table: &str, key: &[u8]) -> Result<()> {
        self.record.delete(table, key)?;
        self.writes.insert((table.to_string(), key.to_vec()), None);
        Ok(())
    }
}
