//! `pagemesh import`'s CSV reader (`workload::csv_import::read_rows`) never panics on any bytes,
//! and accounts for its input.
//!
//! The first byte picks the key column (0..4) and whether the first row is a header; the rest is
//! the file. For every item the reader yields: lines never go backwards; the position it reports
//! never goes backwards, stays within the input, and carries the crc32c of exactly the bytes
//! before it; a good row's key is one of its own fields' bytes, and its value, read alone as a
//! file, gives back the same row.

#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use pagemesh_tools::workload::csv_import::{read_rows, Position};

/// Items read per input at most (a byte can make at most one item, so this is generous).
const ITEMS_MAX: usize = 100_000;
const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

fuzz_target!(|data: &[u8]| {
    let Some((&control, file)) = data.split_first() else {
        return;
    };
    let key_column = usize::from(control & 3);
    let has_headers = control & 4 != 0;
    let mut rows = read_rows(file, key_column, has_headers);
    let mut line_last = 0;
    let mut position_last = Position::START;
    for _ in 0..ITEMS_MAX {
        let Some(item) = rows.next() else {
            return;
        };
        let first_line = match &item {
            Ok(row) => {
                check_row_alone(row, key_column);
                row.line
            }
            Err(error) => {
                black_box(error.to_string());
                error.lines().first
            }
        };
        assert!(
            first_line >= line_last,
            "line {first_line} after {line_last}"
        );
        line_last = first_line;
        let position = rows.position();
        assert!(position.offset >= position_last.offset);
        assert!(position.line >= position_last.line);
        assert!(position.offset as usize <= file.len());
        assert_eq!(
            position.crc32c,
            crc32c::crc32c(&file[..position.offset as usize]),
            "crc of the bytes before offset {}",
            position.offset
        );
        position_last = position;
    }
    panic!("more than {ITEMS_MAX} items from {} bytes", file.len());
});

fn check_row_alone(row: &pagemesh_tools::workload::csv_import::ImportRow, key_column: usize) {
    assert!(
        row.value
            .windows(row.key.len().max(1))
            .any(|w| row.key.is_empty() || w == row.key.as_slice())
            || row.value.contains(&b'"'),
        "key {:?} not in value {:?}",
        row.key,
        row.value
    );
    // A BOM is removed only at the start of a file: a value that starts with those bytes would
    // lose them when read alone as one.
    if row.value.starts_with(UTF8_BOM) {
        return;
    }
    let mut alone = read_rows(&row.value[..], key_column, false);
    match alone.next() {
        Some(Ok(again)) => {
            assert_eq!(again.key, row.key);
            assert_eq!(again.value, row.value);
        }
        other => panic!("row {:?} read alone gives {other:?}", row.value),
    }
    assert!(
        alone.next().is_none(),
        "a row's value read alone gave a second item"
    );
}
