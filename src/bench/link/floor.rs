//! The loopback floor under the ack round trip: blocking std sockets, no runtime, no decoding.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use pagemesh_net::proto::frame::{encode, encode_pages, Ack, Frame};

use super::{
    bench_pages, out_of_range, pages_header, percentile_us, LinkBenchError, Result, DATABASE,
    ORIGIN, PHASE_GRACE, PINGS_MAX, SECONDS_MAX, WARMUP_PINGS,
};

/// What [`blocking_floor`] found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FloorFigures {
    /// Round trips recorded.
    pub pings: u64,
    /// Median round trip, in microseconds.
    pub rtt_p50_us: f64,
    /// 99th-percentile round trip, in microseconds.
    pub rtt_p99_us: f64,
}

/// The loopback floor under the ack round trip, measured without any runtime: two plain threads
/// on blocking std sockets (`TCP_NODELAY`), the client writing the very bytes of a 1-page PAGES
/// frame and the server answering each with the bytes of one ACK frame, neither decoding.
///
/// What is left is the kernel's loopback TCP path and two thread wake-ups per round trip, which
/// any transport pays; so `rtt_p50_us` here is what no transport's ack p50 can go much below.
///
/// The two threads are pinned to two different CPUs (where the process may use two), because the
/// transports' two ends, each on its own runtime thread, run on two CPUs and wake each other
/// across them. Left to the scheduler, the floor's threads often share one CPU: a blocking
/// write's wake-up draws the reader onto the writer's CPU, and the round trip becomes two context
/// switches. On the 2-vCPU machines, with guest halt polling off, that bimodal floor read 4 µs in
/// some runs and 60 µs in others, while both transports' ack p50 stayed near 65 µs; pinned apart,
/// it reads the cross-CPU figure every time (whole-process `taskset -c 0` shows the other mode:
/// the floor 4 µs, either transport's ack p50 7 µs).
///
/// Bounded like [`measure`](super::measure)'s ping phase: [`WARMUP_PINGS`] unrecorded, then up to `pings_max` or
/// until `seconds` pass (at least one recorded); every socket read gives up after 10 s (the
/// phases' grace), and the server thread is joined before a result is returned.
pub fn blocking_floor(pings_max: u64, seconds: f64) -> Result<FloorFigures> {
    if !(seconds > 0.0 && seconds <= SECONDS_MAX) {
        return Err(out_of_range(
            "seconds",
            format!("in (0, {SECONDS_MAX}]"),
            seconds,
        ));
    }
    let io = |op: &'static str, peer: SocketAddr| {
        move |source: std::io::Error| LinkBenchError::Io { op, peer, source }
    };
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let pages = bench_pages(1);
    let mut request = Vec::new();
    encode_pages(&pages_header(0), &[&pages], &mut request);
    let mut reply = Vec::new();
    let ack = Ack {
        database: DATABASE,
        origin: ORIGIN,
        received_lsn: 1,
        durable_lsn: 0,
    };
    encode(&Frame::Ack(ack), &mut reply);

    let listener = TcpListener::bind(any).map_err(io("bind", any))?;
    let addr = listener.local_addr().map_err(io("bind", any))?;
    let (request_len, server_reply) = (request.len(), reply.clone());
    let [client_cpu, server_cpu] = two_cpus().map_or([None, None], |[a, b]| [Some(a), Some(b)]);
    let server = std::thread::Builder::new()
        .name("pagemesh-bench-floor".into())
        .spawn(move || -> std::io::Result<()> {
            pin(server_cpu);
            let (mut socket, _) = listener.accept()?;
            socket.set_nodelay(true)?;
            socket.set_read_timeout(Some(PHASE_GRACE))?;
            let mut frame = vec![0u8; request_len];
            // Until the client closes its end (or stops answering within the grace).
            while socket.read_exact(&mut frame).is_ok() {
                socket.write_all(&server_reply)?;
            }
            Ok(())
        })
        .map_err(io("spawn the floor server", any))?;
    let client = move || -> std::io::Result<Vec<Duration>> {
        pin(client_cpu);
        let mut socket = TcpStream::connect(addr)?;
        socket.set_nodelay(true)?;
        socket.set_read_timeout(Some(PHASE_GRACE))?;
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let pings_max = pings_max.clamp(1, PINGS_MAX);
        let mut rtts = Vec::with_capacity(pings_max.min(1 << 16) as usize);
        let mut answer = vec![0u8; reply.len()];
        for round in 0..WARMUP_PINGS + pings_max {
            if rtts.len() as u64 >= pings_max || (!rtts.is_empty() && Instant::now() >= deadline) {
                break;
            }
            let started = Instant::now();
            socket.write_all(&request)?;
            socket.read_exact(&mut answer)?;
            if round >= WARMUP_PINGS {
                rtts.push(started.elapsed());
            }
        }
        Ok(rtts)
        // Dropping the socket closes it: the server's read ends.
    };
    // On a thread of its own, so that pinning it leaves the caller's affinity alone.
    let rtts = std::thread::Builder::new()
        .name("pagemesh-bench-floor-client".into())
        .spawn(client)
        .map_err(io("spawn the floor client", any))?
        .join();
    let served = server.join().map_err(|_| LinkBenchError::Ended {
        role: "floor server thread",
    })?;
    let rtts = rtts.map_err(|_| LinkBenchError::Ended {
        role: "floor client thread",
    })?;
    let mut rtts = rtts.map_err(io("write", addr))?;
    served.map_err(io("read", addr))?;
    rtts.sort_unstable();
    Ok(FloorFigures {
        pings: rtts.len() as u64,
        rtt_p50_us: percentile_us(&rtts, 50.0),
        rtt_p99_us: percentile_us(&rtts, 99.0),
    })
}

/// The first two CPUs this process may run on, or `None` where it may use only one (or cannot
/// tell).
fn two_cpus() -> Option<[usize; 2]> {
    let allowed = rustix::thread::sched_getaffinity(None).ok()?;
    let mut cpus = (0..rustix::thread::CpuSet::MAX_CPU).filter(|&cpu| allowed.is_set(cpu));
    Some([cpus.next()?, cpus.next()?])
}

/// Pins the calling thread to `cpu`. Best effort: a floor measured unpinned is still a floor, so
/// a refusal (a cgroup's cpuset, say) is logged and the thread runs where the scheduler puts it.
fn pin(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(error) = rustix::thread::sched_setaffinity(None, &set) {
        tracing::debug!(cpu, %error, "bench floor: could not pin a thread; measuring unpinned");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blocking_floor_times_round_trips_and_stops_at_its_bound() {
        let floor = blocking_floor(200, 5.0).unwrap();
        assert_eq!(floor.pings, 200, "{floor:?}");
        assert!(floor.rtt_p50_us > 0.0, "{floor:?}");
        assert!(floor.rtt_p99_us >= floor.rtt_p50_us, "{floor:?}");
        assert!(blocking_floor(10, 0.0).is_err());
    }

    #[test]
    fn the_floor_pins_its_own_threads_and_leaves_the_callers_alone() {
        let before = rustix::thread::sched_getaffinity(None).unwrap();
        blocking_floor(50, 5.0).unwrap();
        assert_eq!(rustix::thread::sched_getaffinity(None).unwrap(), before);

        // CI's machines have two CPUs; on one, there is nothing to pin apart.
        let Some([first, second]) = two_cpus() else {
            assert!(before.count() < 2, "{before:?}");
            return;
        };
        assert_ne!(first, second);
        let pinned = std::thread::spawn(move || {
            pin(Some(second));
            rustix::thread::sched_getaffinity(None).unwrap()
        })
        .join()
        .unwrap();
        assert!(pinned.is_set(second) && pinned.count() == 1, "{pinned:?}");
    }
}
