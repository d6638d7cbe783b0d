//! The read side: [`Snapshot`], one LMDB read transaction, and its lookups.
//!
//! A snapshot is consistent across every table and never blocks the writer (see `read_only.rs`
//! for what holding one costs it). Values are borrowed from the LMDB map, zero-copy.
//!
//! The file is named for what a snapshot does here, read: `snapshot.rs` is taken by the *full
//! snapshot* of DESIGN.md (the export stream and restore). The snapshot's other views live with
//! what they read: [`Snapshot::export`], [`Snapshot::binlog_range`], [`Snapshot::stat`].

use std::ops::{Bound, RangeBounds};

use crate::error::Result;
use crate::store::Store;
use crate::value::{split_value, Value};

/// `range`'s bounds as byte strings, as heed takes them.
fn byte_bounds<'r, K: AsRef<[u8]> + 'r>(
    range: &'r impl RangeBounds<K>,
) -> (Bound<&'r [u8]>, Bound<&'r [u8]>) {
    (bytes(range.start_bound()), bytes(range.end_bound()))
}

fn bytes<K: AsRef<[u8]>>(bound: Bound<&K>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key.as_ref()),
        Bound::Excluded(key) => Bound::Excluded(key.as_ref()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

type RawEntries<'s> = Box<dyn Iterator<Item = heed::Result<(&'s [u8], &'s [u8])>> + 's>;

/// Entries of a table in key order, borrowed from the snapshot: `(key, value)`.
pub type Entries<'s> = Box<dyn Iterator<Item = Result<(&'s [u8], Value<'s>)>> + 's>;

/// A consistent view of the database: an LMDB read transaction. Never blocks the writer.
pub struct Snapshot<'db> {
    pub(crate) txn: heed::RoTxn<'db, heed::WithTls>,
    pub(crate) store: &'db Store,
}

impl Snapshot<'_> {
    /// The names of the tables that exist in this snapshot, in order (see
    /// [`Database::tables`](crate::Database::tables)).
    pub fn tables(&self) -> Result<Vec<String>> {
        let mut names = self.store.table_names_in(&self.txn)?;
        names.sort();
        Ok(names)
    }

    /// The value of `key` in `table`, borrowed from the map.
    pub fn get(&self, table: &str, key: &[u8]) -> Result<Option<Value<'_>>> {
        let Some(db) = self.store.table(table) else {
            return Ok(None);
        };
        match db.get(&self.txn, key).map_err(self.store.lmdb("get"))? {
            Some(stored) => split_value(stored).map(Some),
            None => Ok(None),
        }
    }

    /// Every entry of `table` whose key starts with `prefix` (all of them for an empty prefix),
    /// in key order.
    pub fn prefix<'s>(&'s self, table: &str, prefix: &[u8]) -> Result<Entries<'s>> {
        let lmdb = || self.store.lmdb("iterate");
        let raw: Option<RawEntries<'s>> = match self.store.table(table) {
            None => None,
            // LMDB refuses a zero-length seek key, so an empty prefix is a plain scan.
            Some(db) if prefix.is_empty() => Some(Box::new(db.iter(&self.txn).map_err(lmdb())?)),
            Some(db) => Some(Box::new(db.prefix_iter(&self.txn, prefix).map_err(lmdb())?)),
        };
        Ok(self.entries(raw))
    }

    /// As [`prefix`](Self::prefix), in reverse key order: the greatest key first.
    pub fn prefix_rev<'s>(&'s self, table: &str, prefix: &[u8]) -> Result<Entries<'s>> {
        let lmdb = || self.store.lmdb("iterate");
        let raw: Option<RawEntries<'s>> = match self.store.table(table) {
            None => None,
            Some(db) if prefix.is_empty() => {
                Some(Box::new(db.rev_iter(&self.txn).map_err(lmdb())?))
            }
            Some(db) => Some(Box::new(
                db.rev_prefix_iter(&self.txn, prefix).map_err(lmdb())?,
            )),
        };
        Ok(self.entries(raw))
    }

    /// Every entry of `table` with a key in `range`, in key order. Any range of byte strings:
    /// `"a".."c"`, `&b"a"[..]..=&b"c"[..]`, `key..`, or a pair of [`Bound`]s (a pair, and a
    /// full range `..`, need the key type named: `range::<&str>(…)`, `range::<&[u8]>(…)`; or use
    /// [`prefix`](Self::prefix) with an empty prefix for everything).
    ///
    /// ```
    /// use std::ops::Bound::{Excluded, Unbounded};
    ///
    /// use pagemesh_core::{Database, Durability, Options};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let db = Database::open(dir.path(), Options::new())?;
    /// let mut batch = db.batch();
    /// for name in ["ada", "alan", "grace", "linus"] {
    ///     batch.put("users", name.as_bytes(), b"")?;
    /// }
    /// db.commit(&batch, Durability::Applied)?;
    ///
    /// let snapshot = db.read()?;
    /// let keys = |entries: pagemesh_core::Entries<'_>| -> pagemesh_core::Result<Vec<Vec<u8>>> {
    ///     entries.map(|entry| entry.map(|(key, _)| key.to_vec())).collect()
    /// };
    /// assert_eq!(keys(snapshot.range("users", "alan".."linus")?)?, [b"alan".to_vec(), b"grace".to_vec()]);
    /// assert_eq!(keys(snapshot.range::<&str>("users", (Excluded("grace"), Unbounded))?)?, [b"linus".to_vec()]);
    /// assert_eq!(keys(snapshot.range_rev("users", "b"..)?)?, [b"linus".to_vec(), b"grace".to_vec()]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn range<'s, K: AsRef<[u8]>>(
        &'s self,
        table: &str,
        range: impl RangeBounds<K>,
    ) -> Result<Entries<'s>> {
        let bounds = byte_bounds(&range);
        let raw: Option<RawEntries<'s>> = match self.store.table(table) {
            None => None,
            Some(db) => {
                let iter = db
                    .range(&self.txn, &bounds)
                    .map_err(self.store.lmdb("iterate"))?;
                Some(Box::new(iter))
            }
        };
        Ok(self.entries(raw))
    }

    /// As [`range`](Self::range), in reverse key order: the greatest key first.
    pub fn range_rev<'s, K: AsRef<[u8]>>(
        &'s self,
        table: &str,
        range: impl RangeBounds<K>,
    ) -> Result<Entries<'s>> {
        let bounds = byte_bounds(&range);
        let raw: Option<RawEntries<'s>> = match self.store.table(table) {
            None => None,
            Some(db) => {
                let iter = db
                    .rev_range(&self.txn, &bounds)
                    .map_err(self.store.lmdb("iterate"))?;
                Some(Box::new(iter))
            }
        };
        Ok(self.entries(raw))
    }

    fn entries<'s>(&'s self, raw: Option<RawEntries<'s>>) -> Entries<'s> {
        let store = self.store;
        Box::new(raw.into_iter().flatten().map(move |entry| {
            let (key, stored) = entry.map_err(store.lmdb("iterate"))?;
            Ok((key, split_value(stored)?))
        }))
    }
}
