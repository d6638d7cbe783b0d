//! `RecordReader::feed` never panics on any sequence of valid pages, and decodes a well-formed
//! log exactly.
//!
//! Random bytes almost never pass the page crc, so this target writes its pages itself: an
//! arbitrary list of records (lengths from 1 byte to 16 pages, some aborted, some followed by a
//! partial seal) is framed into a byte stream and cut into pages with `write_page`, as the log
//! does. A few arbitrary mutations then damage the run while keeping most pages valid: drop,
//! duplicate or swap pages, flip payload bytes and re-seal the crc, rewrite header fields
//! (payload length, first-record offset, record count, LSN) into other valid values, or insert
//! raw bytes. Every page that validates is fed, in full or compact form, to one reader, which may
//! start anywhere in the run and may cap the record length.
//!
//! Always: no panic, every record has bytes, no record exceeds the cap, and between two errors
//! sequence numbers increase. Without mutations (and with no cap below the longest record), the
//! reader must report no error and yield exactly the committed records that start at or after
//! the first page fed, in order, with their sequence numbers.

#![no_main]

use std::hint::black_box;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use pagemesh_logpage::page::HEADER_SIZE;
use pagemesh_logpage::page::{write_page, PageMeta, LSN_LIMIT};
use pagemesh_logpage::{validate, PageFlags, RecordReader, PAGE_SIZE, PAYLOAD_SIZE};

/// Records written per input.
const RECORDS_MAX: usize = 64;
/// Pages the writer may fill (the stream stops growing past this).
const PAGES_MAX: usize = 48;
/// Mutations applied per input.
const MUTATIONS_MAX: usize = 4;
const ABORTED_BIT: u32 = 1 << 31;
const CRC_OFFSET: usize = 40;

#[derive(Debug)]
struct Input {
    start_lsn: u64,
    committed_lag: u64,
    epoch: u64,
    /// Index of the first page fed to the reader (modulo the page count).
    skip_pages: u8,
    /// Bit `i % 64` set: feed page `i` in compact form.
    compact_mask: u64,
    record_len_max: Option<u32>,
    records: Vec<RecordSpec>,
    mutations: Vec<Mutation>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut input = Self {
            // Up to the format's limit, leaving room for the pages an input can build, so the
            // overflow edge stays covered without asking write_page for an illegal LSN.
            start_lsn: u.arbitrary::<u64>()? % (LSN_LIMIT - (1 << 16)),
            committed_lag: u.arbitrary()?,
            epoch: u.arbitrary()?,
            skip_pages: u.arbitrary()?,
            compact_mask: u.arbitrary()?,
            record_len_max: u.arbitrary()?,
            records: Vec::new(),
            mutations: Vec::new(),
        };
        let mutation_count = u.int_in_range(0..=MUTATIONS_MAX)?;
        for _ in 0..mutation_count {
            input.mutations.push(u.arbitrary()?);
        }
        for spec in u.arbitrary_iter::<RecordSpec>()?.take(RECORDS_MAX) {
            input.records.push(spec?);
        }
        Ok(input)
    }
}

#[derive(Arbitrary, Debug)]
struct RecordSpec {
    len: RecordLen,
    fill: u8,
    aborted: bool,
    /// Seal the page right after this record (a partial page, if the record left room).
    seal_after: bool,
    /// Crash halfway through writing this record: the open page is lost, and the next page is
    /// the first of a new life, flagged RESUMED.
    crash: bool,
}

#[derive(Arbitrary, Debug)]
enum RecordLen {
    /// 1..=8 bytes: records that end a few bytes short of a page end, splitting the next header.
    Tiny(u8),
    /// 1..=4096 bytes.
    Small(u16),
    /// 1..=65536 bytes: up to 17 pages.
    Large(u16),
}

impl RecordLen {
    fn bytes(&self) -> usize {
        match *self {
            Self::Tiny(n) => 1 + usize::from(n % 8),
            Self::Small(n) => 1 + usize::from(n) % PAGE_SIZE,
            Self::Large(n) => 1 + usize::from(n),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    Drop {
        page: u8,
    },
    Duplicate {
        page: u8,
    },
    Swap {
        a: u8,
        b: u8,
    },
    /// Flip a payload byte and re-seal the crc: a valid page whose records lie.
    FlipPayload {
        page: u8,
        index: u16,
        xor: u8,
    },
    /// Rebuild the page with `write_page` and some header fields changed (to valid values).
    Rewrite {
        page: u8,
        lsn: Option<u64>,
        payload_len: Option<u16>,
        first_record_offset: Option<u16>,
        record_count: Option<u16>,
        resumed: Option<bool>,
    },
    /// Insert raw bytes (up to a page), with the crc re-sealed if `reseal`.
    Insert {
        at: u8,
        bytes: Vec<u8>,
        reseal: bool,
    },
}

/// A record the writer framed, where its header starts.
struct Written {
    page_index: usize,
    offset: usize,
    bytes: Vec<u8>,
    aborted: bool,
    /// Index of the page holding its last byte.
    end_page_index: usize,
    /// Not in the log: a crash tore it.
    lost: bool,
}

/// Frames records into pages as the log does: back to back, across page ends, with partial pages
/// only at record boundaries.
struct Writer<'i> {
    input: &'i Input,
    pages: Vec<Vec<u8>>,
    page: Box<[u8; PAGE_SIZE]>,
    pos: usize,
    first_record_offset: Option<usize>,
    record_count: u16,
    /// The next page sealed is the first after a crash.
    resumed: bool,
    crashes: u64,
}

impl<'i> Writer<'i> {
    fn new(input: &'i Input) -> Self {
        Self {
            input,
            pages: Vec::new(),
            page: Box::new([0; PAGE_SIZE]),
            pos: 0,
            first_record_offset: None,
            record_count: 0,
            resumed: false,
            crashes: 0,
        }
    }

    fn lsn(&self, index: usize) -> u64 {
        self.input.start_lsn.wrapping_add(index as u64)
    }

    /// Frames one record; with `spec.crash`, only its first half, then crashes.
    fn record(&mut self, spec: &RecordSpec, written: &mut Vec<Written>) {
        let len = spec.len.bytes();
        let bytes: Vec<u8> = (0..len)
            .map(|i| spec.fill.wrapping_add((i % 251) as u8))
            .collect();
        let (page_index, offset) = (self.pages.len(), self.pos);
        self.first_record_offset.get_or_insert(self.pos);
        self.record_count += 1;
        let mut word = len as u32;
        if spec.aborted {
            word |= ABORTED_BIT;
        }
        self.put(&word.to_le_bytes());
        if spec.crash {
            self.put(&bytes[..len / 2]);
            written.push(Written {
                page_index,
                offset,
                bytes,
                aborted: spec.aborted,
                end_page_index: usize::MAX,
                lost: true,
            });
            self.crash(written);
            return;
        }
        self.put(&bytes);
        written.push(Written {
            page_index,
            offset,
            bytes,
            aborted: spec.aborted,
            end_page_index: if self.pos == 0 {
                self.pages.len() - 1
            } else {
                self.pages.len()
            },
            lost: false,
        });
        if spec.seal_after {
            self.seal();
        }
    }

    /// The open page never reaches the log, with every record that ends in it; the next page
    /// sealed (the same LSN) starts the new life.
    fn crash(&mut self, written: &mut [Written]) {
        let torn = self.pages.len();
        for record in written.iter_mut().filter(|w| w.end_page_index >= torn) {
            record.lost = true;
        }
        self.page.fill(0);
        self.pos = 0;
        self.first_record_offset = None;
        self.record_count = 0;
        self.resumed = true;
        self.crashes += 1;
    }

    fn put(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (PAYLOAD_SIZE - self.pos).min(bytes.len());
            let at = HEADER_SIZE + self.pos;
            self.page[at..at + take].copy_from_slice(&bytes[..take]);
            self.pos += take;
            bytes = &bytes[take..];
            if self.pos == PAYLOAD_SIZE {
                self.seal();
            }
        }
    }

    /// Finishes the open page, if it holds anything.
    fn seal(&mut self) {
        if self.pos == 0 {
            return;
        }
        let lsn = self.lsn(self.pages.len());
        let meta = PageMeta {
            lsn,
            committed_lsn: lsn.saturating_sub(self.input.committed_lag),
            epoch: self.input.epoch,
            payload_len: self.pos as u16,
            first_record_offset: self.first_record_offset.unwrap_or(0) as u16,
            record_count: self.record_count,
            end_of_epoch: self.input.epoch & 1 == 1,
            resumed: self.resumed,
        };
        write_page(&mut self.page, &meta);
        self.pages.push(self.page.to_vec());
        self.pos = 0;
        self.first_record_offset = None;
        self.record_count = 0;
        self.resumed = false;
    }
}

fuzz_target!(|input: Input| {
    let mut writer = Writer::new(&input);
    let mut written = Vec::new();
    for spec in &input.records {
        if writer.pages.len() >= PAGES_MAX {
            break;
        }
        writer.record(spec, &mut written);
    }
    writer.seal();
    let crashes = writer.crashes;
    // A crash with no page after it leaves the log ending inside the torn record.
    let ends_in_crash = writer.resumed;
    let mut pages = writer.pages;
    for mutation in &input.mutations {
        mutate(&mut pages, mutation);
    }
    if pages.is_empty() {
        return;
    }
    let skip = usize::from(input.skip_pages) % pages.len();
    let outcome = feed_all(&input, &pages[skip..]);

    let len_max = written.iter().map(|w| w.bytes.len()).max().unwrap_or(0);
    let capped = input
        .record_len_max
        .is_some_and(|max| (max as usize) < len_max);
    let lsn_end = input.start_lsn.checked_add(pages.len() as u64);
    if input.mutations.is_empty() && !capped && lsn_end.is_some_and(|end| end <= u64::MAX / 4096) {
        let expected: Vec<(u64, &[u8])> = written
            .iter()
            .filter(|w| w.page_index >= skip && !w.aborted && !w.lost)
            .map(|w| {
                (
                    seq_of(input.start_lsn + w.page_index as u64, w.offset),
                    &w.bytes[..],
                )
            })
            .collect();
        let got: Vec<(u64, &[u8])> = outcome.records.iter().map(|(s, b)| (*s, &b[..])).collect();
        assert_eq!(
            outcome.errors,
            Vec::<String>::new(),
            "a well-formed log decodes"
        );
        assert!(got == expected, "records differ from what was written");
        if !ends_in_crash {
            assert!(!outcome.mid_record, "the log ends at a record boundary");
        }
        assert!(
            outcome.abandoned <= crashes,
            "records dropped only at crashes"
        );
    }
    black_box(outcome);
});

fn seq_of(lsn: u64, offset: usize) -> u64 {
    lsn * PAGE_SIZE as u64 + offset as u64
}

#[derive(Debug, Default)]
struct Outcome {
    records: Vec<(u64, Vec<u8>)>,
    errors: Vec<String>,
    mid_record: bool,
    abandoned: u64,
}

/// Feeds every page that validates to one reader; checks what holds whatever the pages.
fn feed_all(input: &Input, pages: &[Vec<u8>]) -> Outcome {
    let mut reader = RecordReader::new();
    if let Some(max) = input.record_len_max {
        reader = reader.with_record_len_max(max as usize);
    }
    let len_max = input.record_len_max.map_or(usize::MAX, |max| max as usize);
    let mut outcome = Outcome::default();
    let mut last_seq: Option<u64> = None;
    for (index, bytes) in pages.iter().enumerate() {
        let Ok(mut page) = validate(bytes) else {
            continue;
        };
        if input.compact_mask & (1 << (index % 64)) != 0 {
            page = validate(page.compact_bytes()).expect("the compact form of a valid page");
        }
        let result = reader.feed(page, |record| {
            assert!(!record.bytes.is_empty(), "a record has bytes");
            assert!(record.bytes.len() <= len_max, "a record within the cap");
            if let Some(last) = last_seq {
                assert!(record.seq > last, "seq {} after {}", record.seq, last);
            }
            last_seq = Some(record.seq);
            outcome
                .records
                .push((record.seq, record.bytes.into_owned()));
        });
        if let Err(error) = result {
            outcome.errors.push(error.to_string());
            last_seq = None;
        }
    }
    outcome.mid_record = reader.is_mid_record();
    outcome.abandoned = reader.abandoned_records();
    outcome
}

fn mutate(pages: &mut Vec<Vec<u8>>, mutation: &Mutation) {
    let pick = |i: u8, len: usize| usize::from(i) % len.max(1);
    match mutation {
        Mutation::Insert { at, bytes, reseal } => {
            let mut bytes = bytes[..bytes.len().min(PAGE_SIZE)].to_vec();
            if *reseal {
                reseal_crc(&mut bytes);
            }
            let at = usize::from(*at) % (pages.len() + 1);
            pages.insert(at, bytes);
        }
        _ if pages.is_empty() => {}
        Mutation::Drop { page } => {
            pages.remove(pick(*page, pages.len()));
        }
        Mutation::Duplicate { page } => {
            let at = pick(*page, pages.len());
            pages.insert(at, pages[at].clone());
        }
        Mutation::Swap { a, b } => {
            let (a, b) = (pick(*a, pages.len()), pick(*b, pages.len()));
            pages.swap(a, b);
        }
        Mutation::FlipPayload { page, index, xor } => {
            let at = pick(*page, pages.len());
            let bytes = &mut pages[at];
            if let Ok(view) = validate(bytes) {
                let at = HEADER_SIZE + usize::from(*index) % view.payload().len();
                bytes[at] ^= xor;
                reseal_crc(bytes);
            }
        }
        Mutation::Rewrite {
            page,
            lsn,
            payload_len,
            first_record_offset,
            record_count,
            resumed,
        } => {
            let at = pick(*page, pages.len());
            let fields = Fields {
                lsn: *lsn,
                payload_len: *payload_len,
                first_record_offset: *first_record_offset,
                record_count: *record_count,
                resumed: *resumed,
            };
            rewrite(&mut pages[at], &fields);
        }
    }
}

/// Header fields a [`Mutation::Rewrite`] replaces (`None`: keep).
struct Fields {
    lsn: Option<u64>,
    payload_len: Option<u16>,
    first_record_offset: Option<u16>,
    record_count: Option<u16>,
    resumed: Option<bool>,
}

/// Rebuilds a valid page with some header fields replaced, clamped to what `write_page` accepts.
fn rewrite(bytes: &mut Vec<u8>, fields: &Fields) {
    let Ok(view) = validate(bytes) else {
        return;
    };
    let header = view.header();
    let lsn = fields.lsn.map_or(header.lsn(), |lsn| lsn % LSN_LIMIT);
    let payload_len = fields.payload_len.map_or(header.payload_len(), |len| {
        1 + usize::from(len) % PAYLOAD_SIZE
    });
    let resumed = fields
        .resumed
        .unwrap_or(header.flags().contains(PageFlags::RESUMED));
    let first = fields
        .first_record_offset
        .or(header.first_record_offset())
        .map_or(0, |offset| usize::from(offset) % payload_len);
    let count = fields.record_count.unwrap_or(header.record_count());
    let mut count = usize::from(count) % (payload_len - first + 1);
    // A resumed page starts a record at offset 0.
    let first = if resumed { 0 } else { first };
    if resumed {
        count = count.max(1);
    }
    let meta = PageMeta {
        lsn,
        committed_lsn: header.committed_lsn().min(lsn),
        epoch: header.epoch(),
        payload_len: payload_len as u16,
        first_record_offset: first as u16,
        record_count: count as u16,
        end_of_epoch: false,
        resumed,
    };
    let mut page = Box::new([0u8; PAGE_SIZE]);
    page[..bytes.len()].copy_from_slice(bytes);
    write_page(&mut page, &meta);
    *bytes = page.to_vec();
}

/// Sets the crc field to what `validate` computes over the bytes present.
fn reseal_crc(bytes: &mut [u8]) {
    if bytes.len() < HEADER_SIZE {
        return;
    }
    bytes[CRC_OFFSET..CRC_OFFSET + 4].fill(0);
    let payload_len = usize::from(u16::from_le_bytes([bytes[32], bytes[33]]));
    let end = (HEADER_SIZE + payload_len).min(bytes.len());
    let crc = crc32c::crc32c(&bytes[..end]);
    bytes[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}
