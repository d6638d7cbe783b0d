//! The two ends behind `bench transport` ([`super::transport`]) and `benches/transport.rs`: page
//! shipping and ack round trips over loopback, on io_uring or on epoll, through the link code
//! replication runs.
//!
//! Both ends run in this process on 127.0.0.1, each on its own runtime thread of the same kind
//! ([`spawn_runtime`](pagemesh_net::transport::spawn_runtime)), through the transport the service
//! uses ([`Connection`](pagemesh_net::transport::Connection),
//! [`FrameReader`](pagemesh_net::transport::FrameReader),
//! [`FrameWriter`](pagemesh_net::transport::FrameWriter)): on 2 cores, one thread per end is the realistic setup. The server is a
//! replica's end of a link and the client a source's, each driving that side's state machine as
//! the service's drivers do (`net/src/service/replica.rs`, `source.rs`):
//!
//! - The server's [`ReplicaLink`](pagemesh_net::service::replica_link::ReplicaLink) subscribes (its first [`ReplicaLink::poll_transmit`](pagemesh_net::service::replica_link::ReplicaLink::poll_transmit) is the
//!   RESUME); its reader hands every frame to [`ReplicaLink::handle_frame`](pagemesh_net::service::replica_link::ReplicaLink::handle_frame) and reports each run
//!   of pages with [`ReplicaLink::ingested`](pagemesh_net::service::replica_link::ReplicaLink::ingested); its writer task sends whatever `poll_transmit` has
//!   due, one write at a time. So acks coalesce exactly as in replication: every page that
//!   arrives before the writer next runs (the reader decodes all that one read brought in) or
//!   while its write is in flight is acked by one ACK, the newest.
//! - The client waits for that RESUME, as a source does, and starts a [`SourceLink`](pagemesh_net::service::source_link::SourceLink) at the LSN
//!   it names; it reports every frame with [`SourceLink::shipped`](pagemesh_net::service::source_link::SourceLink::shipped) as it hands it to the writer
//!   (and the write with `write_started`/`write_finished`), and hands every frame that comes back
//!   to [`SourceLink::handle_frame`](pagemesh_net::service::source_link::SourceLink::handle_frame), which caps acks at what was shipped.
//!
//! The phases:
//!
//! - **Ship** (one phase per run size, [`TransportBenchConfig::run_pages`]): the client encodes one
//!   PAGES frame of `run_pages` real log pages ([`pagemesh_logpage::page::write_page`]) into the
//!   writer's reused buffer with [`encode_pages`](pagemesh_net::proto::frame::encode_pages) and writes it, one write per frame, as fast as
//!   the socket takes them, until [`TransportBenchConfig::seconds`] pass or
//!   [`TransportBenchConfig::bytes_max`] page bytes are sent. The server decodes every frame
//!   (`FrameReader::next`, crc included) and acks through its machine; the client reads the acks
//!   on a reader task of its own, so both directions are live, as in replication. The phase ends
//!   when an ack covers the last page shipped; MB/s is page bytes the server decoded (that ack's
//!   `received_lsn`, checked against the server's own count) over the client's time from the
//!   first write to that ack. [`ShipFigures::acks`] says how many ACK frames it took.
//! - **Ping** (ack round trip): the client sends one 1-page PAGES frame, waits for its ACK (reading
//!   past a heartbeat, should one come first), and repeats, [`WARMUP_PINGS`] unrecorded and then
//!   up to [`TransportBenchConfig::pings_max`] or until `seconds` pass; p50 and p99 of the
//!   recorded round trips.
//!
//! Each phase uses a fresh connection; the server serves them one after another. Every loop is
//! bounded in count and time, every phase runs under a timeout that shuts its socket down (which
//! completes any pending io_uring operation), and both runtime threads are joined before a result
//! is returned.
//!
//! # What is and is not measured
//!
//! Measured: framing page runs into the writer's buffer, the transport on either runtime both
//! ways, decoding every frame (crc included), both link machines (frames judged, acks queued,
//! coalesced and capped), and the wake-ups between each end's reader and writer.
//!
//! Not measured: where pages come from (the same few pages, from memory, instead of a ring cursor
//! or the binlog, so the source's ring-lag rule never applies) and where they go (nothing is
//! ingested into a replica's ring: no page crc or LSN checks, no copy, no replay; the server
//! counts the pages to know its `received_lsn`, and `durable_lsn` stays 0). Nor the handshake
//! (each end trusts the other), nor the links' timer tasks: the server's writer still sends a
//! heartbeat when its machine has one due and fails on its timeouts, but nothing shuts a link
//! whose write is blocked, and the client sends no heartbeats (it writes all the time); each
//! phase's own timeout bounds them. `bench replicate` measures the whole path, database to
//! database.
//!
//! `replica.rs` is the server, `source.rs` the client, `floor.rs` the blocking-socket floor.
//!
//! # Reading the figures
//!
//! On the 2-vCPU machines (strace -c, fixed counts): an epoll ping costs each end about three
//! syscalls (`sendto`, `epoll_wait`, `recvfrom`). The io_uring executor costs each end one `send`
//! (tried directly; only a send that would block goes through the ring), one `recvfrom` that
//! finds nothing (the direct receive after a ring receive, which lets acks coalesce under load:
//! `net/src/transport/uring.rs`) and one `io_uring_enter`, which submits the next receive and
//! waits for it. tokio-uring, which this transport used
//! before, cost about 15 in all (9 `epoll_wait`, 6 `io_uring_enter`), and measured 0.56–0.71×
//! epoll for 1-page runs and 1.3–1.4× its ack p50. On loopback the round trip is dominated by
//! the wake-ups of the two threads, not by syscalls, so parity is what to expect there. The link
//! machines add no syscall to a round trip (their clock reads are vDSO calls).
//!
//! Until the bench drove the link machines, its server acked every frame (all the acks due in one
//! write, up to 1,024), more ack traffic than replication sends; now one ACK covers as many frames
//! as arrive before the server's writer runs (`frames/ack` in `bench transport`'s table), which
//! depends on the machine's wake-ups: about 2–4 at 64 pages and 9–16 at 1 page in one session on a
//! 2-vCPU VM (ack p50 19 µs), 1–2 in another on the same VM (ack p50 55 µs). Measured at that
//! change (interleaved pairs of `bench transport --seconds 1`, medians of new/old; first session
//! 19 pairs, second 8): ack p50 1.03× and 1.01× on both runtimes (in the first, an A/B without
//! the timer the replica's writer arms for each wait, as `replica.rs` does, took back most of
//! it); ack p99 about 1.0× (noisy); MB/s at 64 pages 0.90× and 1.04× (epoll), 0.93× and 0.96×
//! (uring), each give or take 10–15 %; at 1 page 1.05× and 1.05× (epoll), 0.97× and 0.98×
//! (uring). Figures from either side of the change compare to within those margins.

use std::net::SocketAddr;
use std::time::Duration;

use pagemesh_logpage::page::{write_page, PageMeta, HEADER_SIZE};
use pagemesh_logpage::PAYLOAD_SIZE;
use uuid::Uuid;

use pagemesh_net::proto::frame::{PagesHeader, PAGES_COUNT_MAX, PAGE_SIZE};
use pagemesh_net::{RuntimeKind, TransportKind};

use self::replica::Server;
use self::source::run_client;

mod floor;
mod replica;
mod source;

pub use self::floor::{blocking_floor, FloorFigures};

/// Why a transport bench did not run, or failed: the tool's error, not a link's (a link's comes
/// wrapped, as [`LinkBenchError::Net`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkBenchError {
    /// A setting is out of range.
    #[error("transport bench: {setting} must be {allowed}, not {value}")]
    Config {
        /// The setting, e.g. `seconds`.
        setting: &'static str,
        /// What it may be.
        allowed: String,
        /// What it was.
        value: String,
    },
    /// The transport (a socket, a runtime) failed, or a frame did not decode.
    #[error("transport bench: {0}")]
    Net(#[from] pagemesh_net::Error),
    /// A blocking socket of [`blocking_floor`] failed, or the server's accept did.
    #[error("transport bench: {op} on {peer}: {source}")]
    Io {
        /// What was being done: "bind", "accept", "read", "write".
        op: &'static str,
        /// The address concerned.
        peer: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A bench thread or task ended without its answer: it panicked, could not start, or its
    /// runtime shut down first.
    #[error("transport bench: the {role} ended before it answered")]
    Ended {
        /// Which: "server thread", "client thread", "ack reader", "floor server thread".
        role: &'static str,
    },
    /// A phase ran past its duration by more than the grace (it is then cut off).
    #[error("transport bench: {phase} phase overran {duration:?} by {grace:?}")]
    Overran {
        /// "ship" or "ping".
        phase: &'static str,
        /// The phase's duration.
        duration: Duration,
        /// How long it may overrun.
        grace: Duration,
    },
    /// The link closed before every page shipped was acked.
    #[error("transport bench: link closed with pages acked below {acked_lsn}, shipped below {shipped_lsn}")]
    Unacked {
        /// Every page below this was acked.
        acked_lsn: u64,
        /// Every page below this was shipped.
        shipped_lsn: u64,
    },
    /// A round trip's ack named another LSN than the page just shipped.
    #[error("transport bench: ack of pages below {acked_lsn}, expected below {expected_lsn}")]
    WrongAck {
        /// What the ack should have named.
        expected_lsn: u64,
        /// What it named.
        acked_lsn: u64,
    },
    /// A round trip read this many frames without an ack among them.
    #[error("transport bench: {frames} frames read without an ack")]
    NoAck {
        /// Frames read.
        frames: usize,
    },
    /// A frame that has no place in the exchange arrived.
    #[error("transport bench: unexpected {frame} frame while {state}")]
    UnexpectedFrame {
        /// What that end was doing.
        state: &'static str,
        /// The frame's type.
        frame: &'static str,
    },
    /// The other end closed the link (end of stream) where the exchange had not ended.
    #[error("transport bench: link closed while {state}")]
    Closed {
        /// What this end was doing.
        state: &'static str,
    },
    /// What the server decoded disagrees with what the client sent and saw acked.
    #[error(
        "transport bench: client sent {frames} frames ({page_bytes} page bytes, {pages_acked} \
         pages acked), server decoded {decoded_frames} frames ({decoded_page_bytes} page bytes)"
    )]
    Undelivered {
        /// Frames the client sent.
        frames: u64,
        /// Page bytes in them.
        page_bytes: u64,
        /// Pages the last ack covered.
        pages_acked: u64,
        /// Frames the server decoded.
        decoded_frames: u64,
        /// Page bytes in them.
        decoded_page_bytes: u64,
    },
    /// Not every phase was served and finished.
    #[error(
        "transport bench: {phases} phases, server served {served}, client finished {finished}"
    )]
    PhasesLost {
        /// Phases asked for.
        phases: usize,
        /// Connections the server served.
        served: usize,
        /// Phases the client finished.
        finished: usize,
    },
}

type Result<T, E = LinkBenchError> = std::result::Result<T, E>;

/// A [`LinkBenchError::Config`] for `setting`.
fn out_of_range(
    setting: &'static str,
    allowed: impl std::fmt::Display,
    value: impl std::fmt::Display,
) -> LinkBenchError {
    LinkBenchError::Config {
        setting,
        allowed: allowed.to_string(),
        value: value.to_string(),
    }
}

/// Round trips made before recording, so connection setup and cold caches are not measured.
pub const WARMUP_PINGS: u64 = 16;
/// The most frames a round trip reads while it waits for its ack (heartbeats may come first).
const FRAMES_PER_ACK_MAX: usize = 8;
/// The most connections one server accepts (phases plus the stop signal).
const CONNECTIONS_MAX: usize = 64;
/// How long a phase may overrun its duration (waiting for the last ack) before it fails; also
/// the longest the client waits for a connection's RESUME.
const PHASE_GRACE: Duration = Duration::from_secs(10);
/// The bound on a fixed-count run ([`time_ship`], [`time_pings`]).
const TIMED_RUN_MAX: Duration = Duration::from_secs(120);
/// The longest phase [`measure`] accepts, in seconds.
const SECONDS_MAX: f64 = 600.0;
/// The most round trips [`measure`] records (8 bytes each).
const PINGS_MAX: u64 = 10_000_000;
/// The database and origin every bench frame names.
const DATABASE: Uuid = Uuid::from_u128(0x7061_6765_6d65_7368_0000_0000_0062_656e);
const ORIGIN: Uuid = Uuid::from_u128(0x7061_6765_6d65_7368_0000_0000_006f_7267);
/// Where the replica end subscribes from: it holds no pages yet.
const RESUME_FROM_LSN: u64 = 0;
/// The source end's ring, as its machine is told: the bench ships from memory and never holds a
/// ring cursor, so the ring-lag rule never applies.
const RING_SLOTS: u64 = 0;

/// What [`measure`] runs.
#[derive(Clone, Debug, PartialEq)]
pub struct TransportBenchConfig {
    /// How long each phase (each run size, then the ping-pong) runs, in seconds.
    pub seconds: f64,
    /// Pages per PAGES frame, one ship phase each, in order; 1..=[`PAGES_COUNT_MAX`].
    pub run_pages: Vec<usize>,
    /// The most page bytes one ship phase sends.
    pub bytes_max: u64,
    /// The most round trips the ping phase records.
    pub pings_max: u64,
}

impl Default for TransportBenchConfig {
    /// 1 s per phase; runs of 64 pages (256 KiB) and of 1 page; at most 8 GiB per ship phase
    /// and 1,000,000 round trips.
    fn default() -> Self {
        Self {
            seconds: 1.0,
            run_pages: vec![64, 1],
            bytes_max: 8 << 30,
            pings_max: 1_000_000,
        }
    }
}

impl TransportBenchConfig {
    fn check(&self) -> Result<()> {
        let sizes_max = CONNECTIONS_MAX - 2;
        if !(self.seconds > 0.0 && self.seconds <= SECONDS_MAX) {
            Err(out_of_range(
                "seconds",
                format!("in (0, {SECONDS_MAX}]"),
                self.seconds,
            ))
        } else if !(1..=sizes_max).contains(&self.run_pages.len()) {
            let count = self.run_pages.len();
            Err(out_of_range(
                "run_pages",
                format!("1 to {sizes_max} run sizes"),
                format!("{count} run sizes"),
            ))
        } else if let Some(bad) = self
            .run_pages
            .iter()
            .find(|&&n| !(1..=PAGES_COUNT_MAX).contains(&n))
        {
            Err(out_of_range(
                "run_pages",
                format!("1..={PAGES_COUNT_MAX} each"),
                bad,
            ))
        } else if self.bytes_max == 0 {
            Err(out_of_range("bytes_max", "positive", 0))
        } else if !(1..=PINGS_MAX).contains(&self.pings_max) {
            Err(out_of_range(
                "pings_max",
                format!("1..={PINGS_MAX}"),
                self.pings_max,
            ))
        } else {
            Ok(())
        }
    }
}

/// One ship phase's result.
#[derive(Clone, Debug, PartialEq)]
pub struct ShipFigures {
    /// Pages per PAGES frame.
    pub run_pages: usize,
    /// Frames sent, decoded and acked.
    pub frames: u64,
    /// ACK frames the client read: the server's writer acks every page that arrived since its
    /// last ack with one, so fewer than `frames` when acks coalesce.
    pub acks: u64,
    /// Page bytes the server decoded (frame headers not included).
    pub bytes: u64,
    /// From the first write to the ack of the last page.
    pub seconds: f64,
    /// `bytes / seconds`, in 10^6 bytes per second.
    pub mb_per_s: f64,
}

/// What [`measure`] found for one runtime kind.
#[derive(Clone, Debug, PartialEq)]
pub struct TransportFigures {
    /// The runtime both ends ran on.
    pub kind: RuntimeKind,
    /// One per [`TransportBenchConfig::run_pages`], in order.
    pub ships: Vec<ShipFigures>,
    /// Round trips recorded.
    pub pings: u64,
    /// Median ack round trip, in microseconds.
    pub rtt_p50_us: f64,
    /// 99th-percentile ack round trip, in microseconds.
    pub rtt_p99_us: f64,
}

impl TransportFigures {
    /// MB/s of the ship phase with runs of `run_pages` pages, if one ran.
    pub fn mb_per_s(&self, run_pages: usize) -> Option<f64> {
        self.ships
            .iter()
            .find(|ship| ship.run_pages == run_pages)
            .map(|ship| ship.mb_per_s)
    }
}

/// Measures page shipping for each run size, then the ack round trip, with both ends on
/// `kind` (see the module docs).
pub fn measure(kind: TransportKind, config: &TransportBenchConfig) -> Result<TransportFigures> {
    config.check()?;
    let duration = Duration::from_secs_f64(config.seconds);
    let mut phases: Vec<Phase> = config
        .run_pages
        .iter()
        .map(|&run_pages| {
            Phase::Ship(ShipSpec {
                run_pages,
                frames_max: u64::MAX,
                bytes_max: config.bytes_max,
                duration,
            })
        })
        .collect();
    phases.push(Phase::Ping(PingSpec {
        pings_max: config.pings_max,
        duration,
    }));
    let (kind, outcomes) = run_pair(kind, phases)?;
    let mut figures = TransportFigures {
        kind,
        ships: Vec::new(),
        pings: 0,
        rtt_p50_us: f64::NAN,
        rtt_p99_us: f64::NAN,
    };
    for outcome in outcomes {
        match outcome {
            Outcome::Ship(ship) => figures.ships.push(ship.figures()),
            Outcome::Ping(mut ping) => {
                ping.rtts.sort_unstable();
                figures.pings = ping.rtts.len() as u64;
                figures.rtt_p50_us = percentile_us(&ping.rtts, 50.0);
                figures.rtt_p99_us = percentile_us(&ping.rtts, 99.0);
            }
        }
    }
    Ok(figures)
}

/// Times shipping `frames` PAGES frames of `run_pages` pages each, from the first write to the
/// ack of the last page (for criterion's `iter_custom`; runtime start-up, connecting and the
/// RESUME are not timed).
pub fn time_ship(kind: TransportKind, run_pages: usize, frames: u64) -> Result<Duration> {
    if !(1..=PAGES_COUNT_MAX).contains(&run_pages) {
        return Err(out_of_range(
            "run_pages",
            format!("1..={PAGES_COUNT_MAX}"),
            run_pages,
        ));
    }
    let phase = Phase::Ship(ShipSpec {
        run_pages,
        frames_max: frames.max(1),
        bytes_max: u64::MAX,
        duration: TIMED_RUN_MAX,
    });
    match run_pair(kind, vec![phase])?.1.pop() {
        Some(Outcome::Ship(ship)) => Ok(ship.elapsed),
        // run_pair checked that the one phase finished.
        _ => unreachable!("a ship phase has a ship outcome"),
    }
}

/// Times `pings` ack round trips, one after another (for criterion's `iter_custom`; the warm-up
/// round trips are not timed).
pub fn time_pings(kind: TransportKind, pings: u64) -> Result<Duration> {
    let phase = Phase::Ping(PingSpec {
        pings_max: pings.clamp(1, PINGS_MAX),
        duration: TIMED_RUN_MAX,
    });
    match run_pair(kind, vec![phase])?.1.pop() {
        Some(Outcome::Ping(ping)) => Ok(ping.rtts.iter().sum()),
        _ => unreachable!("a ping phase has a ping outcome"),
    }
}

/// The `pct` percentile (nearest rank) of sorted durations, in microseconds; NaN if empty.
fn percentile_us(sorted: &[Duration], pct: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (pct / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e6
}

/// `count` valid log pages with distinct LSNs and full payloads of record-like bytes.
fn bench_pages(count: usize) -> Vec<u8> {
    let mut pages = vec![0u8; count * PAGE_SIZE];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for (lsn, chunk) in pages.chunks_exact_mut(PAGE_SIZE).enumerate() {
        let page: &mut [u8; PAGE_SIZE] = chunk.try_into().expect("chunks_exact of PAGE_SIZE");
        for byte in &mut page[HEADER_SIZE..] {
            // xorshift64: incompressible, like real record bytes are to TCP.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        write_page(
            page,
            &PageMeta {
                lsn: lsn as u64,
                committed_lsn: lsn as u64,
                epoch: 1,
                payload_len: PAYLOAD_SIZE as u16,
                first_record_offset: 0,
                record_count: 1,
                end_of_epoch: false,
                resumed: false,
            },
        );
    }
    pages
}

/// One measurement on its own connection.
#[derive(Clone, Copy, Debug)]
enum Phase {
    Ship(ShipSpec),
    Ping(PingSpec),
}

impl Phase {
    fn pages_max(&self) -> usize {
        match self {
            Phase::Ship(spec) => spec.run_pages,
            Phase::Ping(_) => 1,
        }
    }
}

/// PAGES frames of `run_pages` pages until the first bound is hit (at least one frame).
#[derive(Clone, Copy, Debug)]
struct ShipSpec {
    run_pages: usize,
    frames_max: u64,
    bytes_max: u64,
    duration: Duration,
}

/// One 1-page frame at a time, each waiting for its ack, until either bound is hit (at least one
/// recorded round trip).
#[derive(Clone, Copy, Debug)]
struct PingSpec {
    pings_max: u64,
    duration: Duration,
}

/// What the client saw in one phase.
enum Outcome {
    Ship(ShipOutcome),
    Ping(PingOutcome),
}

struct ShipOutcome {
    run_pages: usize,
    frames: u64,
    /// ACK frames read.
    acks: u64,
    /// The last ack's `received_lsn` (over where the phase started): pages the server decoded.
    pages_acked: u64,
    elapsed: Duration,
}

impl ShipOutcome {
    fn figures(&self) -> ShipFigures {
        let bytes = self.pages_acked * PAGE_SIZE as u64;
        let seconds = self.elapsed.as_secs_f64();
        ShipFigures {
            run_pages: self.run_pages,
            frames: self.frames,
            acks: self.acks,
            bytes,
            seconds,
            mb_per_s: bytes as f64 / seconds / 1e6,
        }
    }
}

struct PingOutcome {
    /// Frames sent, warm-up included.
    frames: u64,
    /// Recorded round trips.
    rtts: Vec<Duration>,
}

/// What the server decoded on one connection.
#[derive(Clone, Copy, Debug, Default)]
struct ServerCount {
    frames: u64,
    page_bytes: u64,
}

/// Starts a server and a client on `kind`, runs `phases` in order and joins both threads.
fn run_pair(kind: TransportKind, phases: Vec<Phase>) -> Result<(RuntimeKind, Vec<Outcome>)> {
    let server = Server::start(kind)?;
    let kind = server.kind;
    let expected = phases.len();
    let outcomes = run_client(kind, server.addr, phases);
    let counts = server.stop()?;
    let outcomes = outcomes?;
    if counts.len() != expected || outcomes.len() != expected {
        return Err(LinkBenchError::PhasesLost {
            phases: expected,
            served: counts.len(),
            finished: outcomes.len(),
        });
    }
    for (outcome, count) in outcomes.iter().zip(counts) {
        check_delivered(outcome, &count?)?;
    }
    Ok((kind, outcomes))
}

/// Checks that the server decoded exactly what the client sent and saw acked.
fn check_delivered(outcome: &Outcome, count: &ServerCount) -> Result<()> {
    let (frames, pages, acked) = match outcome {
        Outcome::Ship(ship) => (
            ship.frames,
            ship.frames * ship.run_pages as u64,
            ship.pages_acked,
        ),
        Outcome::Ping(ping) => (ping.frames, ping.frames, ping.frames),
    };
    let page_bytes = pages * PAGE_SIZE as u64;
    if count.frames != frames || count.page_bytes != page_bytes || acked != pages {
        return Err(LinkBenchError::Undelivered {
            frames,
            page_bytes,
            pages_acked: acked,
            decoded_frames: count.frames,
            decoded_page_bytes: count.page_bytes,
        });
    }
    Ok(())
}

/// The header of every bench PAGES frame, starting at `first_lsn`.
fn pages_header(first_lsn: u64) -> PagesHeader<'static> {
    PagesHeader {
        database: DATABASE,
        origin: ORIGIN,
        epoch: 1,
        visited: &[],
        first_lsn,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use pagemesh_net::transport::uring_available;

    use super::*;

    fn kinds() -> Vec<(TransportKind, RuntimeKind)> {
        let mut kinds = vec![(TransportKind::Epoll, RuntimeKind::Epoll)];
        if uring_available() {
            kinds.push((TransportKind::Uring, RuntimeKind::Uring));
        } else {
            eprintln!("io_uring unavailable here: measuring epoll only");
        }
        kinds
    }

    #[test]
    fn both_kinds_ship_pages_and_ack_end_to_end() {
        let config = TransportBenchConfig {
            seconds: 0.05,
            ..TransportBenchConfig::default()
        };
        for (kind, runtime) in kinds() {
            let figures = measure(kind, &config).unwrap();
            assert_eq!(figures.kind, runtime);
            assert_eq!(figures.ships.len(), 2, "{figures:?}");
            for (ship, run_pages) in figures.ships.iter().zip([64, 1]) {
                assert_eq!(ship.run_pages, run_pages);
                assert!(ship.frames > 0, "{ship:?}");
                assert_eq!(ship.bytes, ship.frames * (run_pages * PAGE_SIZE) as u64);
                // Each ACK acks one or more frames, and at least the last one.
                assert!((1..=ship.frames).contains(&ship.acks), "{ship:?}");
                assert!(ship.mb_per_s > 0.0 && ship.mb_per_s.is_finite(), "{ship:?}");
            }
            assert!(figures.pings > 0);
            assert!(figures.rtt_p50_us > 0.0, "{figures:?}");
            assert!(figures.rtt_p99_us >= figures.rtt_p50_us, "{figures:?}");
        }
    }

    #[test]
    fn the_byte_and_count_bounds_stop_a_phase() {
        let config = TransportBenchConfig {
            seconds: 5.0,
            run_pages: vec![4],
            bytes_max: 10 * 4 * PAGE_SIZE as u64,
            pings_max: 20,
        };
        for (kind, _) in kinds() {
            let started = Instant::now();
            let figures = measure(kind, &config).unwrap();
            assert_eq!(figures.ships[0].frames, 10);
            assert_eq!(figures.pings, 20);
            assert!(started.elapsed() < Duration::from_secs(4));
            assert!(time_ship(kind, 2, 5).unwrap() > Duration::ZERO);
            assert!(time_pings(kind, 3).unwrap() > Duration::ZERO);
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        let good = TransportBenchConfig::default();
        for bad in [
            TransportBenchConfig {
                seconds: 0.0,
                ..good.clone()
            },
            TransportBenchConfig {
                run_pages: vec![0],
                ..good.clone()
            },
            TransportBenchConfig {
                run_pages: vec![PAGES_COUNT_MAX + 1],
                ..good.clone()
            },
            TransportBenchConfig {
                pings_max: 0,
                ..good.clone()
            },
        ] {
            assert!(measure(TransportKind::Epoll, &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let rtts: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile_us(&rtts, 50.0), 50.0);
        assert_eq!(percentile_us(&rtts, 99.0), 99.0);
        assert_eq!(percentile_us(&rtts[..1], 99.0), 1.0);
        assert!(percentile_us(&[], 50.0).is_nan());
    }

    #[test]
    fn bench_pages_are_valid_log_pages() {
        let pages = bench_pages(3);
        for page in pages.chunks_exact(PAGE_SIZE) {
            pagemesh_logpage::validate(page).unwrap();
        }
    }
}
