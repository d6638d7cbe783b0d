//! The crate's one error type.

use std::path::PathBuf;

/// What went wrong in the store, and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An LMDB operation failed.
    #[error("LMDB {op} in {path}: {source}")]
    Lmdb {
        /// What was being done.
        op: &'static str,
        /// The database directory.
        path: PathBuf,
        /// heed's error.
        source: heed::Error,
    },
    /// An LMDB write failed and the filesystem holding the database is full (or nearly: LMDB
    /// reports a write cut short by a full disk as `EIO`). Nothing is corrupted: the failed
    /// transaction left no trace, and the database is poisoned until it is reopened with space.
    #[error("LMDB {op} in {path} failed: the disk is full ({available} bytes free): {source}")]
    DiskFull {
        /// What was being done.
        op: &'static str,
        /// The database directory.
        path: PathBuf,
        /// Bytes the filesystem had free for this process after the failure.
        available: u64,
        /// heed's error.
        source: heed::Error,
    },
    /// The replication log failed.
    #[error(transparent)]
    Log(#[from] pagemesh_logpage::Error),
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The directory holds an LMDB environment that is not a pagemesh database.
    #[error("{path} is not a pagemesh database: {why}")]
    NotADatabase {
        /// The directory.
        path: PathBuf,
        /// What is missing or wrong.
        why: &'static str,
    },
    /// The database is already open in this process: LMDB and the log ring allow one open per
    /// process. Clone the [`crate::Database`] that holds it (clones share it), or read through it
    /// ([`crate::Database::read`]) rather than opening a [`crate::ReadOnlyDatabase`].
    #[error("already open in this process: {path}; use (clone) the handle that holds it")]
    AlreadyOpen {
        /// The database's directory, canonical ([`crate::Database::open`]), or its LMDB
        /// environment's ([`crate::ReadOnlyDatabase::open`]).
        path: PathBuf,
    },
    /// Tables kept being created between a read-only view opening their handles and beginning
    /// its snapshot, more times in a row than it retries.
    #[error("tables of {path} kept being created while a snapshot began ({attempts} attempts)")]
    TablesChanging {
        /// The LMDB environment's directory.
        path: PathBuf,
        /// Snapshots begun.
        attempts: u32,
    },
    /// The database was written by a newer pagemesh.
    #[error("{path} has store format {found}; this build reads up to {supported}")]
    NewerFormat {
        /// The directory.
        path: PathBuf,
        /// Format found.
        found: u32,
        /// Newest format this build reads.
        supported: u32,
    },
    /// A record in the log does not decode.
    #[error("record decode failed at byte {offset}: bad {what}")]
    RecordDecode {
        /// Offset in the record.
        offset: usize,
        /// The field.
        what: &'static str,
    },
    /// A record of a format this build does not read.
    #[error("record format {found}; this build reads {supported}")]
    RecordVersion {
        /// Found.
        found: u8,
        /// Supported.
        supported: u8,
    },
    /// A table name that is empty, too long, or reserved (starts with `__`).
    #[error("invalid table name {table:?}: 1..=255 bytes, not starting with \"__\"")]
    InvalidTable {
        /// The name.
        table: String,
    },
    /// A key that is empty or longer than LMDB allows.
    #[error("invalid key of {len} bytes for table {table:?}: keys are 1..=511 bytes")]
    InvalidKey {
        /// The table.
        table: String,
        /// Key length.
        len: usize,
    },
    /// A value too large for a record.
    #[error("value of {len} bytes for table {table:?} is too large")]
    InvalidValue {
        /// The table.
        table: String,
        /// Value length.
        len: usize,
    },
    /// A put that would make its batch's (or transaction's) log record larger than the log
    /// takes: half its ring ([`crate::Options::ring_slots`]). Refused when the value is put, and
    /// nothing of it was added.
    #[error(
        "value of {len} bytes for table {table:?} would make the record {record_len} bytes, \
         above the limit of {limit} bytes (half the log ring; see Options::ring_slots)"
    )]
    ValueTooLarge {
        /// The table.
        table: String,
        /// Value length.
        len: usize,
        /// The record's length with the value.
        record_len: usize,
        /// The largest record the log takes.
        limit: usize,
    },
    /// A write was asked to wait for replicas, and this database has none.
    #[error("durability Replicated({replicas}) asked of a database with no replicas")]
    NoReplicas {
        /// Replicas asked for.
        replicas: u32,
    },
    /// `Replicated(n)` asked for more nodes than can acknowledge: no replica is synchronous, or
    /// `n` exceeds both the synchronous replicas configured ([`crate::Replication::enable`])
    /// and the most nodes their links (with the nodes relays feed) ever counted at once.
    /// Refused before anything was written.
    #[error(
        "durability Replicated({wanted}) asks for more replicas than can acknowledge it: \
         {sync_replicas} synchronous configured, at most {nodes_seen_max} nodes counted through \
         them; nothing was written"
    )]
    TooFewSyncReplicas {
        /// Replicas asked for.
        wanted: u32,
        /// Synchronous replicas configured.
        sync_replicas: usize,
        /// The most distinct nodes the synchronous links (relays' subtrees included) counted
        /// at once since the database opened.
        nodes_seen_max: usize,
    },
    /// A conditional write was refused when its record was applied, and nothing of it was
    /// written: a [`crate::Database::put_if_version`] whose key was not at the expected version,
    /// or a transaction a key of which it read changed before it applied.
    #[error("write at seq {seq} conflicted: {}", conflict_cause(*current))]
    Conflict {
        /// The refused record's seq: its log position (no value carries it).
        seq: u64,
        /// For `put_if_version`: the key's version when the refusal was reported, `None` if the
        /// key is absent (retry with it as the expected version). For a transaction: `None`
        /// (it may have read many keys; [`crate::Database::transaction`] retries on a fresh
        /// snapshot).
        current: Option<u64>,
    },
    /// An earlier LMDB commit or sync failed; the store refuses writes until it is reopened.
    #[error("database {path} is poisoned by an earlier failed write ({cause}); reopen it")]
    Poisoned {
        /// The directory.
        path: PathBuf,
        /// The first failure.
        cause: String,
    },
    /// Binlog history below the retention horizon was asked for.
    #[error("binlog from lsn {requested} was purged; the oldest retained page is {oldest}")]
    Purged {
        /// LSN asked for.
        requested: u64,
        /// Oldest LSN the binlog still holds.
        oldest: u64,
    },
    /// The log's history lacks a page it should hold: its segment is gone or the page does not
    /// validate, and retention has not passed it.
    #[error("the log history in {path} lacks page {lsn}, above its oldest retained page")]
    HistoryDamaged {
        /// The database's directory (the log's segments).
        path: PathBuf,
        /// The page.
        lsn: u64,
    },
    /// A snapshot stream is truncated or malformed.
    #[error("snapshot stream corrupt at byte {offset}: bad {what}")]
    SnapshotDecode {
        /// Offset in the stream.
        offset: u64,
        /// The field.
        what: &'static str,
    },
    /// A write on a read-only replica: it follows its origin's log and takes no local writes.
    #[error("database {path} is a read-only replica; write to its primary")]
    ReadOnlyReplica {
        /// The replica's directory.
        path: PathBuf,
    },
    /// A `Replicated(n)` commit waited its configured time and fewer than `n` synchronous replicas
    /// acknowledged it. **The write is committed locally** all the same: it is in the log, it
    /// applies here and ships to every replica as they come. Do not commit it again (it would be
    /// written twice); wait for it with its `receipt` if need be.
    #[error(
        "commit at seq {seq} is committed locally and will apply and replicate (receipt \
         {receipt}; do not retry it, a retry writes it twice), but reached {acked} of {wanted} \
         synchronous replicas within {waited:?}"
    )]
    ReplicationTimeout {
        /// The record's seq.
        seq: u64,
        /// The commit's receipt: its version and log position.
        receipt: crate::Receipt,
        /// Replicas asked for.
        wanted: u32,
        /// Synchronous replicas that had received it.
        acked: u32,
        /// How long the commit waited.
        waited: std::time::Duration,
    },
    /// Bytes or text that are not a [`crate::Receipt`].
    #[error("not a commit receipt: bad {why}")]
    InvalidReceipt {
        /// What is wrong.
        why: &'static str,
    },
    /// A receipt from another log than this database's: it names another database's writes.
    #[error("receipt {receipt} is of log {}, not of this database's log {origin}", receipt.origin())]
    ForeignReceipt {
        /// The receipt.
        receipt: crate::Receipt,
        /// This database's origin log ([`crate::Database::origin_uuid`]).
        origin: uuid::Uuid,
    },
    /// [`crate::Database::wait_for`] waited its time and the receipt's commit is not applied here
    /// yet (nothing is wrong with it: wait again, or look at the replica's link).
    #[error("receipt {receipt} not applied within {waited:?}: applied up to page {applied_lsn}, it needs page {}", receipt.lsn_end())]
    ReceiptTimeout {
        /// The receipt waited for.
        receipt: crate::Receipt,
        /// Every page below this was applied when the wait gave up.
        applied_lsn: u64,
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// A typed table's codec could not decode what the table holds ([`crate::Table`]): the
    /// bytes were written by another codec, or by the byte API.
    #[error("table {table:?}: stored bytes do not decode as {codec}: {source}")]
    Codec {
        /// The table.
        table: String,
        /// The codec's type.
        codec: &'static str,
        /// What the codec said.
        source: crate::codec::CodecError,
    },
    /// The database was closed.
    #[error("the database is closed")]
    Closed,
}

/// The cause a [`Error::Conflict`] message gives.
fn conflict_cause(current: Option<u64>) -> String {
    match current {
        Some(version) => format!("the key is at version {version}"),
        None => "the key is absent, or a key the transaction read changed".to_string(),
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
