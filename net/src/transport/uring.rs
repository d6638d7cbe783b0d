//! io_uring driven directly: a single-threaded executor that parks in `io_uring_enter`.
//!
//! # Why not tokio-uring
//!
//! tokio-uring runs a tokio current-thread runtime and puts its ring's fd into tokio's epoll: it
//! submits when the runtime parks, learns of completions through epoll readiness of that fd, and
//! then wakes a driver task of its own. Measured here (`bench transport`, `strace -c`), that cost
//! about 15 syscalls per ack round trip against epoll's 6, and left io_uring at 0.56–0.71× epoll
//! for one-page frames and 1.3–1.4× its ack latency, even with page runs per write and reused
//! buffers. DESIGN.md names the way out: drive the `io-uring` crate from the transport thread.
//! This module is that; the protocol and the service above it are unchanged.
//!
//! # How it runs
//!
//! - One [`Runtime`] per transport thread owns one ring and every task, socket and timer of that
//!   thread. Tasks are `!Send` futures ([`spawn`]); they run until none is ready.
//! - Operations ([`Op`]) push a submission entry and wait for its completion. Entries pushed while
//!   tasks run are submitted together when the thread runs out of work, in the same
//!   `io_uring_enter` that waits for the next completion (and for the nearest timer, through the
//!   enter's timeout argument).
//! - Sends try the socket first (`send` with `MSG_DONTWAIT`); only what would block goes to the
//!   ring. Measured here, a ring send that completes at once still costs an enter whose only news
//!   is its own completion, and one-page frames ran at 0.70–0.76× epoll that way against
//!   1.09–1.22× with the direct attempt (`bench transport --seconds 3`, two runs each). An ack
//!   round trip thus costs each end one `send`, one enter and one `recv` that finds nothing (next
//!   item), against epoll's three syscalls.
//! - Receives go through the ring, except the one after a ring receive that brought bytes: that
//!   one tries the socket first ([`TcpStream::try_recv`], a `recv` with `MSG_DONTWAIT`) and goes
//!   to the ring only if nothing is there. While a read's frames are decoded and handed on, more
//!   have often arrived; reading them at once, before the link's writer runs, lets one ack cover
//!   them all. epoll gets that for free: its reader wakes later and finds more waiting. A direct
//!   receive never follows another, so a link whose peer never stops sending still passes
//!   through the runtime every second read, and its writer and the thread's other links run.
//!   Measured (stop 39, `bench transport`'s 1-page ship phase alone, 200,000 frames, io_uring
//!   and epoll alternated, two series of six to eight pairs): CPU per frame, both ends,
//!   12.55–12.6 µs → 11.95–12.0 µs; frames per ack 1.2–1.4 → 1.9–2.3 (epoll's 1.6–2.0); MB/s
//!   against epoll, medians, 0.96× → 1.03× and 1.01× → 1.01×. What it costs: a round trip with
//!   nothing behind it pays one `recv` that finds nothing at each end (`strace -c`: two
//!   `recvfrom` per ping), ack p50 against epoll 1.01× → 1.04× over eight alternated pairs whose
//!   single runs ranged 0.85–1.24×. Stop 36 tried a direct receive after *every* receive that
//!   brought bytes and measured whole `bench transport` runs, where no difference rose above
//!   the noise.
//! - Tasks are woken from any thread (committers notify shippers). A waker queues its task; if the
//!   thread is parked, it also writes an eventfd on which the ring always has a read pending,
//!   which ends the enter ([`Doorbell`]: the handshake, and its shuttle model).
//! - The ring is set up single-issuer with deferred task work where the kernel allows it, so the
//!   kernel posts completions only when this thread enters, never by interrupting it.
//!
//! # Safety of buffers
//!
//! The kernel writes into and reads from memory the operation names until its completion is
//! posted. Each [`Op`] owns that memory (a heap buffer, a boxed address, and a handle that keeps
//! the socket's descriptor open). An operation dropped before completing hands its memory to its
//! slot and is cancelled; the memory is freed when the cancelled completion arrives. At shutdown
//! the runtime cancels everything and waits a bounded time; what has still not completed is
//! leaked rather than freed under the kernel.
//!
//! One file of about 870 lines, on purpose: the executor, its operations and its sockets share
//! one slab and the invariants its `unsafe` code relies on; together, every `unsafe` block sits
//! beside the invariant it needs, and the crate's one allowance of unsafe code covers one file.

use std::any::Any;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use super::doorbell::{Bell, Doorbell};

/// Submission queue entries (the completion queue gets twice as many).
const RING_ENTRIES: u32 = 256;
/// `user_data` of the eventfd read that cross-thread wakers complete.
const WAKE_TOKEN: u64 = u64::MAX;
/// `user_data` of cancellations (their own completions carry nothing we need).
const CANCEL_TOKEN: u64 = u64::MAX - 1;
/// How long shutdown waits for cancelled operations before leaking their memory.
const DRAIN_MAX: Duration = Duration::from_secs(1);
/// How many times a full submission queue is flushed before an operation fails.
const PUSH_ATTEMPTS: usize = 8;

thread_local! {
    static DRIVER: RefCell<Option<Rc<Driver>>> = const { RefCell::new(None) };
}

/// Whether the calling thread runs an io_uring [`Runtime`].
pub(crate) fn is_current() -> bool {
    DRIVER.with(|driver| driver.borrow().is_some())
}

/// The calling thread's driver.
///
/// # Panics
///
/// Outside [`Runtime::block_on`]: the transport only calls this from its own tasks.
fn driver() -> Rc<Driver> {
    DRIVER
        .with(|driver| driver.borrow().clone())
        .expect("io_uring operation outside its runtime")
}

/// A slab: values under small integer keys that are reused once freed.
struct Slots<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Slots<T> {
    const fn new() -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// The key the next [`Slots::insert`] will use.
    fn next_key(&self) -> usize {
        self.free.last().copied().unwrap_or(self.entries.len())
    }

    fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(key) => {
                // A free key whose slot still held a value would drop an operation's state
                // (and the memory the kernel writes into) while it is in flight.
                assert!(self.entries[key].is_none(), "free slot {key} holds a value");
                self.entries[key] = Some(value);
                key
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.entries.get_mut(key).and_then(Option::as_mut)
    }

    fn remove(&mut self, key: usize) -> Option<T> {
        let value = self.entries.get_mut(key).and_then(Option::take);
        if value.is_some() {
            self.len -= 1;
            self.free.push(key);
        }
        debug_assert_eq!(self.len, self.entries.iter().flatten().count());
        value
    }

    fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.len = 0;
        self.free.clear();
        self.entries.drain(..).flatten()
    }
}

/// The eventfd a parked runtime's ring is reading: writing it ends the park.
struct EventFd(OwnedFd);

impl Bell for EventFd {
    fn ring(&self) {
        // An eventfd adds the host-order u64 written to its counter.
        let one: u64 = 1;
        // SAFETY: `self.0` is an open eventfd owned by `self`; `one` is 8 readable bytes, alive
        // for the call, as an eventfd write requires. A failed write (only possible if the
        // counter would overflow) leaves the counter non-zero, so the runtime wakes anyway.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}

/// What wakers on any thread share with the runtime thread ([`Doorbell`] explains the
/// handshake).
type Shared = Doorbell<EventFd>;

/// A task's waker: queues the task once until it is polled again.
struct TaskWaker {
    task: usize,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.shared.schedule(self.task);
        }
    }
}

struct Task {
    /// `None` while the task is being polled.
    future: Option<Pin<Box<dyn Future<Output = ()>>>>,
    waker: Arc<TaskWaker>,
}

/// Where an operation stands between submission and the future that waits for it.
enum OpState {
    /// In flight; the waker of the task that waits for it.
    Waiting(Option<Waker>),
    /// Completed with this result (`-errno` on failure), not yet taken.
    Done(i32),
    /// In flight, its future dropped: the memory the kernel may still use, freed on completion.
    Orphaned { _memory: Box<dyn Any> },
}

struct Driver {
    ring: RefCell<IoUring>,
    ops: RefCell<Slots<OpState>>,
    tasks: RefCell<Slots<Task>>,
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    next_timer: Cell<u64>,
    shared: Arc<Shared>,
    /// The eventfd read's 8 bytes; the kernel writes them while the read is in flight.
    wake_buf: Box<UnsafeCell<u64>>,
    /// The eventfd read is in flight.
    wake_armed: Cell<bool>,
    /// Shutting down: the eventfd read is not re-armed.
    stopping: Cell<bool>,
    /// Completions reaped but not yet dispatched (reused).
    reaped: RefCell<Vec<(u64, i32)>>,
}

impl Driver {
    /// Queues one submission entry; flushes the queue to the kernel if it is full.
    fn push(&self, entry: &squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        for _ in 0..PUSH_ATTEMPTS {
            // SAFETY: every entry built by this module names memory owned by its `Op` (or by the
            // driver, for the eventfd read) until its completion is reaped; see the module docs.
            if unsafe { ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            ring.submit()?;
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "io_uring submission queue stays full",
        ))
    }

    /// Arms the read on the eventfd that ends a parked enter.
    fn arm_wake(&self) -> io::Result<()> {
        if self.wake_armed.get() || self.stopping.get() {
            return Ok(());
        }
        let entry = opcode::Read::new(
            types::Fd(self.shared.bell().0.as_raw_fd()),
            self.wake_buf.get().cast(),
            8,
        )
        .build()
        .user_data(WAKE_TOKEN);
        self.push(&entry)?;
        self.wake_armed.set(true);
        Ok(())
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()>>>) {
        let mut tasks = self.tasks.borrow_mut();
        let waker = Arc::new(TaskWaker {
            task: tasks.next_key(),
            queued: AtomicBool::new(true),
            shared: Arc::clone(&self.shared),
        });
        let task = tasks.insert(Task {
            future: Some(future),
            waker,
        });
        drop(tasks);
        self.shared.schedule(task);
    }

    /// Polls one task, if it still exists (a stale wake of a finished task is ignored).
    fn poll_task(&self, task: usize) {
        let (mut future, waker) = {
            let mut tasks = self.tasks.borrow_mut();
            let Some(entry) = tasks.get_mut(task) else {
                return;
            };
            let Some(future) = entry.future.take() else {
                return;
            };
            entry.waker.queued.store(false, Ordering::Release);
            (future, Waker::from(Arc::clone(&entry.waker)))
        };
        let done = future
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready();
        let mut tasks = self.tasks.borrow_mut();
        if done {
            let finished = tasks.remove(task);
            drop(tasks);
            drop(finished);
            drop(future);
        } else if let Some(entry) = tasks.get_mut(task) {
            entry.future = Some(future);
        }
    }

    /// Runs every task that is ready now.
    fn run_ready(&self) {
        let ready = self.shared.take();
        for task in ready {
            self.poll_task(task);
        }
    }

    /// Wakes every timer that is due.
    fn fire_timers(&self) {
        let now = Instant::now();
        loop {
            let mut timers = self.timers.borrow_mut();
            let Some(entry) = timers.first_entry() else {
                return;
            };
            if entry.key().0 > now {
                return;
            }
            let waker = entry.remove();
            drop(timers);
            waker.wake();
        }
    }

    /// Dispatches every completion the kernel has posted.
    fn reap(&self) -> io::Result<()> {
        let mut reaped = self.reaped.borrow_mut();
        {
            let mut ring = self.ring.borrow_mut();
            reaped.extend(ring.completion().map(|cqe| (cqe.user_data(), cqe.result())));
        }
        for (token, result) in reaped.drain(..) {
            match token {
                WAKE_TOKEN => {
                    self.wake_armed.set(false);
                    self.arm_wake()?;
                }
                CANCEL_TOKEN => {}
                token => self.complete(token as usize, result),
            }
        }
        Ok(())
    }

    fn complete(&self, op: usize, result: i32) {
        let mut ops = self.ops.borrow_mut();
        let Some(state) = ops.get_mut(op) else {
            tracing::error!(op, result, "io_uring completion for an unknown operation");
            return;
        };
        match state {
            OpState::Waiting(waker) => {
                let waker = waker.take();
                *state = OpState::Done(result);
                drop(ops);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            OpState::Orphaned { .. } => {
                let memory = ops.remove(op);
                drop(ops);
                drop(memory);
            }
            OpState::Done(_) => {
                tracing::error!(op, result, "io_uring operation completed twice");
            }
        }
    }

    /// Submits what is queued and waits for a completion, a wake-up or the nearest timer.
    fn park(&self) -> io::Result<()> {
        let timeout = self
            .timers
            .borrow()
            .keys()
            .next()
            .map(|(at, _)| at.saturating_duration_since(Instant::now()));
        let ring = self.ring.borrow();
        let result = if timeout == Some(Duration::ZERO) || !self.shared.prepare_park() {
            ring.submit()
        } else if let Some(timeout) = timeout {
            let timespec = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&timespec);
            ring.submitter().submit_with_args(1, &args)
        } else {
            ring.submit_and_wait(1)
        };
        self.shared.unpark();
        match result {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Drops every task, cancels every operation and waits (bounded) for their completions.
    fn shut_down(&self) {
        self.stopping.set(true);
        // Dropping a task drops its pending operations, which orphans and cancels them.
        let tasks: Vec<Task> = self.tasks.borrow_mut().drain().collect();
        drop(tasks);
        if self.wake_armed.get() {
            let cancel = opcode::AsyncCancel::new(WAKE_TOKEN)
                .build()
                .user_data(CANCEL_TOKEN);
            let _ = self.push(&cancel);
        }
        let deadline = Instant::now() + DRAIN_MAX;
        while self.ops.borrow().len > 0 || self.wake_armed.get() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let timespec = types::Timespec::from(deadline - now);
            let args = types::SubmitArgs::new().timespec(&timespec);
            let waited = self.ring.borrow().submitter().submit_with_args(1, &args);
            if let Err(error) = waited {
                if error.raw_os_error() != Some(libc::ETIME)
                    && error.raw_os_error() != Some(libc::EINTR)
                {
                    break;
                }
            }
            if self.reap().is_err() {
                break;
            }
        }
        let left = self.ops.borrow().len;
        if left > 0 || self.wake_armed.get() {
            tracing::warn!(
                operations = left,
                "io_uring operations still in flight at shutdown; their buffers are leaked"
            );
            for state in self.ops.borrow_mut().drain() {
                std::mem::forget(state);
            }
        }
    }
}

/// An io_uring runtime: build it on the thread that will run it, then [`Runtime::block_on`].
pub(crate) struct Runtime {
    driver: Rc<Driver>,
}

impl Runtime {
    /// Sets up a ring (single issuer, deferred task work where the kernel has them) and the
    /// eventfd that wakes it. Fails where io_uring is unavailable or too old (it needs the
    /// enter timeout argument, Linux 5.11).
    pub fn new() -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(RING_ENTRIES * 2)
            .build(RING_ENTRIES)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(RING_ENTRIES * 2)
                    .build(RING_ENTRIES)
            })?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without IORING_FEAT_EXT_ARG (Linux < 5.11)",
            ));
        }
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let eventfd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if eventfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `eventfd` is a descriptor just returned to us and owned by nothing else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(eventfd) };
        let driver = Rc::new(Driver {
            ring: RefCell::new(ring),
            ops: RefCell::new(Slots::new()),
            tasks: RefCell::new(Slots::new()),
            timers: RefCell::new(BTreeMap::new()),
            next_timer: Cell::new(0),
            shared: Arc::new(Doorbell::new(EventFd(eventfd))),
            wake_buf: Box::new(UnsafeCell::new(0)),
            wake_armed: Cell::new(false),
            stopping: Cell::new(false),
            reaped: RefCell::new(Vec::new()),
        });
        driver.arm_wake()?;
        Ok(Self { driver })
    }

    /// Runs `main` and every task it spawns until `main` completes; then drops the remaining
    /// tasks and cancels their operations.
    pub fn block_on<F>(self, main: F) -> io::Result<F::Output>
    where
        F: Future + 'static,
    {
        DRIVER.with(|current| *current.borrow_mut() = Some(Rc::clone(&self.driver)));
        let driver = &self.driver;
        let output = Rc::new(RefCell::new(None));
        let slot = Rc::clone(&output);
        driver.spawn(Box::pin(async move {
            let value = main.await;
            *slot.borrow_mut() = Some(value);
        }));
        let result = loop {
            driver.fire_timers();
            if let Err(error) = driver.reap() {
                break Err(error);
            }
            driver.run_ready();
            if output.borrow().is_some() {
                break Ok(());
            }
            if driver.shared.is_empty() {
                if let Err(error) = driver.park() {
                    break Err(error);
                }
            } else if !driver.ring.borrow_mut().submission().is_empty() {
                // More tasks are ready: hand the kernel what this turn queued without waiting.
                if let Err(error) = driver.ring.borrow().submit() {
                    break Err(error);
                }
            }
        };
        driver.shut_down();
        DRIVER.with(|current| *current.borrow_mut() = None);
        result?;
        let value = output.borrow_mut().take();
        value.ok_or_else(|| io::Error::other("io_uring runtime lost its main task"))
    }
}

/// Spawns a task on the calling thread's io_uring runtime.
///
/// # Panics
///
/// Outside [`Runtime::block_on`].
pub(crate) fn spawn(future: impl Future<Output = ()> + 'static) {
    driver().spawn(Box::pin(future));
}

/// Completes at `deadline` (at once if it has passed).
pub(crate) struct Sleep {
    deadline: Instant,
    key: Option<(Instant, u64)>,
}

pub(crate) fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        key: None,
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let driver = driver();
        if Instant::now() >= self.deadline {
            if let Some(key) = self.key.take() {
                driver.timers.borrow_mut().remove(&key);
            }
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(key) => key,
            None => {
                let sequence = driver.next_timer.get();
                driver.next_timer.set(sequence + 1);
                let key = (self.deadline, sequence);
                self.key = Some(key);
                key
            }
        };
        driver.timers.borrow_mut().insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            if let Some(driver) = DRIVER.with(|driver| driver.borrow().clone()) {
                driver.timers.borrow_mut().remove(&key);
            }
        }
    }
}

/// One io_uring operation: owns the memory its entry names (`T`) until the completion arrives.
struct Op<T: Unpin + 'static> {
    op: usize,
    /// `None` once the result has been handed out.
    memory: Option<T>,
}

impl<T: Unpin + 'static> Op<T> {
    /// Queues the entry `build` makes from `memory`.
    ///
    /// # Safety
    ///
    /// The entry may name only memory that `memory` owns and that does not move when `memory`
    /// does (heap allocations: a `Vec`'s buffer, a `Box`'s contents), and descriptors that
    /// `memory` keeps open.
    unsafe fn submit(mut memory: T, build: impl FnOnce(&mut T) -> squeue::Entry) -> Self {
        let driver = driver();
        let entry = build(&mut memory);
        let op = driver.ops.borrow_mut().insert(OpState::Waiting(None));
        let pushed = driver.push(&entry.user_data(op as u64));
        if let Err(error) = pushed {
            let code = error.raw_os_error().unwrap_or(libc::EAGAIN);
            if let Some(state) = driver.ops.borrow_mut().get_mut(op) {
                *state = OpState::Done(-code);
            }
        }
        Self {
            op,
            memory: Some(memory),
        }
    }
}

impl<T: Unpin + 'static> Future for Op<T> {
    /// The kernel's result (`-errno` on failure) and the memory back.
    type Output = (i32, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(i32, T)> {
        let driver = driver();
        let mut ops = driver.ops.borrow_mut();
        match ops.get_mut(self.op) {
            Some(OpState::Done(result)) => {
                let result = *result;
                ops.remove(self.op);
                drop(ops);
                match self.memory.take() {
                    Some(memory) => Poll::Ready((result, memory)),
                    None => Poll::Pending, // polled after completion: never resolves twice
                }
            }
            Some(OpState::Waiting(waker)) => {
                match waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    waker => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Some(OpState::Orphaned { .. }) | None => {
                // Only a dropped future orphans its operation, and only a completion it took
                // (memory given back) frees it: a future still holding its memory must find
                // its operation waiting or done, or it would wait forever.
                assert!(
                    self.memory.is_none(),
                    "io_uring operation {} lost its state while its future waits",
                    self.op
                );
                Poll::Pending
            }
        }
    }
}

impl<T: Unpin + 'static> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(memory) = self.memory.take() else {
            return;
        };
        let Some(driver) = DRIVER.with(|driver| driver.borrow().clone()) else {
            // No runtime on this thread any more: the kernel may still use the memory.
            std::mem::forget(memory);
            return;
        };
        let mut ops = driver.ops.borrow_mut();
        match ops.get_mut(self.op) {
            Some(state @ OpState::Waiting(_)) => {
                *state = OpState::Orphaned {
                    _memory: Box::new(memory),
                };
                drop(ops);
                let cancel = opcode::AsyncCancel::new(self.op as u64)
                    .build()
                    .user_data(CANCEL_TOKEN);
                if let Err(error) = driver.push(&cancel) {
                    tracing::warn!(%error, "io_uring cancel not queued; the operation runs on");
                }
            }
            Some(OpState::Done(_)) => {
                ops.remove(self.op);
            }
            Some(OpState::Orphaned { .. }) | None => {}
        }
    }
}

fn os_result(result: i32) -> io::Result<u32> {
    u32::try_from(result).map_err(|_| io::Error::from_raw_os_error(-result))
}

/// A listening TCP socket whose accepts go through the ring.
pub(crate) struct TcpListener {
    socket: Rc<std::net::TcpListener>,
}

impl TcpListener {
    pub fn from_std(socket: std::net::TcpListener) -> Self {
        Self {
            socket: Rc::new(socket),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let socket = Rc::clone(&self.socket);
        let fd = socket.as_raw_fd();
        // SAFETY: no memory is named (null address); `socket` keeps the descriptor open.
        let op = unsafe {
            Op::submit(socket, |_| {
                opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
            })
        };
        let (result, _) = op.await;
        let accepted = os_result(result)? as RawFd;
        // SAFETY: the kernel returned a new descriptor for the accepted connection; nothing
        // else owns it.
        let stream = unsafe { std::net::TcpStream::from_raw_fd(accepted) };
        let peer = stream.peer_addr()?;
        Ok((TcpStream::from_std(stream), peer))
    }
}

/// A connected TCP socket whose reads and writes go through the ring.
#[derive(Clone)]
pub(crate) struct TcpStream {
    socket: Rc<std::net::TcpStream>,
}

impl TcpStream {
    fn from_std(socket: std::net::TcpStream) -> Self {
        Self {
            socket: Rc::new(socket),
        }
    }

    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        let fd = socket.as_raw_fd();
        let address = Box::new(socket2::SockAddr::from(addr));
        // SAFETY: the entry names the boxed address (heap, owned by the op's memory) and the
        // socket, which the op's memory owns and so keeps open.
        let op = unsafe {
            Op::submit((socket, address), |(_, address)| {
                opcode::Connect::new(types::Fd(fd), address.as_ptr().cast(), address.len()).build()
            })
        };
        let (result, (socket, _)) = op.await;
        os_result(result)?;
        Ok(Self::from_std(socket.into()))
    }

    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.socket.set_nodelay(nodelay)
    }

    /// Shuts both directions down, which completes the socket's pending operations.
    pub fn shutdown(&self) -> io::Result<()> {
        self.socket.shutdown(std::net::Shutdown::Both)
    }

    /// One receive into `buf`'s spare capacity; returns how many bytes arrived (0: end of
    /// stream), with the buffer grown by that many.
    pub async fn recv(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let filled = buf.len();
        let room = u32::try_from(buf.capacity() - filled).unwrap_or(u32::MAX);
        let fd = self.socket.as_raw_fd();
        // SAFETY: the entry names `room` bytes of the vector's spare capacity (heap, owned by
        // the op's memory) and the socket, kept open by the `Rc` in the op's memory.
        let op = unsafe {
            Op::submit((buf, Rc::clone(&self.socket)), |(buf, _)| {
                let start = buf.as_mut_ptr().add(filled);
                opcode::Recv::new(types::Fd(fd), start, room).build()
            })
        };
        let (result, (mut buf, _)) = op.await;
        match os_result(result) {
            Ok(received) => {
                // SAFETY: the kernel initialised `received` bytes (≤ `room`) after `filled`.
                unsafe { buf.set_len(filled + received as usize) };
                (Ok(received as usize), buf)
            }
            Err(error) => (Err(error), buf),
        }
    }

    /// One receive straight from the socket into `buf`'s spare capacity (which must not be
    /// empty), without waiting: `Ok(None)` when nothing is there yet, `Ok(Some(0))` at end of
    /// stream.
    pub fn try_recv(&self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let filled = buf.len();
        let room = buf.capacity() - filled;
        debug_assert!(
            room > 0,
            "try_recv into a full buffer would read as end of stream"
        );
        let fd = self.socket.as_raw_fd();
        loop {
            // SAFETY: the pointer names `room` bytes of the vector's spare capacity, which the
            // call may write and nothing else touches during it; `fd` is open (owned by
            // `self.socket`).
            let result = unsafe {
                libc::recv(
                    fd,
                    buf.as_mut_ptr().add(filled).cast(),
                    room,
                    libc::MSG_DONTWAIT,
                )
            };
            match usize::try_from(result) {
                Ok(received) => {
                    // SAFETY: the kernel initialised `received` bytes (≤ `room`) after `filled`.
                    unsafe { buf.set_len(filled + received) };
                    return Ok(Some(received));
                }
                Err(_) => {
                    let error = io::Error::last_os_error();
                    match error.kind() {
                        io::ErrorKind::WouldBlock => return Ok(None),
                        io::ErrorKind::Interrupted => continue,
                        _ => return Err(error),
                    }
                }
            }
        }
    }

    /// Sends every byte of `buf`: directly while the socket takes them without blocking, then
    /// through the ring.
    pub async fn send_all(&self, buf: Vec<u8>, written: &Cell<u64>) -> (io::Result<()>, Vec<u8>) {
        let fd = self.socket.as_raw_fd();
        let mut buf = buf;
        let mut sent = 0;
        // Try the socket first: it nearly always has room, and a send that completes at once
        // costs one syscall and no completion to reap. Only what would block goes to the ring.
        while sent < buf.len() {
            let rest = &buf[sent..];
            // SAFETY: `rest` is `rest.len()` initialised bytes, alive for the call; `fd` is open
            // (owned by `self.socket`).
            let result = unsafe {
                libc::send(
                    fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            match usize::try_from(result) {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => {
                    sent += n;
                    written.set(written.get() + n as u64);
                }
                Err(_) => {
                    let error = io::Error::last_os_error();
                    match error.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => return (Err(error), buf),
                    }
                }
            }
        }
        while sent < buf.len() {
            let len = u32::try_from(buf.len() - sent).unwrap_or(u32::MAX);
            // SAFETY: the entry names `len` initialised bytes of the vector from `sent` on
            // (heap, owned by the op's memory) and the socket, kept open by the op's `Rc`.
            let op = unsafe {
                Op::submit((buf, Rc::clone(&self.socket)), |(buf, _)| {
                    let start = buf.as_ptr().add(sent);
                    opcode::Send::new(types::Fd(fd), start, len)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                })
            };
            let (result, (returned, _)) = op.await;
            buf = returned;
            match os_result(result) {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => {
                    sent += n as usize;
                    written.set(written.get() + u64::from(n));
                }
                Err(error) => return (Err(error), buf),
            }
        }
        (Ok(()), buf)
    }
}

#[cfg(test)]
#[path = "uring_runtime_tests.rs"]
mod tests;
