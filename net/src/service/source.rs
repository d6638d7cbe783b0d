//! The source side of a link: admit the replica's RESUME, then ship pages (binlog catch-up, ring
//! streaming, snapshots) and hand its acks to the database's [`AckSink`].

use std::cell::{Cell, RefCell};
use std::future::poll_fn;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagemesh_logpage::{Backlog, Log};
use tokio::sync::Notify;
use uuid::Uuid;

use super::admission::Reason;
use super::link::{handshake, LinkControl};
use super::shipper::{Shipper, HISTORY_BATCH_PAGES};
use super::snapshot::send_snapshot;
use super::source_link::{Heard, SourceLink};
use super::{AckSink, ReceiptBook, Runtime, SourceDatabase, BOOTSTRAP, RECEIPT_NODES_MAX};
use crate::error::{Error, Result};
use crate::proto::frame::{
    encode, Frame, Have, Refuse, RefuseCode, Watch, PATH_SINCE_VERSION, WATCH_SINCE_VERSION,
};
use crate::proto::handshake::PeerInfo;
use crate::route::{admit, refuse_loop, Admitted, Feed, Served};
use crate::transport::{
    sleep, sleep_until, spawn_local, timeout, Connection, FrameReader, FrameWriter, Progress,
};

/// Source side of an accepted link, booked in `runtime.links` and admitted as `id`.
pub(super) async fn serve_link(
    runtime: Rc<Runtime>,
    id: u64,
    control: Rc<LinkControl>,
    connection: Connection,
    peer: SocketAddr,
) {
    let outcome = match authenticate(&runtime, &control, id, connection, peer).await {
        Ok((reader, writer, info)) => serve_replica(&runtime, &control, id, reader, writer, info)
            .await
            .map_err(Some),
        Err(error) => {
            // An evicted connection was counted when it was evicted.
            if !control.closed.get() {
                runtime.refused(match error {
                    Error::HandshakeTimeout => Reason::HandshakeTimeout,
                    _ => Reason::HandshakeFailed,
                });
            }
            tracing::debug!(%peer, %error, "connection closed before it authenticated");
            Err(None)
        }
    };
    control.close();
    runtime.links.borrow_mut().remove(&id);
    runtime.admission.borrow_mut().closed(id);
    match outcome {
        Ok(()) => tracing::info!(%peer, "link closed"),
        Err(Some(error)) => {
            runtime.metrics.link_failed(&error);
            tracing::warn!(%peer, %error, "link closed");
        }
        // Counted and logged with the other refusals.
        Err(None) => {}
    }
}

/// Runs the acceptor's handshake under the handshake's limits, then books the link as
/// authenticated; returns its halves and the peer.
pub(super) async fn authenticate(
    runtime: &Runtime,
    control: &LinkControl,
    id: u64,
    connection: Connection,
    peer: SocketAddr,
) -> Result<(FrameReader, FrameWriter, PeerInfo)> {
    let (mut reader, mut writer, shutdown) = connection.split(peer)?;
    *control.shutdown.borrow_mut() = Some(shutdown);
    let info = handshake(runtime, &mut reader, &mut writer, false).await?;
    if !runtime.admission.borrow_mut().authenticated(id) {
        runtime.refused(Reason::LinksFull);
        return Err(Error::LinksFull {
            max: runtime.config.links_max,
        });
    }
    // A replica sends only RESUME, acks and heartbeats: nothing it sends may be large.
    reader.expect_control();
    Ok((reader, writer, info))
}

/// Serves an authenticated replica: RESUME, then pages until the link ends.
pub(super) async fn serve_replica(
    runtime: &Rc<Runtime>,
    control: &Rc<LinkControl>,
    id: u64,
    mut reader: FrameReader,
    mut writer: FrameWriter,
    info: PeerInfo,
) -> Result<()> {
    let peer = reader.peer();
    let resume = match timeout(runtime.config.link_timeout, reader.next()).await {
        Err(_) => {
            return Err(Error::LinkTimeout {
                silent_for: runtime.config.link_timeout,
            })
        }
        Ok(frame) => match frame? {
            Some(Frame::Resume(resume)) => resume,
            Some(Frame::Watch(watch)) if info.version >= WATCH_SINCE_VERSION => {
                return serve_watcher(runtime, control, id, reader, writer, info, watch).await
            }
            Some(Frame::Command(message)) => {
                let first = (message.request_id, message.payload.to_vec());
                return super::control::serve_commands(
                    runtime, control, reader, writer, &info, first,
                )
                .await;
            }
            Some(Frame::Peers(list)) if info.version >= PATH_SINCE_VERSION => {
                return super::gossip::serve_gossip(runtime, control, reader, writer, &info, list)
                    .await
            }
            Some(other) => {
                return Err(Error::UnexpectedFrame {
                    state: "awaiting RESUME",
                    frame: other.kind(),
                })
            }
            None => return Ok(()),
        },
    };
    let (source, admitted) = match admit_link(
        runtime,
        id,
        resume.database,
        resume.origin,
        resume.from_lsn,
        Some(info.node),
    ) {
        Ok(admission) => admission,
        Err(mut reason) => {
            tracing::info!(%peer, replica = %info.name, reason = %reason.1, "refused a subscription");
            if info.version < PATH_SINCE_VERSION {
                // A version 3 node knows no RoutingLoop code; the reason still says it.
                reason.0 = RefuseCode::UnknownDatabase;
            }
            return refuse(&mut writer, reason).await;
        }
    };
    if admitted.reseeded {
        let end = source.log().committed_lsn();
        tracing::warn!(%peer, replica = %info.name, from_lsn = resume.from_lsn, end, "replica claims pages beyond this log; re-seeding it from a snapshot");
    }
    let from_lsn = admitted.from_lsn;
    tracing::info!(%peer, replica = %info.name, database = %resume.database, from_lsn, "replica subscribed");
    let received = if from_lsn == BOOTSTRAP { 0 } else { from_lsn };
    let sink = source.attach(&info.name, info.node, received);
    let receipts = Receipted {
        book: runtime.receipt_book(resume.database),
        database: resume.database,
        peer: info.node,
        own: runtime.config.node,
    };
    // The RESUME says the replica holds every page below `from_lsn`: a receipt, as an ACK's is.
    // A replica of an empty database acks nothing until pages come, so without this its relay
    // never reported it upstream, and the origin never counted it (tests/mesh.rs, gossip test,
    // flaked waiting for three nodes holding the empty database).
    if from_lsn != BOOTSTRAP && !receipts.book.record(info.node, from_lsn) {
        return Err(Error::TooManyReceipts {
            database: resume.database,
            max: RECEIPT_NODES_MAX,
        });
    }
    let progress = reader.progress();
    let link = Rc::new(Shipping {
        link: RefCell::new(SourceLink::new(
            Instant::now(),
            resume.database,
            source.origin(),
            received,
            source.log().slots(),
            runtime.config.heartbeat,
            runtime.config.link_timeout,
        )),
        changed: Notify::new(),
        seen: Cell::new(progress.counts()),
        progress,
    });
    spawn_local(enforce_timeouts(
        Rc::clone(control),
        Rc::clone(&link),
        source.log().clone(),
    ));
    // The ack reader.
    let acks = {
        let (control, link) = (Rc::clone(control), Rc::clone(&link));
        spawn_local(async move {
            let outcome = read_acks(&mut reader, &*sink, &receipts, &link).await;
            control.close();
            outcome
        })
    };
    let shipped = ship(control, &source, &mut writer, from_lsn, &link).await;
    control.close();
    let acked = acks.await.unwrap_or(Ok(()));
    shipped.and(acked)
}

/// Why a link is refused: the code and the reason sent in REFUSE.
type Refusal = (RefuseCode, String);

/// Admits link `id` to `database` of `origin` from `from_lsn` on (`route::admit`), and, for a
/// replica that would follow this node (`follower`), only if it is not on this node's way to
/// the origin (`route::refuse_loop`); books the link under the database, so withdrawing it
/// closes the link. `Err` is the code and reason to REFUSE.
fn admit_link(
    runtime: &Runtime,
    id: u64,
    database: Uuid,
    origin: Uuid,
    from_lsn: u64,
    follower: Option<Uuid>,
) -> std::result::Result<(Arc<dyn SourceDatabase>, Admitted), Refusal> {
    let source = runtime.sources.borrow().get(&database).cloned();
    let served = source.as_ref().map(|source| Served {
        origin: source.origin(),
        committed_lsn: source.log().committed_lsn(),
        relay: source.log().is_follower(),
    });
    let admitted = admit(served, origin, from_lsn).map_err(|why| {
        (
            RefuseCode::UnknownDatabase,
            format!("database {database}: {why}"),
        )
    })?;
    if let Some(follower) = follower {
        refuse_loop(&runtime.path(database), follower).map_err(|why| {
            (
                RefuseCode::RoutingLoop,
                format!("database {database}: {why}"),
            )
        })?;
    }
    let source = source.ok_or_else(|| {
        (
            RefuseCode::UnknownDatabase,
            format!("database {database}: no such database here"),
        )
    })?;
    if let Some(entry) = runtime.links.borrow_mut().get_mut(&id) {
        entry.0 = Some(database);
    }
    Ok((source, admitted))
}

/// Serves a *lazy* link: the peer follows the database from another holder and only wants to
/// hear how far this node has got, in a HAVE frame every heartbeat interval, so that it can move
/// here (GRAFT: a RESUME on a new link) if its own upstream stalls. The peer answers each HAVE
/// with a HEARTBEAT; silence beyond the link timeout, or any other frame, ends the link. Holds
/// nothing per link but the socket.
async fn serve_watcher(
    runtime: &Rc<Runtime>,
    control: &Rc<LinkControl>,
    id: u64,
    mut reader: FrameReader,
    mut writer: FrameWriter,
    info: PeerInfo,
    watch: Watch,
) -> Result<()> {
    let peer = reader.peer();
    let source = match admit_link(runtime, id, watch.database, watch.origin, 0, None) {
        Ok((source, _)) => source,
        Err(reason) => {
            tracing::info!(%peer, watcher = %info.name, reason = %reason.1, "refused a watch");
            return refuse(&mut writer, reason).await;
        }
    };
    tracing::debug!(%peer, watcher = %info.name, database = %watch.database, "watcher subscribed");
    let link_timeout = runtime.config.link_timeout;
    let heard = {
        let control = Rc::clone(control);
        spawn_local(async move {
            let outcome = read_watcher(&mut reader, link_timeout).await;
            control.close();
            outcome
        })
    };
    let origin = source.origin();
    let told = loop {
        // This node's way to the origin: a watcher on it must not follow this node.
        let path = if info.version >= PATH_SINCE_VERSION {
            runtime.path(watch.database)
        } else {
            Vec::new()
        };
        let have = Frame::Have(Have {
            database: watch.database,
            origin,
            lsn: source.log().committed_lsn(),
            path,
        });
        let mut out = writer.buffer();
        encode(&have, &mut out);
        if let Err(error) = writer.write(out).await {
            break Err(error);
        }
        tokio::select! {
            () = sleep(runtime.config.heartbeat) => {}
            () = control.closed() => break Ok(()),
        }
    };
    control.close();
    let heard = heard.await.unwrap_or(Ok(()));
    heard.and(told)
}

/// A watcher's side of its lazy link: a HEARTBEAT for each HAVE, nothing else.
async fn read_watcher(reader: &mut FrameReader, link_timeout: Duration) -> Result<()> {
    loop {
        match timeout(link_timeout, reader.next()).await {
            Err(_) => {
                return Err(Error::LinkTimeout {
                    silent_for: link_timeout,
                })
            }
            Ok(frame) => match frame? {
                None => return Ok(()),
                Some(Frame::Heartbeat(_)) => {}
                Some(other) => {
                    return Err(Error::UnexpectedFrame {
                        state: "serving a watcher",
                        frame: other.kind(),
                    })
                }
            },
        }
    }
}

/// Sends REFUSE with `reason`; the link then closes. Refusing is this node's decision, logged
/// by the caller, not a failure of the link.
pub(super) async fn refuse(writer: &mut FrameWriter, refusal: Refusal) -> Result<()> {
    let (code, reason) = refusal;
    let mut out = writer.buffer();
    encode(&Frame::Refuse(Refuse::new(code, &reason)), &mut out);
    writer.write(out).await
}

/// The link's tasks share its state machine, and a wake-up for the timer task when a write
/// starts or the shipper takes or drops a ring cursor.
pub(super) struct Shipping {
    pub(super) link: RefCell<SourceLink>,
    changed: Notify,
    progress: Rc<Progress>,
    /// The socket's counters when the machine last heard of them.
    seen: Cell<(u64, u64)>,
}

impl Shipping {
    /// `writer.write(batch)`, reported to the machine (a blocked write is what its timeouts
    /// watch).
    pub(super) async fn write(&self, writer: &mut FrameWriter, batch: Vec<u8>) -> Result<()> {
        self.link.borrow_mut().write_started(Instant::now());
        self.changed.notify_one();
        let written = writer.write(batch).await;
        self.link.borrow_mut().write_finished();
        written
    }

    /// Tells the machine whether bytes moved since it last heard (a slow link is not a dead
    /// one), then whether, at `now` with the log at `committed_lsn`, a rule drops the link.
    fn handle_timeout(&self, now: Instant, committed_lsn: u64) -> Result<()> {
        let (received, sent) = self.progress.moved_since(&self.seen);
        let mut link = self.link.borrow_mut();
        if received {
            link.bytes_received(now);
        }
        if sent {
            link.bytes_sent(now);
        }
        link.handle_timeout(now, committed_lsn)
    }

    fn set_holds_ring(&self, holds_ring: bool) {
        self.link.borrow_mut().set_holds_ring(holds_ring);
        self.changed.notify_one();
    }
}

/// How often the ring-lag rule is checked while it is armed (a write blocked while the shipper
/// holds a ring cursor): the log grows without telling the link.
const RING_WATCH_PERIOD: Duration = Duration::from_millis(20);

/// Closes the link when its machine says so (the replica silent or a write blocked for the link
/// timeout, or a blocked write holding the ring half a ring behind). Reads and writes cannot be
/// raced against a timer (io_uring operations are not safely cancellable), so this shuts the
/// socket down instead, which completes them with an error.
async fn enforce_timeouts(control: Rc<LinkControl>, shipping: Rc<Shipping>, log: Log) {
    loop {
        let deadline = {
            let link = shipping.link.borrow();
            let deadline = link.timeout_deadline();
            if link.watching_ring() {
                deadline.min(Instant::now() + RING_WATCH_PERIOD)
            } else {
                deadline
            }
        };
        tokio::select! {
            () = sleep_until(deadline) => {}
            () = shipping.changed.notified() => {}
            () = control.closed() => return,
        }
        let verdict = shipping.handle_timeout(Instant::now(), log.committed_lsn());
        if let Err(error) = verdict {
            tracing::warn!(%error, "closing link");
            control.close();
            return;
        }
    }
}

/// Where a link's receipts go besides its [`AckSink`]: the database's book, reported upstream.
pub(super) struct Receipted {
    book: Rc<ReceiptBook>,
    database: Uuid,
    /// The replica's node.
    peer: Uuid,
    /// This node (a loop may report it: it is not news here).
    own: Uuid,
}

impl Receipted {
    fn record(&self, sink: &dyn AckSink, node: Uuid, lsn: u64) -> Result<()> {
        if node == self.own {
            return Ok(());
        }
        if !sink.report(node, lsn) || !self.book.record(node, lsn) {
            return Err(Error::TooManyReceipts {
                database: self.database,
                max: RECEIPT_NODES_MAX,
            });
        }
        Ok(())
    }
}

pub(super) async fn read_acks(
    reader: &mut FrameReader,
    sink: &dyn AckSink,
    receipts: &Receipted,
    shipping: &Shipping,
) -> Result<()> {
    loop {
        let Some(frame) = reader.next().await? else {
            return Ok(());
        };
        let heard = shipping
            .link
            .borrow_mut()
            .handle_frame(Instant::now(), &frame)?;
        match heard {
            Heard::Nothing => {}
            Heard::Ack {
                received_lsn,
                durable_lsn,
            } => {
                sink.ack(received_lsn, durable_lsn);
                if !receipts.book.record(receipts.peer, received_lsn) {
                    return Err(Error::TooManyReceipts {
                        database: receipts.database,
                        max: RECEIPT_NODES_MAX,
                    });
                }
            }
            Heard::Receipts(entries) => {
                for (node, lsn) in entries {
                    receipts.record(sink, node, lsn)?;
                }
            }
        }
    }
}

/// What woke the shipper.
pub(super) enum Wake {
    Ready(pagemesh_logpage::Result<Backlog>),
    Tick,
    Linger,
    Closed,
}

/// Ready pages a shipper lets build before it sends them unasked. One send of a run costs about
/// what one of a page does on both ends (a wake-up, a write, the peer's read and one ack), and a
/// synchronous writer with a window of commits in flight waits on pages long shipped; a writer
/// that waits on a page not shipped yet asks for it (`Log::request_ship`, a seal request), so
/// this delays no commit. Measured (`bench replicate --inflight 16,256 --variants async,sync`,
/// two runs of each build): `sync@256/async` 0.76 and 0.72 with batches of 2 pages, 0.64 and
/// 0.66 with 4, 0.88 and 0.87 with 8, 0.82 and 0.88 with 16 (Little estimates 0.88–0.91).
const SHIP_BATCH_PAGES: u64 = 8;

/// How long ready pages that nobody asked for wait for the batch to fill (asynchronous replicas):
/// the most a batch adds to their lag.
const SHIP_LINGER: Duration = Duration::from_micros(500);

/// Sends `source`'s pages from `from_lsn` on, forever: binlog catch-up, ring streaming, snapshots.
/// What goes next and how it is framed is the [`Shipper`]'s decision; reading and writing are
/// this driver's.
pub(super) async fn ship(
    control: &LinkControl,
    source: &Arc<dyn SourceDatabase>,
    writer: &mut FrameWriter,
    from_lsn: u64,
    shipping: &Shipping,
) -> Result<()> {
    let log = source.log().clone();
    let database = source.uuid();
    let mut shipper = Shipper::new(database, source.origin(), from_lsn, log.slots());
    let mut scratch = Vec::new();
    loop {
        if control.closed.get() {
            return Ok(());
        }
        let next = match shipper.feed() {
            Feed::Snapshot => {
                let lsn = send_snapshot(control, source, writer, shipping).await?;
                shipper.snapshot_sent(lsn);
                shipping.link.borrow_mut().shipped(lsn);
                continue;
            }
            Feed::Binlog { from_lsn } => {
                scratch.clear();
                let history = source
                    .history(from_lsn, HISTORY_BATCH_PAGES, &mut scratch)
                    .map_err(|source| Error::Source {
                        database,
                        op: "read binlog",
                        source,
                    })?;
                let mut batch = writer.buffer();
                if let Some(shipped) =
                    shipper.ship_history(log.epoch(), history, &scratch, &mut batch)
                {
                    shipping.link.borrow_mut().shipped(shipped);
                    shipping.write(writer, batch).await?;
                }
                continue;
            }
            Feed::Ring { from_lsn } => from_lsn,
        };
        // Caught up with the binlog: stream from the ring, if it still holds `next`.
        let mut cursor = match log.cursor(next) {
            Ok(cursor) => cursor,
            Err(pagemesh_logpage::Error::BelowHorizon { .. }) => {
                shipper.ring_below_horizon();
                continue;
            }
            Err(error) => return Err(Error::Log(error)),
        };
        tracing::debug!(lsn = next, "streaming from the ring");
        let _holding = HoldsRing::new(shipping);
        // When the pages nobody asked for must go even if the batch has not filled.
        let mut linger_due: Option<Instant> = None;
        loop {
            let heartbeat_due = shipping.link.borrow().heartbeat_deadline();
            // A relay ships what it ingests at once: its upstream's waiters cannot ask it to.
            let pages_min =
                if log.is_follower() || linger_due.is_some_and(|due| Instant::now() >= due) {
                    1
                } else {
                    SHIP_BATCH_PAGES
                };
            let wake = tokio::select! {
                ready = poll_fn(|cx| cursor.poll_paced(cx, pages_min)) => Wake::Ready(ready),
                () = sleep_until(heartbeat_due) => Wake::Tick,
                () = sleep_until(linger_due.unwrap_or(heartbeat_due)), if linger_due.is_some() => {
                    Wake::Linger
                }
                () = control.closed() => Wake::Closed,
            };
            match wake {
                Wake::Closed => return Ok(()),
                Wake::Ready(Err(pagemesh_logpage::Error::Closed)) => return Ok(()),
                Wake::Ready(Err(error)) => return Err(Error::Log(error)),
                Wake::Ready(Ok(Backlog::Started)) => {
                    linger_due.get_or_insert_with(|| Instant::now() + SHIP_LINGER);
                }
                // The next poll asks for one page.
                Wake::Linger => {}
                Wake::Tick => {
                    let mut batch = writer.buffer();
                    let due = shipping
                        .link
                        .borrow_mut()
                        .poll_heartbeat(Instant::now(), &mut batch)?;
                    if due {
                        shipping.write(writer, batch).await?;
                    }
                }
                Wake::Ready(Ok(Backlog::Ship)) => {
                    linger_due = None;
                    let mut batch = writer.buffer();
                    let Some(shipped) = shipper.ship_ring(&mut cursor, log.epoch(), &mut batch)?
                    else {
                        continue;
                    };
                    shipping.link.borrow_mut().shipped(shipped.shipped_lsn);
                    shipping.write(writer, batch).await?;
                    if shipped.leave_ring {
                        tracing::info!(
                            lsn = shipped.shipped_lsn,
                            lag_pages = shipped.lag_pages,
                            "replica lags: back to the binlog"
                        );
                        break;
                    }
                }
            }
        }
    }
}

/// The shipper holds a ring cursor until this is dropped (see `SourceLink`'s ring-lag rule).
struct HoldsRing<'a>(&'a Shipping);

impl<'a> HoldsRing<'a> {
    fn new(shipping: &'a Shipping) -> Self {
        shipping.set_holds_ring(true);
        Self(shipping)
    }
}

impl Drop for HoldsRing<'_> {
    fn drop(&mut self) {
        self.0.set_holds_ring(false);
    }
}
