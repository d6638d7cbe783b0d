//! A blocking client for the command channel (`proto::command`): connect to a node, pass the
//! cluster-secret handshake, send a command, wait for its reply ([`request`], or a [`Session`]
//! for many). For tools and scripts (`pagemesh ctl`); it uses plain `std::net` sockets, no
//! runtime. [`diff`] compares two nodes' copies of a database by DIFF's descent
//! (`crate::diff`), over one session to each.
//!
//! ```no_run
//! use std::time::Duration;
//! use pagemesh_net::control;
//! use pagemesh_net::proto::command::{Command, Reply};
//!
//! let reply = control::request(
//!     "127.0.0.1:7400".parse().unwrap(),
//!     Some(b"the cluster secret"),
//!     Command::Status,
//!     Duration::from_secs(5),
//! )?;
//! if let Reply::Status(status) = reply {
//!     println!("{} serves {} databases", status.name, status.databases.len());
//! }
//! # Ok::<(), pagemesh_net::Error>(())
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::diff::{DiffOptions, DiffReport, RangeSource};
use crate::error::{Error, Result};
use crate::proto::command::{
    decode_reply, encode_request, request_fits, Command, KeyRange, RangeDigest, RangeEntry, Reply,
    Request, DIGEST_RANGES_MAX,
};
use crate::proto::frame::{decode, encode, Decoded, Frame, Message};
use crate::proto::handshake::{Handshake, HandshakeConfig};

/// Sends `command` to the node at `addr` (with the cluster `secret`, if the node has one) and
/// returns its reply; gives up after `timeout` in all.
pub fn request(
    addr: SocketAddr,
    secret: Option<&[u8]>,
    command: Command,
    timeout: Duration,
) -> Result<Reply> {
    let deadline = Instant::now() + timeout;
    let mut session = Session::connect(addr, secret, timeout)?;
    session.ask_until(command, deadline)
}

/// An authenticated command link to one node, for many requests one after another (DIFF asks
/// each node several times: one handshake, then one round trip per request).
#[derive(Debug)]
pub struct Session {
    stream: TcpStream,
    addr: SocketAddr,
    buf: Vec<u8>,
    next_request: u64,
    timeout: Duration,
}

impl Session {
    /// Connects to `addr` and passes the handshake, within `timeout`; each later request has
    /// `timeout` too.
    pub fn connect(addr: SocketAddr, secret: Option<&[u8]>, timeout: Duration) -> Result<Self> {
        let io = io_error(addr);
        let deadline = Instant::now() + timeout;
        let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io("connect"))?;
        stream.set_nodelay(true).map_err(io("configure"))?;
        let config = HandshakeConfig::new(Uuid::new_v4(), "ctl", secret.map(<[u8]>::to_vec));
        let mut nonce = [0u8; 32];
        nonce[..16].copy_from_slice(Uuid::new_v4().as_bytes());
        nonce[16..].copy_from_slice(Uuid::new_v4().as_bytes());
        let mut out = Vec::new();
        let mut handshake = Handshake::connect(&config, nonce, Instant::now(), &mut out);
        stream.write_all(&out).map_err(io("write"))?;
        let mut buf = Vec::new();
        while !handshake.is_established() {
            let frame = read_frame(&mut stream, &mut buf, deadline, addr)?;
            out.clear();
            handshake.on_frame(&frame_of(&frame)?, &mut out)?;
            stream.write_all(&out).map_err(io("write"))?;
        }
        Ok(Self {
            stream,
            addr,
            buf,
            next_request: 1,
            timeout,
        })
    }

    /// The node's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `command` and waits (at most the session's timeout) for its reply.
    pub fn ask(&mut self, command: Command) -> Result<Reply> {
        self.ask_until(command, Instant::now() + self.timeout)
    }

    /// Sends every command at once (pipelined on the link: one round trip), then waits for
    /// their replies, in order, each within the session's timeout.
    pub fn ask_all(&mut self, commands: Vec<Command>) -> Result<Vec<Reply>> {
        let deadline = Instant::now() + self.timeout;
        let mut out = Vec::new();
        let mut ids = Vec::with_capacity(commands.len());
        for command in commands {
            ids.push(self.encode(command, deadline, &mut out)?);
        }
        self.stream
            .write_all(&out)
            .map_err(io_error(self.addr)("write"))?;
        let mut replies = Vec::with_capacity(ids.len());
        for id in ids {
            replies.push(self.receive(id, Instant::now() + self.timeout)?);
        }
        Ok(replies)
    }

    fn ask_until(&mut self, command: Command, deadline: Instant) -> Result<Reply> {
        let mut out = Vec::new();
        let request_id = self.encode(command, deadline, &mut out)?;
        self.stream
            .write_all(&out)
            .map_err(io_error(self.addr)("write"))?;
        self.receive(request_id, deadline)
    }

    /// Appends the COMMAND frame of `command` to `out`; returns its request id.
    fn encode(&mut self, command: Command, deadline: Instant, out: &mut Vec<u8>) -> Result<u64> {
        let left = deadline.saturating_duration_since(Instant::now());
        let request = Request {
            deadline_ms: u32::try_from(left.as_millis()).unwrap_or(u32::MAX),
            command,
        };
        if !request_fits(&request) {
            return Err(Error::MalformedCommand {
                reason: "request over its bound",
            });
        }
        let mut payload = Vec::new();
        encode_request(&request, &mut payload);
        let request_id = self.next_request;
        self.next_request += 1;
        encode(
            &Frame::Command(Message {
                request_id,
                payload: &payload,
            }),
            out,
        );
        Ok(request_id)
    }

    /// Waits for the reply to `request_id`.
    fn receive(&mut self, request_id: u64, deadline: Instant) -> Result<Reply> {
        loop {
            let frame = read_frame(&mut self.stream, &mut self.buf, deadline, self.addr)?;
            match frame_of(&frame)? {
                Frame::Reply(message) if message.request_id == request_id => {
                    return decode_reply(message.payload)
                }
                Frame::Heartbeat(_) => {}
                Frame::Refuse(refuse) => {
                    return Err(Error::Refused {
                        code: refuse.code as u16,
                        reason: refuse.reason,
                    })
                }
                other => {
                    return Err(Error::UnexpectedFrame {
                        state: "awaiting a REPLY",
                        frame: other.kind(),
                    })
                }
            }
        }
    }
}

fn io_error(addr: SocketAddr) -> impl Fn(&'static str) -> Box<dyn FnOnce(std::io::Error) -> Error> {
    move |op| {
        Box::new(move |source| Error::Io {
            op,
            peer: addr,
            source,
        })
    }
}

/// One database on one node, as DIFF's descent asks it (`crate::diff::RangeSource`).
#[derive(Debug)]
pub struct NodeCopy {
    session: Session,
    database: Uuid,
}

impl NodeCopy {
    /// `database` on the node `session` talks to.
    pub fn new(session: Session, database: Uuid) -> Self {
        Self { session, database }
    }

    fn failed(&self, reason: String) -> Error {
        Error::CommandFailed {
            node: self.session.addr,
            reason,
        }
    }
}

impl NodeCopy {
    fn digests_of(&self, reply: Reply) -> Result<Vec<RangeDigest>> {
        match reply {
            Reply::Digest(digests) => Ok(digests),
            Reply::Error { reason } => Err(self.failed(reason)),
            _ => Err(self.failed("a reply that is not a DIGEST".into())),
        }
    }

    fn entries_of(&self, reply: Reply) -> Result<(Vec<RangeEntry>, bool)> {
        match reply {
            Reply::Entries { entries, more } => Ok((entries, more)),
            Reply::Error { reason } => Err(self.failed(reason)),
            _ => Err(self.failed("a reply that is not ENTRIES".into())),
        }
    }
}

impl RangeSource for NodeCopy {
    fn digest(&mut self, ranges: &[KeyRange], split_parts: u8) -> Result<Vec<RangeDigest>> {
        let mut digests = self.digest_wave(&[ranges], split_parts)?;
        Ok(digests.pop().unwrap_or_default())
    }

    fn entries(&mut self, range: &KeyRange) -> Result<(Vec<RangeEntry>, bool)> {
        let mut entries = self.entries_wave(std::slice::from_ref(range))?;
        Ok(entries.pop().unwrap_or_default())
    }

    fn digest_wave(
        &mut self,
        batches: &[&[KeyRange]],
        split_parts: u8,
    ) -> Result<Vec<Vec<RangeDigest>>> {
        let commands = batches
            .iter()
            .map(|ranges| Command::Digest {
                database: self.database,
                split_parts,
                ranges: ranges.to_vec(),
            })
            .collect();
        let replies = self.session.ask_all(commands)?;
        replies.into_iter().map(|r| self.digests_of(r)).collect()
    }

    fn entries_wave(&mut self, ranges: &[KeyRange]) -> Result<Vec<(Vec<RangeEntry>, bool)>> {
        let commands = ranges
            .iter()
            .map(|range| Command::Entries {
                database: self.database,
                range: range.clone(),
            })
            .collect();
        let replies = self.session.ask_all(commands)?;
        replies.into_iter().map(|r| self.entries_of(r)).collect()
    }

    fn fits(&self, ranges: &[KeyRange]) -> bool {
        ranges.len() <= DIGEST_RANGES_MAX
            && request_fits(&Request {
                deadline_ms: 0,
                command: Command::Digest {
                    database: self.database,
                    split_parts: 0,
                    ranges: ranges.to_vec(),
                },
            })
    }
}

/// Compares `database` on the nodes at `a` and `b` (see `crate::diff`): both are connected at
/// once, each request may take `timeout`.
pub fn diff(
    a: SocketAddr,
    b: SocketAddr,
    secret: Option<&[u8]>,
    database: Uuid,
    timeout: Duration,
    options: DiffOptions,
) -> Result<DiffReport> {
    let (session_a, session_b) = std::thread::scope(|scope| {
        let connect_a = scope.spawn(|| Session::connect(a, secret, timeout));
        let session_b = Session::connect(b, secret, timeout);
        let session_a = connect_a
            .join()
            .map_err(|_| Error::ThreadEnded { thread: "connect" })?;
        Ok::<_, Error>((session_a?, session_b?))
    })?;
    let mut copy_a = NodeCopy::new(session_a, database);
    let mut copy_b = NodeCopy::new(session_b, database);
    crate::diff::diff(&mut copy_a, &mut copy_b, options)
}

fn frame_of(bytes: &[u8]) -> Result<Frame<'_>> {
    match decode(bytes)? {
        Decoded::Frame { frame, .. } => Ok(frame),
        Decoded::Incomplete { .. } => Err(Error::MalformedFrame {
            frame: "frame",
            reason: "incomplete",
        }),
    }
}

/// Reads one whole frame's bytes from `stream` (what follows stays in `buf`).
fn read_frame(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    addr: SocketAddr,
) -> Result<Vec<u8>> {
    let io = io_error(addr);
    loop {
        if let Decoded::Frame { len, .. } = decode(buf)? {
            let rest = buf.split_off(len);
            return Ok(std::mem::replace(buf, rest));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::HandshakeTimeout);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(io("configure"))?;
        let mut chunk = [0u8; 16 * 1024];
        let read = stream.read(&mut chunk).map_err(io("read"))?;
        if read == 0 {
            return Err(Error::PeerClosed {
                state: "awaiting a reply",
            });
        }
        buf.extend_from_slice(&chunk[..read]);
    }
}
