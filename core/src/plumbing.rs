//! The replication plumbing of a [`Database`]: what the node and network crates call to make
//! it a source or a replica, and an application does not. Reached through
//! [`Database::plumbing`], so the database's own docs list only what an application uses.
//!
//! ```
//! use pagemesh_core::{Database, Options};
//!
//! let dir = tempfile::tempdir()?;
//! let db = Database::open(dir.path(), Options::new())?;
//! let _ = db.plumbing().received_lsn();
//! let _ = db.plumbing().log();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The same calls on the database itself do not compile (they used to sit there, beside what
//! an application calls):
//!
//! ```compile_fail
//! use pagemesh_core::{Database, Options};
//!
//! let dir = tempfile::tempdir()?;
//! let db = Database::open(dir.path(), Options::new())?;
//! let _ = db.received_lsn();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ```compile_fail
//! use pagemesh_core::{Database, Options};
//!
//! let dir = tempfile::tempdir()?;
//! let db = Database::open(dir.path(), Options::new())?;
//! let _ = db.log();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;
use std::sync::Arc;

use pagemesh_logpage::{Ingested, Log};

use crate::database::Database;
use crate::error::Result;
use crate::options::Options;
use crate::replication::Replication;
use crate::snapshot::{self, SnapshotStats};

/// A database's replication plumbing, for the node and network crates (`pagemesh::Node` wires
/// them), tools and tests: the log, pages ingested from an origin, replication state, binlog
/// cursors, replica restore. An application needs none of it: it commits, reads, and waits for
/// receipts on [`Database`].
#[derive(Clone, Copy, Debug)]
pub struct Plumbing<'db> {
    db: &'db Database,
}

impl<'db> Plumbing<'db> {
    pub(crate) fn new(db: &'db Database) -> Self {
        Self { db }
    }

    /// Copies pages of this replica's origin into its log ring (see
    /// [`pagemesh_logpage::Log::ingest`]); the applier replays them. Never blocks.
    pub fn ingest(&self, pages: &[u8]) -> Result<Ingested> {
        Ok(self.db.inner().log.ingest(pages)?)
    }

    /// Every page below this is in the log ring (received, for a replica): what it acknowledges.
    pub fn received_lsn(&self) -> u64 {
        self.db.inner().log.committed_lsn()
    }

    /// The log, for the network's shippers (cursors) and feeders (wakers).
    pub fn log(&self) -> &'db Log {
        &self.db.inner().log
    }

    /// This database's replication state: make it a source, attach replicas, report acks.
    pub fn replication(&self) -> &'db Arc<Replication> {
        &self.db.inner().replication
    }

    /// The oldest LSN the binlog still holds: catch-up from below it needs a full snapshot.
    pub fn binlog_oldest_lsn(&self) -> Result<u64> {
        let store = &self.db.inner().store;
        let rtxn = store.env.read_txn().map_err(store.lmdb("begin"))?;
        Ok(store.history_extent(&rtxn)?.oldest)
    }

    /// Registers (or moves) a named consumer of the binlog at `lsn`: retention never trims a page
    /// at or above it. A replica's shipper keeps its cursor here.
    pub fn set_cursor(&self, name: &str, lsn: u64) -> Result<()> {
        self.db.inner().store.set_cursor(name, lsn)
    }

    /// Forgets a named consumer.
    pub fn remove_cursor(&self, name: &str) -> Result<()> {
        self.db.inner().store.remove_cursor(name)
    }

    /// Marks this copy as replaced by another (a replica re-bootstrapped into a new directory,
    /// as a node does when its source's history moved past it): handles still held keep
    /// reading what it held, which no longer moves; [`Database::is_superseded`] says so, and
    /// the first read after logs a warning, so a stale handle is not silent.
    pub fn supersede(&self) {
        self.db.inner().supersede();
    }

    /// Restores a snapshot stream of another database into `dir` (empty) as a read-only replica
    /// of it, and opens it. The replica then takes its origin's pages with
    /// [`ingest`](Self::ingest) from the LSN in the returned stats (see the snapshot module docs
    /// for why that may be below the snapshot's own LSN). A replica refuses writes with
    /// [`crate::Error::ReadOnlyReplica`].
    pub fn restore_replica(
        dir: impl AsRef<Path>,
        input: impl std::io::Read,
        options: Options,
    ) -> Result<(Database, SnapshotStats)> {
        let stats = snapshot::restore(dir.as_ref(), options.map_size, input, true)?;
        let db = Database::open(&dir, options)
            .inspect_err(|error| snapshot::discard_after_failed_open(dir.as_ref(), error))?;
        Ok((db, stats))
    }
}
