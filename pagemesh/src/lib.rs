//! pagemesh: an embedded, replicated storage engine.
//!
//! Applications read their data straight from a local memory-mapped LMDB file and commit writes
//! through a lock-free, 4 KB-paged replication log that is group-committed to peers in a mesh.
//! See `DESIGN.md` for the architecture.
//!
//! The crates: the log ([`pagemesh_logpage`], re-exported as [`log`]), the LMDB store
//! ([`pagemesh_core`], as [`mod@core`]) and the network ([`pagemesh_net`], as [`net`]). [`Node`]
//! wires the store to the network: it serves databases to replicas and keeps replicas of other
//! nodes' databases.
//!
//! This crate is the library an application links, and nothing else: the `pagemesh` program,
//! its benchmarks, the demo, the data-set generator and the fault-injecting proxy live in the
//! `pagemesh-tools` crate at the repository's root, so an application compiles none of them.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]

pub mod node;

pub use node::{DatabaseReport, Node, NodeBuilder, NodeError, NodeMetrics, Replica};
pub use pagemesh_core as core;
pub use pagemesh_logpage as log;
pub use pagemesh_net as net;
