//! What every link has, whichever side: the handshake, the control that closes it from outside,
//! and the watchdog that closes it when the peer goes silent or a write blocks.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use pagemesh_logpage::Log;
use tokio::sync::Notify;

use super::Runtime;
use crate::error::{Error, Result};
use crate::proto::handshake::{Handshake, PeerInfo};
use crate::transport::{sleep, timeout_at, FrameReader, FrameWriter, Shutdown};

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

/// What a link's tasks share with its watchdog.
pub(super) struct LinkProgress {
    /// When the peer last sent anything.
    pub(super) last_heard: Cell<Instant>,
    /// When the write in flight began, if one is.
    pub(super) writing_since: Cell<Option<Instant>>,
    /// Source side: every page below this has been handed to the socket (acks are capped here).
    pub(super) shipped: Cell<u64>,
    /// Source side: the shipper holds a ring cursor, so a link that stops reading holds the
    /// ring's slots (not while it sends a snapshot or binlog pages).
    pub(super) holds_ring: Cell<bool>,
}

impl LinkProgress {
    pub(super) fn new(shipped: u64) -> Rc<Self> {
        Rc::new(Self {
            last_heard: Cell::new(Instant::now()),
            writing_since: Cell::new(None),
            shipped: Cell::new(shipped),
            holds_ring: Cell::new(false),
        })
    }

    /// Marks the link as holding a ring cursor until the guard is dropped.
    pub(super) fn hold_ring(&self) -> HoldsRing<'_> {
        self.holds_ring.set(true);
        HoldsRing(self)
    }

    /// `writer.write`, timed for the watchdog.
    pub(super) async fn write(&self, writer: &mut FrameWriter, batch: Vec<u8>) -> Result<()> {
        self.writing_since.set(Some(Instant::now()));
        let outcome = writer.write(batch).await;
        self.writing_since.set(None);
        outcome
    }
}

/// A shipper's ring cursor, as the watchdog sees it: see [`LinkProgress::hold_ring`].
pub(super) struct HoldsRing<'a>(&'a LinkProgress);

impl Drop for HoldsRing<'_> {
    fn drop(&mut self) {
        self.0.holds_ring.set(false);
    }
}

/// How often a watchdog looks at its link.
pub(super) const WATCHDOG_PERIOD: Duration = Duration::from_millis(20);

/// Closes the link when the peer has been silent, or one write blocked, for longer than
/// `link_timeout`, or (source side, with `ring`, while the shipper holds a ring cursor) when a
/// blocked write lets the replica fall more than half the ring behind. A link sending a snapshot
/// or binlog pages holds no ring slot, so however far behind it is, only the timeouts apply: a
/// snapshot larger than half the ring used to be cut whenever the restoring replica pushed back. Reads and writes cannot be raced against a timer (io_uring
/// operations are not safely cancellable), so the watchdog shuts the socket down instead, which
/// completes them with an error. So a replica that stops reading never holds the primary's ring.
pub(super) async fn watchdog(
    control: Rc<LinkControl>,
    progress: Rc<LinkProgress>,
    link_timeout: Duration,
    ring: Option<Log>,
) {
    loop {
        tokio::select! {
            () = sleep(WATCHDOG_PERIOD) => {}
            () = control.closed() => return,
        }
        let silent_for = progress.last_heard.get().elapsed();
        let blocked_for = progress.writing_since.get().map(|since| since.elapsed());
        let lag = ring.as_ref().map_or(0, |log| {
            log.committed_lsn().saturating_sub(progress.shipped.get())
        });
        let why = if silent_for > link_timeout {
            Some(format!("peer silent for {silent_for:?}"))
        } else if blocked_for.is_some_and(|blocked| blocked > link_timeout) {
            Some(format!("a write blocked for {blocked_for:?}"))
        } else if blocked_for.is_some()
            && progress.holds_ring.get()
            && ring.as_ref().is_some_and(|log| lag > log.slots() / 2)
        {
            Some(format!(
                "replica {lag} pages behind while its link is blocked"
            ))
        } else {
            None
        };
        if let Some(why) = why {
            tracing::warn!(%why, "closing link");
            control.close();
            return;
        }
    }
}
