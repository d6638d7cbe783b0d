//! The flusher/applier: ready log pages → one LMDB write transaction per group.
//!
//! One thread owns the log's applier cursor. Each round it waits for ready pages (as an engaged
//! consumer it drives the log's group commit: see `pagemesh_logpage::seal`), then, in ONE write
//! transaction:
//!
//! 1. decodes each record that completes in them, from `applied_seq_end` on (lower ones were
//!    applied before a crash: see `recovery.rs`), and applies them with the outcome of log
//!    order: plain puts and deletes sorted by key between the records that read or change a
//!    table, which apply in their place (`key_order.rs`). A transaction record applies only if
//!    every version it read is still current; otherwise it is skipped, the same way everywhere;
//! 2. writes the apply state (`binlog_next_lsn`, `replay_lsn`, `applied_seq_end`) to `__meta`
//!    (and trims an old `__binlog`, `binlog.rs`);
//! 3. makes the group's pages durable in the log's segments, which are the history
//!    (`Log::make_durable_below`: usually the flusher already did), so that LMDB on disk never
//!    records as applied a page a power loss could take from the history;
//!
//! and commits. Then it publishes the applied watermark, wakes `Applied` waiters, and retires
//! history segments past retention (`binlog.rs`).
//!
//! The applier is off the commit path: `Durable` commits wait for the log ring's durable
//! watermark (the ring is the write-ahead log), never for LMDB. The group is everything ready, up
//! to `group_bytes_max`, so it adapts to the backlog by itself: large when commits pile up during
//! the previous group's commit, and paced when they trickle in (below).
//!
//! # Pacing
//!
//! Each LMDB commit syncs its data pages (`MDB_NOMETASYNC` skips only the meta page's sync), on
//! the same disk as the ring's `fdatasync`. Applying every ready page at once gave a trickle of
//! `Durable` commits a group, and an LMDB sync, for every 1.6 commits (`bench commit`, one in
//! flight), and the ring's syncs queued behind them: `durable@1` p50 was 2.3x the disk's
//! `fdatasync` floor. So while nobody waits for `Applied`, the applier lets a backlog build
//! before each group: once a page is ready it waits up to [`Options::apply_pace`]'s window
//! (20 ms; 50 ms on a replica, `REPLICA_APPLY_PACE` says why) or until its bytes (1 MiB; 16 MiB
//! on a replica; at most a quarter of the ring) are held, through
//! `Cursor::wait_backlog`, during which its cursor steps back from sealing duty (waiters seal
//! their own pages). A commit that waits for `Applied` (`put_if_version` and transactions too)
//! calls `Log::hurry` with its page, which ends the wait at once and seals that page: such
//! commits are applied as fast as before, and `Applied` still means visible to local readers.
//! Readers that only look see `Durable` commits up to the window later. The release rule below
//! is unchanged: a paced group is a group.
//!
//! Measured (`bench commit --inflight 1,16,256`, one run before and one after, on 2 vCPUs other
//! builds shared): `durable@1` went from 1.6 to 47 records per group, its p50 from 2.29x to
//! 1.21x the `fdatasync` floor and its rate from 1.17x to 1.63x `heed-sync-txn`; `durable@16`
//! and `@256` grouped 13x and 2.6x more records per LMDB commit; `applied` is unchanged (a
//! waiter is always there to hurry the applier).
//!
//! Applying *while* the pace lasts instead of sleeping through it first (stop 34, an experiment
//! not kept): the group's transaction began at the first ready page and took pages as they
//! came, sleeping only while none was ready, until it had slept the window, held the pace's
//! pages or held a hurried page. In `demo` the replicas' appliers then started 40–60 ms sooner
//! (their first group no longer waited for 1,024 pages), yet end to end did not move: ten
//! alternated pairs, median 0.565 s against 0.585 s (ratio to raw heed 0.75x against 0.76x);
//! nor did `bench replicate --inflight 16`, six alternated pairs, `sync-durable/durable` median
//! 0.77 against 0.77. Those loads are bound by what the two vCPUs and the disk do in all, not by
//! when an applier starts. Two lessons from its first versions: a group that ended a window
//! after it *began* (not after a window of sleep) left `durable@16` a third fewer records per
//! LMDB commit; and a wait inside a group that woke only for hurried pages it had not read yet
//! kept `Applied` waiters whose page it already held until the window passed (`applied@256`
//! 20% slower): a consumer waiting inside a batch must count the batch's read pages as hurried.
//!
//! # Group size
//!
//! A group ends at [`Options::group_bytes_max`] of log pages (8 MiB), and, in a large
//! database, at [`Options::group_dirty_bytes_max`] (128 MiB) of pages it may have changed.
//! LMDB copies each page a write transaction changes into memory it `malloc`s, and never
//! frees those copies before the environment closes: it keeps them for the next
//! transactions. So the largest group ever applied sets how much memory the database holds
//! from then on. In a tree much larger than the group, with random keys, each put or delete
//! changes a leaf of its own, and 8 MiB of small records is tens of thousands of leaves: LMDB
//! itself stops only at 131,071 changed pages (512 MiB), where it starts to spill. The applier
//! therefore counts the operations it gathers, and once the tables hold more pages than the
//! budget (`Store::tree_pages`, read at the group's start), it ends the group at the first
//! run of ready pages (at most `RUN_PAGES_MAX`) that brings the count to the budget in pages.
//! A smaller database is not limited: a group cannot change more pages than the tree holds,
//! plus what it adds.
//!
//! Measured (stop 37; one million random 8-byte keys with 150-byte values, 50 a batch, 16
//! batches in flight, `Durable`, into one database; the process's `RssAnon` after the load, and
//! its peak RSS, file pages included, two runs each, alternated): with no limit, 162 MiB and 670
//! MiB in 22 groups, 5.8–6.7 s; with the 128 MiB budget, 129 MiB and 582 MiB in 26 groups,
//! 7.0–7.2 s; with a 64 MiB budget, 88 MiB and 459 MiB in 49 groups, 9.2–9.3 s. Smaller groups
//! share fewer leaves between their operations, so the same load writes more pages in all;
//! 128 MiB bounds the memory for a cost of a few percent on the load that reaches it, and
//! the loads of `demo` and the benches (under 50 MiB of tables) never reach it.
//!
//! # Priority
//!
//! The applier thread lowers its own CPU priority by [`Options::apply_nice`] nice steps (10 by
//! default) when it starts: it is background work, and on a machine with few cores a group of
//! hundreds of records applied at once preempted the committing thread, the network threads
//! and the flusher whenever it woke (`APPLY_NICE` has the figures). It cannot starve commits
//! for long: once its backlog fills the ring, committers block and leave it the CPU.
//!
//! # When ring pages are released
//!
//! A ring page may be reused once LMDB holds it *on disk*: recovery after a power loss starts
//! at the `binlog_next_lsn` LMDB's disk says, and must find every page from there on in the ring.
//! The environment syncs a commit's data pages but not its meta page (`MDB_NOMETASYNC`,
//! `store.rs`, Syncs): after a power loss LMDB may come back at the group *before* the latest.
//! The latest group's meta page reaches the disk with the next commit's sync. So:
//!
//! - when group `k` commits, the applier releases the ring pages of group `k - 1` (everything
//!   below group `k`'s first page): group `k`'s sync put group `k - 1`'s meta page on disk;
//! - group `k`'s own pages stay in the ring until group `k + 1` commits, or until the applier
//!   has had nothing to apply for [`IDLE_SYNC_AFTER`], or the held pages fill half the ring:
//!   then it syncs the environment ([`Store::sync`], meta page included) and releases them all.
//!
//! The ring thus holds at most one extra group beyond what is unapplied, and an idle database
//! has all of its ring released (and LMDB fully on disk) moments after its last commit.
//!
//! Tables are created, dropped and cleared by records like any write (`record.rs`, version 2),
//! so every replica does the same at the same point of the log: a put creates its table if it
//! does not exist (as it always did), a delete creates nothing, a drop empties the table and
//! removes its `table:` key (see `GroupTables`).
//!
//! Tables first written inside a group are created in the group's own transaction (heed creates
//! databases only through `create_databases_and_commit`, so the whole group runs inside it), and
//! opened by name once it has committed.
//!
//! A record that does not decode, or a failed commit, *poisons* the database: the applier stops,
//! waiters and writers get [`Error::Poisoned`], and nothing more is written until it is reopened.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use heed::types::Bytes;
use heed::CommitOrAbort;

use pagemesh_logpage::{Cursor, PageRef, RecordReader, PAGE_SIZE};

use crate::database::Inner;
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::key_order::{GroupChanges, Step};
use crate::record::{decode, Op};
use crate::store::{ApplyState, Store, TxnError};
use crate::value::{encode_value, value_seq};
#[cfg(doc)]
use crate::{Database, Options};

/// How long the applier waits for the next group before it syncs the environment to release
/// the latest group's ring pages (see the module docs).
pub(crate) const IDLE_SYNC_AFTER: Duration = Duration::from_millis(10);

/// How long the applier sleeps between checks when nothing is held.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// Pages taken from the cursor per `next_run` call.
const RUN_PAGES_MAX: usize = 64;

/// The applier's state between groups.
pub(crate) struct Applier {
    pub inner: Arc<Inner>,
    pub cursor: Cursor,
    pub state: ApplyState,
    pub feed: RecordFeed,
    /// The current group's puts and deletes, gathered to be applied in key order.
    pub changes: GroupChanges,
}

impl Applier {
    /// Runs until the log closes or the store is poisoned. If it panics (one of its invariant
    /// checks failed), it poisons the database on the way out, so that writers and waiters get
    /// an error instead of waiting forever for a thread that is gone.
    pub fn run(mut self) {
        lower_priority(self.inner.options.apply_nice);
        let inner = Arc::clone(&self.inner);
        let _poison_on_panic = OnUnwind(|| {
            inner.poison("the applier panicked (an invariant check failed; see the panic message)")
        });
        self.apply_until_stopped();
        if inner.is_poisoned() {
            // Its pin must outlive the thread: see `Inner::hold_cursor`.
            inner.hold_cursor(self.cursor);
        }
    }

    /// The applier's loop: until the log closes or a group fails (which poisons the database).
    fn apply_until_stopped(&mut self) {
        loop {
            let held = self.held_pages();
            if held > 0 && held >= self.inner.log.slots() / 2 {
                if let Err(error) = self.sync_held() {
                    return self.inner.poison(&error.to_string());
                }
                continue;
            }
            let wait = if held > 0 { IDLE_SYNC_AFTER } else { IDLE_WAIT };
            let applied = match self.cursor.wait_ready(Some(Instant::now() + wait)) {
                // One group per round: pages that become ready during its commit wait for the
                // next round's pace, which ends at once if they already make a backlog.
                Ok(true) => {
                    self.pace();
                    self.apply_group()
                }
                Ok(false) if held > 0 => self.sync_held(),
                Ok(false) => Ok(()),
                Err(pagemesh_logpage::Error::Closed) => {
                    // On close, apply whatever is ready, then stop.
                    while self.cursor.lag_pages() > 0 {
                        if let Err(error) = self.apply_group() {
                            return self.inner.poison(&error.to_string());
                        }
                    }
                    tracing::debug!(applied_lsn = self.state.binlog_next_lsn, "applier stopped");
                    return;
                }
                Err(error) => Err(error.into()),
            };
            if let Err(error) = applied {
                return self.inner.poison(&error.to_string());
            }
        }
    }

    /// Lets a backlog build before the next group, while nobody waits for `Applied` (see the
    /// module docs, Pacing): until the pace's bytes of ring pages are held (ready, or applied
    /// and not yet released; at most a quarter of the ring), the pace window has passed since
    /// pages became ready, a waiter hurries (`Inner::wait_applied`), or the log closes.
    fn pace(&mut self) {
        let (window, bytes) = self
            .inner
            .options
            .apply_pace_for(self.inner.log.is_follower());
        if window.is_zero() {
            return;
        }
        // A backlog of a whole group ends the pace too: a group takes no more, so waiting for
        // more only delays it (with small groups and the replica's 50 ms, one group per window).
        let pages_max = (bytes / PAGE_SIZE) as u64;
        let group_pages = (self.inner.options.group_bytes_max / PAGE_SIZE).max(1) as u64;
        let pages_min = pages_max
            .min(group_pages)
            .min(self.inner.log.slots() / 4)
            .max(1);
        self.cursor
            .wait_backlog(pages_min, Some(Instant::now() + window));
    }

    /// Ring pages applied but not yet released: LMDB's latest group, whose meta page may not be
    /// on disk yet.
    fn held_pages(&self) -> u64 {
        self.state.binlog_next_lsn - self.cursor.released_lsn()
    }

    /// Syncs the environment (meta page included) and releases every applied ring page.
    fn sync_held(&mut self) -> Result<()> {
        self.inner.store.sync()?;
        self.cursor.release(self.state.binlog_next_lsn);
        Ok(())
    }

    /// Applies one group of ready pages in one write transaction.
    fn apply_group(&mut self) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        let store = &inner.store;
        let first_lsn = self.cursor.position();
        // The binlog has no holes: each group starts where the last one ended (its key follows
        // the last by APPEND; retention and recovery read a group's end from the next key).
        assert_eq!(
            first_lsn, self.state.binlog_next_lsn,
            "group starts at the applied LSN"
        );
        let started = Instant::now();
        let older_than = inner.options.binlog_retain_age.map_or(0, |age| {
            std::time::SystemTime::now()
                .checked_sub(age)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_micros() as u64)
        });
        let mut created: Vec<String> = Vec::new();
        let mut existence: HashMap<String, bool> = HashMap::new();
        let mut gate = None;
        let wtxn = store.env.write_txn().map_err(store.lmdb("begin group"))?;
        let committed =
            store
                .env
                .create_databases_and_commit(wtxn, |wdo, wtxn| -> Result<_, TxnError> {
                    let mut tables = GroupTables {
                        store,
                        wdo,
                        created: HashMap::new(),
                        live: HashMap::new(),
                        existence: HashMap::new(),
                        gate: None,
                        last: None,
                    };
                    self.write_group(first_lsn, older_than, wtxn, &mut tables)?;
                    created.extend(tables.created.into_keys());
                    existence.extend(tables.existence.drain());
                    gate = tables.gate.take();
                    Ok(CommitOrAbort::<_, ()>::Commit(()))
                });
        committed.map_err(|error| error.into_error(store.lmdb("commit group")))?;
        for table in &created {
            store.open_created_table(table)?;
        }
        for (table, exists) in &existence {
            store.set_table_exists(table, *exists);
        }
        drop(gate);
        // This commit's sync put the previous group's meta page on disk: its pages may go.
        self.cursor.release(first_lsn);
        inner.record_conflicts(&mut self.feed.conflicts);
        inner.stats.record_group(
            self.state.binlog_next_lsn - first_lsn,
            self.feed.records_applied,
        );
        inner.metrics.group(self.feed.records_applied);
        // A failed retirement keeps more history than asked, and loses nothing: the database
        // goes on, and the next group tries again.
        if let Err(error) = crate::binlog::retire_history(
            store,
            &inner.log,
            self.state.binlog_next_lsn,
            self.state.replay_lsn,
            inner.options.binlog_retain_bytes,
            inner.options.binlog_retain_age,
        ) {
            tracing::warn!(%error, "history retention failed; the history stays longer");
        }
        tracing::debug!(
            first_lsn,
            pages = self.state.binlog_next_lsn - first_lsn,
            records = self.feed.records_applied,
            took_us = started.elapsed().as_micros() as u64,
            "group applied"
        );
        self.feed.records_applied = 0;
        inner.publish_applied(self.state.binlog_next_lsn);
        Ok(())
    }

    /// The most operations this group may apply (see Group size): `group_dirty_bytes_max` in
    /// pages once the tables hold more than that, else no limit.
    fn ops_max(&self, store: &Store, txn: &heed::RoTxn) -> Result<u64> {
        let pages_max = (self.inner.options.group_dirty_bytes_max / PAGE_SIZE).max(1) as u64;
        Ok(match store.tree_pages(txn)? > pages_max {
            true => pages_max,
            false => u64::MAX,
        })
    }

    /// The group's work inside its transaction: takes ready pages from `first_lsn` on, up to
    /// `group_bytes_max`, and applies their records; records the apply state, trims an old
    /// `__binlog` (`older_than` as [`Store::trim_binlog`] takes it) and makes the pages durable
    /// in the history before the transaction commits.
    fn write_group<'e>(
        &mut self,
        first_lsn: u64,
        older_than: u64,
        wtxn: &mut heed::RwTxn<'e>,
        tables: &mut GroupTables<'_, '_, 'e>,
    ) -> Result<()> {
        let store = tables.store;
        let group_bytes_max = self.inner.options.group_bytes_max;
        let retain_bytes = self.inner.options.binlog_retain_bytes;
        let ops_max = self.ops_max(store, wtxn)?;
        let mut next_lsn = first_lsn;
        let mut group_bytes = 0;
        self.changes.clear();
        // Rounds: gather what is ready, apply it in key order, and go on with what became ready
        // meanwhile, while the group has room (so that a backlog that builds during a round's
        // apply joins the group, as it did when each record was applied as it was read: fewer,
        // larger groups copy fewer LMDB pages in all).
        loop {
            while group_bytes < group_bytes_max
                && self.changes.ops < ops_max
                && !self.changes.is_full()
            {
                let pages_max = run_pages_max(group_bytes_max, group_bytes);
                let Some(run) = self.cursor.next_run(pages_max)? else {
                    break;
                };
                for page in run.pages() {
                    // The history is the pages [first_lsn, last_lsn), contiguous, in order.
                    assert_eq!(page.lsn(), next_lsn, "a group's pages are contiguous");
                    let page_index = (next_lsn - first_lsn) as u32;
                    next_lsn += 1;
                    group_bytes += page.compact_bytes().len();
                    self.feed.gather(
                        page,
                        page_index,
                        &mut self.state.applied_seq_end,
                        &mut self.changes,
                    )?;
                }
            }
            if self.changes.is_empty() {
                break;
            }
            self.apply_gathered(first_lsn, wtxn, tables)?;
        }
        let last_lsn = self.cursor.position();
        assert_eq!(
            last_lsn, next_lsn,
            "every page the cursor passed is in the group"
        );
        if self.changes.ops >= ops_max {
            tracing::debug!(
                ops = self.changes.ops,
                ops_max,
                "group ended at its changed-pages budget"
            );
        }
        self.state.binlog_next_lsn = last_lsn;
        self.state.replay_lsn = self.feed.open_record_lsn.unwrap_or(last_lsn);
        // Recovery replays the binlog from `replay_lsn`, and a snapshot stream with it above its
        // LSN is refused: the open record began in a page already in the binlog.
        assert!(
            self.state.replay_lsn <= last_lsn,
            "replay starts in the binlog"
        );
        store.put_apply_state(wtxn, &self.state)?;
        store.trim_binlog(wtxn, retain_bytes, older_than, self.state.replay_lsn)?;
        // Before the commit: LMDB may write this group's meta page to disk any time after it.
        self.inner.log.make_durable_below(last_lsn)?;
        Ok(())
    }

    /// Applies what the group gathered so far (see `key_order.rs`) in its transaction.
    fn apply_gathered<'e>(
        &mut self,
        first_lsn: u64,
        wtxn: &mut heed::RwTxn<'e>,
        tables: &mut GroupTables<'_, '_, 'e>,
    ) -> Result<()> {
        let (value, conflicts) = (&mut self.feed.value, &mut self.feed.conflicts);
        self.changes
            .apply(&self.cursor, first_lsn, |step| match step {
                Step::Put {
                    table,
                    key,
                    seq,
                    value: bytes,
                } => tables.put(table, key, seq, bytes, value, wtxn),
                Step::Delete { table, key } => tables.delete(table, key, wtxn),
                Step::Record { seq, bytes } => {
                    if !apply_record(seq, bytes, value, wtxn, tables)? {
                        conflicts.push(seq);
                    }
                    Ok(())
                }
            })
    }
}

/// A table handle inside the group's transaction: an existing table (`'static`, which coerces)
/// or one the transaction just created.
type TxnTable<'e> = heed::Database<'e, Bytes, Bytes>;

/// The tables a group writes: the store's, plus any the group's transaction creates.
///
/// A table *exists* while `__meta` holds its `table:NAME` key (what [`Database::tables`] lists).
/// Its LMDB database outlives a drop, emptied: LMDB's named databases are cheap, a handle the
/// store holds stays valid, and a snapshot begun before the drop keeps reading what it saw (the
/// drop's clearing is transactional like any write). A table revived by a put or a create
/// reuses it.
struct GroupTables<'s, 'g, 'e> {
    store: &'s Store,
    wdo: &'g heed::DatabaseOpener<'e, heed::WithTls>,
    /// LMDB databases this group's transaction created (opened by name once it commits).
    created: HashMap<String, TxnTable<'e>>,
    /// Tables known to exist in this group's transaction (their `table:` key checked or put).
    live: HashMap<String, TxnTable<'e>>,
    /// Tables this group made exist (true) or dropped (false), as it left them.
    existence: HashMap<String, bool>,
    /// Held from the first table creation until the new handles are registered (`Store::table_gate`).
    gate: Option<std::sync::RwLockWriteGuard<'s, ()>>,
    /// The table the previous operation named: batches mostly write one table, and the store's
    /// lookup (a lock and a hash) showed up at 4% of a replica's apply profile.
    last: Option<(String, TxnTable<'e>)>,
}

/// `__meta`'s key for table `name`: present while the table exists.
fn table_key(name: &str) -> Vec<u8> {
    let mut key = b"table:".to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

impl<'e> GroupTables<'_, '_, 'e> {
    /// The table to write, created (or revived after a drop) if it does not exist.
    fn get(&mut self, name: &str, wtxn: &mut heed::RwTxn<'e>) -> Result<TxnTable<'e>> {
        if let Some((last, table)) = &self.last {
            if last == name {
                return Ok(*table);
            }
        }
        let table = self.find_or_create(name, wtxn)?;
        match &mut self.last {
            Some((last, cached)) => {
                last.clear();
                last.push_str(name);
                *cached = table;
            }
            None => self.last = Some((name.to_string(), table)),
        }
        Ok(table)
    }

    /// The table's LMDB database, if it has one (existing, or dropped and emptied): for reads,
    /// which create nothing. A table with none is empty.
    fn find(&self, name: &str) -> Option<TxnTable<'e>> {
        self.live
            .get(name)
            .or_else(|| self.created.get(name))
            .copied()
            .or_else(|| self.store.table(name))
    }

    fn find_or_create(&mut self, name: &str, wtxn: &mut heed::RwTxn<'e>) -> Result<TxnTable<'e>> {
        if let Some(table) = self.live.get(name) {
            return Ok(*table);
        }
        let key = table_key(name);
        let listed = (self.store.meta)
            .get(wtxn, &key)
            .map_err(self.store.lmdb("read table"))?
            .is_some();
        let table = match self.find(name) {
            Some(table) => table,
            None => {
                if self.gate.is_none() {
                    self.gate = Some(
                        self.store
                            .table_gate
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner),
                    );
                }
                let lmdb = self.store.lmdb("create table");
                let table: TxnTable<'e> =
                    self.wdo.create_database(wtxn, Some(name)).map_err(lmdb)?;
                self.created.insert(name.to_string(), table);
                table
            }
        };
        if !listed {
            self.store
                .meta
                .put(wtxn, &key, b"")
                .map_err(self.store.lmdb("register table"))?;
            self.existence.insert(name.to_string(), true);
        }
        self.live.insert(name.to_string(), table);
        Ok(table)
    }

    /// Puts `key` = `value`, versioned `seq` (encoded in `value_buf`), creating the table if it
    /// does not exist.
    fn put(
        &mut self,
        table: &str,
        key: &[u8],
        seq: u64,
        value: &[u8],
        value_buf: &mut Vec<u8>,
        wtxn: &mut heed::RwTxn<'e>,
    ) -> Result<()> {
        encode_value(value_buf, seq, value);
        let t = self.get(table, wtxn)?;
        t.put(wtxn, key, value_buf).map_err(self.store.lmdb("put"))
    }

    /// Deletes `key`. A delete creates nothing: a table that does not exist holds no key.
    fn delete(&mut self, table: &str, key: &[u8], wtxn: &mut heed::RwTxn<'e>) -> Result<()> {
        match self.find(table) {
            Some(t) => t
                .delete(wtxn, key)
                .map(drop)
                .map_err(self.store.lmdb("delete")),
            None => Ok(()),
        }
    }

    /// Empties the table, if it has a database; with `drop`, it also stops existing.
    fn clear(&mut self, name: &str, drop: bool, wtxn: &mut heed::RwTxn<'e>) -> Result<()> {
        if let Some(table) = self.find(name) {
            table.clear(wtxn).map_err(self.store.lmdb("clear table"))?;
        }
        if drop {
            self.live.remove(name);
            if self.last.as_ref().is_some_and(|(last, _)| last == name) {
                self.last = None;
            }
            let was_listed = (self.store.meta)
                .delete(wtxn, &table_key(name))
                .map_err(self.store.lmdb("unregister table"))?;
            if was_listed || self.existence.contains_key(name) {
                self.existence.insert(name.to_string(), false);
            }
        }
        Ok(())
    }
}

/// What a scan of `range` in `table` sees in `wtxn`: entries and their greatest version (the
/// pair a transaction's range read is validated by, `record::RangeRead`).
fn range_fingerprint(
    table: Option<TxnTable<'_>>,
    wtxn: &heed::RwTxn<'_>,
    range: &(std::ops::Bound<&[u8]>, std::ops::Bound<&[u8]>),
    store: &Store,
) -> Result<(u64, u64)> {
    let Some(table) = table else {
        return Ok((0, 0));
    };
    let (mut count, mut max) = (0u64, 0u64);
    for entry in table.range(wtxn, range).map_err(store.lmdb("read range"))? {
        let (_, stored) = entry.map_err(store.lmdb("read range"))?;
        count += 1;
        max = max.max(value_seq(stored)?);
    }
    Ok((count, max))
}

/// Pages to take next: what is left of the group's byte budget, at least one page, at most
/// `RUN_PAGES_MAX`.
fn run_pages_max(group_bytes_max: usize, group_bytes: usize) -> usize {
    (group_bytes_max.saturating_sub(group_bytes) / PAGE_SIZE).clamp(1, RUN_PAGES_MAX)
}

/// The applier's decoding state: the record reader, where the record it holds open began (the
/// next `replay_lsn`), and reused buffers.
pub(crate) struct RecordFeed {
    reader: RecordReader,
    open_record_lsn: Option<u64>,
    value: Vec<u8>,
    conflicts: Vec<u64>,
    /// Records applied in the current group.
    records_applied: u64,
}

impl RecordFeed {
    /// A feed with no record open.
    pub fn new() -> Self {
        Self {
            reader: RecordReader::new(),
            open_record_lsn: None,
            value: Vec::new(),
            conflicts: Vec::new(),
            records_applied: 0,
        }
    }

    /// Feeds one page whose records were all applied before, to rebuild the reader's state and
    /// the open record's LSN (recovery, from the binlog); nothing is applied.
    pub fn replay_page(&mut self, page: PageRef<'_>, applied_seq_end: u64) -> Result<()> {
        self.reader.feed(page, |record| {
            debug_assert!(
                record.seq < applied_seq_end,
                "binlog holds an unapplied record"
            );
        })?;
        self.track_open_record(page);
        Ok(())
    }

    /// If a record is open after `page` and one started in it, the open one is the last that
    /// started there; otherwise it is the one that was already open.
    fn track_open_record(&mut self, page: PageRef<'_>) {
        self.open_record_lsn = if !self.reader.is_mid_record() {
            None
        } else if page.header().first_record_offset().is_some() {
            Some(page.lsn())
        } else {
            self.open_record_lsn
        };
    }

    /// Feeds the group's `page_index`-th page to the reader and gathers each record that
    /// completes in it into `changes`, to be applied at the end of the round.
    fn gather(
        &mut self,
        page: PageRef<'_>,
        page_index: u32,
        applied_seq_end: &mut u64,
        changes: &mut GroupChanges,
    ) -> Result<()> {
        let mut records: Vec<(u64, Cow<'_, [u8]>)> = Vec::new();
        self.reader
            .feed(page, |record| records.push((record.seq, record.bytes)))?;
        for (seq, bytes) in records {
            if seq < *applied_seq_end {
                continue; // applied before a crash; replayed only to rebuild the reader
            }
            changes.gather(seq, bytes, page, page_index)?;
            *applied_seq_end = seq + 1;
            self.records_applied += 1;
        }
        self.track_open_record(page);
        Ok(())
    }
}

/// Lowers the calling thread's CPU priority by `steps` nice steps, at most to 19 (see
/// [`Options::apply_nice`](crate::Options::apply_nice)). On Linux `setpriority` with pid 0
/// names the calling thread alone; a thread starts with its creator's nice value.
fn lower_priority(steps: i32) {
    if steps <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let lowered = getpriority_process(None).and_then(|nice| {
            let wanted = nice.saturating_add(steps).min(19);
            setpriority_process(None, wanted).map(|()| wanted)
        });
        match lowered {
            Ok(nice) => tracing::debug!(nice, "applier runs at a lower CPU priority"),
            Err(error) => tracing::warn!(
                %error,
                steps,
                "could not lower the applier's CPU priority; it keeps its opener's"
            ),
        }
    }
}

/// Applies one record; returns false if it is a transaction whose reads were stale (skipped).
fn apply_record<'e>(
    seq: u64,
    bytes: &[u8],
    value_buf: &mut Vec<u8>,
    wtxn: &mut heed::RwTxn<'e>,
    tables: &mut GroupTables<'_, '_, 'e>,
) -> Result<bool> {
    let store = tables.store;
    let lmdb = |op: &'static str| store.lmdb(op);
    let record = decode(bytes)?;
    for read in record.reads() {
        let current = match tables.find(read.table) {
            None => None,
            Some(table) => match table.get(wtxn, read.key).map_err(lmdb("read version"))? {
                Some(stored) => Some(value_seq(stored)?),
                None => None,
            },
        };
        if current != read.version {
            tracing::debug!(seq, table = read.table, "transaction skipped: stale read");
            return Ok(false);
        }
    }
    for range in record.range_reads() {
        let bounds = (range.start, range.end);
        let seen = range_fingerprint(tables.find(range.table), wtxn, &bounds, store)?;
        if seen != (range.count, range.max_version) {
            tracing::debug!(seq, table = range.table, "transaction skipped: stale range");
            return Ok(false);
        }
    }
    for op in record.ops() {
        match *op {
            Op::Put { table, key, value } => tables.put(table, key, seq, value, value_buf, wtxn)?,
            Op::Delete { table, key } => tables.delete(table, key, wtxn)?,
            Op::CreateTable { table: name } => {
                tables.get(name, wtxn)?;
            }
            Op::ClearTable { table: name } => tables.clear(name, false, wtxn)?,
            Op::DropTable { table: name } => tables.clear(name, true, wtxn)?,
        }
    }
    Ok(true)
}

/// What the applier has done since the database was opened: how group commit adapted.
#[derive(Debug, Default)]
pub(crate) struct ApplyStats {
    groups: AtomicU64,
    pages: AtomicU64,
    records: AtomicU64,
    largest_group_records: AtomicU64,
}

impl ApplyStats {
    /// The counters now, for [`Database::stats`].
    pub(crate) fn reading(&self) -> Stats {
        Stats {
            groups: self.groups.load(Ordering::Relaxed),
            pages: self.pages.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            largest_group_records: self.largest_group_records.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn record_group(&self, pages: u64, records: u64) {
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.pages.fetch_add(pages, Ordering::Relaxed);
        self.records.fetch_add(records, Ordering::Relaxed);
        self.largest_group_records
            .fetch_max(records, Ordering::Relaxed);
    }
}

/// A reading of [`Database::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// LMDB write transactions the applier committed.
    pub groups: u64,
    /// Log pages applied.
    pub pages: u64,
    /// Records applied.
    pub records: u64,
    /// Records in the largest group.
    pub largest_group_records: u64,
}

/// Runs its closure if dropped while the thread unwinds from a panic, and not otherwise.
struct OnUnwind<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnUnwind<F> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.0)();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::OnUnwind;

    #[test]
    fn on_unwind_runs_only_when_the_thread_panics() {
        let ran = AtomicBool::new(false);
        drop(OnUnwind(|| ran.store(true, Ordering::Relaxed)));
        assert!(!ran.load(Ordering::Relaxed), "ran without a panic");
        let ran = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&ran);
        let outcome = std::thread::spawn(move || {
            let _guard = OnUnwind(|| seen.store(true, Ordering::Relaxed));
            panic!("an invariant check failed");
        })
        .join();
        assert!(outcome.is_err());
        assert!(ran.load(Ordering::Relaxed), "did not run on the panic");
    }
}
