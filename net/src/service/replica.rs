//! The replica side of a link: subscribe (RESUME), ingest pages into the replica's ring and ack
//! them on receipt, restore snapshots; reconnect with backoff when a link ends. The replica is
//! served onward while the subscription lasts (each new generation as soon as it is restored),
//! and the receipts its own replicas report go upstream in RECEIPTS frames.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pagemesh_logpage::PAGE_SIZE;
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use super::link::{handshake, LinkControl};
use super::replica_link::{Received, ReplicaLink};
use super::snapshot::{ChunkReader, RestoreJob};
use super::watch::{move_due, watch_holder, Move, Routing};
use super::{
    lock, ReceiptBook, ReplicaDatabase, ReplicaStore, Runtime, SourceDatabase, SubscriptionStatus,
    BOOTSTRAP,
};
use crate::error::{Error, Result};
use crate::proto::frame::{RefuseCode, Resume, RECEIPTS_SINCE_VERSION};
use crate::route::{Graft, Upstreams};
use crate::transport::{
    sleep, sleep_until, spawn_local, Connection, FrameReader, FrameWriter, Progress,
};

/// Replica side: keeps one subscription alive until unsubscribed, following one holder of the
/// database at a time, chosen by [`Upstreams`] (nearest first, the next at once when a link fails
/// or is refused, backing off only after a whole round failed), and watching the others (lazy
/// links, `watch.rs`) to move to one of them when the followed holder stalls (a graft). Stops
/// serving the replica at the end if `withdraw_at_end` (a discovered subscription that only
/// takes a new holder list keeps serving it).
pub(super) async fn follow(
    runtime: Rc<Runtime>,
    control: Rc<LinkControl>,
    upstreams: Upstreams<SocketAddr>,
    database: Uuid,
    store: Arc<dyn ReplicaStore>,
    status: Arc<Mutex<SubscriptionStatus>>,
    withdraw_at_end: bool,
) {
    if let Some(replica) = store.current() {
        runtime.serve(replica);
    }
    runtime
        .following
        .borrow_mut()
        .insert(database, Arc::clone(&status));
    let routing = Routing::new(upstreams);
    let holders = routing.upstreams.borrow().holders().len();
    if holders > 1 {
        for holder in 0..holders {
            spawn_local(watch_holder(
                Rc::clone(&runtime),
                Rc::clone(&control),
                Rc::clone(&routing),
                holder,
                database,
                Arc::clone(&store),
            ));
        }
    }
    while !control.closed.get() {
        let addr = *routing.upstreams.borrow().current();
        lock(&status).upstream = Some(addr);
        let link = LinkControl::new();
        routing.heard.set(false);
        let moving = Cell::new(None);
        // A due move closes the link; the link's own ending is then the only way out.
        let followed = async {
            tokio::select! {
                outcome = follow_link(&runtime, &link, addr, database, &store, &status, &routing) => outcome,
                () = async {
                    let period = runtime.config.heartbeat;
                    moving.set(Some(move_due(&routing, &store, &status, period).await));
                    link.close();
                    std::future::pending::<()>().await;
                }, if holders > 1 => Ok(()),
            }
        };
        let outcome = tokio::select! {
            outcome = followed => outcome,
            () = control.closed() => Ok(()),
        };
        link.close();
        let was_up = routing.heard.get();
        *routing.link_progress.borrow_mut() = None;
        routing.followed.set(None);
        runtime.set_path(database, Vec::new());
        let wait = match moving.get() {
            Some(Move::Graft(graft)) => {
                let mut upstreams = routing.upstreams.borrow_mut();
                upstreams.graft(graft.holder());
                let to = upstreams.current();
                match graft {
                    Graft::Stalled { .. } => {
                        tracing::info!(%database, from = %addr, %to, "the followed holder stalled; grafting the one that offers the missing pages")
                    }
                    Graft::Faster { lead, .. } => {
                        tracing::info!(%database, from = %addr, %to, ?lead, "a faster path: grafting the holder whose pages come sooner")
                    }
                }
                lock(&status).grafts += 1;
                Duration::ZERO
            }
            Some(Move::Leave) => {
                let mut upstreams = routing.upstreams.borrow_mut();
                let wait = upstreams.ended(was_up);
                tracing::warn!(%database, from = %addr, next = %upstreams.current(), "routing loop: the followed holder's way to the origin passes through this node; leaving it");
                lock(&status).loops += 1;
                wait
            }
            None => routing.upstreams.borrow_mut().ended(was_up),
        };
        {
            let mut state = lock(&status);
            if let Err(Error::Refused { code, .. }) = &outcome {
                if RefuseCode::from_u16(*code) == Some(RefuseCode::RoutingLoop) {
                    state.loops += 1;
                }
            }
            if let (Err(error), None) = (&outcome, moving.get()) {
                runtime.metrics.link_failed(error);
                let next = *routing.upstreams.borrow().current();
                // A holder that served and went away, or a whole round that failed, is news; a
                // holder that cannot serve yet (a relay still bootstrapping, or behind) is not.
                if was_up || !wait.is_zero() {
                    tracing::warn!(%addr, %database, %error, %next, ?wait, "replication link ended; following the next holder");
                } else {
                    tracing::info!(%addr, %database, %error, %next, "holder did not serve; trying the next");
                }
                state.last_error = Some(error.to_string());
                state.last_failure = Some(super::LinkFailure::of(addr, error));
            }
            state.restoring = false;
            state.connected = false;
        }
        tokio::select! {
            () = sleep(wait) => {}
            () = control.closed() => {}
        }
    }
    if let Some(replica) = store.current().filter(|_| withdraw_at_end) {
        runtime.withdraw(database, Some(replica.log()));
    }
    let mut following = runtime.following.borrow_mut();
    if following
        .get(&database)
        .is_some_and(|mine| Arc::ptr_eq(mine, &status))
    {
        following.remove(&database);
    }
}

/// What a replica link's tasks share: the link's state machine, a wake-up for the writer when
/// it has something new to send, and the socket's byte counters.
struct Shared {
    link: RefCell<ReplicaLink>,
    due: Notify,
    /// The receipts of the nodes this replica feeds, reported upstream if the source speaks
    /// RECEIPTS.
    receipts: Option<Rc<ReceiptBook>>,
    progress: Rc<Progress>,
    /// The counters when the machine last heard of them.
    seen: Cell<(u64, u64)>,
    /// The source served this link: a frame other than a refusal came back.
    heard: Cell<bool>,
    /// The subscription's routing state, told of each page received.
    routing: Rc<Routing>,
}

impl Shared {
    /// Tells the machine whether bytes moved since it last heard (a slow link is not a dead
    /// one), then whether a timeout passed at `now`.
    fn handle_timeout(&self, now: Instant) -> Result<()> {
        let (received, sent) = self.progress.moved_since(&self.seen);
        let mut link = self.link.borrow_mut();
        if received {
            link.bytes_received(now);
        }
        if sent {
            link.bytes_sent(now);
        }
        link.handle_timeout(now)
    }
}

pub(super) async fn follow_link(
    runtime: &Rc<Runtime>,
    control: &Rc<LinkControl>,
    addr: SocketAddr,
    database: Uuid,
    store: &Arc<dyn ReplicaStore>,
    status: &Arc<Mutex<SubscriptionStatus>>,
    routing: &Rc<Routing>,
) -> Result<()> {
    let connection = Connection::connect(runtime.kind, addr).await?;
    let (mut reader, writer, shutdown) = connection.split(addr)?;
    *control.shutdown.borrow_mut() = Some(shutdown);
    let mut writer = writer;
    let peer = handshake(runtime, &mut reader, &mut writer, true).await?;
    reader.expect_bulk();
    // This node's way to the origin starts at the holder; its HAVEs tell the rest (watch.rs).
    routing.followed.set(Some(peer.node));
    runtime.set_path(database, vec![peer.node]);
    let mut replica = store.current();
    let resume = match &replica {
        Some(db) => Resume {
            database,
            origin: db.origin(),
            epoch: db.log().epoch(),
            from_lsn: db.received_lsn(),
        },
        None => Resume {
            database,
            origin: Uuid::nil(),
            epoch: 0,
            from_lsn: BOOTSTRAP,
        },
    };
    tracing::info!(%addr, source = %peer.name, %database, from_lsn = resume.from_lsn, "subscribing");
    if let Some(db) = &replica {
        runtime.serve(Arc::clone(db) as Arc<dyn SourceDatabase>);
    }
    // A new upstream may have heard none of the receipts the last one did.
    let receipts = (peer.version >= RECEIPTS_SINCE_VERSION).then(|| {
        let book = runtime.receipt_book(database);
        book.book.borrow_mut().report_all();
        book
    });
    let progress = reader.progress();
    *routing.link_progress.borrow_mut() = Some(Rc::clone(&progress));
    let config = &runtime.config;
    let shared = Rc::new(Shared {
        link: RefCell::new(ReplicaLink::new(
            Instant::now(),
            resume,
            config.heartbeat,
            config.link_timeout,
        )),
        due: Notify::new(),
        receipts,
        seen: Cell::new(progress.counts()),
        progress,
        heard: Cell::new(false),
        routing: Rc::clone(routing),
    });
    {
        let mut state = lock(status);
        state.connected = true;
        state.links += 1;
    }
    spawn_local(enforce_timeouts(Rc::clone(control), Rc::clone(&shared)));
    let sender = {
        let (shared, control) = (Rc::clone(&shared), Rc::clone(control));
        spawn_local(async move {
            let outcome = transmit(&mut writer, &shared, &control).await;
            control.close();
            outcome
        })
    };
    let received = receive(
        runtime,
        &mut reader,
        database,
        store,
        &mut replica,
        &shared,
        status,
    )
    .await;
    routing.heard.set(shared.heard.get());
    control.close();
    let sent = sender.await.unwrap_or(Ok(()));
    received.and(sent)
}

/// Closes the link when its machine says a timeout passed (the source silent, or a write
/// blocked, for longer than the link timeout). Reads and writes cannot be raced against a timer
/// (io_uring operations are not safely cancellable), so this shuts the socket down instead,
/// which completes them with an error.
async fn enforce_timeouts(control: Rc<LinkControl>, shared: Rc<Shared>) {
    loop {
        // Timeouts only: heartbeats are the writer's. Each check is at or after its deadline,
        // and `handle_timeout` fails at the deadline, so this never wakes twice for one.
        let deadline = shared.link.borrow().timeout_deadline();
        tokio::select! {
            () = sleep_until(deadline) => {}
            () = control.closed() => return,
        }
        let verdict = shared.handle_timeout(Instant::now());
        if let Err(error) = verdict {
            tracing::warn!(%error, "closing link");
            control.close();
            return;
        }
    }
}

/// The replica link's writer: whatever the machine has due (RESUME, the newest ack, a
/// heartbeat), as soon as it is due.
async fn transmit(writer: &mut FrameWriter, shared: &Shared, control: &LinkControl) -> Result<()> {
    loop {
        if let Some(report) = shared
            .receipts
            .as_ref()
            .and_then(|book| book.book.borrow_mut().take_report())
        {
            shared.link.borrow_mut().report(report);
        }
        let mut batch = writer.buffer();
        let now = Instant::now();
        let due = shared.link.borrow_mut().poll_transmit(now, &mut batch);
        if due {
            shared.link.borrow_mut().write_started(now);
            let written = writer.write(batch).await;
            shared.link.borrow_mut().write_finished();
            written?;
            if shared.link.borrow().wants_transmit() {
                continue;
            }
        } else {
            writer.write(batch).await?;
        }
        // A timeout that is due fails the link here too, so the deadline below is always
        // ahead of now: the writer never spins on a timer that has passed.
        shared.handle_timeout(Instant::now())?;
        let deadline = shared.link.borrow().poll_timeout();
        let news = async {
            match &shared.receipts {
                Some(book) => book.news.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.due.notified() => {}
            () = news => {}
            () = sleep_until(deadline) => {}
            () = control.closed() => return Ok(()),
        }
    }
}

/// The replica link's reader: each frame judged by the machine; pages into the ring (the ack
/// queued at once, before replay), snapshots into a restore.
async fn receive(
    runtime: &Runtime,
    reader: &mut FrameReader,
    database: Uuid,
    store: &Arc<dyn ReplicaStore>,
    replica: &mut Option<Arc<dyn ReplicaDatabase>>,
    shared: &Shared,
    status: &Arc<Mutex<SubscriptionStatus>>,
) -> Result<()> {
    let mut restore: Option<RestoreJob> = None;
    loop {
        let Some(frame) = reader.next().await? else {
            return Ok(());
        };
        let received = shared
            .link
            .borrow_mut()
            .handle_frame(Instant::now(), frame)?;
        // The source served this link (a refusal fails above): the next attempt need not wait.
        if !shared.heard.replace(true) {
            lock(status).served += 1;
        }
        match received {
            Received::Nothing => {}
            Received::Pages(pages) => {
                let Some(db) = replica.as_ref() else {
                    return Err(Error::UnexpectedFrame {
                        state: "bootstrapping (no replica yet)",
                        frame: "PAGES",
                    });
                };
                ingest(db.as_ref(), database, pages, shared).await?;
                let received = db.received_lsn();
                // The lead samples of the pages just received end now (`Upstreams::received`).
                if shared
                    .routing
                    .upstreams
                    .borrow_mut()
                    .received(received, Instant::now())
                {
                    shared.routing.news.notify_one();
                }
                shared
                    .link
                    .borrow_mut()
                    .ingested(received, db.durable_lsn());
                shared.due.notify_one();
                let mut state = lock(status);
                state.received_lsn = received;
                state.pages_received += (pages.len() / PAGE_SIZE) as u64;
            }
            Received::SnapshotChunk { data, last } => {
                if restore.is_none() {
                    tracing::info!(%database, "receiving a full snapshot");
                    lock(status).restoring = true;
                    *replica = None;
                    restore = Some(start_restore(store)?);
                }
                let Some((chunks, _)) = restore.as_ref() else {
                    continue;
                };
                let stopped_early = !data.is_empty() && chunks.send(data.to_vec()).await.is_err();
                if last || stopped_early {
                    let Some(job) = restore.take() else {
                        continue;
                    };
                    let db = finish_restore(job, database, status).await?;
                    shared
                        .link
                        .borrow_mut()
                        .restored(db.received_lsn(), db.durable_lsn());
                    shared.due.notify_one();
                    runtime.serve(Arc::clone(&db) as Arc<dyn SourceDatabase>);
                    *replica = Some(db);
                }
            }
        }
    }
}

/// Copies whole pages into the replica's ring (crc and epoch checked there), waiting while the
/// ring is full: the replica's applier frees it. The machine is told while this waits, since the
/// link reads nothing meanwhile.
async fn ingest(
    db: &dyn ReplicaDatabase,
    database: Uuid,
    pages: &[u8],
    shared: &Shared,
) -> Result<()> {
    let mut offered = pages;
    let mut waiting = false;
    while !offered.is_empty() {
        let ingested = poll_fn(|cx| {
            let poll = db.log().poll_ingest(cx, offered);
            if poll.is_pending() && !waiting {
                waiting = true;
                shared
                    .link
                    .borrow_mut()
                    .set_waiting_for_ring(Instant::now(), true);
            }
            poll
        })
        .await
        .map_err(|source| Error::Ingest { database, source })?;
        offered = &offered[ingested.pages * PAGE_SIZE..];
    }
    if waiting {
        shared
            .link
            .borrow_mut()
            .set_waiting_for_ring(Instant::now(), false);
    }
    Ok(())
}

/// Starts a restore on a thread of its own, fed chunk by chunk.
fn start_restore(store: &Arc<dyn ReplicaStore>) -> Result<RestoreJob> {
    let (chunks_tx, chunks_rx) = mpsc::channel(4);
    let (done_tx, done_rx) = oneshot::channel();
    let store = Arc::clone(store);
    std::thread::Builder::new()
        .name("pagemesh-restore".into())
        .spawn(move || {
            let mut input = ChunkReader::new(chunks_rx);
            let _ = done_tx.send(store.restore(&mut input));
        })
        .map_err(|source| Error::Spawn {
            thread: "pagemesh-restore".into(),
            source,
        })?;
    Ok((chunks_tx, done_rx))
}

/// Ends a restore's input and waits for its verdict: the new replica.
async fn finish_restore(
    (chunks, done): RestoreJob,
    database: Uuid,
    status: &Arc<Mutex<SubscriptionStatus>>,
) -> Result<Arc<dyn ReplicaDatabase>> {
    drop(chunks);
    let (db, lsn) = done
        .await
        .map_err(|_| Error::ThreadEnded { thread: "restore" })?
        .map_err(|source| Error::Restore { database, source })?;
    tracing::info!(%database, lsn, "snapshot restored; following from it");
    let mut state = lock(status);
    state.restores += 1;
    state.restoring = false;
    state.received_lsn = db.received_lsn();
    Ok(db)
}
