//! Membership, I/O-free: which nodes this node knows, where they listen and which databases they
//! serve, learned from the peers in its configuration and spread by a small, bounded gossip
//! (PEERS frames).
//!
//! Each node raises its own *heartbeat* at every gossip round (it starts from the wall clock, so
//! a restarted node's news is newer than what is remembered of it). An entry is replaced only by
//! one with a higher heartbeat, whoever relays it, so old news never overwrites new; a node whose
//! heartbeat has not risen for the expiry time is taken to have left, and is remembered as gone
//! (a tombstone) for as long again. Every entry also travels with its *age*: how long ago the
//! sender saw that heartbeat rise. The receiver dates the rise that far back and refuses news
//! older than the expiry, so relayed news never looks fresher than it is: without it, nodes that
//! had dropped a departed node's tombstone learned it anew from a laggard, each time as fresh,
//! and passed it round forever (the gossip simulator found that zombie in 66 of 220 seeds).
//!
//! Each round a node tells each of its gossip links its own entry and every node it knows,
//! [`PEERS_MAX`] per frame, so news of a node crosses the mesh in about its diameter times the
//! round. (A rotating sample of 32 a round, tried first, let news age by a whole rotation per
//! hop: across a 100-node mesh it arrived older than the expiry and was refused, and the views
//! never filled; the gossip simulator again.)
//!
//! What a peer can make a node hold is bounded: at most `nodes_max` entries (news of a new node
//! beyond that is refused and counted), each with at most [`PEER_DATABASES_MAX`] databases; news
//! about this node itself is ignored.
//!
//! A replica that wants a database learns its holders here ([`Members::holders`]): the nodes that
//! said they serve it, the configured peers first ([`Members::with_peers`]: what the operator
//! listed as nearest), then the others heard directly, then the rest. Configured peers come
//! before nodes that merely gossip *to* this node, because those are most often downstream of
//! it (they list this node as their peer): following one of them first put a replica at the
//! end of a dead end, and drew a different tree each run (the gossip test in tests/mesh.rs).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use pagemesh_net::route::Members;
//! use uuid::Uuid;
//!
//! let (a, b, db) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(9));
//! let now = Instant::now();
//! let mut at_a = Members::new(a, "127.0.0.1:7401".parse().unwrap(), 100, 64, Duration::from_secs(5));
//! let mut at_b = Members::new(b, "127.0.0.1:7402".parse().unwrap(), 100, 64, Duration::from_secs(5));
//! at_b.set_databases(vec![db]);
//! for frame in at_b.gossip(now) {
//!     at_a.heard(b, None, &frame.entries, now);
//! }
//! assert_eq!(at_a.holders(db), vec!["127.0.0.1:7402".parse().unwrap()]);
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::proto::frame::{
    truncate_utf8, PeerEntry, PeerList, NAME_MAX, PEERS_MAX, PEER_DATABASES_MAX,
};

/// What is known of one other node.
#[derive(Clone, Debug)]
struct Known {
    entry: PeerEntry,
    /// When its heartbeat last rose here.
    risen: Instant,
    /// Heard from the node itself (a direct gossip link), not only relayed.
    direct: bool,
    /// Its heartbeat stopped rising: it left. Kept so that old news cannot bring it back.
    gone: bool,
}

/// One node's view of the mesh's membership. See the module docs.
#[derive(Clone, Debug)]
pub struct Members {
    own: PeerEntry,
    known: BTreeMap<Uuid, Known>,
    nodes_max: usize,
    expiry: Duration,
    refused: u64,
    /// Where the configured peers listen: holders among them come first.
    peers: Vec<SocketAddr>,
}

impl Members {
    /// The view of node `node`, listening at `addr` (port 0: it serves no one), whose heartbeat
    /// starts at `heartbeat` (pass the wall clock in microseconds, so that a restart's news is
    /// newer), holding at most `nodes_max` other nodes, each forgotten once its heartbeat has not
    /// risen for `expiry`.
    pub fn new(
        node: Uuid,
        addr: SocketAddr,
        heartbeat: u64,
        nodes_max: usize,
        expiry: Duration,
    ) -> Self {
        Self {
            own: PeerEntry {
                node,
                heartbeat,
                age_ms: 0,
                addr,
                name: String::new(),
                databases: Vec::new(),
            },
            known: BTreeMap::new(),
            nodes_max,
            expiry,
            refused: 0,
            peers: Vec::new(),
        }
    }

    /// The addresses of the peers this node was configured with (the nearest, as the operator
    /// drew the mesh): [`holders`](Self::holders) lists those first.
    pub fn with_peers(mut self, peers: Vec<SocketAddr>) -> Self {
        self.peers = peers;
        self
    }

    /// This node's name (at most [`NAME_MAX`] bytes; a longer one is cut at a character
    /// boundary), as gossip tells it: commands may address a node by it.
    pub fn with_name(mut self, name: &str) -> Self {
        self.own.name = truncate_utf8(name, NAME_MAX).to_owned();
        self
    }

    /// The databases this node serves (the first [`PEER_DATABASES_MAX`] are advertised).
    pub fn set_databases(&mut self, mut databases: Vec<Uuid>) {
        databases.sort_unstable();
        databases.dedup();
        databases.truncate(PEER_DATABASES_MAX);
        self.own.databases = databases;
    }

    /// Where this node listens, as advertised.
    pub fn set_addr(&mut self, addr: SocketAddr) {
        self.own.addr = addr;
    }

    /// A gossip round at `now`: this node's heartbeat rises, and nodes whose heartbeat has not
    /// risen for the expiry time are taken to have left (returned); tombstones older than twice
    /// that are dropped.
    pub fn round(&mut self, now: Instant) -> Vec<Uuid> {
        self.own.heartbeat = self.own.heartbeat.saturating_add(1);
        let expiry = self.expiry;
        let mut left = Vec::new();
        self.known.retain(|node, known| {
            let quiet = now.saturating_duration_since(known.risen);
            if known.gone {
                return quiet < expiry * 2;
            }
            if quiet >= expiry {
                known.gone = true;
                left.push(*node);
            }
            true
        });
        left
    }

    /// PEERS entries heard at `now` on a gossip link from node `sender`, whose connection comes
    /// from `link_ip` (used for the sender's own entry when it advertises an unspecified IP).
    /// Returns the nodes newly known.
    pub fn heard(
        &mut self,
        sender: Uuid,
        link_ip: Option<IpAddr>,
        entries: &[PeerEntry],
        now: Instant,
    ) -> Vec<Uuid> {
        let mut learned = Vec::new();
        for entry in entries {
            if entry.node == self.own.node || entry.node.is_nil() {
                continue;
            }
            let age = Duration::from_millis(u64::from(entry.age_ms));
            if age >= self.expiry {
                continue;
            }
            let rose = now.checked_sub(age).unwrap_or(now);
            let mut entry = entry.clone();
            entry.databases.truncate(PEER_DATABASES_MAX);
            entry.name = truncate_utf8(&entry.name, NAME_MAX).to_owned();
            entry.age_ms = 0;
            let direct = entry.node == sender;
            if direct && entry.addr.ip().is_unspecified() {
                if let Some(ip) = link_ip {
                    entry.addr.set_ip(ip);
                }
            }
            let full = self.known.len() >= self.nodes_max;
            match self.known.get_mut(&entry.node) {
                Some(known) if entry.heartbeat <= known.entry.heartbeat => {
                    known.direct |= direct && !known.gone;
                }
                Some(known) => {
                    if known.gone {
                        learned.push(entry.node);
                    }
                    if entry.name.is_empty() {
                        // News relayed by a node of protocol version 4 carries no name: the
                        // node's name stays what was heard of it.
                        entry.name = std::mem::take(&mut known.entry.name);
                    }
                    *known = Known {
                        entry,
                        risen: rose,
                        direct: direct || (known.direct && !known.gone),
                        gone: false,
                    };
                }
                None if full => self.refused += 1,
                None => {
                    learned.push(entry.node);
                    self.known.insert(
                        entry.node,
                        Known {
                            entry,
                            risen: rose,
                            direct,
                            gone: false,
                        },
                    );
                }
            }
        }
        learned
    }

    /// What to tell a gossip link at `now`: this node's entry first, then every node it knows
    /// (not those gone), each with its age, in frames of at most [`PEERS_MAX`] entries (at most
    /// `nodes_max / 16 + 1` of them).
    pub fn gossip(&mut self, now: Instant) -> Vec<PeerList> {
        let alive: Vec<PeerEntry> = self
            .known
            .values()
            .filter(|known| !known.gone)
            .map(|known| {
                let age = now.saturating_duration_since(known.risen).as_millis();
                PeerEntry {
                    age_ms: u32::try_from(age).unwrap_or(u32::MAX),
                    ..known.entry.clone()
                }
            })
            .collect();
        let mut entries = vec![self.own.clone()];
        entries.extend(alive);
        entries
            .chunks(PEERS_MAX)
            .map(|chunk| PeerList {
                entries: chunk.to_vec(),
                named: true,
            })
            .collect()
    }

    /// Where the nodes that serve `database` listen: the configured peers first (in the order
    /// configured), then the others heard directly, then the rest, these in uuid order. Nodes
    /// gone, and nodes that do not listen, are left out.
    pub fn holders(&self, database: Uuid) -> Vec<SocketAddr> {
        let mut holders: Vec<(usize, bool, Uuid, SocketAddr)> = self
            .known
            .values()
            .filter(|known| !known.gone && known.entry.addr.port() != 0)
            .filter(|known| known.entry.databases.contains(&database))
            .map(|known| {
                let addr = known.entry.addr;
                let peer = self.peers.iter().position(|&p| p == addr);
                (
                    peer.unwrap_or(usize::MAX),
                    !known.direct,
                    known.entry.node,
                    addr,
                )
            })
            .collect();
        holders.sort_unstable();
        holders.into_iter().map(|(_, _, _, addr)| addr).collect()
    }

    /// The nodes known (not gone) whose name is `name`, and this node if it is named so: names
    /// are the operator's, so two nodes may share one (the caller says which is meant by uuid).
    pub fn named(&self, name: &str) -> Vec<Uuid> {
        let mut nodes: Vec<Uuid> = (self.known.values())
            .filter(|known| !known.gone && known.entry.name == name)
            .map(|known| known.entry.node)
            .collect();
        if self.own.name == name {
            nodes.insert(0, self.own.node);
        }
        nodes
    }

    /// This node's own entry.
    pub fn own(&self) -> &PeerEntry {
        &self.own
    }

    /// The nodes known and not gone.
    pub fn nodes(&self) -> Vec<PeerEntry> {
        self.known
            .values()
            .filter(|known| !known.gone)
            .map(|known| known.entry.clone())
            .collect()
    }

    /// Entries held, tombstones included (never more than `nodes_max`).
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether no other node is known.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// News of new nodes refused because the view was full.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXPIRY: Duration = Duration::from_secs(3);

    fn entry(node: u128, heartbeat: u64, databases: &[u128]) -> PeerEntry {
        PeerEntry {
            node: Uuid::from_u128(node),
            heartbeat,
            age_ms: 0,
            addr: SocketAddr::from(([127, 0, 0, 1], 7000 + node as u16)),
            name: format!("n{node}"),
            databases: databases.iter().map(|&d| Uuid::from_u128(d)).collect(),
        }
    }

    #[test]
    fn names_spread_and_survive_news_without_them() {
        let now = Instant::now();
        let mut at_a = members(1, 16).with_name("alpha");
        let mut at_b = members(2, 16).with_name("beta");
        for frame in at_a.gossip(now) {
            assert!(frame.named);
            at_b.heard(Uuid::from_u128(1), None, &frame.entries, now);
        }
        assert_eq!(at_b.named("alpha"), vec![Uuid::from_u128(1)]);
        assert_eq!(at_b.named("beta"), vec![Uuid::from_u128(2)], "itself");
        assert!(at_b.named("gamma").is_empty());
        // Newer news of alpha relayed by a version 4 node, which has no names: alpha keeps its
        // name.
        at_a.round(now);
        for frame in at_a.gossip(now) {
            let old = frame.for_version(4);
            assert!(!old.named && old.entries.iter().all(|e| e.name.is_empty()));
            at_b.heard(Uuid::from_u128(3), None, &old.entries, now);
        }
        assert_eq!(at_b.named("alpha"), vec![Uuid::from_u128(1)]);
        // A name longer than a frame carries is cut, at a character boundary.
        let long = members(4, 16).with_name(&"é".repeat(40));
        assert_eq!(long.own().name, "é".repeat(32));
    }

    fn members(node: u128, max: usize) -> Members {
        Members::new(
            Uuid::from_u128(node),
            SocketAddr::from(([127, 0, 0, 1], 7000 + node as u16)),
            1_000,
            max,
            EXPIRY,
        )
    }

    #[test]
    fn newer_news_replaces_older_and_a_quiet_node_leaves_for_good() {
        let t0 = Instant::now();
        let mut view = members(1, 10);
        let learned = view.heard(Uuid::from_u128(2), None, &[entry(2, 5, &[9])], t0);
        assert_eq!(learned, [Uuid::from_u128(2)]);
        // Relayed older news changes nothing; newer news does.
        view.heard(Uuid::from_u128(3), None, &[entry(2, 4, &[])], t0);
        assert_eq!(view.holders(Uuid::from_u128(9)).len(), 1);
        view.heard(Uuid::from_u128(3), None, &[entry(2, 6, &[])], t0);
        assert!(view.holders(Uuid::from_u128(9)).is_empty());
        // Its heartbeat stops rising: gone after the expiry, and old news cannot revive it.
        assert!(view.round(t0 + EXPIRY / 2).is_empty());
        assert_eq!(view.round(t0 + EXPIRY), [Uuid::from_u128(2)]);
        view.heard(Uuid::from_u128(3), None, &[entry(2, 6, &[9])], t0 + EXPIRY);
        assert!(view.nodes().is_empty());
        // A restart's heartbeat is higher: it is back.
        let back = view.heard(Uuid::from_u128(2), None, &[entry(2, 99, &[9])], t0 + EXPIRY);
        assert_eq!(back, [Uuid::from_u128(2)]);
        assert_eq!(view.holders(Uuid::from_u128(9)).len(), 1);
        // Tombstones go after twice the expiry.
        view.round(t0 + EXPIRY * 3);
        view.round(t0 + EXPIRY * 6);
        assert!(view.is_empty());
    }

    #[test]
    fn holders_heard_directly_come_first_and_unspecified_ips_take_the_links() {
        let t0 = Instant::now();
        let mut view = members(1, 10);
        let mut far = entry(2, 1, &[9]);
        far.addr = "10.0.0.2:7002".parse().unwrap();
        view.heard(Uuid::from_u128(3), None, &[far], t0);
        let mut near = entry(3, 1, &[9]);
        near.addr = "0.0.0.0:7003".parse().unwrap();
        view.heard(
            Uuid::from_u128(3),
            Some("10.0.0.3".parse().unwrap()),
            &[near],
            t0,
        );
        assert_eq!(
            view.holders(Uuid::from_u128(9)),
            [
                "10.0.0.3:7003".parse::<SocketAddr>().unwrap(),
                "10.0.0.2:7002".parse().unwrap()
            ]
        );
    }

    #[test]
    fn configured_peers_come_before_nodes_that_only_gossip_to_this_one() {
        let t0 = Instant::now();
        let (upstream, downstream): (SocketAddr, SocketAddr) = (
            "10.0.0.2:7002".parse().unwrap(),
            "10.0.0.3:7003".parse().unwrap(),
        );
        let mut view = members(5, 10).with_peers(vec![upstream]);
        // Both heard directly; the downstream one has the lower uuid.
        let mut down = entry(3, 1, &[9]);
        down.addr = downstream;
        view.heard(Uuid::from_u128(3), None, &[down], t0);
        let mut up = entry(4, 1, &[9]);
        up.addr = upstream;
        view.heard(Uuid::from_u128(4), None, &[up], t0);
        assert_eq!(view.holders(Uuid::from_u128(9)), [upstream, downstream]);
    }

    #[test]
    fn gossip_starts_with_its_own_entry_and_tells_every_other() {
        let t0 = Instant::now();
        let mut view = members(1, 100);
        let others: Vec<PeerEntry> = (2..60).map(|n| entry(n, 1, &[])).collect();
        view.heard(Uuid::from_u128(2), None, &others, t0);
        let mut told = std::collections::BTreeSet::new();
        let frames = view.gossip(t0 + Duration::from_millis(250));
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0].entries[0].node, Uuid::from_u128(1));
        assert_eq!(frames[0].entries[0].age_ms, 0);
        for frame in &frames {
            assert!((1..=PEERS_MAX).contains(&frame.entries.len()));
            told.extend(frame.entries.iter().map(|e| e.node));
        }
        assert_eq!(told.len(), 59, "every node, this one included");
        assert_eq!(
            frames[1].entries[0].age_ms, 250,
            "news goes out with its age"
        );
    }

    proptest! {
        /// Whatever peers send, the view stays within its bound, never holds this node, and an
        /// entry's heartbeat never goes back.
        #[test]
        fn the_view_is_bounded_and_news_never_goes_back(
            news in proptest::collection::vec(
                (1..40u128, 1..40u128, 0..20u64, 0..400u64, proptest::collection::vec(0..12u128, 0..12)),
                0..200,
            ),
        ) {
            let mut now = Instant::now();
            let mut view = members(1, 16);
            let mut best: BTreeMap<Uuid, u64> = BTreeMap::new();
            for (sender, node, heartbeat, ms, databases) in news {
                now += Duration::from_millis(ms);
                let mut e = entry(node, heartbeat, &[]);
                e.databases = databases.into_iter().map(Uuid::from_u128).collect();
                view.heard(Uuid::from_u128(sender), None, &[e], now);
                view.round(now);
                prop_assert!(view.len() <= 16);
                // Once a node's tombstone is dropped, what was known of it is forgotten.
                best.retain(|node, _| view.known.contains_key(node));
                for known in view.nodes() {
                    prop_assert!(known.node != Uuid::from_u128(1));
                    prop_assert!(known.databases.len() <= PEER_DATABASES_MAX);
                    let previous = best.insert(known.node, known.heartbeat).unwrap_or(0);
                    prop_assert!(known.heartbeat >= previous);
                }
                for frame in view.gossip(now) {
                    prop_assert!((1..=PEERS_MAX).contains(&frame.entries.len()));
                }
            }
        }
    }
}
