//! The record codec: one `WriteBatch` or transaction, as the bytes of one log record.
//!
//! Little-endian throughout. Version 1:
//!
//! ```text
//! offset size  field
//!      0    1  version         RECORD_VERSION
//!      1    1  kind            0 = batch, 1 = transaction (has a read set)
//!      2    8  hlc             origin's hybrid logical clock timestamp
//!     10    4  op_count
//!     14       ops, op_count times:
//!                1  tag        1 = put, 2 = delete
//!                1  table_len  then table_len bytes of table name (1..=255, UTF-8)
//!                2  key_len    then key_len bytes of key (1..=KEY_LEN_MAX)
//!                4  value_len  then value_len bytes of value (puts only)
//!          4  read_count       transactions only
//!             reads, read_count times:
//!                1  table_len  then the table name
//!                2  key_len    then the key
//!                1  present    1 if the key existed when read, else 0
//!                8  version    the `seq` the transaction read (only if present)
//! ```
//!
//! The decoder borrows from the record, checks every length against the bytes that remain, and
//! never allocates from a declared count, so a malformed record costs nothing and is refused with
//! the offset where it went wrong.

use crate::error::{Error, Result};

/// The record format this build writes and reads.
pub const RECORD_VERSION: u8 = 1;
/// LMDB's default maximum key size.
pub const KEY_LEN_MAX: usize = 511;
/// Longest table name.
pub const TABLE_LEN_MAX: usize = 255;

const KIND_BATCH: u8 = 0;
const KIND_TRANSACTION: u8 = 1;
const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const HEADER_LEN: usize = 14;

/// One change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// Set `key` in `table` to `value`.
    Put {
        /// Table name.
        table: &'a str,
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
    },
    /// Remove `key` from `table`.
    Delete {
        /// Table name.
        table: &'a str,
        /// Key.
        key: &'a [u8],
    },
}

/// A version a transaction read: applying it requires the key's current version to equal this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read<'a> {
    /// Table name.
    pub table: &'a str,
    /// Key.
    pub key: &'a [u8],
    /// The `seq` read; `None` if the key was absent.
    pub version: Option<u64>,
}

/// Builds a record. Checks names and lengths as they are added, so an encoded record always
/// decodes.
#[derive(Clone, Debug, Default)]
pub struct RecordBuilder {
    ops: Vec<u8>,
    op_count: u32,
    reads: Vec<u8>,
    read_count: u32,
}

/// A table name is 1..=TABLE_LEN_MAX bytes, not reserved (`__`), and holds no NUL: LMDB names are
/// C strings, and heed panics on an interior NUL (found by the snapshot_restore fuzz target).
pub(crate) fn check_table(table: &str) -> Result<()> {
    if table.is_empty()
        || table.len() > TABLE_LEN_MAX
        || table.starts_with("__")
        || table.contains('\0')
    {
        return Err(Error::InvalidTable {
            table: table.to_string(),
        });
    }
    Ok(())
}

fn check_key(table: &str, key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > KEY_LEN_MAX {
        return Err(Error::InvalidKey {
            table: table.to_string(),
            len: key.len(),
        });
    }
    Ok(())
}

fn put_name_and_key(out: &mut Vec<u8>, table: &str, key: &[u8]) {
    out.push(table.len() as u8);
    out.extend_from_slice(table.as_bytes());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
}

impl RecordBuilder {
    /// Adds a put.
    pub fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<()> {
        check_table(table)?;
        check_key(table, key)?;
        let value_len = u32::try_from(value.len()).map_err(|_| Error::InvalidValue {
            table: table.to_string(),
            len: value.len(),
        })?;
        self.ops.push(TAG_PUT);
        put_name_and_key(&mut self.ops, table, key);
        self.ops.extend_from_slice(&value_len.to_le_bytes());
        self.ops.extend_from_slice(value);
        self.op_count += 1;
        Ok(())
    }

    /// Refuses a put of `value` that would make this record longer than `record_len_max`
    /// bytes (the log's limit: half its ring), with [`Error::ValueTooLarge`]; adds nothing.
    pub fn check_put_fits(
        &self,
        table: &str,
        key: &[u8],
        value: &[u8],
        record_len_max: usize,
    ) -> Result<()> {
        // tag, table length and name, key length and key, value length and value
        let op_len = 1 + 1 + table.len() + 2 + key.len() + 4 + value.len();
        let record_len = self.encoded_len().saturating_add(op_len);
        if record_len > record_len_max {
            return Err(Error::ValueTooLarge {
                table: table.to_string(),
                len: value.len(),
                record_len,
                limit: record_len_max,
            });
        }
        Ok(())
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: &str, key: &[u8]) -> Result<()> {
        check_table(table)?;
        check_key(table, key)?;
        self.ops.push(TAG_DELETE);
        put_name_and_key(&mut self.ops, table, key);
        self.op_count += 1;
        Ok(())
    }

    /// Adds a version read (makes the record a transaction): `None` if the key was absent.
    pub fn read(&mut self, table: &str, key: &[u8], version: Option<u64>) -> Result<()> {
        check_table(table)?;
        check_key(table, key)?;
        put_name_and_key(&mut self.reads, table, key);
        match version {
            Some(version) => {
                self.reads.push(1);
                self.reads.extend_from_slice(&version.to_le_bytes());
            }
            None => self.reads.push(0),
        }
        self.read_count += 1;
        Ok(())
    }

    /// Changes in the record.
    pub fn op_count(&self) -> u32 {
        self.op_count
    }

    /// Bytes the encoded record takes.
    pub fn encoded_len(&self) -> usize {
        let reads = if self.read_count > 0 {
            4 + self.reads.len()
        } else {
            0
        };
        HEADER_LEN + self.ops.len() + reads
    }

    /// Hands the encoded record to `put` in pieces, in order (so a caller can write it straight
    /// into a log reservation with no intermediate buffer). The pieces total
    /// [`encoded_len`](Self::encoded_len) bytes.
    pub fn encode_pieces(&self, hlc: u64, mut put: impl FnMut(&[u8])) {
        let kind = if self.read_count > 0 {
            KIND_TRANSACTION
        } else {
            KIND_BATCH
        };
        let mut header = [0u8; HEADER_LEN];
        header[0] = RECORD_VERSION;
        header[1] = kind;
        header[2..10].copy_from_slice(&hlc.to_le_bytes());
        header[10..14].copy_from_slice(&self.op_count.to_le_bytes());
        put(&header);
        put(&self.ops);
        if self.read_count > 0 {
            put(&self.read_count.to_le_bytes());
            put(&self.reads);
        }
    }

    /// The encoded record.
    pub fn encode(&self, hlc: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_pieces(hlc, |piece| out.extend_from_slice(piece));
        out
    }
}

/// A decoded record, borrowing its bytes.
#[derive(Clone, Debug)]
pub struct RecordView<'a> {
    /// The origin's clock when the record was made.
    pub hlc: u64,
    ops: Vec<Op<'a>>,
    reads: Vec<Read<'a>>,
}

impl<'a> RecordView<'a> {
    /// The changes, in order.
    pub fn ops(&self) -> &[Op<'a>] {
        &self.ops
    }
    /// The versions a transaction read (empty for a batch).
    pub fn reads(&self) -> &[Read<'a>] {
        &self.reads
    }
}

/// Reads fields off a record, failing with the offset where the bytes run out or go wrong.
struct Decoder<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.at..end];
                self.at = end;
                Ok(out)
            }
            None => Err(self.fault(what)),
        }
    }
    fn fault(&self, what: &'static str) -> Error {
        Error::RecordDecode {
            offset: self.at,
            what,
        }
    }
    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(b);
        Ok(u64::from_le_bytes(word))
    }
    fn table(&mut self) -> Result<&'a str> {
        let len = usize::from(self.u8("table length")?);
        let at = self.at;
        let name = self.take(len, "table name")?;
        let name = std::str::from_utf8(name).map_err(|_| Error::RecordDecode {
            offset: at,
            what: "table name (not UTF-8)",
        })?;
        if check_table(name).is_err() {
            return Err(Error::RecordDecode {
                offset: at,
                what: "table name (invalid)",
            });
        }
        Ok(name)
    }
    fn key(&mut self) -> Result<&'a [u8]> {
        let len = usize::from(self.u16("key length")?);
        if len == 0 || len > KEY_LEN_MAX {
            return Err(self.fault("key length (out of range)"));
        }
        self.take(len, "key")
    }
}

/// Decodes a record; see the module docs. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<RecordView<'_>> {
    let mut d = Decoder { bytes, at: 0 };
    let version = d.u8("version")?;
    if version != RECORD_VERSION {
        return Err(Error::RecordVersion {
            found: version,
            supported: RECORD_VERSION,
        });
    }
    let kind = d.u8("kind")?;
    if kind != KIND_BATCH && kind != KIND_TRANSACTION {
        return Err(Error::RecordDecode {
            offset: 1,
            what: "kind",
        });
    }
    let hlc = d.u64("hlc")?;
    let op_count = d.u32("op count")?;
    let mut ops = Vec::new();
    for _ in 0..op_count {
        // Each op takes at least 5 bytes, so a huge count fails on the bytes, not on memory.
        let op_at = d.at;
        let tag = d.u8("op tag")?;
        let table = d.table()?;
        let key = d.key()?;
        ops.push(match tag {
            TAG_PUT => {
                let len = d.u32("value length")? as usize;
                Op::Put {
                    table,
                    key,
                    value: d.take(len, "value")?,
                }
            }
            TAG_DELETE => Op::Delete { table, key },
            _ => {
                return Err(Error::RecordDecode {
                    offset: op_at,
                    what: "op tag",
                })
            }
        });
    }
    let mut reads = Vec::new();
    if kind == KIND_TRANSACTION {
        let read_count = d.u32("read count")?;
        for _ in 0..read_count {
            let table = d.table()?;
            let key = d.key()?;
            let version = match d.u8("read presence")? {
                0 => None,
                1 => Some(d.u64("read version")?),
                _ => return Err(d.fault("read presence")),
            };
            reads.push(Read {
                table,
                key,
                version,
            });
        }
    }
    if d.at != bytes.len() {
        return Err(d.fault("trailing bytes"));
    }
    Ok(RecordView { hlc, ops, reads })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_batch_round_trips() {
        let mut b = RecordBuilder::default();
        b.put("prices", b"k1", b"v1").unwrap();
        b.delete("prices", b"k2").unwrap();
        let bytes = b.encode(42);
        assert_eq!(bytes.len(), b.encoded_len());
        let view = decode(&bytes).unwrap();
        assert_eq!(view.hlc, 42);
        assert_eq!(
            view.ops(),
            &[
                Op::Put {
                    table: "prices",
                    key: b"k1",
                    value: b"v1"
                },
                Op::Delete {
                    table: "prices",
                    key: b"k2"
                },
            ]
        );
        assert!(view.reads().is_empty());
    }

    #[test]
    fn bad_names_and_keys_are_refused_at_build_time() {
        let mut b = RecordBuilder::default();
        assert!(b.put("__meta", b"k", b"v").is_err(), "reserved prefix");
        assert!(b.put("", b"k", b"v").is_err());
        assert!(b.put("t", b"", b"v").is_err());
        assert!(b.put("t", &[0; KEY_LEN_MAX + 1], b"v").is_err());
        assert_eq!(b.op_count(), 0);
    }

    #[test]
    fn a_truncated_record_names_the_offset() {
        let mut b = RecordBuilder::default();
        b.put("t", b"key", b"value").unwrap();
        let bytes = b.encode(1);
        match decode(&bytes[..bytes.len() - 2]) {
            Err(Error::RecordDecode {
                what: "value",
                offset,
            }) => assert_eq!(offset, bytes.len() - 5),
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn records_round_trip(
            ops in proptest::collection::vec(("[a-z]{1,8}", proptest::collection::vec(any::<u8>(), 1..40), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100))), 0..20),
            reads in proptest::collection::vec(("[a-z]{1,8}", proptest::collection::vec(any::<u8>(), 1..40), proptest::option::of(any::<u64>())), 0..5),
            hlc in any::<u64>(),
        ) {
            let mut b = RecordBuilder::default();
            for (table, key, value) in &ops {
                match value {
                    Some(value) => b.put(table, key, value).unwrap(),
                    None => b.delete(table, key).unwrap(),
                }
            }
            for (table, key, version) in &reads {
                b.read(table, key, *version).unwrap();
            }
            let bytes = b.encode(hlc);
            let view = decode(&bytes).unwrap();
            prop_assert_eq!(view.hlc, hlc);
            prop_assert_eq!(view.ops().len(), ops.len());
            prop_assert_eq!(view.reads().len(), reads.len());
            for (op, (table, key, value)) in view.ops().iter().zip(&ops) {
                match (op, value) {
                    (Op::Put { table: t, key: k, value: v }, Some(value)) => {
                        prop_assert_eq!(t, table);
                        prop_assert_eq!(*k, &key[..]);
                        prop_assert_eq!(*v, &value[..]);
                    }
                    (Op::Delete { table: t, key: k }, None) => {
                        prop_assert_eq!(t, table);
                        prop_assert_eq!(*k, &key[..]);
                    }
                    _ => prop_assert!(false, "op kind changed"),
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }
    }
}
