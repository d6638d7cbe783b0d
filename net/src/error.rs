//! The one error type of `pagemesh-net`.

use std::net::SocketAddr;
use std::time::Duration;

use uuid::Uuid;

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

    /// A frame header announces a body longer than its type allows. Raised from the header
    /// alone, before any of the body is buffered.
    #[error("frame type {frame_type} announces a {len}-byte body, more than its {max} bytes")]
    FrameTooLarge {
        /// The type byte of the header.
        frame_type: u8,
        /// The announced body length.
        len: usize,
        /// The largest body this frame type may have.
        max: usize,
    },
    /// A frame's crc32c does not match its header and body.
    #[error(
        "frame type {frame_type}: crc32c {actual:#010x} computed, header says {expected:#010x}"
    )]
    FrameCrc {
        /// The type byte of the header.
        frame_type: u8,
        /// The crc the header carries.
        expected: u32,
        /// The crc computed over the received bytes.
        actual: u32,
    },
    /// A frame header carries a type byte this protocol does not define.
    #[error("unknown frame type {frame_type}")]
    UnknownFrameType {
        /// The type byte of the header.
        frame_type: u8,
    },
    /// A frame passed its crc check but its header or body breaks the format.
    #[error("malformed {frame} frame: {reason}")]
    MalformedFrame {
        /// The frame type's name, e.g. "PAGES".
        frame: &'static str,
        /// What is wrong, e.g. "trailing bytes".
        reason: &'static str,
    },
    /// The two ends of a link share no protocol version.
    #[error("no common protocol version: ours {}..={}, theirs {}..={}", ours.0, ours.1, theirs.0, theirs.1)]
    VersionMismatch {
        /// Our supported range, (min, max).
        ours: (u16, u16),
        /// The peer's range, (min, max); a single chosen version appears as (v, v).
        theirs: (u16, u16),
    },
    /// The peer's handshake MAC is wrong: it does not hold our cluster secret.
    #[error("handshake authentication failed with {peer}")]
    AuthFailed {
        /// The peer as it named itself: "name (uuid)".
        peer: String,
    },
    /// The peer refused the link with a REFUSE frame.
    #[error("refused by peer (code {code}): {reason}")]
    Refused {
        /// The refusal code, a `proto::RefuseCode` as u16.
        code: u16,
        /// The peer's reason.
        reason: String,
    },
    /// The peer claims our own node uuid.
    #[error("peer claims our own node uuid {node}")]
    DuplicateNode {
        /// The uuid both ends claim.
        node: Uuid,
    },
    /// A frame arrived that the handshake does not expect in its current state.
    #[error("unexpected {frame} frame while {state}")]
    UnexpectedFrame {
        /// The handshake state, e.g. "awaiting WELCOME".
        state: &'static str,
        /// The frame type's name.
        frame: &'static str,
    },
    /// The handshake did not complete before its deadline.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The peer sent nothing, not even a heartbeat, for too long.
    #[error("link timed out: peer silent for {silent_for:?}")]
    LinkTimeout {
        /// How long the peer had been silent.
        silent_for: Duration,
    },
    /// A log operation failed (a cursor read, an invalid page).
    #[error("log: {0}")]
    Log(#[from] pagemesh_logpage::Error),
    /// The source database could not give what a replica asked for.
    #[error("source database {database}: {reason}")]
    Source {
        /// The database.
        database: uuid::Uuid,
        /// What failed.
        reason: String,
    },
    /// The replica refused what its source sent (a page failing its crc or epoch, a restore).
    #[error("replica of {database}: {reason}")]
    Replica {
        /// The database.
        database: uuid::Uuid,
        /// What failed.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
