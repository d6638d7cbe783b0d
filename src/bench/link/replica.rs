//! The server: a replica's end of every bench link, one connection at a time.

use std::cell::{Cell, RefCell};
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use pagemesh_net::proto::frame::{Resume, PAGE_SIZE};
use pagemesh_net::proto::{HEARTBEAT_INTERVAL_DEFAULT, LINK_TIMEOUT_DEFAULT};
use pagemesh_net::service::replica_link::{Received, ReplicaLink};
use pagemesh_net::transport::{
    spawn_local, spawn_runtime, timeout_at, Connection, FrameReader, FrameWriter, Listener,
};
use pagemesh_net::{RuntimeKind, TransportKind};
use tokio::sync::Notify;

use super::{
    LinkBenchError, Result, ServerCount, CONNECTIONS_MAX, DATABASE, ORIGIN, RESUME_FROM_LSN,
};

/// The accepting end: a runtime thread serving one connection at a time.
pub(super) struct Server {
    pub(super) kind: RuntimeKind,
    pub(super) addr: SocketAddr,
    stop: Arc<AtomicBool>,
    counts: mpsc::Receiver<Result<ServerCount>>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    pub(super) fn start(kind: TransportKind) -> Result<Self> {
        let (addr_tx, addr_rx) = mpsc::sync_channel(1);
        let (counts_tx, counts) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_seen = Arc::clone(&stop);
        let (kind, thread) = spawn_runtime("pagemesh-bench-server", kind, move |kind| {
            serve_all(kind, addr_tx, counts_tx, stop_seen)
        })?;
        // serve_all binds before anything else, so this answers at once.
        let addr = addr_rx.recv();
        let addr = match addr {
            Ok(Ok(addr)) => addr,
            Ok(Err(error)) => {
                let _ = thread.join();
                return Err(error);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(LinkBenchError::Ended {
                    role: "server thread",
                });
            }
        };
        Ok(Self {
            kind,
            addr,
            stop,
            counts,
            thread,
        })
    }

    /// Stops accepting, joins the thread and returns what each connection decoded, in order.
    pub(super) fn stop(self) -> Result<Vec<Result<ServerCount>>> {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop with a connection of our own: it sees the flag and returns. (If
        // it already returned, the connection is refused, which is fine.)
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(5));
        self.thread.join().map_err(|_| LinkBenchError::Ended {
            role: "server thread",
        })?;
        Ok(self.counts.try_iter().collect())
    }
}

/// The server thread's main: binds, then serves connections one after another until stopped.
async fn serve_all(
    kind: RuntimeKind,
    addr_tx: mpsc::SyncSender<Result<SocketAddr>>,
    counts: mpsc::Sender<Result<ServerCount>>,
    stop: Arc<AtomicBool>,
) {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let bound = Listener::bind(kind, any)
        .map_err(LinkBenchError::from)
        .and_then(|listener| {
            let addr = listener.local_addr().map_err(|source| LinkBenchError::Io {
                op: "bind",
                peer: any,
                source,
            })?;
            Ok((listener, addr))
        });
    let listener = match bound {
        Ok((listener, addr)) => {
            let _ = addr_tx.send(Ok(addr));
            listener
        }
        Err(error) => {
            let _ = addr_tx.send(Err(error));
            return;
        }
    };
    for _ in 0..CONNECTIONS_MAX {
        let accepted = listener.accept().await;
        if stop.load(Ordering::Acquire) {
            return;
        }
        let count = match accepted {
            Ok((connection, peer)) => serve(connection, peer).await,
            Err(source) => Err(LinkBenchError::Io {
                op: "accept",
                peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                source,
            }),
        };
        let failed = count.is_err();
        let _ = counts.send(count);
        if failed {
            return;
        }
    }
}

/// The replica end of one connection: the link's machine, shared by the reader (which reports
/// what arrived) and the writer task (which sends what the machine has due).
struct ReplicaEnd {
    link: RefCell<ReplicaLink>,
    /// The machine may have something new to send, or the reader has stopped.
    due: Notify,
    /// The reader has stopped: the writer has nothing more to do.
    closed: Cell<bool>,
}

/// Serves one connection as a replica's link does, minus the ingest: its machine subscribes
/// (RESUME), judges every frame and acks what arrived; see the module docs.
async fn serve(connection: Connection, peer: SocketAddr) -> Result<ServerCount> {
    let (mut reader, writer, shutdown) = connection.split(peer)?;
    reader.expect_bulk(); // as a replica's link does once its source is authenticated
    let shutdown = Rc::new(shutdown);
    let end = Rc::new(ReplicaEnd {
        link: RefCell::new(ReplicaLink::new(
            Instant::now(),
            bench_resume(),
            HEARTBEAT_INTERVAL_DEFAULT,
            LINK_TIMEOUT_DEFAULT,
        )),
        due: Notify::new(),
        closed: Cell::new(false),
    });
    let sender = {
        let (end, shutdown) = (Rc::clone(&end), Rc::clone(&shutdown));
        spawn_local(async move {
            let sent = transmit(writer, &end).await;
            if sent.is_err() {
                // Ends the reader's pending read too.
                shutdown.shutdown();
            }
            sent
        })
    };
    let received = receive_pages(&mut reader, &end).await;
    end.closed.set(true);
    end.due.notify_one();
    if received.is_err() {
        // Completes a write blocked on a peer that stopped reading.
        shutdown.shutdown();
    }
    let sent = sender.await.map_err(|_| LinkBenchError::Ended {
        role: "replica end's writer",
    });
    shutdown.shutdown();
    let count = received?;
    sent??;
    Ok(count)
}

/// The replica end's reader: every frame through [`ReplicaLink::handle_frame`]; each run of
/// pages counted and reported with [`ReplicaLink::ingested`] (without ingesting it), until end of
/// stream.
async fn receive_pages(reader: &mut FrameReader, end: &ReplicaEnd) -> Result<ServerCount> {
    let mut count = ServerCount::default();
    // What a replica that ingested every page would report: TCP delivers the runs in order.
    let mut received_lsn = RESUME_FROM_LSN;
    // One iteration per frame; the stream ends when the client closes or a phase times out.
    while let Some(frame) = reader.next().await? {
        let received = end.link.borrow_mut().handle_frame(Instant::now(), frame)?;
        match received {
            Received::Pages(pages) => {
                count.frames += 1;
                count.page_bytes += pages.len() as u64;
                received_lsn += (pages.len() / PAGE_SIZE) as u64;
                // Nothing is applied, so nothing is durable.
                end.link.borrow_mut().ingested(received_lsn, 0);
                end.due.notify_one();
            }
            Received::Nothing => {}
            Received::SnapshotChunk { .. } => {
                return Err(LinkBenchError::UnexpectedFrame {
                    state: "receiving pages",
                    frame: "SNAPSHOT",
                })
            }
        }
    }
    Ok(count)
}

/// The replica end's writer, as a replica link's: whatever [`ReplicaLink::poll_transmit`] has
/// due (the RESUME, the newest ack, a heartbeat) in one write, as soon as it is due. Pages that
/// arrive before it runs, or while its write is in flight, are acked by one ACK: acks coalesce.
async fn transmit(mut writer: FrameWriter, end: &ReplicaEnd) -> Result<()> {
    // One iteration per write or wake-up; ends when the reader stops, or with the first error
    // (the machine's timeouts included).
    while !end.closed.get() {
        let mut batch = writer.buffer();
        let now = Instant::now();
        let due = end.link.borrow_mut().poll_transmit(now, &mut batch);
        if due {
            end.link.borrow_mut().write_started(now);
            let written = writer.write(batch).await;
            end.link.borrow_mut().write_finished();
            written?;
            if end.link.borrow().wants_transmit() {
                continue;
            }
        } else {
            // Hands the empty buffer back for the next batch.
            writer.write(batch).await?;
        }
        // A timeout that is due fails here, so the deadline below is ahead of now.
        end.link.borrow_mut().handle_timeout(Instant::now())?;
        let deadline = end.link.borrow().poll_timeout();
        // Woken or timed out (a heartbeat may be due), the machine is asked again.
        let _ = timeout_at(deadline, end.due.notified()).await;
    }
    Ok(())
}

/// The replica end's subscription.
fn bench_resume() -> Resume {
    Resume {
        database: DATABASE,
        origin: ORIGIN,
        epoch: 1,
        from_lsn: RESUME_FROM_LSN,
    }
}
