//! Who may hold a connection open, decided without I/O.
//!
//! A connection is *unauthenticated* from `accept` until its handshake proves that the peer holds
//! the cluster secret. Until then it can only handshake: its reader refuses every frame type but
//! HELLO, WELCOME, AUTH and REFUSE by the header alone, and buffers at most
//! [`crate::proto::frame::HANDSHAKE_BODY_MAX`] bytes of body (transport's `FrameReader` in
//! handshake mode); it must finish within the handshake deadline
//! ([`crate::ServiceConfig::handshake_timeout`]).
//!
//! # What an unauthenticated connection costs
//!
//! [`UNAUTHENTICATED_LINK_BYTES`] of this process's memory at most: a 4 KiB read buffer, a write
//! buffer that holds one WELCOME, and the link's task. (The kernel's socket buffers come on top,
//! bounded per socket by `net.ipv4.tcp_rmem`; they are not this process's memory.) The whole
//! unauthenticated population is held to a budget
//! ([`crate::ServiceConfig::handshake_budget`]): at most `budget / UNAUTHENTICATED_LINK_BYTES`
//! connections, whatever the number of connections attempted.
//!
//! # Fair admission
//!
//! Three bounds, applied to each accepted connection in this order:
//!
//! 1. **Authenticated links** have a cap of their own ([`AdmissionLimits::links_max`]). While it
//!    is reached, new connections are closed at once ([`Reason::LinksFull`]): a peer that holds
//!    the secret reconnects with backoff.
//! 2. **Per source address** at most [`AdmissionLimits::per_address_max`] connections may be
//!    unauthenticated. A new one from an address at its cap *evicts that address's oldest*
//!    unauthenticated connection ([`Reason::AddressFull`]), so one address can never take the
//!    whole pool, and a flood from an address only churns its own connections.
//! 3. **The pool** holds at most [`AdmissionLimits::handshakes_max`]. A new connection when it is
//!    full *evicts the oldest* unauthenticated connection ([`Reason::PoolFull`]).
//!
//! Evicting the oldest rather than refusing the newest is what keeps a legitimate peer from being
//! locked out: a handshake takes about two round trips, so under a flood of `r` connections per
//! second a newcomer is evicted only if `handshakes_max / r` seconds pass before it
//! authenticates. A flood can slow a replica's connect (a few retries) but not stop it. Refusing
//! the newest, as a plain cap does, lets a flood that holds its connections open keep every
//! newcomer out for as long as it lasts.
//!
//! Refusals and failed handshakes are counted per [`Reason`] and logged by [`Refusals`] at most
//! once an interval, not once per connection.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The most memory one unauthenticated connection makes this process hold: its read buffer
/// (`HANDSHAKE_READ_BUFFER` in `transport`, 4 KiB), a write buffer of one WELCOME frame, its task and
/// the runtime's socket state. `tests/hostile.rs` measures it: 8.0 KiB on io_uring and 8.7 KiB on
/// epoll (2026-12), with room left here for allocator rounding.
pub const UNAUTHENTICATED_LINK_BYTES: usize = 12 << 10;

/// The bounds [`Admission`] enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Most authenticated links open at once.
    pub links_max: usize,
    /// Most unauthenticated connections open at once (the pool).
    pub handshakes_max: usize,
    /// Most unauthenticated connections from one source address.
    pub per_address_max: usize,
}

/// Why a connection was closed before it could authenticate, or refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Every authenticated link slot is taken: the new connection was closed at accept.
    LinksFull,
    /// Its address had too many unauthenticated connections: its oldest one was closed.
    AddressFull,
    /// The unauthenticated pool was full: its oldest connection was closed.
    PoolFull,
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// The handshake failed: a frame that is not part of it, a bad frame, a wrong secret, no
    /// common version.
    HandshakeFailed,
}

impl Reason {
    const ALL: [Reason; 5] = [
        Reason::LinksFull,
        Reason::AddressFull,
        Reason::PoolFull,
        Reason::HandshakeTimeout,
        Reason::HandshakeFailed,
    ];

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Reason::LinksFull => "links_full",
            Reason::AddressFull => "address_full",
            Reason::PoolFull => "pool_full",
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::HandshakeFailed => "handshake_failed",
        }
    }
}

/// What to do with an accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it handshake.
    Admit,
    /// Let it handshake, and close the unauthenticated connection `link`, for `reason`.
    AdmitEvicting {
        /// The connection to close.
        link: u64,
        /// Why.
        reason: Reason,
    },
    /// Close it at once.
    Refuse(Reason),
}

/// The books of who is connected: unauthenticated connections by arrival and by address, and the
/// authenticated links. Links are named by ids that increase with arrival.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    /// Unauthenticated connections by id (so the first is the oldest), with their address.
    pending: BTreeMap<u64, IpAddr>,
    /// Unauthenticated connections per address, oldest first.
    by_address: HashMap<IpAddr, VecDeque<u64>>,
    authenticated: HashSet<u64>,
}

impl Admission {
    /// Empty books.
    pub fn new(limits: AdmissionLimits) -> Self {
        assert!(limits.handshakes_max > 0 && limits.per_address_max > 0);
        Self {
            limits,
            pending: BTreeMap::new(),
            by_address: HashMap::new(),
            authenticated: HashSet::new(),
        }
    }

    /// The connection `link` from `addr` was accepted: what to do with it. Unless refused, it is
    /// booked as unauthenticated; an evicted connection is no longer booked.
    pub fn admit(&mut self, link: u64, addr: IpAddr) -> Verdict {
        debug_assert!(!self.pending.contains_key(&link) && !self.authenticated.contains(&link));
        if self.authenticated.len() >= self.limits.links_max {
            return Verdict::Refuse(Reason::LinksFull);
        }
        let same_address = self.by_address.get(&addr).map_or(0, VecDeque::len);
        let evicted = if same_address >= self.limits.per_address_max {
            let oldest = self
                .by_address
                .get(&addr)
                .and_then(|ids| ids.front().copied());
            oldest.map(|link| (link, Reason::AddressFull))
        } else if self.pending.len() >= self.limits.handshakes_max {
            let oldest = self.pending.keys().next().copied();
            oldest.map(|link| (link, Reason::PoolFull))
        } else {
            None
        };
        if let Some((old, _)) = evicted {
            self.forget_pending(old);
        }
        self.pending.insert(link, addr);
        self.by_address.entry(addr).or_default().push_back(link);
        debug_assert!(self.pending.len() <= self.limits.handshakes_max);
        match evicted {
            Some((link, reason)) => Verdict::AdmitEvicting { link, reason },
            None => Verdict::Admit,
        }
    }

    /// `link` completed its handshake. `false` if every authenticated slot is taken (close it).
    pub fn authenticated(&mut self, link: u64) -> bool {
        if !self.forget_pending(link) {
            // Evicted while its handshake finished: it is closing already.
            return false;
        }
        if self.authenticated.len() >= self.limits.links_max {
            return false;
        }
        self.authenticated.insert(link);
        true
    }

    /// `link` closed, whatever its state (closing an unknown or evicted link is a no-op).
    pub fn closed(&mut self, link: u64) {
        if !self.forget_pending(link) {
            self.authenticated.remove(&link);
        }
    }

    /// Unauthenticated connections open.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Authenticated links open.
    pub fn links(&self) -> usize {
        self.authenticated.len()
    }

    /// Removes `link` from the unauthenticated books; whether it was there.
    fn forget_pending(&mut self, link: u64) -> bool {
        let Some(addr) = self.pending.remove(&link) else {
            return false;
        };
        if let Some(ids) = self.by_address.get_mut(&addr) {
            ids.retain(|id| *id != link);
            if ids.is_empty() {
                self.by_address.remove(&addr);
            }
        }
        true
    }
}

/// Counts of refusals by reason, over one interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefusalCounts {
    counts: [u64; Reason::ALL.len()],
}

impl RefusalCounts {
    /// How many for `reason`.
    pub fn get(&self, reason: Reason) -> u64 {
        self.counts[reason as usize]
    }

    /// How many in all.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `name=count` for each reason that occurred, for a log line.
    pub fn summary(&self) -> String {
        Reason::ALL
            .iter()
            .filter(|reason| self.get(**reason) > 0)
            .map(|reason| format!("{}={}", reason.name(), self.get(*reason)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Rate-limits the log of refused connections: the first refusal after a quiet interval is
/// reported at once; later ones are counted and reported together when the interval ends.
#[derive(Debug)]
pub struct Refusals {
    interval: Duration,
    /// When the current interval began; `None` when quiet.
    since: Option<Instant>,
    pending: RefusalCounts,
}

/// How often refusals are reported at most.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Refusals {
    /// Reports at most once per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            since: None,
            pending: RefusalCounts::default(),
        }
    }

    /// Counts one refusal at `now`; returns what to log now, if anything.
    pub fn record(&mut self, reason: Reason, now: Instant) -> Option<RefusalCounts> {
        self.pending.counts[reason as usize] += 1;
        self.poll(now)
    }

    /// What to log at `now`, if the interval has ended with refusals in it (call it on a timer).
    pub fn poll(&mut self, now: Instant) -> Option<RefusalCounts> {
        if self
            .since
            .is_some_and(|since| now.saturating_duration_since(since) < self.interval)
        {
            return None;
        }
        if self.pending.total() == 0 {
            self.since = None;
            return None;
        }
        self.since = Some(now);
        Some(std::mem::take(&mut self.pending))
    }

    /// When [`Refusals::poll`] may next have something to say.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|since| since + self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn limits(links_max: usize, handshakes_max: usize, per_address_max: usize) -> AdmissionLimits {
        AdmissionLimits {
            links_max,
            handshakes_max,
            per_address_max,
        }
    }

    #[test]
    fn an_address_at_its_cap_evicts_its_own_oldest() {
        let mut books = Admission::new(limits(10, 10, 2));
        assert_eq!(books.admit(0, ip(2)), Verdict::Admit);
        assert_eq!(books.admit(1, ip(2)), Verdict::Admit);
        assert_eq!(books.admit(2, ip(1)), Verdict::Admit);
        assert_eq!(
            books.admit(3, ip(2)),
            Verdict::AdmitEvicting {
                link: 0,
                reason: Reason::AddressFull
            }
        );
        // The other address's connection is untouched and can authenticate.
        assert!(books.authenticated(2));
        // The evicted one cannot.
        assert!(!books.authenticated(0));
        assert_eq!((books.pending(), books.links()), (2, 1));
    }

    #[test]
    fn a_full_pool_evicts_its_oldest_so_a_newcomer_always_gets_in() {
        let mut books = Admission::new(limits(10, 3, 3));
        for link in 0..3 {
            assert_eq!(books.admit(link, ip(2 + link as u8)), Verdict::Admit);
        }
        for link in 3..100 {
            let verdict = books.admit(link, ip(2 + (link % 50) as u8));
            assert_eq!(
                verdict,
                Verdict::AdmitEvicting {
                    link: link - 3,
                    reason: Reason::PoolFull
                }
            );
            assert_eq!(books.pending(), 3);
        }
        // The newest connection, whoever it is, can still authenticate.
        assert!(books.authenticated(99));
    }

    #[test]
    fn authenticated_links_have_their_own_cap() {
        let mut books = Admission::new(limits(2, 4, 4));
        for link in 0..2 {
            assert_eq!(books.admit(link, ip(1)), Verdict::Admit);
            assert!(books.authenticated(link));
        }
        assert_eq!(books.admit(2, ip(1)), Verdict::Refuse(Reason::LinksFull));
        books.closed(0);
        assert_eq!(books.admit(3, ip(1)), Verdict::Admit);
        assert_eq!(books.admit(4, ip(1)), Verdict::Admit);
        assert!(books.authenticated(3));
        // Admitted while a slot was free, but the slot went to another first.
        assert!(!books.authenticated(4));
    }

    #[test]
    fn closing_frees_both_kinds_of_slot_and_unknown_links_are_ignored() {
        let mut books = Admission::new(limits(1, 1, 1));
        assert_eq!(books.admit(0, ip(1)), Verdict::Admit);
        books.closed(0);
        books.closed(0);
        books.closed(77);
        assert_eq!(books.admit(1, ip(1)), Verdict::Admit);
        assert!(books.authenticated(1));
        books.closed(1);
        assert_eq!(books.admit(2, ip(1)), Verdict::Admit);
        assert_eq!((books.pending(), books.links()), (1, 0));
        assert!(books.by_address.len() <= 1);
    }

    #[test]
    fn books_stay_within_their_limits_under_any_sequence() {
        use proptest::prelude::*;
        proptest!(|(events in proptest::collection::vec((0u8..4, 0u8..6), 1..400))| {
            let limits = limits(3, 4, 2);
            let mut books = Admission::new(limits);
            let mut next = 0u64;
            for (kind, arg) in events {
                match kind {
                    0 | 1 => {
                        books.admit(next, ip(arg));
                        next += 1;
                    }
                    2 => { books.authenticated(next.saturating_sub(1 + u64::from(arg))); }
                    _ => books.closed(next.saturating_sub(1 + u64::from(arg))),
                }
                prop_assert!(books.pending() <= limits.handshakes_max);
                prop_assert!(books.links() <= limits.links_max);
                for ids in books.by_address.values() {
                    prop_assert!(!ids.is_empty() && ids.len() <= limits.per_address_max);
                }
                let booked: usize = books.by_address.values().map(VecDeque::len).sum();
                prop_assert_eq!(booked, books.pending());
            }
        });
    }

    #[test]
    fn refusals_are_reported_once_per_interval() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut log = Refusals::new(Duration::from_secs(10));
        // The first is reported at once.
        let first = log
            .record(Reason::PoolFull, at(0))
            .expect("first refusal reported");
        assert_eq!(first.total(), 1);
        // The rest of the interval is counted, not reported.
        for ms in 1..1000 {
            assert_eq!(log.record(Reason::AddressFull, at(ms)), None);
        }
        assert_eq!(log.poll(at(9_999)), None);
        let batch = log.poll(at(10_000)).expect("the interval's refusals");
        assert_eq!(batch.get(Reason::AddressFull), 999);
        assert_eq!(batch.summary(), "address_full=999");
        // A quiet interval ends the episode: the next refusal is reported at once again.
        assert_eq!(log.poll(at(20_000)), None);
        assert_eq!(log.deadline(), None);
        assert!(log.record(Reason::LinksFull, at(20_001)).is_some());
    }
}
