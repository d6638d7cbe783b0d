//! The one error type of `pagemesh-net`.

use std::net::SocketAddr;

/// What went wrong, and where: every variant names the peer, address or frame concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed.
    #[error("{op} on link to {peer}: {source}")]
    Io {
        /// What was being done: "connect", "accept", "read", "write", "bind".
        op: &'static str,
        /// The remote (or local, for bind) address.
        peer: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The transport runtime could not start or has stopped.
    #[error("transport runtime: {0}")]
    Runtime(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
