//! The simulated network: each connection is two one-way pipes with a latency, a bandwidth and a
//! window, like a TCP connection over a path.
//!
//! A write is accepted whole when the pipe holds less than its window (in flight plus delivered
//! but unread), otherwise it blocks until the reader drains; a write to an empty pipe is accepted
//! whatever its size. Accepted bytes leave at the pipe's bandwidth, one write after another, and
//! arrive a latency later, in pieces of at most 64 KiB cut at random points (TCP keeps no message
//! boundaries). A partition
//! holds every byte until it heals, as TCP's retransmissions would; a reset or a crash drops the
//! connection and everything in it.

use std::collections::VecDeque;
use std::time::Duration;

/// The largest piece a write arrives in: bytes flow, they do not arrive a megabyte at a time.
const SEGMENT_MAX: usize = 64 << 10;

/// One direction of a connection.
#[derive(Debug, Default)]
pub struct Pipe {
    /// Segments on the way, with their arrival times, in order.
    in_flight: VecDeque<(Duration, Vec<u8>)>,
    in_flight_bytes: usize,
    /// Arrived, not yet read.
    pub unread: Vec<u8>,
    /// When the pipe finishes sending what it accepted.
    free_at: Duration,
    /// A write was accepted and has not finished leaving.
    pub writing: bool,
    /// A write waiting for the window.
    pub blocked: Option<Vec<u8>>,
}

/// The character of a path.
#[derive(Clone, Copy, Debug)]
pub struct Path {
    /// One-way latency.
    pub latency: Duration,
    /// Bytes per microsecond.
    pub bandwidth: u64,
    /// Bytes a pipe holds before writes block.
    pub window: usize,
}

/// What accepting a write scheduled.
#[derive(Debug, PartialEq)]
pub struct Sent {
    /// When each segment arrives.
    pub arrivals: Vec<Duration>,
    /// When the write has left (the writer may write again).
    pub done_at: Duration,
}

impl Pipe {
    /// Whether a write is in progress (accepted and leaving, or blocked).
    pub fn busy(&self) -> bool {
        self.writing || self.blocked.is_some()
    }

    /// Offers a write at `now`: accepted (and when its segments arrive), or blocked until the
    /// reader drains (`None`). `cuts` are the fractions (0..1) at which the bytes are split.
    pub fn write(
        &mut self,
        now: Duration,
        path: Path,
        bytes: Vec<u8>,
        cuts: &[f64],
    ) -> Option<Sent> {
        debug_assert!(!self.busy(), "one write at a time");
        let held = self.in_flight_bytes + self.unread.len();
        if held > 0 && held + bytes.len() > path.window {
            self.blocked = Some(bytes);
            return None;
        }
        Some(self.accept(now, path, bytes, cuts))
    }

    /// The reader drained: accepts a blocked write if it fits now.
    pub fn unblock(&mut self, now: Duration, path: Path, cuts: &[f64]) -> Option<Sent> {
        let held = self.in_flight_bytes + self.unread.len();
        let fits = self
            .blocked
            .as_ref()
            .is_some_and(|bytes| held == 0 || held + bytes.len() <= path.window);
        if !fits {
            return None;
        }
        let bytes = self.blocked.take()?;
        Some(self.accept(now, path, bytes, cuts))
    }

    fn accept(&mut self, now: Duration, path: Path, bytes: Vec<u8>, cuts: &[f64]) -> Sent {
        let start = self.free_at.max(now);
        let len = bytes.len();
        let airtime = Duration::from_micros((len as u64 / path.bandwidth.max(1)).max(1));
        self.free_at = start + airtime;
        self.writing = true;
        self.in_flight_bytes += len;
        let mut points: Vec<usize> = cuts
            .iter()
            .map(|cut| ((len as f64) * cut) as usize)
            .chain((SEGMENT_MAX..len).step_by(SEGMENT_MAX))
            .filter(|&at| at > 0 && at < len)
            .collect();
        points.sort_unstable();
        points.dedup();
        points.push(len);
        let mut arrivals = Vec::with_capacity(points.len());
        let mut from = 0;
        for to in points {
            let left_at = start + airtime.mul_f64(to as f64 / len as f64);
            let at = left_at + path.latency;
            self.in_flight.push_back((at, bytes[from..to].to_vec()));
            arrivals.push(at);
            from = to;
        }
        Sent {
            arrivals,
            done_at: self.free_at,
        }
    }

    /// The write accepted last has left.
    pub fn write_done(&mut self) {
        self.writing = false;
    }

    /// Moves every segment that has arrived by `now` to the unread bytes; returns how many bytes
    /// arrived.
    pub fn deliver(&mut self, now: Duration) -> usize {
        let mut arrived = 0;
        while let Some((at, _)) = self.in_flight.front() {
            if *at > now {
                break;
            }
            let Some((_, segment)) = self.in_flight.pop_front() else {
                break;
            };
            self.in_flight_bytes -= segment.len();
            arrived += segment.len();
            self.unread.extend_from_slice(&segment);
        }
        arrived
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: Path = Path {
        latency: Duration::from_millis(1),
        bandwidth: 10,
        window: 100,
    };

    #[test]
    fn bytes_arrive_in_order_after_airtime_and_latency_and_writes_block_on_the_window() {
        let mut pipe = Pipe::default();
        let sent = pipe
            .write(Duration::ZERO, PATH, vec![1; 80], &[0.5])
            .expect("an empty pipe takes any write");
        assert_eq!(sent.done_at, Duration::from_micros(8));
        assert_eq!(
            sent.arrivals,
            [Duration::from_micros(1_004), Duration::from_micros(1_008)]
        );
        pipe.write_done();
        assert!(pipe.write(sent.done_at, PATH, vec![2; 40], &[]).is_none());
        assert!(pipe.busy());
        assert_eq!(pipe.deliver(Duration::from_micros(1_004)), 40);
        assert!(pipe
            .unblock(Duration::from_micros(1_004), PATH, &[])
            .is_none());
        pipe.deliver(Duration::from_micros(1_008));
        pipe.unread.clear();
        let sent = pipe
            .unblock(Duration::from_micros(1_008), PATH, &[])
            .expect("drained");
        assert_eq!(sent.arrivals, [Duration::from_micros(2_012)]);
    }
}
