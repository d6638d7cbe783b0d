//! How large an applied group may grow (`pagemesh_core`'s apply module, Group size), on real
//! LMDB files: once the tables hold more pages than `Options::group_dirty_bytes_max`, a group
//! ends at the first run of ready log pages that brings its operations to that budget in pages,
//! since LMDB keeps a copy of every page a transaction changed until the database closes; a
//! database smaller than the budget applies a whole backlog at once.
//!
//! The applier's pace is an hour, so every `Durable` commit below stays in the log until the
//! last commit, which waits for `Applied`, hurries the applier: the backlog is then applied in
//! as few groups as the limits allow, whatever the timing.

use std::collections::VecDeque;
use std::time::Duration;

use pagemesh_core::{CommitTicket, Database, Durability, Options, WriteBatch};

/// The budget: 256 pages.
const BUDGET_BYTES: usize = 1 << 20;
const BUDGET_PAGES: u64 = (BUDGET_BYTES / 4096) as u64;
/// Records per load: about 3.4 MB of log, under a quarter of the default ring (so the pace's
/// backlog never ends the wait) and under `group_bytes_max` (8 MiB), and about a thousand
/// LMDB pages, well over the budget.
const RECORDS: u64 = 20_000;
const VALUE: [u8; 150] = [b'v'; 150];
/// The most records one run of ready pages (64 pages) can complete: a record here takes more
/// than 150 bytes of a 4 KiB page.
const RUN_RECORDS_MAX: u64 = 64 * 4096 / 150;

fn options() -> Options {
    Options::new()
        .group_dirty_bytes_max(BUDGET_BYTES)
        .apply_pace(Duration::from_secs(3600), 8 << 20)
}

/// Keys spread over the whole key space, as random keys would be, and distinct.
fn key(index: u64) -> [u8; 8] {
    index.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()
}

/// Commits records `from..from + RECORDS`, one put each, 256 in flight, `Durable`; then one
/// more that waits for `Applied`, so that all of them are applied when it returns.
fn load(db: &Database, from: u64) {
    let mut tickets: VecDeque<CommitTicket> = VecDeque::new();
    for index in from..from + RECORDS {
        let mut batch = WriteBatch::new();
        batch.put("t", &key(index), &VALUE).unwrap();
        if tickets.len() == 256 {
            tickets.pop_front().unwrap().wait().unwrap();
        }
        tickets.push_back(db.commit_async(&batch, Durability::Durable).unwrap());
    }
    for ticket in tickets {
        ticket.wait().unwrap();
    }
    let mut last = WriteBatch::new();
    last.put("last", b"key", b"value").unwrap();
    db.commit(&last, Durability::Applied).unwrap();
}

#[test]
fn a_large_database_applies_a_backlog_in_groups_bounded_by_the_pages_they_may_change() {
    let dir = tempfile::tempdir().unwrap();
    // First, tables larger than the budget.
    load(&Database::open(dir.path(), options()).unwrap(), 0);
    // Reopened, so that the applier's counters start again.
    let db = Database::open(dir.path(), options()).unwrap();
    load(&db, RECORDS);
    let stats = db.stats();
    assert!(
        stats.largest_group_records <= BUDGET_PAGES + RUN_RECORDS_MAX,
        "a group applied {} records, over the budget's {BUDGET_PAGES} and a run's \
         {RUN_RECORDS_MAX}: {stats:?}",
        stats.largest_group_records
    );
    assert!(
        stats.groups >= (RECORDS + 1).div_ceil(BUDGET_PAGES + RUN_RECORDS_MAX),
        "{stats:?}"
    );
    // Every record of both loads is there.
    let snapshot = db.read().unwrap();
    for index in 0..2 * RECORDS {
        let found = snapshot.get("t", &key(index)).unwrap();
        assert_eq!(found.map(|value| value.bytes), Some(&VALUE[..]), "{index}");
    }
}

#[test]
fn a_database_smaller_than_the_budget_applies_a_backlog_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    load(&db, 0);
    let stats = db.stats();
    // The tables were empty when the backlog's group began: nothing limited it.
    assert_eq!(stats.largest_group_records, RECORDS + 1, "{stats:?}");
}
