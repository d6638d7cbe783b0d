//! Routing decisions, I/O-free: which database a subscription reaches, and where each link's next
//! pages come from.
//!
//! This issue's links are 1-to-1: each carries one database from its source to one directly
//! connected replica, so routing comes down to two decisions, both made here and driven by
//! `service`:
//!
//! - [`admit`]: a RESUME names a database, the origin whose log it wants and the LSN it holds
//!   pages up to. It is refused when this node does not serve that database or serves it from
//!   another origin, and re-seeded from a snapshot when it claims pages this log never wrote (the
//!   source was restored from an older backup, say): a replica cannot hold pages its source never
//!   wrote, so its history is not trusted.
//! - [`FeedPlan`]: a link's pages come from a full snapshot, from the binlog in batches, or from
//!   the ring as pages seal. The plan starts from the RESUME, moves to the ring once the binlog
//!   has nothing more, and goes back to the binlog whenever the replica falls more than half a
//!   ring behind, so a slow replica never holds the ring; a binlog that retention trimmed below
//!   the replica sends it to a snapshot.
//!
//! Relaying across the mesh grows here: [`plumtree`] is one node's epidemic broadcast tree for
//! one origin (which links get pages eagerly, which hear HAVE, when to GRAFT and PRUNE),
//! measured by the mesh simulator (`pagemesh-sim mesh`) at N − 1 page transfers per page once
//! settled. The service does not drive it yet: links are still 1-to-1.

pub mod plumtree;

use uuid::Uuid;

/// `from_lsn` of a RESUME from a replica that has no database yet: send a snapshot first.
pub const BOOTSTRAP: u64 = u64::MAX;

/// What a source found in its binlog from a given LSN on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum History {
    /// This many pages were appended (0: the binlog has nothing from there yet).
    Pages(usize),
    /// Retention trimmed the binlog below `oldest`: a snapshot is needed.
    Purged {
        /// Oldest LSN the binlog holds.
        oldest: u64,
    },
}

/// What this node knows of a database it serves, as [`admit`] needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    /// The uuid of the log the database's pages come from.
    pub origin: Uuid,
    /// Every page below this is committed.
    pub committed_lsn: u64,
}

/// Where an admitted subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The LSN shipping starts from ([`BOOTSTRAP`]: a snapshot first).
    pub from_lsn: u64,
    /// The replica claimed pages beyond this log, so it is re-seeded rather than trusted.
    pub reseeded: bool,
}

/// Decides whether a RESUME for `origin`'s log from `from_lsn` on reaches `served` (`None`: this
/// node does not serve the database), and where it starts. A nil `origin` takes whatever origin
/// the database follows. `Err` carries the reason to send back in a REFUSE.
///
/// ```
/// use pagemesh_net::route::{admit, Served, BOOTSTRAP};
/// use uuid::Uuid;
///
/// let served = Served { origin: Uuid::from_u128(7), committed_lsn: 100 };
/// assert_eq!(admit(Some(served), Uuid::nil(), 40).map(|a| a.from_lsn), Ok(40));
/// // A replica that holds pages this log never wrote is re-seeded from a snapshot.
/// assert_eq!(admit(Some(served), Uuid::nil(), 101).map(|a| a.from_lsn), Ok(BOOTSTRAP));
/// assert!(admit(Some(served), Uuid::from_u128(8), 40).is_err());
/// assert!(admit(None, Uuid::nil(), 40).is_err());
/// ```
pub fn admit(served: Option<Served>, origin: Uuid, from_lsn: u64) -> Result<Admitted, String> {
    let Some(served) = served else {
        return Err("no such database here".into());
    };
    if !origin.is_nil() && origin != served.origin {
        return Err(format!(
            "this database follows origin {}, not {origin}",
            served.origin
        ));
    }
    let reseeded = from_lsn != BOOTSTRAP && from_lsn > served.committed_lsn;
    Ok(Admitted {
        from_lsn: if reseeded { BOOTSTRAP } else { from_lsn },
        reseeded,
    })
}

/// Where a link's next pages come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// A full snapshot; pages continue from the LSN it names.
    Snapshot,
    /// The binlog, in batches, from this LSN on.
    Binlog {
        /// The first LSN to read.
        from_lsn: u64,
    },
    /// The ring, run by run as pages seal, from this LSN on.
    Ring {
        /// The first LSN to read.
        from_lsn: u64,
    },
}

/// One link's feed: a small state machine that the shipper tells what each read found and asks
/// where to read next.
///
/// ```
/// use pagemesh_net::route::{Feed, FeedPlan, History};
///
/// let mut plan = FeedPlan::new(10, 1024);
/// assert_eq!(plan.feed(), Feed::Binlog { from_lsn: 10 });
/// plan.binlog_read(History::Pages(256));
/// assert_eq!(plan.feed(), Feed::Binlog { from_lsn: 266 });
/// plan.binlog_read(History::Pages(0)); // caught up with the binlog: stream from the ring
/// assert_eq!(plan.feed(), Feed::Ring { from_lsn: 266 });
/// plan.ring_shipped(300, 600); // more than half the ring behind: back to the binlog
/// assert_eq!(plan.feed(), Feed::Binlog { from_lsn: 300 });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedPlan {
    feed: Feed,
    ring_slots: u64,
}

impl FeedPlan {
    /// A plan for a link that starts at `from_lsn` ([`BOOTSTRAP`]: with a snapshot), on a ring of
    /// `ring_slots` pages.
    pub fn new(from_lsn: u64, ring_slots: u64) -> Self {
        let feed = if from_lsn == BOOTSTRAP {
            Feed::Snapshot
        } else {
            Feed::Binlog { from_lsn }
        };
        Self { feed, ring_slots }
    }

    /// Where to read next.
    pub fn feed(&self) -> Feed {
        self.feed
    }

    /// A snapshot was sent; the replica continues from `lsn`.
    pub fn snapshot_sent(&mut self, lsn: u64) {
        self.feed = Feed::Binlog { from_lsn: lsn };
    }

    /// A binlog read from the current LSN found `history`. Pages move the plan past them;
    /// nothing more sends it to the ring; a purge, to a snapshot.
    pub fn binlog_read(&mut self, history: History) {
        let Feed::Binlog { from_lsn } = self.feed else {
            debug_assert!(false, "binlog_read while feeding from {:?}", self.feed);
            return;
        };
        self.feed = match history {
            History::Purged { .. } => Feed::Snapshot,
            History::Pages(0) => Feed::Ring { from_lsn },
            History::Pages(count) => Feed::Binlog {
                from_lsn: from_lsn.saturating_add(count as u64),
            },
        };
    }

    /// The ring no longer holds the current LSN (its slots were reused first): read the binlog.
    pub fn ring_below_horizon(&mut self) {
        if let Feed::Ring { from_lsn } = self.feed {
            self.feed = Feed::Binlog { from_lsn };
        }
    }

    /// Pages up to `position` went out from the ring, and the ring holds `lag_pages` more sealed
    /// pages the replica has yet to get. Returns `true` when that is more than half the ring, and
    /// the plan has gone back to the binlog.
    pub fn ring_shipped(&mut self, position: u64, lag_pages: u64) -> bool {
        debug_assert!(matches!(self.feed, Feed::Ring { .. }), "{:?}", self.feed);
        if lag_pages > self.ring_slots / 2 {
            self.feed = Feed::Binlog { from_lsn: position };
            true
        } else {
            self.feed = Feed::Ring { from_lsn: position };
            false
        }
    }

    /// The LSN the next page sent will carry, or `None` before a snapshot.
    pub fn next_lsn(&self) -> Option<u64> {
        match self.feed {
            Feed::Snapshot => None,
            Feed::Binlog { from_lsn } | Feed::Ring { from_lsn } => Some(from_lsn),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SERVED: Served = Served {
        origin: Uuid::from_u128(1),
        committed_lsn: 1_000,
    };

    #[test]
    fn admission_refuses_other_databases_and_origins_and_reseeds_impossible_claims() {
        assert!(admit(None, Uuid::nil(), 0).is_err());
        let other = admit(Some(SERVED), Uuid::from_u128(2), 0).unwrap_err();
        assert!(other.contains(&Uuid::from_u128(1).to_string()), "{other}");
        for (origin, from_lsn) in [(Uuid::nil(), 0), (SERVED.origin, 1_000)] {
            assert_eq!(
                admit(Some(SERVED), origin, from_lsn),
                Ok(Admitted {
                    from_lsn,
                    reseeded: false
                })
            );
        }
        assert_eq!(
            admit(Some(SERVED), Uuid::nil(), 1_001),
            Ok(Admitted {
                from_lsn: BOOTSTRAP,
                reseeded: true
            })
        );
        assert_eq!(
            admit(Some(SERVED), Uuid::nil(), BOOTSTRAP),
            Ok(Admitted {
                from_lsn: BOOTSTRAP,
                reseeded: false
            })
        );
    }

    #[test]
    fn a_new_replica_gets_a_snapshot_then_the_binlog_then_the_ring() {
        let mut plan = FeedPlan::new(BOOTSTRAP, 64);
        assert_eq!((plan.feed(), plan.next_lsn()), (Feed::Snapshot, None));
        plan.snapshot_sent(500);
        assert_eq!(plan.feed(), Feed::Binlog { from_lsn: 500 });
        plan.binlog_read(History::Pages(3));
        plan.binlog_read(History::Pages(0));
        assert_eq!(plan.feed(), Feed::Ring { from_lsn: 503 });
        plan.ring_below_horizon();
        assert_eq!(plan.feed(), Feed::Binlog { from_lsn: 503 });
        plan.binlog_read(History::Purged { oldest: 900 });
        assert_eq!(plan.feed(), Feed::Snapshot);
    }

    #[test]
    fn the_ring_is_left_only_beyond_half_of_it() {
        let mut plan = FeedPlan::new(0, 64);
        plan.binlog_read(History::Pages(0));
        assert!(!plan.ring_shipped(10, 32), "exactly half stays on the ring");
        assert_eq!(plan.feed(), Feed::Ring { from_lsn: 10 });
        assert!(plan.ring_shipped(20, 33));
        assert_eq!(plan.feed(), Feed::Binlog { from_lsn: 20 });
    }

    #[derive(Clone, Debug)]
    enum Event {
        Snapshot(u64),
        Binlog(History),
        BelowHorizon,
        Shipped { pages: u64, lag: u64 },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0..1_000_000u64).prop_map(Event::Snapshot),
            (0..300usize).prop_map(|n| Event::Binlog(History::Pages(n))),
            (0..1_000_000u64).prop_map(|oldest| Event::Binlog(History::Purged { oldest })),
            Just(Event::BelowHorizon),
            (0..300u64, 0..200u64).prop_map(|(pages, lag)| Event::Shipped { pages, lag }),
        ]
    }

    proptest! {
        /// Whatever the reads find, the plan never skips or repeats a page outside a snapshot,
        /// snapshots only when the binlog was purged, and sits on the ring only within half of it.
        #[test]
        fn the_plan_never_skips_a_page(from_lsn in 0..1_000_000u64, events in proptest::collection::vec(event(), 0..64)) {
            let mut plan = FeedPlan::new(from_lsn, 128);
            for event in events {
                let before = plan.feed();
                match (before, event) {
                    (Feed::Snapshot, Event::Snapshot(lsn)) => {
                        plan.snapshot_sent(lsn);
                        prop_assert_eq!(plan.next_lsn(), Some(lsn));
                    }
                    (Feed::Binlog { from_lsn }, Event::Binlog(history)) => {
                        plan.binlog_read(history);
                        let expected = match history {
                            History::Purged { .. } => Feed::Snapshot,
                            History::Pages(0) => Feed::Ring { from_lsn },
                            History::Pages(n) => Feed::Binlog { from_lsn: from_lsn + n as u64 },
                        };
                        prop_assert_eq!(plan.feed(), expected);
                    }
                    (Feed::Ring { from_lsn }, Event::BelowHorizon) => {
                        plan.ring_below_horizon();
                        prop_assert_eq!(plan.feed(), Feed::Binlog { from_lsn });
                    }
                    (Feed::Ring { from_lsn }, Event::Shipped { pages, lag }) => {
                        let left = plan.ring_shipped(from_lsn + pages, lag);
                        prop_assert_eq!(left, lag > 64);
                        prop_assert_eq!(plan.next_lsn(), Some(from_lsn + pages));
                    }
                    // An event the shipper cannot report from this feed: nothing happens.
                    _ => {}
                }
            }
        }
    }
}
