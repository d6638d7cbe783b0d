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
//! raw heed 0.85x (0.80–0.89) against 0.77x (0.73–0.85), 286 MB written against 294.
//!
//! # Memory
//!
//! Values are not copied: a change holds where its value lies in a ring page, and the group's
//! pages stay pinned until after its commit (the applier releases a group's pages only once the
//! next commit's sync covered its meta page), so [`Cursor::reread`] finds them when the group is
//! applied. What is copied is the keys, back to back, and each record that spans pages, which
//! the record reader had to assemble anyway; per change the applier holds an entry of 40 bytes. For
//! the demo's groups of 37,050 rows that is 1.4 MB of keys and 1.5 MB of entries, against the
//! 8 MiB of ring pages the group reads; the buffers are kept for the next group.

use std::borrow::Cow;
use std::collections::HashMap;

use pagemesh_logpage::{Cursor, PageRef};

use crate::error::Result;
use crate::record::{decode, Op};
#[cfg(doc)]
use crate::Options;

/// Marks a [`Span`] whose bytes are in [`GroupChanges::held`], not in a ring page.
const HELD: u32 = 1 << 31;

/// Where bytes of a gathered record lie: in the payload of the group's `source`-th page (counted
/// from its first), or in held record `source & !HELD`. A record is under 2 GiB
/// (`RECORD_LEN_MAX`), so offsets in it fit.
#[derive(Clone, Copy, Debug)]
struct Span {
    source: u32,
    start: u32,
    len: u32,
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
    /// Forgets what was gathered, keeping the buffers.
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
        // The bytes spans are counted from: the page's payload, or the record's own copy.
        let (source, base, record): (u32, &[u8], &[u8]) = match bytes {
            Cow::Borrowed(bytes) if within(payload, bytes) => (page_index, payload, bytes),
            bytes => {
                held.push(bytes.into_owned());
                let index = held.len() - 1;
                assert!(index < HELD as usize, "under 2^31 records in a group");
                (index as u32 | HELD, &held[index], &held[index])
            }
        };
        let span = |inner: &[u8]| {
            debug_assert!(within(base, inner), "a record's field lies in the record");
            Span {
                source,
                start: (inner.as_ptr() as usize - base.as_ptr() as usize) as u32,
                len: inner.len() as u32,
            }
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
                        value: resolve(cursor, held, first_lsn, value),
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
                    bytes: resolve(cursor, held, first_lsn, barrier.record),
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

/// The bytes `span` names.
fn resolve<'a>(cursor: &'a Cursor, held: &'a [Vec<u8>], first_lsn: u64, span: Span) -> &'a [u8] {
    let base = match span.source & HELD {
        0 => cursor
            .reread(first_lsn + u64::from(span.source))
            .expect("a group's pages stay pinned until after its commit")
            .payload(),
        _ => &held[(span.source & !HELD) as usize][..],
    };
    &base[span.start as usize..(span.start + span.len) as usize]
}

/// Whether `inner` lies within `outer`'s bytes.
fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (outer_start, inner_start) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    inner_start >= outer_start && inner_start + inner.len() <= outer_start + outer.len()
}
