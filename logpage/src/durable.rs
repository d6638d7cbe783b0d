//! The durable watermark: which pages of the ring are on disk, and the flushes that move it.
//!
//! A finished page is written to its log segment before the committed watermark passes it
//! (`ring.rs`, Writes), so it is safe from a *process* crash at once (the page cache holds it),
//! but safe from a *power loss* only once a sync of its segment has completed after it was
//! written. [`Log::durable_lsn`] is the first page not known to be on disk: every page from the
//! ring's horizon up to it reached the disk in a sync that completed.
//!
//! # Flushes
//!
//! A flush reads the committed watermark `to` (every page below it is finished: header and crc
//! written), syncs the segments written since the last sync, and only when the sync has returned
//! success stores `to` as the
//! durable watermark. So the watermark advances only over what a completed sync covered, and
//! contiguously: it only ever takes the value of the committed watermark, and that is contiguous.
//! One flush runs at a time (the *flush claim*, a flag taken by compare-and-swap); a flush covers
//! every page that became ready while the previous one ran (group flush).
//!
//! Who flushes:
//!
//! - A thread in [`Log::wait_durable`] whose page is not yet on disk takes the claim if it is free
//!   and flushes itself (leader/follower group commit, as in PostgreSQL's WAL writer lock): no
//!   other thread has to be woken for a lone commit, and a wake-up across the two vCPUs here costs
//!   0.2–0.4 ms, more than the sync. If the claim is taken, it waits for that flush to end, and
//!   then either its page is covered or it leads the next flush.
//! - A [`Flusher`] ([`Log::spawn_flusher`]) is a thread that flushes whenever a page is ready
//!   that is not yet durable (at most once per pace, if one is set: below): pages become durable
//!   without anyone waiting, in parallel with shipping and apply, and async waiters
//!   ([`Log::poll_durable`]) are served by it.
//!   It is woken only for work no running flush will do: when a page finishes while nobody holds
//!   the claim, or when a leader releases the claim with finished pages (or a wanted open page)
//!   still not durable. A writer that leads its own flushes (`durable@16` in `bench replicate`:
//!   one page per sync) thus never wakes it; it used to be woken twice a page, to find the claim
//!   taken and then nothing left, and each wake-up could preempt the writer on its own vCPU.
//! - [`Log::flush_ready`] is one flush, for a caller with its own loop.
//!
//! # The flusher's pace
//!
//! Pages nobody waits to see durable (commits that wait for less than `Durable`, a replica's
//! pages, acknowledged on receipt) need not be synced one by one. With
//! [`LogOptions::flush_pace`](crate::LogOptions::flush_pace) set, the flusher starts a flush at
//! most once per pace (after the first): it waits out the rest of the window with `pacing` set,
//! and a page finishing meanwhile does not wake it. One sync then covers every page finished in
//! the window, where flushing each page as it came cost a sync (and a wake-up of the flusher)
//! a page. A durable waiter (`wanted_end` above the watermark), stop, close and poison end the
//! pace at once, and [`Log::wait_durable`] leads its own flush anyway: no `Durable` commit waits
//! for the pace. What it changes is how long a page nobody waited for may stay off the disk:
//! up to the pace plus a sync, for a power loss to take.
//!
//! # Sealing for durable waiters (seal rule 5)
//!
//! Only whole pages become durable, so a durable waiter's page must be sealed. A waiter
//! records the page it waits for (`wanted_end`), and whoever takes the flush claim first seals the
//! open page if some waiter wants it. While a flush runs nobody seals for durability: the open
//! page collects every commit made during the sync, and the next leader seals it and syncs it in
//! one go. So with N commits in flight one sync covers about N of them, and one page holds them
//! when they fit, where sealing at once (rule 3b) would give each its own page. A leader whose own
//! page was sealed but still has a writer copying into it waits for that page to be finished
//! (a copy, microseconds) before syncing.
//!
//! # The sync call, measured
//!
//! On this machine (ext4 on a virtual disk, Linux 6.18), one 4 KB page stored through the mapping,
//! then synced, p50 over 1,000 syncs, as ratios to `fdatasync` of the file (76–86 µs) in the same
//! run: `msync` of the page's range 1.01× and 1.01× (two runs of `benches/durable.rs`, group
//! `durable/flush-method`; 0.9–1.4× in four earlier runs of a probe), `sync_file_range` of the
//! range then `fdatasync` 0.93× and 1.03× (0.9–1.2×); in a third bench run, with the disk
//! throttling (below), 0.84× and 0.79×, each measured after the one before it. No call is
//! consistently faster beyond the noise: each
//! must flush the device cache, and the data is one page either way. `fdatasync` it is: one call,
//! no range arithmetic across the ring's wrap. (Since stop 35 the pages are in segments, one
//! `fdatasync` per segment written, and the head with the horizon is synced only before a
//! segment is retired: `segment.rs`.) (These were measured while the ring was written through a shared
//! mapping; pages now reach the file by `pwrite`, and an `RWF_DSYNC` write would flush the
//! device cache once per page where one `fdatasync` covers a group: not tried.) The same bench
//! times commits against the raw `fdatasync` floor: `wait_durable` at 1 in flight reached
//! 0.95–0.97× the floor's p50 (it syncs on the caller's thread; 1.08× in the throttled run).
//!
//! After a few minutes of back-to-back syncs the virtual disk here throttled every sync, of any
//! kind, to about 4 ms (a rate limit of the VM's disk, it seems); compare only ratios from one run.
//!
//! # A failed sync poisons the log
//!
//! When `fdatasync` fails, the kernel may already have dropped the failed pages' dirty state:
//! a retried sync can succeed without the data ever reaching the disk (PostgreSQL's "fsyncgate").
//! So the first failure is kept: [`Log::wait_durable`], [`Log::poll_durable`], [`Log::flush_ready`],
//! [`Log::flush`], and every later reservation and commit return [`Error::Poisoned`], naming the
//! segment and the pages the failed sync covered, and the durable watermark never moves again.
//! Reopening the log recovers what the disk holds. Tests inject failures through
//! `LogOptions::sync_hook`, compiled only for this crate's tests and with the feature
//! `fault-injection`: a production build has no hook and no branch for one.
//!
//! # Process crash and power loss
//!
//! After a **process crash** (SIGKILL, panic) the page cache holds every page written to the
//! segments, durable or not: recovery finds every finished page from the persisted horizon up
//! to the first gap (`ring.rs`, Recovery).
//!
//! After a **power loss**, pages below the durable watermark survive; pages at or above it may
//! survive, be garbled, be zeroed (blocks whose first write never reached the disk) or be torn (a
//! prefix new, the rest old), in any mix. Every page carries a crc32c over header and payload and
//! its LSN, so recovery stops at the first page that does not validate or holds another LSN than
//! its place; it never keeps a page beyond that gap (`tests/durable.rs` and
//! `tests/durable_crash.rs` damage pages above a durable watermark and reopen). The file's length
//! is fixed at creation and synced then, so a power loss cannot shorten it.
//!
//! The head's released LSN (the horizon) is written in place and synced only before a segment
//! is retired, so after a power loss it may be older than the last horizon written. Recovery
//! from it still finds every durable page: pages stay in their segments until the segment is
//! retired, and never more than a ring of them is unreleased (`ring.rs`, Recovery). (With the
//! circular file before stop 35 a stale header pointed at a slot that held a later page, and
//! recovery stopped short.) A store whose own synced state says where the log must continue
//! (LMDB's next binlog LSN) still passes it as [`LogOptions::recover_from`]: recovery starts
//! there, and pages below it, which the store has, are not recovered.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::error::{Error, Result};
use crate::log::{CommitPos, Log, Shared};
use crate::seal::{AsyncWakers, Notify};
use crate::sync::{lock, thread, Arc, AtomicBool, AtomicU64, Mutex, Ordering};

/// The durable watermark and the state of flushes. Part of the log's shared state.
///
/// Orderings: every field is accessed `SeqCst`. The lost-wake-up arguments are `Notify`'s
/// store-then-load pairs: a leader stores the watermark and releases the claim, then loads the
/// waiter count; a waiter registers, then loads the watermark and the claim.
pub(crate) struct Durability {
    /// First page not known to be on disk. Only the holder of the flush claim stores it, and only
    /// after a sync that covered every page below the new value returned success.
    pub lsn: CachePadded<AtomicU64>,
    /// One past the highest page a durable waiter has asked for (0: none yet); the flush leader
    /// seals the open page when it is below this (seal rule 5). Only grows.
    wanted_end: AtomicU64,
    /// The flush claim: set while one thread runs a flush.
    flushing: AtomicBool,
    /// Woken when a flush ends (the watermark moved, or the sync failed) and on close.
    pub notify: Notify,
    /// The [`Flusher`] sleeps here, alone, and is woken only for work no flush in progress will
    /// do: a page finished while nobody held the claim, or a claim released with finished pages
    /// (or a wanted open page) still not durable; and on close, stop and poison.
    pub flusher: Notify,
    /// Async tasks waiting for the durable watermark ([`Log::poll_durable`]).
    pub wakers: AsyncWakers,
    /// [`crate::LogOptions::flush_pace`]: zero, or how long the flusher lets pages gather
    /// between flushes nobody waits for.
    pace: Duration,
    /// Set while the flusher waits out its pace: a page finishing then does not wake it.
    pacing: AtomicBool,
    /// Set once a sync failed; `poison` then holds what failed.
    poisoned: AtomicBool,
    poison: Mutex<Option<Poison>>,
    /// Test stand-in for the sync; see [`crate::LogOptions::sync_hook`].
    #[cfg(any(test, feature = "fault-injection"))]
    hook: Option<crate::log::IoHook>,
    /// Test stand-in for a page's write; see [`crate::LogOptions::write_hook`].
    #[cfg(any(test, feature = "fault-injection"))]
    pub write_hook: Option<crate::log::IoHook>,
}

/// The failed sync, kept so that every later call can report it.
#[derive(Debug)]
struct Poison {
    lsn_from: u64,
    lsn_to: u64,
    /// `std::io::Error` is not `Clone`: keep what rebuilds it.
    os_error: Option<i32>,
    kind: std::io::ErrorKind,
    message: String,
}

impl Durability {
    pub fn new(lsn: u64, #[allow(unused)] options: &crate::log::LogOptions) -> Self {
        Self {
            lsn: CachePadded::new(AtomicU64::new(lsn)),
            wanted_end: AtomicU64::new(0),
            flushing: AtomicBool::new(false),
            notify: Notify::default(),
            flusher: Notify::default(),
            wakers: AsyncWakers::default(),
            pace: options.flush_pace,
            pacing: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            poison: Mutex::new(None),
            #[cfg(any(test, feature = "fault-injection"))]
            hook: options.sync_hook.clone(),
            #[cfg(any(test, feature = "fault-injection"))]
            write_hook: options.write_hook.clone(),
        }
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// Records that a waiter needs page `lsn` on disk (seal rule 5).
    fn want(&self, lsn: u64) {
        self.wanted_end.fetch_max(lsn + 1, Ordering::SeqCst);
    }

    fn try_claim(&self) -> bool {
        self.flushing
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    fn is_flushing(&self) -> bool {
        self.flushing.load(Ordering::SeqCst)
    }

    /// Whether a durable waiter wants a page that is not yet durable.
    fn waiter_wants(&self) -> bool {
        self.wanted_end.load(Ordering::SeqCst) > self.lsn.load(Ordering::SeqCst)
    }
}

impl Shared {
    /// Releases the flush claim and wakes everyone who waits on a flush's end, and the flusher
    /// if finished pages (or a wanted open page) are still not durable: they finished while this
    /// flush ran, and the flusher slept through them (see [`nudge_flusher`](Self::nudge_flusher)).
    fn release_flush_claim(&self) {
        let durability = &self.durability;
        durability.flushing.store(false, Ordering::SeqCst);
        durability.notify.notify_all();
        durability.wakers.wake_all();
        if self.flush_wanted() {
            durability.flusher.notify_all();
        }
    }

    /// Whether a flush has work: finished pages not yet durable, or an open page a durable
    /// waiter wants sealed.
    fn flush_wanted(&self) -> bool {
        self.watermark.load(Ordering::SeqCst) > self.durability.lsn.load(Ordering::SeqCst)
            || self.open_page_wanted()
    }

    /// Wakes the flusher for a page that finished, or an open page an async waiter wants, unless
    /// a flush is running: its leader looks again when it releases the claim. A leader that
    /// syncs on its waiter's thread (`wait_durable`) thus costs no wake-up of the flusher at all.
    ///
    /// No page is slept through: the caller stores its change (the watermark, `wanted_end`), then
    /// loads the claim; the leader stores the claim's release, then loads the watermark and
    /// `wanted_end`; the flusher registers, then loads all three. All `SeqCst`, so of any two of
    /// them, one sees the other's store.
    ///
    /// A pacing flusher (`LogOptions::flush_pace`) is woken only for a durable waiter:
    /// the waiter stores `wanted_end` before it nudges, and the flusher stores `pacing`, then
    /// registers, then loads `wanted_end`.
    pub(crate) fn nudge_flusher(&self) {
        let durability = &self.durability;
        if !durability.is_flushing()
            && (!durability.pacing.load(Ordering::SeqCst) || durability.waiter_wants())
        {
            durability.flusher.notify_all();
        }
    }

    /// [`Error::Poisoned`] for the kept failure, if a sync failed.
    pub(crate) fn poisoned_error(&self) -> Option<Error> {
        if !self.durability.is_poisoned() {
            return None;
        }
        let poison = lock(&self.durability.poison);
        let poison = poison.as_ref()?;
        let source = match poison.os_error {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(poison.kind, poison.message.clone()),
        };
        Some(Error::Poisoned {
            path: self.ring.path_of(poison.lsn_from),
            lsn_from: poison.lsn_from,
            lsn_to: poison.lsn_to,
            source,
        })
    }

    /// `Err` if the log is poisoned or closed: the two ends of every durable wait.
    fn check_usable(&self) -> Result<()> {
        if let Some(error) = self.poisoned_error() {
            return Err(error);
        }
        if self.is_closed() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Whether the open page holds bytes some durable waiter asked for (seal rule 5).
    fn open_page_wanted(&self) -> bool {
        let at = self.anchor.load();
        at.offset > 0 && at.lsn < self.durability.wanted_end.load(Ordering::SeqCst)
    }

    /// One flush, by the holder of the claim: seal for durable waiters; with `until`, wait (up to
    /// `deadline`) for that page to be finished; then sync every finished page. `Ok(false)` if
    /// the deadline passed first.
    fn lead_flush(&self, until: Option<u64>, deadline: Option<Instant>) -> Result<bool> {
        if self.open_page_wanted() {
            self.seal_open_page(None);
        }
        if let Some(lsn) = until {
            let finished = self.committed.wait_while(
                || self.watermark.load(Ordering::SeqCst) <= lsn && !self.is_closed(),
                deadline,
            );
            if !finished {
                return Ok(false);
            }
        }
        self.sync_finished(false).map(|_| true)
    }

    /// Syncs the ring and moves the durable watermark to the committed watermark read before the
    /// sync. Called with the claim held; on a closed log only if `closed_too`. Returns the
    /// durable watermark.
    fn sync_finished(&self, closed_too: bool) -> Result<u64> {
        if let Some(error) = self.poisoned_error() {
            return Err(error);
        }
        if self.is_closed() && !closed_too {
            return Err(Error::Closed);
        }
        let durability = &self.durability;
        let from = durability.lsn.load(Ordering::SeqCst);
        let to = self.watermark.load(Ordering::SeqCst);
        if to <= from {
            return Ok(from);
        }
        match self.sync_ring(from, to) {
            // A page that failed its write to the file poisoned the log before it was marked
            // ready, so before `to` was read: looking again here keeps it from counting durable.
            Ok(()) if durability.is_poisoned() => {
                Err(self.poisoned_error().unwrap_or(Error::Closed))
            }
            Ok(()) => {
                durability.lsn.store(to, Ordering::SeqCst);
                tracing::trace!(from, to, "ring pages durable");
                Ok(to)
            }
            Err(source) => {
                self.poison(from, to, source);
                Err(self.poisoned_error().unwrap_or(Error::Closed))
            }
        }
    }

    fn sync_ring(&self, from: u64, to: u64) -> std::io::Result<()> {
        #[cfg(any(test, feature = "fault-injection"))]
        if let Some(hook) = &self.durability.hook {
            (hook.0)(from, to)?;
        }
        let _ = (from, to);
        self.ring.sync()
    }

    /// Keeps the first failure for good and wakes everyone who could be waiting on durability.
    pub(crate) fn poison(&self, lsn_from: u64, lsn_to: u64, source: std::io::Error) {
        let path = self.ring.path_of(lsn_from);
        tracing::error!(
            path = %path.display(),
            lsn_from,
            lsn_to,
            error = %source,
            "ring write or sync failed; the log is poisoned until it is reopened"
        );
        let mut poison = lock(&self.durability.poison);
        if poison.is_none() {
            *poison = Some(Poison {
                lsn_from,
                lsn_to,
                os_error: source.raw_os_error(),
                kind: source.kind(),
                message: source.to_string(),
            });
        }
        drop(poison);
        self.durability.poisoned.store(true, Ordering::SeqCst);
        // Waiters on the committed watermark, reservers waiting for ring space, the flusher.
        self.committed.notify_all();
        self.space.notify_all();
        self.wakers.wake_all();
        self.durability.flusher.notify_all();
    }
}

impl Log {
    /// The durable watermark: every page from the ring's horizon up to (not including) this one is
    /// on disk, put there by a sync that completed. It starts at the recovered start (a reopened
    /// ring's pages are not known to be on disk until the first flush covers them) and moves only
    /// by flushes: [`wait_durable`](Self::wait_durable), a [`Flusher`], or
    /// [`flush_ready`](Self::flush_ready).
    ///
    /// For a log in memory ([`Log::in_memory`]) a flush has nothing to sync and the watermark
    /// follows what was flushed; the waits behave the same.
    pub fn durable_lsn(&self) -> u64 {
        self.shared.durability.lsn.load(Ordering::SeqCst)
    }

    /// One flush: waits for a flush in progress to end, seals the open page if a durable waiter
    /// wants it, then syncs the log's segments and moves the durable watermark over every page that was
    /// finished before the sync. Returns the durable watermark.
    ///
    /// For a thread with its own flush loop; most callers want a [`Flusher`]
    /// ([`spawn_flusher`](Self::spawn_flusher)) or just [`wait_durable`](Self::wait_durable).
    ///
    /// # Errors
    /// [`Error::Poisoned`] if this sync or an earlier one failed; [`Error::Closed`].
    pub fn flush_ready(&self) -> Result<u64> {
        let shared = &*self.shared;
        let durability = &shared.durability;
        while !durability.try_claim() {
            shared.check_usable()?;
            durability.notify.wait_while(
                || durability.is_flushing() && !durability.is_poisoned() && !shared.is_closed(),
                None,
            );
        }
        let result = shared
            .lead_flush(None, None)
            .map(|_| durability.lsn.load(Ordering::SeqCst));
        shared.release_flush_claim();
        result
    }

    /// Makes every page below `lsn` durable, with one flush of this thread's if the durable
    /// watermark is not there yet (a flush in progress is waited for first, and may be enough).
    /// The pages must be finished: a consumer read them. Unlike the other waits it works after
    /// [`close`](Self::close) as well, for an applier that must have the pages it applies on
    /// disk before it records them applied, up to its last group (core's `apply.rs`).
    ///
    /// # Errors
    /// [`Error::Poisoned`] if a sync failed (this one or an earlier one);
    /// [`Error::Gap`] if a page below `lsn` is not finished (the durable watermark stopped at
    /// `expected`).
    pub fn make_durable_below(&self, lsn: u64) -> Result<()> {
        let shared = &*self.shared;
        let durability = &shared.durability;
        loop {
            if durability.lsn.load(Ordering::SeqCst) >= lsn {
                return Ok(());
            }
            if let Some(error) = shared.poisoned_error() {
                return Err(error);
            }
            if durability.try_claim() {
                let result = shared.sync_finished(true);
                shared.release_flush_claim();
                let durable = result?;
                if durable < lsn {
                    return Err(Error::Gap {
                        expected: durable,
                        found: lsn,
                    });
                }
                return Ok(());
            }
            durability.notify.wait_while(
                || durability.is_flushing() && !durability.is_poisoned(),
                None,
            );
        }
    }

    /// Makes every finished page durable now: [`flush_ready`](Self::flush_ready), for callers
    /// that only need to know it worked.
    pub fn flush(&self) -> Result<()> {
        self.flush_ready().map(drop)
    }

    /// Blocks until the record at `pos` is on disk (the durable watermark passes its last page).
    /// Returns `Ok(false)` if `deadline` passed first.
    ///
    /// If no flush is running, the caller seals its page and flushes itself (one sync, on this
    /// thread: no wake-up of another); if one is running, it waits for it to end, and then its page
    /// is either covered or it leads the next flush, which covers every commit made meanwhile
    /// (group flush; see the module docs, seal rule 5). Works with or without a [`Flusher`].
    /// As with [`wait_committed`](Self::wait_committed), do not wait while this thread holds an
    /// uncommitted [`Reservation`](crate::Reservation): its page would never be finished.
    ///
    /// ```
    /// use pagemesh_logpage::{Log, LogOptions};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let log = Log::open(dir.path(), LogOptions::new().slots(64))?;
    /// let _flusher = log.spawn_flusher()?; // optional: pages become durable unasked too
    ///
    /// let pos = log.append(b"on disk before this returns")?;
    /// assert!(log.wait_durable(pos, None)?);
    /// assert!(log.durable_lsn() > pos.lsn_last);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Poisoned`] if a sync failed (this one or an earlier one: the record may not be on
    /// disk, and never will be through this log); [`Error::Closed`].
    pub fn wait_durable(&self, pos: CommitPos, deadline: Option<Instant>) -> Result<bool> {
        let shared = &*self.shared;
        let durability = &shared.durability;
        let lsn = pos.lsn_last;
        let durable = || durability.lsn.load(Ordering::SeqCst) > lsn;
        if durable() {
            return Ok(true);
        }
        durability.want(lsn);
        shared.ring.zero_new_segments();
        loop {
            if durable() {
                return Ok(true);
            }
            shared.check_usable()?;
            if durability.try_claim() {
                let led = shared.lead_flush(Some(lsn), deadline);
                shared.release_flush_claim();
                if !led? {
                    return Ok(durable());
                }
            } else {
                let ended = durability.notify.wait_while(
                    || {
                        !durable()
                            && durability.is_flushing()
                            && !durability.is_poisoned()
                            && !shared.is_closed()
                    },
                    deadline,
                );
                if !ended {
                    return Ok(durable());
                }
            }
        }
    }

    /// [`wait_durable`](Self::wait_durable) for an event loop: `Ready(Ok(()))` once the record at
    /// `pos` is on disk; `Pending`, with `cx`'s waker registered, until then. It never syncs on
    /// the caller's task: a [`Flusher`] (or another thread flushing) must be running. It asks that
    /// flusher to seal the record's page (seal rule 5), and registers before re-checking, so an
    /// advance between the two cannot be missed.
    ///
    /// # Errors
    /// As [`wait_durable`](Self::wait_durable).
    pub fn poll_durable(&self, cx: &mut Context<'_>, pos: CommitPos) -> Poll<Result<()>> {
        let shared = &*self.shared;
        let durability = &shared.durability;
        let lsn = pos.lsn_last;
        let durable = || durability.lsn.load(Ordering::SeqCst) > lsn;
        if durable() {
            return Poll::Ready(Ok(()));
        }
        durability.want(lsn);
        shared.ring.zero_new_segments();
        durability.wakers.register(cx.waker());
        // The flusher must seal this page, or end its pace for it.
        if shared.anchor.load().lsn <= lsn || durability.pacing.load(Ordering::SeqCst) {
            shared.nudge_flusher();
        }
        if durable() {
            return Poll::Ready(Ok(()));
        }
        match shared.check_usable() {
            Ok(()) => Poll::Pending,
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    /// Starts a [`Flusher`]: a thread that flushes whenever a finished page is not yet durable
    /// (at most once per [`flush_pace`](crate::LogOptions::flush_pace) while no durable waiter
    /// wants one), and seals the open page when an async durable waiter wants it. Run one per
    /// log.
    ///
    /// # Errors
    /// [`Error::Io`] if the thread cannot be started.
    pub fn spawn_flusher(&self) -> Result<Flusher> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, stop) = (self.clone(), Arc::clone(&stop));
            thread::Builder::new()
                .name("pagemesh-flusher".into())
                .spawn(move || log.run_flusher(&stop))
                .map_err(|source| Error::Io {
                    op: "start the flusher thread for",
                    path: self.shared.ring.path_or_anonymous(),
                    source,
                })?
        };
        Ok(Flusher {
            log: self.clone(),
            stop,
            thread: Some(thread),
        })
    }

    /// The flusher's loop: sleep until there is something to flush or to seal, flush, repeat.
    fn run_flusher(&self, stop: &AtomicBool) -> Result<()> {
        let shared = &*self.shared;
        let durability = &shared.durability;
        // Idle while a flush runs, too: its leader wakes the flusher on release if work is left.
        let idle = || {
            !stop.load(Ordering::SeqCst)
                && !shared.is_closed()
                && !durability.is_poisoned()
                && (durability.is_flushing() || !shared.flush_wanted())
        };
        // While nobody waits, let pages gather for the pace between flushes; a durable waiter,
        // stop, close and poison end it.
        let unhurried = || {
            !stop.load(Ordering::SeqCst)
                && !shared.is_closed()
                && !durability.is_poisoned()
                && !durability.waiter_wants()
        };
        let mut last_flush: Option<Instant> = None;
        loop {
            durability.flusher.wait_while(idle, None);
            let pace_due = last_flush
                .filter(|_| !durability.pace.is_zero())
                .map(|last| last + durability.pace)
                .filter(|&due| Instant::now() < due);
            if pace_due.is_some() {
                durability.pacing.store(true, Ordering::SeqCst);
                durability.flusher.wait_while(unhurried, pace_due);
                durability.pacing.store(false, Ordering::SeqCst);
            }
            if shared.is_closed() && !durability.is_poisoned() {
                return Ok(());
            }
            last_flush = Some(Instant::now());
            let mut flushed = self.flush_ready();
            // Read once: a stop that lands after this read is seen by the next round's wait.
            let stopping = stop.load(Ordering::SeqCst);
            if flushed.is_ok() && stopping && shared.flush_wanted() {
                // Stopped while that flush ran: pages finished since it read its end still
                // get their last flush.
                flushed = self.flush_ready();
            }
            if let Err(error) = &flushed {
                tracing::warn!(%error, "flusher stops");
            }
            if flushed.is_err() || stopping {
                return flushed.map(drop);
            }
            // Off every commit's path: a writer that crosses into the next segment finds it
            // installed. A failure here is the writer's to meet (its install poisons the log).
            let written = shared.watermark.load(Ordering::SeqCst);
            if let Err(error) = shared.ring.install_ahead(written) {
                tracing::warn!(%error, lsn = written, "could not install the next log segment ahead");
            }
        }
    }
}

/// A thread that makes the ring's finished pages durable as they come, or once per
/// [`flush_pace`](crate::LogOptions::flush_pace) while nobody waits (see the module docs); from
/// [`Log::spawn_flusher`].
///
/// Dropping it stops the thread after one last flush, as [`stop`](Self::stop) does, and logs an
/// error that stopped it; closing the log stops it too.
#[must_use = "dropping the Flusher stops it"]
pub struct Flusher {
    log: Log,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<()>>>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("durable_lsn", &self.log.durable_lsn())
            .field("running", &self.thread.is_some())
            .finish()
    }
}

impl Flusher {
    /// Stops the thread after a last flush of what is finished, and waits for it.
    ///
    /// # Errors
    /// The error that stopped the thread, if any: [`Error::Poisoned`] after a failed sync.
    pub fn stop(mut self) -> Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.store(true, Ordering::SeqCst);
        self.log.shared.durability.flusher.notify_all();
        match thread.join() {
            Ok(result) => result,
            Err(panic) if !std::thread::panicking() => std::panic::resume_unwind(panic),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        if let Err(error) = self.stop_and_join() {
            tracing::error!(%error, "the flusher stopped on an error");
        }
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use super::*;
    use crate::LogOptions;

    /// New segments are only allocated until a commit waits for a sync (`segment.rs`,
    /// Installing a segment): a flusher's syncs or `make_durable_below` do not count, a wait
    /// does, for good.
    #[test]
    fn segments_are_zeroed_once_a_commit_waits_for_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let log = crate::Log::open(dir.path(), LogOptions::new().slots(16)).unwrap();
        let zeroes = || log.shared.ring.zeroes_new_segments();
        let _flusher = log.spawn_flusher().unwrap();
        let pos = log.append(b"unwaited").unwrap();
        log.seal();
        log.make_durable_below(pos.lsn_last + 1).unwrap();
        log.flush().unwrap();
        assert!(!zeroes(), "nobody waited");
        let pos = log.append(b"waited").unwrap();
        assert!(log.wait_durable(pos, None).unwrap());
        assert!(zeroes(), "a commit waited");
    }

    /// Counts syncs; fails the one numbered `fail_at` (0-based) and every later one.
    fn counting_hook(fail_at: usize) -> (Arc<AtomicUsize>, LogOptions) {
        let syncs = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&syncs);
        let options = LogOptions::new().slots(16).sync_hook(move |_, _| {
            if counter.fetch_add(1, Ordering::SeqCst) >= fail_at {
                Err(std::io::Error::from_raw_os_error(libc::EIO))
            } else {
                Ok(())
            }
        });
        (syncs, options)
    }

    #[test]
    fn wait_durable_puts_the_record_on_disk_and_only_finished_pages_count() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), LogOptions::new().slots(16)).unwrap();
        assert_eq!(log.durable_lsn(), 0);
        let pos = log.append(b"durable").unwrap();
        assert!(log.wait_durable(pos, None).unwrap());
        assert!(log.durable_lsn() > pos.lsn_last);
        assert!(log.durable_lsn() <= log.committed_lsn());
        let open = log.append(b"in the open page").unwrap();
        assert_eq!(
            log.flush_ready().unwrap(),
            pos.lsn_last + 1,
            "an open page is not synced"
        );
        assert!(log.durable_lsn() <= open.lsn_last);
    }

    /// A finished page whose write to its segment fails poisons the log: no wait reports a
    /// record of it kept, no sync counts it durable, every later append fails, and a reopen
    /// finds the log ending where the file's pages end, everything before intact.
    #[test]
    fn a_failed_page_write_poisons_the_log_and_nothing_counts_it_kept() {
        const FAILING: u64 = 2;
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions::new().slots(16).write_hook(|lsn, _| {
            if lsn == FAILING {
                Err(std::io::Error::from_raw_os_error(libc::EIO))
            } else {
                Ok(())
            }
        });
        let log = Log::open(dir.path(), options).unwrap();
        let mut kept = Vec::new();
        let failed = loop {
            let record = [kept.len() as u8; 1000];
            let pos = log.append(&record).unwrap();
            match log.wait_committed(pos, None) {
                Ok(true) => kept.push((pos, record)),
                Err(error) => break (pos, error),
                Ok(false) => unreachable!("no deadline"),
            }
        };
        let (pos, error) = failed;
        assert_eq!(
            pos.lsn_last, FAILING,
            "the first wait to fail is on the page"
        );
        assert!(
            matches!(&error, Error::Poisoned { lsn_from: FAILING, lsn_to, source, .. }
                if *lsn_to == FAILING + 1 && source.raw_os_error() == Some(libc::EIO)),
            "{error}"
        );
        assert!(kept.iter().all(|(pos, _)| pos.lsn_last < FAILING));
        assert!(matches!(log.append(b"later"), Err(Error::Poisoned { .. })));
        assert!(
            log.flush_ready().is_err(),
            "no sync counts the page durable"
        );
        assert!(log.durable_lsn() <= FAILING);
        drop(log);

        let log = Log::open(dir.path(), LogOptions::new().slots(16)).unwrap();
        assert_eq!(
            log.recovered().end_lsn,
            FAILING,
            "the file ends before the page"
        );
        let mut cursor = log.cursor(0).unwrap();
        let mut records = Vec::new();
        let mut reader = crate::RecordReader::new();
        while let Some(page) = cursor.next_ready().unwrap() {
            reader
                .feed(page, |record| records.push(record.bytes.to_vec()))
                .unwrap();
        }
        let expected: Vec<Vec<u8>> = kept.iter().map(|(_, record)| record.to_vec()).collect();
        assert_eq!(
            records, expected,
            "every record reported kept, and no other"
        );
    }

    #[test]
    fn one_sync_covers_every_commit_made_before_it() {
        let (syncs, options) = counting_hook(usize::MAX);
        let log = Log::in_memory(options).unwrap();
        let positions: Vec<_> = (0..16u8).map(|i| log.append(&[i; 300]).unwrap()).collect();
        let last = *positions.last().unwrap();
        assert!(last.lsn_last > 0, "the records span pages");
        assert!(log.wait_durable(last, None).unwrap());
        for pos in positions {
            assert!(log.wait_durable(pos, None).unwrap());
        }
        assert_eq!(syncs.load(Ordering::SeqCst), 1, "one group flush");
    }

    #[test]
    fn a_failed_sync_poisons_the_log_until_it_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let (syncs, options) = counting_hook(1);
        let log = Log::open(dir.path(), options).unwrap();
        let first = log.append(b"first").unwrap();
        assert!(log.wait_durable(first, None).unwrap());
        let durable = log.durable_lsn();
        let second = log.append(b"second").unwrap();
        log.seal();
        // Reserved before the failure, committed after it (in a page of its own: a waiter on a
        // page this thread still has a reservation in would wait for itself).
        let pending = log.reserve(8).unwrap();
        let is_poisoned = |error: &Error| {
            matches!(error, Error::Poisoned { path, lsn_from, lsn_to, source }
                if path == &dir.path().join("log-0000000000000000.seg")
                    && *lsn_from == durable
                    && *lsn_to > second.lsn_last
                    && source.raw_os_error() == Some(libc::EIO))
        };
        let error = log.wait_durable(second, None).unwrap_err();
        assert!(is_poisoned(&error), "{error}");
        assert!(
            error.to_string().contains("log-0000000000000000.seg"),
            "{error}"
        );
        assert_eq!(log.durable_lsn(), durable, "a failed sync moves nothing");
        assert!(is_poisoned(&log.wait_durable(second, None).unwrap_err()));
        assert!(is_poisoned(&log.append(b"third").unwrap_err()));
        assert!(is_poisoned(&log.reserve(3).unwrap_err()));
        assert!(is_poisoned(&pending.commit().unwrap_err()));
        assert!(is_poisoned(&log.flush_ready().unwrap_err()));
        assert!(is_poisoned(&log.flush().unwrap_err()));
        assert_eq!(syncs.load(Ordering::SeqCst), 2, "never retried");
        drop(log);
        let log = Log::open(dir.path(), LogOptions::new().slots(16)).unwrap();
        assert!(log.recovered().end_lsn > first.lsn_last);
        let pos = log.append(b"after the reopen").unwrap();
        assert!(log.wait_durable(pos, None).unwrap());
    }

    /// Waits (at most 10 s, then fails) until the flusher, unasked, made pages up to `lsn_end`
    /// durable.
    fn flushed_unasked(log: &Log, lsn_end: u64) {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while log.durable_lsn() < lsn_end {
            assert!(Instant::now() < deadline, "the flusher never synced");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn a_flusher_makes_pages_durable_unasked_and_stops_on_a_failed_sync() {
        let (_, options) = counting_hook(1);
        let log = Log::in_memory(options).unwrap();
        let flusher = log.spawn_flusher().unwrap();
        let pos = log.append(b"x").unwrap();
        log.seal();
        flushed_unasked(&log, pos.lsn_last + 1);
        log.append(b"y").unwrap();
        log.seal();
        let error = flusher.stop().unwrap_err();
        assert!(matches!(error, Error::Poisoned { .. }), "{error}");
    }

    #[test]
    fn a_flusher_stops_on_close_and_waiters_see_the_close() {
        let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
        let flusher = log.spawn_flusher().unwrap();
        log.close();
        flusher.stop().unwrap();
        let pos = CommitPos {
            seq: 0,
            lsn_last: 0,
        };
        assert!(matches!(log.wait_durable(pos, None), Err(Error::Closed)));
    }

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    #[test]
    fn poll_durable_is_woken_by_the_flusher() {
        let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
        let _flusher = log.spawn_flusher().unwrap();
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        for i in 0..20u8 {
            let pos = log.append(&[i; 100]).unwrap();
            let mut polls = 0;
            while log.poll_durable(&mut cx, pos).is_pending() {
                polls += 1;
                assert!(polls < 10_000, "poll_durable never became ready");
                std::thread::park_timeout(std::time::Duration::from_secs(1));
            }
            assert!(log.durable_lsn() > pos.lsn_last);
        }
    }

    /// A writer's log paces too: pages sealed with nobody waiting gather for the pace, while a
    /// commit that waits to be durable leads its own flush at once.
    #[test]
    fn a_writers_flusher_paces_but_a_durable_wait_never_waits_for_it() {
        let (syncs, options) = counting_hook(usize::MAX);
        let options = options.flush_pace(std::time::Duration::from_secs(3600));
        let log = Log::in_memory(options).unwrap();
        let flusher = log.spawn_flusher().unwrap();
        log.append(b"first").unwrap();
        log.seal();
        flushed_unasked(&log, 1);
        for record in [&b"second"[..], b"third"] {
            log.append(record).unwrap();
            log.seal();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(log.durable_lsn(), 1, "a page synced within the pace");
        assert_eq!(syncs.load(Ordering::SeqCst), 1);
        let pos = log.append(b"durable").unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        assert!(
            log.wait_durable(pos, Some(deadline)).unwrap(),
            "held up by the pace"
        );
        assert!(log.durable_lsn() > pos.lsn_last);
        assert_eq!(
            syncs.load(Ordering::SeqCst),
            2,
            "one sync covered the paced pages too"
        );
        flusher.stop().unwrap();
    }

    /// Five whole pages of an origin's log, as a follower ingests them.
    fn origin_pages() -> Vec<u8> {
        let origin = Log::in_memory(LogOptions::new().slots(16)).unwrap();
        let mut cursor = origin.cursor(0).unwrap();
        for i in 0..5u8 {
            origin.append(&[i; 100]).unwrap();
            origin.seal();
        }
        let mut pages = Vec::new();
        while let Some(run) = cursor.next_run(16).unwrap() {
            pages.extend_from_slice(run.bytes);
        }
        assert_eq!(pages.len(), 5 * crate::PAGE_SIZE);
        pages
    }

    #[test]
    fn a_follower_flusher_paces_its_syncs_until_a_waiter_wants_a_page() {
        let (syncs, options) = counting_hook(usize::MAX);
        let options = options
            .follower(true)
            .flush_pace(std::time::Duration::from_secs(3600));
        let log = Log::in_memory(options).unwrap();
        let flusher = log.spawn_flusher().unwrap();
        let pages = origin_pages();
        let page = crate::PAGE_SIZE;
        // The first page is synced at once: no flush has started a pace yet.
        log.ingest(&pages[..page]).unwrap();
        flushed_unasked(&log, 1);
        // The next ones wait out the pace: an hour, unless someone waits for them.
        log.ingest(&pages[page..4 * page]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(log.durable_lsn(), 1, "a page synced within the pace");
        assert_eq!(syncs.load(Ordering::SeqCst), 1);
        // An async waiter (which never syncs itself) ends the pace.
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let pos = CommitPos {
            seq: 0,
            lsn_last: 2,
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while log.poll_durable(&mut cx, pos).is_pending() {
            assert!(
                Instant::now() < deadline,
                "the pacing flusher slept through a waiter"
            );
            std::thread::park_timeout(std::time::Duration::from_millis(10));
        }
        assert_eq!(log.durable_lsn(), 4, "one sync covered the paced pages");
        assert_eq!(syncs.load(Ordering::SeqCst), 2);
        // Stopping ends the pace with a last flush.
        log.ingest(&pages[4 * page..]).unwrap();
        flusher.stop().unwrap();
        assert_eq!(log.durable_lsn(), 5);
        assert_eq!(syncs.load(Ordering::SeqCst), 3);
    }
}
