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
//!
//! A reader that starts in the middle of a record skips ahead to the first page where a record
//! starts. A page flagged [`PageFlags::RESUMED`] (the first after a reopen) ends any record left
//! open before it: that record lost its tail in a crash and is dropped, never yielded.

use std::borrow::Cow;

use crate::error::{Error, RecordFault, Result};
use crate::page::{PageFlags, PageRef, PAGE_SIZE, PAYLOAD_SIZE};

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
    /// Whether the reader is at a record boundary it saw (false until a page starts a record).
    synced: bool,
    pending: Option<Pending>,
    record_len_max: usize,
    abandoned: u64,
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
            synced: false,
            pending: None,
            record_len_max: RECORD_LEN_MAX,
            abandoned: 0,
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

    /// Records dropped because a [`PageFlags::RESUMED`] page cut them off.
    pub fn abandoned_records(&self) -> u64 {
        self.abandoned
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
                self.restart();
                return Err(Error::Gap {
                    expected,
                    found: lsn,
                });
            }
        }
        if page.header().flags().contains(PageFlags::RESUMED) {
            if self.pending.take().is_some() {
                self.abandoned += 1;
                tracing::debug!(lsn, "record cut off by a crash dropped at a resumed page");
            }
            self.synced = true;
        }
        let mut out: Vec<Record<'p>> = Vec::new();
        match decode_page(
            page,
            self.synced,
            &mut self.pending,
            self.record_len_max,
            &mut out,
        ) {
            Ok(synced) => {
                self.synced = synced;
                self.next_lsn = Some(lsn + 1);
                out.into_iter().for_each(on_record);
                Ok(())
            }
            Err(error) => {
                self.restart();
                Err(error)
            }
        }
    }
}

impl RecordReader {
    fn restart(&mut self) {
        self.next_lsn = None;
        self.synced = false;
        self.pending = None;
    }
}

fn corrupt(lsn: u64, offset: usize, fault: RecordFault) -> Error {
    Error::RecordCorrupt {
        lsn,
        offset: offset.min(u16::MAX as usize) as u16,
        fault,
    }
}

/// Decodes one page; returns whether the reader is synced after it. Until `synced`, the reader
/// has not seen a record start, so a page may begin mid-record and is read from its first record.
fn decode_page<'p>(
    page: PageRef<'p>,
    synced: bool,
    pending_slot: &mut Option<Pending>,
    record_len_max: usize,
    out: &mut Vec<Record<'p>>,
) -> Result<bool> {
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
            return check_count(header.record_count(), 0, lsn).map(|()| true);
        }
    } else if !synced {
        match header.first_record_offset() {
            Some(offset) => pos = usize::from(offset),
            None => return Ok(false), // only the middle of a record we never saw start
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
    check_count(header.record_count(), started, lsn).map(|()| true)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::{validate, write_page, PageMeta, HEADER_SIZE, PAGE_SIZE};

    /// Frames `records` into one byte stream and cuts it into full pages from `lsn` on (the last
    /// one partial), as the log would.
    fn pages(lsn: u64, records: &[Vec<u8>], resumed: bool) -> Vec<Box<[u8; PAGE_SIZE]>> {
        let mut stream = Vec::new();
        let mut starts = Vec::new();
        for record in records {
            starts.push(stream.len());
            stream.extend_from_slice(&(record.len() as u32).to_le_bytes());
            stream.extend_from_slice(record);
        }
        let mut out = Vec::new();
        for (i, chunk) in stream.chunks(PAYLOAD_SIZE).enumerate() {
            let from = i * PAYLOAD_SIZE;
            let here: Vec<usize> = starts
                .iter()
                .filter(|&&s| s >= from && s < from + chunk.len())
                .map(|s| s - from)
                .collect();
            let mut page = Box::new([0u8; PAGE_SIZE]);
            page[HEADER_SIZE..HEADER_SIZE + chunk.len()].copy_from_slice(chunk);
            let meta = PageMeta {
                lsn: lsn + i as u64,
                committed_lsn: 0,
                epoch: 0,
                payload_len: chunk.len() as u16,
                first_record_offset: here.first().copied().unwrap_or(0) as u16,
                record_count: here.len() as u16,
                end_of_epoch: false,
                resumed: resumed && i == 0,
            };
            write_page(&mut page, &meta);
            out.push(page);
        }
        out
    }

    fn read(reader: &mut RecordReader, pages: &[Box<[u8; PAGE_SIZE]>]) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for page in pages {
            reader.feed(validate(&page[..])?, |r| out.push(r.bytes.into_owned()))?;
        }
        Ok(out)
    }

    #[test]
    fn a_reader_starting_inside_a_long_record_resyncs_at_the_next_start() {
        let records = vec![vec![1; 10], vec![2; 3 * PAYLOAD_SIZE], vec![3; 20]];
        let all = pages(0, &records, false);
        assert_eq!(all.len(), 4);
        // Start at page 1: pages 1 and 2 are only the middle of record 2.
        let got = read(&mut RecordReader::new(), &all[1..]).unwrap();
        assert_eq!(got, vec![vec![3; 20]]);
    }

    #[test]
    fn a_resumed_page_drops_the_record_left_open_by_a_crash() {
        let before = pages(0, &[vec![1; 10], vec![2; 2 * PAYLOAD_SIZE]], false);
        let after = pages(2, &[vec![4; 30]], true); // page 2 of the first life was lost
        let mut reader = RecordReader::new();
        let mut got = read(&mut reader, &before[..2]).unwrap();
        assert!(reader.is_mid_record());
        got.extend(read(&mut reader, &after).unwrap());
        assert_eq!(got, vec![vec![1; 10], vec![4; 30]]);
        assert_eq!(reader.abandoned_records(), 1);
    }

    #[test]
    fn without_the_resumed_flag_a_cut_record_is_corruption() {
        let before = pages(0, &[vec![2; 2 * PAYLOAD_SIZE]], false);
        let after = pages(1, &[vec![4; 30]], false);
        let mut reader = RecordReader::new();
        read(&mut reader, &before[..1]).unwrap();
        let err = read(&mut reader, &after).unwrap_err();
        assert!(
            matches!(
                err,
                Error::RecordCorrupt {
                    lsn: 1,
                    fault: RecordFault::FirstRecordOffset { .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_gap_is_reported_with_both_lsns() {
        let all = pages(5, &[vec![1; 5000]], false);
        let mut reader = RecordReader::new();
        read(&mut reader, &all[..1]).unwrap();
        let later = pages(9, &[vec![1; 5]], false);
        assert!(matches!(
            read(&mut reader, &later),
            Err(Error::Gap {
                expected: 6,
                found: 9
            })
        ));
    }
}
