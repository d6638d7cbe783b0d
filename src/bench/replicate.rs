//! `bench replicate`: what synchronous replication costs, measured against asynchronous.
//!
//! Every variant commits the land-registry-shaped records (one record per commit) on a primary
//! node, with 1, 16 or 256 commits in flight from one thread (`commit_async` tickets, the oldest
//! waited on when the window is full), and times each commit from `commit_async` to the end of
//! its wait:
//!
//! - `none`: no replica; `Memory` durability (the record is in the primary's committed log);
//! - `async`: one replica following, not synchronous (`serve(db, 0)`); `Memory` durability;
//! - `sync`: one synchronous replica; `Replicated(1)`: the commit returns once the replica has
//!   *received* its page (ack on receipt, before replay);
//! - `sync-durable`: `DurableReplicated(1)`: the local sync and the replica's receipt, overlapped;
//! - `durable`: no replica; `Durable` (the ring's pages on disk): what `sync-durable` is set
//!   against, `sync-durable@16 ≥ 0.9 × durable@16` (issue 16: the round trip hides under the
//!   flush);
//! - `durable-neighbour`: `durable`, with a second database on the same disk taking every page
//!   the primary seals (a cursor on the primary's log hands each run to the neighbour's
//!   `Plumbing::ingest`, as a replica's receiver would, without a network): the neighbour's
//!   flusher syncs its ring and its applier applies, at the primary's page rate. That is the
//!   disk's share of what a replica on this machine costs `sync-durable`, with no round trip, no
//!   ack and no network thread: `sync-durable / durable-neighbour` is printed beside
//!   `sync-durable / durable` as the ceiling of a replica that shares the primary's disk.
//! - `sync-durable-apart`: `sync-durable` with the replica's directory on tmpfs (`/dev/shm`),
//!   standing in for a replica on another machine's disk: its flusher's syncs no longer queue
//!   with the primary's on this one. tmpfs syncs cost nothing, so this is the most the round
//!   trip can hide under the primary's flush (an upper bound, not a second machine's figure);
//!   `sync-durable-apart / durable` is printed beside the shared-disk ratios. Where `/dev/shm`
//!   is missing it falls back to the temporary directory and says so.
//!
//!   Measured (one run, `--inflight 16,256 --rounds 3`, the disk's `fdatasync` at 79 µs before
//!   and after): `durable-neighbour / durable` 0.37 and 0.31, `sync-durable / durable` 0.34 and
//!   0.29, so `sync-durable / durable-neighbour` 0.91 and 0.94: on this machine the replica's
//!   cost is the shared disk, not the round trip. `durable@16` alone wrote about 300 MB/s
//!   (`/proc/diskstats`), most of it LMDB applying random keys, a 4 KB leaf per record touched
//!   in 5 ms groups; a second database doubles that, and the VM's disk throttles every sync to
//!   about 4 ms once its burst budget is spent, for minutes: leave the disk idle between runs
//!   and compare only within one.
//!
//! Primary and replica are two nodes in this process on loopback, each with its own network
//! thread, on the same 2 cores: a realistic worst case for CPU contention. Variants are measured
//! in interleaved rounds, each on fresh databases, and each cell keeps its median round.
//!
//! The targets (issue 16, restating the replication issue's): `sync/async` ≥ 0.9 × the
//! Little's-law estimate printed beside it, at 16 and at 256 in flight (below, "What a window
//! allows"); `sync-durable@16` ≥ 0.9 × `durable@16`.
//!
//! Where `sync-durable`'s time goes: timed inside core's `DurableReplicated` wait (one run, 16 in
//! flight, an instrumented build not kept), the replica's ack had already arrived when the local
//! flush completed for 99% of the commits with the replica on this disk and 100% with it on
//! tmpfs, and the wait after the flush averaged 2–4 µs: the round trip does hide under the
//! flush. What costs is the replica's load on the same 2 vCPUs and disk, which slows the
//! primary's own flush cycle: 16 in flight fill one page, so the window moves about one page
//! per `fdatasync`. In 2 s each (`perf stat -e syscalls:sys_enter_fdatasync`), `durable` made
//! 13.8k `fdatasync` calls for 219k commits; `sync-durable-apart`'s two nodes together made
//! 14.3k for 111k commits, each node about one a page.
//!
//! The same wait, timed per *page* (stop 37; an instrumented build, not kept, three runs of
//! `--rounds 1 --variants durable,sync-durable-apart`): the committing thread blocks once per 16
//! commits, on the commit that seals the page, and nowhere else (`commit_async` costs 0.4–0.6
//! µs in every variant). That wait took 190–226 µs for the flush in `durable`, and in
//! `sync-durable-apart` 250–275 µs for the flush plus 24–30 µs more for the ack after it (1.5–2
//! µs a commit, the 2–4 µs above). So the ack adds about a tenth, and the flush itself is a
//! fifth to a third slower with the replica running, even though the replica's files are on
//! tmpfs: `perf trace -s` put the committer's `fdatasync` at 0.24 ms on average alone and 0.31
//! ms beside the replica. The difference is in the wake-ups around the disk's completion on two
//! busy vCPUs (below, halt polling), not in the disk. Giving every thread of the replica nice 19
//! (three alternated runs, not kept) moved nothing: `sync-durable-apart/durable` 0.80–0.86
//! against 0.71–0.85.
//!
//! The replica's ring syncs need not be one a page: its acks are on receipt, so no commit waits
//! on them. Since a replica's flusher paces its syncs (`pagemesh_core::FLUSH_PACE`,
//! 10 ms), `sync-durable@16` over 2 s made 5,970 `fdatasync` calls for 44k commits/s, against
//! 8,801 for 36k commits/s the build before (one run each, `perf stat -e
//! syscalls:sys_enter_fdatasync`): about one sync a page in all, the primary's, where it was
//! two. `sync-durable/durable` moved from 0.51–0.53 to 0.39–0.68 (median 0.58, three runs each).
//! The primary's ring now paces the same way (`FLUSH_PACE` applies to every database): in
//! `none`, `async` and `sync` no commit waits for the ring's sync, yet its flusher synced every
//! page (3,357 `fdatasync` calls and 7,945 context switches in 2 s of `sync@256`). With the
//! pace, three alternated runs each: `sync@256` 300k–331k → 369k–377k commits/s, `sync@16`
//! 145k–182k → 174k–263k, `sync@256/async` 0.75–0.96 → 0.89–0.93 against Little estimates of
//! 0.87–0.91; `durable` and `sync-durable` unchanged, their writers leading their own flushes.
//! Since stop 33 a replica paces by `pagemesh_core::REPLICA_FLUSH_PACE` (1 s) instead, which
//! lifted `demo` (its two replicas' rings stop writing every page to the shared disk); here,
//! three alternated runs each (`--inflight 16`), `sync-durable/durable` 0.61–0.71 → 0.68–0.71
//! and `sync-durable-apart/durable` 0.77–0.82 → 0.72–0.82: within the noise.
//!
//! And the primary's applier slept through its pace only when no shipper ran: the shipper,
//! pacing for the next page, and the applier, pacing for hundreds, shared one wake-up threshold
//! (`pace_wake_at` in `pagemesh_logpage`'s seal module), so every page the writer finished woke
//! the applier, through a futex wake on the writer's own path. Counted with bpftrace over 2 s of
//! `sync-durable-apart@16`: the applier's futex calls 5,096 → 370 and the writer's 5,395 → 663
//! once async pacers kept a threshold of their own. Three alternated runs each, before → after:
//! `sync-durable/durable` 0.61–0.67 → 0.65–0.69, `sync-durable-apart/durable` 0.66–0.74 →
//! 0.73–0.77.
//!
//! What is left is the machine's: this VM's kernel is booted with guest halt polling off
//! (`haltpoll.guest_halt_poll_ns=0`), so every wake-up of a thread on an idle vCPU costs a
//! halt and an interrupt. With it set to 200 µs (`/sys/module/haltpoll/parameters`, for one
//! run, then restored), `bench transport`'s ack round trip fell from 80 µs to 16 µs (the
//! blocking floor 13 µs), `durable@16` rose about 10%, and `sync-durable-apart/durable` was
//! 0.72, 0.67 and 0.80 against 0.41, 0.63 and 0.56 in the runs alternated with it; one full
//! run with it: `sync-durable/durable` 0.68, `durable-neighbour/durable` 0.98. So even with
//! cheap wake-ups and a disk that the replica does not slow, the replica's work on the same two
//! vCPUs keeps `sync-durable@16` near 0.7 of `durable@16` here.
//!
//! Part of that work need not compete with commits: each node's applier (LMDB) is off the
//! commit path, yet at the same CPU priority it preempted the writer and the network threads
//! whenever it woke to apply a group. Appliers now run 10 nice steps below their opener
//! (`pagemesh_core::APPLY_NICE`). Four alternated runs each (`--inflight 16 --variants
//! durable,sync-durable,sync-durable-apart`), before → after: `sync-durable/durable`
//! 0.56–0.64 → 0.62–0.68, `sync-durable-apart/durable` 0.62–0.66 → 0.73–0.78, every variant's
//! commits/s higher (`sync-durable` 45k–47k → 48k–57k). Lowering the ring's flusher the same
//! way (three alternated runs, not kept) moved nothing beyond the noise: it sleeps in
//! `fdatasync`, it does not compete for the CPU. A `MDB_WRITEMAP` environment (not kept) was
//! worse: `sync-durable/durable` 0.43 and 0.50 against 0.62 and 0.66, and `demo` took twice as
//! long (writeback of a writable shared mapping flushes TLBs, the cost the ring's `pwrite`s
//! avoid, see `pagemesh_logpage`'s ring module); a replica applying in 400 ms groups instead of
//! 50 ms (not kept) moved nothing.
//!
//! Nor does giving the replica a core of its own. With every thread of the primary pinned to
//! one vCPU and every thread of the replica to the other (each node's threads inherit the
//! affinity of the thread that opened it; an experiment, not kept), as two one-core machines
//! would run them, three alternated runs each (`--inflight 16`), pinned against unpinned:
//! `durable` 59k–74k against 80k–93k commits/s, `sync-durable/durable` 0.58–0.60 against
//! 0.66–0.70, `sync-durable-apart/durable` 0.61–0.74 against 0.77–0.85. A node's own writer,
//! network thread, flusher and applier need more than one vCPU between them, and a wake-up
//! across vCPUs costs the same halt either way.
//!
//! Stop 34, on a freshly booted VM of the same kind: six alternated pairs of `--inflight 16
//! --variants durable,sync-durable`, the appliers skipping the binlog append (an experiment
//! build, not kept) against the build it came from: `sync-durable` median 64.5k against 58.5k
//! commits/s, `sync-durable/durable` median 0.79 (0.73–0.87) against 0.73 (0.66–0.85), with
//! `durable` unchanged (79k). So a log whose segments are the history, which stops writing each
//! page a second time into LMDB, is worth about 10% here: short of 0.9. Neither moved it: an
//! applier in the idle I/O class (`ioprio_set`, `mq-deadline`; three pairs, 0.76–0.84 against
//! 0.59–0.83, `durable` itself 68k–69k against 71k–95k) nor applying while the pace lasts
//! (`pagemesh_core`'s apply module, Pacing).
//!
//! # What the replica keeps up with
//!
//! Each cell with a replica records the share of the primary's committed pages the replica had
//! received when the window closed (`replica_kept_up`). `async` does not wait for its replica,
//! and on these 2 vCPUs it can commit faster than the replica receives: at 256 in flight, in
//! some rounds, the replica falls more than half the ring behind within the second and the
//! source drops its link ("replica N pages behind, more than half the ring, while its link is
//! blocked"), so that round's `async` rate is not one this machine *replicates*. The bench
//! prints the share (of the median round) and `sync/async as replicated` (`sync` against
//! `async` × that share): what `sync` achieves against the rate at which the replica really
//! took pages. Measured (`--inflight 16,256 --rounds 3`, three runs): the replica kept up with
//! `async` at 16 in flight (1.00); at 256 the median round's share was 0.76, 0.98 and 1.00.
//!
//! How much `sync@256/async` moves from run to run: the build before the ring's flusher was
//! woken only for pages no running flush covers (`pagemesh_logpage::durable`, Flushes) and the
//! build after, alternated six times each (`--inflight 256 --variants async,sync --rounds 3`):
//! before 0.68–0.90 (median 0.78), after 0.68–0.89 (median 0.79), against Little estimates of
//! 0.88–0.91; `async` alone ranged 326k–502k commits/s, `sync` 284k–368k. Two runs that differ
//! by 0.2 say nothing; compare medians of several.
//!
//! # Records per page
//!
//! Each cell prints how many records the primary's log pages held (`records/page`): every page
//! costs a ship, an ack, an ingest on the replica and a ring sync on both nodes, so a variant
//! that seals pages early pays more of each per commit. Until core's commits left asking for
//! their page's seal to their wait (`pagemesh_logpage::seal`, rule 2), `sync` sealed a page each
//! time a commit opened one while the shipper was idle: 6.8 records per page at 16 in flight
//! and 9.2 at 256, against 11.5 and 13.1 for `async`, with 5x the thread switches. Now every
//! variant with a replica fills its pages (16.0 and 16.8 records).
//!
//! # Where `sync` at 256 in flight spent its CPU
//!
//! `perf record -g` of `sync` at 256 in flight (2 s, one run): each node's ring flusher took
//! 16–18% of the samples and each applier about 20%; the network threads 8.5% together. 30% of
//! all samples were TLB-shootdown interrupts (`smp_call_function_many_cond`, `native_write_msr`)
//! under `fdatasync`: writeback write-protected every ring page written through the shared
//! mapping. The ring now writes finished pages with `pwrite` from a working copy in memory
//! (`pagemesh_logpage::ring`, Writes), and the shipper lets a batch of pages build unless a
//! writer asks for one (seal rule 7 in `pagemesh_logpage::seal`). In the same minutes, against
//! the build before both: `sync@256` 202k → 326k commits/s (one run each); the shipper's batch
//! alone, 229–260k → 321–343k (two runs each, batch of 1 against 8). One full run after both
//! (`--inflight 16,256 --rounds 3`): `sync@256/async` 0.81 against a Little estimate of 0.90,
//! `sync@16/async` 0.44 against 0.39.
//!
//! # What a window allows
//!
//! With N commits in flight, Little's law ties throughput to latency: commits/s = N / mean
//! latency. A `sync` commit waits for everything an `async` one does plus the replica's ack, at
//! least one round trip R, so, if the rest of its latency stayed as it is under `async`,
//! `sync/async` could reach at most 1 / (1 + R × async commits/s / N). When both are measured, the
//! bench times R on the same transport ([`ack_round_trip_us`]) and prints that estimate beside each
//! measured ratio. It is an estimate, not a bound: R is timed apart from the cells, and a window
//! that waits on acks queues differently from one that does not. With commits as cheap as they
//! are here, R is not small against N / async commits/s: at 16 in flight an async window drains
//! in 50–65 µs, against an R of 32–36 µs on these VMs' loopback.
//!
//! The bench also times the loopback *floor* F ([`loopback_floor_us`]: blocking std sockets, the
//! same bytes, no runtime, its two threads pinned to two CPUs as a link's two ends run) and prints the estimate with F in place of R: what `sync/async` could
//! reach over a transport that added nothing to the kernel's own round trip. On these 2-vCPU
//! Firecracker VMs F is 24–26 µs, most of it two wake-ups of a halted vCPU on the other core (the
//! same ping-pong pinned to one core takes 7–11 µs), which no code in this process can remove.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagemesh_logpage::PAGE_SIZE;

use pagemesh_core::{Database, Durability, Options, WriteBatch};
use pagemesh_net::TransportKind;
use serde::Serialize;

use pagemesh::{Node, NodeError};

const TABLE: &str = "price_paid";

/// The variants, in measuring order.
pub const VARIANTS: [&str; 7] = [
    "none",
    "async",
    "sync",
    "sync-durable",
    "durable",
    "durable-neighbour",
    "sync-durable-apart",
];

/// Where the replica of `variant` keeps its directory: for `sync-durable-apart`, on tmpfs
/// (another disk than the primary's), else beside the primary under `dir`. The returned guard
/// removes a tmpfs directory when dropped.
fn replica_dir(
    variant: &str,
    dir: &Path,
) -> Result<(std::path::PathBuf, Option<tempfile::TempDir>), BoxError> {
    if variant != "sync-durable-apart" {
        return Ok((dir.join("replica"), None));
    }
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("sync-durable-apart: no /dev/shm; the replica shares the primary's disk");
        return Ok((dir.join("replica"), None));
    }
    let apart = tempfile::tempdir_in(shm)?;
    Ok((apart.path().join("replica"), Some(apart)))
}

/// One measured cell.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicateMeasurement {
    /// Always `replicate/price_paid`.
    pub workload: &'static str,
    /// One of [`VARIANTS`].
    pub variant: String,
    /// Commits in flight.
    pub inflight: usize,
    /// Commits completed per second.
    pub ops_per_sec: f64,
    /// Median commit latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile commit latency, microseconds.
    pub p99_us: f64,
    /// The socket event loop used.
    pub transport: String,
    /// With a replica: the share of the primary's committed pages it had received when the
    /// window closed (1.0: it kept up). Below 1, the variant's rate is more than this machine
    /// replicates: `async` outruns its replica, whose link is then dropped for lagging (see
    /// the module docs, "What the replica keeps up with").
    pub replica_kept_up: Option<f64>,
    /// Records per log page on the primary: how full its pages were sealed (seal rule 2, in
    /// `pagemesh_logpage::seal`). Each page costs a ship, an ack, a replica ingest and a ring
    /// sync, so fewer records per page means more of each per commit.
    pub records_per_page: f64,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Measures one variant at one window on fresh nodes under `dir`.
pub fn measure(
    dir: &Path,
    records: &[(Vec<u8>, Vec<u8>)],
    variant: &str,
    inflight: usize,
    seconds: f64,
    transport: TransportKind,
) -> Result<ReplicateMeasurement, BoxError> {
    let loopback = "127.0.0.1:0".parse()?;
    let options = || Options::new().map_size(4 << 30);
    let primary = Node::builder("bench-primary", dir.join("primary"))
        .listen(loopback)
        .transport(transport)
        .open()?;
    let db = primary.open_database("bench", options())?;
    let (durability, sync_replicas, replica) = match variant {
        "none" => (Durability::Memory, 0, false),
        "async" => (Durability::Memory, 0, true),
        "sync" => (Durability::Replicated(1), 1, true),
        "sync-durable" | "sync-durable-apart" => (Durability::DurableReplicated(1), 1, true),
        "durable" | "durable-neighbour" => (Durability::Durable, 0, false),
        other => return Err(format!("unknown variant {other}").into()),
    };
    primary.serve(&db, sync_replicas);
    let _neighbour = if variant == "durable-neighbour" {
        Some(Neighbour::start(&db, &dir.join("neighbour"), options())?)
    } else {
        None
    };
    // Declared before the replica's node, so dropped after it.
    let (replica_path, _apart) = replica_dir(variant, dir)?;
    let replica_node;
    let _replica = if replica {
        replica_node = Node::builder("bench-replica", replica_path)
            .transport(transport)
            .open()?;
        let addr = primary.local_addr().ok_or("primary is not listening")?;
        let replica = replica_node.replicate(addr, db.uuid(), "bench", options())?;
        wait_attached(&db)?;
        Some(replica)
    } else {
        None
    };
    let mut latencies = Vec::new();
    let mut replica_kept_up = None;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tickets = VecDeque::with_capacity(inflight);
    for (key, value) in records.iter().cycle() {
        if latencies.len() % 64 == 0 && Instant::now() >= deadline {
            replica_kept_up = _replica.as_ref().map(|replica| {
                let received =
                    (replica.database()).map_or(0, |copy| copy.plumbing().received_lsn());
                received as f64 / db.plumbing().received_lsn().max(1) as f64
            });
            break;
        }
        let mut batch = WriteBatch::new();
        batch.put(TABLE, key, value)?;
        tickets.push_back((Instant::now(), db.commit_async(&batch, durability)?));
        if tickets.len() >= inflight {
            let (at, ticket) = tickets.pop_front().ok_or("empty window")?;
            ticket.wait()?;
            latencies.push(at.elapsed());
        }
    }
    for (at, ticket) in tickets {
        ticket.wait()?;
        latencies.push(at.elapsed());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ops = latencies.len() as f64;
    let records_per_page = ops / db.plumbing().received_lsn().max(1) as f64;
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Ok(ReplicateMeasurement {
        workload: "replicate/price_paid",
        variant: variant.to_string(),
        inflight,
        ops_per_sec: ops / elapsed,
        p50_us: percentile(0.50),
        p99_us: percentile(0.99),
        transport: format!("{:?}", primary.runtime()),
        replica_kept_up,
        records_per_page,
    })
}

/// A second database on the same disk that takes every page the primary seals, with no network
/// (the `durable-neighbour` variant): a thread reads the primary's log through a cursor and
/// ingests each run into a replica restored from the primary's (empty) snapshot, whose own
/// flusher and applier then do what a replica's do. Dropping it stops the thread.
struct Neighbour {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), BoxError>>>,
    _db: Database,
}

/// How long the neighbour's reader waits for pages before it looks at its stop flag.
const NEIGHBOUR_POLL: Duration = Duration::from_millis(50);

impl Neighbour {
    fn start(primary: &Database, dir: &Path, options: Options) -> Result<Self, BoxError> {
        let mut snapshot = Vec::new();
        primary.read()?.export(&mut snapshot)?;
        let (db, stats) = pagemesh_core::Plumbing::restore_replica(dir, &snapshot[..], options)?;
        let mut cursor = primary.plumbing().log().cursor(stats.replica_resume_lsn)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (db, stop) = (db.clone(), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("bench-neighbour".into())
                .spawn(move || -> Result<(), BoxError> {
                    while !stop.load(Ordering::Relaxed) {
                        if !cursor.wait_ready(Some(Instant::now() + NEIGHBOUR_POLL))? {
                            continue;
                        }
                        while let Some(run) = cursor.next_run(64)? {
                            let mut pages = run.bytes;
                            while !pages.is_empty() {
                                let ingested = db.plumbing().ingest(pages)?;
                                pages = &pages[ingested.pages * PAGE_SIZE..];
                                if ingested.full {
                                    // The neighbour's applier releases its ring as it applies.
                                    std::thread::sleep(Duration::from_micros(100));
                                }
                            }
                        }
                        let read = cursor.position();
                        cursor.release(read);
                    }
                    Ok(())
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            _db: db,
        })
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(Ok(Err(error))) = self.thread.take().map(std::thread::JoinHandle::join) {
            eprintln!("durable-neighbour: the neighbour's reader stopped: {error}");
        }
    }
}

fn wait_attached(db: &Database) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.plumbing().replication().status().is_empty() {
        if Instant::now() > deadline {
            return Err(NodeError::Timeout {
                name: "bench-replica".into(),
                what: "attach".into(),
                waited: Duration::from_secs(30),
            }
            .into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// A primary and (for every variant but `none`) one replica, kept up across many timings: what
/// the criterion bench (`benches/replicate.rs`) measures.
pub struct Pair {
    // Field order is drop order: the replica stops following before the primary goes.
    _replica: Option<(pagemesh::Replica, Node)>,
    /// After the replica: its tmpfs directory (`sync-durable-apart`), removed once it is closed.
    _apart: Option<tempfile::TempDir>,
    _neighbour: Option<Neighbour>,
    db: Database,
    _primary: Node,
    durability: Durability,
    _dir: tempfile::TempDir,
}

impl Pair {
    /// Starts the nodes for `variant` (one of [`VARIANTS`]).
    pub fn start(variant: &str, transport: TransportKind) -> Result<Self, BoxError> {
        let dir = tempfile::tempdir()?;
        let options = || Options::new().map_size(4 << 30);
        let primary = Node::builder("bench-primary", dir.path().join("primary"))
            .listen("127.0.0.1:0".parse()?)
            .transport(transport)
            .open()?;
        let db = primary.open_database("bench", options())?;
        let (durability, sync_replicas) = match variant {
            "none" | "async" => (Durability::Memory, 0),
            "sync" => (Durability::Replicated(1), 1),
            "sync-durable" | "sync-durable-apart" => (Durability::DurableReplicated(1), 1),
            "durable" | "durable-neighbour" => (Durability::Durable, 0),
            other => return Err(format!("unknown variant {other}").into()),
        };
        primary.serve(&db, sync_replicas);
        let neighbour = if variant == "durable-neighbour" {
            Some(Neighbour::start(
                &db,
                &dir.path().join("neighbour"),
                options(),
            )?)
        } else {
            None
        };
        let (replica_path, apart) = replica_dir(variant, dir.path())?;
        let replica = if matches!(variant, "none" | "durable" | "durable-neighbour") {
            None
        } else {
            let node = Node::builder("bench-replica", replica_path)
                .transport(transport)
                .open()?;
            let addr = primary.local_addr().ok_or("primary is not listening")?;
            let replica = node.replicate(addr, db.uuid(), "bench", options())?;
            wait_attached(&db)?;
            Some((replica, node))
        };
        Ok(Self {
            _replica: replica,
            _apart: apart,
            _neighbour: neighbour,
            db,
            _primary: primary,
            durability,
            _dir: dir,
        })
    }

    /// Commits `count` records, one per commit, `inflight` in flight; returns the time taken.
    pub fn time(
        &self,
        records: &[(Vec<u8>, Vec<u8>)],
        inflight: usize,
        count: u64,
    ) -> Result<Duration, BoxError> {
        let started = Instant::now();
        let mut tickets = VecDeque::with_capacity(inflight);
        for (key, value) in records.iter().cycle().take(count as usize) {
            let mut batch = WriteBatch::new();
            batch.put(TABLE, key, value)?;
            tickets.push_back(self.db.commit_async(&batch, self.durability)?);
            if tickets.len() >= inflight {
                tickets.pop_front().ok_or("empty window")?.wait()?;
            }
        }
        for ticket in tickets {
            ticket.wait()?;
        }
        Ok(started.elapsed())
    }
}

/// Measures every variant at every window in `rounds` interleaved rounds; each cell keeps its
/// median round by commits/s.
pub fn measure_all(
    inflight: &[usize],
    variants: &[&str],
    seconds: f64,
    rounds: usize,
    transport: TransportKind,
) -> Result<Vec<ReplicateMeasurement>, BoxError> {
    let records = super::commit::records(20_000);
    let mut cells: Vec<Vec<ReplicateMeasurement>> = Vec::new();
    for _ in 0..rounds.max(1) {
        let mut index = 0;
        for &window in inflight {
            for &variant in variants {
                let dir = tempfile::tempdir()?;
                let cell = measure(dir.path(), &records, variant, window, seconds, transport)?;
                if cells.len() <= index {
                    cells.push(Vec::new());
                }
                cells[index].push(cell);
                index += 1;
            }
        }
    }
    Ok(cells
        .into_iter()
        .filter_map(|mut rounds| {
            rounds.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
            let middle = rounds.len() / 2;
            rounds.into_iter().nth(middle)
        })
        .collect())
}

/// Round trips per timing in [`ack_round_trip_us`].
const ROUND_TRIP_PINGS: u64 = 2_000;

/// The mean ack round trip on `transport`, in microseconds: the median of three timings of
/// `ROUND_TRIP_PINGS` (2,000) round trips, each a one-page PAGES frame and its ACK over loopback
/// (the transport bench's link, both link state machines and no database behind it).
pub fn ack_round_trip_us(transport: TransportKind) -> Result<f64, BoxError> {
    let mut means = Vec::with_capacity(3);
    for _ in 0..3 {
        let total = super::link::time_pings(transport, ROUND_TRIP_PINGS)?;
        means.push(total.as_secs_f64() * 1e6 / ROUND_TRIP_PINGS as f64);
    }
    means.sort_by(f64::total_cmp);
    Ok(means[1])
}

/// The most seconds one timing of [`loopback_floor_us`] may take.
const FLOOR_SECONDS: f64 = 2.0;

/// The loopback floor in microseconds: the median of three p50s of
/// [`super::link::blocking_floor`], `ROUND_TRIP_PINGS` round trips each.
pub fn loopback_floor_us() -> Result<f64, BoxError> {
    let mut p50s = Vec::with_capacity(3);
    for _ in 0..3 {
        let floor = super::link::blocking_floor(ROUND_TRIP_PINGS, FLOOR_SECONDS)?;
        p50s.push(floor.rtt_p50_us);
    }
    p50s.sort_by(f64::total_cmp);
    Ok(p50s[1])
}

/// The round trips the `sync/async` ratios are set against, in µs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoundTrips {
    /// The mean ack round trip on the bench's transport ([`ack_round_trip_us`]).
    pub ack_us: f64,
    /// The loopback floor ([`loopback_floor_us`]).
    pub floor_us: f64,
}

/// The ratios the issue asks for; with the round trips, also what Little's law lets each
/// `sync/async` ratio reach over this transport and over a transport at the floor (see the
/// module docs).
pub fn ratios(
    cells: &[ReplicateMeasurement],
    round_trips: Option<RoundTrips>,
) -> Vec<super::Ratio> {
    let find = |variant: &str, inflight: usize| {
        cells
            .iter()
            .find(|c| c.variant == variant && c.inflight == inflight)
    };
    let mut out = Vec::new();
    for inflight in [1, 16, 256] {
        if let (Some(sync), Some(asynchronous)) = (find("sync", inflight), find("async", inflight))
        {
            out.push(super::Ratio {
                workload: "replicate/price_paid".into(),
                threads: 1,
                ratio: format!("sync@{inflight}/async (commits/s)"),
                value: sync.ops_per_sec / asynchronous.ops_per_sec,
            });
            if let Some(kept) = asynchronous.replica_kept_up {
                out.push(super::Ratio {
                    workload: "replicate/price_paid".into(),
                    threads: 1,
                    ratio: format!("async@{inflight}: share its replica received"),
                    value: kept,
                });
                out.push(super::Ratio {
                    workload: "replicate/price_paid".into(),
                    threads: 1,
                    ratio: format!("sync@{inflight}/async as replicated"),
                    value: sync.ops_per_sec / (asynchronous.ops_per_sec * kept).max(1e-9),
                });
            }
            if let Some(round_trips) = round_trips {
                let per_sec = asynchronous.ops_per_sec;
                for (what, round_trip_us) in [
                    ("", round_trips.ack_us),
                    (" at the floor", round_trips.floor_us),
                ] {
                    out.push(super::Ratio {
                        workload: "replicate/price_paid".into(),
                        threads: 1,
                        ratio: format!("sync@{inflight}/async Little estimate{what}"),
                        value: little_estimate(per_sec, inflight, round_trip_us),
                    });
                }
            }
        }
    }
    if let Some(round_trips) = round_trips {
        for (ratio, value) in [
            ("ack round trip, mean (us)", round_trips.ack_us),
            ("loopback floor round trip, p50 (us)", round_trips.floor_us),
        ] {
            out.push(super::Ratio {
                workload: "replicate/price_paid".into(),
                threads: 1,
                ratio: ratio.into(),
                value,
            });
        }
    }
    for inflight in [1, 16, 256] {
        if let (Some(both), Some(durable)) =
            (find("sync-durable", inflight), find("durable", inflight))
        {
            out.push(super::Ratio {
                workload: "replicate/price_paid".into(),
                threads: 1,
                ratio: format!("sync-durable@{inflight}/durable (commits/s)"),
                value: both.ops_per_sec / durable.ops_per_sec,
            });
            if let Some(apart) = find("sync-durable-apart", inflight) {
                out.push(super::Ratio {
                    workload: "replicate/price_paid".into(),
                    threads: 1,
                    ratio: format!("sync-durable-apart@{inflight}/durable (replica's disk apart)"),
                    value: apart.ops_per_sec / durable.ops_per_sec,
                });
            }
            if let Some(neighbour) = find("durable-neighbour", inflight) {
                for (ratio, value) in [
                    (
                        format!("durable-neighbour@{inflight}/durable (shared-disk ceiling)"),
                        neighbour.ops_per_sec / durable.ops_per_sec,
                    ),
                    (
                        format!("sync-durable@{inflight}/durable-neighbour"),
                        both.ops_per_sec / neighbour.ops_per_sec,
                    ),
                ] {
                    out.push(super::Ratio {
                        workload: "replicate/price_paid".into(),
                        threads: 1,
                        ratio,
                        value,
                    });
                }
            }
        }
    }
    if let (Some(sync), Some(none)) = (find("sync", 1), find("none", 1)) {
        out.push(super::Ratio {
            workload: "replicate/price_paid".into(),
            threads: 1,
            ratio: "sync@1 p50 - none@1 p50 (us)".into(),
            value: sync.p50_us - none.p50_us,
        });
    }
    out
}

/// What `sync/async` can reach at `inflight` commits in flight if `sync` adds one round trip of
/// `round_trip_us` to each commit's `async` latency: 1 / (1 + R × commits/s / N).
pub fn little_estimate(async_per_sec: f64, inflight: usize, round_trip_us: f64) -> f64 {
    1.0 / (1.0 + round_trip_us * 1e-6 * async_per_sec / inflight.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn little_estimate_matches_the_window_arithmetic() {
        // 16 in flight at 200k/s drain in 80 µs; a 20 µs round trip makes it 100 µs: 0.8.
        assert!((little_estimate(200_000.0, 16, 20.0) - 0.8).abs() < 1e-9);
        // A free round trip costs nothing; a larger window hides more of it.
        assert!((little_estimate(200_000.0, 16, 0.0) - 1.0).abs() < 1e-12);
        assert!(little_estimate(200_000.0, 256, 20.0) > little_estimate(200_000.0, 16, 20.0));
    }

    #[test]
    fn the_floor_estimate_is_printed_beside_each_sync_ratio() {
        let cell = |variant: &str, ops_per_sec: f64| ReplicateMeasurement {
            workload: "replicate/price_paid",
            variant: variant.to_string(),
            inflight: 16,
            ops_per_sec,
            p50_us: 1.0,
            p99_us: 1.0,
            transport: "Uring".into(),
            replica_kept_up: Some(1.0),
            records_per_page: 16.0,
        };
        let cells = [cell("async", 200_000.0), cell("sync", 100_000.0)];
        let round_trips = RoundTrips {
            ack_us: 20.0,
            floor_us: 10.0,
        };
        let ratios = ratios(&cells, Some(round_trips));
        let value = |name: &str| {
            let ratio = ratios.iter().find(|r| r.ratio == name);
            ratio
                .unwrap_or_else(|| panic!("{name} in {ratios:?}"))
                .value
        };
        assert!((value("sync@16/async (commits/s)") - 0.5).abs() < 1e-9);
        assert!((value("sync@16/async Little estimate") - 0.8).abs() < 1e-9);
        let at_floor = 1.0 / (1.0 + 10e-6 * 200_000.0 / 16.0);
        assert!((value("sync@16/async Little estimate at the floor") - at_floor).abs() < 1e-9);
        assert_eq!(value("loopback floor round trip, p50 (us)"), 10.0);
        assert_eq!(value("async@16: share its replica received"), 1.0);
        assert!((value("sync@16/async as replicated") - 0.5).abs() < 1e-9);
        assert_eq!(ratios.len(), 7, "{ratios:?}");
        assert!(self::ratios(&cells, None).len() == 3);
        // An async window its replica fell behind: sync is set against what was replicated.
        let behind = [
            ReplicateMeasurement {
                replica_kept_up: Some(0.5),
                records_per_page: 16.0,
                ..cell("async", 200_000.0)
            },
            cell("sync", 100_000.0),
        ];
        let ratios = self::ratios(&behind, None);
        let as_replicated = ratios
            .iter()
            .find(|r| r.ratio == "sync@16/async as replicated");
        assert!(
            as_replicated.is_some_and(|r| (r.value - 1.0).abs() < 1e-9),
            "{ratios:?}"
        );
    }

    #[test]
    fn every_variant_commits_over_both_transports() {
        let records = super::super::commit::records(200);
        for transport in [TransportKind::Epoll, TransportKind::Auto] {
            for variant in VARIANTS {
                let dir = tempfile::tempdir().expect("tempdir");
                let cell = measure(dir.path(), &records, variant, 4, 0.05, transport)
                    .unwrap_or_else(|e| panic!("{variant} on {transport:?}: {e}"));
                assert!(cell.ops_per_sec > 0.0 && cell.p50_us > 0.0, "{cell:?}");
            }
        }
    }
}
