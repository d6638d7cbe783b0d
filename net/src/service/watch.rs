//! A replica's lazy links: it follows one holder of a database and *watches* the others, each
//! over a link that carries only HAVE frames (how far that holder has got), so that it can move
//! to one of them when its own holder stalls. The decision is `route::Upstreams`'s
//! ([`Upstreams::heard_have`], [`Upstreams::graft_due`]); this module moves the frames and keeps
//! the timer.
//!
//! A watch link opens like a subscription (handshake, then WATCH instead of RESUME), needs
//! protocol version 3 on both sides (an older holder is not watched), and answers each HAVE with
//! a HEARTBEAT, which is all the holder needs to keep it. A HAVE for another database or origin
//! than the replica follows ends the link with that reason; a holder that refuses the watch (it
//! does not hold the database yet) is asked again after a backoff. Nothing is held per link but
//! the socket and the offer the routing keeps per holder.
//!
//! Each HAVE also names the holder's way to the origin (protocol version 4). The followed
//! holder's, with that holder in front, is this node's own way (`Runtime::path`), which its own
//! HAVEs pass on and its admission checks; a holder whose way passes through this node is never
//! grafted, and if it is the followed one the replica leaves it: the two would follow one
//! another with nothing to give.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pagemesh_logpage::PAGE_SIZE;
use tokio::sync::Notify;
use uuid::Uuid;

use super::link::{handshake, LinkControl};
use super::{lock, ReplicaStore, Runtime, SubscriptionStatus, SUBSCRIBE_BACKOFF_MIN};
use crate::error::{Error, Result};
use crate::proto::frame::{encode, Frame, Heartbeat, Watch, WATCH_SINCE_VERSION};
use crate::route::{Graft, Upstreams};
use crate::transport::{sleep, sleep_until, timeout, Connection, Progress};

/// A subscription's routing state, shared by its follower and its watchers.
pub(super) struct Routing {
    pub(super) upstreams: RefCell<Upstreams<SocketAddr>>,
    /// A watcher heard a HAVE, or pages arrived that make a faster holder due.
    pub(super) news: Notify,
    /// The followed link's byte counters, while it is up: bytes arriving are progress.
    pub(super) link_progress: RefCell<Option<Rc<Progress>>>,
    /// The followed holder served the current link (a frame other than a refusal came back).
    pub(super) heard: Cell<bool>,
    /// The node followed on the current link, once its handshake named it.
    pub(super) followed: Cell<Option<Uuid>>,
}

impl Routing {
    pub(super) fn new(upstreams: Upstreams<SocketAddr>) -> Rc<Self> {
        Rc::new(Self {
            upstreams: RefCell::new(upstreams),
            news: Notify::new(),
            link_progress: RefCell::new(None),
            heard: Cell::new(false),
            followed: Cell::new(None),
        })
    }
}

/// How a watch link ended.
enum Watched {
    /// It ended after hearing at least one HAVE.
    Heard,
    /// It ended before.
    Silent,
    /// The holder speaks a protocol without WATCH: it is not watched.
    Unsupported,
}

/// Watches holder `holder` of `routing` for as long as the subscription lasts (`control`),
/// reconnecting with backoff.
pub(super) async fn watch_holder(
    runtime: Rc<Runtime>,
    control: Rc<LinkControl>,
    routing: Rc<Routing>,
    holder: usize,
    database: Uuid,
    store: Arc<dyn ReplicaStore>,
) {
    let Some(&addr) = routing.upstreams.borrow().holders().get(holder) else {
        return;
    };
    let mut backoff = SUBSCRIBE_BACKOFF_MIN;
    while !control.closed.get() {
        let link = LinkControl::new();
        let outcome = tokio::select! {
            outcome = watch_link(&runtime, &link, &routing, holder, addr, database, &store) => outcome,
            () = control.closed() => Ok(Watched::Silent),
        };
        link.close();
        match outcome {
            Ok(Watched::Unsupported) => {
                tracing::info!(%addr, %database, "holder speaks no WATCH: not watched");
                return;
            }
            Ok(Watched::Heard) => backoff = SUBSCRIBE_BACKOFF_MIN,
            Ok(Watched::Silent) => {}
            Err(error) => tracing::debug!(%addr, %database, %error, "watch link ended"),
        }
        tokio::select! {
            () = sleep(backoff) => {}
            () = control.closed() => {}
        }
        backoff = (backoff * 2).min(runtime.config.backoff_max);
    }
}

async fn watch_link(
    runtime: &Runtime,
    control: &LinkControl,
    routing: &Routing,
    holder: usize,
    addr: SocketAddr,
    database: Uuid,
    store: &Arc<dyn ReplicaStore>,
) -> Result<Watched> {
    let connection = Connection::connect(runtime.kind, addr).await?;
    let (mut reader, mut writer, shutdown) = connection.split(addr)?;
    *control.shutdown.borrow_mut() = Some(shutdown);
    let peer = handshake(runtime, &mut reader, &mut writer, true).await?;
    if peer.version < WATCH_SINCE_VERSION {
        return Ok(Watched::Unsupported);
    }
    // HAVE, HEARTBEAT and REFUSE only: nothing a holder sends here may be large.
    reader.expect_control();
    let origin = store.current().map_or(Uuid::nil(), |db| db.origin());
    let mut out = writer.buffer();
    encode(&Frame::Watch(Watch { database, origin }), &mut out);
    writer.write(out).await?;
    let mut heard = Watched::Silent;
    let link_timeout = runtime.config.link_timeout;
    loop {
        let frame = match timeout(link_timeout, reader.next()).await {
            Err(_) => {
                return Err(Error::LinkTimeout {
                    silent_for: link_timeout,
                })
            }
            Ok(frame) => frame?,
        };
        let have = match frame {
            None => return Ok(heard),
            Some(Frame::Have(have)) => have,
            Some(Frame::Refuse(refuse)) => {
                return Err(Error::Refused {
                    code: refuse.code as u16,
                    reason: refuse.reason,
                })
            }
            Some(other) => {
                return Err(Error::UnexpectedFrame {
                    state: "watching a holder",
                    frame: other.kind(),
                })
            }
        };
        if have.database != database || (!origin.is_nil() && have.origin != origin) {
            return Err(Error::ForeignHave {
                database,
                origin,
                have_database: have.database,
                have_origin: have.origin,
            });
        }
        let held = store.current().map_or(0, |db| db.received_lsn());
        let through_me = have.path.contains(&runtime.config.node);
        {
            let mut upstreams = routing.upstreams.borrow_mut();
            upstreams.heard_path(holder, through_me);
            upstreams.heard_have(holder, have.lsn, held, Instant::now());
            // The followed holder's way to the origin, with it in front, is this node's.
            if holder == upstreams.current_index() && routing.followed.get() == Some(peer.node) {
                let path = std::iter::once(peer.node).chain(have.path).collect();
                runtime.set_path(database, path);
            }
        }
        routing.news.notify_one();
        heard = Watched::Heard;
        let mut out = writer.buffer();
        encode(&Frame::Heartbeat(Heartbeat { sent_micros: 0 }), &mut out);
        writer.write(out).await?;
    }
}

/// Why a replica leaves the holder it follows while the link is still up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Move {
    /// The holder stalled, or another's path is faster: see [`Graft`].
    Graft(Graft),
    /// The holder's way to the origin passes through this node: following it closes a loop.
    Leave,
}

/// Waits until the replica should leave its holder: a graft is due (see
/// [`Upstreams::graft_due`]; never while the replica has no copy or is restoring one: a
/// bootstrap lags every holder, and moving would only restart it), or the holder's HAVE says
/// its way to the origin passes through this node ([`Upstreams::current_loops`]).
pub(super) async fn move_due(
    routing: &Routing,
    store: &Arc<dyn ReplicaStore>,
    status: &Arc<Mutex<SubscriptionStatus>>,
    period: Duration,
) -> Move {
    let mut seen: Option<u64> = None;
    loop {
        let now = Instant::now();
        // A page's worth of bytes arriving on the followed link is progress (a large batch on a
        // slow link takes long to become pages) and restarts the graft clocks; heartbeats alone
        // are not: a stalled holder still sends them.
        if let Some(progress) = routing.link_progress.borrow().as_ref() {
            let read = progress.read.get();
            match seen {
                Some(before) if read.saturating_sub(before) < PAGE_SIZE as u64 => {}
                Some(_) => {
                    routing.upstreams.borrow_mut().progressed(now);
                    seen = Some(read);
                }
                None => seen = Some(read),
            }
        }
        if routing.followed.get().is_some() && routing.upstreams.borrow().current_loops() {
            return Move::Leave;
        }
        let restoring = lock(status).restoring;
        let mut deadline = now + period;
        if let Some(db) = store.current().filter(|_| !restoring) {
            let held = db.received_lsn();
            let mut upstreams = routing.upstreams.borrow_mut();
            if let Some(graft) = upstreams.graft_due(held, now) {
                return Move::Graft(graft);
            }
            // Pending offers are all in the future here (a due one was returned above).
            if let Some(at) = upstreams.graft_deadline().filter(|&at| at > now) {
                deadline = deadline.min(at);
            }
        }
        tokio::select! {
            () = sleep_until(deadline) => {}
            () = routing.news.notified() => {}
        }
    }
}
