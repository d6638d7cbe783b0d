//! A group's puts and deletes, gathered while its pages are decoded and applied in key order.
//!
//! The applier writes a group in one LMDB transaction. Applied in log order, the puts of a load
//! with random keys land on random leaves of the B-tree, one after another: each put walks the
//! tree from the root to a leaf that is, in a tree larger than the CPU's caches, not in them. The
//! same puts in key order walk down next to where the previous one did, so the branch and leaf
//! pages are still cached, and LMDB's work per put drops. Raw heed loading the demo's 106,178
//! records in three synced transactions of 37,050 rows, three environments at once on this
//! machine's two vCPUs, took 0.27–0.51 s with each transaction's puts sorted against 0.31–0.66 s
//! in their order (four alternated rounds); sorting in chunks of 8,192 puts kept little of that,
//! and of 2,048 none of it. So the whole group is sorted.
//!
//! # What may be reordered
//!
//! Within a transaction only the last write to a key is seen, by readers and by every later
//! transaction: changes to *different* keys commute, and those to the same key keep their log
//! order (the sort is stable). That holds for plain puts and deletes. A record that reads (a
//! transaction's versions or scans, checked against what is stored when it applies) or that
//! creates, clears or drops a table is a *barrier*: everything gathered before it is applied
//! first, in key order, then the record itself, in full, as before; what comes after it is sorted
//! on its own. Of several changes to one key between two barriers only the last is applied: it
//! is the one a reader would see.
//!
//! DESIGN.md's applier takes ready pages in LSN order and applies each record in one transaction
//! per group. It still does, with the same outcome: only the order of LMDB's operations inside
//! the transaction changes, and the same pages still give the same data on every replica.
//!
//! A barrier gives up what sorting gains, nothing more. `benches/apply.rs` applies the same
//! 30,000 puts as 600 plain records (`pagemesh-backlog`) and as 600 barriers
//! (`pagemesh-backlog-barriers`: each record also creates its existing table). In three runs
//! the barriers took 50.0–51.5 ms against 42.0–44.6 ms, raw heed's log-order transaction
//! (`heed-txn`) 41.6–42.9 ms. `perf` on the applier thread (6 s of each) puts the difference in
//! LMDB's tree walks: `mdb_node_search` and `mdb_page_search` took 1,117 samples against 243.
//! Decoding each barrier twice, once to classify it and once to apply it, cost 80 samples of
//! `decode` against 39, under half a percent of the applier's time.
//!
//! # Rounds
//!
//! A group is gathered and applied in rounds, in its one transaction: gather every ready page
//! (up to the group's limits), apply that in key order, then gather what became ready during the
//! apply, and so on until nothing more is ready or the group is full. The first version gathered
//! once and applied once: the gathering is quick, so the group was only what was ready when it
//! began, and the pages that arrived during its apply waited for the next one. The demo's
//! primary then made six to eight LMDB transactions instead of three or four, and every one of
//! a random-key load's transactions copies most of the tree: `bench commit`'s load peaked at
//! 74–87 MiB by its last commit against 55–80 MiB (six runs each, alternated). With rounds the
//! groups are as large as when each record was applied as it was read.
//!
//! Measured in the demo (eight runs alternated with the build before, which applied each record
//! as it was read): end to end median 0.380 s (0.37–0.41) against 0.435 s (0.40–0.45), ratio to
//! raw heed 0.85x (0.80–0.89) against 0.77x (0.73–0.85), 286 MB written against 294. Again with
//! the values found in the ring (below, Memory): 0.390 s (0.36–0.41) against 0.445 s
//! (0.42–0.53), ratio 0.82–1.06x against 0.70–1.14x (raw heed's own time moved between the runs,
//! median 0.335 s against 0.375 s).
//!
//! # Memory
//!
//! Values are not copied: a change holds where its value lies in the ring, and the group's pages
//! stay pinned until after its commit (the applier releases a group's pages only once the next
//! commit's sync covered its meta page), so [`Cursor::reread`] finds them when the group is
//! applied. That holds for records that span pages too, which the record reader assembles into
//! a copy: every page such a record passes through is full and it goes on at the start of the
//! next page's payload, so a byte's place in the ring follows from the record's `seq` (where its
//! header starts) by arithmetic, and the copy is dropped once its changes are gathered. A value
//! that runs over a page's end is put back together when it is applied, one at a time. Only a
//! record begun in an earlier group's pages, which may be released, is kept whole (at most one
//! per group). What is copied is the keys, back to back; per change the applier holds an entry
//! of 40 bytes. For the demo's groups of 37,050 rows that is 1.4 MB of keys and 1.5 MB of
//! entries, against the 8 MiB of ring pages the group reads; the buffers are kept for the next
//! group. Tiny puts gather more entries than their pages' bytes, so a round applies what it has
//! once [`GATHERED_MAX`] entries (10 MiB) are gathered, and the group goes on.
//!
//! The first version kept every assembled record until its group was applied: the demo's and
//! `bench commit`'s load commit batches of 50 records, about 11 KB each, so nearly every record
//! spans pages and the whole group was held twice. `heaptrack` over the load put the held
//! records at 10.1 MB of the heap's 78.7 MB peak; finding them in the ring instead, the peak is
//! 65.7 MB, and the load's peak RSS by its last commit 60.7–82.7 MiB (median 62.8) against
//! 62.8–83.8 (median 69) for the build that applied each record as it was read (six runs each,
//! alternated); once applied, 91.7–106.1 against 93.7–101.8.

use std::borrow::Cow;
use std::collections::HashMap;

use pagemesh_logpage::{Cursor, PageRef, PAGE_SIZE, PAYLOAD_SIZE, RECORD_HEADER_SIZE};

use crate::error::Result;
use crate::record::{decode, Op};
#[cfg(doc)]
use crate::Options;

/// The most changes and barriers gathered before they are applied: 10 MiB of entries. A group of
/// tiny puts (a few bytes of log each) would otherwise gather over a million from 8 MiB of pages;
/// past this the group goes on in another round (above, Rounds).
pub(crate) const GATHERED_MAX: usize = 1 << 18;

/// Marks a [`Span`] whose bytes are in [`GroupChanges::held`], not in a ring page.
const HELD: u32 = 1 << 31;

/// Where bytes of a gathered record lie: `len` bytes of the log's payload stream from offset
/// `start` of the group's `source`-th page (counted from its first) on, running on into the next
/// pages' payloads where they pass the end of that page's; or, with [`HELD`], in held record
/// `source & !HELD`. A record that spans pages continues at the start of the next page's
/// payload, and every page it passes through is full (`RecordReader` refuses anything else), so
/// a byte's place in the stream is arithmetic. A record is under 2 GiB (`RECORD_LEN_MAX`), so
/// offsets in it fit.
#[derive(Clone, Copy, Debug)]
struct Span {
    source: u32,
    start: u32,
    len: u32,
}

/// Where a gathered record's first byte is: in the payload stream (the group's `page`-th page,
/// offset `start`, which may pass the payload's end when the record's header straddles pages),
/// or in a held record.
#[derive(Clone, Copy, Debug)]
enum Origin {
    Stream { page: u32, start: usize },
    Held(u32),
}

impl Origin {
    /// The span of the record's bytes `[offset, offset + len)`.
    fn span(self, offset: usize, len: usize) -> Span {
        match self {
            Origin::Stream { page, start } => {
                let at = start + offset;
                Span {
                    source: page + (at / PAYLOAD_SIZE) as u32,
                    start: (at % PAYLOAD_SIZE) as u32,
                    len: len as u32,
                }
            }
            Origin::Held(source) => Span {
                source,
                start: offset as u32,
                len: len as u32,
            },
        }
    }
}

/// A put (`value` some) or a delete, by table index and key position.
#[derive(Clone, Copy, Debug)]
struct Change {
    key_start: usize,
    seq: u64,
    table: u32,
    key_len: u32,
    value: Option<Span>,
}

/// A record applied whole, after `changes[..after]` and before the rest.
#[derive(Clone, Copy, Debug)]
struct Barrier {
    after: usize,
    seq: u64,
    record: Span,
}

/// What a group gathered; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct GroupChanges {
    changes: Vec<Change>,
    barriers: Vec<Barrier>,
    /// The changes' keys, back to back.
    keys: Vec<u8>,
    /// Records that span pages, as the record reader assembled them.
    held: Vec<Vec<u8>>,
    /// Table names by index, and the index of each name.
    tables: Vec<String>,
    table_index: HashMap<String, u32>,
    /// Operations gathered, barriers' included: each may change a page of its own (the applier's
    /// Group size, [`Options::group_dirty_bytes_max`]).
    pub ops: u64,
}

/// One step of applying a group: a change, or a barrier record.
#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// Set `key` in `table` to `value`, versioned `seq`.
    Put {
        table: &'a str,
        key: &'a [u8],
        seq: u64,
        value: &'a [u8],
    },
    /// Remove `key` from `table`.
    Delete { table: &'a str, key: &'a [u8] },
    /// Apply this record whole, its reads checked first.
    Record { seq: u64, bytes: &'a [u8] },
}

impl GroupChanges {
    /// Forgets what was gathered, and the count of operations, keeping the buffers: for a new
    /// group.
    pub fn clear(&mut self) {
        self.forget_gathered();
        self.ops = 0;
    }

    /// Whether nothing is gathered and not yet applied.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.barriers.is_empty()
    }

    /// Whether [`GATHERED_MAX`] is reached: apply before gathering more.
    pub fn is_full(&self) -> bool {
        self.changes.len() + self.barriers.len() >= GATHERED_MAX
    }

    fn forget_gathered(&mut self) {
        self.changes.clear();
        self.barriers.clear();
        self.keys.clear();
        self.held.clear();
        self.tables.clear();
        self.table_index.clear();
    }

    /// Takes record `seq`, which completed in `page`, the group's `page_index`-th page.
    pub fn gather(
        &mut self,
        seq: u64,
        bytes: Cow<'_, [u8]>,
        page: PageRef<'_>,
        page_index: u32,
    ) -> Result<()> {
        let Self {
            changes,
            barriers,
            keys,
            held,
            tables,
            table_index,
            ops,
        } = self;
        let payload = page.payload();
        let first_lsn = page.lsn() - u64::from(page_index);
        let (start_lsn, start) = (seq / PAGE_SIZE as u64, (seq % PAGE_SIZE as u64) as usize);
        // Where the record's bytes are found again when the group is applied.
        let owned: Vec<u8>;
        let (origin, record): (Origin, &[u8]) = match bytes {
            Cow::Borrowed(bytes) if within(payload, bytes) => (
                Origin::Stream {
                    page: page_index,
                    start: bytes.as_ptr() as usize - payload.as_ptr() as usize,
                },
                bytes,
            ),
            // Assembled from pages of this group: found there again, so the copy can go.
            bytes if start_lsn >= first_lsn && start_lsn < page.lsn() => {
                owned = bytes.into_owned();
                let origin = Origin::Stream {
                    page: (start_lsn - first_lsn) as u32,
                    start: start + RECORD_HEADER_SIZE,
                };
                (origin, &owned[..])
            }
            // Begun in an earlier group's pages, which may be released by now: kept.
            bytes => {
                held.push(bytes.into_owned());
                let index = held.len() - 1;
                assert!(index < HELD as usize, "under 2^31 records in a group");
                (Origin::Held(index as u32 | HELD), &held[index][..])
            }
        };
        let span = |inner: &[u8]| {
            debug_assert!(within(record, inner), "a record's field lies in the record");
            origin.span(
                inner.as_ptr() as usize - record.as_ptr() as usize,
                inner.len(),
            )
        };
        let view = decode(record)?;
        *ops += view.ops().len() as u64;
        let plain = view.reads().is_empty()
            && view.range_reads().is_empty()
            && view.ops().iter().all(|op| as_change(op).is_some());
        if !plain {
            barriers.push(Barrier {
                after: changes.len(),
                seq,
                record: span(record),
            });
            return Ok(());
        }
        for (table, key, value) in view.ops().iter().filter_map(as_change) {
            let table = match changes.last() {
                Some(last) if tables[last.table as usize] == table => last.table,
                _ => match table_index.get(table) {
                    Some(&index) => index,
                    None => {
                        let index = tables.len() as u32;
                        tables.push(table.to_string());
                        table_index.insert(table.to_string(), index);
                        index
                    }
                },
            };
            changes.push(Change {
                key_start: keys.len(),
                seq,
                table,
                key_len: key.len() as u32,
                value: value.map(span),
            });
            keys.extend_from_slice(key);
        }
        Ok(())
    }

    /// Hands what was gathered to `apply`, step by step: between barriers, the changes sorted
    /// by table and key (stably), each key's last change only; each barrier in its place. The
    /// group's pages are reread through `cursor`, whose first page is `first_lsn`. Then forgets
    /// them; the count of operations stays, for the rest of the group.
    pub fn apply(
        &mut self,
        cursor: &Cursor,
        first_lsn: u64,
        mut apply: impl FnMut(Step<'_>) -> Result<()>,
    ) -> Result<()> {
        let Self {
            changes,
            barriers,
            keys,
            held,
            tables,
            ..
        } = self;
        let key =
            |change: &Change| &keys[change.key_start..change.key_start + change.key_len as usize];
        // A value that runs over a page's end, put back together.
        let mut joined = Vec::new();
        let mut start = 0;
        for barrier in barriers.iter().map(Some).chain([None]) {
            let end = barrier.map_or(changes.len(), |barrier| barrier.after);
            let segment = &mut changes[start..end];
            segment.sort_by(|a, b| a.table.cmp(&b.table).then_with(|| key(a).cmp(key(b))));
            for (i, change) in segment.iter().enumerate() {
                let superseded = segment
                    .get(i + 1)
                    .is_some_and(|next| next.table == change.table && key(next) == key(change));
                if superseded {
                    continue;
                }
                let table = &tables[change.table as usize];
                apply(match change.value {
                    Some(value) => Step::Put {
                        table,
                        key: key(change),
                        seq: change.seq,
                        value: resolve(cursor, held, first_lsn, value, &mut joined),
                    },
                    None => Step::Delete {
                        table,
                        key: key(change),
                    },
                })?;
            }
            if let Some(barrier) = barrier {
                apply(Step::Record {
                    seq: barrier.seq,
                    bytes: resolve(cursor, held, first_lsn, barrier.record, &mut joined),
                })?;
            }
            start = end;
        }
        self.forget_gathered();
        Ok(())
    }
}

/// A put's or a delete's table, key and value (`None` for a delete).
type PlainChange<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

/// `op` as a plain change; `None` for the table operations.
fn as_change<'a>(op: &Op<'a>) -> Option<PlainChange<'a>> {
    match *op {
        Op::Put { table, key, value } => Some((table, key, Some(value))),
        Op::Delete { table, key } => Some((table, key, None)),
        Op::CreateTable { .. } | Op::ClearTable { .. } | Op::DropTable { .. } => None,
    }
}

/// The bytes `span` names: in place where they lie in one page or a held record, else copied
/// into `joined`.
fn resolve<'a>(
    cursor: &'a Cursor,
    held: &'a [Vec<u8>],
    first_lsn: u64,
    span: Span,
    joined: &'a mut Vec<u8>,
) -> &'a [u8] {
    let (start, len) = (span.start as usize, span.len as usize);
    if len == 0 {
        // An empty value at the very end of a full page "starts" in the next page, which may
        // not be the group's.
        return &[];
    }
    if span.source & HELD != 0 {
        return &held[(span.source & !HELD) as usize][start..start + len];
    }
    let page = |lsn: u64| {
        cursor
            .reread(lsn)
            .expect("a group's pages stay pinned until after its commit")
            .payload()
    };
    let mut lsn = first_lsn + u64::from(span.source);
    let payload = page(lsn);
    if start + len <= payload.len() {
        return &payload[start..start + len];
    }
    joined.clear();
    joined.extend_from_slice(&payload[start..]);
    while joined.len() < len {
        lsn += 1;
        let payload = page(lsn);
        let take = (len - joined.len()).min(payload.len());
        joined.extend_from_slice(&payload[..take]);
    }
    joined
}

/// Whether `inner` lies within `outer`'s bytes.
fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (outer_start, inner_start) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    inner_start >= outer_start && inner_start + inner.len() <= outer_start + outer.len()
}
