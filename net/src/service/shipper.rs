//! What a source link sends next, and how it is framed, as a machine without I/O.
//!
//! A [`Shipper`] holds one link's [`FeedPlan`] and turns what the driver read into PAGES frames:
//!
//! - [`Shipper::feed`] says where the next pages come from: a snapshot, the binlog (the driver
//!   reads up to [`HISTORY_BATCH_PAGES`] pages with `SourceDatabase::history`), or the ring from
//!   an LSN (the driver opens a `Cursor` there; [`Shipper::ring_below_horizon`] if it cannot).
//! - [`Shipper::ship_history`] frames a binlog read; [`Shipper::ship_ring`] frames up to
//!   [`RING_BATCH_PAGES`] of a cursor's ready pages, one PAGES frame per contiguous run, and
//!   releases them from the cursor at once (they are copied into the batch: the ring may have its
//!   slots back whatever the socket does). Both return the LSN every page below which is now in
//!   the batch, for `SourceLink::shipped`.
//! - A replica more than half a ring behind sends the plan back to the binlog
//!   ([`RingBatch::leave_ring`]): the driver drops its cursor, so a slow replica never holds the
//!   ring.
//!
//! The service's driver (`source.rs`) and the deterministic simulator (`pagemesh-sim`) run this
//! same code; only reading the binlog, snapshots and sockets is theirs.

use pagemesh_logpage::Cursor;
use uuid::Uuid;

use crate::error::Result;
use crate::proto::frame::{encode_pages, PagesHeader};
use crate::route::{Feed, FeedPlan, History};

/// Most pages one binlog catch-up read (and one PAGES frame) carries: 1 MiB.
pub const HISTORY_BATCH_PAGES: usize = 256;
/// Most pages one ring batch (one write) carries.
pub const RING_BATCH_PAGES: usize = 256;

/// What [`Shipper::ship_ring`] put in a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingBatch {
    /// Every page below this is in the batch (and released from the cursor).
    pub shipped_lsn: u64,
    /// The replica is more than half a ring behind: the plan went back to the binlog, and the
    /// driver must drop its cursor.
    pub leave_ring: bool,
    /// Ready pages the cursor had yet to read after the batch.
    pub lag_pages: u64,
}

/// The shipping side of one source link, for one database. See the module docs.
#[derive(Debug)]
pub struct Shipper {
    database: Uuid,
    origin: Uuid,
    plan: FeedPlan,
}

impl Shipper {
    /// A shipper for `origin`'s pages of `database`, from `from_lsn` on (`BOOTSTRAP`: a snapshot
    /// first), out of a ring of `ring_slots` pages.
    pub fn new(database: Uuid, origin: Uuid, from_lsn: u64, ring_slots: u64) -> Self {
        Self {
            database,
            origin,
            plan: FeedPlan::new(from_lsn, ring_slots),
        }
    }

    /// Where the next pages come from.
    pub fn feed(&self) -> Feed {
        self.plan.feed()
    }

    /// The LSN the next page sent will carry, or `None` before a snapshot.
    pub fn next_lsn(&self) -> Option<u64> {
        self.plan.next_lsn()
    }

    /// A snapshot went out; pages continue from `lsn`.
    pub fn snapshot_sent(&mut self, lsn: u64) {
        self.plan.snapshot_sent(lsn);
    }

    /// The ring no longer holds the feed's LSN: the binlog has it.
    pub fn ring_below_horizon(&mut self) {
        self.plan.ring_below_horizon();
    }

    /// A binlog read at the feed's LSN found `history`, whose pages (full form) are `pages`.
    /// Encodes them as one PAGES frame of `epoch` into `out`; returns the LSN every page below
    /// which is now in `out`, or `None` when there was nothing to send (the plan moved to the
    /// ring, or to a snapshot).
    pub fn ship_history(
        &mut self,
        epoch: u64,
        history: History,
        pages: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<u64> {
        let Feed::Binlog { from_lsn } = self.plan.feed() else {
            debug_assert!(false, "a binlog read while feeding from {:?}", self.feed());
            return None;
        };
        self.plan.binlog_read(history);
        let History::Pages(count @ 1..) = history else {
            return None;
        };
        assert_eq!(
            pages.len(),
            count * pagemesh_logpage::page::PAGE_SIZE,
            "the binlog read {count} pages but returned {} bytes",
            pages.len()
        );
        encode_pages(&self.header(epoch, from_lsn), &[pages], out);
        Some(from_lsn + count as u64)
    }

    /// Encodes up to [`RING_BATCH_PAGES`] of `cursor`'s ready pages into `out`, one PAGES frame
    /// of `epoch` per contiguous run, and releases them from the cursor. `None` when no page was
    /// ready.
    pub fn ship_ring(
        &mut self,
        cursor: &mut Cursor,
        epoch: u64,
        out: &mut Vec<u8>,
    ) -> Result<Option<RingBatch>> {
        debug_assert_eq!(
            self.plan.feed(),
            Feed::Ring {
                from_lsn: cursor.position()
            },
            "the cursor is where the plan reads"
        );
        let mut pages = 0;
        while pages < RING_BATCH_PAGES {
            let Some(run) = cursor.next_run(RING_BATCH_PAGES - pages)? else {
                break;
            };
            encode_pages(&self.header(epoch, run.first_lsn), &[run.bytes], out);
            pages += run.count();
        }
        if pages == 0 {
            return Ok(None);
        }
        let shipped_lsn = cursor.position();
        cursor.release(shipped_lsn);
        let lag_pages = cursor.lag_pages();
        let leave_ring = self.plan.ring_shipped(shipped_lsn, lag_pages);
        Ok(Some(RingBatch {
            shipped_lsn,
            leave_ring,
            lag_pages,
        }))
    }

    fn header(&self, epoch: u64, first_lsn: u64) -> PagesHeader<'static> {
        PagesHeader {
            database: self.database,
            origin: self.origin,
            epoch,
            visited: &[],
            first_lsn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::{decode, Decoded, Frame};
    use crate::route::BOOTSTRAP;
    use pagemesh_logpage::{Log, LogOptions};

    /// `(first_lsn, page count)` of each PAGES frame in `out`.
    fn frames(out: &[u8]) -> Vec<(u64, usize)> {
        let mut runs = Vec::new();
        let mut rest = out;
        while let Ok(Decoded::Frame { frame, len }) = decode(rest) {
            let Frame::Pages(pages) = frame else {
                panic!("{frame:?}")
            };
            runs.push((pages.first_lsn, pages.pages.len() / PAGE));
            rest = &rest[len..];
        }
        assert!(rest.is_empty());
        runs
    }

    const PAGE: usize = pagemesh_logpage::page::PAGE_SIZE;

    fn log_with_pages(slots: u64, pages: u64) -> Log {
        let log = Log::in_memory(LogOptions::new().slots(slots)).unwrap();
        for _ in 0..pages {
            log.append(&[7; 100]).unwrap();
            log.seal();
        }
        log
    }

    #[test]
    fn ring_runs_are_framed_released_and_reported() {
        let log = log_with_pages(16, 6);
        let mut shipper = Shipper::new(Uuid::from_u128(1), Uuid::from_u128(2), 0, 16);
        assert!(shipper
            .ship_history(0, History::Pages(0), &[], &mut Vec::new())
            .is_none());
        assert_eq!(shipper.feed(), Feed::Ring { from_lsn: 0 });
        let mut cursor = log.cursor(0).unwrap();
        let mut out = Vec::new();
        let batch = shipper
            .ship_ring(&mut cursor, 0, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(
            batch,
            RingBatch {
                shipped_lsn: 6,
                leave_ring: false,
                lag_pages: 0
            }
        );
        assert_eq!(frames(&out), [(0, 6)]);
        assert_eq!(
            cursor.released_lsn(),
            6,
            "copied pages are released at once"
        );
        assert_eq!(shipper.ship_ring(&mut cursor, 0, &mut out).unwrap(), None);
    }

    #[test]
    fn a_replica_half_a_ring_behind_goes_back_to_the_binlog() {
        // 300 pages through a 512-slot ring: one batch of 256 leaves 44 behind (fine)...
        let log = log_with_pages(512, 300);
        let mut shipper = Shipper::new(Uuid::nil(), Uuid::nil(), 0, 512);
        shipper.ship_history(0, History::Pages(0), &[], &mut Vec::new());
        let mut cursor = log.cursor(0).unwrap();
        let mut out = Vec::new();
        let batch = shipper
            .ship_ring(&mut cursor, 0, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!((batch.shipped_lsn, batch.leave_ring), (256, false));
        // ... but a 64-slot plan over the same log is far behind after one batch.
        let mut shipper = Shipper::new(Uuid::nil(), Uuid::nil(), 0, 64);
        shipper.ship_history(0, History::Pages(0), &[], &mut Vec::new());
        let mut cursor = log.cursor(0).unwrap();
        let batch = shipper
            .ship_ring(&mut cursor, 0, &mut out)
            .unwrap()
            .unwrap();
        assert!(batch.leave_ring);
        assert_eq!(shipper.feed(), Feed::Binlog { from_lsn: 256 });
    }

    #[test]
    fn binlog_reads_are_framed_from_the_plans_lsn() {
        let log = log_with_pages(16, 3);
        let mut cursor = log.cursor(0).unwrap();
        let run = cursor.next_run(3).unwrap().unwrap().bytes.to_vec();
        let mut shipper = Shipper::new(Uuid::nil(), Uuid::nil(), BOOTSTRAP, 16);
        assert_eq!(shipper.feed(), Feed::Snapshot);
        shipper.snapshot_sent(0);
        let mut out = Vec::new();
        assert_eq!(
            shipper.ship_history(0, History::Pages(3), &run, &mut out),
            Some(3)
        );
        assert_eq!(frames(&out), [(0, 3)]);
        assert_eq!(shipper.feed(), Feed::Binlog { from_lsn: 3 });
        assert_eq!(
            shipper.ship_history(0, History::Purged { oldest: 9 }, &[], &mut out),
            None
        );
        assert_eq!(shipper.feed(), Feed::Snapshot);
    }
}
