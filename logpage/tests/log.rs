//! The log end to end: concurrent writers and a consumer, over a real ring file.
//!
//! Every test checks content, not counts: each record carries its writer and index and bytes
//! derived from them, so a record that is lost, duplicated, reordered within its writer, torn or
//! mixed with another shows up as a failed check.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{check_record, drain, drain_all, make_record};
use pagemesh_logpage::{Error, Log, LogOptions, RecordReader, PAYLOAD_SIZE};
use rand::{rngs::SmallRng, Rng, SeedableRng};

fn open(dir: &tempfile::TempDir, slots: u64) -> Log {
    Log::open(dir.path(), LogOptions::new().slots(slots)).expect("open log")
}

#[test]
fn concurrent_writers_and_a_consumer_see_every_record_once_in_order() {
    const WRITERS: u32 = 4;
    const PER_WRITER: u32 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    // A small ring (64 pages) so the writers wrap it many times under backpressure.
    let log = open(&dir, 64);
    let mut cursor = log.cursor(0).unwrap();
    let mut records = Vec::new();
    std::thread::scope(|s| {
        for writer in 0..WRITERS {
            let log = log.clone();
            s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(u64::from(writer));
                let mut last = None;
                for index in 0..PER_WRITER {
                    let len = if rng.random_ratio(1, 20) {
                        rng.random_range(4_000..20_000)
                    } else {
                        rng.random_range(8..300)
                    };
                    let pos = log.append(&make_record(writer, index, len)).unwrap();
                    assert!(
                        last < Some(pos.seq),
                        "a writer's records get increasing seqs"
                    );
                    last = Some(pos.seq);
                }
            });
        }
        let mut reader = RecordReader::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while records.len() < (WRITERS * PER_WRITER) as usize {
            assert!(
                Instant::now() < deadline,
                "consumer stalled at {} records",
                records.len()
            );
            cursor
                .wait_ready(Some(Instant::now() + Duration::from_millis(100)))
                .unwrap();
            drain(&mut cursor, &mut reader, &mut records);
        }
    });
    let mut next_index: HashMap<u32, u32> = HashMap::new();
    let mut last_seq = None;
    for (seq, bytes) in &records {
        assert!(last_seq < Some(*seq), "records come in seq order");
        last_seq = Some(*seq);
        let (writer, index) = check_record(bytes);
        let expected = next_index.entry(writer).or_default();
        assert_eq!(
            index, *expected,
            "writer {writer}: records in commit order, none lost"
        );
        *expected += 1;
    }
    assert_eq!(next_index.len(), WRITERS as usize);
    assert!(next_index.values().all(|&n| n == PER_WRITER));
}

#[test]
fn a_record_spanning_many_pages_is_reassembled() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir, 64);
    let mut cursor = log.cursor(0).unwrap();
    let big = make_record(1, 1, 20 * PAYLOAD_SIZE + 17);
    let small = make_record(2, 2, 30);
    log.append(&small).unwrap();
    let pos = log.append(&big).unwrap();
    log.append(&small).unwrap();
    assert_eq!(
        pos.lsn_last, 20,
        "starts 34 bytes in, ends 20 pages and 55 bytes later"
    );
    let records = drain_all(&log, &mut cursor, &mut RecordReader::new());
    let lens: Vec<usize> = records.iter().map(|(_, b)| b.len()).collect();
    assert_eq!(lens, [30, big.len(), 30]);
    assert_eq!(records[1].1, big);
}

#[test]
fn a_record_over_half_the_ring_is_refused_and_zero_length_too() {
    let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
    let max = log.record_len_max();
    assert_eq!(max, 8 * PAYLOAD_SIZE - 4);
    assert!(
        matches!(log.reserve(max + 1), Err(Error::RecordTooLarge { len, .. }) if len == max + 1)
    );
    assert!(matches!(log.reserve(0), Err(Error::EmptyRecord)));
    let mut cursor = log.cursor(0).unwrap();
    log.append(&make_record(0, 0, max)).unwrap();
    let records = drain_all(&log, &mut cursor, &mut RecordReader::new());
    assert_eq!(records.len(), 1);
    check_record(&records[0].1);
}

#[test]
fn a_dropped_or_incomplete_reservation_is_skipped_by_readers() {
    let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    log.append(&make_record(0, 0, 50)).unwrap();
    let mut dropped = log.reserve(6000).unwrap();
    dropped.write(&[1; 100]);
    drop(dropped);
    let mut short = log.reserve(10).unwrap();
    short.write(&[2; 5]);
    assert!(matches!(
        short.commit(),
        Err(Error::IncompleteReservation {
            written: 5,
            reserved: 10,
            ..
        })
    ));
    log.append(&make_record(0, 1, 50)).unwrap();
    let records = drain_all(&log, &mut cursor, &mut RecordReader::new());
    let indexes: Vec<u32> = records.iter().map(|(_, b)| check_record(b).1).collect();
    assert_eq!(indexes, [0, 1]);
}

#[test]
fn a_lone_commit_is_sealed_for_an_idle_consumer() {
    let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            // The consumer is idle: it must get the record without anyone calling seal().
            assert!(cursor
                .wait_ready(Some(Instant::now() + Duration::from_secs(20)))
                .unwrap());
            let page = cursor.next_ready().unwrap().unwrap();
            assert_eq!(
                page.payload().len(),
                4 + 10,
                "a partial page sealed right after one commit"
            );
        });
        std::thread::sleep(Duration::from_millis(50));
        log.append(&make_record(0, 0, 10)).unwrap();
    });
}

#[test]
fn wait_committed_seals_when_no_consumer_is_busy() {
    let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
    let pos = log.append(&make_record(0, 0, 10)).unwrap();
    assert_eq!(log.committed_lsn(), 0, "partial page not ready yet");
    assert!(log
        .wait_committed(pos, Some(Instant::now() + Duration::from_secs(20)))
        .unwrap());
    assert_eq!(log.committed_lsn(), 1);
}

#[test]
fn wait_in_ring_does_not_wait_for_a_busy_consumer() {
    let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    // The consumer gets a page and works on it (it does not come back to `wait_ready`): busy.
    log.append(&make_record(0, 0, 10)).unwrap();
    log.seal();
    assert!(cursor
        .wait_ready(Some(Instant::now() + Duration::from_secs(20)))
        .unwrap());
    let pos = log.append(&make_record(0, 1, 10)).unwrap();
    // Rule 3: `wait_committed` leaves the seal to the busy consumer, which is not done.
    assert!(!log
        .wait_committed(pos, Some(Instant::now() + Duration::from_millis(100)))
        .unwrap());
    assert_eq!(log.committed_lsn(), 1, "the second page is still open");
    // Rule 3b: `wait_in_ring` seals the page itself. On another thread, so that a wait that
    // counted on the consumer fails the test instead of hanging it.
    let (done, returned) = std::sync::mpsc::channel();
    let waiter = log.clone();
    std::thread::spawn(move || {
        let _ = done.send(waiter.wait_in_ring(pos));
    });
    returned
        .recv_timeout(Duration::from_secs(20))
        .expect("wait_in_ring returned while the consumer stayed busy")
        .unwrap();
    assert_eq!(log.committed_lsn(), 2);
    drop(cursor);
}

#[test]
fn under_load_pages_fill_up() {
    // One consumer that is slow (busy), writers that wait for their commits: the pages it gets
    // hold many records each, because waiters leave sealing to the busy consumer.
    let log = Log::in_memory(LogOptions::new().slots(256)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    let (mut records, mut pages) = (Vec::new(), 0usize);
    std::thread::scope(|s| {
        for writer in 0..8 {
            let log = log.clone();
            s.spawn(move || {
                for index in 0..200 {
                    let pos = log.append(&make_record(writer, index, 100)).unwrap();
                    log.wait_committed(pos, None).unwrap();
                }
            });
        }
        let mut reader = RecordReader::new();
        while records.len() < 1600 {
            cursor.wait_ready(None).unwrap();
            std::thread::sleep(Duration::from_millis(2)); // busy consumer
            let before = cursor.position();
            drain(&mut cursor, &mut reader, &mut records);
            pages += (cursor.position() - before) as usize;
        }
    });
    let per_page = records.len() as f64 / pages as f64;
    assert!(
        per_page > 3.0,
        "group commit should batch: {per_page:.1} records per page"
    );
}

#[test]
fn reopening_recovers_every_committed_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    {
        let log = open(&dir, 64);
        let _retain = log.cursor(0).unwrap();
        for index in 0..300 {
            let record = make_record(7, index, 50 + index as usize * 3);
            log.append(&record).unwrap();
            expected.push(record);
        }
        log.seal();
    }
    let log = open(&dir, 64);
    let recovered = log.recovered();
    assert_eq!(recovered.start_lsn, 0);
    assert_eq!(recovered.end_lsn, log.committed_lsn());
    let mut cursor = log.cursor(0).unwrap();
    let records = drain_all(&log, &mut cursor, &mut RecordReader::new());
    let got: Vec<Vec<u8>> = records.into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, expected);
    // And the log continues after the recovered pages.
    let pos = log.append(&make_record(7, 300, 10)).unwrap();
    assert_eq!(pos.seq, recovered.end_lsn * 4096);
}

#[test]
fn a_ring_of_another_size_or_a_foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir, 64));
    let err = Log::open(dir.path(), LogOptions::new().slots(128)).unwrap_err();
    assert!(
        err.to_string()
            .contains("a ring of 64 slots, configured for 128"),
        "{err}"
    );
    std::fs::write(dir.path().join("log.head"), vec![0x42; 4096]).unwrap();
    let err = Log::open(dir.path(), LogOptions::new().slots(64)).unwrap_err();
    assert!(err.to_string().contains("not a pagemesh log head"), "{err}");
    assert!(
        Log::open(dir.path(), LogOptions::new().slots(48)).is_err(),
        "not a power of two"
    );
}

#[test]
fn a_ring_is_locked_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let _log = open(&dir, 16);
    let err = Log::open(dir.path(), LogOptions::new().slots(16)).unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
}

#[test]
fn a_cursor_below_the_horizon_is_refused() {
    let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
    // No cursor retains anything, so the horizon follows the watermark once the ring wraps.
    for index in 0..40 {
        log.append(&make_record(0, index, 3000)).unwrap();
    }
    match log.cursor(0) {
        Err(Error::BelowHorizon {
            requested: 0,
            oldest,
        }) => assert!(oldest > 0),
        other => panic!("expected BelowHorizon, got {other:?}"),
    }
}

#[test]
fn a_full_ring_blocks_writers_until_released_and_close_unblocks_them() {
    let log = Log::in_memory(LogOptions::new().slots(8)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut appended = 0;
            loop {
                match log.append(&make_record(0, appended, 2000)) {
                    Ok(_) => appended += 1,
                    Err(Error::Closed) => return appended,
                    Err(other) => panic!("{other}"),
                }
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        // 8 slots of 4048 bytes hold 16 records of 2004 bytes; the writer must be blocked.
        let stuck_at = log.anchor();
        assert!(
            stuck_at.lsn <= 8,
            "writer ran past a full ring: {stuck_at:?}"
        );
        let mut records = Vec::new();
        drain(&mut cursor, &mut RecordReader::new(), &mut records);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            log.anchor() > stuck_at,
            "releasing pages let the writer go on"
        );
        log.close();
        let appended = writer.join().unwrap();
        assert!(appended > 16);
    });
}

#[test]
fn a_closed_log_refuses_new_records_and_keeps_what_it_has() {
    let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    let pos = log.append(&make_record(0, 0, 40)).unwrap();
    log.close();
    assert!(matches!(
        log.append(&make_record(0, 1, 40)),
        Err(Error::Closed)
    ));
    assert!(matches!(log.reserve(10), Err(Error::Closed)));
    // A record committed before the close is still sealed and reaches the committed log.
    assert!(log.wait_committed(pos, None).unwrap());
    let records = drain_all(&log, &mut cursor, &mut RecordReader::new());
    assert_eq!(records.len(), 1, "the committed record stays readable");
    check_record(&records[0].1);
}

#[test]
fn a_log_can_continue_past_what_its_ring_holds() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(&dir, 16);
        log.append(&make_record(0, 0, 10)).unwrap();
        log.seal();
    }
    let options = || LogOptions::new().slots(16).next_lsn_min(1000);
    {
        let log = Log::open(dir.path(), options()).unwrap();
        assert_eq!(
            (log.recovered().start_lsn, log.recovered().end_lsn),
            (1000, 1000)
        );
        assert!(matches!(
            log.cursor(0),
            Err(Error::BelowHorizon { oldest: 1000, .. })
        ));
        let pos = log.append(&make_record(0, 1, 10)).unwrap();
        assert_eq!(pos.lsn_last, 1000);
        log.seal();
    }
    // Reopened without the option, the ring still knows where its log is.
    let log = open(&dir, 16);
    assert_eq!(
        (log.recovered().start_lsn, log.recovered().end_lsn),
        (1000, 1001)
    );
    let mut cursor = log.cursor(1000).unwrap();
    let records = drain_all(&log, &mut cursor, &mut RecordReader::new());
    assert_eq!(check_record(&records[0].1), (0, 1));
}

/// `has_room` says exactly when a reservation would wait: a single writer asks it instead of
/// blocking on a ring that only its own cursor can free.
#[test]
fn has_room_tracks_the_slots_cursors_hold() {
    let log = Log::in_memory(LogOptions::new().slots(4)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    for _ in 0..4 {
        assert!(log.has_room(100));
        log.append(&[1; 100]).unwrap();
        log.seal();
    }
    assert!(!log.has_room(100), "four sealed pages fill four slots");
    while cursor.next_ready().unwrap().is_some() {}
    cursor.release(2);
    assert!(log.has_room(100));
    assert!(
        !log.has_room(3 * 4084),
        "a record over three pages needs a third slot"
    );
    cursor.release(4);
    assert!(log.has_room(2 * 4084 - 4));
}

/// `reread` gives back exactly the pages a cursor has read and not released, with the bytes it
/// read, across the ring's wrap.
#[test]
fn reread_returns_read_pages_until_they_are_released() {
    let log = Log::in_memory(LogOptions::new().slots(4)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    let mut payloads = Vec::new();
    for round in 0..3u8 {
        for page in 0..2u8 {
            log.append(&[round * 2 + page; 100]).unwrap();
            log.seal();
        }
        let first = cursor.position();
        assert!(cursor.reread(first).is_none(), "not read yet");
        while let Some(page) = cursor.next_ready().unwrap() {
            payloads.push(page.payload().to_vec());
        }
        for lsn in first..cursor.position() {
            let page = cursor.reread(lsn).expect("read and not released");
            assert_eq!(page.lsn(), lsn);
            assert_eq!(page.payload(), payloads[lsn as usize]);
        }
        cursor.release(first + 1);
        assert!(cursor.reread(first).is_none(), "released");
        assert!(cursor.reread(first + 1).is_some(), "still held");
        cursor.release(cursor.position());
    }
}

/// Runs `pace` on another thread and returns what it returned; fails (instead of hanging) if it
/// has not returned after 20 s, which for these waits means a lost wake-up.
fn paced<T: Send + 'static>(pace: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, returned) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(pace());
    });
    returned
        .recv_timeout(Duration::from_secs(20))
        .expect("the pacing cursor was never woken")
}

#[test]
fn a_pacing_cursor_wakes_when_its_backlog_builds_or_its_deadline_passes() {
    let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    log.append(&make_record(0, 0, 10)).unwrap();
    log.seal();
    // One page ready, four wanted: the deadline ends the pace.
    let deadline = Instant::now() + Duration::from_millis(20);
    assert_eq!(cursor.wait_backlog(4, Some(deadline)), 1);
    // Pages sealed one at a time after the cursor began to pace: the fourth wakes it.
    let writer = log.clone();
    let pacer = std::thread::spawn(move || paced(move || cursor.wait_backlog(4, None)));
    std::thread::sleep(Duration::from_millis(50));
    for index in 1..4 {
        writer.append(&make_record(0, index, 10)).unwrap();
        writer.seal();
    }
    assert!(pacer.join().unwrap() >= 4);
}

#[test]
fn a_hurry_ends_a_pace_and_the_hurried_record_is_read() {
    let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    log.append(&make_record(0, 0, 10)).unwrap();
    log.seal();
    let pacer = std::thread::spawn(move || {
        paced(move || {
            assert!(cursor.wait_ready(None).unwrap());
            cursor.wait_backlog(1_000, None);
            // Whether the hurry sealed it or not, an idle consumer gets the hurried record.
            let mut seen = 0;
            while seen < 2 {
                assert!(cursor.wait_ready(None).unwrap());
                let page = cursor.next_ready().unwrap().unwrap();
                seen += page.header().record_count();
            }
            seen
        })
    });
    std::thread::sleep(Duration::from_millis(50));
    let pos = log.append(&make_record(0, 1, 10)).unwrap();
    log.hurry(pos.lsn_last);
    assert_eq!(pacer.join().unwrap(), 2);
}

/// A hurry made while nobody paced asks the engaged consumers to seal its page; a cursor that
/// paces afterwards ends its pace at once for it, and must have the page ready when it returns,
/// or what it reads next (a group) leaves the hurried record for the round after.
#[test]
fn a_pace_ended_by_an_earlier_hurry_returns_with_the_hurried_page_ready() {
    let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    log.append(&make_record(0, 0, 10)).unwrap();
    log.seal();
    assert!(cursor.wait_ready(None).unwrap());
    while cursor.next_ready().unwrap().is_some() {}
    // Committed into the open page, then hurried, while the cursor is not pacing.
    let pos = log.append(&make_record(0, 1, 10)).unwrap();
    log.hurry(pos.lsn_last);
    let lag = cursor.wait_backlog(1_000, Some(Instant::now() + Duration::from_secs(20)));
    assert_eq!(lag, 1, "the hurried page is ready when the pace ends");
    let page = cursor.next_ready().unwrap().expect("the hurried page");
    assert_eq!(page.lsn(), pos.lsn_last);
}

#[test]
fn a_pacing_cursor_leaves_sealing_to_waiters_and_close_ends_its_pace() {
    let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    log.append(&make_record(0, 0, 10)).unwrap();
    log.seal();
    // Busy: `wait_committed` would leave sealing to it (rule 3).
    assert!(cursor.wait_ready(None).unwrap());
    let pacer = std::thread::spawn(move || paced(move || cursor.wait_backlog(1_000, None)));
    std::thread::sleep(Duration::from_millis(50));
    let pos = log.append(&make_record(0, 1, 10)).unwrap();
    // Rule 6: while it paces it is not engaged, so the waiter seals its page (or the cursor
    // sealed it as it stepped back, if this ran first).
    assert!(log
        .wait_committed(pos, Some(Instant::now() + Duration::from_secs(20)))
        .unwrap());
    log.close();
    assert_eq!(pacer.join().unwrap(), 2);
}
