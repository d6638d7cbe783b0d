//! The source's end of a link, at the origin or at a relay: the handshake, RESUME and
//! admission, the shipper's loop one write at a time, and what the replica reports back (acks
//! and RECEIPTS: to the origin's `Replication`, or into the relay's receipt book).

use super::*;
use pagemesh_net::service::source_link::Heard;

impl World {
    pub(super) fn read_at_source(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let unread = std::mem::take(&mut conn.to_source.unread);
        let mut consumed = 0;
        let mut failure = None;
        while failure.is_none() {
            let (frame, len) = match decode(&unread[consumed..]) {
                Ok(Decoded::Frame { frame, len }) => (frame, len),
                Ok(Decoded::Incomplete { .. }) => break,
                Err(error) => {
                    failure = Some(format!("frame from the replica does not decode: {error}"));
                    self.violation(format!("link {id}: frame does not decode: {error}"));
                    break;
                }
            };
            consumed += len;
            failure = self.source_frame(id, frame).err();
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.to_source.unread = unread[consumed..].to_vec();
        }
        match failure {
            Some(reason) => self.close(id, &reason),
            None => {
                self.send(id, Side::Source);
                self.pump(id);
                self.arm(id, Side::Source);
            }
        }
    }

    pub(super) fn source_frame(&mut self, id: u64, frame: Frame<'_>) -> Result<(), String> {
        let now = self.instant();
        let conn = self.conns.get_mut(&id).ok_or("closed")?;
        match &mut conn.source {
            SourceEnd::Handshake(handshake) => {
                let established = handshake
                    .on_frame(&frame, &mut conn.source_out)
                    .map_err(|error| error.to_string())?;
                if established.is_some() {
                    conn.source = SourceEnd::AwaitResume { since: self.now };
                }
                Ok(())
            }
            SourceEnd::AwaitResume { .. } => {
                let Frame::Resume(resume) = frame else {
                    return Err(format!("{} before RESUME", frame.kind()));
                };
                self.admit(id, resume)
            }
            SourceEnd::Shipping(shipping) => {
                let heard = shipping
                    .link
                    .handle_frame(now, &frame)
                    .map_err(|error| error.to_string())?;
                let (replica, source_node) = (conn.replica, conn.source_node);
                self.heard_at_source(id, replica, source_node, heard)
            }
        }
    }

    /// What the replica said: at the origin, acks and receipts go to its `Replication` (as
    /// `Receipted` does in the service); at a relay, into the relay's receipt book, reported
    /// upstream through the relay's own link.
    fn heard_at_source(
        &mut self,
        id: u64,
        replica: usize,
        source_node: usize,
        heard: Heard,
    ) -> Result<(), String> {
        match heard {
            Heard::Nothing => Ok(()),
            Heard::Ack {
                received_lsn,
                durable_lsn,
            } => {
                self.note("ack", id, received_lsn);
                if source_node != 0 {
                    return self.book(source_node, replica_uuid(replica), received_lsn);
                }
                if let Some(acks) = self.acks_of(id) {
                    acks.ack(received_lsn, durable_lsn);
                }
                self.release_commits();
                Ok(())
            }
            Heard::Receipts(entries) => {
                self.note("receipts heard", id, entries.len() as u64);
                for (node, lsn) in entries {
                    if source_node != 0 {
                        self.book(source_node, node, lsn)?;
                    } else if node != ORIGIN
                        && !self.acks_of(id).is_some_and(|acks| acks.report(node, lsn))
                    {
                        return Err("too many nodes in the replica's subtree".into());
                    }
                }
                if source_node == 0 {
                    self.release_commits();
                }
                Ok(())
            }
        }
    }

    fn acks_of(&self, id: u64) -> Option<&AckLink> {
        match &self.conns.get(&id)?.source {
            SourceEnd::Shipping(shipping) => shipping.acks.as_ref(),
            _ => None,
        }
    }

    /// Relay `relay` books that `node` holds every page below `lsn`; news goes upstream at once.
    fn book(&mut self, relay: usize, node: Uuid, lsn: u64) -> Result<(), String> {
        let holder = &mut self.replicas[relay - 1];
        if node == holder.uuid {
            return Ok(()); // a loop reported this node: not news here
        }
        let book = &mut holder.receipts;
        if !book.knows(node) && book.is_full() {
            return Err("too many nodes in the receipt book".into());
        }
        if book.record(node, lsn) {
            if let Some(upstream) = holder.conn {
                self.transmit(upstream);
            }
        }
        Ok(())
    }

    /// Admits a RESUME through the real `route::admit`, as the service does: the origin's own
    /// log, or a relay's follower log (`relay: true`) at its committed LSN.
    pub(super) fn admit(&mut self, id: u64, resume: Resume) -> Result<(), String> {
        let source_node = self.conns.get(&id).ok_or("closed")?.source_node;
        let here = served(&self.origin, &self.replicas, source_node).map(|db| {
            let served = Served {
                origin: ORIGIN,
                committed_lsn: db.log.committed_lsn(),
                relay: db.log.is_follower(),
            };
            (served, db.log.slots())
        });
        let ahead = |served: &Served| {
            resume.from_lsn != BOOTSTRAP && resume.from_lsn > served.committed_lsn
        };
        let admitted = match admit(
            here.map(|(served, _)| served),
            resume.origin,
            resume.from_lsn,
        ) {
            Ok(admitted) => admitted,
            Err(reason) => {
                if here.is_some_and(|(served, _)| served.relay && ahead(&served)) {
                    self.stats.relay_refusals += 1;
                    self.note("refused as behind", id, resume.from_lsn);
                }
                return Err(format!("refused: {reason}"));
            }
        };
        let Some((served, slots)) = here else {
            return Err("admitted with nothing served".into());
        };
        if source_node != 0 && ahead(&served) {
            // A relay's copy is late, not the replica's history wrong: re-seeding it would
            // throw away pages the origin wrote.
            let error = format!(
                "relay {source_node} admitted a replica ahead of it (from {} over {})",
                resume.from_lsn, served.committed_lsn
            );
            self.violation(error.clone());
            return Err(error);
        }
        let received = if admitted.from_lsn == BOOTSTRAP {
            0
        } else {
            admitted.from_lsn
        };
        let replica = self.conns.get(&id).ok_or("closed")?.replica;
        let acks = match (&self.origin.db, source_node) {
            (Some(db), 0) => Some(db.replication.attach(
                &format!("replica-{replica}"),
                replica_uuid(replica),
                received,
            )),
            _ => None,
        };
        let conn = self.conns.get_mut(&id).ok_or("closed")?;
        conn.reseeded = admitted.reseeded;
        conn.source = SourceEnd::Shipping(Box::new(Shipping {
            link: SourceLink::new(
                self.base + self.now,
                DATABASE,
                ORIGIN,
                received,
                slots,
                self.scenario.heartbeat,
                self.scenario.link_timeout,
            ),
            shipper: Shipper::new(DATABASE, ORIGIN, admitted.from_lsn, slots),
            cursor: None,
            acks,
            snapshot: None,
        }));
        if admitted.reseeded {
            self.stats.reseeds += 1;
        }
        self.note("admitted", id, admitted.from_lsn);
        self.release_commits();
        Ok(())
    }

    /// Pumps every link `node` serves (its log grew).
    pub(super) fn pump_served(&mut self, node: usize) {
        for id in self.conns_served_by(node) {
            self.pump(id);
        }
    }

    /// The shipper's loop, one write at a time: what goes next is the `Shipper`'s decision.
    pub(super) fn pump(&mut self, id: u64) {
        loop {
            match self.ship_once(id) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(reason) => return self.close(id, &reason),
            }
        }
        let queued = self.conns.get(&id).map_or(0, |conn| conn.source_out.len());
        if queued > 0 {
            self.note("ship", id, queued as u64);
        }
        self.send(id, Side::Source);
        self.arm(id, Side::Source);
    }

    /// Puts the next batch in the source's outbox, if the pipe is free; `Ok(true)` to go on.
    pub(super) fn ship_once(&mut self, id: u64) -> Result<bool, String> {
        let Some(source_node) = self.conns.get(&id).map(|conn| conn.source_node) else {
            return Ok(false);
        };
        let Some(db) = served(&self.origin, &self.replicas, source_node) else {
            return Ok(false);
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return Ok(false);
        };
        if conn.to_replica.busy() || !conn.source_out.is_empty() {
            return Ok(false);
        }
        let SourceEnd::Shipping(shipping) = &mut conn.source else {
            return Ok(false);
        };
        let epoch = db.log.epoch();
        match shipping.shipper.feed() {
            Feed::Snapshot => {
                if shipping.snapshot.is_none() {
                    let snapshot = db.store.snapshot();
                    let lsn = db.store.resume_lsn();
                    let mut chunks = VecDeque::new();
                    let pieces: Vec<&[u8]> = snapshot.chunks(SNAPSHOT_CHUNK).collect();
                    for (index, data) in pieces.iter().enumerate() {
                        let mut frame = Vec::new();
                        encode(
                            &Frame::Snapshot(SnapshotChunk {
                                database: DATABASE,
                                origin: ORIGIN,
                                snapshot_lsn: lsn,
                                offset: (index * SNAPSHOT_CHUNK) as u64,
                                last: index + 1 == pieces.len(),
                                data,
                            }),
                            &mut frame,
                        );
                        chunks.push_back(frame);
                    }
                    shipping.snapshot = Some((lsn, chunks));
                    self.stats.snapshots += 1;
                }
                let Some((lsn, chunks)) = &mut shipping.snapshot else {
                    return Ok(false);
                };
                let lsn = *lsn;
                match chunks.pop_front() {
                    Some(chunk) => conn.source_out = chunk,
                    None => {
                        shipping.snapshot = None;
                        shipping.shipper.snapshot_sent(lsn);
                        shipping.link.shipped(lsn);
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Feed::Binlog { from_lsn } => {
                let history = db.binlog.history(from_lsn, &mut conn.source_out);
                let pages = std::mem::take(&mut conn.source_out);
                let shipped =
                    shipping
                        .shipper
                        .ship_history(epoch, history, &pages, &mut conn.source_out);
                if let Some(lsn) = shipped {
                    shipping.link.shipped(lsn);
                    self.stats.binlog_batches += 1;
                }
                Ok(shipped.is_none())
            }
            Feed::Ring { from_lsn } => {
                if shipping.cursor.is_none() {
                    match db.log.cursor(from_lsn) {
                        Ok(cursor) => {
                            shipping.cursor = Some(cursor);
                            shipping.link.set_holds_ring(true);
                        }
                        Err(pagemesh_logpage::Error::BelowHorizon { .. }) => {
                            shipping.shipper.ring_below_horizon();
                            return Ok(true);
                        }
                        Err(error) => return Err(error.to_string()),
                    }
                }
                let Some(cursor) = &mut shipping.cursor else {
                    return Ok(false);
                };
                let batch = shipping
                    .shipper
                    .ship_ring(cursor, epoch, &mut conn.source_out)
                    .map_err(|error| error.to_string())?;
                let Some(batch) = batch else {
                    return Ok(false);
                };
                shipping.link.shipped(batch.shipped_lsn);
                if batch.leave_ring {
                    shipping.cursor = None;
                    shipping.link.set_holds_ring(false);
                    self.stats.ring_to_binlog += 1;
                }
                Ok(false)
            }
        }
    }
}
