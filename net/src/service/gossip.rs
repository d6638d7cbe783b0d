//! Membership gossip over links of their own (protocol version 4): the decisions are
//! [`Members`]'s (`route::members`); this module moves PEERS frames and keeps the rounds.
//!
//! A node keeps a gossip link to each peer in its configuration, reconnecting with backoff, and
//! answers any authenticated peer that opens one (the first frame after the handshake is PEERS
//! instead of RESUME or WATCH). Each side sends, every gossip interval, its own entry and a
//! rotating sample of the nodes it knows; a link silent beyond the link timeout, or any frame
//! other than PEERS, ends it. Nothing is held per link but the socket: what a peer says goes
//! into the one bounded view.
//!
//! A replica that names a database but no holder ([`follow_discovered`]) follows the holders the
//! view knows, nearest first, and takes a fresh list when a nearer one appears or when it has no
//! link and the list has changed.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use uuid::Uuid;

use super::link::{handshake, LinkControl};
use super::replica::follow;
use super::{lock, ReplicaStore, Runtime, SubscriptionStatus, SUBSCRIBE_BACKOFF_MIN};
use crate::error::{Error, Result};
use crate::proto::frame::{encode, Frame, PeerList, PATH_SINCE_VERSION};
use crate::proto::handshake::PeerInfo;
use crate::route::Upstreams;
use crate::transport::{sleep, spawn_local, timeout, Connection, FrameReader, FrameWriter};

/// Raises this node's heartbeat and retires quiet nodes every gossip interval, until `stopping`.
pub(super) async fn rounds(runtime: Rc<Runtime>, stopping: Rc<LinkControl>) {
    while !stopping.closed.get() {
        let left = runtime.members.borrow_mut().round(Instant::now());
        for node in left {
            tracing::info!(%node, "node left the mesh (its gossip stopped)");
        }
        runtime.publish_members();
        tokio::select! {
            () = sleep(runtime.config.gossip_interval) => {}
            () = stopping.closed() => {}
        }
    }
}

/// Keeps a gossip link to the peer at `addr` until `stopping`, reconnecting with backoff.
pub(super) async fn gossip_with(runtime: Rc<Runtime>, addr: SocketAddr, stopping: Rc<LinkControl>) {
    let mut backoff = SUBSCRIBE_BACKOFF_MIN;
    while !stopping.closed.get() {
        let link = LinkControl::new();
        let outcome = tokio::select! {
            outcome = gossip_link(&runtime, &link, addr) => outcome,
            () = stopping.closed() => Ok(false),
        };
        link.close();
        match outcome {
            Ok(true) => backoff = SUBSCRIBE_BACKOFF_MIN,
            Ok(false) => {}
            Err(error) => tracing::debug!(%addr, %error, "gossip link ended"),
        }
        tokio::select! {
            () = sleep(backoff) => {}
            () = stopping.closed() => {}
        }
        backoff = (backoff * 2).min(runtime.config.backoff_max);
    }
}

/// One outbound gossip link; `Ok(true)` if the peer was heard.
async fn gossip_link(
    runtime: &Rc<Runtime>,
    control: &Rc<LinkControl>,
    addr: SocketAddr,
) -> Result<bool> {
    let connection = Connection::connect(runtime.kind, addr).await?;
    let (mut reader, mut writer, shutdown) = connection.split(addr)?;
    *control.shutdown.borrow_mut() = Some(shutdown);
    let peer = handshake(runtime, &mut reader, &mut writer, true).await?;
    if peer.version < PATH_SINCE_VERSION {
        tracing::info!(%addr, peer = %peer.name, version = peer.version, "peer speaks no gossip");
        return Ok(false);
    }
    reader.expect_control();
    tracing::info!(%addr, peer = %peer.name, "gossip link up");
    exchange(
        runtime,
        control,
        reader,
        writer,
        &peer,
        Some(addr.ip()),
        None,
    )
    .await?;
    Ok(true)
}

/// Serves a gossip link a peer opened with `first`.
pub(super) async fn serve_gossip(
    runtime: &Rc<Runtime>,
    control: &Rc<LinkControl>,
    reader: FrameReader,
    writer: FrameWriter,
    info: &PeerInfo,
    first: PeerList,
) -> Result<()> {
    let link_ip = Some(reader.peer().ip());
    tracing::debug!(peer = %info.name, "gossip link accepted");
    exchange(runtime, control, reader, writer, info, link_ip, Some(first)).await
}

/// Both sides of a gossip link: PEERS out every interval, PEERS in into the view.
async fn exchange(
    runtime: &Rc<Runtime>,
    control: &Rc<LinkControl>,
    mut reader: FrameReader,
    mut writer: FrameWriter,
    peer: &PeerInfo,
    link_ip: Option<IpAddr>,
    first: Option<PeerList>,
) -> Result<()> {
    if let Some(first) = first {
        heard(runtime, peer, link_ip, &first);
    }
    let listener = {
        let (runtime, control, sender) = (Rc::clone(runtime), Rc::clone(control), peer.clone());
        spawn_local(async move {
            let outcome = listen(&runtime, &mut reader, &sender, link_ip).await;
            control.close();
            outcome
        })
    };
    let told = loop {
        let frames = runtime.members.borrow_mut().gossip(Instant::now());
        let mut out = writer.buffer();
        for frame in &frames {
            encode(&Frame::Peers(frame.for_version(peer.version)), &mut out);
        }
        if let Err(error) = writer.write(out).await {
            break Err(error);
        }
        tokio::select! {
            () = sleep(runtime.config.gossip_interval) => {}
            () = control.closed() => break Ok(()),
        }
    };
    control.close();
    let heard = listener.await.unwrap_or(Ok(()));
    heard.and(told)
}

async fn listen(
    runtime: &Runtime,
    reader: &mut FrameReader,
    peer: &PeerInfo,
    link_ip: Option<IpAddr>,
) -> Result<()> {
    let link_timeout = runtime
        .config
        .link_timeout
        .max(runtime.config.gossip_interval * 3);
    loop {
        let frame = match timeout(link_timeout, reader.next()).await {
            Err(_) => {
                return Err(Error::LinkTimeout {
                    silent_for: link_timeout,
                })
            }
            Ok(frame) => frame?,
        };
        match frame {
            None => return Ok(()),
            Some(Frame::Peers(list)) => heard(runtime, peer, link_ip, &list),
            Some(other) => {
                return Err(Error::UnexpectedFrame {
                    state: "gossiping",
                    frame: other.kind(),
                })
            }
        }
    }
}

fn heard(runtime: &Runtime, peer: &PeerInfo, link_ip: Option<IpAddr>, list: &PeerList) {
    let learned =
        runtime
            .members
            .borrow_mut()
            .heard(peer.node, link_ip, &list.entries, Instant::now());
    if !learned.is_empty() {
        for node in &learned {
            tracing::info!(%node, via = %peer.name, "node joined the mesh (heard by gossip)");
        }
        runtime.publish_members();
    }
}

/// Keeps the replica in `store` following `database` from whichever holders the membership
/// view knows, until `control` closes. With none known yet it waits a gossip interval and looks
/// again; while it follows, the holder list is fixed (the link machinery moves among them), and
/// it is replaced when the nearest holder changed (a relay heard directly that now serves the
/// database), or when the replica has no link and the view's list has changed; a settled mesh's
/// replicas never drop their links for news.
pub(super) async fn follow_discovered(
    runtime: Rc<Runtime>,
    control: Rc<LinkControl>,
    database: Uuid,
    store: Arc<dyn ReplicaStore>,
    status: Arc<Mutex<SubscriptionStatus>>,
) {
    let interval = runtime.config.gossip_interval;
    while !control.closed.get() {
        let holders = runtime.members.borrow().holders(database);
        let Some(upstreams) = Upstreams::new(
            holders.clone(),
            SUBSCRIBE_BACKOFF_MIN,
            runtime.config.backoff_max,
        ) else {
            lock(&status).last_error = Some(format!("no holder of database {database} known yet"));
            tokio::select! {
                () = sleep(interval) => {}
                () = control.closed() => {}
            }
            continue;
        };
        tracing::info!(%database, ?holders, "following the holders the mesh knows");
        let upstreams = upstreams
            .with_graft_timeout(runtime.config.graft_timeout)
            .with_switch_lead(runtime.config.switch_lead);
        let generation = LinkControl::new();
        let following = spawn_local(follow(
            Rc::clone(&runtime),
            Rc::clone(&generation),
            upstreams,
            database,
            Arc::clone(&store),
            Arc::clone(&status),
            false,
        ));
        loop {
            tokio::select! {
                () = sleep(interval) => {}
                () = control.closed() => break,
            }
            // A nearer holder (one heard directly, say a relay that just caught up) is worth a
            // reconnect; any other change only once the replica has no link.
            let now_known = runtime.members.borrow().holders(database);
            let connected = lock(&status).connected;
            if now_known.first() != holders.first() || (!connected && now_known != holders) {
                break;
            }
        }
        generation.close();
        let _ = following.await;
    }
    if let Some(replica) = store.current() {
        runtime.withdraw(database, Some(replica.log()));
    }
}
