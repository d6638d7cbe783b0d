//! Routing decisions, I/O-free: which database a subscription reaches, which holder a replica
//! follows, and where each link's next pages come from.
//!
//! Each link carries one database from a node that holds it to one directly connected replica.
//! Any node that holds a copy serves it (a replica relays), so a replica may know several
//! holders: its *upstreams*. Three decisions are made here and driven by `service`:
//!
//! - [`admit`]: a RESUME names a database, the origin whose log it wants and the LSN it holds
//!   pages up to. It is refused when this node does not serve that database or serves it from
//!   another origin. A RESUME that claims pages beyond what this node holds means one of two
//!   things. At the origin, the replica holds pages this log never wrote (the origin was
//!   restored from an older backup, say): its history is not trusted, and it is re-seeded from
//!   a snapshot. At a relay, the replica is merely ahead of this copy (it followed a faster
//!   path): it is refused as *behind*, so it follows another holder or comes back later, and
//!   nothing it holds is thrown away.
//! - [`Upstreams`]: which holder a replica follows. It tries them in the order given (nearest
//!   first), moves to the next when a link fails or is refused, and backs off only after a whole
//!   round failed, so the death of a relay is routed around at once by whoever else holds the
//!   pages; and it moves (grafts) to another holder whose HAVE offered pages the current one has
//!   not delivered within the graft timeout, so a relay that is alive but stalled is routed
//!   around too.
//! - [`FeedPlan`]: a link's pages come from a full snapshot, from the binlog in batches, or from
//!   the ring as pages seal. The plan starts from the RESUME, moves to the ring once the binlog
//!   has nothing more, and goes back to the binlog whenever the replica falls more than half a
//!   ring behind, so a slow replica never holds the ring; a binlog that retention trimmed below
//!   the replica sends it to a snapshot.
//!
//! Together they run an epidemic broadcast tree (Plumtree) in a narrow form: each replica has
//! exactly one eager upstream (its followed holder) and a lazy link to each other holder it
//! knows (WATCH, answered with HAVE); a GRAFT is a RESUME on a new link and a PRUNE the close of
//! the old one, so duplicates never flow and no PRUNE frame is needed. Pages reach every node
//! once, N − 1 transfers per page, against flooding's 2E − (N − 1); the mesh simulator
//! (`pagemesh-sim mesh`) runs these same decisions over random graphs and grids with links cut,
//! nodes crashed and partitions healed. [`Receipts`] carries each subtree's receipt watermarks
//! to the origin hop by hop. Holders come from the replica's configuration, nearest first, or
//! from [`Members`], the membership view that gossip fills (which nodes serve which database).
//!
//! This departs from DESIGN.md's Plumtree, where every link starts eager and duplicates PRUNE:
//! an earlier `plumtree::Tree` did that and measured the same N − 1 once settled, but the
//! service never ran it, so it went; with one eager upstream per replica the tree never carries
//! a duplicate, not even while it settles. Plumtree settles on fast paths by pruning the slower
//! of two eager copies; here a replica starts with the configured order (nearest first) and
//! moves to a holder whose HAVEs keep announcing pages sooner than its path delivers them
//! ([`Graft::Faster`], Plumtree's optimisation in time rather than hops). In the mesh simulator
//! that brings each node's way from the origin from about 1.2× the shortest path's delay to
//! within a few percent of it (`pagemesh bench mesh` prints both, `stretch`).

mod members;
mod receipts;

pub use members::Members;
pub use receipts::Receipts;

use std::time::{Duration, Instant};

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
    /// This node holds a replica of the database (it relays), not the origin's own log.
    pub relay: bool,
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
/// let served = Served { origin: Uuid::from_u128(7), committed_lsn: 100, relay: false };
/// assert_eq!(admit(Some(served), Uuid::nil(), 40).map(|a| a.from_lsn), Ok(40));
/// // A replica that holds pages this log never wrote is re-seeded from a snapshot.
/// assert_eq!(admit(Some(served), Uuid::nil(), 101).map(|a| a.from_lsn), Ok(BOOTSTRAP));
/// // A relay refuses a replica that is ahead of it: that replica is not wrong, this copy is late.
/// let relay = Served { relay: true, ..served };
/// assert!(admit(Some(relay), Uuid::nil(), 101).unwrap_err().contains("behind"));
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
    let ahead = from_lsn != BOOTSTRAP && from_lsn > served.committed_lsn;
    if ahead && served.relay {
        return Err(format!(
            "this copy is behind: it holds pages below {}, the replica below {from_lsn}; \
             follow another holder or come back later",
            served.committed_lsn
        ));
    }
    let reseeded = ahead;
    Ok(Admitted {
        from_lsn: if reseeded { BOOTSTRAP } else { from_lsn },
        reseeded,
    })
}

/// Refuses a RESUME from node `replica` at a node whose way to the origin (`path`: the node it
/// follows, the node that one follows, and so on) passes through `replica`: admitting it would
/// close a loop of replicas following one another, cut off from the origin. `Err` is the reason
/// to send back.
///
/// ```
/// use pagemesh_net::route::refuse_loop;
/// use uuid::Uuid;
///
/// let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
/// assert!(refuse_loop(&[b, c], a).is_ok());
/// assert!(refuse_loop(&[b, c], c).unwrap_err().contains("loop"));
/// ```
pub fn refuse_loop(path: &[Uuid], replica: Uuid) -> Result<(), String> {
    match path.iter().position(|&node| node == replica) {
        None => Ok(()),
        Some(hops) => Err(format!(
            "routing loop: node {replica} is {} hop(s) up this copy's way to the origin",
            hops + 1
        )),
    }
}

/// Which holder of a database a replica follows, and how long it waits before each attempt.
///
/// Holders are tried in the order given (the nearest first). An attempt that fails (no
/// connection, a refusal, a link that ended before the source said anything) moves on to the
/// next holder at once; only when a whole round has failed does the replica back off, doubling
/// up to a cap, so a dead relay costs one failed connect and a replica ahead of every holder
/// waits instead of spinning. A link that was up and then ended starts a new round from the
/// nearest holder other than the one that just failed.
///
/// A holder that is alive but stalled (cut off from its own upstream) fails nothing, so the
/// replica also *watches* its other holders: each tells it, in HAVE frames on a lazy link, how
/// far it has got ([`heard_have`](Self::heard_have)). An offer of pages this replica lacks
/// starts a clock, and every page the replica receives restarts it, as does every byte that
/// arrives on its link ([`progressed`](Self::progressed): a 1 MiB batch on a slow link is
/// progress long before it is pages); if the clock reaches the graft timeout (an offer
/// outstanding, and no progress at all for that long),
/// [`graft_due`](Self::graft_due) names the nearest holder that offered more, and the replica
/// moves there ([`graft`](Self::graft): Plumtree's GRAFT, and the old link's close is its PRUNE).
/// A move restarts every clock, so the new holder gets a whole timeout to start delivering.
/// A holder's HAVE also names its way to the origin; a holder whose way passes through this
/// replica ([`heard_path`](Self::heard_path)) would close a loop: its offers are ignored (it
/// can only have what it got through this replica), and if it is the current holder the replica
/// should move on ([`current_loops`](Self::current_loops)).
///
/// A holder that is merely behind the one offering keeps the replica progressing, so the tree
/// moves off a stalled path only once the graft timeout passed (the simulator found the flapping
/// an earlier rule allowed: a holder catching a replica up over a slow link was grafted away
/// from before it could deliver, and back again, forever; `pagemesh-sim` seed 13).
///
/// A path that progresses but is slow is left too, for a faster one (Plumtree's optimisation,
/// measured in time rather than hops): each HAVE of pages the replica lacks starts a *lead*
/// sample, which ends when the replica holds those pages ([`received`](Self::received)), so it
/// measures how much sooner that holder had them than the followed path delivered them; a HAVE
/// of less than the replica holds records a lead of zero. When a holder's last
/// [`LEAD_SAMPLES`] leads all exceed the followed holder's own newest lag (its HAVEs against its
/// pages, which travel apart) by the switch lead ([`with_switch_lead`](Self::with_switch_lead)),
/// [`graft_due`](Self::graft_due) names it ([`Graft::Faster`]). A move clears every sample, and
/// the holder left behind now lags the new one, so the tree does not swing back; the switch
/// lead is well above a LAN's jitter, so a LAN's tree never moves for speed.
///
/// ```
/// use std::time::Duration;
/// use pagemesh_net::route::Upstreams;
///
/// let ms = Duration::from_millis;
/// let mut upstreams = Upstreams::new(vec!["near", "far"], ms(50), ms(1_000)).unwrap();
/// assert_eq!(*upstreams.current(), "near");
/// assert_eq!(upstreams.ended(false), Duration::ZERO); // "near" is down: try "far" at once
/// assert_eq!(*upstreams.current(), "far");
/// assert_eq!(upstreams.ended(false), ms(50)); // a whole round failed: back off
/// assert_eq!(upstreams.ended(false), Duration::ZERO);
/// assert_eq!(upstreams.ended(false), ms(100));
/// assert_eq!(*upstreams.current(), "near");
/// assert_eq!(upstreams.ended(true), Duration::ZERO); // "near" served, then ended
/// assert_eq!(*upstreams.current(), "far");
/// ```
#[derive(Clone, Debug)]
pub struct Upstreams<P> {
    holders: Vec<P>,
    /// Per holder: the newest offer of pages this replica lacks, and when its clock started.
    offers: Vec<Option<Offer>>,
    /// Per holder: its way to the origin passes through this replica (as its last HAVE said).
    looping: Vec<bool>,
    /// Per holder: how much sooner than the followed path its HAVEs announced pages.
    leads: Vec<Lead>,
    /// When the newest lead sample was taken: a faster holder is due from then.
    sampled_at: Option<Instant>,
    /// What the replica held when last told: a change is progress, and restarts every clock.
    held: u64,
    graft_timeout: Duration,
    switch_lead: Duration,
    current: usize,
    /// Attempts that failed since a link was last up.
    failed: usize,
    backoff: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
}

/// A holder said it holds every page below `lsn`; the replica has lacked some of it, without
/// progress, since `since`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Offer {
    lsn: u64,
    since: Instant,
}

/// A holder's lead samples, newest first: how much sooner it announced pages (in a HAVE) than
/// the followed path delivered them, zero for a HAVE of nothing new.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Lead {
    /// The LSN a HAVE announced that the replica lacked, and when it was heard.
    pending: Option<(u64, Instant)>,
    samples: [Duration; LEAD_SAMPLES],
    /// How many of `samples` were taken.
    count: usize,
}

impl Lead {
    fn record(&mut self, lead: Duration) {
        self.samples.copy_within(..LEAD_SAMPLES - 1, 1);
        self.samples[0] = lead;
        self.count = (self.count + 1).min(LEAD_SAMPLES);
    }

    /// The smallest of the last [`LEAD_SAMPLES`] samples, once there are that many.
    fn steady(&self) -> Option<Duration> {
        (self.count == LEAD_SAMPLES).then(|| self.samples.iter().copied().min().unwrap_or_default())
    }

    /// The newest sample (zero before any).
    fn newest(&self) -> Duration {
        if self.count == 0 {
            Duration::ZERO
        } else {
            self.samples[0]
        }
    }
}

/// Why [`Upstreams::graft_due`] names a holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Graft {
    /// The followed holder stalled: `holder` offered pages it has not delivered for the graft
    /// timeout.
    Stalled {
        /// The holder to follow (an index into [`Upstreams::holders`]).
        holder: usize,
    },
    /// The followed path is slow: `holder` announced each of the last [`LEAD_SAMPLES`] pages
    /// at least `lead` sooner than the followed holder delivered them.
    Faster {
        /// The holder to follow.
        holder: usize,
        /// The smallest of its leads.
        lead: Duration,
    },
}

impl Graft {
    /// The holder to follow.
    pub fn holder(&self) -> usize {
        match *self {
            Graft::Stalled { holder } | Graft::Faster { holder, .. } => holder,
        }
    }
}

/// The graft timeout of [`Upstreams::new`]: how long an offered page may stay undelivered by the
/// current holder before the replica moves to the holder that offered it.
pub const GRAFT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);

/// The switch lead of [`Upstreams::new`]: how much sooner, every time, another holder must have
/// pages than the followed path delivers them for the replica to move there. A LAN's paths
/// differ by far less, so there the tree moves only off stalls.
pub const SWITCH_LEAD_DEFAULT: Duration = Duration::from_millis(20);

/// How many lead samples in a row a holder must win by the switch lead.
pub const LEAD_SAMPLES: usize = 3;

impl<P> Upstreams<P> {
    /// Follows `holders`, nearest first; `None` if there are none. Backs off from `backoff_min`
    /// up to `backoff_max` between failed rounds; grafts after [`GRAFT_TIMEOUT_DEFAULT`] (see
    /// [`with_graft_timeout`](Self::with_graft_timeout)).
    pub fn new(holders: Vec<P>, backoff_min: Duration, backoff_max: Duration) -> Option<Self> {
        if holders.is_empty() {
            return None;
        }
        Some(Self {
            offers: vec![None; holders.len()],
            looping: vec![false; holders.len()],
            leads: vec![Lead::default(); holders.len()],
            sampled_at: None,
            held: 0,
            graft_timeout: GRAFT_TIMEOUT_DEFAULT,
            switch_lead: SWITCH_LEAD_DEFAULT,
            holders,
            current: 0,
            failed: 0,
            backoff: backoff_min,
            backoff_min,
            backoff_max: backoff_max.max(backoff_min),
        })
    }

    /// Moves to a holder that offered missing pages once they stayed undelivered for `timeout`.
    pub fn with_graft_timeout(mut self, timeout: Duration) -> Self {
        self.graft_timeout = timeout;
        self
    }

    /// Moves to a holder whose pages come at least `lead` sooner than the followed path's, each
    /// of [`LEAD_SAMPLES`] times in a row. `Duration::MAX` never moves for speed.
    pub fn with_switch_lead(mut self, lead: Duration) -> Self {
        self.switch_lead = lead;
        self
    }

    /// The holder to try now.
    pub fn current(&self) -> &P {
        &self.holders[self.current]
    }

    /// Its index in [`holders`](Self::holders).
    pub fn current_index(&self) -> usize {
        self.current
    }

    /// Holder `holder` (an index into [`holders`](Self::holders); others are ignored) said, at
    /// `now`, that it holds every page below `lsn`; this replica holds every page below `held`.
    pub fn heard_have(&mut self, holder: usize, lsn: u64, held: u64, now: Instant) {
        self.observe(held, now);
        let looping = self.looping.get(holder).copied().unwrap_or(false);
        let Some(offer) = self.offers.get_mut(holder) else {
            return;
        };
        *offer = match *offer {
            _ if lsn <= held || looping => None,
            // An outstanding offer keeps its clock: only progress restarts it.
            Some(Offer { since, .. }) => Some(Offer { lsn, since }),
            None => Some(Offer { lsn, since: now }),
        };
        let lead = &mut self.leads[holder];
        if looping {
            *lead = Lead::default();
        } else if lead.pending.is_none() {
            match lsn.cmp(&held) {
                // Timed until the replica holds it; one sample at a time.
                std::cmp::Ordering::Greater => lead.pending = Some((lsn, now)),
                // Behind the replica: no lead at all.
                std::cmp::Ordering::Less => {
                    lead.record(Duration::ZERO);
                    self.sampled_at = Some(now);
                }
                // Level (an idle origin, say): nothing learned.
                std::cmp::Ordering::Equal => {}
            }
        }
    }

    /// Holder `holder` said whether its way to the origin passes through this replica
    /// (`through_me`); until it says otherwise, its offers are ignored. Out-of-range indices are
    /// ignored.
    pub fn heard_path(&mut self, holder: usize, through_me: bool) {
        if let Some(looping) = self.looping.get_mut(holder) {
            *looping = through_me;
            if through_me {
                self.offers[holder] = None;
                self.leads[holder] = Lead::default();
            }
        }
    }

    /// Whether the current holder's way to the origin passes through this replica: following it
    /// closes a loop, and the replica should end that link (and [`ended`](Self::ended) moves
    /// on).
    pub fn current_loops(&self) -> bool {
        self.looping[self.current]
    }

    /// Bytes arrived on the link to the current holder at `now`: progress, which restarts every
    /// offer's clock.
    pub fn progressed(&mut self, now: Instant) {
        for offer in self.offers.iter_mut().flatten() {
            offer.since = now;
        }
    }

    /// The replica holds every page below `held` at `now` (it just received pages): the lead
    /// samples of the pages it now holds end here. Returns whether a graft for speed is due
    /// (then call [`graft_due`](Self::graft_due)).
    pub fn received(&mut self, held: u64, now: Instant) -> bool {
        self.observe(held, now);
        self.faster().is_some()
    }

    /// The replica holds every page below `held` at `now`: if that changed, it progressed, and
    /// every offer's clock restarts (offers it now holds are dropped), and the lead samples of
    /// what it now holds end.
    fn observe(&mut self, held: u64, now: Instant) {
        if held == self.held {
            return;
        }
        self.held = held;
        for offer in &mut self.offers {
            *offer = offer.filter(|o| o.lsn > held).map(|o| Offer {
                lsn: o.lsn,
                since: now,
            });
        }
        for lead in &mut self.leads {
            if let Some((lsn, heard)) = lead.pending.filter(|&(lsn, _)| lsn <= held) {
                debug_assert!(lsn <= held);
                lead.pending = None;
                lead.record(now.saturating_duration_since(heard));
                self.sampled_at = Some(now);
            }
        }
    }

    /// The holder other than the current one that won each of its last [`LEAD_SAMPLES`] lead
    /// samples by the switch lead over the followed holder's own newest lag, the biggest winner
    /// first (the nearest among equals), with its smallest lead.
    fn faster(&self) -> Option<(usize, Duration)> {
        let lag = self.leads[self.current].newest();
        let needed = lag.saturating_add(self.switch_lead);
        let mut best: Option<(usize, Duration)> = None;
        for (holder, lead) in self.leads.iter().enumerate() {
            if holder == self.current || self.looping[holder] {
                continue;
            }
            if let Some(steady) = lead.steady().filter(|&steady| steady >= needed) {
                if best.is_none_or(|(_, won)| steady > won) {
                    best = Some((holder, steady));
                }
            }
        }
        best
    }

    /// The holder the replica (holding every page below `held`, at `now`) should
    /// [`graft`](Self::graft): the nearest other holder that offers pages it lacks when it has
    /// made no progress for the graft timeout with that offer outstanding (the followed holder
    /// stalled), or else one whose pages come steadily sooner by the switch lead (the followed
    /// path is slow).
    pub fn graft_due(&mut self, held: u64, now: Instant) -> Option<Graft> {
        self.observe(held, now);
        let timeout = self.graft_timeout;
        let stalled = (0..self.holders.len()).find(|&holder| {
            holder != self.current
                && self.offers[holder]
                    .is_some_and(|o| now.saturating_duration_since(o.since) >= timeout)
        });
        match stalled {
            Some(holder) => Some(Graft::Stalled { holder }),
            None => self
                .faster()
                .map(|(holder, lead)| Graft::Faster { holder, lead }),
        }
    }

    /// When [`graft_due`](Self::graft_due) may next name a holder: at once if a faster holder
    /// is known, else when the first pending offer's clock runs out.
    pub fn graft_deadline(&self) -> Option<Instant> {
        let faster = self.faster().and(self.sampled_at);
        self.offers
            .iter()
            .enumerate()
            .filter(|(holder, _)| *holder != self.current)
            .filter_map(|(_, offer)| offer.map(|o| o.since + self.graft_timeout))
            .chain(faster)
            .min()
    }

    /// Follow `holder` next (it offered what the current one did not deliver): no wait, and
    /// the failures so far are forgotten. Out-of-range indices are ignored.
    pub fn graft(&mut self, holder: usize) {
        if holder < self.holders.len() {
            self.current = holder;
            self.failed = 0;
            self.backoff = self.backoff_min;
            self.restart_clocks();
        }
    }

    /// A new link gets a whole graft timeout: offers are heard afresh, and leads measured
    /// against the new path.
    fn restart_clocks(&mut self) {
        self.offers.iter_mut().for_each(|offer| *offer = None);
        self.leads
            .iter_mut()
            .for_each(|lead| *lead = Lead::default());
        self.sampled_at = None;
    }

    /// Every holder, nearest first.
    pub fn holders(&self) -> &[P] {
        &self.holders
    }

    /// The attempt at [`current`](Self::current) ended; `was_up` if the source served it
    /// (anything but a refusal came back). Moves to the holder to try next and returns how long
    /// to wait before trying it.
    pub fn ended(&mut self, was_up: bool) -> Duration {
        self.restart_clocks();
        let count = self.holders.len();
        if was_up {
            self.failed = 0;
            self.backoff = self.backoff_min;
            self.current = usize::from(self.current == 0 && count > 1);
            return Duration::ZERO;
        }
        self.failed += 1;
        self.current = (self.current + 1) % count;
        if !self.failed.is_multiple_of(count) {
            return Duration::ZERO;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(self.backoff_max);
        wait
    }
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
        relay: false,
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
    fn a_relay_refuses_a_replica_ahead_of_it_and_admits_the_rest() {
        let relay = Served {
            relay: true,
            ..SERVED
        };
        let behind = admit(Some(relay), Uuid::nil(), 1_001).unwrap_err();
        assert!(
            behind.contains("behind") && behind.contains("1001"),
            "{behind}"
        );
        for from_lsn in [0, 1_000, BOOTSTRAP] {
            assert_eq!(
                admit(Some(relay), SERVED.origin, from_lsn),
                Ok(Admitted {
                    from_lsn,
                    reseeded: false
                })
            );
        }
    }

    #[test]
    fn upstreams_back_off_only_after_a_whole_round_failed() {
        let ms = Duration::from_millis;
        assert!(Upstreams::<u8>::new(Vec::new(), ms(1), ms(2)).is_none());
        let mut one = Upstreams::new(vec![7u8], ms(50), ms(120)).unwrap();
        let waits: Vec<_> = (0..4).map(|_| one.ended(false)).collect();
        assert_eq!(waits, [ms(50), ms(100), ms(120), ms(120)]);
        assert_eq!(one.ended(true), Duration::ZERO);
        assert_eq!((*one.current(), one.ended(false)), (7, ms(50)));

        let mut three = Upstreams::new(vec![0u8, 1, 2], ms(50), ms(1_000)).unwrap();
        three.ended(false);
        assert_eq!(*three.current(), 1);
        // The link to holder 1 was up, then ended: a new round from the nearest, holder 0.
        assert_eq!(three.ended(true), Duration::ZERO);
        assert_eq!(*three.current(), 0);
        // ...and when the nearest is the one that ended, from the next nearest.
        three.ended(true);
        assert_eq!(*three.current(), 1);
    }

    #[test]
    fn a_stalled_holder_is_grafted_away_from_and_a_slightly_late_one_is_not() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut up = Upstreams::new(vec!["relay", "origin"], ms(50), ms(1_000))
            .unwrap()
            .with_graft_timeout(ms(500));
        // The origin offers pages up to 100; the relay delivers them 300 ms later: in time.
        up.heard_have(1, 100, 40, t0);
        assert_eq!(up.graft_deadline(), Some(t0 + ms(500)));
        assert_eq!(up.graft_due(40, t0 + ms(300)), None);
        assert_eq!(up.graft_due(100, t0 + ms(600)), None, "delivered in time");
        assert_eq!(up.graft_deadline(), None);
        // A slow catch-up that keeps progressing is never grafted away from, however far behind.
        up.heard_have(1, 10_000, 100, t0 + ms(600));
        for step in 1..=10u64 {
            assert_eq!(up.graft_due(100 + step, t0 + ms(600 + 400 * step)), None);
        }
        up.heard_have(1, 110, 110, t0 + ms(5_000));
        // Offers keep coming while the relay keeps up within the timeout: never a graft.
        for step in 1..20u64 {
            let now = t0 + ms(600 + 100 * step);
            up.heard_have(1, 100 + 10 * step, 100 + 10 * (step - 1), now);
            assert_eq!(up.graft_due(100 + 10 * (step - 1), now), None);
        }
        // The relay stalls at 290; the origin's offer of 300 ages past the timeout.
        let stall = t0 + ms(3_000);
        up.heard_have(1, 300, 290, stall);
        up.heard_have(1, 400, 290, stall + ms(200));
        assert_eq!(up.graft_due(290, stall + ms(499)), None);
        assert_eq!(
            up.graft_due(290, stall + ms(500)),
            Some(Graft::Stalled { holder: 1 })
        );
        up.graft(1);
        assert_eq!((*up.current(), up.current_index()), ("origin", 1));
        assert_eq!(
            up.graft_due(290, stall + ms(600)),
            None,
            "the current holder is not grafted"
        );
        // An offer from the relay, which holds nothing new, is nothing.
        up.heard_have(0, 290, 290, stall + ms(700));
        assert_eq!(up.graft_deadline(), None);
        up.heard_have(7, 1_000, 0, stall);
        // Bytes moving on the link restart the clock even while no page completes.
        let slow = stall + ms(1_000);
        up.heard_have(0, 500, 290, slow);
        up.progressed(slow + ms(400));
        assert_eq!(up.graft_due(290, slow + ms(800)), None);
        assert_eq!(
            up.graft_due(290, slow + ms(900)),
            Some(Graft::Stalled { holder: 0 })
        );
    }

    #[test]
    fn a_steadily_faster_holder_is_grafted_and_a_slightly_faster_one_is_not() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut up = Upstreams::new(vec!["slow", "fast", "level"], ms(50), ms(1_000))
            .unwrap()
            .with_switch_lead(ms(20));
        let mut held = 0;
        // Every 50 ms: "fast" announces the next 5 pages 30 ms before "slow" delivers them,
        // "level" 10 ms before.
        for round in 0..2u64 {
            let at = t0 + ms(50 * round);
            up.heard_have(1, held + 5, held, at);
            up.heard_have(2, held + 5, held, at + ms(20));
            held += 5;
            assert!(
                !up.received(held, at + ms(30)),
                "two samples are not enough"
            );
            assert_eq!(up.graft_due(held, at + ms(30)), None);
        }
        let at = t0 + ms(100);
        up.heard_have(1, held + 5, held, at);
        up.heard_have(2, held + 5, held, at + ms(20));
        held += 5;
        assert!(up.received(held, at + ms(30)));
        assert_eq!(up.graft_deadline(), Some(at + ms(30)), "due at once");
        assert_eq!(
            up.graft_due(held, at + ms(30)),
            Some(Graft::Faster {
                holder: 1,
                lead: ms(30)
            })
        );
        up.graft(1);
        assert_eq!(
            up.graft_due(held, at + ms(31)),
            None,
            "a move clears the samples"
        );
        // The holder left behind now lags: its HAVEs hold less than the replica.
        for round in 0..5u64 {
            let at = t0 + ms(200 + 50 * round);
            up.heard_have(0, held - 3, held, at);
            held += 5;
            assert!(!up.received(held, at + ms(1)));
        }
        assert_eq!(up.graft_due(held, t0 + ms(500)), None);
    }

    #[test]
    fn a_lead_is_counted_beyond_the_followed_holders_own_lag() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut up = Upstreams::new(vec!["followed", "other"], ms(50), ms(1_000))
            .unwrap()
            .with_switch_lead(ms(20));
        let mut held = 0;
        // Catching up: both announce pages long before they arrive, the followed one as much
        // as the other, so neither path is faster.
        for round in 0..6u64 {
            let at = t0 + ms(100 * round);
            up.heard_have(0, held + 100, held, at);
            up.heard_have(1, held + 100, held, at);
            held += 100;
            assert!(!up.received(held, at + ms(80)));
        }
        assert_eq!(up.graft_due(held, t0 + ms(700)), None);
        // A looping holder is never grafted, however fast it looks.
        up.heard_path(1, true);
        for round in 0..6u64 {
            let at = t0 + ms(1_000 + 100 * round);
            up.heard_have(1, held + 100, held, at);
            held += 100;
            assert!(!up.received(held, at + ms(80)));
        }
    }

    proptest! {
        /// However HAVEs, deliveries and time interleave: a graft names another holder, one that
        /// offered pages the replica lacked at least a graft timeout before and still lacks, and
        /// only after the replica made no progress for the graft timeout.
        #[test]
        fn grafts_go_only_to_holders_whose_offers_went_undelivered(
            steps in proptest::collection::vec(
                (0..4usize, 0..50u64, 0..400u64, any::<bool>(), proptest::bool::weighted(0.2)),
                0..64,
            ),
        ) {
            let timeout = Duration::from_millis(100);
            let t0 = Instant::now();
            let mut up = Upstreams::new(vec![0u8, 1, 2], Duration::from_millis(10), Duration::from_millis(80))
                .unwrap()
                .with_graft_timeout(timeout)
                .with_switch_lead(Duration::MAX);
            let (mut held, mut now, mut progressed) = (0u64, t0, t0);
            // Per holder: (lsn, when) of every offer heard.
            let mut heard: Vec<Vec<(u64, Instant)>> = vec![Vec::new(); 3];
            // Per holder: its way to the origin passes through this replica.
            let mut looping = [false; 3];
            for (holder, delivered, elapse, is_have, through_me) in steps {
                now += Duration::from_millis(elapse);
                if is_have {
                    let lsn = held + delivered;
                    up.heard_path(holder, through_me);
                    up.heard_have(holder, lsn, held, now);
                    if holder < 3 {
                        looping[holder] = through_me;
                        if through_me {
                            heard[holder].clear();
                        } else {
                            heard[holder].push((lsn, now));
                        }
                    }
                    prop_assert_eq!(up.current_loops(), looping[up.current_index()]);
                } else if delivered > 0 {
                    held += delivered;
                    progressed = now;
                }
                if let Some(graft) = up.graft_due(held, now) {
                    let Graft::Stalled { holder: graft } = graft else {
                        return Err(TestCaseError::fail(format!("{graft:?} without a switch lead")));
                    };
                    prop_assert!(graft != up.current_index());
                    prop_assert!(!looping[graft], "grafted {} whose way passes through here", graft);
                    prop_assert!(now.duration_since(progressed) >= timeout, "grafted while progressing");
                    prop_assert!(
                        heard[graft].iter().any(|&(lsn, at)| lsn > held && now.duration_since(at) >= timeout),
                        "grafted {graft} without an offer undelivered for the timeout"
                    );
                    up.graft(graft);
                }
            }
        }
    }

    proptest! {
        /// Two paths of fixed delay from the origin, the followed one `slow_ms`, the other
        /// `fast_ms`, pages every 10 ms and HAVEs every `have_ms`: the replica moves for speed
        /// only to the faster path, always when it is faster by the switch lead and a page
        /// interval, never when it is faster by less than the switch lead.
        #[test]
        fn only_a_path_faster_by_the_switch_lead_is_grafted_for_speed(
            slow_ms in 0..200u64,
            fast_ms in 0..200u64,
            have_ms in 20..100u64,
        ) {
            let ms = Duration::from_millis;
            let (lead, page) = (ms(20), 10u64);
            let t0 = Instant::now();
            let mut up = Upstreams::new(vec!["followed", "other"], ms(10), ms(80))
                .unwrap()
                .with_switch_lead(lead);
            // Pages written at 0, 10, 20, ... ms; the followed path delivers page i at
            // i·10 + slow_ms, the other's HAVEs at t say it has every page written by t − fast_ms.
            let has = |delay: u64, t: u64| if t < delay { 0 } else { (t - delay) / page + 1 };
            let (mut held, mut grafted) = (0u64, None);
            for t in 0..3_000u64 {
                let now = t0 + ms(t);
                let arrived = has(slow_ms, t);
                if arrived > held {
                    held = arrived;
                    up.received(held, now);
                }
                if t % have_ms == 0 {
                    up.heard_have(1, has(fast_ms, t), held, now);
                }
                if let Some(graft) = up.graft_due(held, now) {
                    grafted = Some(graft);
                    break;
                }
            }
            match grafted {
                None => prop_assert!(
                    slow_ms < fast_ms + 20 + page,
                    "never moved off a path {slow_ms} ms slow for one {fast_ms} ms"
                ),
                Some(Graft::Faster { holder, lead: won }) => {
                    prop_assert_eq!(holder, 1);
                    prop_assert!(won >= lead);
                    prop_assert!(slow_ms >= fast_ms + 20, "moved for {fast_ms} ms from {slow_ms} ms");
                }
                Some(other) => prop_assert!(false, "{other:?}"),
            }
        }
    }

    proptest! {
        /// Whatever happens, every holder is tried within a round, and no round of failures
        /// passes without a wait: a replica never spins.
        #[test]
        fn upstreams_try_everyone_and_never_spin(count in 1..6usize, events in proptest::collection::vec(any::<bool>(), 0..64)) {
            let ms = Duration::from_millis;
            let mut upstreams = Upstreams::new((0..count).collect(), ms(10), ms(80)).unwrap();
            let mut tried = vec![*upstreams.current()];
            let mut failed_without_wait = 0;
            for was_up in events {
                let wait = upstreams.ended(was_up);
                if was_up {
                    prop_assert_eq!(wait, Duration::ZERO);
                    failed_without_wait = 0;
                    tried.clear();
                } else if wait.is_zero() {
                    failed_without_wait += 1;
                    prop_assert!(failed_without_wait < count, "a round of failures without a wait");
                } else {
                    prop_assert!(wait >= ms(10) && wait <= ms(80));
                    failed_without_wait = 0;
                }
                tried.push(*upstreams.current());
                if !was_up && tried.len() > count {
                    let round: std::collections::BTreeSet<_> = tried[tried.len() - count..].iter().collect();
                    prop_assert_eq!(round.len(), count, "a round skipped a holder");
                }
            }
        }
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
