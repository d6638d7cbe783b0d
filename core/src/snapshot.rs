//! Full snapshots: backup, restore, replica bootstrap. (Binlog history is `binlog.rs`'s.)
//!
//! A full snapshot is one LMDB read transaction over every table, tagged with the apply state it
//! saw, so it is consistent and never blocks the writer. Its stream, little-endian:
//!
//! ```text
//! 8   magic            "PMSNAP\0\x02"
//! 16  database uuid
//! 16  origin uuid
//! 8   binlog_next_lsn  the log position the snapshot is at: a restored primary continues here
//! 8   replay_lsn       where the record still open at the snapshot began: a replica resumes here
//! 8   applied_seq_end  records below this seq are in the snapshot (a replica skips them)
//! entries, each:
//!     1  tag           1 = entry, 2 = empty table, 0 = end
//!     1  table_len, table name
//!     2  key_len, key                  (entries only)
//!     8  seq           the value's version    (entries only)
//!     4  value_len, value              (entries only)
//! 4   crc32c           of every byte before it
//! ```
//!
//! Tag 2 (`table_len ‖ name`, nothing else) says a table exists with no entries (made by an
//! explicit `create_table`, or cleared), so that a restore lists it too. It is written only
//! for such tables, so a stream of a database without one is what earlier builds wrote; an
//! earlier build refuses a stream that has one ("entry tag").
//!
//! Restore writes a stream into an empty directory in ONE write transaction, committed only if the
//! stream decodes to its end and its crc matches, so a truncated or damaged backup leaves nothing
//! half-restored. The crc guards against damage, not against a peer that forges a stream, so
//! the header must also be possible: an LSN the page format can hold, and an `applied_seq_end`
//! no higher than the first seq of that LSN's page (else recovery would take records committed
//! after the restore for applied ones). A restore that fails, or whose database then fails to
//! open, removes what it wrote. The restored database keeps the snapshot's uuids.
//!
//! A restored *primary* continues its own log at `binlog_next_lsn`. A restored *replica* (bootstrap)
//! resumes its origin's log at `replay_lsn` instead: a record that spans the snapshot point began
//! below `binlog_next_lsn` and is not in the snapshot, so the replica must receive it from its first
//! page; records of those pages that the snapshot already holds are skipped by seq
//! (`applied_seq_end`), exactly as crash recovery skips them. (Format 1 lacked `replay_lsn`, so a
//! replica bootstrapped from it could miss that record; format 1 streams are refused.)

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

use heed::types::Bytes;
use heed::{CommitOrAbort, PutFlags};

use pagemesh_logpage::page::LSN_LIMIT;
use pagemesh_logpage::record::seq_of;

use crate::error::{Error, Result};
use crate::record::{KEY_LEN_MAX, TABLE_LEN_MAX};
use crate::store::{ApplyState, Store, TxnError};
use crate::value::split_value;
use crate::Snapshot;

const MAGIC: [u8; 8] = *b"PMSNAP\0\x02";
const TAG_ENTRY: u8 = 1;
const TAG_EMPTY_TABLE: u8 = 2;
const TAG_END: u8 = 0;

/// What an export or a restore moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Entries (key/value pairs).
    pub entries: u64,
    /// Bytes of the stream.
    pub bytes: u64,
    /// The log position the snapshot is at; after a restore, where the restored database's log
    /// continues (for a replica, the LSN it resumes its origin's log at).
    pub lsn: u64,
    /// Where a replica restored from this snapshot resumes its origin's log (`replay_lsn`, see the
    /// module docs); equal to `lsn` after a restore.
    pub replica_resume_lsn: u64,
}

/// A writer that checksums what it writes.
struct Crc<W> {
    inner: W,
    crc: u32,
    bytes: u64,
}

impl<W: Write> Crc<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.bytes += bytes.len() as u64;
        self.inner.write_all(bytes)
    }
}

impl Snapshot<'_> {
    /// Streams every table into `out` (see the module docs).
    pub fn export(&self, out: impl Write) -> Result<SnapshotStats> {
        let io = |source| Error::Io {
            op: "write snapshot to",
            path: "<stream>".into(),
            source,
        };
        let store = self.store;
        let state = store.apply_state(&self.txn)?;
        let mut w = Crc {
            inner: out,
            crc: 0,
            bytes: 0,
        };
        w.put(&MAGIC).map_err(io)?;
        w.put(store.database_uuid.as_bytes()).map_err(io)?;
        w.put(store.origin_uuid.as_bytes()).map_err(io)?;
        w.put(&state.binlog_next_lsn.to_le_bytes()).map_err(io)?;
        w.put(&state.replay_lsn.to_le_bytes()).map_err(io)?;
        w.put(&state.applied_seq_end.to_le_bytes()).map_err(io)?;
        let mut entries = 0;
        // The tables this snapshot sees (a drop after it began does not hide one from it).
        for name in store.table_names_in(&self.txn)? {
            let Some(table) = store.table(&name) else {
                continue;
            };
            let entries_before = entries;
            for entry in table
                .iter(&self.txn)
                .map_err(store.lmdb("iterate for snapshot"))?
            {
                let (key, stored) = entry.map_err(store.lmdb("iterate for snapshot"))?;
                let value = split_value(stored)?;
                w.put(&[TAG_ENTRY, name.len() as u8]).map_err(io)?;
                w.put(name.as_bytes()).map_err(io)?;
                w.put(&(key.len() as u16).to_le_bytes()).map_err(io)?;
                w.put(key).map_err(io)?;
                w.put(&value.seq.to_le_bytes()).map_err(io)?;
                w.put(&(value.bytes.len() as u32).to_le_bytes())
                    .map_err(io)?;
                w.put(value.bytes).map_err(io)?;
                entries += 1;
            }
            if entries == entries_before {
                w.put(&[TAG_EMPTY_TABLE, name.len() as u8]).map_err(io)?;
                w.put(name.as_bytes()).map_err(io)?;
            }
        }
        w.put(&[TAG_END]).map_err(io)?;
        let crc = w.crc;
        w.inner.write_all(&crc.to_le_bytes()).map_err(io)?;
        w.inner.flush().map_err(io)?;
        Ok(SnapshotStats {
            entries,
            bytes: w.bytes + 4,
            lsn: state.binlog_next_lsn,
            replica_resume_lsn: state.replay_lsn,
        })
    }
}

/// Reads the snapshot stream, checksumming what it reads.
struct Source<R> {
    inner: R,
    crc: u32,
    offset: u64,
}

impl<R: Read> Source<R> {
    fn take(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        self.inner
            .read_exact(buf)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::UnexpectedEof => Error::SnapshotDecode {
                    offset: self.offset,
                    what,
                },
                _ => Error::Io {
                    op: "read snapshot from",
                    path: "<stream>".into(),
                    source,
                },
            })?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        self.offset += buf.len() as u64;
        Ok(())
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut buf = [0; N];
        self.take(&mut buf, what)?;
        Ok(buf)
    }
    fn vec(&mut self, len: usize, what: &'static str, buf: &mut Vec<u8>) -> Result<()> {
        buf.resize(len, 0);
        self.take(buf, what)
    }
}

/// Restores a snapshot stream into `dir`, which must not hold a database yet, as a primary or as a
/// replica (see the module docs). On failure the files it created are removed again, so the restore
/// can be retried.
pub(crate) fn restore(
    dir: &Path,
    map_size: usize,
    input: impl Read,
    as_replica: bool,
) -> Result<SnapshotStats> {
    let log_files = pagemesh_logpage::Log::files(dir).map_err(|source| Error::Io {
        op: "list the log files in",
        path: dir.into(),
        source,
    })?;
    if dir.join("lmdb").join("data.mdb").exists()
        || !log_files.is_empty()
        || dir.join("log.ring").exists()
    {
        return Err(Error::NotADatabase {
            path: dir.into(),
            why: "restore needs an empty directory",
        });
    }
    let result =
        Store::open(dir, map_size).and_then(|store| restore_into(&store, dir, input, as_replica));
    if result.is_err() {
        discard(dir);
    }
    result
}

/// Removes what a restore into `dir` made: its LMDB environment, and the log files that opening
/// it may have created. For a restore that failed, or whose database then failed to open, so
/// that the directory is left without a database and takes a restore again. [`restore`] checked
/// that `dir` held none of these before it began.
pub(crate) fn discard(dir: &Path) {
    let mut paths = vec![dir.join("lmdb")];
    match pagemesh_logpage::Log::files(dir) {
        Ok(files) => paths.extend(files),
        Err(error) => {
            tracing::warn!(path = %dir.display(), %error, "could not list a failed restore's log files");
        }
    }
    for path in paths {
        let removed = match path.is_dir() {
            true => std::fs::remove_dir_all(&path),
            false => std::fs::remove_file(&path),
        };
        match removed {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), %error, "could not remove a failed restore");
            }
            _ => {}
        }
    }
}

/// After a restore into `dir` whose database then failed to open with `error`: [`discard`]s
/// what the restore wrote, unless another process holds the directory's log, whose files are
/// then not this restore's alone.
pub(crate) fn discard_after_failed_open(dir: &Path, error: &Error) {
    let locked = matches!(
        error,
        Error::Log(pagemesh_logpage::Error::RingFile {
            fault: pagemesh_logpage::RingFault::Locked,
            ..
        })
    );
    match locked {
        true => {
            tracing::warn!(path = %dir.display(), %error, "a restored database failed to open; left in place")
        }
        false => discard(dir),
    }
}

/// Restores the stream into the freshly created `store`, in one write transaction committed only
/// if the stream reads to its end and its crc matches: [`SnapshotReader`] parses and checks,
/// [`write_entries`] puts.
fn restore_into(
    store: &Store,
    dir: &Path,
    input: impl Read,
    as_replica: bool,
) -> Result<SnapshotStats> {
    let mut stream = SnapshotReader::new(input);
    let header = stream.header()?;
    let lsn = if as_replica {
        header.replay_lsn
    } else {
        header.binlog_next_lsn
    };
    let wtxn = store.env.write_txn().map_err(store.lmdb("begin restore"))?;
    let mut entries = 0u64;
    let outcome = store
        .env
        .create_databases_and_commit(wtxn, |wdo, wtxn| -> Result<_, TxnError> {
            entries = write_entries(store, &mut stream, wdo, wtxn)?;
            stream.check_crc()?;
            write_identity(store, wtxn, &header, lsn, as_replica)?;
            Ok(CommitOrAbort::<_, ()>::Commit(()))
        });
    outcome.map_err(|error| error.into_error(store.lmdb("commit restore")))?;
    // The environment does not sync meta pages on commit (`store.rs`, Syncs): a restore must be
    // on disk whole before its caller marks it complete.
    store.sync()?;
    tracing::info!(path = %dir.display(), entries, lsn, "restored snapshot");
    Ok(SnapshotStats {
        entries,
        bytes: stream.bytes(),
        lsn,
        replica_resume_lsn: lsn,
    })
}

/// The writer loop: puts every entry the stream holds into its table, creating each table (and
/// its `table:` key in `__meta`) when its first entry comes. Returns the entries written.
fn write_entries<'e, R: Read>(
    store: &Store,
    stream: &mut SnapshotReader<R>,
    wdo: &heed::DatabaseOpener<'e, heed::WithTls>,
    wtxn: &mut heed::RwTxn<'e>,
) -> Result<u64, TxnError> {
    let mut tables: HashMap<String, heed::Database<'e, Bytes, Bytes>> = HashMap::new();
    let mut entries = 0u64;
    while let Some(entry) = stream.next_entry()? {
        let table = match tables.get(entry.table) {
            Some(table) => *table,
            None => {
                let table: heed::Database<'e, Bytes, Bytes> =
                    wdo.create_database(wtxn, Some(entry.table))?;
                let key = format!("table:{}", entry.table);
                store.meta.put(wtxn, key.as_bytes(), b"")?;
                tables.insert(entry.table.to_string(), table);
                table
            }
        };
        if entry.empty_table {
            continue;
        }
        // Entries come in key order per table, so LMDB can append.
        table.put_with_flags(wtxn, PutFlags::APPEND, entry.key, entry.stored)?;
        entries += 1;
    }
    Ok(entries)
}

/// Makes the restored database the snapshot's: its uuids, and its log continuing at `lsn`.
fn write_identity(
    store: &Store,
    wtxn: &mut heed::RwTxn,
    header: &Header,
    lsn: u64,
    as_replica: bool,
) -> Result<(), TxnError> {
    store
        .meta
        .put(wtxn, b"database_uuid", &header.database_uuid)?;
    store.meta.put(wtxn, b"origin_uuid", &header.origin_uuid)?;
    let state = ApplyState {
        binlog_next_lsn: lsn,
        replay_lsn: lsn,
        applied_seq_end: header.applied_seq_end,
    };
    store.put_apply_state(wtxn, &state)?;
    store
        .meta
        .put(wtxn, b"binlog_oldest_lsn", &lsn.to_le_bytes())?;
    // The history starts at the restore, in the log's segments (`binlog.rs`).
    store.meta.put(wtxn, b"history_from", &lsn.to_le_bytes())?;
    if as_replica {
        store.meta.put(wtxn, b"role", b"replica")?;
    }
    Ok(())
}

/// What a snapshot stream's header says (see the module docs).
struct Header {
    database_uuid: [u8; 16],
    origin_uuid: [u8; 16],
    binlog_next_lsn: u64,
    replay_lsn: u64,
    applied_seq_end: u64,
}

/// One entry of the stream, borrowed from the reader's buffers.
struct Entry<'a> {
    table: &'a str,
    /// An empty table's tag: the table exists; no key, no value.
    empty_table: bool,
    key: &'a [u8],
    /// The value in its stored form: seq (u64 LE) ‖ bytes.
    stored: &'a [u8],
}

/// The reader: parses a snapshot stream (the header, then one entry at a time, then the crc) and
/// checks all it can without LMDB: magic, lengths, table names, the crc. Entries' key order is
/// LMDB's to check (the writer appends).
struct SnapshotReader<R> {
    src: Source<R>,
    name: Vec<u8>,
    key: Vec<u8>,
    stored: Vec<u8>,
}

impl<R: Read> SnapshotReader<R> {
    fn new(input: R) -> Self {
        Self {
            src: Source {
                inner: input,
                crc: 0,
                offset: 0,
            },
            name: Vec::new(),
            key: Vec::new(),
            stored: Vec::new(),
        }
    }

    fn header(&mut self) -> Result<Header> {
        let src = &mut self.src;
        if src.array::<8>("magic")? != MAGIC {
            return Err(Error::SnapshotDecode {
                offset: 0,
                what: "magic (not a pagemesh snapshot)",
            });
        }
        let database_uuid = src.array::<16>("database uuid")?;
        let origin_uuid = src.array::<16>("origin uuid")?;
        let binlog_next_lsn = u64::from_le_bytes(src.array::<8>("lsn")?);
        // The database restored must open: its log cannot continue at an LSN the page format
        // cannot hold.
        if binlog_next_lsn >= LSN_LIMIT {
            return Err(Error::SnapshotDecode {
                offset: src.offset - 8,
                what: "lsn (beyond the page format's limit)",
            });
        }
        let replay_lsn = u64::from_le_bytes(src.array::<8>("replay lsn")?);
        if replay_lsn > binlog_next_lsn {
            return Err(Error::SnapshotDecode {
                offset: src.offset - 8,
                what: "replay lsn (above the snapshot's lsn)",
            });
        }
        let applied_seq_end = u64::from_le_bytes(src.array::<8>("applied seq")?);
        // Recovery must replay what is committed after the restore: an `applied_seq_end` beyond
        // the snapshot's LSN would make it skip those records as applied. The last record
        // applied began on a page below `binlog_next_lsn`.
        if applied_seq_end > seq_of(binlog_next_lsn, 0) {
            return Err(Error::SnapshotDecode {
                offset: src.offset - 8,
                what: "applied seq (beyond the snapshot's lsn)",
            });
        }
        Ok(Header {
            database_uuid,
            origin_uuid,
            binlog_next_lsn,
            replay_lsn,
            applied_seq_end,
        })
    }

    /// The next entry, or `None` at the end tag.
    fn next_entry(&mut self) -> Result<Option<Entry<'_>>> {
        let [tag] = self.src.array::<1>("entry tag")?;
        if tag == TAG_END {
            return Ok(None);
        }
        let empty_table = tag == TAG_EMPTY_TABLE;
        if tag != TAG_ENTRY && !empty_table {
            return Err(Error::SnapshotDecode {
                offset: self.src.offset - 1,
                what: "entry tag",
            });
        }
        if empty_table {
            let [len] = self.src.array::<1>("table length")?;
            let len = usize::from(len).min(TABLE_LEN_MAX);
            self.src.vec(len, "table name", &mut self.name)?;
            self.key.clear();
            self.stored.clear();
        } else {
            self.read_entry()?;
        }
        let table = std::str::from_utf8(&self.name)
            .ok()
            .filter(|name| crate::record::check_table(name).is_ok())
            .ok_or(Error::SnapshotDecode {
                offset: self.src.offset,
                what: "table name",
            })?;
        Ok(Some(Entry {
            table,
            empty_table,
            key: &self.key,
            stored: &self.stored,
        }))
    }

    /// An entry's fields after its tag, into the reader's buffers.
    fn read_entry(&mut self) -> Result<()> {
        let src = &mut self.src;
        let [len] = src.array::<1>("table length")?;
        src.vec(
            usize::from(len).min(TABLE_LEN_MAX),
            "table name",
            &mut self.name,
        )?;
        let key_len = usize::from(u16::from_le_bytes(src.array::<2>("key length")?));
        if key_len == 0 || key_len > KEY_LEN_MAX {
            return Err(Error::SnapshotDecode {
                offset: src.offset - 2,
                what: "key length",
            });
        }
        src.vec(key_len, "key", &mut self.key)?;
        let seq = src.array::<8>("seq")?;
        let value_len = u32::from_le_bytes(src.array::<4>("value length")?) as usize;
        self.stored.clear();
        self.stored.extend_from_slice(&seq);
        // Grows with what the stream really holds: a lying length fails at its end.
        let mut chunk = vec![0u8; value_len.min(1 << 20)];
        let mut left = value_len;
        while left > 0 {
            let n = left.min(chunk.len());
            src.take(&mut chunk[..n], "value")?;
            self.stored.extend_from_slice(&chunk[..n]);
            left -= n;
        }
        Ok(())
    }

    /// Reads the stream's crc and checks it against every byte read before it.
    fn check_crc(&mut self) -> Result<()> {
        let expected = self.src.crc;
        let mut stored = [0u8; 4];
        self.src
            .inner
            .read_exact(&mut stored)
            .map_err(|_| Error::SnapshotDecode {
                offset: self.src.offset,
                what: "crc",
            })?;
        if u32::from_le_bytes(stored) != expected {
            return Err(Error::SnapshotDecode {
                offset: self.src.offset,
                what: "crc (damaged stream)",
            });
        }
        Ok(())
    }

    /// Bytes of the whole stream: what was read through `src`, and the 4-byte crc after it.
    fn bytes(&self) -> u64 {
        self.src.offset + 4
    }
}
