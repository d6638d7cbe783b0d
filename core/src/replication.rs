//! The `replicated` watermark: which replicas received which pages, and the commits waiting on it.
//!
//! The store knows nothing of sockets (DESIGN.md: core and net never import each other). The root
//! crate's `Node` makes a database a *source* with [`Replication::enable`], attaches one
//! [`ReplicaLink`] per connected replica and reports each ACK through it; commits with
//! [`crate::Durability::Replicated`] wait here.
//!
//! # Semi-synchronous replication
//!
//! A source keeps `sync_replicas` (k) of its attached replicas *synchronous*: only their acks count
//! for `Replicated(n)` (n ≤ k is the useful range). Replicas are made synchronous in the order they
//! attach; the rest are asynchronous. When a synchronous replica detaches (its link dropped), the
//! oldest asynchronous one is promoted, so the set refills by itself. With fewer than n synchronous
//! replicas attached, `Replicated(n)` commits wait up to the configured timeout and then fail with
//! [`Error::ReplicationTimeout`] — unless the database was opened with
//! [`crate::Options::degrade_on_timeout`], in which case they return with a warning: a downgrade
//! only when the configuration says so. A `Replicated(n)` that cannot be met fails at once with
//! [`Error::TooFewSyncReplicas`] and writes nothing: with no synchronous replica (k = 0), or with
//! n above both k and the most distinct nodes the synchronous links, relays' subtrees included
//! (see *Across hops*), have counted at once since the database opened. Up to either it waits: a
//! replica that is away, or a relay whose subtree has not been reported again yet, may return.
//!
//! Acks are *receipt* acks: a replica sends one as soon as pages are in its ring, before it replays
//! them (DESIGN.md, "Ack on receipt").
//!
//! # Across hops
//!
//! `Replicated(n)` counts distinct *nodes*, wherever they are in the mesh. A replica that serves
//! its copy onward reports, through its link, the receipts of the nodes it feeds (its subtree:
//! [`ReplicaLink::report`]), so the source counts nodes it has no link to. A node counts once,
//! however many links report it. A synchronous link's subtree counts; an asynchronous one's does
//! not. When a relaying replica's link drops, its subtree's receipts go with it: the nodes below
//! re-attach (through another path, or the same one once it is back) and report again, and a
//! commit waiting meanwhile keeps waiting until its timeout. A subtree is bounded
//! ([`SUBTREE_NODES_MAX`]): a report of more nodes is refused, and the network drops that link.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::metrics::{ReplicaLag, ReplicaState, Timeline, DEPARTED_REPLICAS_MAX};
use crate::Receipt;

/// The most nodes one replica link may report in its subtree.
pub const SUBTREE_NODES_MAX: usize = 4096;

/// Replication state of one source database; shared by its handle and its replica links.
#[derive(Debug, Default)]
pub struct Replication {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    enabled: bool,
    sync_replicas: usize,
    next_id: u64,
    /// By attach order (ids increase).
    links: BTreeMap<u64, LinkState>,
    /// Bumped by `close`, so waiters stop.
    closed: bool,
    /// The most distinct nodes synchronous links (with their subtrees) counted at once since
    /// the database opened: what `Replicated(n)` above the synchronous replicas may still reach.
    nodes_seen_max: usize,
    /// Replicas that detached and have not attached again, oldest first, at most
    /// [`DEPARTED_REPLICAS_MAX`]: `(name, node, received_lsn)`, for their lag.
    departed: std::collections::VecDeque<(String, Uuid, u64)>,
}

#[derive(Debug)]
struct LinkState {
    name: String,
    /// The replica's node.
    node: Uuid,
    /// Nodes the replica feeds, directly or not: every page below the LSN is received there.
    subtree: BTreeMap<Uuid, u64>,
    /// Every page below this has been received.
    received_lsn: u64,
    /// Every page below this is durable on the replica, as it reports.
    durable_lsn: u64,
    sync: bool,
}

/// A replica attached to a source: report its acks here. Dropping it detaches the replica.
#[derive(Debug)]
pub struct ReplicaLink {
    replication: Arc<Replication>,
    id: u64,
}

/// What [`Replication::status`] reports of one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The name it attached with.
    pub name: String,
    /// Every page below this has been received.
    pub received_lsn: u64,
    /// Every page below this is durable on the replica, as its last ack reported (never above
    /// `received_lsn`).
    pub durable_lsn: u64,
    /// Whether its acks count for `Replicated(n)`.
    pub sync: bool,
    /// Nodes it reported in its subtree.
    pub subtree_nodes: usize,
}

impl Replication {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes the database a source with `sync_replicas` synchronous replicas (re-enabling changes
    /// the count; the set is rebalanced at once).
    pub fn enable(&self, sync_replicas: usize) {
        let mut state = self.lock();
        state.enabled = true;
        state.sync_replicas = sync_replicas;
        state.rebalance();
        drop(state);
        self.changed.notify_all();
    }

    /// Whether [`enable`](Self::enable) was called: `Replicated(n)` is an error otherwise.
    pub fn is_enabled(&self) -> bool {
        self.lock().enabled
    }

    /// The synchronous replicas configured ([`enable`](Self::enable)).
    pub fn sync_replicas(&self) -> usize {
        self.lock().sync_replicas
    }

    /// Refuses at once a `Replicated(wanted)` that cannot be met, so that it does not wait its
    /// whole timeout: [`Error::NoReplicas`] if this is not a source, and
    /// [`Error::TooFewSyncReplicas`] if no replica is synchronous, or if `wanted` exceeds both
    /// the synchronous replicas configured and the most distinct nodes their links (with the
    /// nodes relays feed) have ever counted at once. Up to either, the commit waits: a replica
    /// that is away, or a relay's subtree not reported again yet, may come back in time.
    pub(crate) fn check_satisfiable(&self, wanted: u32) -> Result<()> {
        let state = self.lock();
        if !state.enabled {
            return Err(Error::NoReplicas { replicas: wanted });
        }
        let reachable = state.sync_replicas.max(state.nodes_seen_max);
        if state.sync_replicas == 0 || wanted as usize > reachable {
            return Err(Error::TooFewSyncReplicas {
                wanted,
                sync_replicas: state.sync_replicas,
                nodes_seen_max: state.nodes_seen_max,
            });
        }
        Ok(())
    }

    /// Attaches the replica `name` on node `node`, which has received every page below
    /// `received_lsn`.
    pub fn attach(self: &Arc<Self>, name: &str, node: Uuid, received_lsn: u64) -> ReplicaLink {
        let mut state = self.lock();
        state.departed.retain(|(_, departed, _)| *departed != node);
        let id = state.next_id;
        state.next_id += 1;
        state.links.insert(
            id,
            LinkState {
                name: name.to_string(),
                node,
                subtree: BTreeMap::new(),
                received_lsn,
                durable_lsn: 0,
                sync: false,
            },
        );
        state.rebalance();
        let sync = state.links.get(&id).is_some_and(|link| link.sync);
        drop(state);
        tracing::info!(replica = name, received_lsn, sync, "replica attached");
        self.changed.notify_all();
        ReplicaLink {
            replication: Arc::clone(self),
            id,
        }
    }

    /// Every replica's state, in attach order.
    pub fn status(&self) -> Vec<ReplicaStatus> {
        self.lock()
            .links
            .values()
            .map(|link| ReplicaStatus {
                name: link.name.clone(),
                received_lsn: link.received_lsn,
                durable_lsn: link.durable_lsn,
                sync: link.sync,
                subtree_nodes: link.subtree.len(),
            })
            .collect()
    }

    /// Each replica's lag behind `committed_lsn`: the attached ones in attach order, then the
    /// departed ones (see `metrics.rs`).
    pub(crate) fn lag(&self, committed_lsn: u64, timeline: &Timeline) -> Vec<ReplicaLag> {
        let now = Instant::now();
        let state = self.lock();
        let attached = state.links.values().map(|link| {
            let kind = if link.sync {
                ReplicaState::Sync
            } else {
                ReplicaState::Async
            };
            (link.name.clone(), link.node, kind, link.received_lsn)
        });
        let departed = (state.departed.iter())
            .map(|(name, node, lsn)| (name.clone(), *node, ReplicaState::Down, *lsn));
        attached
            .chain(departed)
            .map(|(name, node, kind, received_lsn)| {
                ReplicaLag::new(name, node, kind, received_lsn, committed_lsn, timeline, now)
            })
            .collect()
    }

    /// Wakes every waiter for good (the database is closing).
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Waits until `wanted` distinct nodes, reported by synchronous links, have received every
    /// page below `lsn_end`, or `timeout` passes. Calls `blocking` once, before it first blocks
    /// (not at all if the acks are in).
    pub(crate) fn wait(
        &self,
        receipt: Receipt,
        wanted: u32,
        timeout: Duration,
        degrade: bool,
        blocking: impl FnOnce(),
    ) -> Result<()> {
        let mut blocking = Some(blocking);
        let (seq, lsn_end) = (receipt.version(), receipt.lsn_end());
        let started = Instant::now();
        let deadline = started + timeout;
        let mut state = self.lock();
        if !state.enabled {
            return Err(Error::NoReplicas { replicas: wanted });
        }
        loop {
            let acked = state.acked(lsn_end);
            if acked >= wanted {
                return Ok(());
            }
            if state.closed {
                return Err(Error::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                if degrade {
                    tracing::warn!(
                        seq,
                        wanted,
                        acked,
                        "replication timed out; commit downgraded as configured"
                    );
                    return Ok(());
                }
                return Err(Error::ReplicationTimeout {
                    seq,
                    receipt,
                    wanted,
                    acked,
                    waited: now - started,
                });
            }
            if let Some(blocking) = blocking.take() {
                // Outside the lock: it may wake a network thread, which takes it for acks.
                drop(state);
                blocking();
                state = self.lock();
                continue;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Whether `wanted` distinct nodes, reported by synchronous links (themselves or their
    /// subtrees), have received every page below `lsn_end` (never blocks): what a waiting
    /// `Replicated(n)` commit asks after each ack.
    pub fn reached(&self, lsn_end: u64, wanted: u32) -> bool {
        self.lock().acked(lsn_end) >= wanted
    }
}

impl State {
    fn acked(&self, lsn_end: u64) -> u32 {
        let mut nodes = BTreeSet::new();
        for link in self.links.values().filter(|link| link.sync) {
            if link.received_lsn >= lsn_end {
                nodes.insert(link.node);
            }
            nodes.extend(
                link.subtree
                    .iter()
                    .filter(|(_, lsn)| **lsn >= lsn_end)
                    .map(|(node, _)| *node),
            );
        }
        nodes.len() as u32
    }

    /// Keeps the `sync_replicas` oldest links synchronous and the rest asynchronous.
    fn rebalance(&mut self) {
        let k = self.sync_replicas;
        for (index, link) in self.links.values_mut().enumerate() {
            let sync = index < k;
            if sync && !link.sync {
                tracing::info!(replica = %link.name, "replica is now synchronous");
            }
            link.sync = sync;
        }
        self.note_nodes_seen();
    }

    /// Raises `nodes_seen_max` to the distinct nodes synchronous links count now; called when
    /// the set of links, of synchronous ones, or of nodes in a subtree grows.
    fn note_nodes_seen(&mut self) {
        let mut nodes = BTreeSet::new();
        for link in self.links.values().filter(|link| link.sync) {
            nodes.insert(link.node);
            nodes.extend(link.subtree.keys().copied());
        }
        self.nodes_seen_max = self.nodes_seen_max.max(nodes.len());
    }
}

impl ReplicaLink {
    /// The replica acknowledged receipt of every page below `received_lsn`, and that every page
    /// below `durable_lsn` is durable on it (watermarks only move forward; `durable_lsn` is
    /// capped at `received_lsn`).
    pub fn ack(&self, received_lsn: u64, durable_lsn: u64) {
        let mut state = self.replication.lock();
        let advanced = match state.links.get_mut(&self.id) {
            Some(link) => {
                link.durable_lsn = link
                    .durable_lsn
                    .max(durable_lsn.min(received_lsn.max(link.received_lsn)));
                let advanced = received_lsn > link.received_lsn;
                link.received_lsn = link.received_lsn.max(received_lsn);
                advanced && link.sync
            }
            None => false,
        };
        drop(state);
        if advanced {
            self.replication.changed.notify_all();
        }
    }

    /// The replica reports that `node`, which it feeds (directly or through others), has
    /// received every page below `received_lsn` (watermarks only move forward). Returns `false`,
    /// changing nothing, if that would make the subtree larger than [`SUBTREE_NODES_MAX`]: the
    /// caller drops the link.
    pub fn report(&self, node: Uuid, received_lsn: u64) -> bool {
        let mut state = self.replication.lock();
        let Some(link) = state.links.get_mut(&self.id) else {
            return true;
        };
        if node == link.node {
            drop(state);
            self.ack(received_lsn, 0);
            return true;
        }
        if !link.subtree.contains_key(&node) && link.subtree.len() >= SUBTREE_NODES_MAX {
            return false;
        }
        let new_node = !link.subtree.contains_key(&node);
        let held = link.subtree.entry(node).or_insert(0);
        let advanced = received_lsn > *held;
        *held = (*held).max(received_lsn);
        let notify = advanced && link.sync;
        if new_node {
            state.note_nodes_seen();
        }
        drop(state);
        if notify {
            self.replication.changed.notify_all();
        }
        true
    }

    /// Whether this replica's acks count for `Replicated(n)` now.
    pub fn is_sync(&self) -> bool {
        self.replication
            .lock()
            .links
            .get(&self.id)
            .is_some_and(|link| link.sync)
    }
}

impl Drop for ReplicaLink {
    fn drop(&mut self) {
        let mut state = self.replication.lock();
        if let Some(link) = state.links.remove(&self.id) {
            tracing::info!(replica = %link.name, received_lsn = link.received_lsn, "replica detached");
            // Still attached through another link: its lag shows there.
            if !state.links.values().any(|other| other.node == link.node) {
                state.departed.retain(|(_, node, _)| *node != link.node);
                if state.departed.len() >= DEPARTED_REPLICAS_MAX {
                    state.departed.pop_front();
                }
                (state.departed).push_back((link.name, link.node, link.received_lsn));
            }
        }
        state.rebalance();
        drop(state);
        self.replication.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn receipt(seq: u64, lsn_end: u64) -> Receipt {
        Receipt::new(Uuid::nil(), seq, lsn_end)
    }

    #[test]
    fn a_detached_replica_keeps_its_lag_as_down_until_it_attaches_again() {
        let replication = Arc::new(Replication::default());
        replication.enable(1);
        let timeline = Timeline::default();
        let link = replication.attach("r", node(1), 0);
        link.ack(7, 7);
        let states = |committed| -> Vec<(ReplicaState, u64)> {
            (replication.lag(committed, &timeline).iter())
                .map(|lag| (lag.state, lag.lag_pages))
                .collect()
        };
        assert_eq!(states(10), [(ReplicaState::Sync, 3)]);
        drop(link);
        assert_eq!(states(12), [(ReplicaState::Down, 5)]);
        let back = replication.attach("r", node(1), 12);
        assert_eq!(states(12), [(ReplicaState::Sync, 0)], "no stale row left");
        drop(back);
    }

    #[test]
    fn subtrees_count_distinct_nodes_and_only_under_synchronous_links() {
        let replication = Arc::new(Replication::default());
        replication.enable(1);
        let relay = replication.attach("relay", node(1), 0);
        let other = replication.attach("other", node(2), 0);
        assert!(relay.is_sync() && !other.is_sync());
        relay.ack(10, 0);
        assert!(relay.report(node(3), 10));
        assert!(relay.report(node(4), 6));
        assert!(
            replication.reached(10, 2),
            "the relay and one node below it"
        );
        assert!(!replication.reached(10, 3));
        assert!(replication.reached(6, 3));
        assert!(relay.report(node(3), 4), "an old report");
        assert!(replication.reached(10, 2), "watermarks never move back");
        assert!(
            relay.report(node(1), 12),
            "the relay reporting itself is its ack"
        );
        assert!(replication.reached(12, 1));
        other.ack(20, 0);
        assert!(other.report(node(5), 20));
        assert!(
            !replication.reached(20, 1),
            "an asynchronous subtree does not count"
        );
        drop(relay);
        assert!(other.is_sync(), "promoted");
        assert!(replication.reached(20, 2), "its subtree counts now");
        assert_eq!(replication.status()[0].subtree_nodes, 1);
        // Reported twice, through two links, a node counts once.
        replication.enable(2);
        let again = replication.attach("again", node(6), 20);
        assert!(again.report(node(5), 20));
        assert!(replication.reached(20, 3));
        assert!(!replication.reached(20, 4));
    }

    #[test]
    fn a_subtree_is_bounded() {
        let replication = Arc::new(Replication::default());
        replication.enable(1);
        let relay = replication.attach("relay", node(1), 0);
        for n in 0..SUBTREE_NODES_MAX as u128 {
            assert!(relay.report(node(1000 + n), 1));
        }
        assert!(!relay.report(node(99), 1), "one more node is refused");
        assert!(relay.report(node(1000), 2), "a known node still advances");
        assert_eq!(replication.status()[0].subtree_nodes, SUBTREE_NODES_MAX);
    }

    #[test]
    fn only_synchronous_acks_count_and_an_async_replica_is_promoted_when_a_sync_one_leaves() {
        let replication = Arc::new(Replication::default());
        let short = Duration::from_millis(1);
        assert!(matches!(
            replication.wait(receipt(0, 1), 1, short, false, || {}),
            Err(Error::NoReplicas { replicas: 1 })
        ));
        replication.enable(1);
        let a = replication.attach("a", node(1), 0);
        let b = replication.attach("b", node(2), 0);
        assert!(a.is_sync() && !b.is_sync());
        b.ack(10, 0);
        assert!(!replication.reached(10, 1), "b is asynchronous");
        assert!(matches!(
            replication.wait(receipt(7, 10), 1, short, false, || {}),
            Err(Error::ReplicationTimeout {
                seq: 7,
                wanted: 1,
                acked: 0,
                ..
            })
        ));
        assert!(
            replication
                .wait(receipt(7, 10), 1, short, true, || {})
                .is_ok(),
            "degrade as configured"
        );
        a.ack(10, 4);
        assert!(replication
            .wait(receipt(7, 10), 1, short, false, || {})
            .is_ok());
        let durable: Vec<_> = replication.status().iter().map(|r| r.durable_lsn).collect();
        assert_eq!(
            durable,
            [4, 0],
            "each replica's durable watermark, as it acked"
        );
        a.ack(9, 12);
        assert_eq!(
            replication.status()[0].durable_lsn,
            10,
            "durable is capped at received, and received never moves back"
        );
        drop(a);
        assert!(b.is_sync(), "b promoted when a left");
        assert!(replication.reached(10, 1));
        assert!(!replication.reached(11, 1));
    }

    #[test]
    fn a_waiter_is_released_by_an_ack_from_another_thread() {
        let replication = Arc::new(Replication::default());
        replication.enable(2);
        let (a, b) = (
            replication.attach("a", node(1), 0),
            replication.attach("b", node(2), 0),
        );
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                replication.wait(receipt(1, 5), 2, Duration::from_secs(30), false, || {})
            });
            a.ack(5, 5);
            b.ack(6, 0);
            assert!(waiter.join().expect("no panic").is_ok());
        });
    }
}
