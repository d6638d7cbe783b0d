//! A read-only view of a database that another process may be writing: hot backup, inspection.
//!
//! [`ReadOnlyDatabase::open`] opens the LMDB environment in `dir/lmdb` with LMDB's read-only flag.
//! It takes neither the log ring's lock (the ring is not opened at all) nor LMDB's writer lock, and
//! it creates nothing, so it works the same whether a node or an app holds the database or nobody
//! does. [`ReadOnlyDatabase::read`] begins the same [`Snapshot`] a [`Database`] hands out: one
//! LMDB read transaction, consistent across every table, with [`Snapshot::export`] (the stream
//! `pagemesh backup` writes and `pagemesh restore` loads), [`Snapshot::stat`], `get`, `prefix` and
//! `binlog_range`.
//!
//! **What it sees** is what LMDB holds: every commit that was applied (`Applied`, `Durable`, and
//! a `Replicated(n)` or `Memory` commit once the writer's applier reached it, which on a live
//! writer is the next group). A record that is only in the log ring is not in the view: a `Memory`
//! commit the applier has not reached yet, or what a crashed writer left in the ring, which the
//! next [`Database::open`] recovers.
//!
//! **What a reader costs the writer.** Nothing blocks: readers and the writer share no lock but
//! LMDB's reader-table mutex, held for a few instructions when a read transaction begins. But a
//! read transaction pins the version it began on: the writer may not reuse any page freed after
//! it, so while a snapshot is open each group's copy-on-write pages are appended to the end of
//! `data.mdb` instead of filling freed pages. A long backup of a busy database therefore makes the
//! file grow by about what the writer rewrote meanwhile. The file never shrinks; the pages are
//! reused once the reader has ended.
//!
//! **A reader that is killed** (SIGKILL, a crash) cannot release its slot in LMDB's reader table
//! (`lmdb/lock.mdb`), so the slot keeps pinning its version, with the cost above, until it is
//! cleared. LMDB clears the slots of processes that no longer exist when `mdb_reader_check` runs
//! (every process holds an fcntl lock on its pid's byte of the lock file, so a dead one is found),
//! when a process recovers a reader-table mutex whose owner died, and when the lock file is reset
//! by the first open after every process closed the environment. Both [`ReadOnlyDatabase::open`]
//! and [`Database::open`] run `mdb_reader_check` (heed's `Env::clear_stale_readers`), so the next
//! backup, `pagemesh stat` or restart of the node clears what a killed backup left behind.
//!
//! **What it writes**: only LMDB's lock file, to take and release reader slots (LMDB has no
//! lock-free read mode except on a read-only filesystem). `data.mdb` is opened `O_RDONLY` and
//! mapped read-only, and the log's files are not opened.
//!
//! **One open per process.** LMDB forbids opening one environment twice in a process (closing
//! the second descriptor would drop the first one's fcntl locks). heed refuses a second open of
//! the same canonical path, and this returns [`Error::AlreadyOpen`]: a process that holds the
//! [`Database`] reads it through [`Database::read`] instead.
//!
//! **Tables created while it is open.** LMDB lets a read transaction use only the table handles
//! opened before it began, and here the tables are created by another process. So
//! [`ReadOnlyDatabase::read`] first opens a handle for every table `__meta` lists, then begins the
//! snapshot, and checks that the snapshot lists no table without a handle; if one was created in
//! between, it opens it and begins again, at most [`SNAPSHOT_ATTEMPTS_MAX`] times.
//!
//! ```
//! use pagemesh_core::{Database, Durability, Options, ReadOnlyDatabase, WriteBatch};
//!
//! let dir = tempfile::tempdir()?;
//! {
//!     let db = Database::open(dir.path(), Options::new())?;
//!     let mut batch = WriteBatch::new();
//!     batch.put("prices", b"{A1}", b"250000")?;
//!     db.commit(&batch, Durability::Durable)?;
//! }
//! let view = ReadOnlyDatabase::open(dir.path())?;
//! let snapshot = view.read()?;
//! assert_eq!(snapshot.get("prices", b"{A1}")?.expect("applied").bytes, b"250000");
//! let mut backup = Vec::new();
//! assert_eq!(snapshot.export(&mut backup)?.entries, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::store::Store;
#[cfg(doc)]
use crate::Database;
use crate::Snapshot;

/// Snapshots [`ReadOnlyDatabase::read`] begins before it gives up on tables being created under
/// it (each retry first opens every table created so far).
pub const SNAPSHOT_ATTEMPTS_MAX: u32 = 8;

/// A read-only view of a database directory, which a running node or app may hold (see the module
/// docs). `Send + Sync`; each [`read`](Self::read) is one LMDB read transaction.
pub struct ReadOnlyDatabase {
    dir: PathBuf,
    store: Store,
}

impl std::fmt::Debug for ReadOnlyDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyDatabase")
            .field("dir", &self.dir)
            .finish()
    }
}

impl ReadOnlyDatabase {
    /// Opens the database in `dir` read-only. Fails with [`Error::NotADatabase`] (naming the
    /// path) if `dir` holds no `lmdb/data.mdb` or its `__meta` holds no store format, and with
    /// [`Error::AlreadyOpen`] if this process holds it already.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let store = Store::open_read_only(dir)?;
        tracing::debug!(path = %dir.display(), "opened database read-only");
        Ok(Self {
            dir: dir.into(),
            store,
        })
    }

    /// A consistent snapshot of the database as its writer last committed it.
    pub fn read(&self) -> Result<Snapshot<'_>> {
        let store = &self.store;
        for _ in 0..SNAPSHOT_ATTEMPTS_MAX {
            store.open_missing_tables()?;
            let txn = store.env.read_txn().map_err(store.lmdb("begin read"))?;
            if store.has_every_table(&txn)? {
                return Ok(Snapshot { txn, store });
            }
            tracing::debug!(path = %self.dir.display(), "a table was created as the snapshot began; again");
        }
        Err(Error::TablesChanging {
            path: store.path.clone(),
            attempts: SNAPSHOT_ATTEMPTS_MAX,
        })
    }

    /// The directory it was opened on.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The database's uuid, made at creation.
    pub fn uuid(&self) -> uuid::Uuid {
        self.store.database_uuid
    }

    /// The uuid of the log its records come from (its own, or its origin's for a replica).
    pub fn origin_uuid(&self) -> uuid::Uuid {
        self.store.origin_uuid
    }
}
