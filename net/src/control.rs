//! A blocking client for the command channel (`proto::command`): connect to a node, pass the
//! cluster-secret handshake, send one command, wait for its reply. For tools and scripts (`pagemesh
//! ctl`); it uses plain `std::net` sockets, no runtime.
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

use crate::error::{Error, Result};
use crate::proto::command::{decode_reply, encode_request, Command, Reply, Request};
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
    let io = |op: &'static str| {
        move |source| Error::Io {
            op,
            peer: addr,
            source,
        }
    };
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
    let mut payload = Vec::new();
    encode_request(
        &Request {
            deadline_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            command,
        },
        &mut payload,
    );
    out.clear();
    encode(
        &Frame::Command(Message {
            request_id: 1,
            payload: &payload,
        }),
        &mut out,
    );
    stream.write_all(&out).map_err(io("write"))?;
    loop {
        let frame = read_frame(&mut stream, &mut buf, deadline, addr)?;
        match frame_of(&frame)? {
            Frame::Reply(message) if message.request_id == 1 => {
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
    let io = |op: &'static str| {
        move |source| Error::Io {
            op,
            peer: addr,
            source,
        }
    };
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
