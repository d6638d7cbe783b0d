//! The crate's one error type.

use std::path::PathBuf;

/// What went wrong in the log, and where.
///
/// Page and record variants carry the LSN (and offset) that failed so that a log line names the
/// exact place; I/O variants carry the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Fewer bytes than a page header, or more than a page.
    #[error("page has {len} bytes; a page is {min}..={max} bytes")]
    PageLength {
        /// Bytes given.
        len: usize,
        /// Smallest acceptable length (header plus the payload length it declares).
        min: usize,
        /// Largest acceptable length ([`crate::PAGE_SIZE`]).
        max: usize,
    },
    /// The first four bytes are not the page magic.
    #[error("page magic is {found:#010x}, expected {expected:#010x}")]
    PageMagic {
        /// Magic found.
        found: u32,
        /// Magic expected.
        expected: u32,
    },
    /// A page of a format version this build does not read.
    #[error("page at lsn {lsn} has format version {found}; this build reads version {supported}")]
    PageVersion {
        /// LSN the header claims.
        lsn: u64,
        /// Version found.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// A header field holds a value that no writer produces.
    #[error("page at lsn {lsn}: field `{field}` holds {value}, which is invalid")]
    PageField {
        /// LSN the header claims.
        lsn: u64,
        /// Which header field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// The crc32c over header and payload does not match the stored one.
    #[error("page at lsn {lsn}: crc32c is {computed:#010x}, header says {stored:#010x}")]
    PageChecksum {
        /// LSN the header claims.
        lsn: u64,
        /// crc stored in the header.
        stored: u32,
        /// crc computed over the bytes.
        computed: u32,
    },
    /// Pages were not consecutive.
    #[error("log gap: expected page lsn {expected}, got {found}")]
    Gap {
        /// LSN that should have come next.
        expected: u64,
        /// LSN that came.
        found: u64,
    },
    /// A page's records do not fit together with its header or its neighbours.
    #[error("corrupt record at lsn {lsn} offset {offset}: {fault}")]
    RecordCorrupt {
        /// Page LSN.
        lsn: u64,
        /// Offset in the page payload.
        offset: u16,
        /// What is wrong.
        fault: RecordFault,
    },
    /// Zero-length records are not allowed.
    #[error("a record must hold at least one byte")]
    EmptyRecord,
    /// A record larger than half the ring.
    #[error("record of {len} bytes exceeds the limit of {max} bytes (half the ring)")]
    RecordTooLarge {
        /// Bytes asked for.
        len: usize,
        /// Largest record this log takes.
        max: usize,
    },
    /// `commit` was called before every reserved byte was written.
    #[error("reservation at seq {seq} committed with {written} of {reserved} bytes written")]
    IncompleteReservation {
        /// Sequence number of the record.
        seq: u64,
        /// Bytes written.
        written: usize,
        /// Bytes reserved.
        reserved: usize,
    },
    /// A cursor asked for pages the ring no longer holds.
    #[error("lsn {requested} is below the ring's oldest retained page {oldest}")]
    BelowHorizon {
        /// LSN asked for.
        requested: u64,
        /// Oldest LSN still in the ring.
        oldest: u64,
    },
    /// A follower log (fed by [`crate::Log::ingest`]) was asked to reserve: its pages come from
    /// its origin, never from local writers.
    #[error("this log follows another origin's pages; local writes are refused")]
    Follower,
    /// [`crate::Log::ingest`] on a log that is written locally.
    #[error("this log is written locally; it cannot ingest another origin's pages")]
    NotFollower,
    /// A page of an older epoch than the log has seen: its writer was deposed (fencing).
    #[error("page at lsn {lsn} has epoch {epoch}, older than the log's epoch {current}")]
    Fenced {
        /// The page's LSN.
        lsn: u64,
        /// The page's epoch.
        epoch: u64,
        /// The log's current epoch.
        current: u64,
    },
    /// The log was closed while the caller waited.
    #[error("the log is closed")]
    Closed,
    /// A sync of the log's files failed, so the pages it covered may never reach the disk (or a
    /// finished page's write to its segment failed: `lsn_from..lsn_to` is that page). The
    /// kernel may already have marked them clean (a second sync could then report success over
    /// data that is gone: PostgreSQL's "fsyncgate"), so the failure is never retried: the log
    /// keeps the error and refuses every later reservation, commit, flush and durable wait with
    /// it. Reopen the log to recover what the disk holds.
    #[error(
        "write or sync of log file {path} failed for pages {lsn_from}..{lsn_to}: {source}; the \
         log is poisoned and refuses writes until it is reopened"
    )]
    Poisoned {
        /// The log segment of the first page the failed write or sync covered.
        path: PathBuf,
        /// The durable watermark when the sync started: pages below it are on disk.
        lsn_from: u64,
        /// One past the last page the failed sync covered.
        lsn_to: u64,
        /// The error the sync returned.
        source: std::io::Error,
    },
    /// The host has no lock-free 128-bit compare-and-swap.
    #[error(
        "this CPU has no lock-free 128-bit compare-and-swap (cmpxchg16b); the anchor needs one"
    )]
    AnchorNotLockFree,
    /// An option is out of range.
    #[error("invalid log option `{option}` = {value}: {expected}")]
    InvalidOption {
        /// Option name.
        option: &'static str,
        /// Value given.
        value: u64,
        /// What is accepted.
        expected: &'static str,
    },
    /// A file of the log exists but is not the log's, or not of this configuration.
    #[error("log file {path}: {fault}")]
    RingFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        fault: RingFault,
    },
    /// An I/O operation on a file of the log failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Why a record failed to decode (see [`Error::RecordCorrupt`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordFault {
    /// The length prefix is zero.
    #[error("zero-length record")]
    ZeroLength,
    /// The length prefix is over the reader's limit.
    #[error("record length {len} exceeds the reader's limit {max}")]
    TooLong {
        /// Declared length.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// The header says the first record starts elsewhere than where the previous one ended.
    #[error("first record offset is {header}, but the previous record ends at {actual}")]
    FirstRecordOffset {
        /// What the page header says.
        header: u16,
        /// Where the continuation actually ends (0xFFFF: it runs past this page).
        actual: u16,
    },
    /// The page holds a different number of record starts than its header says.
    #[error("header counts {header} records starting here, the payload holds {actual}")]
    RecordCount {
        /// What the page header says.
        header: u16,
        /// What was found.
        actual: u16,
    },
    /// A record runs past the end of a page that is not full, so it can never continue.
    #[error("record runs past the end of a partial page")]
    Truncated,
    /// The page continues a record that this reader never saw start.
    #[error("page continues a record whose start was not read")]
    OrphanContinuation,
}

/// Why a file of the log was refused (see [`Error::RingFile`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingFault {
    /// Wrong magic: not a pagemesh log head.
    #[error("not a pagemesh log head (bad magic)")]
    Magic,
    /// A ring format this build does not read.
    #[error("log format version {found}, this build reads {supported}")]
    Version {
        /// Found.
        found: u32,
        /// Supported.
        supported: u32,
    },
    /// The header's crc does not match.
    #[error("ring header checksum mismatch")]
    Checksum,
    /// The file holds a different number of slots than configured.
    #[error("the log was made for a ring of {found} slots, configured for {configured}")]
    SlotCount {
        /// In the file.
        found: u64,
        /// In the options.
        configured: u64,
    },
    /// The file's length does not match its header.
    #[error("log segment is {found} bytes, its head implies {expected}")]
    Length {
        /// Actual length.
        found: u64,
        /// Expected length.
        expected: u64,
    },
    /// Another process has the log open.
    #[error("the log is locked by another process")]
    Locked,
    /// The header's released LSN is beyond what any page can hold: the header is corrupt.
    #[error("released LSN {lsn} is beyond the page format's limit")]
    Horizon {
        /// The LSN found.
        lsn: u64,
    },
    /// Segment files without a head to say what they hold (the head was removed).
    #[error("log segments without a whole head file: refusing to reuse them")]
    Orphans,
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
