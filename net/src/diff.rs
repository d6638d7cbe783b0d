//! DIFF: comparing two copies of a database by a Merkle descent over key ranges, I/O-free.
//!
//! # The key space
//!
//! One ordered key space covers every table of a database: an entry's *composite key* is
//! `table_len u8 | table | key` ([`composite_key`]). Ordered as bytes, it sorts by table name
//! length, then table name, then key (LMDB's default byte order), so a range of composite keys
//! crosses tables cleanly and a node scans it table by table ([`table_ranges`]).
//!
//! # What a node answers (DIGEST, ENTRIES)
//!
//! A range's digest ([`RangeDigester`]) is its entry count and a SHA-256 over its entries in
//! key order, each hashed as `composite_len u32 | composite key | seq u64 | value_len u32 |
//! value` (little-endian). The version (`seq`) is part of what is compared: apply is
//! deterministic, so two faithful copies hold the same versions too. The same pass can pick
//! *split keys* that cut the range into about equal parts by the node's entries, in bounded
//! memory (a sample whose stride doubles, [`Splitter`]); each is the shortest separator
//! between two neighbouring keys, so requests stay small. ENTRIES hands out the entries of a
//! range from its start, at most [`ENTRIES_COUNT_MAX`] or about [`ENTRIES_BYTES_MAX`] at a
//! time, and says when there is more.
//!
//! # The descent ([`diff`])
//!
//! The client, not a node, drives it: digest the whole key space on both copies; equal digests
//! end it in one round trip, whatever the size. Otherwise each differing range is cut at the
//! split keys of the side holding more entries of it (the split keys came back with the digest,
//! so splitting costs no extra round trip: this departs from a separate SPLIT command), and the
//! parts are digested on both, up to [`DIGEST_RANGES_MAX`] per request and one request to each
//! side at a time, in parallel; a differing range of at most [`DiffOptions::leaf_entries`]
//! entries on both sides is fetched whole from both and compared entry by entry. With `n`
//! entries and `d` differing keys this costs about `log16(n / leaf) + 2` rounds when `d` is
//! small, and at most `d` ranges per level.
//!
//! The issue asked for `DIFF database nodeA nodeB` handled by a node. The client drives the
//! descent instead because it already holds an authenticated link to both nodes; a node-side
//! orchestrator would need node-to-node command links, which come with command routing over
//! the mesh. Nothing in the descent depends on where it runs: it is generic over
//! [`RangeSource`], which `control` implements over command links and the unit tests over
//! in-memory maps.
//!
//! The two copies are read at different instants: a copy that is behind its origin differs by
//! what it has not applied yet. Compare copies at rest, or read the differences as "not yet
//! there" when one side is behind.

use std::cmp::Ordering;
use std::ops::{Bound, ControlFlow};
use std::time::Instant;

use sha2::{Digest as _, Sha256};

use crate::error::Result;
use crate::proto::command::{
    KeyRange, RangeDigest, RangeEntry, DIGEST_RANGES_MAX, ENTRIES_COUNT_MAX, SPLIT_PARTS_MAX,
};
use crate::proto::frame::MESSAGE_PAYLOAD_MAX;

/// About the most value and key bytes one ENTRIES reply carries (one entry always goes, if it
/// fits in a frame at all).
pub const ENTRIES_BYTES_MAX: usize = 1 << 20;
/// The most bytes of one entry a reply can carry (a frame's payload, less the reply's header).
pub const ENTRY_BYTES_MAX: usize = MESSAGE_PAYLOAD_MAX - 64;
/// How often (in entries) a scan looks at its deadline.
const DEADLINE_EVERY: u64 = 4096;

/// An entry as a node's store hands it to a scan.
#[derive(Clone, Copy, Debug)]
pub struct ScanEntry<'a> {
    /// The table.
    pub table: &'a str,
    /// The key in the table.
    pub key: &'a [u8],
    /// The value's version.
    pub seq: u64,
    /// The value's bytes.
    pub value: &'a [u8],
}

/// `table_len u8 | table | key`; `None` if the table's name is over 255 bytes.
pub fn composite_key(table: &str, key: &[u8]) -> Option<Vec<u8>> {
    let len = u8::try_from(table.len()).ok()?;
    let mut out = Vec::with_capacity(1 + table.len() + key.len());
    out.push(len);
    out.extend_from_slice(table.as_bytes());
    out.extend_from_slice(key);
    Some(out)
}

/// The table and key of a composite key, if it is one.
pub fn split_composite(composite: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, rest) = composite.split_first()?;
    let (table, key) = rest.split_at_checked(usize::from(len))?;
    Some((std::str::from_utf8(table).ok()?, key))
}

/// Tables in key-space order: by name length, then name.
pub fn sort_tables(tables: &mut [String]) {
    tables.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
}

/// A table and the bounds of its keys inside a range of composite keys.
pub type TableRange<'t> = (&'t str, Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The part of `range` in each of `tables` (in key-space order, see [`sort_tables`]): the
/// table and the bounds of its keys, for the tables the range touches. An included empty start
/// is given as unbounded (LMDB refuses an empty seek key).
pub fn table_ranges<'t>(tables: &'t [String], range: &KeyRange) -> Vec<TableRange<'t>> {
    let mut out = Vec::new();
    for table in tables {
        let Some(prefix) = composite_key(table, &[]) else {
            continue;
        };
        // Past the end of the range: so are the tables after it.
        if !range.hi.is_empty() && range.hi.as_slice() <= prefix.as_slice() {
            break;
        }
        let start = match range.lo.strip_prefix(prefix.as_slice()) {
            Some([]) => Bound::Unbounded,
            Some(key) => Bound::Included(key.to_vec()),
            // lo sorts after every key of this table, or before all of them.
            None if range.lo.as_slice() > prefix.as_slice() => continue,
            None => Bound::Unbounded,
        };
        let end = match range.hi.strip_prefix(prefix.as_slice()) {
            _ if range.hi.is_empty() => Bound::Unbounded,
            // hi is the table's own prefix: handled by the break above.
            Some(key) => Bound::Excluded(key.to_vec()),
            None => Bound::Unbounded,
        };
        out.push((table.as_str(), start, end));
    }
    out
}

/// The shortest key `s` with `prev < s <= key` (`prev < key`).
fn separator(prev: &[u8], key: &[u8]) -> Vec<u8> {
    let common = prev.iter().zip(key).take_while(|(a, b)| a == b).count();
    key[..(common + 1).min(key.len())].to_vec()
}

/// Picks keys that cut a scanned range into about `parts` equal parts, in one pass and bounded
/// memory: it samples every `stride`-th entry's separator from its predecessor, and when the
/// sample reaches `2 × parts` keeps every other one and doubles the stride.
#[derive(Debug)]
pub struct Splitter {
    parts: usize,
    stride: u64,
    seen: u64,
    previous: Vec<u8>,
    /// Separators before entries `stride, 2 × stride, …`.
    sample: Vec<Vec<u8>>,
}

impl Splitter {
    /// A splitter into `parts` parts (at most [`SPLIT_PARTS_MAX`]; below 2: no keys).
    pub fn new(parts: u8) -> Self {
        Self {
            parts: usize::from(parts.min(SPLIT_PARTS_MAX)),
            stride: 1,
            seen: 0,
            previous: Vec::new(),
            sample: Vec::new(),
        }
    }

    /// The next entry's composite key (keys come in increasing order).
    pub fn push(&mut self, composite: &[u8]) {
        if self.parts < 2 {
            return;
        }
        if self.seen > 0 && self.seen.is_multiple_of(self.stride) {
            self.sample.push(separator(&self.previous, composite));
            if self.sample.len() >= 2 * self.parts {
                let mut index = 0;
                self.sample.retain(|_| {
                    index += 1;
                    index % 2 == 0
                });
                self.stride *= 2;
            }
        }
        self.seen += 1;
        self.previous.clear();
        self.previous.extend_from_slice(composite);
    }

    /// Up to `parts - 1` increasing keys, each after the range's first entry.
    pub fn finish(self) -> Vec<Vec<u8>> {
        if self.parts < 2 || self.sample.is_empty() {
            return Vec::new();
        }
        let parts = self.parts as u64;
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(self.parts - 1);
        for cut in 1..parts {
            // The sample key nearest entry `seen × cut / parts`.
            let at = (self.seen * cut + parts / 2) / parts;
            let index = (at + self.stride / 2) / self.stride;
            let index = (index.max(1) - 1).min(self.sample.len() as u64 - 1) as usize;
            let key = &self.sample[index];
            if keys.last().is_none_or(|last| last < key) {
                keys.push(key.clone());
            }
        }
        keys
    }
}

/// The digest of one range, built entry by entry in key order.
#[derive(Debug)]
pub struct RangeDigester {
    entries: u64,
    hasher: Sha256,
    splitter: Splitter,
}

impl RangeDigester {
    /// A digest that also picks keys for `split_parts` parts.
    pub fn new(split_parts: u8) -> Self {
        Self {
            entries: 0,
            hasher: Sha256::new(),
            splitter: Splitter::new(split_parts),
        }
    }

    /// Adds the next entry.
    pub fn push(&mut self, composite: &[u8], seq: u64, value: &[u8]) {
        self.entries += 1;
        self.hasher.update((composite.len() as u32).to_le_bytes());
        self.hasher.update(composite);
        self.hasher.update(seq.to_le_bytes());
        self.hasher.update((value.len() as u32).to_le_bytes());
        self.hasher.update(value);
        self.splitter.push(composite);
    }

    /// The digest.
    pub fn finish(self) -> RangeDigest {
        RangeDigest {
            entries: self.entries,
            hash: self.hasher.finalize().into(),
            splits: self.splitter.finish(),
        }
    }
}

/// Why a node could not answer a DIGEST or ENTRIES.
#[derive(Debug)]
pub enum ScanError {
    /// The store failed.
    Store(crate::BoxError),
    /// The request's deadline passed mid-scan.
    Deadline {
        /// Entries scanned by then.
        scanned: u64,
    },
    /// An entry too large for a reply.
    EntryTooLarge {
        /// Its table.
        table: String,
        /// Its size in bytes.
        bytes: usize,
    },
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Store(error) => write!(f, "reading the store: {error}"),
            Self::Deadline { scanned } => write!(
                f,
                "the request's deadline passed after {scanned} entries: ask for smaller ranges"
            ),
            Self::EntryTooLarge { table, bytes } => write!(
                f,
                "an entry of table {table} holds {bytes} bytes, more than one reply carries"
            ),
        }
    }
}

/// A node's way to visit its entries in a range of composite keys, in key order; `visit` may
/// stop the scan by returning `Break`.
pub type Scan<'a> = dyn FnMut(
        &KeyRange,
        &mut dyn FnMut(ScanEntry<'_>) -> ControlFlow<()>,
    ) -> std::result::Result<(), crate::BoxError>
    + 'a;

/// The digests of `ranges` (a DIGEST's answer), by `scan`, given up at `deadline`.
pub fn digest_ranges(
    scan: &mut Scan<'_>,
    ranges: &[KeyRange],
    split_parts: u8,
    deadline: Instant,
) -> std::result::Result<Vec<RangeDigest>, ScanError> {
    let mut scanned = 0u64;
    let mut digests = Vec::with_capacity(ranges.len());
    for range in ranges {
        let mut digester = RangeDigester::new(split_parts);
        let mut late = false;
        let mut composite = Vec::new();
        scan(range, &mut |entry| {
            composite.clear();
            composite.push(entry.table.len() as u8);
            composite.extend_from_slice(entry.table.as_bytes());
            composite.extend_from_slice(entry.key);
            digester.push(&composite, entry.seq, entry.value);
            scanned += 1;
            if scanned.is_multiple_of(DEADLINE_EVERY) && Instant::now() >= deadline {
                late = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
        .map_err(ScanError::Store)?;
        if late {
            return Err(ScanError::Deadline { scanned });
        }
        digests.push(digester.finish());
    }
    Ok(digests)
}

/// The first entries of `range` (an ENTRIES answer) and whether more follow.
pub fn range_entries(
    scan: &mut Scan<'_>,
    range: &KeyRange,
) -> std::result::Result<(Vec<RangeEntry>, bool), ScanError> {
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    let mut too_large = None;
    scan(range, &mut |entry| {
        let size = entry.table.len() + entry.key.len() + entry.value.len() + 15;
        if entries.len() >= ENTRIES_COUNT_MAX
            || (!entries.is_empty() && bytes + size > ENTRIES_BYTES_MAX)
        {
            more = true;
            return ControlFlow::Break(());
        }
        if size > ENTRY_BYTES_MAX || entry.key.len() > usize::from(u16::MAX) {
            too_large = Some(ScanError::EntryTooLarge {
                table: entry.table.to_string(),
                bytes: size,
            });
            return ControlFlow::Break(());
        }
        bytes += size;
        entries.push(RangeEntry {
            table: entry.table.to_string(),
            key: entry.key.to_vec(),
            seq: entry.seq,
            value: entry.value.to_vec(),
        });
        ControlFlow::Continue(())
    })
    .map_err(ScanError::Store)?;
    match too_large {
        Some(error) => Err(error),
        None => Ok((entries, more)),
    }
}

/// The most requests the descent sends a copy before it reads their replies (a *wave*: one
/// round trip, pipelined on the link; it bounds the replies in flight, ENTRIES ones being up
/// to about [`ENTRIES_BYTES_MAX`] each).
pub const WAVE_REQUESTS_MAX: usize = 8;

/// One copy, as the descent asks it (a node over its command link, or a map in a test).
pub trait RangeSource: Send {
    /// The digest of each range (at most [`DIGEST_RANGES_MAX`]), with split keys for
    /// `split_parts` parts.
    fn digest(&mut self, ranges: &[KeyRange], split_parts: u8) -> Result<Vec<RangeDigest>>;
    /// The first entries of `range`, and whether more follow.
    fn entries(&mut self, range: &KeyRange) -> Result<(Vec<RangeEntry>, bool)>;
    /// Whether `ranges` fit in one digest request (a request's size is bounded).
    fn fits(&self, ranges: &[KeyRange]) -> bool {
        ranges.len() <= DIGEST_RANGES_MAX
    }
    /// [`digest`](Self::digest) for each batch (at most [`WAVE_REQUESTS_MAX`]), in one round
    /// trip where the source can pipeline them.
    fn digest_wave(
        &mut self,
        batches: &[&[KeyRange]],
        split_parts: u8,
    ) -> Result<Vec<Vec<RangeDigest>>> {
        batches
            .iter()
            .map(|ranges| self.digest(ranges, split_parts))
            .collect()
    }
    /// [`entries`](Self::entries) for each range (at most [`WAVE_REQUESTS_MAX`]), in one
    /// round trip where the source can pipeline them.
    fn entries_wave(&mut self, ranges: &[KeyRange]) -> Result<Vec<(Vec<RangeEntry>, bool)>> {
        ranges.iter().map(|range| self.entries(range)).collect()
    }
}

/// How a [`diff`] descends.
#[derive(Clone, Copy, Debug)]
pub struct DiffOptions {
    /// A differing range with at most this many entries on both sides is fetched whole.
    pub leaf_entries: u64,
    /// Parts each differing range is cut into (2 to 16).
    pub fanout: u8,
    /// The most differences reported; the descent stops once it has found them.
    pub differences_max: usize,
    /// Levels below which every differing range is fetched whole.
    pub depth_max: u32,
}

impl Default for DiffOptions {
    fn default() -> Self {
        Self {
            leaf_entries: 64,
            fanout: SPLIT_PARTS_MAX,
            differences_max: 1000,
            depth_max: 48,
        }
    }
}

/// A value as one copy holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// Its version (the log position that wrote it).
    pub seq: u64,
    /// Its bytes.
    pub value: Vec<u8>,
}

/// A key whose entry differs between the copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// The table.
    pub table: String,
    /// The key.
    pub key: Vec<u8>,
    /// The first copy's entry (`None`: it has no such key).
    pub a: Option<Version>,
    /// The second copy's.
    pub b: Option<Version>,
}

/// What a [`diff`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffReport {
    /// Entries in the first copy.
    pub entries_a: u64,
    /// Entries in the second.
    pub entries_b: u64,
    /// Rounds of requests: one request to each copy (at once), or to one of them.
    pub round_trips: u32,
    /// Ranges digested on each side, all rounds together.
    pub ranges_digested: u64,
    /// The differing keys, in key-space order, at most [`DiffOptions::differences_max`].
    pub differences: Vec<Difference>,
    /// More differences exist than were reported.
    pub truncated: bool,
    /// The copies differed at first, yet no differing entry was found, and they still differed
    /// when looked at again: they changed while being compared (a copy catching up). Compare
    /// again.
    pub unsettled: bool,
}

impl DiffReport {
    /// Whether the copies hold the same entries.
    pub fn equal(&self) -> bool {
        self.differences.is_empty() && !self.truncated && !self.unsettled
    }
}

/// A node answered something the descent cannot use.
fn bad_answer(reason: &'static str) -> crate::Error {
    crate::Error::MalformedCommand { reason }
}

/// Runs `ask` on both sides at once (each on its own thread).
fn both<A: RangeSource, B: RangeSource, T: Send>(
    a: &mut A,
    b: &mut B,
    ask_a: impl FnOnce(&mut A) -> Result<T> + Send,
    ask_b: impl FnOnce(&mut B) -> Result<T> + Send,
) -> Result<(T, T)> {
    std::thread::scope(|scope| {
        let from_a = scope.spawn(|| ask_a(a));
        let from_b = ask_b(b);
        let from_a = from_a
            .join()
            .map_err(|_| crate::Error::ThreadEnded { thread: "diff" })?;
        Ok((from_a?, from_b?))
    })
}

/// Compares copies `a` and `b` (see the module docs). Copies that change while compared (one
/// catching up) can make the root differ and every part below it agree: the root is then
/// digested once more, and the report is equal if it now agrees, else
/// [`unsettled`](DiffReport::unsettled).
pub fn diff<A: RangeSource, B: RangeSource>(
    a: &mut A,
    b: &mut B,
    options: DiffOptions,
) -> Result<DiffReport> {
    let fanout = options.fanout.clamp(2, SPLIT_PARTS_MAX);
    let mut report = DiffReport {
        entries_a: 0,
        entries_b: 0,
        round_trips: 0,
        ranges_digested: 0,
        differences: Vec::new(),
        truncated: false,
        unsettled: false,
    };
    let mut level = vec![KeyRange::all()];
    let mut leaves = Vec::new();
    let mut depth = 0;
    while !level.is_empty() {
        let mut next = Vec::new();
        let batches = batches(a, b, &level);
        for wave in batches.chunks(WAVE_REQUESTS_MAX) {
            let (wa, wb) = both(
                a,
                b,
                |a| a.digest_wave(wave, fanout),
                |b| b.digest_wave(wave, fanout),
            )?;
            report.round_trips += 1;
            let ranges: Vec<&KeyRange> = wave.iter().flat_map(|batch| batch.iter()).collect();
            let da: Vec<RangeDigest> = wa.into_iter().flatten().collect();
            let db: Vec<RangeDigest> = wb.into_iter().flatten().collect();
            report.ranges_digested += ranges.len() as u64;
            if da.len() != ranges.len() || db.len() != ranges.len() {
                return Err(bad_answer("a DIGEST reply without one digest per range"));
            }
            if depth == 0 {
                report.entries_a = da[0].entries;
                report.entries_b = db[0].entries;
            }
            for ((range, da), db) in ranges.into_iter().zip(&da).zip(&db) {
                if da.entries == db.entries && da.hash == db.hash {
                    continue;
                }
                let (larger, entries) = if da.entries >= db.entries {
                    (da, da.entries)
                } else {
                    (db, db.entries)
                };
                if entries <= options.leaf_entries
                    || depth >= options.depth_max
                    || larger.splits.is_empty()
                {
                    leaves.push(range.clone());
                } else {
                    next.extend(cut(range, &larger.splits)?);
                }
            }
        }
        level = next;
        depth += 1;
    }
    leaves.sort();
    for wave in leaves.chunks(WAVE_REQUESTS_MAX) {
        if report.differences.len() >= options.differences_max {
            report.truncated = true;
            break;
        }
        let ((ea, ra), (eb, rb)) = both(a, b, |a| fetch_all(a, wave), |b| fetch_all(b, wave))?;
        report.round_trips += ra.max(rb);
        for (ea, eb) in ea.iter().zip(&eb) {
            compare_leaf(ea, eb, &options, &mut report);
        }
    }
    if report.differences.is_empty() && depth > 1 {
        // The root differed and nothing below it does: a copy changed meanwhile. Look again.
        let all = [KeyRange::all()];
        let (da, db) = both(a, b, |a| a.digest(&all, 0), |b| b.digest(&all, 0))?;
        report.round_trips += 1;
        report.ranges_digested += 1;
        let (Some(da), Some(db)) = (da.first(), db.first()) else {
            return Err(bad_answer("a DIGEST reply without one digest per range"));
        };
        report.entries_a = da.entries;
        report.entries_b = db.entries;
        report.unsettled = da.entries != db.entries || da.hash != db.hash;
    }
    Ok(report)
}

/// `level` in requests that each side accepts.
fn batches<'l, A: RangeSource, B: RangeSource>(
    a: &A,
    b: &B,
    level: &'l [KeyRange],
) -> Vec<&'l [KeyRange]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < level.len() {
        let mut end = start + 1;
        while end < level.len() && a.fits(&level[start..=end]) && b.fits(&level[start..=end]) {
            end += 1;
        }
        out.push(&level[start..end]);
        start = end;
    }
    out
}

/// `range` cut at `splits`, which must lie strictly inside it, increasing.
fn cut(range: &KeyRange, splits: &[Vec<u8>]) -> Result<Vec<KeyRange>> {
    let mut parts = Vec::with_capacity(splits.len() + 1);
    let mut lo = range.lo.clone();
    for split in splits {
        if *split <= lo || !range.contains(split) {
            return Err(bad_answer("a split key outside its range"));
        }
        parts.push(KeyRange {
            lo: std::mem::replace(&mut lo, split.clone()),
            hi: split.clone(),
        });
    }
    parts.push(KeyRange {
        lo,
        hi: range.hi.clone(),
    });
    Ok(parts)
}

/// A leaf's entries as fetched: composite key and entry, in key order.
type Fetched = Vec<(Vec<u8>, RangeEntry)>;

/// Every entry of each of `leaves` (at most [`WAVE_REQUESTS_MAX`]) in one copy, in key order,
/// by as many waves of ENTRIES as it takes; with the waves it took.
fn fetch_all<S: RangeSource>(source: &mut S, leaves: &[KeyRange]) -> Result<(Vec<Fetched>, u32)> {
    let mut out: Vec<Fetched> = vec![Vec::new(); leaves.len()];
    // Leaves with more to fetch: their index and the rest of their range.
    let mut pending: Vec<(usize, KeyRange)> = leaves.iter().cloned().enumerate().collect();
    let mut waves = 0;
    while !pending.is_empty() {
        let ranges: Vec<KeyRange> = pending.iter().map(|(_, range)| range.clone()).collect();
        let replies = source.entries_wave(&ranges)?;
        waves += 1;
        if replies.len() != pending.len() {
            return Err(bad_answer("not one ENTRIES reply per request"));
        }
        let mut next = Vec::new();
        for ((index, from), (entries, more)) in pending.into_iter().zip(replies) {
            let fetched = &mut out[index];
            for entry in entries {
                let composite = composite_key(&entry.table, &entry.key)
                    .ok_or(bad_answer("a table name over 255 bytes"))?;
                let in_order = fetched.last().is_none_or(|(last, _)| *last < composite);
                if !from.contains(&composite) || !in_order {
                    return Err(bad_answer("ENTRIES out of range or out of order"));
                }
                fetched.push((composite, entry));
            }
            if more {
                let Some((last, _)) = fetched.last() else {
                    return Err(bad_answer("ENTRIES said more but held none"));
                };
                // The next key after `last`.
                let mut lo = last.clone();
                lo.push(0);
                next.push((index, KeyRange { lo, hi: from.hi }));
            }
        }
        pending = next;
    }
    Ok((out, waves))
}

/// Records the entries that differ between one leaf's entries in each copy.
fn compare_leaf(ea: &Fetched, eb: &Fetched, options: &DiffOptions, report: &mut DiffReport) {
    let version = |e: &RangeEntry| Version {
        seq: e.seq,
        value: e.value.clone(),
    };
    let (mut ia, mut ib) = (ea.iter().peekable(), eb.iter().peekable());
    loop {
        let order = match (ia.peek(), ib.peek()) {
            (None, None) => return,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        let difference = match order {
            Ordering::Less => ia.next().map(|(_, e)| (e, Some(version(e)), None)),
            Ordering::Greater => ib.next().map(|(_, e)| (e, None, Some(version(e)))),
            Ordering::Equal => match (ia.next(), ib.next()) {
                (Some((_, x)), Some((_, y))) if x.seq != y.seq || x.value != y.value => {
                    Some((x, Some(version(x)), Some(version(y))))
                }
                _ => None,
            },
        };
        if let Some((entry, a, b)) = difference {
            if report.differences.len() >= options.differences_max {
                report.truncated = true;
                return;
            }
            report.differences.push(Difference {
                table: entry.table.clone(),
                key: entry.key.clone(),
                a,
                b,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// A copy in memory: composite key → (seq, value), with its request count.
    #[derive(Clone, Default)]
    struct Map {
        entries: BTreeMap<Vec<u8>, (u64, Vec<u8>)>,
        requests: u32,
    }

    impl Map {
        fn put(&mut self, table: &str, key: &[u8], seq: u64, value: &[u8]) {
            let composite = composite_key(table, key).unwrap();
            self.entries.insert(composite, (seq, value.to_vec()));
        }

        fn scan(
            &self,
            range: &KeyRange,
            visit: &mut dyn FnMut(ScanEntry<'_>) -> ControlFlow<()>,
        ) -> std::result::Result<(), crate::BoxError> {
            let end = if range.hi.is_empty() {
                Bound::Unbounded
            } else {
                Bound::Excluded(range.hi.clone())
            };
            for (key, (seq, value)) in self.entries.range((Bound::Included(range.lo.clone()), end))
            {
                let (table, key) = split_composite(key).unwrap();
                if visit(ScanEntry {
                    table,
                    key,
                    seq: *seq,
                    value,
                })
                .is_break()
                {
                    break;
                }
            }
            Ok(())
        }
    }

    impl RangeSource for Map {
        fn digest(&mut self, ranges: &[KeyRange], split_parts: u8) -> Result<Vec<RangeDigest>> {
            assert!(ranges.len() <= DIGEST_RANGES_MAX);
            self.requests += 1;
            let far = Instant::now() + std::time::Duration::from_secs(60);
            let map = self.clone();
            let mut scan =
                |r: &KeyRange, v: &mut dyn FnMut(ScanEntry<'_>) -> ControlFlow<()>| map.scan(r, v);
            Ok(digest_ranges(&mut scan, ranges, split_parts, far).unwrap())
        }

        fn entries(&mut self, range: &KeyRange) -> Result<(Vec<RangeEntry>, bool)> {
            self.requests += 1;
            let map = self.clone();
            let mut scan =
                |r: &KeyRange, v: &mut dyn FnMut(ScanEntry<'_>) -> ControlFlow<()>| map.scan(r, v);
            Ok(range_entries(&mut scan, range).unwrap())
        }
    }

    fn filled(count: u32) -> Map {
        let mut map = Map::default();
        for i in 0..count {
            let table = if i % 3 == 0 { "sales" } else { "t" };
            map.put(
                table,
                format!("key-{i:06}").as_bytes(),
                u64::from(i),
                b"value",
            );
        }
        map
    }

    #[test]
    fn composite_keys_order_tables_then_keys_and_ranges_cross_tables() {
        let mut tables = vec!["sales".to_string(), "t".to_string(), "aa".to_string()];
        sort_tables(&mut tables);
        assert_eq!(tables, ["t", "aa", "sales"]);
        let key = composite_key("aa", b"k").unwrap();
        assert_eq!(key, b"\x02aak");
        assert_eq!(split_composite(&key), Some(("aa", &b"k"[..])));
        assert!(composite_key(&"x".repeat(256), b"").is_none());
        // From the middle of "aa" to the middle of "sales": "t" is skipped.
        let range = KeyRange {
            lo: composite_key("aa", b"m").unwrap(),
            hi: composite_key("sales", b"c").unwrap(),
        };
        assert_eq!(
            table_ranges(&tables, &range),
            vec![
                ("aa", Bound::Included(b"m".to_vec()), Bound::Unbounded),
                ("sales", Bound::Unbounded, Bound::Excluded(b"c".to_vec())),
            ]
        );
        // A bound that is a table's bare prefix.
        let range = KeyRange {
            lo: composite_key("aa", b"").unwrap(),
            hi: composite_key("sales", b"").unwrap(),
        };
        assert_eq!(
            table_ranges(&tables, &range),
            vec![("aa", Bound::Unbounded, Bound::Unbounded)]
        );
        assert_eq!(table_ranges(&tables, &KeyRange::all()).len(), 3);
        // A bound between tables' prefixes.
        let range = KeyRange {
            lo: b"\x02b".to_vec(),
            hi: Vec::new(),
        };
        assert_eq!(
            table_ranges(&tables, &range),
            vec![("sales", Bound::Unbounded, Bound::Unbounded)]
        );
    }

    #[test]
    fn a_splitter_cuts_into_about_equal_parts() {
        for count in [2u32, 17, 100, 1000, 12_345] {
            let mut splitter = Splitter::new(16);
            let keys: Vec<Vec<u8>> = (0..count)
                .map(|i| format!("key-{i:06}").into_bytes())
                .collect();
            for key in &keys {
                splitter.push(key);
            }
            let splits = splitter.finish();
            assert!(
                !splits.is_empty() && splits.len() <= 15,
                "{count}: {splits:?}"
            );
            let mut sizes = vec![0u32; splits.len() + 1];
            for key in &keys {
                sizes[splits.partition_point(|s| s <= key)] += 1;
            }
            assert!(sizes[0] > 0, "the first part holds the first key");
            if count >= 1000 {
                let ideal = count / 16;
                assert!(sizes.iter().all(|&s| s <= 3 * ideal), "{count}: {sizes:?}");
            }
        }
    }

    #[test]
    fn equal_copies_cost_one_round_trip_whatever_their_size() {
        for count in [0, 1, 100, 20_000] {
            let (mut a, mut b) = (filled(count), filled(count));
            let report = diff(&mut a, &mut b, DiffOptions::default()).unwrap();
            assert!(report.equal());
            assert_eq!(report.round_trips, 1);
            assert_eq!((a.requests, b.requests), (1, 1));
            assert_eq!(report.entries_a, u64::from(count));
        }
    }

    #[test]
    fn a_changed_a_missing_and_an_extra_key_are_reported_with_both_versions() {
        let mut a = filled(20_000);
        let mut b = a.clone();
        b.put("t", b"key-000100", 100, b"changed");
        b.entries
            .remove(&composite_key("sales", b"key-009999").unwrap());
        b.put("zz", b"new", 7, b"extra");
        let report = diff(&mut a, &mut b, DiffOptions::default()).unwrap();
        type Found<'r> = (&'r str, &'r [u8], Option<&'r [u8]>, Option<&'r [u8]>);
        let found: Vec<Found<'_>> = report
            .differences
            .iter()
            .map(|d| {
                (
                    d.table.as_str(),
                    d.key.as_slice(),
                    d.a.as_ref().map(|v| v.value.as_slice()),
                    d.b.as_ref().map(|v| v.value.as_slice()),
                )
            })
            .collect();
        assert_eq!(
            found,
            vec![
                (
                    "t",
                    &b"key-000100"[..],
                    Some(&b"value"[..]),
                    Some(&b"changed"[..])
                ),
                ("zz", b"new", None, Some(b"extra")),
                ("sales", b"key-009999", Some(b"value"), None),
            ]
        );
        assert!(!report.equal());
        // log16(20000 / 64) ≈ 2 levels below the root, then the leaves.
        assert!(report.round_trips <= 8, "{report:?}");
    }

    #[test]
    fn a_version_alone_differs() {
        let mut a = filled(500);
        let mut b = a.clone();
        b.put("t", b"key-000001", 999, b"value");
        let report = diff(&mut a, &mut b, DiffOptions::default()).unwrap();
        assert_eq!(report.differences.len(), 1);
        assert_eq!(report.differences[0].a.as_ref().unwrap().seq, 1);
        assert_eq!(report.differences[0].b.as_ref().unwrap().seq, 999);
    }

    #[test]
    fn differences_are_bounded_and_an_empty_copy_is_cut_by_the_other_side() {
        let mut a = filled(5_000);
        let mut b = Map::default();
        let report = diff(
            &mut a,
            &mut b,
            DiffOptions {
                differences_max: 2_500,
                ..DiffOptions::default()
            },
        )
        .unwrap();
        assert_eq!(report.differences.len(), 2_500);
        assert!(report.truncated);
        // One copy empty: no split keys on its side, the other side's are used.
        let mut b = Map::default();
        let report = diff(&mut a, &mut b, DiffOptions::default()).unwrap();
        assert_eq!(report.differences.len(), 1000);
    }

    #[test]
    fn entries_come_in_bounded_pages_and_are_fetched_whole() {
        let mut a = filled(2_500);
        let (first, more) = a.entries(&KeyRange::all()).unwrap();
        assert_eq!((first.len(), more), (ENTRIES_COUNT_MAX, true));
        let (fetched, waves) = fetch_all(&mut a, &[KeyRange::all()]).unwrap();
        assert_eq!((fetched[0].len(), waves), (2_500, 3));
        // Large values: a page stops near ENTRIES_BYTES_MAX, but always holds one entry.
        let mut big = Map::default();
        for i in 0..5u8 {
            big.put("t", &[i], 0, &vec![i; ENTRIES_BYTES_MAX / 2]);
        }
        let (page, more) = big.entries(&KeyRange::all()).unwrap();
        assert_eq!((page.len(), more), (1, true));
        let (fetched, waves) = fetch_all(&mut big, &[KeyRange::all()]).unwrap();
        assert_eq!((fetched[0].len(), waves), (5, 5));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_descent_finds_exactly_the_differences(
            base in proptest::collection::btree_map(
                (0..3usize, proptest::collection::vec(0..4u8, 0..6)), (0..3u64, 0..3u8), 0..300),
            changes in proptest::collection::vec(
                ((0..3usize, proptest::collection::vec(0..4u8, 0..6)), proptest::option::of((0..3u64, 0..3u8))), 0..20),
        ) {
            let tables = ["a", "bb", "t"];
            let mut a = Map::default();
            for ((t, key), (seq, value)) in &base {
                a.put(tables[*t], key, *seq, &[*value]);
            }
            let mut b = a.clone();
            for ((t, key), change) in &changes {
                match change {
                    Some((seq, value)) => b.put(tables[*t], key, *seq, &[*value]),
                    None => {
                        b.entries.remove(&composite_key(tables[*t], key).unwrap());
                    }
                }
            }
            let expected: Vec<Vec<u8>> = a.entries.keys().chain(b.entries.keys())
                .filter(|k| a.entries.get(*k) != b.entries.get(*k))
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let options = DiffOptions { leaf_entries: 4, fanout: 3, ..DiffOptions::default() };
            let report = diff(&mut a, &mut b, options).unwrap();
            let found: Vec<Vec<u8>> = report.differences.iter()
                .map(|d| composite_key(&d.table, &d.key).unwrap())
                .collect();
            prop_assert_eq!(found, expected);
        }
    }
}
