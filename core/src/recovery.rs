//! Recovery on open: where the applier resumes, and what it must know when it does.
//!
//! LMDB's `__meta` says how far the last committed group reached (the apply state: see
//! `store.rs`). The log's segments say what was committed to the ring since. The ring is the
//! write-ahead log: LMDB's state on disk may lag it (the applier runs off the commit path, and a
//! power loss may roll LMDB back by its latest group, `store.rs`, Syncs), and the applier releases
//! a ring page only once LMDB's state past it is on disk (`apply.rs`). Recovery joins the two:
//!
//! 1. The ring opens with `recover_from = binlog_next_lsn`: its recovery starts at the first page
//!    LMDB lacks, not at the horizon persisted in the ring header (after a power loss that header
//!    may be older than slots already reused, and recovery from it could stop short of durable
//!    pages). Those slots were never released, so they still hold their pages; recovery keeps the
//!    run of valid pages (crc, header, the LSN of their slot) from there up to the first gap, and
//!    invalidates every other slot. `next_lsn_min = binlog_next_lsn` too, so LSNs never fall
//!    back below what the binlog holds (a new or shorter ring continues at the binlog's end).
//! 2. If the ring's run starts *above* `binlog_next_lsn`, pages in between are in neither: the
//!    open fails with [`Error::NotADatabase`] rather than apply a log with a hole.
//! 3. The applier's record reader is rebuilt from the history pages in `[replay_lsn,
//!    binlog_next_lsn)` (the log's segments, which the applier made durable before LMDB recorded
//!    them applied: `binlog.rs`): a record that was still open when the last group committed
//!    began at `replay_lsn`, and its remaining pages are in the ring.
//! 4. The applier's cursor starts at `binlog_next_lsn`. The recovered ring pages are then applied
//!    as any other group would be, in order; records below `applied_seq_end` (applied before the
//!    crash, replayed only to rebuild the reader) are skipped by seq.
//!
//! So nothing committed to the ring's finished prefix is lost by a process crash, nothing below
//! the ring's durable watermark is lost by a power loss, and nothing is applied twice.
//!
//! # Epochs after an unclean stop
//!
//! After a power loss, pages at or above the durable watermark may be gone, and the log continues
//! at the first gap recovery found: new records take LSNs the lost pages had. Those pages may
//! have reached a replica first (shipping does not wait for the flush). So a writer that restarts
//! after an *unclean* stop takes a new epoch, above every epoch its pages ever carried, and a
//! replica can tell the new pages from the lost ones under the same LSN (and refuse, or truncate,
//! what it holds of the old epoch). `__meta` keeps the session's `epoch` and a `clean_stop` flag
//! (`store.rs`):
//!
//! - on open, a writer reads them: the last session stopped cleanly if `clean_stop` = 1; an
//!   absent flag (a restore, a database from before the flag) counts as unclean, unless no
//!   session ever started and the binlog is empty (a new database);
//! - the new session's epoch is the highest known (`epoch`, the binlog's last page, every page the
//!   ring recovered), plus one if the last stop was unclean;
//! - it writes that epoch and `clean_stop` = 0 and syncs them, before the log takes any record:
//!   every page of an epoch is written after the epoch is on disk, so after any crash the stored
//!   epoch is at least every page's, lost pages included;
//! - a clean close (`database.rs`, `Closer`) writes `clean_stop` = 1 and syncs, only after the
//!   applier applied everything and LMDB's state is on disk: nothing committed can be lost then.
//!
//! A process crash (SIGKILL) loses nothing, but it looks the same as a power loss from here and
//! takes an epoch too: epochs are cheap. A replica does none of this: its pages carry its origin's
//! epochs.

use std::path::Path;

use pagemesh_logpage::{Cursor, Log, LogOptions};

use crate::apply::RecordFeed;
use crate::binlog::history_pages;
use crate::error::{Error, Result};
use crate::options::Options;
use crate::store::{ApplyState, Store};

/// What recovery hands the applier: the log, a cursor at the first page LMDB lacks, the apply
/// state and the rebuilt record feed.
pub(crate) struct Recovery {
    pub log: Log,
    pub cursor: Cursor,
    pub state: ApplyState,
    pub feed: RecordFeed,
}

/// Opens the log ring of the database in `dir` (which takes the ring's lock; `Database::open`
/// probed it before opening LMDB) and recovers (see the module docs).
pub(crate) fn recover(dir: &Path, store: &Store, options: &Options) -> Result<Recovery> {
    let (state, last) = {
        let rtxn = store.env.read_txn().map_err(store.lmdb("begin"))?;
        (store.apply_state(&rtxn)?, store.last_session(&rtxn)?)
    };
    let fresh = state.binlog_next_lsn == 0 && !last.started;
    let mut log_options = LogOptions::new()
        .slots(options.ring_slots)
        .next_lsn_min(state.binlog_next_lsn)
        .recover_from(state.binlog_next_lsn)
        .follower(store.is_replica)
        .keep_history(true)
        .flush_pace(options.flush_pace_for(store.is_replica));
    let new_epoch = !store.is_replica && !last.clean && !fresh;
    if !store.is_replica {
        log_options = log_options
            .epoch(last.epoch + u64::from(new_epoch))
            .epoch_above_recovered(new_epoch);
    }
    if let Some(tune) = &options.log_tune {
        log_options = (tune.0)(log_options);
    }
    let log = Log::open(dir, log_options)?;
    let recovered = log.recovered();
    if recovered.start_lsn > state.binlog_next_lsn {
        return Err(Error::NotADatabase {
            path: dir.into(),
            why: "the log ring lost pages the binlog does not have",
        });
    }
    // From the first open by this version on, the history is in the log's segments; the sync
    // below (or `begin_session`'s) puts the record on disk before the log takes a page.
    store.begin_history(state.binlog_next_lsn)?;
    if store.is_replica {
        // The applier's cursor starts released at `binlog_next_lsn`: that must be on disk
        // (`apply.rs`, When ring pages are released), and a killed session may have left its
        // last group's meta page unsynced. A writer's `begin_session` syncs the same way.
        store.sync()?;
    } else {
        store.begin_session(log.epoch())?;
    }
    let feed = replay(store, &state)?;
    tracing::info!(
        path = %dir.display(),
        applied_lsn = state.binlog_next_lsn,
        replica = store.is_replica,
        ring_end_lsn = recovered.end_lsn,
        pages_to_recover = recovered.end_lsn.saturating_sub(state.binlog_next_lsn),
        epoch = log.epoch(),
        new_epoch,
        "opened database"
    );
    let cursor = log.cursor(state.binlog_next_lsn)?;
    Ok(Recovery {
        log,
        cursor,
        state,
        feed,
    })
}

/// A feed for a database whose apply state is `state`: the reader is rebuilt from the history
/// pages in `[replay_lsn, binlog_next_lsn)`, where a record still open when the last group
/// committed began: in the log's segments, or in the old `__binlog` below `history_from`.
fn replay(store: &Store, state: &ApplyState) -> Result<RecordFeed> {
    let mut feed = RecordFeed::new();
    if state.replay_lsn >= state.binlog_next_lsn {
        return Ok(feed);
    }
    let rtxn = store.env.read_txn().map_err(store.lmdb("begin"))?;
    let history_from = store.history_from(&rtxn)?.unwrap_or(state.binlog_next_lsn);
    if state.replay_lsn < history_from {
        let first_group =
            store
                .binlog_group_at(&rtxn, state.replay_lsn)?
                .ok_or(Error::NotADatabase {
                    path: store.path.clone(),
                    why: "binlog lacks the replay start",
                })?;
        for page in store.binlog_pages_from(&rtxn, &first_group)? {
            let page = page?;
            if page.lsn() < state.replay_lsn || page.lsn() >= history_from {
                continue;
            }
            feed.replay_page(page, state.applied_seq_end)?;
        }
    }
    let from = state.replay_lsn.max(history_from);
    for page in history_pages(store, from, state.binlog_next_lsn)? {
        feed.replay_page(page?.page(), state.applied_seq_end)?;
    }
    Ok(feed)
}
