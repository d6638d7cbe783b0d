//! Connections: opening and closing them, moving bytes through their pipes, and the link timers their machines ask for.

use super::*;

impl World {
    pub(super) fn path(&self, replica: usize) -> Path {
        Path {
            latency: self.scenario.latency[replica - 1],
            bandwidth: self.scenario.bandwidth[replica - 1],
            window: self.scenario.window,
        }
    }

    /// The handshake `node` (0: the origin) runs: a replica of the previous release speaks
    /// version 1 only.
    pub(super) fn handshake_config(&self, node: usize) -> HandshakeConfig {
        let (uuid, name) = self.identity(node);
        let mut config = HandshakeConfig::new(uuid, name, Some(b"sim".to_vec()));
        config.timeout = self.scenario.link_timeout;
        if node > 0 && self.scenario.old_protocol.get(node - 1) == Some(&true) {
            config.versions = 1..=1;
        }
        config
    }

    pub(super) fn nonce(&mut self) -> [u8; 32] {
        self.rng.random()
    }

    /// The uuid and name `node` handshakes with (0: the origin).
    pub(super) fn identity(&self, node: usize) -> (Uuid, String) {
        match node {
            0 => (ORIGIN, "origin".into()),
            _ => {
                let replica = &self.replicas[node - 1];
                (replica.uuid, replica.name.clone())
            }
        }
    }

    /// Whether `node`'s process runs (a relay runs before it has a database, and refuses).
    pub(super) fn is_up(&self, node: usize) -> bool {
        match node {
            0 => self.origin.db.is_some(),
            _ => self.replicas[node - 1].up,
        }
    }

    /// Connects `replica` to the holder its `Upstreams` names, if `dial` is its latest attempt.
    pub(super) fn connect(&mut self, replica: usize, dial: u64) {
        let node = &self.replicas[replica - 1];
        if !node.up || node.conn.is_some() || node.dial != dial {
            return;
        }
        let holder = *node.upstreams.current();
        if !self.is_up(holder)
            || self.partitioned[replica] > self.now
            || self.partitioned[holder] > self.now
            || node.stalled_until > self.now
        {
            // Refused, or no answer: the next holder, or a new round after a backoff.
            self.note("connect failed", replica as u64, holder as u64);
            return self.next_holder(replica, false);
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let now = self.instant();
        let mut replica_out = Vec::new();
        let connector = Handshake::connect(
            &self.handshake_config(replica),
            self.nonce(),
            now,
            &mut replica_out,
        );
        let acceptor = Handshake::accept(&self.handshake_config(holder), self.nonce(), now);
        self.conns.insert(
            id,
            Conn {
                replica,
                source_node: holder,
                reseeded: false,
                path: self.path(replica),
                to_replica: Pipe::default(),
                to_source: Pipe::default(),
                source: SourceEnd::Handshake(Box::new(acceptor)),
                replica_end: ReplicaEnd::Handshake(Box::new(connector)),
                source_out: Vec::new(),
                replica_out,
                timers: [None, None],
                spins: [(Duration::ZERO, 0); 2],
                linked: false,
            },
        );
        self.replicas[replica - 1].conn = Some(id);
        self.stats.connections += 1;
        self.note("connect", replica as u64, (id << 8) | holder as u64);
        self.send(id, Side::Replica);
        self.arm(id, Side::Source);
        self.arm(id, Side::Replica);
    }

    /// `replica` hears a HAVE from each holder it does not follow and can reach (the lazy
    /// links, modelled without their latency), then grafts the one `Upstreams` names, if any:
    /// its link is closed and the next attempt goes there. Never while it has no copy or is
    /// receiving a snapshot, as in the service.
    pub(super) fn watch(&mut self, replica: usize) {
        self.schedule(WATCH_PERIOD, Event::Watch { replica });
        let now = self.instant();
        let node = &self.replicas[replica - 1];
        if !node.up || self.partitioned[replica] > self.now || node.grafting.is_some() {
            return;
        }
        let restoring = node.conn.and_then(|id| self.conns.get(&id)).is_some_and(|conn| {
            matches!(&conn.replica_end, ReplicaEnd::Linked(following) if following.restore.is_some())
        });
        let offers: Vec<(usize, u64)> = node
            .upstreams
            .holders()
            .iter()
            .enumerate()
            .filter(|&(_, &holder)| self.is_up(holder) && self.partitioned[holder] <= self.now)
            .filter_map(|(index, &holder)| {
                served(&self.origin, &self.replicas, holder)
                    .map(|served| (index, served.log.committed_lsn()))
            })
            .collect();
        let node = &mut self.replicas[replica - 1];
        let held = node.held;
        for (index, lsn) in offers {
            node.upstreams.heard_have(index, lsn, held, now);
        }
        if node.db.is_none() || restoring {
            return;
        }
        let Some(holder) = node
            .upstreams
            .graft_due(held, now)
            .map(|graft| graft.holder())
        else {
            return;
        };
        node.grafting = Some(holder);
        self.stats.grafts += 1;
        let (to, conn) = (node.upstreams.holders()[holder], node.conn);
        self.note("graft", replica as u64, to as u64);
        match conn {
            Some(id) => self.close(id, "grafting a holder that offers what this one lacks"),
            None => self.next_holder(replica, false),
        }
    }

    /// `replica`'s attempt at its current holder ended (`was_up`: the holder served it): its
    /// `Upstreams` picks the holder to try next and how long to wait first (after a graft: the
    /// grafted holder, at once).
    pub(super) fn next_holder(&mut self, replica: usize, was_up: bool) {
        let node = &mut self.replicas[replica - 1];
        if let Some(holder) = node.grafting.take() {
            node.upstreams.graft(holder);
            return self.redial(replica, Duration::ZERO);
        }
        let before = *node.upstreams.current();
        let wait = node.upstreams.ended(was_up);
        let after = *node.upstreams.current();
        if after != before {
            self.stats.failovers += 1;
            self.note("failover", replica as u64, after as u64);
        }
        self.redial(replica, wait);
    }

    /// Schedules `replica`'s next attempt after `wait`, superseding any other.
    pub(super) fn redial(&mut self, replica: usize, wait: Duration) {
        let node = &mut self.replicas[replica - 1];
        node.dial += 1;
        let dial = node.dial;
        self.schedule(wait, Event::Connect { replica, dial });
    }

    /// Tears a connection down at both ends; the replica tries its next holder.
    pub(super) fn close(&mut self, id: u64, reason: &str) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.stats.links_closed += 1;
        self.note("close", conn.replica as u64, id);
        if let Some(lines) = &mut self.lines {
            lines.push(format!("             link {id} closed: {reason}"));
        }
        let replica = conn.replica;
        let was_up = matches!(&conn.replica_end, ReplicaEnd::Linked(following) if following.heard);
        drop(conn);
        let node = &mut self.replicas[replica - 1];
        node.conn = None;
        if node.up {
            self.next_holder(replica, was_up);
        }
    }

    /// Hands `side`'s outgoing bytes to its pipe, if the pipe is free.
    pub(super) fn send(&mut self, id: u64, side: Side) {
        let now = self.now;
        let started = self.instant();
        let cuts = self.cuts();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let path = conn.path;
        let out = std::mem::take(match side {
            Side::Source => &mut conn.source_out,
            Side::Replica => &mut conn.replica_out,
        });
        if out.is_empty() {
            return;
        }
        let pipe = conn.pipe_from(side);
        if pipe.busy() {
            debug_assert!(false, "send while the pipe is busy");
            return;
        }
        match &mut conn.source {
            SourceEnd::Shipping(shipping) if side == Side::Source => {
                shipping.link.write_started(started)
            }
            _ => {}
        }
        if let (Side::Replica, ReplicaEnd::Linked(following)) = (side, &mut conn.replica_end) {
            following.link.write_started(started);
        }
        let sent = conn.pipe_from(side).write(now, path, out, &cuts);
        self.sent(id, side, sent);
    }

    pub(super) fn sent(&mut self, id: u64, from: Side, sent: Option<Sent>) {
        let Some(sent) = sent else {
            self.note("write blocked", id, 0);
            return self.arm(id, from);
        };
        let to = match from {
            Side::Source => Side::Replica,
            Side::Replica => Side::Source,
        };
        for at in sent.arrivals {
            self.schedule_at(at, Event::Deliver { conn: id, to });
        }
        self.schedule_at(sent.done_at, Event::WriteDone { conn: id, from });
        self.arm(id, from);
    }

    pub(super) fn write_done(&mut self, id: u64, from: Side) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.pipe_from(from).write_done();
        match (from, &mut conn.source, &mut conn.replica_end) {
            (Side::Source, SourceEnd::Shipping(shipping), _) => shipping.link.write_finished(),
            (Side::Replica, _, ReplicaEnd::Linked(following)) => following.link.write_finished(),
            _ => {}
        }
        self.send(id, from);
        match from {
            Side::Source => self.pump(id),
            Side::Replica => self.transmit(id),
        }
        self.arm(id, from);
    }

    pub(super) fn deliver(&mut self, id: u64, to: Side) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let heal = self.partitioned[conn.replica].max(self.partitioned[conn.source_node]);
        if heal > self.now {
            return self.schedule_at(heal, Event::Deliver { conn: id, to });
        }
        let pipe = match to {
            Side::Source => &mut conn.to_source,
            Side::Replica => &mut conn.to_replica,
        };
        let delivered = pipe.deliver(self.now);
        if delivered == 0 {
            return;
        }
        // Bytes moved: the reader hears life, the writer's write is making progress.
        let now = self.base + self.now;
        match (&mut conn.source, &mut conn.replica_end, to) {
            (SourceEnd::Shipping(shipping), _, Side::Source) => shipping.link.bytes_received(now),
            (SourceEnd::Shipping(shipping), _, Side::Replica) => shipping.link.bytes_sent(now),
            _ => {}
        }
        if let ReplicaEnd::Linked(following) = &mut conn.replica_end {
            match to {
                Side::Replica => following.link.bytes_received(now),
                Side::Source => following.link.bytes_sent(now),
            }
        }
        if to == Side::Replica {
            // A page's worth of bytes from the followed holder is progress, whatever the lazy
            // links offer (heartbeats alone are not: a stalled holder still sends them).
            let node = &mut self.replicas[conn.replica - 1];
            node.moved += delivered as u64;
            if node.moved >= PAGE_SIZE as u64 {
                node.moved = 0;
                node.upstreams.progressed(now);
            }
        }
        self.read(id, to);
    }

    /// `side` read what arrived: frames through its machines; then the peer's blocked write may
    /// fit.
    pub(super) fn read(&mut self, id: u64, side: Side) {
        match side {
            Side::Source => self.read_at_source(id),
            Side::Replica => self.read_at_replica(id),
        }
        let cuts = self.cuts();
        let now = self.now;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let path = conn.path;
        let (peer, pipe) = match side {
            Side::Source => (Side::Replica, &mut conn.to_source),
            Side::Replica => (Side::Source, &mut conn.to_replica),
        };
        if let Some(sent) = pipe.unblock(now, path, &cuts) {
            self.note("write unblocked", id, 0);
            self.sent(id, peer, Some(sent));
        }
    }

    /// (Re)sets `side`'s timer to what its machine says.
    pub(super) fn arm(&mut self, id: u64, side: Side) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let busy = conn.pipe_from(side).busy();
        let deadline = match side {
            Side::Source => match &conn.source {
                SourceEnd::Handshake(handshake) => handshake.deadline(),
                SourceEnd::AwaitResume { since } => self.base + *since + self.scenario.link_timeout,
                SourceEnd::Shipping(shipping) if busy => shipping.link.timeout_deadline(),
                SourceEnd::Shipping(shipping) => shipping
                    .link
                    .timeout_deadline()
                    .min(shipping.link.heartbeat_deadline()),
            },
            Side::Replica => match &conn.replica_end {
                ReplicaEnd::Handshake(handshake) => handshake.deadline(),
                ReplicaEnd::Linked(following) if busy => following.link.timeout_deadline(),
                ReplicaEnd::Linked(following) => following.link.poll_timeout(),
            },
        };
        let at = deadline.saturating_duration_since(self.base);
        if conn.timers[slot(side)] == Some(at) {
            return;
        }
        conn.timers[slot(side)] = Some(at);
        self.schedule_at(at, Event::Timer { conn: id, side, at });
    }

    pub(super) fn timer(&mut self, id: u64, side: Side, at: Duration) {
        let now = self.instant();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.timers[slot(side)] != Some(at) {
            return; // superseded
        }
        conn.timers[slot(side)] = None;
        let spins = &mut conn.spins[slot(side)];
        if spins.0 == self.now {
            spins.1 += 1;
            if spins.1 > SPINS_MAX {
                return self.violation(format!(
                    "link {id}'s {side:?} timer fires again and again at one instant"
                ));
            }
        } else {
            *spins = (self.now, 0);
        }
        let committed = served(&self.origin, &self.replicas, conn.source_node)
            .map_or(0, |served| served.log.committed_lsn());
        let busy = conn.pipe_from(side).busy();
        let verdict: Result<(), pagemesh_net::Error> = match side {
            Side::Source => match &mut conn.source {
                SourceEnd::Handshake(handshake) => handshake.check_deadline(now),
                SourceEnd::AwaitResume { since } => {
                    if self.now >= *since + self.scenario.link_timeout {
                        Err(pagemesh_net::Error::LinkTimeout {
                            silent_for: self.now - *since,
                        })
                    } else {
                        Ok(())
                    }
                }
                SourceEnd::Shipping(shipping) => {
                    shipping.link.handle_timeout(now, committed).and_then(|()| {
                        if busy || !conn.source_out.is_empty() {
                            return Ok(());
                        }
                        shipping
                            .link
                            .poll_heartbeat(now, &mut conn.source_out)
                            .map(drop)
                    })
                }
            },
            Side::Replica => match &mut conn.replica_end {
                ReplicaEnd::Handshake(handshake) => handshake.check_deadline(now),
                ReplicaEnd::Linked(following) => following.link.handle_timeout(now),
            },
        };
        if let Err(error) = verdict {
            if matches!(
                error,
                pagemesh_net::Error::WriteBlocked { .. }
                    | pagemesh_net::Error::ReplicaHoldsRing { .. }
            ) {
                self.stats.write_timeouts += 1;
            }
            return self.close(id, &format!("{side:?} end: {error}"));
        }
        match side {
            Side::Source => self.send(id, Side::Source),
            Side::Replica => self.transmit(id),
        }
        self.arm(id, side);
    }
}
