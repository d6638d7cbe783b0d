//! pagemesh's store: LMDB (through heed) fed by the replication log.
//!
//! Writes go through the log: a [`WriteBatch`] becomes one log record; the applier thread turns
//! groups of ready pages into one LMDB write transaction each (binlog append, apply, apply state),
//! and a commit returns when its [`Durability`] holds. Reads are LMDB read transactions: zero-copy,
//! in parallel with the writer, never blocked by it. See `apply.rs` and `store.rs` for the layouts.
//!
//! ```
//! use pagemesh_core::{Database, Durability, Options, WriteBatch};
//!
//! let dir = tempfile::tempdir()?;
//! let db = Database::open(dir.path(), Options::new())?;
//! let mut batch = WriteBatch::new();
//! batch.put("prices", b"{A1}", b"250000")?;
//! let seq = db.commit(&batch, Durability::Applied)?;
//!
//! let snapshot = db.read()?;
//! let value = snapshot.get("prices", b"{A1}")?.expect("applied");
//! assert_eq!((value.seq, value.bytes), (seq, &b"250000"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! History: [`Snapshot::export`] streams a consistent full snapshot and [`Database::restore`]
//! loads one; [`Snapshot::binlog_range`] reads log pages back from any retained LSN; retention
//! trims the binlog by size, never past a registered cursor ([`Database::set_cursor`]).
//!
//! Another process (a backup, an inspector) reads a database that a node or app holds through
//! [`ReadOnlyDatabase`]: the same consistent [`Snapshot`], without the log ring's lock and without
//! writing to the database; [`Snapshot::stat`] reports what a snapshot holds.

#![deny(unsafe_code)] // one exception, LMDB's open, allowed where it is (store.rs)
#![deny(unsafe_op_in_unsafe_fn)]

mod apply;
mod commit;
mod error;
mod options;
mod read;
mod read_only;
pub mod record;
mod replication;
mod snapshot;
mod stat;
mod store;
mod transaction;
mod value;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use pagemesh_logpage::{CommitPos, Log, LogOptions};

pub use commit::{CommitTicket, WriteBatch};
pub use error::{Error, Result};
pub use options::{Durability, Options};
pub use pagemesh_logpage::Ingested;
pub use read::{Entries, Snapshot};
pub use read_only::{ReadOnlyDatabase, SNAPSHOT_ATTEMPTS_MAX};
pub use record::RecordBuilder;
pub use replication::{ReplicaLink, ReplicaStatus, Replication};
pub use snapshot::SnapshotStats;
pub use stat::{DatabaseStat, LmdbInfo, TableStat};
pub use store::STORE_FORMAT;
pub use transaction::Transaction;
pub use value::Value;

pub(crate) struct Inner {
    store: store::Store,
    log: Log,
    options: Options,
    /// Pages below this are applied and durable; guarded for waiters.
    applied: Mutex<u64>,
    applied_changed: Condvar,
    applied_lsn: AtomicU64,
    poisoned: Mutex<Option<String>>,
    hlc: AtomicU64,
    stats: ApplyStats,
    /// Seqs of transactions the applier skipped for stale reads, until their committer looks.
    conflicts: Mutex<BTreeSet<u64>>,
    replication: Arc<Replication>,
}

/// What the applier has done since the database was opened: how group commit adapted.
#[derive(Debug, Default)]
pub(crate) struct ApplyStats {
    groups: AtomicU64,
    pages: AtomicU64,
    records: AtomicU64,
    largest_group_records: AtomicU64,
}

impl ApplyStats {
    pub(crate) fn record_group(&self, pages: u64, records: u64) {
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.pages.fetch_add(pages, Ordering::Relaxed);
        self.records.fetch_add(records, Ordering::Relaxed);
        self.largest_group_records
            .fetch_max(records, Ordering::Relaxed);
    }
}

/// A reading of [`Database::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// LMDB write transactions the applier committed.
    pub groups: u64,
    /// Log pages applied.
    pub pages: u64,
    /// Records applied.
    pub records: u64,
    /// Records in the largest group.
    pub largest_group_records: u64,
}

/// Conflict outcomes kept for committers that have not looked yet; older ones are dropped first
/// (their committer went away).
const CONFLICTS_KEPT_MAX: usize = 65_536;

impl Inner {
    pub(crate) fn record_conflicts(&self, seqs: &mut Vec<u64>) {
        if seqs.is_empty() {
            return;
        }
        let mut conflicts = self
            .conflicts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        conflicts.extend(seqs.drain(..));
        while conflicts.len() > CONFLICTS_KEPT_MAX {
            conflicts.pop_first();
        }
    }

    /// Waits until the record at `pos` is applied; `Err(Conflict)` if it was a transaction that
    /// was skipped.
    fn wait_applied(&self, pos: CommitPos) -> Result<()> {
        let mut applied = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *applied <= pos.lsn_last {
            self.check_poisoned()?;
            applied = self
                .applied_changed
                .wait(applied)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        drop(applied);
        if self
            .conflicts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&pos.seq)
        {
            return Err(Error::Conflict { seq: pos.seq });
        }
        Ok(())
    }

    /// Appends `record` to the log.
    fn append(&self, record: &RecordBuilder) -> Result<CommitPos> {
        if self.store.is_replica {
            return Err(Error::ReadOnlyReplica {
                path: self.store.path.clone(),
            });
        }
        self.check_poisoned()?;
        // Encoded straight into the ring: no buffer, one copy per byte.
        let mut reservation = self.log.reserve(record.encoded_len())?;
        record.encode_pieces(self.next_hlc(), |piece| reservation.write(piece));
        Ok(reservation.commit()?)
    }

    fn poison(&self, cause: &str) {
        tracing::error!(path = %self.store.path.display(), cause, "database poisoned: writes refused until reopened");
        self.poisoned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(|| cause.to_string());
        self.log.close();
        drop(
            self.applied
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.applied_changed.notify_all();
    }

    fn check_poisoned(&self) -> Result<()> {
        match &*self
            .poisoned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Some(cause) => Err(Error::Poisoned {
                path: self.store.path.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// A hybrid logical clock reading: wall-clock microseconds, strictly increasing.
    fn next_hlc(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let previous = self.hlc.fetch_max(now, Ordering::Relaxed).max(now);
        self.hlc.fetch_add(1, Ordering::Relaxed).max(previous) + 1
    }
}

/// Stops and joins the applier when the last handle goes.
struct Closer {
    inner: Arc<Inner>,
    applier: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Closer {
    fn drop(&mut self) {
        // Seal first: records in the open page would otherwise never be finished, and a page that
        // is not finished is not recovered.
        self.inner.log.seal();
        self.inner.log.close();
        self.inner.replication.close();
        if let Some(handle) = self
            .applier
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            if handle.join().is_err() {
                tracing::error!("applier thread panicked");
            }
        }
    }
}

/// An open database: a `Send + Sync` handle; clones share it. Dropping the last one stops the
/// applier after it applied every ready page; what was only in the ring is recovered on reopen.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
    _closer: Arc<Closer>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.inner.store.path)
            .finish()
    }
}

impl Database {
    /// Opens the database in `dir`, creating it if empty, and recovers: log records committed to
    /// the ring but not yet applied are applied before new ones.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            op: "create",
            path: dir.into(),
            source,
        })?;
        // The ring's file lock comes first: it keeps a second instance out of the LMDB files too.
        let probe = Log::open(dir, LogOptions::new().slots(options.ring_slots))?;
        drop(probe);
        let store = store::Store::open(dir, options.map_size)?;
        let state = {
            let rtxn = store.env.read_txn().map_err(store.lmdb("begin"))?;
            store.apply_state(&rtxn)?
        };
        let log = Log::open(
            dir,
            LogOptions::new()
                .slots(options.ring_slots)
                .next_lsn_min(state.binlog_next_lsn)
                .follower(store.is_replica),
        )?;
        let recovered = log.recovered();
        if recovered.start_lsn > state.binlog_next_lsn {
            return Err(Error::NotADatabase {
                path: dir.into(),
                why: "the log ring lost pages the binlog does not have",
            });
        }
        let feed = apply::RecordFeed::replay(&store, &state)?;
        tracing::info!(
            path = %dir.display(),
            applied_lsn = state.binlog_next_lsn,
            replica = store.is_replica,
            ring_end_lsn = recovered.end_lsn,
            pages_to_recover = recovered.end_lsn.saturating_sub(state.binlog_next_lsn),
            "opened database"
        );
        let cursor = log.cursor(state.binlog_next_lsn)?;
        let inner = Arc::new(Inner {
            store,
            log,
            options,
            applied: Mutex::new(state.binlog_next_lsn),
            applied_changed: Condvar::new(),
            applied_lsn: AtomicU64::new(state.binlog_next_lsn),
            poisoned: Mutex::new(None),
            hlc: AtomicU64::new(0),
            conflicts: Mutex::new(BTreeSet::new()),
            stats: ApplyStats::default(),
            replication: Arc::new(Replication::default()),
        });
        let applier = apply::Applier {
            inner: Arc::clone(&inner),
            cursor,
            state,
            feed,
            compact: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("pagemesh-applier".into())
            .spawn(move || applier.run())
            .map_err(|source| Error::Io {
                op: "spawn applier for",
                path: dir.into(),
                source,
            })?;
        let closer = Arc::new(Closer {
            inner: Arc::clone(&inner),
            applier: Mutex::new(Some(handle)),
        });
        Ok(Self {
            inner,
            _closer: closer,
        })
    }

    /// Commits `batch` and returns when `durability` holds; returns the record's `seq`, the version
    /// its values carry.
    pub fn commit(&self, batch: &WriteBatch, durability: Durability) -> Result<u64> {
        self.commit_async(batch, durability)?.wait()
    }

    /// Appends `batch` to the log and returns at once with a ticket to wait on, so one thread can
    /// keep many commits in flight.
    pub fn commit_async(&self, batch: &WriteBatch, durability: Durability) -> Result<CommitTicket> {
        if let Some(replicas) = durability.replicas() {
            if !self.inner.replication.is_enabled() {
                return Err(Error::NoReplicas { replicas });
            }
        }
        let pos = self.inner.append(&batch.record)?;
        Ok(CommitTicket {
            inner: Arc::clone(&self.inner),
            pos,
            durability,
        })
    }

    /// Puts `value` at `key` only if the key's version is still `expected` (`None`: absent).
    /// Returns the new version, or [`Error::Conflict`]. Waits until applied at least: only the
    /// applier decides.
    pub fn put_if_version(
        &self,
        table: &str,
        key: &[u8],
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<u64> {
        let mut record = RecordBuilder::default();
        record.read(table, key, expected)?;
        record.put(table, key, value)?;
        let pos = self.inner.append(&record)?;
        self.inner.wait_applied(pos)?;
        Ok(pos.seq)
    }

    /// Runs `body` as an optimistic transaction: its reads come from one snapshot and record the
    /// versions read; its writes are buffered (and visible to its own reads). Commit appends one
    /// record with the writes and the read versions; the applier applies it only if every version
    /// is still current. On a conflict `body` runs again on a fresh snapshot, up to
    /// `retries_max` times, then [`Error::Conflict`] is returned. Returns `body`'s result and the
    /// record's seq. Waits until applied at least (`Durable` waits the same: every group syncs).
    pub fn transaction<T>(
        &self,
        retries_max: u32,
        mut body: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<(T, u64)> {
        let mut attempt = 0;
        loop {
            let mut tx = Transaction::begin(self.read()?);
            let out = body(&mut tx)?;
            let pos = self.inner.append(tx.record())?;
            drop(tx);
            match self.inner.wait_applied(pos) {
                Ok(()) => return Ok((out, pos.seq)),
                Err(Error::Conflict { .. }) if attempt < retries_max => attempt += 1,
                Err(error) => return Err(error),
            }
        }
    }

    /// Commits with the database's default durability.
    pub fn commit_default(&self, batch: &WriteBatch) -> Result<u64> {
        self.commit(batch, self.inner.options.durability)
    }

    /// A consistent read snapshot (an LMDB read transaction).
    pub fn read(&self) -> Result<Snapshot<'_>> {
        let store = &self.inner.store;
        let _gate = store
            .table_gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(Snapshot {
            txn: store.env.read_txn().map_err(store.lmdb("begin read"))?,
            store,
        })
    }

    /// Pages below this are applied.
    pub fn applied_lsn(&self) -> u64 {
        self.inner.applied_lsn.load(Ordering::Acquire)
    }

    /// Restores a snapshot stream (from [`Snapshot::export`]) into `dir`, which must be empty, and
    /// opens it. The database keeps the snapshot's identity and continues its log.
    pub fn restore(
        dir: impl AsRef<Path>,
        input: impl std::io::Read,
        options: Options,
    ) -> Result<(Self, SnapshotStats)> {
        let stats = snapshot::restore(dir.as_ref(), options.map_size, input, false)?;
        Ok((Self::open(dir, options)?, stats))
    }

    /// Restores a snapshot stream of another database into `dir` (empty) as a read-only replica of
    /// it, and opens it. The replica then takes its origin's pages with [`ingest`](Self::ingest)
    /// from the LSN in the returned stats (see the snapshot module docs for why that may be below
    /// the snapshot's own LSN). A replica refuses writes with [`Error::ReadOnlyReplica`].
    pub fn restore_replica(
        dir: impl AsRef<Path>,
        input: impl std::io::Read,
        options: Options,
    ) -> Result<(Self, SnapshotStats)> {
        let stats = snapshot::restore(dir.as_ref(), options.map_size, input, true)?;
        Ok((Self::open(dir, options)?, stats))
    }

    /// Whether this is a read-only replica of another database.
    pub fn is_replica(&self) -> bool {
        self.inner.store.is_replica
    }

    /// Copies pages of this replica's origin into its log ring (see
    /// [`pagemesh_logpage::Log::ingest`]); the applier replays them. Never blocks.
    pub fn ingest(&self, pages: &[u8]) -> Result<Ingested> {
        Ok(self.inner.log.ingest(pages)?)
    }

    /// Every page below this is in the log ring (received, for a replica): what it acknowledges.
    pub fn received_lsn(&self) -> u64 {
        self.inner.log.committed_lsn()
    }

    /// The log, for the network's shippers (cursors) and feeders (wakers).
    pub fn log(&self) -> &Log {
        &self.inner.log
    }

    /// This database's replication state: make it a source, attach replicas, report acks.
    pub fn replication(&self) -> &Arc<Replication> {
        &self.inner.replication
    }

    /// The uuid of the log this database's records come from (its own, or its origin's for a
    /// replica).
    pub fn origin_uuid(&self) -> uuid::Uuid {
        self.inner.store.origin_uuid
    }

    /// The oldest LSN the binlog still holds: catch-up from below it needs a full snapshot.
    pub fn binlog_oldest_lsn(&self) -> Result<u64> {
        let store = &self.inner.store;
        let rtxn = store.env.read_txn().map_err(store.lmdb("begin"))?;
        store.binlog_oldest_lsn(&rtxn)
    }

    /// Registers (or moves) a named consumer of the binlog at `lsn`: retention never trims a page
    /// at or above it. A replica's shipper keeps its cursor here.
    pub fn set_cursor(&self, name: &str, lsn: u64) -> Result<()> {
        self.inner.store.set_cursor(name, lsn)
    }

    /// Forgets a named consumer.
    pub fn remove_cursor(&self, name: &str) -> Result<()> {
        self.inner.store.remove_cursor(name)
    }

    /// What the applier has done since open: groups, pages, records (how group commit adapted).
    pub fn stats(&self) -> Stats {
        let s = &self.inner.stats;
        Stats {
            groups: s.groups.load(Ordering::Relaxed),
            pages: s.pages.load(Ordering::Relaxed),
            records: s.records.load(Ordering::Relaxed),
            largest_group_records: s.largest_group_records.load(Ordering::Relaxed),
        }
    }

    /// The database's uuid, made at creation.
    pub fn uuid(&self) -> uuid::Uuid {
        self.inner.store.database_uuid
    }

    /// The names of the tables that exist.
    pub fn tables(&self) -> Vec<String> {
        self.inner.store.table_names()
    }
}
