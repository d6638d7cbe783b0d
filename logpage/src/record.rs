//! Records: one transaction's bytes, framed in the log's byte stream.
//!
//! The payloads of consecutive pages, each cut at its `payload_len`, form one byte stream. In it a
//! record is a 4-byte little-endian header and its bytes:
//!
//! ```text
//! bits 0..31  length of the record's bytes, 1..2^31
//! bit  31     ABORTED: the writer dropped its reservation; readers skip the record
//! ```
//!
//! A record (header included) may start at any offset and run across any number of full pages; a
//! page sealed before it was full never has a record running out of it. A record's sequence
//! number is `lsn * PAGE_SIZE + offset` of its header: unique and increasing along the log.
//!
//! [`RecordReader`] walks validated pages in LSN order and yields whole records: borrowed from the
//! page when a record lies within one page, assembled into an owned buffer when it spans pages. It
//! cross-checks every page header (first-record offset, record count) against what it decodes, and
//! reports gaps and corruption with the LSN and offset.

use std::borrow::Cow;

use crate::error::{Error, RecordFault, Result};
use crate::page::{PageRef, PAGE_SIZE, PAYLOAD_SIZE};

/// Bytes of a record's header in the stream.
pub const RECORD_HEADER_SIZE: usize = 4;
/// Largest record length the framing can express.
pub const RECORD_LEN_MAX: usize = (1 << 31) - 1;
pub(crate) const ABORTED_BIT: u32 = 1 << 31;

/// The sequence number of the byte at `offset` of page `lsn`'s payload.
pub const fn seq_of(lsn: u64, offset: u16) -> u64 {
    lsn * PAGE_SIZE as u64 + offset as u64
}

/// A whole record read from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Sequence number: where the record's header starts.
    pub seq: u64,
    /// The record's bytes: borrowed if it lay in one page, owned if it was assembled.
    pub bytes: Cow<'a, [u8]>,
}

/// A record that runs past the end of the page being read.
#[derive(Debug)]
struct Pending {
    seq: u64,
    header: [u8; RECORD_HEADER_SIZE],
    header_len: usize,
    /// Set once the header is complete.
    len: Option<usize>,
    aborted: bool,
    bytes: Vec<u8>,
}

/// Reassembles records from pages fed in LSN order. See the module docs.
#[derive(Debug)]
pub struct RecordReader {
    next_lsn: Option<u64>,
    pending: Option<Pending>,
    record_len_max: usize,
}

impl Default for RecordReader {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordReader {
    /// A reader that starts at whatever page it is fed first. If that page begins in the middle of
    /// a record, the reader skips to the first record that starts in it.
    pub fn new() -> Self {
        Self {
            next_lsn: None,
            pending: None,
            record_len_max: RECORD_LEN_MAX,
        }
    }

    /// Refuses records longer than `max` bytes (a decoder's memory bound).
    pub fn with_record_len_max(mut self, max: usize) -> Self {
        self.record_len_max = max.min(RECORD_LEN_MAX);
        self
    }

    /// The LSN the next page must have, once a page was fed.
    pub fn next_lsn(&self) -> Option<u64> {
        self.next_lsn
    }

    /// Whether a record is in flight across the last page fed.
    pub fn is_mid_record(&self) -> bool {
        self.pending.is_some()
    }

    /// Decodes `page`, handing each record that completes in it to `on_record`.
    ///
    /// Records are handed over only once the whole page has checked out, so a corrupt page yields
    /// nothing. After an error the reader starts over as if new: the next page it is fed may begin
    /// mid-record, and it resynchronises at the first record that starts there.
    pub fn feed<'p>(&mut self, page: PageRef<'p>, on_record: impl FnMut(Record<'p>)) -> Result<()> {
        let lsn = page.lsn();
        if let Some(expected) = self.next_lsn {
            if lsn != expected {
                self.next_lsn = None;
                self.pending = None;
                return Err(Error::Gap {
                    expected,
                    found: lsn,
                });
            }
        }
        let mut out: Vec<Record<'p>> = Vec::new();
        let first = self.next_lsn.is_none();
        match decode_page(
            page,
            first,
            &mut self.pending,
            self.record_len_max,
            &mut out,
        ) {
            Ok(()) => {
                self.next_lsn = Some(lsn + 1);
                out.into_iter().for_each(on_record);
                Ok(())
            }
            Err(error) => {
                self.next_lsn = None;
                self.pending = None;
                Err(error)
            }
        }
    }
}

fn corrupt(lsn: u64, offset: usize, fault: RecordFault) -> Error {
    Error::RecordCorrupt {
        lsn,
        offset: offset.min(u16::MAX as usize) as u16,
        fault,
    }
}

/// Decodes one page. `first` is true for the first page a reader sees (it may start mid-record).
fn decode_page<'p>(
    page: PageRef<'p>,
    first: bool,
    pending_slot: &mut Option<Pending>,
    record_len_max: usize,
    out: &mut Vec<Record<'p>>,
) -> Result<()> {
    let lsn = page.lsn();
    let payload = page.payload();
    let header = page.header();
    let full = payload.len() == PAYLOAD_SIZE;
    let mut pos = 0usize;

    // 1. The continuation of a record from the previous page, if any.
    if let Some(mut p) = pending_slot.take() {
        pos = continue_record(&mut p, payload, lsn, record_len_max)?;
        let complete = p.len.is_some_and(|len| p.bytes.len() == len);
        let expected_first = if complete && pos < payload.len() {
            Some(pos as u16)
        } else {
            None
        };
        if header.first_record_offset() != expected_first {
            return Err(corrupt(
                lsn,
                0,
                RecordFault::FirstRecordOffset {
                    header: header.first_record_offset().unwrap_or(0xFFFF),
                    actual: expected_first.unwrap_or(0xFFFF),
                },
            ));
        }
        if complete {
            if !p.aborted {
                out.push(Record {
                    seq: p.seq,
                    bytes: Cow::Owned(p.bytes),
                });
            }
        } else if !full {
            return Err(corrupt(lsn, payload.len(), RecordFault::Truncated));
        } else {
            *pending_slot = Some(p);
            return check_count(header.record_count(), 0, lsn);
        }
    } else if first {
        match header.first_record_offset() {
            Some(offset) => pos = usize::from(offset),
            None => return Ok(()), // only the middle of a record we never saw start
        }
    } else if header.first_record_offset() != Some(0) {
        return Err(corrupt(lsn, 0, RecordFault::OrphanContinuation));
    }

    // 2. Records that start in this page.
    let mut started: u16 = 0;
    while pos < payload.len() {
        started = started.saturating_add(1);
        let seq = crate::record::seq_of(lsn, pos as u16);
        let rest = &payload[pos..];
        if rest.len() < RECORD_HEADER_SIZE {
            let mut p = Pending {
                seq,
                header: [0; RECORD_HEADER_SIZE],
                header_len: rest.len(),
                len: None,
                aborted: false,
                bytes: Vec::new(),
            };
            p.header[..rest.len()].copy_from_slice(rest);
            *pending_slot = Some(p);
            break;
        }
        let word = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let (len, aborted) = parse_header(word, lsn, pos, record_len_max)?;
        let body = &rest[RECORD_HEADER_SIZE..];
        if body.len() >= len {
            if !aborted {
                out.push(Record {
                    seq,
                    bytes: Cow::Borrowed(&body[..len]),
                });
            }
            pos += RECORD_HEADER_SIZE + len;
        } else {
            *pending_slot = Some(Pending {
                seq,
                header: word.to_le_bytes(),
                header_len: RECORD_HEADER_SIZE,
                len: Some(len),
                aborted,
                bytes: body.to_vec(),
            });
            break;
        }
    }
    if pending_slot.is_some() && !full {
        return Err(corrupt(lsn, payload.len(), RecordFault::Truncated));
    }
    check_count(header.record_count(), started, lsn)
}

fn check_count(header: u16, actual: u16, lsn: u64) -> Result<()> {
    if header == actual {
        Ok(())
    } else {
        Err(corrupt(lsn, 0, RecordFault::RecordCount { header, actual }))
    }
}

fn parse_header(word: u32, lsn: u64, pos: usize, max: usize) -> Result<(usize, bool)> {
    let len = (word & !ABORTED_BIT) as usize;
    if len == 0 {
        return Err(corrupt(lsn, pos, RecordFault::ZeroLength));
    }
    if len > max {
        return Err(corrupt(
            lsn,
            pos,
            RecordFault::TooLong {
                len: len as u64,
                max: max as u64,
            },
        ));
    }
    Ok((len, word & ABORTED_BIT != 0))
}

/// Feeds the start of `payload` to a pending record; returns how many bytes it took.
fn continue_record(p: &mut Pending, payload: &[u8], lsn: u64, max: usize) -> Result<usize> {
    let mut pos = 0;
    if p.len.is_none() {
        let take = (RECORD_HEADER_SIZE - p.header_len).min(payload.len());
        p.header[p.header_len..p.header_len + take].copy_from_slice(&payload[..take]);
        p.header_len += take;
        pos = take;
        if p.header_len < RECORD_HEADER_SIZE {
            return Ok(pos);
        }
        let (len, aborted) = parse_header(u32::from_le_bytes(p.header), lsn, 0, max)?;
        p.len = Some(len);
        p.aborted = aborted;
    }
    let len = p.len.unwrap_or(0);
    let take = (len - p.bytes.len()).min(payload.len() - pos);
    p.bytes.extend_from_slice(&payload[pos..pos + take]);
    Ok(pos + take)
}
