//! The source's end of a link: the handshake, RESUME and the shipper's loop, one write at a time.

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
                if let Heard::Ack {
                    received_lsn: received,
                    durable_lsn: durable,
                } = heard
                {
                    shipping.acks.ack(received, durable);
                    self.note("ack", id, received);
                    self.release_commits();
                }
                Ok(())
            }
        }
    }

    pub(super) fn admit(&mut self, id: u64, resume: Resume) -> Result<(), String> {
        let Some(db) = &self.origin.db else {
            return Err("origin is down".into());
        };
        let served = Served {
            origin: ORIGIN,
            committed_lsn: db.log.committed_lsn(),
            relay: false,
        };
        let admitted = admit(Some(served), resume.origin, resume.from_lsn)?;
        let received = if admitted.from_lsn == BOOTSTRAP {
            0
        } else {
            admitted.from_lsn
        };
        let conn = self.conns.get_mut(&id).ok_or("closed")?;
        let name = format!("replica-{}", conn.replica);
        let slots = db.log.slots();
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
            acks: db.replication.attach(
                &name,
                Uuid::from_u128(0x1000 + conn.replica as u128),
                received,
            ),
            snapshot: None,
        }));
        if admitted.reseeded {
            self.stats.reseeds += 1;
        }
        self.note("admitted", id, admitted.from_lsn);
        self.release_commits();
        Ok(())
    }

    pub(super) fn pump_all_sources(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
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
        let Some(db) = &self.origin.db else {
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
                    let snapshot = self.origin.store.snapshot();
                    let lsn = self.origin.store.resume_lsn();
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
                let history = history(&self.origin.binlog, from_lsn, &mut conn.source_out);
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
