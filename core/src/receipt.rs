//! Commit receipts: where a commit landed in its origin's log, in a form another process can
//! wait on.
//!
//! A commit's version (its `seq`, the version its values carry) says *which* write it was, but
//! not when a copy has it: a record may span several 4 KB pages, and a copy applies whole pages.
//! A [`Receipt`] carries both, with the uuid of the log they belong to:
//!
//! - `origin`: the log the record was written to (a replica's records come from its origin's
//!   log, so a replica and its primary share it);
//! - `version`: the record's `seq`;
//! - `lsn_end`: the first page after the record's last: a copy whose applied watermark reached
//!   it holds the record and everything committed before it.
//!
//! [`Database::wait_for`] waits for it on a local database, and `pagemesh::Replica::wait_for` on
//! a replica kept by a node, in this process or another: send the receipt along with whatever
//! made the write ([`Receipt::to_bytes`], or its text form, `Display` and `FromStr`).
//!
//! Bytes, little-endian, [`RECEIPT_LEN`] in all:
//!
//! ```text
//! offset size  field
//!      0    1  format    RECEIPT_FORMAT
//!      1   16  origin    uuid, as its bytes
//!     17    8  version   u64 LE
//!     25    8  lsn_end   u64 LE
//! ```
//!
//! Text: `origin:version:lsn_end`, the uuid hyphenated and the numbers in decimal.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::error::{Error, Result};
#[cfg(doc)]
use crate::Database;

/// The receipt format this build writes and reads.
pub const RECEIPT_FORMAT: u8 = 1;
/// Bytes of an encoded receipt ([`Receipt::to_bytes`]).
pub const RECEIPT_LEN: usize = 1 + 16 + 8 + 8;

const ORIGIN_OFFSET: usize = 1;
const VERSION_OFFSET: usize = ORIGIN_OFFSET + 16;
const LSN_END_OFFSET: usize = VERSION_OFFSET + 8;
const _: () = assert!(LSN_END_OFFSET + 8 == RECEIPT_LEN);

/// Where a commit landed: its origin's log, its version and the end of its pages. See the
/// module docs; from [`Database::commit_with_receipt`] or [`crate::CommitTicket::receipt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Receipt {
    origin: Uuid,
    version: u64,
    lsn_end: u64,
}

impl Receipt {
    pub(crate) fn new(origin: Uuid, version: u64, lsn_end: u64) -> Self {
        Self {
            origin,
            version,
            lsn_end,
        }
    }

    /// The uuid of the log the record was written to ([`Database::origin_uuid`]).
    pub fn origin(&self) -> Uuid {
        self.origin
    }

    /// The record's version: the `seq` its values carry.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The first log page after the record's last one: a copy that applied every page below it
    /// holds the record ([`Database::applied_lsn`]).
    pub fn lsn_end(&self) -> u64 {
        self.lsn_end
    }

    /// The receipt as [`RECEIPT_LEN`] bytes (the layout is in the module docs).
    pub fn to_bytes(&self) -> [u8; RECEIPT_LEN] {
        let mut out = [0u8; RECEIPT_LEN];
        out[0] = RECEIPT_FORMAT;
        out[ORIGIN_OFFSET..VERSION_OFFSET].copy_from_slice(self.origin.as_bytes());
        out[VERSION_OFFSET..LSN_END_OFFSET].copy_from_slice(&self.version.to_le_bytes());
        out[LSN_END_OFFSET..].copy_from_slice(&self.lsn_end.to_le_bytes());
        out
    }

    /// A receipt from [`to_bytes`](Self::to_bytes); [`Error::InvalidReceipt`] if `bytes` is not
    /// one.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let invalid = |why| Error::InvalidReceipt { why };
        let bytes: &[u8; RECEIPT_LEN] = bytes
            .try_into()
            .map_err(|_| invalid("length is not RECEIPT_LEN"))?;
        if bytes[0] != RECEIPT_FORMAT {
            return Err(invalid("unknown format"));
        }
        let (origin, rest) = bytes[ORIGIN_OFFSET..].split_at(16);
        let (version, lsn_end) = rest.split_at(8);
        let u64_le = |b: &[u8]| b.try_into().map(u64::from_le_bytes);
        Ok(Self {
            origin: Uuid::from_slice(origin).map_err(|_| invalid("origin"))?,
            version: u64_le(version).map_err(|_| invalid("version"))?,
            lsn_end: u64_le(lsn_end).map_err(|_| invalid("lsn_end"))?,
        })
    }
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.origin, self.version, self.lsn_end)
    }
}

impl FromStr for Receipt {
    type Err = Error;

    /// Parses the text form, `origin:version:lsn_end`.
    fn from_str(text: &str) -> Result<Self> {
        let invalid = |why| Error::InvalidReceipt { why };
        let mut parts = text.trim().split(':');
        let (Some(origin), Some(version), Some(lsn_end), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("not origin:version:lsn_end"));
        };
        Ok(Self {
            origin: origin
                .parse()
                .map_err(|_| invalid("origin is not a uuid"))?,
            version: version.parse().map_err(|_| invalid("version"))?,
            lsn_end: lsn_end.parse().map_err(|_| invalid("lsn_end"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_round_trips_through_bytes_and_text_and_refuses_garbage() {
        let receipt = Receipt::new(Uuid::from_u128(0xfeed), 8192 + 17, 3);
        assert_eq!(Receipt::from_bytes(&receipt.to_bytes()).unwrap(), receipt);
        assert_eq!(receipt.to_string().parse::<Receipt>().unwrap(), receipt);
        assert!(Receipt::from_bytes(&receipt.to_bytes()[1..]).is_err());
        let mut other_format = receipt.to_bytes();
        other_format[0] = 9;
        assert!(Receipt::from_bytes(&other_format).is_err());
        for text in [
            "",
            "x:1:2",
            "00000000-0000-0000-0000-000000000001:1",
            "a:b:c:d",
        ] {
            assert!(text.parse::<Receipt>().is_err(), "{text:?}");
        }
    }
}
