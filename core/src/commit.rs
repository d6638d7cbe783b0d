//! What a commit is made of and what it hands back: a [`WriteBatch`] becomes one log record;
//! [`Database::commit_async`] appends it and returns a [`CommitTicket`], which waits until the
//! record's [`Durability`] holds.
//!
//! A ticket waits on one of four watermarks: the log ring's committed prefix (`Memory`), the
//! applier's applied LSN (`Applied`), the ring's durable watermark (`Durable`: the ring is the
//! write-ahead log, so a durable commit never waits for LMDB), the replicas' receipt
//! (`Replicated(n)`), or two of them at once (`DurableReplicated(n)`). See [`Durability`] for
//! what each promises.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use pagemesh_logpage::CommitPos;

use crate::database::Inner;
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::options::{Durability, RECORD_LEN_MAX_DEFAULT};
use crate::receipt::Receipt;
use crate::record::RecordBuilder;
#[cfg(doc)]
use crate::Database;

/// Puts and deletes over any tables, committed as one record; and table operations
/// ([`create_table`](Self::create_table), [`drop_table`](Self::drop_table),
/// [`clear_table`](Self::clear_table)), which go through the log like any write, so replicas
/// do the same at the same point. A put into a table that does not exist creates it.
///
/// A record may take up to half the log ring, so a put that would make the batch larger than
/// that is refused at once with [`Error::ValueTooLarge`], naming the limit. [`WriteBatch::new`]
/// checks against the default ring's limit ([`RECORD_LEN_MAX_DEFAULT`]);
/// [`Database::batch`] against the database's own ring.
///
/// ```
/// use pagemesh_core::{Error, WriteBatch, RECORD_LEN_MAX_DEFAULT};
///
/// let mut batch = WriteBatch::new();
/// let huge = vec![0u8; RECORD_LEN_MAX_DEFAULT];
/// let refused = batch.put("blobs", b"k", &huge).unwrap_err();
/// assert!(matches!(refused, Error::ValueTooLarge { limit: RECORD_LEN_MAX_DEFAULT, .. }));
/// assert!(batch.is_empty(), "nothing of it was added");
/// ```
#[derive(Clone, Debug)]
pub struct WriteBatch {
    pub(crate) record: RecordBuilder,
    record_len_max: usize,
}

impl Default for WriteBatch {
    fn default() -> Self {
        Self::with_record_len_max(RECORD_LEN_MAX_DEFAULT)
    }
}

impl WriteBatch {
    /// An empty batch for a database with the default ring: puts that would make its record
    /// larger than [`RECORD_LEN_MAX_DEFAULT`] are refused.
    pub fn new() -> Self {
        Self::default()
    }
    /// An empty batch whose puts are refused once its record would pass `record_len_max` bytes
    /// (for a database opened with a larger [`ring_slots`](crate::Options::ring_slots): the
    /// commit refuses a record above its log's limit whatever this says).
    pub fn with_record_len_max(record_len_max: usize) -> Self {
        Self {
            record: RecordBuilder::default(),
            record_len_max,
        }
    }
    /// Sets `key` in `table` to `value`; refuses (adding nothing) a value that would make the
    /// batch's record larger than the log takes, with [`Error::ValueTooLarge`].
    pub fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<&mut Self> {
        (self.record).check_put_fits(table, key, value, self.record_len_max)?;
        self.record.put(table, key, value)?;
        Ok(self)
    }
    /// Removes `key` from `table` (nothing if the table does not exist: a delete creates no
    /// table).
    pub fn delete(&mut self, table: &str, key: &[u8]) -> Result<&mut Self> {
        self.record.delete(table, key)?;
        Ok(self)
    }
    /// Creates `table`, empty, if it does not exist (a no-op if it does). A put creates its
    /// table too, so this is needed only for a table that must exist (be listed by
    /// [`Database::tables`]) before anything is in it.
    pub fn create_table(&mut self, table: &str) -> Result<&mut Self> {
        self.record.create_table(table)?;
        Ok(self)
    }
    /// Drops `table`: every entry removed, and it is no longer listed by [`Database::tables`]
    /// (a no-op if it does not exist). Later changes in the batch, and later batches, that put
    /// into it create it again, empty but for them.
    ///
    /// ```
    /// use pagemesh_core::{Database, Durability, Options};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let db = Database::open(dir.path(), Options::new())?;
    /// let mut batch = db.batch();
    /// batch.put("sessions", b"s1", b"alice")?.put("users", b"alice", b"")?;
    /// db.commit(&batch, Durability::Applied)?;
    ///
    /// let mut batch = db.batch();
    /// batch.drop_table("sessions")?.create_table("audit")?;
    /// db.commit(&batch, Durability::Applied)?;
    /// assert_eq!(db.tables(), ["audit", "users"]);
    /// assert!(db.read()?.get("sessions", b"s1")?.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn drop_table(&mut self, table: &str) -> Result<&mut Self> {
        self.record.drop_table(table)?;
        Ok(self)
    }
    /// Removes every entry of `table` and keeps the table (a no-op if it does not exist).
    pub fn clear_table(&mut self, table: &str) -> Result<&mut Self> {
        self.record.clear_table(table)?;
        Ok(self)
    }
    /// Changes in the batch.
    pub fn len(&self) -> usize {
        self.record.op_count() as usize
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A commit in flight, from [`Database::commit_async`].
#[must_use = "a ticket does nothing unless waited on"]
pub struct CommitTicket {
    pub(crate) inner: Arc<Inner>,
    pub(crate) pos: CommitPos,
    pub(crate) durability: Durability,
    /// When `commit_async` was called: the commit's latency is counted from here.
    pub(crate) started: Instant,
    /// Set once `wait` ran: a ticket dropped without it asks for its page's seal.
    pub(crate) waited: bool,
}

impl CommitTicket {
    /// The record's seq.
    pub fn seq(&self) -> u64 {
        self.pos.seq
    }

    /// The commit's receipt: its version and where it is in the log, known as soon as it was
    /// appended (see [`Receipt`]).
    pub fn receipt(&self) -> Receipt {
        Receipt::new(
            self.inner.store.origin_uuid,
            self.pos.seq,
            self.pos.lsn_last + 1,
        )
    }

    /// Whether the commit's durability already holds (never blocks). A commit not yet done has
    /// its page sealed, so that it ships and syncs without a waiter.
    pub fn is_done(&self) -> bool {
        let lsn_end = self.pos.lsn_last + 1;
        let applied = || self.inner.applied_lsn.load(Ordering::Acquire) >= lsn_end;
        let durable = || self.inner.log.durable_lsn() >= lsn_end;
        let replicated = |n| self.inner.replication.reached(lsn_end, n);
        let done = match self.durability {
            Durability::Memory => self.inner.log.committed_lsn() >= lsn_end,
            Durability::Replicated(n) => replicated(n),
            Durability::DurableReplicated(n) => durable() && replicated(n),
            Durability::Durable => durable(),
            _ => applied(),
        };
        if !done {
            self.inner.log.request_seal(self.pos);
            if matches!(
                self.durability,
                Durability::Replicated(_) | Durability::DurableReplicated(_)
            ) {
                self.inner.log.request_ship(self.pos.lsn_last);
            }
        }
        done
    }

    /// Waits until the commit's durability holds; returns the record's seq.
    pub fn wait(mut self) -> Result<u64> {
        self.waited = true;
        let waited = self.wait_durability();
        let (inner, started) = (&self.inner, self.started);
        inner
            .metrics
            .commit(self.durability, started, waited.is_ok());
        waited.map(|()| self.pos.seq)
    }

    fn wait_durability(&self) -> Result<()> {
        match self.durability {
            // In the committed log: every page up to the record's last one is finished, so a
            // process crash keeps it (recovery stops only at the first unfinished page). Never
            // waits on the applier's fsync: the page is sealed here unless an idle consumer will.
            Durability::Memory => {
                self.inner.log.wait_in_ring(self.pos)?;
            }
            // Sealed first (a page ships only once sealed), then the replicas' acks.
            // A page ships only once sealed: seal it if no consumer will (a wait that returns at
            // once), then wait for the acks alone. Blocking on the committed watermark first cost
            // a second wake-up per commit (measured: sync@16 0.78x async before, see the note).
            Durability::Replicated(n) => {
                self.inner
                    .log
                    .wait_committed(self.pos, Some(Instant::now()))?;
                self.wait_replicated(n)?;
            }
            // The ring's flush and the shippers' sends run in parallel; wait for both. Asked
            // for before the flush, the page ships as soon as it is sealed, not after the sync.
            Durability::DurableReplicated(n) => {
                self.inner.log.request_ship(self.pos.lsn_last);
                self.inner.wait_durable(self.pos)?;
                self.wait_replicated(n)?;
            }
            Durability::Durable => self.inner.wait_durable(self.pos)?,
            _ => self.inner.wait_applied(self.pos)?,
        }
        Ok(())
    }

    /// Waits for `n` replicas' acks; a shipper letting a batch build ships this page at once
    /// when the wait has to block (`Log::request_ship`).
    fn wait_replicated(&self, n: u32) -> Result<()> {
        let options = &self.inner.options;
        self.inner.replication.wait(
            self.receipt(),
            n,
            options.replication_timeout,
            options.degrade_on_timeout,
            || self.inner.log.request_ship(self.pos.lsn_last),
        )
    }
}

/// A ticket dropped unwaited still gets its record shipped and synced: its commit left asking
/// for the page's seal to the wait (`Reservation::commit_unannounced`), so the drop asks.
impl Drop for CommitTicket {
    fn drop(&mut self) {
        if !self.waited {
            self.inner.log.request_seal(self.pos);
        }
    }
}
