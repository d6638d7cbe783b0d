//! The binlog: every applied log page, kept in LMDB for catch-up and history, and its retention.
//!
//! `__binlog` maps a group's first page LSN (u64 big-endian, so LMDB's order is LSN order and
//! APPEND works) to that group's pages back to back in compact form (header + used payload). The
//! applier appends one value per group inside the group's own write transaction
//! ([`Store::append_binlog`]), so the binlog and the tables never disagree, and groups are
//! contiguous: each ends where the next begins. `__binlog_time` records when each group was
//! appended (same key; wall-clock microseconds, u64 LE) for age-based retention.
//!
//! **Reading.** [`Snapshot::binlog_range`] serves peers catching up and history readers;
//! recovery rebuilds the applier's record reader with [`Store::binlog_pages_from`]. Both find the
//! group holding an LSN with [`Store::binlog_group_at`] and validate every page (crc included) as
//! they go ([`CompactPages`]).
//!
//! **Retention** ([`Store::trim_binlog`], run in each group's transaction) removes whole groups,
//! oldest first, while the binlog holds more than `binlog_retain_bytes` or its oldest group was
//! appended longer ago than `binlog_retain_age`. It never removes a page at or above a registered
//! cursor (`cursor:NAME` in `__meta`, [`Store::set_cursor`]) or the page where the applier's open
//! record began, nor the newest group. `binlog_oldest_lsn` and `binlog_bytes` in `__meta` keep
//! what it left.

use std::ops::Bound;

use heed::PutFlags;
use pagemesh_logpage::page::HEADER_SIZE;
use pagemesh_logpage::{validate, PageRef, PAGE_SIZE};

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
    /// The log pages from `from_lsn` on that the binlog still holds, in order. Fails with
    /// [`Error::Purged`] if retention already trimmed pages at or above `from_lsn`.
    pub fn binlog_range<'s>(
        &'s self,
        from_lsn: u64,
    ) -> Result<impl Iterator<Item = Result<PageRef<'s>>> + 's> {
        let store = self.store;
        let oldest = store.binlog_oldest_lsn(&self.txn)?;
        if from_lsn < oldest {
            return Err(Error::Purged {
                requested: from_lsn,
                oldest,
            });
        }
        // Start at the group holding `from_lsn`, if any.
        let start = store
            .binlog_group_at(&self.txn, from_lsn)?
            .unwrap_or_else(|| from_lsn.to_be_bytes().to_vec());
        let pages = store.binlog_pages_from(&self.txn, &start)?;
        Ok(pages.filter(move |page| page.as_ref().map_or(true, |page| page.lsn() >= from_lsn)))
    }
}

impl Store {
    /// Appends one group of pages to `__binlog` under its first LSN and counts its bytes.
    pub fn append_binlog(
        &self,
        wtxn: &mut heed::RwTxn,
        first_lsn: u64,
        pages: &[u8],
    ) -> Result<()> {
        self.binlog
            .put_with_flags(wtxn, PutFlags::APPEND, &first_lsn.to_be_bytes(), pages)
            .map_err(self.lmdb("append __binlog"))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.binlog_time
            .put_with_flags(
                wtxn,
                PutFlags::APPEND,
                &first_lsn.to_be_bytes(),
                &now.to_le_bytes(),
            )
            .map_err(self.lmdb("append __binlog_time"))?;
        let bytes = self.meta_u64(wtxn, b"binlog_bytes")? + pages.len() as u64;
        self.meta
            .put(wtxn, b"binlog_bytes", &bytes.to_le_bytes())
            .map_err(self.lmdb("write __meta"))
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

    /// The binlog holds no page below this (retention trimmed them).
    pub fn binlog_oldest_lsn(&self, txn: &heed::RoTxn) -> Result<u64> {
        self.meta_u64(txn, b"binlog_oldest_lsn")
    }

    /// Bytes the binlog holds (what retention counts).
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
    fn cursor_floor(&self, txn: &heed::RoTxn) -> Result<Option<u64>> {
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
