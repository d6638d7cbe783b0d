//! Sockets: the runtime thread that owns them, on io_uring or epoll, and framed reads and writes.
//!
//! # Runtimes
//!
//! Every socket of a [`crate::Service`] lives on one dedicated runtime thread. With
//! [`TransportKind::Uring`] that is this crate's own io_uring executor (`uring`: it parks in
//! `io_uring_enter`); with [`TransportKind::Epoll`] a tokio current-thread runtime with a
//! `LocalSet`. Both run the same tasks, through `spawn_local`, `sleep` and `timeout`, which
//! dispatch to the runtime of the calling thread; the tasks share state through `tokio::sync`
//! primitives, which work on any executor. [`TransportKind::Auto`] probes io_uring by setting up
//! a ring (a seccomp profile may forbid it, an old kernel may lack what the executor needs) and
//! falls back to epoll with a warning.
//!
//! **Departure from DESIGN.md**: DESIGN names tokio-uring. Measured here, tokio-uring stayed at
//! 0.56–0.71× epoll for one-page frames and 1.3–1.4× its ack latency even with page runs per
//! write and reused buffers, so, as DESIGN.md allows in that case, the transport drives the
//! `io-uring` crate directly (`uring` explains how and why).
//!
//! # Making io_uring pay
//!
//! Used one small operation at a time, tokio-uring reached about half of epoll's throughput here
//! (DESIGN.md, measured facts). So a link never issues an operation per frame: a writer gathers
//! every frame that is due (a PAGES frame per ring run, plus acks and heartbeats) into one buffer
//! and submits one `write_all` for all of it; a reader reads into a large buffer and decodes every
//! frame it holds before reading again. Buffers are owned by the link and reused, so the steady
//! state allocates nothing. Submissions are flushed when the runtime parks, in the enter that
//! waits, so operations issued by several links in one turn share one `io_uring_enter`.
//!
//! An io_uring operation dropped mid-flight is cancelled, but the data it was reading is lost, so
//! reads and writes are not raced in a `select!`: each link has a reader task and a writer task,
//! and a link closes by shutting its socket down, which completes both. A reader whose read was
//! abandoned (a handshake timeout) refuses to go on.
//!
//! # Outside the crate
//!
//! [`spawn_runtime`], [`Listener`], [`Connection`], [`FrameReader`], [`FrameWriter`],
//! [`Shutdown`], [`spawn_local`], [`timeout`] and [`timeout_at`] are public so that a tool (the
//! transport bench, in the tools package) can drive links over the very code the service uses.
//! The io_uring executor's own types stay private behind them.

mod doorbell;
// Submission entries name buffers the kernel fills: each unsafe block says why it is sound.
#[allow(unsafe_code)]
mod uring;

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::proto::frame::{
    check_header, decode, Accept, Decoded, Frame, FRAME_HEADER_LEN, HANDSHAKE_BODY_MAX,
};

/// Which event loop drives the sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransportKind {
    /// io_uring if the kernel allows it, else epoll with a warning. The default.
    #[default]
    Auto,
    /// io_uring (this crate's executor) or fail.
    Uring,
    /// tokio's epoll runtime.
    Epoll,
}

impl std::str::FromStr for TransportKind {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" => Ok(Self::Uring),
            "epoll" => Ok(Self::Epoll),
            other => Err(format!(
                "unknown transport {other:?}: expected auto, uring or epoll"
            )),
        }
    }
}

/// The runtime a thread ended up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// io_uring, driven directly (`uring`).
    Uring,
    /// tokio current-thread (epoll).
    Epoll,
}

/// Whether this process may run an io_uring runtime: the probe [`TransportKind::Auto`] makes
/// (it sets a ring up and drops it). A seccomp profile or an old kernel may forbid it.
pub fn uring_available() -> bool {
    uring::Runtime::new().is_ok()
}

/// Starts a thread named `name` running `main` on the runtime `kind` asks for; returns once the
/// runtime is up (or failed to come up), with the kind chosen and the thread's handle.
pub fn spawn_runtime<F, Fut>(
    name: &str,
    kind: TransportKind,
    main: F,
) -> Result<(RuntimeKind, std::thread::JoinHandle<()>)>
where
    F: FnOnce(RuntimeKind) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let uring = match kind {
                TransportKind::Epoll => None,
                TransportKind::Uring | TransportKind::Auto => match uring::Runtime::new() {
                    Ok(runtime) => Some(runtime),
                    Err(error) if kind == TransportKind::Auto => {
                        tracing::warn!(%error, "io_uring unavailable; sockets run on epoll");
                        None
                    }
                    Err(source) => {
                        let _ = started_tx.send(Err(Error::RuntimeSetup {
                            runtime: "io_uring",
                            source,
                        }));
                        return;
                    }
                },
            };
            if let Some(runtime) = uring {
                let _ = started_tx.send(Ok(RuntimeKind::Uring));
                if let Err(error) = runtime.block_on(main(RuntimeKind::Uring)) {
                    tracing::error!(%error, "io_uring runtime failed; its links are closed");
                }
                return;
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(source) => {
                    let _ = started_tx.send(Err(Error::RuntimeSetup {
                        runtime: "epoll",
                        source,
                    }));
                    return;
                }
            };
            let _ = started_tx.send(Ok(RuntimeKind::Epoll));
            tokio::task::LocalSet::new().block_on(&runtime, main(RuntimeKind::Epoll));
        })
        .map_err(|source| Error::Spawn {
            thread: name.to_string(),
            source,
        })?;
    match started_rx.recv() {
        Ok(started) => started.map(|kind| (kind, handle)),
        Err(_) => Err(Error::ThreadEnded { thread: "network" }),
    }
}

/// A listening socket on either runtime. Its connections come with `TCP_NODELAY` set.
pub struct Listener(ListenerSocket);

enum ListenerSocket {
    Uring(uring::TcpListener),
    Epoll(tokio::net::TcpListener),
}

impl Listener {
    /// Binds `addr` for the runtime `kind`, which must be the calling thread's (one started by
    /// [`spawn_runtime`]).
    pub fn bind(kind: RuntimeKind, addr: SocketAddr) -> Result<Self> {
        let io = |source| Error::Io {
            op: "bind",
            peer: addr,
            source,
        };
        // std binds (with SO_REUSEADDR off by default on Linux for std? std sets it on Unix), then
        // the runtime adopts the socket.
        let std_listener = std::net::TcpListener::bind(addr).map_err(io)?;
        std_listener.set_nonblocking(true).map_err(io)?;
        Ok(Self(match kind {
            RuntimeKind::Uring => ListenerSocket::Uring(uring::TcpListener::from_std(std_listener)),
            RuntimeKind::Epoll => {
                ListenerSocket::Epoll(tokio::net::TcpListener::from_std(std_listener).map_err(io)?)
            }
        }))
    }

    /// The address it listens on (the port chosen, when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.0 {
            ListenerSocket::Uring(listener) => listener.local_addr(),
            ListenerSocket::Epoll(listener) => listener.local_addr(),
        }
    }

    /// The next connection, and its peer's address.
    pub async fn accept(&self) -> io::Result<(Connection, SocketAddr)> {
        match &self.0 {
            ListenerSocket::Uring(listener) => {
                let (stream, addr) = listener.accept().await?;
                stream.set_nodelay(true)?;
                Ok((Connection(ConnectionSocket::Uring(stream)), addr))
            }
            ListenerSocket::Epoll(listener) => {
                let (stream, addr) = listener.accept().await?;
                stream.set_nodelay(true)?;
                Ok((Connection(ConnectionSocket::Epoll(stream)), addr))
            }
        }
    }
}

/// A connected TCP stream on either runtime (`TCP_NODELAY` set). A link uses it through
/// [`Connection::split`].
pub struct Connection(ConnectionSocket);

enum ConnectionSocket {
    Uring(uring::TcpStream),
    Epoll(tokio::net::TcpStream),
}

impl Connection {
    /// Connects to `addr` on the runtime `kind`, which must be the calling thread's (one started
    /// by [`spawn_runtime`]).
    pub async fn connect(kind: RuntimeKind, addr: SocketAddr) -> Result<Self> {
        let io = |source| Error::Io {
            op: "connect",
            peer: addr,
            source,
        };
        Ok(Self(match kind {
            RuntimeKind::Uring => {
                let stream = uring::TcpStream::connect(addr).await.map_err(io)?;
                stream.set_nodelay(true).map_err(io)?;
                ConnectionSocket::Uring(stream)
            }
            RuntimeKind::Epoll => {
                let stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
                stream.set_nodelay(true).map_err(io)?;
                ConnectionSocket::Epoll(stream)
            }
        }))
    }

    /// Splits into a framed reader and a writer, plus a handle that shuts the socket down; `peer`
    /// names the other end in errors. The reader starts out accepting handshake frames only
    /// (see [`FrameReader::expect_control`] and [`FrameReader::expect_bulk`]).
    pub fn split(self, peer: SocketAddr) -> Result<(FrameReader, FrameWriter, Shutdown)> {
        let io = |source| Error::Io {
            op: "split",
            peer,
            source,
        };
        let progress = Rc::new(Progress::default());
        let (read, write, shutdown) = match self.0 {
            ConnectionSocket::Uring(stream) => (
                ReadHalf::Uring(stream.clone()),
                WriteHalf::Uring(stream.clone()),
                Shutdown(ShutdownSocket::Uring(stream)),
            ),
            ConnectionSocket::Epoll(stream) => {
                // A duplicate descriptor, so the link can shut the socket down while its halves
                // are inside reads and writes.
                let std_stream = stream.into_std().map_err(io)?;
                let shutdown = std_stream.try_clone().map_err(io)?;
                let stream = tokio::net::TcpStream::from_std(std_stream).map_err(io)?;
                let (read, write) = stream.into_split();
                (
                    ReadHalf::Epoll(read),
                    WriteHalf::Epoll(write),
                    Shutdown(ShutdownSocket::Epoll(shutdown)),
                )
            }
        };
        Ok((
            FrameReader {
                half: read,
                peer,
                buf: Vec::with_capacity(HANDSHAKE_READ_BUFFER),
                start: 0,
                abandoned: false,
                recv_direct: false,
                accept: Accept::Handshake,
                progress: Rc::clone(&progress),
            },
            FrameWriter {
                half: write,
                peer,
                spare: Vec::new(),
                progress,
            },
            shutdown,
        ))
    }
}

/// Shuts a link's socket down, which completes its pending reads and writes with EOF or an error.
/// That is how a link ends: an io_uring operation must not be dropped mid-flight (see the module
/// docs), so its reads and writes are never raced against a timer.
pub struct Shutdown(ShutdownSocket);

enum ShutdownSocket {
    Uring(uring::TcpStream),
    Epoll(std::net::TcpStream),
}

impl Shutdown {
    /// Shuts both directions down; errors (a socket already closed) are ignored.
    pub fn shutdown(&self) {
        let _ = match &self.0 {
            ShutdownSocket::Uring(stream) => stream.shutdown(),
            ShutdownSocket::Epoll(stream) => stream.shutdown(std::net::Shutdown::Both),
        };
    }
}

/// A new link's read buffer, and the most it holds until the peer has authenticated: room for
/// the largest handshake frame ([`HANDSHAKE_BODY_MAX`] after its header) and some of what a peer
/// pipelines behind it. [`FrameReader::expect_bulk`] grows it once the peer is authenticated.
pub(crate) const HANDSHAKE_READ_BUFFER: usize = 4 << 10;
const _: () = assert!(FRAME_HEADER_LEN + HANDSHAKE_BODY_MAX <= HANDSHAKE_READ_BUFFER / 2);
/// How much an authenticated link's buffer grows by when a read finds it full.
const READ_BUFFER_MIN: usize = 16 << 10;
/// An authenticated link's read buffer: one read takes up to this much.
const READ_BUFFER: usize = 1 << 20;
/// Write buffers larger than this are not kept between batches.
const WRITE_BUFFER_KEPT: usize = 4 << 20;

enum ReadHalf {
    Uring(uring::TcpStream),
    Epoll(tokio::net::tcp::OwnedReadHalf),
}

enum WriteHalf {
    Uring(uring::TcpStream),
    Epoll(tokio::net::tcp::OwnedWriteHalf),
}

/// Bytes a link has moved each way, counted as they move (a frame or a write may take long to
/// complete on a slow link): the timeout tasks tell a slow link from a dead one by them.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes read from the socket.
    pub read: Cell<u64>,
    /// Bytes the socket took from writes.
    pub written: Cell<u64>,
}

impl Progress {
    /// `(read, written)` so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.read.get(), self.written.get())
    }

    /// Whether bytes were read, and written, since the counts in `seen` (which it updates): what
    /// a timeout task tells its link machine before judging it.
    pub fn moved_since(&self, seen: &Cell<(u64, u64)>) -> (bool, bool) {
        let counts = self.counts();
        let before = seen.replace(counts);
        (counts.0 != before.0, counts.1 != before.1)
    }
}

/// Reads frames: one large read, then every frame it completed, without copying bodies.
pub struct FrameReader {
    half: ReadHalf,
    peer: SocketAddr,
    buf: Vec<u8>,
    /// Where the next undecoded byte is.
    start: usize,
    /// A read was dropped mid-flight (its bytes, and the buffer, are gone): the stream is no
    /// longer framed.
    abandoned: bool,
    /// Which frames pass the header check: handshake frames only until [`FrameReader::expect_bulk`]
    /// or [`FrameReader::expect_control`]. The buffer stays at [`HANDSHAKE_READ_BUFFER`] except
    /// with [`Accept::Bulk`].
    accept: Accept,
    /// Shared with the link's writer and timeout task.
    progress: Rc<Progress>,
    /// io_uring only: the last receive brought bytes, so the next one tries the socket directly
    /// before it goes through the ring.
    recv_direct: bool,
}

impl FrameReader {
    /// The link's byte counters (shared with its writer).
    pub fn progress(&self) -> Rc<Progress> {
        Rc::clone(&self.progress)
    }

    /// The next frame, borrowed from the reader's buffer. `Ok(None)` at a clean end of stream
    /// (between frames).
    pub async fn next(&mut self) -> Result<Option<Frame<'_>>> {
        if self.abandoned {
            return Err(Error::Io {
                op: "read",
                peer: self.peer,
                source: io::Error::other("an earlier read on this link was abandoned"),
            });
        }
        let total = loop {
            let available = &self.buf[self.start..];
            if let Some(header) = available.get(..FRAME_HEADER_LEN) {
                let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
                let total = FRAME_HEADER_LEN + body_len as usize;
                // The header alone is checked first (type known, body within that type's limit,
                // reserved bits clear; before authentication, a handshake frame), so a peer
                // cannot make us buffer a body we would refuse.
                check_header(header, self.accept)?;
                if available.len() >= total {
                    break total;
                }
                self.make_room(total);
            } else {
                self.make_room(FRAME_HEADER_LEN);
            }
            if self.read_more().await? == 0 {
                return if self.start == self.buf.len() {
                    Ok(None)
                } else {
                    Err(Error::Io {
                        op: "read",
                        peer: self.peer,
                        source: io::Error::new(io::ErrorKind::UnexpectedEof, "eof inside a frame"),
                    })
                };
            }
        };
        let bytes = &self.buf[self.start..self.start + total];
        self.start += total;
        match decode(bytes)? {
            Decoded::Frame { frame, .. } => Ok(Some(frame)),
            Decoded::Incomplete { .. } => Err(Error::MalformedFrame {
                frame: "header",
                reason: "length disagrees with the decoder",
            }),
        }
    }

    /// The address at the other end.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Lets in control frames of any type, at most [`CONTROL_BODY_MAX`](crate::proto::CONTROL_BODY_MAX)
    /// bytes of body, keeping the small buffer: a source's link from a replica, which sends only
    /// acks and heartbeats. Call once the peer is authenticated, and not before.
    pub fn expect_control(&mut self) {
        self.accept = Accept::Control;
    }

    /// Lets in every frame up to its type's limit and grows the read buffer for bulk traffic
    /// (one read takes up to 1 MiB): a replica's link from its source. Call once the peer is
    /// authenticated, and not before.
    pub fn expect_bulk(&mut self) {
        self.accept = Accept::Bulk;
        if self.buf.capacity() < READ_BUFFER {
            self.buf.reserve(READ_BUFFER - self.buf.len());
        }
    }

    /// Moves undecoded bytes to the front and makes room for a frame of `total` bytes.
    fn make_room(&mut self, total: usize) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() < total {
            self.buf.reserve(total - self.buf.len());
        }
    }

    /// One read into the buffer's spare capacity; returns the bytes read (0: end of stream).
    async fn read_more(&mut self) -> Result<usize> {
        let io = |source| Error::Io {
            op: "read",
            peer: self.peer,
            source,
        };
        if self.buf.len() == self.buf.capacity() {
            // Before bulk traffic a full buffer always holds a whole frame (the largest frame let
            // in fits the small buffer), which is decoded before reading again.
            debug_assert_eq!(self.accept, Accept::Bulk, "small read buffer full");
            self.buf.reserve(READ_BUFFER_MIN);
        }
        let read = match &mut self.half {
            ReadHalf::Uring(stream) => {
                // After a receive that brought bytes, the socket is tried first: more have often
                // arrived while they were decoded (see `uring.rs`, Receives).
                let direct = if std::mem::take(&mut self.recv_direct) {
                    stream.try_recv(&mut self.buf)
                } else {
                    Ok(None)
                };
                let received = match direct {
                    Ok(Some(received)) => Ok(received),
                    Ok(None) => {
                        // The buffer belongs to the operation until it completes; if this
                        // future is dropped first, the reader is left marked abandoned.
                        self.abandoned = true;
                        let (result, buf) = stream.recv(std::mem::take(&mut self.buf)).await;
                        self.buf = buf;
                        self.abandoned = false;
                        self.recv_direct = matches!(result, Ok(received) if received > 0);
                        result
                    }
                    Err(error) => Err(error),
                };
                received.map_err(io)
            }
            ReadHalf::Epoll(half) => {
                use tokio::io::AsyncReadExt;
                half.read_buf(&mut self.buf).await.map_err(io)
            }
        };
        if let Ok(read) = read {
            let progress = &self.progress.read;
            progress.set(progress.get() + read as u64);
            crate::service::metrics::bytes_in(read as u64);
        }
        read
    }
}

/// Writes batches of frames: callers encode into a buffer from [`FrameWriter::buffer`] and hand it
/// back to [`FrameWriter::write`], one write for the whole batch.
pub struct FrameWriter {
    half: WriteHalf,
    peer: SocketAddr,
    spare: Vec<u8>,
    /// Shared with the link's reader and timeout task.
    progress: Rc<Progress>,
}

impl FrameWriter {
    /// An empty buffer to encode a batch into (reused between writes).
    pub fn buffer(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.spare);
        buf.clear();
        buf
    }

    /// Writes every byte of `batch`; the buffer is kept for the next batch.
    pub async fn write(&mut self, batch: Vec<u8>) -> Result<()> {
        if batch.is_empty() {
            self.spare = batch;
            return Ok(());
        }
        let written = &self.progress.written;
        let written_before = written.get();
        let (result, mut batch) = match &mut self.half {
            WriteHalf::Uring(stream) => stream.send_all(batch, written).await,
            WriteHalf::Epoll(half) => {
                use tokio::io::AsyncWriteExt;
                // `write_all`, counting each write as it completes.
                let mut sent = 0;
                let result = loop {
                    if sent == batch.len() {
                        break Ok(());
                    }
                    match half.write(&batch[sent..]).await {
                        Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            sent += n;
                            written.set(written.get() + n as u64);
                        }
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        Err(error) => break Err(error),
                    }
                };
                (result, batch)
            }
        };
        crate::service::metrics::bytes_out(written.get() - written_before);
        // Keep big buffers only while they are in use: a burst must not pin memory forever.
        if batch.capacity() > WRITE_BUFFER_KEPT {
            batch = Vec::new();
        }
        self.spare = batch;
        result.map_err(|source| Error::Io {
            op: "write",
            peer: self.peer,
            source,
        })
    }
}

/// Runs `future` as a task of the calling thread's runtime (either kind). Dropping the handle
/// detaches the task.
///
/// # Panics
///
/// Outside a runtime started by [`spawn_runtime`].
pub fn spawn_local<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
{
    let (done, output) = tokio::sync::oneshot::channel();
    let task = async move {
        let _ = done.send(future.await);
    };
    if uring::is_current() {
        uring::spawn(task);
    } else {
        drop(tokio::task::spawn_local(task));
    }
    JoinHandle { output }
}

/// Waits for a task started by [`spawn_local`]: its output, or [`TaskDropped`].
pub struct JoinHandle<T> {
    output: tokio::sync::oneshot::Receiver<T>,
}

/// A task ended without an output: its runtime shut down first.
#[derive(Debug)]
pub struct TaskDropped;

impl std::fmt::Display for TaskDropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("task dropped before it finished (runtime shut down)")
    }
}

impl std::error::Error for TaskDropped {}

impl<T> Future for JoinHandle<T> {
    type Output = std::result::Result<T, TaskDropped>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.output)
            .poll(cx)
            .map(|output| output.map_err(|_| TaskDropped))
    }
}

/// Completes after `duration`, on the calling thread's runtime (either kind).
pub(crate) async fn sleep(duration: Duration) {
    sleep_until(Instant::now() + duration).await;
}

/// Completes at `deadline`, on the calling thread's runtime (either kind).
pub(crate) async fn sleep_until(deadline: Instant) {
    if uring::is_current() {
        uring::sleep_until(deadline).await;
    } else {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }
}

/// `future` ran past its deadline.
#[derive(Debug)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline passed")
    }
}

impl std::error::Error for Elapsed {}

/// `future`'s output, or [`Elapsed`] if `deadline` comes first (`future` is then dropped), on
/// the calling thread's runtime (either kind).
///
/// A [`FrameReader::next`] dropped at the deadline leaves its reader refusing further reads (on
/// io_uring the bytes in flight are lost; see the module docs), so time a read out only where
/// the link ends with it. To end a link's reads and writes from outside, use
/// [`Shutdown::shutdown`].
pub async fn timeout_at<F: Future>(
    deadline: Instant,
    future: F,
) -> std::result::Result<F::Output, Elapsed> {
    tokio::select! {
        biased;
        output = future => Ok(output),
        () = sleep_until(deadline) => Err(Elapsed),
    }
}

/// `future`'s output, or [`Elapsed`] if it takes longer than `duration` (see [`timeout_at`]).
pub async fn timeout<F: Future>(
    duration: Duration,
    future: F,
) -> std::result::Result<F::Output, Elapsed> {
    timeout_at(Instant::now() + duration, future).await
}

#[cfg(test)]
#[path = "frame_reader_tests.rs"]
mod frame_reader_tests;
