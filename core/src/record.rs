//! The record codec: one `WriteBatch` or transaction, as the bytes of one log record.
//!
//! Little-endian throughout. Version 1:
//!
//! ```text
//! offset size  field
//!      0    1  version         1 or 2 (below)
//!      1    1  kind            0 = batch, 1 = transaction (has a read set)
//!      2    8  hlc             origin's hybrid logical clock timestamp
//!     10    4  op_count
//!     14       ops, op_count times:
//!                1  tag        1 = put, 2 = delete (version 2 adds 3, 4, 5: table operations)
//!                1  table_len  then table_len bytes of table name (1..=255, UTF-8)
//!                2  key_len    then key_len bytes of key (1..=KEY_LEN_MAX; not for tags 3..=5)
//!                4  value_len  then value_len bytes of value (puts only)
//!          4  read_count       transactions only
//!             reads, read_count times:
//!                1  table_len  then the table name
//!                2  key_len    then the key
//!                1  present    1 if the key existed when read, else 0
//!                8  version    the `seq` the transaction read (only if present)
//!          4  range_count      version-2 transactions only
//!             range reads, range_count times:
//!                1  table_len  then the table name
//!                1  start      0 = unbounded, 1 = included, 2 = excluded
//!                2  start_len  then the start key (0..=65535 bytes; absent if unbounded)
//!                1  end        as start
//!                2  end_len    then the end key (absent if unbounded)
//!                8  count      entries the transaction saw in the range
//!                8  max        the greatest version among them (0 if none)
//! ```
//!
//! **Version 2** (this build) adds, to version 1, three table operations, each `tag ‖ table_len
//! ‖ table` with no key and no value: **3 = create table** (an empty table that exists, a no-op
//! if it does), **4 = drop table** (every entry removed and the table no longer listed; a later
//! put creates it again), **5 = clear table** (every entry removed, the table kept; a no-op on a
//! table that does not exist); and, in a transaction, its **range reads** (the scans it made,
//! validated at apply by `count` and `max`: see [`RangeRead`]). A record is written as version 2
//! only if it holds one of those, so every other record is byte for byte what version 1 wrote,
//! and a replica of an older build keeps following a log until a table operation or a scanning
//! transaction arrives, which it refuses with [`Error::RecordVersion`] (a clean stop, never a
//! misread). This build reads both versions; a version-1 record with a version-2 tag, or a
//! version-2 record that needs none of its additions, is refused (one encoding per record).
//!
//! The decoder borrows from the record, checks every length against the bytes that remain, and
//! never allocates from a declared count, so a malformed record costs nothing and is refused with
//! the offset where it went wrong.

use crate::error::{Error, Result};

/// The newest record format this build writes and reads (it reads version 1 too, and writes it
/// for every record that needs nothing of version 2).
pub const RECORD_VERSION: u8 = 2;
/// The format of records that need nothing of version 2: every record an older build wrote.
const RECORD_VERSION_1: u8 = 1;
/// LMDB's default maximum key size.
pub const KEY_LEN_MAX: usize = 511;
/// Longest table name.
pub const TABLE_LEN_MAX: usize = 255;

const KIND_BATCH: u8 = 0;
const KIND_TRANSACTION: u8 = 1;
const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_CREATE_TABLE: u8 = 3;
const TAG_DROP_TABLE: u8 = 4;
const TAG_CLEAR_TABLE: u8 = 5;
const BOUND_UNBOUNDED: u8 = 0;
const BOUND_INCLUDED: u8 = 1;
const BOUND_EXCLUDED: u8 = 2;
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
    /// Create `table`, empty, if it does not exist (version 2).
    CreateTable {
        /// Table name.
        table: &'a str,
    },
    /// Remove `table` and every entry in it (version 2).
    DropTable {
        /// Table name.
        table: &'a str,
    },
    /// Remove every entry of `table`, keeping the table (version 2).
    ClearTable {
        /// Table name.
        table: &'a str,
    },
}

/// A scan a transaction made (version 2): applying the transaction requires the range to hold
/// the same `count` entries with the same greatest version `max`.
///
/// That pair detects exactly whether the range's contents changed since the scan: a write
/// applied after the scan carries a version greater than every version the scan saw (versions
/// are log positions), so a put into the range (new key or overwrite) raises `max`, and deletes
/// alone lower `count`. A put then a delete of the same new key leaves both as they were, and
/// the range as it was too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeRead<'a> {
    /// Table name.
    pub table: &'a str,
    /// Where the range starts.
    pub start: std::ops::Bound<&'a [u8]>,
    /// Where the range ends.
    pub end: std::ops::Bound<&'a [u8]>,
    /// Entries the transaction saw in the range.
    pub count: u64,
    /// The greatest version among them (0 if there were none).
    pub max_version: u64,
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
    ranges: Vec<u8>,
    range_count: u32,
    /// The record holds a table operation: it is written as version 2.
    table_ops: bool,
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

    /// Adds a table operation: `CreateTable`, `DropTable` or `ClearTable` (tags 3, 4, 5).
    fn table_op(&mut self, tag: u8, table: &str) -> Result<()> {
        check_table(table)?;
        self.ops.push(tag);
        self.ops.push(table.len() as u8);
        self.ops.extend_from_slice(table.as_bytes());
        self.op_count += 1;
        self.table_ops = true;
        Ok(())
    }

    /// Adds the creation of `table` (empty; a no-op if it exists).
    pub fn create_table(&mut self, table: &str) -> Result<()> {
        self.table_op(TAG_CREATE_TABLE, table)
    }

    /// Adds the drop of `table`: every entry removed and the table gone.
    pub fn drop_table(&mut self, table: &str) -> Result<()> {
        self.table_op(TAG_DROP_TABLE, table)
    }

    /// Adds the clearing of `table`: every entry removed, the table kept.
    pub fn clear_table(&mut self, table: &str) -> Result<()> {
        self.table_op(TAG_CLEAR_TABLE, table)
    }

    /// Adds a range read (makes the record a version-2 transaction): the scan of `table` over
    /// `start..end` saw `count` entries whose greatest version is `max_version` (see
    /// [`RangeRead`]). Bound keys are 0..=65,535 bytes.
    pub fn read_range(
        &mut self,
        table: &str,
        start: std::ops::Bound<&[u8]>,
        end: std::ops::Bound<&[u8]>,
        count: u64,
        max_version: u64,
    ) -> Result<()> {
        check_table(table)?;
        for bound in [start, end] {
            if let std::ops::Bound::Included(key) | std::ops::Bound::Excluded(key) = bound {
                if key.len() > usize::from(u16::MAX) {
                    return Err(Error::InvalidKey {
                        table: table.to_string(),
                        len: key.len(),
                    });
                }
            }
        }
        self.ranges.push(table.len() as u8);
        self.ranges.extend_from_slice(table.as_bytes());
        for bound in [start, end] {
            let (kind, key): (u8, &[u8]) = match bound {
                std::ops::Bound::Unbounded => (BOUND_UNBOUNDED, &[]),
                std::ops::Bound::Included(key) => (BOUND_INCLUDED, key),
                std::ops::Bound::Excluded(key) => (BOUND_EXCLUDED, key),
            };
            self.ranges.push(kind);
            if kind != BOUND_UNBOUNDED {
                self.ranges
                    .extend_from_slice(&(key.len() as u16).to_le_bytes());
                self.ranges.extend_from_slice(key);
            }
        }
        self.ranges.extend_from_slice(&count.to_le_bytes());
        self.ranges.extend_from_slice(&max_version.to_le_bytes());
        self.range_count += 1;
        Ok(())
    }

    /// Whether the record needs version 2 (a table operation or a range read).
    fn version(&self) -> u8 {
        if self.table_ops || self.range_count > 0 {
            RECORD_VERSION
        } else {
            RECORD_VERSION_1
        }
    }

    /// Whether the record is a transaction (it read something).
    fn is_transaction(&self) -> bool {
        self.read_count > 0 || self.range_count > 0
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
        let reads = if self.is_transaction() {
            4 + self.reads.len()
        } else {
            0
        };
        let ranges = if self.is_transaction() && self.version() == RECORD_VERSION {
            4 + self.ranges.len()
        } else {
            0
        };
        HEADER_LEN + self.ops.len() + reads + ranges
    }

    /// Hands the encoded record to `put` in pieces, in order (so a caller can write it straight
    /// into a log reservation with no intermediate buffer). The pieces total
    /// [`encoded_len`](Self::encoded_len) bytes.
    pub fn encode_pieces(&self, hlc: u64, mut put: impl FnMut(&[u8])) {
        let kind = if self.is_transaction() {
            KIND_TRANSACTION
        } else {
            KIND_BATCH
        };
        let version = self.version();
        let mut header = [0u8; HEADER_LEN];
        header[0] = version;
        header[1] = kind;
        header[2..10].copy_from_slice(&hlc.to_le_bytes());
        header[10..14].copy_from_slice(&self.op_count.to_le_bytes());
        put(&header);
        put(&self.ops);
        if self.is_transaction() {
            put(&self.read_count.to_le_bytes());
            put(&self.reads);
            if version == RECORD_VERSION {
                put(&self.range_count.to_le_bytes());
                put(&self.ranges);
            }
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
    range_reads: Vec<RangeRead<'a>>,
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
    /// The scans a transaction made (empty for a batch and for a version-1 record).
    pub fn range_reads(&self) -> &[RangeRead<'a>] {
        &self.range_reads
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
    fn bound(&mut self) -> Result<std::ops::Bound<&'a [u8]>> {
        let at = self.at;
        Ok(match self.u8("range bound")? {
            BOUND_UNBOUNDED => std::ops::Bound::Unbounded,
            kind @ (BOUND_INCLUDED | BOUND_EXCLUDED) => {
                let len = usize::from(self.u16("range bound length")?);
                let key = self.take(len, "range bound key")?;
                if kind == BOUND_INCLUDED {
                    std::ops::Bound::Included(key)
                } else {
                    std::ops::Bound::Excluded(key)
                }
            }
            _ => {
                return Err(Error::RecordDecode {
                    offset: at,
                    what: "range bound",
                })
            }
        })
    }
    fn range_read(&mut self) -> Result<RangeRead<'a>> {
        Ok(RangeRead {
            table: self.table()?,
            start: self.bound()?,
            end: self.bound()?,
            count: self.u64("range count")?,
            max_version: self.u64("range max version")?,
        })
    }
}

/// Decodes a record; see the module docs. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<RecordView<'_>> {
    let mut d = Decoder { bytes, at: 0 };
    let version = d.u8("version")?;
    if version != RECORD_VERSION && version != RECORD_VERSION_1 {
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
    let mut table_ops = false;
    for _ in 0..op_count {
        // Each op takes at least 5 bytes, so a huge count fails on the bytes, not on memory.
        let op_at = d.at;
        let tag = d.u8("op tag")?;
        let op_tag = || Error::RecordDecode {
            offset: op_at,
            what: "op tag",
        };
        let table = match tag {
            TAG_PUT | TAG_DELETE => d.table()?,
            TAG_CREATE_TABLE..=TAG_CLEAR_TABLE if version == RECORD_VERSION => {
                table_ops = true;
                d.table()?
            }
            _ => return Err(op_tag()),
        };
        ops.push(match tag {
            TAG_CREATE_TABLE => Op::CreateTable { table },
            TAG_DROP_TABLE => Op::DropTable { table },
            TAG_CLEAR_TABLE => Op::ClearTable { table },
            TAG_PUT => {
                let key = d.key()?;
                let len = d.u32("value length")? as usize;
                Op::Put {
                    table,
                    key,
                    value: d.take(len, "value")?,
                }
            }
            _ => Op::Delete {
                table,
                key: d.key()?,
            },
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
    let mut range_reads = Vec::new();
    if kind == KIND_TRANSACTION && version == RECORD_VERSION {
        let range_count = d.u32("range count")?;
        for _ in 0..range_count {
            // Each takes at least 20 bytes: a huge count fails on the bytes.
            range_reads.push(d.range_read()?);
        }
    }
    if d.at != bytes.len() {
        return Err(d.fault("trailing bytes"));
    }
    if version == RECORD_VERSION && !table_ops && range_reads.is_empty() {
        return Err(Error::RecordDecode {
            offset: 0,
            what: "version (2 for a record that needs nothing of it)",
        });
    }
    Ok(RecordView {
        hlc,
        ops,
        reads,
        range_reads,
    })
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
    fn a_plain_batch_is_still_written_as_version_1() {
        let mut b = RecordBuilder::default();
        b.put("t", b"k", b"v").unwrap();
        b.read("t", b"k", Some(7)).unwrap();
        let bytes = b.encode(3);
        assert_eq!(
            bytes[0], 1,
            "an older replica keeps reading ordinary records"
        );
        // version, kind, hlc, one op: put t k v; one read of t k at 7.
        let mut expected = vec![1, 1, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        expected.extend_from_slice(&[1, 1, b't', 1, 0, b'k', 1, 0, 0, 0, b'v']);
        expected.extend_from_slice(&[1, 0, 0, 0, 1, b't', 1, 0, b'k', 1, 7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn table_operations_and_range_reads_round_trip_as_version_2() {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let mut b = RecordBuilder::default();
        b.create_table("a").unwrap();
        b.drop_table("b").unwrap();
        b.clear_table("c").unwrap();
        b.put("a", b"k", b"v").unwrap();
        let bytes = b.encode(9);
        assert_eq!((bytes[0], bytes[1]), (RECORD_VERSION, KIND_BATCH));
        assert_eq!(bytes.len(), b.encoded_len());
        let view = decode(&bytes).unwrap();
        assert_eq!(
            view.ops(),
            &[
                Op::CreateTable { table: "a" },
                Op::DropTable { table: "b" },
                Op::ClearTable { table: "c" },
                Op::Put {
                    table: "a",
                    key: b"k",
                    value: b"v"
                },
            ]
        );

        let mut t = RecordBuilder::default();
        t.read_range("s", Included(b"01"), Excluded(b"02"), 3, 99)
            .unwrap();
        t.read_range("s", Unbounded, Included(b""), 0, 0).unwrap();
        t.put("totals", b"01", b"3").unwrap();
        let bytes = t.encode(1);
        assert_eq!((bytes[0], bytes[1]), (RECORD_VERSION, KIND_TRANSACTION));
        assert_eq!(bytes.len(), t.encoded_len());
        let view = decode(&bytes).unwrap();
        assert!(view.reads().is_empty());
        assert_eq!(
            view.range_reads(),
            &[
                RangeRead {
                    table: "s",
                    start: Included(&b"01"[..]),
                    end: Excluded(&b"02"[..]),
                    count: 3,
                    max_version: 99
                },
                RangeRead {
                    table: "s",
                    start: Unbounded,
                    end: Included(&b""[..]),
                    count: 0,
                    max_version: 0
                },
            ]
        );
    }

    #[test]
    fn a_transaction_with_table_operations_and_key_reads_round_trips_as_version_2() {
        let mut t = RecordBuilder::default();
        t.read("jobs", b"j1", Some(4)).unwrap();
        t.drop_table("jobs").unwrap();
        t.put("log", b"j1", b"done").unwrap();
        let bytes = t.encode(2);
        assert_eq!((bytes[0], bytes[1]), (RECORD_VERSION, KIND_TRANSACTION));
        assert_eq!(bytes.len(), t.encoded_len());
        let view = decode(&bytes).unwrap();
        assert_eq!(
            view.reads(),
            &[Read {
                table: "jobs",
                key: b"j1",
                version: Some(4)
            }]
        );
        assert!(view.range_reads().is_empty());
        assert_eq!(view.ops()[0], Op::DropTable { table: "jobs" });
    }

    #[test]
    fn version_2_features_in_version_1_and_an_empty_version_2_are_refused() {
        let mut b = RecordBuilder::default();
        b.create_table("a").unwrap();
        let mut bytes = b.encode(1);
        bytes[0] = 1;
        assert!(matches!(
            decode(&bytes),
            Err(Error::RecordDecode { what: "op tag", .. })
        ));
        let mut plain = RecordBuilder::default();
        plain.put("a", b"k", b"v").unwrap();
        let mut bytes = plain.encode(1);
        bytes[0] = RECORD_VERSION;
        assert!(decode(&bytes).is_err(), "one encoding per record");
        bytes[0] = 3;
        assert!(matches!(
            decode(&bytes),
            Err(Error::RecordVersion { found: 3, .. })
        ));
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
