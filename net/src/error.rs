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
    /// A thread the network needs could not be started.
    #[error("spawn thread {thread}: {source}")]
    Spawn {
        /// The thread's name or role.
        thread: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A runtime could not be set up: io_uring (a kernel or seccomp profile without it, when it
    /// was asked for explicitly) or tokio's epoll runtime.
    #[error("{runtime} runtime could not start: {source}")]
    RuntimeSetup {
        /// "io_uring" or "epoll".
        runtime: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A thread the operation relied on ended before it answered (it panicked, or its runtime
    /// shut down).
    #[error("the {thread} thread ended before it answered")]
    ThreadEnded {
        /// The thread's role: "network", "snapshot", "restore".
        thread: &'static str,
    },
    /// A node without a cluster secret was asked to listen beyond loopback.
    #[error("refusing to listen on {addr} without a cluster secret: configure one, or listen on loopback")]
    InsecureListen {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The peer closed the link (end of stream) at a point where that breaks the protocol.
    #[error("peer closed the link while {state}")]
    PeerClosed {
        /// What the link was doing, e.g. "handshaking".
        state: &'static str,
    },
    /// This side closed the link (unsubscribed, withdrawn, evicted, shutting down) while `state`.
    #[error("link closed while {state}")]
    LinkClosed {
        /// What the link was doing, e.g. "sending a snapshot".
        state: &'static str,
    },
    /// Every authenticated link slot is taken (`ServiceConfig::links_max`).
    #[error("{max} links are open already, the most allowed")]
    LinksFull {
        /// The cap.
        max: usize,
    },
    /// A holder watched for a database said what it holds of another database or origin.
    #[error("watching database {database} (origin {origin}): HAVE for database {have_database} origin {have_origin}")]
    ForeignHave {
        /// The database watched.
        database: uuid::Uuid,
        /// The origin the replica follows (nil: none yet).
        origin: uuid::Uuid,
        /// The database the HAVE named.
        have_database: uuid::Uuid,
        /// The origin the HAVE named.
        have_origin: uuid::Uuid,
    },
    /// A subscription named no node to follow.
    #[error("database {database}: a subscription needs at least one upstream address")]
    NoUpstreams {
        /// The database.
        database: uuid::Uuid,
    },
    /// A peer reported receipts of more nodes than a subtree may hold, for a database.
    #[error("database {database}: a peer reported receipts of more than {max} nodes")]
    TooManyReceipts {
        /// The database.
        database: uuid::Uuid,
        /// The bound.
        max: usize,
    },
    /// A peer reported receipts of another origin's log than the link ships.
    #[error("database {database}: receipts for origin {origin}, but this link ships origin {expected_origin}")]
    ForeignReceipts {
        /// The database.
        database: uuid::Uuid,
        /// The origin the report names.
        origin: uuid::Uuid,
        /// The origin this link ships.
        expected_origin: uuid::Uuid,
    },

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
    /// A COMMAND or REPLY payload breaks the command format (`proto::command`).
    #[error("malformed command: {reason}")]
    MalformedCommand {
        /// What is wrong, e.g. "unknown command".
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
    /// A node answered a command with an ERROR reply.
    #[error("{node} answered: {reason}")]
    CommandFailed {
        /// The node asked.
        node: std::net::SocketAddr,
        /// Its reason.
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
    /// A PAGES run (or a snapshot) of another origin, or of an older epoch, than the link
    /// follows: relayed pages are ingested as they are, so the receiver checks whose they are.
    #[error("database {database}: refused a run of origin {origin} epoch {epoch}: this link follows origin {expected_origin} from epoch {expected_epoch}")]
    ForeignRun {
        /// The database.
        database: uuid::Uuid,
        /// The origin the run names.
        origin: uuid::Uuid,
        /// The epoch the run names.
        epoch: u64,
        /// The origin this link follows.
        expected_origin: uuid::Uuid,
        /// The oldest epoch it takes.
        expected_epoch: u64,
    },
    /// The handshake did not complete before its deadline.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// One write to the peer stayed blocked for longer than the link timeout: the peer stopped
    /// reading.
    #[error("a write to the peer blocked for {blocked_for:?}")]
    WriteBlocked {
        /// How long it had been blocked.
        blocked_for: Duration,
    },
    /// A replica stopped reading while its link holds a ring cursor and it is more than half the
    /// ring behind: the link is dropped so that the ring's slots can be reused.
    #[error("replica {lag_pages} pages behind, more than half the {ring_slots}-page ring, while its link is blocked")]
    ReplicaHoldsRing {
        /// How far behind the log's committed LSN the replica's shipped LSN is.
        lag_pages: u64,
        /// Pages in the ring.
        ring_slots: u64,
    },
    /// The peer sent nothing, not even a heartbeat, for too long.
    #[error("link timed out: peer silent for {silent_for:?}")]
    LinkTimeout {
        /// How long the peer had been silent.
        silent_for: Duration,
    },
    /// A log operation failed (a cursor read, an invalid page).
    #[error("log: {0}")]
    Log(#[from] pagemesh_logpage::Error),
    /// The source database could not give what a replica asked for: its binlog or a snapshot.
    #[error("source database {database}: {op}: {source}")]
    Source {
        /// The database.
        database: uuid::Uuid,
        /// What was being read: "read binlog", "export snapshot".
        op: &'static str,
        /// The store's error.
        #[source]
        source: BoxError,
    },
    /// The replica refused pages its source sent (a page failing its crc or epoch, a gap).
    #[error("replica of {database}: ingest pages: {source}")]
    Ingest {
        /// The database.
        database: uuid::Uuid,
        /// The log's error.
        #[source]
        source: pagemesh_logpage::Error,
    },
    /// A snapshot from the source could not be restored into a new replica.
    #[error("replica of {database}: restore snapshot: {source}")]
    Restore {
        /// The database.
        database: uuid::Uuid,
        /// The store's error.
        #[source]
        source: BoxError,
    },
}

/// An error from the other side of the seam between the network and the store: the root crate
/// implements this crate's database traits for its store, and hands back the store's own errors,
/// boxed, so that their source chain survives.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
