//! The read side: [`Snapshot`], one LMDB read transaction, and its lookups.
//!
//! A snapshot is consistent across every table and never blocks the writer (see `read_only.rs`
//! for what holding one costs it). Values are borrowed from the LMDB map, zero-copy.
//!
//! The file is named for what a snapshot does here, read: `snapshot.rs` is taken by the *full
//! snapshot* of DESIGN.md (the export stream and restore). The snapshot's other views live with
//! what they read: [`Snapshot::export`], [`Snapshot::binlog_range`], [`Snapshot::stat`].

use std::ops::Bound;

use crate::error::Result;
use crate::store::Store;
use crate::value::{split_value, Value};

type RawEntries<'s> = Box<dyn Iterator<Item = heed::Result<(&'s [u8], &'s [u8])>> + 's>;

/// Entries of a table in key order, borrowed from the snapshot: `(key, value)`.
pub type Entries<'s> = Box<dyn Iterator<Item = Result<(&'s [u8], Value<'s>)>> + 's>;

/// A consistent view of the database: an LMDB read transaction. Never blocks the writer.
pub struct Snapshot<'db> {
    pub(crate) txn: heed::RoTxn<'db, heed::WithTls>,
    pub(crate) store: &'db Store,
}

impl Snapshot<'_> {
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

    /// Every entry of `table` with a key between `start` and `end`, in key order.
    pub fn range<'s>(
        &'s self,
        table: &str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> Result<Entries<'s>> {
        let raw: Option<RawEntries<'s>> = match self.store.table(table) {
            None => None,
            Some(db) => {
                let iter = db
                    .range(&self.txn, &(start, end))
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
