//! What survives a power loss: pages below the durable watermark, and nothing beyond the first
//! page a power loss damaged.
//!
//! Each test writes records, makes some durable with `wait_durable`, commits more without syncing
//! them, closes the log, and then damages the ring file the way a power loss may damage what no
//! completed sync covered (garbled, zeroed or torn pages; the file length is fixed at creation).
//! Reopened, the log must hold every durable record intact, validate every page it recovered, and
//! end at the first damaged page. A second test shows why a store passes `recover_from` after a
//! power loss: a ring header older than the slots it describes makes recovery stop short.

mod common;

use common::{check_record, damage_beyond, drain_all, make_record, Damage};
use pagemesh_logpage::{Log, LogOptions, RecordReader, PAGE_SIZE};
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
        let path = dir.path().join("log.ring");
        let damaged = damage_beyond(&path, SLOTS, durable_lsn, &[kind], 1.0, &mut rng);
        assert!(damaged as u64 >= SLOTS - durable_lsn, "{kind:?}");

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
fn recover_from_survives_a_ring_header_older_than_its_slots() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.ring");
    // A consumer releases everything, so the horizon passes whole laps and slots are reused.
    let (horizon, durable_lsn, header) = {
        let log = Log::open(dir.path(), LogOptions::new().slots(SLOTS)).unwrap();
        let mut cursor = log.cursor(0).unwrap();
        let mut reader = RecordReader::new();
        let header_at_start = std::fs::read(&path).unwrap()[..PAGE_SIZE].to_vec();
        for index in 0..300 {
            let pos = log.append(&make_record(0, index, 700)).unwrap();
            assert!(log.wait_durable(pos, None).unwrap());
            common::drain(&mut cursor, &mut reader, &mut Vec::new());
        }
        let horizon = log.horizon_lsn();
        assert!(horizon > SLOTS, "the ring wrapped");
        (horizon, log.durable_lsn(), header_at_start)
    };
    // A power loss that kept the slots but not the header's last horizon.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..PAGE_SIZE].copy_from_slice(&header);
    std::fs::write(&path, &bytes).unwrap();

    let log = Log::open(dir.path(), LogOptions::new().slots(SLOTS)).unwrap();
    assert!(
        log.recovered().end_lsn < horizon,
        "from the stale header, recovery stops short: {:?}",
        log.recovered()
    );
    drop(log);
    // That reopen invalidated every page outside its short run: put the power loss's file back.
    std::fs::write(&path, &bytes).unwrap();
    let options = LogOptions::new().slots(SLOTS).recover_from(horizon);
    let log = Log::open(dir.path(), options).unwrap();
    assert_eq!(log.recovered().start_lsn, horizon);
    assert_eq!(log.recovered().end_lsn, durable_lsn);
}

/// A page reaches the ring file (the page cache: what a process crash keeps) before the
/// committed watermark passes it, without a sync: the thread that finishes a page writes it
/// through. Read back from the file while the log is open, every page the ring still holds is
/// there, whole, in its slot, laps of the ring included.
#[test]
fn committed_pages_are_in_the_ring_file_before_any_sync() {
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
    let file = std::fs::read(dir.path().join("log.ring")).unwrap();
    for lsn in committed - SLOTS..committed {
        let at = PAGE_SIZE * (1 + (lsn % SLOTS) as usize);
        let page = pagemesh_logpage::validate(&file[at..at + PAGE_SIZE])
            .unwrap_or_else(|error| panic!("page {lsn} in the file: {error}"));
        assert_eq!(page.lsn(), lsn);
    }
}
