//! pagemesh's network layer.
//!
//! Two halves, as DESIGN.md fixes them:
//!
//! - [`proto`] and [`route`] are I/O-free state machines: they take bytes and `now` and hand back
//!   frames to send and deadlines to keep. Nothing in them touches a socket or a clock.
//! - [`transport`] drives them over TCP: a runtime thread owns every socket, on io_uring
//!   (driven directly, by an executor that parks in `io_uring_enter`) where the kernel allows it
//!   and on tokio's epoll runtime otherwise.
//!
//! This crate knows the log (pages, cursors) but not the store: the root crate wires shippers and
//! receivers to `pagemesh-core`.
#![deny(unsafe_op_in_unsafe_fn)]
// Unsafe code only where the kernel shares memory with us: the io_uring executor
// (`transport/uring.rs`), allowed there alone.
#![deny(unsafe_code)]

pub mod control;
pub mod diff;
pub mod error;
pub mod proto;
pub mod route;
pub mod service;
pub mod transport;

pub use error::{BoxError, Error, Result};
pub use service::metrics::NetMetricsSnapshot;
pub use service::{
    AckSink, Controller, CopyReport, DatabaseLog, History, LinkFailure, ReplicaDatabase,
    ReplicaReport, ReplicaStore, Service, ServiceConfig, SourceDatabase, Subscription,
    SubscriptionStatus, BOOTSTRAP,
};
pub use transport::{RuntimeKind, TransportKind};
