//! `bench commit`: commits per second through the store, against raw heed doing the same puts.
//!
//! Every variant writes the land-registry-shaped records of [`crate::workload::price_paid`]
//! (key: the transaction id; value: the CSV line, ~160 bytes) into a fresh database directory:
//!
//! - `fsync-floor`: the disk's floor for a durable commit, in the same run: one 4 KB `pwrite`
//!   into a preallocated, already-written file (its blocks written once through a mapping and
//!   synced, as the log ring's are), then `fdatasync`; its p50 is what `durable@1` p50 is set
//!   against;
//! - `applied`, `durable`: one record per commit, with 1, 16 or 256 commits in flight from one
//!   thread ([`pagemesh_core::Database::commit_async`] tickets, the oldest waited on when full).
//!   `durable` waits for the log ring's durable watermark (the ring is the write-ahead log; LMDB
//!   applies off the commit path). Each `durable` cell (and `batch`) first commits until the ring
//!   has filled once (bounded by five times the cell's seconds), so that the window measures the
//!   steady state, with the applier releasing ring pages as it must; the cell's `window` says
//!   whether the ring filled first, and how many ring fills the window itself lasted;
//! - `heed-nosync-txn`, `heed-sync-txn`: raw heed, one LMDB write transaction per record, one
//!   thread, without and with sync; values carry the same 8-byte version prefix pagemesh stores;
//! - `heed-group` at 16 and 256: raw heed, exactly that many puts per synced transaction: perfect
//!   group commit, what LMDB itself does when every group is as large as the window. On this disk
//!   a synced transaction of random keys costs more the more leaf pages it dirtied, so a group of
//!   16 is not 16 times cheaper per record;
//! - `heed-group` at 8 and 128, half of each window: what a *closed loop* of N commits in flight
//!   can group. LMDB has one writer, so while one group syncs, the next holds only the commits that
//!   are not in it, plus whatever the committer refills before the next group starts: at 16 in
//!   flight the groups settle at 8 (8.0–8.2 records per transaction measured), at 256 somewhat
//!   above half (170–198). So `durable@16` can at best match raw heed doing 8 puts per synced
//!   transaction; at 256, `heed-group@128` and `heed-group@256` bracket it;
//! - `batch`: 1,000 records per `WriteBatch`, `durable`; `heed-batch`: 1,000 puts per synced txn;
//! - `load`: every record once, in batches of 50 with 16 in flight, `Durable` (the demo's load
//!   shape), measured once, with its memory (below).
//!
//! Each result also says how group commit adapted: records per LMDB transaction.
//!
//! # Memory
//!
//! The `load` cell prints how far the process's peak RSS rose by the load's last commit (the
//! target's figure: under the ring's 16 MiB + 64 MiB), how far by the time the applier had
//! applied all of it (the bench waits for that), and the size LMDB's data file ended at after
//! how many write transactions. Then, as the baseline, raw heed applies the same records in as
//! many equal synced transactions ([`measure_heed_load_memory`]), and the bench prints its
//! peak and file beside pagemesh's. Ten runs (stop 37): 54–84 MiB by the last commit, 88–102
//! MiB once applied, the file 70–76 MiB after three or four transactions. So the commits
//! return with most of the load still to apply, and the target's figure moves with how much
//! was applied by then. Raw heed in the same number of transactions (six runs): 66–67 MiB and
//! a 69 MiB file for three, 84 MiB and a 76 MiB file for four; pagemesh's peak once applied
//! was 9–24 MiB above it, less than its ring. Where the peak goes (`/proc/self/smaps` sampled
//! every 2 ms in an instrumented build, not kept; heaptrack; `MALLOC_ARENA_MAX=1` for one
//! series):
//!
//! - 30–45 MiB of anonymous memory: the ring's working copy (16 MiB, touched as the load fills
//!   it), LMDB's copies of the pages the largest write transaction changed (LMDB `malloc`s a
//!   copy of each page a transaction writes and keeps the copies until the environment
//!   closes; heaptrack's peak for `mdb_page_malloc` over one whole run of this bench: 36 MiB;
//!   `pagemesh_core`'s apply module, Group size, bounds it in large databases), and `malloc`'s
//!   per-thread arenas: the same load under `MALLOC_ARENA_MAX=1` peaked about 20 MiB lower
//!   (three runs). Arenas are the embedding application's allocator's policy, not ours;
//! - the rest is LMDB's data file: the pages a transaction reads through LMDB's map are mapped
//!   into the process and count in its RSS (clean page cache, which the kernel can take back).
//!   Random keys make every transaction copy most of the tree, and LMDB reuses a freed page
//!   only two transactions later, so three or four transactions leave a 70–76 MiB file for
//!   about 20 MB of records, most of it free pages that later transactions reuse.
//!
//! Smaller transactions hold fewer changed pages at once but copy the tree more often: with
//! `group_bytes_max` at 2 MiB instead of 8 (four alternated runs, not kept) the peak by the
//! last commit was 57–70 MiB against 59–82, but `demo` wrote 967 MB instead of 294 and took
//! 0.68 s instead of 0.47.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use heed::types::Bytes;
use pagemesh_core::{Database, Durability, Options, WriteBatch};
use serde::Serialize;

use crate::workload::price_paid::PricePaid;

/// The table every variant writes.
pub(crate) const TABLE: &str = "price_paid";
/// Records per batch in `batch` and `heed-batch`.
pub const BATCH_RECORDS: usize = 1_000;
/// Pages of the `fsync-floor` file (4 MiB).
const FLOOR_FILE_PAGES: u64 = 1024;
/// The most a cell's warm-up (filling the ring once) may take, in multiples of its seconds.
const WARM_UP_SECONDS_MAX: f64 = 5.0;

/// One measured cell.
#[derive(Clone, Debug, Serialize)]
pub struct CommitMeasurement {
    /// Always `commit/price_paid`.
    pub workload: &'static str,
    /// What was measured.
    pub variant: String,
    /// Commits in flight.
    pub inflight: usize,
    /// Threads committing (one: in-flight commits are tickets).
    pub threads: usize,
    /// Mean record size (key + value).
    pub record_bytes: f64,
    /// Records made durable/applied per second.
    pub ops_per_sec: f64,
    /// Records per LMDB write transaction (pagemesh: measured group size; heed: fixed).
    pub records_per_txn: f64,
    /// Median commit latency, microseconds (`fsync-floor`: of one write and sync), where timed.
    pub p50_us: Option<f64>,
    /// For the cells with a warm-up: whether the ring had filled once before the window began,
    /// and how many times the ring's size the window wrote.
    pub window: Option<String>,
}

/// The workload's records as (key, value).
pub fn records(count: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    PricePaid::new(PricePaid::DEFAULT_SEED, count as u64)
        .records()
        .map(|r| (r.key.to_vec(), r.line.into_bytes()))
        .collect()
}

fn mean_bytes(records: &[(Vec<u8>, Vec<u8>)]) -> f64 {
    records
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as f64)
        .sum::<f64>()
        / records.len().max(1) as f64
}

/// Measures pagemesh commits of one record each, `inflight` in flight, for `seconds`; a
/// `Durable` cell first fills the ring once (see the module docs).
pub fn measure_pagemesh(
    dir: &Path,
    records: &[(Vec<u8>, Vec<u8>)],
    durability: Durability,
    inflight: usize,
    seconds: f64,
) -> pagemesh_core::Result<CommitMeasurement> {
    let db = Database::open(dir, Options::new().map_size(4 << 30))?;
    let record_bytes = mean_bytes(records);
    let mut records = records.iter().cycle();
    let mut tickets = VecDeque::with_capacity(inflight);
    let mut commit = |tickets: &mut VecDeque<(Instant, pagemesh_core::CommitTicket)>,
                      latencies: &mut Vec<Duration>|
     -> pagemesh_core::Result<()> {
        if tickets.len() == inflight {
            let (at, ticket) = tickets.pop_front().expect("full queue");
            ticket.wait()?;
            latencies.push(at.elapsed());
        }
        let (key, value) = records.next().expect("cycle");
        let mut batch = WriteBatch::new();
        batch.put(TABLE, key, value)?;
        tickets.push_back((Instant::now(), db.commit_async(&batch, durability)?));
        Ok(())
    };
    let warm_up = durability == Durability::Durable;
    let filled = if warm_up {
        let deadline = Instant::now() + Duration::from_secs_f64(seconds * WARM_UP_SECONDS_MAX);
        let mut ignored = Vec::new();
        while !ring_filled(&db) && Instant::now() < deadline {
            for _ in 0..64 {
                commit(&mut tickets, &mut ignored)?;
            }
            ignored.clear();
        }
        Some(ring_filled(&db))
    } else {
        None
    };
    let stats_before = db.stats();
    let lsn_before = db.plumbing().log().anchor().lsn;
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    while latencies.len() % 64 != 0 || Instant::now() < deadline {
        commit(&mut tickets, &mut latencies)?;
    }
    for (at, ticket) in tickets {
        ticket.wait()?;
        latencies.push(at.elapsed());
    }
    let elapsed = started.elapsed();
    let stats = db.stats();
    Ok(CommitMeasurement {
        workload: "commit/price_paid",
        variant: match durability {
            Durability::Applied => "applied",
            _ => "durable",
        }
        .into(),
        inflight,
        threads: 1,
        record_bytes,
        ops_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        records_per_txn: (stats.records - stats_before.records) as f64
            / (stats.groups - stats_before.groups).max(1) as f64,
        p50_us: Some(p50_us(&mut latencies)),
        window: filled.map(|filled| window_note(&db, filled, lsn_before)),
    })
}
/// Whether the log has written as many pages as its ring holds: every slot was used once.
fn ring_filled(db: &Database) -> bool {
    db.plumbing().log().anchor().lsn >= db.plumbing().log().slots()
}

/// What a cell's window was: after the ring filled once or not, and how many ring fills it wrote
/// from page `lsn_before` on.
fn window_note(db: &Database, filled: bool, lsn_before: u64) -> String {
    let fills =
        (db.plumbing().log().anchor().lsn - lsn_before) as f64 / db.plumbing().log().slots() as f64;
    let first = if filled {
        "after the ring first filled"
    } else {
        "before the ring first filled (warm-up cut short)"
    };
    let length = if fills >= 3.0 { ">= 3x" } else { "< 3x" };
    format!("{first}; the window wrote {fills:.1} ring fills ({length} the ring's fill time)")
}

/// The median of `latencies`, in microseconds (0 if none).
fn p50_us(latencies: &mut [Duration]) -> f64 {
    latencies.sort_unstable();
    latencies
        .get(latencies.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// Measures `batch`: [`BATCH_RECORDS`] records per durable commit, after the ring filled once.
pub fn measure_pagemesh_batch(
    dir: &Path,
    records: &[(Vec<u8>, Vec<u8>)],
    seconds: f64,
) -> pagemesh_core::Result<CommitMeasurement> {
    let db = Database::open(dir, Options::new().map_size(4 << 30))?;
    let mut chunks = records.chunks(BATCH_RECORDS).cycle();
    let mut commit = |latencies: &mut Vec<Duration>| -> pagemesh_core::Result<u64> {
        let chunk = chunks.next().expect("cycle");
        let mut batch = WriteBatch::new();
        for (key, value) in chunk {
            batch.put(TABLE, key, value)?;
        }
        let at = Instant::now();
        db.commit(&batch, Durability::Durable)?;
        latencies.push(at.elapsed());
        Ok(chunk.len() as u64)
    };
    let warm_up_until = Instant::now() + Duration::from_secs_f64(seconds * WARM_UP_SECONDS_MAX);
    while !ring_filled(&db) && Instant::now() < warm_up_until {
        commit(&mut Vec::new())?;
    }
    let filled = ring_filled(&db);
    let stats_before = db.stats();
    let lsn_before = db.plumbing().log().anchor().lsn;
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut done = 0u64;
    while Instant::now() < deadline {
        done += commit(&mut latencies)?;
    }
    let elapsed = started.elapsed();
    let stats = db.stats();
    let groups = (stats.groups - stats_before.groups).max(1) as f64;
    Ok(CommitMeasurement {
        workload: "commit/price_paid",
        variant: "batch".into(),
        inflight: 1,
        threads: 1,
        record_bytes: mean_bytes(records),
        ops_per_sec: done as f64 / elapsed.as_secs_f64(),
        records_per_txn: (stats.records - stats_before.records) as f64 / groups
            * BATCH_RECORDS as f64,
        p50_us: Some(p50_us(&mut latencies)),
        window: Some(window_note(&db, filled, lsn_before)),
    })
}

/// Measures `fsync-floor` for `seconds`: one 4 KB `pwrite` then `fdatasync`, over and over, in a
/// preallocated file of 1,024 pages (4 MiB) whose blocks were written once through a
/// mapping and synced (as the log ring creates its file); the page written moves through the
/// file. `ops_per_sec` is syncs per second.
pub fn measure_fsync_floor(dir: &Path, seconds: f64) -> std::io::Result<CommitMeasurement> {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir)?;
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("floor.bin"))?;
    let page_bytes = 4096u64;
    file.set_len(FLOOR_FILE_PAGES * page_bytes)?;
    {
        // SAFETY: the file is this function's own, open read-write, and not resized while mapped.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }?;
        map.fill(0);
        map.flush()?;
    }
    file.sync_all()?;
    let page = [0x5A_u8; 4096];
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut index = 0u64;
    while latencies.len() < 20 || Instant::now() < deadline {
        let at = Instant::now();
        file.write_all_at(&page, (index % FLOOR_FILE_PAGES) * page_bytes)?;
        file.sync_data()?;
        latencies.push(at.elapsed());
        index += 1;
    }
    let elapsed = started.elapsed();
    Ok(CommitMeasurement {
        workload: "commit/price_paid",
        variant: "fsync-floor".into(),
        inflight: 1,
        threads: 1,
        record_bytes: page_bytes as f64,
        ops_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        records_per_txn: 1.0,
        p50_us: Some(p50_us(&mut latencies)),
        window: None,
    })
}

/// A fresh heed environment with the benchmark table, synced per commit or not.
pub(crate) fn open_heed(
    dir: &Path,
    sync: bool,
) -> heed::Result<(heed::Env, heed::Database<'static, Bytes, Bytes>)> {
    std::fs::create_dir_all(dir)?;
    let mut options = heed::EnvOpenOptions::new();
    options.map_size(4 << 30).max_dbs(4);
    if !sync {
        // SAFETY: NO_SYNC is one of LMDB's unsafe flags (a power loss can corrupt the file); this
        // is the baseline's throwaway directory, which nothing reads after the measurement.
        unsafe { options.flags(heed::EnvFlags::NO_SYNC) };
    }
    // SAFETY: a fresh directory that only the caller opens, once.
    let env = unsafe { options.open(dir) }?;
    let wtxn = env.write_txn()?;
    let db = env
        .create_databases_and_commit(wtxn, |wdo, wtxn| -> heed::Result<_> {
            let db: heed::Database<Bytes, Bytes> = wdo.create_database(wtxn, Some(TABLE))?;
            Ok(heed::CommitOrAbort::<_, ()>::Commit(db))
        })?
        .unwrap_commit();
    Ok((env, db))
}

/// Raw heed: `per_txn` puts per write transaction, synced or not.
pub fn measure_heed(
    dir: &Path,
    records: &[(Vec<u8>, Vec<u8>)],
    sync: bool,
    per_txn: usize,
    seconds: f64,
) -> heed::Result<CommitMeasurement> {
    let (env, db) = open_heed(dir, sync)?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut done = 0u64;
    let mut value_buf = Vec::new();
    for chunk in records.chunks(per_txn).cycle() {
        if Instant::now() >= deadline {
            break;
        }
        let mut wtxn = env.write_txn()?;
        for (key, value) in chunk {
            versioned(&mut value_buf, done, value);
            db.put(&mut wtxn, key, &value_buf)?;
            done += 1;
        }
        wtxn.commit()?;
    }
    let elapsed = started.elapsed();
    let variant = match (per_txn, sync) {
        (1, false) => "heed-nosync-txn",
        (1, true) => "heed-sync-txn",
        (_, true) => "heed-batch",
        (_, false) => "heed-nosync-batch",
    };
    Ok(CommitMeasurement {
        workload: "commit/price_paid",
        variant: variant.into(),
        inflight: 1,
        threads: 1,
        record_bytes: mean_bytes(records),
        ops_per_sec: done as f64 / elapsed.as_secs_f64(),
        records_per_txn: per_txn as f64,
        p50_us: None,
        window: None,
    })
}

/// `value` as pagemesh stores it, for the raw-heed baselines: an 8-byte version first.
pub(crate) fn versioned(out: &mut Vec<u8>, version: u64, value: &[u8]) {
    out.clear();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(value);
}

/// Records per batch in the `load` cell (the demo's load shape).
pub const LOAD_BATCH_RECORDS: usize = 50;

/// Bytes as MiB, for the memory figures.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// The process's peak RSS from a starting point on (Linux only).
struct PeakRss {
    /// RSS when it started, in bytes.
    before: u64,
}

impl PeakRss {
    /// Resets the peak (`VmHWM`) to the current RSS by writing 5 to `/proc/self/clear_refs`
    /// (Linux >= 4.0) and notes the RSS; `None` where either is not possible.
    fn start() -> Option<Self> {
        std::fs::write("/proc/self/clear_refs", "5").ok()?;
        Some(Self {
            before: Self::status_kib("VmRSS:")? * 1024,
        })
    }

    /// How far the peak rose above the RSS at the start, in MiB.
    fn growth_mib(&self) -> Option<f64> {
        let peak = Self::status_kib("VmHWM:")? * 1024;
        Some(mib(peak.saturating_sub(self.before)))
    }

    /// A `kB` field of `/proc/self/status`.
    fn status_kib(name: &str) -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

/// The ring of a database opened with default options, in MiB (what the memory target adds 64
/// MiB to).
fn default_ring_mib() -> f64 {
    mib(pagemesh_core::RING_SLOTS_DEFAULT * pagemesh_logpage::PAGE_SIZE as u64)
}

/// Raw heed's memory for the `load` cell's records, applied in `transactions` equal synced
/// write transactions (the number the applier took): how far the process's peak RSS rose, and
/// the size LMDB's data file ended at, both in MiB (`None` off Linux). The baseline of the
/// load's memory, in the same run.
pub fn measure_heed_load_memory(
    dir: &Path,
    records: &[(Vec<u8>, Vec<u8>)],
    transactions: usize,
) -> heed::Result<Option<(f64, f64)>> {
    let (env, db) = open_heed(dir, true)?;
    let peak = PeakRss::start();
    let per_txn = records.len().div_ceil(transactions.max(1)).max(1);
    let mut value_buf = Vec::new();
    for (seq, chunk) in records.chunks(per_txn).enumerate() {
        let mut wtxn = env.write_txn()?;
        for (key, value) in chunk {
            versioned(&mut value_buf, seq as u64, value);
            db.put(&mut wtxn, key, &value_buf)?;
        }
        wtxn.commit()?;
    }
    let file = std::fs::metadata(dir.join("data.mdb")).map_or(0, |meta| meta.len());
    Ok(peak
        .and_then(|peak| peak.growth_mib())
        .map(|growth| (growth, mib(file))))
}

/// What the `load` cell's memory did (see Memory in the module docs).
#[derive(Clone, Copy, Debug)]
pub struct LoadMemory {
    /// How far the process's peak RSS (`VmHWM`) rose above its RSS before the load, in MiB,
    /// by the time every commit of the load had returned (`Durable`): the target's figure.
    pub committed_peak_growth_mib: f64,
    /// The same, by the time the applier had applied all of the load to LMDB.
    pub applied_peak_growth_mib: f64,
    /// LMDB's data file then, in MiB: its pages read through LMDB's map are part of the RSS.
    pub lmdb_file_mib: f64,
    /// LMDB write transactions the applier committed for the load.
    pub lmdb_groups: u64,
}

/// Loads every record once, in batches of [`LOAD_BATCH_RECORDS`] with 16 commits in flight,
/// `Durable` (the cell's rate), then waits until the applier applied all of it; measures how
/// far the process's peak RSS rose above where it stood, at both points (`None` off Linux).
pub fn measure_load(
    dir: &Path,
    records: &[(Vec<u8>, Vec<u8>)],
) -> pagemesh_core::Result<(CommitMeasurement, Option<LoadMemory>)> {
    let options = Options::new();
    let db = Database::open(dir, options)?;
    let peak = PeakRss::start();
    let started = Instant::now();
    let mut tickets = VecDeque::with_capacity(16);
    let mut last = None;
    for chunk in records.chunks(LOAD_BATCH_RECORDS) {
        if tickets.len() == 16 {
            let ticket: pagemesh_core::CommitTicket = tickets.pop_front().expect("full queue");
            ticket.wait()?;
        }
        let mut batch = WriteBatch::new();
        for (key, value) in chunk {
            batch.put(TABLE, key, value)?;
        }
        let ticket = db.commit_async(&batch, Durability::Durable)?;
        last = Some(ticket.receipt());
        tickets.push_back(ticket);
    }
    for ticket in tickets {
        ticket.wait()?;
    }
    let elapsed = started.elapsed();
    let committed = peak.as_ref().and_then(PeakRss::growth_mib);
    // The applier may still hold a backlog: `wait_for` hurries it.
    if let Some(last) = last {
        db.wait_for(&last, Duration::from_secs(120))?;
    }
    let applied = peak.as_ref().and_then(PeakRss::growth_mib);
    let stats = db.stats();
    let lmdb_file = std::fs::metadata(dir.join("lmdb").join("data.mdb")).map_or(0, |m| m.len());
    let memory = committed
        .zip(applied)
        .map(|(committed, applied)| LoadMemory {
            committed_peak_growth_mib: committed,
            applied_peak_growth_mib: applied,
            lmdb_file_mib: mib(lmdb_file),
            lmdb_groups: stats.groups,
        });
    let cell = CommitMeasurement {
        workload: "commit/price_paid",
        variant: "load".into(),
        inflight: 16,
        threads: 1,
        record_bytes: mean_bytes(records),
        ops_per_sec: records.len() as f64 / elapsed.as_secs_f64(),
        records_per_txn: stats.records as f64 / stats.groups.max(1) as f64
            * LOAD_BATCH_RECORDS as f64,
        p50_us: None,
        window: None,
    };
    Ok((cell, memory))
}

/// Times `count` single-record commits to a fresh database in `dir`, `inflight` in flight (for
/// criterion's `iter_custom`).
pub fn time_pagemesh(
    dir: &Path,
    records: &[(Vec<u8>, Vec<u8>)],
    durability: Durability,
    inflight: usize,
    count: u64,
) -> pagemesh_core::Result<Duration> {
    let db = Database::open(dir, Options::new())?;
    let started = Instant::now();
    let mut tickets = VecDeque::with_capacity(inflight);
    for (key, value) in records.iter().cycle().take(count as usize) {
        if tickets.len() == inflight {
            let ticket: pagemesh_core::CommitTicket = tickets.pop_front().expect("full queue");
            ticket.wait()?;
        }
        let mut batch = WriteBatch::new();
        batch.put(TABLE, key, value)?;
        tickets.push_back(db.commit_async(&batch, durability)?);
    }
    for ticket in tickets {
        ticket.wait()?;
    }
    Ok(started.elapsed())
}

/// Times `count` raw heed puts, one synced write transaction each, in a fresh `dir`.
pub fn time_heed_sync(
    dir: &Path,
    records: &[(Vec<u8>, Vec<u8>)],
    count: u64,
) -> heed::Result<Duration> {
    let (env, db) = open_heed(dir, true)?;
    let started = Instant::now();
    for (key, value) in records.iter().cycle().take(count as usize) {
        let mut wtxn = env.write_txn()?;
        db.put(&mut wtxn, key, value)?;
        wtxn.commit()?;
    }
    Ok(started.elapsed())
}

/// Times one pass of raw heed over `records`: `per_txn` puts per synced write transaction, in a
/// fresh `dir` (what the demo sets its end-to-end figure against).
pub fn time_heed_load(
    dir: &Path,
    records: &[(Vec<u8>, Vec<u8>)],
    per_txn: usize,
) -> heed::Result<Duration> {
    let (env, db) = open_heed(dir, true)?;
    let started = Instant::now();
    for chunk in records.chunks(per_txn.max(1)) {
        let mut wtxn = env.write_txn()?;
        for (key, value) in chunk {
            db.put(&mut wtxn, key, value)?;
        }
        wtxn.commit()?;
    }
    Ok(started.elapsed())
}

/// Every cell of `bench commit`, in one run.
pub fn measure_all(
    inflights: &[usize],
    seconds: f64,
) -> Result<Vec<CommitMeasurement>, Box<dyn std::error::Error>> {
    let records = records(PricePaid::DEFAULT_COUNT as usize);
    let root = tempfile::tempdir()?;
    let mut cells = 0;
    let mut dir = || {
        cells += 1;
        root.path().join(format!("cell-{cells}"))
    };
    let mut out = vec![
        measure_fsync_floor(&dir(), seconds)?,
        measure_heed(&dir(), &records, false, 1, seconds)?,
        measure_heed(&dir(), &records, true, 1, seconds)?,
    ];
    let mut groups_measured = Vec::new();
    for &inflight in inflights {
        // The window's perfect group (`inflight` puts per synced transaction) and the closed
        // loop's (half of it), each measured once however the windows overlap.
        for group_size in [inflight, inflight / 2] {
            if group_size > 1 && !groups_measured.contains(&group_size) {
                groups_measured.push(group_size);
                let mut group = measure_heed(&dir(), &records, true, group_size, seconds)?;
                group.variant = "heed-group".into();
                group.inflight = group_size;
                out.push(group);
            }
        }
        for durability in [Durability::Applied, Durability::Durable] {
            out.push(measure_pagemesh(
                &dir(),
                &records,
                durability,
                inflight,
                seconds,
            )?);
        }
    }
    out.push(measure_pagemesh_batch(&dir(), &records, seconds)?);
    out.push(measure_heed(
        &dir(),
        &records,
        true,
        BATCH_RECORDS,
        seconds,
    )?);
    let (load, memory) = measure_load(&dir(), &records)?;
    out.push(load);
    if let Some(memory) = memory {
        let ring = default_ring_mib();
        // On stderr, so that stdout stays one JSON object per line of one shape.
        eprintln!(
            "load of {} records: peak RSS rose {:.1} MiB by the last commit (ring: {ring:.0} \
             MiB; target: under ring + 64 MiB), {:.1} MiB by the time all of it was applied; \
             LMDB's file ended at {:.1} MiB after {} write transactions (its pages read through \
             LMDB's map count in RSS)",
            records.len(),
            memory.committed_peak_growth_mib,
            memory.applied_peak_growth_mib,
            memory.lmdb_file_mib,
            memory.lmdb_groups,
        );
        let transactions = memory.lmdb_groups.max(1) as usize;
        if let Some((peak, file)) = measure_heed_load_memory(&dir(), &records, transactions)? {
            eprintln!(
                "raw heed, the same records in {transactions} equal synced transactions: peak \
                 RSS rose {peak:.1} MiB, its file ended at {file:.1} MiB; pagemesh's peak once \
                 applied was {:+.1} MiB beside it (its ring: {ring:.0} MiB)",
                memory.applied_peak_growth_mib - peak
            );
        }
    }
    Ok(out)
}

/// The ratios the issue asks for, from one run's cells.
pub fn ratios(cells: &[CommitMeasurement]) -> Vec<super::Ratio> {
    let ops = |variant: &str, inflight: usize| {
        cells
            .iter()
            .find(|c| c.variant == variant && c.inflight == inflight)
            .map(|c| c.ops_per_sec)
    };
    let mut out = Vec::new();
    let mut ratio = |name: String, num: Option<f64>, den: Option<f64>| {
        if let (Some(num), Some(den)) = (num, den) {
            out.push(super::Ratio {
                workload: "commit/price_paid".into(),
                threads: 1,
                ratio: name,
                value: num / den,
            });
        }
    };
    for inflight in [1, 16, 256] {
        ratio(
            format!("durable@{inflight}/heed-sync-txn"),
            ops("durable", inflight),
            ops("heed-sync-txn", 1),
        );
        if inflight > 1 {
            ratio(
                format!("durable@{inflight}/heed-group@{inflight}"),
                ops("durable", inflight),
                ops("heed-group", inflight),
            );
            ratio(
                format!("heed-group@{inflight}/heed-sync-txn"),
                ops("heed-group", inflight),
                ops("heed-sync-txn", 1),
            );
            ratio(
                format!("durable@{inflight}/heed-group@{}", inflight / 2),
                ops("durable", inflight),
                ops("heed-group", inflight / 2),
            );
        }
        ratio(
            format!("applied@{inflight}/heed-nosync-txn"),
            ops("applied", inflight),
            ops("heed-nosync-txn", 1),
        );
    }
    let p50 = |variant: &str, inflight: usize| {
        cells
            .iter()
            .find(|c| c.variant == variant && c.inflight == inflight)
            .and_then(|c| c.p50_us)
    };
    ratio(
        "durable@1 p50/fsync-floor p50".into(),
        p50("durable", 1),
        p50("fsync-floor", 1),
    );
    ratio(
        "batch/heed-batch".into(),
        ops("batch", 1),
        ops("heed-batch", 1),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_runs_and_commits_something() {
        let records = records(2_000);
        let root = tempfile::tempdir().unwrap();
        let cells = [
            measure_pagemesh(
                &root.path().join("a"),
                &records,
                Durability::Durable,
                16,
                0.2,
            )
            .unwrap(),
            measure_pagemesh_batch(&root.path().join("b"), &records, 0.2).unwrap(),
            measure_heed(&root.path().join("c"), &records, true, 1, 0.1).unwrap(),
        ];
        for cell in &cells {
            assert!(cell.ops_per_sec > 0.0, "{cell:?}");
            assert!(cell.records_per_txn >= 1.0, "{cell:?}");
        }
    }
}
