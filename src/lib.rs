//! pagemesh's tools, kept out of the library an application links (`pagemesh`, in pagemesh/):
//! the workloads that both the criterion benches and `pagemesh bench` run ([`mod@bench`], so
//! both measure the same thing), the land-registry data set and the importer's CSV reader
//! ([`workload`]), and the fault-injecting TCP proxy the integration tests put between nodes
//! ([`proxy`]). The `pagemesh` program (src/main.rs) is built on them.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod proxy;
pub mod workload;
