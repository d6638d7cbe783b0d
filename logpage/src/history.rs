//! The log's history: pages read back by LSN from the segments the log keeps below its horizon
//! ([`LogOptions::keep_history`](crate::LogOptions::keep_history)).
//!
//! A [`HistoryReader`] needs no lock and no open [`Log`](crate::Log): it opens segment files by
//! name, so a read-only view in another process reads history the same way as the log's owner.
//! Its owner may retire a segment while it is read: the file is renamed to a spare and may be
//! reused for pages of other LSNs. A reader that already opened it goes on reading the old
//! bytes, or bytes of the reuse; so [`HistoryReader::read`] hands out only pages that validate
//! (crc included) *and* carry the LSN asked for, and says which ones it could not find.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::page::{validate, PageHeader, PageRef, HEADER_SIZE, PAGE_SIZE};
use crate::segment::{read_head_pages, segment_firsts, segment_path};

/// A log page held in memory of its own, validated when it was made.
#[derive(Clone)]
pub struct OwnedPage {
    /// The page in full form; bytes past the payload are zero or stale, never read.
    bytes: Box<[u8; PAGE_SIZE]>,
}

impl OwnedPage {
    /// A copy of `page`.
    pub fn copy_of(page: PageRef<'_>) -> Self {
        let mut bytes = Box::new([0u8; PAGE_SIZE]);
        let compact = page.compact_bytes();
        bytes[..compact.len()].copy_from_slice(compact);
        Self { bytes }
    }

    /// The page's view.
    pub fn page(&self) -> PageRef<'_> {
        // Sizes known at compile time, and `PageHeader` is `Pod` with alignment 1: infallible.
        let header: &PageHeader = bytemuck::from_bytes(&self.bytes[..HEADER_SIZE]);
        // Validated when made: the payload length fits; clamped all the same.
        let len = header.payload_len().min(PAGE_SIZE - HEADER_SIZE);
        PageRef::from_parts(header, &self.bytes[HEADER_SIZE..HEADER_SIZE + len])
    }

    /// The page's LSN.
    pub fn lsn(&self) -> u64 {
        self.page().lsn()
    }
}

impl std::fmt::Debug for OwnedPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedPage")
            .field("lsn", &self.lsn())
            .finish()
    }
}

/// What [`HistoryReader::read`] found at an LSN.
#[derive(Debug)]
pub enum HistoryPage {
    /// The page, validated, with the LSN asked for.
    Page(OwnedPage),
    /// The segment that would hold it is not in the directory (never written, or retired).
    Missing,
    /// The segment is there but does not hold the page: never written there, retired while it
    /// was read, or damaged. The caller tells which from what it knows of the log's extent.
    Invalid,
}

/// Reads the log's history in one directory, page by page. Not `Sync`: one per reading thread.
#[derive(Debug)]
pub struct HistoryReader {
    dir: PathBuf,
    /// Pages per segment (the head's).
    pages: u64,
    /// The segment read last, kept open: `(first LSN, file)`.
    open: Option<(u64, File)>,
}

impl HistoryReader {
    /// A reader of the log in `dir`, or none if there is no log there (no head, or an empty
    /// one).
    ///
    /// # Errors
    /// [`Error::RingFile`] if the head is damaged or foreign; [`Error::Io`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Option<Self>> {
        let dir = dir.as_ref();
        Ok(read_head_pages(dir)?.map(|pages| Self {
            dir: dir.to_path_buf(),
            pages,
            open: None,
        }))
    }

    /// The first LSN of each segment file in the directory, in order: history, where the log's
    /// owner keeps it, is in these (and pages that were never written read as invalid).
    pub fn segments(&self) -> Result<Vec<u64>> {
        segment_firsts(&self.dir)
    }

    /// Pages per segment.
    pub fn segment_pages(&self) -> u64 {
        self.pages
    }

    /// Reads page `lsn` and validates it.
    ///
    /// # Errors
    /// [`Error::Io`] naming the segment if it could not be opened or read.
    pub fn read(&mut self, lsn: u64) -> Result<HistoryPage> {
        let first = lsn & !(self.pages - 1);
        if self.open.as_ref().is_none_or(|(open, _)| *open != first) {
            self.open = None;
            let path = segment_path(&self.dir, first);
            match File::open(&path) {
                Ok(file) => self.open = Some((first, file)),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(HistoryPage::Missing)
                }
                Err(source) => {
                    return Err(Error::Io {
                        op: "open the history segment",
                        path,
                        source,
                    })
                }
            }
        }
        let Some((_, file)) = &self.open else {
            return Ok(HistoryPage::Missing);
        };
        let mut bytes = Box::new([0u8; PAGE_SIZE]);
        match file.read_exact_at(&mut bytes[..], (lsn - first) * PAGE_SIZE as u64) {
            Ok(()) => {}
            // A file cut short: a retired segment's file being replaced, or damage.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(HistoryPage::Invalid)
            }
            Err(source) => {
                return Err(Error::Io {
                    op: "read the history segment",
                    path: segment_path(&self.dir, first),
                    source,
                })
            }
        }
        Ok(match validate(&bytes[..]) {
            Ok(page) if page.lsn() == lsn => HistoryPage::Page(OwnedPage { bytes }),
            _ => HistoryPage::Invalid,
        })
    }
}
