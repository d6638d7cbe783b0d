//! Helpers shared by the log's integration tests: self-checking records and a draining reader.

#![allow(dead_code)]

use pagemesh_logpage::{Cursor, Log, RecordReader};

/// A record whose bytes are derived from `(writer, index)`, so a reader can check its content.
pub fn make_record(writer: u32, index: u32, len: usize) -> Vec<u8> {
    assert!(len >= 8);
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(&writer.to_le_bytes());
    bytes.extend_from_slice(&index.to_le_bytes());
    let mut x = u64::from(writer) << 32 | u64::from(index);
    while bytes.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        bytes.push((x >> 56) as u8);
    }
    bytes
}

/// Checks a record made by `make_record`; returns its `(writer, index)`.
pub fn check_record(bytes: &[u8]) -> (u32, u32) {
    let writer = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let index = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    assert_eq!(
        bytes,
        make_record(writer, index, bytes.len()),
        "record {writer}/{index} damaged"
    );
    (writer, index)
}

/// Reads every ready page from `cursor`, releasing as it goes; returns `(seq, bytes)` per record.
pub fn drain(cursor: &mut Cursor, reader: &mut RecordReader, out: &mut Vec<(u64, Vec<u8>)>) {
    while let Some(page) = cursor.next_ready().expect("ready page validates") {
        reader
            .feed(page, |record| {
                out.push((record.seq, record.bytes.into_owned()))
            })
            .expect("records decode");
        let position = cursor.position();
        cursor.release(position);
    }
}

/// Seals and reads everything committed so far.
pub fn drain_all(log: &Log, cursor: &mut Cursor, reader: &mut RecordReader) -> Vec<(u64, Vec<u8>)> {
    log.seal();
    let mut out = Vec::new();
    drain(cursor, reader, &mut out);
    out
}
