//! A stored value: the version (`seq`) ahead of the bytes.
//!
//! Every user table maps a key to `seq (u64 LE) ‖ value`, where `seq` is the log position of the
//! change that wrote it (`store.rs` has the whole layout). The applier writes that form
//! ([`encode_value`]), reads check versions against it ([`value_seq`]), and snapshots hand it out
//! split ([`split_value`]).

use crate::error::{Error, Result};

/// A stored value: its bytes and the `seq` of the change that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Value<'a> {
    /// The version: the log position of the write.
    pub seq: u64,
    /// The bytes, borrowed from the LMDB map.
    pub bytes: &'a [u8],
}

/// The version stored ahead of a value.
pub(crate) fn value_seq(stored: &[u8]) -> Result<u64> {
    split_value(stored).map(|v| v.seq)
}

/// A stored value split into its version and its bytes.
pub(crate) fn split_value(stored: &[u8]) -> Result<Value<'_>> {
    match stored.split_first_chunk::<8>() {
        Some((seq, bytes)) => Ok(Value {
            seq: u64::from_le_bytes(*seq),
            bytes,
        }),
        None => Err(Error::RecordDecode {
            offset: 0,
            what: "stored value (shorter than its version)",
        }),
    }
}

/// Writes `value` in its stored form, versioned `seq`, into `buf` (cleared first).
#[inline]
pub(crate) fn encode_value(buf: &mut Vec<u8>, seq: u64, value: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(value);
}
