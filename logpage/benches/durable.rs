//! Durable commits to the log's ring against the floor of the disk, in the same run.
//!
//! - `durable/fsync-floor`: one 4 KB `pwrite` into a preallocated, written file, then `fdatasync`:
//!   the least any durable commit can cost here. (Its blocks are written through a mapping, as
//!   the ring's are: written with `write(2)` they would sit in large folios, see `ring-blocks`.)
//! - `durable/commit`: one 100-byte record appended to the ring, then `Log::wait_durable`, with 1
//!   and with 16 commits in flight from one thread (the oldest is waited for before a 17th is
//!   appended), with a `Flusher` running as a store would run one; and at 1 in flight without it.
//! - `durable/flush-method`: what chose the ring's sync call: a 4 KB store through a mapping,
//!   then `fdatasync` of the file, `msync` of the page, or `sync_file_range` of the page and
//!   `fdatasync`.
//! - `durable/ring-blocks`: what chose to write a new ring's blocks once: the same store and
//!   `fdatasync` over blocks written through the mapping, over blocks only fallocated, and over
//!   blocks written with `write(2)` (whose page cache holds them as large folios).
//!
//! Criterion times each; then, with `--bench`, the bench measures p50 latencies itself and
//! prints the ratios (`durable@1 p50 / fsync-floor p50`, commits/s). Disks differ from machine
//! to machine: compare only ratios from one run.
//!
//! Run: `cargo bench -p pagemesh-logpage --bench durable`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use memmap2::MmapMut;
use pagemesh_logpage::{Flusher, Log, LogOptions};

const PAGE: usize = 4096;
/// Slots of the test files: 4 MiB, the default ring.
const FILE_PAGES: usize = 1024;
const RECORD: [u8; 100] = [7; 100];

/// How a test file's blocks were prepared.
#[derive(Clone, Copy, Debug)]
enum Blocks {
    /// Written once through a mapping, synced: as a new log segment is installed (`segment.rs`).
    Mapped,
    /// Only `posix_fallocate`d: unwritten extents.
    Fallocated,
    /// Written with `write(2)` and synced, left in the page cache.
    Written,
}

/// A preallocated file of [`FILE_PAGES`] pages in `dir`, its blocks prepared as `blocks`.
fn test_file(dir: &Path, blocks: Blocks) -> File {
    let path = dir.join(format!("{blocks:?}.bin"));
    let _ = std::fs::remove_file(&path);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create test file");
    let len = FILE_PAGES * PAGE;
    // SAFETY: posix_fallocate takes a descriptor and two integers; `file` is open.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    assert_eq!(rc, 0, "posix_fallocate");
    match blocks {
        Blocks::Fallocated => {}
        Blocks::Written => (&file).write_all(&vec![0; len]).expect("write"),
        Blocks::Mapped => {
            // SAFETY: the file is ours, open read-write, and not truncated while mapped.
            let mut map = unsafe { MmapMut::map_mut(&file) }.expect("map");
            map.fill(0);
            map.flush().expect("msync");
        }
    }
    file.sync_all().expect("fsync");
    file
}

/// `iters` times: one 4 KB `pwrite` and `fdatasync`, in `file` (preallocated and written).
fn fsync_floor(file: &File, iters: u64) -> Vec<Duration> {
    let page = [0x5A; PAGE];
    (0..iters)
        .map(|i| {
            let offset = (i as usize % FILE_PAGES) * PAGE;
            let started = Instant::now();
            std::os::unix::fs::FileExt::write_all_at(file, &page, offset as u64).expect("pwrite");
            file.sync_data().expect("fdatasync");
            started.elapsed()
        })
        .collect()
}

/// The ring's sync candidates.
#[derive(Clone, Copy, Debug)]
enum Method {
    Fdatasync,
    MsyncRange,
    SyncFileRangeFdatasync,
}

/// A test file and its mapping, kept across criterion's calls so that every sample is of the
/// steady state (creating a file syncs 4 MiB, and deleting one discards its blocks).
struct SyncTarget {
    blocks: Blocks,
    file: File,
    map: MmapMut,
    next_page: usize,
}

impl SyncTarget {
    fn new(dir: &Path, blocks: Blocks) -> Self {
        let file = test_file(dir, blocks);
        // SAFETY: the file is ours, open read-write, and not truncated while mapped.
        let map = unsafe { MmapMut::map_mut(&file) }.expect("map");
        Self {
            blocks,
            file,
            map,
            next_page: 0,
        }
    }

    /// `iters` times: a 4 KB store through the mapping, then `method`. Fallocated blocks are
    /// used once each: the file is made anew when they run out (outside the timing).
    fn store_and_sync(&mut self, dir: &Path, method: Method, iters: u64) -> Vec<Duration> {
        (0..iters).map(|_| self.one(dir, method)).collect()
    }

    fn one(&mut self, dir: &Path, method: Method) -> Duration {
        if self.next_page == FILE_PAGES {
            if let Blocks::Fallocated = self.blocks {
                *self = Self::new(dir, self.blocks);
            }
            self.next_page = 0;
        }
        let offset = self.next_page * PAGE;
        self.next_page += 1;
        let started = Instant::now();
        self.map[offset..offset + PAGE].fill(self.next_page as u8 | 1);
        match method {
            Method::Fdatasync => self.file.sync_data().expect("fdatasync"),
            Method::MsyncRange => self.map.flush_range(offset, PAGE).expect("msync"),
            Method::SyncFileRangeFdatasync => {
                let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                // SAFETY: a descriptor and three integers; the file is open.
                let rc = unsafe {
                    libc::sync_file_range(self.file.as_raw_fd(), offset as i64, PAGE as i64, flags)
                };
                assert_eq!(rc, 0, "sync_file_range");
                self.file.sync_data().expect("fdatasync");
            }
        }
        started.elapsed()
    }
}

/// A log on a fresh ring in `dir`, with a flusher if `flusher`.
fn durable_log(dir: &Path, flusher: bool) -> (Log, Option<Flusher>) {
    let log = Log::open(dir, LogOptions::new().slots(FILE_PAGES as u64)).expect("open log");
    let flusher = flusher.then(|| log.spawn_flusher().expect("flusher"));
    (log, flusher)
}

/// `count` durable commits of [`RECORD`], `inflight` in flight from this thread. Returns each
/// commit's latency (append to `wait_durable` returning) and the wall time.
fn durable_commits(log: &Log, inflight: usize, count: u64) -> (Vec<Duration>, Duration) {
    let mut window = VecDeque::with_capacity(inflight);
    let mut latencies = Vec::with_capacity(count as usize);
    let started = Instant::now();
    let mut wait_oldest = |window: &mut VecDeque<(Instant, _)>| {
        let (appended, pos) = window.pop_front().expect("a commit in flight");
        assert!(log.wait_durable(pos, None).expect("wait_durable"));
        latencies.push(appended.elapsed());
    };
    for _ in 0..count {
        if window.len() == inflight {
            wait_oldest(&mut window);
        }
        window.push_back((Instant::now(), log.append(&RECORD).expect("append")));
    }
    while !window.is_empty() {
        wait_oldest(&mut window);
    }
    (latencies, started.elapsed())
}

fn durable(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let mut group = c.benchmark_group("durable/commit");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let floor_file = test_file(dir, Blocks::Mapped);
    group.bench_function("fsync-floor", |b| {
        b.iter_custom(|iters| fsync_floor(&floor_file, iters).iter().sum());
    });
    for (name, inflight, flusher) in [
        ("durable@1", 1, true),
        ("durable@16", 16, true),
        ("durable@1-no-flusher", 1, false),
    ] {
        let ring = tempfile::tempdir_in(dir).expect("ring dir");
        let (log, _flusher) = durable_log(ring.path(), flusher);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| durable_commits(&log, inflight, iters).1);
        });
    }
    group.finish();

    let mut group = c.benchmark_group("durable/flush-method");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for method in [
        Method::Fdatasync,
        Method::MsyncRange,
        Method::SyncFileRangeFdatasync,
    ] {
        let mut target = SyncTarget::new(dir, Blocks::Mapped);
        group.bench_function(BenchmarkId::from_parameter(format!("{method:?}")), |b| {
            b.iter_custom(|iters| target.store_and_sync(dir, method, iters).iter().sum());
        });
    }
    group.finish();

    let mut group = c.benchmark_group("durable/ring-blocks");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for blocks in [Blocks::Mapped, Blocks::Fallocated, Blocks::Written] {
        let mut target = SyncTarget::new(dir, blocks);
        group.bench_function(BenchmarkId::from_parameter(format!("{blocks:?}")), |b| {
            b.iter_custom(|iters| {
                target
                    .store_and_sync(dir, Method::Fdatasync, iters)
                    .iter()
                    .sum()
            });
        });
    }
    group.finish();
}

/// p50 and p99 of `samples`.
fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

/// Operations before measuring: the first syncs after a file was created or a ring opened are
/// slower.
const WARM_UP: usize = 300;
/// Interleaved rounds of the ratio measurements.
const ROUNDS: usize = 4;

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Measures p50s directly and prints the ratios. The floor and the commit variants take turns,
/// [`ROUNDS`] rounds each, so that a slow spell of the disk falls on all of them alike.
fn ratios() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let floor_file = test_file(dir, Blocks::Mapped);
    let variants = [
        ("durable@1", 1, true, 600),
        ("durable@1-no-flusher", 1, false, 600),
        ("durable@16", 16, true, 6_000),
    ];
    let logs: Vec<_> = variants
        .iter()
        .map(|&(_, inflight, flusher, _)| {
            let ring = tempfile::tempdir_in(dir).expect("ring dir");
            let (log, flusher) = durable_log(ring.path(), flusher);
            durable_commits(&log, inflight, WARM_UP as u64 * inflight as u64);
            (ring, log, flusher)
        })
        .collect();
    fsync_floor(&floor_file, WARM_UP as u64);
    let mut floor_samples = Vec::new();
    let mut commits: Vec<(Vec<Duration>, Duration)> = vec![(Vec::new(), Duration::ZERO); 3];
    for _ in 0..ROUNDS {
        floor_samples.extend(fsync_floor(&floor_file, 600));
        for (i, &(_, inflight, _, count)) in variants.iter().enumerate() {
            let (latencies, wall) = durable_commits(&logs[i].1, inflight, count);
            commits[i].0.extend(latencies);
            commits[i].1 += wall;
        }
    }
    let (floor, floor_p99) = percentiles(floor_samples);
    println!("\nratios (one run, {ROUNDS} interleaved rounds; p50 over single operations)");
    println!(
        "  fsync-floor           p50 {:.1} µs, p99 {:.1} µs (4 KB pwrite + fdatasync, written file)",
        micros(floor),
        micros(floor_p99)
    );
    for (&(name, _, _, count), (latencies, wall)) in variants.iter().zip(commits) {
        let (p50, p99) = percentiles(latencies);
        let rate = (count * ROUNDS as u64) as f64 / wall.as_secs_f64();
        println!(
            "  {name:<21} p50 {:.1} µs = {:.2}× fsync-floor p50, p99 {:.1} µs; {rate:.0} \
             commits/s = {:.2}× 1 / fsync-floor p50",
            micros(p50),
            p50.as_secs_f64() / floor.as_secs_f64(),
            micros(p99),
            rate * floor.as_secs_f64(),
        );
    }
    drop(logs);
    let mut mapped = SyncTarget::new(dir, Blocks::Mapped);
    mapped.store_and_sync(dir, Method::Fdatasync, WARM_UP as u64);
    let (base, _) = percentiles(mapped.store_and_sync(dir, Method::Fdatasync, 1_500));
    println!("  flush-method (4 KB stored through the mapping, then the call), p50:");
    println!("    Fdatasync              {:.1} µs = 1.00×", micros(base));
    for method in [Method::MsyncRange, Method::SyncFileRangeFdatasync] {
        let (p, _) = percentiles(mapped.store_and_sync(dir, method, 1_500));
        println!(
            "    {:<22} {:.1} µs = {:.2}×",
            format!("{method:?}"),
            micros(p),
            p.as_secs_f64() / base.as_secs_f64()
        );
    }
    println!("  ring-blocks (store and fdatasync over blocks prepared as), p50:");
    println!("    Mapped                 {:.1} µs = 1.00×", micros(base));
    for blocks in [Blocks::Fallocated, Blocks::Written] {
        let mut target = SyncTarget::new(dir, blocks);
        let (p, _) = percentiles(target.store_and_sync(dir, Method::Fdatasync, 1_000));
        drop(target);
        println!(
            "    {:<22} {:.1} µs = {:.2}×",
            format!("{blocks:?}"),
            micros(p),
            p.as_secs_f64() / base.as_secs_f64()
        );
    }
}

criterion_group!(benches, durable);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|arg| arg == "--bench") {
        ratios();
    }
}
