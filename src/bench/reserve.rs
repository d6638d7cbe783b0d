//! `bench reserve`: records appended per second through the log's anchor, against the designs it
//! replaces or bounds.
//!
//! Variants, all writing the same records into 4 KB pages of an anonymous memory ring of the same
//! size, each finishing every page with its header and crc32c:
//!
//! - `anchor`: [`pagemesh_logpage::Log::append`]: CAS reservation, lock-free copy and commit,
//!   the page finished by whichever thread completes it, watermark and backpressure included.
//! - `mutex`: one `Mutex` held across reserve + write + commit (+ finishing a full page): the
//!   design the anchor replaces.
//! - `fetch_add`: a 64-bit byte counter reserved by `fetch_add` (no CAS retry, no page-boundary
//!   logic, no watermark, no backpressure) plus per-page commit counters: the contention floor.
//!
//! Workloads: `mixed` (90 % 64–256-byte records, 10 % 4–16 KB) and `small` (100-byte records).
//! Each (workload, threads) cell runs its variants interleaved in rounds, so drift in the
//! machine's speed hits them alike.

use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use memmap2::MmapMut;
use pagemesh_logpage::{
    page::{write_page, PageMeta, HEADER_SIZE},
    Log, LogOptions, PAGE_SIZE, PAYLOAD_SIZE,
};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{Measurement, Ratio};

/// Ring size for every variant: 4096 pages, 16 MiB.
const RING_SLOTS: u64 = 4096;
/// Record framing, the same 4-byte header for every variant.
const FRAME: usize = 4;

/// Record sizes to append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// 90 % 64–256-byte records, 10 % 4–16 KB.
    Mixed,
    /// 100-byte records.
    Small,
}

impl Workload {
    /// Every workload.
    pub const ALL: [Workload; 2] = [Workload::Mixed, Workload::Small];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Mixed => "mixed",
            Workload::Small => "small",
        }
    }

    /// A deterministic sequence of `count` record sizes for thread `thread`.
    pub fn sizes(self, thread: usize, count: usize) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(thread as u64 + 1);
        (0..count)
            .map(|_| match self {
                Workload::Small => 100,
                Workload::Mixed if rng.random_ratio(1, 10) => rng.random_range(4096..=16384),
                Workload::Mixed => rng.random_range(64..=256),
            })
            .collect()
    }
}

/// Which implementation appends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The log's anchor.
    Anchor,
    /// A Mutex around reserve + write + commit.
    Mutex,
    /// A fetch_add counter: the floor.
    FetchAdd,
}

impl Variant {
    /// Every variant.
    pub const ALL: [Variant; 3] = [Variant::Anchor, Variant::Mutex, Variant::FetchAdd];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Anchor => "anchor",
            Variant::Mutex => "mutex",
            Variant::FetchAdd => "fetch_add",
        }
    }

    /// A fresh appender of this kind.
    pub fn appender(self) -> Box<dyn Append> {
        match self {
            Variant::Anchor => Box::new(AnchorLog(
                Log::in_memory(LogOptions::new().slots(RING_SLOTS)).expect("in-memory log"),
            )),
            Variant::Mutex => Box::new(MutexLog::new()),
            Variant::FetchAdd => Box::new(FetchAddLog::new()),
        }
    }
}

/// Appends framed records to a ring of pages.
pub trait Append: Sync {
    /// Appends one record.
    fn append(&self, record: &[u8]);
}

struct AnchorLog(Log);

impl Append for AnchorLog {
    fn append(&self, record: &[u8]) {
        self.0.append(record).expect("append to the in-memory log");
    }
}

/// An anonymous page ring for the baselines.
struct Pages {
    _map: MmapMut,
    base: *mut u8,
}

impl Pages {
    fn new() -> Self {
        let mut map = MmapMut::map_anon(RING_SLOTS as usize * PAGE_SIZE).expect("anonymous ring");
        let base = map.as_mut_ptr();
        Self { _map: map, base }
    }

    fn page_ptr(&self, lsn: u64) -> *mut u8 {
        let index = (lsn % RING_SLOTS) as usize;
        // SAFETY: `index < RING_SLOTS`, so the page lies inside the mapping, which lives as long
        // as `self`.
        unsafe { self.base.add(index * PAGE_SIZE) }
    }

    /// Copies `bytes` into the payload of page `lsn` at `offset`.
    ///
    /// # Safety
    /// The caller owns that byte range: no other thread touches it concurrently.
    unsafe fn write(&self, lsn: u64, offset: usize, bytes: &[u8]) {
        // SAFETY: the range is inside the page's payload (callers split at PAYLOAD_SIZE) and
        // exclusively the caller's.
        unsafe {
            let dst = self.page_ptr(lsn).add(HEADER_SIZE + offset);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
        }
    }

    /// Writes the header and crc of the full page `lsn`.
    ///
    /// # Safety
    /// Every writer of the page is done, and no other thread touches it concurrently.
    unsafe fn finish(&self, lsn: u64) {
        // SAFETY: a whole page inside the mapping, exclusively the caller's.
        let page = unsafe { &mut *self.page_ptr(lsn).cast::<[u8; PAGE_SIZE]>() };
        let meta = PageMeta {
            lsn,
            committed_lsn: lsn,
            epoch: 0,
            payload_len: PAYLOAD_SIZE as u16,
            first_record_offset: 0,
            record_count: 1,
            end_of_epoch: false,
            resumed: false,
        };
        write_page(page, &meta);
    }
}

/// Copies a framed record into `pages` starting at stream byte `pos`; returns the pages it
/// completed (for the caller to finish), as a range.
///
/// # Safety
/// The caller owns the stream range `pos..pos + FRAME + record.len()`.
unsafe fn copy_framed(pages: &Pages, pos: u64, record: &[u8], mut on_page: impl FnMut(u64, u64)) {
    let header = (record.len() as u32).to_le_bytes();
    let mut at = pos;
    for mut part in [&header[..], record] {
        while !part.is_empty() {
            let (lsn, offset) = (
                at / PAYLOAD_SIZE as u64,
                (at % PAYLOAD_SIZE as u64) as usize,
            );
            let n = part.len().min(PAYLOAD_SIZE - offset);
            // SAFETY: inside the caller's range, split at the page boundary.
            unsafe { pages.write(lsn, offset, &part[..n]) };
            on_page(lsn, n as u64);
            at += n as u64;
            part = &part[n..];
        }
    }
}

/// The baseline: one lock around the whole append.
struct MutexLog {
    pages: Pages,
    tail: Mutex<u64>,
}

// SAFETY: every access to `pages` happens under `tail`'s lock.
unsafe impl Sync for MutexLog {}

impl MutexLog {
    fn new() -> Self {
        Self {
            pages: Pages::new(),
            tail: Mutex::new(0),
        }
    }
}

impl Append for MutexLog {
    fn append(&self, record: &[u8]) {
        let mut tail = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = *tail;
        let end = start + (FRAME + record.len()) as u64;
        // SAFETY: we hold the lock, so the range is ours.
        unsafe { copy_framed(&self.pages, start, record, |_, _| {}) };
        for lsn in start / PAYLOAD_SIZE as u64..end / PAYLOAD_SIZE as u64 {
            // SAFETY: the page is full and we hold the lock.
            unsafe { self.pages.finish(lsn) };
        }
        *tail = end;
    }
}

/// The floor: a fetch_add reservation and per-page commit counters, nothing else.
struct FetchAddLog {
    pages: Pages,
    tail: CachePadded<AtomicU64>,
    committed: Box<[CachePadded<AtomicU64>]>,
}

// SAFETY: each writer owns the stream range its fetch_add returned; a page is finished only by
// the thread whose commit completed it (the AcqRel add orders the other writers' bytes before).
unsafe impl Sync for FetchAddLog {}

impl FetchAddLog {
    fn new() -> Self {
        let committed = (0..RING_SLOTS)
            .map(|_| CachePadded::new(AtomicU64::new(0)))
            .collect();
        Self {
            pages: Pages::new(),
            tail: CachePadded::new(AtomicU64::new(0)),
            committed,
        }
    }
}

impl Append for FetchAddLog {
    fn append(&self, record: &[u8]) {
        let start = self
            .tail
            .fetch_add((FRAME + record.len()) as u64, Ordering::Relaxed);
        let mut touched: [(u64, u64); 8] = [(0, 0); 8];
        let mut n = 0;
        // SAFETY: fetch_add gave this thread the range alone.
        unsafe {
            copy_framed(&self.pages, start, record, |lsn, bytes| {
                if n > 0 && touched[n - 1].0 == lsn {
                    touched[n - 1].1 += bytes;
                } else {
                    touched[n] = (lsn, bytes);
                    n += 1;
                }
            })
        };
        for &(lsn, bytes) in &touched[..n] {
            let counter = &self.committed[(lsn % RING_SLOTS) as usize];
            let after = counter.fetch_add(bytes, Ordering::AcqRel) + bytes;
            if after.is_multiple_of(PAYLOAD_SIZE as u64) {
                // SAFETY: this add completed the page; the floor has no backpressure, and the
                // 16 MiB ring is far larger than what 2 threads have in flight.
                unsafe { self.pages.finish(lsn) };
            }
        }
    }
}

/// Appends `sizes`-sized records from `threads` threads, each taking every `threads`-th size, until
/// `stop` says so; returns (records, bytes).
fn drive(
    appender: &dyn Append,
    threads: usize,
    sizes: &[Vec<usize>],
    stop: &(dyn Fn(u64) -> bool + Sync),
) -> (u64, u64) {
    let source = vec![0xA5u8; 16384];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let (sizes, source) = (&sizes[thread], &source);
                s.spawn(move || {
                    let (mut ops, mut bytes) = (0u64, 0u64);
                    for &len in sizes.iter().cycle() {
                        if ops.is_multiple_of(64) && stop(ops) {
                            break;
                        }
                        appender.append(&source[..len]);
                        ops += 1;
                        bytes += len as u64;
                    }
                    (ops, bytes)
                })
            })
            .collect();
        handles.into_iter().fold((0, 0), |(o, b), h| {
            let (ops, bytes) = h.join().expect("bench thread");
            (o + ops, b + bytes)
        })
    })
}

/// Times `ops_per_thread` appends on each of `threads` threads (for criterion's `iter_custom`).
pub fn time_fixed(
    variant: Variant,
    workload: Workload,
    threads: usize,
    ops_per_thread: u64,
) -> Duration {
    let appender = variant.appender();
    let sizes: Vec<Vec<usize>> = (0..threads).map(|t| workload.sizes(t, 4096)).collect();
    let started = Instant::now();
    drive(&*appender, threads, &sizes, &|ops| ops >= ops_per_thread);
    started.elapsed()
}

/// Measures every variant on `workload` with `threads` threads for about `seconds` each,
/// interleaved in rounds. Returns one measurement per variant, in [`Variant::ALL`] order.
pub fn measure(workload: Workload, threads: usize, seconds: f64) -> Vec<Measurement> {
    const ROUNDS: u32 = 4;
    let sizes: Vec<Vec<usize>> = (0..threads).map(|t| workload.sizes(t, 4096)).collect();
    let round = Duration::from_secs_f64(seconds / f64::from(ROUNDS));
    let mut totals = [(0u64, 0u64, Duration::ZERO); 3];
    for _ in 0..ROUNDS {
        for (index, variant) in Variant::ALL.iter().enumerate() {
            let appender = variant.appender();
            let started = Instant::now();
            let deadline = started + round;
            let (ops, bytes) = drive(&*appender, threads, &sizes, &|_| Instant::now() >= deadline);
            let elapsed = started.elapsed();
            let total = &mut totals[index];
            *total = (total.0 + ops, total.1 + bytes, total.2 + elapsed);
        }
    }
    Variant::ALL
        .iter()
        .zip(totals)
        .map(|(variant, (ops, bytes, elapsed))| Measurement {
            workload: format!("reserve/{}", workload.name()),
            variant: variant.name().to_string(),
            threads,
            record_bytes: bytes as f64 / ops.max(1) as f64,
            ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
            mb_per_sec: bytes as f64 / elapsed.as_secs_f64() / 1e6,
        })
        .collect()
}

/// The ratios a reader wants from one cell's measurements (in [`Variant::ALL`] order).
pub fn ratios(cell: &[Measurement]) -> Vec<Ratio> {
    let ops = |name: &str| {
        cell.iter()
            .find(|m| m.variant == name)
            .map_or(f64::NAN, |m| m.ops_per_sec)
    };
    ["mutex", "fetch_add"]
        .into_iter()
        .map(|baseline| Ratio {
            workload: cell[0].workload.clone(),
            threads: cell[0].threads,
            ratio: format!("anchor/{baseline}"),
            value: ops("anchor") / ops(baseline),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_appends_and_finishes_pages() {
        for variant in Variant::ALL {
            for workload in Workload::ALL {
                let elapsed = time_fixed(variant, workload, 2, 500);
                assert!(elapsed > Duration::ZERO);
            }
        }
    }

    #[test]
    fn the_mixed_workload_has_its_documented_shape() {
        let sizes = Workload::Mixed.sizes(0, 10_000);
        let large = sizes.iter().filter(|&&s| s >= 4096).count();
        assert!((800..1200).contains(&large), "about 10 % large: {large}");
        assert!(sizes
            .iter()
            .all(|&s| (64..=256).contains(&s) || (4096..=16384).contains(&s)));
    }
}
