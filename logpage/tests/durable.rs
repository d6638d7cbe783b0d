//! What survives a power loss: pages below the durable watermark, and nothing beyond the first
//! page a power loss damaged.
//!
//! Each test writes records, makes some durable with `wait_durable`, commits more without syncing
//! them, closes the log, and then damages its segments the way a power loss may damage what no
//! completed sync covered (garbled, zeroed or torn pages; a segment's length is fixed when it is
//! installed). Reopened, the log must hold every durable record intact, validate every page it
//! recovered, and end at the first damaged page. A second test plays a power loss that kept an
//! older head than the last one written: recovery still finds every durable page.

mod common;

use common::{check_record, damage_beyond, drain_all, make_record, Damage};
use pagemesh_logpage::{Log, LogOptions, RecordReader};
use rand::{rngs::SmallRng, SeedableRng};

const SLOTS: u64 = 32;

/// Record lengths: small ones, and one spanning pages.
fn len_of(index: u32) -> usize {
    if index % 7 == 3 {
        6_000
    } else {
        40 + (index as usize * 37) % 500
    }
}

#[test]
fn damage_beyond_the_durable_watermark_ends_the_log_there() {
    for kind in Damage::ALL {
        let dir = tempfile::tempdir().unwrap();
        let (durable_records, durable_lsn) = {
            let log = Log::open(dir.path(), LogOptions::new().slots(SLOTS)).unwrap();
            let mut last = None;
            for index in 0..20 {
                last = Some(log.append(&make_record(0, index, len_of(index))).unwrap());
            }
            assert!(log.wait_durable(last.unwrap(), None).unwrap());
            let durable_lsn = log.durable_lsn();
            for index in 20..30 {
                log.append(&make_record(0, index, len_of(index))).unwrap();
            }
            log.seal();
            assert!(
                log.committed_lsn() > durable_lsn,
                "pages beyond the durable ones"
            );
            (20, durable_lsn)
        };
        let mut rng = SmallRng::seed_from_u64(7);
        // Every page the segments hold beyond the durable ones, written or not.
        let held = common::segments(dir.path()).len() as u64 * (SLOTS / 4);
        assert!(
            held > durable_lsn,
            "a segment holds pages beyond the durable ones"
        );
        let damaged = damage_beyond(dir.path(), SLOTS, durable_lsn, &[kind], 1.0, &mut rng);
        assert!(damaged as u64 >= held - durable_lsn, "{kind:?}");

        let log = Log::open(dir.path(), LogOptions::new().slots(SLOTS)).unwrap();
        let recovered = log.recovered();
        assert_eq!(
            recovered.end_lsn, durable_lsn,
            "{kind:?}: the log ends at the first damaged page"
        );
        let mut cursor = log.cursor(recovered.start_lsn).unwrap();
        let records = drain_all(&log, &mut cursor, &mut RecordReader::new());
        let indexes: Vec<u32> = records.iter().map(|(_, b)| check_record(b).1).collect();
        assert_eq!(
            indexes,
            (0..durable_records).collect::<Vec<_>>(),
            "{kind:?}"
        );
        // The log goes on from there, and what it writes next is recovered next time.
        let pos = log.append(&make_record(1, 0, 100)).unwrap();
        assert!(log.wait_durable(pos, None).unwrap());
        drop((cursor, log));
        let log = Log::open(dir.path(), LogOptions::new().slots(SLOTS)).unwrap();
        assert_eq!(log.recovered().end_lsn, pos.lsn_last + 1, "{kind:?}");
    }
}

#[test]
fn a_head_older_than_its_pages_still_finds_every_durable_page() {
    let dir = tempfile::tempdir().unwrap();
    // A consumer reads everything but releases only what is 28 pages behind it, so the horizon
    // moves a few pages at a time (each durable record has its own page): it passes whole laps,
    // slots are reused and segments retired, and it also stops inside segments.
    let (horizon, durable_lsn) = {
        let log = Log::open(dir.path(), LogOptions::new().slots(SLOTS)).unwrap();
        let mut cursor = log.cursor(0).unwrap();
        for index in 0..400 {
            let pos = log.append(&make_record(0, index, 700)).unwrap();
            assert!(log.wait_durable(pos, None).unwrap());
            while cursor.next_ready().unwrap().is_some() {}
            cursor.release(cursor.position().saturating_sub(28));
            if index >= 300 && !log.horizon_lsn().is_multiple_of(SLOTS / 4) {
                break;
            }
        }
        let horizon = log.horizon_lsn();
        assert!(horizon > 2 * SLOTS, "the ring wrapped twice");
        (horizon, log.durable_lsn())
    };
    // A power loss that kept the segments but not the head's last horizon: the oldest head it
    // can leave is the one synced before the last retirement, whose horizon was at least the
    // first page of the oldest segment still installed.
    let oldest = common::segments(dir.path())[0].0;
    assert!(
        oldest < horizon,
        "the horizon moved past the last retirement"
    );
    let head = dir.path().join("log.head");
    let mut bytes = std::fs::read(&head).unwrap();
    bytes[32..40].copy_from_slice(&oldest.to_le_bytes());
    std::fs::write(&head, &bytes).unwrap();

    let log = Log::open(dir.path(), LogOptions::new().slots(SLOTS)).unwrap();
    assert_eq!(
        log.recovered().end_lsn,
        durable_lsn,
        "{:?}",
        log.recovered()
    );
    assert!(log.recovered().start_lsn >= oldest);
    drop(log);
    // And from the store's own position.
    let options = LogOptions::new().slots(SLOTS).recover_from(horizon);
    let log = Log::open(dir.path(), options).unwrap();
    assert_eq!(log.recovered().start_lsn, horizon);
    assert_eq!(log.recovered().end_lsn, durable_lsn);
}

/// A page reaches its segment (the page cache: what a process crash keeps) before the committed
/// watermark passes it, without a sync: the thread that finishes a page writes it through. Read
/// back from the files while the log is open, every page the ring still holds is there, whole,
/// in its place, laps of the ring included.
#[test]
fn committed_pages_are_in_their_segments_before_any_sync() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::new().slots(SLOTS)).unwrap();
    let mut last = None;
    for index in 0..400 {
        last = Some(log.append(&make_record(0, index, len_of(index))).unwrap());
    }
    assert!(log.wait_committed(last.unwrap(), None).unwrap());
    let committed = log.committed_lsn();
    assert!(committed > 2 * SLOTS, "the ring lapped: {committed} pages");
    assert_eq!(log.durable_lsn(), 0, "nothing synced");
    // Segments below the horizon are retired: this log keeps no history.
    let horizon = log.horizon_lsn();
    assert!(
        committed - horizon > SLOTS / 2,
        "{horizon}..{committed} held"
    );
    for lsn in horizon..committed {
        let bytes = common::segment_page(dir.path(), SLOTS, lsn).expect("its segment");
        let page = pagemesh_logpage::validate(&bytes)
            .unwrap_or_else(|error| panic!("page {lsn} in its segment: {error}"));
        assert_eq!(page.lsn(), lsn);
    }
}
