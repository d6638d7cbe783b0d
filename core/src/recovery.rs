//! Recovery on open: where the applier resumes, and what it must know when it does.
//!
//! LMDB's `__meta` says how far the last committed group reached (the apply state: see
//! `store.rs`). The log ring file says what was committed to the ring since: on open, logpage
//! keeps the run of finished pages with a valid crc that follows its persisted horizon, up to
//! the first gap, and continues the log after it. Recovery joins the two:
//!
//! 1. The ring opens with `next_lsn_min = binlog_next_lsn`, so its LSNs never fall back below
//!    what the binlog holds (a new or shorter ring continues at the binlog's end), and recovered
//!    pages below it are dropped: the binlog has them.
//! 2. If the ring's run starts *above* `binlog_next_lsn`, pages in between are in neither: the
//!    open fails with [`Error::NotADatabase`] rather than apply a log with a hole.
//! 3. The applier's record reader is rebuilt from the binlog pages in `[replay_lsn,
//!    binlog_next_lsn)`: a record that was still open when the last group committed began at
//!    `replay_lsn`, and its remaining pages are in the ring.
//! 4. The applier's cursor starts at `binlog_next_lsn`. The recovered ring pages are then applied
//!    as any other group would be, in order; records below `applied_seq_end` (applied before the
//!    crash, replayed only to rebuild the reader) are skipped by seq.
//!
//! So nothing committed to the ring's finished prefix is lost by a process crash, and nothing is
//! applied twice.

use std::path::Path;

use pagemesh_logpage::{Cursor, Log, LogOptions};

use crate::apply::RecordFeed;
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

/// Opens the log ring of the database in `dir` and recovers (see the module docs). The caller
/// holds the ring's lock already (`Database::open`).
pub(crate) fn recover(dir: &Path, store: &Store, options: &Options) -> Result<Recovery> {
    let state = {
        let rtxn = store.env.read_txn().map_err(store.lmdb("begin"))?;
        store.apply_state(&rtxn)?
    };
    let log = Log::open(
        dir,
        LogOptions::new()
            .slots(options.ring_slots)
            .next_lsn_min(state.binlog_next_lsn)
            .follower(store.is_replica),
    )?;
    let recovered = log.recovered();
    if recovered.start_lsn > state.binlog_next_lsn {
        return Err(Error::NotADatabase {
            path: dir.into(),
            why: "the log ring lost pages the binlog does not have",
        });
    }
    let feed = replay(store, &state)?;
    tracing::info!(
        path = %dir.display(),
        applied_lsn = state.binlog_next_lsn,
        replica = store.is_replica,
        ring_end_lsn = recovered.end_lsn,
        pages_to_recover = recovered.end_lsn.saturating_sub(state.binlog_next_lsn),
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

/// A feed for a database whose apply state is `state`: the reader is rebuilt from the binlog
/// pages in `[replay_lsn, binlog_next_lsn)`, where a record still open when the last group
/// committed began.
fn replay(store: &Store, state: &ApplyState) -> Result<RecordFeed> {
    let mut feed = RecordFeed::new();
    if state.replay_lsn >= state.binlog_next_lsn {
        return Ok(feed);
    }
    let rtxn = store.env.read_txn().map_err(store.lmdb("begin"))?;
    let first_group =
        store
            .binlog_group_at(&rtxn, state.replay_lsn)?
            .ok_or(Error::NotADatabase {
                path: store.path.clone(),
                why: "binlog lacks the replay start",
            })?;
    for page in store.binlog_pages_from(&rtxn, &first_group)? {
        let page = page?;
        if page.lsn() < state.replay_lsn || page.lsn() >= state.binlog_next_lsn {
            continue;
        }
        feed.replay_page(page, state.applied_seq_end)?;
    }
    Ok(feed)
}
