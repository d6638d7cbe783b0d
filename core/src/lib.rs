//! pagemesh's store: LMDB (through heed) fed by the replication log.
//!
//! Writes go through the log: a [`WriteBatch`] becomes one log record; the applier thread turns
//! groups of ready pages into one LMDB write transaction each (binlog append, apply, apply state),
//! and a commit returns when its [`Durability`] holds. Reads are LMDB read transactions: zero-copy,
//! in parallel with the writer, never blocked by it. See `store.rs`, `binlog.rs` and `apply.rs` for
//! the layouts, and `recovery.rs` for what an open replays.
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
//! loads one; [`Snapshot::binlog_range`] reads log pages back from any retained LSN (the history
//! is the log's own segment files, each page written once); retention retires it by size or
//! age, never past a registered cursor ([`Plumbing::set_cursor`]).
//!
//! Tables hold bytes; [`Table<K, V>`](Table) reads and writes them as typed keys and values
//! through a small [`Codec`] trait (`codec`'s docs), at no cost to the byte API.
//!
//! Another process (a backup, an inspector) reads a database that a node or app holds through
//! [`ReadOnlyDatabase`]: the same consistent [`Snapshot`], without the log ring's lock and without
//! writing to the database; [`Snapshot::stat`] reports what a snapshot holds.

#![deny(unsafe_code)] // one exception, LMDB's open, allowed where it is (store.rs)
#![deny(unsafe_op_in_unsafe_fn)]

mod apply;
mod binlog;
pub mod codec;
mod commit;
mod database;
mod error;
mod key_order;
mod metrics;
mod options;
mod plumbing;
mod read;
mod read_only;
mod receipt;
pub mod record;
mod recovery;
mod registry;
mod replication;
mod snapshot;
mod stat;
mod store;
mod transaction;
mod value;

pub use apply::Stats;
pub use codec::{Codec, Table};
pub use commit::{CommitTicket, WriteBatch};
pub use database::Database;
pub use error::{Error, Result};
pub use metrics::{
    CommitMetrics, DatabaseMetrics, Histogram, ReplicaLag, ReplicaState, DEPARTED_REPLICAS_MAX,
    TIMELINE_SAMPLES_MAX, TIMELINE_SPACING,
};
pub use options::{
    Durability, Options, APPLY_NICE, APPLY_PACE, FLUSH_PACE, GROUP_DIRTY_BYTES_MAX_DEFAULT,
    RECORD_LEN_MAX_DEFAULT, REPLICA_APPLY_PACE, REPLICA_FLUSH_PACE, RING_SLOTS_DEFAULT,
};
pub use pagemesh_logpage::Ingested;
pub use plumbing::Plumbing;
pub use read::{Entries, Snapshot};
pub use read_only::{ReadOnlyDatabase, SNAPSHOT_ATTEMPTS_MAX};
pub use receipt::{Receipt, RECEIPT_FORMAT, RECEIPT_LEN};
pub use record::RecordBuilder;
pub use replication::{ReplicaLink, ReplicaStatus, Replication, SUBTREE_NODES_MAX};
pub use snapshot::SnapshotStats;
pub use stat::{DatabaseStat, LmdbInfo, TableStat};
pub use store::STORE_FORMAT;
pub use transaction::{ScannedEntries, Transaction, Versioned};
pub use value::Value;
