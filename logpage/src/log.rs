//! The log: reserve, write, commit; the committed watermark; the ring horizon.
//!
//! See the crate docs for the life of a record, `anchor.rs` for reservation, `seal.rs` for commit
//! accounting and the seal policy, `ring.rs` for the file and recovery, `cursor.rs` for readers.
//!
//! # The ring horizon
//!
//! Page `lsn` lives in slot `lsn % slots`. A reservation may touch page `p` only once
//! `p < horizon + slots`: the horizon is the oldest page still retained. It is the minimum of every
//! cursor's released position (or the committed watermark when there are no cursors: nobody to
//! retain pages for). It advances lazily, when a reservation finds its slots taken, under the
//! `horizon` mutex: persist the new horizon in the ring header, reset the slots it frees, then
//! publish it (Release), so a reserver that reads it (Acquire) finds its slots clean.
//!
//! One file of about 860 lines, on purpose: reservation, commit, the waits that seal and ingest
//! all keep the same invariants of `Shared` (anchor, watermark, horizon); split apart, each part
//! would reach into the others' private state.

use std::path::Path;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::anchor::{Anchor, Position, Span};
use crate::cursor::CursorPins;
use crate::durable::Durability;
use crate::error::{Error, Result};
use crate::page::{validate, write_page, PageMeta, PAGE_SIZE, PAYLOAD_SIZE};
use crate::record::{seq_of, ABORTED_BIT, RECORD_HEADER_SIZE, RECORD_LEN_MAX};
use crate::ring::{Recovered, Ring};
use crate::seal::{AsyncWakers, Consumers, Notify, Slot, SlotState};
use crate::sync::{anchor_is_lock_free, lock, Arc, AtomicBool, AtomicU64, Mutex, Ordering};

/// How to open a log. Defaults are safe for production.
#[derive(Clone, Debug)]
pub struct LogOptions {
    slots: u64,
    epoch: u64,
    next_lsn_min: u64,
    recover_from: Option<u64>,
    epoch_above_recovered: bool,
    follower: bool,
    keep_history: bool,
    pub(crate) flush_pace: Duration,
    #[cfg(any(test, feature = "fault-injection"))]
    pub(crate) sync_hook: Option<IoHook>,
    #[cfg(any(test, feature = "fault-injection"))]
    pub(crate) write_hook: Option<IoHook>,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            slots: 1024,
            epoch: 0,
            next_lsn_min: 0,
            recover_from: None,
            epoch_above_recovered: false,
            follower: false,
            keep_history: false,
            flush_pace: Duration::ZERO,
            #[cfg(any(test, feature = "fault-injection"))]
            sync_hook: None,
            #[cfg(any(test, feature = "fault-injection"))]
            write_hook: None,
        }
    }
}

/// A test's stand-in for part of the ring's I/O: see [`LogOptions::sync_hook`] and
/// [`LogOptions::write_hook`].
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Clone)]
pub(crate) struct IoHook(pub(crate) IoHookFn);

/// The function behind an [`IoHook`]: called with the pages a sync covers, or a write writes,
/// `from..to`.
#[cfg(any(test, feature = "fault-injection"))]
pub(crate) type IoHookFn = Arc<dyn Fn(u64, u64) -> std::io::Result<()> + Send + Sync>;

#[cfg(any(test, feature = "fault-injection"))]
impl std::fmt::Debug for IoHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IoHook")
    }
}

impl LogOptions {
    /// Defaults: 1024 slots (4 MiB of ring), epoch 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ring size in pages: a power of two, at least 4. Records may be up to half the ring.
    pub fn slots(mut self, slots: u64) -> Self {
        self.slots = slots;
        self
    }

    /// The epoch (failover term) stamped on every page this log writes.
    pub fn epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }

    /// Take an epoch above every recovered page's: the log's epoch becomes
    /// `max(epoch, highest recovered page epoch + 1)`. For a writer restarting after an unclean
    /// stop: pages beyond the durable watermark may have been lost with the power, and may have
    /// reached a replica first; new pages under those LSNs must not carry the same epoch.
    pub fn epoch_above_recovered(mut self, above: bool) -> Self {
        self.epoch_above_recovered = above;
        self
    }

    /// Continue numbering pages at `lsn` at least: for a store whose durable history (its binlog)
    /// already reaches `lsn` when the ring holds less, for example a new log. Recovered pages
    /// below it are dropped: the caller has them.
    pub fn next_lsn_min(mut self, lsn: u64) -> Self {
        self.next_lsn_min = lsn;
        self
    }

    /// Start recovery at page `lsn` instead of at the horizon persisted in the log's head (when
    /// `lsn` is above it): for a store whose own synced state says where the log continues, such
    /// as the next LSN its binlog lacks. Pages below `lsn` are not recovered: the store has them.
    /// (After a power loss the head may be older than the last horizon written; recovery from it
    /// finds the same end: `durable.rs`, Process crash and power loss.)
    pub fn recover_from(mut self, lsn: u64) -> Self {
        self.recover_from = Some(lsn);
        self
    }

    /// Fault injection, for tests only (this crate's, and with the feature `fault-injection`):
    /// `hook(from, to)` runs before every sync of the ring, with the pages the flush covers; an
    /// error it returns fails that flush as a failed `fdatasync` would, and poisons the log. It
    /// may also record or delay syncs. On a log in memory it stands in for the sync altogether.
    ///
    /// Per log, so tests running in parallel inject failures into their own logs only (a
    /// process-wide failpoint registry would make them serialise); compiled out of production
    /// builds, so there is no branch for it on the flush path.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn sync_hook(
        mut self,
        hook: impl Fn(u64, u64) -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.sync_hook = Some(IoHook(Arc::new(hook)));
        self
    }

    /// Fault injection, as [`sync_hook`](Self::sync_hook), for the writes of finished pages to
    /// their segments (`ring.rs`, Writes): `hook(from, to)` runs before pages `from..to` are
    /// written (one page a write for local commits, a run for [`Log::ingest`]), and an error it
    /// returns fails that write, which poisons the log.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn write_hook(
        mut self,
        hook: impl Fn(u64, u64) -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.write_hook = Some(IoHook(Arc::new(hook)));
        self
    }

    /// A follower log is fed whole pages by [`Log::ingest`] (a replica's copy of another origin's
    /// log) and refuses local reservations. Default: false, a log written by local reservations.
    pub fn follower(mut self, follower: bool) -> Self {
        self.follower = follower;
        self
    }

    /// Keep the segments the horizon passes as the log's history, readable by LSN
    /// ([`HistoryReader`](crate::HistoryReader)), until [`Log::retire_history_below`] retires
    /// them. Default: false, a segment is retired (its file kept for reuse) once the horizon has
    /// passed all of it. Ignored by a log in memory, which has no history.
    pub fn keep_history(mut self, keep: bool) -> Self {
        self.keep_history = keep;
        self
    }

    /// The log's [`Flusher`](crate::Flusher) starts a flush at most once per `pace` (after the
    /// first) while no durable waiter wants a page: one sync then covers every page finished in
    /// the window (`durable.rs`, The flusher's pace). A durable waiter is not held up: it ends
    /// the pace, or leads its own flush. Default: zero, a flush as soon as a page is ready.
    pub fn flush_pace(mut self, pace: Duration) -> Self {
        self.flush_pace = pace;
        self
    }

    fn check(&self) -> Result<()> {
        if self.slots < 4 || !self.slots.is_power_of_two() || self.slots > 1 << 24 {
            return Err(Error::InvalidOption {
                option: "slots",
                value: self.slots,
                expected: "a power of two from 4 to 2^24",
            });
        }
        let limit = crate::page::LSN_LIMIT;
        for (option, lsn) in [
            ("recover_from", self.recover_from.unwrap_or(0)),
            ("next_lsn_min", self.next_lsn_min),
        ] {
            if lsn >= limit {
                return Err(Error::InvalidOption {
                    option,
                    value: lsn,
                    expected: "an LSN below the page format's limit (2^52)",
                });
            }
        }
        Ok(())
    }
}

/// What [`Log::ingest`] did with a run of pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ingested {
    /// Pages taken from the front of the run: copied in, or skipped as already held.
    pub pages: usize,
    /// The ring was full: the rest of the run must be offered again once cursors release pages.
    pub full: bool,
}

/// Where a committed record lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CommitPos {
    /// The record's sequence number.
    pub seq: u64,
    /// The last page holding a byte of it: the record is in the committed log once the watermark
    /// passes this page.
    pub lsn_last: u64,
}

/// The state every handle, reservation and cursor shares.
pub(crate) struct Shared {
    pub anchor: Anchor,
    /// First page not yet ready: every page below it is finished and readable.
    pub watermark: CachePadded<AtomicU64>,
    /// Oldest retained page; see the module docs.
    pub horizon: CachePadded<AtomicU64>,
    pub slots: Box<[CachePadded<Slot>]>,
    pub ring: Ring,
    pub slot_count: u64,
    pub epoch: AtomicU64,
    pub record_len_max: usize,
    pub consumers: Consumers,
    /// Woken when the watermark advances, when a writer asks for a seal (rule 2), when an async
    /// durable waiter needs sealing or a flusher should stop, when a sync fails, and on close.
    pub committed: Notify,
    /// Woken when the horizon may advance (a cursor released pages, the watermark moved), when a
    /// sync fails, and on close.
    pub space: Notify,
    /// The durable watermark and its flushes (`durable.rs`).
    pub durability: Durability,
    /// Serialises horizon advances; also held while cursors register.
    pub horizon_lock: Mutex<()>,
    pub pins: CursorPins,
    pub closed: AtomicBool,
    /// Counts seal requests (seal rule 2): a commit that opened a page, or a waiter or ticket
    /// for an unannounced one, asks idle consumers to seal the open page.
    pub seal_requests: AtomicU64,
    pub recovered: Recovered,
    /// Async tasks waiting for the same events as `committed` and `space`.
    pub wakers: AsyncWakers,
    /// Set for a log fed by `ingest`; see [`LogOptions::follower`].
    pub follower: AtomicBool,
    /// Serialises `ingest` calls: a follower has exactly one writer at a time.
    pub ingest_lock: Mutex<()>,
}

/// The replication log: a ring of 4 KB pages that many threads append records to without a lock.
///
/// A `Log` is a cheap handle (`Clone`, `Send`, `Sync`); every clone is the same log.
///
/// ```
/// use pagemesh_logpage::{Log, LogOptions, RecordReader};
///
/// let dir = tempfile::tempdir()?;
/// let log = Log::open(dir.path(), LogOptions::new().slots(64))?;
/// let mut cursor = log.cursor(0)?;
///
/// let pos = log.append(b"hello, log")?;
/// log.wait_committed(pos, None)?; // seals the page: nobody else is consuming
///
/// let mut reader = RecordReader::new();
/// let page = cursor.next_ready()?.expect("a ready page");
/// reader.feed(page, |record| assert_eq!(&record.bytes[..], b"hello, log"))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Log {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("path", &self.shared.ring.path())
            .field("anchor", &self.shared.anchor.load())
            .field("committed_lsn", &self.committed_lsn())
            .field("horizon", &self.shared.horizon.load(Ordering::Relaxed))
            .finish()
    }
}

impl Log {
    /// Opens the log in `dir` (creating its head, `dir/log.head`, and its first segments if
    /// needed: `segment.rs`) and recovers what it held: the committed pages from the persisted
    /// horizon up to the first gap.
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<Self> {
        options.check()?;
        let (mut ring, recovered) = Ring::open(dir.as_ref(), options.slots, options.recover_from)?;
        ring.set_keep_history(options.keep_history);
        tracing::info!(
            path = %dir.as_ref().display(),
            slots = options.slots,
            start_lsn = recovered.start_lsn,
            end_lsn = recovered.end_lsn,
            discarded_pages = recovered.discarded_pages,
            "opened log ring"
        );
        Self::with_ring(ring, recovered, &options)
    }

    /// Fails with the ring's `Locked` error if another process holds the log in `dir`; takes the
    /// log's lock and releases it at once, without reading the log or recovering it
    /// (creating its head, empty, if there is none). For a store that must keep a second
    /// instance out of its other files before it opens the log from where its own state says
    /// recovery must start ([`LogOptions::recover_from`]).
    pub fn probe_lock(dir: impl AsRef<Path>) -> Result<()> {
        Ring::probe_lock(dir.as_ref())
    }

    /// The files of the log in `dir`: its head, then its segments and spare segments, by name.
    /// Empty if there is no log there.
    pub fn files(dir: impl AsRef<Path>) -> std::io::Result<Vec<std::path::PathBuf>> {
        crate::segment::files(dir.as_ref())
    }

    /// Retires the history segments wholly below `lsn` (capped at the horizon: the log's own
    /// pages are never retired): each file becomes a spare for reuse, or is deleted. For a log
    /// that keeps its history ([`LogOptions::keep_history`]). Returns the first LSN the log's
    /// files still hold, or `lsn` capped as above if none.
    ///
    /// # Errors
    /// [`Error::Io`] naming the head if a retirement failed: the history is then longer than
    /// asked, never shorter than what a failed call reports.
    pub fn retire_history_below(&self, lsn: u64) -> Result<u64> {
        let shared = &*self.shared;
        // Under the horizon lock: the horizon (and the head's copy of it) only grows, so no
        // segment above it can be retired by a race.
        let _guard = lock(&shared.horizon_lock);
        let lsn = lsn.min(shared.horizon.load(Ordering::Acquire));
        shared.ring.retire_below(lsn).map_err(|source| Error::Io {
            op: "retire history segments of",
            path: shared.ring.path_or_anonymous(),
            source,
        })?;
        Ok(self.history_segments().0.first().copied().unwrap_or(lsn))
    }

    /// The first LSN of each segment the log's files hold, in order, and the pages a segment
    /// holds (no segments for a log in memory). History below the horizon is in the segments
    /// below it, if kept ([`LogOptions::keep_history`]).
    pub fn history_segments(&self) -> (Vec<u64>, u64) {
        self.shared.ring.segments()
    }

    /// When the segment starting at `first_lsn` was last written: for retention by age. None if
    /// it is not installed (or its file's time is unknown).
    pub fn history_segment_modified(&self, first_lsn: u64) -> Option<std::time::SystemTime> {
        self.shared.ring.segment_modified(first_lsn)
    }

    /// A log in anonymous memory (nothing survives the process): for tests and benchmarks.
    pub fn in_memory(options: LogOptions) -> Result<Self> {
        options.check()?;
        let (ring, recovered) = Ring::anonymous(options.slots)?;
        Self::with_ring(ring, recovered, &options)
    }

    fn with_ring(ring: Ring, mut recovered: Recovered, options: &LogOptions) -> Result<Self> {
        if !anchor_is_lock_free() {
            return Err(Error::AnchorNotLockFree);
        }
        if recovered.end_lsn < options.next_lsn_min {
            let lsn = options.next_lsn_min;
            tracing::info!(
                lsn,
                ring_end_lsn = recovered.end_lsn,
                "log continues past the ring's pages"
            );
            // Persisting the horizon first makes a later recovery start here, not at the stale
            // pages below.
            ring.persist_released_lsn(lsn)
                .and_then(|()| ring.prepare(lsn))
                .map_err(|source| Error::Io {
                    op: "write the horizon of",
                    path: ring.path_or_anonymous(),
                    source,
                })?;
            recovered = Recovered {
                start_lsn: lsn,
                end_lsn: lsn,
                ..recovered
            };
        }
        let slots: Box<[CachePadded<Slot>]> = (0..options.slots)
            .map(|_| CachePadded::new(Slot::new()))
            .collect();
        for lsn in recovered.start_lsn..recovered.end_lsn {
            slots[(lsn % options.slots) as usize].mark_ready(lsn);
        }
        let ring_bytes = (options.slots as usize / 2) * PAYLOAD_SIZE;
        let shared = Shared {
            anchor: Anchor::new(Position {
                lsn: recovered.end_lsn,
                offset: 0,
            }),
            watermark: CachePadded::new(AtomicU64::new(recovered.end_lsn)),
            horizon: CachePadded::new(AtomicU64::new(recovered.start_lsn)),
            slots,
            ring,
            slot_count: options.slots,
            epoch: AtomicU64::new(
                options
                    .epoch
                    .max(recovered.epoch_max + u64::from(options.epoch_above_recovered)),
            ),
            record_len_max: (ring_bytes - RECORD_HEADER_SIZE).min(RECORD_LEN_MAX),
            consumers: Consumers::default(),
            committed: Notify::default(),
            space: Notify::default(),
            durability: Durability::new(recovered.start_lsn, options),
            horizon_lock: Mutex::new(()),
            pins: CursorPins::default(),
            closed: AtomicBool::new(false),
            seal_requests: AtomicU64::new(0),
            recovered,
            wakers: AsyncWakers::default(),
            follower: AtomicBool::new(options.follower),
            ingest_lock: Mutex::new(()),
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// What the ring held when it was opened.
    pub fn recovered(&self) -> Recovered {
        self.shared.recovered
    }

    /// The committed watermark: every page below it is finished and readable.
    pub fn committed_lsn(&self) -> u64 {
        self.shared.watermark.load(Ordering::SeqCst)
    }

    /// Where the next reservation would start.
    pub fn anchor(&self) -> Position {
        self.shared.anchor.load()
    }

    /// The oldest page the ring still holds.
    pub fn horizon_lsn(&self) -> u64 {
        self.shared.horizon.load(Ordering::Acquire)
    }

    /// Ring size in pages.
    pub fn slots(&self) -> u64 {
        self.shared.slot_count
    }

    /// The largest record this log accepts (half the ring, less the record header).
    pub fn record_len_max(&self) -> usize {
        self.shared.record_len_max
    }

    /// The epoch stamped on new pages.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::Relaxed)
    }

    /// Reserves room for a record of `len` bytes. Lock-free; blocks only while the ring is full
    /// (backpressure) until cursors release pages.
    ///
    /// Write exactly `len` bytes into the reservation, then [`Reservation::commit`] it. Do not
    /// reserve again on the same thread before committing: the second reservation could wait for
    /// ring space that only the first one's commit frees.
    pub fn reserve(&self, len: usize) -> Result<Reservation<'_>> {
        let shared = &*self.shared;
        let span = shared.reserve_span(len)?;
        let cursor = shared.write_at(span.start, &(len as u32).to_le_bytes());
        Ok(Reservation {
            shared,
            span,
            len,
            written: 0,
            cursor,
            done: false,
        })
    }

    /// Whether a record of `len` bytes would be reserved now without waiting for ring space
    /// (the horizon is advanced first). With other threads reserving it is only a hint; for a
    /// single writer, such as the deterministic simulator, it is exact: a writer that must not
    /// block asks first.
    pub fn has_room(&self, len: usize) -> bool {
        let shared = &*self.shared;
        let total = (RECORD_HEADER_SIZE + len) as u64;
        let start = shared.anchor.load();
        let last_lsn = Span {
            start,
            end: start.advance(total),
        }
        .last_lsn();
        last_lsn < shared.horizon.load(Ordering::Acquire) + shared.slot_count
            || last_lsn < shared.advance_horizon() + shared.slot_count
    }

    /// Appends one record: reserve, write, commit, with no [`Reservation`] in between.
    pub fn append(&self, record: &[u8]) -> Result<CommitPos> {
        let shared = &*self.shared;
        let span = shared.reserve_span(record.len())?;
        let header = (record.len() as u32).to_le_bytes();
        let offset = span.start.offset as usize;
        if offset + RECORD_HEADER_SIZE + record.len() <= PAYLOAD_SIZE {
            // The common case: the whole record lies in one page; one copy each, no loops.
            // SAFETY: the range is this reservation's alone, inside one page's payload.
            unsafe {
                shared.ring.write_payload(span.start.lsn, offset, &header);
                shared
                    .ring
                    .write_payload(span.start.lsn, offset + RECORD_HEADER_SIZE, record);
            }
        } else {
            let after_header = shared.write_at(span.start, &header);
            shared.write_at(after_header, record);
        }
        Ok(shared.commit_span(span, Announce::Yes))
    }

    /// Seals the open page if it holds anything, so it can be read and shipped. Returns the LSN of
    /// the page sealed.
    pub fn seal(&self) -> Option<u64> {
        self.shared.seal_open_page(None)
    }

    /// Blocks until the watermark passes `pos` (its record is in the committed log), sealing its
    /// page if no consumer is engaged to do it (see `seal.rs`). Returns `Ok(false)` if `deadline`
    /// passed first.
    pub fn wait_committed(&self, pos: CommitPos, deadline: Option<Instant>) -> Result<bool> {
        let consumers = &self.shared.consumers;
        self.wait_watermark(pos, || !consumers.engaged(), deadline)
    }

    /// Blocks until the watermark passes `pos`, without waiting on a *busy* consumer: the caller
    /// seals its page itself unless some consumer is *waiting* for pages, which seals it as soon as
    /// it wakes (see `seal.rs`, rule 3b).
    ///
    /// For a commit whose promise is the ring alone (`Memory` durability). A busy consumer may be
    /// an applier in the middle of an fsync, and [`wait_committed`](Self::wait_committed) would
    /// make such a commit wait for it: measured without a replica, `Memory` commits ran at the
    /// applier's sync pace, 3.2k/s with one in flight, against 137k/s sealing at once.
    pub fn wait_in_ring(&self, pos: CommitPos) -> Result<()> {
        let consumers = &self.shared.consumers;
        self.wait_watermark(pos, || consumers.waiting() == 0, None)
            .map(|_| ())
    }

    /// Makes sure someone seals `pos`'s page if it is still open, without waiting: seals it here
    /// if no consumer is *waiting* to (as [`wait_in_ring`](Self::wait_in_ring) would), or asks
    /// the consumers to (seal rule 2, `seal.rs`).
    ///
    /// For a record committed with [`Reservation::commit_unannounced`] that its writer will not
    /// wait on after all (a dropped commit ticket, a poll that found it not yet done): without a
    /// waiter, nobody asks for its page, which then ships only once it fills.
    pub fn request_seal(&self, pos: CommitPos) {
        let shared = &*self.shared;
        if shared.consumers.waiting() == 0 {
            shared.seal_open_page(Some(pos.lsn_last));
        } else {
            shared.ask_to_seal(pos.lsn_last);
        }
    }

    /// Asks the shippers that pace ([`Cursor::poll_paced`](crate::Cursor::poll_paced)) to ship
    /// page `lsn` without waiting for their backlog to build, once it is ready: for a writer about
    /// to wait for replicas to receive its record (core's `Replicated` and `DurableReplicated`
    /// commits). It does not seal the page: the writer's wait does that, as for any wait.
    ///
    /// Cheap: two atomic loads when the page was asked for already or every pacing shipper has
    /// shipped it; it wakes a shipper only when one has not.
    pub fn request_ship(&self, lsn: u64) {
        self.shared.consumers.request_ship(lsn);
    }

    /// Waits until the watermark passes `pos`, first sealing its page if `seal_here` says no
    /// consumer will (the seal rule of the caller), or else asking the consumers to (rule 2).
    /// `Ok(false)` if `deadline` passed first.
    fn wait_watermark(
        &self,
        pos: CommitPos,
        seal_here: impl FnOnce() -> bool,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        let shared = &*self.shared;
        if shared.watermark.load(Ordering::SeqCst) > pos.lsn_last {
            return Ok(true);
        }
        if seal_here() {
            shared.seal_open_page(Some(pos.lsn_last));
        } else {
            shared.ask_to_seal(pos.lsn_last);
        }
        let passed = shared.committed.wait_while(
            || shared.watermark.load(Ordering::SeqCst) <= pos.lsn_last && !shared.is_closed(),
            deadline,
        );
        if shared.watermark.load(Ordering::SeqCst) > pos.lsn_last {
            // A page whose write to its segment failed is marked ready all the same.
            match shared.poisoned_error() {
                Some(error) => Err(error),
                None => Ok(true),
            }
        } else if shared.is_closed() {
            Err(Error::Closed)
        } else {
            debug_assert!(!passed);
            Ok(false)
        }
    }

    /// Closes the log: every blocked reservation, wait and cursor returns [`Error::Closed`], and
    /// new reservations are refused. Pages already in the ring stay intact.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.committed.notify_all();
        self.shared.consumers.pace.notify_all();
        self.shared.consumers.wake_async_pacers();
        self.shared.space.notify_all();
        self.shared.wakers.wake_all();
        self.shared.durability.notify.notify_all();
        self.shared.durability.flusher.notify_all();
        self.shared.durability.wakers.wake_all();
        tracing::debug!("log closed");
    }

    /// Wakes `waker` once, at the next of: the watermark advancing, pages released, a writer
    /// asking idle consumers to seal (seal policy rule 2), or close. For async consumers and feeders:
    /// register, re-check what you wait for, and only then return `Pending`.
    pub fn register_waker(&self, waker: &Waker) {
        self.shared.wakers.register(waker);
    }

    /// Whether this log is fed by [`ingest`](Self::ingest) rather than written locally.
    pub fn is_follower(&self) -> bool {
        self.shared.follower.load(Ordering::Relaxed)
    }

    /// Copies another origin's pages (back to back, full form) into a follower log, in order, as
    /// they are: each page is validated (crc, header) and must be of the log's epoch or newer.
    ///
    /// Pages below the watermark are already held and skipped (a resend after a reconnect); the
    /// first page above it must be the watermark's page ([`Error::Gap`] otherwise). Never blocks:
    /// when the ring is full it stops and reports how far it got; [`register_waker`](Self::register_waker)
    /// wakes the caller when cursors release pages. Pages ingested before an error stay ingested.
    pub fn ingest(&self, pages: &[u8]) -> Result<Ingested> {
        let shared = &*self.shared;
        if !self.is_follower() {
            return Err(Error::NotFollower);
        }
        if !pages.len().is_multiple_of(PAGE_SIZE) {
            return Err(Error::PageLength {
                len: pages.len() % PAGE_SIZE,
                min: PAGE_SIZE,
                max: PAGE_SIZE,
            });
        }
        let _guard = lock(&shared.ingest_lock);
        let first = shared.watermark.load(Ordering::SeqCst);
        let mut next = first;
        let mut outcome = Ingested {
            pages: 0,
            full: false,
        };
        let result = (|| {
            for bytes in pages.chunks_exact(PAGE_SIZE) {
                let page = validate(bytes)?;
                let lsn = page.lsn();
                if lsn < next {
                    outcome.pages += 1;
                    continue;
                }
                if lsn > next {
                    return Err(Error::Gap {
                        expected: next,
                        found: lsn,
                    });
                }
                let (epoch, current) =
                    (page.header().epoch(), shared.epoch.load(Ordering::Relaxed));
                if epoch < current {
                    return Err(Error::Fenced {
                        lsn,
                        epoch,
                        current,
                    });
                }
                if shared.is_closed() {
                    return Err(Error::Closed);
                }
                if lsn >= shared.horizon.load(Ordering::Acquire) + shared.slot_count
                    && lsn >= shared.advance_horizon() + shared.slot_count
                {
                    outcome.full = true;
                    return Ok(());
                }
                shared.epoch.store(epoch, Ordering::Relaxed);
                // SAFETY: page `lsn` is at or past the watermark: no cursor reads it yet (they
                // read below the watermark), its slot's previous page is below the horizon
                // (checked above), and the ingest lock makes this thread its only writer.
                // `mark_ready` (SeqCst, below) publishes the bytes.
                unsafe { shared.ring.slot_mut(lsn) }.copy_from_slice(bytes);
                next += 1;
                outcome.pages += 1;
            }
            Ok(())
        })();
        // The pages copied reach the file in one write per run (two where the ring wraps), and
        // only then are they marked ready: nothing reads them before the watermark advance below.
        // SAFETY: as above, for every page of `first..next`.
        let result = match unsafe { shared.write_through(first, next) } {
            Ok(()) => {
                for lsn in first..next {
                    shared.slot(lsn).mark_ready(lsn);
                }
                result
            }
            Err(source) => {
                shared.poison(first, next, source);
                next = first;
                Err(shared.poisoned_error().unwrap_or(Error::Closed))
            }
        };
        // One watermark advance (and one round of wake-ups) for the whole run.
        let mut at = shared.anchor.load();
        while at.lsn < next {
            match shared.anchor.compare_exchange(
                at,
                Position {
                    lsn: next,
                    offset: 0,
                },
            ) {
                Ok(()) => break,
                Err(actual) => at = actual,
            }
        }
        shared.advance_watermark();
        result.map(|()| outcome)
    }

    /// [`ingest`](Self::ingest) for an event loop: `Ready` once some of `pages` was taken (or on
    /// an error); `Pending`, with `cx`'s waker registered, while the ring is full. The waker is
    /// registered *before* a second attempt, so a release between the two cannot be missed.
    pub fn poll_ingest(&self, cx: &mut Context<'_>, pages: &[u8]) -> Poll<Result<Ingested>> {
        match self.ingest(pages) {
            Ok(ingested) if ingested.full && ingested.pages == 0 => {}
            other => return Poll::Ready(other),
        }
        self.register_waker(cx.waker());
        match self.ingest(pages) {
            Ok(ingested) if ingested.full && ingested.pages == 0 => Poll::Pending,
            other => Poll::Ready(other),
        }
    }
}

impl Shared {
    /// Reserves `RECORD_HEADER_SIZE + len` bytes: the anchor CAS loop, then sealing the pages the
    /// CAS moved past and marking the pages the record runs into.
    #[inline(always)] // keeps the span in registers: returned through memory it stalls the reload
    fn reserve_span(&self, len: usize) -> Result<Span> {
        if len == 0 {
            return Err(Error::EmptyRecord);
        }
        if len > self.record_len_max {
            return Err(Error::RecordTooLarge {
                len,
                max: self.record_len_max,
            });
        }
        if self.is_closed() {
            return Err(Error::Closed);
        }
        if let Some(error) = self.poisoned_error() {
            return Err(error);
        }
        if self.follower.load(Ordering::Relaxed) {
            return Err(Error::Follower);
        }
        let total = (RECORD_HEADER_SIZE + len) as u64;
        let mut start = self.anchor.load();
        let span = loop {
            let span = Span {
                start,
                end: start.advance(total),
            };
            if span.last_lsn() >= self.horizon.load(Ordering::Acquire) + self.slot_count {
                self.wait_for_space(span.last_lsn())?;
                start = self.anchor.load();
                continue;
            }
            match self.anchor.compare_exchange(start, span.end) {
                Ok(()) => break span,
                Err(actual) => start = actual,
            }
        };
        if span.end.lsn != span.start.lsn {
            self.mark_crossed_pages(span);
        }
        Ok(span)
    }

    /// The CAS of `span` sealed every page it moved past; seal them, and record in every page the
    /// record runs into where it ends there.
    #[cold]
    fn mark_crossed_pages(&self, span: Span) {
        for lsn in span.start.lsn..span.end.lsn {
            if let Some(state) = self.slot(lsn).seal(PAYLOAD_SIZE as u64) {
                self.finish_page(lsn, state);
            }
        }
        for lsn in span.start.lsn + 1..=span.last_lsn() {
            let end = if lsn == span.end.lsn {
                span.end.offset
            } else {
                PAYLOAD_SIZE as u64
            };
            self.slot(lsn).set_continuation_end(end as u32);
        }
    }

    /// Copies `bytes` into the ring at `at`, across page boundaries; returns the position after.
    /// The caller must own the whole range by reservation.
    fn write_at(&self, mut at: Position, mut bytes: &[u8]) -> Position {
        while !bytes.is_empty() {
            let room = PAYLOAD_SIZE - at.offset as usize;
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            // SAFETY: the range lies inside the caller's reservation (the anchor CAS gave it to
            // that caller alone), and it reaches readers only through the commit's Release add.
            unsafe { self.ring.write_payload(at.lsn, at.offset as usize, now) };
            at = at.advance(now.len() as u64);
            bytes = rest;
        }
        at
    }

    /// Commits every byte of `span`: one accounting add per page it touched. Finishes any page the
    /// add completed, and, if `announce` says so, applies rule 2 of the seal policy.
    #[inline(always)]
    fn commit_span(&self, span: Span, announce: Announce) -> CommitPos {
        let last = span.last_lsn();
        if last == span.start.lsn {
            let bytes = span.end_offset_in(last) - span.start.offset;
            if let Some(state) = self.slot(last).commit(bytes, true) {
                self.finish_page(last, state);
            }
        } else {
            for lsn in span.start.lsn..=last {
                if let Some(state) = self
                    .slot(lsn)
                    .commit(span.bytes_in(lsn), lsn == span.start.lsn)
                {
                    self.finish_page(lsn, state);
                }
            }
        }
        // Rule 2 of the seal policy: a commit that opened a page (its first, or the last one it
        // ran into) asks idle consumers to seal it, unless its writer will ask when it waits.
        if announce == Announce::Yes && (span.start.offset == 0 || last > span.start.lsn) {
            self.announce_seal_request();
        }
        CommitPos {
            seq: seq_of(span.start.lsn, span.start.offset as u16),
            lsn_last: last,
        }
    }

    /// Asks consumers to seal page `lsn` if it is the open page and holds bytes (rule 2).
    pub fn ask_to_seal(&self, lsn: u64) {
        let open = self.anchor.load();
        if open.lsn == lsn && open.offset > 0 {
            self.announce_seal_request();
        }
    }

    /// Counts a seal request, then wakes the consumers waiting for one. Counted even when none
    /// waits: a busy consumer seals on turning idle only if a request came since it last sealed
    /// (`Cursor::poll_ready`). Request, then look at the waiters; a consumer publishes that it
    /// waits, then looks at the requests: one of the two sees the other (all `SeqCst`).
    fn announce_seal_request(&self) {
        self.seal_requests.fetch_add(1, Ordering::SeqCst);
        if self.consumers.waiting() > 0 {
            self.committed.notify_all();
            self.wakers.wake_all();
            self.consumers.wake_async_pacers();
        }
    }

    pub fn slot(&self, lsn: u64) -> &Slot {
        &self.slots[(lsn & (self.slot_count - 1)) as usize]
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Seals the open page if it holds bytes (and, with `only`, only if it is that page).
    pub fn seal_open_page(&self, only: Option<u64>) -> Option<u64> {
        let mut at = self.anchor.load();
        loop {
            if at.offset == 0 || only.is_some_and(|lsn| lsn != at.lsn) {
                return None;
            }
            let next = Position {
                lsn: at.lsn + 1,
                offset: 0,
            };
            match self.anchor.compare_exchange(at, next) {
                Ok(()) => break,
                Err(actual) => at = actual,
            }
        }
        if let Some(state) = self.slot(at.lsn).seal(at.offset) {
            self.finish_page(at.lsn, state);
        }
        Some(at.lsn)
    }

    /// `Ring::write_through` of pages `from..to`, after the test's write hook if one is set.
    ///
    /// # Safety
    /// As for `Ring::write_through`.
    unsafe fn write_through(&self, from: u64, to: u64) -> std::io::Result<()> {
        #[cfg(any(test, feature = "fault-injection"))]
        if let Some(hook) = &self.durability.write_hook {
            (hook.0)(from, to)?;
        }
        // SAFETY: the caller's contract.
        unsafe { self.ring.write_through(from, to) }
    }

    /// Writes the header and crc of the completed page `lsn`, marks it ready, advances the
    /// watermark. Called by exactly one thread per page: the one whose add completed it.
    pub fn finish_page(&self, lsn: u64, state: SlotState) {
        let record_count = state.starts() as u16;
        let meta = PageMeta {
            lsn,
            committed_lsn: self.watermark.load(Ordering::SeqCst).min(lsn),
            epoch: self.epoch.load(Ordering::Relaxed),
            payload_len: state.sealed_len() as u16,
            first_record_offset: self.slot(lsn).continuation_end() as u16,
            record_count,
            end_of_epoch: false,
            resumed: lsn == self.recovered.end_lsn && lsn > 0,
        };
        // SAFETY: the page is complete: every writer committed (their byte ranges are done and
        // were published to us by the AcqRel adds) and no reader looks at it before `mark_ready`.
        write_page(unsafe { self.ring.slot_mut(lsn) }, &meta);
        // SAFETY: as above: the page is complete and no reader looks at it yet.
        if let Err(source) = unsafe { self.write_through(lsn, lsn + 1) } {
            // Not in the file: a crash could lose it. Poisoned, no wait reports it kept, and
            // no sync counts it durable (`sync_finished` looks again after its sync); it is
            // still marked ready so that nobody waits for it forever.
            self.poison(lsn, lsn + 1, source);
        }
        self.slot(lsn).mark_ready(lsn);
        self.advance_watermark();
    }

    /// Moves the watermark over every consecutive ready page. Any finisher may call it after
    /// tagging its page ready. No advance is lost: a finisher tags its page, then loads the
    /// watermark; an advancer moves the watermark, then loads the next page's tag; all `SeqCst`, so
    /// at least one of them sees the other's store (see `seal.rs`, Orderings).
    fn advance_watermark(&self) {
        let mut advanced = false;
        let mut watermark = self.watermark.load(Ordering::SeqCst);
        while self.slot(watermark).is_ready(watermark) {
            match self.watermark.compare_exchange(
                watermark,
                watermark + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    advanced = true;
                    watermark += 1;
                }
                Err(actual) => watermark = actual,
            }
        }
        if advanced {
            self.consumers.watermark_advanced(watermark);
            self.committed.notify_all();
            self.space.notify_all(); // the horizon may follow the watermark
            self.wakers.wake_all();
            self.nudge_flusher();
        }
    }

    /// Blocks until page `lsn` fits in the ring, advancing the horizon as far as cursors allow.
    fn wait_for_space(&self, lsn: u64) -> Result<()> {
        let fits = || lsn < self.advance_horizon() + self.slot_count;
        if fits() {
            return Ok(());
        }
        tracing::trace!(
            lsn,
            horizon = self.horizon.load(Ordering::Relaxed),
            "ring full, waiting"
        );
        let poisoned = || self.durability.is_poisoned();
        self.space
            .wait_while(|| !fits() && !self.is_closed() && !poisoned(), None);
        if let Some(error) = self.poisoned_error() {
            Err(error)
        } else if self.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Advances the horizon to the oldest page some cursor retains (or the watermark if none);
    /// returns the horizon.
    pub fn advance_horizon(&self) -> u64 {
        let _guard = lock(&self.horizon_lock);
        let old = self.horizon.load(Ordering::Acquire);
        let watermark = self.watermark.load(Ordering::SeqCst);
        let new = self.pins.min_released().unwrap_or(watermark).min(watermark);
        if new <= old {
            return old;
        }
        // Under `horizon_lock`, which serialises every call.
        if let Err(source) = self.ring.persist_released_lsn(new) {
            // The slots must not be reused before the file says they may: stay where we are.
            self.poison(old, new, source);
            return old;
        }
        for lsn in old..new {
            self.slot(lsn).reset();
            // SAFETY: page `lsn` is below every cursor's released position and below the
            // watermark, so no reader holds it; and no reservation reaches its slot before the
            // new horizon is published below.
            unsafe { self.ring.invalidate(lsn) };
        }
        self.horizon.store(new, Ordering::Release);
        new
    }
}

/// Whether a commit asks idle consumers to seal a page it opened (seal rule 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Announce {
    Yes,
    No,
}

/// Room in the log for one record, returned by [`Log::reserve`].
///
/// Write the record's bytes with [`write`](Self::write) (in as many pieces as you like), then
/// [`commit`](Self::commit). Dropping a reservation without committing it marks the record aborted:
/// its bytes stay in the log (the pages around it must stay contiguous) but readers skip it.
#[must_use = "a reservation must be written and committed, or the record is aborted"]
pub struct Reservation<'log> {
    shared: &'log Shared,
    span: Span,
    len: usize,
    written: usize,
    /// Where the next byte goes.
    cursor: Position,
    done: bool,
}

impl std::fmt::Debug for Reservation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("seq", &self.seq())
            .field("len", &self.len)
            .field("written", &self.written)
            .finish()
    }
}

impl Reservation<'_> {
    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        seq_of(self.span.start.lsn, self.span.start.offset as u16)
    }

    /// Bytes still to write.
    pub fn remaining(&self) -> usize {
        self.len - self.written
    }

    /// Appends `bytes` to the record.
    ///
    /// # Panics
    /// If `bytes` is longer than [`remaining`](Self::remaining): that is a bug in the caller.
    pub fn write(&mut self, bytes: &[u8]) {
        assert!(
            bytes.len() <= self.remaining(),
            "write of {} bytes into a reservation with {} left",
            bytes.len(),
            self.remaining()
        );
        self.cursor = self.shared.write_at(self.cursor, bytes);
        self.written += bytes.len();
    }

    /// Publishes the record. Returns where it lies; pass that to [`Log::wait_committed`] to wait
    /// until it is in the committed log, or to [`Log::wait_durable`] to wait until it is on disk.
    ///
    /// # Errors
    /// [`Error::IncompleteReservation`]; [`Error::Poisoned`] if a sync of the ring failed since
    /// the reservation (the record is then aborted).
    pub fn commit(self) -> Result<CommitPos> {
        self.publish_checked(Announce::Yes)
    }

    /// Publishes the record like [`commit`](Self::commit), but does not ask idle consumers to
    /// seal a page it opened (seal rule 2): the caller promises to wait on the position
    /// ([`Log::wait_committed`], [`Log::wait_in_ring`], [`Log::wait_durable`]), which asks if
    /// the page is still open then, or else to call [`Log::request_seal`].
    ///
    /// Under load this lets pages fill: a writer that keeps a window of commits in flight waits
    /// on its oldest, so a shipper is not woken to seal a page each new commit opens. See
    /// `seal.rs`, rule 2, for what it measured.
    ///
    /// # Errors
    /// As [`commit`](Self::commit).
    pub fn commit_unannounced(self) -> Result<CommitPos> {
        self.publish_checked(Announce::No)
    }

    fn publish_checked(mut self, announce: Announce) -> Result<CommitPos> {
        if let Some(error) = self.shared.poisoned_error() {
            self.abort();
            return Err(error);
        }
        if self.written != self.len {
            let error = Error::IncompleteReservation {
                seq: self.seq(),
                written: self.written,
                reserved: self.len,
            };
            self.abort();
            return Err(error);
        }
        Ok(self.publish(announce))
    }

    fn abort(&mut self) {
        let aborted = ((self.len as u32) | ABORTED_BIT).to_le_bytes();
        self.shared.write_at(self.span.start, &aborted);
        self.publish(Announce::Yes);
    }

    fn publish(&mut self, announce: Announce) -> CommitPos {
        self.done = true;
        self.shared.commit_span(self.span, announce)
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.done {
            tracing::warn!(
                seq = self.seq(),
                len = self.len,
                "reservation dropped uncommitted; record aborted"
            );
            self.abort();
        }
    }
}
