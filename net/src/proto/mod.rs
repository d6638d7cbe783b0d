//! The I/O-free wire protocol: frames, handshake, liveness.
//!
//! Nothing here touches a socket, a clock or a thread. Callers hand in received bytes and `now`;
//! they get back frames to send (appended to a `Vec<u8>`) and deadlines to keep.
//!
//! - [`frame`]: the 12-byte frame header, the eleven frame types, [`decode`] and [`encode`].
//! - [`handshake`]: HELLO / WELCOME / AUTH, version negotiation and HMAC authentication.
//! - [`liveness`]: heartbeats and the silent-peer timeout.
//!
//! A link's life: the connector calls [`Handshake::connect`] (which writes HELLO), the acceptor
//! [`Handshake::accept`]; both feed every decoded frame to [`Handshake::on_frame`] until it
//! returns the [`PeerInfo`]. From then on the link sends and receives the other frames and keeps a
//! [`Liveness`]. Any decode error, refusal or timeout closes the link.

pub mod command;
pub mod frame;
pub mod handshake;
pub mod liveness;

pub use frame::{
    check_header, decode, encode, encode_pages, Accept, Ack, Auth, Decoded, Frame, FrameType, Have,
    Heartbeat, Hello, Message, Pages, PagesHeader, PeerEntry, PeerList, ReceiptReport, Refuse,
    RefuseCode, Resume, SnapshotChunk, Watch, Welcome, CONTROL_BODY_MAX, FLAG_PEERS_NAMED,
    FLAG_SNAPSHOT_LAST, FRAME_BODY_MAX, FRAME_HEADER_LEN, HANDSHAKE_BODY_MAX, NAMES_SINCE_VERSION,
    NAME_MAX, PAGES_COUNT_MAX, PAGE_SIZE, PATH_MAX, PATH_SINCE_VERSION, PEERS_MAX,
    PEER_DATABASES_MAX, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, REASON_MAX, RECEIPTS_MAX,
    RECEIPTS_SINCE_VERSION, SNAPSHOT_CHUNK_MAX, VISITED_MAX, WATCH_SINCE_VERSION,
};
pub use handshake::{Handshake, HandshakeConfig, PeerInfo, HANDSHAKE_TIMEOUT_DEFAULT};
pub use liveness::{LinkAction, Liveness, HEARTBEAT_INTERVAL_DEFAULT, LINK_TIMEOUT_DEFAULT};
/// Node and database ids, as the frames carry them (16 raw bytes on the wire).
pub use uuid::Uuid;
