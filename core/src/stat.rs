//! What a database holds, read in one snapshot: identity, log positions, cursors, tables.
//!
//! [`Snapshot::stat`] reads every figure of [`DatabaseStat`] except [`LmdbInfo`] inside the
//! snapshot's one read transaction, so they agree with each other and with what
//! [`Snapshot::export`] would write from the same snapshot: a table's `records` is exactly the
//! number of its entries in the export. Record counts come from LMDB's per-database statistics
//! (`mdb_stat`), kept in each B-tree's root: no scan, whatever the table's size.
//!
//! The store keeps no epoch in `__meta` (the epoch travels in the log pages' headers), so there is
//! none to report here.

use heed::types::Bytes;

use crate::error::{Error, Result};
use crate::Snapshot;

/// Figures of one table in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableStat {
    /// The table's name.
    pub name: String,
    /// Entries (keys) in the table.
    pub records: u64,
    /// LMDB pages holding it: branch, leaf and overflow.
    pub pages: u64,
}

/// The LMDB environment as of its newest commit (`mdb_env_info`): these figures are not of the
/// snapshot, whose version may be older.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LmdbInfo {
    /// Bytes of address space mapped: the most the database can hold.
    pub map_bytes: u64,
    /// The highest page number in use: the file holds at least `last_page + 1` pages.
    pub last_page: u64,
    /// Reader slots the lock file's table has handed out, by every process: a high-water mark
    /// (LMDB's `me_numreaders`), which counts a freed slot until it is reused, so it bounds the
    /// live readers from above.
    pub readers: u32,
    /// Reader slots the lock file has.
    pub readers_max: u32,
}

/// What [`Snapshot::stat`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseStat {
    /// The database's uuid.
    pub database_uuid: uuid::Uuid,
    /// The uuid of the log its records come from.
    pub origin_uuid: uuid::Uuid,
    /// Whether `__meta` says it is a read-only replica of its origin.
    pub is_replica: bool,
    /// Log pages below this are applied and in the binlog: the applied LSN.
    pub binlog_next_lsn: u64,
    /// Where the applier's reader starts on the next open.
    pub replay_lsn: u64,
    /// Every record with a seq below this is applied.
    pub applied_seq_end: u64,
    /// The oldest LSN the history (`binlog.rs`) still holds.
    pub binlog_oldest_lsn: u64,
    /// Bytes the history holds: whole pages of the log's segments, and an old `__binlog`'s.
    pub binlog_bytes: u64,
    /// Registered binlog consumers (peers), `(name, lsn)`, in name order.
    pub cursors: Vec<(String, u64)>,
    /// The user's tables, in name order.
    pub tables: Vec<TableStat>,
    /// LMDB's page size in bytes.
    pub page_size: u32,
    /// Pages holding data in this snapshot: every table's and pagemesh's own (`__meta`,
    /// `__binlog`, `__binlog_time`). The rest of the file is free pages and LMDB's own.
    pub used_pages: u64,
    /// The environment beyond this snapshot.
    pub lmdb: LmdbInfo,
}

impl Snapshot<'_> {
    /// Figures of the database as this snapshot sees it (see the module docs).
    pub fn stat(&self) -> Result<DatabaseStat> {
        let store = self.store;
        let identity = store.identity(&self.txn)?;
        let state = store.apply_state(&self.txn)?;
        let mut tables = Vec::new();
        for name in store.table_names_in(&self.txn)? {
            let table = store.table(&name).ok_or_else(|| Error::NotADatabase {
                path: store.path.clone(),
                why: "a table listed in __meta has no handle",
            })?;
            let stat = self.db_stat(table)?;
            tables.push(TableStat {
                name,
                records: stat.entries as u64,
                pages: pages(&stat),
            });
        }
        let mut used_pages: u64 = tables.iter().map(|t| t.pages).sum();
        let mut page_size = 0;
        for internal in [store.meta, store.binlog, store.binlog_time] {
            let stat = self.db_stat(internal)?;
            used_pages += pages(&stat);
            page_size = stat.page_size;
        }
        let info = store.env.info();
        let history = store.history_extent(&self.txn)?;
        Ok(DatabaseStat {
            database_uuid: identity.database_uuid,
            origin_uuid: identity.origin_uuid,
            is_replica: identity.is_replica,
            binlog_next_lsn: state.binlog_next_lsn,
            replay_lsn: state.replay_lsn,
            applied_seq_end: state.applied_seq_end,
            binlog_oldest_lsn: history.oldest,
            binlog_bytes: history.bytes,
            cursors: store.cursors(&self.txn)?,
            tables,
            page_size,
            used_pages,
            lmdb: LmdbInfo {
                map_bytes: info.map_size as u64,
                last_page: info.last_page_number as u64,
                readers: info.number_of_readers,
                readers_max: info.maximum_number_of_readers,
            },
        })
    }

    fn db_stat(&self, db: heed::Database<Bytes, Bytes>) -> Result<heed::DatabaseStat> {
        db.stat(&self.txn).map_err(self.store.lmdb("stat"))
    }
}

fn pages(stat: &heed::DatabaseStat) -> u64 {
    (stat.branch_pages + stat.leaf_pages + stat.overflow_pages) as u64
}
