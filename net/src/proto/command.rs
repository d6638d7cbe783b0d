//! The command channel's payloads, I/O-free: what travels inside COMMAND (10) and REPLY (11)
//! frames, whose `request_id` pairs them.
//!
//! ```text
//! request   version u8 (1) | kind u8 | deadline_ms u32 | body
//!   1 STATUS    (no body)
//!   2 LOOKUP    database uuid
//!   3 PROMOTE   database uuid                      (reserved for failover)
//!   4 DIGEST    database uuid | split_parts u8 (≤ 16) | count u8 (1..=16) | range × count
//!   5 ENTRIES   database uuid | range
//!   range       lo_len u16 | lo [≤ 1024] | hi_len u16 | hi [≤ 1024]   (hi empty: to the end;
//!               else lo < hi)
//!   6 REPLICATE database uuid | name_len u8 | name [1..=64]
//!   7 UNREPLICATE database uuid
//!   8 FORWARD   node uuid | inner kind u8 | inner body   (the inner kind is not 8)
//!   9 MEMBERS   (no body)
//!  10 RESOLVE   name_len u8 | name [1..=64]               (a database's local name)
//! reply     version u8 (1) | kind u8 | body
//!   0 ERROR     reason_len u16 | reason [≤ 1024]
//!   1 STATUS    node uuid | name_len u8 | name [≤ 64] | members u32 |
//!               count u16 (≤ 256) | (database uuid | origin uuid | relay u8 |
//!               committed_lsn u64 | links u32 | epoch u64 | applied_lsn u64 |
//!               durable_lsn u64 | ring_slots u64 | ring_used u64 |
//!               upstream (family u8 (0: none|4|6) | ip | port u16) |
//!               error_len u16 | last_error [≤ 1024] |
//!               replicas u8 (≤ 16) | (node uuid | name_len u8 | name [≤ 64] |
//!               state u8 (0 down|1 async|2 sync) | received_lsn u64 | lag_pages u64 |
//!               lag_bytes u64 | lag_ms u64) × replicas) × count
//!   2 LOOKUP    count u16 (≤ 1024) | (node uuid | family u8 (4|6) | ip | port u16) × count
//!   3 DIGEST    count u8 (≤ 16) | (entries u64 | sha256 [32] | splits u8 (≤ 15) |
//!               (len u16 | key [1..=1024]) × splits, strictly increasing) × count
//!   4 ENTRIES   more u8 (0|1) | count u16 (≤ 1024) | (table_len u8 | table | key_len u16 |
//!               key | seq u64 | value_len u32 | value) × count
//!   5 DONE      message_len u16 | message [≤ 1024]
//!   6 MEMBERS   count u16 (≤ 1024) | (node uuid | name_len u8 | name [≤ 64] |
//!               family u8 (4|6) | ip | port u16 | db_count u8 (≤ 8) | database uuid ×
//!               db_count) × count                        (the answering node first)
//!   7 RESOLVED  database uuid
//! ```
//!
//! DIGEST and ENTRIES serve DIFF (`crate::diff`): keys there are *composite keys*, one key
//! space across every table of a database (`crate::diff::composite_key`). A request must fit in
//! [`COMMAND_PAYLOAD_MAX`] bytes, since a node reads an authenticated peer's frames with the
//! control limit (`Accept::Control`); [`request_fits`] tells a client whether it does.
//!
//! Names. A FORWARD names its node by uuid; a client that knows a node by name asks MEMBERS
//! first (gossip carries names since protocol version 5), so `pagemesh ctl --to NAME` works
//! from any node. LOOKUP names its database by uuid; RESOLVE turns the name a node knows a
//! database by (the name it was opened or replicated under there) into its uuid.
//!
//! Departure from issue 15's list, and why: there is no REGISTER, because a node that serves a
//! database announces it in every gossip round (`route::Members`, PEERS frames), so LOOKUP finds
//! it without being told.
//!
//! Like the frames, the encoding is canonical ([`decode_request`] accepts exactly what
//! [`encode_request`] writes, and the same for replies), decoding never panics, and what it
//! allocates is bounded by the counts above. A request of an unknown version or kind decodes to
//! an error that the node answers with an ERROR reply; the link stays up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::proto::frame::{CONTROL_BODY_MAX, NAME_MAX, PEER_DATABASES_MAX, REASON_MAX};

/// The command payload version this build speaks.
pub const COMMAND_VERSION: u8 = 1;
/// The most databases a STATUS reply lists.
pub const STATUS_DATABASES_MAX: usize = 256;
/// The most holders a LOOKUP reply lists.
pub const LOOKUP_HOLDERS_MAX: usize = 1024;
/// The most nodes a MEMBERS reply lists.
pub const MEMBERS_MAX: usize = 1024;
/// The most replicas a STATUS reply lists per database.
pub const STATUS_REPLICAS_MAX: usize = 16;

/// The most ranges one DIGEST asks for.
pub const DIGEST_RANGES_MAX: usize = 16;
/// The most parts a DIGEST may ask each range to be split into (so at most 15 split keys).
pub const SPLIT_PARTS_MAX: u8 = 16;
/// The longest range bound or split key, in bytes (a composite key: 2 + a table name of at most
/// 255 bytes + an LMDB key of at most 511).
pub const RANGE_KEY_MAX: usize = 1024;
/// The most entries one ENTRIES reply carries.
pub const ENTRIES_COUNT_MAX: usize = 1024;
/// The most bytes a COMMAND payload may have: a node reads its peers' frames with the control
/// limit, less the request id.
pub const COMMAND_PAYLOAD_MAX: usize = CONTROL_BODY_MAX - 8;

/// A range of composite keys: `lo` included, `hi` excluded; an empty `hi` is the end of the key
/// space.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyRange {
    /// The first key in the range (empty: the start of the key space).
    pub lo: Vec<u8>,
    /// The first key past it (empty: none).
    pub hi: Vec<u8>,
}

impl KeyRange {
    /// The whole key space.
    pub fn all() -> Self {
        Self {
            lo: Vec::new(),
            hi: Vec::new(),
        }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.lo.as_slice() && (self.hi.is_empty() || key < self.hi.as_slice())
    }
}

/// One range's digest in a DIGEST reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeDigest {
    /// Entries in the range.
    pub entries: u64,
    /// SHA-256 over the entries in key order (`crate::diff` defines what is hashed).
    pub hash: [u8; 32],
    /// Keys that cut the range into about equal parts by this node's entries, strictly
    /// increasing, each inside the range (none if not asked for or too few entries).
    pub splits: Vec<Vec<u8>>,
}

/// One entry in an ENTRIES reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeEntry {
    /// The table (at most 255 bytes).
    pub table: String,
    /// The key in the table.
    pub key: Vec<u8>,
    /// The version stored with the value: the log position of the change that wrote it.
    pub seq: u64,
    /// The value's bytes.
    pub value: Vec<u8>,
}

/// What a command asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// The node, its databases and their positions.
    Status,
    /// Which nodes serve `database`, as far as the node knows (itself and its gossip view).
    Lookup {
        /// The database.
        database: Uuid,
    },
    /// Make this node's copy of `database` the origin: reserved for failover, answered "not
    /// supported yet".
    Promote {
        /// The database.
        database: Uuid,
    },
    /// The count and hash of this node's entries of `database` in each range (at most
    /// [`DIGEST_RANGES_MAX`]), and, if `split_parts` > 1, keys that cut each range into that
    /// many parts.
    Digest {
        /// The database.
        database: Uuid,
        /// Parts to split each range into (0 or 1: no split keys).
        split_parts: u8,
        /// The ranges.
        ranges: Vec<KeyRange>,
    },
    /// This node's entries of `database` in `range`, from its start, as many as one reply
    /// holds.
    Entries {
        /// The database.
        database: Uuid,
        /// The range.
        range: KeyRange,
    },
    /// Start a copy of `database` on the node, under the local `name`, following whichever
    /// nodes its gossip says serve it; the node keeps it across restarts.
    Replicate {
        /// The database.
        database: Uuid,
        /// The directory name of the copy on that node (1 to 64 bytes).
        name: String,
    },
    /// Stop the copy of `database` that a REPLICATE started (its files stay on disk).
    Unreplicate {
        /// The database.
        database: Uuid,
    },
    /// Carry `command` to node `to`, which the receiving node reaches by the address its gossip
    /// view holds, and answer with that node's reply: any node of the mesh is asked through any
    /// other. One hop: the inner command is not a FORWARD.
    Forward {
        /// The node to ask.
        to: Uuid,
        /// What to ask it.
        command: Box<Command>,
    },
    /// The nodes this node knows (itself first): uuid, name, address, databases served.
    Members,
    /// The uuid of the database this node knows by `name` (opened or replicated under it).
    Resolve {
        /// The database's name on that node (1 to 64 bytes).
        name: String,
    },
}

/// A command and how long the sender will wait for its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Milliseconds the sender waits; a node that cannot answer within it may drop the request.
    pub deadline_ms: u32,
    /// The command.
    pub command: Command,
}

/// One database in a STATUS reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseStatus {
    /// The database.
    pub database: Uuid,
    /// The origin whose log it holds.
    pub origin: Uuid,
    /// A copy relayed from another node (not the origin itself).
    pub relay: bool,
    /// Every page below this is in its log.
    pub committed_lsn: u64,
    /// Links serving it now (replicas and watchers).
    pub links: u32,
    /// The epoch of its log.
    pub epoch: u64,
    /// Every page below this is applied (visible to readers there).
    pub applied_lsn: u64,
    /// Every page below this is on disk in its ring.
    pub durable_lsn: u64,
    /// Pages its ring holds.
    pub ring_slots: u64,
    /// Pages of its ring in use.
    pub ring_used: u64,
    /// For a relayed copy: the holder it follows now, if connected.
    pub upstream: Option<SocketAddr>,
    /// For a relayed copy: why its last link to a holder ended (empty if none did).
    pub last_error: String,
    /// The replicas it serves (at most [`STATUS_REPLICAS_MAX`]) and how far behind each is.
    pub replicas: Vec<ReplicaStatus>,
}

/// One replica of a served database, in a STATUS reply: what it holds and how far behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// Its node.
    pub node: Uuid,
    /// The name it attached with.
    pub name: String,
    /// Sync, async or down.
    pub state: LinkState,
    /// Every page below this is received there.
    pub received_lsn: u64,
    /// Pages it lacks.
    pub lag_pages: u64,
    /// The same in bytes.
    pub lag_bytes: u64,
    /// How long ago the first page it lacks was applied here, in milliseconds.
    pub lag_ms: u64,
}

/// A replica link's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Detached (remembered with what it had received).
    Down = 0,
    /// Attached; its acks do not count for `Replicated(n)`.
    Async = 1,
    /// Attached; its acks count.
    Sync = 2,
}

impl LinkState {
    /// `down`, `async` or `sync`.
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Down => "down",
            LinkState::Async => "async",
            LinkState::Sync => "sync",
        }
    }
}

/// A STATUS reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node.
    pub node: Uuid,
    /// Its name.
    pub name: String,
    /// Other nodes in its gossip view.
    pub members: u32,
    /// The databases it serves.
    pub databases: Vec<DatabaseStatus>,
}

/// A node that serves a database, in a LOOKUP reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The node.
    pub node: Uuid,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// A node in a MEMBERS reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node.
    pub node: Uuid,
    /// Its name (empty if it speaks a protocol version without names in gossip).
    pub name: String,
    /// Where it listens (port 0: it serves no one).
    pub addr: SocketAddr,
    /// Databases it serves (at most [`PEER_DATABASES_MAX`]).
    pub databases: Vec<Uuid>,
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The command failed, or was malformed, unknown or not supported.
    Error {
        /// Why (at most [`REASON_MAX`] bytes).
        reason: String,
    },
    /// See [`NodeStatus`].
    Status(NodeStatus),
    /// The holders found.
    Lookup(Vec<Holder>),
    /// One digest per range asked for, in order.
    Digest(Vec<RangeDigest>),
    /// The first entries of the range, in key order.
    Entries {
        /// The entries (at most [`ENTRIES_COUNT_MAX`]).
        entries: Vec<RangeEntry>,
        /// The range holds more after the last one: ask again from just past it.
        more: bool,
    },
    /// The command was carried out: what the node did (at most [`REASON_MAX`] bytes).
    Done {
        /// What was done, for people.
        message: String,
    },
    /// The nodes known (at most [`MEMBERS_MAX`]), the answering node first.
    Members(Vec<Member>),
    /// The database the name stands for.
    Resolved {
        /// Its uuid.
        database: Uuid,
    },
}

/// Appends `request` to `out`. Panics if a list or key is over its bound (see
/// [`request_fits`]).
pub fn encode_request(request: &Request, out: &mut Vec<u8>) {
    out.push(COMMAND_VERSION);
    out.push(kind_of(&request.command));
    out.extend_from_slice(&request.deadline_ms.to_le_bytes());
    encode_body(&request.command, out);
}

fn kind_of(command: &Command) -> u8 {
    match command {
        Command::Status => 1,
        Command::Lookup { .. } => 2,
        Command::Promote { .. } => 3,
        Command::Digest { .. } => 4,
        Command::Entries { .. } => 5,
        Command::Replicate { .. } => 6,
        Command::Unreplicate { .. } => 7,
        Command::Forward { .. } => 8,
        Command::Members => 9,
        Command::Resolve { .. } => 10,
    }
}

fn encode_body(command: &Command, out: &mut Vec<u8>) {
    match command {
        Command::Status | Command::Members => {}
        Command::Resolve { name } => {
            let name = cut(name, NAME_MAX);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
        }
        Command::Lookup { database }
        | Command::Promote { database }
        | Command::Unreplicate { database } => out.extend_from_slice(database.as_bytes()),
        Command::Replicate { database, name } => {
            out.extend_from_slice(database.as_bytes());
            let name = cut(name, NAME_MAX);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
        }
        Command::Forward { to, command } => {
            out.extend_from_slice(to.as_bytes());
            out.push(kind_of(command));
            encode_body(command, out);
        }
        Command::Digest {
            database,
            split_parts,
            ranges,
        } => {
            assert!(*split_parts <= SPLIT_PARTS_MAX);
            assert!(!ranges.is_empty() && ranges.len() <= DIGEST_RANGES_MAX);
            out.extend_from_slice(database.as_bytes());
            out.push(*split_parts);
            out.push(ranges.len() as u8);
            for range in ranges {
                encode_range(range, out);
            }
        }
        Command::Entries { database, range } => {
            out.extend_from_slice(database.as_bytes());
            encode_range(range, out);
        }
    }
}

/// Whether `request` is within its bounds and encodes to at most [`COMMAND_PAYLOAD_MAX`]
/// bytes, as a node accepts.
pub fn request_fits(request: &Request) -> bool {
    fn within_bounds(command: &Command) -> bool {
        let key_ok = |r: &KeyRange| r.lo.len() <= RANGE_KEY_MAX && r.hi.len() <= RANGE_KEY_MAX;
        match command {
            Command::Digest {
                split_parts,
                ranges,
                ..
            } => {
                *split_parts <= SPLIT_PARTS_MAX
                    && !ranges.is_empty()
                    && ranges.len() <= DIGEST_RANGES_MAX
                    && ranges.iter().all(key_ok)
            }
            Command::Entries { range, .. } => key_ok(range),
            Command::Forward { command, .. } => within_bounds(command),
            _ => true,
        }
    }
    if !within_bounds(&request.command) {
        return false;
    }
    let mut out = Vec::new();
    encode_request(request, &mut out);
    out.len() <= COMMAND_PAYLOAD_MAX
}

fn encode_range(range: &KeyRange, out: &mut Vec<u8>) {
    assert!(range.lo.len() <= RANGE_KEY_MAX && range.hi.len() <= RANGE_KEY_MAX);
    for key in [&range.lo, &range.hi] {
        out.extend_from_slice(&(key.len() as u16).to_le_bytes());
        out.extend_from_slice(key);
    }
}

/// Decodes a COMMAND payload.
pub fn decode_request(payload: &[u8]) -> Result<Request> {
    let mut r = Reader(payload);
    r.version()?;
    let kind = r.u8()?;
    let deadline_ms = r.u32()?;
    let command = decode_body(kind, &mut r, false)?;
    if payload.len() > COMMAND_PAYLOAD_MAX {
        return Err(malformed("request over its bound"));
    }
    r.finish()?;
    Ok(Request {
        deadline_ms,
        command,
    })
}

/// The command of `kind` whose body `r` holds; `forwarded` inside a FORWARD, which may not
/// hold another (one hop, and no recursion a peer could deepen).
fn decode_body(kind: u8, r: &mut Reader<'_>, forwarded: bool) -> Result<Command> {
    Ok(match kind {
        1 => Command::Status,
        2 => Command::Lookup {
            database: r.uuid()?,
        },
        3 => Command::Promote {
            database: r.uuid()?,
        },
        4 => {
            let database = r.uuid()?;
            let split_parts = r.u8()?;
            if split_parts > SPLIT_PARTS_MAX {
                return Err(malformed("more than 16 split parts"));
            }
            let count = usize::from(r.u8()?);
            if count == 0 || count > DIGEST_RANGES_MAX {
                return Err(malformed("not 1 to 16 ranges"));
            }
            let mut ranges = Vec::with_capacity(count);
            for _ in 0..count {
                ranges.push(r.range()?);
            }
            Command::Digest {
                database,
                split_parts,
                ranges,
            }
        }
        5 => Command::Entries {
            database: r.uuid()?,
            range: r.range()?,
        },
        6 => {
            let database = r.uuid()?;
            let len = usize::from(r.u8()?);
            if len == 0 {
                return Err(malformed("empty replica name"));
            }
            Command::Replicate {
                database,
                name: r.string(len, NAME_MAX)?,
            }
        }
        7 => Command::Unreplicate {
            database: r.uuid()?,
        },
        9 => Command::Members,
        10 => {
            let len = usize::from(r.u8()?);
            if len == 0 {
                return Err(malformed("empty database name"));
            }
            Command::Resolve {
                name: r.string(len, NAME_MAX)?,
            }
        }
        8 if forwarded => return Err(malformed("a FORWARD inside a FORWARD")),
        8 => {
            let to = r.uuid()?;
            let inner = r.u8()?;
            Command::Forward {
                to,
                command: Box::new(decode_body(inner, r, true)?),
            }
        }
        _ => return Err(malformed("unknown command")),
    })
}

/// Appends `reply` to `out`. Panics if a list or string is over its bound (a bug in the node).
pub fn encode_reply(reply: &Reply, out: &mut Vec<u8>) {
    out.push(COMMAND_VERSION);
    match reply {
        Reply::Error { reason } => {
            out.push(0);
            let reason = cut(reason, REASON_MAX);
            out.extend_from_slice(&(reason.len() as u16).to_le_bytes());
            out.extend_from_slice(reason.as_bytes());
        }
        Reply::Status(status) => {
            assert!(status.databases.len() <= STATUS_DATABASES_MAX);
            out.push(1);
            out.extend_from_slice(status.node.as_bytes());
            let name = cut(&status.name, NAME_MAX);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&status.members.to_le_bytes());
            out.extend_from_slice(&(status.databases.len() as u16).to_le_bytes());
            for db in &status.databases {
                out.extend_from_slice(db.database.as_bytes());
                out.extend_from_slice(db.origin.as_bytes());
                out.push(u8::from(db.relay));
                out.extend_from_slice(&db.committed_lsn.to_le_bytes());
                out.extend_from_slice(&db.links.to_le_bytes());
                for value in [
                    db.epoch,
                    db.applied_lsn,
                    db.durable_lsn,
                    db.ring_slots,
                    db.ring_used,
                ] {
                    out.extend_from_slice(&value.to_le_bytes());
                }
                encode_addr(db.upstream, out);
                let error = cut(&db.last_error, REASON_MAX);
                out.extend_from_slice(&(error.len() as u16).to_le_bytes());
                out.extend_from_slice(error.as_bytes());
                assert!(db.replicas.len() <= STATUS_REPLICAS_MAX);
                out.push(db.replicas.len() as u8);
                for replica in &db.replicas {
                    out.extend_from_slice(replica.node.as_bytes());
                    let name = cut(&replica.name, NAME_MAX);
                    out.push(name.len() as u8);
                    out.extend_from_slice(name.as_bytes());
                    out.push(replica.state as u8);
                    for value in [
                        replica.received_lsn,
                        replica.lag_pages,
                        replica.lag_bytes,
                        replica.lag_ms,
                    ] {
                        out.extend_from_slice(&value.to_le_bytes());
                    }
                }
            }
        }
        Reply::Members(members) => {
            assert!(members.len() <= MEMBERS_MAX);
            out.push(6);
            out.extend_from_slice(&(members.len() as u16).to_le_bytes());
            for member in members {
                out.extend_from_slice(member.node.as_bytes());
                let name = cut(&member.name, NAME_MAX);
                out.push(name.len() as u8);
                out.extend_from_slice(name.as_bytes());
                encode_addr(Some(member.addr), out);
                assert!(member.databases.len() <= PEER_DATABASES_MAX);
                out.push(member.databases.len() as u8);
                for database in &member.databases {
                    out.extend_from_slice(database.as_bytes());
                }
            }
        }
        Reply::Resolved { database } => {
            out.push(7);
            out.extend_from_slice(database.as_bytes());
        }
        Reply::Lookup(holders) => {
            assert!(holders.len() <= LOOKUP_HOLDERS_MAX);
            out.push(2);
            out.extend_from_slice(&(holders.len() as u16).to_le_bytes());
            for holder in holders {
                out.extend_from_slice(holder.node.as_bytes());
                encode_addr(Some(holder.addr), out);
            }
        }
        Reply::Digest(digests) => {
            assert!(digests.len() <= DIGEST_RANGES_MAX);
            out.push(3);
            out.push(digests.len() as u8);
            for digest in digests {
                assert!(digest.splits.len() < usize::from(SPLIT_PARTS_MAX));
                out.extend_from_slice(&digest.entries.to_le_bytes());
                out.extend_from_slice(&digest.hash);
                out.push(digest.splits.len() as u8);
                for key in &digest.splits {
                    assert!(!key.is_empty() && key.len() <= RANGE_KEY_MAX);
                    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
                    out.extend_from_slice(key);
                }
            }
        }
        Reply::Entries { entries, more } => {
            assert!(entries.len() <= ENTRIES_COUNT_MAX);
            out.push(4);
            out.push(u8::from(*more));
            out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
            for entry in entries {
                let table = cut(&entry.table, TABLE_NAME_MAX);
                out.push(table.len() as u8);
                out.extend_from_slice(table.as_bytes());
                let key_len = u16::try_from(entry.key.len()).expect("an LMDB key is short");
                out.extend_from_slice(&key_len.to_le_bytes());
                out.extend_from_slice(&entry.key);
                out.extend_from_slice(&entry.seq.to_le_bytes());
                let value_len = u32::try_from(entry.value.len()).expect("a value under 4 GiB");
                out.extend_from_slice(&value_len.to_le_bytes());
                out.extend_from_slice(&entry.value);
            }
        }
        Reply::Done { message } => {
            out.push(5);
            let message = cut(message, REASON_MAX);
            out.extend_from_slice(&(message.len() as u16).to_le_bytes());
            out.extend_from_slice(message.as_bytes());
        }
    }
}

/// The longest table name an ENTRIES reply carries (the store's own bound).
pub const TABLE_NAME_MAX: usize = 255;
/// Appends `addr` as family (0: none, 4 or 6), ip, port.
fn encode_addr(addr: Option<SocketAddr>, out: &mut Vec<u8>) {
    let Some(addr) = addr else {
        out.push(0);
        return;
    };
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_le_bytes());
}

/// Decodes a REPLY payload.
pub fn decode_reply(payload: &[u8]) -> Result<Reply> {
    let mut r = Reader(payload);
    r.version()?;
    let reply = match r.u8()? {
        0 => {
            let len = usize::from(r.u16()?);
            Reply::Error {
                reason: r.string(len, REASON_MAX)?,
            }
        }
        1 => {
            let node = r.uuid()?;
            let name = r.name()?;
            let members = r.u32()?;
            let count = usize::from(r.u16()?);
            if count > STATUS_DATABASES_MAX {
                return Err(malformed("more than 256 databases"));
            }
            let mut databases = Vec::with_capacity(count);
            for _ in 0..count {
                let (database, origin) = (r.uuid()?, r.uuid()?);
                let relay = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(malformed("relay flag not 0 or 1")),
                };
                let (committed_lsn, links) = (r.u64()?, r.u32()?);
                let [epoch, applied_lsn, durable_lsn, ring_slots, ring_used] =
                    [r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?];
                let upstream = r.addr()?;
                let error_len = usize::from(r.u16()?);
                let last_error = r.string(error_len, REASON_MAX)?;
                let replica_count = usize::from(r.u8()?);
                if replica_count > STATUS_REPLICAS_MAX {
                    return Err(malformed("more than 16 replicas"));
                }
                let mut replicas = Vec::with_capacity(replica_count);
                for _ in 0..replica_count {
                    let node = r.uuid()?;
                    let name = r.name()?;
                    let state = match r.u8()? {
                        0 => LinkState::Down,
                        1 => LinkState::Async,
                        2 => LinkState::Sync,
                        _ => return Err(malformed("link state not 0, 1 or 2")),
                    };
                    replicas.push(ReplicaStatus {
                        node,
                        name,
                        state,
                        received_lsn: r.u64()?,
                        lag_pages: r.u64()?,
                        lag_bytes: r.u64()?,
                        lag_ms: r.u64()?,
                    });
                }
                databases.push(DatabaseStatus {
                    database,
                    origin,
                    relay,
                    committed_lsn,
                    links,
                    epoch,
                    applied_lsn,
                    durable_lsn,
                    ring_slots,
                    ring_used,
                    upstream,
                    last_error,
                    replicas,
                });
            }
            Reply::Status(NodeStatus {
                node,
                name,
                members,
                databases,
            })
        }
        2 => {
            let count = usize::from(r.u16()?);
            if count > LOOKUP_HOLDERS_MAX {
                return Err(malformed("more than 1024 holders"));
            }
            let mut holders = Vec::with_capacity(count);
            for _ in 0..count {
                let node = r.uuid()?;
                let addr = r.addr()?.ok_or(malformed("a holder without an address"))?;
                holders.push(Holder { node, addr });
            }
            Reply::Lookup(holders)
        }
        3 => {
            let count = usize::from(r.u8()?);
            if count > DIGEST_RANGES_MAX {
                return Err(malformed("more than 16 digests"));
            }
            let mut digests = Vec::with_capacity(count);
            for _ in 0..count {
                digests.push(r.digest()?);
            }
            Reply::Digest(digests)
        }
        4 => {
            let more = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(malformed("more flag not 0 or 1")),
            };
            let count = usize::from(r.u16()?);
            if count > ENTRIES_COUNT_MAX {
                return Err(malformed("more than 1024 entries"));
            }
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let table_len = usize::from(r.u8()?);
                let table = r.string(table_len, TABLE_NAME_MAX)?;
                let key_len = usize::from(r.u16()?);
                let key = r.bytes(key_len)?.to_vec();
                let seq = r.u64()?;
                let value_len = r.u32()? as usize;
                let value = r.bytes(value_len)?.to_vec();
                entries.push(RangeEntry {
                    table,
                    key,
                    seq,
                    value,
                });
            }
            Reply::Entries { entries, more }
        }
        5 => {
            let len = usize::from(r.u16()?);
            Reply::Done {
                message: r.string(len, REASON_MAX)?,
            }
        }
        6 => {
            let count = usize::from(r.u16()?);
            if count > MEMBERS_MAX {
                return Err(malformed("more than 1024 members"));
            }
            let mut members = Vec::with_capacity(count);
            for _ in 0..count {
                let node = r.uuid()?;
                let name = r.name()?;
                let addr = r.addr()?.ok_or(malformed("a member without an address"))?;
                let db_count = usize::from(r.u8()?);
                if db_count > PEER_DATABASES_MAX {
                    return Err(malformed("a member with more than 8 databases"));
                }
                let databases = (0..db_count).map(|_| r.uuid()).collect::<Result<_>>()?;
                members.push(Member {
                    node,
                    name,
                    addr,
                    databases,
                });
            }
            Reply::Members(members)
        }
        7 => Reply::Resolved {
            database: r.uuid()?,
        },
        _ => return Err(malformed("unknown reply")),
    };
    r.finish()?;
    Ok(reply)
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn malformed(reason: &'static str) -> Error {
    Error::MalformedCommand { reason }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (head, tail) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(malformed("payload too short"))?;
        self.0 = tail;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
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

    /// An address as [`encode_addr`] writes it.
    fn addr(&mut self) -> Result<Option<SocketAddr>> {
        let ip: IpAddr = match self.u8()? {
            0 => return Ok(None),
            4 => Ipv4Addr::from(self.array::<4>()?).into(),
            6 => Ipv6Addr::from(self.array::<16>()?).into(),
            _ => return Err(malformed("address family not 0, 4 or 6")),
        };
        Ok(Some(SocketAddr::new(ip, self.u16()?)))
    }

    fn version(&mut self) -> Result<()> {
        match self.u8()? {
            COMMAND_VERSION => Ok(()),
            _ => Err(malformed("unknown command version")),
        }
    }

    fn bytes(&mut self, len: usize) -> Result<&[u8]> {
        let (head, tail) = self
            .0
            .split_at_checked(len)
            .ok_or(malformed("payload too short"))?;
        self.0 = tail;
        Ok(head)
    }

    fn key(&mut self) -> Result<Vec<u8>> {
        let len = usize::from(self.u16()?);
        if len > RANGE_KEY_MAX {
            return Err(malformed("key over its bound"));
        }
        Ok(self.bytes(len)?.to_vec())
    }

    fn range(&mut self) -> Result<KeyRange> {
        let lo = self.key()?;
        let hi = self.key()?;
        if !hi.is_empty() && lo >= hi {
            return Err(malformed("empty range"));
        }
        Ok(KeyRange { lo, hi })
    }

    fn digest(&mut self) -> Result<RangeDigest> {
        let entries = self.u64()?;
        let hash = self.array::<32>()?;
        let count = usize::from(self.u8()?);
        if count >= usize::from(SPLIT_PARTS_MAX) {
            return Err(malformed("more than 15 split keys"));
        }
        let mut splits: Vec<Vec<u8>> = Vec::with_capacity(count);
        for _ in 0..count {
            let key = self.key()?;
            if key.is_empty() || splits.last().is_some_and(|last| *last >= key) {
                return Err(malformed("split keys not increasing"));
            }
            splits.push(key);
        }
        Ok(RangeDigest {
            entries,
            hash,
            splits,
        })
    }

    fn string(&mut self, len: usize, max: usize) -> Result<String> {
        if len > max {
            return Err(malformed("string over its bound"));
        }
        let head = self.bytes(len)?;
        let text = std::str::from_utf8(head).map_err(|_| malformed("not UTF-8"))?;
        Ok(text.to_owned())
    }

    /// A node name: `name_len u8` then at most [`NAME_MAX`] bytes of UTF-8.
    fn name(&mut self) -> Result<String> {
        let len = usize::from(self.u8()?);
        self.string(len, NAME_MAX)
    }

    fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(malformed("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uuid() -> impl Strategy<Value = Uuid> {
        any::<u128>().prop_map(Uuid::from_u128)
    }

    fn request() -> impl Strategy<Value = Request> {
        let command = prop_oneof![
            Just(Command::Status),
            uuid().prop_map(|database| Command::Lookup { database }),
            uuid().prop_map(|database| Command::Promote { database }),
            (
                uuid(),
                0..=SPLIT_PARTS_MAX,
                proptest::collection::vec(range(), 1..=16)
            )
                .prop_map(|(database, split_parts, ranges)| Command::Digest {
                    database,
                    split_parts,
                    ranges
                }),
            (uuid(), range()).prop_map(|(database, range)| Command::Entries { database, range }),
            (uuid(), "[a-z0-9-]{1,64}")
                .prop_map(|(database, name)| Command::Replicate { database, name }),
            uuid().prop_map(|database| Command::Unreplicate { database }),
            Just(Command::Members),
            "[a-z0-9é-]{1,32}".prop_map(|name| Command::Resolve { name }),
        ];
        let command = command.prop_recursive(1, 2, 1, |inner| {
            (uuid(), inner).prop_filter_map("one hop", |(to, command)| {
                (!matches!(command, Command::Forward { .. })).then(|| Command::Forward {
                    to,
                    command: Box::new(command),
                })
            })
        });
        (any::<u32>(), command).prop_map(|(deadline_ms, command)| Request {
            deadline_ms,
            command,
        })
    }

    /// A range whose keys are short enough that 16 of them fit in a request.
    fn range() -> impl Strategy<Value = KeyRange> {
        (
            proptest::collection::vec(any::<u8>(), 0..100),
            proptest::collection::vec(any::<u8>(), 0..100),
        )
            .prop_map(|(a, b)| {
                let (lo, hi) = if b.is_empty() || a < b {
                    (a, b)
                } else {
                    (b, a)
                };
                if !hi.is_empty() && lo == hi {
                    KeyRange { lo, hi: Vec::new() }
                } else {
                    KeyRange { lo, hi }
                }
            })
    }

    fn digest() -> impl Strategy<Value = RangeDigest> {
        (
            any::<u64>(),
            any::<[u8; 32]>(),
            proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 1..40), 0..15),
        )
            .prop_map(|(entries, hash, splits)| RangeDigest {
                entries,
                hash,
                splits: splits.into_iter().collect(),
            })
    }

    fn entry() -> impl Strategy<Value = RangeEntry> {
        (
            "[a-z_.]{0,255}",
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..256),
        )
            .prop_map(|(table, key, seq, value)| RangeEntry {
                table,
                key,
                seq,
                value,
            })
    }

    fn reply() -> impl Strategy<Value = Reply> {
        let addr = (any::<[u8; 16]>(), any::<bool>(), any::<u16>()).prop_map(|(ip, v4, port)| {
            let ip: IpAddr = if v4 {
                Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).into()
            } else {
                Ipv6Addr::from(ip).into()
            };
            SocketAddr::new(ip, port)
        });
        let replica = (uuid(), "[a-z0-9-]{0,64}", 0..3u8, any::<[u64; 4]>()).prop_map(
            |(node, name, state, [received_lsn, lag_pages, lag_bytes, lag_ms])| ReplicaStatus {
                node,
                name,
                state: [LinkState::Down, LinkState::Async, LinkState::Sync][usize::from(state)],
                received_lsn,
                lag_pages,
                lag_bytes,
                lag_ms,
            },
        );
        let database = (
            (uuid(), uuid(), any::<bool>(), any::<u64>(), any::<u32>()),
            any::<[u64; 5]>(),
            proptest::option::of(addr.clone()),
            "[a-z ]{0,100}",
            proptest::collection::vec(replica, 0..4),
        )
            .prop_map(
                |(
                    (database, origin, relay, committed_lsn, links),
                    [epoch, applied_lsn, durable_lsn, ring_slots, ring_used],
                    upstream,
                    last_error,
                    replicas,
                )| DatabaseStatus {
                    database,
                    origin,
                    relay,
                    committed_lsn,
                    links,
                    epoch,
                    applied_lsn,
                    durable_lsn,
                    ring_slots,
                    ring_used,
                    upstream,
                    last_error,
                    replicas,
                },
            );
        prop_oneof![
            "[a-z ]{0,200}".prop_map(|reason| Reply::Error { reason }),
            (
                uuid(),
                "[a-z0-9-]{0,64}",
                any::<u32>(),
                proptest::collection::vec(database, 0..8)
            )
                .prop_map(|(node, name, members, databases)| Reply::Status(
                    NodeStatus {
                        node,
                        name,
                        members,
                        databases
                    }
                )),
            proptest::collection::vec(
                (uuid(), addr.clone()).prop_map(|(node, addr)| Holder { node, addr }),
                0..20
            )
            .prop_map(Reply::Lookup),
            proptest::collection::vec(digest(), 0..=16).prop_map(Reply::Digest),
            (proptest::collection::vec(entry(), 0..20), any::<bool>())
                .prop_map(|(entries, more)| Reply::Entries { entries, more }),
            "[a-z ]{0,200}".prop_map(|message| Reply::Done { message }),
            proptest::collection::vec(
                (
                    uuid(),
                    "[a-z0-9é-]{0,32}",
                    addr.clone(),
                    proptest::collection::vec(uuid(), 0..=PEER_DATABASES_MAX)
                )
                    .prop_map(|(node, name, addr, databases)| Member {
                        node,
                        name,
                        addr,
                        databases
                    }),
                0..20
            )
            .prop_map(Reply::Members),
            uuid().prop_map(|database| Reply::Resolved { database }),
        ]
    }

    proptest! {
        #[test]
        fn requests_and_replies_round_trip(request in request(), reply in reply()) {
            let mut out = Vec::new();
            encode_request(&request, &mut out);
            prop_assert!(request_fits(&request));
            prop_assert!(out.len() <= COMMAND_PAYLOAD_MAX);
            prop_assert_eq!(decode_request(&out).unwrap(), request);
            for cut in 0..out.len() {
                prop_assert!(decode_request(&out[..cut]).is_err());
            }
            out.clear();
            encode_reply(&reply, &mut out);
            prop_assert_eq!(decode_reply(&out).unwrap(), reply);
            for cut in 0..out.len() {
                prop_assert!(decode_reply(&out[..cut]).is_err());
            }
        }
    }

    #[test]
    fn unknown_versions_kinds_and_bounds_are_refused() {
        let reason = |bytes: &[u8]| match decode_request(bytes) {
            Err(Error::MalformedCommand { reason }) => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(&[2, 1, 0, 0, 0, 0]), "unknown command version");
        assert_eq!(reason(&[1, 11, 0, 0, 0, 0]), "unknown command");
        assert_eq!(reason(&[1, 10, 0, 0, 0, 0, 0]), "empty database name");
        assert_eq!(reason(&[1, 10, 0, 0, 0, 0, 1, 0xff]), "not UTF-8");
        assert_eq!(reason(&[1, 10, 0, 0, 0, 0, 65]), "string over its bound");
        assert_eq!(reason(&[1, 1, 0, 0, 0, 0, 0]), "trailing bytes");
        let mut nameless = vec![1, 6, 0, 0, 0, 0];
        nameless.extend_from_slice(&[7; 16]);
        nameless.push(0);
        assert_eq!(reason(&nameless), "empty replica name");
        let mut twice = vec![1, 8, 0, 0, 0, 0];
        twice.extend_from_slice(&[1; 16]);
        twice.push(8);
        twice.extend_from_slice(&[2; 16]);
        twice.push(1);
        assert_eq!(reason(&twice), "a FORWARD inside a FORWARD");
        assert_eq!(reason(&[]), "payload too short");
        let database = [7u8; 16];
        let digest = |split_parts: u8, count: u8, range: &[u8]| {
            let mut bytes = vec![1, 4, 0, 0, 0, 0];
            bytes.extend_from_slice(&database);
            bytes.extend_from_slice(&[split_parts, count]);
            for _ in 0..count {
                bytes.extend_from_slice(range);
            }
            bytes
        };
        let ab = [1, 0, b'a', 1, 0, b'b'];
        assert!(decode_request(&digest(16, 16, &ab)).is_ok());
        assert_eq!(reason(&digest(17, 1, &ab)), "more than 16 split parts");
        assert_eq!(reason(&digest(2, 0, &ab)), "not 1 to 16 ranges");
        assert_eq!(reason(&digest(2, 17, &ab)), "not 1 to 16 ranges");
        assert_eq!(
            reason(&digest(2, 1, &[1, 0, b'b', 1, 0, b'a'])),
            "empty range"
        );
        assert_eq!(
            reason(&digest(2, 1, &[1, 0, b'b', 1, 0, b'b'])),
            "empty range"
        );
        assert!(decode_request(&digest(2, 1, &[1, 0, b'b', 0, 0])).is_ok());
        let mut long = vec![0xff, 0x03];
        long.extend_from_slice(&[b'k'; 1023]);
        long.extend_from_slice(&[0, 0]);
        assert!(decode_request(&digest(0, 1, &long)).is_ok());
        assert_eq!(reason(&digest(0, 4, &long)), "request over its bound");
        long[0] = 0x01;
        long[1] = 0x04;
        assert_eq!(reason(&digest(0, 1, &long)), "key over its bound");
        let split_keys = |keys: &[&[u8]]| {
            let mut bytes = vec![1, 3, 1];
            bytes.extend_from_slice(&[0; 40]);
            bytes.push(keys.len() as u8);
            for key in keys {
                bytes.extend_from_slice(&(key.len() as u16).to_le_bytes());
                bytes.extend_from_slice(key);
            }
            decode_reply(&bytes)
        };
        assert!(split_keys(&[b"a", b"b"]).is_ok());
        assert!(split_keys(&[b"b", b"a"]).is_err());
        assert!(split_keys(&[b"a", b"a"]).is_err());
        assert!(split_keys(&[b""]).is_err());
        let mut many = vec![1, 2];
        many.extend_from_slice(&2000u16.to_le_bytes());
        assert!(matches!(
            decode_reply(&many),
            Err(Error::MalformedCommand {
                reason: "more than 1024 holders"
            })
        ));
    }
}
