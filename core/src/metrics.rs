//! What a database counts while it runs, and the plain snapshot [`Database::metrics`] hands out.
//!
//! # Cost on the commit path
//!
//! A commit records one observation when its ticket's wait returns: three relaxed `fetch_add`s
//! (its durability's commit count, latency sum, and one latency bucket) and two clock reads (one
//! when the ticket is made, one when it returns). No lock, no allocation. The counters of each
//! durability sit on their own cache lines ([`Padded`]), so commits of different durabilities do
//! not share a line. The histogram's buckets are fixed (a 1-2-5 series from 5 µs to 10 s), found
//! by a binary search over 21 bounds.
//!
//! Everything else is counted off the commit path: the applier's groups (records per group) once
//! per group, and the *apply timeline* below once per group too.
//!
//! # Lag in seconds
//!
//! A source knows which pages each replica received (its acks: `replication.rs`), and so the lag
//! in pages and bytes. For the lag in seconds it needs *when* the first page a replica lacks was
//! written. The applier samples, after each group, `(applied LSN, now)` into a bounded
//! [`Timeline`] (a new sample at most every [`TIMELINE_SPACING`]; a group within that time
//! extends the last sample instead, so a page is never dated later than it was applied). A
//! replica missing page `r` is then at least `now − t` behind, `t` being the time of the first
//! sample past `r`: an estimate that errs high by at most the spacing, plus the local apply
//! delay (milliseconds). When the timeline no longer reaches back to `r` (more than
//! [`TIMELINE_SAMPLES_MAX`] samples ago, over 7 minutes at full load), the lag is reported as the
//! oldest sample's age: a lower bound.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::options::Durability;
#[cfg(doc)]
use crate::Database;

/// Upper bounds of the commit latency buckets, in microseconds (a 1-2-5 series).
const LATENCY_BOUNDS_US: [u64; 21] = [
    5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
    500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000, 30_000_000,
];

/// Upper bounds of the records-per-group buckets (powers of two).
const GROUP_BOUNDS: [u64; 18] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 2_048, 4_096, 8_192, 16_384, 32_768, 65_536,
    131_072,
];

/// Least time between two samples of the apply timeline.
pub const TIMELINE_SPACING: Duration = Duration::from_millis(100);
/// Most samples the apply timeline keeps (16 bytes each).
pub const TIMELINE_SAMPLES_MAX: usize = 4096;
/// Most replicas a source remembers after they detached (their lag stays visible, state
/// [`ReplicaState::Down`], until they attach again); the oldest is forgotten first.
pub const DEPARTED_REPLICAS_MAX: usize = 64;
/// Bytes of one log page: lag in bytes is lag in pages times this.
const PAGE_BYTES: u64 = 4096;

/// The five durabilities, in the order of [`DatabaseMetrics::commits`].
const DURABILITIES: [&str; 5] = [
    "memory",
    "applied",
    "durable",
    "replicated",
    "durable_replicated",
];

fn durability_index(durability: Durability) -> usize {
    match durability {
        Durability::Memory => 0,
        Durability::Applied => 1,
        Durability::Durable => 2,
        Durability::Replicated(_) => 3,
        Durability::DurableReplicated(_) => 4,
    }
}

/// Aligns its content to 128 bytes (two cache lines, as adjacent-line prefetchers pair them), so
/// two of them never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A histogram of atomics over fixed bounds: lock-free, allocation-free.
#[derive(Debug)]
struct AtomicHistogram<const N: usize> {
    bounds: &'static [u64; N],
    /// `buckets[i]` counts values in `(bounds[i-1], bounds[i]]`; values above the last bound
    /// are only in `count`.
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum: AtomicU64,
}

impl<const N: usize> AtomicHistogram<N> {
    fn new(bounds: &'static [u64; N]) -> Self {
        Self {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: u64) {
        let index = self.bounds.partition_point(|&bound| bound < value);
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// A reading in the recorded unit divided by `divisor` (a division, not a multiplication
    /// by its inverse: 5 µs reads as exactly 5e-6 s, the nearest double, not 4.9999999999999996e-6).
    fn reading(&self, divisor: f64) -> Histogram {
        let counts: Vec<u64> = (self.buckets.iter())
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        // Loads race with observations: never report fewer in all than in the buckets.
        let in_buckets = counts.iter().sum::<u64>();
        Histogram {
            bounds: self.bounds.iter().map(|&b| b as f64 / divisor).collect(),
            counts,
            count: self.count.load(Ordering::Relaxed).max(in_buckets),
            sum: self.sum.load(Ordering::Relaxed) as f64 / divisor,
        }
    }
}

/// The counters of one durability.
#[derive(Debug)]
struct CommitCounters {
    failures: AtomicU64,
    /// Latency in microseconds; its count is the successful commits.
    latency_us: AtomicHistogram<21>,
}

/// What a database counts (one per database, shared by its handles, tickets and applier).
#[derive(Debug)]
pub(crate) struct Metrics {
    commits: [Padded<CommitCounters>; 5],
    records_per_group: AtomicHistogram<18>,
    pub(crate) timeline: Timeline,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            commits: std::array::from_fn(|_| {
                Padded(CommitCounters {
                    failures: AtomicU64::new(0),
                    latency_us: AtomicHistogram::new(&LATENCY_BOUNDS_US),
                })
            }),
            records_per_group: AtomicHistogram::new(&GROUP_BOUNDS),
            timeline: Timeline::default(),
        }
    }
}

impl Metrics {
    /// A commit of `durability`, started at `started`, returned (`ok`: successfully).
    #[inline]
    pub(crate) fn commit(&self, durability: Durability, started: Instant, ok: bool) {
        let counters = &self.commits[durability_index(durability)].0;
        if ok {
            let micros = started.elapsed().as_micros().min(u64::MAX as u128) as u64;
            counters.latency_us.observe(micros);
        } else {
            counters.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The applier committed a group of `records` records.
    pub(crate) fn group(&self, records: u64) {
        self.records_per_group.observe(records);
    }

    pub(crate) fn commits(&self) -> Vec<CommitMetrics> {
        self.commits
            .iter()
            .zip(DURABILITIES)
            .map(|(counters, durability)| {
                let latency = counters.0.latency_us.reading(1e6);
                CommitMetrics {
                    durability,
                    commits: latency.count,
                    failures: counters.0.failures.load(Ordering::Relaxed),
                    latency_seconds: latency,
                }
            })
            .collect()
    }

    pub(crate) fn records_per_group(&self) -> Histogram {
        self.records_per_group.reading(1.0)
    }
}

/// When pages were applied here, sampled (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Timeline {
    /// `(lsn_end, at)`: every page below `lsn_end` was applied by `at`, oldest first.
    samples: Mutex<VecDeque<(u64, Instant)>>,
}

impl Timeline {
    /// Every page below `lsn_end` is applied now. Called once per group, by the applier.
    pub(crate) fn sample(&self, lsn_end: u64) {
        self.sample_at(lsn_end, Instant::now());
    }

    fn sample_at(&self, lsn_end: u64, now: Instant) {
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match samples.back_mut() {
            Some((lsn, _)) if *lsn >= lsn_end => {}
            Some((lsn, at)) if now.saturating_duration_since(*at) < TIMELINE_SPACING => {
                *lsn = lsn_end;
            }
            _ => {
                if samples.len() >= TIMELINE_SAMPLES_MAX {
                    samples.pop_front();
                }
                samples.push_back((lsn_end, now));
            }
        }
    }

    /// How long ago the page `lsn` was applied here, at least: zero if it is not applied yet.
    pub(crate) fn age(&self, lsn: u64, now: Instant) -> Duration {
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first_past = samples.partition_point(|&(lsn_end, _)| lsn_end <= lsn);
        samples
            .get(first_past)
            .map_or(Duration::ZERO, |&(_, at)| now.saturating_duration_since(at))
    }
}

/// A histogram reading: `counts[i]` values fell in `(bounds[i-1], bounds[i]]` (not cumulative);
/// `count` counts every value, those above the last bound too.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Upper bounds of the buckets, increasing.
    pub bounds: Vec<f64>,
    /// Values per bucket.
    pub counts: Vec<u64>,
    /// Every value observed.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
}

/// Commits of one durability since the database was opened (counted when the commit's wait
/// returns: a ticket never waited on is not counted). `applied` also counts
/// `put_if_version` and every attempt of a transaction (a conflict is a failure).
#[derive(Clone, Debug, PartialEq)]
pub struct CommitMetrics {
    /// `memory`, `applied`, `durable`, `replicated` or `durable_replicated`.
    pub durability: &'static str,
    /// Commits that returned `Ok`.
    pub commits: u64,
    /// Commits whose wait failed (a replication timeout, a poisoned database, a conflict).
    pub failures: u64,
    /// Time from `commit_async` to the wait's return, of the successful commits, in seconds.
    pub latency_seconds: Histogram,
}

/// How a replica attached to a source stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicaState {
    /// Attached; its acks count for `Replicated(n)`.
    Sync,
    /// Attached, asynchronous.
    Async,
    /// Detached (its link is down); remembered with what it had received.
    Down,
}

impl ReplicaState {
    /// `sync`, `async` or `down`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Async => "async",
            Self::Down => "down",
        }
    }
}

/// How far one replica of a source is behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaLag {
    /// The name it attached with (its node's name).
    pub name: String,
    /// Its node.
    pub node: Uuid,
    /// Attached (sync or async) or down.
    pub state: ReplicaState,
    /// Every page below this is received there.
    pub received_lsn: u64,
    /// Pages this database committed that it has not received.
    pub lag_pages: u64,
    /// The same in bytes (4 KiB a page).
    pub lag_bytes: u64,
    /// How long ago the first page it lacks was applied here (see the module docs); zero when it
    /// lacks nothing.
    pub lag_seconds: f64,
}

impl ReplicaLag {
    pub(crate) fn new(
        name: String,
        node: Uuid,
        state: ReplicaState,
        received_lsn: u64,
        committed_lsn: u64,
        timeline: &Timeline,
        now: Instant,
    ) -> Self {
        let lag_pages = committed_lsn.saturating_sub(received_lsn);
        let lag_seconds = if lag_pages == 0 {
            0.0
        } else {
            timeline.age(received_lsn, now).as_secs_f64()
        };
        Self {
            name,
            node,
            state,
            received_lsn,
            lag_pages,
            lag_bytes: lag_pages * PAGE_BYTES,
            lag_seconds,
        }
    }
}

/// A database's figures at one moment, from [`Database::metrics`]: plain values, cheap to take
/// (a few atomic loads and one short lock of the replication state).
#[derive(Clone, Debug, PartialEq)]
pub struct DatabaseMetrics {
    /// The database's uuid.
    pub uuid: Uuid,
    /// Whether it is a read-only replica.
    pub is_replica: bool,
    /// Every page below this is committed (finished) in the log ring; on a replica, received.
    pub committed_lsn: u64,
    /// Every page below this is applied (visible to readers).
    pub applied_lsn: u64,
    /// Every page below this is on disk in the ring.
    pub durable_lsn: u64,
    /// Pages the ring holds.
    pub ring_slots: u64,
    /// Pages of the ring in use: reserved and not yet released.
    pub ring_used_pages: u64,
    /// LMDB write transactions the applier committed.
    pub groups: u64,
    /// Records applied.
    pub records: u64,
    /// Records per applied group.
    pub records_per_group: Histogram,
    /// One entry per durability.
    pub commits: Vec<CommitMetrics>,
    /// The replicas of this database (when it is a source): attached ones, then departed ones.
    pub replicas: Vec<ReplicaLag>,
}

impl DatabaseMetrics {
    /// The ring's fill, 0.0 to 1.0.
    pub fn ring_fill(&self) -> f64 {
        if self.ring_slots == 0 {
            return 0.0;
        }
        self.ring_used_pages as f64 / self.ring_slots as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_whose_bound_holds_it() {
        let histogram = AtomicHistogram::new(&LATENCY_BOUNDS_US);
        for micros in [1, 5, 6, 20, 40_000_000] {
            histogram.observe(micros);
        }
        let reading = histogram.reading(1.0);
        assert_eq!(&reading.counts[..4], &[2, 1, 1, 0]);
        assert_eq!(
            reading.counts.iter().sum::<u64>(),
            4,
            "above the last bound"
        );
        assert_eq!(reading.count, 5);
        assert_eq!(reading.sum, 40_000_032.0);
        assert_eq!(histogram.reading(1e6).bounds[0].to_string(), "0.000005");
    }

    #[test]
    fn the_timeline_dates_a_page_by_the_first_sample_past_it_and_never_later() {
        let timeline = Timeline::default();
        let start = Instant::now();
        timeline.sample_at(10, start);
        // Within the spacing: extends the last sample (pages 10..20 dated `start`).
        timeline.sample_at(20, start + Duration::from_millis(10));
        timeline.sample_at(30, start + Duration::from_secs(1));
        let now = start + Duration::from_secs(5);
        assert_eq!(timeline.age(5, now), Duration::from_secs(5));
        assert_eq!(timeline.age(15, now), Duration::from_secs(5));
        assert_eq!(timeline.age(25, now), Duration::from_secs(4));
        assert_eq!(timeline.age(30, now), Duration::ZERO, "not applied yet");
    }

    #[test]
    fn commits_count_by_durability_and_a_conflict_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::Database::open(dir.path(), crate::Options::new()).unwrap();
        let mut batch = crate::WriteBatch::new();
        batch.put("t", b"k", b"v").unwrap();
        db.commit(&batch, Durability::Memory).unwrap();
        db.commit(&batch, Durability::Durable).unwrap();
        db.put_if_version("t", b"x", None, b"1").unwrap();
        let conflict = db.put_if_version("t", b"x", None, b"2");
        assert!(
            matches!(conflict, Err(crate::Error::Conflict { .. })),
            "{conflict:?}"
        );
        let metrics = db.metrics();
        let by = |name| {
            (metrics.commits.iter())
                .find(|c| c.durability == name)
                .cloned()
                .unwrap()
        };
        assert_eq!((by("memory").commits, by("durable").commits), (1, 1));
        assert_eq!((by("applied").commits, by("applied").failures), (1, 1));
        assert_eq!(by("replicated").commits, 0);
        assert!(by("durable").latency_seconds.sum > 0.0);
        assert!(metrics.applied_lsn > 0 && metrics.records >= 3);
    }

    #[test]
    fn a_replica_that_lacks_nothing_lags_zero() {
        let timeline = Timeline::default();
        let now = Instant::now();
        timeline.sample_at(8, now - Duration::from_secs(3));
        let lag = |received| {
            ReplicaLag::new(
                "r".into(),
                Uuid::nil(),
                ReplicaState::Sync,
                received,
                8,
                &timeline,
                now,
            )
        };
        assert_eq!((lag(8).lag_pages, lag(8).lag_seconds), (0, 0.0));
        let behind = lag(2);
        assert_eq!((behind.lag_pages, behind.lag_bytes), (6, 6 * 4096));
        assert_eq!(behind.lag_seconds, 3.0);
    }
}
