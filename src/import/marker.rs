//! The resume marker: where a durable prefix of an import's input ends.
//!
//! Every batch `pagemesh import` commits also puts, in the same `WriteBatch` (so atomically with
//! its rows), one marker in the table [`MARKER_TABLE`], keyed by the destination table's name. It
//! says how far into the file the committed rows reach and what the import counted up to there,
//! so `--resume` can check that it reads the same file with the same options and carry on after
//! the last durable row.
//!
//! Little-endian throughout. Version 1, [`MARKER_LEN`] bytes:
//!
//! ```text
//! offset size  field
//!      0    4  magic           b"PMIM"
//!      4    1  version         MARKER_VERSION
//!      5    1  flags           bit 0: the import reached the end of the file; bit 1: --header
//!      6    1  on_duplicate    0 = reject, 1 = last-wins
//!      7    1  reserved        0
//!      8    8  key_column
//!     16    8  offset          file bytes consumed by the committed rows (a BOM included)
//!     24    8  line            the 1-based line at `offset`
//!     32    4  crc32c          of the file's bytes 0..offset
//!     36    4  reserved        0
//!     40    8  rows_read       and the other counts of `Counts`, in its field order,
//!      …                       through the row that ends at `offset`
//!     88    8  too_large
//! ```

use pagemesh_tools::workload::csv_import::Position;

/// The table holding one marker per destination table. Core refuses names starting with `__`;
/// a dot cannot clash with a name a user is likely to choose, and the importer refuses it as a
/// destination.
pub const MARKER_TABLE: &str = "pagemesh.import";
/// The layout this build writes and reads.
pub const MARKER_VERSION: u8 = 1;

const MAGIC: [u8; 4] = *b"PMIM";
const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 4;
const FLAGS_OFFSET: usize = VERSION_OFFSET + 1;
const ON_DUPLICATE_OFFSET: usize = FLAGS_OFFSET + 1;
const KEY_COLUMN_OFFSET: usize = ON_DUPLICATE_OFFSET + 2;
const POSITION_OFFSET: usize = KEY_COLUMN_OFFSET + 8;
const LINE_OFFSET: usize = POSITION_OFFSET + 8;
const CRC_OFFSET: usize = LINE_OFFSET + 8;
const COUNTS_OFFSET: usize = CRC_OFFSET + 8;
const COUNT_FIELDS: usize = 7;
/// Bytes of an encoded marker.
pub const MARKER_LEN: usize = COUNTS_OFFSET + 8 * COUNT_FIELDS;
const _: () = assert!(MARKER_LEN == 96);

const FLAG_FINISHED: u8 = 1;
const FLAG_HEADER: u8 = 2;

/// What `pagemesh import` does with a key it has already written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnDuplicate {
    /// The later row is reported and not imported: the first one stays.
    Reject,
    /// The later row is reported and replaces the earlier one.
    LastWins,
}

/// What an import counted. Each row read is exactly one of imported, a rejected duplicate, bad
/// or too large; each imported row either wrote a new key or replaced an earlier row's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records read, good or bad (the header not included).
    pub rows_read: u64,
    /// Rows put into the table.
    pub imported: u64,
    /// Distinct keys put.
    pub keys_written: u64,
    /// Rows not imported because an earlier row held their key.
    pub duplicates_rejected: u64,
    /// Rows that replaced an earlier row with the same key (`last-wins`).
    pub duplicates_replaced: u64,
    /// Rows the reader or the key check rejected.
    pub bad: u64,
    /// Rows too large for one log record.
    pub too_large: u64,
}

impl Counts {
    fn to_array(self) -> [u64; COUNT_FIELDS] {
        [
            self.rows_read,
            self.imported,
            self.keys_written,
            self.duplicates_rejected,
            self.duplicates_replaced,
            self.bad,
            self.too_large,
        ]
    }

    fn from_array(counts: [u64; COUNT_FIELDS]) -> Self {
        let [rows_read, imported, keys_written, duplicates_rejected, duplicates_replaced, bad, too_large] =
            counts;
        Self {
            rows_read,
            imported,
            keys_written,
            duplicates_rejected,
            duplicates_replaced,
            bad,
            too_large,
        }
    }

    /// Rows read and not imported.
    pub fn not_imported(&self) -> u64 {
        self.duplicates_rejected + self.bad + self.too_large
    }
}

/// The options that decide which rows an import takes: a resumed import must use the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkerOptions {
    /// The 0-based key column.
    pub key_column: u64,
    /// Whether the first row is a header.
    pub header: bool,
    /// The duplicate rule.
    pub on_duplicate: OnDuplicate,
}

/// One decoded marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The options of the import that wrote it.
    pub options: MarkerOptions,
    /// Where the committed rows end in the file.
    pub position: Position,
    /// The counts through `position`.
    pub counts: Counts,
    /// Whether the import read the file to its end.
    pub finished: bool,
}

/// Why a stored marker cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MarkerError {
    /// Not `MARKER_LEN` bytes.
    #[error("{len} bytes where a marker has {MARKER_LEN}")]
    Length {
        /// Bytes found.
        len: usize,
    },
    /// The magic is wrong.
    #[error("bad magic")]
    Magic,
    /// Written by another format version.
    #[error("marker version {version}; this build reads {MARKER_VERSION}")]
    Version {
        /// Version found.
        version: u8,
    },
    /// Unknown flag bits or duplicate rule.
    #[error("unknown flags {flags:#04x} or duplicate rule {on_duplicate}")]
    Field {
        /// Flags found.
        flags: u8,
        /// Rule byte found.
        on_duplicate: u8,
    },
}

impl Marker {
    /// The marker's bytes.
    pub fn encode(&self) -> [u8; MARKER_LEN] {
        let mut out = [0u8; MARKER_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[VERSION_OFFSET] = MARKER_VERSION;
        out[FLAGS_OFFSET] = (u8::from(self.finished) * FLAG_FINISHED)
            | (u8::from(self.options.header) * FLAG_HEADER);
        out[ON_DUPLICATE_OFFSET] = match self.options.on_duplicate {
            OnDuplicate::Reject => 0,
            OnDuplicate::LastWins => 1,
        };
        let mut put = |offset: usize, bytes: &[u8]| {
            out[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(KEY_COLUMN_OFFSET, &self.options.key_column.to_le_bytes());
        put(POSITION_OFFSET, &self.position.offset.to_le_bytes());
        put(LINE_OFFSET, &self.position.line.to_le_bytes());
        put(CRC_OFFSET, &self.position.crc32c.to_le_bytes());
        for (index, count) in self.counts.to_array().into_iter().enumerate() {
            put(COUNTS_OFFSET + 8 * index, &count.to_le_bytes());
        }
        out
    }

    /// Reads a stored marker, checking every field.
    pub fn decode(bytes: &[u8]) -> Result<Self, MarkerError> {
        let bytes: &[u8; MARKER_LEN] = bytes
            .try_into()
            .map_err(|_| MarkerError::Length { len: bytes.len() })?;
        if bytes[..4] != MAGIC {
            return Err(MarkerError::Magic);
        }
        if bytes[VERSION_OFFSET] != MARKER_VERSION {
            return Err(MarkerError::Version {
                version: bytes[VERSION_OFFSET],
            });
        }
        let (flags, on_duplicate) = (bytes[FLAGS_OFFSET], bytes[ON_DUPLICATE_OFFSET]);
        let on_duplicate = match on_duplicate {
            0 if flags & !(FLAG_FINISHED | FLAG_HEADER) == 0 => OnDuplicate::Reject,
            1 if flags & !(FLAG_FINISHED | FLAG_HEADER) == 0 => OnDuplicate::LastWins,
            _ => {
                return Err(MarkerError::Field {
                    flags,
                    on_duplicate,
                })
            }
        };
        let u64_at = |offset: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[offset..offset + 8]);
            u64::from_le_bytes(word)
        };
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&bytes[CRC_OFFSET..CRC_OFFSET + 4]);
        Ok(Self {
            options: MarkerOptions {
                key_column: u64_at(KEY_COLUMN_OFFSET),
                header: flags & FLAG_HEADER != 0,
                on_duplicate,
            },
            position: Position {
                offset: u64_at(POSITION_OFFSET),
                line: u64_at(LINE_OFFSET),
                crc32c: u32::from_le_bytes(crc),
            },
            counts: Counts::from_array(std::array::from_fn(|index| {
                u64_at(COUNTS_OFFSET + 8 * index)
            })),
            finished: flags & FLAG_FINISHED != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> Marker {
        Marker {
            options: MarkerOptions {
                key_column: 3,
                header: true,
                on_duplicate: OnDuplicate::LastWins,
            },
            position: Position {
                offset: 0x0102_0304_0506,
                line: 50_010,
                crc32c: 0xdead_beef,
            },
            counts: Counts::from_array([1, 2, 3, 4, 5, 6, 7]),
            finished: true,
        }
    }

    #[test]
    fn a_marker_reads_back_and_its_layout_is_little_endian() {
        let bytes = marker().encode();
        assert_eq!(Marker::decode(&bytes), Ok(marker()));
        assert_eq!(&bytes[..8], b"PMIM\x01\x03\x01\x00");
        assert_eq!(bytes[16..24], 0x0102_0304_0506u64.to_le_bytes());
        assert_eq!(bytes[32..36], [0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(bytes[88..96], 7u64.to_le_bytes());
    }

    #[test]
    fn a_damaged_marker_is_refused() {
        let good = marker().encode();
        assert_eq!(
            Marker::decode(&good[..95]),
            Err(MarkerError::Length { len: 95 })
        );
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(Marker::decode(&bad), Err(MarkerError::Magic));
        let mut bad = good;
        bad[4] = 2;
        assert_eq!(
            Marker::decode(&bad),
            Err(MarkerError::Version { version: 2 })
        );
        let mut bad = good;
        bad[5] = 0x80;
        assert!(matches!(
            Marker::decode(&bad),
            Err(MarkerError::Field { .. })
        ));
        let mut bad = good;
        bad[6] = 9;
        assert!(matches!(
            Marker::decode(&bad),
            Err(MarkerError::Field { .. })
        ));
    }
}
