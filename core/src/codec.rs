//! Typed tables, optional: a [`Codec`] turns a Rust value into the bytes a table stores and
//! back, and a [`Table<K, V>`] names a table with a codec for its keys and one for its values.
//!
//! A `Table` is only a name and two types: every method encodes, then calls the byte API
//! ([`WriteBatch::put`], [`Snapshot::get`], [`Transaction::get`], …) with the same table name,
//! so typed and untyped code read and write the same tables, and the byte API pays nothing for
//! this module. Codecs are zero-sized marker types (as heed's `BytesEncode`/`BytesDecode` or
//! redb's `Key`/`Value`, with one trait instead of two); write one for your own types in a few
//! lines, or wrap a serde format in one.
//!
//! Keys sort as their encoded bytes do: [`U64`] is big-endian so numbers sort numerically,
//! [`Str`] sorts by UTF-8 bytes (code point order).
//!
//! ```
//! use pagemesh_core::codec::{Str, U64};
//! use pagemesh_core::{Database, Durability, Options, Table};
//!
//! const PRICES: Table<Str, U64> = Table::new("prices");
//!
//! let dir = tempfile::tempdir()?;
//! let db = Database::open(dir.path(), Options::new())?;
//! let mut batch = db.batch();
//! PRICES.put(&mut batch, "{A1}", &250_000)?;
//! PRICES.put(&mut batch, "{B2}", &175_000)?;
//! db.commit(&batch, Durability::Applied)?;
//!
//! let snapshot = db.read()?;
//! assert_eq!(PRICES.get(&snapshot, "{A1}")?, Some(250_000));
//! let all: Vec<(String, u64)> = PRICES.iter(&snapshot)?.collect::<Result<_, _>>()?;
//! assert_eq!(all, [("{A1}".to_string(), 250_000), ("{B2}".to_string(), 175_000)]);
//! drop(snapshot); // a thread holds one snapshot at a time, and a transaction takes one
//!
//! // In a transaction too: bump one price.
//! db.transaction(10, |tx| {
//!     let price = PRICES.get_in(tx, "{B2}")?.unwrap_or(0);
//!     PRICES.put_in(tx, "{B2}", &(price + 5_000))
//! })?;
//! assert_eq!(PRICES.get(&db.read()?, "{B2}")?, Some(180_000));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use crate::commit::WriteBatch;
use crate::error::{Error, Result};
use crate::read::Snapshot;
use crate::transaction::Transaction;

/// What a [`Codec`]'s decode fails with: any error (a serde format's, say).
pub type CodecError = Box<dyn std::error::Error + Send + Sync>;

/// Turns values into the bytes a table stores, and back.
///
/// `Encoded` is what writes take by reference (it may be unsized: `str`, `[u8]`), `Decoded`
/// what reads return (owned: `String`, `Vec<u8>`). Decoding bytes from disk or the network must
/// not panic: return an error, and the table reports it as [`Error::Codec`].
///
/// ```
/// use std::borrow::Cow;
///
/// use pagemesh_core::codec::{Codec, CodecError};
///
/// /// A point as two little-endian i32s.
/// struct Point;
/// impl Codec for Point {
///     type Encoded = (i32, i32);
///     type Decoded = (i32, i32);
///     fn encode(&(x, y): &(i32, i32)) -> Cow<'_, [u8]> {
///         let mut bytes = x.to_le_bytes().to_vec();
///         bytes.extend_from_slice(&y.to_le_bytes());
///         Cow::Owned(bytes)
///     }
///     fn decode(bytes: &[u8]) -> Result<(i32, i32), CodecError> {
///         let (x, y) = bytes.split_first_chunk::<4>().ok_or("a point is 8 bytes")?;
///         let y: [u8; 4] = y.try_into()?;
///         Ok((i32::from_le_bytes(*x), i32::from_le_bytes(y)))
///     }
/// }
/// assert_eq!(Point::decode(&Point::encode(&(3, -4)))?, (3, -4));
/// assert!(Point::decode(b"short").is_err());
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// ```
pub trait Codec {
    /// What writes take (by reference).
    type Encoded: ?Sized;
    /// What reads return.
    type Decoded;
    /// The bytes `item` is stored as.
    fn encode(item: &Self::Encoded) -> Cow<'_, [u8]>;
    /// The value `bytes` hold, or why they do not hold one.
    fn decode(bytes: &[u8]) -> Result<Self::Decoded, CodecError>;
}

/// Bytes as they are: `&[u8]` in, `Vec<u8>` out.
#[derive(Clone, Copy, Debug)]
pub struct Bytes;

impl Codec for Bytes {
    type Encoded = [u8];
    type Decoded = Vec<u8>;
    fn encode(item: &[u8]) -> Cow<'_, [u8]> {
        Cow::Borrowed(item)
    }
    fn decode(bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }
}

/// UTF-8 text: `&str` in, `String` out; bytes that are not UTF-8 fail to decode.
#[derive(Clone, Copy, Debug)]
pub struct Str;

impl Codec for Str {
    type Encoded = str;
    type Decoded = String;
    fn encode(item: &str) -> Cow<'_, [u8]> {
        Cow::Borrowed(item.as_bytes())
    }
    fn decode(bytes: &[u8]) -> Result<String, CodecError> {
        Ok(std::str::from_utf8(bytes)?.to_string())
    }
}

/// A `u64` as 8 big-endian bytes, so that keys sort numerically.
#[derive(Clone, Copy, Debug)]
pub struct U64;

impl Codec for U64 {
    type Encoded = u64;
    type Decoded = u64;
    fn encode(item: &u64) -> Cow<'_, [u8]> {
        Cow::Owned(item.to_be_bytes().to_vec())
    }
    fn decode(bytes: &[u8]) -> Result<u64, CodecError> {
        let bytes: [u8; 8] = bytes.try_into()?;
        Ok(u64::from_be_bytes(bytes))
    }
}

/// The codecs a [`Table`] names: `fn() -> …` so a table is `Send + Sync + Copy` whatever they
/// are (it holds none of their values).
type Codecs<K, V> = fn() -> (PhantomData<K>, PhantomData<V>);

/// A table with typed keys (codec `K`) and values (codec `V`): a name and two types, `Copy`,
/// usable as a `const`. See the [module docs](self) for an example.
pub struct Table<K: ?Sized, V: ?Sized> {
    name: &'static str,
    codecs: PhantomData<Codecs<K, V>>,
}

impl<K: ?Sized, V: ?Sized> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K: ?Sized, V: ?Sized> Copy for Table<K, V> {}

impl<K: ?Sized, V: ?Sized> std::fmt::Debug for Table<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Table").field(&self.name).finish()
    }
}

/// Typed entries of a table, in key order, from [`Table::iter`] or [`Table::range`].
pub type TypedEntries<'s, K, V> = Box<dyn Iterator<Item = Result<(K, V)>> + 's>;

impl<K: Codec + ?Sized, V: Codec + ?Sized> Table<K, V> {
    /// The table named `name` (checked, as every table name, when first used: 1..=255 bytes,
    /// not starting with `__`).
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            codecs: PhantomData,
        }
    }

    /// The table's name, as the byte API takes it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Adds to `batch` a put of `value` at `key` ([`WriteBatch::put`]).
    pub fn put(&self, batch: &mut WriteBatch, key: &K::Encoded, value: &V::Encoded) -> Result<()> {
        batch.put(self.name, &K::encode(key), &V::encode(value))?;
        Ok(())
    }

    /// Adds to `batch` a delete of `key` ([`WriteBatch::delete`]).
    pub fn delete(&self, batch: &mut WriteBatch, key: &K::Encoded) -> Result<()> {
        batch.delete(self.name, &K::encode(key))?;
        Ok(())
    }

    /// The value at `key` in `snapshot` ([`Snapshot::get`]).
    pub fn get(&self, snapshot: &Snapshot<'_>, key: &K::Encoded) -> Result<Option<V::Decoded>> {
        match snapshot.get(self.name, &K::encode(key))? {
            Some(value) => self.decode::<V>(value.bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Every entry in `snapshot`, in key order.
    pub fn iter<'s>(
        &self,
        snapshot: &'s Snapshot<'_>,
    ) -> Result<TypedEntries<'s, K::Decoded, V::Decoded>>
    where
        K: 's,
        V: 's,
    {
        let table = *self;
        let entries = snapshot.prefix(self.name, b"")?;
        Ok(Box::new(
            entries.map(move |entry| table.decode_entry(entry)),
        ))
    }

    /// Entries in `snapshot` with a key in `range` (by encoded bytes), in key order.
    pub fn range<'s, 'k>(
        &self,
        snapshot: &'s Snapshot<'_>,
        range: impl RangeBounds<&'k K::Encoded>,
    ) -> Result<TypedEntries<'s, K::Decoded, V::Decoded>>
    where
        K: 's,
        V: 's,
        K::Encoded: 'k,
    {
        let encode = |bound: Bound<&&'k K::Encoded>| bound.map(|key| K::encode(key).into_owned());
        let bounds = (encode(range.start_bound()), encode(range.end_bound()));
        let table = *self;
        let entries = snapshot.range::<Vec<u8>>(self.name, bounds)?;
        Ok(Box::new(
            entries.map(move |entry| table.decode_entry(entry)),
        ))
    }

    /// The value at `key` as transaction `tx` sees it ([`Transaction::get`]: recorded for
    /// validation).
    pub fn get_in(&self, tx: &mut Transaction<'_>, key: &K::Encoded) -> Result<Option<V::Decoded>> {
        match tx.get(self.name, &K::encode(key))? {
            Some(bytes) => self.decode::<V>(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Buffers in `tx` a put of `value` at `key` ([`Transaction::put`]).
    pub fn put_in(
        &self,
        tx: &mut Transaction<'_>,
        key: &K::Encoded,
        value: &V::Encoded,
    ) -> Result<()> {
        tx.put(self.name, &K::encode(key), &V::encode(value))
    }

    /// Buffers in `tx` a delete of `key` ([`Transaction::delete`]).
    pub fn delete_in(&self, tx: &mut Transaction<'_>, key: &K::Encoded) -> Result<()> {
        tx.delete(self.name, &K::encode(key))
    }

    fn decode<C: Codec + ?Sized>(&self, bytes: &[u8]) -> Result<C::Decoded> {
        C::decode(bytes).map_err(|source| Error::Codec {
            table: self.name.to_string(),
            codec: std::any::type_name::<C>(),
            source,
        })
    }

    fn decode_entry(
        &self,
        entry: Result<(&[u8], crate::Value<'_>)>,
    ) -> Result<(K::Decoded, V::Decoded)> {
        let (key, value) = entry?;
        Ok((self.decode::<K>(key)?, self.decode::<V>(value.bytes)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Database, Durability, Options};

    const BY_ID: Table<U64, Str> = Table::new("by_id");
    const RAW: Table<Bytes, Bytes> = Table::new("by_id");

    #[test]
    fn codecs_round_trip_and_refuse_bad_bytes() {
        assert_eq!(U64::decode(&U64::encode(&7)).unwrap(), 7);
        assert_eq!(&*U64::encode(&258), &[0, 0, 0, 0, 0, 0, 1, 2], "big-endian");
        assert!(U64::decode(b"1234567").is_err());
        assert_eq!(Str::decode(&Str::encode("héllo")).unwrap(), "héllo");
        assert!(Str::decode(&[0xff, 0xfe]).is_err());
        assert_eq!(Bytes::decode(&Bytes::encode(b"\0x")).unwrap(), b"\0x");
    }

    #[test]
    fn typed_and_byte_access_share_the_table_and_numbers_sort_numerically() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Options::new()).unwrap();
        let mut batch = db.batch();
        for (id, name) in [(300u64, "c"), (2, "a"), (10, "b")] {
            BY_ID.put(&mut batch, &id, name).unwrap();
        }
        db.commit(&batch, Durability::Applied).unwrap();
        let snapshot = db.read().unwrap();
        let ids: Vec<u64> = BY_ID
            .iter(&snapshot)
            .unwrap()
            .map(|entry| entry.unwrap().0)
            .collect();
        assert_eq!(ids, [2, 10, 300]);
        let some: Vec<(u64, String)> = BY_ID
            .range(&snapshot, &5..&1000)
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(some, [(10, "b".to_string()), (300, "c".to_string())]);
        assert_eq!(
            snapshot
                .get("by_id", &10u64.to_be_bytes())
                .unwrap()
                .unwrap()
                .bytes,
            b"b"
        );
        assert_eq!(
            RAW.get(&snapshot, &2u64.to_be_bytes()).unwrap().unwrap(),
            b"a"
        );
        drop(snapshot);

        let mut batch = db.batch();
        BY_ID.delete(&mut batch, &2).unwrap();
        RAW.put(&mut batch, b"bad", &[0xff]).unwrap();
        db.commit(&batch, Durability::Applied).unwrap();
        let snapshot = db.read().unwrap();
        assert_eq!(BY_ID.get(&snapshot, &2).unwrap(), None);
        let failed = BY_ID.iter(&snapshot).unwrap().find_map(Result::err);
        assert!(
            matches!(&failed, Some(Error::Codec { table, .. }) if table == "by_id"),
            "{failed:?}"
        );
    }

    #[test]
    fn typed_reads_and_writes_in_a_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Options::new()).unwrap();
        const COUNTS: Table<Str, U64> = Table::new("counts");
        for _ in 0..3 {
            db.transaction(5, |tx| {
                let n = COUNTS.get_in(tx, "visits")?.unwrap_or(0);
                COUNTS.put_in(tx, "visits", &(n + 1))?;
                COUNTS.delete_in(tx, "never")
            })
            .unwrap();
        }
        assert_eq!(COUNTS.get(&db.read().unwrap(), "visits").unwrap(), Some(3));
        assert_eq!(COUNTS.name(), "counts");
    }
}
