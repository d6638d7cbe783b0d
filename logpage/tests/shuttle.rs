//! Shuttle models of the log's concurrency protocol: the 128-bit anchor (reservation and sealing),
//! the commit accounting of each page, the committed watermark, the ring horizon (backpressure)
//! and the seal policy of `seal.rs` (rules 1-3, and rule 4 in `cursor.rs`: a consumer that
//! disengages seals the open page).
//!
//! How: with the crate feature `shuttle`, `src/sync.rs` hands the log shuttle's atomics (the anchor
//! is shuttle's `AtomicU128`), mutexes and condvars, so every atomic access and lock in the real
//! log code is a point where shuttle's scheduler picks the next thread. Each model builds a fresh
//! `Log::in_memory` ring of 4 or 8 slots inside the checked closure, spawns three or more shuttle
//! threads against it, and is run for a few thousand schedules: randomly (`check_random`) and
//! with PCT (`check_pct`: random thread priorities plus a few priority-change points, which finds
//! a bug that needs at most that many ordering constraints with a guaranteed minimum probability
//! per run). A failed assertion or panic anywhere fails the test, and so does a schedule in which
//! every thread is blocked (a deadlock or a lost wake-up): shuttle then prints the schedule, which
//! `shuttle::replay(model, "...")` reproduces deterministically.
//!
//! The models, and what each proves over the schedules explored:
//!
//! 1. **Mixed sizes, read back exactly once.** Three writers commit records from 8 bytes to 6 KB
//!    (spanning up to 3 pages), two by `append` and one by `reserve` + `write` in pieces +
//!    `commit`, while a fourth thread seals. Read back afterwards, every record is intact, appears
//!    once, at the seq its writer was given, in seq (reservation) order, each writer's records in
//!    the order it committed them; and the page payloads hold exactly the framed records, so every
//!    committed byte appears once and nothing else does.
//! 2. **The watermark never passes an uncommitted byte.** Writers write their records in pieces
//!    with scheduling points between them and flag each record just before committing it; an
//!    observer repeatedly reads `committed_lsn()`, then reads every page below it through a cursor:
//!    each page validates, and every record in it is intact and was flagged before the watermark
//!    was read. After `wait_committed` returns, `committed_lsn() > lsn_last`.
//! 3. **Backpressure.** Writers append about seven pages into a 4-slot ring while a consumer loops
//!    `wait_ready(None)` / read / `release`: everyone terminates, and the consumer reads every
//!    record exactly once.
//! 4. **Seal policy liveness.** Writers call `wait_committed(pos, None)` after every append, with
//!    no consumer, with a consumer that drains everything, and with consumers that stop after one
//!    or two pages and drop their cursor while writers still wait (rule 4). No schedule blocks
//!    forever, and every wait returns `Ok(true)`. The same with `wait_in_ring` (rule 3b), also
//!    with the async consumer of model 5.
//! 5. **Async consumers.** The consumer of model 3 as a future on shuttle's executor
//!    (`Cursor::poll_ready` with the executor's waker), with and without writers waiting after each
//!    commit: no lost wake-up (it would leave every task blocked), every record read exactly once.
//! 6. **Followers.** A follower log of 4 slots is fed another log's pages by a future using
//!    `Log::poll_ingest`, while a consumer reads and releases: the feeder is always woken when room
//!    appears, and every record arrives. (This model caught the first feeder design, which
//!    re-checked a horizon that only advances lazily and so slept through a release.)
//! 7. **The durable watermark.** The ring's sync is replaced by a hook (`LogOptions::sync_hook`)
//!    that yields in the middle and records each sync's range as it starts and as it completes.
//!    Writers commit and `wait_durable` after each record (they lead flushes themselves), with and
//!    without a `Flusher` thread, and with an async waiter on `poll_durable` served by the flusher;
//!    an observer reads `durable_lsn()` meanwhile. One sync runs at a time, each starts where the
//!    last completed one ended and covers only finished pages, the watermark is never beyond a
//!    completed sync, and no durable waiter is left asleep (a lost wake-up blocks every thread).
//!    And the flusher never sleeps through a page nobody waits to see durable: one writer leads
//!    flushes from `wait_durable`, another only commits (`wait_committed` seals its pages), and
//!    the test then blocks until a completed sync covers the second writer's last page. The
//!    flusher is woken only when no flush runs, or when a leader releases the claim with pages
//!    left (`Shared::nudge_flusher`); with either wake-up removed, this model deadlocks.
//!    And stopping the flusher once a committer is done leaves no page it finished unsynced,
//!    even when the stop lands during a flush that read its end earlier (it did, before the
//!    flusher looked again after such a flush).
//! 8. **A failed sync.** The hook fails the second sync. Every wait on a record that sync covered
//!    returns `Error::Poisoned` naming that range, a thread that saw the error sees it on every
//!    later append and wait, no record a wait reported durable lies in the failed range, and no
//!    thread is left blocked (the flusher stops with the error).
//!
//! 9. **A pacing consumer** (`Cursor::wait_backlog`, as core's applier paces its groups) loops
//!    `wait_ready` / `wait_backlog` without a deadline / read / release. Writers that hurry
//!    (`Log::hurry`) and then wait until it has read their record are always served though the
//!    backlog it waits for never builds; `wait_committed` waiters return while it paces (it is
//!    not engaged: seal rule 6); and two writers of one whole page each, waiting without a hurry,
//!    are served by the backlog wake-up alone (a lost wake-up blocks every thread).
//!
//! 10. **Unannounced commits** (`Reservation::commit_unannounced`, as core commits): the
//!     writer's wait asks for the seal instead of the commit (rule 2), or `Log::request_seal`
//!     does for a writer that does not wait, or `Log::hurry` for one waiting on a pacing
//!     consumer. With the async consumer, which seals only when asked since it last sealed, with
//!     the blocking one, with a pacing one and with none: every wait returns and every record is
//!     read exactly once.
//!
//! 11. **A pacing shipper** (`Cursor::poll_paced`, as the network shipper paces its sends),
//!     as a future that ships only on `Backlog::Ship`, pacing for a backlog the writers never
//!     reach (and, apart, for two pages that two whole-page writers do reach). Writers commit
//!     unannounced and wait until it has read their record, asking with `Log::request_ship`
//!     after `wait_committed` (core's `Replicated`) or before the seal (`DurableReplicated`),
//!     with records that leave pages open and with whole pages that seal themselves (so the
//!     ship request is the only signal): every request is served. With the request's wake-up
//!     removed, the whole-page case deadlocks within the schedules run; the first version of
//!     `poll_paced` spun here (shuttle: "exceeded max_steps"). And whole pages committed
//!     unannounced to a shipper of every page, with no request of any kind: only the
//!     watermark's advance wakes it, at the threshold async pacers keep apart from blocking ones
//!     (with the shipper's wake-up point put in the blocking pacers' threshold, it deadlocks).
//!
//! 12. **A pacing flusher** on a follower (`LogOptions::flush_pace`, an hour: shuttle's
//!     timed waits never time out, so only a wake-up ends the pace). A feeder ingests an origin's
//!     pages in two runs while an async waiter (`poll_durable`, which never syncs itself) waits
//!     for the last one: a finished page does not wake a pacing flusher, the waiter's wish must,
//!     before its page arrives or after. With any of the three wake-up paths removed (the
//!     waiter's nudge while pacing, the nudge's exception for a waiter, the pace's end for a
//!     waiter), this model deadlocks.
//!
//! Records are self-checking (`common::make_record`): each carries its writer and index and bytes
//! derived from them, so a lost, duplicated, torn, mixed or reordered record fails a content check,
//! not just a count.
//!
//! What this does not prove: shuttle runs one thread at a time and its atomics are sequentially
//! consistent, so these models say nothing about orderings weaker than `SeqCst` (a missing `SeqCst`
//! on one side of a store-buffering pair would pass here); and random schedules are strong
//! evidence, not an exhaustive proof. Ring-file recovery is not modelled (the ring is in memory;
//! `tests/durable.rs` and `tests/durable_crash.rs` cover it, the latter across SIGKILLs).
//!
//! Run: `cargo test --release -p pagemesh-logpage --features shuttle --test shuttle`.

#![cfg(feature = "shuttle")]

mod common;

use std::collections::{HashMap, HashSet};

use common::{check_record, make_record};
use pagemesh_logpage::record::RECORD_HEADER_SIZE;
use pagemesh_logpage::{Backlog, CommitPos, Cursor, Error, Log, LogOptions, PageRef, RecordReader};
use shuttle::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use shuttle::sync::Arc;
use shuttle::thread::{self, JoinHandle};

/// PCT depth: bugs that need up to this many ordering constraints between threads are found with a
/// guaranteed minimum probability per run.
const PCT_DEPTH: usize = 3;

/// `shuttle::thread::spawn`, with a name: shuttle's deadlock and panic reports name the tasks.
fn spawn<T: Send + 'static>(name: String, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    thread::Builder::new()
        .name(name)
        .spawn(f)
        .expect("spawn a shuttle thread")
}

/// Runs `model` under the random scheduler, then under PCT.
fn check(model: fn(), random_iterations: usize, pct_iterations: usize) {
    shuttle::check_random(model, random_iterations);
    shuttle::check_pct(model, pct_iterations, PCT_DEPTH);
}

// ---------------------------------------------------------------------------------------------
// Writing and reading self-checking records
// ---------------------------------------------------------------------------------------------

/// One record as its writer committed it.
#[derive(Clone, Copy, Debug)]
struct Written {
    writer: u32,
    index: u32,
    len: usize,
    pos: CommitPos,
}

/// One record as a reader decoded it.
#[derive(Clone, Copy, Debug)]
struct Read {
    seq: u64,
    writer: u32,
    index: u32,
    len: usize,
}

/// How a writer hands a record to the log.
#[derive(Clone, Copy, Debug)]
enum Style {
    /// `Log::append`.
    Append,
    /// `reserve`, three `write`s with a scheduling point after each, `commit`.
    Pieces,
    /// `reserve`, one `write`, `commit_unannounced`: no seal request until the writer waits
    /// (rule 2 deferred to the wait, as core's commits do).
    Unannounced,
}

/// Writes record `(writer, index)` of `len` bytes; calls `before_commit` right before the commit.
fn write_record(
    log: &Log,
    (writer, index): (u32, u32),
    len: usize,
    style: Style,
    before_commit: impl FnOnce(),
) -> Written {
    let bytes = make_record(writer, index, len);
    let pos = match style {
        Style::Append => {
            before_commit();
            log.append(&bytes).expect("append")
        }
        Style::Pieces => {
            let mut reservation = log.reserve(len).expect("reserve");
            for piece in bytes.chunks(len.div_ceil(3)) {
                reservation.write(piece);
                thread::yield_now();
            }
            assert_eq!(reservation.remaining(), 0);
            before_commit();
            reservation.commit().expect("commit")
        }
        Style::Unannounced => {
            let mut reservation = log.reserve(len).expect("reserve");
            reservation.write(&bytes);
            before_commit();
            reservation.commit_unannounced().expect("commit")
        }
    };
    Written {
        writer,
        index,
        len,
        pos,
    }
}

/// Whether a writer waits for each record to be in the committed log before the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    No,
    /// `wait_committed(pos, None)` after each record (rule 3).
    AfterEach,
    /// `wait_in_ring(pos)` after each record (rule 3b).
    InRingAfterEach,
    /// `request_seal(pos)` after each record and no wait: a commit ticket dropped unwaited.
    RequestSeal,
}

/// Spawns writer `writer`, which writes one record per entry of `lens`, in order.
fn spawn_writer(
    log: &Log,
    writer: u32,
    lens: &'static [usize],
    style: Style,
    wait: Wait,
) -> JoinHandle<Vec<Written>> {
    let log = log.clone();
    spawn(format!("writer-{writer}"), move || {
        let mut written: Vec<Written> = Vec::with_capacity(lens.len());
        for (index, &len) in (0u32..).zip(lens) {
            let record = write_record(&log, (writer, index), len, style, || {});
            if let Some(previous) = written.last() {
                assert!(
                    previous.pos.seq < record.pos.seq,
                    "a writer's records get increasing seqs"
                );
            }
            match wait {
                Wait::No => {}
                Wait::RequestSeal => log.request_seal(record.pos),
                Wait::AfterEach => wait_committed(&log, record.pos),
                Wait::InRingAfterEach => {
                    log.wait_in_ring(record.pos).expect("wait_in_ring");
                    assert!(
                        record.pos.lsn_last < log.committed_lsn(),
                        "wait_in_ring returned before the watermark passed page {}",
                        record.pos.lsn_last
                    );
                }
            }
            written.push(record);
        }
        written
    })
}

/// Waits until `pos` is in the committed log, and checks the watermark really passed it.
fn wait_committed(log: &Log, pos: CommitPos) {
    let passed = log.wait_committed(pos, None).expect("wait_committed");
    assert!(passed, "a wait without a deadline returns true");
    assert!(
        pos.lsn_last < log.committed_lsn(),
        "wait_committed returned before the watermark passed page {}",
        pos.lsn_last
    );
}

fn join_all(writers: Vec<JoinHandle<Vec<Written>>>) -> Vec<Written> {
    writers
        .into_iter()
        .flat_map(|handle| handle.join().expect("writer thread"))
        .collect()
}

/// What one cursor read, in log order.
#[derive(Debug, Default)]
struct Reading {
    reader: RecordReader,
    records: Vec<Read>,
    /// Sum of the payload lengths of the pages read.
    payload_bytes: usize,
    /// The LSN the next page must have.
    next_lsn: u64,
}

impl Reading {
    /// Decodes one ready page; checks each record's content, then hands it to `check`.
    fn feed(&mut self, page: PageRef<'_>, mut check: impl FnMut(&Read)) {
        assert_eq!(page.lsn(), self.next_lsn, "pages come in LSN order");
        assert!(page.header().committed_lsn() <= page.lsn());
        self.next_lsn += 1;
        self.payload_bytes += page.payload().len();
        let records = &mut self.records;
        self.reader
            .feed(page, |record| {
                let (writer, index) = check_record(&record.bytes);
                let read = Read {
                    seq: record.seq,
                    writer,
                    index,
                    len: record.bytes.len(),
                };
                check(&read);
                records.push(read);
            })
            .expect("the records of a ready page decode");
    }

    /// Reads every ready page, one at a time; releases each after reading it if `release`.
    fn drain(&mut self, cursor: &mut Cursor, release: bool) {
        while let Some(page) = cursor.next_ready().expect("a ready page validates") {
            self.feed(page, |_| {});
            if release {
                let read_lsn = cursor.position();
                cursor.release(read_lsn);
            }
        }
    }

    /// Reads every ready page in runs of up to two pages, releasing each run after reading it.
    fn drain_runs(&mut self, cursor: &mut Cursor) {
        while let Some(run) = cursor.next_run(2).expect("a ready run validates") {
            let count = run.count();
            assert!((1..=2).contains(&count));
            assert_eq!(run.first_lsn, self.next_lsn);
            let mut pages = 0;
            for page in run.pages() {
                self.feed(page, |_| {});
                pages += 1;
            }
            assert_eq!(pages, count, "every page of a run validates");
            let read_lsn = cursor.position();
            cursor.release(read_lsn);
        }
    }
}

/// Checks that `reading` holds exactly the records in `written`, once each, in reservation order,
/// and that the pages read hold nothing else.
fn check_exactly_once(written: &[Written], reading: &Reading) {
    let records = &reading.records;
    for pair in records.windows(2) {
        assert!(pair[0].seq < pair[1].seq, "records in seq order: {pair:?}");
    }
    let by_key: HashMap<(u32, u32), &Written> = written
        .iter()
        .map(|record| ((record.writer, record.index), record))
        .collect();
    let mut seen = HashSet::new();
    for read in records {
        let key = (read.writer, read.index);
        let record = by_key.get(&key).expect("a record nobody wrote");
        assert!(seen.insert(key), "record {key:?} read twice");
        assert_eq!(
            read.seq, record.pos.seq,
            "record {key:?} at its writer's seq"
        );
        assert_eq!(read.len, record.len, "record {key:?} length");
    }
    assert_eq!(seen.len(), written.len(), "every committed record read");
    let writers: HashSet<u32> = written.iter().map(|record| record.writer).collect();
    for writer in writers {
        let indexes: Vec<u32> = records
            .iter()
            .filter(|read| read.writer == writer)
            .map(|read| read.index)
            .collect();
        let count = written.iter().filter(|w| w.writer == writer).count() as u32;
        assert_eq!(
            indexes,
            (0..count).collect::<Vec<_>>(),
            "writer {writer}'s records in the order it committed them"
        );
    }
    let framed: usize = written.iter().map(|w| RECORD_HEADER_SIZE + w.len).sum();
    assert_eq!(
        reading.payload_bytes, framed,
        "the pages hold every committed byte once, and nothing else"
    );
}

// ---------------------------------------------------------------------------------------------
// Model 1: concurrent reserve/write/commit of mixed sizes, with explicit seals
// ---------------------------------------------------------------------------------------------

/// Record lengths per writer: within one page, and spanning two or three pages. In all 16,528
/// framed bytes (4.1 pages); with the two concurrent seals and the final one, at most 7 pages, so
/// an 8-slot ring retains them all for the reader.
const MIXED_LENS: [&[usize]; 3] = [&[24, 5000, 300], &[4100, 60, 200], &[700, 8, 6100]];

fn mixed_sizes_model() {
    let log = Log::in_memory(LogOptions::new().slots(8)).expect("log");
    let mut cursor = log.cursor(0).expect("cursor");
    let writers: Vec<_> = (0u32..)
        .zip(MIXED_LENS)
        .map(|(writer, lens)| {
            let style = if writer == 1 {
                Style::Pieces
            } else {
                Style::Append
            };
            spawn_writer(&log, writer, lens, style, Wait::No)
        })
        .collect();
    let sealer = {
        let log = log.clone();
        spawn("sealer".into(), move || {
            for _ in 0..2 {
                log.seal();
                thread::yield_now();
            }
        })
    };
    let written = join_all(writers);
    sealer.join().expect("sealer thread");

    log.seal();
    let anchor = log.anchor();
    assert_eq!(anchor.offset, 0, "the final seal closed the open page");
    assert_eq!(
        log.committed_lsn(),
        anchor.lsn,
        "every sealed page whose writers all committed is ready"
    );
    let mut reading = Reading::default();
    reading.drain(&mut cursor, false);
    assert_eq!(reading.next_lsn, anchor.lsn, "the cursor read every page");
    assert!(!reading.reader.is_mid_record());
    check_exactly_once(&written, &reading);
}

#[test]
fn mixed_sizes_every_committed_byte_is_read_once_in_reservation_order() {
    check(mixed_sizes_model, 2000, 2000);
}

// ---------------------------------------------------------------------------------------------
// Model 2: the watermark never passes an uncommitted byte
// ---------------------------------------------------------------------------------------------

/// Two writers' records: one small and one spanning pages each. 9,606 framed bytes (2.4 pages);
/// with a seal per `wait_committed`, at most 7 pages, which the observer's 8-slot ring retains.
const OBSERVED_LENS: [&[usize]; 2] = [&[60, 5000], &[4500, 30]];
/// Records per writer in `OBSERVED_LENS`.
const OBSERVED_PER_WRITER: usize = 2;
/// How many times the observer samples the watermark.
const OBSERVER_ROUNDS: usize = 8;

/// `committing[writer * OBSERVED_PER_WRITER + index]` is set just before that record's commit.
type CommitFlags = Arc<Vec<AtomicBool>>;

fn flag_index(writer: u32, index: u32) -> usize {
    writer as usize * OBSERVED_PER_WRITER + index as usize
}

fn spawn_flagging_writer(
    log: &Log,
    writer: u32,
    committing: &CommitFlags,
) -> JoinHandle<Vec<Written>> {
    let (log, committing) = (log.clone(), Arc::clone(committing));
    spawn(format!("writer-{writer}"), move || {
        let mut written = Vec::new();
        for (index, &len) in (0u32..).zip(OBSERVED_LENS[writer as usize]) {
            let flag = &committing[flag_index(writer, index)];
            let record = write_record(&log, (writer, index), len, Style::Pieces, || {
                flag.store(true, Ordering::SeqCst);
            });
            wait_committed(&log, record.pos);
            written.push(record);
        }
        written
    })
}

/// Samples the watermark, then reads every page below it and checks each record in them was
/// flagged (its commit had begun) before the watermark was read.
fn observe(log: &Log, cursor: &mut Cursor, reading: &mut Reading, committing: &CommitFlags) {
    for _ in 0..OBSERVER_ROUNDS {
        let watermark = log.committed_lsn();
        let flagged: Vec<bool> = committing
            .iter()
            .map(|flag| flag.load(Ordering::SeqCst))
            .collect();
        while cursor.position() < watermark {
            let lsn = cursor.position();
            let page = cursor
                .next_ready()
                .expect("a page below the watermark validates")
                .expect("a page below the watermark is ready");
            reading.feed(page, |read| {
                assert!(
                    flagged[flag_index(read.writer, read.index)],
                    "record {}/{} is in page {lsn}, below watermark {watermark}, before its \
                     commit began",
                    read.writer,
                    read.index
                );
            });
        }
        thread::yield_now();
    }
}

fn watermark_model() {
    let log = Log::in_memory(LogOptions::new().slots(8)).expect("log");
    let committing: CommitFlags = Arc::new(
        (0..OBSERVED_LENS.len() * OBSERVED_PER_WRITER)
            .map(|_| AtomicBool::new(false))
            .collect(),
    );
    let mut cursor = log.cursor(0).expect("cursor");
    let writers: Vec<_> = (0u32..OBSERVED_LENS.len() as u32)
        .map(|writer| spawn_flagging_writer(&log, writer, &committing))
        .collect();
    let observer = {
        let (log, committing) = (log.clone(), Arc::clone(&committing));
        spawn("observer".into(), move || {
            let mut reading = Reading::default();
            observe(&log, &mut cursor, &mut reading, &committing);
            (cursor, reading)
        })
    };
    let written = join_all(writers);
    let (mut cursor, mut reading) = observer.join().expect("observer thread");

    // Every writer waited for its records, so the committed log holds them all already.
    assert_eq!(log.seal(), None, "nothing left to seal after the waits");
    reading.drain(&mut cursor, false);
    check_exactly_once(&written, &reading);
}

#[test]
fn the_watermark_never_passes_an_uncommitted_byte() {
    check(watermark_model, 2000, 2000);
}

// ---------------------------------------------------------------------------------------------
// Model 3: backpressure through a 4-slot ring
// ---------------------------------------------------------------------------------------------

/// 27,876 framed bytes: about seven pages through a ring of four. The largest record (7,000 bytes)
/// is within the ring's limit of half the ring (8,092 bytes).
const BACKPRESSURE_LENS: [&[usize]; 3] =
    [&[3000, 6000, 100], &[200, 7000, 2500], &[5000, 40, 4000]];
/// Bound on the consumer's rounds: each round reads at least one page, and there are at most a
/// dozen.
const CONSUMER_ROUNDS_MAX: usize = 64;

/// Consumes until `records` records were read: `wait_ready(None)`, read, release.
fn consume_all(mut cursor: Cursor, records: usize, runs: bool) -> Reading {
    let mut reading = Reading::default();
    for _ in 0..CONSUMER_ROUNDS_MAX {
        if reading.records.len() == records {
            return reading;
        }
        assert!(cursor.wait_ready(None).expect("wait_ready"));
        let before = reading.next_lsn;
        if runs {
            reading.drain_runs(&mut cursor);
        } else {
            reading.drain(&mut cursor, true);
        }
        assert!(
            reading.next_lsn > before,
            "wait_ready(None) returned a page"
        );
    }
    panic!(
        "consumer read only {} of {records} records in {CONSUMER_ROUNDS_MAX} rounds",
        reading.records.len()
    );
}

fn backpressure_model() {
    let log = Log::in_memory(LogOptions::new().slots(4)).expect("log");
    let cursor = log.cursor(0).expect("cursor");
    let records: usize = BACKPRESSURE_LENS.iter().map(|lens| lens.len()).sum();
    let consumer = spawn("consumer".into(), move || {
        consume_all(cursor, records, true)
    });
    let writers: Vec<_> = (0u32..)
        .zip(BACKPRESSURE_LENS)
        .map(|(writer, lens)| spawn_writer(&log, writer, lens, Style::Append, Wait::No))
        .collect();
    let written = join_all(writers);
    let reading = consumer.join().expect("consumer thread");

    assert!(
        reading.next_lsn > log.slots(),
        "the writers wrapped the ring ({} pages through {} slots)",
        reading.next_lsn,
        log.slots()
    );
    check_exactly_once(&written, &reading);
}

#[test]
fn backpressure_a_full_ring_drains_through_a_consumer() {
    check(backpressure_model, 2000, 2000);
}

// ---------------------------------------------------------------------------------------------
// Model 4: seal policy liveness for waiters
// ---------------------------------------------------------------------------------------------

/// Three records per writer, each waited for. 15,456 framed bytes: at least four pages, so a
/// consumer that stops after one or two pages always finds them.
const WAITING_LENS: [&[usize]; 3] = [&[100, 5000, 40], &[5000, 40, 100], &[40, 100, 5000]];

/// Who else uses the log while the writers wait.
#[derive(Clone, Copy, Debug)]
enum Consumer {
    /// Nobody: each waiter seals its own page (rule 3).
    None,
    /// A consumer in `wait_ready(None)` that reads and releases everything (rules 1, 2 and 3).
    Drains,
    /// A consumer that reads `pages` pages without releasing them, then drops its cursor, busy,
    /// while writers may still wait on it (rule 4), or on ring space it held.
    StopsAfter { pages: u64 },
}

fn stop_after(mut cursor: Cursor, pages: u64) -> Reading {
    let mut reading = Reading::default();
    for _ in 0..pages {
        assert!(cursor.wait_ready(None).expect("wait_ready"));
        let page = cursor.next_ready().expect("validates").expect("ready");
        reading.feed(page, |_| {});
    }
    drop(cursor); // disengages while busy: must seal for the waiters
    reading
}

fn waiting_model(consumer: Consumer, wait: Wait) {
    waiting_model_with(consumer, wait, Style::Append);
}

fn waiting_model_with(consumer: Consumer, wait: Wait, style: Style) {
    let log = Log::in_memory(LogOptions::new().slots(4)).expect("log");
    let records: usize = WAITING_LENS.iter().map(|lens| lens.len()).sum();
    let consumer_thread = match consumer {
        Consumer::None => None,
        Consumer::Drains => {
            let cursor = log.cursor(0).expect("cursor");
            Some(spawn("consumer".into(), move || {
                consume_all(cursor, records, false)
            }))
        }
        Consumer::StopsAfter { pages } => {
            let cursor = log.cursor(0).expect("cursor");
            Some(spawn("consumer".into(), move || stop_after(cursor, pages)))
        }
    };
    let writers: Vec<_> = (0u32..)
        .zip(WAITING_LENS)
        .map(|(writer, lens)| spawn_writer(&log, writer, lens, style, wait))
        .collect();
    let written = join_all(writers);
    assert_eq!(written.len(), records);
    let last = written
        .iter()
        .map(|w| w.pos.lsn_last)
        .max()
        .expect("records");
    assert!(log.committed_lsn() > last, "every record is committed");

    if let Some(handle) = consumer_thread {
        let reading = handle.join().expect("consumer thread");
        match consumer {
            Consumer::Drains => check_exactly_once(&written, &reading),
            Consumer::StopsAfter { pages } => assert_eq!(reading.next_lsn, pages),
            Consumer::None => unreachable!(),
        }
    }
}

#[test]
fn waiters_return_with_no_consumer() {
    check(
        || waiting_model(Consumer::None, Wait::AfterEach),
        1500,
        1500,
    );
}

#[test]
fn waiters_return_with_a_draining_consumer() {
    check(
        || waiting_model(Consumer::Drains, Wait::AfterEach),
        2000,
        2000,
    );
}

#[test]
fn waiters_return_when_the_consumer_stops() {
    check(
        || waiting_model(Consumer::StopsAfter { pages: 1 }, Wait::AfterEach),
        1000,
        1000,
    );
    check(
        || waiting_model(Consumer::StopsAfter { pages: 2 }, Wait::AfterEach),
        1000,
        1000,
    );
}

/// Rule 3b: waiters that leave sealing only to a *waiting* consumer, and seal their own page when
/// the consumer is busy, still never block forever, whatever the consumer does.
#[test]
fn ring_waiters_return_whatever_the_consumer_does() {
    check(
        || waiting_model(Consumer::None, Wait::InRingAfterEach),
        1000,
        1000,
    );
    check(
        || waiting_model(Consumer::Drains, Wait::InRingAfterEach),
        1500,
        1500,
    );
    check(
        || waiting_model(Consumer::StopsAfter { pages: 1 }, Wait::InRingAfterEach),
        1000,
        1000,
    );
    check(|| async_consumer_model(Wait::InRingAfterEach), 1000, 1000);
}

// ---------------------------------------------------------------------------------------------
// Model 5: an async consumer (a network shipper) — no lost wake-ups, rule 1 and rule 2 hold
// ---------------------------------------------------------------------------------------------

/// Consumes like `consume_all`, but as a future on shuttle's executor: `poll_ready` with the
/// executor's waker. A lost wake-up leaves every thread blocked, which shuttle reports.
async fn consume_all_async(mut cursor: Cursor, records: usize) -> Reading {
    let mut reading = Reading::default();
    for _ in 0..CONSUMER_ROUNDS_MAX {
        if reading.records.len() == records {
            return reading;
        }
        std::future::poll_fn(|cx| cursor.poll_ready(cx))
            .await
            .expect("poll_ready");
        let before = reading.next_lsn;
        reading.drain_runs(&mut cursor);
        assert!(reading.next_lsn > before, "poll_ready returned a page");
    }
    panic!(
        "async consumer read only {} of {records} records",
        reading.records.len()
    );
}

fn async_consumer_model(wait: Wait) {
    async_consumer_model_with(wait, Style::Append);
}

fn async_consumer_model_with(wait: Wait, style: Style) {
    let log = Log::in_memory(LogOptions::new().slots(4)).expect("log");
    let cursor = log.cursor(0).expect("cursor");
    let records: usize = BACKPRESSURE_LENS.iter().map(|lens| lens.len()).sum();
    let consumer = spawn("async-consumer".into(), move || {
        shuttle::future::block_on(consume_all_async(cursor, records))
    });
    let writers: Vec<_> = (0u32..)
        .zip(BACKPRESSURE_LENS)
        .map(|(writer, lens)| spawn_writer(&log, writer, lens, style, wait))
        .collect();
    let written = join_all(writers);
    let reading = consumer.join().expect("consumer thread");
    check_exactly_once(&written, &reading);
}

#[test]
fn an_async_consumer_reads_everything_through_a_full_ring() {
    check(|| async_consumer_model(Wait::No), 1500, 1500);
}

#[test]
fn waiters_return_with_an_async_consumer() {
    check(|| async_consumer_model(Wait::AfterEach), 1500, 1500);
}

// ---------------------------------------------------------------------------------------------
// Model 10: unannounced commits — the seal request moves from the commit to the wait (rule 2)
// ---------------------------------------------------------------------------------------------

/// Writers commit with `commit_unannounced`, so no commit asks the consumer to seal the page it
/// opened; their waits ask instead (`wait_committed`, `wait_in_ring`), or `request_seal` does for
/// a writer that never waits. Against the async consumer (which seals only when asked since it
/// last sealed), the blocking consumer and no consumer: every wait returns, and the consumer
/// reads every record exactly once, so no asked-for page is left open.
#[test]
fn unannounced_commits_are_sealed_when_their_writers_wait_or_ask() {
    check(
        || async_consumer_model_with(Wait::AfterEach, Style::Unannounced),
        1000,
        1000,
    );
    check(
        || async_consumer_model_with(Wait::InRingAfterEach, Style::Unannounced),
        1000,
        1000,
    );
    check(
        || async_consumer_model_with(Wait::RequestSeal, Style::Unannounced),
        1000,
        1000,
    );
    check(
        || waiting_model_with(Consumer::Drains, Wait::AfterEach, Style::Unannounced),
        1000,
        1000,
    );
    check(
        || waiting_model_with(Consumer::Drains, Wait::InRingAfterEach, Style::Unannounced),
        1000,
        1000,
    );
    check(
        || waiting_model_with(Consumer::None, Wait::AfterEach, Style::Unannounced),
        500,
        500,
    );
    check(
        || waiting_model_with(Consumer::None, Wait::InRingAfterEach, Style::Unannounced),
        500,
        500,
    );
}

// ---------------------------------------------------------------------------------------------
// Model 6: a follower log fed through a full ring, its feeder woken by the consumer's releases
// ---------------------------------------------------------------------------------------------

/// An origin's pages: the backpressure records appended to a roomy log, sealed, copied out.
fn origin_pages() -> (Vec<u8>, usize) {
    let log = Log::in_memory(LogOptions::new().slots(32)).expect("origin log");
    let mut cursor = log.cursor(0).expect("cursor");
    let mut records = 0;
    for (writer, lens) in (0u32..).zip(BACKPRESSURE_LENS) {
        for (index, &len) in (0u32..).zip(lens) {
            log.append(&make_record(writer, index, len))
                .expect("append");
            records += 1;
        }
    }
    log.seal();
    let mut pages = Vec::new();
    while let Some(run) = cursor.next_run(32).expect("run") {
        pages.extend_from_slice(run.bytes);
    }
    (pages, records)
}

fn follower_model() {
    let (pages, records) = origin_pages();
    let log = Log::in_memory(LogOptions::new().slots(4).follower(true)).expect("follower");
    let cursor = log.cursor(0).expect("cursor");
    let consumer = spawn("consumer".into(), move || {
        consume_all(cursor, records, false)
    });
    let feeder = {
        let log = log.clone();
        spawn("feeder".into(), move || {
            shuttle::future::block_on(async move {
                let mut offered = &pages[..];
                for _ in 0..64 {
                    if offered.is_empty() {
                        return;
                    }
                    let ingested = std::future::poll_fn(|cx| log.poll_ingest(cx, offered))
                        .await
                        .expect("ingest");
                    offered = &offered[ingested.pages * pagemesh_logpage::PAGE_SIZE..];
                }
                panic!("feeder made no progress in 64 rounds");
            })
        })
    };
    feeder.join().expect("feeder thread");
    let reading = consumer.join().expect("consumer thread");
    assert_eq!(reading.records.len(), records);
    for read in &reading.records {
        assert_eq!(
            read.len,
            BACKPRESSURE_LENS[read.writer as usize][read.index as usize]
        );
    }
}

#[test]
fn a_follower_fed_through_a_full_ring_gets_every_page() {
    check(follower_model, 1500, 1500);
}

// ---------------------------------------------------------------------------------------------
// Model 7: the durable watermark, its flushes and its waiters
// ---------------------------------------------------------------------------------------------

/// Record lengths per durable writer: in all about 3.5 pages, through a 4-slot ring.
const DURABLE_LENS: [&[usize]; 2] = [&[24, 5000, 300, 900], &[4100, 60, 2000]];

/// What the sync hook saw: the range being synced, and where the last completed sync ended.
#[derive(Default)]
struct Syncs {
    syncing: AtomicBool,
    completed_to: AtomicU64,
    count: AtomicU64,
    /// Where the last completed sync ended, for a thread to block on.
    ended: Consumed,
}

/// A log whose sync is `syncs`' hook: it checks one sync at a time, contiguous ranges, and yields
/// in the middle so that commits and waiters interleave with it; `fail_at` fails that sync
/// (0-based) and every later one.
fn hooked_log(syncs: &Arc<Syncs>, fail_at: u64) -> Log {
    Log::in_memory(hooked_options(LogOptions::new().slots(4), syncs, fail_at)).expect("log")
}

/// `options` with `syncs`' hook (see [`hooked_log`]).
fn hooked_options(options: LogOptions, syncs: &Arc<Syncs>, fail_at: u64) -> LogOptions {
    let hook_syncs = Arc::clone(syncs);
    options.sync_hook(move |from, to| {
        let syncs = &hook_syncs;
        assert!(from < to, "a sync with nothing to sync");
        assert!(
            !syncs.syncing.swap(true, Ordering::SeqCst),
            "two syncs at once"
        );
        assert_eq!(
            from,
            syncs.completed_to.load(Ordering::SeqCst),
            "a sync starts where the last completed one ended"
        );
        thread::yield_now();
        let number = syncs.count.fetch_add(1, Ordering::SeqCst);
        syncs.syncing.store(false, Ordering::SeqCst);
        if number >= fail_at {
            return Err(std::io::Error::from_raw_os_error(5)); // EIO
        }
        syncs.completed_to.store(to, Ordering::SeqCst);
        syncs.ended.publish(to);
        Ok(())
    })
}

/// Checks the watermark against the syncs: never beyond a completed one, never past a page that
/// is not finished.
fn check_durable(log: &Log, syncs: &Syncs) {
    let durable = log.durable_lsn();
    assert!(
        durable <= syncs.completed_to.load(Ordering::SeqCst),
        "durable watermark {durable} beyond every completed sync"
    );
    assert!(durable <= log.committed_lsn());
}

fn spawn_durable_writer(log: &Log, syncs: &Arc<Syncs>, writer: u32) -> JoinHandle<()> {
    let (log, syncs) = (log.clone(), Arc::clone(syncs));
    spawn(format!("durable-writer-{writer}"), move || {
        for (index, &len) in (0u32..).zip(DURABLE_LENS[writer as usize]) {
            let pos = log
                .append(&make_record(writer, index, len))
                .expect("append");
            assert!(log.wait_durable(pos, None).expect("wait_durable"));
            assert!(log.durable_lsn() > pos.lsn_last, "returned before the sync");
            check_durable(&log, &syncs);
        }
    })
}

/// With `flusher`, a Flusher thread runs too; with `async_waiter`, one more writer waits through
/// `poll_durable`, which only the flusher serves.
fn durable_model(flusher: bool, async_waiter: bool) {
    let syncs = Arc::new(Syncs::default());
    let log = hooked_log(&syncs, u64::MAX);
    let flusher = flusher.then(|| log.spawn_flusher().expect("flusher"));
    let mut threads: Vec<_> = (0..2)
        .map(|writer| spawn_durable_writer(&log, &syncs, writer))
        .collect();
    if async_waiter {
        let log = log.clone();
        threads.push(spawn("async-waiter".into(), move || {
            shuttle::future::block_on(async move {
                for index in 0..2 {
                    let pos = log.append(&make_record(9, index, 700)).expect("append");
                    std::future::poll_fn(|cx| log.poll_durable(cx, pos))
                        .await
                        .expect("poll_durable");
                    assert!(log.durable_lsn() > pos.lsn_last);
                }
            })
        }));
    }
    let observer = {
        let (log, syncs) = (log.clone(), Arc::clone(&syncs));
        spawn("observer".into(), move || {
            for _ in 0..6 {
                check_durable(&log, &syncs);
                thread::yield_now();
            }
        })
    };
    for thread in threads {
        thread.join().expect("writer");
    }
    observer.join().expect("observer");
    if let Some(flusher) = flusher {
        flusher.stop().expect("the flusher stops cleanly");
    }
    check_durable(&log, &syncs);
}

#[test]
fn the_durable_watermark_never_passes_a_sync_and_waiters_always_wake() {
    check(|| durable_model(false, false), 1000, 1000);
    check(|| durable_model(true, false), 1000, 1000);
}

#[test]
fn an_async_durable_waiter_is_served_by_the_flusher() {
    check(|| durable_model(true, true), 1000, 1000);
}

/// Commits writer 1's durable-model records and seals their pages (`wait_committed`), never
/// waiting for durability; returns the last record's position.
fn spawn_committer(log: &Log) -> JoinHandle<CommitPos> {
    let log = log.clone();
    spawn("committer".into(), move || {
        let mut last = None;
        for (index, &len) in (0u32..).zip(DURABLE_LENS[1]) {
            let pos = log.append(&make_record(1, index, len)).expect("append");
            wait_committed(&log, pos);
            last = Some(pos);
        }
        last.expect("the committer wrote records")
    })
}

/// A leader commits one record and waits for it to be durable (it leads the flush), while a
/// committer commits three and seals their pages (`wait_committed`) but never waits for
/// durability: only the flusher syncs the committer's pages that finish during the leader's
/// flush or after it.
fn unasked_model() {
    let syncs = Arc::new(Syncs::default());
    let log = hooked_log(&syncs, u64::MAX);
    let flusher = log.spawn_flusher().expect("flusher");
    let leader = {
        let log = log.clone();
        spawn("leader".into(), move || {
            let pos = log.append(&make_record(0, 0, 300)).expect("append");
            assert!(log.wait_durable(pos, None).expect("wait_durable"));
        })
    };
    let committer = spawn_committer(&log);
    leader.join().expect("leader");
    let last = committer.join().expect("committer");
    // Blocks until a sync covers the committer's last page: a flusher asleep leaves every
    // thread blocked, and shuttle reports the deadlock.
    syncs.ended.wait_past(last.lsn_last);
    check_durable(&log, &syncs);
    flusher.stop().expect("the flusher stops cleanly");
}

#[test]
fn the_flusher_never_sleeps_through_a_page_nobody_waits_for() {
    check(unasked_model, 1000, 1000);
}

/// A committer finishes its pages (no durable waits) while the flusher syncs them, and the
/// flusher is stopped once the committer is done: every page finished before the stop is
/// durable after it, even when the stop lands while a flush that began earlier still runs.
fn stop_model() {
    let syncs = Arc::new(Syncs::default());
    let log = hooked_log(&syncs, u64::MAX);
    let flusher = log.spawn_flusher().expect("flusher");
    spawn_committer(&log).join().expect("committer");
    let committed = log.committed_lsn();
    flusher.stop().expect("the flusher stops cleanly");
    assert!(
        log.durable_lsn() >= committed,
        "pages finished before the stop left unsynced: durable {} < {committed}",
        log.durable_lsn()
    );
    check_durable(&log, &syncs);
}

#[test]
fn stopping_the_flusher_syncs_every_page_finished_before_the_stop() {
    check(stop_model, 1000, 1000);
}

// ---------------------------------------------------------------------------------------------
// Model 8: a failed sync poisons the log
// ---------------------------------------------------------------------------------------------

/// What one writer saw: records a wait reported durable, and the failed range if it saw one.
#[derive(Debug, Default)]
struct Outcome {
    durable: Vec<CommitPos>,
    failed: Option<(u64, u64)>,
}

fn poisoned_range(error: &Error) -> (u64, u64) {
    match error {
        Error::Poisoned {
            lsn_from, lsn_to, ..
        } => (*lsn_from, *lsn_to),
        other => panic!("expected Error::Poisoned, got {other}"),
    }
}

fn spawn_failing_writer(log: &Log, writer: u32) -> JoinHandle<Outcome> {
    let log = log.clone();
    spawn(format!("writer-{writer}"), move || {
        let mut outcome = Outcome::default();
        for (index, &len) in (0u32..).zip(DURABLE_LENS[writer as usize]) {
            let appended = log.append(&make_record(writer, index, len));
            if let Some(range) = outcome.failed {
                let error = appended.expect_err("appends fail once the log is poisoned");
                assert_eq!(poisoned_range(&error), range, "the same failure each time");
                continue;
            }
            let pos = match appended {
                Ok(pos) => pos,
                Err(error) => {
                    outcome.failed = Some(poisoned_range(&error));
                    continue;
                }
            };
            match log.wait_durable(pos, None) {
                Ok(done) => {
                    assert!(done);
                    outcome.durable.push(pos);
                }
                Err(error) => outcome.failed = Some(poisoned_range(&error)),
            }
        }
        outcome
    })
}

fn failed_sync_model() {
    let syncs = Arc::new(Syncs::default());
    let log = hooked_log(&syncs, 1);
    let flusher = log.spawn_flusher().expect("flusher");
    let writers: Vec<_> = (0..2).map(|w| spawn_failing_writer(&log, w)).collect();
    let outcomes: Vec<Outcome> = writers
        .into_iter()
        .map(|w| w.join().expect("writer"))
        .collect();
    let failure = outcomes.iter().find_map(|o| o.failed);
    if let Some((lsn_from, lsn_to)) = failure {
        assert!(lsn_from < lsn_to);
        assert_eq!(
            log.durable_lsn(),
            lsn_from,
            "the watermark stops at the failure"
        );
        for outcome in &outcomes {
            if let Some(range) = outcome.failed {
                assert_eq!(range, (lsn_from, lsn_to));
            }
            for pos in &outcome.durable {
                assert!(
                    pos.lsn_last < lsn_from,
                    "a record reported durable was in the failed sync"
                );
            }
        }
        assert!(matches!(
            flusher.stop(),
            Err(Error::Poisoned { .. }) | Ok(())
        ));
    } else {
        // Every record was covered by the first sync; the flusher's last flush may still fail.
        let _ = flusher.stop();
    }
    check_durable(&log, &syncs);
}

#[test]
fn a_failed_sync_fails_its_waiters_and_every_later_write() {
    check(failed_sync_model, 1500, 1500);
}

// ---------------------------------------------------------------------------------------------
// Model 9: a pacing consumer
// ---------------------------------------------------------------------------------------------

/// What a pacing consumer has read, for writers that wait until their record is consumed (as a
/// commit waits until the applier applied it).
#[derive(Default)]
struct Consumed {
    end: shuttle::sync::Mutex<u64>,
    changed: shuttle::sync::Condvar,
}

impl Consumed {
    fn publish(&self, end: u64) {
        *self.end.lock().expect("consumed lock") = end;
        self.changed.notify_all();
    }

    fn wait_past(&self, lsn: u64) {
        let mut end = self.end.lock().expect("consumed lock");
        while *end <= lsn {
            end = self.changed.wait(end).expect("consumed wait");
        }
    }
}

/// The applier's loop over a cursor: wait for a page, let a backlog of `pages_min` build (no
/// deadline: only the backlog, a hurry or the close ends the pace), read and release everything
/// ready, publish. Returns at close, once everything was read.
fn pace_and_consume(mut cursor: Cursor, consumed: &Consumed, pages_min: u64) -> Reading {
    let mut reading = Reading::default();
    for _ in 0..CONSUMER_ROUNDS_MAX {
        match cursor.wait_ready(None) {
            Ok(true) => {}
            Err(Error::Closed) => return reading,
            other => panic!("wait_ready: {other:?}"),
        }
        let lag = cursor.wait_backlog(pages_min, None);
        assert!(lag > 0, "a page was ready before the pace");
        reading.drain(&mut cursor, true);
        consumed.publish(cursor.position());
    }
    panic!("the pacing consumer did not finish in {CONSUMER_ROUNDS_MAX} rounds");
}

/// How a writer of the pacing model waits after each record.
#[derive(Clone, Copy, Debug)]
enum PacedWait {
    /// `Log::hurry`, then until the consumer has read the record (a commit waiting for
    /// `Applied`).
    HurryThenConsumed,
    /// `wait_committed`, which leaves sealing to an engaged consumer (rule 3): the pacing
    /// consumer must not count as one (rule 6).
    Committed,
}

fn pacing_model(waits: [PacedWait; 3], pages_min: u64) {
    pacing_model_with(waits, pages_min, Style::Append);
}

fn pacing_model_with(waits: [PacedWait; 3], pages_min: u64, style: Style) {
    let log = Log::in_memory(LogOptions::new().slots(4)).expect("log");
    let consumed = Arc::new(Consumed::default());
    let consumer = {
        let (cursor, consumed) = (log.cursor(0).expect("cursor"), Arc::clone(&consumed));
        spawn("pacer".into(), move || {
            pace_and_consume(cursor, &consumed, pages_min)
        })
    };
    let writers: Vec<_> = (0u32..)
        .zip(WAITING_LENS.iter().zip(waits))
        .map(|(writer, (lens, wait))| {
            let (log, consumed) = (log.clone(), Arc::clone(&consumed));
            spawn(format!("writer-{writer}"), move || {
                let mut written = Vec::new();
                for (index, &len) in (0u32..).zip(*lens) {
                    let record = write_record(&log, (writer, index), len, style, || {});
                    match wait {
                        PacedWait::HurryThenConsumed => {
                            log.hurry(record.pos.lsn_last);
                            consumed.wait_past(record.pos.lsn_last);
                        }
                        PacedWait::Committed => wait_committed(&log, record.pos),
                    }
                    written.push(record);
                }
                written
            })
        })
        .collect();
    let written = join_all(writers);
    log.seal();
    log.close();
    let reading = consumer.join().expect("pacer thread");
    check_exactly_once(&written, &reading);
}

/// A hurry is never lost: writers that hurry and then wait for the consumer, while it paces for
/// a backlog they never reach by themselves, are all served.
#[test]
fn a_pacing_consumer_never_sleeps_through_a_hurry() {
    use PacedWait::HurryThenConsumed as Hurry;
    check(|| pacing_model([Hurry, Hurry, Hurry], 64), 1500, 1500);
}

/// With unannounced commits (core's), nothing but the hurry asks the consumer for the writer's
/// page, whether it is pacing or waiting for a page (`wait_ready`): the hurry must wake it.
#[test]
fn a_hurry_is_a_seal_request_for_unannounced_commits() {
    use PacedWait::{Committed, HurryThenConsumed as Hurry};
    check(
        || pacing_model_with([Hurry, Hurry, Hurry], 64, Style::Unannounced),
        1500,
        1500,
    );
    check(
        || pacing_model_with([Committed, Hurry, Hurry], 2, Style::Unannounced),
        1000,
        1000,
    );
}

/// While a consumer paces, `wait_committed` waiters seal their own pages (rule 6); one
/// hurrying writer runs alongside.
#[test]
fn a_pacing_consumer_leaves_sealing_to_waiters() {
    use PacedWait::{Committed, HurryThenConsumed as Hurry};
    check(
        || pacing_model([Committed, Committed, Hurry], 2),
        1500,
        1500,
    );
    check(
        || pacing_model([Committed, Committed, Committed], 2),
        1000,
        1000,
    );
}

/// Two writers each commit one record that fills a page exactly (so it seals itself) and wait,
/// without hurrying, until the consumer has read it; the consumer paces for a backlog of two
/// pages. Appended, each record also requests a seal; unannounced, only the watermark's
/// advance to the second page can wake the consumer: a lost wake-up there blocks every thread.
fn backlog_model(style: Style) {
    whole_pages_model(style, |cursor, consumed| {
        pace_and_consume(cursor, consumed, 2)
    });
}

/// The writers of `backlog_model`, against the consumer `consume` (which reads with the cursor
/// and publishes what it read). With `Style::Unannounced` no commit makes a seal request, so
/// only the watermark's advance can wake the consumer; `Style::Append` requests seals too.
fn whole_pages_model(style: Style, consume: fn(Cursor, &Consumed) -> Reading) {
    let log = Log::in_memory(LogOptions::new().slots(4)).expect("log");
    let consumed = Arc::new(Consumed::default());
    let consumer = {
        let (cursor, consumed) = (log.cursor(0).expect("cursor"), Arc::clone(&consumed));
        spawn("pacer".into(), move || consume(cursor, &consumed))
    };
    let len = pagemesh_logpage::PAYLOAD_SIZE - RECORD_HEADER_SIZE;
    let writers: Vec<_> = (0u32..2)
        .map(|writer| {
            let (log, consumed) = (log.clone(), Arc::clone(&consumed));
            spawn(format!("writer-{writer}"), move || {
                let record = write_record(&log, (writer, 0), len, style, || {});
                assert_eq!(record.pos.lsn_last, record.pos.seq / 4096, "one whole page");
                consumed.wait_past(record.pos.lsn_last);
                vec![record]
            })
        })
        .collect();
    let written = join_all(writers);
    log.close();
    let reading = consumer.join().expect("pacer thread");
    check_exactly_once(&written, &reading);
}

#[test]
fn a_pacing_consumer_wakes_when_its_backlog_is_ready() {
    check(|| backlog_model(Style::Append), 2000, 2000);
    check(|| backlog_model(Style::Unannounced), 2000, 2000);
}

// ---------------------------------------------------------------------------------------------
// Model 11: a pacing async shipper (`Cursor::poll_paced`) — no ship request or backlog lost
// ---------------------------------------------------------------------------------------------

/// A network shipper that lets `pages_min` pages build, as a future on shuttle's executor: it
/// reads and releases only on `Backlog::Ship`, and treats `Backlog::Started` as its caller's
/// timer never firing (no timer here), so only a ship request, a seal request or the backlog can
/// make it ship. A lost wake-up leaves every thread blocked.
async fn ship_paced(mut cursor: Cursor, consumed: &Consumed, pages_min: u64) -> Reading {
    let mut reading = Reading::default();
    for _ in 0..CONSUMER_ROUNDS_MAX {
        match std::future::poll_fn(|cx| cursor.poll_paced(cx, pages_min)).await {
            Ok(Backlog::Ship) => {}
            Ok(Backlog::Started) => continue,
            Err(Error::Closed) => return reading,
            Err(other) => panic!("poll_paced: {other}"),
        }
        let before = reading.next_lsn;
        reading.drain_runs(&mut cursor);
        assert!(reading.next_lsn > before, "Ship with a page ready");
        consumed.publish(cursor.position());
    }
    panic!("the pacing shipper did not finish in {CONSUMER_ROUNDS_MAX} rounds");
}

/// How a writer of the paced-shipper model waits after each record, until the shipper has read
/// it (as a commit waits for a replica's ack).
#[derive(Clone, Copy, Debug)]
enum ShipWait {
    /// `wait_committed`, then `request_ship` (core's `Replicated`).
    CommittedThenShip,
    /// `request_ship` before the page is sealed, then `request_seal` (core's
    /// `DurableReplicated`, whose durable wait seals).
    ShipThenSeal,
}

/// Records of one whole page each: they seal their own pages, so no seal request is made and
/// only the ship request can reach the shipper.
const WHOLE_PAGE: usize = pagemesh_logpage::PAYLOAD_SIZE - RECORD_HEADER_SIZE;
const WHOLE_PAGE_LENS: [&[usize]; 3] = [&[WHOLE_PAGE; 2], &[WHOLE_PAGE; 2], &[WHOLE_PAGE; 2]];

fn paced_ship_model(waits: [ShipWait; 3], lens: [&'static [usize]; 3]) {
    let log = Log::in_memory(LogOptions::new().slots(4)).expect("log");
    let consumed = Arc::new(Consumed::default());
    let shipper = {
        let (cursor, consumed) = (log.cursor(0).expect("cursor"), Arc::clone(&consumed));
        spawn("shipper".into(), move || {
            shuttle::future::block_on(ship_paced(cursor, &consumed, 64))
        })
    };
    let writers: Vec<_> = (0u32..)
        .zip(lens.into_iter().zip(waits))
        .map(|(writer, (lens, wait))| {
            let (log, consumed) = (log.clone(), Arc::clone(&consumed));
            spawn(format!("writer-{writer}"), move || {
                let mut written = Vec::new();
                for (index, &len) in (0u32..).zip(lens) {
                    let record =
                        write_record(&log, (writer, index), len, Style::Unannounced, || {});
                    match wait {
                        ShipWait::CommittedThenShip => {
                            wait_committed(&log, record.pos);
                            log.request_ship(record.pos.lsn_last);
                        }
                        ShipWait::ShipThenSeal => {
                            log.request_ship(record.pos.lsn_last);
                            log.request_seal(record.pos);
                        }
                    }
                    consumed.wait_past(record.pos.lsn_last);
                    written.push(record);
                }
                written
            })
        })
        .collect();
    let written = join_all(writers);
    log.close();
    let reading = shipper.join().expect("shipper thread");
    check_exactly_once(&written, &reading);
}

/// Writers wait for the shipper to read their records while it paces for a backlog (64 pages)
/// they never reach: only their requests can make it ship, and every one is served.
#[test]
fn a_pacing_shipper_never_sleeps_through_a_ship_request() {
    use ShipWait::{CommittedThenShip as Committed, ShipThenSeal as Early};
    check(
        || paced_ship_model([Committed, Committed, Committed], WAITING_LENS),
        1500,
        1500,
    );
    check(
        || paced_ship_model([Early, Early, Committed], WAITING_LENS),
        1500,
        1500,
    );
    check(
        || paced_ship_model([Committed, Committed, Committed], WHOLE_PAGE_LENS),
        1000,
        1000,
    );
}

/// Two writers each commit one whole page (it seals itself) and wait, without asking, until the
/// shipper read it; the shipper paces for two pages. The watermark's advance to the second page
/// wakes it, and so do the seal requests of appended records.
fn paced_backlog_model() {
    whole_pages_model(Style::Append, |cursor, consumed| {
        shuttle::future::block_on(ship_paced(cursor, consumed, 2))
    });
}

/// The same writers committing unannounced (no seal request at all) to a shipper that ships
/// every page: only the watermark's advance to the page it waits for can wake it. (With a
/// backlog of two, a lone last page rightly waits for the caller's timer, which never fires
/// here.) Caught a blocking pacer's and an async pacer's wake-up points sharing one threshold
/// if the async one is then woken only with the blocking ones.
fn paced_unannounced_model() {
    whole_pages_model(Style::Unannounced, |cursor, consumed| {
        shuttle::future::block_on(ship_paced(cursor, consumed, 1))
    });
}

#[test]
fn a_pacing_shipper_wakes_when_its_backlog_is_ready() {
    check(paced_backlog_model, 2000, 2000);
    check(paced_unannounced_model, 2000, 2000);
}

// ---------------------------------------------------------------------------------------------
// Model 12: a follower's flusher that paces its syncs
// ---------------------------------------------------------------------------------------------

/// A follower log whose flusher paces for an hour (`LogOptions::flush_pace`; shuttle's
/// timed waits never time out, so only a wake-up ends the pace) is fed an origin's pages in two
/// runs, while an async waiter, which never syncs itself, waits for the last page to be durable.
/// Ingesting a page does not wake a pacing flusher; the waiter's wish must, whether it comes
/// before its page arrives or after.
fn paced_follower_flush_model() {
    let (pages, _) = origin_pages();
    let last_lsn = (pages.len() / pagemesh_logpage::PAGE_SIZE - 1) as u64;
    let syncs = Arc::new(Syncs::default());
    let options = LogOptions::new()
        .slots(8)
        .follower(true)
        .flush_pace(std::time::Duration::from_secs(3600));
    let log = Log::in_memory(hooked_options(options, &syncs, u64::MAX)).expect("follower");
    let flusher = log.spawn_flusher().expect("flusher");
    let feeder = {
        let log = log.clone();
        spawn("feeder".into(), move || {
            let page = pagemesh_logpage::PAGE_SIZE;
            for run in [&pages[..page], &pages[page..]] {
                let ingested = log.ingest(run).expect("ingest");
                assert_eq!(ingested.pages * page, run.len(), "the ring has room");
                thread::yield_now();
            }
        })
    };
    let waiter = {
        let log = log.clone();
        spawn("async-waiter".into(), move || {
            let pos = CommitPos {
                seq: 0,
                lsn_last: last_lsn,
            };
            shuttle::future::block_on(std::future::poll_fn(|cx| log.poll_durable(cx, pos)))
                .expect("poll_durable");
            assert!(log.durable_lsn() > last_lsn);
        })
    };
    feeder.join().expect("feeder");
    waiter.join().expect("waiter");
    check_durable(&log, &syncs);
    flusher.stop().expect("the flusher stops cleanly");
    assert_eq!(log.durable_lsn(), last_lsn + 1);
}

#[test]
fn a_pacing_follower_flusher_is_woken_by_a_durable_waiter() {
    check(paced_follower_flush_model, 1000, 1000);
}
