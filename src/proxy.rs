//! A fault-injecting TCP proxy for tests: cuts, stalls, delays, reorders and corrupts real connections.
//!
//! Kernel netem is not available where the replication tests run, so they put a [`FaultProxy`]
//! between two real nodes on loopback and break the connection from the outside: [`cut`] it,
//! [`set_refuse`] new connections, [`set_stall`] the flow, [`set_delay`] every chunk,
//! [`set_reorder`] chunks pairwise, [`corrupt`] bytes, or [`set_target`] to follow a node that
//! restarted on another port. Faults apply to every connection of the proxy.
//!
//! # Design
//!
//! Only std: sockets, threads, one mutex and one condition variable, atomics for counters.
//!
//! - **Accept thread.** The listener on `127.0.0.1:0` is non-blocking and polled every 10 ms, so
//!   shutdown never depends on waking a blocked `accept`. Each accepted connection gets a
//!   connection thread, which the accept thread joins when it finishes (and all of them on
//!   shutdown).
//! - **Connection threads.** The connection thread connects to the target (timeout 500 ms),
//!   registers the connection as open, spawns the pump for [`Direction::FromTarget`] and runs the
//!   pump for [`Direction::ToTarget`] itself; when both pumps have ended it deregisters the
//!   connection, which closes its sockets.
//! - **Pumps.** A pump reads chunks of at most 64 KiB from one socket into a FIFO queue, stamping
//!   each with the time it is due (read time plus the delay), and writes due chunks to the other
//!   socket, applying corruption at write time. One thread writes each direction, so order is
//!   kept. The queue holds at most 1 MiB: when it is full, or while the proxy is stalled, the pump
//!   stops reading and TCP backpressure reaches the sender. Memory per connection is therefore
//!   bounded by two queues plus a few chunks. Reads and writes carry timeouts and the pumps wait on
//!   the condition variable, so they never spin and notice faults and shutdown promptly.
//! - **Control.** Every setting lives in one mutex-protected state that the pumps consult between
//!   chunks; a chunk being written when a setting changes is finished first. Changes notify the
//!   condition variable, which wakes stalled and delayed pumps.
//! - **Close.** When a side sends end of stream, the pump delivers what it holds and shuts down
//!   the write half of the other side; the other direction keeps flowing (half-close). An I/O
//!   error in either direction, [`cut`] or drop shuts down both sockets of the connection, which
//!   wakes both pumps; a cut connection ends with end of stream (FIN), not a reset.
//! - **Shutdown.** Dropping the proxy closes every connection, stops the accept thread, closes the
//!   listener and joins every thread; it returns within a few tens of milliseconds (at most about
//!   half a second if a connection to an unresponsive target is still being made).
//!
//! Failures of single connections end that connection and are reported with `tracing::debug!`;
//! the proxy never prints.
//!
//! [`cut`]: FaultProxy::cut
//! [`set_refuse`]: FaultProxy::set_refuse
//! [`set_stall`]: FaultProxy::set_stall
//! [`set_delay`]: FaultProxy::set_delay
//! [`set_reorder`]: FaultProxy::set_reorder
//! [`corrupt`]: FaultProxy::corrupt
//! [`set_target`]: FaultProxy::set_target
//!
//! # Example
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{TcpListener, TcpStream};
//! use std::time::Duration;
//!
//! use pagemesh_tools::proxy::FaultProxy;
//!
//! # fn main() -> std::io::Result<()> {
//! // A one-connection echo server stands in for a node.
//! let server = TcpListener::bind("127.0.0.1:0")?;
//! let target = server.local_addr()?;
//! let echo = std::thread::spawn(move || -> std::io::Result<u64> {
//!     let (mut stream, _) = server.accept()?;
//!     let mut reader = stream.try_clone()?;
//!     std::io::copy(&mut reader, &mut stream)
//! });
//!
//! let proxy = FaultProxy::start(target)?;
//! let mut client = TcpStream::connect(proxy.addr())?;
//! client.set_read_timeout(Some(Duration::from_secs(10)))?;
//! client.write_all(b"ping")?;
//! let mut reply = [0; 4];
//! client.read_exact(&mut reply)?;
//! assert_eq!(&reply, b"ping");
//!
//! // A cut closes both sockets of every open connection: the client reads end of stream,
//! // and so does the server, which ends the echo thread.
//! proxy.cut();
//! assert_eq!(client.read(&mut reply)?, 0);
//! assert_eq!(proxy.stats().cuts, 1);
//! assert_eq!(echo.join().expect("echo thread panicked")?, 4);
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Largest chunk a pump reads at once.
const CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Largest number of bytes a pump queues before it stops reading (the delay queue's bound).
const QUEUE_BYTES_MAX: usize = 1024 * 1024;
/// How long the accept thread sleeps when no connection is waiting.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// Longest a pump blocks in a read, write or wait before it looks at its state again. Cuts and
/// shutdown wake pumps at once; this only bounds the damage if a wake-up were ever missed.
const PUMP_POLL: Duration = Duration::from_millis(100);
/// How long the connection thread waits for the target to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long reorder holds a chunk waiting for the next one before delivering it alone.
const REORDER_HOLD: Duration = Duration::from_millis(100);
/// Longest delay [`FaultProxy::set_delay`] accepts; longer ones are clamped to it.
const DELAY_MAX: Duration = Duration::from_secs(3600);

/// A fault-injecting TCP proxy listening on `127.0.0.1`; see the [module docs](self).
///
/// It is `Send + Sync`: one test thread can inject faults while others drive traffic. Dropping it
/// closes every connection and the listener and joins all of its threads.
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept_thread: Option<JoinHandle<()>>,
}

const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<FaultProxy>();
};

/// The way bytes travel through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client that connected to the proxy, to the target.
    ToTarget,
    /// From the target back to the client.
    FromTarget,
}

/// Counters of a [`FaultProxy`] since it started, from [`FaultProxy::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted from clients, including refused ones.
    pub accepted: u64,
    /// Connections closed at once because [`FaultProxy::set_refuse`] was on.
    pub refused: u64,
    /// Connections open now: connected to the target and not yet closed or cut.
    pub open: u64,
    /// Connections closed by [`FaultProxy::cut`].
    pub cuts: u64,
    /// Bytes written to targets.
    pub bytes_to_target: u64,
    /// Bytes written back to clients.
    pub bytes_from_target: u64,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0`; each accepted connection opens one to `target`.
    ///
    /// If the target cannot be reached, the client's connection is closed. No faults are on at
    /// start.
    ///
    /// # Errors
    ///
    /// Binding the listener or spawning the accept thread failed.
    pub fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(target));
        let accept_thread = thread::Builder::new()
            .name("pagemesh-proxy-accept".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || accept_loop(&shared, listener)
            })?;
        Ok(Self {
            shared,
            addr,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends connections accepted from now on to `target` (say, a node restarted on another
    /// port). Open connections keep their target.
    pub fn set_target(&self, target: SocketAddr) {
        self.shared.lock().target = target;
    }

    /// Closes every open connection now: both sockets, both directions, so the client and the
    /// target each read end of stream (or an error if they write). Data still held by the proxy
    /// is dropped. New connections are still accepted.
    pub fn cut(&self) {
        let mut state = self.shared.lock();
        let conns = std::mem::take(&mut state.conns);
        for conn in conns.values() {
            conn.close(&state);
        }
        self.shared
            .cuts
            .fetch_add(conns.len() as u64, Ordering::Relaxed);
        self.shared.changed.notify_all();
    }

    /// While `refuse` is true, new connections are accepted and closed at once, without
    /// connecting to the target (the client reads end of stream or a reset). Open connections are
    /// not affected.
    pub fn set_refuse(&self, refuse: bool) {
        self.shared.lock().refuse = refuse;
    }

    /// While `stall` is true, nothing is forwarded in either direction: connections stay open,
    /// the proxy stops reading, and TCP backpressure holds the senders. Data the proxy read
    /// after this call returns is not delivered until the stall ends (a chunk already being
    /// written is finished). `false` resumes and delivers everything held, in order.
    pub fn set_stall(&self, stall: bool) {
        self.shared.lock().stall = stall;
        self.shared.changed.notify_all();
    }

    /// Delivers every chunk read from now on no earlier than `delay` after the proxy read it,
    /// per direction, keeping order. Zero turns the delay off. A chunk's due time is fixed when
    /// it is read. Each direction queues at most 1 MiB, so a delay also caps throughput to about
    /// 1 MiB per `delay`. Delays longer than an hour are clamped to an hour.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay.min(DELAY_MAX);
        self.shared.changed.notify_all();
    }

    /// While `reorder` is true, consecutive chunks read in a direction are delivered pairwise
    /// swapped (second before first), like a buggy middlebox: no byte is lost or added, but the
    /// stream is damaged and the receiver must detect it. A chunk is what one read returned, so
    /// boundaries follow the sender's writes only loosely. A chunk with no successor within
    /// 100 ms, at end of stream or when reorder is turned off is delivered alone, so a lone
    /// request is late rather than wedged.
    pub fn set_reorder(&self, reorder: bool) {
        self.shared.lock().reorder = reorder;
        self.shared.changed.notify_all();
    }

    /// Flips one bit in each of the next `bytes` bytes forwarded in `direction`, on whichever
    /// connection forwards them. Calls add up.
    pub fn corrupt(&self, direction: Direction, bytes: usize) {
        let budget = self.shared.corrupt_budget(direction);
        // The closure always returns Some, so fetch_update cannot fail.
        let _ = budget.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
            Some(left.saturating_add(bytes))
        });
    }

    /// The proxy's counters now.
    pub fn stats(&self) -> ProxyStats {
        let open = self.shared.lock().conns.len() as u64;
        let shared = &self.shared;
        ProxyStats {
            accepted: shared.accepted.load(Ordering::Relaxed),
            refused: shared.refused.load(Ordering::Relaxed),
            open,
            cuts: shared.cuts.load(Ordering::Relaxed),
            bytes_to_target: shared.bytes_to_target.load(Ordering::Relaxed),
            bytes_from_target: shared.bytes_from_target.load(Ordering::Relaxed),
        }
    }

    /// Waits until at least `open` connections are open (see [`ProxyStats::open`]); true if
    /// that happened within `timeout`. A client's `connect` returns before the proxy has
    /// accepted the connection and reached the target, so tests call this before a [`cut`].
    ///
    /// [`cut`]: FaultProxy::cut
    pub fn wait_for_connections(&self, open: u64, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.shared.lock();
        loop {
            if state.conns.len() as u64 >= open {
                return true;
            }
            let wait = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return false,
                },
                None => PUMP_POLL,
            };
            state = self.shared.wait(state, wait);
        }
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.shutdown = true;
            for conn in state.conns.values() {
                conn.close(&state);
            }
            state.conns.clear();
            self.shared.changed.notify_all();
        }
        if let Some(accept_thread) = self.accept_thread.take() {
            if accept_thread.join().is_err() {
                tracing::debug!(addr = %self.addr, "proxy: accept thread panicked");
            }
        }
    }
}

/// What the proxy's threads share.
struct Shared {
    state: Mutex<State>,
    /// Notified whenever `state` changes in a way a waiting thread may care about.
    changed: Condvar,
    accepted: AtomicU64,
    refused: AtomicU64,
    cuts: AtomicU64,
    bytes_to_target: AtomicU64,
    bytes_from_target: AtomicU64,
    corrupt_to_target: AtomicUsize,
    corrupt_from_target: AtomicUsize,
}

/// Settings and open connections, behind [`Shared::state`].
struct State {
    target: SocketAddr,
    refuse: bool,
    stall: bool,
    delay: Duration,
    reorder: bool,
    /// Set once, by drop: no connection registers afterwards.
    shutdown: bool,
    /// Open connections by id; [`ProxyStats::open`] is their count.
    conns: HashMap<u64, Arc<Conn>>,
    conn_id_next: u64,
}

impl State {
    fn control(&self) -> Control {
        Control {
            delay: self.delay,
            reorder: self.reorder,
        }
    }
}

impl Shared {
    fn new(target: SocketAddr) -> Self {
        Self {
            state: Mutex::new(State {
                target,
                refuse: false,
                stall: false,
                delay: Duration::ZERO,
                reorder: false,
                shutdown: false,
                conns: HashMap::new(),
                conn_id_next: 0,
            }),
            changed: Condvar::new(),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            bytes_to_target: AtomicU64::new(0),
            bytes_from_target: AtomicU64::new(0),
            corrupt_to_target: AtomicUsize::new(0),
            corrupt_from_target: AtomicUsize::new(0),
        }
    }

    /// Locks the state. A panicking thread cannot leave it inconsistent (every update is a
    /// single assignment or map operation), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn control(&self) -> Control {
        self.lock().control()
    }

    /// Waits for a change notification, at most `timeout`.
    fn wait<'a>(&self, state: MutexGuard<'a, State>, timeout: Duration) -> MutexGuard<'a, State> {
        match self.changed.wait_timeout(state, timeout) {
            Ok((state, _)) => state,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    /// Closes `conn` (both sockets) and wakes its pumps; it stays registered until its
    /// connection thread ends.
    fn close(&self, conn: &Conn) {
        let state = self.lock();
        conn.close(&state);
        self.changed.notify_all();
    }

    fn corrupt_budget(&self, direction: Direction) -> &AtomicUsize {
        match direction {
            Direction::ToTarget => &self.corrupt_to_target,
            Direction::FromTarget => &self.corrupt_from_target,
        }
    }

    fn bytes_forwarded(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::ToTarget => &self.bytes_to_target,
            Direction::FromTarget => &self.bytes_from_target,
        }
    }
}

/// One proxied connection: the two sockets, kept to shut them down from outside the pumps.
struct Conn {
    id: u64,
    client: TcpStream,
    target: TcpStream,
    /// Set, only while the state lock is held, when the connection is cut or failed; pumps
    /// check it under the same lock before they wait, so no wake-up is lost.
    closed: AtomicBool,
}

impl Conn {
    /// Shuts down both sockets in both directions, waking pumps blocked in reads or writes. The
    /// `&State` proves the caller holds the state lock.
    fn close(&self, _locked: &State) {
        self.closed.store(true, Ordering::Release);
        // Either socket may already be disconnected, which is what we want anyway.
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.target.shutdown(Shutdown::Both);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Accepts until shutdown, then closes the listener and joins every connection thread.
fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    let mut conn_threads: Vec<JoinHandle<()>> = Vec::new();
    while !shared.lock().shutdown {
        join_finished(&mut conn_threads);
        match listener.accept() {
            Ok((client, peer)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                if let Some(thread) = admit(shared, client, peer) {
                    conn_threads.push(thread);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of file descriptors, say: back off and keep serving.
                tracing::debug!(error = %e, "proxy: accept failed");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
    drop(listener);
    for thread in conn_threads {
        if thread.join().is_err() {
            tracing::debug!("proxy: connection thread panicked");
        }
    }
}

/// Joins the connection threads that have ended, so the list stays as long as the open set.
fn join_finished(threads: &mut Vec<JoinHandle<()>>) {
    let mut index = 0;
    while index < threads.len() {
        if threads[index].is_finished() {
            if threads.swap_remove(index).join().is_err() {
                tracing::debug!("proxy: connection thread panicked");
            }
        } else {
            index += 1;
        }
    }
}

/// Refuses `client` or starts its connection thread.
fn admit(shared: &Arc<Shared>, client: TcpStream, peer: SocketAddr) -> Option<JoinHandle<()>> {
    let (refuse, target) = {
        let state = shared.lock();
        (state.refuse, state.target)
    };
    if refuse {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, "proxy: refused connection");
        return None;
    }
    let spawned = thread::Builder::new()
        .name("pagemesh-proxy-conn".into())
        .spawn({
            let shared = Arc::clone(shared);
            move || run_connection(&shared, client, peer, target)
        });
    match spawned {
        Ok(thread) => Some(thread),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "proxy: spawning a connection thread failed");
            None
        }
    }
}

/// Connects to the target, registers the connection, runs both pumps and deregisters.
fn run_connection(
    shared: &Arc<Shared>,
    client: TcpStream,
    peer: SocketAddr,
    target_addr: SocketAddr,
) {
    let target = match TcpStream::connect_timeout(&target_addr, CONNECT_TIMEOUT) {
        Ok(target) => target,
        Err(e) => {
            tracing::debug!(%peer, target = %target_addr, error = %e, "proxy: connecting to target failed");
            return;
        }
    };
    let [to_target, from_target] = match pumps(shared, client, target) {
        Ok(Some(pumps)) => pumps,
        Ok(None) => return, // Shut down meanwhile; dropping the sockets closes them.
        Err(e) => {
            tracing::debug!(%peer, error = %e, "proxy: preparing sockets failed");
            return;
        }
    };
    let conn = Arc::clone(&to_target.conn);
    let spawned = thread::Builder::new()
        .name("pagemesh-proxy-pump".into())
        .spawn(move || from_target.run());
    match spawned {
        Ok(from_target) => {
            to_target.run();
            if from_target.join().is_err() {
                tracing::debug!(%peer, "proxy: pump thread panicked");
            }
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "proxy: spawning a pump thread failed");
            shared.close(&conn);
        }
    }
    let mut state = shared.lock();
    state.conns.remove(&conn.id);
    shared.changed.notify_all();
}

/// Configures both sockets, registers the connection and builds its two pumps; `None` if the
/// proxy is shutting down.
fn pumps(
    shared: &Arc<Shared>,
    client: TcpStream,
    target: TcpStream,
) -> io::Result<Option<[Pump; 2]>> {
    // Accepted sockets do not inherit the listener's non-blocking mode on Linux, but be sure.
    client.set_nonblocking(false)?;
    for socket in [&client, &target] {
        socket.set_nodelay(true)?;
        socket.set_write_timeout(Some(PUMP_POLL))?;
    }
    let (client_out, target_out) = (client.try_clone()?, target.try_clone()?);
    let (client_in, target_in) = (client.try_clone()?, target.try_clone()?);
    let conn = {
        let mut state = shared.lock();
        if state.shutdown {
            return Ok(None);
        }
        let id = state.conn_id_next;
        state.conn_id_next += 1;
        let conn = Arc::new(Conn {
            id,
            client,
            target,
            closed: AtomicBool::new(false),
        });
        state.conns.insert(id, Arc::clone(&conn));
        shared.changed.notify_all();
        conn
    };
    Ok(Some([
        Pump::new(shared, &conn, Direction::ToTarget, client_in, target_out),
        Pump::new(shared, &conn, Direction::FromTarget, target_in, client_out),
    ]))
}

/// A chunk read by a pump, waiting to be written.
struct Chunk {
    bytes: Vec<u8>,
    read_at: Instant,
    /// Not to be written before this.
    due: Instant,
}

/// The settings a pump reads between chunks.
#[derive(Clone, Copy)]
struct Control {
    delay: Duration,
    reorder: bool,
}

/// Moves one direction of one connection: reads `src`, writes `dst`.
struct Pump {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    direction: Direction,
    src: TcpStream,
    dst: TcpStream,
    /// Chunks read and not yet written, oldest first; at most [`QUEUE_BYTES_MAX`] bytes before
    /// the pump stops reading.
    queue: VecDeque<Chunk>,
    queue_bytes: usize,
    /// Under reorder, a chunk waiting for its successor to be delivered after it.
    held: Option<Chunk>,
    src_eof: bool,
    buf: Box<[u8]>,
}

impl Pump {
    fn new(
        shared: &Arc<Shared>,
        conn: &Arc<Conn>,
        direction: Direction,
        src: TcpStream,
        dst: TcpStream,
    ) -> Self {
        Self {
            shared: Arc::clone(shared),
            conn: Arc::clone(conn),
            direction,
            src,
            dst,
            queue: VecDeque::new(),
            queue_bytes: 0,
            held: None,
            src_eof: false,
            buf: vec![0; CHUNK_BYTES_MAX].into_boxed_slice(),
        }
    }

    /// Pumps until end of stream is forwarded or the connection is closed; on an I/O error it
    /// closes the whole connection, which ends the other direction too.
    fn run(mut self) {
        if let Err(e) = self.pump() {
            if !self.conn.is_closed() {
                tracing::debug!(direction = ?self.direction, error = %e, "proxy: connection failed");
                self.shared.close(&self.conn);
            }
        }
    }

    fn pump(&mut self) -> io::Result<()> {
        loop {
            let Some(control) = self.wait_while_stalled() else {
                return Ok(()); // Closed.
            };
            let now = Instant::now();
            self.release_held(control.reorder, now);
            if self.queue.front().is_some_and(|chunk| chunk.due <= now) {
                self.deliver()?;
            } else if self.src_eof && self.queue.is_empty() {
                return self.dst.shutdown(Shutdown::Write);
            } else if self.src_eof || self.queue_bytes >= QUEUE_BYTES_MAX {
                self.wait_until_due(now);
            } else {
                self.read_chunk()?;
            }
        }
    }

    /// The current settings once the proxy is not stalled; `None` once the connection is closed.
    fn wait_while_stalled(&self) -> Option<Control> {
        let mut state = self.shared.lock();
        loop {
            if self.conn.is_closed() {
                return None;
            }
            if !state.stall {
                return Some(state.control());
            }
            state = self.shared.wait(state, PUMP_POLL);
        }
    }

    /// Sleeps until the oldest queued chunk is due, or a setting changes.
    fn wait_until_due(&self, now: Instant) {
        let wait = self.wake_after(now);
        let state = self.shared.lock();
        if !self.conn.is_closed() {
            drop(self.shared.wait(state, wait));
        }
    }

    /// How long until something is due: the oldest chunk or the held chunk's release; at least
    /// a millisecond, at most [`PUMP_POLL`].
    fn wake_after(&self, now: Instant) -> Duration {
        let mut wake = now + PUMP_POLL;
        if let Some(chunk) = self.queue.front() {
            wake = wake.min(chunk.due);
        }
        if let Some(held) = &self.held {
            wake = wake.min(held.read_at + REORDER_HOLD);
        }
        wake.saturating_duration_since(now)
            .max(Duration::from_millis(1))
    }

    /// Reads one chunk, if one comes before something else is due. The settings are read after
    /// the read returns, so a chunk read after `set_delay` or `set_reorder` returned obeys them.
    fn read_chunk(&mut self) -> io::Result<()> {
        self.src
            .set_read_timeout(Some(self.wake_after(Instant::now())))?;
        match self.src.read(&mut self.buf) {
            Ok(0) => self.src_eof = true,
            Ok(len) => {
                let read_at = Instant::now();
                let control = self.shared.control();
                let chunk = Chunk {
                    bytes: self.buf[..len].to_vec(),
                    read_at,
                    due: read_at + control.delay,
                };
                self.admit(chunk, control.reorder);
            }
            Err(e) if is_transient(&e) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Queues a chunk just read; under reorder, pairs it with the held one, swapped.
    fn admit(&mut self, chunk: Chunk, reorder: bool) {
        if !reorder {
            self.enqueue(chunk);
        } else if let Some(first) = self.held.take() {
            self.enqueue(chunk);
            self.enqueue(first);
        } else {
            self.held = Some(chunk);
        }
    }

    /// Queues the held chunk alone once reorder is off, the source ended, or it waited long
    /// enough for a successor. It is the newest chunk read, so order is otherwise kept.
    fn release_held(&mut self, reorder: bool, now: Instant) {
        let release = self
            .held
            .as_ref()
            .is_some_and(|held| !reorder || self.src_eof || now >= held.read_at + REORDER_HOLD);
        if release {
            if let Some(held) = self.held.take() {
                self.enqueue(held);
            }
        }
    }

    fn enqueue(&mut self, chunk: Chunk) {
        self.queue_bytes += chunk.bytes.len();
        self.queue.push_back(chunk);
    }

    /// Writes the oldest queued chunk, corrupting bytes as requested.
    fn deliver(&mut self) -> io::Result<()> {
        let Some(mut chunk) = self.queue.pop_front() else {
            return Ok(());
        };
        self.queue_bytes -= chunk.bytes.len();
        self.corrupt(&mut chunk.bytes);
        self.write_all(&chunk.bytes)
    }

    /// Flips one bit in each of the first bytes of `bytes`, as many as the direction's
    /// corruption budget allows, and takes them from the budget.
    fn corrupt(&self, bytes: &mut [u8]) {
        let budget = self.shared.corrupt_budget(self.direction);
        let taken = budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                (left > 0).then(|| left.saturating_sub(bytes.len()))
            })
            .map_or(0, |left| left.min(bytes.len()));
        for (index, byte) in bytes[..taken].iter_mut().enumerate() {
            *byte ^= 1 << (index % 8);
        }
    }

    /// Writes all of `bytes` unless the connection is closed meanwhile.
    fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let forwarded = self.shared.bytes_forwarded(self.direction);
        while !bytes.is_empty() && !self.conn.is_closed() {
            match self.dst.write(bytes) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(len) => {
                    forwarded.fetch_add(len as u64, Ordering::Relaxed);
                    bytes = &bytes[len..];
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A timeout or interruption: look at the state and try again.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}
