//! Cursors: independent readers of ready pages, in LSN order, without copying.
//!
//! Each consumer (the applier, one shipper per peer) owns a [`Cursor`]. A cursor has two
//! positions: where it *reads* next, and what it has *released*. Pages below the slowest cursor's
//! released position may be overwritten; pages it has read but not released stay in the ring, so
//! a consumer can, say, ship a run and release it only once the peer acknowledged it.
//!
//! A page borrowed from a cursor ([`PageRef`], [`PageRun`]) borrows the cursor mutably, so the
//! cursor cannot release that page while it is borrowed: the borrow checker enforces that ring
//! slots are never reused under a reader.
//!
//! # Pacing
//!
//! A consumer whose cost is per batch rather than per page (an applier paying one storage sync
//! per group) can let a backlog build before it reads: [`Cursor::wait_backlog`] sleeps until the
//! pages this cursor holds (read or not, but not released) reach a count, a deadline passes, the
//! log closes, or a reader asks for haste with [`Log::hurry`] (say, a commit waiting until its
//! record is applied). While it paces, the cursor steps back from sealing duty (seal rule 6 in
//! `seal.rs`), so no waiter counts on it to seal.
//!
//! A network shipper paces with [`Cursor::poll_paced`], the async form with another purpose:
//! its cost is per send, and it keeps sealing when asked (seal rule 7). It ships once a batch of
//! pages is ready, when a writer asks for one of them ([`Log::request_ship`]), or when its
//! caller's timer fires after [`Backlog::Started`].
//!
//! A pacing cursor sleeps on a `Notify` of its own, woken only when the committed watermark
//! reaches the count it waits for (not at every advance: that would wake it once per page), on
//! a hurry, and on close. No wake-up is lost, by two store-then-load pairs (all SeqCst):
//! [`Log::hurry`] records the page, then loads the count of pacing cursors and wakes them if
//! there are any, while a pacing cursor counts itself, then checks the recorded page; and the
//! watermark's advancer moves the watermark, then loads the wake-up point, while a pacing cursor
//! registers its wake-up point, then loads the watermark. In each pair one side sees the other's
//! store, and `Notify` keeps a wake-up from falling between a check and the sleep.

use std::task::{Context, Poll};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::log::{Log, Shared};
use crate::page::{validate, view_validated, PageRef, PAGE_SIZE};
use crate::sync::{lock, Arc, AtomicU64, AtomicUsize, Mutex, Ordering};

/// One cursor's released position, shared with the ring so the horizon can honour it.
#[derive(Debug)]
pub(crate) struct Pin {
    released: AtomicU64,
}

/// Every live cursor's pin.
#[derive(Debug, Default)]
pub(crate) struct CursorPins {
    pins: Mutex<Vec<Arc<Pin>>>,
    count: AtomicUsize,
}

impl CursorPins {
    /// The lowest released position, if any cursor exists.
    pub fn min_released(&self) -> Option<u64> {
        lock(&self.pins)
            .iter()
            .map(|pin| pin.released.load(Ordering::SeqCst))
            .min()
    }

    fn add(&self, at: u64) -> Arc<Pin> {
        let pin = Arc::new(Pin {
            released: AtomicU64::new(at),
        });
        lock(&self.pins).push(pin.clone());
        self.count.fetch_add(1, Ordering::SeqCst);
        pin
    }

    fn remove(&self, pin: &Arc<Pin>) {
        lock(&self.pins).retain(|other| !Arc::ptr_eq(other, pin));
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A contiguous run of ready pages, as one byte slice of `count * PAGE_SIZE` bytes (full form).
#[derive(Clone, Copy, Debug)]
pub struct PageRun<'a> {
    /// LSN of the first page.
    pub first_lsn: u64,
    /// The pages, back to back.
    pub bytes: &'a [u8],
}

impl<'a> PageRun<'a> {
    /// Pages in the run.
    pub fn count(&self) -> usize {
        self.bytes.len() / PAGE_SIZE
    }

    /// The pages, validated views.
    pub fn pages(&self) -> impl Iterator<Item = PageRef<'a>> + 'a {
        // Every page was validated (crc included) when the run was taken, and no one writes a
        // retained page: checking the crc again here cost the applier 2% of its CPU.
        self.bytes
            .chunks_exact(PAGE_SIZE)
            .filter_map(view_validated)
    }
}

/// A reader of the log's ready pages; see the module docs.
pub struct Cursor {
    shared: Arc<Shared>,
    pin: Arc<Pin>,
    read_lsn: u64,
    busy: bool,
    /// Counted as a waiting consumer by `poll_ready` (async), until it finds pages or drops.
    polling: bool,
    /// The seal-request count `poll_ready` last sealed at (rule 1): it seals again only once a
    /// writer asked since. `u64::MAX` at first, so a new cursor's first poll seals.
    sealed_at_request: u64,
    /// `poll_paced`: pages below this were sealed on a writer's request, so they ship at once.
    ship_until: u64,
    /// `poll_paced` reported `Backlog::Started` and waits for `Backlog::Ship` since.
    lingering: bool,
}

/// What [`Cursor::poll_paced`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backlog {
    /// Read and ship now: the ready pages reached the count asked for, or a writer asked for one
    /// of them (a ship request, or a seal request this cursor answered).
    Ship,
    /// Pages are ready since the cursor last caught up, fewer than asked for, and nobody asked
    /// for them. The caller ships them by a deadline of its own (`pages_min` 1 once it passed)
    /// unless a `Ship` comes first; polling again waits for that `Ship`.
    Started,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("read_lsn", &self.read_lsn)
            .field("released_lsn", &self.released_lsn())
            .finish()
    }
}

impl Log {
    /// A cursor that reads from page `from_lsn` on and retains the ring from there. Fails with
    /// [`Error::BelowHorizon`] if the ring no longer holds that page.
    pub fn cursor(&self, from_lsn: u64) -> Result<Cursor> {
        let shared = &self.shared;
        let _guard = lock(&shared.horizon_lock);
        let oldest = shared.horizon.load(Ordering::Acquire);
        if from_lsn < oldest {
            return Err(Error::BelowHorizon {
                requested: from_lsn,
                oldest,
            });
        }
        let pin = shared.pins.add(from_lsn);
        Ok(Cursor {
            shared: self.shared.clone(),
            pin,
            read_lsn: from_lsn,
            busy: false,
            polling: false,
            sealed_at_request: u64::MAX,
            ship_until: 0,
            lingering: false,
        })
    }
}

impl Log {
    /// Asks pacing cursors ([`Cursor::wait_backlog`]) to stop letting a backlog build until they
    /// have read page `lsn`, and seals that page if it is still open, so the next batch holds it.
    /// When nobody paces, asks the consumers to seal it instead (seal rule 2), as a wait does: a
    /// record committed unannounced has asked nobody yet. Cheap when nobody paces: three atomic
    /// operations.
    pub fn hurry(&self, lsn: u64) {
        let shared = &self.shared;
        shared.consumers.hurry(lsn);
        if shared.consumers.pacing() > 0 {
            shared.seal_open_page(Some(lsn));
            shared.consumers.pace.notify_all();
        } else {
            shared.ask_to_seal(lsn);
        }
    }
}

impl Cursor {
    /// The next page this cursor reads.
    pub fn position(&self) -> u64 {
        self.read_lsn
    }

    /// Pages below this are released by this cursor.
    pub fn released_lsn(&self) -> u64 {
        self.pin.released.load(Ordering::Relaxed)
    }

    /// Ready pages not yet read.
    pub fn lag_pages(&self) -> u64 {
        self.shared
            .watermark
            .load(Ordering::SeqCst)
            .saturating_sub(self.read_lsn)
    }

    /// The next ready page, if there is one; moves the read position past it.
    pub fn next_ready(&mut self) -> Result<Option<PageRef<'_>>> {
        if self.shared.watermark.load(Ordering::SeqCst) <= self.read_lsn {
            return Ok(None);
        }
        let lsn = self.read_lsn;
        // SAFETY: page `lsn` is below the watermark, so it is finished and nobody writes it; and
        // it is at or above this cursor's pin, so its slot is not reused while `self` is borrowed.
        let page = validate(unsafe { self.shared.ring.slot(lsn) })?;
        debug_assert_eq!(page.lsn(), lsn);
        self.read_lsn += 1;
        Ok(Some(page))
    }

    /// Page `lsn` again, if this cursor has read it and not released it yet
    /// (`released_lsn() <= lsn < position()`); `None` otherwise. A consumer that decoded a batch
    /// of pages can come back to their bytes without having copied them: the borrow of `self`
    /// keeps the page from being released, as a run's borrow does.
    pub fn reread(&self, lsn: u64) -> Option<PageRef<'_>> {
        if lsn < self.released_lsn() || lsn >= self.read_lsn {
            return None;
        }
        // SAFETY: `lsn` is below the read position, so below the watermark when it was read:
        // finished, and nobody writes it again. It is at or above this cursor's pin, and only
        // `release` (which takes `&mut self`) moves the pin, so its slot is not reused while
        // `self` is borrowed.
        view_validated(unsafe { self.shared.ring.slot(lsn) })
    }

    /// The next run of up to `pages_max` consecutive ready pages (shorter where the ring wraps),
    /// as one slice; moves the read position past it.
    pub fn next_run(&mut self, pages_max: usize) -> Result<Option<PageRun<'_>>> {
        let watermark = self.shared.watermark.load(Ordering::SeqCst);
        let first = self.read_lsn;
        let slots = self.shared.slot_count;
        let until_wrap = slots - (first & (slots - 1));
        let count = (watermark.saturating_sub(first))
            .min(until_wrap)
            .min(pages_max as u64);
        if count == 0 {
            return Ok(None);
        }
        for lsn in first..first + count {
            // SAFETY: as in `next_ready`, for each page of the run.
            validate(unsafe { self.shared.ring.slot(lsn) })?;
        }
        let start = self.shared.ring.slot_ptr(first);
        // SAFETY: the run's slots are adjacent in the mapping (no wrap, by `until_wrap`), finished,
        // never written again while retained, and retained while `self` is borrowed.
        let bytes = unsafe { std::slice::from_raw_parts(start, count as usize * PAGE_SIZE) };
        self.read_lsn += count;
        Ok(Some(PageRun {
            first_lsn: first,
            bytes,
        }))
    }

    /// Blocks until a page is ready to read; returns `Ok(false)` if `deadline` passed first.
    ///
    /// While it waits, this consumer is idle, so it seals the open page whenever it holds bytes
    /// (seal policy rules 1 and 2, `seal.rs`): nothing committed is left waiting for the page to
    /// fill.
    pub fn wait_ready(&mut self, deadline: Option<Instant>) -> Result<bool> {
        let shared = Arc::clone(&self.shared);
        let read_lsn = self.read_lsn;
        let ready = || shared.watermark.load(Ordering::SeqCst) > read_lsn;
        if ready() {
            self.set_busy(true);
            return Ok(true);
        }
        // Rule 4 of the seal policy: count as waiting before no longer counting as busy.
        shared.consumers.set_waiting(true);
        self.set_busy(false);
        loop {
            let requests = shared.seal_requests.load(Ordering::SeqCst);
            shared.seal_open_page(None);
            let woken = shared.committed.wait_while(
                || {
                    !ready()
                        && !shared.is_closed()
                        && shared.seal_requests.load(Ordering::SeqCst) == requests
                },
                deadline,
            );
            if ready() || shared.is_closed() || !woken {
                break;
            }
        }
        let is_ready = ready();
        self.set_busy(is_ready);
        shared.consumers.set_waiting(false);
        if is_ready {
            Ok(true)
        } else {
            shared.seal_open_page(None); // disengaging: rule 4
            if shared.is_closed() {
                Err(Error::Closed)
            } else {
                Ok(false)
            }
        }
    }

    /// The async form of [`wait_ready`](Self::wait_ready), for a consumer on an event loop (a
    /// shipper): `Ready(Ok(()))` once a page is ready to read, with the same seal-policy duties.
    ///
    /// While it returns `Pending` the cursor counts as a waiting consumer and has sealed the open
    /// page if a writer asked for a seal since it last sealed (rules 1 and 2: a commit that opened
    /// a page, or a waiter for an unannounced one); the task is woken when the watermark advances,
    /// a writer asks for a seal, or the log closes. Once it returned `Ready`, the consumer is busy
    /// until it polls again.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let shared = Arc::clone(&self.shared);
        let read_lsn = self.read_lsn;
        let ready = || shared.watermark.load(Ordering::SeqCst) > read_lsn;
        loop {
            if ready() {
                self.set_busy(true); // rule 4: busy before no longer waiting
                self.set_polling(false);
                return Poll::Ready(Ok(()));
            }
            let (requests, _) = match self.turn_idle() {
                Ok(seen) => seen,
                Err(error) => return Poll::Ready(Err(error)),
            };
            shared.wakers.register(cx.waker());
            if !ready()
                && !shared.is_closed()
                && shared.seal_requests.load(Ordering::SeqCst) == requests
            {
                return Poll::Pending;
            }
        }
    }

    /// The pacing form of [`poll_ready`](Self::poll_ready), for a shipper whose cost is per
    /// send (a wake-up, a write, the peer's read and ack): lets `pages_min` ready pages build
    /// before it reports [`Backlog::Ship`], unless a writer asked for one of them
    /// ([`Log::request_ship`], or a seal request: rule 2). When pages become ready after the
    /// cursor had caught up, it reports [`Backlog::Started`] once, so the caller can bound how
    /// long they wait (a timer of its own).
    ///
    /// The seal duties are `poll_ready`'s: it counts as a waiting consumer while `Pending`, seals
    /// the open page when a writer asked since it last sealed, and is busy once it reported
    /// `Ship`. It is woken when the watermark reaches the page it waits for (the first page
    /// past its read position, or the `pages_min`-th once started; not at every advance), on a
    /// ship request for a page it has not read, on a seal request and on close. No wake-up is
    /// lost, by the store-then-load pairs of `wait_backlog` (the watermark against the wake-up
    /// point) and of `Log::request_ship` (the request against the cursor's read position), all
    /// `SeqCst`, each side registering before it looks.
    pub fn poll_paced(&mut self, cx: &mut Context<'_>, pages_min: u64) -> Poll<Result<Backlog>> {
        let shared = Arc::clone(&self.shared);
        let consumers = &shared.consumers;
        let pages_min = pages_min.max(1);
        let read_lsn = self.read_lsn;
        let watermark = || shared.watermark.load(Ordering::SeqCst);
        loop {
            let lag = watermark().saturating_sub(read_lsn);
            let asked = self.ship_until.max(consumers.ship_end()) > read_lsn;
            if lag > 0 && (lag >= pages_min || asked) {
                self.lingering = false;
                self.set_busy(true); // rule 4: busy before no longer waiting
                self.set_polling(false);
                return Poll::Ready(Ok(Backlog::Ship));
            }
            if lag > 0 && !self.lingering {
                self.lingering = true;
                return Poll::Ready(Ok(Backlog::Started));
            }
            let requests = match self.turn_idle() {
                // The writer that asked waits for its page, so everything sealed by now ships
                // without waiting for the backlog.
                Ok((_, true)) => {
                    self.ship_until = self.ship_until.max(shared.anchor.load().lsn);
                    continue;
                }
                Ok((requests, false)) => requests,
                Err(error) => {
                    self.lingering = false;
                    return Poll::Ready(Err(error));
                }
            };
            let wake_at = if asked {
                // An asked-for page is still being finished: wake at the next advance.
                shared.wakers.register(cx.waker());
                read_lsn + 1
            } else {
                consumers.pace_wakers.register(cx.waker());
                consumers.pacing_async_from(read_lsn);
                let wake_at = read_lsn + if self.lingering { pages_min } else { 1 };
                consumers.wake_async_pacing_at(wake_at);
                wake_at
            };
            let still_asked = self.ship_until.max(consumers.ship_end()) > read_lsn;
            if watermark() < wake_at
                && still_asked == asked
                && !shared.is_closed()
                && shared.seal_requests.load(Ordering::SeqCst) == requests
            {
                return Poll::Pending;
            }
        }
    }

    /// Lets a backlog build: blocks until this cursor holds `pages_min` pages (ready and not
    /// released: read or not), `deadline` passes, the log closes, or a reader hurried a page this
    /// cursor has not read ([`Log::hurry`]). Returns the ready pages not yet read; after a hurry
    /// they include the hurried page, which it seals if it is still open.
    ///
    /// While it waits, the cursor is neither busy nor waiting (seal rule 6): it seals the open
    /// page as it steps back, and waiters seal their own pages meanwhile. It returns busy if it
    /// has pages to read (come back to [`wait_ready`](Self::wait_ready) after reading them, as
    /// after any busy spell), and neither if not.
    pub fn wait_backlog(&mut self, pages_min: u64, deadline: Option<Instant>) -> u64 {
        let shared = Arc::clone(&self.shared);
        let read_lsn = self.read_lsn;
        // Only this cursor moves its pin, and not while it paces.
        let wake_at = self.released_lsn().saturating_add(pages_min.max(1));
        let watermark = || shared.watermark.load(Ordering::SeqCst);
        let consumers = &shared.consumers;
        let enough = || {
            // Registered before each check: an advance past `wake_at` after the check wakes us.
            consumers.wake_pacing_at(wake_at);
            watermark() >= wake_at || consumers.hurry_end() > read_lsn || shared.is_closed()
        };
        consumers.set_pacing(true); // before the first check: see the module docs
        if !enough() {
            if self.busy {
                self.set_busy(false);
                shared.seal_open_page(None); // disengaging: rule 4
            }
            consumers.pace.wait_while(|| !enough(), deadline);
        }
        // A hurry ended the pace: its page is committed, but may still be open. When nobody
        // paced at the hurry, it asked the engaged consumers to seal it (rule 2), and this one
        // had stepped back; it seals the page now, so that what it reads next holds it (else a
        // hurried group left its own page for the next one).
        let hurried = consumers.hurry_end();
        if hurried > read_lsn && watermark() < hurried {
            shared.seal_open_page(Some(hurried - 1));
        }
        let lag = watermark().saturating_sub(read_lsn);
        self.set_busy(lag > 0);
        shared.consumers.set_pacing(false);
        lag
    }

    /// What an async poll does once it found nothing to return: at close, stops counting as a
    /// consumer and says so; otherwise counts as waiting (rule 4: before it stops counting as
    /// busy) and answers a seal request made since it last did (rules 1 and 2: a page nobody
    /// asked for waits to fill, or for its writer's wait to ask). Returns the seal-request count
    /// it saw and whether it answered one.
    fn turn_idle(&mut self) -> Result<(u64, bool)> {
        if self.shared.is_closed() {
            self.set_polling(false);
            self.set_busy(false);
            return Err(Error::Closed);
        }
        self.set_polling(true);
        self.set_busy(false);
        let requests = self.shared.seal_requests.load(Ordering::SeqCst);
        let answered = requests != self.sealed_at_request;
        if answered {
            self.sealed_at_request = requests;
            self.shared.seal_open_page(None);
        }
        Ok((requests, answered))
    }

    fn set_polling(&mut self, polling: bool) {
        if self.polling != polling {
            self.polling = polling;
            self.shared.consumers.set_waiting(polling);
        }
    }

    fn set_busy(&mut self, busy: bool) {
        if self.busy != busy {
            self.busy = busy;
            self.shared.consumers.set_busy(busy);
        }
    }

    /// Releases the pages below `lsn` (at most up to the read position): the ring may reuse
    /// their slots once every other cursor released them too.
    pub fn release(&mut self, lsn: u64) {
        let lsn = lsn.min(self.read_lsn);
        if lsn > self.pin.released.load(Ordering::Relaxed) {
            self.pin.released.store(lsn, Ordering::SeqCst); // SeqCst: see `seal.rs`, Orderings
            self.shared.space.notify_all();
            self.shared.wakers.wake_all();
        }
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        self.set_polling(false);
        if self.busy {
            self.shared.consumers.set_busy(false);
            self.shared.seal_open_page(None); // disengaging: rule 4 of the seal policy
        }
        self.shared.pins.remove(&self.pin);
        self.shared.space.notify_all();
        self.shared.wakers.wake_all();
    }
}
