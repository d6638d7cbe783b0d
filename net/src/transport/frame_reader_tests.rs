//! [`FrameReader`] on both runtimes: frames that straddle reads, bursts that a read after a read
//! finds waiting (io_uring's direct receive), and a clean end of stream.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use uuid::Uuid;

use super::{spawn_runtime, Listener, TransportKind};
use crate::proto::frame::{encode_pages, Frame, PagesHeader, PAGE_SIZE};

const FRAMES: u64 = 600;

/// The pages of frame `n`: 1 to 5 pages, every byte derived from `n` and its place.
fn pages_of(n: u64) -> Vec<u8> {
    let count = 1 + (n % 5) as usize;
    (0..count * PAGE_SIZE)
        .map(|i| (n as usize * 31 + i * 7) as u8)
        .collect()
}

/// Every frame, back to back, as a source would send them.
fn stream_bytes() -> Vec<u8> {
    let (database, origin) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let mut out = Vec::new();
    for n in 0..FRAMES {
        let header = PagesHeader {
            database,
            origin,
            epoch: 1,
            visited: &[],
            first_lsn: n,
        };
        encode_pages(&header, &[&pages_of(n)], &mut out);
    }
    out
}

/// Sends the frames from a blocking socket in bursts of odd sizes with pauses between some, so
/// frames straddle reads and reads find more waiting; returns what the reader decoded, in
/// order: (first LSN, whether the pages are intact).
fn send_and_decode(kind: TransportKind) -> Vec<(u64, bool)> {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (_, thread) = spawn_runtime("frame-reader-test", kind, move |runtime| async move {
        let listener =
            Listener::bind(runtime, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind");
        addr_tx
            .send(listener.local_addr().expect("addr"))
            .expect("addr sent");
        let (connection, peer) = listener.accept().await.expect("accept");
        let (mut reader, _writer, _shutdown) = connection.split(peer).expect("split");
        reader.expect_bulk();
        let mut decoded = Vec::new();
        while let Some(frame) = reader.next().await.expect("a whole, valid frame") {
            match frame {
                Frame::Pages(pages) => decoded.push((
                    pages.first_lsn,
                    pages.pages == pages_of(pages.first_lsn).as_slice(),
                )),
                other => panic!("unexpected frame {other:?}"),
            }
        }
        done_tx.send(decoded).expect("result sent");
    })
    .expect("runtime");
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("bound");
    let mut socket = std::net::TcpStream::connect(addr).expect("connect");
    socket.set_nodelay(true).expect("nodelay");
    let bytes = stream_bytes();
    for (i, chunk) in bytes.chunks(3_001).enumerate() {
        socket.write_all(chunk).expect("write");
        if i % 97 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    drop(socket);
    let decoded = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the reader finished");
    thread.join().expect("runtime thread");
    decoded
}

#[test]
fn frames_arrive_whole_and_in_order_on_both_runtimes() {
    for kind in [TransportKind::Uring, TransportKind::Epoll] {
        let decoded = send_and_decode(kind);
        let expected: Vec<(u64, bool)> = (0..FRAMES).map(|n| (n, true)).collect();
        assert_eq!(decoded, expected, "{kind:?}");
    }
}
