//! Reads a CSV file into `(key, value)` rows, for `pagemesh import --csv FILE --table T
//! --key-column N [--batch B]`, accounting for every line of the input.
//!
//! # Format
//!
//! RFC 4180 CSV: fields separated by `,`, records ended by `\n`, `\r\n` or `\r`, a field that
//! contains `,`, `"` or a line break must be quoted, and a `"` inside a quoted field is doubled.
//! Blank lines are skipped. Every record must have as many fields as the first one (the header, if
//! any). An optional header row is skipped (after its quoting is checked).
//!
//! **Byte-order mark.** A UTF-8 byte-order mark (`EF BB BF`) at the very start of the file is
//! removed before parsing: neither the first key nor the first value carries it, whether the
//! first field is quoted or not. It still counts in [`Position::offset`] and
//! [`Position::crc32c`], which describe the file's own bytes. Anywhere else those three bytes are
//! data, kept like any other.
//!
//! # Choices
//!
//! - **Bytes, not text.** Keys and values are bytes, as the store's are: a field that is not UTF-8
//!   is not an error, since rejecting it would lose data that the store can hold as it is.
//! - **The value is the record's raw bytes** as they appear in the file, without the line
//!   terminator (so it may contain line breaks inside a quoted field). Not re-encoding keeps the
//!   source's bytes exactly (the price paid set's lines come back byte for byte), costs nothing
//!   per field, and since malformed records are rejected (below) every value is itself one valid
//!   CSV record. The key is the key field unquoted and unescaped.
//! - **A strict scanner of our own.** Lenient parsers (the `csv` crate among them) read `"da"ve` as
//!   `dave` and let an unclosed quote swallow the rest of the file. This one scans each record
//!   once, byte by byte, and reports [`RowError::Malformed`] for a `"` inside an unquoted field,
//!   text after a closing quote, or a quote never closed. On well-formed input it splits fields
//!   exactly as the `csv` crate does (a unit test checks the two against each other).
//! - **Every line is accounted for.** The iterator yields an `Err` for each bad row, naming its
//!   line or its whole range of lines ([`Lines`], e.g. `lines 50009-50010`), and goes on with the
//!   next row; nothing is dropped silently. Only an I/O error ends the iteration, as the reader's
//!   state after one is unknown and retrying could loop forever.
//! - **Resynchronisation after an open quote.** A record can only run over several lines inside a
//!   quoted field, so when such a record turns out bad (a quoting error, or the wrong number of
//!   fields) the likeliest cause is a quote left open at the end of its first line (a stray `"`,
//!   a truncated line), and the lines after it are rows of their own that the open quote
//!   swallowed. The reader therefore rejects only that first line, as
//!   [`RowError::OpenQuoteAtLineEnd`] (which names the whole range the bad record would have
//!   covered), and reads again from the next line, so a good row swallowed by the quote is
//!   imported instead of lost. A good record spanning lines (a real multi-line field) is never
//!   split. The price of the rule: when a real multi-line field sits in a record that is bad for
//!   another reason, its continuation lines are read as records too; each is then reported (or, if
//!   one happens to be a complete good record on its own, imported), right after the report that
//!   names the first line and the range, so the report shows where to look.
//! - **Line numbers** are 1-based and count `\n`: a row's number is the line its record starts on,
//!   so a quoted field spanning lines moves the numbers of the rows after it, as an editor shows
//!   them.
//! - **Positions.** [`Rows::position`] gives the byte offset, line number and running crc32c of
//!   the input consumed by the rows yielded so far, so that an importer can record exactly where
//!   a durable prefix of the file ends and check, on a later run, that the file has not changed.
//!
//! Memory is bounded by the largest record (a record is held whole until it ends) plus 64 KiB of
//! already-consumed input.

use std::fmt;
use std::io::{self, Read};
use std::iter::FusedIterator;
use std::ops::Range;

/// One good row of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportRow {
    /// The 1-based line the record starts on.
    pub line: u64,
    /// The key column's value, unquoted and unescaped.
    pub key: Vec<u8>,
    /// The whole record as it appears in the file, without its line terminator.
    pub value: Vec<u8>,
}

/// The lines one record covers, 1-based and inclusive; displayed as `line 7` or `lines 7-9`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lines {
    /// The line the record starts on.
    pub first: u64,
    /// The line it ends on.
    pub last: u64,
}

impl Lines {
    /// One line.
    pub fn one(line: u64) -> Self {
        Self {
            first: line,
            last: line,
        }
    }
}

impl fmt::Display for Lines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "line {}", self.first)
        } else {
            write!(f, "lines {}-{}", self.first, self.last)
        }
    }
}

/// How much of the input the rows yielded so far have consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Bytes of the file consumed (a removed byte-order mark included).
    pub offset: u64,
    /// The 1-based line at `offset`.
    pub line: u64,
    /// crc32c (Castagnoli) of the file's bytes `0..offset`.
    pub crc32c: u32,
}

impl Position {
    /// The start of a file.
    pub const START: Self = Self {
        offset: 0,
        line: 1,
        crc32c: 0,
    };
}

/// Why a row was not imported. Every variant names the row's lines.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RowError {
    /// The row does not have as many fields as the first row.
    #[error("{lines}: expected {expected} fields, found {found}")]
    WrongFieldCount {
        /// Lines of the record.
        lines: Lines,
        /// Fields in the first row (the header, if any).
        expected: usize,
        /// Fields in this row.
        found: usize,
    },
    /// The key column is past the row's last field.
    #[error("{lines}: key column {key_column} is out of range: the row has {field_count} fields")]
    KeyColumnOutOfRange {
        /// Lines of the record.
        lines: Lines,
        /// The 0-based key column asked for.
        key_column: usize,
        /// Fields in the row.
        field_count: usize,
    },
    /// The key field is empty.
    #[error("{lines}: the key (column {key_column}) is empty")]
    EmptyKey {
        /// Lines of the record.
        lines: Lines,
        /// The 0-based key column.
        key_column: usize,
    },
    /// The record's quoting breaks RFC 4180.
    #[error("{lines}: malformed CSV: {problem}")]
    Malformed {
        /// Lines of the record.
        lines: Lines,
        /// What is wrong.
        problem: Malformed,
    },
    /// A quoted field is open at the end of `line` and the record it starts is bad: only this
    /// line is rejected, and reading goes on at the next line (see the module docs).
    #[error(
        "line {line}: malformed CSV: quoted field {field_index} is still open at the end of the \
         line; read on, {swallowed} would be one bad record, so line {line} alone is rejected \
         and reading goes on at line {}",
        line + 1
    )]
    OpenQuoteAtLineEnd {
        /// The rejected line.
        line: u64,
        /// The field left open.
        field_index: usize,
        /// The lines the open quote would have made one record of.
        swallowed: Lines,
    },
    /// Reading failed; the iteration ends here.
    #[error("line {line}: I/O error reading CSV")]
    Io {
        /// Line where the record being read starts.
        line: u64,
        /// The reader's error.
        #[source]
        source: io::Error,
    },
}

impl RowError {
    /// The 1-based line of the row in error (the first, if it covers several).
    pub fn line(&self) -> u64 {
        self.lines().first
    }

    /// The lines rejected: every line of a bad record; only its first line for
    /// [`OpenQuoteAtLineEnd`](Self::OpenQuoteAtLineEnd).
    pub fn lines(&self) -> Lines {
        match *self {
            Self::WrongFieldCount { lines, .. }
            | Self::KeyColumnOutOfRange { lines, .. }
            | Self::EmptyKey { lines, .. }
            | Self::Malformed { lines, .. } => lines,
            Self::OpenQuoteAtLineEnd { line, .. } | Self::Io { line, .. } => Lines::one(line),
        }
    }
}

/// A quoting error in one record. Fields are numbered from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// A `"` inside a field that does not start with one.
    #[error("quote inside unquoted field {field_index}")]
    QuoteInUnquotedField {
        /// The field.
        field_index: usize,
    },
    /// A quoted field's closing `"` is followed by something other than `,` or the line end.
    #[error("text after the closing quote of field {field_index}")]
    TextAfterClosingQuote {
        /// The field.
        field_index: usize,
    },
    /// A quoted field is still open at the end of the file.
    #[error("quoted field {field_index} is never closed")]
    UnterminatedQuote {
        /// The field.
        field_index: usize,
    },
}

/// Reads the rows of a CSV file, keyed by the 0-based `key_column`, skipping a header row if
/// `has_headers`. See the [module docs](self) for the format and the errors.
pub fn read_rows<R: Read>(reader: R, key_column: usize, has_headers: bool) -> Rows<R> {
    Rows {
        input: reader,
        buf: Vec::new(),
        buf_offset: 0,
        eof: false,
        consumed: Position::START,
        key_column,
        header_pending: has_headers,
        field_count_expected: None,
        started: false,
        done: false,
    }
}

/// The iterator of [`read_rows`]: one `Ok` for each good row, one `Err` for each bad one.
#[derive(Debug)]
pub struct Rows<R> {
    input: R,
    /// Input bytes from `buf_offset` on: consumed ones not yet dropped, then unconsumed ones.
    buf: Vec<u8>,
    /// Input offset of `buf[0]`.
    buf_offset: u64,
    eof: bool,
    /// What the rows yielded so far have consumed.
    consumed: Position,
    key_column: usize,
    header_pending: bool,
    field_count_expected: Option<usize>,
    /// Whether the byte-order mark check has run.
    started: bool,
    done: bool,
}

/// Bytes asked of the input per read.
const READ_BYTES: usize = 64 * 1024;
/// Consumed bytes are dropped once at least this many have gathered, to copy rarely.
const DISCARD_BYTES_MIN: usize = 64 * 1024;
const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// One record found by the scanner, not yet consumed.
struct Scanned {
    /// The record's bytes, without terminator, as indexes into `Rows::buf`.
    body: Range<usize>,
    /// 1 if a line terminator byte follows the record, 0 at the end of the input.
    terminator_len: usize,
    scan: RecordScan,
}

impl<R: Read> Rows<R> {
    /// The input consumed by the rows yielded so far: everything up to and including the last
    /// one's line terminator (blank lines before a record are consumed with it).
    pub fn position(&self) -> Position {
        self.consumed
    }

    /// Index into `buf` of input offset `offset` (never before `buf_offset`).
    fn index(&self, offset: u64) -> usize {
        (offset - self.buf_offset) as usize
    }

    /// Reads more input into `buf`; false at the end of the input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_BYTES, 0);
        let read = loop {
            match self.input.read(&mut self.buf[len..]) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let read_bytes = match read {
            Ok(read_bytes) => read_bytes,
            Err(error) => {
                self.buf.truncate(len);
                return Err(error);
            }
        };
        self.buf.truncate(len + read_bytes);
        self.eof = read_bytes == 0;
        Ok(!self.eof)
    }

    /// The unconsumed byte at `index`, reading more input if needed; `None` at the end.
    fn byte_at(&mut self, index: usize) -> io::Result<Option<u8>> {
        while index >= self.buf.len() {
            if !self.fill()? {
                return Ok(None);
            }
        }
        Ok(Some(self.buf[index]))
    }

    /// Consumes `len` bytes: they count in the position's offset, line and crc.
    fn consume(&mut self, len: usize) {
        let start = self.index(self.consumed.offset);
        let bytes = &self.buf[start..start + len];
        self.consumed.crc32c = crc32c::crc32c_append(self.consumed.crc32c, bytes);
        self.consumed.line += count_newlines(bytes);
        self.consumed.offset += len as u64;
        let discard = self.index(self.consumed.offset);
        if discard >= DISCARD_BYTES_MIN {
            self.buf.drain(..discard);
            self.buf_offset = self.consumed.offset;
        }
    }

    /// Removes a byte-order mark at the very start of the input.
    fn skip_bom(&mut self) -> io::Result<()> {
        while self.buf.len() < UTF8_BOM.len() && self.fill()? {}
        if self.buf.starts_with(UTF8_BOM) {
            self.consume(UTF8_BOM.len());
        }
        Ok(())
    }

    /// Consumes blank lines; false at the end of the input.
    fn skip_blank_lines(&mut self) -> io::Result<bool> {
        loop {
            let index = self.index(self.consumed.offset);
            match self.byte_at(index)? {
                None => return Ok(false),
                Some(byte) if is_line_end(byte) => self.consume(1),
                Some(_) => return Ok(true),
            }
        }
    }

    /// Scans the next record without consuming it; `None` at the end of the input.
    fn scan_record(&mut self) -> io::Result<Option<Scanned>> {
        if !std::mem::replace(&mut self.started, true) {
            self.skip_bom()?;
        }
        if !self.skip_blank_lines()? {
            return Ok(None);
        }
        let start = self.index(self.consumed.offset);
        let mut scan = RecordScan::new(self.key_column);
        loop {
            if let Some(body_len) = scan.scan(&self.buf[start..]) {
                return Ok(Some(Scanned {
                    body: start..start + body_len,
                    terminator_len: 1,
                    scan,
                }));
            }
            if !self.fill()? {
                scan.finish_at_end_of_input();
                return Ok(Some(Scanned {
                    body: start..self.buf.len(),
                    terminator_len: 0,
                    scan,
                }));
            }
        }
    }

    /// Turns one scanned record into the iterator's next item, consuming it (or, for a bad
    /// record over several lines, its first line only); `None` for the header row.
    fn judge(&mut self, record: Scanned) -> Option<Result<ImportRow, RowError>> {
        let scan = &record.scan;
        let body = &self.buf[record.body.clone()];
        // Line breaks left open at the very end of the file start no line of the record.
        let trailing_newlines = count_newlines(trailing_line_ends(body));
        let lines = Lines {
            first: self.consumed.line,
            last: self.consumed.line + scan.newline_count - trailing_newlines,
        };
        let field_count = scan.field_count();
        let wrong_count = self
            .field_count_expected
            .filter(|&expected| expected != field_count);
        let bad_shape = scan.problem.is_some() || wrong_count.is_some();
        if let (true, Some(open)) = (bad_shape, scan.first_newline) {
            // Resynchronise: reject the first line alone and read again from the next one.
            self.consume(open.index + 1);
            self.header_pending = false;
            return Some(Err(RowError::OpenQuoteAtLineEnd {
                line: lines.first,
                field_index: open.field_index,
                swallowed: lines,
            }));
        }
        let expected = *self.field_count_expected.get_or_insert(field_count);
        let is_header = std::mem::take(&mut self.header_pending);
        let checked = match (scan.problem, wrong_count) {
            (Some(problem), _) => Err(RowError::Malformed { lines, problem }),
            (None, Some(_)) => Err(RowError::WrongFieldCount {
                lines,
                expected,
                found: field_count,
            }),
            (None, None) if is_header => Ok(None),
            (None, None) => self.keyed_row(&record, lines).map(Some),
        };
        self.consume(record.body.len() + record.terminator_len);
        checked.transpose()
    }

    fn keyed_row(&self, record: &Scanned, lines: Lines) -> Result<ImportRow, RowError> {
        let key_column = self.key_column;
        let body = &self.buf[record.body.clone()];
        let Some(key_range) = record.scan.key.clone() else {
            return Err(RowError::KeyColumnOutOfRange {
                lines,
                key_column,
                field_count: record.scan.field_count(),
            });
        };
        let key = unquote(&body[key_range]);
        if key.is_empty() {
            return Err(RowError::EmptyKey { lines, key_column });
        }
        Ok(ImportRow {
            line: lines.first,
            key,
            value: body.to_vec(),
        })
    }
}

impl<R: Read> Iterator for Rows<R> {
    type Item = Result<ImportRow, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match self.scan_record() {
                Ok(Some(record)) => {
                    if let Some(item) = self.judge(record) {
                        return Some(item);
                    }
                }
                Ok(None) => self.done = true,
                Err(source) => {
                    self.done = true;
                    let line = self.consumed.line;
                    return Some(Err(RowError::Io { line, source }));
                }
            }
        }
        None
    }
}

impl<R: Read> FusedIterator for Rows<R> {}

fn is_line_end(byte: u8) -> bool {
    byte == b'\n' || byte == b'\r'
}

/// The line-end bytes that end `bytes`.
fn trailing_line_ends(bytes: &[u8]) -> &[u8] {
    let kept = bytes.len() - bytes.iter().rev().take_while(|&&b| is_line_end(b)).count();
    &bytes[kept..]
}

fn count_newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// A field's value: a quoted field without its quotes and with `""` as `"`; others as they are.
fn unquote(field: &[u8]) -> Vec<u8> {
    let Some(inner) = field
        .strip_prefix(b"\"")
        .and_then(|rest| rest.strip_suffix(b"\""))
    else {
        return field.to_vec();
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut quote_pending = false;
    for &byte in inner {
        if byte == b'"' && !quote_pending {
            quote_pending = true;
            continue;
        }
        quote_pending = false;
        out.push(byte);
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    FieldStart,
    Unquoted,
    Quoted,
    /// A `"` seen inside a quoted field: it closes the field or starts a `""` pair.
    QuoteInQuoted,
}

/// Where a record first crossed a line break (inside a quoted field).
#[derive(Clone, Copy, Debug)]
struct OpenAtLineEnd {
    /// Index of the `\n` in the record.
    index: usize,
    /// The field open there.
    field_index: usize,
}

/// The scanner's state over one record, resumable as more input arrives: RFC 4180 as a state
/// machine, noting the first quoting problem, the key field and the line breaks inside quotes.
#[derive(Clone, Debug)]
struct RecordScan {
    key_column: usize,
    state: State,
    /// Bytes of the record scanned so far.
    len: usize,
    field_index: usize,
    field_start: usize,
    /// The key field's raw bytes (quotes included), as a range of the record.
    key: Option<Range<usize>>,
    problem: Option<Malformed>,
    first_newline: Option<OpenAtLineEnd>,
    newline_count: u64,
    finished: bool,
}

impl RecordScan {
    fn new(key_column: usize) -> Self {
        Self {
            key_column,
            state: State::FieldStart,
            len: 0,
            field_index: 0,
            field_start: 0,
            key: None,
            problem: None,
            first_newline: None,
            newline_count: 0,
            finished: false,
        }
    }

    /// Scans on through `record` (the record's bytes from its start, as far as they are read);
    /// returns the record's length once its terminator is found.
    fn scan(&mut self, record: &[u8]) -> Option<usize> {
        while let Some(&byte) = record.get(self.len) {
            match (self.state, byte) {
                (State::Quoted, b'"') => self.state = State::QuoteInQuoted,
                (State::Quoted, b'\n') => self.newline_in_quotes(),
                (State::Quoted, _) => {}
                (_, b'\n' | b'\r') => {
                    self.end_field();
                    self.finished = true;
                    return Some(self.len);
                }
                (_, b',') => self.end_field(),
                (State::FieldStart, b'"') => self.state = State::Quoted,
                (State::FieldStart, _) => self.state = State::Unquoted,
                (State::QuoteInQuoted, b'"') => self.state = State::Quoted,
                (State::QuoteInQuoted, _) => {
                    self.note(Malformed::TextAfterClosingQuote {
                        field_index: self.field_index,
                    });
                    self.state = State::Unquoted;
                }
                (State::Unquoted, b'"') => self.note(Malformed::QuoteInUnquotedField {
                    field_index: self.field_index,
                }),
                (State::Unquoted, _) => {}
            }
            self.len += 1;
        }
        None
    }

    /// The input ended inside the record.
    fn finish_at_end_of_input(&mut self) {
        if self.state == State::Quoted {
            self.note(Malformed::UnterminatedQuote {
                field_index: self.field_index,
            });
        }
        self.end_field();
        self.finished = true;
    }

    fn newline_in_quotes(&mut self) {
        self.newline_count += 1;
        self.first_newline.get_or_insert(OpenAtLineEnd {
            index: self.len,
            field_index: self.field_index,
        });
    }

    fn note(&mut self, problem: Malformed) {
        self.problem.get_or_insert(problem);
    }

    fn end_field(&mut self) {
        if self.field_index == self.key_column {
            self.key = Some(self.field_start..self.len);
        }
        self.field_index += 1;
        self.field_start = self.len + 1;
        self.state = State::FieldStart;
    }

    /// Fields in the record (once it is finished).
    fn field_count(&self) -> usize {
        debug_assert!(self.finished);
        self.field_index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::price_paid::PricePaid;

    fn rows(data: &[u8], key_column: usize, has_headers: bool) -> Vec<Result<ImportRow, RowError>> {
        read_rows(data, key_column, has_headers).collect()
    }

    fn good(line: u64, key: &str, value: &str) -> ImportRow {
        ImportRow {
            line,
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }

    #[test]
    fn reads_a_good_file_with_header() {
        let data = b"id,name,note\n1,alice,hello\n2,\"bob, jr\",\"say \"\"hi\"\"\"\r\n\n3,carol,\n";
        let rows: Vec<ImportRow> = rows(data, 0, true)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            rows,
            vec![
                good(2, "1", "1,alice,hello"),
                good(3, "2", "2,\"bob, jr\",\"say \"\"hi\"\"\""),
                good(5, "3", "3,carol,"),
            ]
        );
        let rows = read_rows(&b"k,v\n\"a\"\"b\",1"[..], 0, false).collect::<Vec<_>>();
        let keys: Vec<Vec<u8>> = rows.into_iter().map(|row| row.unwrap().key).collect();
        assert_eq!(keys, vec![b"k".to_vec(), b"a\"b".to_vec()]);
    }

    #[test]
    fn keys_and_values_are_bytes() {
        let data = b"\xff\xfe,caf\xe9\n";
        let rows: Vec<ImportRow> = rows(data, 0, false)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows[0].key, b"\xff\xfe");
        assert_eq!(rows[0].value, b"\xff\xfe,caf\xe9");
    }

    /// Every kind of bad row, each reported at its own line, and the good rows between and after
    /// them still read. Line 3 holds a quoted field over two lines, which moves every later line.
    #[test]
    fn reports_each_bad_row_at_its_line_and_goes_on() {
        let data = concat!(
            "id,name,note\n",             // 1: header
            "1,alice,hello\n",            // 2
            "2,\"bob\",\"two\nlines\"\n", // 3-4
            "3,carol\n",                  // 5: two fields
            "4,\"da\"ve,x\n",             // 6: text after a closing quote
            "5,ev\"e,x\n",                // 7: quote in an unquoted field
            ",frank,x\n",                 // 8: empty key
            "6,gina,\"ok\"\n",            // 9
            "7,hal,x,extra\n",            // 10: four fields
            "8,\"ivy,x\n",                // 11: open at the line end: rejected alone
            "9,jo,x\n",                   // 12: read again as a row of its own
            "10,\"kim,x",                 // 13: never closed at the end of the file
        );
        let rows = rows(data.as_bytes(), 0, true);
        assert_eq!(rows.len(), 11, "{rows:?}");
        assert_eq!(*rows[0].as_ref().unwrap(), good(2, "1", "1,alice,hello"));
        assert_eq!(
            *rows[1].as_ref().unwrap(),
            good(3, "2", "2,\"bob\",\"two\nlines\"")
        );
        assert!(matches!(
            rows[2],
            Err(RowError::WrongFieldCount {
                lines: Lines { first: 5, last: 5 },
                expected: 3,
                found: 2
            })
        ));
        assert!(matches!(
            rows[3],
            Err(RowError::Malformed {
                lines: Lines { first: 6, last: 6 },
                problem: Malformed::TextAfterClosingQuote { field_index: 1 }
            })
        ));
        assert!(matches!(
            rows[4],
            Err(RowError::Malformed {
                lines: Lines { first: 7, last: 7 },
                problem: Malformed::QuoteInUnquotedField { field_index: 1 }
            })
        ));
        assert!(matches!(
            rows[5],
            Err(RowError::EmptyKey {
                lines: Lines { first: 8, last: 8 },
                key_column: 0
            })
        ));
        assert_eq!(*rows[6].as_ref().unwrap(), good(9, "6", "6,gina,\"ok\""));
        assert!(matches!(
            rows[7],
            Err(RowError::WrongFieldCount {
                lines: Lines {
                    first: 10,
                    last: 10
                },
                expected: 3,
                found: 4
            })
        ));
        assert!(matches!(
            rows[8],
            Err(RowError::OpenQuoteAtLineEnd {
                line: 11,
                field_index: 1,
                swallowed: Lines {
                    first: 11,
                    last: 13
                },
            })
        ));
        assert_eq!(*rows[9].as_ref().unwrap(), good(12, "9", "9,jo,x"));
        assert!(matches!(
            rows[10],
            Err(RowError::Malformed {
                lines: Lines {
                    first: 13,
                    last: 13
                },
                problem: Malformed::UnterminatedQuote { field_index: 1 }
            })
        ));
        let lines: Vec<u64> = rows
            .iter()
            .map(|row| match row {
                Ok(row) => row.line,
                Err(error) => error.line(),
            })
            .collect();
        assert_eq!(lines, [2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
    }

    #[test]
    fn reports_a_key_column_out_of_range_on_every_row() {
        let rows = rows(b"a,b\nc,d\n", 2, false);
        assert_eq!(rows.len(), 2);
        for (row, line) in rows.iter().zip(1..) {
            match row {
                Err(RowError::KeyColumnOutOfRange {
                    lines:
                        Lines {
                            first: error_line, ..
                        },
                    key_column: 2,
                    field_count: 2,
                }) => assert_eq!(*error_line, line),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn reports_a_malformed_header() {
        let rows = rows(b"id,\"na\"me\n1,a\n", 0, true);
        assert!(matches!(
            rows[0],
            Err(RowError::Malformed {
                lines: Lines { first: 1, last: 1 },
                ..
            })
        ));
        assert_eq!(*rows[1].as_ref().unwrap(), good(2, "1", "1,a"));
    }

    #[test]
    fn counts_lines_across_crlf_and_blank_lines() {
        let rows = rows(b"\r\n\r\na,1\r\n\r\nb,2\r\nc,\"x\r\ny\"\r\nd,4", 0, false);
        let got: Vec<(u64, Vec<u8>)> = rows
            .into_iter()
            .map(|row| row.map(|row| (row.line, row.value)).unwrap())
            .collect();
        let want: Vec<(u64, Vec<u8>)> = vec![
            (3, b"a,1".to_vec()),
            (5, b"b,2".to_vec()),
            (6, b"c,\"x\r\ny\"".to_vec()),
            (8, b"d,4".to_vec()),
        ];
        assert_eq!(got, want);
    }

    /// Yields its data, then fails.
    struct FailingReader {
        data: &'static [u8],
    }

    impl Read for FailingReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone"));
            }
            let read_bytes = self.data.read(buf)?;
            Ok(read_bytes)
        }
    }

    #[test]
    fn an_io_error_is_reported_and_ends_the_rows() {
        let reader = FailingReader {
            data: b"a,1\nb,2\nc,",
        };
        let rows: Vec<_> = read_rows(reader, 0, false).collect();
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(*rows[1].as_ref().unwrap(), good(2, "b", "b,2"));
        match &rows[2] {
            Err(RowError::Io { line: 3, source }) => {
                assert_eq!(source.kind(), io::ErrorKind::ConnectionReset);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_messages_name_the_line() {
        let rows = rows(b"a,b\nc\n", 0, false);
        let message = rows[1].as_ref().unwrap_err().to_string();
        assert_eq!(message, "line 2: expected 2 fields, found 1");
    }

    /// The whole default price paid set, written as CSV and read back: every key and line
    /// returns, in order, at its line number.
    #[test]
    fn reads_back_the_price_paid_set() {
        let set = PricePaid::default();
        let mut csv = Vec::new();
        set.write_csv(&mut csv).unwrap();
        let mut records = set.records();
        let mut row_count: u64 = 0;
        for row in read_rows(csv.as_slice(), 0, false) {
            let row = row.unwrap();
            let record = records.next().unwrap();
            row_count += 1;
            assert_eq!(row.line, row_count);
            assert_eq!(row.key, record.key);
            assert_eq!(row.value, record.line.as_bytes());
        }
        assert_eq!(row_count, PricePaid::DEFAULT_COUNT);
        assert!(records.next().is_none());
    }

    /// A row as `(line, key, value)`, or the error's message.
    type Item = Result<(u64, Vec<u8>, Vec<u8>), String>;

    fn items(data: &[u8], key_column: usize) -> Vec<Item> {
        read_rows(data, key_column, false)
            .map(|row| {
                row.map(|row| (row.line, row.key, row.value))
                    .map_err(|error| error.to_string())
            })
            .collect()
    }

    fn ok(line: u64, key: &[u8], value: &[u8]) -> Item {
        Ok((line, key.to_vec(), value.to_vec()))
    }

    /// The one BOM rule: a BOM at the very start of the file is removed before parsing, whether
    /// the first field is quoted or not; anywhere else its bytes are data.
    #[test]
    fn a_bom_at_the_start_is_removed_and_kept_elsewhere() {
        let quoted = b"\xef\xbb\xbf\"k1\",v\nk2,v\n";
        assert_eq!(
            items(quoted, 0),
            [ok(1, b"k1", b"\"k1\",v"), ok(2, b"k2", b"k2,v")]
        );
        let unquoted = b"\xef\xbb\xbfk1,v\n";
        assert_eq!(items(unquoted, 0), [ok(1, b"k1", b"k1,v")]);
        let twice = b"\xef\xbb\xbf\xef\xbb\xbfk1,v\n\xef\xbb\xbfk2,v";
        assert_eq!(
            items(twice, 0),
            [
                ok(1, b"\xef\xbb\xbfk1", b"\xef\xbb\xbfk1,v"),
                ok(2, b"\xef\xbb\xbfk2", b"\xef\xbb\xbfk2,v")
            ]
        );
        // The position describes the file's own bytes, the BOM included.
        let mut rows = read_rows(&quoted[..], 0, false);
        rows.by_ref().for_each(drop);
        assert_eq!(rows.position().offset, quoted.len() as u64);
        assert_eq!(rows.position().crc32c, crc32c::crc32c(quoted));
    }

    /// After each row, the position is the end of that row's line: offset, next line number and
    /// the crc32c of every byte before it.
    #[test]
    fn the_position_follows_each_row() {
        let data = b"\xef\xbb\xbfa,1\r\n\nb,\"x\ny\"\nc,\"3\nd,4";
        let mut rows = read_rows(&data[..], 0, false);
        let mut seen = Vec::new();
        while let Some(row) = rows.next() {
            let position = rows.position();
            assert_eq!(
                position.crc32c,
                crc32c::crc32c(&data[..position.offset as usize])
            );
            seen.push((row.map(|row| row.line).map_err(|e| e.line()), position));
        }
        let at = |offset, line| Position {
            offset,
            line,
            crc32c: crc32c::crc32c(&data[..offset as usize]),
        };
        assert_eq!(
            seen,
            [
                (Ok(1), at(7, 1)),   // "a,1\r" (the "\n" is read with the next row)
                (Ok(3), at(17, 5)),  // "\n\nb,\"x\ny\"\n"
                (Err(5), at(22, 6)), // "c,\"3\n": its quote is open at the line end
                (Ok(6), at(25, 6)),  // "d,4", the end of the file
            ]
        );
    }

    /// A quote left open at the end of a line in a file of unquoted fields would swallow the
    /// rest of the file: only its line is rejected, and every row after it comes back.
    #[test]
    fn an_open_quote_swallows_only_its_own_line() {
        let data = b"a,1\nb,\"2\nc,3\nd,4\n";
        let items = items(data, 0);
        assert_eq!(items.len(), 4, "{items:?}");
        assert_eq!(items[0], ok(1, b"a", b"a,1"));
        assert_eq!(
            items[1],
            Err(
                "line 2: malformed CSV: quoted field 1 is still open at the end of the line; \
                 read on, lines 2-4 would be one bad record, so line 2 alone is rejected and \
                 reading goes on at line 3"
                    .to_string()
            )
        );
        assert_eq!(items[2..], [ok(3, b"c", b"c,3"), ok(4, b"d", b"d,4")]);
    }

    /// A good record over several lines is one row; a bad one is cut after its first line, and
    /// its continuation lines are judged on their own.
    #[test]
    fn only_bad_records_over_several_lines_are_cut() {
        let one_record = b"h1,h2\nk,\"x\ny\"\n";
        assert_eq!(items(one_record, 0)[1], ok(2, b"k", b"k,\"x\ny\""));
        let too_many_fields = b"h1,h2\nk,\"x\ny\",extra\nk2,v\n";
        let rows = rows(too_many_fields, 0, true);
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert!(matches!(
            rows[0],
            Err(RowError::OpenQuoteAtLineEnd {
                line: 2,
                field_index: 1,
                swallowed: Lines { first: 2, last: 3 }
            })
        ));
        assert!(matches!(
            rows[1],
            Err(RowError::Malformed {
                lines: Lines { first: 3, last: 3 },
                problem: Malformed::QuoteInUnquotedField { field_index: 0 }
            })
        ));
        assert_eq!(*rows[2].as_ref().unwrap(), good(4, "k2", "k2,v"));
    }

    /// A field written by the `csv` crate's writer: any of these bytes, quoted when needed.
    fn field() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            proptest::sample::select(vec![b'a', b',', b'"', b'\n', b'\r', b' ', 0xef]),
            0..6,
        )
    }

    proptest::proptest! {
        /// On well-formed files, every column read as the key gives what the `csv` crate reads.
        #[test]
        fn well_formed_files_split_as_the_csv_crate_does(
            records in proptest::collection::vec(proptest::collection::vec(field(), 3), 1..6),
            always_quote: bool,
        ) {
            let mut writer = csv::WriterBuilder::new()
                .quote_style(if always_quote { csv::QuoteStyle::Always } else {
                    csv::QuoteStyle::Necessary
                })
                .from_writer(Vec::new());
            for record in &records {
                writer.write_record(record).unwrap();
            }
            let data = writer.into_inner().unwrap();
            let theirs: Vec<csv::ByteRecord> = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(data.as_slice())
                .byte_records()
                .collect::<Result<_, _>>()
                .unwrap();
            for key_column in 0..3 {
                let ours: Vec<Result<ImportRow, RowError>> =
                    read_rows(data.as_slice(), key_column, false).collect();
                proptest::prop_assert_eq!(ours.len(), theirs.len());
                for (row, record) in ours.iter().zip(&theirs) {
                    match row {
                        Ok(row) => proptest::prop_assert_eq!(&row.key[..], &record[key_column]),
                        Err(RowError::EmptyKey { .. }) => {
                            proptest::prop_assert!(record[key_column].is_empty())
                        }
                        Err(error) => proptest::prop_assert!(false, "{error}"),
                    }
                }
            }
        }

        /// On any input: items come in line order (two may share a line ended by a lone `\r`, as
        /// lines count `\n`), positions only grow, and every good row's
        /// value read alone is one good row with the same key (so what is stored is valid CSV).
        #[test]
        fn any_input_is_read_in_order_and_good_values_are_records(
            data in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b',', b'"', b'\n', b'\r']), 0..64),
        ) {
            let mut rows = read_rows(data.as_slice(), 0, false);
            let mut last_line = 0;
            let mut last_offset = 0;
            while let Some(item) = rows.next() {
                let lines = match &item {
                    Ok(row) => Lines::one(row.line),
                    Err(error) => error.lines(),
                };
                proptest::prop_assert!(lines.first >= last_line && lines.last >= lines.first);
                last_line = lines.first;
                let position = rows.position();
                proptest::prop_assert!(position.offset > last_offset);
                last_offset = position.offset;
                if let Ok(row) = item {
                    let again: Vec<_> = read_rows(row.value.as_slice(), 0, false).collect();
                    proptest::prop_assert_eq!(again.len(), 1);
                    proptest::prop_assert_eq!(&again[0].as_ref().unwrap().key, &row.key);
                }
            }
        }
    }
}
