//! Routing one origin's pages across the mesh: an epidemic broadcast tree (Plumtree), I/O-free.
//!
//! Every link is hot, but for each origin a node pushes pages *eagerly* only along its tree
//! links, and tells its other (*lazy*) links what it holds with HAVE (origin, highest contiguous
//! LSN). The tree builds and heals itself:
//!
//! - every new link starts eager, so the first pages flood;
//! - a node that receives pages it already holds from an eager peer PRUNEs that peer (the peer
//!   makes the link lazy): the copy that arrived first came along a faster path, which stays;
//! - a node that hears, on a lazy link, of pages it lacks, and still lacks them a graft timeout
//!   later, GRAFTs that peer (RESUME from there; the link becomes eager both ways): a failed link
//!   or node upstream is routed around by whoever still has the pages.
//!
//! Flooding with visited lists costs 2E − (N − 1) page transfers per page on a graph of E links;
//! the tree costs about N − 1 once it has settled (measured by the simulator, `pagemesh-sim
//! mesh`).
//!
//! Pages of one origin form a stream: a node holds every page below its `held` LSN, receives
//! runs that start at or below it (the part below is a duplicate) and never forwards a page it
//! does not hold, so a page can never be skipped and runs never loop. [`Tree`] is one node's
//! state for one origin; it takes what arrived and `now`, and returns [`Action`]s for the driver
//! to carry out. Peers are whatever the driver names them by (`P`): a node uuid in a node, an
//! index in the simulator.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What the driver must do for a [`Tree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<P> {
    /// Send the pages from `from_lsn` up to `to_lsn` (exclusive) to `peer`.
    Push {
        /// The peer.
        peer: P,
        /// First page.
        from_lsn: u64,
        /// One past the last page.
        to_lsn: u64,
    },
    /// Tell `peer` that every page below `lsn` is held here.
    Have {
        /// The peer.
        peer: P,
        /// Pages below this are held.
        lsn: u64,
    },
    /// Ask `peer` to push pages from `from_lsn` on: it becomes this node's eager link.
    Graft {
        /// The peer.
        peer: P,
        /// Where pushing resumes.
        from_lsn: u64,
    },
    /// Ask `peer` to stop pushing: its link becomes lazy.
    Prune {
        /// The peer.
        peer: P,
    },
}

/// What a peer is known to hold, and whether this node pushes to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PeerState {
    /// Pages are pushed to it (it is a tree link of this node).
    eager: bool,
    /// Every page below this is known to be held by the peer (or was pushed to it); `None`
    /// until it said.
    known: Option<u64>,
    /// What this node last told it with HAVE.
    told: u64,
    /// It announced pages this node lacks: the highest, and since when.
    offers: Option<(u64, Instant)>,
}

/// One node's broadcast state for one origin's pages. See the module docs.
#[derive(Clone, Debug)]
pub struct Tree<P> {
    held: u64,
    peers: BTreeMap<P, PeerState>,
    graft_timeout: Duration,
    have_interval: Duration,
    /// When lazy peers were last told what this node holds.
    last_have: Option<Instant>,
    /// When lazy peers are next due a HAVE (something they were not told is held).
    have_due: Option<Instant>,
    /// Duplicates received (pages), for the driver's figures.
    duplicate_pages: u64,
    /// The peer that last delivered pages this node lacked: its way to the origin.
    upstream: Option<P>,
}

impl<P: Copy + Ord> Tree<P> {
    /// A node holding every page below `held`. A lazy peer's offer of pages this node lacks is
    /// taken up (GRAFT) after `graft_timeout`; lazy peers hear HAVE at most every
    /// `have_interval`.
    pub fn new(held: u64, graft_timeout: Duration, have_interval: Duration) -> Self {
        Self {
            held,
            peers: BTreeMap::new(),
            graft_timeout,
            have_interval,
            last_have: None,
            have_due: None,
            duplicate_pages: 0,
            upstream: None,
        }
    }

    /// Every page below this is held here.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Pages received that were held already.
    pub fn duplicate_pages(&self) -> u64 {
        self.duplicate_pages
    }

    /// The peers pages are pushed to.
    pub fn eager_peers(&self) -> impl Iterator<Item = P> + '_ {
        self.peers
            .iter()
            .filter(|(_, state)| state.eager)
            .map(|(peer, _)| *peer)
    }

    /// Whether pages are pushed to `peer`.
    pub fn is_eager(&self, peer: P) -> bool {
        self.peers.get(&peer).is_some_and(|state| state.eager)
    }

    /// A link to `peer` came up: it starts eager, and hears what this node holds.
    pub fn link_up(&mut self, peer: P, out: &mut Vec<Action<P>>) {
        self.peers.insert(
            peer,
            PeerState {
                eager: true,
                known: None,
                told: self.held,
                offers: None,
            },
        );
        out.push(Action::Have {
            peer,
            lsn: self.held,
        });
    }

    /// The link to `peer` went down.
    pub fn link_down(&mut self, peer: P) {
        self.peers.remove(&peer);
        if self.upstream == Some(peer) {
            self.upstream = None;
        }
    }

    /// The peer that last delivered pages this node lacked, while its link is up: where receipts
    /// go on their way to the origin ([`Receipts`]).
    pub fn upstream(&self) -> Option<P> {
        self.upstream
    }

    /// This node itself appended pages up to `lsn` at `now` (it is the origin): push them on.
    pub fn appended(&mut self, lsn: u64, now: Instant, out: &mut Vec<Action<P>>) {
        debug_assert!(lsn >= self.held, "the origin's log never moves back");
        if lsn > self.held {
            self.held = lsn;
            self.push(now, out);
        }
    }

    /// Pages `from_lsn..to_lsn` arrived from `peer`. Returns the part this node did not hold
    /// (to ingest), or `None` if the run starts beyond what this node holds (the sender skipped
    /// pages: the driver must refuse the run and drop the link).
    pub fn received(
        &mut self,
        peer: P,
        from_lsn: u64,
        to_lsn: u64,
        now: Instant,
        out: &mut Vec<Action<P>>,
    ) -> Option<(u64, u64)> {
        if from_lsn > self.held {
            return None;
        }
        let fresh = (self.held.max(from_lsn), to_lsn.max(self.held));
        let duplicates = self.held.min(to_lsn) - from_lsn;
        self.duplicate_pages += duplicates;
        if let Some(state) = self.peers.get_mut(&peer) {
            // The sender holds what it sent: never push those pages back to it.
            state.known = Some(state.known.unwrap_or(0).max(to_lsn));
            if duplicates > 0 && state.eager {
                // Another path delivered first: this link leaves the tree.
                state.eager = false;
                out.push(Action::Prune { peer });
            }
        }
        if to_lsn > self.held {
            self.held = to_lsn;
            self.upstream = Some(peer);
            self.push(now, out);
        } else if duplicates > 0 {
            self.have_soon(now);
        }
        Some(fresh)
    }

    /// `peer` holds every page below `lsn`.
    pub fn have(&mut self, peer: P, lsn: u64, now: Instant, out: &mut Vec<Action<P>>) {
        let held = self.held;
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let first_word = state.known.is_none();
        state.known = Some(state.known.unwrap_or(0).max(lsn));
        if lsn > held && !state.eager {
            let since = state.offers.map_or(now, |(_, since)| since);
            state.offers = Some((lsn, since));
        }
        if first_word {
            // Now that its position is known, an eager peer can be pushed to.
            self.push(now, out);
        }
    }

    /// `peer` asked at `now` for pages from `from_lsn` on: it becomes eager.
    pub fn graft(&mut self, peer: P, from_lsn: u64, now: Instant, out: &mut Vec<Action<P>>) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.eager = true;
            state.known = Some(from_lsn);
            self.push(now, out);
        }
    }

    /// `peer` asked this node, at `now`, to stop pushing: it becomes lazy.
    pub fn prune(&mut self, peer: P, now: Instant) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.eager = false;
            self.have_soon(now);
        }
    }

    /// Lazy peers are due a HAVE: at once, or an interval after the last round.
    fn have_soon(&mut self, now: Instant) {
        if self.have_due.is_none() {
            let due = self
                .last_have
                .map_or(now, |at| (at + self.have_interval).max(now));
            self.have_due = Some(due);
        }
    }

    /// When [`Tree::handle_timeout`] has something to do: a graft falling due, or HAVEs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let grafts = self
            .peers
            .values()
            .filter_map(|state| state.offers)
            .map(|(_, since)| since + self.graft_timeout)
            .min();
        match (grafts, self.have_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// At `now`: grafts the lazy peer whose offer of missing pages has waited longest (if past
    /// the graft timeout), and tells lazy peers what this node holds.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Action<P>>) {
        let held = self.held;
        // Offers this node no longer needs are dropped.
        for state in self.peers.values_mut() {
            if state.offers.is_some_and(|(lsn, _)| lsn <= held) || state.eager {
                state.offers = None;
            }
        }
        let due = self
            .peers
            .iter()
            .filter_map(|(peer, state)| state.offers.map(|(_, since)| (since, *peer)))
            .filter(|(since, _)| *since + self.graft_timeout <= now)
            .min();
        if let Some((_, peer)) = due {
            if let Some(state) = self.peers.get_mut(&peer) {
                state.eager = true;
                state.offers = None;
                out.push(Action::Graft {
                    peer,
                    from_lsn: held,
                });
            }
            // The others wait a timeout more: the graft may be all that was needed.
            for state in self.peers.values_mut() {
                if let Some((lsn, _)) = state.offers {
                    state.offers = Some((lsn, now));
                }
            }
        }
        if self.have_due.is_some_and(|due| due <= now) {
            self.have_due = None;
            self.last_have = Some(now);
            for (peer, state) in &mut self.peers {
                if !state.eager && state.told < held {
                    state.told = held;
                    out.push(Action::Have {
                        peer: *peer,
                        lsn: held,
                    });
                }
            }
        }
    }

    /// Pushes what each eager peer lacks of what this node holds; lazy peers hear of it soon.
    fn push(&mut self, now: Instant, out: &mut Vec<Action<P>>) {
        let held = self.held;
        if self
            .peers
            .values()
            .any(|state| !state.eager && state.told < held)
        {
            self.have_soon(now);
        }
        for (peer, state) in &mut self.peers {
            let Some(known) = state.known else { continue };
            if state.eager && known < held {
                out.push(Action::Push {
                    peer: *peer,
                    from_lsn: known,
                    to_lsn: held,
                });
                state.known = Some(held);
                state.told = held;
            }
        }
    }
}

/// Receipt watermarks of a node's subtree, on their way to the origin: the highest LSN below
/// which each node (anywhere downstream) holds every page.
///
/// Each node records its own watermark and merges the reports of the peers it feeds, keeping the
/// highest per node, and reports what changed to its [`Tree::upstream`]; the origin so learns
/// of every receiver without a link to each, and a `Replicated(n)` commit is released once
/// [`Receipts::holders`] reaches n. A report names each node once, so the book is bounded by the
/// number of nodes (and by `nodes_max`, beyond which reports of new nodes are refused). A
/// relaying node that dies takes no receipt back: its subtree re-grafts, and reports again
/// through its new upstream; a commit waiting meanwhile waits until its timeout.
#[derive(Clone, Debug)]
pub struct Receipts<N> {
    own: N,
    book: BTreeMap<N, u64>,
    /// Entries changed since the last report.
    changed: BTreeMap<N, u64>,
    nodes_max: usize,
}

impl<N: Copy + Ord> Receipts<N> {
    /// The book of node `own`, holding at most `nodes_max` nodes.
    pub fn new(own: N, nodes_max: usize) -> Self {
        Self {
            own,
            book: BTreeMap::new(),
            changed: BTreeMap::new(),
            nodes_max,
        }
    }

    /// Whether the book has an entry for `node`.
    pub fn knows(&self, node: N) -> bool {
        self.book.contains_key(&node)
    }

    /// Whether the book holds `nodes_max` nodes: [`Receipts::record`] refuses new ones.
    pub fn is_full(&self) -> bool {
        self.book.len() >= self.nodes_max
    }

    /// `node` holds every page below `lsn`; returns whether that is news (a node not known
    /// before is news whatever its watermark, even 0: upstream counts it as a node that holds
    /// every page below `lsn`, and a database with nothing written yet has no other way to learn
    /// of it).
    pub fn record(&mut self, node: N, lsn: u64) -> bool {
        let full = self.book.len() >= self.nodes_max;
        match self.book.get_mut(&node) {
            Some(entry) if lsn <= *entry => return false,
            Some(entry) => *entry = lsn,
            None if full => return false,
            None => {
                self.book.insert(node, lsn);
            }
        }
        self.changed.insert(node, lsn);
        true
    }

    /// The entries changed since the last report (to send upstream), if any.
    pub fn take_report(&mut self) -> Option<Vec<(N, u64)>> {
        if self.changed.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.changed).into_iter().collect())
    }

    /// Puts every entry in the next report: the node has a new upstream, which may have heard
    /// none of it (what went up the old way may have died with it).
    pub fn report_all(&mut self) {
        self.changed = self.book.clone();
    }

    /// Nodes other than this one known to hold every page below `lsn_end`.
    pub fn holders(&self, lsn_end: u64) -> usize {
        self.book
            .iter()
            .filter(|(node, lsn)| **node != self.own && **lsn >= lsn_end)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GRAFT: Duration = Duration::from_millis(100);
    const HAVE: Duration = Duration::from_millis(10);

    fn tree(held: u64) -> Tree<u32> {
        Tree::new(held, GRAFT, HAVE)
    }

    #[test]
    fn pages_flood_new_links_then_a_duplicate_prunes_its_sender() {
        let t0 = Instant::now();
        let mut node = tree(0);
        let mut out = Vec::new();
        node.link_up(1, &mut out);
        node.link_up(2, &mut out);
        node.have(1, 0, t0, &mut out);
        node.have(2, 0, t0, &mut out);
        out.clear();
        // From 1 first: pushed on to 2 (not back to 1).
        assert_eq!(node.received(1, 0, 5, t0, &mut out), Some((0, 5)));
        assert_eq!(
            out,
            [Action::Push {
                peer: 2,
                from_lsn: 0,
                to_lsn: 5
            }]
        );
        out.clear();
        // The same pages from 2 (it got them another way): 2 leaves the tree.
        assert_eq!(node.received(2, 0, 5, t0, &mut out), Some((5, 5)));
        assert_eq!(out, [Action::Prune { peer: 2 }]);
        assert_eq!(node.duplicate_pages(), 5);
        assert!(!node.is_eager(2));
        // A run beyond what is held is refused: nothing may be skipped.
        assert_eq!(node.received(1, 7, 9, t0, &mut out), None);
    }

    #[test]
    fn a_lazy_offer_of_missing_pages_is_grafted_after_the_timeout() {
        let t0 = Instant::now();
        let mut node = tree(10);
        let mut out = Vec::new();
        node.link_up(1, &mut out);
        node.prune(1, t0);
        node.have(1, 20, t0, &mut out);
        node.handle_timeout(t0, &mut out);
        out.clear();
        assert_eq!(node.poll_timeout(), Some(t0 + GRAFT));
        node.handle_timeout(t0 + GRAFT / 2, &mut out);
        assert!(out.is_empty(), "{out:?}");
        node.handle_timeout(t0 + GRAFT, &mut out);
        assert_eq!(
            out,
            [Action::Graft {
                peer: 1,
                from_lsn: 10
            }]
        );
        assert!(node.is_eager(1));
        // The grafted side pushes what the grafter lacks.
        let mut upstream = tree(20);
        let mut out = Vec::new();
        upstream.link_up(9, &mut out);
        upstream.prune(9, t0);
        out.clear();
        upstream.graft(9, 10, t0, &mut out);
        assert_eq!(
            out,
            [Action::Push {
                peer: 9,
                from_lsn: 10,
                to_lsn: 20
            }]
        );
    }

    #[test]
    fn lazy_peers_hear_what_is_held_at_most_every_interval() {
        let t0 = Instant::now();
        let mut node = tree(0);
        let mut out = Vec::new();
        node.link_up(1, &mut out);
        node.have(1, 0, t0, &mut out);
        node.prune(1, t0);
        out.clear();
        node.appended(3, t0, &mut out);
        assert!(out.is_empty(), "lazy: no push");
        node.handle_timeout(t0, &mut out);
        assert_eq!(out, [Action::Have { peer: 1, lsn: 3 }]);
        out.clear();
        node.appended(4, t0, &mut out);
        node.handle_timeout(t0 + HAVE / 2, &mut out);
        assert!(out.is_empty());
        assert_eq!(node.poll_timeout(), Some(t0 + HAVE));
        node.handle_timeout(t0 + HAVE, &mut out);
        assert_eq!(out, [Action::Have { peer: 1, lsn: 4 }]);
    }

    #[test]
    fn receipts_merge_by_node_and_report_only_what_changed() {
        let mut book = Receipts::new(0u32, 3);
        assert!(book.record(0, 5));
        assert!(book.record(1, 4));
        assert!(!book.record(1, 3), "watermarks never move back");
        assert_eq!(book.take_report(), Some(vec![(0, 5), (1, 4)]));
        assert_eq!(book.take_report(), None);
        assert!(book.record(2, 9));
        assert!(!book.record(3, 9), "a fourth node is beyond the bound");
        assert_eq!(book.holders(4), 2, "this node does not count itself");
        book.take_report();
        book.report_all();
        assert_eq!(book.take_report(), Some(vec![(0, 5), (1, 4), (2, 9)]));
        assert_eq!(book.holders(5), 1);

        // A node is news when first heard of, even holding nothing yet; then only as it moves.
        let mut empty = Receipts::new(0u32, 3);
        assert!(empty.record(1, 0), "a new node at 0 is news");
        assert!(!empty.record(1, 0));
        assert_eq!(empty.take_report(), Some(vec![(1, 0)]));
        assert_eq!(empty.holders(0), 1);
    }

    #[derive(Clone, Debug)]
    enum Step {
        Receive { peer: u32, from: u64, len: u64 },
        Have { peer: u32, lsn: u64 },
        Graft { peer: u32, from: u64 },
        Prune { peer: u32 },
        Append { len: u64 },
        Down { peer: u32 },
        Up { peer: u32 },
        Tick { ms: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..4u32, 0..200u64, 0..20u64).prop_map(|(peer, from, len)| Step::Receive {
                peer,
                from,
                len
            }),
            (0..4u32, 0..250u64).prop_map(|(peer, lsn)| Step::Have { peer, lsn }),
            (0..4u32, 0..200u64).prop_map(|(peer, from)| Step::Graft { peer, from }),
            (0..4u32).prop_map(|peer| Step::Prune { peer }),
            (0..10u64).prop_map(|len| Step::Append { len }),
            (0..4u32).prop_map(|peer| Step::Down { peer }),
            (0..4u32).prop_map(|peer| Step::Up { peer }),
            (0..300u64).prop_map(|ms| Step::Tick { ms }),
        ]
    }

    proptest! {
        /// Whatever arrives in whatever order: `held` never moves back and never jumps a gap;
        /// nothing is pushed that is not held, or to a peer that is not eager, or twice to the
        /// same peer (each push starts where the last one to that peer ended, or later); a
        /// graft names what is held; and a node with a lazy offer of pages it lacks always has
        /// a timer set, so the tree cannot be lost for good.
        #[test]
        fn no_sequence_skips_a_page_pushes_what_is_not_held_or_loses_the_tree(
            steps in proptest::collection::vec(step(), 0..80)
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut node = tree(0);
            let mut pushed: BTreeMap<u32, u64> = BTreeMap::new();
            for step in steps {
                let before = node.held();
                let mut out = Vec::new();
                match step {
                    Step::Receive { peer, from, len } => {
                        let fresh = node.received(peer, from, from + len, now, &mut out);
                        match fresh {
                            None => prop_assert!(from > before),
                            Some((a, b)) => {
                                prop_assert!(from <= before);
                                prop_assert_eq!(a, before.max(from));
                                prop_assert_eq!(node.held(), before.max(from + len));
                                prop_assert_eq!(b, node.held());
                            }
                        }
                    }
                    Step::Have { peer, lsn } => node.have(peer, lsn, now, &mut out),
                    Step::Graft { peer, from } => {
                        node.graft(peer, from, now, &mut out);
                        pushed.remove(&peer);
                    }
                    Step::Prune { peer } => node.prune(peer, now),
                    Step::Append { len } => node.appended(before + len, now, &mut out),
                    Step::Down { peer } => {
                        node.link_down(peer);
                        pushed.remove(&peer);
                    }
                    Step::Up { peer } => {
                        node.link_up(peer, &mut out);
                        pushed.remove(&peer);
                    }
                    Step::Tick { ms } => {
                        now += Duration::from_millis(ms);
                        node.handle_timeout(now, &mut out);
                    }
                }
                prop_assert!(node.held() >= before, "held moved back");
                for action in &out {
                    match *action {
                        Action::Push { peer, from_lsn, to_lsn } => {
                            prop_assert!(to_lsn <= node.held(), "pushed pages not held");
                            prop_assert!(from_lsn < to_lsn);
                            prop_assert!(node.is_eager(peer), "pushed to a lazy peer");
                            if let Some(&end) = pushed.get(&peer) {
                                prop_assert!(from_lsn >= end, "pushed twice to {}", peer);
                            }
                            pushed.insert(peer, to_lsn);
                        }
                        Action::Graft { from_lsn, .. } => prop_assert_eq!(from_lsn, node.held()),
                        Action::Have { lsn, .. } => prop_assert!(lsn <= node.held()),
                        Action::Prune { peer } => prop_assert!(!node.is_eager(peer)),
                    }
                }
                let lacks_offered = node.peers.values().any(|state| {
                    !state.eager && state.offers.is_some_and(|(lsn, _)| lsn > node.held())
                });
                if lacks_offered {
                    prop_assert!(node.poll_timeout().is_some(), "an offer without a timer");
                }
                let untold = node.peers.values().any(|state| !state.eager && state.told < node.held());
                if untold {
                    prop_assert!(node.have_due.is_some(), "a lazy peer left untold");
                }
            }
        }
    }
}
