//! The LMDB environment: user tables, `__meta`, and a database's old `__binlog` (read only).
//!
//! One heed `Env` per database directory (`dir/lmdb/`; the log's files are `dir/log.head` and its segments, `dir/log-*.seg`). Named
//! databases:
//!
//! - each user table: key → `seq (u64 LE) ‖ value`, where `seq` is the log position of the change
//!   that wrote it (its version);
//! - `__binlog`: in a database from before stop 36 only, read until retention passes it (the
//!   history is now the log's segments, `binlog.rs`): first page LSN (u64 big-endian) → the pages
//!   of one group, back to back in compact form (header + used payload);
//! - `__meta`: the keys below, all little-endian integers or raw uuids.
//!
//! | `__meta` key | value |
//! | --- | --- |
//! | `format` | u32 store format, [`STORE_FORMAT`] |
//! | `database_uuid`, `origin_uuid` | 16 bytes each, made at creation |
//! | `binlog_next_lsn` | u64: pages below it are applied (and in the history) |
//! | `replay_lsn` | u64: where the applier's reader must start on open (the page where a record still open at the last group boundary began, else `binlog_next_lsn`) |
//! | `applied_seq_end` | u64: every record with a seq below it is applied (0: none; a record can have seq 0) |
//! | `binlog_oldest_lsn` | u64: no history below this (a restore's LSN, or the old `__binlog`'s retention) |
//! | `binlog_bytes` | u64: bytes the old `__binlog` holds, for its retention |
//! | `history_from` | u64: the history from here on is in the log's segments, below it in the old `__binlog` (`binlog.rs`); written at the first open by a version that keeps history in segments |
//! | `cursor:NAME` | u64: a registered consumer's position; the history is never retired above it |
//! | `table:NAME` | empty: the table exists (a put or a create adds it, a drop removes it: its LMDB database stays, emptied; see `apply.rs`) |
//! | `epoch` | u64: the epoch the writer's log stamps on its pages this session (see `recovery.rs`) |
//! | `clean_stop` | u8: 1 if the last session closed cleanly (everything applied and synced), 0 while one runs |
//!
//! The binlog's values, its retention and the cursors that hold it back are `binlog.rs`'s; this file
//! opens the environment and keeps identity, tables and the apply state.
//!
//! # Syncs
//!
//! The environment is opened with `MDB_NOMETASYNC`: a write transaction's commit syncs its data
//! pages (one `fdatasync`) but not the meta page that points at them; the meta page is written,
//! and reaches the disk with the *next* transaction's sync (or [`Store::sync`]). A power loss
//! can therefore roll LMDB back by its latest transaction, never corrupt it: the meta page on
//! disk always points at synced pages, and LMDB does not reuse pages the previous meta page
//! refers to. Durability no longer comes from LMDB: the log ring is the write-ahead log, and the
//! applier releases a group's ring pages only once LMDB's state past it is on disk (`apply.rs`).
//! Plain `MDB_NOSYNC` would make commits cheaper still, but LMDB may then reuse pages that the
//! last *synced* meta page still refers to, so a power loss could corrupt the environment
//! instead of just losing the latest commits; heed marks both flags unsafe for that reason.
//!
//! Writes outside the applier that must survive a power loss by themselves (the session's
//! `epoch` and `clean_stop`, a restore) call [`Store::sync`] after they commit; cursor
//! registrations do not (one lost on a power loss only lets retention trim a little early, and a
//! peer behind the trim point is re-seeded).

use crate::options::LmdbSyncHook;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use heed::types::Bytes;
use heed::{CommitOrAbort, EnvFlags, EnvOpenOptions, OnCommit};

use crate::error::{Error, Result};

/// Below this many free bytes, a failed LMDB write is put down to a full disk.
const DISK_FULL_BELOW: u64 = 1 << 20;

/// `Some(free bytes)` if `error` is a write that failed for lack of space: `ENOSPC`, or the `EIO`
/// LMDB reports for a write the kernel cut short, on a filesystem left with under
/// [`DISK_FULL_BELOW`] bytes free.
fn disk_full(path: &Path, error: &heed::Error) -> Option<u64> {
    let heed::Error::Io(io) = error else {
        return None;
    };
    let errno = rustix::io::Errno::from_raw_os_error(io.raw_os_error()?);
    if errno == rustix::io::Errno::NOSPC || errno == rustix::io::Errno::DQUOT {
        Some(available_bytes(path).unwrap_or(0))
    } else if errno == rustix::io::Errno::IO {
        available_bytes(path).filter(|&free| free < DISK_FULL_BELOW)
    } else {
        None
    }
}

/// Bytes free for unprivileged use on the filesystem holding `path`.
fn available_bytes(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// What fails a write transaction that runs inside heed's `create_databases_and_commit` (the
/// applier's groups, a restore): heed's error or one of ours.
///
/// heed creates tables only inside that call, so such a transaction is a closure, and heed
/// aborts it when the closure returns an error, of any type that converts from `heed::Error`.
/// This is that type, so our errors leave the closure whole instead of being flattened into a
/// stand-in `heed::Error` and stashed beside it: `?` on an LMDB call keeps heed's error, `?` on
/// one of ours keeps ours, and [`TxnError::into_error`] gives the caller the [`Error`] to return.
#[derive(Debug)]
pub(crate) enum TxnError {
    /// LMDB failed (inside the closure or committing); named by the caller, as its commit.
    Lmdb(heed::Error),
    /// The closure failed with one of our errors; the transaction was aborted.
    Aborted(Error),
}

impl From<heed::Error> for TxnError {
    fn from(error: heed::Error) -> Self {
        Self::Lmdb(error)
    }
}

impl From<Error> for TxnError {
    fn from(error: Error) -> Self {
        Self::Aborted(error)
    }
}

impl TxnError {
    /// Our error as it was, or heed's named by `lmdb` (say `store.lmdb("commit group")`).
    pub fn into_error(self, lmdb: impl FnOnce(heed::Error) -> Error) -> Error {
        match self {
            Self::Lmdb(error) => lmdb(error),
            Self::Aborted(error) => error,
        }
    }
}

/// The store format this build writes.
pub const STORE_FORMAT: u32 = 1;

pub(crate) type Table = heed::Database<'static, Bytes, Bytes>;

/// Named LMDB databases an environment may hold: the user's tables and pagemesh's own.
const MAX_DBS: u32 = 4096;

/// Table handles opened in one transaction, made usable beyond it when it commits.
struct OpenedTables<T>(Vec<Option<T>>);

impl<T: OnCommit> OnCommit for OpenedTables<T> {
    type Committed = OpenedTables<T::Committed>;

    fn on_commit(self, token: &heed::CommitToken) -> Self::Committed {
        OpenedTables(self.0.into_iter().map(|t| t.on_commit(token)).collect())
    }
}

/// Who a database is, as `__meta` says.
pub(crate) struct Identity {
    pub database_uuid: uuid::Uuid,
    pub origin_uuid: uuid::Uuid,
    pub is_replica: bool,
}

/// The environment and its databases.
pub(crate) struct Store {
    pub path: PathBuf,
    pub env: heed::Env,
    pub meta: Table,
    pub binlog: Table,
    /// When each binlog group was appended: key as `__binlog`'s, value wall-clock microseconds
    /// (u64 LE). For age-based retention.
    pub binlog_time: Table,
    /// Told of each explicit sync ([`Options::on_lmdb_sync`](crate::Options::on_lmdb_sync)).
    pub sync_hook: Option<LmdbSyncHook>,
    /// Handles of the tables that exist.
    tables: RwLock<HashMap<String, Table>>,
    /// Handles of tables dropped since they were opened: their LMDB databases stay, emptied,
    /// so snapshots begun before the drop keep reading them, and a revival reuses them.
    dropped: RwLock<HashMap<String, Table>>,
    /// Orders read transactions against table creation. LMDB lets a table handle be opened only
    /// after its creating transaction committed, and a read transaction can use only handles that
    /// existed when it began; so a group that creates a table holds this for writing from the
    /// creation until the handle is registered, and readers hold it for reading while they begin.
    /// A reader then sees either neither the table nor its data, or both. (Without it, a snapshot
    /// export racing the first group of a table silently left the table out: found by
    /// tests/replica.rs.)
    pub table_gate: RwLock<()>,
    pub database_uuid: uuid::Uuid,
    pub origin_uuid: uuid::Uuid,
    /// `__meta` says `role = replica`: the database follows its origin's log and refuses writes.
    pub is_replica: bool,
}

/// How the last writer's session ended ([`Store::last_session`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LastSession {
    /// A session ever started (`clean_stop` is present).
    pub started: bool,
    /// It closed cleanly (`clean_stop` = 1): nothing it committed can have been lost.
    pub clean: bool,
    /// The highest epoch it used: `epoch` in `__meta`, or a binlog page's if higher.
    pub epoch: u64,
}

/// Where the applier stands, as recorded in `__meta`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ApplyState {
    pub binlog_next_lsn: u64,
    pub replay_lsn: u64,
    pub applied_seq_end: u64,
}

impl Store {
    /// Names a failed LMDB operation: [`Error::DiskFull`] when it was a write that the full disk
    /// stopped, [`Error::Lmdb`] otherwise.
    pub fn lmdb(&self, op: &'static str) -> impl FnOnce(heed::Error) -> Error + '_ {
        move |source| {
            let path = self.path.clone();
            match disk_full(&path, &source) {
                Some(available) => Error::DiskFull {
                    op,
                    path,
                    available,
                    source,
                },
                None => Error::Lmdb { op, path, source },
            }
        }
    }

    /// Opens or creates the environment in `dir/lmdb`.
    #[allow(unsafe_code)] // heed's EnvOpenOptions::open is unsafe; see the SAFETY comment
    pub fn open(dir: &Path, map_size: usize) -> Result<Self> {
        let path = dir.join("lmdb");
        let lmdb = |op: &'static str| {
            let path = path.clone();
            move |source| Error::Lmdb { op, path, source }
        };
        let existed = path.join("data.mdb").exists();
        std::fs::create_dir_all(&path).map_err(|source| Error::Io {
            op: "create",
            path: path.clone(),
            source,
        })?;
        // SAFETY: heed's open is unsafe because LMDB must not be opened twice in one process and
        // its files must not be modified behind its back. The log ring's file lock, taken before
        // this (see `Database::open`), keeps a second pagemesh instance out of this directory.
        // `flags` is unsafe for the flags that trade durability: NO_META_SYNC keeps LMDB's
        // integrity on power loss (only the latest transactions may roll back; see the module
        // docs), and the applier never releases ring pages LMDB might roll back (`apply.rs`).
        let env = unsafe {
            let mut options = EnvOpenOptions::new();
            options
                .map_size(map_size)
                .max_dbs(MAX_DBS)
                .flags(EnvFlags::NO_META_SYNC);
            options.open(&path)
        }
        .map_err(lmdb("open environment"))?;
        let wtxn = env.write_txn().map_err(lmdb("begin"))?;
        let (meta, binlog, binlog_time) = env
            .create_databases_and_commit(wtxn, |wdo, wtxn| -> Result<_, heed::Error> {
                let meta: heed::Database<Bytes, Bytes> =
                    wdo.create_database(wtxn, Some("__meta"))?;
                let binlog: heed::Database<Bytes, Bytes> =
                    wdo.create_database(wtxn, Some("__binlog"))?;
                let binlog_time: heed::Database<Bytes, Bytes> =
                    wdo.create_database(wtxn, Some("__binlog_time"))?;
                Ok(CommitOrAbort::<_, ()>::Commit((meta, binlog, binlog_time)))
            })
            .map_err(lmdb("create __meta and __binlog"))?
            .unwrap_commit();
        let mut store = Self::new(path, env, meta, binlog, binlog_time);
        store.clear_stale_readers();
        store.init_meta(existed)?;
        store.open_tables()?;
        Ok(store)
    }

    /// Opens the existing environment in `dir/lmdb` read-only: no file of the database is written
    /// (LMDB writes only its lock file, `lock.mdb`, to take a reader slot), no table is created,
    /// and no ring lock is taken. See `read_only.rs` for what this costs a live writer.
    #[allow(unsafe_code)] // heed's EnvOpenOptions::open is unsafe; see the SAFETY comment
    pub fn open_read_only(dir: &Path) -> Result<Self> {
        let path = dir.join("lmdb");
        if !path.join("data.mdb").is_file() {
            return Err(Error::NotADatabase {
                path: dir.into(),
                why: "no lmdb/data.mdb",
            });
        }
        let lmdb = |op: &'static str| {
            let path = path.clone();
            move |source| match source {
                heed::Error::EnvAlreadyOpened => Error::AlreadyOpen { path },
                source => Error::Lmdb { op, path, source },
            }
        };
        // SAFETY: heed's open is unsafe because LMDB's map must not change behind its back and an
        // environment must not be open twice in one process. (1) With READ_ONLY, LMDB opens
        // data.mdb O_RDONLY and maps it PROT_READ, so this handle cannot modify it; writes by
        // another *process* (a running node) are what LMDB's lock file coordinates: every read
        // transaction takes a reader slot there, and writers never reuse a page a live slot may
        // still see, so the pages a snapshot reads stay as they were when it began. (2) A second
        // open in this process is refused by heed (its registry of open environments, keyed by
        // canonical path, answers `EnvAlreadyOpened`, mapped to `Error::AlreadyOpen`), before
        // LMDB is touched: no second descriptor whose close would drop the first one's fcntl
        // locks. `flags` is unsafe for the flags that trade durability or locking (NO_SYNC,
        // NO_META_SYNC, NO_LOCK); READ_ONLY is none of them and keeps LMDB's locking. No map size
        // is set: LMDB takes the one the writer recorded in the file.
        let env = unsafe {
            let mut options = EnvOpenOptions::new();
            options.max_dbs(MAX_DBS).flags(EnvFlags::READ_ONLY);
            options.open(&path)
        }
        .map_err(lmdb("open environment read-only"))?;
        let rtxn = env.read_txn().map_err(lmdb("begin"))?;
        let opened = env
            .open_databases_and_commit(rtxn, |dbo, rtxn| -> Result<_, heed::Error> {
                let open = |name| dbo.open_database::<Bytes, Bytes>(rtxn, Some(name));
                let all = (open("__meta")?, open("__binlog")?, open("__binlog_time")?);
                Ok(CommitOrAbort::<_, ()>::Commit(all))
            })
            .map_err(lmdb("open __meta and __binlog"))?
            .unwrap_commit();
        let (Some(meta), Some(binlog), Some(binlog_time)) = opened else {
            return Err(Error::NotADatabase {
                path: dir.into(),
                why: "no __meta, __binlog or __binlog_time in its LMDB environment",
            });
        };
        let mut store = Self::new(path, env, meta, binlog, binlog_time);
        store.clear_stale_readers();
        let rtxn = store.env.read_txn().map_err(store.lmdb("begin"))?;
        let identity = store.identity(&rtxn)?;
        drop(rtxn);
        store.set_identity(identity);
        store.open_tables()?;
        Ok(store)
    }

    fn new(path: PathBuf, env: heed::Env, meta: Table, binlog: Table, binlog_time: Table) -> Self {
        Self {
            path,
            env,
            meta,
            binlog,
            binlog_time,
            tables: RwLock::new(HashMap::new()),
            dropped: RwLock::new(HashMap::new()),
            table_gate: RwLock::new(()),
            database_uuid: uuid::Uuid::nil(),
            origin_uuid: uuid::Uuid::nil(),
            is_replica: false,
            sync_hook: None,
        }
    }

    /// Frees the reader slots of processes that died inside a read transaction (LMDB's
    /// `mdb_reader_check`): each pins its version, so the file grows until they are cleared (see
    /// `read_only.rs`). A failure only leaves them for the next open, so it is logged, not returned.
    fn clear_stale_readers(&self) {
        match self.env.clear_stale_readers() {
            Ok(0) => {}
            Ok(cleared) => {
                tracing::info!(path = %self.path.display(), cleared, "cleared stale LMDB readers")
            }
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "could not check for stale LMDB readers")
            }
        }
    }

    fn init_meta(&mut self, existed: bool) -> Result<()> {
        let mut wtxn = self.env.write_txn().map_err(self.lmdb("begin"))?;
        let format = self
            .meta
            .get(&wtxn, b"format")
            .map_err(self.lmdb("read format"))?;
        if format.is_none() {
            if existed && self.meta.len(&wtxn).map_err(self.lmdb("read __meta"))? != 0 {
                return Err(Error::NotADatabase {
                    path: self.path.clone(),
                    why: "no format in __meta",
                });
            }
            self.create_meta(&mut wtxn)?;
        }
        let identity = self.identity(&wtxn)?;
        wtxn.commit().map_err(self.lmdb("commit meta"))?;
        self.set_identity(identity);
        Ok(())
    }

    /// Checks the store format in `__meta` and reads who this database is.
    pub(crate) fn identity(&self, txn: &heed::RoTxn) -> Result<Identity> {
        let format = self
            .meta
            .get(txn, b"format")
            .map_err(self.lmdb("read format"))?
            .ok_or_else(|| Error::NotADatabase {
                path: self.path.clone(),
                why: "no format in __meta",
            })?;
        let found = u32::from_le_bytes(format.try_into().map_err(|_| Error::NotADatabase {
            path: self.path.clone(),
            why: "format is not a u32",
        })?);
        if found > STORE_FORMAT {
            return Err(Error::NewerFormat {
                path: self.path.clone(),
                found,
                supported: STORE_FORMAT,
            });
        }
        let uuid = |key: &[u8]| -> Result<uuid::Uuid> {
            let bytes = self.meta.get(txn, key).map_err(self.lmdb("read uuid"))?;
            bytes
                .and_then(|b| uuid::Uuid::from_slice(b).ok())
                .ok_or(Error::NotADatabase {
                    path: self.path.clone(),
                    why: "missing or malformed uuid in __meta",
                })
        };
        Ok(Identity {
            database_uuid: uuid(b"database_uuid")?,
            origin_uuid: uuid(b"origin_uuid")?,
            is_replica: self.is_replica_in(txn)?,
        })
    }

    /// Whether `__meta` says `role = replica` in `txn`'s view.
    pub fn is_replica_in(&self, txn: &heed::RoTxn) -> Result<bool> {
        let role = self
            .meta
            .get(txn, b"role")
            .map_err(self.lmdb("read role"))?;
        Ok(role == Some(&b"replica"[..]))
    }

    fn set_identity(&mut self, identity: Identity) {
        self.database_uuid = identity.database_uuid;
        self.origin_uuid = identity.origin_uuid;
        self.is_replica = identity.is_replica;
    }

    fn create_meta(&self, wtxn: &mut heed::RwTxn) -> Result<()> {
        let put = |wtxn: &mut heed::RwTxn, key: &[u8], value: &[u8]| {
            self.meta
                .put(wtxn, key, value)
                .map_err(self.lmdb("write __meta"))
        };
        put(wtxn, b"format", &STORE_FORMAT.to_le_bytes())?;
        put(wtxn, b"database_uuid", uuid::Uuid::new_v4().as_bytes())?;
        put(wtxn, b"origin_uuid", uuid::Uuid::new_v4().as_bytes())?;
        tracing::info!(path = %self.path.display(), "created pagemesh database");
        Ok(())
    }

    fn open_tables(&self) -> Result<()> {
        self.open_missing_tables().map(|_| ())
    }

    /// Pages the B-trees of every table and of the store's own tables hold, as `txn` sees them
    /// (free pages not counted): what a write transaction could copy at most, before growth.
    pub fn tree_pages(&self, txn: &heed::RoTxn) -> Result<u64> {
        let tables = self
            .tables
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut pages = 0u64;
        for table in [&self.meta, &self.binlog, &self.binlog_time]
            .into_iter()
            .chain(tables.values())
        {
            let stat = table.stat(txn).map_err(self.lmdb("read table size"))?;
            pages += (stat.branch_pages + stat.leaf_pages + stat.overflow_pages) as u64;
        }
        Ok(pages)
    }

    /// The names of the tables `txn` sees (the `table:` keys of `__meta`).
    pub fn table_names_in(&self, txn: &heed::RoTxn) -> Result<Vec<String>> {
        let iter = self
            .meta
            .prefix_iter(txn, b"table:")
            .map_err(self.lmdb("list tables"))?;
        let mut names = Vec::new();
        for entry in iter {
            let (key, _) = entry.map_err(self.lmdb("list tables"))?;
            names.push(String::from_utf8_lossy(&key[6..]).into_owned());
        }
        Ok(names)
    }

    /// Opens, in one read transaction, every table `__meta` lists that has no handle here yet
    /// (created since by another process, for a read-only store). Returns how many it opened.
    pub fn open_missing_tables(&self) -> Result<usize> {
        let rtxn = self.env.read_txn().map_err(self.lmdb("begin"))?;
        let mut missing = self.table_names_in(&rtxn)?;
        missing.retain(|name| self.table(name).is_none());
        if missing.is_empty() {
            return Ok(0);
        }
        let opened = self
            .env
            .open_databases_and_commit(rtxn, |dbo, rtxn| -> Result<_, heed::Error> {
                let mut opened = Vec::with_capacity(missing.len());
                for name in &missing {
                    opened.push(dbo.open_database::<Bytes, Bytes>(rtxn, Some(name))?);
                }
                Ok(CommitOrAbort::<_, ()>::Commit(OpenedTables(opened)))
            })
            .map_err(self.lmdb("open tables"))?
            .unwrap_commit();
        let mut tables = self
            .tables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, table) in missing.iter().zip(opened.0) {
            let table = table.ok_or(Error::NotADatabase {
                path: self.path.clone(),
                why: "a table listed in __meta is missing",
            })?;
            tracing::debug!(table = name, "opened table");
            tables.insert(name.clone(), table);
        }
        Ok(missing.len())
    }

    /// Whether every table `txn` sees has a handle here, so a snapshot in `txn` misses none.
    pub fn has_every_table(&self, txn: &heed::RoTxn) -> Result<bool> {
        let names = self.table_names_in(txn)?;
        Ok(names.iter().all(|name| self.table(name).is_some()))
    }

    /// The table's handle, if it has one: it exists, or was dropped (then it is empty in any
    /// transaction begun after the drop).
    pub fn table(&self, name: &str) -> Option<Table> {
        let live = self
            .tables
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .copied();
        live.or_else(|| {
            self.dropped
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(name)
                .copied()
        })
    }

    /// Records, once the group that dropped or revived it committed, whether a table exists:
    /// its handle moves between the existing and the dropped ones.
    pub fn set_table_exists(&self, name: &str, exists: bool) {
        let mut tables = self
            .tables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut dropped = self
            .dropped
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (from, to) = if exists {
            (&mut *dropped, &mut *tables)
        } else {
            (&mut *tables, &mut *dropped)
        };
        if let Some(table) = from.remove(name) {
            to.insert(name.to_string(), table);
        }
    }

    /// Opens, after its creating transaction committed, a table the applier created.
    pub fn open_created_table(&self, name: &str) -> Result<()> {
        let rtxn = self.env.read_txn().map_err(self.lmdb("begin"))?;
        let table = self
            .env
            .open_databases_and_commit(rtxn, |dbo, rtxn| -> Result<_, heed::Error> {
                Ok(CommitOrAbort::<_, ()>::Commit(
                    dbo.open_database::<Bytes, Bytes>(rtxn, Some(name))?,
                ))
            })
            .map_err(self.lmdb("open created table"))?
            .unwrap_commit()
            .ok_or(Error::NotADatabase {
                path: self.path.clone(),
                why: "a created table is missing",
            })?;
        tracing::debug!(table = name, "opened table");
        self.tables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), table);
        Ok(())
    }

    /// Every table that exists, by name.
    pub fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .tables
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Puts everything committed so far on disk, meta page included (`mdb_env_sync`, forced),
    /// then tells the sync hook, if any, the newest transaction it covered.
    pub fn sync(&self) -> Result<()> {
        // Read before the sync: every transaction up to this one is on disk once it returns.
        let covered = (self.sync_hook.as_ref()).map(|hook| (hook, self.env.info().last_txn_id));
        self.env.force_sync().map_err(self.lmdb("sync"))?;
        if let Some((hook, txn)) = covered {
            (hook.0)(txn as u64);
        }
        Ok(())
    }

    /// Starts a session: records, synced, that one runs (`clean_stop` = 0) under epoch `epoch`,
    /// before any page of that epoch is written. See [`Store::last_session`] for what it replaces.
    pub fn begin_session(&self, epoch: u64) -> Result<()> {
        let mut wtxn = self.env.write_txn().map_err(self.lmdb("begin"))?;
        self.meta
            .put(&mut wtxn, b"epoch", &epoch.to_le_bytes())
            .map_err(self.lmdb("write epoch"))?;
        self.meta
            .put(&mut wtxn, b"clean_stop", &[0])
            .map_err(self.lmdb("write clean_stop"))?;
        wtxn.commit().map_err(self.lmdb("commit session start"))?;
        self.sync()
    }

    /// Records (synced) that the session ended cleanly: everything committed is applied and on
    /// disk in LMDB. Called by the database's close, after its applier stopped.
    pub fn end_session_clean(&self) -> Result<()> {
        let mut wtxn = self.env.write_txn().map_err(self.lmdb("begin"))?;
        self.meta
            .put(&mut wtxn, b"clean_stop", &[1])
            .map_err(self.lmdb("write clean_stop"))?;
        wtxn.commit().map_err(self.lmdb("commit clean stop"))?;
        self.sync()
    }

    /// How the last session ended, as `__meta` says, and the highest epoch the store knows of:
    /// the recorded `epoch` and the epoch of the binlog's last page (a restored database's
    /// pages carry their origin's).
    pub fn last_session(&self, txn: &heed::RoTxn) -> Result<LastSession> {
        let clean_stop = self
            .meta
            .get(txn, b"clean_stop")
            .map_err(self.lmdb("read clean_stop"))?;
        let binlog_epoch = match self.binlog.last(txn).map_err(self.lmdb("read binlog"))? {
            Some((_, pages)) => {
                let mut last = 0;
                for page in (crate::binlog::CompactPages { rest: pages }) {
                    last = page?.header().epoch();
                }
                last
            }
            None => 0,
        };
        Ok(LastSession {
            started: clean_stop.is_some(),
            clean: clean_stop == Some(&[1][..]),
            epoch: self.meta_u64(txn, b"epoch")?.max(binlog_epoch),
        })
    }

    pub fn apply_state(&self, rtxn: &heed::RoTxn) -> Result<ApplyState> {
        Ok(ApplyState {
            binlog_next_lsn: self.meta_u64(rtxn, b"binlog_next_lsn")?,
            replay_lsn: self.meta_u64(rtxn, b"replay_lsn")?,
            applied_seq_end: self.meta_u64(rtxn, b"applied_seq_end")?,
        })
    }

    pub fn put_apply_state(&self, wtxn: &mut heed::RwTxn, state: &ApplyState) -> Result<()> {
        for (key, value) in [
            (&b"binlog_next_lsn"[..], state.binlog_next_lsn),
            (b"replay_lsn", state.replay_lsn),
            (b"applied_seq_end", state.applied_seq_end),
        ] {
            self.meta
                .put(wtxn, key, &value.to_le_bytes())
                .map_err(self.lmdb("write apply state"))?;
        }
        Ok(())
    }

    /// A u64 stored in `__meta` (0 if absent).
    pub(crate) fn meta_u64(&self, txn: &heed::RoTxn, key: &[u8]) -> Result<u64> {
        match self.meta.get(txn, key).map_err(self.lmdb("read __meta"))? {
            None => Ok(0),
            Some(bytes) => self.decode_u64(bytes),
        }
    }

    /// Where the history in the log's segments begins (`history_from`), if recorded.
    pub(crate) fn history_from(&self, txn: &heed::RoTxn) -> Result<Option<u64>> {
        match self
            .meta
            .get(txn, b"history_from")
            .map_err(self.lmdb("read __meta"))?
        {
            None => Ok(None),
            Some(bytes) => self.decode_u64(bytes).map(Some),
        }
    }

    /// Records `history_from` = `lsn` if no earlier open did (see `binlog.rs`): from the first
    /// open by this version on, the history is in the log's segments. Not synced: the caller
    /// syncs before the log takes a page (an open that loses it records it again, higher, which
    /// only keeps the history in `__binlog` longer).
    pub(crate) fn begin_history(&self, lsn: u64) -> Result<()> {
        let rtxn = self.env.read_txn().map_err(self.lmdb("begin"))?;
        let recorded = self.history_from(&rtxn)?.is_some();
        drop(rtxn);
        if recorded {
            return Ok(());
        }
        let mut wtxn = self.env.write_txn().map_err(self.lmdb("begin"))?;
        self.meta
            .put(&mut wtxn, b"history_from", &lsn.to_le_bytes())
            .map_err(self.lmdb("write history_from"))?;
        wtxn.commit().map_err(self.lmdb("commit history_from"))
    }

    /// The database's directory: the log's files are there, LMDB's in `lmdb/` below it.
    pub(crate) fn log_dir(&self) -> &Path {
        self.path.parent().unwrap_or(&self.path)
    }

    /// A u64 as `__meta` stores it (little-endian).
    pub(crate) fn decode_u64(&self, bytes: &[u8]) -> Result<u64> {
        bytes
            .try_into()
            .map(u64::from_le_bytes)
            .map_err(|_| Error::NotADatabase {
                path: self.path.clone(),
                why: "malformed integer in __meta",
            })
    }
}
