//! The replica's end of a link: frames through the `ReplicaLink`, pages into the ring, snapshots
//! into a new generation (closing the links the replica serves on the old one), acks and the
//! receipt book's RECEIPTS out.

use super::*;

impl World {
    pub(super) fn read_at_replica(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let replica = conn.replica;
        if let ReplicaEnd::Linked(following) = &mut conn.replica_end {
            if let Some(pages) = following.stalled.take() {
                match self.ingest(id, replica, &pages) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(reason) => return self.close(id, &reason),
                }
            }
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let unread = std::mem::take(&mut conn.to_replica.unread);
        let mut consumed = 0;
        let mut failure = None;
        let mut stalled = false;
        while failure.is_none() && !stalled {
            let (frame, len) = match decode(&unread[consumed..]) {
                Ok(Decoded::Frame { frame, len }) => (frame, len),
                Ok(Decoded::Incomplete { .. }) => break,
                Err(error) => {
                    failure = Some(format!("frame from the source does not decode: {error}"));
                    self.violation(format!("link {id}: frame does not decode: {error}"));
                    break;
                }
            };
            consumed += len;
            match self.replica_frame(id, replica, frame) {
                Ok(true) => {}
                Ok(false) => stalled = true,
                Err(reason) => failure = Some(reason),
            }
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.to_replica.unread = unread[consumed..].to_vec();
        }
        match failure {
            Some(reason) => self.close(id, &reason),
            None => {
                self.transmit(id);
                self.arm(id, Side::Replica);
            }
        }
    }

    /// One frame at the replica; `Ok(false)` when its pages wait for ring space.
    pub(super) fn replica_frame(
        &mut self,
        id: u64,
        replica: usize,
        frame: Frame<'_>,
    ) -> Result<bool, String> {
        let now = self.instant();
        let conn = self.conns.get_mut(&id).ok_or("closed")?;
        let following = match &mut conn.replica_end {
            ReplicaEnd::Handshake(handshake) => {
                let established = handshake
                    .on_frame(&frame, &mut conn.replica_out)
                    .map_err(|error| error.to_string())?;
                if let Some(peer) = established {
                    // RECEIPTS only to a source that speaks them; a new upstream may have heard
                    // none of what the last one did.
                    let receipts = peer.version >= RECEIPTS_SINCE_VERSION;
                    if receipts {
                        self.replicas[replica - 1].receipts.report_all();
                    } else {
                        self.stats.links_without_receipts += 1;
                    }
                    let node = &self.replicas[replica - 1];
                    let resume = match &node.db {
                        Some(db) => Resume {
                            database: DATABASE,
                            origin: ORIGIN,
                            epoch: db.log.epoch(),
                            from_lsn: db.log.committed_lsn(),
                        },
                        None => Resume {
                            database: DATABASE,
                            origin: Uuid::nil(),
                            epoch: 0,
                            from_lsn: BOOTSTRAP,
                        },
                    };
                    conn.linked = true;
                    conn.replica_end = ReplicaEnd::Linked(Box::new(Following {
                        heard: false,
                        receipts,
                        link: ReplicaLink::new(
                            now,
                            resume,
                            self.scenario.heartbeat,
                            self.scenario.link_timeout,
                        ),
                        stalled: None,
                        restore: None,
                        waiting_for_ring: false,
                    }));
                }
                return Ok(true);
            }
            ReplicaEnd::Linked(following) => following,
        };
        let received = following
            .link
            .handle_frame(now, frame)
            .map_err(|error| error.to_string())?;
        following.heard = true;
        match received {
            Received::Nothing => Ok(true),
            Received::Pages(pages) => {
                if self.replicas[replica - 1].db.is_none() {
                    return Err("pages before any snapshot".into());
                }
                self.ingest(id, replica, pages)
            }
            Received::SnapshotChunk { data, last } => {
                let restore = following.restore.get_or_insert_with(Vec::new);
                restore.extend_from_slice(data);
                if last {
                    let bytes = following.restore.take().unwrap_or_default();
                    self.restore(id, replica, &bytes)?;
                }
                Ok(true)
            }
        }
    }

    /// Ingests pages into the replica's ring; `Ok(false)` (the rest kept) when it is full.
    pub(super) fn ingest(&mut self, id: u64, replica: usize, pages: &[u8]) -> Result<bool, String> {
        let now = self.instant();
        let source_node = self.conns.get(&id).ok_or("closed")?.source_node;
        let node = &mut self.replicas[replica - 1];
        let (Some(db), Some(Generation { store, .. })) = (&node.db, &node.generation) else {
            return Err("no replica to ingest into".into());
        };
        let before = db.log.committed_lsn();
        let ingested = match db.log.ingest(pages) {
            Ok(ingested) => ingested,
            Err(error) => {
                let error = format!("replica {replica} refused pages from its source: {error}");
                self.violation(error.clone());
                return Err(error);
            }
        };
        let held = db.log.committed_lsn();
        let applied = store.next_lsn();
        node.held = held;
        for page in pages[..ingested.pages * PAGE_SIZE].chunks_exact(PAGE_SIZE) {
            let Ok(page) = validate(page) else { continue };
            if page.lsn() >= before
                && self.registry.get(&page.lsn()) != Some(&hash(page.compact_bytes()))
            {
                let lsn = page.lsn();
                self.violation(format!(
                    "replica {replica} received page {lsn}, which is not the page the origin wrote there"
                ));
                return Err("foreign page".into());
            }
        }
        self.stats.pages_ingested += held - before;
        if source_node != 0 {
            self.stats.relayed_pages += held - before;
        }
        self.note("ingest", replica as u64, held);
        if held > before {
            // Its log grew: the links it serves have pages to ship (and may hold its ring).
            self.watch_rings(replica);
            self.pump_served(replica);
        }
        let rest = &pages[ingested.pages * PAGE_SIZE..];
        let conn = self.conns.get_mut(&id).ok_or("closed")?;
        let ReplicaEnd::Linked(following) = &mut conn.replica_end else {
            return Err("not linked".into());
        };
        if held > before {
            following.link.ingested(held, applied.min(held));
        }
        if rest.is_empty() {
            if following.waiting_for_ring {
                following.waiting_for_ring = false;
                following.link.set_waiting_for_ring(now, false);
            }
            return Ok(true);
        }
        if !following.waiting_for_ring {
            self.stats.ingest_stalls += 1;
            following.waiting_for_ring = true;
            following.link.set_waiting_for_ring(now, true);
        }
        following.stalled = Some(rest.to_vec());
        Ok(false)
    }

    /// A whole snapshot arrived: a new generation replaces the replica's database.
    ///
    /// A restore may land below what the replica held only when the origin re-seeded it for
    /// claiming pages beyond the origin's log (`admit`'s `reseeded`): every other snapshot (a
    /// bootstrap, or a binlog purged below the replica, at the origin or at a relay) starts at
    /// or above the oldest page the source's binlog still holds, which is above the replica. A
    /// relay never re-seeds a replica that is ahead of it: it refuses it.
    pub(super) fn restore(&mut self, id: u64, replica: usize, bytes: &[u8]) -> Result<(), String> {
        let store = Store::restore(bytes)?;
        let lsn = store.next_lsn();
        let conn = self.conns.get(&id).ok_or("closed")?;
        let (source_node, reseeded) = (conn.source_node, conn.reseeded);
        let held = self.replicas[replica - 1].held;
        if lsn < held && !(source_node == 0 && reseeded) {
            let error = if source_node == 0 {
                format!("the origin re-seeded replica {replica} from page {lsn}, taking back the pages below {held} it held")
            } else {
                format!("relay {source_node} re-seeded replica {replica}, which was ahead of it, from page {lsn}, taking back the pages below {held} it held")
            };
            self.violation(error.clone());
            return Err(error);
        }
        // The links reading the old generation close: their replicas come back and are
        // admitted against the new one (`Runtime::serve` does this when the log changes).
        for served in self.conns_served_by(replica) {
            self.stats.relay_generation_closes += 1;
            self.close(served, "the relay was re-seeded into a new generation");
        }
        let node = &mut self.replicas[replica - 1];
        node.generations += 1;
        let dir = self
            ._dir
            .path()
            .join(format!("{}-gen{}", node.name, node.generations));
        std::fs::create_dir_all(&dir).map_err(|error| error.to_string())?;
        node.db = None;
        let options = LogOptions::new()
            .slots(self.scenario.ring_slots)
            .follower(true)
            .next_lsn_min(lsn);
        let log = Log::open(&dir, options).map_err(|error| error.to_string())?;
        let applier = log.cursor(lsn).map_err(|error| error.to_string())?;
        node.db = Some(ReplicaDb { log, applier });
        node.generation = Some(Generation {
            dir,
            store,
            binlog: Binlog::starting_at(lsn),
        });
        node.held = lsn;
        self.stats.restores += 1;
        self.note("restored", replica as u64, lsn);
        let conn = self.conns.get_mut(&id).ok_or("closed")?;
        if let ReplicaEnd::Linked(following) = &mut conn.replica_end {
            following.link.restored(lsn, lsn);
        }
        Ok(())
    }

    /// The replica end's writer: what its machine has due, once the pipe is free.
    ///
    /// The receipt book's news goes into the machine first (as the service's writer does), on
    /// links whose source speaks RECEIPTS.
    pub(super) fn transmit(&mut self, id: u64) {
        let now = self.instant();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let ReplicaEnd::Linked(following) = &mut conn.replica_end else {
            return self.send(id, Side::Replica);
        };
        if following.receipts {
            if let Some(report) = self.replicas[conn.replica - 1].receipts.take_report() {
                following.link.report(report);
            }
        }
        if conn.to_source.busy() || !conn.replica_out.is_empty() {
            return self.send(id, Side::Replica);
        }
        if !following.link.poll_transmit(now, &mut conn.replica_out) {
            return;
        }
        let (replica, receipts) = (conn.replica, following.receipts);
        let out = std::mem::take(&mut conn.replica_out);
        let checked = self.check_reports(replica, receipts, &out);
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.replica_out = out;
        }
        if let Err(violation) = checked {
            return self.violation(violation);
        }
        self.send(id, Side::Replica);
    }

    /// No ACK or RECEIPTS entry may cover a page its node does not hold (checked against each
    /// named node's real ring), and RECEIPTS go only to a source that speaks them.
    fn check_reports(&mut self, replica: usize, receipts: bool, out: &[u8]) -> Result<(), String> {
        let held = self.replicas[replica - 1].held;
        let mut rest = out;
        while let Ok(Decoded::Frame { frame, len }) = decode(rest) {
            match frame {
                Frame::Ack(ack) if ack.received_lsn > held => {
                    return Err(format!(
                        "replica {replica} acked pages below {} holding only those below {held}",
                        ack.received_lsn
                    ));
                }
                Frame::Receipts(_) if !receipts => {
                    return Err(format!(
                        "replica {replica} sent RECEIPTS to a source older than version {RECEIPTS_SINCE_VERSION}"
                    ));
                }
                Frame::Receipts(report) => {
                    self.stats.receipts_frames += 1;
                    for (node, lsn) in report.entries {
                        let Some(index) = self.replicas.iter().position(|r| r.uuid == node) else {
                            return Err(format!(
                                "replica {replica} reported receipts of node {node}, which is no replica"
                            ));
                        };
                        let node_held = self.replicas[index].held;
                        if lsn > node_held {
                            return Err(format!(
                                "replica {replica} reported that replica {} holds pages below {lsn}; it holds only those below {node_held}",
                                index + 1
                            ));
                        }
                    }
                }
                _ => {}
            }
            rest = &rest[len..];
        }
        Ok(())
    }
}
