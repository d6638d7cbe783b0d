//! The replica side of an established link, as a state machine without I/O.
//!
//! It takes frames and time, and hands back what to do with what arrived, the frames to send and
//! when to look at it again, in the manner of quinn-proto's `Connection`. Nothing here touches a
//! socket, a thread or the clock: the driver (`replica.rs`) moves bytes and time in and out, and
//! the deterministic simulator can drive the same machine.
//!
//! - [`ReplicaLink::handle_frame`] judges each frame and says what it carries: page bytes to
//!   ingest into the replica's ring, a snapshot chunk to restore, or nothing (a heartbeat). The
//!   driver does the ingest (which may wait for ring space) or the restore, then reports the
//!   replica's watermarks with [`ReplicaLink::ingested`] or [`ReplicaLink::restored`].
//! - [`ReplicaLink::poll_transmit`] writes what is due: the RESUME first, then the newest ACK
//!   (acks coalesce: only the newest matters), then the receipts of the nodes this replica feeds
//!   ([`ReplicaLink::report`]: they coalesce too, per node), or a heartbeat when nothing was sent
//!   for a heartbeat interval ([`Liveness`]).
//! - [`ReplicaLink::handle_timeout`] fails the link when no byte came from the source for the
//!   link timeout, or when one write has made no progress that long (the driver reports writes
//!   with [`ReplicaLink::write_started`], [`ReplicaLink::bytes_sent`] and
//!   [`ReplicaLink::write_finished`], and arrivals with [`ReplicaLink::bytes_received`]): a
//!   source that stops reading cannot keep the replica's link forever. Silence does not count
//!   while the replica itself does not read, its ring full
//!   ([`ReplicaLink::set_waiting_for_ring`]). [`ReplicaLink::poll_timeout`] says when to
//!   call it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::proto::frame::{encode, Ack, Frame, Heartbeat, ReceiptReport, Resume};
use crate::proto::liveness::{LinkAction, Liveness, WriteWatch};

/// What a frame carried, for the driver to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// Nothing to do (a heartbeat).
    Nothing,
    /// Whole pages (full form), to ingest into the replica's ring; then call
    /// [`ReplicaLink::ingested`].
    Pages(&'a [u8]),
    /// A chunk of a full snapshot; the first one starts a restore that replaces the replica.
    /// After the last one (`last`) the driver finishes the restore and calls
    /// [`ReplicaLink::restored`].
    SnapshotChunk {
        /// The chunk's bytes (may be empty).
        data: &'a [u8],
        /// This is the snapshot's last chunk.
        last: bool,
    },
}

/// Where the replica stands, as the link sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replica {
    /// No replica yet: only a snapshot may come.
    Absent,
    /// Pages may come.
    Following,
    /// A snapshot is arriving; pages may not.
    Restoring,
}

/// The replica side of one link to a source, for one database.
#[derive(Debug)]
pub struct ReplicaLink {
    database: Uuid,
    /// The origin whose log this link follows (nil until a bootstrapping link's snapshot names
    /// it), and the oldest epoch it takes: a run naming another is refused.
    origin: Uuid,
    epoch: u64,
    replica: Replica,
    /// The subscription, until it is sent.
    resume: Option<Resume>,
    /// The newest `(received_lsn, durable_lsn)` not yet sent.
    ack: Option<(u64, u64)>,
    /// Receipts of the nodes this replica feeds, not yet sent: the newest per node.
    receipts: BTreeMap<Uuid, u64>,
    liveness: Liveness,
    write: WriteWatch,
    /// The driver holds pages it cannot ingest until the applier frees ring space, and reads
    /// nothing meanwhile.
    waiting_for_ring: bool,
}

impl ReplicaLink {
    /// A link that was established at `now` and subscribes with `resume` (its `from_lsn` is
    /// `BOOTSTRAP` when the replica does not exist yet).
    pub fn new(now: Instant, resume: Resume, heartbeat: Duration, link_timeout: Duration) -> Self {
        let replica = if resume.from_lsn == crate::route::BOOTSTRAP {
            Replica::Absent
        } else {
            Replica::Following
        };
        Self {
            database: resume.database,
            origin: resume.origin,
            epoch: resume.epoch,
            replica,
            resume: Some(resume),
            ack: None,
            receipts: BTreeMap::new(),
            liveness: Liveness::new(now, heartbeat, link_timeout),
            write: WriteWatch::new(link_timeout),
            waiting_for_ring: false,
        }
    }

    /// A frame arrived at `now`: what it carries, or why the link must close.
    pub fn handle_frame<'a>(&mut self, now: Instant, frame: Frame<'a>) -> Result<Received<'a>> {
        self.liveness.on_receive(now);
        match frame {
            Frame::Pages(pages) if pages.database == self.database => {
                self.check_run(pages.origin, pages.epoch)?;
                match self.replica {
                    Replica::Following => Ok(Received::Pages(pages.pages)),
                    Replica::Absent | Replica::Restoring => Err(Error::UnexpectedFrame {
                        state: "bootstrapping (no replica yet)",
                        frame: "PAGES",
                    }),
                }
            }
            Frame::Snapshot(chunk) if chunk.database == self.database => {
                if self.origin.is_nil() {
                    self.origin = chunk.origin;
                }
                self.check_run(chunk.origin, self.epoch)?;
                self.replica = Replica::Restoring;
                Ok(Received::SnapshotChunk {
                    data: chunk.data,
                    last: chunk.last,
                })
            }
            Frame::Heartbeat(_) => Ok(Received::Nothing),
            Frame::Refuse(refuse) => Err(Error::Refused {
                code: refuse.code as u16,
                reason: refuse.reason,
            }),
            other => Err(Error::UnexpectedFrame {
                state: "following",
                frame: other.kind(),
            }),
        }
    }

    /// Bytes from the source arrived at `now`, whether or not they completed a frame: the link
    /// is alive. A PAGES frame of 256 pages takes over a second on a link slower than 1 MB/s, and
    /// counting only whole frames as life timed such links out forever (found by the simulator).
    pub fn bytes_received(&mut self, now: Instant) {
        self.liveness.on_receive(now);
    }

    /// Bytes of the write in flight left at `now`: it is not blocked, only long.
    pub fn bytes_sent(&mut self, now: Instant) {
        self.write.moved(now);
    }

    /// Refuses a run of another origin than the link follows, or of an older epoch.
    fn check_run(&self, origin: Uuid, epoch: u64) -> Result<()> {
        let known = !self.origin.is_nil();
        if (known && origin != self.origin) || epoch < self.epoch {
            return Err(Error::ForeignRun {
                database: self.database,
                origin,
                epoch,
                expected_origin: self.origin,
                expected_epoch: self.epoch,
            });
        }
        Ok(())
    }

    /// The pages were ingested: the replica now holds every page below `received_lsn`, and
    /// every page below `durable_lsn` is durable. Queues an ACK (replacing an unsent one).
    pub fn ingested(&mut self, received_lsn: u64, durable_lsn: u64) {
        debug_assert_eq!(self.replica, Replica::Following);
        self.queue_ack(received_lsn, durable_lsn);
    }

    /// The snapshot was restored into a new replica holding every page below `received_lsn`:
    /// pages may follow. Queues an ACK.
    pub fn restored(&mut self, received_lsn: u64, durable_lsn: u64) {
        debug_assert_eq!(self.replica, Replica::Restoring);
        self.replica = Replica::Following;
        self.queue_ack(received_lsn, durable_lsn);
    }

    fn queue_ack(&mut self, received_lsn: u64, durable_lsn: u64) {
        self.ack = Some((received_lsn, durable_lsn.min(received_lsn)));
    }

    /// Nodes this replica feeds hold every page below their LSN: report them to the source
    /// (queued, the newest per node; sent once the link knows its origin). The driver calls it
    /// only on links whose peer speaks
    /// [`RECEIPTS_SINCE_VERSION`](crate::proto::RECEIPTS_SINCE_VERSION) or later.
    pub fn report(&mut self, entries: impl IntoIterator<Item = (Uuid, u64)>) {
        for (node, lsn) in entries {
            let queued = self.receipts.entry(node).or_insert(lsn);
            *queued = (*queued).max(lsn);
        }
    }

    /// Encodes into `out` what is due at `now`: the RESUME, the newest ack, the receipts, or a
    /// heartbeat.
    /// Returns whether it wrote anything.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        if let Some(resume) = self.resume.take() {
            encode(&Frame::Resume(resume), out);
        }
        if let Some((received_lsn, durable_lsn)) = self.ack.take() {
            encode(
                &Frame::Ack(Ack {
                    database: self.database,
                    origin: Uuid::nil(),
                    received_lsn,
                    durable_lsn,
                }),
                out,
            );
        }
        if !self.receipts.is_empty() && !self.origin.is_nil() {
            let entries: Vec<(Uuid, u64)> =
                std::mem::take(&mut self.receipts).into_iter().collect();
            for report in ReceiptReport::split(self.database, self.origin, &entries) {
                encode(&Frame::Receipts(report), out);
            }
        }
        if out.len() > start {
            self.liveness.on_send(now);
        } else if let LinkAction::SendHeartbeat = self.liveness.poll(now) {
            encode(&Frame::Heartbeat(Heartbeat { sent_micros: 0 }), out);
        }
        out.len() > start
    }

    /// Whether [`ReplicaLink::poll_transmit`] has something to send before its next timer.
    pub fn wants_transmit(&self) -> bool {
        self.resume.is_some()
            || self.ack.is_some()
            || (!self.receipts.is_empty() && !self.origin.is_nil())
    }

    /// A write of what `poll_transmit` produced began at `now`.
    pub fn write_started(&mut self, now: Instant) {
        self.write.started(now);
    }

    /// The write in flight completed.
    pub fn write_finished(&mut self) {
        self.write.finished();
    }

    /// When `poll_transmit` next has something to send (a heartbeat) or
    /// [`ReplicaLink::handle_timeout`] may fail the link, whichever comes first.
    pub fn poll_timeout(&self) -> Instant {
        self.liveness.deadline().min(self.timeout_deadline())
    }

    /// When [`ReplicaLink::handle_timeout`] may next fail the link (heartbeats aside): the
    /// source's silence or the write in flight reaching the link timeout.
    pub fn timeout_deadline(&self) -> Instant {
        let silence = self.liveness.silence_deadline();
        self.write
            .deadline()
            .map_or(silence, |blocked| silence.min(blocked))
    }

    /// The driver stopped reading at `now` because the replica's ring is full (`true`), or
    /// reads again (`false`). While it does not read it cannot hear the source, so silence is
    /// not held against the link: a replica whose applier is slow keeps its link and lets
    /// backpressure slow the source, instead of dropping the link and having the same pages
    /// sent again (found by the simulator).
    pub fn set_waiting_for_ring(&mut self, now: Instant, waiting: bool) {
        self.waiting_for_ring = waiting;
        self.liveness.on_receive(now);
    }

    /// Fails the link if, at `now`, the source has been silent, or a write blocked, for longer
    /// than the link timeout.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<()> {
        if self.waiting_for_ring {
            self.liveness.on_receive(now);
        }
        if let Some(blocked_for) = self.write.blocked(now) {
            return Err(Error::WriteBlocked { blocked_for });
        }
        match self.liveness.timed_out(now) {
            Some(silent_for) => Err(Error::LinkTimeout { silent_for }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::{decode, Decoded, PagesHeader, Refuse, RefuseCode, SnapshotChunk};
    use crate::route::BOOTSTRAP;

    const HEARTBEAT: Duration = Duration::from_secs(1);
    const TIMEOUT: Duration = Duration::from_secs(5);

    fn database() -> Uuid {
        Uuid::from_u128(1)
    }

    fn link(now: Instant, from_lsn: u64) -> ReplicaLink {
        let resume = Resume {
            database: database(),
            origin: Uuid::nil(),
            epoch: 0,
            from_lsn,
        };
        ReplicaLink::new(now, resume, HEARTBEAT, TIMEOUT)
    }

    /// Every frame `poll_transmit` writes at `now`.
    fn sent(link: &mut ReplicaLink, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        link.poll_transmit(now, &mut out);
        let mut frames = Vec::new();
        let mut rest = &out[..];
        while let Ok(Decoded::Frame { frame, len }) = decode(rest) {
            frames.push(match frame {
                Frame::Ack(ack) => format!("ACK {} {}", ack.received_lsn, ack.durable_lsn),
                Frame::Resume(resume) => format!("RESUME {}", resume.from_lsn),
                other => other.kind().to_string(),
            });
            rest = &rest[len..];
        }
        assert!(rest.is_empty(), "trailing bytes");
        frames
    }

    fn pages_frame(pages: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let header = PagesHeader {
            database: database(),
            origin: Uuid::nil(),
            epoch: 0,
            visited: &[],
            first_lsn: 0,
        };
        crate::proto::frame::encode_pages(&header, &[pages], &mut out);
        out
    }

    fn frame(bytes: &[u8]) -> Frame<'_> {
        match decode(bytes) {
            Ok(Decoded::Frame { frame, .. }) => frame,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resume_goes_first_then_acks_coalesce_to_the_newest() {
        let t0 = Instant::now();
        let mut link = link(t0, 7);
        link.ingested(9, 8);
        link.ingested(12, 20);
        assert_eq!(sent(&mut link, t0), ["RESUME 7", "ACK 12 12"]);
        // Nothing more is due until the heartbeat interval passes without a send.
        assert!(sent(&mut link, t0 + HEARTBEAT / 2).is_empty());
        assert_eq!(sent(&mut link, t0 + HEARTBEAT), ["HEARTBEAT"]);
        assert_eq!(link.poll_timeout(), t0 + 2 * HEARTBEAT);
    }

    #[test]
    fn receipts_coalesce_per_node_and_wait_for_the_origin() {
        let t0 = Instant::now();
        let mut link = link(t0, BOOTSTRAP);
        sent(&mut link, t0);
        link.report([(Uuid::from_u128(5), 3), (Uuid::from_u128(4), 9)]);
        link.report([(Uuid::from_u128(5), 8), (Uuid::from_u128(4), 2)]);
        assert!(
            !link.wants_transmit() && sent(&mut link, t0).is_empty(),
            "no origin known yet: the report waits"
        );
        let mut snapshot = Vec::new();
        let chunk = SnapshotChunk {
            database: database(),
            origin: Uuid::from_u128(7),
            snapshot_lsn: 0,
            offset: 0,
            last: true,
            data: &[],
        };
        encode(&Frame::Snapshot(chunk), &mut snapshot);
        link.handle_frame(t0, frame(&snapshot)).unwrap();
        link.restored(10, 10);
        assert!(link.wants_transmit());
        let mut out = Vec::new();
        link.poll_transmit(t0, &mut out);
        let mut rest = &out[..];
        let mut reports = Vec::new();
        while let Ok(Decoded::Frame { frame, len }) = decode(rest) {
            if let Frame::Receipts(report) = frame {
                assert_eq!(report.origin, Uuid::from_u128(7));
                reports.push(report.entries);
            }
            rest = &rest[len..];
        }
        assert_eq!(
            reports,
            [vec![(Uuid::from_u128(4), 9), (Uuid::from_u128(5), 8)]],
            "one report, sorted by node, the newest per node"
        );
        assert!(!link.wants_transmit());
    }

    #[test]
    fn pages_pass_only_while_following_and_a_snapshot_switches_to_following_when_restored() {
        let t0 = Instant::now();
        let page = vec![0u8; pagemesh_logpage::PAGE_SIZE];
        let pages = pages_frame(&page);
        let mut bootstrapping = link(t0, BOOTSTRAP);
        assert!(matches!(
            bootstrapping.handle_frame(t0, frame(&pages)),
            Err(Error::UnexpectedFrame { frame: "PAGES", .. })
        ));
        let mut chunk = Vec::new();
        encode(
            &Frame::Snapshot(SnapshotChunk {
                database: database(),
                origin: Uuid::nil(),
                snapshot_lsn: 0,
                offset: 0,
                last: true,
                data: b"abc",
            }),
            &mut chunk,
        );
        let mut link = link(t0, BOOTSTRAP);
        assert_eq!(
            link.handle_frame(t0, frame(&chunk)).unwrap(),
            Received::SnapshotChunk {
                data: b"abc",
                last: true
            }
        );
        assert!(
            link.handle_frame(t0, frame(&pages)).is_err(),
            "pages mid-restore"
        );
        let mut link = self::link(t0, BOOTSTRAP);
        link.handle_frame(t0, frame(&chunk)).unwrap();
        link.restored(40, 30);
        assert_eq!(
            link.handle_frame(t0, frame(&pages)).unwrap(),
            Received::Pages(&page[..])
        );
        assert_eq!(
            sent(&mut link, t0),
            ["RESUME 18446744073709551615", "ACK 40 30"]
        );
    }

    #[test]
    fn refusals_and_foreign_frames_close_the_link() {
        let t0 = Instant::now();
        let mut refuse = Vec::new();
        encode(
            &Frame::Refuse(Refuse::new(RefuseCode::UnknownDatabase, "no such database")),
            &mut refuse,
        );
        assert!(matches!(
            link(t0, 0).handle_frame(t0, frame(&refuse)),
            Err(Error::Refused { code: 6, .. })
        ));
        let mut ack = Vec::new();
        encode(
            &Frame::Ack(Ack {
                database: database(),
                origin: Uuid::nil(),
                received_lsn: 1,
                durable_lsn: 1,
            }),
            &mut ack,
        );
        assert!(matches!(
            link(t0, 0).handle_frame(t0, frame(&ack)),
            Err(Error::UnexpectedFrame { frame: "ACK", .. })
        ));
    }

    #[test]
    fn silence_and_a_blocked_write_time_the_link_out() {
        let t0 = Instant::now();
        let mut link = link(t0, 0);
        let mut heartbeat = Vec::new();
        encode(
            &Frame::Heartbeat(Heartbeat { sent_micros: 0 }),
            &mut heartbeat,
        );
        // Any frame counts as life.
        link.handle_frame(t0 + 4 * HEARTBEAT, frame(&heartbeat))
            .unwrap();
        assert!(link.handle_timeout(t0 + TIMEOUT).is_ok());
        assert!(matches!(
            link.handle_timeout(t0 + 4 * HEARTBEAT + TIMEOUT),
            Err(Error::LinkTimeout { .. })
        ));
        // A write that never completes: the peer stopped reading.
        let mut link = self::link(t0, 0);
        link.write_started(t0);
        assert_eq!(link.poll_timeout(), t0 + HEARTBEAT);
        let mut alive = t0;
        while alive < t0 + TIMEOUT {
            alive += HEARTBEAT / 2;
            link.handle_frame(alive, frame(&heartbeat)).unwrap();
        }
        assert!(matches!(
            link.handle_timeout(t0 + TIMEOUT + Duration::from_millis(1)),
            Err(Error::WriteBlocked { .. })
        ));
        link.write_finished();
        assert!(link
            .handle_timeout(t0 + TIMEOUT + Duration::from_millis(1))
            .is_ok());
    }

    #[test]
    fn bytes_that_move_keep_a_slow_link_and_a_full_ring_keeps_a_quiet_one() {
        let t0 = Instant::now();
        // A frame that takes longer than the link timeout to arrive, its bytes trickling in.
        let mut link = link(t0, 0);
        let mut at = t0;
        while at < t0 + 3 * TIMEOUT {
            at += HEARTBEAT;
            link.bytes_received(at);
            assert!(link.handle_timeout(at).is_ok());
        }
        // A long write whose bytes leave is not blocked.
        link.write_started(at);
        for _ in 0..10 {
            at += HEARTBEAT;
            link.bytes_sent(at);
            link.bytes_received(at);
        }
        assert!(link.handle_timeout(at).is_ok());
        // The replica's ring is full: it reads nothing, so it hears nothing, for as long as that
        // lasts; once it reads again silence counts from then.
        link.write_finished();
        link.set_waiting_for_ring(at, true);
        for _ in 0..10 {
            at += TIMEOUT;
            assert!(link.handle_timeout(at).is_ok());
            assert!(link.timeout_deadline() > at, "deadlines stay ahead");
        }
        link.set_waiting_for_ring(at, false);
        assert!(link.handle_timeout(at + TIMEOUT / 2).is_ok());
        assert!(matches!(
            link.handle_timeout(at + TIMEOUT),
            Err(Error::LinkTimeout { .. })
        ));
    }

    #[test]
    fn runs_of_another_origin_or_an_older_epoch_are_refused() {
        let t0 = Instant::now();
        let (ours, theirs) = (Uuid::from_u128(7), Uuid::from_u128(8));
        let resume = Resume {
            database: database(),
            origin: ours,
            epoch: 3,
            from_lsn: 0,
        };
        let page = vec![0u8; pagemesh_logpage::PAGE_SIZE];
        let run = |origin, epoch| {
            let mut out = Vec::new();
            let header = PagesHeader {
                database: database(),
                origin,
                epoch,
                visited: &[],
                first_lsn: 0,
            };
            crate::proto::frame::encode_pages(&header, &[&page], &mut out);
            out
        };
        let mut link = ReplicaLink::new(t0, resume, HEARTBEAT, TIMEOUT);
        assert!(link.handle_frame(t0, frame(&run(ours, 3))).is_ok());
        assert!(
            link.handle_frame(t0, frame(&run(ours, 4))).is_ok(),
            "newer epochs pass"
        );
        assert!(matches!(
            link.handle_frame(t0, frame(&run(theirs, 3))),
            Err(Error::ForeignRun { origin, .. }) if origin == theirs
        ));
        assert!(matches!(
            link.handle_frame(t0, frame(&run(ours, 2))),
            Err(Error::ForeignRun { epoch: 2, .. })
        ));
        // A bootstrapping link learns its origin from the snapshot, then holds pages to it.
        let mut link = self::link(t0, BOOTSTRAP);
        let mut chunk = Vec::new();
        encode(
            &Frame::Snapshot(SnapshotChunk {
                database: database(),
                origin: ours,
                snapshot_lsn: 0,
                offset: 0,
                last: true,
                data: b"",
            }),
            &mut chunk,
        );
        link.handle_frame(t0, frame(&chunk)).unwrap();
        link.restored(0, 0);
        assert!(link.handle_frame(t0, frame(&run(theirs, 0))).is_err());
        assert!(link.handle_frame(t0, frame(&run(ours, 0))).is_ok());
    }
}
