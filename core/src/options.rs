//! How a database is opened ([`Options`]) and when a commit returns ([`Durability`]).
//!
//! Both are plain values: `Options` is fixed when [`Database::open`] opens a database (the applier
//! and the commit waits read it through the handle); `Durability` is chosen per commit, with a
//! default per database ([`Options::durability`]).

use std::sync::Arc;
use std::time::Duration;

use pagemesh_logpage::LogOptions;

#[cfg(doc)]
use crate::{Database, Error, Replication};

/// When a commit returns.
///
/// The log ring is the write-ahead log: a record is in it (memory-mapped, so in the page cache)
/// as soon as it is committed, on disk once a flush of the ring (`fdatasync`, group-flushed by
/// the database's flusher or by a waiting commit) covers its pages, and in LMDB once the applier,
/// off the commit path, applied it. Each level says what survives a *process crash* (SIGKILL, a
/// panic: the page cache survives) and a *power loss* (only what a completed sync put on disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// The record is in the log ring's committed prefix: its pages and every page before them are
    /// finished. Survives a process crash (recovery re-applies it from the ring); a power loss
    /// may lose it, unless a later flush put its page on disk first.
    ///
    /// Returning only once the watermark passes the record matters: recovery stops at the first
    /// unfinished page, so a record merely reserved behind another writer's unfinished page would
    /// be lost with it (found by tests/crash.rs run with `Memory`). The wait never depends on the
    /// applier: the committer seals its own page unless an idle consumer (a network shipper
    /// waiting for pages) is about to, so it lasts microseconds even while the applier syncs a
    /// group.
    Memory,
    /// The LMDB transaction holding it committed: visible to local readers (read-your-writes).
    /// Survives a process crash (it is in the ring's committed prefix, and LMDB's commit is in
    /// the page cache); a power loss may lose it, as `Memory` (LMDB's commits do not wait for its
    /// meta page to reach the disk, and the ring may not be flushed yet).
    Applied,
    /// The ring pages holding it are on disk: a completed `fdatasync` of the ring covered them
    /// (the ring's durable watermark passed them). Survives a process crash and a power loss; it
    /// may not be applied yet (readers see it once the applier gets to it, at once after a
    /// restart). A failed sync fails the commit with the log's `Poisoned` error, and every later
    /// commit too, until the database is reopened.
    Durable,
    /// `n` synchronous replicas *received* its pages (ack on receipt, before their replay); the
    /// local apply proceeds in parallel and is not waited for.
    ///
    /// **A timeout does not undo the write.** The record is in the local log before the wait
    /// begins: when [`Error::ReplicationTimeout`] comes back, the write is committed locally, is
    /// applied here, and ships to the replicas as they return. Committing it again writes it a
    /// second time. The error carries the commit's receipt (its version and log position): wait
    /// for it, or report it, instead of retrying. Survives a process crash
    /// locally (it is in the ring's committed prefix); a power loss here may lose the local copy,
    /// while each of the `n` replicas holds it as long as it survives. Needs a source database
    /// (see [`Replication`]). Fails at once, writing nothing, if `n` is more than its
    /// synchronous replicas can acknowledge ([`Error::TooFewSyncReplicas`] says when); fails with
    /// [`Error::ReplicationTimeout`] after [`Options::replication_timeout`] if too few replicas
    /// are there.
    Replicated(u32),
    /// Both `Durable` and `Replicated(n)`: the local flush and the replicas' receipt overlap, and
    /// both must finish. Survives a process crash and a power loss here, and on the replicas as
    /// they hold it. A timeout leaves the write committed locally, as with `Replicated(n)`.
    DurableReplicated(u32),
}

impl Durability {
    /// Replicas this durability waits for.
    pub fn replicas(self) -> Option<u32> {
        match self {
            Self::Replicated(n) | Self::DurableReplicated(n) => Some(n),
            _ => None,
        }
    }
}

/// The log ring's size in pages unless [`Options::ring_slots`] says otherwise.
pub const RING_SLOTS_DEFAULT: u64 = 4096;

/// The largest log record a ring of `ring_slots` pages takes: half its payload bytes, less the
/// record's 4-byte length word (as `pagemesh_logpage::Log::record_len_max` computes it).
pub(crate) const fn record_len_max(ring_slots: u64) -> usize {
    (ring_slots as usize / 2) * pagemesh_logpage::PAYLOAD_SIZE - 4
}

/// The largest log record a database opened with the default ring takes: what
/// [`WriteBatch::new`](crate::WriteBatch::new) checks each put against.
pub const RECORD_LEN_MAX_DEFAULT: usize = record_len_max(RING_SLOTS_DEFAULT);

/// The applier's default pace on a database that takes writes, window and bytes
/// ([`Options::apply_pace`]).
///
/// The window is also how late a reader that does not wait sees a commit, so the default keeps
/// it short, at a price in `Durable` throughput: each group is an LMDB commit that syncs on
/// the disk the ring syncs on. Measured (stop 34, `bench commit --inflight 16`, three
/// alternated rounds, the window set in an experiment build with 16 MiB of bytes), `durable@16`
/// commits/s: 65k–70k with 5 ms (2,300–2,800 records per LMDB group), 61k–85k with 20 ms,
/// 75k–89k with 50 ms (9,100–9,300) and 90k–93k with 100 ms (10,100–11,000). `applied`
/// commits hurry the applier, so their figures do not move. Where `Durable` throughput matters
/// more than how fresh an unwaited read is, raise the window: [`Options::apply_pace`], or
/// `apply_pace_ms` in a node's configuration.
///
/// Stop 36 raised the window from 5 ms to 20 ms. With the history in the log's segments the
/// applier no longer writes every page into `__binlog`, so it came back sooner and committed
/// smaller groups more often: in `bench replicate --inflight 16 --variants sync-durable-apart`,
/// 275 groups of 68 pages on average against main's 157 of 205. Each group's LMDB sync shares
/// the disk with the log's `fdatasync`, and `sync-durable` lost 15–30% against the build
/// before. Seven alternated triples (`durable,sync-durable,sync-durable-apart`, main's build,
/// 5 ms, 20 ms), medians: `sync-durable` 50.7k, 43.0k and 48.8k commits/s; `sync-durable /
/// durable` 0.66, 0.67 and 0.73; 20 ms ahead of 5 ms in six of the seven. `bench commit` and
/// `demo` did not move beyond their noise (one run, and five pairs). An unwaited read now sees
/// a `Durable` commit up to 20 ms later; `Applied` still means visible.
pub const APPLY_PACE: (Duration, usize) = (Duration::from_millis(20), 1 << 20);

/// The applier's default pace on a replica, window and bytes ([`Options::apply_pace`]): it
/// applies in larger groups than its source, with fewer LMDB syncs and fewer rewritten pages per
/// record, on a disk and cores it may share with its source. Its readers see a commit up to the
/// window later unless they wait for it ([`crate::Database::wait_for`] cuts the pace short).
///
/// Measured (`bench replicate --inflight 16 --variants durable,sync-durable,sync-durable-apart`,
/// the replica's pace set in the bench, alternated runs): `sync-durable/durable` (the replica
/// on the primary's disk) 0.52, 0.63, 0.54 and 0.60 with 50 ms and 16 MiB, against 0.44–0.48
/// with 5 ms and 1 MiB (four runs) and 0.41–0.56 with 50 ms and 1 MiB (the bytes then cut the
/// group first: they count the previous group's pages until it is released).
pub const REPLICA_APPLY_PACE: (Duration, usize) = (Duration::from_millis(50), 16 << 20);

/// How long the log ring lets pages nobody waits for gather between flushes by default
/// ([`Options::flush_pace`]).
///
/// Measured with `bench replicate`, the pace set in the bench, runs alternated:
/// - on replicas only (`--inflight 16 --variants durable,sync-durable,sync-durable-apart`, three
///   runs each): `sync-durable/durable` (the replica on the primary's disk) 0.51, 0.51 and 0.53
///   with no pace (a sync a page), 0.39, 0.58 and 0.68 with 10 ms, 0.57, 0.58 and 0.62 with
///   50 ms; with the replica on tmpfs (`sync-durable-apart`, its syncs free), no change beyond
///   the noise;
/// - then on the primary too (`--inflight 16,256`, three runs each, commits/s, no pace → 10 ms):
///   `none@16` 463k–540k → 544k–585k, `sync@16` 145k–182k → 174k–263k, `sync@256` 300k–331k
///   → 369k–377k, `async@256` 322k–440k → 405k–413k; `durable` and `sync-durable` unchanged
///   (their writers lead their own flushes), `durable@1` and `durable@16` over four more runs
///   each too. The primary's flusher had synced every page of the `sync` variants (3,357
///   `fdatasync` calls and 7,945 context switches in 2 s of `sync@256`) that no commit waited for.
/// - longer on the primary (stop 35, `pagemesh demo`, whose commits are all `Replicated`, an
///   experiment build): 1 s gave end to end 0.515 s against 0.585 s over ten alternated pairs,
///   then 0.575 s, and 200 ms 0.565 s, against 0.585 s over eight alternated triples. The first
///   series was noise; 10 ms stays, with its shorter window for a power loss to take.
pub const FLUSH_PACE: Duration = Duration::from_millis(10);

/// How long a replica's log ring lets pages gather between flushes by default
/// ([`Options::flush_pace`]).
///
/// A replica's ring syncs protect nothing anyone waits for: it acknowledges pages on receipt, a
/// page a power loss takes from its ring is fetched again from its source, and what it has
/// applied is on disk in LMDB, whose groups sync on their own. They only move the `durable_lsn`
/// its acks report. Yet each sync writes every ring page written since the last one, on a disk
/// the replica shares with its LMDB applies (and, in a test or a demo, with its source). Until
/// stop 35 the ring's file was circular, and a slot rewritten before the next sync reached the
/// disk once, so with a pace of a second a replica's ring wrote at most one ring's worth (16 MiB
/// by default) a second, whatever its page rate. The log is now in segments, each page in a
/// place of its own (`pagemesh_logpage`'s segment module, so that its pages can be the history
/// later), and every page reaches the disk once whatever the pace: the pace now keeps the
/// number of syncs down and lets writeback take the pages at its own time. What a longer pace
/// costs is a replica's `durable_lsn` lagging by up to the pace, and, after a power loss there,
/// up to a pace of pages fetched again.
///
/// Measured (`pagemesh demo`, eight runs alternated with a 10 ms pace on the replicas, the
/// nodes' leftover writes synced before raw heed's timer in both): end to end 0.44–0.57 s
/// against 0.48–0.68 s, 0.59–0.88x of raw heed (median 0.72x) against 0.51–0.72x (median
/// 0.63x). `bench replicate`'s `sync-durable@16/durable` moved within its noise. A 250 ms pace
/// (four pairs alternated with 1 s) did no better or worse beyond the noise, 0.62–0.75x against
/// 0.53–0.84x; 1 s keeps fewer syncs for the same cost, a `durable_lsn` that lags a second.
pub const REPLICA_FLUSH_PACE: Duration = Duration::from_secs(1);

/// How many nice steps below the thread that opens a database its applier runs, by default
/// ([`Options::apply_nice`]).
///
/// Measured (`bench replicate --inflight 16 --variants durable,sync-durable,sync-durable-apart`,
/// four runs alternated with a build whose applier kept its opener's priority, on 2 vCPUs):
/// commits/s `durable` 69k–82k → 76k–85k, `sync-durable` 45k–47k → 48k–57k,
/// `sync-durable-apart` 46k–51k → 55k–64k; `sync-durable/durable` 0.56–0.64 → 0.62–0.68 and
/// `sync-durable-apart/durable` 0.62–0.66 → 0.73–0.78. `demo`, three runs each: end to end
/// 0.52–0.60 s → 0.48–0.51 s. `bench commit` moved within its noise. With two nodes on two
/// vCPUs, the appliers (each applying a group of hundreds of records at a time) preempted the
/// writer and the network threads whenever they woke.
pub const APPLY_NICE: i32 = 10;

/// Default of [`Options::group_dirty_bytes_max`]: 128 MiB. Loading a million random keys (150 B
/// values, 50 a batch, 16 batches in flight, `Durable`) into one database, the process's
/// anonymous memory ended at 162 MiB with no limit, 129 MiB with this one (the load took 7%
/// longer) and 88 MiB with 64 MiB (50% longer): see `pagemesh_core`'s apply module, Group size.
pub const GROUP_DIRTY_BYTES_MAX_DEFAULT: usize = 128 << 20;

/// How to open a database. Defaults are safe.
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) map_size: usize,
    pub(crate) ring_slots: u64,
    pub(crate) group_bytes_max: usize,
    pub(crate) group_dirty_bytes_max: usize,
    /// `None`: by the database's role (`APPLY_PACE` or `REPLICA_APPLY_PACE`).
    pub(crate) apply_pace: Option<(Duration, usize)>,
    /// `None`: by the database's role (`FLUSH_PACE` or `REPLICA_FLUSH_PACE`).
    pub(crate) flush_pace: Option<Duration>,
    pub(crate) apply_nice: i32,
    pub(crate) durability: Durability,
    pub(crate) binlog_retain_bytes: u64,
    pub(crate) binlog_retain_age: Option<Duration>,
    pub(crate) replication_timeout: Duration,
    pub(crate) degrade_on_timeout: bool,
    pub(crate) log_tune: Option<LogTune>,
    pub(crate) lmdb_sync_hook: Option<LmdbSyncHook>,
}

/// A test's hook on the applier's explicit LMDB syncs; see [`Options::on_lmdb_sync`].
#[derive(Clone)]
pub(crate) struct LmdbSyncHook(pub(crate) Arc<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for LmdbSyncHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LmdbSyncHook")
    }
}

/// A caller's adjustment of the log's options; see [`Options::log_options_with`].
#[derive(Clone)]
pub(crate) struct LogTune(pub(crate) Arc<dyn Fn(LogOptions) -> LogOptions + Send + Sync>);

impl std::fmt::Debug for LogTune {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogTune")
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            map_size: 1 << 40,
            ring_slots: RING_SLOTS_DEFAULT,
            group_bytes_max: 8 << 20,
            group_dirty_bytes_max: GROUP_DIRTY_BYTES_MAX_DEFAULT,
            apply_pace: None,
            flush_pace: None,
            apply_nice: APPLY_NICE,
            durability: Durability::Durable,
            binlog_retain_bytes: 256 << 20,
            binlog_retain_age: None,
            replication_timeout: Duration::from_secs(10),
            degrade_on_timeout: false,
            log_tune: None,
            lmdb_sync_hook: None,
        }
    }
}

impl Options {
    /// Defaults: 1 TiB map (address space only; see [`Options::map_size`]), 4096-page (16 MiB)
    /// ring, 8 MiB groups (changing at most 128 MiB of pages in a large database), applies paced
    /// to 20 ms or 1 MiB (50 ms or 16 MiB on a replica) by an applier 10 nice steps below its
    /// opener, ring syncs paced to 10 ms for pages nobody waits on, 256 MiB of binlog history,
    /// `Durable`.
    pub fn new() -> Self {
        Self::default()
    }
    /// LMDB map size in bytes: the most the database can hold. It reserves address space only:
    /// the file grows as data is written (LMDB without `MDB_WRITEMAP`), so the large default
    /// lets a database grow without LMDB's live resize, which needs every read transaction in
    /// the process closed. Reaching it fails the group and poisons the database with
    /// `MDB_MAP_FULL`, as a full disk does with its I/O error.
    pub fn map_size(mut self, bytes: usize) -> Self {
        self.map_size = bytes;
        self
    }
    /// Log ring size in pages (a power of two). A record (one batch or transaction) may take up
    /// to half the ring: [`Database::batch`] hands out batches that check their puts against it.
    pub fn ring_slots(mut self, slots: u64) -> Self {
        self.ring_slots = slots;
        self
    }
    /// Most log page bytes applied in one LMDB transaction. Default: 8 MiB.
    pub fn group_bytes_max(mut self, bytes: usize) -> Self {
        self.group_bytes_max = bytes.max(4096);
        self
    }
    /// About the most memory one applied group makes LMDB hold. LMDB copies every page a write
    /// transaction changes into memory it allocates, and keeps those copies, for the next
    /// transactions, until the database is closed; in a tree much larger than the group, with
    /// random keys, each put or delete can change a page of its own. So once the tables hold
    /// more than `bytes` of pages, a group ends at the first run of ready log pages (64 pages at
    /// most) that brings its puts and deletes to `bytes` / 4 KiB; a smaller database is not
    /// limited, since a group cannot change more pages than it holds. Default:
    /// [`GROUP_DIRTY_BYTES_MAX_DEFAULT`] (128 MiB).
    pub fn group_dirty_bytes_max(mut self, bytes: usize) -> Self {
        self.group_dirty_bytes_max = bytes.max(4096);
        self
    }
    /// How the applier paces itself while nobody waits for `Applied`: once pages are ready, it
    /// lets a backlog build for up to `window`, or until `bytes` of ring pages (at most a quarter
    /// of the ring) wait, before it applies them as one group, so that a trickle of `Durable`
    /// commits does not pay one LMDB sync per commit on the disk the ring syncs on. A commit
    /// waiting for `Applied` (also `put_if_version` and transactions) and a
    /// [`Database::wait_for`] cut the wait short; readers that only look ([`Database::read`],
    /// [`Database::applied_lsn`]) see a commit up to `window` later. A zero `window` applies
    /// every ready page at once. Default: [`APPLY_PACE`] (20 ms, 1 MiB) on a database that takes
    /// writes, [`REPLICA_APPLY_PACE`] (50 ms, 16 MiB, so at most a quarter of the ring) on a
    /// replica, whose applier is never on a commit's path.
    pub fn apply_pace(mut self, window: Duration, bytes: usize) -> Self {
        self.apply_pace = Some((window, bytes));
        self
    }
    /// How long the log ring lets pages that nobody waits to see durable gather between two
    /// syncs of the log: one `fdatasync` then covers every page finished in the window,
    /// instead of one a page. A commit that waits for `Durable` (or `DurableReplicated`) is
    /// never held up by it: it ends the pace or leads its own flush. What the pace changes is
    /// how long a commit that waited for less (`Memory`, `Applied`, `Replicated`) may stay off
    /// the disk, for a power loss to take: up to `pace` and one sync. On a replica, which
    /// acknowledges pages on receipt, it moves only the `durable_lsn` its acks report (pages a
    /// power loss takes there are fetched again from the source). Zero syncs each page as it
    /// finishes. Default: [`FLUSH_PACE`] (10 ms) on a database that takes writes,
    /// [`REPLICA_FLUSH_PACE`] (1 s) on a replica, whose syncs no commit waits for.
    pub fn flush_pace(mut self, pace: Duration) -> Self {
        self.flush_pace = Some(pace);
        self
    }
    /// The apply pace of a database in its role: the one set, or the role's default.
    pub(crate) fn apply_pace_for(&self, replica: bool) -> (Duration, usize) {
        self.apply_pace.unwrap_or(if replica {
            REPLICA_APPLY_PACE
        } else {
            APPLY_PACE
        })
    }
    /// The flush pace of a database in its role: the one set, or the role's default.
    pub(crate) fn flush_pace_for(&self, replica: bool) -> Duration {
        self.flush_pace.unwrap_or(if replica {
            REPLICA_FLUSH_PACE
        } else {
            FLUSH_PACE
        })
    }
    /// How many nice steps below the thread that opens the database its applier thread runs
    /// (Linux gives each thread its own nice value; the result is capped at 19, the lowest
    /// priority). The applier is on no commit's path but `Applied`'s (also `put_if_version`'s
    /// and transactions'): when the cores are busy, committers, network threads and the ring's
    /// flusher run first, and the applier catches up in larger groups while they wait. A
    /// starved applier slows commits only once its backlog fills the ring, and then the
    /// committers, blocked, leave it the CPU. 0 keeps the opener's priority; values outside
    /// 0..=19 are clamped. Elsewhere than Linux, ignored. Default: [`APPLY_NICE`] (10).
    pub fn apply_nice(mut self, steps: i32) -> Self {
        self.apply_nice = steps.clamp(0, 19);
        self
    }
    /// Bytes of history to keep: whole 4 KiB pages of the log's segments (`binlog.rs`), retired a
    /// segment (a quarter ring) at a time, oldest first, never past a registered cursor.
    /// Default: 256 MiB. The log's files take this much disk beyond the ring.
    pub fn binlog_retain_bytes(mut self, bytes: u64) -> Self {
        self.binlog_retain_bytes = bytes;
        self
    }
    /// Also retire history segments last written longer ago than `age` (never past a registered
    /// cursor, a record still being applied or a page the log still holds). Default: no age
    /// limit.
    pub fn binlog_retain_age(mut self, age: Duration) -> Self {
        self.binlog_retain_age = Some(age);
        self
    }
    /// How long a `Replicated(n)` commit waits for its replicas before failing (default 10 s).
    pub fn replication_timeout(mut self, timeout: Duration) -> Self {
        self.replication_timeout = timeout;
        self
    }
    /// Whether a `Replicated(n)` commit that timed out returns `Ok` (with a warning) instead of
    /// [`Error::ReplicationTimeout`]. Default false: never a silent downgrade.
    pub fn degrade_on_timeout(mut self, degrade: bool) -> Self {
        self.degrade_on_timeout = degrade;
        self
    }
    /// Adjusts the options the database's log ring is opened with, after the database set its
    /// own (ring size, recovery start, epoch). For tests: with pagemesh-logpage's feature
    /// `fault-injection`, `LogOptions::sync_hook` injects failed syncs of the ring.
    pub fn log_options_with(
        mut self,
        tune: impl Fn(LogOptions) -> LogOptions + Send + Sync + 'static,
    ) -> Self {
        self.log_tune = Some(LogTune(Arc::new(tune)));
        self
    }
    /// For crash tests: `hook` is called with the id of the newest LMDB transaction each time
    /// the database syncs its environment explicitly (meta page included: at open, and when the
    /// applier releases the ring pages of its latest group; see the `apply` module, "When ring
    /// pages are released"), after the sync and before anything relies on it. Between those
    /// syncs each LMDB commit syncs its data pages but not its meta page (`MDB_NOMETASYNC`), so
    /// a power loss may undo the newest transaction, unless this reported it. Runs on the
    /// syncing thread: keep it short.
    pub fn on_lmdb_sync(mut self, hook: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.lmdb_sync_hook = Some(LmdbSyncHook(Arc::new(hook)));
        self
    }
    /// The durability [`Database::commit_default`] uses.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }
}
