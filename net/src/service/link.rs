//! What every link has, whichever side: the handshake, and the control that closes it from
//! outside. Each side's timeouts are its state machine's (`replica_link.rs`, `source_link.rs`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use tokio::sync::Notify;

use super::Runtime;
use crate::error::{Error, Result};
use crate::proto::handshake::{Handshake, PeerInfo};
use crate::transport::{timeout_at, FrameReader, FrameWriter, Shutdown};

/// Closes a link from outside: shuts its socket and wakes its tasks.
pub(super) struct LinkControl {
    pub(super) closed: Cell<bool>,
    pub(super) wake: Notify,
    pub(super) shutdown: RefCell<Option<Shutdown>>,
}

impl LinkControl {
    pub(super) fn new() -> Rc<Self> {
        Rc::new(Self {
            closed: Cell::new(false),
            wake: Notify::new(),
            shutdown: RefCell::new(None),
        })
    }

    pub(super) fn close(&self) {
        self.closed.set(true);
        if let Some(shutdown) = self.shutdown.borrow().as_ref() {
            shutdown.shutdown();
        }
        self.wake.notify_waiters();
    }

    pub(super) async fn closed(&self) {
        while !self.closed.get() {
            self.wake.notified().await;
        }
    }
}

pub(super) fn nonce() -> [u8; 32] {
    rand::random()
}

/// Runs the handshake on a fresh connection; returns the peer once established.
pub(super) async fn handshake(
    runtime: &Runtime,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    connector: bool,
) -> Result<PeerInfo> {
    let now = Instant::now();
    let mut out = writer.buffer();
    let mut state = if connector {
        Handshake::connect(&runtime.handshake, nonce(), now, &mut out)
    } else {
        Handshake::accept(&runtime.handshake, nonce(), now)
    };
    writer.write(out).await?;
    let deadline = state.deadline();
    loop {
        let frame = match timeout_at(deadline, reader.next()).await {
            Err(_) => return Err(Error::HandshakeTimeout),
            Ok(frame) => frame?,
        };
        let Some(frame) = frame else {
            return Err(Error::PeerClosed {
                state: "handshaking",
            });
        };
        let mut out = writer.buffer();
        let outcome = state.on_frame(&frame, &mut out);
        writer.write(out).await?;
        if let Some(peer) = outcome? {
            return Ok(peer);
        }
    }
}
