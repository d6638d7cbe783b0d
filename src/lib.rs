//! pagemesh: an embedded, replicated storage engine.
//!
//! Applications read their data straight from a local memory-mapped LMDB file and commit writes
//! through a lock-free, 4 KB-paged replication log that is group-committed to peers in a mesh.
//! See `DESIGN.md` for the architecture.
//!
//! What exists so far is the log, [`pagemesh_logpage`], re-exported here as [`log`]; the LMDB
//! store and the network arrive with their own crates. [`mod@bench`] holds the workloads that both
//! the criterion benches and `pagemesh bench` run, so both measure the same thing.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod proxy;
pub mod workload;

pub use pagemesh_logpage as log;
