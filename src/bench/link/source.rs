//! The client: a source's end of every bench link, one connection per phase.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pagemesh_net::proto::frame::{encode_pages, Frame, PAGE_SIZE};
use pagemesh_net::proto::{HEARTBEAT_INTERVAL_DEFAULT, LINK_TIMEOUT_DEFAULT};
use pagemesh_net::service::source_link::{Heard, SourceLink};
use pagemesh_net::transport::{
    spawn_local, spawn_runtime, timeout, Connection, FrameReader, FrameWriter, Shutdown,
};
use pagemesh_net::{RuntimeKind, TransportKind};
use tokio::sync::Notify;

use super::{
    bench_pages, pages_header, LinkBenchError, Outcome, Phase, PingOutcome, PingSpec, Result,
    ShipOutcome, ShipSpec, DATABASE, FRAMES_PER_ACK_MAX, PHASE_GRACE, RESUME_FROM_LSN, RING_SLOTS,
    WARMUP_PINGS,
};

/// Runs `phases` on a client runtime thread of `kind` and joins it.
pub(super) fn run_client(
    kind: RuntimeKind,
    addr: SocketAddr,
    phases: Vec<Phase>,
) -> Result<Vec<Outcome>> {
    let transport = match kind {
        RuntimeKind::Uring => TransportKind::Uring,
        RuntimeKind::Epoll => TransportKind::Epoll,
    };
    let (result_tx, result_rx) = mpsc::sync_channel(1);
    let (_, thread) = spawn_runtime("pagemesh-bench-client", transport, move |kind| async move {
        let _ = result_tx.send(run_phases(kind, addr, phases).await);
    })?;
    let result = result_rx.recv().map_err(|_| LinkBenchError::Ended {
        role: "client thread",
    });
    thread.join().map_err(|_| LinkBenchError::Ended {
        role: "client thread",
    })?;
    result?
}

/// The client thread's main: each phase on a connection of its own.
async fn run_phases(
    kind: RuntimeKind,
    addr: SocketAddr,
    phases: Vec<Phase>,
) -> Result<Vec<Outcome>> {
    let pages = bench_pages(phases.iter().map(Phase::pages_max).max().unwrap_or(1));
    let mut outcomes = Vec::with_capacity(phases.len());
    for phase in phases {
        let connection = Connection::connect(kind, addr).await?;
        let (mut reader, writer, shutdown) = connection.split(addr)?;
        // As a source's link from a replica: only small control frames come back.
        reader.expect_control();
        let outcome = match subscribed(&mut reader).await {
            Ok(link) => match phase {
                Phase::Ship(spec) => ship(reader, writer, link, &shutdown, spec, &pages)
                    .await
                    .map(Outcome::Ship),
                Phase::Ping(spec) => ping(reader, writer, link, spec, &pages)
                    .await
                    .map(Outcome::Ping),
            },
            Err(error) => Err(error),
        };
        shutdown.shutdown();
        outcomes.push(outcome?);
    }
    Ok(outcomes)
}

/// Waits for the replica end's RESUME, as a source does before it ships (at most
/// [`PHASE_GRACE`]), and starts the source's machine at the LSN it names.
async fn subscribed(reader: &mut FrameReader) -> Result<SourceLink> {
    let frame = timeout(PHASE_GRACE, reader.next()).await.map_err(|_| {
        pagemesh_net::Error::LinkTimeout {
            silent_for: PHASE_GRACE,
        }
    })??;
    match frame {
        Some(Frame::Resume(resume))
            if resume.database == DATABASE && resume.from_lsn == RESUME_FROM_LSN =>
        {
            Ok(SourceLink::new(
                Instant::now(),
                resume.database,
                resume.origin,
                resume.from_lsn,
                RING_SLOTS,
                HEARTBEAT_INTERVAL_DEFAULT,
                LINK_TIMEOUT_DEFAULT,
            ))
        }
        Some(frame) => Err(LinkBenchError::UnexpectedFrame {
            state: "awaiting the bench database's RESUME from 0",
            frame: frame.kind(),
        }),
        None => Err(LinkBenchError::Closed {
            state: "awaiting RESUME",
        }),
    }
}

/// The source end of a ship phase: the link's machine, shared by the writer (which reports what
/// it ships) and the reader task (which hands it every ack).
struct SourceEnd {
    link: RefCell<SourceLink>,
    /// Every page below this is acked: the newest ack's `received_lsn`, as the machine capped it.
    acked_lsn: Cell<u64>,
    /// ACK frames read.
    acks: Cell<u64>,
    /// The reader task has stopped.
    done: Cell<bool>,
    due: Notify,
}

/// `writer.write(batch)`, reported to the machine as a source link's writes are.
async fn write_reported(
    link: &RefCell<SourceLink>,
    writer: &mut FrameWriter,
    batch: Vec<u8>,
) -> Result<()> {
    link.borrow_mut().write_started(Instant::now());
    let written = writer.write(batch).await;
    link.borrow_mut().write_finished();
    Ok(written?)
}

/// A ship phase: a reader task taking acks, and the writer sending frames here.
async fn ship(
    reader: FrameReader,
    mut writer: FrameWriter,
    link: SourceLink,
    shutdown: &Shutdown,
    spec: ShipSpec,
    pages: &[u8],
) -> Result<ShipOutcome> {
    let duration = spec.duration;
    let end = Rc::new(SourceEnd {
        acked_lsn: Cell::new(link.shipped_lsn()),
        link: RefCell::new(link),
        acks: Cell::new(0),
        done: Cell::new(false),
        due: Notify::new(),
    });
    let acker = spawn_local(read_acks(reader, Rc::clone(&end)));
    let sent = timeout(
        duration + PHASE_GRACE,
        send_pages(&mut writer, &end, spec, pages),
    )
    .await;
    // Ends the reader task (its pending read completes with end of stream).
    shutdown.shutdown();
    let read = acker.await.map_err(|_| LinkBenchError::Ended {
        role: "source end's ack reader",
    })?;
    let outcome = sent.map_err(|_| LinkBenchError::Overran {
        phase: "ship",
        duration,
        grace: PHASE_GRACE,
    })??;
    read?;
    Ok(outcome)
}

/// Writes frames until a bound is hit, each reported with [`SourceLink::shipped`], then waits
/// for the ack that covers the last one.
async fn send_pages(
    writer: &mut FrameWriter,
    end: &SourceEnd,
    spec: ShipSpec,
    pages: &[u8],
) -> Result<ShipOutcome> {
    let ShipSpec {
        run_pages,
        frames_max,
        bytes_max,
        duration,
    } = spec;
    let run = &pages[..run_pages * PAGE_SIZE];
    let from_lsn = end.link.borrow().shipped_lsn();
    let mut shipped_lsn = from_lsn;
    let started = Instant::now();
    let deadline = started + duration;
    let mut frames = 0u64;
    // At least one frame; then until the count, byte or time bound.
    loop {
        let mut batch = writer.buffer();
        encode_pages(&pages_header(shipped_lsn), &[run], &mut batch);
        shipped_lsn += run_pages as u64;
        end.link.borrow_mut().shipped(shipped_lsn);
        write_reported(&end.link, writer, batch).await?;
        frames += 1;
        let bytes = frames.saturating_mul(run.len() as u64);
        if frames >= frames_max || bytes >= bytes_max || Instant::now() >= deadline {
            break;
        }
    }
    // One wake-up per ack at most; bounded by the phase's timeout.
    while end.acked_lsn.get() < shipped_lsn {
        if end.done.get() {
            return Err(LinkBenchError::Unacked {
                acked_lsn: end.acked_lsn.get(),
                shipped_lsn,
            });
        }
        end.due.notified().await;
    }
    Ok(ShipOutcome {
        run_pages,
        frames,
        acks: end.acks.get(),
        pages_acked: end.acked_lsn.get() - from_lsn,
        elapsed: started.elapsed(),
    })
}

/// The source end's reader task in a ship phase: every frame through
/// [`SourceLink::handle_frame`], until end of stream.
async fn read_acks(mut reader: FrameReader, end: Rc<SourceEnd>) -> Result<()> {
    let result = async {
        // One iteration per frame; the stream ends when the phase shuts the socket down.
        while let Some(frame) = reader.next().await? {
            let heard = end.link.borrow_mut().handle_frame(Instant::now(), &frame)?;
            if let Heard::Ack { received_lsn, .. } = heard {
                end.acks.set(end.acks.get() + 1);
                end.acked_lsn.set(received_lsn);
                end.due.notify_one();
            }
        }
        Ok(())
    }
    .await;
    end.done.set(true);
    end.due.notify_one();
    result
}

/// A ping phase: one 1-page frame, its ack, again; under the phase's timeout (after which the
/// caller shuts the socket down, completing any pending operation).
async fn ping(
    mut reader: FrameReader,
    mut writer: FrameWriter,
    link: SourceLink,
    spec: PingSpec,
    pages: &[u8],
) -> Result<PingOutcome> {
    let PingSpec {
        pings_max,
        duration,
    } = spec;
    let page = &pages[..PAGE_SIZE];
    let link = RefCell::new(link);
    timeout(
        duration + PHASE_GRACE,
        ping_pong(&mut reader, &mut writer, &link, pings_max, duration, page),
    )
    .await
    .map_err(|_| LinkBenchError::Overran {
        phase: "ping",
        duration,
        grace: PHASE_GRACE,
    })?
}

/// Round trips until `pings_max` are recorded or `duration` passes (at least one recorded).
async fn ping_pong(
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    link: &RefCell<SourceLink>,
    pings_max: u64,
    duration: Duration,
    page: &[u8],
) -> Result<PingOutcome> {
    let deadline = Instant::now() + duration;
    let mut rtts = Vec::with_capacity(pings_max.min(1 << 16) as usize);
    let mut frames = 0u64;
    for _ in 0..WARMUP_PINGS + pings_max {
        if rtts.len() as u64 >= pings_max || (!rtts.is_empty() && Instant::now() >= deadline) {
            break;
        }
        let started = Instant::now();
        let lsn = link.borrow().shipped_lsn();
        let mut batch = writer.buffer();
        encode_pages(&pages_header(lsn), &[page], &mut batch);
        link.borrow_mut().shipped(lsn + 1);
        write_reported(link, writer, batch).await?;
        let acked_lsn = next_ack(reader, link).await?;
        if acked_lsn != lsn + 1 {
            return Err(LinkBenchError::WrongAck {
                expected_lsn: lsn + 1,
                acked_lsn,
            });
        }
        let rtt = started.elapsed();
        frames += 1;
        if frames > WARMUP_PINGS {
            rtts.push(rtt);
        }
    }
    Ok(PingOutcome { frames, rtts })
}

/// Reads frames through [`SourceLink::handle_frame`] until an ACK, and returns its
/// `received_lsn`; at most [`FRAMES_PER_ACK_MAX`] frames (heartbeats may come first).
async fn next_ack(reader: &mut FrameReader, link: &RefCell<SourceLink>) -> Result<u64> {
    for _ in 0..FRAMES_PER_ACK_MAX {
        let Some(frame) = reader.next().await? else {
            return Err(LinkBenchError::Closed {
                state: "awaiting the ack of one page",
            });
        };
        let heard = link.borrow_mut().handle_frame(Instant::now(), &frame)?;
        if let Heard::Ack { received_lsn, .. } = heard {
            return Ok(received_lsn);
        }
    }
    Err(LinkBenchError::NoAck {
        frames: FRAMES_PER_ACK_MAX,
    })
}
