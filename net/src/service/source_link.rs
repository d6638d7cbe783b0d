//! The source side of an established link, as a state machine without I/O: acks, heartbeats
//! and the rules that drop a link.
//!
//! Which pages go next (snapshot, binlog or ring) and how they are framed is the
//! [`Shipper`](super::shipper::Shipper)'s decision, and reading them is the driver's
//! (`source.rs`). This machine keeps what the link has promised and heard:
//!
//! - [`SourceLink::handle_frame`] takes what the replica sends (ACK, RECEIPTS, HEARTBEAT) and
//!   returns what it [`Heard`]: the watermarks to report, **capped at what was shipped** (a
//!   peer's word is not proof of receipt), for the replica itself or for the nodes it feeds.
//!   Anything else closes the link, as do receipts of another origin's log.
//! - [`SourceLink::poll_heartbeat`] writes a heartbeat when nothing was sent for a heartbeat
//!   interval ([`Liveness`]).
//! - [`SourceLink::handle_timeout`] fails the link when no byte came from the replica for the link
//!   timeout ([`SourceLink::bytes_received`]), when one write has made no progress that long
//!   ([`SourceLink::bytes_sent`]), or when a write is blocked while the
//!   shipper holds a ring cursor and the replica is more than half the ring behind: a replica
//!   that stops reading must not hold the source's ring. A link sending a snapshot or binlog
//!   pages holds no ring slot, so that last rule does not apply to it (it used to, and cut every
//!   snapshot of a database larger than half the ring; see `tests/bootstrap.rs`).
//!
//! Nothing here touches a socket, a thread or the clock: the driver passes `now` and the log's
//! committed LSN in.

use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::proto::frame::{encode, Frame, Heartbeat};
use crate::proto::liveness::{LinkAction, Liveness, WriteWatch};

/// What a frame from the replica said, for the driver to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    /// Nothing to report (a heartbeat).
    Nothing,
    /// The replica holds every page below `received_lsn`; below `durable_lsn`, durably.
    Ack {
        /// Capped at what was shipped.
        received_lsn: u64,
        /// Capped at what was shipped.
        durable_lsn: u64,
    },
    /// Nodes the replica feeds, and how far each has received (each capped at what was
    /// shipped): sorted by node, each once.
    Receipts(Vec<(Uuid, u64)>),
}

/// The source side of one link to a replica, for one database.
#[derive(Debug)]
pub struct SourceLink {
    database: Uuid,
    /// The origin whose log the link ships.
    origin: Uuid,
    liveness: Liveness,
    write: WriteWatch,
    /// Every page below this has been handed to the socket.
    shipped_lsn: u64,
    /// The shipper holds a ring cursor.
    holds_ring: bool,
    /// Pages in the source's ring.
    ring_slots: u64,
}

impl SourceLink {
    /// A link subscribed at `now` to `origin`'s log of `database`, whose replica holds every
    /// page below `shipped_lsn`.
    pub fn new(
        now: Instant,
        database: Uuid,
        origin: Uuid,
        shipped_lsn: u64,
        ring_slots: u64,
        heartbeat: Duration,
        link_timeout: Duration,
    ) -> Self {
        Self {
            database,
            origin,
            liveness: Liveness::new(now, heartbeat, link_timeout),
            write: WriteWatch::new(link_timeout),
            shipped_lsn,
            holds_ring: false,
            ring_slots,
        }
    }

    /// A frame from the replica arrived at `now`: what it said, or why the link must close.
    pub fn handle_frame(&mut self, now: Instant, frame: &Frame<'_>) -> Result<Heard> {
        self.liveness.on_receive(now);
        match frame {
            Frame::Ack(ack) if ack.database == self.database => Ok(Heard::Ack {
                received_lsn: ack.received_lsn.min(self.shipped_lsn),
                durable_lsn: ack.durable_lsn.min(self.shipped_lsn),
            }),
            Frame::Receipts(report) if report.database == self.database => {
                if report.origin != self.origin {
                    return Err(Error::ForeignReceipts {
                        database: self.database,
                        origin: report.origin,
                        expected_origin: self.origin,
                    });
                }
                let shipped = self.shipped_lsn;
                Ok(Heard::Receipts(
                    report
                        .entries
                        .iter()
                        .map(|&(node, lsn)| (node, lsn.min(shipped)))
                        .collect(),
                ))
            }
            Frame::Heartbeat(_) => Ok(Heard::Nothing),
            other => Err(Error::UnexpectedFrame {
                state: "shipping",
                frame: other.kind(),
            }),
        }
    }

    /// Bytes from the replica arrived at `now`, whether or not they completed a frame.
    pub fn bytes_received(&mut self, now: Instant) {
        self.liveness.on_receive(now);
    }

    /// Bytes of the write in flight left at `now`: a write that moves is not blocked, however
    /// long it takes (a 1 MiB batch takes seconds on a slow link).
    pub fn bytes_sent(&mut self, now: Instant) {
        self.write.moved(now);
    }

    /// Every page below `lsn` has been handed to the writer (never moves back).
    pub fn shipped(&mut self, lsn: u64) {
        self.shipped_lsn = self.shipped_lsn.max(lsn);
    }

    /// Every page below this has been handed to the writer.
    pub fn shipped_lsn(&self) -> u64 {
        self.shipped_lsn
    }

    /// Whether the shipper holds a ring cursor (see the module docs).
    pub fn set_holds_ring(&mut self, holds_ring: bool) {
        self.holds_ring = holds_ring;
    }

    /// A write began at `now` (it counts as a send for the heartbeat timer).
    pub fn write_started(&mut self, now: Instant) {
        self.liveness.on_send(now);
        self.write.started(now);
    }

    /// The write in flight completed.
    pub fn write_finished(&mut self) {
        self.write.finished();
    }

    /// Encodes a heartbeat into `out` if nothing was sent for a heartbeat interval at `now`;
    /// returns whether it did. Fails if the replica has been silent for the link timeout, so
    /// that after a call [`SourceLink::heartbeat_deadline`] is always ahead of `now`.
    pub fn poll_heartbeat(&mut self, now: Instant, out: &mut Vec<u8>) -> Result<bool> {
        if let Some(silent_for) = self.liveness.timed_out(now) {
            return Err(Error::LinkTimeout { silent_for });
        }
        let due = self.liveness.poll(now) == LinkAction::SendHeartbeat;
        if due {
            encode(&Frame::Heartbeat(Heartbeat { sent_micros: 0 }), out);
        }
        Ok(due)
    }

    /// When a heartbeat falls due, unless something is sent first.
    pub fn heartbeat_deadline(&self) -> Instant {
        self.liveness.heartbeat_deadline()
    }

    /// When [`SourceLink::handle_timeout`] may next fail the link by time: the replica's silence
    /// or the write in flight reaching the link timeout.
    pub fn timeout_deadline(&self) -> Instant {
        let silence = self.liveness.silence_deadline();
        self.write
            .deadline()
            .map_or(silence, |blocked| silence.min(blocked))
    }

    /// Whether the ring-lag rule is armed: a write is blocked while the shipper holds a ring
    /// cursor, so the driver should call [`SourceLink::handle_timeout`] as the log grows.
    pub fn watching_ring(&self) -> bool {
        self.write.is_writing() && self.holds_ring
    }

    /// Fails the link if, at `now`, the replica has been silent or a write blocked for the link
    /// timeout, or a blocked write holds the ring while the replica is more than half of it
    /// behind the log's `committed_lsn`.
    pub fn handle_timeout(&self, now: Instant, committed_lsn: u64) -> Result<()> {
        if let Some(silent_for) = self.liveness.timed_out(now) {
            return Err(Error::LinkTimeout { silent_for });
        }
        if !self.write.is_writing() {
            return Ok(());
        }
        if let Some(blocked_for) = self.write.blocked(now) {
            return Err(Error::WriteBlocked { blocked_for });
        }
        let lag_pages = committed_lsn.saturating_sub(self.shipped_lsn);
        if self.holds_ring && lag_pages > self.ring_slots / 2 {
            return Err(Error::ReplicaHoldsRing {
                lag_pages,
                ring_slots: self.ring_slots,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::{decode, Ack, Decoded, ReceiptReport, Resume};

    const HEARTBEAT: Duration = Duration::from_secs(1);
    const TIMEOUT: Duration = Duration::from_secs(5);

    fn database() -> Uuid {
        Uuid::from_u128(1)
    }

    fn link(now: Instant, shipped: u64) -> SourceLink {
        SourceLink::new(now, database(), origin(), shipped, 64, HEARTBEAT, TIMEOUT)
    }

    fn origin() -> Uuid {
        Uuid::from_u128(7)
    }

    fn ack(received_lsn: u64, durable_lsn: u64) -> Frame<'static> {
        Frame::Ack(Ack {
            database: database(),
            origin: Uuid::nil(),
            received_lsn,
            durable_lsn,
        })
    }

    #[test]
    fn acks_are_capped_at_what_was_shipped() {
        let t0 = Instant::now();
        let mut link = link(t0, 10);
        let acked = |received_lsn, durable_lsn| Heard::Ack {
            received_lsn,
            durable_lsn,
        };
        assert_eq!(link.handle_frame(t0, &ack(50, 40)).unwrap(), acked(10, 10));
        link.shipped(30);
        link.shipped(20);
        assert_eq!(link.shipped_lsn(), 30, "shipped never moves back");
        assert_eq!(link.handle_frame(t0, &ack(25, 20)).unwrap(), acked(25, 20));
        let heartbeat = Frame::Heartbeat(Heartbeat { sent_micros: 0 });
        assert_eq!(link.handle_frame(t0, &heartbeat).unwrap(), Heard::Nothing);
        let resume = Frame::Resume(Resume {
            database: database(),
            origin: Uuid::nil(),
            epoch: 0,
            from_lsn: 0,
        });
        assert!(matches!(
            link.handle_frame(t0, &resume),
            Err(Error::UnexpectedFrame {
                frame: "RESUME",
                ..
            })
        ));
        let other = Frame::Ack(Ack {
            database: Uuid::from_u128(2),
            origin: Uuid::nil(),
            received_lsn: 1,
            durable_lsn: 1,
        });
        assert!(
            link.handle_frame(t0, &other).is_err(),
            "another database's ack"
        );
    }

    #[test]
    fn receipts_are_capped_at_what_was_shipped_and_must_name_the_links_origin() {
        let t0 = Instant::now();
        let mut link = link(t0, 10);
        let report = |origin| {
            Frame::Receipts(ReceiptReport {
                database: database(),
                origin,
                entries: vec![(Uuid::from_u128(3), 4), (Uuid::from_u128(5), 99)],
            })
        };
        assert_eq!(
            link.handle_frame(t0, &report(origin())).unwrap(),
            Heard::Receipts(vec![(Uuid::from_u128(3), 4), (Uuid::from_u128(5), 10)])
        );
        assert!(matches!(
            link.handle_frame(t0, &report(Uuid::from_u128(8))),
            Err(Error::ForeignReceipts { .. })
        ));
    }

    #[test]
    fn heartbeats_fill_silence_on_the_sending_side() {
        let t0 = Instant::now();
        let mut link = link(t0, 0);
        let mut out = Vec::new();
        assert!(!link.poll_heartbeat(t0 + HEARTBEAT / 2, &mut out).unwrap());
        link.write_started(t0 + HEARTBEAT / 2);
        link.write_finished();
        assert!(
            !link.poll_heartbeat(t0 + HEARTBEAT, &mut out).unwrap(),
            "a write counts"
        );
        assert!(link
            .poll_heartbeat(t0 + HEARTBEAT * 3 / 2, &mut out)
            .unwrap());
        assert!(matches!(
            decode(&out),
            Ok(Decoded::Frame {
                frame: Frame::Heartbeat(_),
                ..
            })
        ));
        assert_eq!(link.heartbeat_deadline(), t0 + HEARTBEAT * 5 / 2);
        assert!(matches!(
            link.poll_heartbeat(t0 + TIMEOUT, &mut out),
            Err(Error::LinkTimeout { .. })
        ));
    }

    #[test]
    fn silence_and_blocked_writes_drop_the_link() {
        let t0 = Instant::now();
        let link = self::link(t0, 0);
        assert!(link.handle_timeout(t0 + TIMEOUT / 2, 0).is_ok());
        assert_eq!(link.timeout_deadline(), t0 + TIMEOUT);
        assert!(matches!(
            link.handle_timeout(t0 + TIMEOUT, 0),
            Err(Error::LinkTimeout { .. })
        ));
        let mut link = self::link(t0, 0);
        link.write_started(t0);
        // The replica keeps talking, but stopped reading.
        let heartbeat = Frame::Heartbeat(Heartbeat { sent_micros: 0 });
        link.handle_frame(t0 + TIMEOUT - HEARTBEAT, &heartbeat)
            .unwrap();
        assert!(matches!(
            link.handle_timeout(t0 + TIMEOUT, 0),
            Err(Error::WriteBlocked { .. })
        ));
    }

    #[test]
    fn a_blocked_write_holding_the_ring_half_a_ring_behind_drops_the_link() {
        let t0 = Instant::now();
        let mut link = link(t0, 100);
        link.write_started(t0);
        // Without a ring cursor (a snapshot or binlog pages), lag is no reason.
        assert!(!link.watching_ring());
        assert!(link.handle_timeout(t0, 100 + 1_000).is_ok());
        link.set_holds_ring(true);
        assert!(link.watching_ring());
        assert!(link.handle_timeout(t0, 100 + 32).is_ok(), "half the ring");
        assert!(matches!(
            link.handle_timeout(t0, 100 + 33),
            Err(Error::ReplicaHoldsRing { lag_pages: 33, .. })
        ));
        link.write_finished();
        assert!(
            link.handle_timeout(t0, 100 + 33).is_ok(),
            "writes flow again"
        );
    }

    #[test]
    fn a_long_write_that_moves_is_not_blocked() {
        let t0 = Instant::now();
        let mut link = link(t0, 0);
        link.write_started(t0);
        let mut at = t0;
        while at < t0 + 3 * TIMEOUT {
            at += HEARTBEAT;
            link.bytes_sent(at);
            link.bytes_received(at);
            assert!(link.handle_timeout(at, 0).is_ok());
        }
        assert!(matches!(
            link.handle_timeout(at + TIMEOUT, 0),
            Err(Error::LinkTimeout { .. })
        ));
    }
}
