//! Follower logs: another origin's pages ingested as they are, and async consumers.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use common::{check_record, drain_all, make_record};
use pagemesh_logpage::{Backlog, CommitPos, Error, Log, LogOptions, RecordReader, PAGE_SIZE};

/// Appends `count` records of assorted sizes (some spanning pages) and returns every page written,
/// back to back.
fn origin_pages(dir: &std::path::Path, count: u32, epoch: u64) -> (Vec<u8>, Vec<Vec<u8>>) {
    let log = Log::open(dir, LogOptions::new().slots(256).epoch(epoch)).expect("origin opens");
    let mut cursor = log.cursor(0).expect("cursor at 0");
    let mut records = Vec::new();
    for i in 0..count {
        let record = make_record(7, i, 8 + (i as usize * 997) % 9000);
        let pos = log.append(&record).expect("append");
        log.wait_committed(pos, None).expect("committed");
        records.push(record);
    }
    log.seal();
    let mut pages = Vec::new();
    while let Some(run) = cursor.next_run(64).expect("run validates") {
        pages.extend_from_slice(run.bytes);
    }
    (pages, records)
}

fn follower(dir: &std::path::Path, slots: u64) -> Log {
    Log::open(dir, LogOptions::new().slots(slots).follower(true)).expect("follower opens")
}

#[test]
fn a_follower_holds_the_origins_records_and_keeps_them_across_a_reopen() {
    let (origin_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (pages, records) = origin_pages(origin_dir.path(), 60, 0);
    let page_count = pages.len() / PAGE_SIZE;
    {
        let log = follower(follower_dir.path(), 256);
        let mut cursor = log.cursor(0).unwrap();
        // In two pieces, the second overlapping the first (a resend after a reconnect).
        let half = page_count / 2 * PAGE_SIZE;
        let first = log.ingest(&pages[..half]).unwrap();
        assert_eq!((first.pages, first.full), (page_count / 2, false));
        let second = log.ingest(&pages[PAGE_SIZE..]).unwrap();
        assert_eq!(second.pages, page_count - 1);
        assert_eq!(log.committed_lsn(), page_count as u64);
        let got = drain_all(&log, &mut cursor, &mut RecordReader::new());
        let got: Vec<Vec<u8>> = got.into_iter().map(|(_, bytes)| bytes).collect();
        assert!(got == records, "records differ after ingest");
    }
    let log = follower(follower_dir.path(), 256);
    assert_eq!(log.recovered().end_lsn, page_count as u64);
    let mut cursor = log.cursor(0).unwrap();
    let got = drain_all(&log, &mut cursor, &mut RecordReader::new());
    assert_eq!(got.len(), records.len());
    for (_, bytes) in &got {
        check_record(bytes);
    }
}

#[test]
fn gaps_old_epochs_and_damaged_pages_are_refused_and_nothing_past_them_is_taken() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (pages, _) = origin_pages(a.path(), 20, 3);
    let log = follower(b.path(), 64);

    let gap = log.ingest(&pages[PAGE_SIZE..2 * PAGE_SIZE]).unwrap_err();
    assert!(
        matches!(
            gap,
            Error::Gap {
                expected: 0,
                found: 1
            }
        ),
        "{gap}"
    );
    assert_eq!(log.committed_lsn(), 0);

    let mut damaged = pages[..3 * PAGE_SIZE].to_vec();
    damaged[PAGE_SIZE + 100] ^= 0x20;
    let error = log.ingest(&damaged).unwrap_err();
    assert!(
        matches!(error, Error::PageChecksum { lsn: 1, .. }),
        "{error}"
    );
    assert_eq!(
        log.committed_lsn(),
        1,
        "the page before the damage is kept, none after"
    );

    assert!(matches!(
        log.ingest(&pages[..5]),
        Err(Error::PageLength { .. })
    ));
    assert!(matches!(log.reserve(10), Err(Error::Follower)));
    assert!(matches!(log.append(b"x"), Err(Error::Follower)));

    // Pages of epoch 3 raised the follower's epoch; an older origin is fenced off.
    assert_eq!(log.epoch(), 3);
    let (old_pages, _) = origin_pages(c.path(), 20, 1);
    let fenced = log
        .ingest(&old_pages[PAGE_SIZE..2 * PAGE_SIZE])
        .unwrap_err();
    assert!(
        matches!(
            fenced,
            Error::Fenced {
                lsn: 1,
                epoch: 1,
                current: 3
            }
        ),
        "{fenced}"
    );

    let writer = Log::in_memory(LogOptions::new()).unwrap();
    assert!(matches!(
        writer.ingest(&pages[..PAGE_SIZE]),
        Err(Error::NotFollower)
    ));
}

/// Counts wake-ups.
struct CountingWaker(AtomicUsize);

impl CountingWaker {
    /// A waker that counts its wake-ups, and its count.
    fn new() -> (Arc<Self>, Waker) {
        let counter = Arc::new(Self(AtomicUsize::new(0)));
        (Arc::clone(&counter), Waker::from(counter))
    }

    fn wakes(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Commits `bytes` as one record without asking for its page's seal (as core commits).
fn commit_unannounced(log: &Log, bytes: &[u8]) -> CommitPos {
    let mut reservation = log.reserve(bytes.len()).unwrap();
    reservation.write(bytes);
    reservation.commit_unannounced().unwrap()
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_full_follower_stops_and_is_woken_when_its_reader_releases() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (pages, _) = origin_pages(a.path(), 80, 0);
    let page_count = pages.len() / PAGE_SIZE;
    assert!(page_count > 16, "the origin wrote {page_count} pages");
    let log = follower(b.path(), 8);
    let mut cursor = log.cursor(0).unwrap();

    let first = log.ingest(&pages).unwrap();
    assert_eq!((first.pages, first.full), (8, true));

    let (counter, waker) = CountingWaker::new();
    log.register_waker(&waker);
    assert_eq!(counter.wakes(), 0);
    while cursor.next_ready().unwrap().is_some() {}
    cursor.release(cursor.position());
    assert_eq!(counter.wakes(), 1, "release wakes the feeder once");

    let mut taken = first.pages;
    while taken < page_count {
        let step = log.ingest(&pages[taken * PAGE_SIZE..]).unwrap();
        assert!(step.pages > 0, "space was released, so progress is made");
        taken += step.pages;
        while cursor.next_ready().unwrap().is_some() {}
        cursor.release(cursor.position());
    }
    assert_eq!(log.committed_lsn(), page_count as u64);
    // Each ingested run reached its segment (one write per run, two where it crossed a
    // segment's end): every page the ring still holds is there byte for byte, without a sync
    // (segments below the horizon are retired: this log keeps no history).
    let horizon = log.horizon_lsn() as usize;
    assert!(horizon < page_count, "the last run is still held");
    for lsn in horizon..page_count {
        let page = common::segment_page(b.path(), 8, lsn as u64).expect("the segment is there");
        assert!(
            page[..] == pages[lsn * PAGE_SIZE..(lsn + 1) * PAGE_SIZE],
            "page {lsn} in the follower's segment"
        );
    }
}

#[test]
fn an_async_consumer_seals_a_lone_commit_and_is_woken_for_it() {
    let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    let (counter, waker) = CountingWaker::new();
    let mut cx = Context::from_waker(&waker);

    assert!(cursor.poll_ready(&mut cx).is_pending());
    // The lone commit asks the waiting consumer to seal (rule 2): it is woken, not left waiting
    // for the page to fill.
    let pos = log.append(b"lone").unwrap();
    assert!(counter.wakes() >= 1, "the lone commit woke the poller");
    assert!(
        log.committed_lsn() <= pos.lsn_last,
        "nobody sealed yet: the consumer will"
    );
    assert!(matches!(cursor.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let page = cursor.next_ready().unwrap().expect("the sealed page");
    assert_eq!(page.header().record_count(), 1);

    // Busy consumer: a waiter leaves sealing to it (rule 3) — so the next poll seals.
    let pos = log.append(b"second").unwrap();
    assert!(!log
        .wait_committed(pos, Some(std::time::Instant::now()))
        .unwrap());
    assert!(matches!(cursor.poll_ready(&mut cx), Poll::Ready(Ok(()))));

    log.close();
    while cursor.next_ready().unwrap().is_some() {}
    assert!(matches!(
        cursor.poll_ready(&mut cx),
        Poll::Ready(Err(Error::Closed))
    ));
}

#[test]
fn unannounced_commits_fill_a_page_until_a_writer_asks() {
    let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    let (counter, waker) = CountingWaker::new();
    let mut cx = Context::from_waker(&waker);

    assert!(cursor.poll_ready(&mut cx).is_pending());
    // Commits that will be waited on do not wake the shipper, and it does not seal for them.
    let first = commit_unannounced(&log, b"one");
    commit_unannounced(&log, b"two");
    assert_eq!(counter.wakes(), 0, "nobody asked yet");
    assert!(
        cursor.poll_ready(&mut cx).is_pending(),
        "the page waits to fill"
    );
    assert!(log.committed_lsn() <= first.lsn_last);

    // A writer that will not wait after all asks (a dropped ticket): the waiting shipper is
    // woken, seals, and ships both records in one page.
    log.request_seal(first);
    assert!(counter.wakes() >= 1, "the request woke the poller");
    assert!(matches!(cursor.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let page = cursor.next_ready().unwrap().expect("the sealed page");
    assert_eq!(page.header().record_count(), 2);

    // A waiter asks too, when it leaves the sealing to the (now busy) shipper (rule 3): its next
    // poll seals, though no commit announced the page.
    let third = commit_unannounced(&log, b"three");
    assert!(!log
        .wait_committed(third, Some(std::time::Instant::now()))
        .unwrap());
    assert!(matches!(cursor.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let page = cursor.next_ready().unwrap().expect("the sealed page");
    assert_eq!(page.header().record_count(), 1);

    // With no consumer waiting, a request seals the page itself.
    drop(cursor);
    let fourth = commit_unannounced(&log, b"four");
    log.request_seal(fourth);
    assert!(log.committed_lsn() > fourth.lsn_last);
}

#[test]
fn a_plain_commit_that_runs_into_a_new_page_asks_for_its_seal() {
    let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    let (counter, waker) = CountingWaker::new();
    let mut cx = Context::from_waker(&waker);
    assert!(cursor.poll_ready(&mut cx).is_pending());

    // An unannounced record opens page 0; a plain one starts after it and runs into page 1,
    // which it opened, so it asks: once the shipper has shipped page 0 (sealed by the record
    // running past it), it turns idle and seals page 1 too.
    commit_unannounced(&log, &[7; 10]);
    assert_eq!(counter.wakes(), 0);
    let long = log.append(&[9; 6000]).unwrap();
    assert_eq!(long.lsn_last, 1, "the record runs into page 1");
    assert!(matches!(cursor.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    assert_eq!(cursor.next_ready().unwrap().expect("page 0").lsn(), 0);
    assert!(
        matches!(cursor.poll_ready(&mut cx), Poll::Ready(Ok(()))),
        "the record's last page was sealed for it"
    );
    assert_eq!(log.committed_lsn(), 2);
}

/// A pacing shipper (`poll_paced`) lets whole pages build, says once that pages started to
/// build, is woken for the backlog only when it is reached, and ships at once for a ship request
/// or a seal request.
#[test]
fn a_pacing_shipper_ships_a_backlog_or_what_a_writer_asks_for() {
    let log = Log::in_memory(LogOptions::new().slots(16)).unwrap();
    let mut cursor = log.cursor(0).unwrap();
    let (counter, waker) = CountingWaker::new();
    let mut cx = Context::from_waker(&waker);
    let whole_page = pagemesh_logpage::PAYLOAD_SIZE - pagemesh_logpage::record::RECORD_HEADER_SIZE;
    // The first poll seals (rule 1: a new cursor answers the requests made before it), then
    // waits for the first page.
    assert!(cursor.poll_paced(&mut cx, 3).is_pending());

    // A whole page seals itself, nobody asked: reported once as started, then the backlog waits.
    let first = commit_unannounced(&log, &vec![1; whole_page]);
    assert_eq!(counter.wakes(), 1, "woken for the first page");
    assert!(matches!(
        cursor.poll_paced(&mut cx, 3),
        Poll::Ready(Ok(Backlog::Started))
    ));
    assert!(cursor.poll_paced(&mut cx, 3).is_pending());
    commit_unannounced(&log, &vec![2; whole_page]);
    assert_eq!(counter.wakes(), 1, "not woken below the backlog");

    // A ship request for a page it has already read wakes nobody; one for a page it has not
    // read ships everything ready.
    let second = log.committed_lsn() - 1;
    log.request_ship(second);
    assert_eq!(counter.wakes(), 2, "the request woke the shipper");
    assert!(matches!(
        cursor.poll_paced(&mut cx, 3),
        Poll::Ready(Ok(Backlog::Ship))
    ));
    assert_eq!(cursor.next_run(8).unwrap().expect("two pages").count(), 2);
    assert!(cursor.poll_paced(&mut cx, 3).is_pending());
    log.request_ship(first.lsn_last);
    assert_eq!(counter.wakes(), 2, "page 0 is shipped: nobody to wake");

    // Three pages: the backlog is reached, and it is woken for it (a backlog reached at once is
    // shipped without a `Started` first).
    for byte in 3..6 {
        commit_unannounced(&log, &vec![byte; whole_page]);
    }
    assert!(counter.wakes() >= 3);
    assert!(matches!(
        cursor.poll_paced(&mut cx, 3),
        Poll::Ready(Ok(Backlog::Ship))
    ));
    assert_eq!(cursor.next_run(8).unwrap().expect("three pages").count(), 3);

    // A lone record and its waiter's seal request (rule 3): sealed and shipped at once.
    assert!(cursor.poll_paced(&mut cx, 3).is_pending());
    let lone = commit_unannounced(&log, b"lone");
    let wakes = counter.wakes();
    assert!(!log
        .wait_committed(lone, Some(std::time::Instant::now()))
        .unwrap());
    assert!(counter.wakes() > wakes, "the seal request woke the shipper");
    assert!(matches!(
        cursor.poll_paced(&mut cx, 3),
        Poll::Ready(Ok(Backlog::Ship))
    ));
    let page = cursor.next_ready().unwrap().expect("the sealed page");
    assert_eq!(page.header().record_count(), 1);

    log.close();
    assert!(matches!(
        cursor.poll_paced(&mut cx, 3),
        Poll::Ready(Err(Error::Closed))
    ));
}
