//! The database handle ([`Database`]) and what its clones, tickets and applier share ([`Inner`]).
//!
//! [`Database::open`] takes the ring's lock, opens the store, recovers (`recovery.rs`) and starts
//! the ring's flusher (a `pagemesh_logpage::Flusher`: pages become durable in parallel with
//! shipping and apply) and the applier thread (`apply.rs`); the last handle dropped stops both
//! ([`Closer`]) and, if everything was applied and synced, records a clean stop. Every write goes
//! through [`Inner::append`] into the log; every wait for `Durable` goes through
//! [`Inner::wait_durable`] (the ring's durable watermark), every wait for `Applied` through
//! [`Inner::wait_applied`], released by the applier's [`Inner::publish_applied`]. A failed group
//! [`poison`s](Inner::poison) the database, and a failed sync of the ring poisons the log: writes
//! and waits fail until it is reopened.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use pagemesh_logpage::{CommitPos, Flusher, Log, LogOptions};

use crate::apply::{self, ApplyStats, Stats};
use crate::commit::{CommitTicket, WriteBatch};
use crate::error::{Error, Result};
use crate::metrics::{DatabaseMetrics, Metrics};
use crate::options::{Durability, Options};
use crate::read::Snapshot;
use crate::receipt::Receipt;
use crate::record::RecordBuilder;
use crate::recovery::{self, Recovery};
use crate::registry::Registration;
use crate::replication::Replication;
use crate::snapshot::{self, SnapshotStats};
use crate::store::Store;
use crate::transaction::Transaction;

/// An open database: a `Send + Sync` handle; clones share it. Dropping the last one stops the
/// applier after it applied every ready page; what was only in the ring is recovered on reopen.
///
/// What only the node and the network use (ingesting a replica's pages, the log, replication
/// state, binlog cursors) is behind [`plumbing`](Self::plumbing), out of an application's way.
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
    /// The replication plumbing: what the node and network crates (and tools, tests) call, and
    /// an application does not need. See [`Plumbing`](crate::Plumbing).
    pub fn plumbing(&self) -> crate::Plumbing<'_> {
        crate::Plumbing::new(self)
    }

    /// The shared state, for [`crate::Plumbing`].
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Opens the database in `dir`, creating it if empty, and recovers: log records committed to
    /// the ring but not yet applied are applied before new ones.
    ///
    /// A database opens once per process: a second open of the same directory (under any
    /// spelling of its path) fails with [`Error::AlreadyOpen`] until every handle of the first is
    /// dropped; clone the handle instead. Another process holding it fails the open with the
    /// log's lock error.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            op: "create",
            path: dir.into(),
            source,
        })?;
        // The log's lock (its head file's) comes first: it keeps a second instance out of the LMDB
        // files too.
        // A new ring is also created here, its blocks allocated before LMDB's files exist, so a
        // full disk is a clear error naming the ring (LMDB on a full disk can die of SIGBUS on
        // its own map). An existing ring is only locked: it is recovered once LMDB says where
        // recovery must start (`recovery.rs`), and a recovery from its header alone could
        // invalidate pages LMDB still needs.
        // Before the ring's lock: a second open in this process would otherwise be reported as
        // a lock held by another process (`registry.rs`).
        let registration = Registration::claim(dir)?;
        let head = dir.join("log.head");
        if std::fs::metadata(&head).map_or(true, |meta| meta.len() == 0) {
            drop(Log::open(dir, LogOptions::new().slots(options.ring_slots))?);
        } else {
            Log::probe_lock(dir)?;
        }
        let mut store = Store::open(dir, options.map_size)?;
        store.sync_hook = options.lmdb_sync_hook.clone();
        let Recovery {
            log,
            cursor,
            state,
            feed,
        } = recovery::recover(dir, &store, &options)?;
        let flusher = log.spawn_flusher()?;
        let inner = Arc::new(Inner::new(
            store,
            log,
            options,
            state.binlog_next_lsn,
            registration,
        ));
        let applier = apply::Applier {
            inner: Arc::clone(&inner),
            cursor,
            state,
            feed,
            changes: Default::default(),
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
            flusher: Mutex::new(Some(flusher)),
        });
        Ok(Self {
            inner,
            _closer: closer,
        })
    }

    /// An empty batch whose puts are checked against this database's record limit (half its log
    /// ring), so a value too large is refused at [`WriteBatch::put`], not at commit.
    pub fn batch(&self) -> WriteBatch {
        WriteBatch::with_record_len_max(self.inner.log.record_len_max())
    }

    /// Commits `batch` and returns when `durability` holds; returns the record's `seq`, the version
    /// its values carry. [`commit_with_receipt`](Self::commit_with_receipt) returns a receipt
    /// instead, which a replica (in this process or another) can wait for.
    pub fn commit(&self, batch: &WriteBatch, durability: Durability) -> Result<u64> {
        self.commit_async(batch, durability)?.wait()
    }

    /// As [`commit`](Self::commit), returning the commit's [`Receipt`]: its version (what
    /// `commit` returns) and where it is in the log, which another process can wait for on a
    /// replica (`pagemesh::Replica::wait_for`), or this one with [`wait_for`](Self::wait_for).
    ///
    /// ```
    /// use pagemesh_core::{Database, Durability, Options, Receipt};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let db = Database::open(dir.path(), Options::new())?;
    /// let mut batch = db.batch();
    /// batch.put("prices", b"{A1}", b"250000")?;
    /// let receipt = db.commit_with_receipt(&batch, Durability::Memory)?;
    ///
    /// // Sent as text (or `to_bytes`) to whoever must read the write back.
    /// let received: Receipt = receipt.to_string().parse()?;
    /// db.wait_for(&received, std::time::Duration::from_secs(30))?;
    /// let version = db.read()?.get("prices", b"{A1}")?.map(|value| value.seq);
    /// assert_eq!(version, Some(receipt.version()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn commit_with_receipt(
        &self,
        batch: &WriteBatch,
        durability: Durability,
    ) -> Result<Receipt> {
        let ticket = self.commit_async(batch, durability)?;
        let receipt = ticket.receipt();
        ticket.wait()?;
        Ok(receipt)
    }

    /// Waits until the commit of `receipt` is applied here (visible to this database's readers:
    /// on its primary, or on a replica that follows the same log), at most `timeout`.
    /// [`Error::ReceiptTimeout`] if it is not applied by then; [`Error::ForeignReceipt`] if the
    /// receipt is of another log than this database's ([`origin_uuid`](Self::origin_uuid)).
    pub fn wait_for(&self, receipt: &Receipt, timeout: std::time::Duration) -> Result<()> {
        let origin = self.origin_uuid();
        if receipt.origin() != origin {
            return Err(Error::ForeignReceipt {
                receipt: *receipt,
                origin,
            });
        }
        let started = std::time::Instant::now();
        let applied_lsn = self
            .inner
            .wait_applied_lsn(receipt.lsn_end(), started + timeout)?;
        if applied_lsn >= receipt.lsn_end() {
            return Ok(());
        }
        Err(Error::ReceiptTimeout {
            receipt: *receipt,
            applied_lsn,
            waited: started.elapsed(),
        })
    }

    /// Appends `batch` to the log and returns at once with a ticket to wait on, so one thread can
    /// keep many commits in flight.
    ///
    /// A `Replicated(n)` or `DurableReplicated(n)` that cannot be met is refused here, before
    /// anything is written: [`Error::NoReplicas`] on a database that is not a source,
    /// [`Error::TooFewSyncReplicas`] when no replica is synchronous, or `n` exceeds both its
    /// synchronous replicas and the most nodes they (and the nodes relays feed) ever counted.
    pub fn commit_async(&self, batch: &WriteBatch, durability: Durability) -> Result<CommitTicket> {
        if let Some(replicas) = durability.replicas() {
            self.inner.replication.check_satisfiable(replicas)?;
        }
        let started = std::time::Instant::now();
        let pos = self.inner.append(&batch.record)?;
        Ok(CommitTicket {
            inner: Arc::clone(&self.inner),
            pos,
            durability,
            started,
            waited: false,
        })
    }

    /// Puts `value` at `key` only if the key's version is still `expected` (`None`: absent).
    /// Returns the new version, or [`Error::Conflict`] carrying the key's current version (read
    /// just after the refusal: pass it as `expected` to try again). Waits until applied at
    /// least: only the applier decides.
    ///
    /// ```
    /// use pagemesh_core::{Database, Error, Options};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let db = Database::open(dir.path(), Options::new())?;
    /// let first = db.put_if_version("counters", b"visits", None, b"1")?;
    /// match db.put_if_version("counters", b"visits", None, b"1") {
    ///     Err(Error::Conflict { current, .. }) => assert_eq!(current, Some(first)),
    ///     other => panic!("expected a conflict, got {other:?}"),
    /// }
    /// db.put_if_version("counters", b"visits", Some(first), b"2")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_if_version(
        &self,
        table: &str,
        key: &[u8],
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<u64> {
        let mut record = RecordBuilder::default();
        record.read(table, key, expected)?;
        record.check_put_fits(table, key, value, self.inner.log.record_len_max())?;
        record.put(table, key, value)?;
        let started = std::time::Instant::now();
        let pos = self.inner.append(&record)?;
        let applied = self.inner.wait_applied(pos);
        (self.inner.metrics).commit(Durability::Applied, started, applied.is_ok());
        match applied {
            Ok(()) => Ok(pos.seq),
            // The applier keeps only the refused seq; the version that refused it is read here,
            // so it may be a later one (never an earlier one).
            Err(Error::Conflict { seq, .. }) => Err(Error::Conflict {
                seq,
                current: self.read()?.get(table, key)?.map(|value| value.seq),
            }),
            Err(error) => Err(error),
        }
    }

    /// Runs `body` as an optimistic transaction: its reads come from one snapshot and record the
    /// versions read; its writes are buffered (and visible to its own reads). Commit appends one
    /// record with the writes and the read versions; the applier applies it only if every version
    /// is still current. Returns `body`'s result and the record's seq. Waits until applied (only
    /// the applier decides a conflict), which is not `Durable`: commit a `Durable` batch after it
    /// if the transaction must survive a power loss.
    ///
    /// **The body's errors are the app's.** `body` returns `Result<T, E>` for any `E` a store
    /// [`Error`] converts into (the store's own `Error`, `Box<dyn std::error::Error>`, or an app
    /// enum with a `From<Error>` variant). An `Err` from `body` aborts: nothing is written, the
    /// body is not run again, and the error is returned as it is. Store errors, including a
    /// [`Error::Conflict`] once the retries are spent, come back converted into `E`.
    ///
    /// **What is validated.** Every key the body read ([`Transaction::get`],
    /// [`Transaction::get_versioned`]) must still be at the version read (or still absent), and
    /// every range it scanned ([`Transaction::range`], [`Transaction::prefix`]) must hold
    /// exactly what it held: a put, overwrite or delete of any key in it, an insertion
    /// included, conflicts. Keys and ranges the body did not read may change freely (see the
    /// `transaction` module's docs).
    ///
    /// **Tables.** The body may create, drop and clear tables ([`Transaction::create_table`],
    /// [`Transaction::drop_table`], [`Transaction::clear_table`]), applied atomically with its
    /// other writes and replicated like them. Another commit's drop or clear is validated as the
    /// delete of every entry in the table: a key the body read as present, or a range it
    /// scanned holding entries, conflicts; an absent key or an empty range does not (it still
    /// reads the same), and a put into a table dropped meanwhile creates it again.
    ///
    /// **Retries.** On a conflict `body` runs again on a fresh snapshot, up to `retries_max`
    /// times (`0`: one attempt only), after a short randomized pause that grows with each
    /// attempt (from tens of microseconds to about 2 ms), so contending writers spread out. So a
    /// body may run several times: keep side effects out of it.
    ///
    /// **What a conflict costs.** An attempt whose reads are already stale here (checked against
    /// the applied state just before it is logged) is retried without logging anything. One
    /// that passes that check costs one log record, replicated like any other, even if the
    /// applier then skips it for a conflict that arrived meanwhile. Validation costs the
    /// applier (here and on every replica) one lookup per key read and one scan of each range
    /// read, so keep scans in transactions to the ranges that matter. The last attempt is always
    /// logged: the applier's answer is the one returned.
    ///
    /// ```
    /// use pagemesh_core::{Database, Error, Options};
    ///
    /// #[derive(Debug)]
    /// enum TransferError {
    ///     Insufficient { balance: u64 },
    ///     Store(Error),
    /// }
    /// impl From<Error> for TransferError {
    ///     fn from(error: Error) -> Self {
    ///         Self::Store(error)
    ///     }
    /// }
    /// let balance = |bytes: Option<Vec<u8>>| bytes.map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    ///
    /// let dir = tempfile::tempdir()?;
    /// let db = Database::open(dir.path(), Options::new())?;
    /// db.put_if_version("accounts", b"alice", None, &50u64.to_le_bytes())?;
    /// let transfer = |amount: u64| {
    ///     db.transaction(100, |tx| {
    ///         let alice = balance(tx.get("accounts", b"alice")?);
    ///         if alice < amount {
    ///             return Err(TransferError::Insufficient { balance: alice });
    ///         }
    ///         let bob = balance(tx.get("accounts", b"bob")?);
    ///         tx.put("accounts", b"alice", &(alice - amount).to_le_bytes())?;
    ///         tx.put("accounts", b"bob", &(bob + amount).to_le_bytes())?;
    ///         Ok(alice - amount)
    ///     })
    /// };
    /// assert_eq!(transfer(30).map(|(left, _)| left).ok(), Some(20));
    /// assert!(matches!(transfer(30), Err(TransferError::Insufficient { balance: 20 })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn transaction<T, E: From<Error>>(
        &self,
        retries_max: u32,
        mut body: impl FnMut(&mut Transaction<'_>) -> Result<T, E>,
    ) -> Result<(T, u64), E> {
        let mut attempt = 0;
        loop {
            let mut tx = Transaction::begin(self.read()?, self.inner.log.record_len_max());
            let out = body(&mut tx)?;
            let tx = tx.finish();
            let last = attempt >= retries_max;
            if !last && tx.is_stale(&self.read()?)? {
                attempt += 1;
                backoff(attempt);
                continue;
            }
            let started = std::time::Instant::now();
            let pos = self.inner.append(&tx.record)?;
            drop(tx);
            let applied = self.inner.wait_applied(pos);
            (self.inner.metrics).commit(Durability::Applied, started, applied.is_ok());
            match applied {
                Ok(()) => return Ok((out, pos.seq)),
                Err(Error::Conflict { .. }) if !last => {
                    attempt += 1;
                    backoff(attempt);
                }
                Err(error) => return Err(error.into()),
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
        if self.inner.superseded.load(Ordering::Relaxed)
            && !self.inner.superseded_warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(path = %store.path.display(), "reading a superseded copy: it no longer follows its origin; take the replica's current database");
        }
        let _gate = store
            .table_gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(Snapshot {
            txn: store.env.read_txn().map_err(store.lmdb("begin read"))?,
            store,
        })
    }

    /// Pages below this are applied (visible to readers).
    pub fn applied_lsn(&self) -> u64 {
        self.inner.applied_lsn.load(Ordering::Acquire)
    }

    /// The log ring's durable watermark: every page below this is on disk (a completed sync of
    /// the ring covered it), so it survives a power loss. The database's flusher moves it, and so
    /// do `Durable` commits. For a replica it covers the pages received from its origin: what its
    /// acknowledgements report as durable.
    pub fn durable_lsn(&self) -> u64 {
        self.inner.log.durable_lsn()
    }

    /// Restores a snapshot stream (from [`Snapshot::export`]) into `dir`, which must be empty, and
    /// opens it. The database keeps the snapshot's identity and continues its log.
    pub fn restore(
        dir: impl AsRef<Path>,
        input: impl std::io::Read,
        options: Options,
    ) -> Result<(Self, SnapshotStats)> {
        let stats = snapshot::restore(dir.as_ref(), options.map_size, input, false)?;
        let db = Self::open(&dir, options)
            .inspect_err(|error| snapshot::discard_after_failed_open(dir.as_ref(), error))?;
        Ok((db, stats))
    }

    /// Whether this is a read-only replica of another database.
    pub fn is_replica(&self) -> bool {
        self.inner.store.is_replica
    }

    /// Whether this copy was replaced by another ([`Plumbing::supersede`](crate::Plumbing::supersede)): its data no
    /// longer follows its origin. Take the replica's current database instead
    /// (`pagemesh::Replica::database`).
    pub fn is_superseded(&self) -> bool {
        self.inner.superseded.load(Ordering::Relaxed)
    }

    /// The uuid of the log this database's records come from (its own, or its origin's for a
    /// replica).
    pub fn origin_uuid(&self) -> uuid::Uuid {
        self.inner.store.origin_uuid
    }

    /// What the applier has done since open: groups, pages, records (how group commit adapted).
    pub fn stats(&self) -> Stats {
        self.inner.stats.reading()
    }

    /// The database's figures now: log watermarks, ring fill, commits and their latency by
    /// durability, records per group and, for a source, each replica's lag (see
    /// [`DatabaseMetrics`]). Cheap: atomic loads and one short lock of the replication state.
    ///
    /// ```
    /// use pagemesh_core::{Database, Durability, Options, WriteBatch};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let db = Database::open(dir.path(), Options::new())?;
    /// let mut batch = WriteBatch::new();
    /// batch.put("prices", b"{A1}", b"250000")?;
    /// db.commit(&batch, Durability::Applied)?;
    ///
    /// let metrics = db.metrics();
    /// let applied = metrics.commits.iter().find(|c| c.durability == "applied").unwrap();
    /// assert_eq!(applied.commits, 1);
    /// assert_eq!(applied.latency_seconds.count, 1);
    /// assert!(metrics.applied_lsn >= 1 && metrics.ring_fill() <= 1.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn metrics(&self) -> DatabaseMetrics {
        let inner = &self.inner;
        let log = &inner.log;
        let committed_lsn = log.committed_lsn();
        let stats = inner.stats.reading();
        DatabaseMetrics {
            uuid: inner.store.database_uuid,
            is_replica: inner.store.is_replica,
            committed_lsn,
            applied_lsn: inner.applied_lsn.load(Ordering::Acquire),
            durable_lsn: log.durable_lsn(),
            ring_slots: log.slots(),
            ring_used_pages: log
                .anchor()
                .lsn
                .saturating_sub(log.horizon_lsn())
                .min(log.slots()),
            groups: stats.groups,
            records: stats.records,
            records_per_group: inner.metrics.records_per_group(),
            commits: inner.metrics.commits(),
            replicas: inner
                .replication
                .lag(committed_lsn, &inner.metrics.timeline),
        }
    }

    /// The database's uuid, made at creation.
    pub fn uuid(&self) -> uuid::Uuid {
        self.inner.store.database_uuid
    }

    /// The names of the tables that exist now, in order: those a put or
    /// [`create_table`](Self::create_table) made and no [`drop_table`](Self::drop_table)
    /// removed since (as the last applied group left them). Needs no read transaction, so it
    /// can be called while the thread holds a snapshot; [`Snapshot::tables`] lists a
    /// snapshot's.
    pub fn tables(&self) -> Vec<String> {
        self.inner.store.table_names()
    }

    /// Creates `table`, empty, if it does not exist, and waits until applied; returns the
    /// record's seq. One [`WriteBatch::create_table`] committed `Applied`: logged and
    /// replicated like any write. A put creates its table too; create one explicitly when it
    /// must be listed before anything is in it.
    pub fn create_table(&self, table: &str) -> Result<u64> {
        let mut batch = self.batch();
        batch.create_table(table)?;
        self.commit(&batch, Durability::Applied)
    }

    /// Drops `table` (every entry, and the table itself: [`tables`](Self::tables) no longer
    /// lists it) and waits until applied; a no-op on a table that does not exist. A later put
    /// creates it again, empty. Logged and replicated like any write
    /// ([`WriteBatch::drop_table`]).
    ///
    /// ```
    /// use pagemesh_core::{Database, Durability, Options};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let db = Database::open(dir.path(), Options::new())?;
    /// db.create_table("empty")?;
    /// let mut batch = db.batch();
    /// batch.put("cache", b"k", b"v")?;
    /// db.commit(&batch, Durability::Applied)?;
    /// assert_eq!(db.tables(), ["cache", "empty"]);
    ///
    /// db.clear_table("cache")?; // emptied, still there
    /// assert_eq!(db.tables(), ["cache", "empty"]);
    /// db.drop_table("cache")?; // gone
    /// assert_eq!(db.tables(), ["empty"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn drop_table(&self, table: &str) -> Result<u64> {
        let mut batch = self.batch();
        batch.drop_table(table)?;
        self.commit(&batch, Durability::Applied)
    }

    /// Removes every entry of `table`, keeping the table, and waits until applied; a no-op on
    /// a table that does not exist. Logged and replicated like any write
    /// ([`WriteBatch::clear_table`]).
    pub fn clear_table(&self, table: &str) -> Result<u64> {
        let mut batch = self.batch();
        batch.clear_table(table)?;
        self.commit(&batch, Durability::Applied)
    }
}

/// Pauses a transaction's retry: a few yields at first, then sleeps that double with each
/// attempt up to about 2 ms, each randomized to between half and all of it (from the clock's
/// low bits), so that writers contending for one key do not retry in lockstep.
fn backoff(attempt: u32) {
    if attempt <= 2 {
        std::thread::yield_now();
        return;
    }
    let ceiling_micros = (25u64 << attempt.min(7)).min(2_000);
    let noise = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let micros = ceiling_micros / 2 + noise % (ceiling_micros / 2 + 1);
    std::thread::sleep(std::time::Duration::from_micros(micros));
}

/// Stops the flusher and the applier when the last handle goes, and records a clean stop.
struct Closer {
    inner: Arc<Inner>,
    applier: Mutex<Option<JoinHandle<()>>>,
    flusher: Mutex<Option<Flusher>>,
}

impl Drop for Closer {
    fn drop(&mut self) {
        let inner = &self.inner;
        // Seal first: records in the open page would otherwise never be finished, and a page that
        // is not finished is not recovered. Then flush, so durable waiters are released.
        inner.log.seal();
        let flushed = inner.log.flush();
        if let Err(error) = &flushed {
            tracing::warn!(path = %inner.store.path.display(), %error, "last flush of the ring failed");
        }
        // The flusher stops before the log closes, so that it never reports the close as an error.
        let flusher = self
            .flusher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(Err(error)) = flusher.map(Flusher::stop) {
            tracing::debug!(%error, "the flusher had stopped on an error");
        }
        inner.log.close();
        inner.replication.close();
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
        // A clean stop: everything committed is applied, and the marker's sync puts LMDB's
        // state on disk (see `recovery.rs`, Epochs after an unclean stop).
        let applied_all = inner.applied_lsn.load(Ordering::Acquire) >= inner.log.committed_lsn();
        if flushed.is_ok()
            && applied_all
            && inner.check_poisoned().is_ok()
            && !inner.store.is_replica
        {
            if let Err(error) = inner.store.end_session_clean() {
                tracing::warn!(path = %inner.store.path.display(), %error, "could not record a clean stop");
            }
        }
    }
}

/// What every handle, ticket and the applier share: the store, the log and the watermarks.
pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) log: Log,
    pub(crate) options: Options,
    /// Pages below this are applied (visible to readers); guarded for waiters.
    applied: Mutex<u64>,
    /// Signalled when `applied` moves or the database is poisoned.
    applied_changed: Condvar,
    /// `applied`, readable without the lock (for [`Database::applied_lsn`] and ticket polls).
    pub(crate) applied_lsn: AtomicU64,
    /// Why writes are refused, once a group failed; `None` while healthy.
    poisoned: Mutex<Option<String>>,
    /// The last hybrid logical clock reading handed to a record.
    hlc: AtomicU64,
    pub(crate) stats: ApplyStats,
    /// Seqs of transactions the applier skipped for stale reads, until their committer looks.
    conflicts: Mutex<BTreeSet<u64>>,
    pub(crate) replication: Arc<Replication>,
    pub(crate) metrics: Metrics,
    /// Set when another copy replaced this one ([`crate::Plumbing::supersede`]).
    superseded: AtomicBool,
    /// The applier's cursor, kept here once a poison stopped the applier: its pin holds the
    /// log's horizon at the applied LSN until the database is dropped. Dropped with the thread,
    /// it let the horizon, and the head's copy of it, pass pages LMDB never got, and the next
    /// open refused the log (`recovery.rs`).
    held_cursor: Mutex<Option<pagemesh_logpage::Cursor>>,
    /// Whether a read of the superseded copy has been warned about.
    superseded_warned: AtomicBool,
    /// Last, so dropped last: the directory is given back once the ring and LMDB are closed.
    _registration: Registration,
}

/// Conflict outcomes kept for committers that have not looked yet; older ones are dropped first
/// (their committer went away).
const CONFLICTS_KEPT_MAX: usize = 65_536;

impl Inner {
    /// The shared state of a database whose pages below `applied_lsn` are applied.
    fn new(
        store: Store,
        log: Log,
        options: Options,
        applied_lsn: u64,
        registration: Registration,
    ) -> Self {
        Self {
            store,
            log,
            options,
            applied: Mutex::new(applied_lsn),
            applied_changed: Condvar::new(),
            applied_lsn: AtomicU64::new(applied_lsn),
            poisoned: Mutex::new(None),
            superseded: AtomicBool::new(false),
            superseded_warned: AtomicBool::new(false),
            held_cursor: Mutex::new(None),
            hlc: AtomicU64::new(0),
            conflicts: Mutex::new(BTreeSet::new()),
            stats: ApplyStats::default(),
            replication: Arc::new(Replication::default()),
            metrics: Metrics::default(),
            _registration: registration,
        }
    }

    /// Keeps the seqs of transactions the applier skipped, until their committers look
    /// ([`Inner::wait_applied`]).
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
    pub(crate) fn wait_applied(&self, pos: CommitPos) -> Result<()> {
        self.hurry_applier(pos.lsn_last + 1);
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
            return Err(Error::Conflict {
                seq: pos.seq,
                current: None,
            });
        }
        Ok(())
    }

    /// For a reader about to wait until every page below `lsn_end` is applied: the applier may
    /// be letting a backlog build (`apply.rs`, Pacing), and the last page may still be open
    /// (seal rule 2): not for this one.
    fn hurry_applier(&self, lsn_end: u64) {
        if self.applied_lsn.load(Ordering::Acquire) < lsn_end {
            self.log.hurry(lsn_end.saturating_sub(1));
        }
    }

    /// Waits until every page below `lsn_end` is applied or `deadline` passes; returns the
    /// applied watermark then.
    pub(crate) fn wait_applied_lsn(
        &self,
        lsn_end: u64,
        deadline: std::time::Instant,
    ) -> Result<u64> {
        self.hurry_applier(lsn_end);
        let mut applied = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if *applied >= lsn_end {
                return Ok(*applied);
            }
            self.check_poisoned()?;
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(*applied);
            }
            applied = self
                .applied_changed
                .wait_timeout(applied, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until the record at `pos` is on disk in the ring (its durable watermark passed it).
    pub(crate) fn wait_durable(&self, pos: CommitPos) -> Result<()> {
        match self.log.wait_durable(pos, None) {
            Ok(_) => Ok(()), // with no deadline, it returns only once durable
            Err(pagemesh_logpage::Error::Closed) => {
                self.check_poisoned()?;
                Err(pagemesh_logpage::Error::Closed.into())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Appends `record` to the log.
    pub(crate) fn append(&self, record: &RecordBuilder) -> Result<CommitPos> {
        if self.store.is_replica {
            return Err(Error::ReadOnlyReplica {
                path: self.store.path.clone(),
            });
        }
        self.check_poisoned()?;
        // A log closed under us was closed by `poison`: report why.
        let closed_by_poison = |error| match error {
            pagemesh_logpage::Error::Closed => match self.check_poisoned() {
                Err(poisoned) => poisoned,
                Ok(()) => pagemesh_logpage::Error::Closed.into(),
            },
            error => error.into(),
        };
        // Encoded straight into the ring: no buffer, one copy per byte.
        let mut reservation = self
            .log
            .reserve(record.encoded_len())
            .map_err(closed_by_poison)?;
        record.encode_pieces(self.next_hlc(), |piece| reservation.write(piece));
        // Every caller waits on the record (a dropped ticket asks for its seal: `CommitTicket`),
        // so the commit leaves asking for its page's seal to that wait, and under load pages
        // fill instead of being sealed as each commit opens one (seal rule 2).
        reservation.commit_unannounced().map_err(closed_by_poison)
    }

    pub(crate) fn poison(&self, cause: &str) {
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

    /// Whether a failed group poisoned the database.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// Keeps the stopped applier's cursor (see `held_cursor`).
    pub(crate) fn hold_cursor(&self, cursor: pagemesh_logpage::Cursor) {
        *self
            .held_cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cursor);
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

    /// Marks this copy as replaced by another ([`crate::Plumbing::supersede`]).
    pub(crate) fn supersede(&self) {
        self.superseded.store(true, Ordering::Relaxed);
    }

    /// Publishes the applier's new watermark and wakes the commits waiting on it.
    pub(crate) fn publish_applied(&self, applied_lsn: u64) {
        let mut guard = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Waiters compare against it once and sleep (`wait_applied`, `CommitTicket::is_done`):
        // it only moves forward.
        assert!(applied_lsn >= *guard, "applied LSN moves forward");
        *guard = applied_lsn;
        // Before the wake-up: a woken waiter that reads `Database::applied_lsn` must not see the
        // old value (tests/durable_crash.rs did, once: applied below what its Applied commit
        // had waited for).
        self.applied_lsn.store(applied_lsn, Ordering::Release);
        drop(guard);
        self.applied_changed.notify_all();
        self.metrics.timeline.sample(applied_lsn);
    }
}
