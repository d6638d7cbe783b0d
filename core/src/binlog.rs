//! The binlog: the log's history, read back by LSN for peers catching up and for history readers,
//! and its retention.
//!
//! # Where the history is
//!
//! Since stop 36 the history is the log's own segments: the log keeps the segments its horizon
//! passes ([`LogOptions::keep_history`](pagemesh_logpage::LogOptions::keep_history)) and each
//! page stays where the log wrote it, once, until retention retires its segment. Until stop 35
//! the applier also wrote every page a second time, into LMDB's `__binlog` (one value per group),
//! which was 16% of `demo`'s end-to-end time (`src/demo.rs`, Stop 34). **Departure from
//! DESIGN.md**, which has the applier append the pages to `__binlog`: nothing is appended there any
//! more. A database from before keeps its `__binlog` readable below `history_from` (the
//! `binlog_next_lsn` it had when it was first opened by this version, in `__meta`) until
//! retention passes it, and then it is cleared.
//!
//! **Reading.** [`Snapshot::binlog_range`] hands out owned pages ([`OwnedPage`]) from the
//! requested LSN up to the snapshot's applied LSN: from `__binlog` below `history_from`, then
//! from the segments through a [`HistoryReader`], which needs no lock (a read-only view reads
//! history the same way). A segment may be retired while it is read; a page is handed out only
//! if it validates *and* carries the LSN asked for, and one that does not is [`Error::Purged`]
//! if retention has passed it since, else [`Error::HistoryDamaged`]. Recovery rebuilds the
//! applier's record reader from the same pages ([`history_pages`]).
//!
//! **Durable below LMDB.** The applier makes its group's pages durable in the segments before it
//! commits the group (`Log::make_durable_below`), so LMDB's state on disk never claims pages
//! applied that a power loss could take from the history.
//!
//! **Retention** ([`retire_history`], after each group) retires whole segments, oldest first,
//! while the history holds more than `binlog_retain_bytes` (whole 4 KiB pages: a segment's bytes
//! on disk, not the pages' used bytes as `__binlog` counted) or its oldest segment was last
//! written longer ago than `binlog_retain_age`. It never retires a page at or above a registered
//! cursor (`cursor:NAME` in `__meta`, [`Store::set_cursor`]), the page where the applier's open
//! record began, or a page the log still holds above its horizon. A retired segment's file is
//! reused for new pages. An old `__binlog` is trimmed by its own rules ([`Store::trim_binlog`])
//! as before, and cleared once the segments' history starts above `history_from`.

use std::ops::Bound;

use std::path::Path;
use std::time::{Duration, SystemTime};

use pagemesh_logpage::page::HEADER_SIZE;
use pagemesh_logpage::{validate, HistoryPage, HistoryReader, Log, OwnedPage, PageRef, PAGE_SIZE};

use crate::error::{Error, Result};
use crate::read::Snapshot;
use crate::store::Store;

/// The pages of one binlog value (compact pages back to back), validated one by one.
pub(crate) struct CompactPages<'a> {
    pub rest: &'a [u8],
}

impl<'a> Iterator for CompactPages<'a> {
    type Item = Result<PageRef<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        // View at most one page to learn its length, then validate exactly that page.
        let page = match validate(&self.rest[..self.rest.len().min(PAGE_SIZE)]) {
            Ok(page) => page,
            Err(error) => {
                self.rest = &[];
                return Some(Err(error.into()));
            }
        };
        let (bytes, rest) = self.rest.split_at(HEADER_SIZE + page.payload().len());
        self.rest = rest;
        Some(validate(bytes).map_err(Error::from))
    }
}

impl Snapshot<'_> {
    /// The log pages from `from_lsn` up to this snapshot's applied LSN, in order, each owned and
    /// validated. Fails with [`Error::Purged`] if retention already retired pages at or above
    /// `from_lsn` (at once, or at the page where it finds that a retirement overtook it).
    pub fn binlog_range<'s>(
        &'s self,
        from_lsn: u64,
    ) -> Result<impl Iterator<Item = Result<OwnedPage>> + 's> {
        let store = self.store;
        let txn = &self.txn;
        let extent = store.history_extent(txn)?;
        if from_lsn < extent.oldest {
            return Err(Error::Purged {
                requested: from_lsn,
                oldest: extent.oldest,
            });
        }
        let end = extent.end;
        // Below `history_from`: the old `__binlog`, if this database has one.
        let old: Box<dyn Iterator<Item = Result<OwnedPage>> + 's> =
            if from_lsn < extent.history_from {
                let start = store
                    .binlog_group_at(txn, from_lsn)?
                    .unwrap_or_else(|| from_lsn.to_be_bytes().to_vec());
                let history_from = extent.history_from;
                Box::new(
                    store
                        .binlog_pages_from(txn, &start)?
                        .filter(move |page| {
                            page.as_ref()
                                .map_or(true, |page| (from_lsn..history_from).contains(&page.lsn()))
                        })
                        .map(|page| page.map(OwnedPage::copy_of)),
                )
            } else {
                Box::new(std::iter::empty())
            };
        let segments = history_pages(store, from_lsn.max(extent.history_from), end)?;
        Ok(old.chain(segments))
    }
}

/// Where the history lies, as a snapshot sees it.
pub(crate) struct HistoryExtent {
    /// No page below this is kept.
    pub oldest: u64,
    /// Pages below this (and at or above `oldest`) are in the old `__binlog`; from it on, in the
    /// log's segments.
    pub history_from: u64,
    /// The applied LSN: history ends here.
    pub end: u64,
    /// Bytes the history holds: `__binlog`'s values, and whole pages of segments.
    pub bytes: u64,
    /// Whether an old `__binlog` still holds pages.
    pub old_binlog: bool,
}

/// The pages `[from_lsn, end_lsn)` of the log's segments in `store`'s directory (see Reading).
pub(crate) fn history_pages(
    store: &Store,
    from_lsn: u64,
    end_lsn: u64,
) -> Result<HistoryPages<'_>> {
    let reader = match from_lsn < end_lsn {
        true => HistoryReader::open(store.log_dir())?,
        false => None,
    };
    Ok(HistoryPages {
        store,
        reader,
        next: from_lsn,
        end: end_lsn,
    })
}

/// The iterator [`history_pages`] returns.
pub(crate) struct HistoryPages<'s> {
    store: &'s Store,
    reader: Option<HistoryReader>,
    next: u64,
    end: u64,
}

impl Iterator for HistoryPages<'_> {
    type Item = Result<OwnedPage>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let lsn = self.next;
        let found = match &mut self.reader {
            Some(reader) => reader.read(lsn),
            None => Ok(HistoryPage::Missing),
        };
        match found {
            Ok(HistoryPage::Page(page)) => {
                self.next += 1;
                Some(Ok(page))
            }
            Ok(HistoryPage::Missing | HistoryPage::Invalid) => {
                self.next = self.end;
                Some(Err(self.lost(lsn)))
            }
            Err(error) => {
                self.next = self.end;
                Some(Err(error.into()))
            }
        }
    }
}

impl HistoryPages<'_> {
    /// The error for page `lsn`, which its segment does not hold: retired since the read began
    /// (the oldest segment is now above it), or damaged.
    fn lost(&self, lsn: u64) -> Error {
        let dir = self.store.log_dir();
        let oldest = segment_oldest(dir).unwrap_or(None);
        match oldest {
            Some(oldest) if oldest > lsn => Error::Purged {
                requested: lsn,
                oldest,
            },
            _ => Error::HistoryDamaged {
                path: dir.to_path_buf(),
                lsn,
            },
        }
    }
}

/// The first LSN of the oldest segment in the log directory `dir`, if there is a log there.
fn segment_oldest(dir: &Path) -> Result<Option<u64>> {
    match HistoryReader::open(dir)? {
        Some(reader) => Ok(reader.segments()?.first().copied()),
        None => Ok(None),
    }
}

/// Retention of the segments' history (see the module docs), after the group that brought the
/// applied LSN to `applied_lsn` committed. `keep_from` is the lowest page the applier still
/// needs (its open record's).
pub(crate) fn retire_history(
    store: &Store,
    log: &Log,
    applied_lsn: u64,
    keep_from: u64,
    retain_bytes: u64,
    retain_age: Option<Duration>,
) -> Result<()> {
    let (firsts, pages) = log.history_segments();
    let limit = keep_from.min(log.horizon_lsn());
    // Most groups: the oldest segment is still needed by the log or the applier.
    if firsts.first().is_none_or(|first| first + pages > limit) {
        return Ok(());
    }
    let (floor, history_from, below, old_binlog) = {
        let rtxn = store.env.read_txn().map_err(store.lmdb("begin"))?;
        let floor = store.cursor_floor(&rtxn)?.map_or(limit, |c| c.min(limit));
        let extent = store.history_extent_with(&rtxn, None)?;
        let below = extent.history_from.max(store.binlog_oldest_lsn(&rtxn)?);
        (floor, extent.history_from, below, extent.old_binlog)
    };
    let cutoff = retain_age.and_then(|age| SystemTime::now().checked_sub(age));
    let mut retire_to = None;
    for &first in &firsts {
        let end = first + pages;
        if end > floor {
            break;
        }
        let held = applied_lsn.saturating_sub(first) * PAGE_SIZE as u64;
        let old = cutoff.is_some_and(|cutoff| {
            log.history_segment_modified(first)
                .is_some_and(|modified| modified < cutoff)
        });
        if end <= below || held > retain_bytes || old {
            retire_to = Some(end);
        } else {
            break;
        }
    }
    let Some(retire_to) = retire_to else {
        return Ok(());
    };
    let oldest = log.retire_history_below(retire_to)?;
    tracing::debug!(oldest, "history segments retired");
    if old_binlog && oldest > history_from {
        // Retention passed the old `__binlog`: the segments' history now starts above it.
        store.clear_binlog(oldest)?;
    }
    Ok(())
}

impl Store {
    /// Where the history lies as `txn` sees it (see [`HistoryExtent`]).
    pub(crate) fn history_extent(&self, txn: &heed::RoTxn) -> Result<HistoryExtent> {
        self.history_extent_with(txn, segment_oldest(self.log_dir())?)
    }

    /// [`history_extent`](Self::history_extent), given the first LSN of the oldest segment.
    pub(crate) fn history_extent_with(
        &self,
        txn: &heed::RoTxn,
        oldest_segment: Option<u64>,
    ) -> Result<HistoryExtent> {
        let end = self.meta_u64(txn, b"binlog_next_lsn")?;
        let history_from = self.history_from(txn)?.unwrap_or(end);
        let meta_oldest = self.binlog_oldest_lsn(txn)?;
        let old_bytes = self.binlog_bytes(txn)?;
        let old = !self
            .binlog
            .is_empty(txn)
            .map_err(self.lmdb("read binlog"))?;
        let segments_from = history_from
            .max(meta_oldest)
            .max(oldest_segment.unwrap_or(end))
            .min(end);
        let oldest = match old {
            true => meta_oldest.min(history_from),
            false => segments_from,
        };
        let segment_bytes = end.saturating_sub(segments_from) * PAGE_SIZE as u64;
        Ok(HistoryExtent {
            oldest,
            history_from: history_from.min(end),
            end,
            bytes: segment_bytes + if old { old_bytes } else { 0 },
            old_binlog: old,
        })
    }

    /// Removes the old `__binlog` whole, once the segments' history (from `oldest` on) has
    /// passed it.
    fn clear_binlog(&self, oldest: u64) -> Result<()> {
        let mut wtxn = self.env.write_txn().map_err(self.lmdb("begin"))?;
        self.binlog
            .clear(&mut wtxn)
            .map_err(self.lmdb("clear __binlog"))?;
        self.binlog_time
            .clear(&mut wtxn)
            .map_err(self.lmdb("clear __binlog_time"))?;
        self.meta
            .put(&mut wtxn, b"binlog_bytes", &0u64.to_le_bytes())
            .map_err(self.lmdb("write __meta"))?;
        self.meta
            .put(&mut wtxn, b"binlog_oldest_lsn", &oldest.to_le_bytes())
            .map_err(self.lmdb("write __meta"))?;
        wtxn.commit().map_err(self.lmdb("commit"))?;
        tracing::info!(
            oldest,
            "the old __binlog is cleared: the log's segments hold the history"
        );
        Ok(())
    }

    /// The key of the group holding `lsn` (the last key at or below it), if any.
    pub fn binlog_group_at(&self, txn: &heed::RoTxn, lsn: u64) -> Result<Option<Vec<u8>>> {
        let key = lsn.to_be_bytes();
        let group = self
            .binlog
            .rev_range(txn, &(Bound::Unbounded, Bound::Included(&key[..])))
            .map_err(self.lmdb("find binlog group"))?
            .next()
            .transpose()
            .map_err(self.lmdb("find binlog group"))?;
        Ok(group.map(|(key, _)| key.to_vec()))
    }

    /// Every page of the groups from the one keyed `start_key` on, in LSN order.
    pub fn binlog_pages_from<'t>(
        &'t self,
        txn: &'t heed::RoTxn,
        start_key: &[u8],
    ) -> Result<impl Iterator<Item = Result<PageRef<'t>>> + 't> {
        let range = (Bound::Included(start_key), Bound::Unbounded);
        let groups = self
            .binlog
            .range(txn, &range)
            .map_err(self.lmdb("read binlog"))?;
        Ok(groups
            .map(move |group| {
                group
                    .map_err(self.lmdb("read binlog"))
                    .map(|(_, pages)| CompactPages { rest: pages })
            })
            .flat_map(
                |group| -> Box<dyn Iterator<Item = Result<PageRef<'t>>> + 't> {
                    match group {
                        Ok(pages) => Box::new(pages),
                        Err(error) => Box::new(std::iter::once(Err(error))),
                    }
                },
            ))
    }

    /// The old `__binlog` holds no page below this (retention trimmed them); a restore's LSN.
    pub fn binlog_oldest_lsn(&self, txn: &heed::RoTxn) -> Result<u64> {
        self.meta_u64(txn, b"binlog_oldest_lsn")
    }

    /// Bytes the old `__binlog` holds (what its retention counts).
    pub fn binlog_bytes(&self, txn: &heed::RoTxn) -> Result<u64> {
        self.meta_u64(txn, b"binlog_bytes")
    }

    /// Trims whole binlog groups, oldest first, while the binlog holds more than `retain_bytes` or
    /// the oldest group was appended before `older_than` (µs since the epoch; 0: no age limit),
    /// never removing a page at or above `keep_from_lsn` or a registered cursor, nor the newest
    /// group. Returns the bytes trimmed.
    pub fn trim_binlog(
        &self,
        wtxn: &mut heed::RwTxn,
        retain_bytes: u64,
        older_than: u64,
        keep_from_lsn: u64,
    ) -> Result<u64> {
        let bytes = self.binlog_bytes(wtxn)?;
        let oldest_too_old = match self.binlog.first(wtxn).map_err(self.lmdb("scan binlog"))? {
            Some((key, _)) => self.group_too_old(wtxn, key, older_than)?,
            None => false,
        };
        if bytes <= retain_bytes && !oldest_too_old {
            return Ok(0);
        }
        let floor = self
            .cursor_floor(wtxn)?
            .map_or(keep_from_lsn, |c| c.min(keep_from_lsn));
        let limits = TrimLimits {
            retain_bytes,
            older_than,
            floor,
        };
        let trim = self.plan_trim(wtxn, bytes, &limits)?;
        let trimmed: u64 = trim.doomed.iter().map(|(_, len)| len).sum();
        for (key, _) in trim.doomed {
            self.binlog
                .delete(wtxn, &key)
                .map_err(self.lmdb("trim binlog"))?;
            self.binlog_time
                .delete(wtxn, &key)
                .map_err(self.lmdb("trim __binlog_time"))?;
        }
        self.meta
            .put(wtxn, b"binlog_bytes", &trim.bytes_left.to_le_bytes())
            .map_err(self.lmdb("write __meta"))?;
        self.meta
            .put(wtxn, b"binlog_oldest_lsn", &trim.oldest_lsn.to_le_bytes())
            .map_err(self.lmdb("write __meta"))?;
        Ok(trimmed)
    }

    /// The groups to trim, oldest first, from a binlog holding `bytes`: collected first and
    /// deleted after, so the scan is not disturbed (and it is bounded by the binlog's groups).
    fn plan_trim(&self, txn: &heed::RoTxn, mut bytes: u64, limits: &TrimLimits) -> Result<Trim> {
        let mut doomed: Vec<([u8; 8], u64)> = Vec::new();
        let mut oldest = self.binlog_oldest_lsn(txn)?;
        let mut groups = self
            .binlog
            .iter(txn)
            .map_err(self.lmdb("scan binlog"))?
            .peekable();
        while let Some(group) = groups.next() {
            let (key, value) = group.map_err(self.lmdb("scan binlog"))?;
            // Each group ends where the next begins.
            let next_first = match groups.peek() {
                Some(Ok((next, _))) => u64::from_be_bytes((*next).try_into().unwrap_or([0xFF; 8])),
                _ => break, // never trim the newest group
            };
            if next_first > limits.floor
                || (bytes <= limits.retain_bytes
                    && !self.group_too_old(txn, key, limits.older_than)?)
            {
                break;
            }
            doomed.push(((*key).try_into().unwrap_or([0; 8]), value.len() as u64));
            bytes -= value.len() as u64;
            oldest = next_first;
        }
        Ok(Trim {
            doomed,
            bytes_left: bytes,
            oldest_lsn: oldest,
        })
    }

    /// Whether the group keyed `key` was appended before `older_than` (0: no age limit).
    fn group_too_old(&self, txn: &heed::RoTxn, key: &[u8], older_than: u64) -> Result<bool> {
        Ok(older_than > 0 && self.group_time(txn, key)?.is_some_and(|t| t < older_than))
    }

    /// When the group keyed `key` was appended (µs since the epoch), if recorded.
    fn group_time(&self, txn: &heed::RoTxn, key: &[u8]) -> Result<Option<u64>> {
        match self
            .binlog_time
            .get(txn, key)
            .map_err(self.lmdb("read __binlog_time"))?
        {
            Some(bytes) => self.decode_u64(bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Registers (or moves) a consumer's position: retention keeps the binlog from there on.
    pub fn set_cursor(&self, name: &str, lsn: u64) -> Result<()> {
        let mut wtxn = self.env.write_txn().map_err(self.lmdb("begin"))?;
        self.meta
            .put(
                &mut wtxn,
                format!("cursor:{name}").as_bytes(),
                &lsn.to_le_bytes(),
            )
            .map_err(self.lmdb("write cursor"))?;
        wtxn.commit().map_err(self.lmdb("commit cursor"))
    }

    /// Removes a consumer's registration.
    pub fn remove_cursor(&self, name: &str) -> Result<()> {
        let mut wtxn = self.env.write_txn().map_err(self.lmdb("begin"))?;
        self.meta
            .delete(&mut wtxn, format!("cursor:{name}").as_bytes())
            .map_err(self.lmdb("remove cursor"))?;
        wtxn.commit().map_err(self.lmdb("commit cursor"))
    }

    /// Every registered cursor, `(name, lsn)`, in name order.
    pub fn cursors(&self, txn: &heed::RoTxn) -> Result<Vec<(String, u64)>> {
        let mut cursors = Vec::new();
        for entry in self
            .meta
            .prefix_iter(txn, b"cursor:")
            .map_err(self.lmdb("list cursors"))?
        {
            let (key, bytes) = entry.map_err(self.lmdb("list cursors"))?;
            let name = String::from_utf8_lossy(&key[b"cursor:".len()..]).into_owned();
            cursors.push((name, self.decode_u64(bytes)?));
        }
        Ok(cursors)
    }

    /// The lowest registered cursor position, if any.
    pub(crate) fn cursor_floor(&self, txn: &heed::RoTxn) -> Result<Option<u64>> {
        let mut floor: Option<u64> = None;
        for entry in self
            .meta
            .prefix_iter(txn, b"cursor:")
            .map_err(self.lmdb("list cursors"))?
        {
            let (_, bytes) = entry.map_err(self.lmdb("list cursors"))?;
            let lsn = self.decode_u64(bytes)?;
            floor = Some(floor.map_or(lsn, |f| f.min(lsn)));
        }
        Ok(floor)
    }
}

/// What [`Store::trim_binlog`] may not cross.
struct TrimLimits {
    /// Bytes of binlog to keep.
    retain_bytes: u64,
    /// Groups appended before this (µs since the epoch) go even within `retain_bytes`; 0: none.
    older_than: u64,
    /// No page at or above this LSN is trimmed (the lowest cursor, or the applier's open record).
    floor: u64,
}

/// The groups a trim removes, and what the binlog holds after it.
struct Trim {
    /// `(key, value bytes)` of each group to remove, oldest first.
    doomed: Vec<([u8; 8], u64)>,
    bytes_left: u64,
    oldest_lsn: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Database, Durability, Options, WriteBatch};

    fn fill(db: &Database, from: u32, to: u32) {
        for i in from..to {
            let mut batch = WriteBatch::new();
            batch.put("t", &i.to_be_bytes(), &[i as u8; 700]).unwrap();
            db.commit(&batch, Durability::Applied).unwrap();
        }
    }

    fn records(snapshot: &Snapshot<'_>, from_lsn: u64) -> Result<usize> {
        let mut reader = pagemesh_logpage::RecordReader::new();
        let mut records = 0;
        for page in snapshot.binlog_range(from_lsn)? {
            reader.feed(page?.page(), |_| records += 1)?;
        }
        Ok(records)
    }

    /// A database from before stop 36 keeps its history in `__binlog`: made here by moving the
    /// pages of a closed database's segments into `__binlog` as one group, as its applier did,
    /// and retiring the segments as its log did. It reads back whole across both, and once
    /// retention passes the old part, `__binlog` is cleared.
    #[test]
    fn an_old_binlog_reads_back_before_the_segments_until_retention_passes_it() {
        let dir = tempfile::tempdir().unwrap();
        let options = || Options::new().ring_slots(64).binlog_retain_bytes(1 << 30);
        let db = Database::open(dir.path(), options()).unwrap();
        fill(&db, 0, 100);
        drop(db);

        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let next = {
            let rtxn = store.env.read_txn().unwrap();
            store.apply_state(&rtxn).unwrap().binlog_next_lsn
        };
        let mut reader = HistoryReader::open(dir.path()).unwrap().unwrap();
        let mut compact = Vec::new();
        for lsn in 0..next {
            let HistoryPage::Page(page) = reader.read(lsn).unwrap() else {
                panic!("page {lsn} is in the segments");
            };
            compact.extend_from_slice(page.page().compact_bytes());
        }
        let mut wtxn = store.env.write_txn().unwrap();
        store
            .binlog
            .put(&mut wtxn, &0u64.to_be_bytes(), &compact)
            .unwrap();
        let bytes = (compact.len() as u64).to_le_bytes();
        store.meta.put(&mut wtxn, b"binlog_bytes", &bytes).unwrap();
        store.meta.delete(&mut wtxn, b"history_from").unwrap();
        wtxn.commit().unwrap();
        drop(store);
        let pages = reader.segment_pages();
        for first in reader.segments().unwrap() {
            if first + pages <= next {
                let path = dir.path().join(format!("log-{first:016x}.seg"));
                std::fs::remove_file(path).unwrap();
            }
        }

        let db = Database::open(dir.path(), options()).unwrap();
        fill(&db, 100, 150);
        {
            let snapshot = db.read().unwrap();
            assert_eq!(records(&snapshot, 0).unwrap(), 150, "old and new history");
            let stat = snapshot.stat().unwrap();
            assert_eq!(stat.binlog_oldest_lsn, 0);
            assert!(stat.binlog_bytes >= compact.len() as u64);
        }
        drop(db);

        // A budget the history exceeds: retention retires segments past the old part.
        let small = Options::new().ring_slots(64).binlog_retain_bytes(64 << 10);
        let db = Database::open(dir.path(), small).unwrap();
        fill(&db, 150, 400);
        let snapshot = db.read().unwrap();
        let stat = snapshot.stat().unwrap();
        assert!(stat.binlog_oldest_lsn > next, "{}", stat.binlog_oldest_lsn);
        assert!(matches!(records(&snapshot, 0), Err(Error::Purged { .. })));
        assert!(records(&snapshot, stat.binlog_oldest_lsn).unwrap() > 0);
        let empty = snapshot.store.binlog.is_empty(&snapshot.txn).unwrap();
        assert!(empty, "the old __binlog is cleared");
    }
}
