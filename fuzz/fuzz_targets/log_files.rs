//! The log's files on open (`Log::open`: the head, the segments, an old one-file `log.ring` to
//! convert): on any bytes in them it must never panic, and a log that opens must hold a run of
//! valid pages, in place, at most a ring long, that a second open finds again. The history
//! reader (`HistoryReader`, which reads the head and the segments without the log's lock) runs
//! over the same files first: it must never panic, and hand out only valid pages with the LSN
//! asked for.
//!
//! Random bytes almost never make a valid head or page, so the input describes the files: a head
//! that is raw bytes or a sealed header with fuzzed fields, and segments (and old-format slots)
//! whose pages are raw bytes or pages `write_page` builds from fuzzed fields, at fuzzed LSNs.

#![no_main]

use std::path::Path;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pagemesh_logpage::page::write_page;
use pagemesh_logpage::{
    validate, HistoryPage, HistoryReader, Log, LogOptions, PageMeta, PAGE_SIZE,
};

/// The ring the log is opened with; segments are a quarter of it.
const SLOTS: u64 = 16;
const SEGMENT_PAGES: u64 = SLOTS / 4;

#[derive(Arbitrary, Debug)]
enum Head {
    Missing,
    Raw(Vec<u8>),
    /// A header of this layout and crc, over fuzzed fields.
    Sealed {
        legacy_magic: bool,
        version: u32,
        pages: u64,
        released_lsn: u64,
    },
}

#[derive(Arbitrary, Debug)]
enum Page {
    Zero,
    Raw(Vec<u8>),
    Valid { lsn: u8, epoch: u8, payload_len: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    head: Head,
    /// Segments by index (first LSN = index * SEGMENT_PAGES), each its pages.
    segments: Vec<(u8, Vec<Page>, bool)>,
    /// An old-format file's header and slots, if any.
    legacy: Option<(Head, Vec<Page>)>,
    recover_from: Option<u64>,
}

fn header(magic: &[u8; 8], version: u32, pages: u64, released_lsn: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; PAGE_SIZE];
    bytes[..8].copy_from_slice(magic);
    bytes[8..12].copy_from_slice(&version.to_le_bytes());
    bytes[12..16].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    bytes[16..24].copy_from_slice(&pages.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..24]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    bytes[32..40].copy_from_slice(&released_lsn.to_le_bytes());
    bytes
}

fn head_bytes(head: &Head, legacy: bool) -> Option<Vec<u8>> {
    match head {
        Head::Missing => None,
        Head::Raw(bytes) => Some(bytes.iter().copied().take(2 * PAGE_SIZE).collect()),
        Head::Sealed {
            legacy_magic,
            version,
            pages,
            released_lsn,
        } => {
            let magic = if *legacy_magic || legacy {
                b"PMRING\0\x01"
            } else {
                b"PMLOGHD\x01"
            };
            // Mostly the right version and size, so the checks behind them are reached.
            let version = if version % 4 == 0 { *version } else { 1 };
            let pages = match pages % 4 {
                0 => *pages,
                _ if legacy => SLOTS,
                _ => SEGMENT_PAGES,
            };
            // Mostly small, where the pages are; sometimes anything at all.
            let released_lsn = match released_lsn % 3 {
                0 => *released_lsn,
                _ => released_lsn % 32,
            };
            Some(header(magic, version, pages, released_lsn))
        }
    }
}

fn page_bytes(page: &Page) -> Vec<u8> {
    let mut bytes = vec![0u8; PAGE_SIZE];
    match page {
        Page::Zero => {}
        Page::Raw(raw) => {
            let len = raw.len().min(PAGE_SIZE);
            bytes[..len].copy_from_slice(&raw[..len]);
        }
        Page::Valid {
            lsn,
            epoch,
            payload_len,
        } => {
            let meta = PageMeta {
                lsn: u64::from(*lsn),
                committed_lsn: u64::from(*lsn),
                epoch: u64::from(*epoch),
                payload_len: u16::from(*payload_len).max(1),
                first_record_offset: 0,
                record_count: 0,
                end_of_epoch: false,
                resumed: false,
            };
            let page: &mut [u8; PAGE_SIZE] = (&mut bytes[..]).try_into().expect("a page");
            write_page(page, &meta);
        }
    }
    bytes
}

fn write_files(dir: &Path, input: &Input) {
    if let Some(bytes) = head_bytes(&input.head, false) {
        std::fs::write(dir.join("log.head"), bytes).expect("write the head");
    }
    for (index, pages, whole) in input.segments.iter().take(6) {
        let mut bytes: Vec<u8> = pages.iter().take(8).flat_map(page_bytes).collect();
        if *whole {
            bytes.resize(SEGMENT_PAGES as usize * PAGE_SIZE, 0);
        }
        let first = u64::from(index % 16) * SEGMENT_PAGES;
        let name = format!("log-{first:016x}.seg");
        std::fs::write(dir.join(name), bytes).expect("write a segment");
    }
    if let Some((head, slots)) = &input.legacy {
        let mut bytes = head_bytes(head, true).unwrap_or_default();
        bytes.resize(PAGE_SIZE, 0);
        bytes.extend(slots.iter().take(SLOTS as usize).flat_map(page_bytes));
        bytes.resize((SLOTS as usize + 1) * PAGE_SIZE, 0);
        std::fs::write(dir.join("log.ring"), bytes).expect("write the old ring");
    }
}

fn open(dir: &Path, recover_from: Option<u64>) -> pagemesh_logpage::Result<Log> {
    let mut options = LogOptions::new().slots(SLOTS);
    if let Some(lsn) = recover_from {
        // Mostly small, where the pages are; sometimes anything at all.
        options = options.recover_from(if lsn % 3 == 0 { lsn } else { lsn % 32 });
    }
    Log::open(dir, options)
}

/// Reads every page the segments written could hold through a [`HistoryReader`].
fn read_history(dir: &Path) {
    let Ok(Some(mut reader)) = HistoryReader::open(dir) else {
        return;
    };
    if reader.segments().is_err() {
        return;
    }
    for lsn in 0..16 * SEGMENT_PAGES {
        if let Ok(HistoryPage::Page(page)) = reader.read(lsn) {
            assert_eq!(page.lsn(), lsn);
            assert!(validate(page.page().compact_bytes()).is_ok());
        }
    }
}

fuzz_target!(|input: Input| {
    let dir = tempfile::tempdir().expect("temp dir");
    write_files(dir.path(), &input);
    read_history(dir.path());
    let log = match open(dir.path(), input.recover_from) {
        Ok(log) => log,
        Err(error) => {
            std::hint::black_box(error.to_string());
            return;
        }
    };
    let recovered = log.recovered();
    assert!(recovered.start_lsn <= recovered.end_lsn);
    assert!(
        recovered.end_lsn - recovered.start_lsn <= SLOTS,
        "{recovered:?}"
    );
    let mut cursor = log
        .cursor(recovered.start_lsn)
        .expect("a cursor at the start");
    for lsn in recovered.start_lsn..recovered.end_lsn {
        let page = cursor
            .next_ready()
            .expect("a recovered page validates")
            .expect("every recovered page is ready");
        assert_eq!(page.lsn(), lsn);
        assert!(validate(page.compact_bytes()).is_ok());
    }
    drop((cursor, log));
    // The second open finds the same run: the first one's invalidations and conversion stuck.
    let again = open(dir.path(), input.recover_from).expect("a log that opened opens again");
    let second = again.recovered();
    assert_eq!(
        (second.start_lsn, second.end_lsn),
        (recovered.start_lsn, recovered.end_lsn)
    );
    assert_eq!(second.discarded_pages, 0, "nothing left to discard");
});
