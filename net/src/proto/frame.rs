//! Frames: a fixed 12-byte header and a typed body.
//!
//! All integers are little-endian. Uuids are their 16 raw bytes. Strings are UTF-8.
//!
//! ```text
//! header   offset size field       meaning
//!               0    4 body_len    bytes after the header; at most the type's body_max
//!               4    1 frame_type  FrameType, 1..=14
//!               5    1 flags       bits defined per type (SNAPSHOT: bit 0 = last chunk); others 0
//!               6    2 reserved    zero
//!               8    4 crc32c      over header bytes 0..8, then the body
//! ```
//!
//! Bodies, by type (`n` is the length field just before a variable part):
//!
//! ```text
//! type          body                                                         body_max
//!  1 HELLO      protocol_min u16 | protocol_max u16 | node uuid |            53 + 64
//!               nonce [32] | name_len u8 | name [n ≤ 64]
//!  2 WELCOME    protocol u16 | node uuid | nonce [32] | mac [32] |           83 + 64
//!               name_len u8 | name [n ≤ 64]
//!  3 AUTH       mac [32]                                                     32
//!  4 REFUSE     code u16 | reason_len u16 | reason [n ≤ 1024]                4 + 1024
//!  5 PAGES      database uuid | origin uuid | epoch u64 | visited_count u8 | FRAME_BODY_MAX
//!               visited uuid × n (n ≤ 32) | first_lsn u64 | page_count u32 |
//!               pages [page_count × 4096] (1 ≤ page_count ≤ PAGES_COUNT_MAX)
//!  6 ACK        database uuid | origin uuid | received_lsn u64 |             48
//!               durable_lsn u64 (≤ received_lsn)
//!  7 RESUME     database uuid | origin uuid | epoch u64 | from_lsn u64       48
//!  8 SNAPSHOT   database uuid | origin uuid | snapshot_lsn u64 |             FRAME_BODY_MAX
//!               offset u64 | chunk [rest of body]
//!  9 HEARTBEAT  sent_micros u64                                              8
//! 10 COMMAND    request_id u64 | payload [rest of body]                      FRAME_BODY_MAX
//! 11 REPLY      request_id u64 | payload [rest of body]                      FRAME_BODY_MAX
//! 12 RECEIPTS   database uuid | origin uuid | count u16 |                    34 + 128 × 24
//!               (node uuid | received_lsn u64) × count (1 ≤ count ≤ 128,
//!               node uuids strictly ascending)
//! 13 WATCH      database uuid | origin uuid                                  32
//! 14 HAVE       database uuid | origin uuid | lsn u64 |                      40 + 1 + 32 × 16
//!               [path_count u8 | path uuid × n (1 ≤ n ≤ 32)]
//! 15 PEERS      count u8 (1 ≤ count ≤ 16) | (node uuid | heartbeat u64 |     1 + 16 × 241
//!               age_ms u32 | family u8 (4|6) | ip [4|16] | port u16 |
//!               [name_len u8 | name [≤ 64]] | db_count u8 |
//!               database uuid × db_count (≤ 8)) × count
//!               (the names only with header flag 1, NAMED)
//! ```
//!
//! Protocol version 2 added RECEIPTS, version 3 WATCH and HAVE: a node sends them only on a
//! link whose peer speaks that version or later, and an older peer never sends them. Version 4
//! added HAVE's path (the sender's way to the origin); a HAVE with no path is version 3's 40
//! bytes exactly, so a node sends a path only to a peer of version 4 or later. Version 4 also
//! added PEERS, the membership gossip, on links of its own. Version 5 added node names to PEERS
//! entries (header flag [`FLAG_PEERS_NAMED`]), so commands can name a node by its name; a node
//! sends a named PEERS only to a peer of version 5 or later, and strips the names for an older
//! one.
//!
//! The encoding is canonical: [`decode`] accepts exactly the bytes [`encode`] writes, so a frame
//! that decodes re-encodes to the same bytes. Decoding never panics and never allocates more than
//! a PAGES frame's visited list (≤ 32 uuids) and a HELLO/WELCOME/REFUSE string: page runs,
//! snapshot chunks and command payloads are borrowed from the input.
//!
//! About 1,050 lines of code (and 160 of tests) in one file, on purpose: each frame type's
//! encoder sits beside its decoder, so a change to one is made with the other, and every type
//! shares the header checks.

use std::fmt;

use uuid::Uuid;

use crate::error::{Error, Result};

/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 12;
/// The largest body any frame may have (16 MiB). A header announcing more is refused before the
/// body is read, so a peer can never make us buffer more than this per frame.
pub const FRAME_BODY_MAX: usize = 16 << 20;
/// The protocol version this build speaks best.
pub const PROTOCOL_VERSION: u16 = 5;
/// The oldest protocol version this build still speaks.
pub const PROTOCOL_VERSION_MIN: u16 = 1;
/// Bytes in a log page, as shipped in PAGES frames.
pub const PAGE_SIZE: usize = pagemesh_logpage::PAGE_SIZE;
/// The longest node name in HELLO and WELCOME, in bytes.
pub const NAME_MAX: usize = 64;
/// The longest reason in REFUSE, in bytes.
pub const REASON_MAX: usize = 1024;
/// The most nodes a PAGES frame's visited list may hold.
pub const VISITED_MAX: usize = 32;
/// The most pages one PAGES frame may carry: as many as fit in [`FRAME_BODY_MAX`] next to the
/// largest fixed part (4095).
pub const PAGES_COUNT_MAX: usize =
    (FRAME_BODY_MAX - PAGES_FIXED_LEN - VISITED_MAX * 16) / PAGE_SIZE;
/// The largest chunk one SNAPSHOT frame may carry.
pub const SNAPSHOT_CHUNK_MAX: usize = FRAME_BODY_MAX - SNAPSHOT_FIXED_LEN;
/// The largest payload one COMMAND or REPLY frame may carry.
pub const MESSAGE_PAYLOAD_MAX: usize = FRAME_BODY_MAX - MESSAGE_FIXED_LEN;
/// The most nodes one RECEIPTS frame names; a longer report goes out in several frames.
pub const RECEIPTS_MAX: usize = 128;
/// The first protocol version with RECEIPTS frames.
pub const RECEIPTS_SINCE_VERSION: u16 = 2;
/// The first protocol version with WATCH and HAVE frames.
pub const WATCH_SINCE_VERSION: u16 = 3;
/// The first protocol version whose HAVE frames may carry a path.
pub const PATH_SINCE_VERSION: u16 = 4;
/// The first protocol version whose PEERS frames may carry node names.
pub const NAMES_SINCE_VERSION: u16 = 5;
/// The most nodes one PEERS frame describes; a node gossips more in several frames.
pub const PEERS_MAX: usize = 16;
/// The most databases one PEERS entry says its node serves (a node serving more is advertised
/// with the first [`PEER_DATABASES_MAX`]).
pub const PEER_DATABASES_MAX: usize = 8;
/// The most nodes a HAVE frame's path may name; a longer way to the origin is cut to its
/// nearest [`PATH_MAX`] nodes.
pub const PATH_MAX: usize = 32;
/// Header flag of a SNAPSHOT frame: this chunk is the last of the snapshot.
pub const FLAG_SNAPSHOT_LAST: u8 = 1;
/// Header flag of a PEERS frame: each entry carries its node's name.
pub const FLAG_PEERS_NAMED: u8 = 1;
/// The longest body of a handshake frame (HELLO, WELCOME, AUTH, REFUSE): all that a peer that has
/// not authenticated can make a node buffer for one frame (see [`Accept::Handshake`]).
pub const HANDSHAKE_BODY_MAX: usize = REFUSE_FIXED_LEN + REASON_MAX;
/// The longest body a node accepts on a link that carries no bulk data towards it
/// ([`Accept::Control`]): room for every control frame (RESUME, ACK, HEARTBEAT, REFUSE).
pub const CONTROL_BODY_MAX: usize = 4096 - FRAME_HEADER_LEN;

const BODY_LEN_OFFSET: usize = 0;
const FRAME_TYPE_OFFSET: usize = BODY_LEN_OFFSET + 4;
const FLAGS_OFFSET: usize = FRAME_TYPE_OFFSET + 1;
const RESERVED_OFFSET: usize = FLAGS_OFFSET + 1;
const CRC_OFFSET: usize = RESERVED_OFFSET + 2;
const _: () = assert!(CRC_OFFSET + 4 == FRAME_HEADER_LEN);

const MAC_LEN: usize = 32;
const HELLO_FIXED_LEN: usize = 2 + 2 + 16 + 32 + 1;
const WELCOME_FIXED_LEN: usize = 2 + 16 + 32 + MAC_LEN + 1;
const REFUSE_FIXED_LEN: usize = 2 + 2;
/// PAGES body without its visited uuids and pages.
const PAGES_FIXED_LEN: usize = 16 + 16 + 8 + 1 + 8 + 4;
const ACK_LEN: usize = 16 + 16 + 8 + 8;
const RESUME_LEN: usize = 16 + 16 + 8 + 8;
const SNAPSHOT_FIXED_LEN: usize = 16 + 16 + 8 + 8;
const HEARTBEAT_LEN: usize = 8;
const MESSAGE_FIXED_LEN: usize = 8;
const RECEIPTS_FIXED_LEN: usize = 16 + 16 + 2;
const RECEIPT_LEN: usize = 16 + 8;
const WATCH_LEN: usize = 16 + 16;
const HAVE_LEN: usize = 16 + 16 + 8 + 1 + PATH_MAX * 16;
/// A PEERS entry at its largest: node, heartbeat, an IPv6 address and port, a name, eight
/// databases.
const PEER_ENTRY_MAX: usize = 16 + 8 + 4 + 1 + 16 + 2 + 1 + NAME_MAX + 1 + PEER_DATABASES_MAX * 16;
const PEERS_LEN: usize = 1 + PEERS_MAX * PEER_ENTRY_MAX;
const _: () = assert!(PAGES_COUNT_MAX == 4095);
const _: () = assert!(REASON_MAX <= u16::MAX as usize && NAME_MAX <= u8::MAX as usize);
const _: () = assert!(FRAME_BODY_MAX <= u32::MAX as usize);
const _: () = assert!(
    ACK_LEN <= CONTROL_BODY_MAX
        && RESUME_LEN <= CONTROL_BODY_MAX
        && HEARTBEAT_LEN <= CONTROL_BODY_MAX
        && WATCH_LEN <= CONTROL_BODY_MAX
        && HAVE_LEN <= CONTROL_BODY_MAX
        && PEERS_LEN <= CONTROL_BODY_MAX
        && RECEIPTS_FIXED_LEN + RECEIPTS_MAX * RECEIPT_LEN <= CONTROL_BODY_MAX
        && HANDSHAKE_BODY_MAX <= CONTROL_BODY_MAX
);
const _: () = assert!(
    HELLO_FIXED_LEN + NAME_MAX <= HANDSHAKE_BODY_MAX
        && WELCOME_FIXED_LEN + NAME_MAX <= HANDSHAKE_BODY_MAX
        && MAC_LEN <= HANDSHAKE_BODY_MAX
);

/// The type byte of a frame header.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Connector's opening: versions, node, nonce, name.
    Hello = 1,
    /// Acceptor's answer: chosen version, node, nonce, MAC, name.
    Welcome = 2,
    /// Connector's MAC over the acceptor's nonce.
    Auth = 3,
    /// Either side refuses the link, with a code and a reason.
    Refuse = 4,
    /// A run of log pages.
    Pages = 5,
    /// Receipt and durability watermarks for an origin.
    Ack = 6,
    /// "Send me pages from this LSN on."
    Resume = 7,
    /// A chunk of a database snapshot.
    Snapshot = 8,
    /// Keeps an idle link alive.
    Heartbeat = 9,
    /// A request on the command channel.
    Command = 10,
    /// The answer to a COMMAND.
    Reply = 11,
    /// Receipt watermarks of the sender's subtree, on their way to the origin.
    Receipts = 12,
    /// "Tell me what you hold of this database, but send no pages."
    Watch = 13,
    /// "I hold every page of this origin below this LSN."
    Have = 14,
    /// Membership gossip: nodes the sender knows, where they listen, what they serve.
    Peers = 15,
}

impl FrameType {
    /// The type for a header's type byte, if it is one.
    pub fn from_u8(byte: u8) -> Option<Self> {
        use FrameType::*;
        Some(match byte {
            1 => Hello,
            2 => Welcome,
            3 => Auth,
            4 => Refuse,
            5 => Pages,
            6 => Ack,
            7 => Resume,
            8 => Snapshot,
            9 => Heartbeat,
            10 => Command,
            11 => Reply,
            12 => Receipts,
            13 => Watch,
            14 => Have,
            15 => Peers,
            _ => return None,
        })
    }

    /// The upper-case name, for logs and errors.
    pub fn name(self) -> &'static str {
        use FrameType::*;
        match self {
            Hello => "HELLO",
            Welcome => "WELCOME",
            Auth => "AUTH",
            Refuse => "REFUSE",
            Pages => "PAGES",
            Ack => "ACK",
            Resume => "RESUME",
            Snapshot => "SNAPSHOT",
            Heartbeat => "HEARTBEAT",
            Command => "COMMAND",
            Reply => "REPLY",
            Receipts => "RECEIPTS",
            Watch => "WATCH",
            Have => "HAVE",
            Peers => "PEERS",
        }
    }

    /// The longest body a frame of this type may have.
    pub fn body_max(self) -> usize {
        use FrameType::*;
        match self {
            Hello => HELLO_FIXED_LEN + NAME_MAX,
            Welcome => WELCOME_FIXED_LEN + NAME_MAX,
            Auth => MAC_LEN,
            Refuse => REFUSE_FIXED_LEN + REASON_MAX,
            Ack => ACK_LEN,
            Resume => RESUME_LEN,
            Heartbeat => HEARTBEAT_LEN,
            Receipts => RECEIPTS_FIXED_LEN + RECEIPTS_MAX * RECEIPT_LEN,
            Watch => WATCH_LEN,
            Have => HAVE_LEN,
            Peers => PEERS_LEN,
            Pages | Snapshot | Command | Reply => FRAME_BODY_MAX,
        }
    }

    /// Whether frames of this type belong to the handshake, the only frames a peer may send
    /// before it has authenticated.
    pub fn is_handshake(self) -> bool {
        use FrameType::*;
        matches!(self, Hello | Welcome | Auth | Refuse)
    }

    /// The header flag bits this type defines; every other bit must be 0.
    fn flags_defined(self) -> u8 {
        match self {
            FrameType::Snapshot => FLAG_SNAPSHOT_LAST,
            FrameType::Peers => FLAG_PEERS_NAMED,
            _ => 0,
        }
    }
}

/// Why a peer refuses a link (the `code` of a REFUSE frame).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefuseCode {
    /// The peer broke the protocol (an unexpected or malformed frame).
    Protocol = 1,
    /// No common protocol version.
    Version = 2,
    /// The handshake MAC is wrong: different cluster secrets.
    Auth = 3,
    /// The peer has our own node uuid.
    DuplicateNode = 4,
    /// The node is shutting down.
    ShuttingDown = 5,
    /// The frame names a database this node does not hold.
    UnknownDatabase = 6,
    /// The frame carries an epoch older than the node's: the sender has been fenced.
    Fenced = 7,
    /// The sender is on this node's way to the origin: following this node would close a loop
    /// (sent only to a peer of protocol version 4 or later: an older one refuses the code).
    RoutingLoop = 8,
}

impl RefuseCode {
    /// The code for a wire value, if it is one.
    pub fn from_u16(code: u16) -> Option<Self> {
        use RefuseCode::*;
        Some(match code {
            1 => Protocol,
            2 => Version,
            3 => Auth,
            4 => DuplicateNode,
            5 => ShuttingDown,
            6 => UnknownDatabase,
            7 => Fenced,
            8 => RoutingLoop,
            _ => return None,
        })
    }
}

/// HELLO: the connector's opening.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Oldest protocol version the connector speaks.
    pub protocol_min: u16,
    /// Newest protocol version the connector speaks.
    pub protocol_max: u16,
    /// The connector's node uuid.
    pub node: Uuid,
    /// The connector's challenge.
    pub nonce: [u8; 32],
    /// The connector's node name, at most [`NAME_MAX`] bytes.
    pub name: String,
}

/// WELCOME: the acceptor's answer to HELLO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The protocol version the link will speak.
    pub protocol: u16,
    /// The acceptor's node uuid.
    pub node: Uuid,
    /// The acceptor's challenge.
    pub nonce: [u8; 32],
    /// HMAC proving the acceptor holds the cluster secret (see `handshake`).
    pub mac: [u8; 32],
    /// The acceptor's node name, at most [`NAME_MAX`] bytes.
    pub name: String,
}

/// AUTH: the connector's answer to WELCOME.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    /// HMAC proving the connector holds the cluster secret (see `handshake`).
    pub mac: [u8; 32],
}

/// REFUSE: the sender closes the link, saying why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refuse {
    /// Why, as a code.
    pub code: RefuseCode,
    /// Why, for humans: at most [`REASON_MAX`] bytes.
    pub reason: String,
}

impl Refuse {
    /// A refusal whose reason is cut to [`REASON_MAX`] bytes (on a char boundary) if longer.
    pub fn new(code: RefuseCode, reason: &str) -> Self {
        Refuse {
            code,
            reason: truncate_utf8(reason, REASON_MAX).to_owned(),
        }
    }
}

/// PAGES: a run of whole log pages of one origin's log of one database.
#[derive(Clone, PartialEq, Eq)]
pub struct Pages<'a> {
    /// The database the pages belong to.
    pub database: Uuid,
    /// The node whose log this is.
    pub origin: Uuid,
    /// The origin's failover epoch.
    pub epoch: u64,
    /// Nodes this run has already passed through (at most [`VISITED_MAX`]).
    pub visited: Vec<Uuid>,
    /// LSN of the first page.
    pub first_lsn: u64,
    /// The pages, `page_count × PAGE_SIZE` bytes; each to be checked with logpage's `validate`.
    pub pages: &'a [u8],
}

impl Pages<'_> {
    /// The number of pages carried.
    pub fn page_count(&self) -> usize {
        self.pages.len() / PAGE_SIZE
    }

    /// Everything but the pages, for [`encode_pages`].
    pub fn header(&self) -> PagesHeader<'_> {
        PagesHeader {
            database: self.database,
            origin: self.origin,
            epoch: self.epoch,
            visited: &self.visited,
            first_lsn: self.first_lsn,
        }
    }
}

impl fmt::Debug for Pages<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pages")
            .field("database", &self.database)
            .field("origin", &self.origin)
            .field("epoch", &self.epoch)
            .field("visited", &self.visited)
            .field("first_lsn", &self.first_lsn)
            .field("page_count", &self.page_count())
            .finish()
    }
}

/// The fields of a PAGES frame other than its pages: what [`encode_pages`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagesHeader<'a> {
    /// The database the pages belong to.
    pub database: Uuid,
    /// The node whose log this is.
    pub origin: Uuid,
    /// The origin's failover epoch.
    pub epoch: u64,
    /// Nodes this run has already passed through (at most [`VISITED_MAX`]).
    pub visited: &'a [Uuid],
    /// LSN of the first page.
    pub first_lsn: u64,
}

/// ACK: how far the sender has received and durably applied an origin's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The database.
    pub database: Uuid,
    /// The origin whose log is acknowledged.
    pub origin: Uuid,
    /// Every page below this LSN has been received.
    pub received_lsn: u64,
    /// Every page below this LSN has been applied durably; never above `received_lsn`.
    pub durable_lsn: u64,
}

/// RESUME: asks for an origin's pages from an LSN on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The database.
    pub database: Uuid,
    /// The origin whose log is wanted.
    pub origin: Uuid,
    /// The highest epoch the sender has seen.
    pub epoch: u64,
    /// Send pages from this LSN on.
    pub from_lsn: u64,
}

/// WATCH: the first frame of a *lazy* link, instead of RESUME: the sender follows the database
/// from another holder and wants to hear, in HAVE frames, how far this one has got, so that it
/// can move here if its own upstream stalls (a GRAFT is a RESUME on a new link; a PRUNE, closing
/// the old one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    /// The database.
    pub database: Uuid,
    /// The origin whose log the watcher follows (nil: whatever the holder follows).
    pub origin: Uuid,
}

/// HAVE: the sender holds every page of `origin`'s log below `lsn` (on a lazy link, and as often
/// as the holder's heartbeat, when it changed or to keep the link alive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Have {
    /// The database.
    pub database: Uuid,
    /// The origin whose pages are held.
    pub origin: Uuid,
    /// Every page below this is held.
    pub lsn: u64,
    /// The sender's way to the origin: the node it follows, the node that one follows, and so
    /// on (at most [`PATH_MAX`], nearest first); empty at the origin, from a node that follows
    /// nobody at the moment, and from a version 3 node. A watcher that finds itself on it knows
    /// that following the sender would close a loop.
    pub path: Vec<Uuid>,
}

/// One node as PEERS describes it: the membership gossip's unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    /// The node.
    pub node: Uuid,
    /// The node's own counter, raised at each of its gossip rounds: a higher one is newer news,
    /// and one that stops rising means the node is gone.
    pub heartbeat: u64,
    /// How long ago, in milliseconds, the sender saw that heartbeat rise (0 for its own): news
    /// relayed never looks fresher than it is, so a node that left cannot be brought back by
    /// nodes repeating its last heartbeat.
    pub age_ms: u32,
    /// Where it listens (an unspecified IP means: the address this link comes from).
    pub addr: std::net::SocketAddr,
    /// Its name (at most [`NAME_MAX`] bytes), as in its HELLO; empty when unknown (heard from a
    /// node of protocol version 4, or in a PEERS frame without names).
    pub name: String,
    /// Databases it serves (at most [`PEER_DATABASES_MAX`]).
    pub databases: Vec<Uuid>,
}

/// PEERS: nodes the sender knows (its own entry first), at most [`PEERS_MAX`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerList {
    /// The entries, 1 to [`PEERS_MAX`].
    pub entries: Vec<PeerEntry>,
    /// Whether the entries carry names (header flag [`FLAG_PEERS_NAMED`]; protocol version 5).
    /// Without it the names are not sent, and decode as empty.
    pub named: bool,
}

impl PeerList {
    /// The same entries for a peer of protocol version `version`: names dropped below
    /// [`NAMES_SINCE_VERSION`].
    pub fn for_version(&self, version: u16) -> PeerList {
        if version >= NAMES_SINCE_VERSION {
            return self.clone();
        }
        PeerList {
            entries: (self.entries.iter())
                .map(|entry| PeerEntry {
                    name: String::new(),
                    ..entry.clone()
                })
                .collect(),
            named: false,
        }
    }
}

/// SNAPSHOT: one chunk of a database snapshot stream.
#[derive(Clone, PartialEq, Eq)]
pub struct SnapshotChunk<'a> {
    /// The database.
    pub database: Uuid,
    /// The origin whose log the snapshot is consistent with.
    pub origin: Uuid,
    /// The snapshot holds every page below this LSN.
    pub snapshot_lsn: u64,
    /// Byte offset of this chunk in the snapshot stream.
    pub offset: u64,
    /// Whether this is the last chunk (header flag [`FLAG_SNAPSHOT_LAST`]).
    pub last: bool,
    /// The chunk's bytes.
    pub data: &'a [u8],
}

impl fmt::Debug for SnapshotChunk<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotChunk")
            .field("database", &self.database)
            .field("origin", &self.origin)
            .field("snapshot_lsn", &self.snapshot_lsn)
            .field("offset", &self.offset)
            .field("last", &self.last)
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// HEARTBEAT: keeps an idle link alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's clock in microseconds; opaque to the receiver.
    pub sent_micros: u64,
}

/// RECEIPTS: for one origin's log, how far each node of the sender's subtree has received it.
///
/// A node reports, to the peer it receives an origin's pages from, what the peers it feeds
/// reported to it (their ACKs and their own RECEIPTS), so the origin counts `Replicated(n)`
/// over distinct nodes anywhere downstream (`route::Receipts` keeps the book).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptReport {
    /// The database.
    pub database: Uuid,
    /// The origin whose log the watermarks count.
    pub origin: Uuid,
    /// `(node, received_lsn)`: the node holds every page below `received_lsn`. 1 to
    /// [`RECEIPTS_MAX`] entries, node uuids strictly ascending (each node once).
    pub entries: Vec<(Uuid, u64)>,
}

impl ReceiptReport {
    /// The reports carrying `entries` (sorted by node, each node once), at most
    /// [`RECEIPTS_MAX`] entries each.
    pub fn split(database: Uuid, origin: Uuid, entries: &[(Uuid, u64)]) -> Vec<Self> {
        entries
            .chunks(RECEIPTS_MAX)
            .map(|chunk| ReceiptReport {
                database,
                origin,
                entries: chunk.to_vec(),
            })
            .collect()
    }
}

/// COMMAND or REPLY: a request or answer on the command channel.
#[derive(Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// Pairs a REPLY with its COMMAND.
    pub request_id: u64,
    /// Opaque bytes.
    pub payload: &'a [u8],
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("request_id", &self.request_id)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// One frame, borrowing its bulk bytes from the buffer it was decoded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Auth`].
    Auth(Auth),
    /// See [`Refuse`].
    Refuse(Refuse),
    /// See [`Pages`].
    Pages(Pages<'a>),
    /// See [`Ack`].
    Ack(Ack),
    /// See [`Resume`].
    Resume(Resume),
    /// See [`SnapshotChunk`].
    Snapshot(SnapshotChunk<'a>),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// A request; see [`Message`].
    Command(Message<'a>),
    /// An answer; see [`Message`].
    Reply(Message<'a>),
    /// See [`ReceiptReport`].
    Receipts(ReceiptReport),
    /// See [`Watch`].
    Watch(Watch),
    /// See [`Have`].
    Have(Have),
    /// See [`PeerList`].
    Peers(PeerList),
}

impl Frame<'_> {
    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Welcome(_) => FrameType::Welcome,
            Frame::Auth(_) => FrameType::Auth,
            Frame::Refuse(_) => FrameType::Refuse,
            Frame::Pages(_) => FrameType::Pages,
            Frame::Ack(_) => FrameType::Ack,
            Frame::Resume(_) => FrameType::Resume,
            Frame::Snapshot(_) => FrameType::Snapshot,
            Frame::Heartbeat(_) => FrameType::Heartbeat,
            Frame::Command(_) => FrameType::Command,
            Frame::Reply(_) => FrameType::Reply,
            Frame::Receipts(_) => FrameType::Receipts,
            Frame::Watch(_) => FrameType::Watch,
            Frame::Have(_) => FrameType::Have,
            Frame::Peers(_) => FrameType::Peers,
        }
    }

    /// The type's upper-case name, for logs.
    pub fn kind(&self) -> &'static str {
        self.frame_type().name()
    }
}

/// What [`decode`] found at the start of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame, and the number of bytes it took.
    Frame {
        /// The frame.
        frame: Frame<'a>,
        /// Bytes consumed from the start of the buffer.
        len: usize,
    },
    /// Not a whole frame yet.
    Incomplete {
        /// Total bytes this frame needs: header plus body once the header is in, else
        /// [`FRAME_HEADER_LEN`].
        needed: usize,
    },
}

/// Which frames a link's reader lets in, judged by the header alone so that a refused body is
/// never buffered (see [`check_header`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// Before the peer has authenticated: handshake frames only, so at most
    /// [`HANDSHAKE_BODY_MAX`] bytes of body.
    Handshake,
    /// A link that carries no bulk data towards this node (a source's link from a replica:
    /// RESUME, ACK, HEARTBEAT, REFUSE): any type, at most [`CONTROL_BODY_MAX`] bytes of body.
    Control,
    /// A link that carries page runs and snapshot chunks towards this node: each type's own
    /// limit, up to [`FRAME_BODY_MAX`].
    Bulk,
}

/// Checks the header at the start of `buf` (at least [`FRAME_HEADER_LEN`] bytes) as [`decode`]
/// does, and against what `accept` lets in.
pub fn check_header(buf: &[u8], accept: Accept) -> Result<()> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Err(Error::MalformedFrame {
            frame: "header",
            reason: "shorter than a frame header",
        });
    };
    decode(header)?;
    let [l0, l1, l2, l3, type_byte, ..] = *header else {
        unreachable!("a header has FRAME_HEADER_LEN bytes")
    };
    let body_len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    // `decode` accepted the header, so the type is known.
    let Some(frame_type) = FrameType::from_u8(type_byte) else {
        return Err(Error::UnknownFrameType {
            frame_type: type_byte,
        });
    };
    match accept {
        Accept::Handshake if !frame_type.is_handshake() => Err(Error::UnexpectedFrame {
            state: "handshaking (the peer is not authenticated)",
            frame: frame_type.name(),
        }),
        Accept::Control if body_len > CONTROL_BODY_MAX => Err(Error::FrameTooLarge {
            frame_type: type_byte,
            len: body_len,
            max: CONTROL_BODY_MAX,
        }),
        _ => Ok(()),
    }
}

/// Decodes the frame at the start of `buf`, which may hold several frames or part of one.
///
/// The header is checked (type, announced length, reserved bits) as soon as it is in, so an
/// oversize or unknown frame is refused before its body is buffered. Then the crc, then the
/// flags and the body. Any error means the stream is unusable: close the link.
pub fn decode(buf: &[u8]) -> Result<Decoded<'_>> {
    let Some((header, rest)) = buf.split_first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(Decoded::Incomplete {
            needed: FRAME_HEADER_LEN,
        });
    };
    let [l0, l1, l2, l3, type_byte, flags, r0, r1, c0, c1, c2, c3] = *header;
    let body_len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let frame_type = FrameType::from_u8(type_byte).ok_or(Error::UnknownFrameType {
        frame_type: type_byte,
    })?;
    if body_len > frame_type.body_max() {
        return Err(Error::FrameTooLarge {
            frame_type: type_byte,
            len: body_len,
            max: frame_type.body_max(),
        });
    }
    if u16::from_le_bytes([r0, r1]) != 0 {
        return Err(malformed(frame_type, "reserved header bits set"));
    }
    let Some(body) = rest.get(..body_len) else {
        return Ok(Decoded::Incomplete {
            needed: FRAME_HEADER_LEN + body_len,
        });
    };
    let expected = u32::from_le_bytes([c0, c1, c2, c3]);
    let actual = frame_crc(&[l0, l1, l2, l3, type_byte, flags, r0, r1], &[body]);
    if actual != expected {
        return Err(Error::FrameCrc {
            frame_type: type_byte,
            expected,
            actual,
        });
    }
    if flags & !frame_type.flags_defined() != 0 {
        return Err(malformed(frame_type, "undefined flag bits set"));
    }
    let frame = decode_body(frame_type, flags, body)?;
    Ok(Decoded::Frame {
        frame,
        len: FRAME_HEADER_LEN + body_len,
    })
}

fn decode_body(frame_type: FrameType, flags: u8, body: &[u8]) -> Result<Frame<'_>> {
    let mut r = Reader {
        rest: body,
        frame_type,
    };
    let frame = match frame_type {
        FrameType::Hello => Frame::Hello(Hello {
            protocol_min: r.u16()?,
            protocol_max: r.u16()?,
            node: r.uuid()?,
            nonce: r.array()?,
            name: r.name()?,
        }),
        FrameType::Welcome => Frame::Welcome(Welcome {
            protocol: r.u16()?,
            node: r.uuid()?,
            nonce: r.array()?,
            mac: r.array()?,
            name: r.name()?,
        }),
        FrameType::Auth => Frame::Auth(Auth { mac: r.array()? }),
        FrameType::Refuse => {
            let code = RefuseCode::from_u16(r.u16()?);
            let code = code.ok_or(malformed(frame_type, "unknown refuse code"))?;
            let len = usize::from(r.u16()?);
            let reason = r.string(len, REASON_MAX, "reason longer than 1024 bytes")?;
            Frame::Refuse(Refuse { code, reason })
        }
        FrameType::Pages => Frame::Pages(decode_pages(&mut r)?),
        FrameType::Ack => {
            let ack = Ack {
                database: r.uuid()?,
                origin: r.uuid()?,
                received_lsn: r.u64()?,
                durable_lsn: r.u64()?,
            };
            if ack.durable_lsn > ack.received_lsn {
                return Err(malformed(frame_type, "durable_lsn above received_lsn"));
            }
            Frame::Ack(ack)
        }
        FrameType::Resume => Frame::Resume(Resume {
            database: r.uuid()?,
            origin: r.uuid()?,
            epoch: r.u64()?,
            from_lsn: r.u64()?,
        }),
        FrameType::Snapshot => Frame::Snapshot(SnapshotChunk {
            database: r.uuid()?,
            origin: r.uuid()?,
            snapshot_lsn: r.u64()?,
            offset: r.u64()?,
            last: flags & FLAG_SNAPSHOT_LAST != 0,
            data: r.rest(),
        }),
        FrameType::Heartbeat => Frame::Heartbeat(Heartbeat {
            sent_micros: r.u64()?,
        }),
        FrameType::Command => Frame::Command(r.message()?),
        FrameType::Reply => Frame::Reply(r.message()?),
        FrameType::Receipts => Frame::Receipts(decode_receipts(&mut r)?),
        FrameType::Watch => Frame::Watch(Watch {
            database: r.uuid()?,
            origin: r.uuid()?,
        }),
        FrameType::Have => Frame::Have(Have {
            database: r.uuid()?,
            origin: r.uuid()?,
            lsn: r.u64()?,
            path: decode_path(&mut r)?,
        }),
        FrameType::Peers => Frame::Peers(decode_peers(&mut r, flags & FLAG_PEERS_NAMED != 0)?),
    };
    r.finish()?;
    Ok(frame)
}

fn decode_receipts(r: &mut Reader<'_>) -> Result<ReceiptReport> {
    let database = r.uuid()?;
    let origin = r.uuid()?;
    let count = usize::from(r.u16()?);
    if count == 0 || count > RECEIPTS_MAX {
        return Err(malformed(FrameType::Receipts, "count out of 1..=128"));
    }
    let mut entries: Vec<(Uuid, u64)> = Vec::with_capacity(count);
    for _ in 0..count {
        let entry = (r.uuid()?, r.u64()?);
        if entries.last().is_some_and(|last| last.0 >= entry.0) {
            return Err(malformed(
                FrameType::Receipts,
                "node uuids not strictly ascending",
            ));
        }
        entries.push(entry);
    }
    Ok(ReceiptReport {
        database,
        origin,
        entries,
    })
}

fn decode_peers(r: &mut Reader<'_>, named: bool) -> Result<PeerList> {
    let count = usize::from(r.u8()?);
    if count == 0 || count > PEERS_MAX {
        return Err(malformed(FrameType::Peers, "peer count out of 1..=16"));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let node = r.uuid()?;
        let heartbeat = r.u64()?;
        let age_ms = r.u32()?;
        let ip: std::net::IpAddr = match r.u8()? {
            4 => std::net::Ipv4Addr::from(r.array::<4>()?).into(),
            6 => std::net::Ipv6Addr::from(r.array::<16>()?).into(),
            _ => return Err(malformed(FrameType::Peers, "address family not 4 or 6")),
        };
        let port = r.u16()?;
        let name = if named { r.name()? } else { String::new() };
        let db_count = usize::from(r.u8()?);
        if db_count > PEER_DATABASES_MAX {
            return Err(malformed(FrameType::Peers, "more than 8 databases"));
        }
        let databases = (0..db_count).map(|_| r.uuid()).collect::<Result<_>>()?;
        entries.push(PeerEntry {
            node,
            heartbeat,
            age_ms,
            addr: std::net::SocketAddr::new(ip, port),
            name,
            databases,
        });
    }
    Ok(PeerList { entries, named })
}

/// HAVE's optional path: nothing (version 3's layout: no path), or a count of 1 to
/// [`PATH_MAX`] and the uuids (a count of 0 would encode an empty path a second way).
fn decode_path(r: &mut Reader<'_>) -> Result<Vec<Uuid>> {
    if r.rest.is_empty() {
        return Ok(Vec::new());
    }
    let count = usize::from(r.u8()?);
    if count == 0 || count > PATH_MAX {
        return Err(malformed(FrameType::Have, "path count out of 1..=32"));
    }
    (0..count).map(|_| r.uuid()).collect()
}

fn decode_pages<'a>(r: &mut Reader<'a>) -> Result<Pages<'a>> {
    let database = r.uuid()?;
    let origin = r.uuid()?;
    let epoch = r.u64()?;
    let visited_count = usize::from(r.u8()?);
    if visited_count > VISITED_MAX {
        return Err(malformed(FrameType::Pages, "visited list longer than 32"));
    }
    let visited = (0..visited_count)
        .map(|_| r.uuid())
        .collect::<Result<_>>()?;
    let first_lsn = r.u64()?;
    let page_count = r.u32()? as usize;
    if page_count == 0 || page_count > PAGES_COUNT_MAX {
        return Err(malformed(FrameType::Pages, "page_count out of 1..=4095"));
    }
    let pages = r.rest();
    if pages.len() != page_count * PAGE_SIZE {
        return Err(malformed(
            FrameType::Pages,
            "page bytes differ from page_count",
        ));
    }
    Ok(Pages {
        database,
        origin,
        epoch,
        visited,
        first_lsn,
        pages,
    })
}

/// Appends one frame to `out`.
///
/// # Panics
///
/// If the frame breaks a limit [`decode`] enforces (a name over [`NAME_MAX`] bytes, a reason over
/// [`REASON_MAX`], an ACK whose `durable_lsn` is above `received_lsn`, a RECEIPTS frame with no
/// node, more than [`RECEIPTS_MAX`] or unsorted ones, a body over the type's
/// maximum, and the PAGES limits of [`encode_pages`]): such a frame could never be decoded, so
/// sending it is a bug of the caller. Every frame [`decode`] returns encodes.
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) {
    let frame_type = frame.frame_type();
    let flags = match frame {
        Frame::Snapshot(chunk) if chunk.last => FLAG_SNAPSHOT_LAST,
        Frame::Peers(list) if list.named => FLAG_PEERS_NAMED,
        _ => 0,
    };
    let start = begin(frame_type, flags, out);
    match frame {
        Frame::Hello(hello) => {
            put_u16(out, hello.protocol_min);
            put_u16(out, hello.protocol_max);
            out.extend_from_slice(hello.node.as_bytes());
            out.extend_from_slice(&hello.nonce);
            put_name(out, &hello.name);
        }
        Frame::Welcome(welcome) => {
            put_u16(out, welcome.protocol);
            out.extend_from_slice(welcome.node.as_bytes());
            out.extend_from_slice(&welcome.nonce);
            out.extend_from_slice(&welcome.mac);
            put_name(out, &welcome.name);
        }
        Frame::Auth(auth) => out.extend_from_slice(&auth.mac),
        Frame::Refuse(refuse) => {
            assert!(refuse.reason.len() <= REASON_MAX, "REFUSE reason too long");
            put_u16(out, refuse.code as u16);
            put_u16(out, refuse.reason.len() as u16);
            out.extend_from_slice(refuse.reason.as_bytes());
        }
        Frame::Pages(pages) => put_pages_body(&pages.header(), &[pages.pages], out),
        Frame::Ack(ack) => {
            assert!(
                ack.durable_lsn <= ack.received_lsn,
                "ACK durable_lsn above received_lsn"
            );
            put_db_origin(out, ack.database, ack.origin);
            put_u64(out, ack.received_lsn);
            put_u64(out, ack.durable_lsn);
        }
        Frame::Resume(resume) => {
            put_db_origin(out, resume.database, resume.origin);
            put_u64(out, resume.epoch);
            put_u64(out, resume.from_lsn);
        }
        Frame::Snapshot(chunk) => {
            put_db_origin(out, chunk.database, chunk.origin);
            put_u64(out, chunk.snapshot_lsn);
            put_u64(out, chunk.offset);
            out.extend_from_slice(chunk.data);
        }
        Frame::Heartbeat(heartbeat) => put_u64(out, heartbeat.sent_micros),
        Frame::Watch(watch) => put_db_origin(out, watch.database, watch.origin),
        Frame::Have(have) => {
            put_db_origin(out, have.database, have.origin);
            put_u64(out, have.lsn);
            assert!(
                have.path.len() <= PATH_MAX,
                "a HAVE path names at most {PATH_MAX} nodes"
            );
            if !have.path.is_empty() {
                out.push(have.path.len() as u8);
                for node in &have.path {
                    out.extend_from_slice(node.as_bytes());
                }
            }
        }
        Frame::Peers(list) => {
            assert!(
                (1..=PEERS_MAX).contains(&list.entries.len()),
                "PEERS carries 1 to {PEERS_MAX} entries"
            );
            out.push(list.entries.len() as u8);
            for entry in &list.entries {
                assert!(
                    entry.databases.len() <= PEER_DATABASES_MAX,
                    "a PEERS entry names at most {PEER_DATABASES_MAX} databases"
                );
                out.extend_from_slice(entry.node.as_bytes());
                put_u64(out, entry.heartbeat);
                put_u32(out, entry.age_ms);
                match entry.addr.ip() {
                    std::net::IpAddr::V4(ip) => {
                        out.push(4);
                        out.extend_from_slice(&ip.octets());
                    }
                    std::net::IpAddr::V6(ip) => {
                        out.push(6);
                        out.extend_from_slice(&ip.octets());
                    }
                }
                put_u16(out, entry.addr.port());
                if list.named {
                    assert!(
                        entry.name.len() <= NAME_MAX,
                        "a node name is at most {NAME_MAX} bytes"
                    );
                    out.push(entry.name.len() as u8);
                    out.extend_from_slice(entry.name.as_bytes());
                }
                out.push(entry.databases.len() as u8);
                for database in &entry.databases {
                    out.extend_from_slice(database.as_bytes());
                }
            }
        }
        Frame::Command(message) | Frame::Reply(message) => {
            put_u64(out, message.request_id);
            out.extend_from_slice(message.payload);
        }
        Frame::Receipts(report) => {
            let entries = &report.entries;
            assert!(
                (1..=RECEIPTS_MAX).contains(&entries.len()),
                "RECEIPTS must name 1..={RECEIPTS_MAX} nodes"
            );
            assert!(
                entries.windows(2).all(|pair| pair[0].0 < pair[1].0),
                "RECEIPTS node uuids must be strictly ascending"
            );
            put_db_origin(out, report.database, report.origin);
            put_u16(out, entries.len() as u16);
            for (node, lsn) in entries {
                out.extend_from_slice(node.as_bytes());
                put_u64(out, *lsn);
            }
        }
    }
    seal(frame_type, start, out);
}

/// Appends one PAGES frame whose pages come as several slices (a ring run that wraps), copying
/// each slice once and computing the crc in one pass.
///
/// # Panics
///
/// If the pages are not 1 to [`PAGES_COUNT_MAX`] whole pages or the visited list is longer than
/// [`VISITED_MAX`]. Debug builds also check that each slice holds whole pages.
pub fn encode_pages(header: &PagesHeader<'_>, pages: &[&[u8]], out: &mut Vec<u8>) {
    let start = begin(FrameType::Pages, 0, out);
    put_pages_body(header, pages, out);
    seal(FrameType::Pages, start, out);
}

fn put_pages_body(header: &PagesHeader<'_>, pages: &[&[u8]], out: &mut Vec<u8>) {
    debug_assert!(pages.iter().all(|run| run.len().is_multiple_of(PAGE_SIZE)));
    let pages_len: usize = pages.iter().map(|run| run.len()).sum();
    let page_count = pages_len / PAGE_SIZE;
    assert!(
        pages_len.is_multiple_of(PAGE_SIZE) && (1..=PAGES_COUNT_MAX).contains(&page_count),
        "PAGES must carry 1..={PAGES_COUNT_MAX} whole pages, not {pages_len} bytes"
    );
    assert!(
        header.visited.len() <= VISITED_MAX,
        "PAGES visited list too long"
    );
    out.reserve(PAGES_FIXED_LEN + header.visited.len() * 16 + pages_len);
    put_db_origin(out, header.database, header.origin);
    put_u64(out, header.epoch);
    out.push(header.visited.len() as u8);
    for node in header.visited {
        out.extend_from_slice(node.as_bytes());
    }
    put_u64(out, header.first_lsn);
    put_u32(out, page_count as u32);
    for run in pages {
        out.extend_from_slice(run);
    }
}

/// The crc32c of a frame: header bytes 0..8, then the body (given in pieces).
fn frame_crc(header: &[u8; 8], body: &[&[u8]]) -> u32 {
    body.iter().fold(crc32c::crc32c(header), |crc, part| {
        crc32c::crc32c_append(crc, part)
    })
}

/// Appends a header with length and crc left zero; returns where the frame starts.
fn begin(frame_type: FrameType, flags: u8, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    let mut header = [0; FRAME_HEADER_LEN];
    header[FRAME_TYPE_OFFSET] = frame_type as u8;
    header[FLAGS_OFFSET] = flags;
    out.extend_from_slice(&header);
    start
}

/// Fills in the length and crc of the frame that starts at `start` and runs to the end of `out`.
fn seal(frame_type: FrameType, start: usize, out: &mut [u8]) {
    let (header, body) = out[start..].split_at_mut(FRAME_HEADER_LEN);
    assert!(
        body.len() <= frame_type.body_max(),
        "{} body too long",
        frame_type.name()
    );
    header[BODY_LEN_OFFSET..FRAME_TYPE_OFFSET].copy_from_slice(&(body.len() as u32).to_le_bytes());
    let mut covered = [0; CRC_OFFSET];
    covered.copy_from_slice(&header[..CRC_OFFSET]);
    let crc = frame_crc(&covered, &[body]);
    header[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
}

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_db_origin(out: &mut Vec<u8>, database: Uuid, origin: Uuid) {
    out.extend_from_slice(database.as_bytes());
    out.extend_from_slice(origin.as_bytes());
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    assert!(
        name.len() <= NAME_MAX,
        "node name longer than {NAME_MAX} bytes"
    );
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

/// The longest prefix of `text` of at most `max` bytes that ends on a char boundary.
pub(crate) fn truncate_utf8(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn malformed(frame_type: FrameType, reason: &'static str) -> Error {
    Error::MalformedFrame {
        frame: frame_type.name(),
        reason,
    }
}

/// Reads a body front to back; every read that runs past the end is a "body too short" error.
struct Reader<'a> {
    rest: &'a [u8],
    frame_type: FrameType,
}

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(malformed(self.frame_type, "body too short"))?;
        self.rest = tail;
        Ok(*head)
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8]> {
        let (head, tail) = self
            .rest
            .split_at_checked(len)
            .ok_or(malformed(self.frame_type, "body too short"))?;
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn uuid(&mut self) -> Result<Uuid> {
        Ok(Uuid::from_bytes(self.array()?))
    }

    /// `len` bytes of UTF-8, refused if longer than `max`.
    fn string(&mut self, len: usize, max: usize, too_long: &'static str) -> Result<String> {
        if len > max {
            return Err(malformed(self.frame_type, too_long));
        }
        let bytes = self.bytes(len)?;
        let text =
            std::str::from_utf8(bytes).map_err(|_| malformed(self.frame_type, "not UTF-8"))?;
        Ok(text.to_owned())
    }

    /// A node name: `name_len u8` then the name.
    fn name(&mut self) -> Result<String> {
        let len = usize::from(self.u8()?);
        self.string(len, NAME_MAX, "name longer than 64 bytes")
    }

    fn message(&mut self) -> Result<Message<'a>> {
        Ok(Message {
            request_id: self.u64()?,
            payload: self.rest(),
        })
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    fn finish(self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed(self.frame_type, "trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frame: &Frame<'_>) -> Vec<u8> {
        let mut out = vec![0xEE]; // encode appends: keep a foreign byte in front
        encode(frame, &mut out);
        match decode(&out[1..]).expect("decodes") {
            Decoded::Frame { frame: back, len } => {
                assert_eq!(&back, frame);
                assert_eq!(len, out.len() - 1);
            }
            other => panic!("{other:?}"),
        }
        out.split_off(1)
    }

    #[test]
    fn receipts_name_each_node_once_in_order_and_long_reports_split() {
        let entries: Vec<(Uuid, u64)> = (1..=300u128).map(|n| (Uuid::from_u128(n), 7)).collect();
        let reports = ReceiptReport::split(Uuid::from_u128(9), Uuid::from_u128(8), &entries);
        assert_eq!(
            reports.iter().map(|r| r.entries.len()).collect::<Vec<_>>(),
            [128, 128, 44]
        );
        let bytes = roundtrip(&Frame::Receipts(reports[0].clone()));
        assert!(bytes.len() - FRAME_HEADER_LEN <= CONTROL_BODY_MAX);
        // The count, then two entries swapped: refused behind a good crc.
        let body_at = FRAME_HEADER_LEN + 32;
        let reencode = |body: &[u8]| {
            let mut out = Vec::new();
            let start = begin(FrameType::Receipts, 0, &mut out);
            out.extend_from_slice(body);
            seal(FrameType::Receipts, start, &mut out);
            out
        };
        let mut body = bytes[FRAME_HEADER_LEN..].to_vec();
        body[32..34].copy_from_slice(&0u16.to_le_bytes());
        let empty = reencode(&body[..34]);
        assert!(matches!(
            decode(&empty),
            Err(Error::MalformedFrame { reason, .. }) if reason == "count out of 1..=128"
        ));
        let mut swapped = bytes[FRAME_HEADER_LEN..].to_vec();
        let (first, second) = (
            body_at - FRAME_HEADER_LEN + 2,
            body_at - FRAME_HEADER_LEN + 26,
        );
        let entry: Vec<u8> = swapped[first..first + 24].to_vec();
        swapped.copy_within(second..second + 24, first);
        swapped[second..second + 24].copy_from_slice(&entry);
        assert!(matches!(
            decode(&reencode(&swapped)),
            Err(Error::MalformedFrame { reason, .. }) if reason == "node uuids not strictly ascending"
        ));
    }

    #[test]
    fn header_layout_is_as_documented() {
        let bytes = roundtrip(&Frame::Heartbeat(Heartbeat {
            sent_micros: 0x0102_0304_0506_0708,
        }));
        assert_eq!(bytes.len(), FRAME_HEADER_LEN + 8);
        assert_eq!(&bytes[0..4], &8u32.to_le_bytes());
        assert_eq!(bytes[4], FrameType::Heartbeat as u8);
        assert_eq!(&bytes[5..8], &[0, 0, 0]);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..8]), &bytes[12..]);
        assert_eq!(&bytes[8..12], &crc.to_le_bytes());
        assert_eq!(&bytes[12..], &0x0102_0304_0506_0708u64.to_le_bytes());
    }

    #[test]
    fn snapshot_last_flag_is_in_the_header() {
        let chunk = SnapshotChunk {
            database: Uuid::from_u128(1),
            origin: Uuid::from_u128(2),
            snapshot_lsn: 3,
            offset: 4,
            last: true,
            data: b"chunk",
        };
        let bytes = roundtrip(&Frame::Snapshot(chunk));
        assert_eq!(bytes[FLAGS_OFFSET], FLAG_SNAPSHOT_LAST);
        assert_eq!(bytes.len(), FRAME_HEADER_LEN + SNAPSHOT_FIXED_LEN + 5);
    }

    #[test]
    fn wrapped_page_runs_encode_like_one_run() {
        let pages: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i * 7) as u8).collect();
        let visited = [Uuid::from_u128(9)];
        let header = PagesHeader {
            database: Uuid::from_u128(1),
            origin: Uuid::from_u128(2),
            epoch: 5,
            visited: &visited,
            first_lsn: 77,
        };
        let (mut one, mut split) = (Vec::new(), Vec::new());
        encode_pages(&header, &[&pages], &mut one);
        let (a, b) = pages.split_at(PAGE_SIZE);
        encode_pages(&header, &[a, b], &mut split);
        assert_eq!(one, split);
        let Ok(Decoded::Frame {
            frame: Frame::Pages(back),
            ..
        }) = decode(&one)
        else {
            panic!("PAGES does not decode");
        };
        assert_eq!(back.header(), header);
        assert_eq!(back.page_count(), 3);
    }

    #[test]
    fn refuse_reason_is_cut_on_a_char_boundary() {
        let long = "é".repeat(REASON_MAX); // 2 bytes each
        let refuse = Refuse::new(RefuseCode::Fenced, &long);
        assert_eq!(refuse.reason.len(), REASON_MAX);
        let odd = format!("x{long}");
        assert_eq!(
            Refuse::new(RefuseCode::Fenced, &odd).reason.len(),
            REASON_MAX - 1
        );
        roundtrip(&Frame::Refuse(refuse));
    }

    #[test]
    fn pages_count_max_fits_the_body_limit() {
        let pages = vec![0u8; PAGES_COUNT_MAX * PAGE_SIZE];
        let visited = vec![Uuid::nil(); VISITED_MAX];
        let header = PagesHeader {
            database: Uuid::nil(),
            origin: Uuid::nil(),
            epoch: 0,
            visited: &visited,
            first_lsn: 0,
        };
        let mut out = Vec::new();
        encode_pages(&header, &[&pages], &mut out);
        assert!(out.len() - FRAME_HEADER_LEN <= FRAME_BODY_MAX);
        assert!(matches!(decode(&out), Ok(Decoded::Frame { .. })));
    }
}
