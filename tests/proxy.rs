//! `FaultProxy` on real loopback sockets: bytes pass through intact both ways (with half-close),
//! and every fault does what it says: cut and refuse close connections while new ones still
//! work, stall holds data with backpressure and then delivers it in order, delay delivers
//! everything in order and never early, reorder damages the stream without losing a byte,
//! corrupt flips exactly the bytes asked for, set_target redirects new connections, and drop
//! closes every socket and the listener. Servers are small threads: an echo server, and a sink
//! that checks what it receives. Every blocking call has a 10 s bound, so a broken proxy fails a
//! test instead of hanging it; nothing asserts that something happens quickly.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use pagemesh_tools::proxy::{Direction, FaultProxy, ProxyStats};

/// The bound on anything that should eventually happen.
const PATIENCE: Duration = Duration::from_secs(10);

/// Byte `index` of a deterministic, non-periodic stream named by `seed`.
fn pattern_byte(seed: u64, index: u64) -> u8 {
    let mut x = (index ^ seed.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (x >> 56) as u8
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern_byte(seed, i)).collect()
}

/// Connects a client with read and write timeouts of [`PATIENCE`].
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(PATIENCE))
        .expect("write timeout");
    stream
}

/// Sends `message` and reads back as many bytes.
fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).expect("write");
    let mut reply = vec![0; message.len()];
    stream.read_exact(&mut reply).expect("read reply");
    reply
}

/// Asserts that the peer closed `stream`: a read returns end of stream or a reset, not a timeout.
fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(len) => panic!("read {len} bytes from a connection that should be closed"),
        Err(e) => assert!(
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "connection still open after {PATIENCE:?}"
        ),
    }
}

/// Polls `condition` until it holds; panics after [`PATIENCE`].
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// An echo server on loopback: each connection gets back what it sends; when the client
/// half-closes, the server closes too. Counts connections accepted and still open.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("echo addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::spawn({
            let (accepted, open, stop) = (accepted.clone(), open.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            open.fetch_add(1, Ordering::SeqCst);
                            let open = open.clone();
                            thread::spawn(move || {
                                let _ = echo(stream);
                                open.fetch_sub(1, Ordering::SeqCst);
                            });
                        }
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            }
        });
        Self {
            addr,
            accepted,
            open,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

fn echo(mut stream: TcpStream) -> io::Result<u64> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(PATIENCE * 3))?;
    let mut reader = stream.try_clone()?;
    let echoed = io::copy(&mut reader, &mut stream)?;
    stream.shutdown(Shutdown::Write)?;
    Ok(echoed)
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A server for one connection that reads it to the end and returns what it got.
fn sink() -> (SocketAddr, JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
    let addr = listener.local_addr().expect("sink addr");
    let thread = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("sink accept");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut received = Vec::new();
        stream.read_to_end(&mut received).expect("sink read");
        received
    });
    (addr, thread)
}

/// Writes `data` to a clone of `stream` in a thread, in pieces of uneven size, then half-closes.
fn write_in_thread(stream: &TcpStream, data: Vec<u8>) -> JoinHandle<()> {
    let mut stream = stream.try_clone().expect("clone");
    thread::spawn(move || {
        let mut rest = &data[..];
        let mut piece = 1;
        while !rest.is_empty() {
            let len = piece.min(rest.len());
            stream.write_all(&rest[..len]).expect("write");
            rest = &rest[len..];
            piece = piece * 7 % 100_003 + 1;
        }
        stream.shutdown(Shutdown::Write).expect("half-close");
    })
}

/// Echoes `data` through `client` with a concurrent writer and returns all it read back.
fn echo_all(client: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let writer = write_in_thread(client, data.to_vec());
    let mut received = Vec::new();
    client.read_to_end(&mut received).expect("read echo");
    writer.join().expect("writer");
    received
}

#[test]
fn pass_through_carries_megabytes_both_ways_intact() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let data = pattern(1, 4 << 20);

    let mut client = connect(proxy.addr());
    let received = echo_all(&mut client, &data);

    assert_eq!(received.len(), data.len());
    assert!(received == data, "the echoed bytes differ");
    // End of stream crossed both ways, so the connection closes on its own.
    eventually("connection closed after half-close", || {
        proxy.stats().open == 0
    });
    let stats = proxy.stats();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.bytes_to_target, data.len() as u64);
    assert_eq!(stats.bytes_from_target, data.len() as u64);
    assert_eq!(stats.cuts, 0);
}

#[test]
fn cut_closes_every_open_connection_and_new_ones_still_work() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut first = connect(proxy.addr());
    let mut second = connect(proxy.addr());
    assert_eq!(round_trip(&mut first, b"one"), b"one");
    assert!(proxy.wait_for_connections(2, PATIENCE));

    proxy.cut();

    assert_eq!(proxy.stats().cuts, 2);
    assert_eq!(proxy.stats().open, 0);
    assert_closed(&mut first);
    assert_closed(&mut second);
    eventually("the target side closed too", || echo.open() == 0);

    let mut third = connect(proxy.addr());
    assert_eq!(round_trip(&mut third, b"after the cut"), b"after the cut");
    assert_eq!(proxy.stats().open, 1);
    assert_eq!(echo.accepted(), 3);
}

#[test]
fn refuse_closes_new_connections_and_spares_open_ones() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut open = connect(proxy.addr());
    assert_eq!(round_trip(&mut open, b"before"), b"before");

    proxy.set_refuse(true);
    let mut refused = connect(proxy.addr());
    assert_closed(&mut refused);
    assert_eq!(round_trip(&mut open, b"during"), b"during");

    proxy.set_refuse(false);
    let mut later = connect(proxy.addr());
    assert_eq!(round_trip(&mut later, b"after"), b"after");

    let stats = proxy.stats();
    assert_eq!((stats.accepted, stats.refused, stats.open), (3, 1, 2));
    assert_eq!(
        echo.accepted(),
        2,
        "a refused connection reached the target"
    );
}

#[test]
fn stall_holds_data_with_backpressure_then_delivers_it_in_order() {
    const LEN: u64 = 128 << 20; // Far more than loopback's socket buffers can absorb.
    const SEED: u64 = 2;
    let echo = Echo::start();
    let (sink_addr, sink) = sink();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut chat = connect(proxy.addr());
    assert_eq!(round_trip(&mut chat, b"hello"), b"hello");
    proxy.set_target(sink_addr);
    let bulk = connect(proxy.addr());
    assert!(proxy.wait_for_connections(2, PATIENCE));
    let bytes_before = proxy.stats().bytes_to_target;

    proxy.set_stall(true);
    chat.write_all(b"held back").unwrap();
    let (done_tx, done) = mpsc::channel();
    let writer = thread::spawn({
        let mut bulk = bulk.try_clone().unwrap();
        move || {
            let mut piece = vec![0; 64 * 1024];
            let mut offset = 0;
            while offset < LEN {
                for (i, byte) in piece.iter_mut().enumerate() {
                    *byte = pattern_byte(SEED, offset + i as u64);
                }
                bulk.write_all(&piece).expect("bulk write");
                offset += piece.len() as u64;
            }
            bulk.shutdown(Shutdown::Write).expect("half-close");
            done_tx.send(()).expect("done");
        }
    });

    chat.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0; 64];
    let err = chat
        .read(&mut buf)
        .expect_err("data crossed a stalled proxy");
    assert!(matches!(
        err.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut
    ));
    assert_eq!(proxy.stats().bytes_to_target, bytes_before);
    assert!(
        done.try_recv().is_err(),
        "the proxy absorbed {LEN} bytes while stalled instead of pushing back"
    );
    assert_eq!(proxy.stats().open, 2, "a stall must keep connections open");

    proxy.set_stall(false);
    chat.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reply = [0; 9];
    chat.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"held back");
    writer.join().unwrap();
    let received = sink.join().unwrap();
    assert_eq!(received.len() as u64, LEN);
    let first_bad = (0..LEN).find(|&i| received[i as usize] != pattern_byte(SEED, i));
    assert_eq!(first_bad, None, "bulk data damaged or out of order");
}

#[test]
fn delay_delivers_everything_intact_in_order_and_never_early() {
    let delay = Duration::from_millis(40);
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    proxy.set_delay(delay);

    let mut client = connect(proxy.addr());
    let sent_at = Instant::now();
    assert_eq!(round_trip(&mut client, b"ping"), b"ping");
    let elapsed = sent_at.elapsed();
    assert!(
        elapsed >= 2 * delay,
        "round trip took {elapsed:?}, delay is {delay:?} each way"
    );

    let mut bulk = connect(proxy.addr());
    let data = pattern(3, 2 << 20);
    let received = echo_all(&mut bulk, &data);
    assert_eq!(received.len(), data.len());
    assert!(received == data, "delayed bytes damaged or out of order");

    proxy.set_delay(Duration::ZERO);
    assert_eq!(round_trip(&mut client, b"pong"), b"pong");
}

#[test]
fn reorder_swaps_consecutive_chunks_without_losing_a_byte() {
    const MESSAGE_LEN: usize = 1000;
    let (sink_addr, sink) = sink();
    let proxy = FaultProxy::start(sink_addr).unwrap();
    proxy.set_reorder(true);

    let messages: Vec<Vec<u8>> = (0..32)
        .map(|seed| pattern(100 + seed, MESSAGE_LEN))
        .collect();
    let mut client = connect(proxy.addr());
    for message in &messages {
        client.write_all(message).unwrap();
        // Pause so that each message is most likely read as a chunk of its own.
        thread::sleep(Duration::from_millis(5));
    }
    client.shutdown(Shutdown::Write).unwrap();
    let received = sink.join().unwrap();

    let sent = messages.concat();
    assert_eq!(received.len(), sent.len(), "reorder lost or added bytes");
    assert!(received != sent, "reorder left the stream intact");
    // A chunk is one or more whole messages, so swapping chunks permutes whole messages.
    let mut received_messages: Vec<&[u8]> = received.chunks(MESSAGE_LEN).collect();
    let mut sent_messages: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    received_messages.sort();
    sent_messages.sort();
    assert!(
        received_messages == sent_messages,
        "messages were damaged, not just moved"
    );
}

#[test]
fn reorder_delivers_a_lone_chunk_rather_than_wedging_it() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    proxy.set_reorder(true);
    let mut client = connect(proxy.addr());
    // One message each way, nothing after it to swap with: it must still arrive.
    assert_eq!(round_trip(&mut client, b"lonely"), b"lonely");
    proxy.set_reorder(false);
    let data = pattern(4, 1 << 20);
    assert!(echo_all(&mut client, &data) == data);
}

/// Positions where `a` and `b` differ, checking each differs in exactly one bit.
fn flipped_bytes(a: &[u8], b: &[u8]) -> Vec<usize> {
    assert_eq!(a.len(), b.len());
    let flipped: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    for &i in &flipped {
        assert_eq!(
            (a[i] ^ b[i]).count_ones(),
            1,
            "byte {i} has more than one bit flipped"
        );
    }
    flipped
}

#[test]
fn corrupt_flips_one_bit_in_exactly_the_requested_bytes() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut client = connect(proxy.addr());
    let data = pattern(5, 4096);
    assert_eq!(round_trip(&mut client, &data), data);

    proxy.corrupt(Direction::ToTarget, 10);
    let reply = round_trip(&mut client, &data);
    assert_eq!(flipped_bytes(&data, &reply), (0..10).collect::<Vec<_>>());

    assert_eq!(
        round_trip(&mut client, &data),
        data,
        "corruption outlived its budget"
    );

    proxy.corrupt(Direction::FromTarget, 2);
    proxy.corrupt(Direction::FromTarget, 1);
    let reply = round_trip(&mut client, &data);
    assert_eq!(flipped_bytes(&data, &reply), vec![0, 1, 2]);

    // A budget larger than a message spills over into the next one.
    proxy.corrupt(Direction::ToTarget, data.len() + 5);
    let reply = round_trip(&mut client, &data);
    assert_eq!(flipped_bytes(&data, &reply).len(), data.len());
    let reply = round_trip(&mut client, &data);
    assert_eq!(flipped_bytes(&data, &reply).len(), 5);
    assert_eq!(round_trip(&mut client, &data), data);
}

#[test]
fn set_target_redirects_new_connections_only() {
    let (first, second) = (Echo::start(), Echo::start());
    let proxy = FaultProxy::start(first.addr).unwrap();
    let mut old = connect(proxy.addr());
    assert_eq!(round_trip(&mut old, b"to first"), b"to first");

    proxy.set_target(second.addr);
    let mut new = connect(proxy.addr());
    assert_eq!(round_trip(&mut new, b"to second"), b"to second");
    assert_eq!(round_trip(&mut old, b"still first"), b"still first");

    assert_eq!((first.accepted(), second.accepted()), (1, 1));
}

#[test]
fn unreachable_target_closes_the_client_connection() {
    let gone = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = FaultProxy::start(gone).unwrap();
    let mut client = connect(proxy.addr());
    assert_closed(&mut client);
    assert_eq!(proxy.stats().open, 0);
}

#[test]
fn drop_closes_every_socket_and_the_listener() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let addr = proxy.addr();
    let mut idle = connect(addr);
    let mut stalled = connect(addr);
    let mut delayed = connect(addr);
    assert!(proxy.wait_for_connections(3, PATIENCE));
    proxy.set_delay(Duration::from_secs(3600));
    delayed.write_all(b"due in an hour").unwrap();
    thread::sleep(Duration::from_millis(50)); // Let the proxy read it into its queue.
    proxy.set_stall(true);
    stalled.write_all(b"held").unwrap();

    let (dropped_tx, dropped) = mpsc::channel();
    thread::spawn(move || {
        drop(proxy);
        dropped_tx.send(()).unwrap();
    });
    dropped.recv_timeout(PATIENCE).expect("drop did not return");

    assert_closed(&mut idle);
    assert_closed(&mut stalled);
    assert_closed(&mut delayed);
    eventually("target-side sockets closed", || echo.open() == 0);
    let err = TcpStream::connect(addr).expect_err("the listener outlived the proxy");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

#[test]
fn stats_count_connections_refusals_and_cuts() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    assert_eq!(proxy.stats(), ProxyStats::default());
    assert!(!proxy.wait_for_connections(1, Duration::from_millis(50)));

    let mut clients = vec![connect(proxy.addr()), connect(proxy.addr())];
    assert!(proxy.wait_for_connections(2, PATIENCE));
    for client in &mut clients {
        assert_eq!(round_trip(client, b"12345"), b"12345");
    }
    proxy.set_refuse(true);
    let mut refused = connect(proxy.addr());
    assert_closed(&mut refused);
    proxy.set_refuse(false);
    proxy.cut();

    let stats = proxy.stats();
    assert_eq!(stats.accepted, 3);
    assert_eq!(stats.refused, 1);
    assert_eq!(stats.open, 0);
    assert_eq!(stats.cuts, 2);
    eventually("byte counts", || {
        let stats = proxy.stats();
        (stats.bytes_to_target, stats.bytes_from_target) == (10, 10)
    });
}

#[test]
fn proxy_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<FaultProxy>();
    assert_send_sync::<ProxyStats>();
}
