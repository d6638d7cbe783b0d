//! Link liveness: when to send a heartbeat, when to give up on a silent peer.
//!
//! Any frame counts: a link busy with PAGES needs no heartbeats, and any frame received proves
//! the peer alive. The caller reports sends and receipts and polls; nothing here reads a clock.

use std::time::{Duration, Instant};

/// Send a heartbeat when nothing was sent for this long, by default.
pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Declare the peer dead when it was silent for this long, by default.
pub const LINK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// What a link should do now, as [`Liveness::poll`] decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkAction {
    /// Send a HEARTBEAT now (the send is already recorded).
    SendHeartbeat,
    /// The peer has been silent longer than the timeout: close the link with
    /// `Error::LinkTimeout`.
    TimedOut {
        /// How long the peer has been silent.
        silent_for: Duration,
    },
    /// Nothing to do until then (or until a frame is sent or received).
    Wait {
        /// When to poll again.
        until: Instant,
    },
}

/// The heartbeat and timeout timers of one link.
#[derive(Clone, Debug)]
pub struct Liveness {
    interval: Duration,
    timeout: Duration,
    last_sent: Instant,
    last_received: Instant,
}

impl Liveness {
    /// Timers for a link that opened at `now`: heartbeat after `interval` without sending, time
    /// out after `timeout` without receiving.
    pub fn new(now: Instant, interval: Duration, timeout: Duration) -> Self {
        Liveness {
            interval,
            timeout,
            last_sent: now,
            last_received: now,
        }
    }

    /// A frame (any frame) arrived at `now`.
    pub fn on_receive(&mut self, now: Instant) {
        self.last_received = self.last_received.max(now);
    }

    /// A frame (any frame) was sent at `now`.
    pub fn on_send(&mut self, now: Instant) {
        self.last_sent = self.last_sent.max(now);
    }

    /// When the next timer falls due: a heartbeat to send or the peer's timeout.
    pub fn deadline(&self) -> Instant {
        (self.last_sent + self.interval).min(self.last_received + self.timeout)
    }

    /// When a heartbeat falls due, unless a frame is sent first.
    pub fn heartbeat_deadline(&self) -> Instant {
        self.last_sent + self.interval
    }

    /// When the peer's silence reaches the timeout, unless a frame arrives first.
    pub fn silence_deadline(&self) -> Instant {
        self.last_received + self.timeout
    }

    /// How long the peer has been silent at `now`, if that is past the timeout.
    pub fn timed_out(&self, now: Instant) -> Option<Duration> {
        let silent_for = now.saturating_duration_since(self.last_received);
        (silent_for >= self.timeout).then_some(silent_for)
    }

    /// What to do at `now`. A timeout wins over a heartbeat; `SendHeartbeat` records the send,
    /// so polling again at once answers `Wait`.
    pub fn poll(&mut self, now: Instant) -> LinkAction {
        let silent_for = now.saturating_duration_since(self.last_received);
        if silent_for >= self.timeout {
            return LinkAction::TimedOut { silent_for };
        }
        if now.saturating_duration_since(self.last_sent) >= self.interval {
            self.on_send(now);
            return LinkAction::SendHeartbeat;
        }
        LinkAction::Wait {
            until: (self.last_sent + self.interval).min(self.last_received + self.timeout),
        }
    }
}

/// The write in flight on a link, if one is, and whether it moves: a write that moved no byte
/// for the link timeout is blocked (the peer stopped reading). Both link machines keep one; the
/// driver reports when a write starts, when its bytes leave, and when it completes.
#[derive(Clone, Copy, Debug)]
pub struct WriteWatch {
    timeout: Duration,
    /// When the write in flight began, or last moved.
    since: Option<Instant>,
}

impl WriteWatch {
    /// No write in flight; one is blocked after `timeout` without progress.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            since: None,
        }
    }

    /// A write began at `now`.
    pub fn started(&mut self, now: Instant) {
        self.since = Some(now);
    }

    /// Bytes of the write in flight left at `now`.
    pub fn moved(&mut self, now: Instant) {
        if self.since.is_some() {
            self.since = Some(now);
        }
    }

    /// The write completed.
    pub fn finished(&mut self) {
        self.since = None;
    }

    /// Whether a write is in flight.
    pub fn is_writing(&self) -> bool {
        self.since.is_some()
    }

    /// When the write in flight counts as blocked, if one is.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|since| since + self.timeout)
    }

    /// How long the write in flight has been stuck at `now`, if that is the timeout or more.
    pub fn blocked(&self, now: Instant) -> Option<Duration> {
        let stuck = now.saturating_duration_since(self.since?);
        (stuck >= self.timeout).then_some(stuck)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_blocked_only_after_a_timeout_without_progress() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(5);
        let mut write = WriteWatch::new(timeout);
        assert_eq!(
            (write.deadline(), write.blocked(t0 + timeout)),
            (None, None)
        );
        write.moved(t0);
        assert!(
            !write.is_writing(),
            "progress without a write starts nothing"
        );
        write.started(t0);
        write.moved(t0 + Duration::from_secs(4));
        assert_eq!(write.blocked(t0 + timeout), None);
        assert_eq!(write.deadline(), Some(t0 + Duration::from_secs(9)));
        assert_eq!(write.blocked(t0 + Duration::from_secs(9)), Some(timeout));
        write.finished();
        assert_eq!(write.blocked(t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn wait_names_the_earlier_timer() {
        let t0 = Instant::now();
        let mut live = Liveness::new(t0, Duration::from_secs(1), Duration::from_secs(5));
        live.on_send(t0 + Duration::from_secs(10)); // keeps sending, hears nothing
        let until = t0 + Duration::from_secs(5);
        let now = t0 + Duration::from_millis(4500);
        assert_eq!(live.poll(now), LinkAction::Wait { until });
    }
}
