//! The 4 KB log page: a 48-byte header and 4048 bytes of payload.
//!
//! All integers are little-endian, on disk and on the wire; the header fields are byte arrays
//! wrapped in [`U16Le`]/[`U32Le`]/[`U64Le`], so the struct has alignment 1 and can be viewed in
//! place from any byte buffer (a ring slot, a received frame, a binlog value).
//!
//! ```text
//! offset size field                meaning
//!      0    4 magic                "PMLG" (0x474c4d50 read as little-endian u32)
//!      4    2 version              page format version, FORMAT_VERSION
//!      6    2 flags                SEALED_PARTIAL | CONTINUATION_ONLY | END_OF_EPOCH | RESUMED
//!      8    8 lsn                  page number, 0, 1, 2, … per origin
//!     16    8 committed_lsn        every page below this was complete when this one was sealed
//!     24    8 epoch                failover term of the writer
//!     32    2 payload_len          bytes of payload in use, 1..=4048
//!     34    2 first_record_offset  where the first record that *starts* here begins; 0xFFFF if none
//!     36    2 record_count         records that start in this page
//!     38    2 reserved             zero
//!     40    4 crc32c               over the header (this field zeroed) and payload[..payload_len]
//!     44    4 reserved             zero
//!     48 4048 payload              records, see `record.rs`
//! ```
//!
//! The crc covers only `payload[..payload_len]`, so a partial page can be shipped and stored in
//! its *compact* form (header plus the used payload); [`validate`] accepts either form. The log
//! zeroes the unused tail when it seals a page, so the full form is deterministic too.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};

/// Bytes in a page.
pub const PAGE_SIZE: usize = 4096;
/// Bytes in a page header.
pub const HEADER_SIZE: usize = 48;
/// Bytes of payload a page can hold.
pub const PAYLOAD_SIZE: usize = PAGE_SIZE - HEADER_SIZE;
/// The page magic, "PMLG".
pub const MAGIC: u32 = u32::from_le_bytes(*b"PMLG");
/// The page format this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Page LSNs are below this, so that every `seq = lsn * PAGE_SIZE + offset` fits in a u64
/// (2^52 pages of 4 KB: 16 EiB of log).
pub const LSN_LIMIT: u64 = u64::MAX / PAGE_SIZE as u64;
/// `first_record_offset` of a page in which no record starts.
pub const NO_RECORD_START: u16 = 0xFFFF;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 4;
const FLAGS_OFFSET: usize = VERSION_OFFSET + 2;
const LSN_OFFSET: usize = FLAGS_OFFSET + 2;
const COMMITTED_LSN_OFFSET: usize = LSN_OFFSET + 8;
const EPOCH_OFFSET: usize = COMMITTED_LSN_OFFSET + 8;
const PAYLOAD_LEN_OFFSET: usize = EPOCH_OFFSET + 8;
const FIRST_RECORD_OFFSET_OFFSET: usize = PAYLOAD_LEN_OFFSET + 2;
const RECORD_COUNT_OFFSET: usize = FIRST_RECORD_OFFSET_OFFSET + 2;
const RESERVED0_OFFSET: usize = RECORD_COUNT_OFFSET + 2;
const CRC_OFFSET: usize = RESERVED0_OFFSET + 2;
const RESERVED1_OFFSET: usize = CRC_OFFSET + 4;
const _: () = assert!(RESERVED1_OFFSET + 4 == HEADER_SIZE);
const _: () = assert!(std::mem::size_of::<PageHeader>() == HEADER_SIZE);
const _: () = assert!(std::mem::align_of::<PageHeader>() == 1);
const _: () = assert!(std::mem::offset_of!(PageHeader, crc) == CRC_OFFSET);
const _: () = assert!(std::mem::offset_of!(PageHeader, payload_len) == PAYLOAD_LEN_OFFSET);
const _: () = assert!(PAYLOAD_SIZE < NO_RECORD_START as usize);

macro_rules! le_int {
    ($name:ident, $int:ty, $n:literal) => {
        #[doc = concat!("A little-endian `", stringify!($int), "` stored as bytes (alignment 1).")]
        #[repr(transparent)]
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
        pub struct $name([u8; $n]);

        impl $name {
            /// Encodes `value`.
            pub const fn new(value: $int) -> Self {
                Self(value.to_le_bytes())
            }
            /// Decodes the value.
            pub const fn get(self) -> $int {
                <$int>::from_le_bytes(self.0)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.get().fmt(f)
            }
        }
    };
}
le_int!(U16Le, u16, 2);
le_int!(U32Le, u32, 4);
le_int!(U64Le, u64, 8);

/// Page flags (the `flags` header field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageFlags(u16);

impl PageFlags {
    /// The page was sealed before it was full (`payload_len < PAYLOAD_SIZE`).
    pub const SEALED_PARTIAL: Self = Self(1);
    /// No record starts in this page: it holds only the middle or end of one.
    pub const CONTINUATION_ONLY: Self = Self(2);
    /// The last page its writer wrote in its epoch.
    pub const END_OF_EPOCH: Self = Self(4);
    /// The first page written after the log was reopened. No record continues into it: a record
    /// that the page before left open lost its tail in a crash (it was never in the committed log)
    /// and readers drop it. A resumed page always starts a record at offset 0.
    ///
    /// (Not in DESIGN.md's flag list; added because without it a reader cannot tell a record
    /// abandoned by a crash from corruption.)
    pub const RESUMED: Self = Self(8);
    const KNOWN: u16 = 15;

    /// The raw bits.
    pub const fn bits(self) -> u16 {
        self.0
    }
    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    /// `self` with the flags of `other` set too.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// The 48-byte page header; see the module docs for the byte layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct PageHeader {
    magic: U32Le,
    version: U16Le,
    flags: U16Le,
    lsn: U64Le,
    committed_lsn: U64Le,
    epoch: U64Le,
    payload_len: U16Le,
    first_record_offset: U16Le,
    record_count: U16Le,
    reserved0: U16Le,
    crc: U32Le,
    reserved1: U32Le,
}

/// What a sealer knows about a page; [`write_page`] turns it into a header and crc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageMeta {
    /// Page LSN.
    pub lsn: u64,
    /// Committed-LSN watermark when the page was sealed.
    pub committed_lsn: u64,
    /// Writer's epoch.
    pub epoch: u64,
    /// Payload bytes in use, `1..=PAYLOAD_SIZE`.
    pub payload_len: u16,
    /// Offset of the first record that starts here (ignored when `record_count` is 0).
    pub first_record_offset: u16,
    /// Records that start in this page.
    pub record_count: u16,
    /// Set [`PageFlags::END_OF_EPOCH`].
    pub end_of_epoch: bool,
    /// Set [`PageFlags::RESUMED`].
    pub resumed: bool,
}

impl PageHeader {
    /// Page LSN.
    pub fn lsn(&self) -> u64 {
        self.lsn.get()
    }
    /// Committed-LSN watermark when the page was sealed.
    pub fn committed_lsn(&self) -> u64 {
        self.committed_lsn.get()
    }
    /// Writer's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }
    /// Flags.
    pub fn flags(&self) -> PageFlags {
        PageFlags(self.flags.get())
    }
    /// Payload bytes in use.
    pub fn payload_len(&self) -> usize {
        usize::from(self.payload_len.get())
    }
    /// Offset of the first record that starts in this page, if any does.
    pub fn first_record_offset(&self) -> Option<u16> {
        let offset = self.first_record_offset.get();
        (offset != NO_RECORD_START).then_some(offset)
    }
    /// Records that start in this page.
    pub fn record_count(&self) -> u16 {
        self.record_count.get()
    }
    /// Stored crc32c.
    pub fn crc(&self) -> u32 {
        self.crc.get()
    }

    fn from_meta(meta: &PageMeta) -> Self {
        let mut flags = PageFlags::default();
        if usize::from(meta.payload_len) < PAYLOAD_SIZE {
            flags = flags.union(PageFlags::SEALED_PARTIAL);
        }
        if meta.record_count == 0 {
            flags = flags.union(PageFlags::CONTINUATION_ONLY);
        }
        if meta.end_of_epoch {
            flags = flags.union(PageFlags::END_OF_EPOCH);
        }
        if meta.resumed {
            flags = flags.union(PageFlags::RESUMED);
        }
        let first_record_offset = if meta.record_count == 0 {
            NO_RECORD_START
        } else {
            meta.first_record_offset
        };
        Self {
            magic: U32Le::new(MAGIC),
            version: U16Le::new(FORMAT_VERSION),
            flags: U16Le::new(flags.bits()),
            lsn: U64Le::new(meta.lsn),
            committed_lsn: U64Le::new(meta.committed_lsn),
            epoch: U64Le::new(meta.epoch),
            payload_len: U16Le::new(meta.payload_len),
            first_record_offset: U16Le::new(first_record_offset),
            record_count: U16Le::new(meta.record_count),
            reserved0: U16Le::new(0),
            crc: U32Le::new(0),
            reserved1: U32Le::new(0),
        }
    }
}

/// The crc32c of a page: the header with its crc field zeroed, then `payload`.
fn page_crc(header: &PageHeader, payload: &[u8]) -> u32 {
    let mut zeroed = *header;
    zeroed.crc = U32Le::new(0);
    crc32c::crc32c_append(crc32c::crc32c(bytemuck::bytes_of(&zeroed)), payload)
}

/// Writes a complete page into `page`: header from `meta`, crc, and zeroes over the unused tail
/// of the payload. The payload bytes `page[HEADER_SIZE..HEADER_SIZE + payload_len]` must already
/// be in place.
///
/// # Panics
/// If `meta.lsn` is not below [`LSN_LIMIT`], `meta.payload_len` is 0 or over [`PAYLOAD_SIZE`], or
/// its record fields are inconsistent:
/// the writer computes them, so that is a bug in the caller, not bad input.
pub fn write_page(page: &mut [u8; PAGE_SIZE], meta: &PageMeta) {
    assert!(
        meta.lsn < LSN_LIMIT,
        "lsn {} beyond the format's limit",
        meta.lsn
    );
    let payload_len = usize::from(meta.payload_len);
    assert!(
        (1..=PAYLOAD_SIZE).contains(&payload_len),
        "payload_len {payload_len}"
    );
    assert!(
        meta.record_count == 0 || meta.first_record_offset < meta.payload_len,
        "first record offset {} beyond payload {}",
        meta.first_record_offset,
        meta.payload_len
    );
    let (head, payload) = page.split_at_mut(HEADER_SIZE);
    payload[payload_len..].fill(0);
    let mut header = PageHeader::from_meta(meta);
    header.crc = U32Le::new(page_crc(&header, &payload[..payload_len]));
    head.copy_from_slice(bytemuck::bytes_of(&header));
    debug_assert!(
        validate(page).is_ok(),
        "write_page produced an invalid page"
    );
}

/// A validated page: its header and the payload bytes in use.
#[derive(Clone, Copy, Debug)]
pub struct PageRef<'a> {
    header: &'a PageHeader,
    payload: &'a [u8],
}

impl<'a> PageRef<'a> {
    /// A view of a header and payload validated together earlier (an [`crate::OwnedPage`]).
    pub(crate) fn from_parts(header: &'a PageHeader, payload: &'a [u8]) -> Self {
        Self { header, payload }
    }

    /// The header.
    pub fn header(&self) -> &'a PageHeader {
        self.header
    }
    /// Page LSN.
    pub fn lsn(&self) -> u64 {
        self.header.lsn()
    }
    /// The payload bytes in use (`payload_len` of them).
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
    /// Appends the page in full form ([`PAGE_SIZE`] bytes: the compact bytes, zero-padded), the
    /// form rings and PAGES frames hold.
    pub fn extend_full(&self, out: &mut Vec<u8>) {
        let compact = self.compact_bytes();
        out.extend_from_slice(compact);
        out.resize(out.len() + (PAGE_SIZE - compact.len()), 0);
    }

    /// The page in compact form: header and used payload, contiguous.
    pub fn compact_bytes(&self) -> &'a [u8] {
        let start = std::ptr::from_ref(self.header).cast::<u8>();
        // SAFETY: `validate` built `header` and `payload` from one slice, the header at its start
        // and the payload right after it, so the `HEADER_SIZE + payload.len()` bytes from the
        // header's address are one initialised, borrowed-for-'a allocation.
        unsafe { std::slice::from_raw_parts(start, HEADER_SIZE + self.payload.len()) }
    }
}

/// Views a page that [`validate`] accepted earlier, without checking its crc again: for a
/// [`crate::PageRun`], whose pages the cursor validated when it took the run and which nobody
/// writes while it is borrowed. `None` where the bytes are too short for the header's payload
/// length (never, for validated bytes), so it cannot panic either.
pub(crate) fn view_validated(bytes: &[u8]) -> Option<PageRef<'_>> {
    let header: &PageHeader = bytemuck::try_from_bytes(bytes.get(..HEADER_SIZE)?).ok()?;
    let payload = bytes.get(HEADER_SIZE..HEADER_SIZE + header.payload_len())?;
    Some(PageRef { header, payload })
}

/// Checks a page and views it in place. Accepts the full form ([`PAGE_SIZE`] bytes) or the
/// compact form (header plus `payload_len` bytes).
///
/// Whatever the bytes, this returns an error naming the field and the LSN the header claims;
/// it never panics.
pub fn validate(bytes: &[u8]) -> Result<PageRef<'_>> {
    let Some(head) = bytes.get(..HEADER_SIZE) else {
        return Err(Error::PageLength {
            len: bytes.len(),
            min: HEADER_SIZE,
            max: PAGE_SIZE,
        });
    };
    let header: &PageHeader = bytemuck::from_bytes(head);
    if header.magic.get() != MAGIC {
        return Err(Error::PageMagic {
            found: header.magic.get(),
            expected: MAGIC,
        });
    }
    let lsn = header.lsn();
    if lsn >= LSN_LIMIT {
        return Err(field(lsn, "lsn", lsn));
    }
    if header.version.get() != FORMAT_VERSION {
        return Err(Error::PageVersion {
            lsn,
            found: header.version.get(),
            supported: FORMAT_VERSION,
        });
    }
    let payload_len = header.payload_len();
    if payload_len == 0 || payload_len > PAYLOAD_SIZE {
        return Err(field(lsn, "payload_len", payload_len as u64));
    }
    if bytes.len() < HEADER_SIZE + payload_len || bytes.len() > PAGE_SIZE {
        return Err(Error::PageLength {
            len: bytes.len(),
            min: HEADER_SIZE + payload_len,
            max: PAGE_SIZE,
        });
    }
    let payload = &bytes[HEADER_SIZE..HEADER_SIZE + payload_len];
    let computed = page_crc(header, payload);
    if computed != header.crc() {
        return Err(Error::PageChecksum {
            lsn,
            stored: header.crc(),
            computed,
        });
    }
    check_fields(header)?;
    Ok(PageRef { header, payload })
}

fn field(lsn: u64, field: &'static str, value: u64) -> Error {
    Error::PageField { lsn, field, value }
}

/// The checks a crc cannot make: fields that are self-consistent only if a real writer made them.
fn check_fields(header: &PageHeader) -> Result<()> {
    let lsn = header.lsn();
    let flags = header.flags();
    let payload_len = header.payload_len();
    let count = header.record_count();
    if flags.bits() & !PageFlags::KNOWN != 0 {
        return Err(field(lsn, "flags", u64::from(flags.bits())));
    }
    if flags.contains(PageFlags::SEALED_PARTIAL) != (payload_len < PAYLOAD_SIZE) {
        return Err(field(lsn, "flags", u64::from(flags.bits())));
    }
    if flags.contains(PageFlags::CONTINUATION_ONLY) != (count == 0) {
        return Err(field(lsn, "flags", u64::from(flags.bits())));
    }
    if flags.contains(PageFlags::RESUMED) && header.first_record_offset() != Some(0) {
        return Err(field(
            lsn,
            "first_record_offset",
            u64::from(header.first_record_offset.get()),
        ));
    }
    match header.first_record_offset() {
        None if count != 0 => return Err(field(lsn, "record_count", u64::from(count))),
        Some(offset) if count == 0 || usize::from(offset) >= payload_len => {
            return Err(field(lsn, "first_record_offset", u64::from(offset)));
        }
        Some(offset) if usize::from(count) > payload_len - usize::from(offset) => {
            return Err(field(lsn, "record_count", u64::from(count)));
        }
        _ => {}
    }
    if header.committed_lsn() > lsn {
        return Err(field(lsn, "committed_lsn", header.committed_lsn()));
    }
    if header.reserved0.get() != 0 {
        return Err(field(lsn, "reserved0", u64::from(header.reserved0.get())));
    }
    if header.reserved1.get() != 0 {
        return Err(field(lsn, "reserved1", u64::from(header.reserved1.get())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(lsn: u64, payload_len: u16, first: u16, count: u16) -> PageMeta {
        PageMeta {
            lsn,
            committed_lsn: lsn / 2,
            epoch: 7,
            payload_len,
            first_record_offset: first,
            record_count: count,
            end_of_epoch: false,
            resumed: false,
        }
    }

    fn page_with(meta: &PageMeta, fill: u8) -> Box<[u8; PAGE_SIZE]> {
        let mut page = Box::new([0xEE; PAGE_SIZE]);
        page[HEADER_SIZE..HEADER_SIZE + usize::from(meta.payload_len)].fill(fill);
        write_page(&mut page, meta);
        page
    }

    #[test]
    fn an_lsn_whose_seq_would_overflow_is_refused() {
        let mut page = page_with(&meta(LSN_LIMIT - 1, 5, 0, 1), 1);
        assert!(validate(&page[..]).is_ok());
        // Patch the LSN past the limit and re-seal the crc, as a malicious or buggy peer could.
        page[LSN_OFFSET..LSN_OFFSET + 8].copy_from_slice(&LSN_LIMIT.to_le_bytes());
        let header: PageHeader = *bytemuck::from_bytes(&page[..HEADER_SIZE]);
        let crc = page_crc(&header, &page[HEADER_SIZE..HEADER_SIZE + 5]);
        page[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            validate(&page[..]),
            Err(Error::PageField { field: "lsn", .. })
        ));
    }

    #[test]
    fn layout_matches_the_documented_table() {
        let page = page_with(&meta(0x0001_0203_0405_0607, 100, 5, 3), 1);
        assert_eq!(&page[MAGIC_OFFSET..4], b"PMLG");
        assert_eq!(
            page[VERSION_OFFSET..VERSION_OFFSET + 2],
            FORMAT_VERSION.to_le_bytes()
        );
        assert_eq!(
            page[LSN_OFFSET..LSN_OFFSET + 8],
            0x0001_0203_0405_0607u64.to_le_bytes()
        );
        assert_eq!(
            page[PAYLOAD_LEN_OFFSET..PAYLOAD_LEN_OFFSET + 2],
            100u16.to_le_bytes()
        );
        assert_eq!(page[FLAGS_OFFSET], PageFlags::SEALED_PARTIAL.bits() as u8);
        assert!(
            page[HEADER_SIZE + 100..].iter().all(|&b| b == 0),
            "unused tail zeroed"
        );
    }

    #[test]
    fn compact_and_full_forms_validate_alike() {
        let page = page_with(&meta(9, 300, 0, 2), 3);
        let full = validate(&page[..]).unwrap();
        let compact = validate(&page[..HEADER_SIZE + 300]).unwrap();
        assert_eq!(full.compact_bytes(), compact.compact_bytes());
        assert_eq!(compact.payload().len(), 300);
        assert!(matches!(
            validate(&page[..HEADER_SIZE + 299]),
            Err(Error::PageLength { min: 348, .. })
        ));
    }

    #[test]
    fn a_validated_page_views_alike_without_its_crc() {
        let page = page_with(&meta(9, 300, 0, 2), 3);
        let checked = validate(&page[..]).unwrap();
        let viewed = view_validated(&page[..]).unwrap();
        assert_eq!(viewed.lsn(), 9);
        assert_eq!(viewed.compact_bytes(), checked.compact_bytes());
        // Too short for the payload length the header claims: no view, and no panic.
        assert!(view_validated(&page[..HEADER_SIZE + 299]).is_none());
        assert!(view_validated(&page[..HEADER_SIZE - 1]).is_none());
    }

    #[test]
    fn continuation_only_page_has_no_first_record() {
        let page = page_with(&meta(4, PAYLOAD_SIZE as u16, 17, 0), 9);
        let page = validate(&page[..]).unwrap();
        assert_eq!(page.header().first_record_offset(), None);
        assert!(page.header().flags().contains(PageFlags::CONTINUATION_ONLY));
        assert!(!page.header().flags().contains(PageFlags::SEALED_PARTIAL));
    }

    #[test]
    fn field_errors_name_the_field_and_lsn() {
        let mut page = page_with(&meta(42, 64, 0, 1), 1);
        page[RESERVED0_OFFSET] = 1;
        let header: PageHeader = *bytemuck::from_bytes(&page[..HEADER_SIZE]);
        let crc = page_crc(&header, &page[HEADER_SIZE..HEADER_SIZE + 64]);
        page[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        match validate(&page[..]) {
            Err(Error::PageField {
                lsn: 42,
                field: "reserved0",
                value: 1,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    fn arb_meta() -> impl Strategy<Value = PageMeta> {
        (
            0..LSN_LIMIT,
            1..=PAYLOAD_SIZE as u16,
            0..=5u16,
            any::<bool>(),
        )
            .prop_flat_map(|(lsn, payload_len, count, end_of_epoch)| {
                let count = count.min(payload_len);
                (0..payload_len - count + 1, 0..=lsn).prop_map(move |(first, committed_lsn)| {
                    PageMeta {
                        lsn,
                        committed_lsn,
                        epoch: lsn.rotate_left(7),
                        payload_len,
                        first_record_offset: if count == 0 { NO_RECORD_START } else { first },
                        record_count: count,
                        end_of_epoch,
                        resumed: false,
                    }
                })
            })
    }

    proptest! {
        #[test]
        fn header_round_trips(meta in arb_meta(), fill in any::<u8>()) {
            let page = page_with(&meta, fill);
            let view = validate(&page[..]).unwrap();
            let header = view.header();
            prop_assert_eq!(header.lsn(), meta.lsn);
            prop_assert_eq!(header.committed_lsn(), meta.committed_lsn);
            prop_assert_eq!(header.epoch(), meta.epoch);
            prop_assert_eq!(header.payload_len(), usize::from(meta.payload_len));
            prop_assert_eq!(header.record_count(), meta.record_count);
            prop_assert_eq!(header.flags().contains(PageFlags::END_OF_EPOCH), meta.end_of_epoch);
            if meta.record_count > 0 {
                prop_assert_eq!(header.first_record_offset(), Some(meta.first_record_offset));
            }
            prop_assert!(view.payload().iter().all(|&b| b == fill));
        }

        #[test]
        fn any_corrupted_byte_is_detected(
            meta in arb_meta(),
            index in 0..PAGE_SIZE,
            flip in 1..=255u8,
        ) {
            let mut page = page_with(&meta, 0x5A);
            let used = HEADER_SIZE + usize::from(meta.payload_len);
            page[index] ^= flip;
            let result = validate(&page[..]);
            if index < used {
                prop_assert!(result.is_err(), "flip at {} of {} went unnoticed", index, used);
            } else {
                // Past payload_len the bytes are outside the page's content and its crc.
                prop_assert!(result.is_ok());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = validate(&bytes);
        }
    }
}
