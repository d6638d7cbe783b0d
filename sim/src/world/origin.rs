//! The origin's side of a run: its log and clients, the commits that wait for replicas, and every node's applier.

use super::*;

impl World {
    pub(super) fn start_origin(&mut self) {
        let options = LogOptions::new()
            .slots(self.scenario.ring_slots)
            .next_lsn_min(self.origin.binlog.next);
        let log = match Log::open(&self.origin.dir, options) {
            Ok(log) => log,
            Err(error) => return self.violation(format!("origin log does not reopen: {error}")),
        };
        let resume = self.origin.store.resume_lsn();
        let applier = match log.cursor(resume) {
            Ok(cursor) => cursor,
            Err(error) => {
                return self.violation(format!(
                    "origin's ring lost pages its store needs (from {resume}): {error}"
                ))
            }
        };
        let recovered = log.recovered();
        let audit = match log.cursor(recovered.start_lsn) {
            Ok(cursor) => cursor,
            Err(error) => return self.violation(format!("origin audit cursor: {error}")),
        };
        let replication = Arc::new(Replication::default());
        replication.enable(self.scenario.sync_replicas);
        self.note("origin up", recovered.end_lsn, resume);
        self.origin.db = Some(OriginDb {
            log,
            applier,
            audit,
            replication,
        });
        self.audit();
    }

    /// Registers every page the origin committed: an LSN written twice with other bytes is a
    /// violation (an LSN reused).
    pub(super) fn audit(&mut self) {
        let Some(db) = &mut self.origin.db else {
            return;
        };
        let mut pages = Vec::new();
        loop {
            match db.audit.next_ready() {
                Ok(Some(page)) => pages.push((page.lsn(), hash(page.compact_bytes()))),
                Ok(None) => break,
                Err(error) => {
                    let error = format!("origin page does not read back: {error}");
                    return self.violation(error);
                }
            }
        }
        let position = db.audit.position();
        db.audit.release(position);
        for (lsn, digest) in pages {
            match self.registry.insert(lsn, digest) {
                Some(before) if before != digest => {
                    return self.violation(format!(
                        "LSN {lsn} reused: the origin wrote it twice with different bytes"
                    ))
                }
                _ => {}
            }
        }
    }

    pub(super) fn commit(&mut self, client: usize) {
        if !self.active {
            return;
        }
        let think = self
            .rng
            .random_range(Duration::ZERO..self.scenario.think_max);
        let Some(db) = &self.origin.db else {
            return self.schedule(
                think.max(Duration::from_millis(1)),
                Event::Commit { client },
            );
        };
        if self.origin.clients[client].waiting.is_some() {
            return;
        }
        let records = self.rng.random_range(1..=4);
        let mut lsn_end = None;
        for _ in 0..records {
            let key = [self.rng.random_range(0..64u8)];
            let len = self.rng.random_range(1..=self.scenario.record_max);
            let fill = self.rng.random::<u8>();
            let record = store::encode(&key, &vec![fill; len]);
            if !db.log.has_room(record.len()) {
                break;
            }
            match db.log.append(&record) {
                Ok(pos) => lsn_end = Some(pos.lsn_last + 1),
                Err(error) => return self.violation(format!("origin append: {error}")),
            }
        }
        let Some(lsn_end) = lsn_end else {
            // The ring is full: the applier or a shipper holds it. Try again soon.
            self.stats.commits_deferred += 1;
            return self.schedule(Duration::from_millis(1), Event::Commit { client });
        };
        db.log.seal();
        let committed = db.log.committed_lsn();
        if committed < lsn_end {
            return self.violation(format!(
                "a sealed commit ending at page {lsn_end} is not committed ({committed})"
            ));
        }
        self.stats.commits += 1;
        self.note("commit", client as u64, lsn_end);
        self.audit();
        self.watch_rings(0);
        self.pump_served(0);
        let replicated = self.scenario.sync_replicas > 0
            && self.rng.random_range(0..100) < self.scenario.replicated_percent;
        if !replicated {
            return self.schedule(think, Event::Commit { client });
        }
        let wanted = self.rng.random_range(1..=self.scenario.sync_replicas) as u32;
        self.stats.replicated_commits += 1;
        let id = self.sequence;
        self.origin.clients[client].waiting = Some(Waiting {
            id,
            lsn_end,
            wanted,
        });
        let timeout = self.scenario.commit_timeout;
        self.schedule(timeout, Event::CommitTimeout { client, id });
        self.release_commits();
    }

    /// Completes every waiting commit whose replicas have acked it, checking each against what
    /// the replicas really hold.
    pub(super) fn release_commits(&mut self) {
        let Some(db) = &self.origin.db else {
            return;
        };
        let mut released = Vec::new();
        for (client, state) in self.origin.clients.iter_mut().enumerate() {
            if let Some(waiting) = state.waiting {
                if db.replication.reached(waiting.lsn_end, waiting.wanted) {
                    state.waiting = None;
                    released.push((client, waiting));
                }
            }
        }
        let direct = db.replication.status();
        for (client, waiting) in released {
            // Did the origin's own links suffice, or did nodes further down count?
            let direct_acks = direct
                .iter()
                .filter(|link| link.sync && link.received_lsn >= waiting.lsn_end)
                .map(|link| &link.name)
                .collect::<std::collections::BTreeSet<_>>()
                .len() as u32;
            if direct_acks < waiting.wanted {
                self.stats.replicated_by_subtree += 1;
            }
            let holders = self
                .replicas
                .iter()
                .filter(|replica| replica.held >= waiting.lsn_end)
                .count() as u32;
            if holders < waiting.wanted {
                return self.violation(format!(
                    "a Replicated({}) commit ending at page {} returned while {holders} replica(s) held it",
                    waiting.wanted, waiting.lsn_end
                ));
            }
            self.stats.replicated_released += 1;
            self.note("replicated", client as u64, waiting.lsn_end);
            let think = self
                .rng
                .random_range(Duration::ZERO..self.scenario.think_max);
            self.schedule(think, Event::Commit { client });
        }
    }

    pub(super) fn commit_timeout(&mut self, client: usize, id: u64) {
        let state = &mut self.origin.clients[client];
        if state.waiting.is_some_and(|waiting| waiting.id == id) {
            state.waiting = None;
            self.stats.replicated_timeouts += 1;
            self.note("replication timeout", client as u64, id);
            self.schedule(Duration::ZERO, Event::Commit { client });
        }
    }

    /// The ring-lag rule: a shipper blocked on a write while holding a ring cursor more than
    /// half a ring behind is dropped, checked as `node`'s log grows.
    pub(super) fn watch_rings(&mut self, node: usize) {
        let Some(db) = served(&self.origin, &self.replicas, node) else {
            return;
        };
        let (now, committed) = (self.instant(), db.log.committed_lsn());
        let dropped: Vec<(u64, String)> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.source_node == node)
            .filter_map(|(&id, conn)| match &conn.source {
                SourceEnd::Shipping(shipping) if shipping.link.watching_ring() => shipping
                    .link
                    .handle_timeout(now, committed)
                    .err()
                    .map(|error| (id, error.to_string())),
                _ => None,
            })
            .collect();
        for (id, error) in dropped {
            self.stats.ring_lag_drops += 1;
            self.close(id, &error);
        }
    }

    // ---------------------------------------------------------------- appliers

    pub(super) fn apply(&mut self, node: usize) {
        let period = self.jitter(self.scenario.apply_period[node]);
        self.schedule(period, Event::Apply { node });
        let pages_max = self.scenario.apply_pages[node];
        if node == 0 {
            if self.origin.paused_until <= self.now {
                self.apply_origin(pages_max);
            }
        } else if self.replicas[node - 1].paused_until <= self.now {
            self.apply_replica(node, pages_max);
        }
    }

    pub(super) fn apply_origin(&mut self, pages_max: usize) {
        let Some(db) = &mut self.origin.db else {
            return;
        };
        let store = &mut self.origin.store;
        let mut failure = None;
        for _ in 0..pages_max {
            match db.applier.next_ready() {
                Ok(Some(page)) => {
                    self.origin.binlog.append(page);
                    if let Err(error) = store.apply(page) {
                        failure = Some(error);
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    failure = Some(error.to_string());
                    break;
                }
            }
        }
        db.applier.release(store.resume_lsn());
        self.origin
            .binlog
            .trim(self.scenario.binlog_retention, store.next_lsn());
        if let Some(error) = failure {
            self.violation(format!("origin applier: {error}"));
        }
    }

    pub(super) fn apply_replica(&mut self, node: usize, pages_max: usize) {
        let replica = &mut self.replicas[node - 1];
        let (Some(db), Some(Generation { store, binlog, .. })) =
            (&mut replica.db, &mut replica.generation)
        else {
            return;
        };
        let mut failure = None;
        let mut applied = Vec::new();
        for _ in 0..pages_max {
            match db.applier.next_ready() {
                Ok(Some(page)) => {
                    applied.push((page.lsn(), hash(page.compact_bytes())));
                    // The replica's binlog, which it serves onward as a relay.
                    binlog.append(page);
                    if let Err(error) = store.apply(page) {
                        failure = Some(error);
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    failure = Some(error.to_string());
                    break;
                }
            }
        }
        db.applier.release(store.resume_lsn());
        binlog.trim(self.scenario.binlog_retention, store.next_lsn());
        if let Some(error) = failure {
            let error = format!("{} applier: {error}", replica.name);
            return self.violation(error);
        }
        for (lsn, digest) in applied {
            if self.registry.get(&lsn) != Some(&digest) {
                return self.violation(format!(
                    "replica {node} applied page {lsn}, which is not the page the origin wrote there"
                ));
            }
        }
        // Slots were freed: a link waiting for ring space may go on.
        if let Some(id) = self.replicas[node - 1].conn {
            self.read(id, Side::Replica);
        }
    }
}
