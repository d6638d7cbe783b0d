//! Commit accounting, sealing and group commit.
//!
//! # When a page is ready
//!
//! Each ring slot has one 64-bit accounting word:
//!
//! ```text
//! bits  0..16  committed   payload bytes whose writers have committed
//! bits 16..32  sealed_len  the page's final payload length, once sealed
//! bit  32      sealed      the anchor has moved past the page
//! bits 40..56  starts      records that start in the page (each committed)
//! ```
//!
//! A writer commits with one `fetch_add(bytes | starts)` per page it touched; the thread whose CAS
//! moved the anchor past a page adds `sealed | sealed_len << 16` once. All adds are `AcqRel`, so
//! whoever's add completes the page (sealed, and committed == sealed_len) has seen every other
//! writer's payload bytes: exactly one thread observes that transition, and it *finishes* the page
//! (writes header and crc, marks it ready, advances the committed-LSN watermark). The order in
//! which commits and the seal arrive does not matter.
//!
//! # When a page is sealed (group commit)
//!
//! Full pages seal themselves: the reservation that fills a page moves the anchor past it. A
//! partial page is sealed by whoever needs it shipped, under these rules:
//!
//! 1. A consumer (a [`crate::Cursor`] in `wait_ready`) that finds no ready page seals the open
//!    page if it holds anything: the consumer is idle, so shipping now costs no batching. An async
//!    consumer (`poll_ready`, a network shipper) does so only if a writer asked for a seal (rule 2)
//!    since it last sealed: a page nobody asked for waits to fill.
//! 2. A writer *asks* for a seal: it counts a seal request and wakes idle consumers, so rule 1
//!    applies to its page at once and it is never stuck waiting for the page to fill. A plain
//!    commit ([`crate::Reservation::commit`], [`crate::Log::append`]) that opened a page (the
//!    first into an empty page, or a record that ran on into a new one) asks. An *unannounced* one ([`crate::Reservation::commit_unannounced`], which
//!    core uses for every commit) leaves asking to its writer's wait: `wait_committed` and
//!    `wait_in_ring` ask when they leave the sealing to a consumer (rules 3 and 3b) and the page
//!    is still open, [`crate::Log::hurry`] (core's `Applied` waiters) asks when no consumer
//!    paces, and a writer that will not wait calls [`crate::Log::request_seal`] (core's dropped
//!    or polled commit tickets). Shuttle model 10 and `a_hurry_is_a_seal_request_for_unannounced_
//!    commits` fail if any of these does not ask: the first version forgot the hurry, and an
//!    `Applied` commit waited for the applier's 10 ms idle timeout (`bench commit`: 84 commits/s
//!    at one in flight).
//!
//!    *Why unannounced.* A writer with a window of commits in flight waits on its oldest, whose
//!    page is long sealed. Asking at each new page woke the idle shipper once a page, which
//!    sealed what had joined by then: `bench replicate` `sync` (one replica, `Replicated(1)`)
//!    made pages of 6.8 records at 16 in flight and 9.2 at 256, against 11.5 and 13.1 for
//!    `async`, and switched threads 5x as often as `async` (`perf record -e
//!    sched:sched_switch`, 3 s at 256: 137k against 19k, 54% of them the network threads).
//!    Asking at the wait, pages fill (16.0 and 16.8 records, both variants) and `sync/async`
//!    went from 0.47 to 0.61–0.66 at 16 in flight and from 0.60 to 0.68–0.74 at 256 (two runs
//!    each, `--rounds 5 --seconds 0.5`), against Little estimates of 0.68–0.72 and 0.97.
//! 3. [`crate::Log::wait_committed`] seals the open page itself only when no consumer is
//!    *engaged* (busy with pages it got, or waiting for more). Otherwise it asks (rule 2) and the
//!    consumer seals: a busy one when it turns idle (rule 1), by which time every commit made while
//!    it worked has joined the page; a waiting one when the request wakes it, and the commits made
//!    during its wake-up join the page too. Under load, then, pages fill up by themselves, and each group is what was
//!    committed while the previous one was being consumed.
//!
//!    *Rule 3b*: [`crate::Log::wait_in_ring`], for a waiter that needs its record in the ring and
//!    nothing more, leaves sealing only to a *waiting* consumer, which seals within a wake-up. A
//!    busy one can be busy for an fsync; this waiter seals its page itself rather than wait that
//!    long. Pages then hold what was committed between two such waiters: 16 records with 16
//!    commits in flight from one thread, but only one or two when many threads each wait on a
//!    lone commit while every consumer is busy (the measurement below). That is the price of not
//!    waiting for an fsync; a waiting consumer, such as an idle network shipper, still batches.
//! 4. A consumer that disengages (a `wait_ready` that times out or sees the log closed, a busy
//!    cursor dropped) seals the open page on its way out, so a waiter that counted on it by rule 3
//!    is never left behind. A consumer going from waiting to busy counts itself busy *before* it
//!    stops counting as waiting, and the reverse, so an engaged consumer never reads as neither.
//! 5. Rule 5, sealing for durable waiters, is in `durable.rs`.
//! 6. A *pacing* consumer (`Cursor::wait_backlog`: an applier letting a backlog build) steps back
//!    from sealing duty while it waits: it stops counting as busy (sealing the open page on its way
//!    out, as rule 4 says) and does not count as waiting, so waiters seal their own pages as if no
//!    consumer were there. It is busy again once it returns with pages to read.
//! 7. A *pacing shipper* (`Cursor::poll_paced`: a network shipper letting a batch build) keeps
//!    the seal duties of an async consumer (rules 1, 2 and 4: it counts as waiting and seals when
//!    asked), so sealing is as without pacing; what it delays is only *shipping* ready pages
//!    nobody asked for, until a batch of them is ready or its caller's timer fires. A writer that
//!    needs its page shipped asks ([`crate::Log::request_ship`]: core's `Replicated` waiters when
//!    they block, `DurableReplicated` ones before their flush), and a seal request it answers
//!    counts as a request to ship everything it sealed. Shuttle model 11 fails if a request is
//!    lost; its first run found a spin (the re-check counted a request that moved it to the
//!    per-advance wake-up as a reason to look again, forever).
//!
//!    *Why.* With a window of commits in flight waiting on replicas, the acks pace the writer and
//!    the writer paces the pages: shipped as each sealed, every page cost a wake-up on each of
//!    the four threads involved (`bench replicate` `sync` at 256 in flight: about one thread
//!    switch per page on each network thread and one per three pages on the writer, against
//!    one per 20 pages unpaced under `async`). Shipped 8 at a time, `sync@256` rose from
//!    229–260k to 321–343k commits/s in the same minutes (two runs each, pacing off and on).
//!
//! A consumer that `wait_ready` made busy must come back to `wait_ready` (or drop its cursor):
//! while it is busy, waiters leave sealing to it.
//!
//! Measured: letting waiters seal whenever no consumer was *busy* (ignoring waiting ones) gave
//! 1.6 records per page with 8 waiting writers and a slow consumer; rule 3 as written gives 7–8.
//!
//! # Orderings
//!
//! Every lost-wake-up argument here is a store-then-load pair on each side ("I publish X, then
//! look at Y" against "I publish Y, then look at X"), which is only sound if all four accesses are
//! in the single `SeqCst` total order; Release/Acquire allows both loads to miss (store buffering).
//! So these are all `SeqCst`: the anchor, the watermark, the consumer counts, the seal-request
//! counter, the waiter counts of `Notify`, each slot's ready tag (finisher: tag, then watermark;
//! advancer: watermark, then tag), and each cursor's released position (cursor: position, then
//! space waiters; reserver: waiter count, then positions). The accounting word's adds are `AcqRel`:
//! they only need to hand the payload bytes to the finisher.

use std::task::Waker;
use std::time::Instant;

use crate::page::PAYLOAD_SIZE;
use crate::sync::{lock, AtomicU32, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering};

const COMMITTED_MASK: u64 = 0xFFFF;
const SEALED_LEN_SHIFT: u32 = 16;
const SEALED_BIT: u64 = 1 << 32;
const STARTS_SHIFT: u32 = 40;
const _: () = assert!(PAYLOAD_SIZE as u64 <= COMMITTED_MASK);

/// A decoded accounting word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotState(u64);

impl SlotState {
    pub fn committed(self) -> u64 {
        self.0 & COMMITTED_MASK
    }
    pub fn sealed_len(self) -> u64 {
        (self.0 >> SEALED_LEN_SHIFT) & COMMITTED_MASK
    }
    pub fn is_sealed(self) -> bool {
        self.0 & SEALED_BIT != 0
    }
    pub fn starts(self) -> u64 {
        (self.0 >> STARTS_SHIFT) & COMMITTED_MASK
    }
    pub fn is_complete(self) -> bool {
        self.is_sealed() && self.committed() == self.sealed_len()
    }
}

/// The in-memory bookkeeping of one ring slot. The page bytes live in the ring's working copy (and its segment).
#[derive(Debug)]
pub(crate) struct Slot {
    /// See the module docs.
    state: AtomicU64,
    /// Where the record that runs into this page from an earlier one ends (1..=PAYLOAD_SIZE), or 0
    /// if no record runs in. Written by that record's reserver before its commit (Release by the
    /// commit's `fetch_add`), read by the finisher after the completing `fetch_add` (Acquire).
    continuation_end: AtomicU32,
    /// `lsn + 1` once page `lsn` in this slot is finished and readable; tagged with the LSN so a
    /// stale value from the slot's previous lap never reads as ready.
    ready_lsn: AtomicU64,
}

impl Slot {
    pub fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
            continuation_end: AtomicU32::new(0),
            ready_lsn: AtomicU64::new(0),
        }
    }

    /// Clears the slot for its next lap. Only the thread that advances the ring horizon calls it,
    /// before publishing the horizon (Release) that lets reservers into the slot.
    pub fn reset(&self) {
        self.state.store(0, Ordering::Relaxed);
        self.continuation_end.store(0, Ordering::Relaxed);
    }

    /// Adds a commit of `bytes` (and one record start if `starts_record`); returns the state after
    /// it if this add completed the page.
    pub fn commit(&self, bytes: u64, starts_record: bool) -> Option<SlotState> {
        let delta = bytes | (u64::from(starts_record) << STARTS_SHIFT);
        self.add(delta)
    }

    /// Seals the page at `len` payload bytes; returns the state if this completed the page.
    pub fn seal(&self, len: u64) -> Option<SlotState> {
        debug_assert!((1..=PAYLOAD_SIZE as u64).contains(&len));
        self.add(SEALED_BIT | (len << SEALED_LEN_SHIFT))
    }

    fn add(&self, delta: u64) -> Option<SlotState> {
        let after = SlotState(
            self.state
                .fetch_add(delta, Ordering::AcqRel)
                .wrapping_add(delta),
        );
        debug_assert!(
            after.committed() <= PAYLOAD_SIZE as u64,
            "over-committed slot: {after:?}"
        );
        after.is_complete().then_some(after)
    }

    pub fn set_continuation_end(&self, end: u32) {
        self.continuation_end.store(end, Ordering::Relaxed);
    }

    pub fn continuation_end(&self) -> u32 {
        self.continuation_end.load(Ordering::Relaxed)
    }

    pub fn mark_ready(&self, lsn: u64) {
        self.ready_lsn.store(lsn + 1, Ordering::SeqCst);
    }

    pub fn is_ready(&self, lsn: u64) -> bool {
        self.ready_lsn.load(Ordering::SeqCst) == lsn + 1
    }
}

/// Blocking waits without busy spinning, and notifications that cost one atomic load when nobody
/// waits.
///
/// A waiter registers (`waiters += 1`, SeqCst), then checks its condition under the mutex and
/// sleeps on the condvar. A notifier changes the state (SeqCst) and only then loads `waiters`: if
/// it reads 0, the waiter's registration comes later in the total order, so the waiter's check sees
/// the change. If it reads more, it takes the mutex before notifying, so the wake-up cannot fall
/// between a waiter's check and its sleep.
#[derive(Debug, Default)]
pub(crate) struct Notify {
    waiters: AtomicUsize,
    mutex: Mutex<()>,
    condvar: Condvar,
}

impl Notify {
    pub fn notify_all(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            drop(lock(&self.mutex));
            self.condvar.notify_all();
        }
    }

    /// Sleeps while `blocked()` holds; returns false if `deadline` passed first.
    pub fn wait_while(&self, mut blocked: impl FnMut() -> bool, deadline: Option<Instant>) -> bool {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = lock(&self.mutex);
        let unblocked = loop {
            if !blocked() {
                break true;
            }
            match deadline {
                None => {
                    guard = self
                        .condvar
                        .wait(guard)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break false;
                    }
                    guard = self
                        .condvar
                        .wait_timeout(guard, deadline - now)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
            }
        };
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        unblocked
    }
}

/// Async tasks to wake at the same moments as a [`Notify`]: one-shot registrations, so a task
/// registers again each time it polls and finds nothing to do.
///
/// The lost-wake-up argument is `Notify`'s: a task registers (`count`, SeqCst), then re-checks its
/// condition; a notifier changes the state (SeqCst), then loads `count`.
#[derive(Debug, Default)]
pub(crate) struct AsyncWakers {
    count: AtomicUsize,
    wakers: Mutex<Vec<Waker>>,
}

impl AsyncWakers {
    pub fn register(&self, waker: &Waker) {
        let mut wakers = lock(&self.wakers);
        if !wakers.iter().any(|known| known.will_wake(waker)) {
            wakers.push(waker.clone());
            self.count.store(wakers.len(), Ordering::SeqCst);
        }
    }

    pub fn wake_all(&self) {
        if self.count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let wakers = {
            let mut wakers = lock(&self.wakers);
            self.count.store(0, Ordering::SeqCst);
            std::mem::take(&mut *wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

/// How many consumers are busy (working on pages they got) and how many wait for more; and the
/// pacing consumers (`Cursor::wait_backlog`), with what readers asked them to hurry for.
#[derive(Debug)]
pub(crate) struct Consumers {
    busy: AtomicUsize,
    waiting: AtomicUsize,
    /// Consumers in `wait_backlog`: disengaged (neither busy nor waiting), sleeping on `pace`.
    pacing: AtomicUsize,
    /// One past the highest page a reader asked to be consumed soon (`Log::hurry`); only grows.
    hurry_end: AtomicU64,
    /// The lowest committed watermark a blocking pacing consumer (`Cursor::wait_backlog`) wants
    /// to be woken at (`u64::MAX`: none). The watermark's advancer swaps it back to none when it
    /// wakes them; each re-registers before it sleeps again.
    pace_wake_at: AtomicU64,
    /// The same for the async pacing cursors (`Cursor::poll_paced`), apart: a shipper that asks
    /// for the next page must not wake an applier pacing for a backlog of hundreds (it did,
    /// once per page, while both shared one threshold).
    async_pace_wake_at: AtomicU64,
    /// Woken when the watermark reaches `pace_wake_at`, on `Log::hurry`, and on close: not on
    /// every advance, which would wake a pacing applier once per page.
    pub pace: Notify,
    /// One past the highest page a writer asked to have shipped (`Log::request_ship`): only grows.
    ship_end: AtomicU64,
    /// The lowest read position of the async pacing cursors registered in `pace_wakers`
    /// (`u64::MAX`: none): a ship request for a page below it wakes nobody, every one of them
    /// has read (shipped) that page. Whoever wakes `pace_wakers` resets it; each cursor lowers it
    /// again when it registers.
    pace_ship_from: AtomicU64,
    /// The async pacing cursors (`Cursor::poll_paced`): woken with `pace`, on ship requests, on
    /// seal requests and on close.
    pub pace_wakers: AsyncWakers,
}

impl Default for Consumers {
    fn default() -> Self {
        Self {
            busy: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            pacing: AtomicUsize::new(0),
            hurry_end: AtomicU64::new(0),
            pace_wake_at: AtomicU64::new(u64::MAX),
            async_pace_wake_at: AtomicU64::new(u64::MAX),
            pace: Notify::default(),
            ship_end: AtomicU64::new(0),
            pace_ship_from: AtomicU64::new(u64::MAX),
            pace_wakers: AsyncWakers::default(),
        }
    }
}

impl Consumers {
    /// Whether some consumer is busy or waiting (rule 3).
    pub fn engaged(&self) -> bool {
        self.busy.load(Ordering::SeqCst) + self.waiting.load(Ordering::SeqCst) > 0
    }
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
    pub fn set_busy(&self, busy: bool) {
        if busy {
            self.busy.fetch_add(1, Ordering::SeqCst);
        } else {
            self.busy.fetch_sub(1, Ordering::SeqCst);
        }
    }
    pub fn set_waiting(&self, waiting: bool) {
        if waiting {
            self.waiting.fetch_add(1, Ordering::SeqCst);
        } else {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
    pub fn pacing(&self) -> usize {
        self.pacing.load(Ordering::SeqCst)
    }
    pub fn set_pacing(&self, pacing: bool) {
        if pacing {
            self.pacing.fetch_add(1, Ordering::SeqCst);
        } else {
            self.pacing.fetch_sub(1, Ordering::SeqCst);
        }
    }
    pub fn hurry_end(&self) -> u64 {
        self.hurry_end.load(Ordering::SeqCst)
    }
    /// Records that a reader needs page `lsn` consumed soon.
    pub fn hurry(&self, lsn: u64) {
        self.hurry_end.fetch_max(lsn + 1, Ordering::SeqCst);
    }
    /// A blocking pacing consumer asks to be woken (on `pace`) once the watermark reaches
    /// `watermark`.
    pub fn wake_pacing_at(&self, watermark: u64) {
        self.pace_wake_at.fetch_min(watermark, Ordering::SeqCst);
    }
    /// An async pacing cursor asks to be woken (through `pace_wakers`) once the watermark
    /// reaches `watermark`.
    pub fn wake_async_pacing_at(&self, watermark: u64) {
        self.async_pace_wake_at
            .fetch_min(watermark, Ordering::SeqCst);
    }
    /// Called after the watermark advanced to `watermark`: wakes the pacing consumers that
    /// asked for it, blocking and async apart. Two atomic loads when none did.
    pub fn watermark_advanced(&self, watermark: u64) {
        if self.pace_wake_at.load(Ordering::SeqCst) <= watermark {
            self.pace_wake_at.store(u64::MAX, Ordering::SeqCst);
            self.pace.notify_all();
        }
        if self.async_pace_wake_at.load(Ordering::SeqCst) <= watermark {
            self.async_pace_wake_at.store(u64::MAX, Ordering::SeqCst);
            self.wake_async_pacers();
        }
    }
    pub fn ship_end(&self) -> u64 {
        self.ship_end.load(Ordering::SeqCst)
    }
    /// Records that a writer needs page `lsn` shipped soon, then wakes the async pacing cursors
    /// if one of them has not read it. Store, then load `pace_ship_from`; a pacing cursor
    /// registers, lowers `pace_ship_from`, then loads `ship_end`: one of the two sees the other.
    pub fn request_ship(&self, lsn: u64) {
        if self.ship_end.load(Ordering::SeqCst) <= lsn {
            self.ship_end.fetch_max(lsn + 1, Ordering::SeqCst);
        }
        if self.pace_ship_from.load(Ordering::SeqCst) <= lsn {
            self.wake_async_pacers();
        }
    }
    /// An async pacing cursor that has read up to `read_lsn` (exclusive) is about to sleep; call
    /// after registering its waker in `pace_wakers`, before the last check of `ship_end`.
    pub fn pacing_async_from(&self, read_lsn: u64) {
        self.pace_ship_from.fetch_min(read_lsn, Ordering::SeqCst);
    }
    /// Wakes every async pacing cursor; each registers again if it still has nothing to do.
    pub fn wake_async_pacers(&self) {
        self.pace_ship_from.store(u64::MAX, Ordering::SeqCst);
        self.pace_wakers.wake_all();
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use super::*;

    /// A shipper asking for the next page (async) and an applier pacing for a backlog
    /// (blocking) are woken each at its own threshold: the page the shipper wants wakes only
    /// the shipper. While they shared one, every page woke the applier (a futex wake on the
    /// writer's path and a context switch, per page).
    #[test]
    fn pacers_are_woken_at_their_own_threshold_not_at_the_other_kinds() {
        use std::sync::Arc;
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let consumers = Consumers::default();
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        consumers
            .pace_wakers
            .register(&std::task::Waker::from(Arc::clone(&woken)));
        consumers.wake_pacing_at(100);
        consumers.wake_async_pacing_at(5);
        consumers.watermark_advanced(4);
        assert_eq!(woken.0.load(Ordering::SeqCst), 0, "below both thresholds");
        consumers.watermark_advanced(5);
        assert_eq!(
            woken.0.load(Ordering::SeqCst),
            1,
            "the async pacer is woken"
        );
        assert_eq!(
            consumers.async_pace_wake_at.load(Ordering::SeqCst),
            u64::MAX
        );
        assert_eq!(
            consumers.pace_wake_at.load(Ordering::SeqCst),
            100,
            "the blocking pacer still sleeps"
        );
        consumers.watermark_advanced(100);
        assert_eq!(consumers.pace_wake_at.load(Ordering::SeqCst), u64::MAX);
        assert_eq!(
            woken.0.load(Ordering::SeqCst),
            1,
            "no async pacer asked again"
        );
    }

    #[test]
    fn exactly_one_add_completes_a_page_whatever_the_order() {
        // commits of 10 + 20 + 30 bytes and a seal at 60, in every order
        let adds: [(u64, bool); 4] = [(10, true), (20, false), (30, true), (0, false)];
        for perm in permutations(4) {
            let slot = Slot::new();
            let mut completions = 0;
            for &i in &perm {
                let done = if i == 3 {
                    slot.seal(60)
                } else {
                    slot.commit(adds[i].0, adds[i].1)
                };
                if let Some(state) = done {
                    completions += 1;
                    assert_eq!(
                        (state.sealed_len(), state.committed(), state.starts()),
                        (60, 60, 2)
                    );
                }
            }
            assert_eq!(completions, 1, "order {perm:?}");
        }
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for rest in permutations(n - 1) {
            for at in 0..=rest.len() {
                let mut p = rest.clone();
                p.insert(at, n - 1);
                out.push(p);
            }
        }
        out
    }
}
