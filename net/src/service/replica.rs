//! The replica side of a link: subscribe (RESUME), ingest pages into the replica's ring and ack
//! them on receipt, restore snapshots; reconnect with backoff when a link ends.

use std::cell::Cell;
use std::future::poll_fn;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pagemesh_logpage::PAGE_SIZE;
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use super::link::{handshake, watchdog, LinkControl, LinkProgress};
use super::snapshot::{ChunkReader, RestoreJob};
use super::{lock, ReplicaDatabase, ReplicaStore, Runtime, SubscriptionStatus, BOOTSTRAP};
use crate::error::{Error, Result};
use crate::proto::frame::{encode, Ack, Frame, Heartbeat, Resume};
use crate::transport::{sleep, spawn_local, Connection, FrameReader, FrameWriter};

/// Replica side: keeps one subscription alive, reconnecting with backoff, until unsubscribed.
pub(super) async fn follow(
    runtime: Rc<Runtime>,
    control: Rc<LinkControl>,
    addr: SocketAddr,
    database: Uuid,
    store: Arc<dyn ReplicaStore>,
    status: Arc<Mutex<SubscriptionStatus>>,
) {
    let mut backoff = Duration::from_millis(50);
    while !control.closed.get() {
        let link = LinkControl::new();
        let outcome = tokio::select! {
            outcome = follow_link(&runtime, &link, addr, database, &store, &status) => outcome,
            () = control.closed() => Ok(()),
        };
        link.close();
        let was_connected = {
            let mut state = lock(&status);
            if let Err(error) = &outcome {
                tracing::warn!(%addr, %database, %error, "replication link ended; reconnecting");
                state.last_error = Some(error.to_string());
            }
            state.restoring = false;
            std::mem::replace(&mut state.connected, false)
        };
        if was_connected {
            backoff = Duration::from_millis(50);
        }
        tokio::select! {
            () = sleep(backoff) => {}
            () = control.closed() => {}
        }
        backoff = (backoff * 2).min(runtime.config.backoff_max);
    }
}

/// Latest ack to send, shared by a replica link's reader and writer.
pub(super) struct AckState {
    pending: Cell<Option<(u64, u64)>>,
    due: Notify,
}

pub(super) async fn follow_link(
    runtime: &Rc<Runtime>,
    control: &Rc<LinkControl>,
    addr: SocketAddr,
    database: Uuid,
    store: &Arc<dyn ReplicaStore>,
    status: &Arc<Mutex<SubscriptionStatus>>,
) -> Result<()> {
    let connection = Connection::connect(runtime.kind, addr).await?;
    let (mut reader, mut writer, shutdown) = connection.split(addr)?;
    *control.shutdown.borrow_mut() = Some(shutdown);
    let peer = handshake(runtime, &mut reader, &mut writer, true).await?;
    reader.expect_bulk();
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
    let mut out = writer.buffer();
    encode(&Frame::Resume(resume), &mut out);
    writer.write(out).await?;
    {
        let mut state = lock(status);
        state.connected = true;
        state.links += 1;
    }
    let acks = Rc::new(AckState {
        pending: Cell::new(None),
        due: Notify::new(),
    });
    let progress = LinkProgress::new(0);
    spawn_local(watchdog(
        Rc::clone(control),
        Rc::clone(&progress),
        runtime.config.link_timeout,
        None,
    ));
    let sender = {
        let (acks, control, progress) =
            (Rc::clone(&acks), Rc::clone(control), Rc::clone(&progress));
        let heartbeat = runtime.config.heartbeat;
        spawn_local(async move {
            let outcome =
                send_acks(&mut writer, database, &acks, &control, &progress, heartbeat).await;
            control.close();
            outcome
        })
    };
    let received = receive(
        &mut reader,
        database,
        store,
        &mut replica,
        &acks,
        &progress,
        status,
    )
    .await;
    control.close();
    let sent = sender.await.unwrap_or(Ok(()));
    received.and(sent)
}

/// The replica link's writer: the newest ack as soon as there is one, heartbeats when idle (the
/// watchdog enforces the link timeout).
pub(super) async fn send_acks(
    writer: &mut FrameWriter,
    database: Uuid,
    acks: &AckState,
    control: &LinkControl,
    progress: &LinkProgress,
    heartbeat: Duration,
) -> Result<()> {
    let mut last_sent = Instant::now();
    loop {
        tokio::select! {
            () = acks.due.notified() => {}
            () = sleep(heartbeat) => {}
            () = control.closed() => return Ok(()),
        }
        let mut batch = writer.buffer();
        if let Some((received_lsn, durable_lsn)) = acks.pending.take() {
            encode(
                &Frame::Ack(Ack {
                    database,
                    origin: Uuid::nil(),
                    received_lsn,
                    durable_lsn,
                }),
                &mut batch,
            );
        } else if last_sent.elapsed() >= heartbeat {
            encode(&Frame::Heartbeat(Heartbeat { sent_micros: 0 }), &mut batch);
        }
        if !batch.is_empty() {
            progress.write(writer, batch).await?;
            last_sent = Instant::now();
        }
    }
}

/// The replica link's reader: pages into the ring (ack queued at once), snapshots into a restore.
pub(super) async fn receive(
    reader: &mut FrameReader,
    database: Uuid,
    store: &Arc<dyn ReplicaStore>,
    replica: &mut Option<Arc<dyn ReplicaDatabase>>,
    acks: &AckState,
    progress: &LinkProgress,
    status: &Arc<Mutex<SubscriptionStatus>>,
) -> Result<()> {
    let mut restore: Option<RestoreJob> = None;
    loop {
        let Some(frame) = reader.next().await? else {
            return Ok(());
        };
        progress.last_heard.set(Instant::now());
        match frame {
            Frame::Pages(pages) if pages.database == database => {
                let Some(db) = replica.as_ref() else {
                    return Err(Error::UnexpectedFrame {
                        state: "bootstrapping (no replica yet)",
                        frame: "PAGES",
                    });
                };
                let mut offered = pages.pages;
                while !offered.is_empty() {
                    // Pending only while the ring is full: the replica's applier frees it.
                    let ingested = poll_fn(|cx| db.log().poll_ingest(cx, offered))
                        .await
                        .map_err(|source| Error::Ingest { database, source })?;
                    offered = &offered[ingested.pages * PAGE_SIZE..];
                }
                let received = db.received_lsn();
                acks.pending
                    .set(Some((received, db.durable_lsn().min(received))));
                acks.due.notify_one();
                lock(status).received_lsn = received;
            }
            Frame::Snapshot(chunk) if chunk.database == database => {
                if restore.is_none() {
                    tracing::info!(%database, "receiving a full snapshot");
                    lock(status).restoring = true;
                    *replica = None;
                    let (chunks_tx, chunks_rx) = mpsc::channel(4);
                    let (done_tx, done_rx) = oneshot::channel();
                    let store = Arc::clone(store);
                    std::thread::Builder::new()
                        .name("pagemesh-restore".into())
                        .spawn(move || {
                            let mut input = ChunkReader::new(chunks_rx);
                            let _ = done_tx.send(store.restore(&mut input));
                        })
                        .map_err(|error| Error::Spawn {
                            thread: "pagemesh-restore".into(),
                            source: error,
                        })?;
                    restore = Some((chunks_tx, done_rx));
                }
                let Some((chunks, _)) = restore.as_ref() else {
                    continue;
                };
                let stopped_early =
                    !chunk.data.is_empty() && chunks.send(chunk.data.to_vec()).await.is_err();
                if chunk.last || stopped_early {
                    let Some((chunks, done)) = restore.take() else {
                        continue;
                    };
                    drop(chunks);
                    let (db, lsn) = done
                        .await
                        .map_err(|_| Error::ThreadEnded { thread: "restore" })?
                        .map_err(|source| Error::Restore { database, source })?;
                    tracing::info!(%database, lsn, "snapshot restored; following from it");
                    {
                        let mut state = lock(status);
                        state.restores += 1;
                        state.restoring = false;
                        state.received_lsn = db.received_lsn();
                    }
                    acks.pending
                        .set(Some((db.received_lsn(), db.durable_lsn())));
                    acks.due.notify_one();
                    *replica = Some(db);
                }
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
                    state: "following",
                    frame: other.kind(),
                })
            }
        }
    }
}
