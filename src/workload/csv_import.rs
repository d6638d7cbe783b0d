//! Reads a CSV file into `(key, value)` rows, for `pagemesh import --csv FILE --table T
//! --key-column N [--batch B]`.
//!
//! # Format
//!
//! RFC 4180 CSV, parsed by the [`csv`] crate: fields separated by `,`, records ended by `\n`,
//! `\r\n` or `\r`, a field that contains `,`, `"` or a line break must be quoted, and a `"` inside
//! a quoted field is doubled. Blank lines are skipped. Every record must have as many fields as the
//! first one (the header, if any). An optional header row is skipped (after its quoting is
//! checked). A UTF-8 byte-order mark is not removed: it belongs to the first field.
//!
//! # Choices
//!
//! - **Bytes, not text.** Records are read as [`ByteRecord`]s and keys and values are bytes, as the
//!   store's are: a field that is not UTF-8 is not an error, since rejecting it would lose data
//!   that the store can hold as it is.
//! - **The value is the record's raw bytes** as they appear in the file, without the line
//!   terminator (so it may contain line breaks inside a quoted field). Not re-encoding keeps the
//!   source's bytes exactly (the price paid set's lines come back byte for byte), costs nothing
//!   per field, and since malformed records are rejected (below) every value is itself one valid
//!   CSV record.
//! - **Strict quoting.** The `csv` crate never fails on bad quoting: it reads `"da"ve` as `dave`
//!   and lets an unclosed quote swallow the rest of the file. This reader captures the bytes the
//!   parser consumed and checks each record's quoting itself, reporting
//!   [`RowError::Malformed`] for a `"` inside an unquoted field, text after a closing quote, or a
//!   quote never closed.
//! - **Every bad row is reported.** The iterator yields an `Err` for that row, with its line
//!   number, and goes on with the next row; nothing is dropped silently. Only an I/O error ends
//!   the iteration, as the reader's state after one is unknown and retrying could loop forever.
//! - **Line numbers** are 1-based and count `\n`: a row's number is the line its record starts on,
//!   so a quoted field spanning lines moves the numbers of the rows after it, as an editor shows
//!   them.
//!
//! Memory is bounded by the largest record (the parser buffers a whole record, and this reader
//! keeps at most one record's bytes plus 64 KiB of already-consumed input).

use std::io::{self, Read};
use std::iter::FusedIterator;

use csv::{ByteRecord, ErrorKind, ReaderBuilder};

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

/// Why a row was not imported. Every variant names the row's line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RowError {
    /// The row does not have as many fields as the first row.
    #[error("line {line}: expected {expected} fields, found {found}")]
    WrongFieldCount {
        /// Line the record starts on.
        line: u64,
        /// Fields in the first row (the header, if any).
        expected: u64,
        /// Fields in this row.
        found: u64,
    },
    /// The key column is past the row's last field.
    #[error(
        "line {line}: key column {key_column} is out of range: the row has {field_count} fields"
    )]
    KeyColumnOutOfRange {
        /// Line the record starts on.
        line: u64,
        /// The 0-based key column asked for.
        key_column: usize,
        /// Fields in the row.
        field_count: usize,
    },
    /// The key field is empty.
    #[error("line {line}: the key (column {key_column}) is empty")]
    EmptyKey {
        /// Line the record starts on.
        line: u64,
        /// The 0-based key column.
        key_column: usize,
    },
    /// The record's quoting breaks RFC 4180.
    #[error("line {line}: malformed CSV: {problem}")]
    Malformed {
        /// Line the record starts on.
        line: u64,
        /// What is wrong.
        problem: Malformed,
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
    /// Any other error of the `csv` crate (not expected when reading bytes).
    #[error("line {line}: CSV error")]
    Csv {
        /// Line where the record starts.
        line: u64,
        /// The parser's error.
        #[source]
        source: csv::Error,
    },
}

impl RowError {
    /// The 1-based line of the row in error.
    pub fn line(&self) -> u64 {
        match *self {
            Self::WrongFieldCount { line, .. }
            | Self::KeyColumnOutOfRange { line, .. }
            | Self::EmptyKey { line, .. }
            | Self::Malformed { line, .. }
            | Self::Io { line, .. }
            | Self::Csv { line, .. } => line,
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
    // The header row is skipped here rather than by the `csv` crate, so that its bytes and lines
    // are accounted for like every other record's.
    let csv = ReaderBuilder::new()
        .has_headers(false)
        .flexible(false)
        .from_reader(Capture::new(reader));
    Rows {
        csv,
        record: ByteRecord::new(),
        key_column,
        header_pending: has_headers,
        consumed_offset: 0,
        line_at_consumed: 1,
        done: false,
    }
}

/// The iterator of [`read_rows`]: one `Ok` for each good row, one `Err` for each bad one.
#[derive(Debug)]
pub struct Rows<R> {
    csv: csv::Reader<Capture<R>>,
    record: ByteRecord,
    key_column: usize,
    header_pending: bool,
    /// Input offset up to which bytes have been attributed to records (or blank lines).
    consumed_offset: u64,
    /// 1-based line number at `consumed_offset`.
    line_at_consumed: u64,
    done: bool,
}

/// Where the last record lies in the captured input.
struct Span {
    line: u64,
    /// Indexes into the capture's bytes of the record without leading blank lines or trailing
    /// terminators.
    start: usize,
    end: usize,
}

impl<R: Read> Rows<R> {
    /// Attributes the input consumed by the last record: skips blank lines before it, finds its
    /// first line, counts its lines, and strips its terminator.
    fn take_span(&mut self) -> Span {
        let end_offset = self.csv.position().byte();
        let capture = self.csv.get_ref();
        let bytes = capture.bytes_between(self.consumed_offset, end_offset);
        let base = (self.consumed_offset - capture.bytes_offset) as usize;
        let leading = bytes.iter().take_while(|&&b| is_line_end(b)).count();
        self.line_at_consumed += count_newlines(&bytes[..leading]);
        let line = self.line_at_consumed;
        self.line_at_consumed += count_newlines(&bytes[leading..]);
        let trailing = bytes[leading..]
            .iter()
            .rev()
            .take_while(|&&b| is_line_end(b))
            .count();
        self.consumed_offset = end_offset;
        Span {
            line,
            start: base + leading,
            end: base + bytes.len() - trailing,
        }
    }

    fn record_bytes(&self, span: &Span) -> &[u8] {
        &self.csv.get_ref().bytes[span.start..span.end]
    }

    /// Turns the outcome of reading one record into the iterator's next item; `None` to go on
    /// reading (after a header) or at the end.
    fn finish_record(&mut self, read: csv::Result<bool>) -> Option<Result<ImportRow, RowError>> {
        match read {
            Ok(false) => {
                self.done = true;
                None
            }
            Ok(true) => {
                let span = self.take_span();
                let bytes = self.record_bytes(&span);
                if let Err(problem) = check_quoting(bytes) {
                    self.header_pending = false;
                    return Some(Err(RowError::Malformed {
                        line: span.line,
                        problem,
                    }));
                }
                if std::mem::take(&mut self.header_pending) {
                    return None;
                }
                Some(self.keyed_row(span))
            }
            Err(error) if error.is_io_error() => {
                self.done = true;
                let line = self.line_at_consumed;
                let source = match error.into_kind() {
                    ErrorKind::Io(source) => source,
                    other => io::Error::other(format!("{other:?}")),
                };
                Some(Err(RowError::Io { line, source }))
            }
            Err(error) => {
                let span = self.take_span();
                let line = span.line;
                if let Err(problem) = check_quoting(self.record_bytes(&span)) {
                    return Some(Err(RowError::Malformed { line, problem }));
                }
                Some(Err(match *error.kind() {
                    ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => RowError::WrongFieldCount {
                        line,
                        expected: expected_len,
                        found: len,
                    },
                    _ => RowError::Csv {
                        line,
                        source: error,
                    },
                }))
            }
        }
    }

    fn keyed_row(&self, span: Span) -> Result<ImportRow, RowError> {
        let line = span.line;
        let key_column = self.key_column;
        let Some(key) = self.record.get(key_column) else {
            return Err(RowError::KeyColumnOutOfRange {
                line,
                key_column,
                field_count: self.record.len(),
            });
        };
        if key.is_empty() {
            return Err(RowError::EmptyKey { line, key_column });
        }
        Ok(ImportRow {
            line,
            key: key.to_vec(),
            value: self.record_bytes(&span).to_vec(),
        })
    }
}

impl<R: Read> Iterator for Rows<R> {
    type Item = Result<ImportRow, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.csv.get_mut().discard_before(self.consumed_offset);
            let read = self.csv.read_byte_record(&mut self.record);
            if let Some(item) = self.finish_record(read) {
                return Some(item);
            }
        }
        None
    }
}

impl<R: Read> FusedIterator for Rows<R> {}

fn is_line_end(byte: u8) -> bool {
    byte == b'\n' || byte == b'\r'
}

fn count_newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Checks one record (without its terminator) against RFC 4180's quoting.
fn check_quoting(record: &[u8]) -> Result<(), Malformed> {
    #[derive(PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        /// A `"` seen inside a quoted field: it closes the field or starts a `""` pair.
        QuoteInQuoted,
    }
    let mut state = State::FieldStart;
    let mut field_index = 0;
    for &byte in record {
        state = match (state, byte) {
            (State::FieldStart, b'"') => State::Quoted,
            (State::FieldStart | State::Unquoted | State::QuoteInQuoted, b',') => {
                field_index += 1;
                State::FieldStart
            }
            (State::Unquoted, b'"') => return Err(Malformed::QuoteInUnquotedField { field_index }),
            (State::FieldStart | State::Unquoted, _) => State::Unquoted,
            (State::Quoted, b'"') => State::QuoteInQuoted,
            (State::Quoted, _) => State::Quoted,
            (State::QuoteInQuoted, b'"') => State::Quoted,
            (State::QuoteInQuoted, _) => {
                return Err(Malformed::TextAfterClosingQuote { field_index })
            }
        };
    }
    if state == State::Quoted {
        return Err(Malformed::UnterminatedQuote { field_index });
    }
    Ok(())
}

/// Wraps the input and keeps the bytes read from it, so that a record's raw bytes can be taken
/// once the parser (which reads ahead through its own buffer) has consumed them.
#[derive(Debug)]
struct Capture<R> {
    inner: R,
    bytes: Vec<u8>,
    /// Input offset of `bytes[0]`.
    bytes_offset: u64,
}

/// Consumed bytes are dropped once at least this many have gathered, to copy rarely.
const DISCARD_BYTES_MIN: usize = 64 * 1024;

impl<R> Capture<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            bytes: Vec::new(),
            bytes_offset: 0,
        }
    }

    /// The bytes at input offsets `start..end`, which the parser has consumed and not yet been
    /// discarded: the parser cannot consume bytes this reader has not read.
    fn bytes_between(&self, start: u64, end: u64) -> &[u8] {
        let start = (start - self.bytes_offset) as usize;
        let end = (end - self.bytes_offset) as usize;
        &self.bytes[start..end]
    }

    /// Drops the bytes before input offset `offset` if enough have gathered.
    fn discard_before(&mut self, offset: u64) {
        let discard = (offset - self.bytes_offset) as usize;
        if discard >= DISCARD_BYTES_MIN {
            self.bytes.drain(..discard);
            self.bytes_offset = offset;
        }
    }
}

impl<R: Read> Read for Capture<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read_bytes = self.inner.read(buf)?;
        self.bytes.extend_from_slice(&buf[..read_bytes]);
        Ok(read_bytes)
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
            "8,\"ivy,x\n",                // 11: never closed, swallows the rest
            "9,jo,x\n",                   // 12
        );
        let rows = rows(data.as_bytes(), 0, true);
        assert_eq!(rows.len(), 9, "{rows:?}");
        assert_eq!(*rows[0].as_ref().unwrap(), good(2, "1", "1,alice,hello"));
        assert_eq!(
            *rows[1].as_ref().unwrap(),
            good(3, "2", "2,\"bob\",\"two\nlines\"")
        );
        assert!(matches!(
            rows[2],
            Err(RowError::WrongFieldCount {
                line: 5,
                expected: 3,
                found: 2
            })
        ));
        assert!(matches!(
            rows[3],
            Err(RowError::Malformed {
                line: 6,
                problem: Malformed::TextAfterClosingQuote { field_index: 1 }
            })
        ));
        assert!(matches!(
            rows[4],
            Err(RowError::Malformed {
                line: 7,
                problem: Malformed::QuoteInUnquotedField { field_index: 1 }
            })
        ));
        assert!(matches!(
            rows[5],
            Err(RowError::EmptyKey {
                line: 8,
                key_column: 0
            })
        ));
        assert_eq!(*rows[6].as_ref().unwrap(), good(9, "6", "6,gina,\"ok\""));
        assert!(matches!(
            rows[7],
            Err(RowError::WrongFieldCount {
                line: 10,
                expected: 3,
                found: 4
            })
        ));
        assert!(matches!(
            rows[8],
            Err(RowError::Malformed {
                line: 11,
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
        assert_eq!(lines, [2, 3, 5, 6, 7, 8, 9, 10, 11]);
    }

    #[test]
    fn reports_a_key_column_out_of_range_on_every_row() {
        let rows = rows(b"a,b\nc,d\n", 2, false);
        assert_eq!(rows.len(), 2);
        for (row, line) in rows.iter().zip(1..) {
            match row {
                Err(RowError::KeyColumnOutOfRange {
                    line: error_line,
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
        assert!(matches!(rows[0], Err(RowError::Malformed { line: 1, .. })));
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
}
