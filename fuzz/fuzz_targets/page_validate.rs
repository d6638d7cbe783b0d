//! `validate` never panics, and every page it accepts keeps the promises of a valid page.
//!
//! Each input is checked twice: as it comes, and with its crc32c re-sealed over whatever the
//! header says the page holds. Random bytes almost never carry a right crc, so without the second
//! pass the field checks behind the crc check would go unfuzzed.
//!
//! For an accepted page this asserts: the payload is `payload_len` bytes (1..=4048) viewed in
//! place; the compact form is header plus payload and validates to the same page; the full form
//! (compact bytes with any tail) validates too; the flags agree with the fields; and the page is
//! exactly what `write_page` builds from its own header fields (the encoding is canonical).

#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use pagemesh_logpage::page::{write_page, HEADER_SIZE};
use pagemesh_logpage::{validate, PageFlags, PageMeta, PageRef, PAGE_SIZE, PAYLOAD_SIZE};

/// Byte offsets of the header fields this target touches (see the table in `page.rs`).
const PAYLOAD_LEN_OFFSET: usize = 32;
const CRC_OFFSET: usize = 40;

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= HEADER_SIZE && data.len() <= PAGE_SIZE {
        let mut sealed = data.to_vec();
        reseal(&mut sealed);
        check(&sealed);
    }
});

/// Validates `bytes`; if that succeeds, asserts what a valid page promises.
fn check(bytes: &[u8]) {
    let page = match validate(bytes) {
        Ok(page) => page,
        Err(error) => {
            black_box(error.to_string());
            return;
        }
    };
    let header = page.header();
    let payload_len = header.payload_len();
    assert!((1..=PAYLOAD_SIZE).contains(&payload_len));
    assert_eq!(page.payload().len(), payload_len);
    assert_eq!(
        page.payload(),
        &bytes[HEADER_SIZE..HEADER_SIZE + payload_len]
    );
    assert_eq!(page.lsn(), header.lsn());

    let compact = page.compact_bytes();
    assert_eq!(compact.len(), HEADER_SIZE + payload_len);
    assert_eq!(
        compact,
        &bytes[..HEADER_SIZE + payload_len],
        "viewed in place"
    );
    assert_same(&validate(compact).expect("compact form validates"), &page);

    let mut full = Box::new([0xA5u8; PAGE_SIZE]);
    full[..compact.len()].copy_from_slice(compact);
    assert_same(&validate(&full[..]).expect("full form validates"), &page);

    check_flags(&page);
    assert_canonical(&page);
    black_box(page);
}

fn assert_same(a: &PageRef<'_>, b: &PageRef<'_>) {
    assert_eq!(a.header(), b.header());
    assert_eq!(a.payload(), b.payload());
    assert_eq!(a.compact_bytes(), b.compact_bytes());
}

/// The fields of an accepted page are self-consistent, as a real writer makes them.
fn check_flags(page: &PageRef<'_>) {
    let header = page.header();
    let flags = header.flags();
    assert_eq!(
        flags.contains(PageFlags::SEALED_PARTIAL),
        header.payload_len() < PAYLOAD_SIZE
    );
    assert_eq!(
        flags.contains(PageFlags::CONTINUATION_ONLY),
        header.record_count() == 0
    );
    assert_eq!(
        header.first_record_offset().is_none(),
        header.record_count() == 0
    );
    if let Some(offset) = header.first_record_offset() {
        let room = header.payload_len() - usize::from(offset);
        assert!(usize::from(offset) < header.payload_len());
        assert!(usize::from(header.record_count()) <= room);
    }
    if flags.contains(PageFlags::RESUMED) {
        assert_eq!(
            header.first_record_offset(),
            Some(0),
            "a resumed page starts a record"
        );
    }
    assert!(header.committed_lsn() <= header.lsn());
}

/// `write_page` rebuilds the page byte for byte from its header fields and payload.
fn assert_canonical(page: &PageRef<'_>) {
    let header = page.header();
    let meta = PageMeta {
        lsn: header.lsn(),
        committed_lsn: header.committed_lsn(),
        epoch: header.epoch(),
        payload_len: header.payload_len() as u16,
        first_record_offset: header.first_record_offset().unwrap_or(0),
        record_count: header.record_count(),
        end_of_epoch: header.flags().contains(PageFlags::END_OF_EPOCH),
        resumed: header.flags().contains(PageFlags::RESUMED),
    };
    let mut rebuilt = Box::new([0u8; PAGE_SIZE]);
    rebuilt[HEADER_SIZE..HEADER_SIZE + page.payload().len()].copy_from_slice(page.payload());
    write_page(&mut rebuilt, &meta);
    assert_eq!(&rebuilt[..page.compact_bytes().len()], page.compact_bytes());
}

/// Rewrites the crc field of `bytes` to the crc32c `validate` will compute, as far as the bytes
/// reach: the header with its crc zeroed, then `payload_len` bytes of payload.
fn reseal(bytes: &mut [u8]) {
    bytes[CRC_OFFSET..CRC_OFFSET + 4].fill(0);
    let payload_len = usize::from(u16::from_le_bytes([
        bytes[PAYLOAD_LEN_OFFSET],
        bytes[PAYLOAD_LEN_OFFSET + 1],
    ]));
    let end = (HEADER_SIZE + payload_len).min(bytes.len());
    let crc = crc32c::crc32c(&bytes[..end]);
    bytes[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}
