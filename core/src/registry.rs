//! The databases this process holds open, by canonical directory.
//!
//! LMDB and the log ring allow one open per process; a second [`crate::Database::open`] of the same
//! directory used to reach the log's file lock and report "the log is locked by another process",
//! which sent users looking for a process that did not exist. [`Registration::claim`] answers
//! first, with [`Error::AlreadyOpen`] naming the directory. The registration is held by the
//! database's shared state and released when the last handle, ticket and thread using it are gone,
//! after the ring and LMDB are closed, so a reopen right after that succeeds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Canonical directories of the databases open in this process.
static OPEN: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn open_set() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    OPEN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A directory claimed for one open database; dropping it gives the directory back.
#[derive(Debug)]
pub(crate) struct Registration {
    path: PathBuf,
}

impl Registration {
    /// Claims `dir` (which must exist: it is canonicalized, so two spellings of one directory
    /// are one claim), or fails with [`Error::AlreadyOpen`].
    pub(crate) fn claim(dir: &Path) -> Result<Self> {
        let path = dir.canonicalize().map_err(|source| Error::Io {
            op: "canonicalize",
            path: dir.into(),
            source,
        })?;
        if !open_set().insert(path.clone()) {
            return Err(Error::AlreadyOpen { path });
        }
        Ok(Self { path })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        open_set().remove(&self.path);
    }
}
