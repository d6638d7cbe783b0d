//! An optimistic transaction: reads from one [`Snapshot`], buffered writes, and the versions it
//! read, committed as one log record.
//!
//! The applier applies the record only if everything read is still as it was, and skips it
//! otherwise (the same way on every replica); [`Database::transaction`] then runs the body again
//! on a fresh snapshot. Nothing here takes a lock or touches LMDB's write side.
//!
//! # What is validated
//!
//! - every key read with [`Transaction::get`] or [`Transaction::get_versioned`]: its version
//!   (or its absence) must be the one the snapshot had;
//! - every scan made with [`Transaction::range`] or [`Transaction::prefix`], over the whole
//!   range scanned: the range must hold the same number of entries with the same greatest
//!   version, which holds exactly when no key in it was put, overwritten or deleted since
//!   (`record::RangeRead` says why); so a key *inserted* into a scanned range (a phantom)
//!   conflicts too;
//! - nothing else: a key or range the body did not read may change freely.
//!
//! Reads of the transaction's own buffered writes are not recorded (they cannot be stale).
//!
//! # Tables
//!
//! A transaction may create, drop and clear tables ([`Transaction::create_table`],
//! [`Transaction::drop_table`], [`Transaction::clear_table`]): they go into its record with its
//! puts and deletes, in the order made, and apply atomically with them (or not at all).
//!
//! A transaction observes *entries*, never whether a table exists (it has no call that lists
//! tables), so a table operation another commit applies first is validated as what it does to
//! entries: a drop or clear is the delete of every entry in the table, and a create changes no
//! entry. Hence:
//!
//! - a key read while present in a table another commit dropped or cleared is now absent: the
//!   transaction conflicts;
//! - a scanned range that held entries in such a table now holds none: it conflicts;
//! - a key read as absent, or a range scanned empty, still reads the same: it does *not*
//!   conflict, which is serializable (the transaction applied after the drop sees exactly what
//!   it saw); and a put of the transaction into a table dropped meanwhile creates the table
//!   again, holding only what the transaction put, as a batch's put does.
//!
//! Inside the body, a table the transaction cleared or dropped reads as empty but for the
//! transaction's own later writes, and those reads are not recorded (the transaction's own
//! operation decides them, whatever other commits do).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Bound, RangeBounds};

use crate::error::Result;
use crate::read::Snapshot;
use crate::record::RecordBuilder;
#[cfg(doc)]
use crate::Database;

/// A range's bounds, owned.
type OwnedBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// A scan a transaction made: its table, bounds, and what it saw (entries, greatest version).
struct Scanned {
    table: String,
    bounds: OwnedBounds,
    seen: (u64, u64),
}

/// A transaction whose body returned: its record and what it read.
pub(crate) struct Finished {
    pub(crate) record: RecordBuilder,
    read_set: BTreeMap<(String, Vec<u8>), Option<u64>>,
    scans: Vec<Scanned>,
}

impl Finished {
    /// Whether something this transaction read is no longer what `now` holds: the applier
    /// would skip it, so it need not be logged.
    pub(crate) fn is_stale(&self, now: &Snapshot<'_>) -> Result<bool> {
        for ((table, key), version) in &self.read_set {
            if now.get(table, key)?.map(|v| v.seq) != *version {
                return Ok(true);
            }
        }
        for scan in &self.scans {
            if fingerprint(now, &scan.table, borrowed(&scan.bounds))? != scan.seen {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn borrowed(bounds: &OwnedBounds) -> (Bound<&[u8]>, Bound<&[u8]>) {
    (
        bounds.0.as_ref().map(Vec::as_slice),
        bounds.1.as_ref().map(Vec::as_slice),
    )
}

fn owned<K: AsRef<[u8]>>(bound: Bound<&K>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(key) => Bound::Included(key.as_ref().to_vec()),
        Bound::Excluded(key) => Bound::Excluded(key.as_ref().to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Entries in `bounds` and their greatest version, as `snapshot` sees them.
fn fingerprint(
    snapshot: &Snapshot<'_>,
    table: &str,
    bounds: (Bound<&[u8]>, Bound<&[u8]>),
) -> Result<(u64, u64)> {
    let (mut count, mut max) = (0u64, 0u64);
    for entry in snapshot.range::<&[u8]>(table, bounds)? {
        let (_, value) = entry?;
        count += 1;
        max = max.max(value.seq);
    }
    Ok((count, max))
}

/// The range of keys that start with `prefix`: `prefix..` up to the next prefix (the prefix
/// with its last byte below 0xFF raised by one, and what follows cut), unbounded above if every
/// byte is 0xFF; everything for an empty prefix.
fn prefix_bounds(prefix: &[u8]) -> OwnedBounds {
    let start = if prefix.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Included(prefix.to_vec())
    };
    let end = match prefix.iter().rposition(|&byte| byte != 0xFF) {
        Some(at) => {
            let mut next = prefix[..=at].to_vec();
            next[at] += 1;
            Bound::Excluded(next)
        }
        None => Bound::Unbounded,
    };
    (start, end)
}

/// A value read in a transaction with its version: what [`Database::put_if_version`] takes as
/// `expected`, and what [`Snapshot::get`] reports as [`Value::seq`](crate::Value::seq).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The value's bytes.
    pub bytes: Vec<u8>,
    /// Its version: the log position (`seq`) of the write that stored it.
    pub version: u64,
}

/// Entries a transaction scanned, in key order, its own buffered writes included.
pub type ScannedEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// An optimistic transaction; see [`Database::transaction`].
pub struct Transaction<'db> {
    snapshot: Snapshot<'db>,
    record: RecordBuilder,
    /// Buffered writes by `(table, key)`: `None` is a delete. Reads see them first.
    writes: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
    /// Keys whose version is already in `record` (each is recorded once), with that version.
    read_set: BTreeMap<(String, Vec<u8>), Option<u64>>,
    /// Scans made, each also in `record` as a range read.
    scans: Vec<Scanned>,
    /// Tables this transaction cleared or dropped: the snapshot's entries in them are hidden
    /// (what is left is in `writes`), and reads of them are not recorded.
    emptied: BTreeSet<String>,
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
            scans: Vec::new(),
            emptied: BTreeSet::new(),
        }
    }

    /// Ends the body: the snapshot is released (a thread holds one LMDB read transaction at a
    /// time) and what is left is the record to commit.
    pub(crate) fn finish(self) -> Finished {
        Finished {
            record: self.record,
            read_set: self.read_set,
            scans: self.scans,
        }
    }

    /// The value of `key` in `table` as this transaction sees it: its own write if it made one,
    /// else the snapshot's (and the version read is recorded).
    pub fn get(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let id = (table.to_string(), key.to_vec());
        if let Some(write) = self.writes.get(&id) {
            return Ok(write.clone());
        }
        if self.emptied.contains(table) {
            return Ok(None);
        }
        let value = self.snapshot.get(table, key)?;
        let version = value.map(|v| v.seq);
        if let std::collections::btree_map::Entry::Vacant(entry) = self.read_set.entry(id) {
            self.record.read(table, key, version)?;
            entry.insert(version);
        }
        Ok(value.map(|v| v.bytes.to_vec()))
    }

    /// The committed value of `key` in `table` and its version, as of this transaction's
    /// snapshot: the version [`Database::put_if_version`] takes as `expected` and the snapshot
    /// reports as `Value::seq` (`None`: absent). The read is recorded like [`get`](Self::get)'s,
    /// so the transaction conflicts if the key changes before it applies. It does not see this
    /// transaction's own buffered writes, table operations included (they have no version yet):
    /// use `get` for those.
    ///
    /// ```
    /// use pagemesh_core::{Database, Options};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let db = Database::open(dir.path(), Options::new())?;
    /// let version = db.put_if_version("docs", b"readme", None, b"v1")?;
    /// let (seen, _) = db.transaction(0, |tx| tx.get_versioned("docs", b"readme"))?;
    /// let seen = seen.expect("present");
    /// assert_eq!((seen.bytes.as_slice(), seen.version), (&b"v1"[..], version));
    /// // The version is the one a conditional write expects.
    /// db.put_if_version("docs", b"readme", Some(seen.version), b"v2")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_versioned(&mut self, table: &str, key: &[u8]) -> Result<Option<Versioned>> {
        let value = self.snapshot.get(table, key)?;
        let version = value.map(|v| v.seq);
        let id = (table.to_string(), key.to_vec());
        if let std::collections::btree_map::Entry::Vacant(entry) = self.read_set.entry(id) {
            self.record.read(table, key, version)?;
            entry.insert(version);
        }
        Ok(value.map(|v| Versioned {
            bytes: v.bytes.to_vec(),
            version: v.seq,
        }))
    }

    /// Every entry of `table` with a key in `range`, in key order (`.into_iter().rev()` for
    /// the reverse), as this transaction sees them: the snapshot's, with its own buffered puts
    /// and deletes applied. The whole range is recorded as read: if any key in it is put,
    /// overwritten or deleted before the transaction applies (an insertion included), the
    /// transaction conflicts and is retried. Ranges as [`Snapshot::range`] takes them.
    ///
    /// ```
    /// use pagemesh_core::{Database, Options};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let db = Database::open(dir.path(), Options::new())?;
    /// for (day, amount) in [("2024-01-01", 5u64), ("2024-01-02", 7)] {
    ///     db.put_if_version("sales", day.as_bytes(), None, &amount.to_le_bytes())?;
    /// }
    /// // Sums January and records the total: a sale added to January before this applies
    /// // makes it run again.
    /// let (total, _) = db.transaction(10, |tx| {
    ///     let mut total = 0;
    ///     for (_, amount) in tx.range("sales", "2024-01".."2024-02")? {
    ///         total += u64::from_le_bytes(amount.try_into().unwrap_or_default());
    ///     }
    ///     tx.put("totals", b"2024-01", &total.to_le_bytes())?;
    ///     Ok::<_, pagemesh_core::Error>(total)
    /// })?;
    /// assert_eq!(total, 12);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn range<K: AsRef<[u8]>>(
        &mut self,
        table: &str,
        range: impl RangeBounds<K>,
    ) -> Result<ScannedEntries> {
        let bounds = (owned(range.start_bound()), owned(range.end_bound()));
        self.scan(table, bounds)
    }

    /// Every entry of `table` whose key starts with `prefix` (all of them for an empty one), as
    /// [`range`](Self::range) sees and records them.
    pub fn prefix(&mut self, table: &str, prefix: &[u8]) -> Result<ScannedEntries> {
        self.scan(table, prefix_bounds(prefix))
    }

    fn scan(&mut self, table: &str, bounds: OwnedBounds) -> Result<ScannedEntries> {
        let view = borrowed(&bounds);
        let mut entries = BTreeMap::new();
        if self.emptied.contains(table) {
            // Its own clear or drop decides what is there: nothing to record.
            self.overlay(table, view, &mut entries);
            return Ok(entries.into_iter().collect());
        }
        let (mut count, mut max) = (0u64, 0u64);
        for entry in self.snapshot.range::<&[u8]>(table, view)? {
            let (key, value) = entry?;
            count += 1;
            max = max.max(value.seq);
            entries.insert(key.to_vec(), value.bytes.to_vec());
        }
        self.record.read_range(table, view.0, view.1, count, max)?;
        self.overlay(table, view, &mut entries);
        self.scans.push(Scanned {
            table: table.to_string(),
            bounds,
            seen: (count, max),
        });
        Ok(entries.into_iter().collect())
    }

    /// Applies this transaction's buffered puts and deletes in `table` and `view` to `entries`.
    fn overlay(
        &self,
        table: &str,
        view: (Bound<&[u8]>, Bound<&[u8]>),
        entries: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    ) {
        for ((t, key), write) in &self.writes {
            if t != table || !view.contains(&key[..]) {
                continue;
            }
            match write {
                Some(value) => entries.insert(key.clone(), value.clone()),
                None => entries.remove(key),
            };
        }
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

    /// Buffers the creation of `table`, empty, if it does not exist when the transaction
    /// applies (a no-op if it does), as [`WriteBatch::create_table`](crate::WriteBatch::create_table)
    /// does. Changes no entry, so this transaction's reads see nothing new.
    pub fn create_table(&mut self, table: &str) -> Result<()> {
        self.record.create_table(table)
    }

    /// Buffers the drop of `table`: when the transaction applies, every entry is removed and the
    /// table is no longer listed (a no-op if it does not exist); a later put of this transaction
    /// into it creates it again. From here on this transaction reads the table as empty but for
    /// its own later writes (see the module docs, Tables).
    ///
    /// ```
    /// use pagemesh_core::{Database, Error, Options};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let db = Database::open(dir.path(), Options::new())?;
    /// db.put_if_version("staging", b"row", None, b"ready")?;
    /// // Publish: move the staged rows and drop the staging table, all or nothing.
    /// db.transaction(10, |tx| {
    ///     for (key, value) in tx.prefix("staging", b"")? {
    ///         tx.put("live", &key, &value)?;
    ///     }
    ///     tx.drop_table("staging")?;
    ///     Ok::<_, Error>(())
    /// })?;
    /// assert_eq!(db.tables(), ["live"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn drop_table(&mut self, table: &str) -> Result<()> {
        self.record.drop_table(table)?;
        self.forget_writes(table);
        Ok(())
    }

    /// Buffers the clearing of `table`: when the transaction applies, every entry is removed
    /// and the table kept (a no-op if it does not exist). From here on this transaction reads
    /// the table as empty but for its own later writes.
    pub fn clear_table(&mut self, table: &str) -> Result<()> {
        self.record.clear_table(table)?;
        self.forget_writes(table);
        Ok(())
    }

    /// After a clear or drop of `table`: its earlier buffered writes are gone, and the snapshot's
    /// entries are hidden from this transaction's reads.
    fn forget_writes(&mut self, table: &str) {
        self.writes.retain(|(t, _), _| t != table);
        self.emptied.insert(table.to_string());
    }
}
