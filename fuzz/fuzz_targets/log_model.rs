//! The log against a model: a `Vec` of the records appended, in order.
//!
//! An arbitrary list of at most 64 operations runs against a 16-slot in-memory log with one
//! cursor from page 0: appends of 1 to 20,000 bytes (whole, or written in pieces through a
//! reservation), reservations dropped uncommitted (aborted records, which readers must skip),
//! seals of the open page, and drains (read every ready page through a `RecordReader`, then
//! release it). The test never blocks: before each reservation it drains, and seals too if the
//! record might not fit in the pages the cursor has released.
//!
//! At the end it seals and drains once more, and asserts that the records read equal the model
//! exactly, in order, each at the sequence number its append returned; that every page the log
//! committed was read; and that no record is left half-read.

#![no_main]

use std::hint::black_box;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use pagemesh_logpage::{Cursor, Log, LogOptions, RecordReader, PAYLOAD_SIZE};

/// Operations per input.
const OPS_MAX: usize = 64;
/// Ring size in pages.
const SLOTS: u64 = 16;
/// Longest record appended (before the log's own cap).
const RECORD_LEN_MAX: usize = 20_000;
/// Bytes of a record header in the stream (see `record.rs`).
const RECORD_HEADER_SIZE: usize = 4;

#[derive(Debug)]
struct Ops(Vec<Op>);

impl<'a> Arbitrary<'a> for Ops {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut ops = Vec::new();
        for op in u.arbitrary_iter::<Op>()?.take(OPS_MAX) {
            ops.push(op?);
        }
        Ok(Self(ops))
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Append `1 + len % 20000` bytes.
    Append {
        len: u16,
        fill: u8,
    },
    /// Append `1 + len` bytes: many records per page, headers split across page ends.
    AppendSmall {
        len: u8,
        fill: u8,
    },
    /// Reserve, write the record in pieces of `1 + piece` bytes, commit.
    AppendPieces {
        len: u16,
        piece: u8,
        fill: u8,
    },
    /// Reserve, write `written` of the bytes, drop the reservation: an aborted record.
    Abort {
        len: u16,
        written: u16,
    },
    Seal,
    Drain,
}

/// A committed record, as the model expects to read it back.
type Entry = (u64, Vec<u8>);

struct Harness {
    log: Log,
    cursor: Cursor,
    reader: RecordReader,
    model: Vec<Entry>,
    read: Vec<Entry>,
}

fuzz_target!(|ops: Ops| {
    let log = Log::in_memory(LogOptions::new().slots(SLOTS)).expect("an in-memory log");
    let cursor = log.cursor(0).expect("a cursor from page 0");
    let mut harness = Harness {
        log,
        cursor,
        reader: RecordReader::new(),
        model: Vec::new(),
        read: Vec::new(),
    };
    for op in &ops.0 {
        harness.run(op);
    }
    harness.log.seal();
    harness.drain();
    assert!(
        harness.read == harness.model,
        "records read differ from the model"
    );
    assert_eq!(harness.cursor.position(), harness.log.committed_lsn());
    assert!(!harness.reader.is_mid_record(), "a record left half-read");
    black_box(harness.read);
});

impl Harness {
    fn run(&mut self, op: &Op) {
        match *op {
            Op::Append { len, fill } => {
                let bytes = self.record(1 + usize::from(len) % RECORD_LEN_MAX, fill);
                self.make_room(bytes.len());
                let pos = self.log.append(&bytes).expect("append");
                self.model.push((pos.seq, bytes));
            }
            Op::AppendSmall { len, fill } => {
                let bytes = self.record(1 + usize::from(len), fill);
                self.make_room(bytes.len());
                let pos = self.log.append(&bytes).expect("append");
                self.model.push((pos.seq, bytes));
            }
            Op::AppendPieces { len, piece, fill } => {
                let bytes = self.record(1 + usize::from(len) % RECORD_LEN_MAX, fill);
                self.make_room(bytes.len());
                let mut reservation = self.log.reserve(bytes.len()).expect("reserve");
                let seq = reservation.seq();
                for chunk in bytes.chunks(1 + usize::from(piece)) {
                    reservation.write(chunk);
                }
                assert_eq!(reservation.remaining(), 0);
                let pos = reservation.commit().expect("commit");
                assert_eq!(pos.seq, seq);
                self.model.push((pos.seq, bytes));
            }
            Op::Abort { len, written } => {
                let len = (1 + usize::from(len) % RECORD_LEN_MAX).min(self.log.record_len_max());
                self.make_room(len);
                let mut reservation = self.log.reserve(len).expect("reserve");
                let written = usize::from(written) % (len + 1);
                reservation.write(&vec![0xAB; written]);
                drop(reservation);
            }
            Op::Seal => {
                self.log.seal();
            }
            Op::Drain => self.drain(),
        }
    }

    /// `len` bytes (at most what the log accepts) that differ from record to record.
    fn record(&self, len: usize, fill: u8) -> Vec<u8> {
        let len = len.min(self.log.record_len_max());
        let salt = self.model.len() as u8;
        (0..len)
            .map(|i| fill.wrapping_add(salt).wrapping_add((i % 253) as u8))
            .collect()
    }

    /// Drains, and seals and drains again if a record of `len` bytes might not fit in the pages
    /// the cursor has released, so the reservation never waits for ring space.
    fn make_room(&mut self, len: usize) {
        self.drain();
        if !self.fits(len) {
            self.log.seal();
            self.drain();
        }
        assert!(self.fits(len), "a drained ring has room for {len} bytes");
    }

    fn fits(&self, len: usize) -> bool {
        let anchor = self.log.anchor();
        let end = anchor.offset as usize + RECORD_HEADER_SIZE + len;
        let last_lsn = anchor.lsn + (end / PAYLOAD_SIZE) as u64;
        last_lsn < self.cursor.released_lsn() + SLOTS
    }

    /// Reads every ready page, hands its records to the model's list, releases the pages.
    fn drain(&mut self) {
        while let Some(page) = self.cursor.next_ready().expect("a ready page validates") {
            let read = &mut self.read;
            self.reader
                .feed(page, |record| {
                    assert!(!record.bytes.is_empty());
                    read.push((record.seq, record.bytes.into_owned()));
                })
                .expect("the log's pages decode");
        }
        assert!(
            self.model.starts_with(&self.read),
            "records read are a prefix of the model"
        );
        let position = self.cursor.position();
        self.cursor.release(position);
        assert_eq!(self.cursor.released_lsn(), position);
    }
}
