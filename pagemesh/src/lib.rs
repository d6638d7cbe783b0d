//! pagemesh: an embedded, replicated storage engine.
//!
//! Applications read their data straight from a local memory-mapped LMDB file and commit writes
//! through a lock-free, 4 KB-paged replication log that is group-committed to peers in a mesh.
//! See `DESIGN.md` for the architecture.
//!
//! Everything an application needs is at the top of this crate: a [`Database`] opened with
//! [`Options`], written with [`WriteBatch`]es (or [`Transaction`]s) at a chosen [`Durability`],
//! read through [`Snapshot`]s; a [`Node`] serves databases to replicas and keeps [`Replica`]s of
//! other nodes' databases, named by [`Uuid`]; a commit's [`Receipt`] lets another process wait
//! until its replica holds the write. Store errors are [`Error`], node errors [`NodeError`].
//!
//! ```
//! use std::time::Duration;
//!
//! use pagemesh::{Database, Durability, Error, Node, Options, Receipt, Uuid};
//!
//! let dir = tempfile::tempdir()?;
//!
//! // A database on its own: batches in, snapshots out.
//! let db = Database::open(dir.path().join("alone"), Options::new())?;
//! let mut batch = db.batch();
//! batch.put("prices", b"{A1}", b"250000")?.put("prices", b"{B2}", b"180000")?;
//! let version = db.commit(&batch, Durability::Applied)?;
//! let snapshot = db.read()?;
//! assert_eq!(snapshot.get("prices", b"{A1}")?.map(|v| v.seq), Some(version));
//! let keys: Vec<Vec<u8>> = snapshot
//!     .prefix("prices", b"{")?
//!     .map(|entry| entry.map(|(key, _)| key.to_vec()))
//!     .collect::<Result<_, Error>>()?;
//! assert_eq!(keys, [b"{A1}".to_vec(), b"{B2}".to_vec()]);
//!
//! // A primary and a replica: the replica names the database by its uuid.
//! let primary = Node::builder("primary", dir.path().join("a"))
//!     .listen("127.0.0.1:0".parse()?)
//!     .open()?;
//! let sales = primary.open_database("sales", Options::new())?;
//! primary.serve(&sales, 1);
//! let uuid: Uuid = sales.uuid();
//! let replica_node = Node::builder("replica", dir.path().join("b")).open()?;
//! let replica = replica_node.replicate(primary.local_addr().unwrap(), uuid, "sales", Options::new())?;
//!
//! let mut batch = sales.batch();
//! batch.put("sales", b"2024-01", b"12")?;
//! let receipt = sales.commit_with_receipt(&batch, Durability::Replicated(1))?;
//! // The receipt travels as text (or bytes) to whoever reads the replica.
//! let receipt: Receipt = receipt.to_string().parse()?;
//! let copy = replica.wait_for(&receipt, Duration::from_secs(30))?;
//! assert_eq!(copy.read()?.get("sales", b"2024-01")?.map(|v| v.seq), Some(receipt.version()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The crates underneath stay reachable for tools and tests: the log ([`pagemesh_logpage`], as
//! [`log`]), the LMDB store ([`pagemesh_core`], as [`mod@core`]) and the network
//! ([`pagemesh_net`], as [`net`]), where the replication plumbing lives (ingest, cursors,
//! replica links); [`Node`] wires the store to the network.
//!
//! This crate is the library an application links, and nothing else: the `pagemesh` program,
//! its benchmarks, the demo, the data-set generator and the fault-injecting proxy live in the
//! `pagemesh-tools` crate at the repository's root, so an application compiles none of them.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]

pub mod node;

pub use node::{
    DatabaseRef, DatabaseReport, Node, NodeBuilder, NodeError, NodeMetrics, Replica,
    REPLICATE_PROBE,
};
pub use pagemesh_core as core;
pub use pagemesh_core::{
    codec, Codec, CommitTicket, Database, Durability, Entries, Error, Options, ReadOnlyDatabase,
    Receipt, Result, ScannedEntries, Snapshot, Table, Transaction, Value, Versioned, WriteBatch,
};
pub use pagemesh_logpage as log;
pub use pagemesh_net as net;
pub use uuid::Uuid;
